//! Acknowledgements that wait for a commit (`sync` durability).
//!
//! A PUBACK, PUBREC, PUBCOMP, PUBREL, SUBACK or UNSUBACK promises that what it acknowledges
//! is kept; when that took a store write, the packet waits here until the committer reports
//! the write durable. Later packets of the same kinds wait behind it, so acknowledgements
//! keep their order (MQTT 3.1.1 section 4.6). A QoS 2 PUBLISH to a persistent session also
//! waits until its packet id is stored: sent with an id the broker could forget, a resend after
//! a crash would carry another id and be delivered twice.
//!
//! A PUBACK or PUBREC of a message forwarded to peers of protocol level 5 waits here too, for
//! each of those peers to acknowledge it (`cluster/acks.rs`): then every matching session in
//! the cluster has it (and, in `sync` durability, has it stored).

use std::collections::VecDeque;
use std::time::Instant;

use rookery_codec::{Ack, Packet};
use rookery_store::QueueOp;
use rookery_store::committer::Ticket;
use tokio::sync::watch;

use super::Conn;
use crate::cluster::AckWait;

/// What waits for a commit.
#[derive(Debug)]
pub(super) enum Waiting {
    /// An acknowledgement (PUBACK, PUBREC, PUBREL or PUBCOMP).
    Ack(fn(Ack) -> Packet, Ack),
    /// Another packet (SUBACK, UNSUBACK), boxed: rare, and large.
    Packet(Box<Packet>),
    /// The first send of the in-flight QoS 2 message with this packet id.
    Publish(u16),
}

/// A connection's writes waiting for commits.
pub(super) struct Deferred {
    /// The committer's progress, when there is a store.
    committed: Option<watch::Receiver<Ticket>>,
    items: VecDeque<Held>,
}

/// One write that waits: for the commit `ticket` (0: none) and for the peers in `acks`.
#[derive(Debug)]
struct Held {
    ticket: Ticket,
    acks: Vec<AckWait>,
    what: Waiting,
}

impl Deferred {
    fn is_ready(&self, held: &Held) -> bool {
        let committed = self.committed.as_ref().map_or(0, |c| *c.borrow());
        held.ticket <= committed && held.acks.iter().all(AckWait::is_done)
    }
}

/// Waits until the first waiting write may go (or one of the things it waits for happened);
/// forever when nothing waits.
pub(super) async fn committed_changed(d: Option<&mut Box<Deferred>>) {
    let Some(d) = d else {
        return std::future::pending().await;
    };
    let Some(first) = d.items.front() else {
        return std::future::pending().await;
    };
    let ticket = first.ticket;
    if let Some(committed) = d.committed.as_mut()
        && ticket > *committed.borrow()
    {
        // `wait_for` looks at the current value first: a commit that landed before this wait
        // began is not missed.
        if committed.wait_for(|t| *t >= ticket).await.is_err() {
            // The committer stopped (shutdown): nothing more will commit.
            std::future::pending::<()>().await;
        }
        return;
    }
    if let Some(wait) = first.acks.iter().find(|a| !a.is_done()) {
        wait.ledger.wait(wait.n).await;
    }
}

impl Conn {
    /// True when as many writes wait for commits as the client may have in flight towards us
    /// (the Receive Maximum we advertise): stop reading until some are released.
    pub(super) fn deferred_full(&self) -> bool {
        self.deferred
            .as_ref()
            .is_some_and(|d| d.items.len() >= usize::from(self.broker.config.receive_maximum))
    }

    /// True when something waits for a commit.
    pub(super) fn has_deferred(&self) -> bool {
        self.deferred.as_ref().is_some_and(|d| !d.items.is_empty())
    }

    /// Writes `packet` once `ticket` is durable and everything deferred before it is written.
    pub(super) fn write_after(&mut self, ticket: Option<Ticket>, packet: Packet) {
        self.defer_or(ticket, Vec::new(), Waiting::Packet(Box::new(packet)));
    }

    /// Writes an acknowledgement once `ticket` is durable and the peers in `acks` have the
    /// message, in order.
    pub(super) fn write_ack_packet_after(
        &mut self,
        ticket: Option<Ticket>,
        acks: Vec<AckWait>,
        kind: fn(Ack) -> Packet,
        ack: Ack,
    ) {
        self.defer_or(ticket, acks, Waiting::Ack(kind, ack));
    }

    fn defer_or(&mut self, ticket: Option<Ticket>, acks: Vec<AckWait>, what: Waiting) {
        let pending_commit = match (ticket, &self.broker.persist) {
            (Some(t), Some(p)) if p.is_sync() => !p.committer().is_committed(t),
            _ => false,
        };
        let acks: Vec<AckWait> = acks.into_iter().filter(|a| !a.is_done()).collect();
        if !pending_commit && acks.is_empty() && !self.has_deferred() {
            self.write_now(what);
            return;
        }
        // Without `sync` durability nothing waits for the committer.
        let ticket = match &self.broker.persist {
            Some(p) if p.is_sync() => ticket.unwrap_or(0),
            _ => 0,
        };
        let broker = self.broker.clone();
        let d = self.deferred.get_or_insert_with(|| {
            Box::new(Deferred {
                committed: broker.persist.as_ref().map(|p| p.committer().watch()),
                items: VecDeque::new(),
            })
        });
        // Behind what already waits, never ahead of it.
        let after = d.items.back().map_or(0, |h| h.ticket);
        d.items.push_back(Held {
            ticket: ticket.max(after),
            acks,
            what,
        });
    }

