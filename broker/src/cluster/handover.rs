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
use tokio::sync::{Notify, mpsc};
use tracing::{debug, info, warn};

use super::frame::Frame;
use crate::broker::Broker;
use crate::persist::convert;
use crate::router::trie::SessionId;
use crate::session::Extracted;
use crate::session::inflight::OutState;

/// How long a node waits for its peers' answers (above what a giving node may take: its
/// connection's hand-back, then its store writes).
const ASK_TIMEOUT: Duration = Duration::from_secs(8);
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
    /// The message's cluster-wide id: a copy relayed or forwarded later is not delivered
    /// again.
    pub id: u64,
}

/// Deliveries sent in one frame at most (their estimated encoded size): a session's queue
/// may be far larger than a frame may be ([`super::frame::MAX_FRAME`]).
pub const TRANSFER_PART_BYTES: usize = 32 << 20;

/// About how many bytes an entry takes encoded.
fn entry_size(e: &TransferEntry) -> usize {
    64 + 5 * e.entry.subscription_ids.len()
        + e.message
            .as_ref()
            .map_or(0, |m| m.topic.len() + m.payload.len() + m.properties.len())
}

/// The most estimated bytes of deliveries per transfer part on a link of `level`: parts came
/// with level 3, and a node below it gets the whole queue in its `HandoverReply`. Pure.
pub fn part_limit(level: u8) -> usize {
    if level >= 3 {
        TRANSFER_PART_BYTES
    } else {
        usize::MAX
    }
}

/// Cuts a transfer's deliveries into parts of at most `limit` estimated bytes, in order (an
/// entry larger than that alone); the last part rides in the `HandoverReply`, the others go
/// before it in `HandoverPart` frames. Pure.
pub fn split_parts(
    entries: Vec<TransferEntry>,
    limit: usize,
) -> (Vec<Vec<TransferEntry>>, Vec<TransferEntry>) {
    let mut parts = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    for e in entries {
        let n = entry_size(&e);
        if !current.is_empty() && size + n > limit {
            parts.push(std::mem::take(&mut current));
            size = 0;
        }
        size += n;
        current.push(e);
    }
    (parts, current)
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
    // A delivery, in flight (with its packet id) or queued.
    let mut entry = |d: &crate::message::Delivery, packet_id: Option<u16>| {
        let next = numbers.len() as u64 + 1;
        let message_id = *numbers.entry(Arc::as_ptr(&d.message)).or_insert(next);
        TransferEntry {
            entry: QueueEntry {
                id: d.stored,
                message_id,
                qos: d.qos as u8,
                retain: d.retain,
                subscription_ids: d.subscription_ids.to_vec(),
                packet_id,
                released: false,
                message: None,
            },
            message: Some(convert::stored_message(&d.message, now, wall)),
            id: d.message.id,
        }
    };
    let mut entries = Vec::new();
    for (pid, state) in x.state.outgoing.in_order() {
        match state {
            OutState::Published(d) => entries.push(entry(d, Some(pid))),
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
                id: 0,
            }),
        }
    }
    for d in &x.queued {
        entries.push(entry(d, None));
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

/// What [`Broker::fetch_session`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    /// A session was installed here.
    Installed,
    /// No node holds it, and no store has it.
    Absent,
    /// A peer that may hold it did not answer: refuse the CONNECT for now (0x89).
    Busy,
}

/// An ask under way.
struct OpenAsk {
    at_ms: u64,
    tx: mpsc::UnboundedSender<Answer>,
    /// Relayed deliveries that came before the session was installed.
    stash: Vec<Frame>,
}

/// This node's open asks, by client id.
#[derive(Default)]
pub struct Asks {
    open: Mutex<AHashMap<String, OpenAsk>>,
    /// One fetch per client id at a time on this node.
    fetching: Mutex<AHashMap<ByteString, Arc<tokio::sync::Mutex<()>>>>,
    /// Parts of transfers whose `HandoverReply` has not come yet, by (peer, client id,
    /// `at_ms`).
    parts: Mutex<AHashMap<(String, String, u64), Vec<TransferEntry>>>,
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
    /// Delivers a peer's answer to the ask it belongs to; hands the session back when that
    /// ask is over (it came too late: the caller installs it if the id is still free).
    pub fn answer(
        &self,
        peer: &str,
        client_id: &str,
        at_ms: u64,
        transfer: Option<Box<Transfer>>,
    ) -> Option<Box<Transfer>> {
        let open = self.open.lock();
        match open.get(client_id) {
            Some(ask) if ask.at_ms == at_ms => match ask.tx.send(Answer {
                peer: peer.to_owned(),
                transfer,
            }) {
                Ok(()) => None,
                // The asker stopped listening: the session must not be lost.
                Err(mpsc::error::SendError(answer)) => answer.transfer,
            },
            _ => transfer,
        }
    }

    /// Keeps a part of a transfer until its `HandoverReply`.
    pub fn part(&self, peer: &str, client_id: &str, at_ms: u64, entries: Vec<TransferEntry>) {
        self.parts
            .lock()
            .entry((peer.to_owned(), client_id.to_owned(), at_ms))
            .or_default()
            .extend(entries);
    }

