//! HAProxy in front of the brokers: its configuration (from [`super::haproxy`]) in a
//! ConfigMap, a Deployment, and the client-facing Service devices connect to.
//!
//! The configuration lists a server for every broker slot up to [`MAX_REPLICAS`], each a pod's
//! DNS name resolved at run time: a pod that does not exist is simply down, so scaling the
//! brokers changes nothing here and never restarts HAProxy.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, HTTPGetAction,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile, SecurityContext, Service,
    ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Environment;
use super::haproxy::{self, Haproxy, Listener, ListenerKind, Node};
use super::meta::{Component, Names, object_meta, ports, selector, selector_labels};
use super::statefulset::{CONFIG_HASH, config_hash};
use crate::crd::{MAX_REPLICAS, MqttCluster};

/// Key of the configuration in the ConfigMap, and its file name.
pub const CONFIG_KEY: &str = "haproxy.cfg";
/// Where the image reads its configuration.
pub const CONFIG_DIR: &str = "/usr/local/etc/haproxy";

/// The enabled listeners with their kinds and the Service ports users chose.
pub fn listeners(c: &MqttCluster) -> Vec<(ListenerKind, i32)> {
    let l = &c.spec.listeners;
    [
        (ListenerKind::Mqtt, &l.mqtt),
        (ListenerKind::Mqtts, &l.mqtts),
        (ListenerKind::Ws, &l.ws),
        (ListenerKind::Wss, &l.wss),
    ]
    .into_iter()
    .filter(|(_, spec)| spec.enabled)
    .map(|(kind, spec)| (kind, spec.port))
    .collect()
}

fn broker_port(kind: ListenerKind) -> u16 {
    match kind {
        ListenerKind::Mqtt => ports::MQTT,
        ListenerKind::Mqtts => ports::MQTTS,
        ListenerKind::Ws => ports::WS,
        ListenerKind::Wss => ports::WSS,
    }
}

/// What the HAProxy configuration depends on. HAProxy listens on the brokers' ports; the
/// Service maps the ports users chose onto them.
pub fn haproxy_settings(c: &MqttCluster, names: &Names) -> Haproxy {
    let nodes = (0..MAX_REPLICAS)
        .map(|i| Node {
            name: names.pod(i),
            host: names.pod_host(i),
        })
        .collect();
    let mut h = Haproxy::standard(nodes);
    h.listeners = listeners(c)
        .into_iter()
        .map(|(kind, _)| Listener {
            kind,
            port: broker_port(kind),
            broker_port: broker_port(kind),
        })
        .collect();
    h.health_port = ports::HTTP;
    h.stats_port = Some(ports::LB_STATS);
    h.sticky = c.spec.load_balancer.sticky;
    // The brokers enforce `limits.maxConnections` each; HAProxy's own per-listener limit stays
    // fixed (the standard one), so that scaling never changes its configuration.
    h
}

/// HAProxy's ConfigMap.
pub fn config_map(c: &MqttCluster, names: &Names) -> ConfigMap {
    ConfigMap {
        metadata: object_meta(c, names, names.load_balancer(), Component::LoadBalancer),
        data: Some(BTreeMap::from([(
            CONFIG_KEY.to_owned(),
            haproxy::render(&haproxy_settings(c, names)),
        )])),
        ..ConfigMap::default()
    }
}

