//! The `MqttCluster`'s status from what the operator observed: phase, the four conditions,
//! replicas and per-node figures. Pure: the reconciler gathers [`Observed`] and writes what
//! [`status`] returns, only when it differs from the status already there.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::crd::{MqttCluster, MqttClusterStatus, NodeStatus};

/// How long brokers may stay unready during a change before the cluster is `Degraded`.
pub const DEGRADED_AFTER_SECS: i64 = 600;

/// What the reconciler saw of a valid cluster.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// Broker pods that exist (the StatefulSet's `status.replicas`).
    pub replicas: i32,
    /// Broker pods that are ready.
    pub ready_replicas: i32,
    /// Pods running the current template.
    pub updated_replicas: i32,
    /// Each broker's figures from its admin API (those that answered).
    pub nodes: Vec<NodeStatus>,
    /// Where clients connect.
    pub endpoints: Vec<String>,
    /// Expiry of the server certificate (RFC 3339), when known.
    pub certificate_expiry: Option<String>,
    /// Notes from rendering and reconciling (a missing optional CRD, a held scale-down).
    pub notes: Vec<String>,
    /// A scale-down that is not done yet, and why: draining (progress) or refused.
    pub scale_down_held: Option<String>,
    /// The scale-down is refused (a broker that must take the sessions is not ready, or a
    /// leaving one cannot be reached), not merely in progress.
    pub scale_down_refused: bool,
    /// Objects the API server refused to take (an immutable field changed, say).
    pub refused_objects: Vec<String>,
    /// A pod-by-pod upgrade stopped because a new pod did not become ready.
    pub rollout_stopped: Option<String>,
    /// The label selector of the broker pods.
    pub selector: String,
}

fn condition(
    previous: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    // The transition time moves only when the status does.
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    }
}

fn since(previous: &[Condition], type_: &str, status: &str) -> Option<Timestamp> {
    previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.0)
}

/// The status of a cluster whose spec is invalid: `ConfigValid=False` with the errors, and
/// the rest of what was observed before left as it was (nothing running was touched).
pub fn invalid(c: &MqttCluster, message: String, now: Timestamp) -> MqttClusterStatus {
    let old = c.status.clone().unwrap_or_default();
    let generation = c.metadata.generation;
    let mut conditions: Vec<Condition> = old
        .conditions
        .iter()
        .filter(|x| x.type_ != "ConfigValid")
        .cloned()
        .collect();
    conditions.push(condition(
        &old.conditions,
        "ConfigValid",
        false,
        "InvalidSpec",
        message,
        generation,
        now,
    ));
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    MqttClusterStatus {
        phase: Some("Invalid".into()),
        conditions,
        observed_generation: generation,
        ..old
    }
}

