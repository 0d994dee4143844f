//! What a node's previous life had not committed, sent to its new one (protocol level 7).
//!
//! A node that restarts (a new boot epoch) and whose sessions nobody adopted (no Redis, or
//! not on the majority side) gets them back from its own store with the queue entries it had
//! committed. What its peers had forwarded to its previous life after its last commit is
//! still in their ledgers: numbered, not acknowledged, its publishers waiting. So:
//!
//! 1. At start, before any link, the node reads its forward marks from its store: for each
//!    peer, how many of that peer's frames its previous life had committed
//!    ([`Broker::load_previous_marks`]).
//! 2. Its first frame on every link of level 7 is `Restarted` with its mark of that peer.
//! 3. The peer, which set its ledger of the previous life aside when the new epoch linked
//!    ([`super::Cluster::orphan`]), sends each QoS 1/2 frame numbered after the mark as
//!    `PublishAdopted` naming the restarted node, which delivers it to the sessions it
//!    restored from its store and to no other. Frames of that life given up earlier (it was
//!    away longer than `KEPT_WHILE_DOWN`) and kept go too.
//! 4. The peer releases its publishers once the new life has acknowledged them (committed,
//!    in `sync` durability); when no `Restarted` comes within [`RESTARTED_WAIT`], at once,
//!    keeping the frames for a `Restarted` on a later link, until [`GIVEN_UP_KEPT`].
//!
//! Frames up to the mark were committed with their queue entries: they came back with the
//! sessions and are not sent again, which QoS 2 needs. A QoS 1 delivery the previous life
//! made before its commit may come again, as QoS 1 allows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ahash::AHashMap;
use tracing::{info, warn};

use super::Forwarded;
use super::frame::{Frame, PreviousMark};
use super::reroute::promised;
use crate::broker::Broker;

/// The first protocol level with `Restarted`.
pub const RESTART_LEVEL: u8 = 7;

/// How long the publishers of a restarted peer's previous life wait for its `Restarted`
/// (sent first on its link) before they are released.
pub const RESTARTED_WAIT: Duration = Duration::from_secs(5);

/// How long frames given up for a peer are kept for its return (a cut cable, a restart
/// that takes a while): at most a ledger's worth (`FORWARD_QUEUE`) per peer.
pub const GIVEN_UP_KEPT: Duration = Duration::from_secs(600);

/// The count of a previous life's frames (of the ledger of epoch `ledger_epoch`) that its
/// mark says were committed: 0 when the mark is of an earlier life of either node (that life
/// committed none of ours). `None` when it is of a later life than the ledger's (the node
/// restarted more than once before saying how far that life had got): nothing can be sent
/// without risking a QoS 2 message twice. Pure.
pub fn committed_upto(
    mark: Option<PreviousMark>,
    ledger_epoch: u64,
    our_epoch: u64,
) -> Option<u64> {
    match mark {
        Some(m) if m.receiver_epoch > ledger_epoch => None,
        Some(m) if m.receiver_epoch == ledger_epoch && m.sender_epoch == our_epoch => Some(m.upto),
        _ => Some(0),
    }
}

impl Broker {
    /// This node's forward marks, per sender, as its store holds them at start: its previous
    /// life's. Empty without a store, or when it cannot be read (the peers then send
    /// everything that life had not had acknowledged).
    pub async fn load_previous_marks(&self) -> AHashMap<String, PreviousMark> {
        let Some(p) = &self.persist else {
            return AHashMap::new();
        };
        let node = &self.config.node_id;
        match p.committer().stores().queue.forward_marks(node).await {
            Ok(marks) => marks
                .into_iter()
                .map(|m| {
                    let mark = PreviousMark {
                        receiver_epoch: m.receiver_epoch,
                        sender_epoch: m.sender_epoch,
                        upto: m.upto,
                    };
                    (m.sender, mark)
                })
                .collect(),
            Err(e) => {
                warn!(error = %e, "cannot read this node's forward marks: its peers will send again all its previous life had not acknowledged");
                AHashMap::new()
            }
        }
    }

