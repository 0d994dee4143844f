//! Rookery's durable state.
//!
//! Three stores, each a trait with one method that applies a batch of operations atomically
//! (one transaction, one fsync) and one that loads everything back at start:
//!
//! - [`SessionStore`]: persistent sessions (subscriptions, expiry, will, owner).
//! - [`RetainedStore`]: retained messages by topic.
//! - [`QueueStore`]: QoS 1/2 messages queued or in flight for persistent sessions, and the QoS 2
//!   packet ids a session has received and not yet released. Both live in one store so that a
//!   received QoS 2 message and the record of its packet id commit together.
//!
//! Implementations: [`embedded`] (local disk, the default), [`redis`] (sessions) and
//! [`postgres`] (retained messages and queues). The [`committer`] batches the broker's writes into group
//! commits and tells waiting connections when their writes are durable.
//!
//! Records are plain data with no broker types in them: the broker converts.

pub mod committer;
pub mod embedded;
mod error;
pub mod postgres;
mod record;
pub mod redis;
pub mod redis_bans;
pub mod stats;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use error::{StoreError, StoreResult};
pub use record::{
    ForwardMark, IncomingRecord, QueueEntry, QueueOp, RetainedOp, SessionOp, SessionRecord,
    StoredMessage, SubscriptionRecord, WillRecord,
};

/// Milliseconds since the Unix epoch: the clock every stored deadline and expiry uses.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What a store method returns: a boxed future, so that stores can be trait objects.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = StoreResult<T>> + Send + 'a>>;

/// Persistent sessions.
pub trait SessionStore: Send + Sync + 'static {
    /// Applies `ops` in order, atomically where the store allows (the embedded store and
    /// PostgreSQL: one transaction; Redis: one MULTI/EXEC pipeline).
    fn apply<'a>(&'a self, ops: &'a [SessionOp]) -> StoreFuture<'a, ()>;
    /// [`Self::apply`] for a batch the caller shares: a store that hands the work to another
    /// thread takes the batch without copying it.
    fn apply_shared(&self, ops: Arc<[SessionOp]>) -> StoreFuture<'_, ()> {
        Box::pin(async move { self.apply(&ops).await })
    }
    /// Every stored session.
    fn load(&self) -> StoreFuture<'_, Vec<SessionRecord>>;
    /// One session, for a node that resumes a session another node owned.
    fn get<'a>(&'a self, client_id: &'a str) -> StoreFuture<'a, Option<SessionRecord>>;
    /// A short name for logs and metrics ("embedded", "redis", "postgres").
    fn name(&self) -> &'static str;
    /// Claims `client_id` for `node` as of `epoch` (ms since the Unix epoch): the newest claim,
    /// by (epoch, node id), owns the client id in every node's eyes. Returns the claim that
    /// owns it now when it is newer than this one. Stores that one node keeps to itself have
    /// nothing to settle: the claim always stands.
    fn claim<'a>(
        &'a self,
        client_id: &'a str,
        node: &'a str,
        epoch: u64,
    ) -> StoreFuture<'a, Claimed> {
        let _ = (client_id, node, epoch);
        Box::pin(async { Ok(Claimed::Stands) })
    }
    /// Sends `tx` every claim that stands (its own included), as nodes make them, until `tx`
    /// is closed, and [`ClaimWatch::Following`] each time it starts following them (again:
    /// claims made meanwhile were missed); returns at once for a store that is not shared
    /// between nodes.
    fn watch_claims(
        &self,
        tx: tokio::sync::mpsc::UnboundedSender<ClaimWatch>,
    ) -> StoreFuture<'_, ()> {
        drop(tx);
        Box::pin(async { Ok(()) })
    }
    /// The claim that owns each of `client_ids` now, in order: `None` where none is on
    /// record. A store that one node keeps to itself has none.
    fn owners<'a>(&'a self, client_ids: &'a [String]) -> StoreFuture<'a, Vec<Option<Owner>>> {
        Box::pin(async move { Ok(vec![None; client_ids.len()]) })
    }
}

/// A claim on record: the node that owns a client id, and since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The node.
    pub node: String,
    /// The claim's epoch (ms since the Unix epoch).
    pub epoch: u64,
}

/// What [`SessionStore::watch_claims`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimWatch {
    /// The watch follows the claims from now on. After a break, claims made meanwhile were
    /// missed: a node checks the owners of the sessions it holds ([`SessionStore::owners`]).
    Following,
    /// A claim that stood.
    Claim(ClaimNotice),
}

/// The outcome of [`SessionStore::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// The claim is the newest: it owns the client id.
    Stands,
    /// A newer claim owns the client id.
    Newer {
        /// Its node.
        node: String,
        /// Its epoch.
        epoch: u64,
    },
}

/// A claim that stood, as [`SessionStore::watch_claims`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimNotice {
    /// The client id.
    pub client_id: String,
    /// The node that claimed it.
    pub node: String,
    /// The claim's epoch (ms since the Unix epoch).
    pub epoch: u64,
}

/// Retained messages.
pub trait RetainedStore: Send + Sync + 'static {
    /// Applies `ops` in order, atomically.
    fn apply<'a>(&'a self, ops: &'a [RetainedOp]) -> StoreFuture<'a, ()>;
    /// [`Self::apply`] for a batch the caller shares: a store that hands the work to another
    /// thread takes the batch without copying it.
    fn apply_shared(&self, ops: Arc<[RetainedOp]>) -> StoreFuture<'_, ()> {
        Box::pin(async move { self.apply(&ops).await })
    }
    /// Every retained message that has not expired.
    fn load(&self) -> StoreFuture<'_, Vec<StoredMessage>>;
    /// A short name for logs and metrics.
    fn name(&self) -> &'static str;
}

/// Queued and in-flight QoS 1/2 messages of persistent sessions, and received QoS 2 ids.
pub trait QueueStore: Send + Sync + 'static {
    /// Applies `ops` in order, atomically.
    fn apply<'a>(&'a self, ops: &'a [QueueOp]) -> StoreFuture<'a, ()>;
    /// [`Self::apply`] for a batch the caller shares: a store that hands the work to another
    /// thread takes the batch without copying it.
    fn apply_shared(&self, ops: Arc<[QueueOp]>) -> StoreFuture<'_, ()> {
        Box::pin(async move { self.apply(&ops).await })
    }
    /// A session's entries in queue order (ascending entry id) with their messages, skipping
    /// expired ones, and the QoS 2 packet ids it has received and not released.
    fn load<'a>(&'a self, client_id: &'a str) -> StoreFuture<'a, (Vec<QueueEntry>, Vec<u16>)>;
    /// Client ids that have entries or received QoS 2 ids.
    fn clients(&self) -> StoreFuture<'_, Vec<String>>;
    /// The last [`ForwardMark`] `receiver` wrote for what `sender` forwarded to it.
    fn forward_mark<'a>(
        &'a self,
        receiver: &'a str,
        sender: &'a str,
    ) -> StoreFuture<'a, Option<ForwardMark>>;
    /// Every [`ForwardMark`] `receiver` wrote, the last per sender (a node that restarted
    /// tells each peer how far its previous life had committed).
    fn forward_marks<'a>(&'a self, receiver: &'a str) -> StoreFuture<'a, Vec<ForwardMark>>;
    /// A short name for logs and metrics.
    fn name(&self) -> &'static str;
}
