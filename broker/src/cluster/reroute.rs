//! What a dead node had not committed, sent again to the nodes that adopted its sessions
//! (protocol level 6, decision 0016 "Rerouting").
//!
//! A node that receives forwarded messages writes a forward mark with each commit that stores
//! them: per peer, the count of that peer's `Publish` frames handled up to then
//! ([`rookery_store::ForwardMark`], in the queue store, in the same transaction as the queue
//! entries). When the node dies, each survivor holds in its ledger for it the frames it had
//! not acknowledged. Once every survivor has adopted its share of the dead node's sessions
//! (each says so with `Adopted`, after announcing their routes), each survivor:
//!
//! 1. reads the dead node's mark for it: frames up to the mark were committed, and their queue
//!    entries came to the adopters with the sessions; the frames after it were not;
//! 2. stops routing to the dead node, and sends each frame after the mark as `PublishAdopted`
//!    to every adopter, itself included: each delivers it to the sessions it adopted from the
//!    dead node, and to no other;
//! 3. waits until the adopters have acknowledged them (committed, in `sync` durability), and
//!    only then releases its publishers' acknowledgements.
//!
//! An adopted session checks for duplicates by message id for a while: a message published
//! after the adopters' routes were known reaches it the usual way, and may be in the ledger
//! too. What reached the dead node's subscribers and was committed is in the queue store: never
//! sent twice, which QoS 2 needs. QoS 1 deliveries the dead node made before committing may
//! come again, as QoS 1 allows.

use std::sync::Arc;
use std::time::Duration;

use rookery_store::committer::{Op, Ticket};
use rookery_store::{QueueOp, StoredMessage};
use tracing::{info, warn};

use super::frame::Frame;
use crate::broker::Broker;

/// The first protocol level with `Adopted` and `PublishAdopted`.
pub const REROUTE_LEVEL: u8 = 6;

/// How long a survivor waits for the others to adopt their share of a dead node's sessions
/// before it sends what the dead node had not committed (an adopter that has not installed
/// its sessions would find nobody to deliver to).
pub const ADOPTED_WAIT: Duration = Duration::from_secs(5);

/// A forwarded QoS 1/2 message's id, body and shared groups; `None` for anything else (QoS 0
/// promised nothing). Pure.
pub(super) fn promised(frame: Frame) -> Option<(u64, StoredMessage, Vec<String>)> {
    match frame {
        Frame::Publish {
            id,
            message,
            groups,
        } if message.qos > 0 => Some((id, message, groups)),
        _ => None,
    }
}

impl Broker {
    /// Writes how far this node has handled what `sender` (boot epoch `sender_epoch`)
    /// forwarded: `upto` frames. Read by the nodes that adopt its sessions (a shared queue
    /// store), or by itself after a restart (`restart.rs`).
    pub fn write_forward_mark(&self, sender: &str, sender_epoch: u64, upto: u64) -> Option<Ticket> {
        let p = self.persist.as_ref()?;
        let cluster = self.cluster.get()?;
        Some(p.submit([Op::Queue(QueueOp::ForwardMark(
            rookery_store::ForwardMark {
                receiver: cluster.node_id.clone(),
                receiver_epoch: cluster.epoch,
                sender: sender.to_owned(),
                sender_epoch,
                upto,
            },
        ))]))
    }

    /// This node adopted its share of `departed`'s sessions (its link `link_id` went down):
    /// tells the others, waits for theirs, then sends the adopters what `departed` had not
    /// committed of ours, and releases our publishers once they have it. Returns how many
    /// messages were sent again.
    pub async fn reroute_for(self: &Arc<Self>, departed: &str, link_id: u64) -> usize {
        let Some(cluster) = self.cluster.get() else {
            return 0;
        };
        let adopted = Frame::Adopted {
            departed: departed.to_owned(),
        };
        cluster.broadcast_at(REROUTE_LEVEL, &adopted);
        let all = tokio::select! {
            all = cluster.wait_adopted(departed, ADOPTED_WAIT) => all,
            _ = self.drain.cancelled() => false,
        };
        if !all {
            warn!(
                departed,
                "not every node said it adopted its share of a departed node's sessions in time"
            );
        }
        if cluster.is_up(departed) {
            // Back with the same epoch after the adoption: it is sent what it had not
            // acknowledged again, into copies of sessions that are ours now (it drops them
            // once it hears of the adoptions' claims). The adopters get copies too.
            self.resend_for_resumed(departed.to_owned(), None);
            for peer in cluster.peers_at(REROUTE_LEVEL) {
                if peer != departed {
                    self.resend_for_resumed(departed.to_owned(), Some(peer));
                }
            }
            return 0;
        }
        let Some(ledger) = cluster.ledger(departed).filter(|l| l.is_link(link_id)) else {
            cluster.forget_routes(departed);
            return 0;
        };
        let mark = self.committed_by(departed, ledger.epoch).await;
        // From here nothing more is forwarded to it: the adopters' routes are known (each
        // announced them before it said `Adopted`).
        cluster.forget_routes(departed);
        let frames = ledger.close_after(mark);
        let adopters = cluster.peers_at(REROUTE_LEVEL);
        let mut waits = Vec::new();
        let mut ticket: Option<Ticket> = None;
        let mut sent = 0;
        for (id, message, groups) in frames.into_iter().filter_map(promised) {
            for peer in adopters.iter().filter(|p| *p != departed) {
                let (_, wait) = cluster.forward(
                    peer,
                    Frame::PublishAdopted {
                        departed: departed.to_owned(),
                        id,
                        message: message.clone(),
                        groups: groups.clone(),
                    },
                );
                waits.extend(wait);
            }
            let (_, t) = self.route_adopted(departed, id, message, &groups);
            ticket = ticket.max(t);
            sent += 1;
        }
        if let (Some(p), Some(t)) = (self.persist.as_ref().filter(|p| p.is_sync()), ticket) {
            let mut committed = p.committer().watch();
            let _ = committed.wait_for(|c| *c >= t).await;
        }
        // Each wait ends when its adopter acknowledges, or when that adopter is given up too.
        for w in waits {
            w.ledger.wait(w.n).await;
        }
        let waited = ledger.settle();
        cluster.count_rerouted(departed, sent);
        if sent > 0 {
            info!(
                departed,
                messages = sent,
                committed_there = waited.saturating_sub(sent),
                "messages a departed node had not committed sent to its adopters"
            );
        }
        sent
    }