    /// A link of `peer`'s new life came up while its previous life's ledger held frames: the
    /// publishers wait for its `Restarted` at most [`RESTARTED_WAIT`], the frames at most
    /// [`GIVEN_UP_KEPT`].
    pub fn watch_orphan(self: &Arc<Self>, peer: &str) {
        let Some(cluster) = self.cluster.get() else {
            return;
        };
        let Some(orphan) = cluster.orphan(peer) else {
            return;
        };
        let (cluster, peer) = (cluster.clone(), peer.to_owned());
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(RESTARTED_WAIT) => {}
                _ = shutdown.cancelled() => return,
            }
            if cluster
                .orphan(&peer)
                .is_some_and(|o| Arc::ptr_eq(&o, &orphan))
            {
                let n = orphan.give_up(Instant::now());
                if n > 0 {
                    warn!(
                        peer,
                        messages = n,
                        "a restarted peer did not say how far its previous life committed: its publishers released"
                    );
                }
                cluster.count_given_up(&peer, n);
            }
            tokio::select! {
                _ = tokio::time::sleep(GIVEN_UP_KEPT) => {}
                _ = shutdown.cancelled() => return,
            }
            cluster.take_orphan(&peer, Some(&orphan));
        });
    }

    /// `peer`, restarted, says its previous life committed our frames up to `mark`: sends
    /// its new life the rest of that life's ledger for the sessions it restored, and
    /// releases their publishers once it has them.
    pub fn resend_to_restarted(self: &Arc<Self>, peer: &str, mark: Option<PreviousMark>) {
        let Some(cluster) = self.cluster.get() else {
            return;
        };
        let Some(orphan) = cluster.take_orphan(peer, None) else {
            return;
        };
        let Some(upto) = committed_upto(mark, orphan.epoch, cluster.epoch) else {
            warn!(
                peer,
                "a peer restarted twice before saying how far its earlier life committed: that life's messages given up"
            );
            cluster.count_given_up(peer, orphan.settle());
            return;
        };
        let (cluster, peer) = (cluster.clone(), peer.to_owned());
        tokio::spawn(async move {
            let frames = orphan.numbered_all();
            let mut waits = Vec::new();
            let mut sent = 0;
            let after_mark = frames.into_iter().filter(|(n, _)| *n > upto);
            for (id, message, groups) in after_mark.filter_map(|(_, f)| promised(f)) {
                let again = Frame::PublishAdopted {
                    departed: peer.clone(),
                    id,
                    message,
                    groups,
                };
                let (forwarded, wait) = cluster.forward(&peer, again);
                match forwarded {
                    Forwarded::Sent => {}
                    Forwarded::Congested(queue) => {
                        queue.wait_drained(Duration::from_secs(1)).await;
                    }
                    Forwarded::Dropped => {
                        warn!(
                            peer,
                            "a restarted peer's link went down while its previous life's messages were sent to it"
                        );
                        break;
                    }
                }
                waits.extend(wait);
                sent += 1;
            }
            // Each wait ends when the new life acknowledges, or when it is given up too.
            for w in waits {
                w.ledger.wait(w.n).await;
            }
            orphan.settle();
            cluster.count_rerouted(&peer, sent);
            info!(
                peer,
                messages = sent,
                committed_upto = upto,
                "messages a restarted peer's previous life had not committed sent to its new one"
            );
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_mark_of_that_pair_of_lives_counts() {
        let mark = |receiver_epoch, sender_epoch| {
            Some(PreviousMark {
                receiver_epoch,
                sender_epoch,
                upto: 41,
            })
        };
        assert_eq!(committed_upto(mark(10, 20), 10, 20), Some(41));
        // Its life before the previous one: the previous one committed none of ours.
        assert_eq!(committed_upto(mark(9, 20), 10, 20), Some(0));
        // Of our own previous life: none of this life's frames.
        assert_eq!(committed_upto(mark(10, 19), 10, 20), Some(0));
        assert_eq!(committed_upto(None, 10, 20), Some(0));
        // Of a life after the ledger's: how far the ledger's got is unknown.
        assert_eq!(committed_upto(mark(11, 20), 10, 20), None);
    }
}