/// HAProxy's Deployment. `config_text` is the configuration it runs (its hash rolls the
/// pods when it changes, which only a change of listeners or limits does).
pub fn deployment(
    c: &MqttCluster,
    names: &Names,
    env: &Environment,
    config_text: &str,
) -> Deployment {
    let lb = &c.spec.load_balancer;
    let mut container_ports: Vec<ContainerPort> = listeners(c)
        .into_iter()
        .map(|(kind, _)| ContainerPort {
            name: Some(kind.name().into()),
            container_port: broker_port(kind).into(),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        })
        .collect();
    container_ports.push(ContainerPort {
        name: Some("stats".into()),
        container_port: ports::LB_STATS.into(),
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    });
    let probe = |failures| Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/healthz".into()),
            port: IntOrString::String("stats".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(5),
        failure_threshold: Some(failures),
        ..Probe::default()
    };
    let container = Container {
        name: "haproxy".into(),
        image: Some(
            lb.image
                .clone()
                .unwrap_or_else(|| env.haproxy_image.clone()),
        ),
        image_pull_policy: c.spec.image_pull_policy.map(|p| p.as_str().to_owned()),
        args: Some(vec![
            "haproxy".into(),
            "-W".into(),
            "-db".into(),
            "-f".into(),
            format!("{CONFIG_DIR}/{CONFIG_KEY}"),
        ]),
        ports: Some(container_ports),
        readiness_probe: Some(probe(2)),
        liveness_probe: Some(probe(6)),
        resources: lb.resources.clone(),
        volume_mounts: Some(vec![VolumeMount {
            name: "config".into(),
            mount_path: CONFIG_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    let pod_labels = super::meta::pod_labels(names, Component::LoadBalancer);
    Deployment {
        metadata: object_meta(c, names, names.load_balancer(), Component::LoadBalancer),
        spec: Some(DeploymentSpec {
            replicas: Some(lb.replicas),
            selector: selector(names, Component::LoadBalancer),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH.into(),
                        config_hash(config_text),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(vec![Volume {
                        name: "config".into(),
                        config_map: Some(ConfigMapVolumeSource {
                            name: names.load_balancer(),
                            ..ConfigMapVolumeSource::default()
                        }),
                        ..Volume::default()
                    }]),
                    // HAProxy closes old connections over five minutes after SIGUSR1
                    // (close-spread-time), so devices reconnect gradually, not all at once.
                    termination_grace_period_seconds: Some(330),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(HAPROXY_UID),
                        run_as_group: Some(HAPROXY_UID),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        // Ports below 1024 need no capability for an unprivileged user.
                        sysctls: None,
                        ..PodSecurityContext::default()
                    }),
                    image_pull_secrets: (!c.spec.image_pull_secrets.is_empty())
                        .then(|| c.spec.image_pull_secrets.clone()),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// The uid HAProxy runs as (the image's `haproxy` user is created with this id).
pub const HAPROXY_UID: i64 = 65533;

/// `externalTrafficPolicy: Local` for a Service that devices reach from outside: their
/// addresses are kept (not replaced by a node's on a hop between nodes).
pub fn keep_client_address(lb: &crate::crd::LoadBalancerSpec) -> Option<String> {
    (lb.service_type != crate::crd::ServiceType::ClusterIP).then(|| "Local".into())
}

/// `loadBalancerSourceRanges`, for a LoadBalancer Service when some are given.
pub fn source_ranges(lb: &crate::crd::LoadBalancerSpec) -> Option<Vec<String>> {
    (lb.service_type == crate::crd::ServiceType::LoadBalancer
        && !lb.load_balancer_source_ranges.is_empty())
    .then(|| lb.load_balancer_source_ranges.clone())
}

/// The client-facing Service: the LoadBalancer (by default) devices connect to.
pub fn service(c: &MqttCluster, names: &Names) -> Service {
    let lb = &c.spec.load_balancer;
    let mut meta = object_meta(c, names, names.client_service(), Component::LoadBalancer);
    if !lb.annotations.is_empty() {
        meta.annotations = Some(lb.annotations.clone());
    }
    Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            type_: Some(lb.service_type.as_str().into()),
            selector: Some(selector_labels(names, Component::LoadBalancer)),
            ports: Some(
                listeners(c)
                    .into_iter()
                    .map(|(kind, port)| ServicePort {
                        name: Some(kind.name().into()),
                        port,
                        target_port: Some(IntOrString::String(kind.name().into())),
                        protocol: Some("TCP".into()),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            // Devices' addresses reach HAProxy (and, through PROXY v2, the brokers) only when
            // traffic is not bounced through another node.
            external_traffic_policy: keep_client_address(lb),
            load_balancer_source_ranges: source_ranges(lb),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::MqttClusterSpec;

    fn cluster(spec: serde_json::Value) -> MqttCluster {
        let mut c = MqttCluster::new(
            "iot",
            serde_json::from_value::<MqttClusterSpec>(spec).unwrap(),
        );
        c.metadata.namespace = Some("fleet".into());
        c
    }

    #[test]
    fn every_broker_slot_is_a_server_so_scaling_never_touches_haproxy() {
        let small = cluster(serde_json::json!({"replicas": 1}));
        let big = cluster(serde_json::json!({"replicas": 9}));
        let n = Names::of(&small, "cluster.local");
        let a = config_map(&small, &n).data.unwrap();
        let b = config_map(&big, &n).data.unwrap();
        assert_eq!(a, b);
        let text = &a[CONFIG_KEY];
        assert!(
            text.contains("iot-63.iot-nodes.fleet.svc.cluster.local:1883"),
            "{text}"
        );
        assert!(haproxy::validate(&haproxy_settings(&big, &n)).is_ok());
    }

    #[test]
    fn the_service_maps_user_ports_onto_haproxy() {
        let c = cluster(serde_json::json!({
            "listeners": {"mqtt": {"enabled": false, "port": 1883}, "mqtts": {"enabled": true, "port": 443}},
            "tls": {"selfSigned": {}},
            "loadBalancer": {"annotations": {"cloud/lb": "nlb"}, "loadBalancerSourceRanges": ["10.0.0.0/8"]},
        }));
        let n = Names::of(&c, "cluster.local");
        let s = service(&c, &n);
        assert_eq!(s.metadata.annotations.unwrap()["cloud/lb"], "nlb");
        let spec = s.spec.unwrap();
        let p = spec.ports.unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].port, 443);
        assert_eq!(p[0].target_port, Some(IntOrString::String("mqtts".into())));
        assert_eq!(
            spec.load_balancer_source_ranges.unwrap(),
            vec!["10.0.0.0/8"]
        );
        let d = deployment(&c, &n, &Environment::default(), "cfg");
        let ports = d.spec.unwrap().template.spec.unwrap().containers[0]
            .ports
            .clone()
            .unwrap();
        assert!(
            ports
                .iter()
                .any(|p| p.name.as_deref() == Some("mqtts") && p.container_port == 8883)
        );
    }
}
