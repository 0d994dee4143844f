//! Ownership of client ids through a session store the nodes share (Redis).
//!
//! The links settle which connection of a client id stands (`Claim` frames; newest wins).
//! A partition of the links cannot: so with sessions in Redis every claim also goes there
//! ([`rookery_store::SessionStore::claim`], a compare-and-set on `(ms, node id)`), and every
//! node follows the claims the others make there ([`watch`]). A node that learns of a newer
//! claim, over a link or from Redis, gives its connection and its copy of the session up, as
//! before. Session writes carry the claim they were made under, and Redis refuses those of an
//! older claim, so a node that lost a session cannot overwrite the new owner's record.
//!
//! A node cut off from Redis misses the claims made meanwhile, and one cut off from the
//! majority may find its sessions adopted when it returns. So a node checks the owner on
//! record of every session it holds ([`Broker::recheck_owners`]) when the claims watch follows
//! again after a break, and, after it lost the majority, before any link comes up again: its
//! routes for a session adopted elsewhere are never announced, and a client it kept connected
//! across the cut is closed (0x8E) and resumes the adopted copy.

use std::sync::Arc;
use std::time::Duration;

use rookery_store::{ClaimWatch, Claimed, Owner};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::broker::Broker;
use crate::session::Session;

impl Broker {
    /// A connection here claimed `session`'s client id: the claim goes to the shared session
    /// store too, and a newer claim found there wins as one from a link would.
    pub(crate) fn claim_in_store(self: &Arc<Self>, session: &Session) {
        let Some(p) = &self.persist else {
            return;
        };
        if !p.sessions_shared() {
            return;
        }
        let stores = p.committer().stores().clone();
        let (broker, client_id, at_ms) = (
            self.clone(),
            session.client_id.to_string(),
            session.claimed(),
        );
        tokio::spawn(async move {
            let node = broker.config.node_id.as_str();
            match stores.sessions.claim(&client_id, node, at_ms).await {
                Ok(Claimed::Stands) => {}
                Ok(Claimed::Newer { node: newer, epoch }) if newer != node => {
                    broker.remote_claim(&newer, &client_id, epoch);
                }
                // A newer connection here claimed it meanwhile.
                Ok(Claimed::Newer { .. }) => {}
                Err(e) => debug!(client_id, error = %e, "claim not recorded in the session store"),
            }
        });
    }
}

/// How long a link coming up waits for the recheck (within a peer's handshake timeout):
/// a recheck that takes longer (a great many sessions, a slow Redis) goes on after it.
const LINK_WAITS: Duration = Duration::from_secs(3);

/// The waits of a recheck: for the owners on record, then for the sessions to go.
const RECHECK_STEP: Duration = Duration::from_secs(10);

impl Broker {
    /// After [`super::Cluster::suspect_owners`]: [`Self::recheck_owners`], once, waited for
    /// at most [`LINK_WAITS`]. Should Redis not answer, the next link to come up tries again,
    /// and so does the claims watch when it follows again.
    pub(crate) async fn recheck_owners_if_suspect(self: &Arc<Self>) {
        let Some(cluster) = self.cluster.get() else {
            return;
        };
        let _one_at_a_time = cluster.rechecking.lock().await;
        if !cluster.take_owners_suspect() {
            return;
        }
        let broker = self.clone();
        let recheck = tokio::spawn(async move {
            match broker.recheck_owners().await {
                Some(n) => info!(
                    sessions = n,
                    "back from a cut: sessions claimed elsewhere meanwhile given up"
                ),
                None => {
                    if let Some(cluster) = broker.cluster.get() {
                        cluster.suspect_owners();
                    }
                }
            }
        });
        if tokio::time::timeout(LINK_WAITS, recheck).await.is_err() {
            warn!("the owners' recheck goes on while the links come up");
        }
    }

