//! The brokers' own Services: the headless one that names each pod (and that peers resolve to
//! find each other), and a ClusterIP one for their HTTP port (metrics, admin API).
//! The client-facing Service is HAProxy's, in [`super::load_balancer`].

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::meta::{Component, Names, object_meta, ports, selector_labels};
use crate::crd::MqttCluster;

fn tcp(name: &str, port: u16) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: port.into(),
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

/// The headless Service: `<pod>.<cluster>-nodes` names each broker, and its name resolves to
/// every broker, ready or not (a starting node must find its peers to become ready).
pub fn headless(c: &MqttCluster, names: &Names) -> Service {
    Service {
        metadata: object_meta(c, names, names.headless(), Component::Broker),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(names, Component::Broker)),
            ports: Some(vec![
                tcp("cluster", ports::CLUSTER),
                tcp("http", ports::HTTP),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The brokers' HTTP port behind one ClusterIP: what a ServiceMonitor scrapes (per pod, via
/// its endpoints) and what the operator reads status from.
pub fn brokers(c: &MqttCluster, names: &Names) -> Service {
    let mut metadata = object_meta(c, names, names.broker_service(), Component::Broker);
    if let Some(labels) = metadata.labels.as_mut() {
        labels.insert(
            super::service_monitor::JOB_LABEL.into(),
            super::service_monitor::JOB.into(),
        );
    }
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(names, Component::Broker)),
            ports: Some(vec![tcp("http", ports::HTTP)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::MqttClusterSpec;

    #[test]
    fn the_headless_service_publishes_starting_pods() {
        let c = MqttCluster::new(
            "iot",
            serde_json::from_str::<MqttClusterSpec>("{}").unwrap(),
        );
        let names = Names::of(&c, "cluster.local");
        let h = headless(&c, &names).spec.unwrap();
        assert_eq!(h.cluster_ip.as_deref(), Some("None"));
        assert_eq!(h.publish_not_ready_addresses, Some(true));
        let b = brokers(&c, &names);
        assert_eq!(b.metadata.name.as_deref(), Some("iot-brokers"));
        assert_eq!(b.spec.unwrap().ports.unwrap()[0].port, 9100);
    }
}
