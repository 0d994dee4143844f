//! Bans and counters shared by the nodes of a cluster through Redis, beside each node's own
//! trackers: a failed login or a CONNECT counts in Redis too, a key past the limit there is
//! banned on every node, and an operator lifting a ban lifts it everywhere.
//!
//! Each node keeps a copy of the cluster's bans, refreshed every second and on every ban it
//! makes itself, so checking a CONNECT needs no round trip. Counting does: one pipelined
//! `INCR` per event, bounded by [`CALL_TIMEOUT`]. While Redis fails the node counts locally
//! only (its own trackers still ban), retries after [`PAUSE_AFTER_FAILURE`], and says so once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ahash::AHashMap;
use parking_lot::Mutex;
use rookery_auth::tracker::TrackerConfig;
use rookery_store::now_ms;
use rookery_store::redis_bans::RedisBans;
use tracing::{info, warn};

/// Longest a CONNECT waits for Redis to count it.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(250);
/// After a failed call, Redis is left alone this long (CONNECTs do not wait on a dead server).
pub const PAUSE_AFTER_FAILURE: Duration = Duration::from_secs(5);
/// How often the copy of the cluster's bans is refreshed.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// What is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Failed logins, by address and username.
    Auth,
    /// CONNECTs, by client id (and address when that limit is on).
    Flapping,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Auth => "auth",
            Kind::Flapping => "flapping",
        }
    }
}

/// Every kind's name, for clearing a key's counters.
const KINDS: [&str; 2] = ["auth", "flapping"];

/// The shared bans of a cluster, as this node sees them.
pub struct ClusterBans {
    store: RedisBans,
    /// Key to end of ban.
    copy: Mutex<AHashMap<String, Instant>>,
    /// Redis is not asked again before this.
    paused_until: Mutex<Option<Instant>>,
}

impl ClusterBans {
    /// Shares bans through `store`.
    pub fn new(store: RedisBans) -> Arc<ClusterBans> {
        Arc::new(ClusterBans {
            store,
            copy: Mutex::new(AHashMap::new()),
            paused_until: Mutex::new(None),
        })
    }

    /// When the cluster ban on `key` ends, if there is one.
    pub fn banned_until(&self, key: &str, now: Instant) -> Option<Instant> {
        self.copy.lock().get(key).copied().filter(|&u| u > now)
    }

    /// The bans in force.
    pub fn bans(&self, now: Instant) -> Vec<(String, Instant)> {
        self.copy
            .lock()
            .iter()
            .filter(|(_, u)| **u > now)
            .map(|(k, u)| (k.clone(), *u))
            .collect()
    }

    /// Counts one event for `key` in Redis; `Some(until)` when it banned the key cluster-wide.
    pub async fn record(&self, kind: Kind, key: &str, limits: TrackerConfig) -> Option<Instant> {
        if self.paused() {
            return None;
        }
        let call = self.store.record(
            kind.as_str(),
            key,
            limits.max_events,
            limits.window,
            limits.ban,
        );
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(Some(until_ms))) => {
                let until = instant_of(until_ms);
                self.copy.lock().insert(key.to_owned(), until);
                Some(until)
            }
            Ok(Ok(None)) => None,
            Ok(Err(e)) => {
                self.failed(&e.to_string());
                None
            }
            Err(_) => {
                self.failed("no answer in time");
                None
            }
        }
    }

    /// Lifts the ban on `key` in the cluster; true when Redis had it.
    pub async fn clear(&self, key: &str) -> bool {
        self.copy.lock().remove(key);
        match tokio::time::timeout(CALL_TIMEOUT * 4, self.store.clear(key, &KINDS)).await {
            Ok(Ok(had)) => had,
            Ok(Err(e)) => {
                warn!(key, error = %e, "could not lift the ban in Redis; other nodes keep it");
                false
            }
            Err(_) => {
                warn!(
                    key,
                    "could not lift the ban in Redis in time; other nodes keep it"
                );
                false
            }
        }
    }

    /// Replaces the copy with what Redis holds.
    pub async fn sync(&self) {
        match tokio::time::timeout(CALL_TIMEOUT * 4, self.store.active()).await {
            Ok(Ok(active)) => {
                let copy = active
                    .into_iter()
                    .map(|(k, until_ms)| (k, instant_of(until_ms)))
                    .collect();
                *self.copy.lock() = copy;
                let mut paused = self.paused_until.lock();
                if paused.take().is_some() {
                    info!("Redis answers again: bans and counters are cluster-wide again");
                }
            }
            Ok(Err(e)) => self.failed(&e.to_string()),
            Err(_) => self.failed("no answer in time"),
        }
    }

    fn paused(&self) -> bool {
        self.paused_until
            .lock()
            .is_some_and(|until| Instant::now() < until)
    }

    fn failed(&self, why: &str) {
        let mut paused = self.paused_until.lock();
        if paused.is_none() {
            warn!(
                error = why,
                "Redis does not answer: bans and counters are per node until it does"
            );
        }
        *paused = Some(Instant::now() + PAUSE_AFTER_FAILURE);
    }
}

/// The monotonic instant of a wall-clock time in ms since the epoch.
fn instant_of(ms: u64) -> Instant {
    let now = Instant::now();
    let wall = now_ms();
    if ms >= wall {
        now + Duration::from_millis(ms - wall)
    } else {
        now.checked_sub(Duration::from_millis(wall - ms))
            .unwrap_or(now)
    }
}

/// Refreshes `bans` every [`SYNC_INTERVAL`] until `shutdown`.
pub async fn run_sync(bans: Arc<ClusterBans>, shutdown: tokio_util::sync::CancellationToken) {
    let mut ticks = tokio::time::interval(SYNC_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => bans.sync().await,
            _ = shutdown.cancelled() => return,
        }
    }
}
