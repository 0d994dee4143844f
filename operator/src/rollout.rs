//! Pod-by-pod upgrades through the StatefulSet's partition. A change of the brokers' pod
//! template (image, configuration hash) is not handed to the StatefulSet all at once: the
//! partition starts at the highest ordinal, so only that pod is replaced (SIGTERM drains it
//! first), and the operator lowers the partition one ordinal at a time once the pod above it
//! runs the new template and is ready. A new pod that does not become ready stops the rollout
//! there, and the cluster is `Degraded` until the spec is fixed.
//!
//! Pure: the reconciler reads the StatefulSet and the pod at the partition, and applies the
//! partition [`next`] returns.

/// How long a pod that runs the new template may stay unready before the rollout is stopped.
pub const READY_WITHIN_SECS: i64 = 300;

/// The pod at the current partition, as the reconciler found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodAtPartition {
    /// It runs the StatefulSet's update revision.
    pub updated: bool,
    /// It is ready.
    pub ready: bool,
    /// Seconds since it started (0 when unknown).
    pub age_secs: i64,
}

/// What the reconciler knows about the StatefulSet before applying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Live {
    /// Pods of the StatefulSet.
    pub replicas: i32,
    /// Its current partition.
    pub partition: i32,
    /// The pod template the operator wants differs from the live one.
    pub template_changed: bool,
}

/// The partition to apply, and why the rollout stopped if it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Next {
    /// Pods at or above this ordinal run the new template.
    pub partition: i32,
    /// Set when a new pod did not become ready in time.
    pub stopped: Option<String>,
    /// A rollout is under way.
    pub rolling: bool,
}

/// The next partition. `live` is `None` for a StatefulSet not created yet (all pods start on
/// the template at once); `pod` describes the pod at the live partition.
pub fn next(live: Option<Live>, pod: Option<PodAtPartition>, pod_name: &str) -> Next {
    let Some(live) = live else {
        return Next {
            partition: 0,
            stopped: None,
            rolling: false,
        };
    };
    if live.template_changed {
        // A new template: only the highest pod is replaced first.
        return Next {
            partition: (live.replicas - 1).max(0),
            stopped: None,
            rolling: live.replicas > 1,
        };
    }
    if live.partition <= 0 {
        return Next {
            partition: 0,
            stopped: None,
            rolling: false,
        };
    }
    match pod {
        Some(p) if p.updated && p.ready => Next {
            partition: live.partition - 1,
            stopped: None,
            rolling: live.partition > 1,
        },
        Some(p) if p.updated && p.age_secs > READY_WITHIN_SECS => Next {
            partition: live.partition,
            stopped: Some(format!(
                "rollout stopped: {pod_name} runs the new spec and has not become ready in {} minutes",
                READY_WITHIN_SECS / 60
            )),
            rolling: true,
        },
        // Not replaced yet, or starting: wait.
        _ => Next {
            partition: live.partition,
            stopped: None,
            rolling: true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(partition: i32, changed: bool) -> Option<Live> {
        Some(Live {
            replicas: 3,
            partition,
            template_changed: changed,
        })
    }

    fn pod(updated: bool, ready: bool, age_secs: i64) -> Option<PodAtPartition> {
        Some(PodAtPartition {
            updated,
            ready,
            age_secs,
        })
    }

    #[test]
    fn a_new_cluster_starts_every_pod_at_once() {
        assert_eq!(next(None, None, "x").partition, 0);
    }

    #[test]
    fn a_new_template_goes_to_the_highest_pod_first_then_down_one_ready_pod_at_a_time() {
        let n = next(live(0, true), None, "iot-2");
        assert_eq!((n.partition, n.rolling), (2, true));
        // iot-2 not replaced yet, then starting: wait.
        assert_eq!(
            next(live(2, false), pod(false, true, 100), "iot-2").partition,
            2
        );
        assert_eq!(
            next(live(2, false), pod(true, false, 10), "iot-2").partition,
            2
        );
        // Ready on the new template: next one.
        assert_eq!(
            next(live(2, false), pod(true, true, 30), "iot-2").partition,
            1
        );
        let last = next(live(1, false), pod(true, true, 30), "iot-1");
        assert_eq!((last.partition, last.rolling), (0, false));
        assert!(!next(live(0, false), None, "iot-0").rolling);
    }

    #[test]
    fn a_new_pod_that_does_not_become_ready_stops_the_rollout() {
        let n = next(
            live(2, false),
            pod(true, false, READY_WITHIN_SECS + 1),
            "iot-2",
        );
        assert_eq!(n.partition, 2);
        assert!(n.stopped.unwrap().contains("iot-2 runs the new spec"));
        // A newer template starts over from the highest pod.
        assert_eq!(
            next(live(2, true), pod(true, false, 900), "iot-2").partition,
            2
        );
    }
}
