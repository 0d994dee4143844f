//! Moving a persistent session between nodes: one client id is one session in the cluster,
//! wherever the client connects.
//!
//! When a client resumes (Clean Start 0) on a node that does not hold its session, that node
//! asks every linked peer for it (`HandoverAsk`) before it attaches. A peer that holds the
//! session closes its connection, if any (DISCONNECT 0x8E, as a local takeover does), takes the
//! session out (subscriptions, queued messages, QoS 1/2 state both ways, pending will, expiry),
//! withdraws its routes, lets its store writes land, and answers with it (`HandoverReply`).
//! The asking node installs it as it would restore a stored session, writes it to its own
//! store, and the client finds it: CONNACK Session Present. When no peer holds it and the
//! sessions are in Redis, the node reads it from there (its owner left the cluster).
//!
//! The stores decide what the giving node deletes: its own disk's copy (the embedded store),
//! never the shared copy in Redis or PostgreSQL, which the new owner takes over as it is.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ahash::AHashMap;
use bytestring::ByteString;
use parking_lot::Mutex;
use rookery_store::{QueueEntry, QueueOp, SessionRecord, StoredMessage, now_ms};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::frame::Frame;
use crate::broker::Broker;
use crate::persist::convert;
use crate::session::Extracted;
use crate::session::inflight::OutState;

/// How long a node waits for its peers' answers before it goes on without them.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a giving node waits for its connection to hand the session back, and for its
/// store writes to land.
const GIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// A session on its way to another node: what the stores would hold for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// The session (subscriptions, expiry, will, identity).
    pub record: SessionRecord,
    /// Its deliveries: in flight (with a packet id) first, then queued, in order.
    pub entries: Vec<TransferEntry>,
    /// QoS 2 packet ids received and not yet released.
    pub incoming: Vec<u16>,
}

/// One delivery of a [`Transfer`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferEntry {
    /// The queue entry (its `message` field is not serialised: it travels beside it).
    pub entry: QueueEntry,
    /// The message; `None` for a QoS 2 delivery already released (only PUBCOMP is awaited).
    pub message: Option<StoredMessage>,
}

/// Builds the transfer of an extracted session. Pure but for the clock.
pub fn build(
    client_id: &str,
    username: Option<&ByteString>,
    by_password: bool,
    node_id: &str,
    x: &Extracted,
) -> Transfer {
    let now = Instant::now();
    let wall = now_ms();
    // Messages shared by several deliveries keep one number, so they stay shared.
    let mut numbers: AHashMap<*const crate::message::Message, u64> = AHashMap::new();
    let mut number = |m: &Arc<crate::message::Message>| {
        let next = numbers.len() as u64 + 1;
        *numbers.entry(Arc::as_ptr(m)).or_insert(next)
    };
    let mut entries = Vec::new();
    for (pid, state) in x.state.outgoing.in_order() {
        match state {
            OutState::Published(d) => entries.push(TransferEntry {
                entry: QueueEntry {
                    id: d.stored,
                    message_id: number(&d.message),
                    qos: d.qos as u8,
                    retain: d.retain,
                    subscription_ids: d.subscription_ids.to_vec(),
                    packet_id: Some(pid),
                    released: false,
                    message: None,
                },
                message: Some(convert::stored_message(&d.message, now, wall)),
            }),
            OutState::Released(stored) => entries.push(TransferEntry {
                entry: QueueEntry {
                    id: *stored,
                    message_id: 0,
                    qos: 2,
                    retain: false,
                    subscription_ids: Vec::new(),
                    packet_id: Some(pid),
                    released: true,
                    message: None,
                },
                message: None,
            }),
        }
    }
    for d in &x.queued {
        entries.push(TransferEntry {
            entry: QueueEntry {
                id: d.stored,
                message_id: number(&d.message),
                qos: d.qos as u8,
                retain: d.retain,
                subscription_ids: d.subscription_ids.to_vec(),
                packet_id: None,
                released: false,
                message: None,
            },
            message: Some(convert::stored_message(&d.message, now, wall)),
        });
    }
    let mut incoming: Vec<u16> = x.state.incoming.ids().collect();
    incoming.sort_unstable();
    Transfer {
        record: SessionRecord {
            client_id: client_id.to_owned(),
            expiry_secs: x.expiry_secs,
            disconnected_at_ms: x.disconnected_ms,
            username: username.map(|u| u.to_string()),
            by_password,
            subscriptions: convert::subscription_records(&x.state.subscriptions),
            will: x.will.as_ref().map(convert::will_record),
            owner_node: node_id.to_owned(),
            epoch: x.generation,
        },
        entries,
        incoming,
    }
}