    fn write_now(&mut self, what: Waiting) {
        match what {
            Waiting::Ack(kind, ack) => self.write_packet(&kind(ack)),
            Waiting::Packet(p) => self.write_packet(&p),
            Waiting::Publish(pid) => self.write_inflight(pid, false, Instant::now()),
        }
    }

    /// Writes what may go now (durable, and acknowledged by the peers), in order.
    pub(super) fn release_deferred(&mut self) {
        let Some(mut d) = self.deferred.take() else {
            return;
        };
        while let Some(first) = d.items.front() {
            if !d.is_ready(first) {
                break;
            }
            if let Some(held) = d.items.pop_front() {
                self.write_now(held.what);
            }
        }
        if !d.items.is_empty() {
            self.deferred = Some(d);
        }
        // Otherwise dropped: an idle connection keeps no receiver.
    }

    /// Sends the first PUBLISH of a delivery that just entered the window: at once, or for a
    /// stored QoS 2 delivery in `sync` durability once its packet id is durable. Returns true
    /// when it was deferred.
    pub(super) fn record_inflight(&mut self, pid: u16, stored: u64, qos2: bool) -> bool {
        let Some(p) = self.broker.persist.clone() else {
            return false;
        };
        if stored == 0 {
            return false;
        }
        let ticket = p.queue_op(QueueOp::Inflight {
            client_id: self.session.client_id.to_string(),
            id: stored,
            packet_id: pid,
            released: false,
        });
        // A resend after a restart uses the stored id ([MQTT-4.4.0-1]). Only QoS 2 waits for
        // it: a QoS 1 message resent under another id after a crash is a duplicate, which
        // QoS 1 allows; a QoS 2 one would be delivered twice.
        if qos2 && p.is_sync() {
            self.defer_or(Some(ticket), Vec::new(), Waiting::Publish(pid));
            return true;
        }
        false
    }

    /// A stored delivery is finished (acknowledged, expired or discarded): delete its entry.
    pub(super) fn forget_stored(&mut self, stored: u64) {
        if stored == 0 {
            return;
        }
        if let Some(p) = &self.broker.persist {
            p.queue_op(QueueOp::Ack {
                client_id: self.session.client_id.to_string(),
                id: stored,
            });
        }
    }

    /// Records PUBREC of a stored QoS 2 delivery; the PUBREL waits for it.
    pub(super) fn record_released(&mut self, pid: u16, stored: u64) -> Option<Ticket> {
        let p = self.broker.persist.as_ref()?;
        (stored != 0).then(|| {
            p.queue_op(QueueOp::Inflight {
                client_id: self.session.client_id.to_string(),
                id: stored,
                packet_id: pid,
                released: true,
            })
        })
    }

    /// Records a received QoS 2 packet id of a persistent session.
    pub(super) fn record_incoming(&mut self, pid: u16, present: bool) -> Option<Ticket> {
        let p = self.broker.persist.as_ref()?;
        if !self.session.is_durable() {
            return None;
        }
        let client_id = self.session.client_id.to_string();
        Some(p.queue_op(if present {
            QueueOp::IncomingAdd {
                client_id,
                packet_id: pid,
            }
        } else {
            QueueOp::IncomingRemove {
                client_id,
                packet_id: pid,
            }
        }))
    }

    /// Writes this session's record (subscriptions, expiry, will, owner) while connected.
    pub(super) fn store_session(&mut self) -> Option<Ticket> {
        let p = self.broker.persist.as_ref()?;
        if !self.session.is_durable() {
            return None;
        }
        let by_password = self.session.password_user().is_some();
        let record = p.session_record(
            &self.session.client_id,
            self.expiry_secs,
            None,
            self.username.as_ref(),
            by_password,
            &self.state.subscriptions,
            self.will.as_deref(),
            self.session.claimed(),
        );
        Some(p.put_session(record))
    }

    /// At CONNECT: marks the session persistent or not and writes (or deletes) its record. A
    /// session that did not resume drops whatever the store held for it.
    pub(super) fn persist_connect(&mut self, session_present: bool) {
        let Some(p) = self.broker.persist.clone() else {
            return;
        };
        let was_durable = self.session.is_durable();
        if self.expiry_secs == 0 {
            if was_durable {
                self.session.set_durable(false);
                p.delete_session(&self.session.client_id, self.broker.owner_of(&self.session));
            }
            return;
        }
        if !session_present && was_durable {
            p.queue_op(QueueOp::Purge {
                client_id: self.session.client_id.to_string(),
            });
        }
        self.session.set_durable(true);
        self.store_session();
    }
}
