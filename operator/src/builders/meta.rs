//! Names, labels and metadata shared by every object of one cluster.
//!
//! For an `MqttCluster` named `iot`: the brokers are the StatefulSet `iot` (pods `iot-0`,
//! `iot-1`, ...) under the headless Service `iot-nodes`; devices connect to the Service `iot`
//! (HAProxy, Deployment `iot-lb`); the rest is named `iot-<what>`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, PodAffinityTerm, PodAntiAffinity, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::{Resource, ResourceExt};

use crate::crd::MqttCluster;

/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "rookery-operator";

/// The broker's ports inside the pod.
pub mod ports {
    /// Plain MQTT.
    pub const MQTT: u16 = 1883;
    /// MQTT over TLS.
    pub const MQTTS: u16 = 8883;
    /// MQTT over WebSocket.
    pub const WS: u16 = 8083;
    /// MQTT over secure WebSocket.
    pub const WSS: u16 = 8084;
    /// Cluster links.
    pub const CLUSTER: u16 = 4370;
    /// `/metrics`, `/healthz`, `/readyz`, `/admin`.
    pub const HTTP: u16 = 9100;
    /// HAProxy's stats page and metrics.
    pub const LB_STATS: u16 = 8404;
    /// Redis.
    pub const REDIS: u16 = 6379;
    /// Redis Sentinel.
    pub const SENTINEL: u16 = 26379;
    /// PostgreSQL.
    pub const POSTGRES: u16 = 5432;
    /// CoAP (UDP).
    pub const COAP: u16 = 5683;
    /// CoAP over DTLS (UDP).
    pub const COAPS: u16 = 5684;
}

/// Which part of the cluster an object belongs to (`app.kubernetes.io/component`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// The brokers.
    Broker,
    /// HAProxy.
    LoadBalancer,
    /// Managed Redis.
    Redis,
    /// Managed PostgreSQL.
    Postgres,
}

impl Component {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Broker => "broker",
            Component::LoadBalancer => "load-balancer",
            Component::Redis => "redis",
            Component::Postgres => "postgres",
        }
    }
}

/// The names of one cluster's objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The `MqttCluster`'s name.
    pub cluster: String,
    /// Its namespace.
    pub namespace: String,
    /// The Kubernetes cluster's DNS domain (`cluster.local`).
    pub domain: String,
}

impl Names {
    /// Names for this cluster.
    pub fn of(c: &MqttCluster, domain: &str) -> Names {
        Names {
            cluster: c.name_any(),
            namespace: c.namespace().unwrap_or_else(|| "default".to_owned()),
            domain: domain.to_owned(),
        }
    }

    fn with(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.cluster)
    }

    /// The brokers' StatefulSet.
    pub fn statefulset(&self) -> String {
        self.cluster.clone()
    }
    /// The headless Service that names each broker pod.
    pub fn headless(&self) -> String {
        self.with("nodes")
    }
    /// The client-facing Service (HAProxy).
    pub fn client_service(&self) -> String {
        self.cluster.clone()
    }
    /// The CoAP gateway's UDP Service.
    pub fn coap_service(&self) -> String {
        self.with("coap")
    }
    /// The brokers' ClusterIP Service for their HTTP port (metrics, admin).
    pub fn broker_service(&self) -> String {
        self.with("brokers")
    }
    /// The brokers' ConfigMap (`rookery.toml`, the ACL).
    pub fn config(&self) -> String {
        self.with("config")
    }
    /// The Secret of the brokers' password file.
    pub fn auth_secret(&self) -> String {
        self.with("auth")
    }
    /// The Secret of the admin API's token.
    pub fn admin_secret(&self) -> String {
        self.with("admin")
    }
    /// The Secret of the cluster links' CA, certificate and key.
    pub fn cluster_tls_secret(&self) -> String {
        self.with("cluster-tls")
    }
    /// The Secret of the server certificate the operator or cert-manager makes.
    pub fn server_tls_secret(&self) -> String {
        self.with("tls")
    }
    /// HAProxy's Deployment and ConfigMap.
    pub fn load_balancer(&self) -> String {
        self.with("lb")
    }
    /// Managed Redis (StatefulSet, Services, Secret).
    pub fn redis(&self) -> String {
        self.with("redis")
    }
    /// Managed PostgreSQL (StatefulSet or CloudNativePG cluster, Service, Secret).
    pub fn postgres(&self) -> String {
        self.with("postgres")
    }
    /// The name of broker pod `ordinal`.
    pub fn pod(&self, ordinal: i32) -> String {
        format!("{}-{ordinal}", self.cluster)
    }
    /// The DNS name of the headless Service.
    pub fn headless_host(&self) -> String {
        format!("{}.{}.svc.{}", self.headless(), self.namespace, self.domain)
    }
    /// The DNS name of broker pod `ordinal`.
    pub fn pod_host(&self, ordinal: i32) -> String {
        format!("{}.{}", self.pod(ordinal), self.headless_host())
    }
    /// The DNS name of a Service of this namespace.
    pub fn service_host(&self, service: &str) -> String {
        format!("{service}.{}.svc.{}", self.namespace, self.domain)
    }
    /// The name every cluster link certificate carries, whatever address a peer was dialed
    /// at (pods come and go with new addresses).
    pub fn link_server_name(&self) -> String {
        self.headless_host()
    }
    /// The broker's `cluster_name`: unique per namespace and cluster.
    pub fn cluster_name(&self) -> String {
        format!("{}.{}", self.namespace, self.cluster)
    }
}

/// The labels of every object of `component`.
pub fn labels(names: &Names, component: Component) -> BTreeMap<String, String> {
    let mut l = selector_labels(names, component);
    l.insert(
        "app.kubernetes.io/managed-by".into(),
        "rookery-operator".into(),
    );
    l.insert("app.kubernetes.io/part-of".into(), "rookery".into());
    l.insert(
        "app.kubernetes.io/version".into(),
        env!("CARGO_PKG_VERSION").into(),
    );
    l
}

/// The labels of a pod template: those of [`labels`] but the version, so that upgrading the
/// operator does not restart every pod.
pub fn pod_labels(names: &Names, component: Component) -> BTreeMap<String, String> {
    let mut l = labels(names, component);
    l.remove("app.kubernetes.io/version");
    l
}

/// The labels that select the pods of `component` (never changed after creation).
pub fn selector_labels(names: &Names, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "rookery".into()),
        ("app.kubernetes.io/instance".into(), names.cluster.clone()),
        (
            "app.kubernetes.io/component".into(),
            component.as_str().into(),
        ),
    ])
}

/// A label selector matching the pods of `component`.
pub fn selector(names: &Names, component: Component) -> LabelSelector {
    LabelSelector {
        match_labels: Some(selector_labels(names, component)),
        ..LabelSelector::default()
    }
}

/// The selector as the string the scale subresource reports.
pub fn selector_string(names: &Names, component: Component) -> String {
    selector_labels(names, component)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Metadata of an owned object: name, namespace, labels and the cluster as controller owner
/// (when the cluster has a uid, i.e. it came from the API; `render` output has none).
pub fn object_meta(
    c: &MqttCluster,
    names: &Names,
    name: String,
    component: Component,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(names.namespace.clone()),
        labels: Some(labels(names, component)),
        owner_references: c.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// Pods of `component` prefer distinct nodes: losing a node then loses one of them.
pub fn spread_affinity(names: &Names, component: Component) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(selector(names, component)),
                        topology_key: "kubernetes.io/hostname".into(),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    }
}
