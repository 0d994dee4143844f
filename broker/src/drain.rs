//! Draining a node before it stops (SIGTERM, `POST /admin/drain`): readiness fails at once,
//! the listeners close (new clients reach the other nodes through the load balancer), and the
//! connected clients are told to go, a bounded number per second, MQTT 5.0 clients with
//! DISCONNECT 0x9C (use another server) and the configured Server Reference. Their sessions
//! are left as a shutdown leaves them: stored, wills kept, for the node the client reaches next;
//! in a cluster, those whose clients have not come back elsewhere by the end are handed to the
//! other nodes. Then [`Broker::drained`] is cancelled and the process may exit.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::broker::Broker;
use rookery_codec::reason;

/// How many connections to have disconnected by `elapsed`, out of `total`: `rate` per second,
/// sped up so that all are done by `timeout`. Pure, for the tests.
pub fn due(total: usize, rate: u32, elapsed: Duration, timeout: Duration) -> usize {
    let by_rate = elapsed.as_secs_f64() * f64::from(rate.max(1));
    let by_deadline = if timeout.is_zero() || elapsed >= timeout {
        total as f64
    } else {
        total as f64 * elapsed.as_secs_f64() / timeout.as_secs_f64()
    };
    // The first one goes at once.
    (by_rate.max(by_deadline).floor() as usize + 1).min(total)
}

/// The DISCONNECT reason a drained MQTT 5.0 client gets: 0x9C (use another server) where there
/// is another server (a cluster, or a configured reference), else 0x8B (shutting down).
pub fn disconnect_reason(broker: &Broker) -> u8 {
    if broker.cluster.get().is_some() || broker.config.server_reference.is_some() {
        reason::USE_ANOTHER_SERVER
    } else {
        reason::SERVER_SHUTTING_DOWN
    }
}

/// Starts a drain unless one is under way; returns at once. Returns false when one was.
pub fn start(broker: &Arc<Broker>) -> bool {
    if broker.drain.is_cancelled() {
        return false;
    }
    broker.drain.cancel();
    if let Some(cluster) = broker.cluster.get() {
        // The others stop handing sessions to this node.
        cluster.broadcast(&crate::cluster::frame::Frame::Draining);
    }
    let b = broker.clone();
    tokio::spawn(async move { run(&b).await });
    true
}

/// Starts a drain (unless one is under way) and waits for it to finish.
pub async fn drain(broker: &Arc<Broker>) {
    start(broker);
    broker.drained.cancelled().await;
}

async fn run(broker: &Arc<Broker>) {
    let started = Instant::now();
    let rate = broker.config.drain_rate;
    let timeout = Duration::from_secs(broker.config.drain_timeout_secs);
    let online: Vec<_> = broker
        .sessions
        .all()
        .into_iter()
        .filter(|s| s.is_attached())
        .collect();
    let total = online.len();
    info!(
        connections = total,
        rate,
        timeout_secs = timeout.as_secs(),
        "draining: readiness fails, listeners closed, clients told to use another server"
    );
    let mut sent = 0;
    while sent < total {
        let target = due(total, rate, started.elapsed(), timeout);
        while sent < target {
            online[sent].drain();
            sent += 1;
        }
        if sent < total {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                _ = broker.shutdown.cancelled() => break,
            }
        }
    }
    // The last ones flush and close; sessions that attached meanwhile (a CONNECT that was
    // already past its checks) are told too.
    let grace = started + timeout + Duration::from_secs(5);
    let mut rescan = Instant::now() + Duration::from_secs(1);
    loop {
        if Instant::now() >= rescan {
            rescan += Duration::from_secs(1);
            for session in broker.sessions.all() {
                if session.is_attached() {
                    session.drain();
                }
            }
        }
        let open = broker.metrics.connections.load(Ordering::Relaxed);
        if open <= 0 || broker.shutdown.is_cancelled() {
            break;
        }
        if Instant::now() >= grace {
            warn!(open, "drain: connections still open at its deadline");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Sessions whose clients have not come back elsewhere yet go to the other nodes, so that
    // what is published for them meanwhile is queued there, not lost with this node.
    let handed = broker.hand_off_parked(Duration::from_secs(15)).await;
    info!(
        clients = total,
        sessions_handed_over = handed,
        secs = format!("{:.1}", started.elapsed().as_secs_f64()),
        "drained"
    );
    broker.drained.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(f64) -> Duration = Duration::from_secs_f64;

    #[test]
    fn the_rate_sets_the_pace_when_the_deadline_is_far() {
        let t = S(60.0);
        assert_eq!(due(1000, 100, S(0.0), t), 1);
        assert_eq!(due(1000, 100, S(0.5), t), 51);
        assert_eq!(due(1000, 100, S(2.0), t), 201);
        assert_eq!(due(1000, 100, S(30.0), t), 1000);
    }

    #[test]
    fn the_deadline_speeds_a_slow_rate_up() {
        let t = S(10.0);
        // 10 per second would take 100 s; the deadline wants 100 per second.
        assert_eq!(due(1000, 10, S(1.0), t), 101);
        assert_eq!(due(1000, 10, S(5.0), t), 501);
        assert_eq!(due(1000, 10, S(10.0), t), 1000);
        assert_eq!(due(1000, 10, S(11.0), t), 1000);
    }

    #[test]
    fn nothing_to_drain_is_done_at_once_and_zero_timeout_means_all() {
        assert_eq!(due(0, 500, S(0.0), S(60.0)), 0);
        assert_eq!(due(7, 1, S(0.0), Duration::ZERO), 7);
    }
}
