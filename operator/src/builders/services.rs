//! The brokers' own Services: the headless one that names each pod (and that peers resolve to
//! find each other), a ClusterIP one for their HTTP port (metrics, admin API), and the CoAP
//! gateway's UDP Service when it is on (HAProxy balances TCP only, so CoAP reaches the brokers
//! directly). The client-facing MQTT Service is HAProxy's, in [`super::load_balancer`].

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

fn coap_ports(coap: &crate::crd::CoapSpec) -> Vec<ServicePort> {
    let udp = |name: &str, port: i32| ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("UDP".into()),
        ..ServicePort::default()
    };
    let mut ports = Vec::new();
    if coap.plain {
        ports.push(udp("coap", coap.port));
    }
    if let Some(dtls) = &coap.dtls {
        ports.push(udp("coaps", dtls.port));
    }
    ports
}

/// The CoAP gateway's Service (UDP), when `spec.coap.enabled`: of the load balancer's type,
/// with its source ranges and `spec.coap.annotations`, straight to the brokers. Client-IP affinity keeps a
/// device on one broker, whose gateway then holds its session and observations.
pub fn coap(c: &MqttCluster, names: &Names) -> Option<Service> {
    if !c.spec.coap.enabled {
        return None;
    }
    let lb = &c.spec.load_balancer;
    let mut metadata = object_meta(c, names, names.coap_service(), Component::Broker);
    if !c.spec.coap.annotations.is_empty() {
        metadata.annotations = Some(c.spec.coap.annotations.clone());
    }
    Some(Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(lb.service_type.as_str().into()),
            selector: Some(selector_labels(names, Component::Broker)),
            ports: Some(coap_ports(&c.spec.coap)),
            session_affinity: Some("ClientIP".into()),
            // The gateway learns each device's address from its requests: it must see the
            // device's own address, not a node's.
            external_traffic_policy: super::load_balancer::keep_client_address(lb),
            load_balancer_source_ranges: super::load_balancer::source_ranges(lb),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
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
        assert!(coap(&c, &names).is_none());
    }

    #[test]
    fn the_coap_service_is_udp_to_the_brokers_with_client_affinity() {
        let c = MqttCluster::new(
            "iot",
            serde_json::from_value::<MqttClusterSpec>(serde_json::json!({
                "coap": {"enabled": true, "port": 5684, "annotations": {"a": "b"}},
                "loadBalancer": {"annotations": {"tcp": "only"}, "loadBalancerSourceRanges": ["10.0.0.0/8"]}
            }))
            .unwrap(),
        );
        let names = Names::of(&c, "cluster.local");
        let svc = coap(&c, &names).unwrap();
        assert_eq!(svc.metadata.name.as_deref(), Some("iot-coap"));
        assert_eq!(svc.metadata.annotations.unwrap()["a"], "b");
        let spec = svc.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(spec.session_affinity.as_deref(), Some("ClientIP"));
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
        assert_eq!(spec.load_balancer_source_ranges.unwrap(), ["10.0.0.0/8"]);
        let port = &spec.ports.unwrap()[0];
        assert_eq!((port.port, port.protocol.as_deref()), (5684, Some("UDP")));
        assert_eq!(port.target_port, Some(IntOrString::String("coap".into())));
        assert_eq!(
            spec.selector,
            Some(selector_labels(&names, Component::Broker))
        );
    }
}
