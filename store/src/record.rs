//! The records stores keep and the operations that change them.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// One application message as stored: what a subscriber needs to receive it after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// Topic name.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS as published (0, 1 or 2).
    pub qos: u8,
    /// RETAIN flag as published.
    pub retain: bool,
    /// MQTT 5.0 PUBLISH properties as the broker encodes them (opaque here; empty for none).
    pub properties: Bytes,
    /// When the message expires, in milliseconds since the Unix epoch.
    pub expires_at_ms: Option<u64>,
}

impl StoredMessage {
    /// True when the message expired at or before `now_ms` (milliseconds since the Unix epoch).
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| at <= now_ms)
    }
}

/// One subscription of a stored session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionRecord {
    /// The filter as the client sent it, `$share/group/` included.
    pub filter: String,
    /// Granted maximum QoS.
    pub qos: u8,
    /// MQTT 5.0 No Local.
    pub no_local: bool,
    /// MQTT 5.0 Retain As Published.
    pub retain_as_published: bool,
    /// MQTT 5.0 Retain Handling (0, 1 or 2).
    pub retain_handling: u8,
    /// MQTT 5.0 Subscription Identifier.
    pub id: Option<u32>,
}

/// A will kept with its session, published after its delay (or at the session's end) unless
/// the client comes back first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WillRecord {
    /// The will message (its expiry, if any, counts from publication, so `expires_at_ms` is
    /// unset and `expiry_secs` kept instead).
    pub message: StoredMessage,
    /// MQTT 5.0 Message Expiry Interval of the will, in seconds.
    pub expiry_secs: Option<u32>,
    /// MQTT 5.0 Will Delay Interval, in seconds.
    pub delay_secs: u32,
}

/// A persistent session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The client identifier.
    pub client_id: String,
    /// Session Expiry Interval in seconds (`u32::MAX`: never).
    pub expiry_secs: u32,
    /// When the last connection ended, in milliseconds since the Unix epoch; `None` while a
    /// connection is attached (after a crash: counted from the restart).
    pub disconnected_at_ms: Option<u64>,
    /// The username ACLs apply to.
    pub username: Option<String>,
    /// The password file vouched for the username.
    pub by_password: bool,
    /// Subscriptions.
    pub subscriptions: Vec<SubscriptionRecord>,
    /// The will of the current or last connection, if it has not been published.
    pub will: Option<WillRecord>,
    /// The node that owns the session.
    pub owner_node: String,
    /// Fencing epoch: when the owner's connection claimed the client id (ms since the Unix
    /// epoch; for a session installed without a connection, when it was installed). A store
    /// shared between nodes refuses a write whose (epoch, owner_node) is older than the
    /// newest claim it has seen (see `SessionStore::claim`), so that a node that lost the
    /// session cannot overwrite the new owner's record.
    pub epoch: u64,
}

/// One QoS 1/2 delivery waiting for (or in flight to) a persistent session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    /// Entry id: unique, and ascending in queue order.
    pub id: u64,
    /// The message's id (messages are stored once however many sessions they go to).
    pub message_id: u64,
    /// QoS of this delivery (the lower of published and granted: 1 or 2).
    pub qos: u8,
    /// RETAIN flag to send.
    pub retain: bool,
    /// Subscription identifiers to send.
    pub subscription_ids: Vec<u32>,
    /// Packet id once the delivery entered the in-flight window.
    pub packet_id: Option<u16>,
    /// QoS 2: PUBREC received and PUBREL sent; only PUBCOMP is awaited.
    pub released: bool,
    /// The message, filled in by `QueueStore::load` (unset in `QueueOp::Enqueue`).
    #[serde(skip)]
    pub message: Option<StoredMessage>,
}

/// A QoS 2 packet id a session received and has not released (PUBREL not yet seen).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncomingRecord {
    /// The packet id.
    pub packet_id: u16,
}

/// A change to the session store.
// Ops live only in a batch between submit and commit; boxing the record would cost an
// allocation for each of the common ones.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionOp {
    /// Creates or replaces a session.
    Put(SessionRecord),
    /// Deletes a session.
    Delete {
        /// Its client id.
        client_id: String,
        /// The claim the deleting node holds, (ms, node id), as in `SessionRecord::epoch` and
        /// `owner_node`: a store shared between nodes refuses the delete when a newer claim
        /// owns the session. `None`: whoever owns it.
        owner: Option<(u64, String)>,
    },
}

/// A change to the retained store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetainedOp {
    /// Creates or replaces the retained message of `message.topic`.
    Put(StoredMessage),
    /// Deletes the retained message of a topic.
    Delete {
        /// The topic.
        topic: String,
    },
}

/// A change to the queue store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueOp {
    /// Stores a message body once; the entries that follow refer to it by id. A message no
    /// entry refers to any more is deleted by the store.
    Message {
        /// Its id.
        id: u64,
        /// The message.
        message: StoredMessage,
    },
    /// Appends an entry to a session's queue.
    Enqueue {
        /// The session.
        client_id: String,
        /// The entry (`message` unset).
        entry: QueueEntry,
    },
    /// Records that an entry entered the in-flight window, or that PUBREC came for it.
    Inflight {
        /// The session.
        client_id: String,
        /// The entry id.
        id: u64,
        /// Its packet id.
        packet_id: u16,
        /// PUBREC received (QoS 2).
        released: bool,
    },
    /// Deletes an entry: acknowledged, expired or dropped.
    Ack {
        /// The session.
        client_id: String,
        /// The entry id.
        id: u64,
    },
    /// Records a received QoS 2 packet id.
    IncomingAdd {
        /// The session.
        client_id: String,
        /// The packet id.
        packet_id: u16,
    },
    /// Forgets a received QoS 2 packet id (PUBREL came).
    IncomingRemove {
        /// The session.
        client_id: String,
        /// The packet id.
        packet_id: u16,
    },
    /// Deletes every entry and received id of a session (it ended or started clean).
    Purge {
        /// The session.
        client_id: String,
    },
    /// How far this node has handled what a peer forwarded to it, written with the queue
    /// entries those messages made (decision 0016): the nodes that adopt this node's sessions
    /// after it dies send again only what it had not committed.
    ForwardMark(ForwardMark),
}

/// The forwarded messages a node (`receiver`) has handled of one peer (`sender`), each in its
/// boot epoch: `Publish` frames `1..=upto` of that pair of epochs are routed, and their queue
/// entries written in the same commit as the mark or before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardMark {
    /// The node that handled the messages.
    pub receiver: String,
    /// Its boot epoch.
    pub receiver_epoch: u64,
    /// The node that forwarded them.
    pub sender: String,
    /// Its boot epoch.
    pub sender_epoch: u64,
    /// The count handled.
    pub upto: u64,
}

impl QueueOp {
    /// The client id the operation belongs to, if any (`Message` belongs to none).
    pub fn client_id(&self) -> Option<&str> {
        match self {
            QueueOp::Message { .. } | QueueOp::ForwardMark(_) => None,
            QueueOp::Enqueue { client_id, .. }
            | QueueOp::Inflight { client_id, .. }
            | QueueOp::Ack { client_id, .. }
            | QueueOp::IncomingAdd { client_id, .. }
            | QueueOp::IncomingRemove { client_id, .. }
            | QueueOp::Purge { client_id } => Some(client_id),
        }
    }
}