/// The status of a valid cluster.
pub fn status(c: &MqttCluster, o: &Observed, now: Timestamp) -> MqttClusterStatus {
    let old = c.status.clone().unwrap_or_default();
    let prev = &old.conditions;
    let generation = c.metadata.generation;
    let want = c.spec.replicas;
    let all_ready = o.ready_replicas >= want && o.replicas == want && o.updated_replicas >= want;
    let progressing = !all_ready || o.scale_down_held.is_some();
    let progressing_since = since(prev, "Progressing", "True").unwrap_or(now);
    let stuck =
        progressing && now.as_second() - progressing_since.as_second() > DEGRADED_AFTER_SECS;
    let degraded = stuck
        || o.scale_down_refused
        || !o.refused_objects.is_empty()
        || o.rollout_stopped.is_some();

    let ready_msg = format!("{}/{} brokers ready", o.ready_replicas, want);
    let progress_msg = match &o.scale_down_held {
        Some(why) => format!("scale-down held: {why}"),
        None if all_ready => "every broker runs the current spec".into(),
        None => format!(
            "{} of {} brokers updated, {} ready",
            o.updated_replicas, want, o.ready_replicas
        ),
    };
    let refused = o.scale_down_held.as_ref().filter(|_| o.scale_down_refused);
    let degraded_msg = match (refused, stuck) {
        _ if o.rollout_stopped.is_some() => o.rollout_stopped.clone().unwrap_or_default(),
        _ if !o.refused_objects.is_empty() => {
            format!(
                "refused by the API server: {}",
                o.refused_objects.join("; ")
            )
        }
        (Some(why), _) => format!("scale-down held: {why}"),
        (None, true) => format!(
            "brokers not ready for more than {} minutes: {ready_msg}",
            DEGRADED_AFTER_SECS / 60
        ),
        (None, false) => "no".into(),
    };
    let mut conditions = vec![
        condition(
            prev,
            "ConfigValid",
            true,
            "Valid",
            "the spec is valid".into(),
            generation,
            now,
        ),
        condition(
            prev,
            "Degraded",
            degraded,
            if degraded {
                "NotConverging"
            } else {
                "AsExpected"
            },
            degraded_msg,
            generation,
            now,
        ),
        condition(
            prev,
            "Progressing",
            progressing,
            if progressing { "Updating" } else { "Done" },
            progress_msg,
            generation,
            now,
        ),
        condition(
            prev,
            "Ready",
            all_ready,
            if all_ready {
                "AllBrokersReady"
            } else {
                "BrokersNotReady"
            },
            ready_msg,
            generation,
            now,
        ),
    ];
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    let phase = if degraded {
        "Degraded"
    } else if all_ready {
        "Running"
    } else if o.ready_replicas == 0 {
        "Pending"
    } else {
        "Progressing"
    };
    let connections =
        (!o.nodes.is_empty()).then(|| o.nodes.iter().filter_map(|n| n.connections).sum());
    MqttClusterStatus {
        phase: Some(phase.into()),
        conditions,
        observed_generation: generation,
        replicas: o.replicas,
        ready_replicas: o.ready_replicas,
        selector: Some(o.selector.clone()),
        connections,
        nodes: o.nodes.clone(),
        endpoints: o.endpoints.clone(),
        certificate_expiry: o.certificate_expiry.clone(),
        notes: o.notes.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::MqttClusterSpec;

    fn cluster() -> MqttCluster {
        let mut c = MqttCluster::new(
            "iot",
            serde_json::from_str::<MqttClusterSpec>("{}").unwrap(),
        );
        c.metadata.generation = Some(4);
        c
    }

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn cond<'a>(s: &'a MqttClusterStatus, type_: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn all_ready_is_running() {
        let c = cluster();
        let o = Observed {
            replicas: 3,
            ready_replicas: 3,
            updated_replicas: 3,
            nodes: vec![
                NodeStatus {
                    name: "iot-0".into(),
                    ready: true,
                    connections: Some(5),
                    ..Default::default()
                },
                NodeStatus {
                    name: "iot-1".into(),
                    ready: true,
                    connections: Some(7),
                    ..Default::default()
                },
            ],
            ..Observed::default()
        };
        let s = status(&c, &o, t(0));
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(cond(&s, "Progressing").status, "False");
        assert_eq!(cond(&s, "Degraded").status, "False");
        assert_eq!(cond(&s, "ConfigValid").status, "True");
        assert_eq!(s.connections, Some(12));
        assert_eq!(s.observed_generation, Some(4));
    }

    #[test]
    fn a_rollout_that_does_not_converge_becomes_degraded() {
        let mut c = cluster();
        let o = Observed {
            replicas: 3,
            ready_replicas: 2,
            updated_replicas: 1,
            ..Observed::default()
        };
        let first = status(&c, &o, t(0));
        assert_eq!(first.phase.as_deref(), Some("Progressing"));
        c.status = Some(first);
        let later = status(&c, &o, t(60));
        assert_eq!(later.phase.as_deref(), Some("Progressing"));
        // The transition time stays where the change began.
        assert_eq!(cond(&later, "Progressing").last_transition_time, Time(t(0)));
        c.status = Some(later);
        let stuck = status(&c, &o, t(DEGRADED_AFTER_SECS + 1));
        assert_eq!(stuck.phase.as_deref(), Some("Degraded"));
        assert_eq!(cond(&stuck, "Degraded").status, "True");
    }

    #[test]
    fn a_held_scale_down_is_degraded_at_once_and_says_why() {
        let c = cluster();
        let o = Observed {
            replicas: 3,
            ready_replicas: 3,
            updated_replicas: 3,
            scale_down_held: Some("iot-1 is not ready".into()),
            scale_down_refused: true,
            ..Observed::default()
        };
        let s = status(&c, &o, t(0));
        assert_eq!(s.phase.as_deref(), Some("Degraded"));
        assert!(
            cond(&s, "Progressing")
                .message
                .contains("iot-1 is not ready")
        );
    }

    #[test]
    fn a_scale_down_under_way_is_progress_not_degradation() {
        let c = cluster();
        // Five brokers, three wanted, the leaving ones drain (so one is already unready).
        let o = Observed {
            replicas: 5,
            ready_replicas: 4,
            updated_replicas: 5,
            scale_down_held: Some("iot-3 draining".into()),
            ..Observed::default()
        };
        let s = status(&c, &o, t(0));
        assert_eq!(s.phase.as_deref(), Some("Progressing"));
        assert_eq!(cond(&s, "Progressing").status, "True");
        assert_eq!(cond(&s, "Degraded").status, "False");
    }

    #[test]
    fn an_invalid_spec_keeps_what_was_observed() {
        let mut c = cluster();
        let o = Observed {
            replicas: 3,
            ready_replicas: 3,
            updated_replicas: 3,
            ..Observed::default()
        };
        c.status = Some(status(&c, &o, t(0)));
        let s = invalid(&c, "spec.tls: missing".into(), t(5));
        assert_eq!(s.phase.as_deref(), Some("Invalid"));
        assert_eq!(cond(&s, "ConfigValid").status, "False");
        assert_eq!(cond(&s, "ConfigValid").message, "spec.tls: missing");
        assert_eq!(
            cond(&s, "Ready").status,
            "True",
            "the running cluster is untouched"
        );
        assert_eq!(s.ready_replicas, 3);
    }
}