    /// Puts the parts that came before a `HandoverReply` in front of its deliveries (and
    /// forgets them when the reply holds no session).
    pub fn join_parts(
        &self,
        peer: &str,
        client_id: &str,
        at_ms: u64,
        transfer: &mut Option<Box<Transfer>>,
    ) {
        let key = (peer.to_owned(), client_id.to_owned(), at_ms);
        let Some(mut parts) = self.parts.lock().remove(&key) else {
            return;
        };
        if let Some(t) = transfer.as_mut() {
            parts.append(&mut t.entries);
            t.entries = parts;
        }
    }

    /// Forgets the parts from `peer` (its link went down: the transfer is not coming).
    pub fn drop_parts(&self, peer: &str) {
        self.parts.lock().retain(|(p, _, _), _| p != peer);
    }

    /// Keeps a relayed delivery for a session being fetched; gives it back when none is.
    fn stash(&self, client_id: &str, frame: Frame) -> Option<Frame> {
        match self.open.lock().get_mut(client_id) {
            Some(ask) => {
                ask.stash.push(frame);
                None
            }
            None => Some(frame),
        }
    }

    /// Closes the ask of `client_id`; returns what was stashed for it.
    fn close(&self, client_id: &str) -> Vec<Frame> {
        self.open
            .lock()
            .remove(client_id)
            .map(|a| a.stash)
            .unwrap_or_default()
    }
}

/// The `at_ms` of a session handed over unasked, by a draining node.
pub const PUSHED: u64 = 0;

/// How long a node that gave a session away relays for it at most, waiting for the new node
/// to say it installed it.
const RELAY_LIMIT: Duration = Duration::from_secs(30);
/// How long a fence waits for the other nodes to learn the new node's routes.
const FENCE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the new node keeps checking for duplicates once the old one stopped relaying
/// (a copy sent straight to it may still be on its way).
const DEDUP_AFTER: Duration = Duration::from_secs(10);
/// Most message ids remembered per moving session.
const DEDUP_IDS: usize = 65_536;

/// Sessions in the middle of a move on this node.
#[derive(Default)]
pub struct Moves {
    /// Given away and still subscribed here: where their deliveries go, by session id.
    relays: Mutex<AHashMap<SessionId, Relay>>,
    /// Received: the deliveries made since, by session id.
    received: Mutex<AHashMap<SessionId, Seen>>,
    /// Our fences: the peers still to answer.
    fences: Mutex<AHashMap<u64, Fence>>,
    next_fence: std::sync::atomic::AtomicU64,
    /// Fences peers asked of us that wait for routes.
    asked: Mutex<Vec<AskedFence>>,
}

/// One of our fences: the peers still to answer.
struct Fence {
    waiting: ahash::AHashSet<String>,
    notify: Arc<Notify>,
}

struct Relay {
    to: Arc<str>,
    client_id: String,
    filters: Vec<ByteString>,
    fencing: bool,
    /// Deliveries held until the session itself has been sent (they must not arrive first);
    /// `None` once relaying.
    held: Option<Vec<Frame>>,
}

struct AskedFence {
    from: String,
    id: u64,
    node: String,
    filters: Vec<String>,
    since: Instant,
}

/// Deliveries made to a session that just arrived: (message id, which delivery: see
/// [`Seen::first`]).
#[derive(Default)]
struct Seen {
    ids: ahash::AHashSet<(u64, u64)>,
    order: std::collections::VecDeque<(u64, u64)>,
    until: Option<Instant>,
    /// Adopted from this node, which died (`reroute.rs`): what it had not committed comes
    /// again, and may also come the usual way.
    from: Option<Arc<str>>,
}