    /// A session of `departed` (a node not linked) was read from the store on `to` (on this
    /// node when `None`) because its client came back there, or was adopted there while
    /// `departed` came back: sends it copies of what we
    /// forwarded to `departed` and `departed` had not committed, for that node's sessions
    /// taken from `departed` (duplicates are checked there). Nothing waits for the copies:
    /// `departed` may come back and be sent them too (its copy of the session is stale and
    /// goes once it learns of the newer claim), or be adopted, which sends them again.
    pub fn resend_for_resumed(self: &Arc<Self>, departed: String, to: Option<String>) {
        let Some(cluster) = self.cluster.get() else {
            return;
        };
        // Even if `departed` is linked again: the session is no longer there. Taken now,
        // before `departed`, back, acknowledges them into its stale copy.
        let Some(ledger) = cluster.ledger(&departed) else {
            return;
        };
        let frames = ledger.numbered();
        if frames.is_empty() {
            return;
        }
        let (broker, epoch) = (self.clone(), ledger.epoch);
        tokio::spawn(async move {
            let Some(cluster) = broker.cluster.get() else {
                return;
            };
            let mark = broker.committed_by(&departed, epoch).await;
            let mut sent = 0;
            let after_mark = frames.into_iter().filter(|(n, _)| *n > mark);
            for (id, message, groups) in after_mark.filter_map(|(_, f)| promised(f)) {
                match &to {
                    Some(peer) => {
                        let again = Frame::PublishAdopted {
                            departed: departed.clone(),
                            id,
                            message,
                            groups,
                        };
                        let _ = cluster.forward(peer, again);
                    }
                    None => {
                        broker.route_adopted(&departed, id, message, &groups);
                    }
                }
                sent += 1;
            }
            cluster.count_rerouted(&departed, sent);
            if sent > 0 {
                info!(
                    departed,
                    messages = sent,
                    to = to.as_deref().unwrap_or("here"),
                    "messages a node not linked had not committed sent for a session resumed from it"
                );
            }
        });
    }

    /// The count of our forwarded frames `departed` (boot epoch `epoch`) had committed, as its
    /// forward mark in the queue store says; 0 when it has none for these epochs.
    async fn committed_by(&self, departed: &str, epoch: u64) -> u64 {
        let (Some(p), Some(cluster)) = (&self.persist, self.cluster.get()) else {
            return 0;
        };
        match p
            .committer()
            .stores()
            .queue
            .forward_mark(departed, &cluster.node_id)
            .await
        {
            Ok(Some(m)) if m.receiver_epoch == epoch && m.sender_epoch == cluster.epoch => m.upto,
            Ok(_) => 0,
            Err(e) => {
                // Sending everything again may deliver a committed QoS 2 message twice;
                // sending nothing loses what was not committed. The first is the lesser harm.
                warn!(departed, error = %e,
                    "cannot read a departed node's forward mark: sending everything it had not acknowledged");
                0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(qos: u8) -> Frame {
        Frame::Publish {
            id: 9,
            message: StoredMessage {
                topic: "t".into(),
                payload: bytes::Bytes::from_static(b"x"),
                qos,
                retain: false,
                properties: bytes::Bytes::new(),
                expires_at_ms: None,
            },
            groups: vec!["$share/g/t".into()],
        }
    }

    #[test]
    fn only_qos_1_and_2_messages_are_sent_again() {
        let (id, message, groups) = promised(publish(2)).expect("QoS 2 is sent again");
        assert_eq!((id, message.qos, groups.len()), (9, 2, 1));
        assert!(promised(publish(1)).is_some());
        assert!(promised(publish(0)).is_none());
        assert!(promised(Frame::Heartbeat).is_none());
    }
}
