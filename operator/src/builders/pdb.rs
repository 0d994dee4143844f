//! The brokers' PodDisruptionBudget: node drains and cluster upgrades take at most
//! `maxUnavailable` brokers down at once (each drains its clients first).

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::meta::{Component, Names, object_meta, selector};
use crate::crd::MqttCluster;

/// The PodDisruptionBudget, or `None` when the spec turns it off.
pub fn pod_disruption_budget(c: &MqttCluster, names: &Names) -> Option<PodDisruptionBudget> {
    let spec = &c.spec.pod_disruption_budget;
    spec.enabled.then(|| PodDisruptionBudget {
        metadata: object_meta(c, names, names.statefulset(), Component::Broker),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(spec.max_unavailable)),
            selector: Some(selector(names, Component::Broker)),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::MqttClusterSpec;

    #[test]
    fn one_broker_at_a_time_unless_told_otherwise() {
        let mut c = MqttCluster::new(
            "iot",
            serde_json::from_str::<MqttClusterSpec>("{}").unwrap(),
        );
        let names = Names::of(&c, "cluster.local");
        let p = pod_disruption_budget(&c, &names).unwrap();
        assert_eq!(p.spec.unwrap().max_unavailable, Some(IntOrString::Int(1)));
        c.spec.pod_disruption_budget.enabled = false;
        assert!(pod_disruption_budget(&c, &names).is_none());
    }
}
