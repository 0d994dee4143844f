//! Cluster-wide failed-login and flapping counters and bans in Redis ([`RedisBans`]), so that a
//! load balancer spreading an attacker over nodes does not spread the count too.
//!
//! # Layout
//!
//! For the Rookery cluster named `C`:
//!
//! - `rookery:C:count:<kind>:<key>`: an integer, the events of `key` (`addr/IP`, `user/NAME`,
//!   `id/CLIENT`) in the current window of that kind (`auth` or `flapping`). The first event
//!   creates it with the window as its TTL (`SET ... NX PX`), every event increments it
//!   (`INCR` keeps the TTL): a fixed window that starts at the first event.
//! - `rookery:C:bans`: a sorted set of banned keys scored with the end of their ban in
//!   milliseconds since the Unix epoch. Nodes read the members whose score is in the future
//!   once a second ([`RedisBans::active`]) and drop the rest (`ZREMRANGEBYSCORE`).
//!
//! An event past the limit adds the key to the ban set and deletes its counter. Connections
//! and failover as for the session store (see [`crate::redis`]).

use std::time::Duration;

use crate::redis::Connector;
use crate::{StoreResult, now_ms};

/// Counters and bans shared by every node of a cluster through Redis.
pub struct RedisBans {
    connector: Connector,
    count_prefix: String,
    bans_key: String,
}

impl std::fmt::Debug for RedisBans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBans")
            .field("bans_key", &self.bans_key)
            .finish()
    }
}

impl RedisBans {
    /// Bans for the cluster named `cluster_name` in the Redis at `url` (the same URLs as the
    /// session store). Only the URL is checked here: the connection is made on first use, and
    /// remade after a failure.
    pub fn new(url: &str, cluster_name: &str) -> StoreResult<RedisBans> {
        Ok(RedisBans {
            connector: Connector::new(url)?,
            count_prefix: format!("rookery:{cluster_name}:count:"),
            bans_key: format!("rookery:{cluster_name}:bans"),
        })
    }

    /// Counts one event of `kind` for `key`. When it makes more than `max` in the window, bans
    /// `key` for `ban` and returns when the ban ends (ms since the epoch). A retried call after
    /// an unclear failure may count one event twice: harmless for a limit.
    pub async fn record(
        &self,
        kind: &str,
        key: &str,
        max: u32,
        window: Duration,
        ban: Duration,
    ) -> StoreResult<Option<u64>> {
        let counter = format!("{}{kind}:{key}", self.count_prefix);
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
        let (count,): (u64,) = self
            .connector
            .run(|mut c| {
                let counter = counter.clone();
                async move {
                    redis::pipe()
                        .atomic()
                        .cmd("SET")
                        .arg(&counter)
                        .arg(0)
                        .arg("NX")
                        .arg("PX")
                        .arg(window_ms)
                        .ignore()
                        .cmd("INCR")
                        .arg(&counter)
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        if count <= u64::from(max) {
            return Ok(None);
        }
        let until = now_ms().saturating_add(u64::try_from(ban.as_millis()).unwrap_or(u64::MAX));
        self.connector
            .run(|mut c| {
                let (counter, bans_key) = (counter.clone(), self.bans_key.clone());
                async move {
                    redis::pipe()
                        .atomic()
                        .cmd("ZADD")
                        .arg(&bans_key)
                        .arg(until)
                        .arg(key)
                        .ignore()
                        .cmd("DEL")
                        .arg(&counter)
                        .ignore()
                        .query_async::<()>(&mut c)
                        .await
                }
            })
            .await?;
        Ok(Some(until))
    }

    /// The bans in force: (key, end in ms since the epoch). Ended ones are deleted.
    pub async fn active(&self) -> StoreResult<Vec<(String, u64)>> {
        let now = now_ms();
        let (bans,): (Vec<(String, f64)>,) = self
            .connector
            .run(|mut c| {
                let bans_key = self.bans_key.clone();
                async move {
                    redis::pipe()
                        .atomic()
                        .cmd("ZREMRANGEBYSCORE")
                        .arg(&bans_key)
                        .arg("-inf")
                        .arg(now)
                        .ignore()
                        .cmd("ZRANGE")
                        .arg(&bans_key)
                        .arg(0)
                        .arg(-1)
                        .arg("WITHSCORES")
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        Ok(bans.into_iter().map(|(k, s)| (k, s as u64)).collect())
    }

    /// Lifts the ban on `key` and forgets its counts of every kind; true when it was banned.
    pub async fn clear(&self, key: &str, kinds: &[&str]) -> StoreResult<bool> {
        let counters: Vec<String> = kinds
            .iter()
            .map(|kind| format!("{}{kind}:{key}", self.count_prefix))
            .collect();
        let (removed,): (u64,) = self
            .connector
            .run(|mut c| {
                let (counters, bans_key) = (counters.clone(), self.bans_key.clone());
                async move {
                    let mut pipe = redis::pipe();
                    pipe.atomic().cmd("ZREM").arg(&bans_key).arg(key);
                    for counter in &counters {
                        pipe.cmd("DEL").arg(counter).ignore();
                    }
                    pipe.query_async(&mut c).await
                }
            })
            .await?;
        Ok(removed > 0)
    }
}