    /// Reads the owner on record of every session held here and gives up (as to a claim from
    /// a link, the connection closed with 0x8E, no will) each one another node claimed since
    /// ours. Waits at most [`RECHECK_STEP`] for the owners and as long for the sessions to
    /// go. Returns how many were given up, `None` when the owners could not be read.
    pub(crate) async fn recheck_owners(self: &Arc<Self>) -> Option<usize> {
        let (Some(p), Some(cluster)) = (&self.persist, self.cluster.get()) else {
            return Some(0);
        };
        if !p.sessions_shared() {
            return Some(0);
        }
        let (ids, claimed): (Vec<String>, Vec<u64>) = self
            .sessions
            .all()
            .iter()
            .map(|s| (s.client_id.to_string(), s.claimed()))
            .unzip();
        if ids.is_empty() {
            return Some(0);
        }
        let stores = p.committer().stores().clone();
        let owners = match tokio::time::timeout(RECHECK_STEP, stores.sessions.owners(&ids)).await {
            Ok(Ok(owners)) => owners,
            Ok(Err(e)) => {
                warn!(error = %e, "cannot check the owners of the sessions held here");
                return None;
            }
            Err(_) => {
                warn!("the owners of the sessions held here did not come in time");
                return None;
            }
        };
        let node = self.config.node_id.as_str();
        let mut giving = tokio::task::JoinSet::new();
        for ((client_id, ours), owner) in ids.into_iter().zip(claimed).zip(owners) {
            let Some(owner) = owner.filter(|o| lost_to(node, ours, o)) else {
                continue;
            };
            let (at_ms, by) = cluster.note_claim(&client_id, owner.epoch, &owner.node);
            let broker = self.clone();
            giving.spawn(async move {
                broker
                    .discard_for_peer(&client_id, (at_ms, &by), true)
                    .await
            });
        }
        let n = giving.len();
        // Tasks still running after the wait carry on by themselves.
        let _ = tokio::time::timeout(RECHECK_STEP, async {
            while giving.join_next().await.is_some() {}
        })
        .await;
        giving.detach_all();
        Some(n)
    }
}

/// True when the claim on record is another node's and newer than ours (`ours`, by `node`),
/// in the order of every claim: time, then node id. Pure.
pub(crate) fn lost_to(node: &str, ours: u64, owner: &Owner) -> bool {
    owner.node != node && (owner.epoch, owner.node.as_str()) > (ours, node)
}

/// Follows the claims other nodes make in the shared session store until shutdown: each is
/// handled as a `Claim` from a link; when the watch follows again after a break, the owners
/// of the sessions held here are checked. Nothing to do without a shared session store.
pub fn watch(broker: &Arc<Broker>) {
    let Some(p) = &broker.persist else {
        return;
    };
    if !p.sessions_shared() {
        return;
    }
    let stores = p.committer().stores().clone();
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        if let Err(e) = stores.sessions.watch_claims(tx).await {
            tracing::warn!(error = %e, "claims in the session store not followed");
        }
    });
    let broker = broker.clone();
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let watched = tokio::select! {
                n = rx.recv() => n,
                _ = broker.shutdown.cancelled() => return,
            };
            match watched {
                None => return,
                Some(ClaimWatch::Claim(notice)) => {
                    if notice.node != broker.config.node_id {
                        broker.stored_claim(&notice.node, &notice.client_id, notice.epoch);
                    }
                }
                Some(ClaimWatch::Following) if first => first = false,
                Some(ClaimWatch::Following) => {
                    let broker = broker.clone();
                    tokio::spawn(async move {
                        if let Some(n) = broker.recheck_owners().await {
                            info!(
                                sessions = n,
                                "claims followed again: sessions claimed elsewhere meanwhile given up"
                            );
                        }
                    });
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(node: &str, epoch: u64) -> Owner {
        Owner {
            node: node.into(),
            epoch,
        }
    }

    #[test]
    fn a_session_is_lost_only_to_a_newer_claim_of_another_node() {
        assert!(lost_to("node-2", 100, &owner("node-0", 101)));
        // The same time: the larger node id wins, as everywhere.
        assert!(lost_to("node-0", 100, &owner("node-2", 100)));
        assert!(!lost_to("node-2", 100, &owner("node-0", 100)));
        assert!(!lost_to("node-2", 100, &owner("node-0", 99)));
        // Our own claim, older or newer than the session's: still ours.
        assert!(!lost_to("node-2", 100, &owner("node-2", 150)));
        assert!(!lost_to("node-2", 100, &owner("node-2", 50)));
    }
}
