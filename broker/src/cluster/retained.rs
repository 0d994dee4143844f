//! The retained index after a link comes up: while the link was down (a cut, a peer
//! restarting, or before the first link), what the peer's clients set or cleared was not
//! forwarded here. With a shared retained store (PostgreSQL) the store has all of it, so the
//! index is read from it again in the background: one reread at a time, and one more when a
//! link comes up during it. Without a shared store there is nothing to read (docs/clustering.md,
//! "Not yet").

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rookery_store::now_ms;
use tracing::{info, warn};

use crate::broker::Broker;
use crate::persist::Persist;
use crate::router::retained::RetainedIndex;

/// How many times a reread is tried when a retained message changes while it reads.
const TRIES: usize = 3;

/// How long a reread waits for this node's own submitted writes to land first.
const FLUSH_WAIT: Duration = Duration::from_secs(5);

/// One reread at a time ([`Broker::refresh_retained`]).
#[derive(Debug, Default)]
pub struct Rereads {
    running: AtomicBool,
    wanted: AtomicBool,
}

impl Broker {
    /// A link came up: with a shared retained store, reads the retained index from it again
    /// (in the background), for what the peer's clients set or cleared while it was down.
    pub fn refresh_retained(self: &Arc<Self>) {
        let (Some(p), Some(cluster)) = (
            self.persist.clone().filter(|p| p.retained_shared()),
            self.cluster.get(),
        ) else {
            return;
        };
        let rereads = &cluster.retained_rereads;
        rereads.wanted.store(true, Ordering::Release);
        if rereads.running.swap(true, Ordering::AcqRel) {
            // The running one reads again when it is done.
            return;
        }
        let broker = self.clone();
        tokio::spawn(async move {
            let Some(cluster) = broker.cluster.get() else {
                return;
            };
            let rereads = &cluster.retained_rereads;
            loop {
                while rereads.wanted.swap(false, Ordering::AcqRel) {
                    broker.reread_retained(&p).await;
                }
                rereads.running.store(false, Ordering::Release);
                // A request between the last check and now would wait for nobody.
                if !rereads.wanted.load(Ordering::Acquire)
                    || rereads.running.swap(true, Ordering::AcqRel)
                {
                    return;
                }
            }
        });
    }

    /// Replaces the stored part of the retained index with what the store holds, unless a
    /// retained message changed here while it read (then it reads again, [`TRIES`] times).
    async fn reread_retained(&self, p: &Persist) {
        let started = Instant::now();
        for _ in 0..TRIES {
            let before = self.retained.read().changes();
            // Our own retained writes submitted so far are in the store before it is read.
            if tokio::time::timeout(FLUSH_WAIT, p.committer().flush())
                .await
                .is_err()
            {
                warn!("retained messages not read again: this node's writes are not landing");
                return;
            }
            let loaded = match p.committer().stores().retained.load().await {
                Ok(loaded) => loaded,
                Err(e) => {
                    warn!(error = %e, "retained messages not read again from the store");
                    return;
                }
            };
            let mut fresh = RetainedIndex::default();
            crate::persist::restore::fill_retained(&mut fresh, loaded, (Instant::now(), now_ms()));
            let mut index = self.retained.write();
            if index.changes() != before {
                continue;
            }
            let n = fresh.len();
            index.replace_stored(fresh);
            drop(index);
            info!(
                retained = n,
                ms = started.elapsed().as_millis() as u64,
                "retained messages read again from the shared store after a link came up"
            );
            return;
        }
        warn!("retained messages kept changing while read again from the store: left as they were");
    }
}