/// This node's open asks, by client id.
#[derive(Default)]
pub struct Asks {
    open: Mutex<AHashMap<String, (u64, mpsc::UnboundedSender<Answer>)>>,
    /// One fetch per client id at a time on this node.
    fetching: Mutex<AHashMap<ByteString, Arc<tokio::sync::Mutex<()>>>>,
}

/// A peer's answer.
#[derive(Debug)]
pub struct Answer {
    /// The peer.
    pub peer: String,
    /// The session, when it held it.
    pub transfer: Option<Box<Transfer>>,
}

impl Asks {
    /// Delivers a peer's answer to the ask it belongs to (dropped when that ask is over).
    pub fn answer(&self, peer: &str, client_id: &str, at_ms: u64, transfer: Option<Box<Transfer>>) {
        let open = self.open.lock();
        if let Some((at, tx)) = open.get(client_id)
            && *at == at_ms
        {
            let _ = tx.send(Answer {
                peer: peer.to_owned(),
                transfer,
            });
        }
    }
}

impl Broker {
    /// Before a resuming CONNECT attaches: when this node does not hold the session, asks the
    /// peers for it (and, when none has it and sessions are shared, reads it from the store),
    /// and installs what it gets. Returns true when a session was installed.
    pub async fn fetch_session(self: &Arc<Self>, client_id: &ByteString) -> bool {
        let Some(cluster) = self.cluster.get() else {
            return false;
        };
        let lock = cluster
            .asks
            .fetching
            .lock()
            .entry(client_id.clone())
            .or_default()
            .clone();
        let installed = {
            let _one_at_a_time = lock.lock().await;
            if self.sessions.get(client_id).is_some() {
                false
            } else {
                self.fetch_unlocked(cluster, client_id).await
            }
        };
        let mut fetching = cluster.asks.fetching.lock();
        if fetching
            .get(client_id)
            .is_some_and(|l| Arc::strong_count(l) <= 2)
        {
            fetching.remove(client_id);
        }
        installed
    }

    async fn fetch_unlocked(self: &Arc<Self>, cluster: &super::Cluster, client_id: &str) -> bool {
        let peers = cluster.up_peers();
        let mut transfer = None;
        if !peers.is_empty() {
            let at_ms = now_ms();
            let (tx, mut rx) = mpsc::unbounded_channel();
            cluster
                .asks
                .open
                .lock()
                .insert(client_id.to_owned(), (at_ms, tx));
            let ask = Frame::HandoverAsk {
                client_id: client_id.to_owned(),
                at_ms,
            };
            let mut waiting: Vec<String> = peers
                .into_iter()
                .filter(|p| cluster.send_to(p, ask.clone()))
                .collect();
            let deadline = tokio::time::Instant::now() + ASK_TIMEOUT;
            while !waiting.is_empty() {
                let answer = tokio::select! {
                    a = rx.recv() => a,
                    _ = tokio::time::sleep_until(deadline) => None,
                    // A peer whose link went down will not answer.
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {
                        waiting.retain(|p| cluster.is_up(p));
                        continue;
                    }
                };
                let Some(answer) = answer else {
                    warn!(
                        client_id,
                        ?waiting,
                        "session hand-over: peers did not answer in time"
                    );
                    break;
                };
                waiting.retain(|p| *p != answer.peer);
                if let Some(t) = answer.transfer {
                    info!(client_id, from = %answer.peer, entries = t.entries.len(),
                        "session handed over by another node");
                    transfer = Some((*t, answer.peer));
                }
            }
            cluster.asks.open.lock().remove(client_id);
        }
        match transfer {
            Some((t, _)) => {
                self.install_transfer(t);
                true
            }
            None => self.install_from_store(client_id).await,
        }
    }

    /// A peer asks for `client_id`'s session: closes our connection of it (if older than the
    /// ask), takes the session out and removes it here. `None` when we do not hold it.
    pub async fn give_session(self: &Arc<Self>, client_id: &str, at_ms: u64) -> Option<Transfer> {
        let (x, username, by_password) = self.take_session(client_id, at_ms, true).await?;
        let transfer = build(
            client_id,
            username.as_ref(),
            by_password,
            &self.config.node_id,
            &x,
        );
        debug!(
            client_id,
            entries = transfer.entries.len(),
            "session given to another node"
        );
        Some(transfer)
    }

