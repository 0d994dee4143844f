//! Leader election on a `coordination.k8s.io/v1` Lease, so that two replicas of the operator
//! are safe: only the holder reconciles. The holder renews the lease every
//! [`RENEW_EVERY`]; another replica takes it over once it has not been renewed for
//! [`LEASE_SECS`]. Writes go through `replace` with the lease's `resourceVersion`, so two
//! replicas racing for an expired lease cannot both win. A holder that cannot renew in time
//! stops (the process exits and comes back as a standby) rather than reconcile beside a new
//! leader.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tracing::{info, warn};

/// Seconds a lease is good for without renewal.
pub const LEASE_SECS: i32 = 15;
/// How often the holder renews.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);
/// How often a standby looks at the lease.
pub const RETRY_EVERY: Duration = Duration::from_secs(2);

/// What a replica should do with the lease as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// It is ours: renew it.
    Renew,
    /// Nobody holds it, or the holder let it expire: take it.
    Take,
    /// Someone else holds it.
    Wait,
}

/// Decides from the lease's spec (none: no lease yet).
pub fn decide(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Decision {
    let Some(spec) = spec else {
        return Decision::Take;
    };
    match spec.holder_identity.as_deref() {
        Some(h) if h == me => Decision::Renew,
        None | Some("") => Decision::Take,
        Some(_) => {
            let duration = i64::from(spec.lease_duration_seconds.unwrap_or(LEASE_SECS));
            let renewed = spec
                .renew_time
                .as_ref()
                .or(spec.acquire_time.as_ref())
                .map(|t| t.0.as_second());
            match renewed {
                Some(r) if now.as_second() - r <= duration => Decision::Wait,
                _ => Decision::Take,
            }
        }
    }
}

/// The spec of a lease `me` holds from `now` (taken over from `previous` if any).
pub fn taken(previous: Option<&LeaseSpec>, me: &str, now: Timestamp) -> LeaseSpec {
    let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
    let changed = previous.and_then(|p| p.holder_identity.as_deref()) != Some(me);
    LeaseSpec {
        holder_identity: Some(me.into()),
        lease_duration_seconds: Some(LEASE_SECS),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions + i32::from(changed && previous.is_some())),
        ..LeaseSpec::default()
    }
}

/// One attempt: `Ok(true)` when `me` holds the lease afterwards.
pub async fn try_hold(api: &Api<Lease>, name: &str, me: &str) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let current = api.get_opt(name).await?;
    let spec = current.as_ref().and_then(|l| l.spec.as_ref());
    let decision = decide(spec, me, now);
    let new_spec = match decision {
        Decision::Wait => return Ok(false),
        Decision::Renew => {
            let mut s = spec.cloned().unwrap_or_default();
            s.renew_time = Some(MicroTime(now));
            s
        }
        Decision::Take => taken(spec, me, now),
    };
    let result = match current {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    ..ObjectMeta::default()
                },
                spec: Some(new_spec),
            };
            api.create(&PostParams::default(), &lease).await
        }
        Some(mut lease) => {
            // `replace` carries the resourceVersion read above: a racing writer makes this
            // fail with 409 instead of both believing they lead.
            lease.spec = Some(new_spec);
            api.replace(name, &PostParams::default(), &lease).await
        }
    };
    match result {
        Ok(_) => {
            if decision == Decision::Take {
                info!(
                    lease = name,
                    holder = me,
                    "leader election: this replica leads"
                );
            }
            Ok(true)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// A request to the API server may hang (the client has no read timeout): one that takes
/// longer than a renewal period counts as failed, so that a holder notices in time that it
/// can no longer renew.
async fn bounded(
    attempt: impl std::future::Future<Output = Result<bool, kube::Error>>,
) -> Result<bool, kube::Error> {
    match tokio::time::timeout(RENEW_EVERY, attempt).await {
        Ok(r) => r,
        Err(_) => Err(kube::Error::Service(Box::new(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "lease request timed out",
        )))),
    }
}

/// Waits until `me` holds the lease.
pub async fn acquire(api: &Api<Lease>, name: &str, me: &str) {
    loop {
        match bounded(try_hold(api, name, me)).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => warn!(error = %e, "leader election: cannot read or write the lease"),
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}

/// Renews the lease until a renewal fails for longer than the lease lasts (or another
/// replica holds it); then returns: leadership is lost.
pub async fn keep(api: &Api<Lease>, name: &str, me: &str) {
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        match bounded(try_hold(api, name, me)).await {
            Ok(true) => last_ok = tokio::time::Instant::now(),
            Ok(false) => {
                warn!(
                    lease = name,
                    "leader election: another replica holds the lease"
                );
                return;
            }
            Err(e) => warn!(error = %e, "leader election: renewal failed"),
        }
        // Stop before the lease can expire under us: a standby may take it then.
        if last_ok.elapsed() >= Duration::from_secs(LEASE_SECS as u64) - RENEW_EVERY {
            warn!(lease = name, "leader election: could not renew in time");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn held_by(who: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(who.into()),
            lease_duration_seconds: Some(LEASE_SECS),
            renew_time: Some(MicroTime(at(renewed))),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_fresh_lease_of_another_waits_an_expired_one_is_taken() {
        assert_eq!(decide(None, "a", at(0)), Decision::Take);
        assert_eq!(
            decide(Some(&held_by("a", 0)), "a", at(100)),
            Decision::Renew
        );
        assert_eq!(decide(Some(&held_by("b", 0)), "a", at(10)), Decision::Wait);
        assert_eq!(decide(Some(&held_by("b", 0)), "a", at(15)), Decision::Wait);
        assert_eq!(decide(Some(&held_by("b", 0)), "a", at(16)), Decision::Take);
        assert_eq!(decide(Some(&held_by("", 0)), "a", at(1)), Decision::Take);
    }

    #[test]
    fn taking_over_counts_a_transition() {
        let s = taken(Some(&held_by("b", 0)), "a", at(20));
        assert_eq!(s.holder_identity.as_deref(), Some("a"));
        assert_eq!(s.lease_transitions, Some(1));
        assert_eq!(taken(None, "a", at(0)).lease_transitions, Some(0));
    }
}
