//! The Prometheus Operator's ServiceMonitor for the brokers (only when its CRD is installed
//! and `monitoring.serviceMonitor` is on). Its job label is `rookery`, which the shipped
//! dashboard and alerts select.

use serde_json::{Value, json};

use super::meta::{Component, Names, object_meta};
use crate::crd::MqttCluster;

/// The label of the brokers' metrics Service that names the Prometheus job.
pub const JOB_LABEL: &str = "rookery.dev/job";
/// Its value: the job the dashboard and alert rules select.
pub const JOB: &str = "rookery";

/// The ServiceMonitor as an untyped object (its type is not part of Kubernetes).
pub fn service_monitor(c: &MqttCluster, names: &Names) -> Value {
    let meta = object_meta(c, names, names.cluster.clone(), Component::Broker);
    let mut endpoint = json!({"port": "http", "path": "/metrics", "scheme": "http"});
    if let Some(interval) = &c.spec.monitoring.interval {
        endpoint["interval"] = json!(interval);
    }
    json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": meta,
        "spec": {
            "jobLabel": JOB_LABEL,
            "selector": {"matchLabels": {
                "app.kubernetes.io/instance": names.cluster,
                "app.kubernetes.io/component": "broker",
                JOB_LABEL: JOB,
            }},
            "namespaceSelector": {"matchNames": [names.namespace]},
            "endpoints": [endpoint],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::MqttClusterSpec;

    #[test]
    fn it_selects_the_metrics_service_by_its_job_label() {
        let mut c = MqttCluster::new(
            "iot",
            serde_json::from_str::<MqttClusterSpec>("{}").unwrap(),
        );
        c.spec.monitoring.interval = Some("15s".into());
        let m = service_monitor(&c, &Names::of(&c, "cluster.local"));
        assert_eq!(m["spec"]["selector"]["matchLabels"][JOB_LABEL], "rookery");
        assert_eq!(m["spec"]["endpoints"][0]["interval"], "15s");
        assert_eq!(m["metadata"]["name"], "iot");
    }
}