    /// A newer connection of `client_id` started clean on another node: ours (if older) is
    /// closed and the session ends here, its will published. True when it was here.
    pub async fn discard_for_peer(self: &Arc<Self>, client_id: &str, at_ms: u64) -> bool {
        let Some((x, username, _)) = self.take_session(client_id, at_ms, false).await else {
            return false;
        };
        if let Some(will) = x.will {
            self.publish_will(&will, 0, client_id, username.as_deref());
        }
        true
    }

    /// Closes our connection of `client_id` unless it is newer than `at_ms` (telling it
    /// whether the newcomer `resumes`), then takes the session out: routes withdrawn, our own
    /// disk's copy deleted (a shared copy is the new owner's), our writes for it landed.
    async fn take_session(
        self: &Arc<Self>,
        client_id: &str,
        at_ms: u64,
        resumes: bool,
    ) -> Option<(Extracted, Option<ByteString>, bool)> {
        let session = self.sessions.get(client_id)?;
        let _guard = session.attach_lock.lock().await;
        if session.claimed() > at_ms {
            // Our connection is newer: it keeps the id, and the other one loses to our claim.
            return None;
        }
        if session.is_attached() {
            if let Some(handed_back) = session.take_over_for_peer(resumes) {
                let _ = tokio::time::timeout(GIVE_TIMEOUT, handed_back).await;
            }
            let deadline = tokio::time::Instant::now() + GIVE_TIMEOUT;
            while session.is_attached() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            self.metrics
                .takeovers_total
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let username = session.username();
        let by_password = session.password_user().is_some();
        let extracted = session.extract()?;
        let subs: Vec<ByteString> = extracted.state.subscriptions.keys().cloned().collect();
        self.unsubscribe_all(session.id, &subs);
        self.sessions.remove(&session);
        if let Some(p) = &self.persist {
            let mut ops = Vec::new();
            if !p.sessions_shared() {
                ops.push(rookery_store::committer::Op::Session(
                    rookery_store::SessionOp::Delete {
                        client_id: client_id.to_owned(),
                    },
                ));
            }
            if !p.queues_shared() {
                ops.push(rookery_store::committer::Op::Queue(QueueOp::Purge {
                    client_id: client_id.to_owned(),
                }));
            }
            if !ops.is_empty() {
                p.submit(ops);
            }
            // Our writes for it land before the new owner writes its own.
            let _ = tokio::time::timeout(GIVE_TIMEOUT, p.committer().flush()).await;
        }
        Some((extracted, username, by_password))
    }

    /// Installs a session handed over by a peer, and stores it as ours.
    fn install_transfer(self: &Arc<Self>, t: Transfer) {
        let Transfer {
            record,
            entries,
            incoming,
        } = t;
        let client_id = record.client_id.clone();
        let queues_shared = self.persist.as_ref().is_some_and(|p| p.queues_shared());
        let mut restored = Vec::with_capacity(entries.len());
        let mut ops = Vec::new();
        let mut new_message_ids: AHashMap<u64, u64> = AHashMap::new();
        for TransferEntry { mut entry, message } in entries {
            match (&self.persist, queues_shared) {
                // Shared queue store: the entries are there already, under these ids.
                (Some(p), true) => p.saw_id(entry.id),
                // Our own store: written anew, with ids of ours.
                (Some(p), false) if entry.id != 0 => {
                    let message_id = match new_message_ids.get(&entry.message_id) {
                        Some(id) => *id,
                        None => {
                            let id = p.next_id();
                            new_message_ids.insert(entry.message_id, id);
                            ops.push(rookery_store::committer::Op::Queue(QueueOp::Message {
                                id,
                                message: message.clone().unwrap_or_else(placeholder),
                            }));
                            id
                        }
                    };
                    let mut stored = entry.clone();
                    stored.id = p.next_id();
                    stored.message_id = message_id;
                    entry = stored.clone();
                    ops.push(rookery_store::committer::Op::Queue(QueueOp::Enqueue {
                        client_id: client_id.clone(),
                        entry: stored,
                    }));
                }
                _ => {}
            }
            entry.message = message;
            restored.push(entry);
        }
        if let Some(p) = &self.persist
            && !ops.is_empty()
        {
            p.submit(ops);
        }
        self.install(record, restored, incoming);
    }

    /// Reads `client_id`'s session from a shared session store (its owner left the cluster).
    async fn install_from_store(self: &Arc<Self>, client_id: &str) -> bool {
        let Some(p) = &self.persist else {
            return false;
        };
        if !p.sessions_shared() {
            return false;
        }
        let stores = p.committer().stores().clone();
        let record = match stores.sessions.get(client_id).await {
            Ok(Some(r)) => r,
            Ok(None) => return false,
            Err(e) => {
                warn!(client_id, error = %e, "cannot read the session from the store");
                return false;
            }
        };
        let (entries, incoming) = match stores.queue.load(client_id).await {
            Ok(q) => q,
            Err(e) => {
                warn!(client_id, error = %e, "cannot read the session's queue from the store");
                (Vec::new(), Vec::new())
            }
        };
        info!(client_id, from = %record.owner_node, entries = entries.len(),
            "session read from the store (its node is gone)");
        self.install(record, entries, incoming);
        true
    }

    /// Registers a session (parked) with its timers, and writes its record as ours.
    fn install(
        self: &Arc<Self>,
        record: SessionRecord,
        entries: Vec<QueueEntry>,
        incoming: Vec<u16>,
    ) {
        let timers = crate::persist::restore::restore_session(
            self,
            self.persist.as_deref(),
            record,
            entries,
            incoming,
            Instant::now(),
            now_ms(),
        );
        let session = match timers {
            crate::persist::restore::Timers::Expired(session) => {
                self.end_session(&session, 1);
                return;
            }
            crate::persist::restore::Timers::Arm {
                session,
                will_left,
                expiry_left,
            } => {
                self.schedule_after_disconnect(session.clone(), 1, will_left, expiry_left);
                session
            }
        };
        if self.persist.is_none() {
            session.set_durable(false);
        }
        self.store_parked_session(&session);
    }
}

/// The message row of a released QoS 2 delivery, which needs none but the store's schema.
fn placeholder() -> StoredMessage {
    StoredMessage {
        topic: String::new(),
        payload: bytes::Bytes::new(),
        qos: 2,
        retain: false,
        properties: bytes::Bytes::new(),
        expires_at_ms: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Delivery, Message};
    use crate::router::trie::Subscription;
    use crate::session::SessionState;
    use rookery_codec::QoS;

    fn delivery(m: &Arc<Message>, stored: u64) -> Delivery {
        Delivery {
            message: m.clone(),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: smallvec::smallvec![7],
            stored,
        }
    }

    #[test]
    fn a_transfer_carries_subscriptions_in_flight_and_queued_deliveries_in_order() {
        let now = Instant::now();
        let message = |topic: &str, payload: &'static [u8]| {
            Arc::new(Message::from_publish(
                rookery_codec::Publish {
                    dup: false,
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    topic: topic.into(),
                    packet_id: 1,
                    payload: bytes::Bytes::from_static(payload),
                    properties: Default::default(),
                },
                0,
                now,
            ))
        };
        let (m1, m2) = (message("a/1", b"one"), message("a/2", b"two"));
        let mut state = SessionState::default();
        state
            .subscriptions
            .insert("a/#".into(), Subscription::default());
        let pid = state.outgoing.insert(delivery(&m1, 11)).unwrap();
        state.incoming.receive(9);
        let x = Extracted {
            state,
            will: None,
            expiry_secs: 3600,
            disconnected_ms: Some(5),
            generation: 4,
            // m2 twice (two subscriptions' worth): one message, two entries.
            queued: vec![delivery(&m2, 12), delivery(&m2, 13)],
        };
        let t = build("dev", Some(&"alice".into()), true, "rookery-0", &x);
        assert_eq!(t.record.client_id, "dev");
        assert_eq!(t.record.username.as_deref(), Some("alice"));
        assert_eq!(t.record.subscriptions.len(), 1);
        assert_eq!(t.record.expiry_secs, 3600);
        assert_eq!(t.incoming, vec![9]);
        let ids: Vec<(u64, Option<u16>)> = t
            .entries
            .iter()
            .map(|e| (e.entry.id, e.entry.packet_id))
            .collect();
        assert_eq!(ids, vec![(11, Some(pid)), (12, None), (13, None)]);
        assert_eq!(t.entries[1].entry.message_id, t.entries[2].entry.message_id);
        assert_ne!(t.entries[0].entry.message_id, t.entries[1].entry.message_id);
        assert_eq!(t.entries[0].message.as_ref().unwrap().payload, &b"one"[..]);
        assert_eq!(t.entries[2].entry.subscription_ids, vec![7]);
    }
}