/// How a session comes to be installed here.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arrival<'a> {
    /// Read from a store, nothing on its way to it.
    Parked,
    /// Handed over by a node that relays for it meanwhile; it brought these message ids.
    Moving(&'a [u64]),
    /// Adopted from a node that died: what that node had not committed is sent again
    /// (`reroute.rs`), and a copy that also comes the usual way is delivered once.
    Adopted(&'a str),
}

/// How long an adopted session checks for duplicates: the rerouting waits at most
/// `reroute::ADOPTED_WAIT` for the adopters, then for the links' acknowledgements.
const ADOPTED_DEDUP: Duration = Duration::from_secs(60);

/// The delivery of a message not from a shared group.
const VIA_SUBSCRIPTION: u64 = 0;
/// A delivery from some shared group: the only key of one a level-3 node relayed without
/// naming the group, and recorded beside the group's own key for every other.
const VIA_SOME_GROUP: u64 = 1;
/// Every delivery of the message: it came with the session (not knowing which way it was
/// delivered, it counts as all of them).
const VIA_ANY: u64 = 2;

/// The key of a delivery from the shared group `group` (never one of the keys above). Pure.
fn via_group(group: &str) -> u64 {
    ahash::RandomState::with_seeds(1, 2, 3, 4)
        .hash_one(group)
        .max(VIA_ANY + 1)
}

impl Seen {
    /// Message `id` came with the session: every later delivery of it is a duplicate.
    fn brought(&mut self, id: u64) {
        self.insert((id, VIA_ANY));
    }

    /// True the first time this session gets message `id` this way: not from a shared group,
    /// from the shared group `group`, or, with an empty `group` (a level-3 node's relay), from
    /// any shared group.
    fn first(&mut self, id: u64, group: Option<&str>) -> bool {
        if self.ids.contains(&(id, VIA_ANY)) {
            return false;
        }
        match group {
            None => self.insert((id, VIA_SUBSCRIPTION)),
            Some("") => self.insert((id, VIA_SOME_GROUP)),
            Some(group) => {
                self.insert((id, VIA_SOME_GROUP));
                self.insert((id, via_group(group)))
            }
        }
    }

    fn insert(&mut self, key: (u64, u64)) -> bool {
        if !self.ids.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > DEDUP_IDS
            && let Some(old) = self.order.pop_front()
        {
            self.ids.remove(&old);
        }
        true
    }
}

impl Moves {
    /// True when the session `id` was adopted here from `departed` lately (its duplicate
    /// check still runs).
    pub fn adopted_from(&self, id: SessionId, departed: &str) -> bool {
        self.received.lock().get(&id).is_some_and(|s| {
            s.from.as_deref() == Some(departed) && s.until.is_none_or(|u| Instant::now() < u)
        })
    }

    /// A peer answered our fence `id`.
    pub fn fence_ack(&self, peer: &str, id: u64) {
        if let Some(f) = self.fences.lock().get_mut(&id) {
            f.waiting.remove(peer);
            f.notify.notify_one();
        }
    }
}

impl Broker {
    /// Before a resuming CONNECT attaches: when this node does not hold the session, asks the
    /// peers for it (and, when none has it and sessions are shared, reads it from the store),
    /// and installs what it gets.
    pub async fn fetch_session(self: &Arc<Self>, client_id: &ByteString) -> Fetched {
        let Some(cluster) = self.cluster.get() else {
            return Fetched::Absent;
        };
        let lock = cluster
            .asks
            .fetching
            .lock()
            .entry(client_id.clone())
            .or_default()
            .clone();
        let fetched = {
            let _one_at_a_time = lock.lock().await;
            if self.sessions.get(client_id).is_some() {
                Fetched::Absent
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
        fetched
    }

    async fn fetch_unlocked(
        self: &Arc<Self>,
        cluster: &super::Cluster,
        client_id: &str,
    ) -> Fetched {
        let peers = cluster.up_peers();
        let mut transfer = None;
        let mut silent = Vec::new();
        if !peers.is_empty() {
            let at_ms = now_ms();
            let (tx, mut rx) = mpsc::unbounded_channel();
            cluster.asks.open.lock().insert(
                client_id.to_owned(),
                OpenAsk {
                    at_ms,
                    tx,
                    stash: Vec::new(),
                },
            );
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
                    if transfer.is_some() {
                        warn!(client_id, from = %answer.peer,
                            "a second node held the session too: its copy is installed instead");
                    }
                    transfer = Some((*t, answer.peer));
                }
            }
            silent = waiting;
        }
        let fetched = match transfer {
            Some((t, from)) => {
                // Deliveries relayed by the old node and sent here directly are made once;
                // it relays until the other nodes know our routes.
                if self.install_transfer(t, true).is_some() {
                    cluster.send_to(
                        &from,
                        Frame::HandoverInstalled {
                            client_id: client_id.to_owned(),
                        },
                    );
                }
                Fetched::Installed
            }
            // A peer that did not answer may hold it: the client comes back later rather than
            // start without it.
            None if !silent.is_empty() => Fetched::Busy,
            None => {
                // Answers coming now are late: handled as such, not dropped.
                for frame in cluster.asks.close(client_id) {
                    self.deliver_relayed(frame);
                }
                if self.install_from_store(client_id).await {
                    Fetched::Installed
                } else {
                    Fetched::Absent
                }
            }
        };
        for frame in cluster.asks.close(client_id) {
            self.deliver_relayed(frame);
        }
        fetched
    }

    /// A session handed over unasked (its node is draining) or after its ask had timed out:
    /// installed if the id is still free here (it would be lost otherwise).
    pub fn install_late(self: &Arc<Self>, from: &str, at_ms: u64, t: Transfer) {
        let client_id = t.record.client_id.clone();
        if self.sessions.get(&client_id).is_some() {
            warn!(
                client_id,
                from, "a session handed over too late: this node has one of that id"
            );
            return;
        }
        if at_ms == PUSHED {
            debug!(client_id, from, "session handed over by a draining node");
        } else {
            warn!(
                client_id,
                from, "a session handed over after its ask timed out: installed"
            );
        }
        if self.install_transfer(t, true).is_some()
            && let Some(cluster) = self.cluster.get()
        {
            cluster.send_to(from, Frame::HandoverInstalled { client_id });
        }
    }

    /// Gives `client_id`'s session to `peer` (which asked for it with `at_ms`, or
    /// [`PUSHED`] when a drain sends it unasked): closes our connection of it (if older),
    /// takes the session out and sends it. Once it is sent, what its routes here still match
    /// is relayed; should it not be sent (the link went down), the session is taken back.
    /// True when it was given.
    pub async fn give_session(self: &Arc<Self>, peer: &str, client_id: &str, at_ms: u64) -> bool {
        let Some(cluster) = self.cluster.get() else {
            return false;
        };
        // Unasked (a drain), the session is parked: no connection of ours to compare with.
        let claim_at = if at_ms == PUSHED { u64::MAX } else { at_ms };
        let Some((x, username, by_password, session_id)) = self
            .take_session(client_id, (claim_at, peer), Some(peer), false)
            .await
        else {
            if at_ms != PUSHED {
                cluster.send_to(
                    peer,
                    Frame::HandoverReply {
                        client_id: client_id.to_owned(),
                        at_ms,
                        transfer: None,
                    },
                );
            }
            return false;
        };
        let transfer = build(
            client_id,
            username.as_ref(),
            by_password,
            &self.config.node_id,
            &x,
        );
        // A large queue goes in parts, then the reply with the rest (one link, in order); to
        // a node that does not know parts, all in the reply, as before parts existed.
        let (parts, last) = split_parts(transfer.entries.clone(), part_limit(cluster.level(peer)));
        let sent = parts.into_iter().all(|entries| {
            cluster.send_to(
                peer,
                Frame::HandoverPart {
                    client_id: client_id.to_owned(),
                    at_ms,
                    entries,
                },
            )
        }) && cluster.send_to(
            peer,
            Frame::HandoverReply {
                client_id: client_id.to_owned(),
                at_ms,
                transfer: Some(Box::new(Transfer {
                    record: transfer.record.clone(),
                    entries: last,
                    incoming: transfer.incoming.clone(),
                })),
            },
        );
        if sent {
            debug!(
                client_id,
                entries = transfer.entries.len(),
                "session given to another node"
            );
            self.start_relay(session_id);
        } else {
            warn!(
                client_id,
                peer, "the link went down while handing a session over: kept here"
            );
            self.take_back(session_id, transfer);
        }
        sent
    }

    /// Sends what was held for a session just handed over, and relays from now on.
    fn start_relay(&self, session_id: SessionId) {
        let Some(cluster) = self.cluster.get() else {
            return;
        };
        // Under the relay's lock: a delivery routed meanwhile waits for these to be queued.
        let mut relays = cluster.moves.relays.lock();
        if let Some(r) = relays.get_mut(&session_id)
            && let Some(held) = r.held.take()
        {
            for frame in held {
                cluster.send_to(&r.to, frame);
            }
        }
    }

    /// A session whose hand-over failed comes back here, with what was held for it.
    fn take_back(self: &Arc<Self>, session_id: SessionId, transfer: Transfer) {
        let Some(cluster) = self.cluster.get() else {
            return;
        };
        let Some(relay) = self.end_relay(cluster, session_id) else {
            return;
        };
        if self.install_transfer(transfer, false).is_some() {
            for frame in relay.held.unwrap_or_default() {
                self.deliver_frame(frame, false);
            }
        }
    }

    /// A newer connection of `client_id` exists on another node (claimed at `at_ms` by
    /// `node`): ours (if older) is closed and our copy of the session ends. After a clean
    /// start there, its will is published; with `resumed` (a claim learned after a partition
    /// healed, or an adoption's) the client is alive or its session lives on there with its
    /// will, and none is published here. True when it was here.
    pub async fn discard_for_peer(
        self: &Arc<Self>,
        client_id: &str,
        (at_ms, node): (u64, &str),
        resumed: bool,
    ) -> bool {
        let Some((x, username, _, _)) = self
            .take_session(client_id, (at_ms, node), None, resumed)
            .await
        else {
            return false;
        };
        if !resumed && let Some(will) = x.will {
            self.publish_will(&will, 0, client_id, username.as_deref());
        }
        true
    }

    /// Closes our connection of `client_id` unless it is newer than the claim (`at_ms`,
    /// `by` node; ties go to the larger node id, as everywhere) (telling it
    /// whether the newcomer resumes: it does when the session goes `to` a node), then takes
    /// the session out: our own disk's copy deleted (a shared copy is the new owner's), our
    /// writes for it landed. Its routes stay, relaying to `to` until the other nodes know the
    /// new ones ([`Broker::finish_relay`]); without `to` they are withdrawn at once. `moved`:
    /// the client is alive elsewhere, or its session went on elsewhere with its will, so the
    /// connection closed here publishes none.
    async fn take_session(
        self: &Arc<Self>,
        client_id: &str,
        (at_ms, by): (u64, &str),
        to: Option<&str>,
        moved: bool,
    ) -> Option<(Extracted, Option<ByteString>, bool, SessionId)> {
        let resumes = to.is_some();
        let session = self.sessions.get(client_id)?;
        let _guard = session.attach_lock.lock().await;
        // The claim as `lose_to` compares it: a connection that attached within the same
        // millisecond as the other node's keeps the id when this node's id is the larger.
        if (session.claimed(), self.config.node_id.as_str()) > (at_ms, by) {
            // Our connection is newer: it keeps the id, and the other one loses to our claim.
            return None;
        }
        if session.is_attached() {
            if let Some(handed_back) = session.take_over_for_peer(resumes, moved) {
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
        let extracted = {
            // No publish is being routed meanwhile: each one either reaches the queue taken
            // out now, or sees the relay.
            let _routing = self.router.write();
            let x = session.extract()?;
            if let (Some(to), Some(cluster)) = (to, self.cluster.get()) {
                let filters = x.state.subscriptions.keys().cloned().collect();
                cluster.moves.relays.lock().insert(
                    session.id,
                    Relay {
                        to: to.into(),
                        client_id: client_id.to_owned(),
                        filters,
                        fencing: false,
                        held: Some(Vec::new()),
                    },
                );
                session.set_moving(true);
            }
            x
        };
        if to.is_none() || self.cluster.get().is_none() {
            let subs: Vec<ByteString> = extracted.state.subscriptions.keys().cloned().collect();
            self.unsubscribe_all(session.id, &subs);
        } else {
            // Should the new node never say it installed the session, stop relaying anyway.
            let (broker, session) = (Arc::downgrade(self), session.clone());
            let shutdown = self.shutdown.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(RELAY_LIMIT) => {}
                    _ = shutdown.cancelled() => return,
                }
                if let Some(broker) = broker.upgrade() {
                    broker.withdraw_relay(&session);
                }
            });
        }
        self.sessions.remove(&session);
        if let Some(p) = &self.persist {
            let mut ops = Vec::new();
            if !p.sessions_shared() {
                ops.push(rookery_store::committer::Op::Session(
                    rookery_store::SessionOp::Delete {
                        client_id: client_id.to_owned(),
                        owner: None,
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
        // It leaves: no duplicate check is kept for it here.
        if let Some(cluster) = self.cluster.get() {
            cluster.moves.received.lock().remove(&session.id);
        }
        Some((extracted, username, by_password, session.id))
    }

    /// Installs a session handed over by a peer, and stores it as ours.
    fn install_transfer(
        self: &Arc<Self>,
        t: Transfer,
        moving: bool,
    ) -> Option<Arc<crate::session::Session>> {
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
        let delivered: Vec<u64> = entries.iter().map(|e| e.id).filter(|id| *id != 0).collect();
        for TransferEntry {
            mut entry, message, ..
        } in entries
        {
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
        let arrival = if moving {
            Arrival::Moving(&delivered)
        } else {
            Arrival::Parked
        };
        self.install(record, restored, incoming, arrival)
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
        // Taken from a node that died: what that node had not committed comes to it as to
        // the sessions adopted from it (`reroute.rs`).
        let owner = record.owner_node.clone();
        let gone =
            owner != self.config.node_id && self.cluster.get().is_some_and(|c| !c.is_up(&owner));
        let arrival = if gone {
            Arrival::Adopted(&owner)
        } else {
            Arrival::Parked
        };
        let installed = self.install(record, entries, incoming, arrival).is_some();
        if installed
            && gone
            && let Some(cluster) = self.cluster.get()
        {
            // Our routes for it are announced: the others may send what `owner` holds.
            let resumed = Frame::Resumed {
                departed: owner.clone(),
            };
            cluster.broadcast_at(super::reroute::REROUTE_LEVEL, &resumed);
            self.resend_for_resumed(owner, None);
        }
        installed
    }

    /// Registers a session (parked) with its timers, and writes its record as ours.
    pub(crate) fn install(
        self: &Arc<Self>,
        record: SessionRecord,
        entries: Vec<QueueEntry>,
        incoming: Vec<u16>,
        arrival: Arrival<'_>,
    ) -> Option<Arc<crate::session::Session>> {
        // A session arriving from a node that relays for it checks for duplicates from its
        // first delivery here, before its routes exist; what it brought counts as delivered.
        // An adopted one does too, while what its dead node had not committed comes again.
        let cluster = self
            .cluster
            .get()
            .filter(|_| !matches!(arrival, Arrival::Parked));
        let hook = |session: &Arc<crate::session::Session>| {
            if let Some(cluster) = cluster {
                let seen = match arrival {
                    Arrival::Parked => return,
                    // Ended by the old node's HandoverFinished; at the latest, once its
                    // relay could no longer run.
                    Arrival::Moving(ids) => {
                        let mut seen = Seen {
                            until: Some(Instant::now() + RELAY_LIMIT + FENCE_TIMEOUT + DEDUP_AFTER),
                            ..Seen::default()
                        };
                        for id in ids {
                            seen.brought(*id);
                        }
                        seen
                    }
                    Arrival::Adopted(from) => Seen {
                        until: Some(Instant::now() + ADOPTED_DEDUP),
                        from: Some(from.into()),
                        ..Seen::default()
                    },
                };
                cluster.moves.received.lock().insert(session.id, seen);
                session.set_moving(true);
            }
        };
        let timers = crate::persist::restore::restore_session(
            self,
            self.persist.as_deref(),
            Some(&hook),
            record,
            entries,
            incoming,
            (Instant::now(), now_ms()),
        );
        let Some(timers) = timers else {
            warn!("a session arrived for a client id that has one here meanwhile: not installed");
            return None;
        };
        let session = match timers {
            crate::persist::restore::Timers::Expired(session) => {
                self.end_session(&session, 1);
                return None;
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
        // Ours from now: its record is written under a claim newer than its last owner's.
        session.set_claimed(now_ms().max(session.claimed()));
        self.store_parked_session(&session);
        Some(session)
    }

    /// At the end of a drain: hands every session still here (parked: their clients have not
    /// come back yet) to the other nodes, spread by client id, and waits until they have
    /// installed them and every node routes to them (at most `limit`). Returns how many went.
    pub async fn hand_off_parked(self: &Arc<Self>, limit: Duration) -> usize {
        let Some(cluster) = self.cluster.get() else {
            return 0;
        };
        let deadline = tokio::time::Instant::now() + limit;
        // Not to a node that is draining too: it would leave with them.
        let peers: Vec<String> = cluster
            .up_peers()
            .into_iter()
            .filter(|p| !cluster.is_draining(p))
            .collect();
        if peers.is_empty() {
            warn!(
                "draining with no other node to take the parked sessions: they stay in the stores"
            );
            return 0;
        }
        let mut sent = 0;
        for session in self.sessions.all() {
            if self.shutdown.is_cancelled() || tokio::time::Instant::now() >= deadline {
                warn!("drain: not every parked session could be handed over in time");
                break;
            }
            if session.is_attached() {
                continue;
            }
            let to = pick_node(&session.client_id, &peers);
            if self.give_session(to, &session.client_id, PUSHED).await {
                sent += 1;
            }
        }
        // Each relay ends once its session is installed and routed to everywhere.
        while !cluster.moves.relays.lock().is_empty()
            && tokio::time::Instant::now() < deadline
            && !self.shutdown.is_cancelled()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sent
    }

    /// Whether a delivery to a moving `t.session` is made here: false when it is relayed to
    /// the session's new node, or was made already (the same message by another path).
    pub(crate) fn moving_target(
        &self,
        t: &crate::broker::Target<'_>,
        message: &Arc<crate::message::Message>,
    ) -> bool {
        let Some(cluster) = self.cluster.get() else {
            t.session.set_moving(false);
            return true;
        };
        {
            let mut relays = cluster.moves.relays.lock();
            if let Some(r) = relays.get_mut(&t.session.id) {
                let delivery = super::frame::Relayed {
                    client_id: r.client_id.clone(),
                    id: message.id,
                    message: convert::stored_message(message, Instant::now(), now_ms()),
                    qos: message.qos.min(t.granted) as u8,
                    retain: t.retain_as_published && message.retain,
                    subscription_ids: t.subscription_ids.to_vec(),
                };
                // Sent as the link's level allows (`Cluster::send_to`).
                let frame = match t.group.map(|g| &**g) {
                    Some(group) if !group.is_empty() => Frame::DeliverInGroup {
                        delivery,
                        group: group.to_owned(),
                    },
                    group => Frame::Deliver {
                        delivery,
                        shared: group.is_some(),
                    },
                };
                match &mut r.held {
                    Some(held) => held.push(frame),
                    None => {
                        if !cluster.send_to(&r.to, frame) {
                            warn!(node = %r.to, "a delivery for a session handed over could not be relayed: link down");
                        }
                    }
                }
                return false;
            }
        }
        let mut received = cluster.moves.received.lock();
        let Some(seen) = received.get_mut(&t.session.id) else {
            t.session.set_moving(false);
            return true;
        };
        if seen.until.is_some_and(|u| Instant::now() >= u) {
            received.remove(&t.session.id);
            t.session.set_moving(false);
            return true;
        }
        seen.first(message.id, t.group.map(|g| &**g))
    }

    /// A delivery relayed by the node that gave us a session (kept until the session is
    /// installed when it comes first).
    pub fn deliver_relayed(self: &Arc<Self>, frame: Frame) {
        self.deliver_frame(frame, true);
    }

    /// Delivers a relayed `Deliver` frame to its session: one that is moving here when
    /// `moving_only` (a fresh session of the same id is not the one it was meant for); passed
    /// on when the session has moved on from here meanwhile.
    fn deliver_frame(self: &Arc<Self>, frame: Frame, moving_only: bool) {
        let Some(cluster) = self.cluster.get() else {
            return;
        };
        let client_id = match &frame {
            Frame::Deliver { delivery, .. } | Frame::DeliverInGroup { delivery, .. } => {
                delivery.client_id.clone()
            }
            _ => return,
        };
        let Some(frame) = cluster.asks.stash(&client_id, frame) else {
            return; // kept until the session is installed
        };
        let Some(session) = self.sessions.get(&client_id) else {
            // Moved on before the relay ended: along our own relay for it.
            let mut relays = cluster.moves.relays.lock();
            match relays.values_mut().find(|r| r.client_id == client_id) {
                Some(r) => match &mut r.held {
                    Some(held) => held.push(frame),
                    None => {
                        cluster.send_to(&r.to, frame);
                    }
                },
                None => debug!(
                    client_id,
                    "a relayed delivery for a session not here: dropped"
                ),
            }
            return;
        };
        if moving_only && !session.is_moving() {
            debug!(
                client_id,
                "a relayed delivery for another session of that id: dropped"
            );
            return;
        }
        // The group's key; empty for a shared group a level-3 node did not name.
        let (delivery, group): (_, Option<Box<str>>) = match frame {
            Frame::Deliver { delivery, shared } => (delivery, shared.then(|| "".into())),
            Frame::DeliverInGroup { delivery, group } => (delivery, Some(group.into())),
            _ => return,
        };
        let super::frame::Relayed {
            id,
            message,
            qos,
            retain,
            subscription_ids,
            ..
        } = delivery;
        let message = Arc::new(convert::message(message, 0, id, Instant::now(), now_ms()));
        let granted = rookery_codec::QoS::from_u8(qos).unwrap_or(rookery_codec::QoS::AtLeastOnce);
        let target = crate::broker::Target {
            session: &session,
            group: group.as_ref(),
            granted,
            retain_as_published: retain,
            subscription_ids: subscription_ids.into_iter().collect(),
            stored: 0,
        };
        if session.is_moving() && !self.moving_target(&target, &message) {
            return;
        }
        let mut routed = crate::broker::Routed::default();
        let mut targets = [target];
        if let Some(p) = self
            .persist
            .as_ref()
            .filter(|_| granted != rookery_codec::QoS::AtMostOnce)
            && !self.store_deliveries(p, &message, &mut targets, &mut routed)
        {
            warn!(client_id, "a relayed delivery could not be stored: dropped");
            return;
        }
        let [target] = targets;
        self.push_target(target, &message, &mut routed);
    }

    /// The new node installed `client_id`'s session: once every other node knows its routes,
    /// stop relaying and withdraw ours.
    pub fn finish_relay(self: &Arc<Self>, to: &str, client_id: &str) {
        let Some(cluster) = self.cluster.get() else {
            return;
        };
        let found = {
            let mut relays = cluster.moves.relays.lock();
            relays
                .iter_mut()
                .find(|(_, r)| r.client_id == client_id && &*r.to == to && !r.fencing)
                .map(|(id, r)| {
                    r.fencing = true;
                    (*id, r.filters.clone())
                })
        };
        let Some((session_id, filters)) = found else {
            return;
        };
        let (broker, cluster, to) = (self.clone(), cluster.clone(), to.to_owned());
        tokio::spawn(async move {
            let id = cluster
                .moves
                .next_fence
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
            let notify = Arc::new(Notify::new());
            let waiting: ahash::AHashSet<String> = cluster
                .up_peers()
                .into_iter()
                .filter(|p| *p != to)
                .collect();
            cluster.moves.fences.lock().insert(
                id,
                Fence {
                    waiting: waiting.clone(),
                    notify: notify.clone(),
                },
            );
            let fence = Frame::RouteFence {
                id,
                node: to.clone(),
                filters: filters.iter().map(|f| f.to_string()).collect(),
            };
            for p in &waiting {
                cluster.send_to(p, fence.clone());
            }
            let deadline = tokio::time::Instant::now() + FENCE_TIMEOUT;
            loop {
                let left = {
                    let mut fences = cluster.moves.fences.lock();
                    match fences.get_mut(&id) {
                        Some(f) => {
                            f.waiting.retain(|p| cluster.is_up(p));
                            f.waiting.len()
                        }
                        None => 0,
                    }
                };
                if left == 0 {
                    break;
                }
                if broker.shutdown.is_cancelled() {
                    return;
                }
                if tokio::time::Instant::now() >= deadline {
                    warn!(node = %to, "route fence timed out: some nodes may miss messages for a moved session");
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_millis(100), notify.notified()).await;
            }
            cluster.moves.fences.lock().remove(&id);
            broker.withdraw_relay_by_id(session_id);
        });
    }

    fn withdraw_relay(&self, session: &crate::session::Session) {
        let Some(cluster) = self.cluster.get() else {
            return;
        };
        let unconfirmed = cluster
            .moves
            .relays
            .lock()
            .get(&session.id)
            .is_some_and(|r| !r.fencing);
        if unconfirmed {
            warn!(client_id = %session.client_id, "the new node never confirmed a handed-over session: relay withdrawn");
            self.withdraw_relay_by_id(session.id);
        }
    }

    fn withdraw_relay_by_id(&self, session_id: SessionId) {
        let Some(cluster) = self.cluster.get() else {
            return;
        };
        if let Some(relay) = self.end_relay(cluster, session_id) {
            cluster.send_to(
                &relay.to,
                Frame::HandoverFinished {
                    client_id: relay.client_id,
                },
            );
        }
    }

    /// Ends the relay of `session_id` and withdraws its subscriptions here. Under the
    /// router's lock: a publish routed meanwhile is relayed, or does not see the session.
    fn end_relay(&self, cluster: &super::Cluster, session_id: SessionId) -> Option<Relay> {
        let relay = {
            let _routing = self.router.write();
            cluster.moves.relays.lock().remove(&session_id)
        }?;
        self.unsubscribe_all(session_id, &relay.filters);
        Some(relay)
    }

    /// The old node relays nothing more for `client_id`: duplicates are checked a little
    /// longer (copies sent here directly may still be on their way), then not at all.
    pub fn relay_finished(&self, client_id: &str) {
        let (Some(cluster), Some(session)) = (self.cluster.get(), self.sessions.get(client_id))
        else {
            return;
        };
        if let Some(seen) = cluster.moves.received.lock().get_mut(&session.id) {
            let soon = Instant::now() + DEDUP_AFTER;
            seen.until = Some(seen.until.map_or(soon, |u| u.min(soon)));
        }
    }

    /// A peer asks to be told once `node`'s routes include `filters`.
    pub fn route_fence(&self, from: &str, id: u64, node: String, filters: Vec<String>) {
        let Some(cluster) = self.cluster.get() else {
            return;
        };
        cluster.moves.asked.lock().push(AskedFence {
            from: from.to_owned(),
            id,
            node,
            filters,
            since: Instant::now(),
        });
        self.recheck_fences();
    }

    /// Answers the fences whose routes have arrived (or whose node is gone, or that waited
    /// too long). Called when routes change.
    pub fn recheck_fences(&self) {
        let Some(cluster) = self.cluster.get() else {
            return;
        };
        if cluster.moves.asked.lock().is_empty() {
            return;
        }
        // Links are looked at and written to outside the other locks (see Cluster::unregister).
        let up = cluster.up_peers();
        let done: Vec<(String, u64)> = {
            let mut asked = cluster.moves.asked.lock();
            let remote = cluster.remote.read();
            let mut done = Vec::new();
            asked.retain(|f| {
                let finished = !up.contains(&f.node)
                    || f.since.elapsed() >= FENCE_TIMEOUT
                    || f.filters.iter().all(|x| remote.announced(&f.node, x));
                if finished {
                    done.push((f.from.clone(), f.id));
                }
                !finished
            });
            done
        };
        for (from, id) in done {
            cluster.send_to(&from, Frame::RouteFenceAck { id });
        }
    }
}

/// The node a draining node hands `client_id`'s session to: the highest hash of (node,
/// client id), so sessions spread evenly and each goes to the same node whoever computes it.
pub(crate) fn pick_node<'p>(client_id: &str, peers: &'p [String]) -> &'p str {
    use std::hash::{Hash, Hasher};
    let score = |p: &String| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (p, client_id).hash(&mut h);
        h.finish()
    };
    peers
        .iter()
        .max_by_key(|p| score(p))
        .map_or("", String::as_str)
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

    #[test]
    fn a_message_is_delivered_once_per_group_and_once_outside_groups() {
        let mut seen = Seen::default();
        assert!(seen.first(1, None));
        assert!(!seen.first(1, None), "the same subscription delivery again");
        assert!(seen.first(1, Some("$share/a/t")), "group a");
        assert!(
            seen.first(1, Some("$share/b/t")),
            "group b is another delivery"
        );
        assert!(!seen.first(1, Some("$share/b/t")), "group b again");
        // A level-3 relay names no group: it counts as any group's delivery, as before.
        assert!(!seen.first(1, Some("")));
        assert!(seen.first(2, Some("")));
        assert!(!seen.first(2, Some("")));
        assert!(seen.first(3, Some("$share/a/t")));
        assert!(!seen.first(3, Some("$share/a/t")));
        // What came with the session was delivered, whichever way.
        seen.brought(4);
        assert!(!seen.first(4, None));
        assert!(!seen.first(4, Some("$share/a/t")));
        assert!(!seen.first(4, Some("")));
    }

    fn delivery(m: &Arc<Message>, stored: u64) -> Delivery {
        Delivery {
            message: m.clone(),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: smallvec::smallvec![7],
            stored,
        }
    }

    fn entry(id: u64, payload: usize) -> TransferEntry {
        TransferEntry {
            entry: QueueEntry {
                id,
                message_id: id,
                qos: 1,
                retain: false,
                subscription_ids: Vec::new(),
                packet_id: None,
                released: false,
                message: None,
            },
            message: Some(rookery_store::StoredMessage {
                topic: "t".into(),
                payload: vec![0; payload].into(),
                qos: 1,
                retain: false,
                properties: Default::default(),
                expires_at_ms: None,
            }),
            id,
        }
    }

    #[test]
    fn a_large_transfer_goes_in_parts_in_order_and_a_small_one_whole() {
        let ids = |v: &[TransferEntry]| v.iter().map(|e| e.id).collect::<Vec<_>>();
        // Ten deliveries of about 1,000 bytes against parts of 3,000: three per part.
        let entries: Vec<TransferEntry> = (1..=10).map(|i| entry(i, 930)).collect();
        let (parts, last) = split_parts(entries.clone(), 3_000);
        assert_eq!(
            parts.iter().map(|p| ids(p)).collect::<Vec<_>>(),
            [vec![1, 2, 3], vec![4, 5, 6], vec![7, 8, 9]]
        );
        assert_eq!(ids(&last), [10]);
        // Joined again on the other side, the order is the original one.
        let asks = Asks::default();
        for p in parts {
            asks.part("node-0", "c", 7, p);
        }
        asks.part("node-1", "c", 7, vec![entry(99, 1)]);
        let mut reply = Some(Box::new(Transfer {
            record: SessionRecord {
                client_id: "c".into(),
                expiry_secs: 0,
                disconnected_at_ms: None,
                username: None,
                by_password: false,
                subscriptions: Vec::new(),
                will: None,
                owner_node: "node-0".into(),
                epoch: 0,
            },
            entries: last,
            incoming: Vec::new(),
        }));
        asks.join_parts("node-0", "c", 7, &mut reply);
        assert_eq!(ids(&reply.unwrap().entries), ids(&entries));
        // A part larger than the limit goes alone; a small transfer is one reply.
        let (parts, last) = split_parts(vec![entry(1, 10), entry(2, 5_000), entry(3, 10)], 3_000);
        assert_eq!(
            parts.iter().map(|p| ids(p)).collect::<Vec<_>>(),
            [vec![1], vec![2]]
        );
        assert_eq!(ids(&last), [3]);
        let (parts, last) = split_parts(entries, TRANSFER_PART_BYTES);
        assert!(parts.is_empty());
        assert_eq!(last.len(), 10);
        // The other peer's parts go when its link does.
        asks.drop_parts("node-1");
        assert!(asks.parts.lock().is_empty());
    }

    #[test]
    fn parked_sessions_spread_over_the_nodes_and_each_has_one_home() {
        let peers: Vec<String> = (0..3).map(|i| format!("rookery-{i}")).collect();
        let mut counts = [0; 3];
        for i in 0..3000 {
            let id = format!("device-{i}");
            let to = pick_node(&id, &peers);
            assert_eq!(to, pick_node(&id, &peers));
            counts[peers.iter().position(|p| p == to).unwrap()] += 1;
        }
        assert!(counts.iter().all(|c| *c > 800), "{counts:?}");
        assert_eq!(pick_node("x", &[]), "");
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
