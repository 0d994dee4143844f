//! NetworkPolicies that let in only what each part needs: devices reach HAProxy; HAProxy
//! reaches the brokers' listeners; brokers reach each other's cluster port; Redis and
//! PostgreSQL take connections from the brokers (and their own replicas) only. The brokers'
//! HTTP port (metrics, health, the token-protected admin API) is open to the cluster, for
//! Prometheus and the operator. Egress is not restricted.

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::load_balancer::listeners;
use super::meta::{Component, Names, object_meta, ports, selector};
use crate::crd::MqttCluster;

fn port(number: u16, protocol: &str) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(number.into())),
        protocol: Some(protocol.into()),
        ..NetworkPolicyPort::default()
    }
}

fn pods(names: &Names, component: Component) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(selector(names, component)),
        ..NetworkPolicyPeer::default()
    }
}

fn anywhere_in_the_cluster() -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector::default()),
        ..NetworkPolicyPeer::default()
    }
}

fn rule(
    from: Option<Vec<NetworkPolicyPeer>>,
    ports: Vec<NetworkPolicyPort>,
) -> NetworkPolicyIngressRule {
    NetworkPolicyIngressRule {
        from,
        ports: Some(ports),
    }
}

fn policy(
    c: &MqttCluster,
    names: &Names,
    name: String,
    component: Component,
    ingress: Vec<NetworkPolicyIngressRule>,
) -> NetworkPolicy {
    NetworkPolicy {
        metadata: object_meta(c, names, name, component),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector(names, component)),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(ingress),
            ..NetworkPolicySpec::default()
        }),
    }
}

fn broker_port(kind: super::haproxy::ListenerKind) -> u16 {
    use super::haproxy::ListenerKind;
    match kind {
        ListenerKind::Mqtt => ports::MQTT,
        ListenerKind::Mqtts => ports::MQTTS,
        ListenerKind::Ws => ports::WS,
        ListenerKind::Wss => ports::WSS,
    }
}

/// Every NetworkPolicy of the cluster.
pub fn network_policies(c: &MqttCluster, names: &Names) -> Vec<NetworkPolicy> {
    let listener_ports: Vec<_> = listeners(c)
        .into_iter()
        .map(|(kind, _)| port(broker_port(kind), "TCP"))
        .collect();
    let mut broker_rules = vec![
        rule(
            Some(vec![pods(names, Component::LoadBalancer)]),
            listener_ports.clone(),
        ),
        rule(
            Some(vec![pods(names, Component::Broker)]),
            vec![port(ports::CLUSTER, "TCP")],
        ),
        rule(
            Some(vec![anywhere_in_the_cluster()]),
            vec![port(ports::HTTP, "TCP")],
        ),
    ];
    let coap = &c.spec.coap;
    if coap.enabled {
        let mut udp = Vec::new();
        if coap.plain {
            udp.push(port(ports::COAP, "UDP"));
        }
        if coap.dtls.is_some() {
            udp.push(port(ports::COAPS, "UDP"));
        }
        broker_rules.push(rule(None, udp));
    }
    let mut lb_ports = listener_ports;
    lb_ports.push(port(ports::LB_STATS, "TCP"));
    let mut all = vec![
        policy(
            c,
            names,
            names.statefulset(),
            Component::Broker,
            broker_rules,
        ),
        policy(
            c,
            names,
            names.load_balancer(),
            Component::LoadBalancer,
            vec![rule(None, lb_ports)],
        ),
    ];
    let managed_redis = c
        .spec
        .persistence
        .redis
        .as_ref()
        .is_some_and(|r| r.managed.is_some());
    if managed_redis {
        all.push(policy(
            c,
            names,
            names.redis(),
            Component::Redis,
            vec![rule(
                Some(vec![
                    pods(names, Component::Broker),
                    pods(names, Component::Redis),
                ]),
                vec![port(ports::REDIS, "TCP"), port(ports::SENTINEL, "TCP")],
            )],
        ));
    }
    let managed_pg = c
        .spec
        .persistence
        .postgres
        .as_ref()
        .is_some_and(|p| p.managed.is_some());
    if managed_pg {
        all.push(policy(
            c,
            names,
            names.postgres(),
            Component::Postgres,
            vec![rule(
                Some(vec![
                    pods(names, Component::Broker),
                    pods(names, Component::Postgres),
                ]),
                vec![port(ports::POSTGRES, "TCP")],
            )],
        ));
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::MqttClusterSpec;

    #[test]
    fn brokers_take_listeners_from_haproxy_and_links_from_each_other() {
        let c = MqttCluster::new(
            "iot",
            serde_json::from_value::<MqttClusterSpec>(serde_json::json!({
                "persistence": {"redis": {"managed": {}}}
            }))
            .unwrap(),
        );
        let names = Names::of(&c, "cluster.local");
        let all = network_policies(&c, &names);
        assert_eq!(all.len(), 3);
        let brokers = all[0].spec.as_ref().unwrap().ingress.as_ref().unwrap();
        assert_eq!(
            brokers[0].ports.as_ref().unwrap()[0].port,
            Some(IntOrString::Int(1883))
        );
        assert_eq!(
            brokers[1].ports.as_ref().unwrap()[0].port,
            Some(IntOrString::Int(4370))
        );
        let lb = all[1].spec.as_ref().unwrap().ingress.as_ref().unwrap();
        assert!(lb[0].from.is_none(), "devices come from anywhere");
        assert_eq!(all[2].metadata.name.as_deref(), Some("iot-redis"));
    }
}
