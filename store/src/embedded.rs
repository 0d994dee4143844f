//! The embedded store: every record in one fjall database (an LSM tree with a write-ahead
//! journal) under the data directory.
//!
//! One write batch per commit, made durable with one fsync of the journal
//! (`PersistMode::SyncAll`): the committer hands over everything that accumulated while the
//! previous commit ran, so concurrent writers share a commit. fjall was chosen over redb by a
//! benchmark of this workload (`store/benches/engines.rs`, figures in docs/benchmarks.md):
//! appends and deletes in group-commit batches run three to four times faster on the LSM
//! journal than on redb's copy-on-write B-tree, and reads happen only at start.
//!
//! Messages are stored once and referenced by queue entries; a reference count kept in memory
//! (rebuilt from the queue at open) deletes a message with its last entry. Each batch is first
//! reduced to one write per key (its net effect), so a key is never written twice in one batch.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ahash::AHashMap;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{
    ForwardMark, QueueEntry, QueueOp, QueueStore, RetainedOp, RetainedStore, SessionOp,
    SessionRecord, SessionStore, StoreError, StoreFuture, StoreResult, StoredMessage, now_ms,
};

/// The name these stores report (`SessionStore::name` and the others).
pub const NAME: &str = "embedded";
/// The database directory inside the data directory.
pub const STORE_DIR: &str = "rookery-store";

/// The embedded store: implements all three store traits on one database.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    sessions: Keyspace,
    retained: Keyspace,
    messages: Keyspace,
    queue: Keyspace,
    incoming: Keyspace,
    /// Forward marks, by `receiver` NUL `sender`.
    marks: Keyspace,
    path: PathBuf,
    /// Queue entries referring to each stored message.
    refs: Mutex<AHashMap<u64, u32>>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`. Unreadable data is an error naming the
    /// directory, never an empty start.
    pub fn open(dir: &Path) -> StoreResult<EmbeddedStore> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Other {
            store: NAME,
            message: format!("cannot create data directory {}: {e}", dir.display()),
        })?;
        let path = dir.join(STORE_DIR);
        let err = |e: fjall::Error| corrupt(&path, &e);
        let db = Database::builder(&path)
            // The broker reads the store only at start: a small block cache is enough.
            .cache_size(8 * 1024 * 1024)
            .worker_threads(1)
            // Durability comes from the explicit persist at each commit.
            .manual_journal_persist(true)
            .open()
            .map_err(err)?;
        // Memory stays bounded: small memtables, flushed early (a queue's entries mostly die
        // young, so little of them ever reaches a table file).
        let open = |name: &str| {
            db.keyspace(name, || {
                KeyspaceCreateOptions::default().max_memtable_size(4 * 1024 * 1024)
            })
            .map_err(err)
        };
        let inner = Inner {
            sessions: open("sessions")?,
            retained: open("retained")?,
            messages: open("messages")?,
            queue: open("queue")?,
            incoming: open("incoming")?,
            marks: open("marks")?,
            db,
            path: path.clone(),
            refs: Mutex::new(AHashMap::new()),
        };
        inner.count_refs()?;
        Ok(EmbeddedStore {
            inner: Arc::new(inner),
        })
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs a commit on the blocking pool: the runtime's worker goes on serving connections
    /// while the fsync runs (measured: 3x the durable throughput of blocking in place).
    async fn off_runtime(
        &self,
        f: impl FnOnce(&Inner) -> StoreResult<()> + Send + 'static,
    ) -> StoreResult<()> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Other {
                store: NAME,
                message: format!("store task failed: {e}"),
            })?
    }

    /// Runs `f`, which blocks (disk reads), without stalling the runtime's other tasks:
    /// on a multi-threaded runtime the worker hands its tasks to the others first; on a
    /// current-thread runtime (tests, tools) it simply runs.
    fn blocking<T>(&self, f: impl FnOnce(&Inner) -> StoreResult<T>) -> StoreResult<T> {
        let multi = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi {
            tokio::task::block_in_place(|| f(&self.inner))
        } else {
            f(&self.inner)
        }
    }
}

fn corrupt(path: &Path, e: &dyn std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        store: NAME,
        path: path.to_owned(),
        message: e.to_string(),
    }
}

fn encode<T: Serialize>(value: &T) -> StoreResult<Vec<u8>> {
    postcard::to_allocvec(value).map_err(|e| StoreError::Other {
        store: NAME,
        message: format!("cannot encode a record: {e}"),
    })
}

/// `client_id` NUL `id` (big endian): a client's keys sort together, by id. MQTT strings
/// cannot hold U+0000 ([MQTT-1.5.4-2]), so the separator is unambiguous.
fn client_key(client_id: &str, id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(client_id.len() + 1 + id.len());
    k.extend_from_slice(client_id.as_bytes());
    k.push(0);
    k.extend_from_slice(id);
    k
}

fn client_prefix(client_id: &str) -> Vec<u8> {
    client_key(client_id, &[])
}

/// The client id and trailing id of a client key.
fn split_key(key: &[u8]) -> Option<(&str, &[u8])> {
    let at = key.iter().position(|b| *b == 0)?;
    Some((std::str::from_utf8(&key[..at]).ok()?, &key[at + 1..]))
}

impl Inner {
    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        // Errors from fjall after open are I/O or format errors of this database.
        corrupt(&self.path, &e)
    }

    /// Decodes a record; `what` names it in the error (formatted only then).
    fn decode<T: DeserializeOwned>(
        &self,
        what: impl FnOnce() -> String,
        bytes: &[u8],
    ) -> StoreResult<T> {
        postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt {
            store: NAME,
            path: self.path.clone(),
            message: format!("{}: {e}", what()),
        })
    }

    /// Counts message references (and reads every entry once: bad data fails the open).
    fn count_refs(&self) -> StoreResult<()> {
        let mut refs = self.refs.lock();
        for kv in self.queue.iter() {
            let (key, value) = kv.into_inner().map_err(|e| self.err(e))?;
            let entry: QueueEntry = self.decode(|| format!("queue entry {key:?}"), &value)?;
            *refs.entry(entry.message_id).or_default() += 1;
        }
        Ok(())
    }

    fn commit(&self, batch: fjall::OwnedWriteBatch) -> StoreResult<()> {
        batch
            .durability(Some(PersistMode::SyncAll))
            .commit()
            .map_err(|e| self.err(e))
    }

    fn apply_sessions(&self, ops: &[SessionOp]) -> StoreResult<()> {
        let mut last: AHashMap<&str, Option<&SessionRecord>> = AHashMap::new();
        for op in ops {
            match op {
                SessionOp::Put(r) => last.insert(r.client_id.as_str(), Some(r)),
                SessionOp::Delete { client_id, .. } => last.insert(client_id.as_str(), None),
            };
        }
        let mut batch = self.db.batch();
        for (client_id, record) in last {
            match record {
                Some(r) => batch.insert(&self.sessions, client_id.as_bytes(), encode(r)?),
                None => batch.remove(&self.sessions, client_id.as_bytes()),
            }
        }
        self.commit(batch)
    }

    fn load_sessions(&self) -> StoreResult<Vec<SessionRecord>> {
        let mut out = Vec::new();
        for kv in self.sessions.iter() {
            let (key, value) = kv.into_inner().map_err(|e| self.err(e))?;
            out.push(self.decode(|| format!("session {key:?}"), &value)?);
        }
        Ok(out)
    }

    fn get_session(&self, client_id: &str) -> StoreResult<Option<SessionRecord>> {
        match self.sessions.get(client_id).map_err(|e| self.err(e))? {
            Some(v) => Ok(Some(self.decode(|| format!("session {client_id:?}"), &v)?)),
            None => Ok(None),
        }
    }

    fn apply_retained(&self, ops: &[RetainedOp]) -> StoreResult<()> {
        let mut last: AHashMap<&str, Option<&StoredMessage>> = AHashMap::new();
        for op in ops {
            match op {
                RetainedOp::Put(m) => last.insert(m.topic.as_str(), Some(m)),
                RetainedOp::Delete { topic } => last.insert(topic.as_str(), None),
            };
        }
        let mut batch = self.db.batch();
        for (topic, message) in last {
            match message {
                Some(m) => batch.insert(&self.retained, topic.as_bytes(), encode(m)?),
                None => batch.remove(&self.retained, topic.as_bytes()),
            }
        }
        self.commit(batch)
    }

    fn load_retained(&self, now_ms: u64) -> StoreResult<Vec<StoredMessage>> {
        let mut out = Vec::new();
        for kv in self.retained.iter() {
            let (key, value) = kv.into_inner().map_err(|e| self.err(e))?;
            let m: StoredMessage = self.decode(|| format!("retained {key:?}"), &value)?;
            if !m.is_expired(now_ms) {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// The entry under `key`: as this batch left it, else as stored.
    fn entry(
        &self,
        pending: &AHashMap<Vec<u8>, Option<QueueEntry>>,
        key: &[u8],
    ) -> StoreResult<Option<QueueEntry>> {
        if let Some(e) = pending.get(key) {
            return Ok(e.clone());
        }
        match self.queue.get(key).map_err(|e| self.err(e))? {
            Some(v) => Ok(Some(self.decode(|| format!("queue entry {key:?}"), &v)?)),
            None => Ok(None),
        }
    }

    fn apply_queue(&self, ops: &[QueueOp]) -> StoreResult<()> {
        // The batch's net effect per key, and reference count changes (applied to the
        // in-memory counts only if the batch commits).
        let mut entries: AHashMap<Vec<u8>, Option<QueueEntry>> = AHashMap::new();
        let mut messages: AHashMap<u64, Vec<u8>> = AHashMap::new();
        let mut incoming: AHashMap<Vec<u8>, bool> = AHashMap::new();
        let mut delta: AHashMap<u64, i64> = AHashMap::new();
        let mut marks: AHashMap<Vec<u8>, &ForwardMark> = AHashMap::new();
        for op in ops {
            match op {
                QueueOp::ForwardMark(mark) => {
                    marks.insert(client_key(&mark.receiver, mark.sender.as_bytes()), mark);
                }
                QueueOp::Message { id, message } => {
                    messages.insert(*id, encode(message)?);
                    delta.entry(*id).or_insert(0);
                }
                QueueOp::Enqueue { client_id, entry } => {
                    let key = client_key(client_id, &entry.id.to_be_bytes());
                    if self.entry(&entries, &key)?.is_none() {
                        *delta.entry(entry.message_id).or_insert(0) += 1;
                    }
                    entries.insert(key, Some(entry.clone()));
                }
                QueueOp::Inflight {
                    client_id,
                    id,
                    packet_id,
                    released,
                } => {
                    let key = client_key(client_id, &id.to_be_bytes());
                    // Acknowledged meanwhile: nothing to update.
                    if let Some(mut e) = self.entry(&entries, &key)? {
                        e.packet_id = Some(*packet_id);
                        e.released = *released;
                        entries.insert(key, Some(e));
                    }
                }
                QueueOp::Ack { client_id, id } => {
                    let key = client_key(client_id, &id.to_be_bytes());
                    if let Some(e) = self.entry(&entries, &key)? {
                        *delta.entry(e.message_id).or_insert(0) -= 1;
                        entries.insert(key, None);
                    }
                }
                QueueOp::IncomingAdd {
                    client_id,
                    packet_id,
                } => {
                    incoming.insert(client_key(client_id, &packet_id.to_be_bytes()), true);
                }
                QueueOp::IncomingRemove {
                    client_id,
                    packet_id,
                } => {
                    incoming.insert(client_key(client_id, &packet_id.to_be_bytes()), false);
                }
                QueueOp::Purge { client_id } => {
                    let prefix = client_prefix(client_id);
                    let mut keys: Vec<Vec<u8>> = Vec::new();
                    for kv in self.queue.prefix(&prefix) {
                        keys.push(kv.key().map_err(|e| self.err(e))?.to_vec());
                    }
                    keys.extend(entries.keys().filter(|k| k.starts_with(&prefix)).cloned());
                    for key in keys {
                        if let Some(e) = self.entry(&entries, &key)? {
                            *delta.entry(e.message_id).or_insert(0) -= 1;
                            entries.insert(key, None);
                        }
                    }
                    for kv in self.incoming.prefix(&prefix) {
                        incoming.insert(kv.key().map_err(|e| self.err(e))?.to_vec(), false);
                    }
                    for (k, present) in incoming.iter_mut() {
                        if k.starts_with(&prefix) {
                            *present = false;
                        }
                    }
                }
            }
        }
        let mut batch = self.db.batch();
        for (key, entry) in &entries {
            match entry {
                Some(e) => batch.insert(&self.queue, key.as_slice(), encode(e)?),
                None => batch.remove(&self.queue, key.as_slice()),
            }
        }
        for (key, present) in &incoming {
            if *present {
                batch.insert(&self.incoming, key.as_slice(), []);
            } else {
                batch.remove(&self.incoming, key.as_slice());
            }
        }
        for (key, mark) in &marks {
            batch.insert(&self.marks, key.as_slice(), encode(mark)?);
        }
        let refs = self.refs.lock();
        let count = |id: &u64, d: i64| i64::from(refs.get(id).copied().unwrap_or(0)) + d;
        for (id, d) in &delta {
            if count(id, *d) <= 0 {
                // No entry refers to it any more (or none ever did, in this batch).
                batch.remove(&self.messages, id.to_be_bytes());
            } else if let Some(bytes) = messages.remove(id) {
                batch.insert(&self.messages, id.to_be_bytes(), bytes);
            }
        }
        drop(refs);
        self.commit(batch)?;
        let mut refs = self.refs.lock();
        for (id, d) in delta {
            let c = i64::from(refs.get(&id).copied().unwrap_or(0)) + d;
            if c <= 0 {
                refs.remove(&id);
            } else {
                refs.insert(id, u32::try_from(c).unwrap_or(u32::MAX));
            }
        }
        Ok(())
    }

    fn load_queue(&self, client_id: &str, now_ms: u64) -> StoreResult<(Vec<QueueEntry>, Vec<u16>)> {
        let prefix = client_prefix(client_id);
        let mut entries = Vec::new();
        let mut expired = Vec::new();
        for kv in self.queue.prefix(&prefix) {
            let (key, value) = kv.into_inner().map_err(|e| self.err(e))?;
            let what = || format!("queue entry {key:?}");
            let mut entry: QueueEntry = self.decode(what, &value)?;
            let Some(m) = self
                .messages
                .get(entry.message_id.to_be_bytes())
                .map_err(|e| self.err(e))?
            else {
                return Err(StoreError::Corrupt {
                    store: NAME,
                    path: self.path.clone(),
                    message: format!("{} refers to missing message {}", what(), entry.message_id),
                });
            };
            let message: StoredMessage =
                self.decode(|| format!("message {}", entry.message_id), &m)?;
            // An expired message is never delivered; one already in flight is resent anyway
            // (the client may hold its packet id).
            if message.is_expired(now_ms) && entry.packet_id.is_none() {
                expired.push(QueueOp::Ack {
                    client_id: client_id.to_owned(),
                    id: entry.id,
                });
                continue;
            }
            entry.message = Some(message);
            entries.push(entry);
        }
        // Expired entries go now: nothing else would delete them while the session is away.
        if !expired.is_empty() {
            self.apply_queue(&expired)?;
        }
        let mut ids = Vec::new();
        for kv in self.incoming.prefix(&prefix) {
            let key = kv.key().map_err(|e| self.err(e))?;
            if let Some((_, id)) = split_key(&key)
                && let Ok(id) = <[u8; 2]>::try_from(id)
            {
                ids.push(u16::from_be_bytes(id));
            }
        }
        Ok((entries, ids))
    }

    fn forward_mark(&self, receiver: &str, sender: &str) -> StoreResult<Option<ForwardMark>> {
        let key = client_key(receiver, sender.as_bytes());
        match self.marks.get(&key).map_err(|e| self.err(e))? {
            Some(v) => Ok(Some(
                self.decode(|| format!("forward mark {receiver}/{sender}"), &v)?,
            )),
            None => Ok(None),
        }
    }

    fn forward_marks(&self, receiver: &str) -> StoreResult<Vec<ForwardMark>> {
        let mut out = Vec::new();
        for kv in self.marks.prefix(client_prefix(receiver)) {
            let (key, v) = kv.into_inner().map_err(|e| self.err(e))?;
            let sender = split_key(&key).map_or_else(String::new, |(_, s)| {
                String::from_utf8_lossy(s).into_owned()
            });
            out.push(self.decode(|| format!("forward mark {receiver}/{sender}"), &v)?);
        }
        Ok(out)
    }

    fn queue_clients(&self) -> StoreResult<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        for ks in [&self.queue, &self.incoming] {
            for kv in ks.iter() {
                let key = kv.key().map_err(|e| self.err(e))?;
                if let Some((c, _)) = split_key(&key)
                    && out.last().map(String::as_str) != Some(c)
                {
                    out.push(c.to_owned());
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }
}

impl SessionStore for EmbeddedStore {
    fn apply<'a>(&'a self, ops: &'a [SessionOp]) -> StoreFuture<'a, ()> {
        SessionStore::apply_shared(self, ops.into())
    }
    fn apply_shared(&self, ops: Arc<[SessionOp]>) -> StoreFuture<'_, ()> {
        Box::pin(self.off_runtime(move |s| s.apply_sessions(&ops)))
    }
    fn load(&self) -> StoreFuture<'_, Vec<SessionRecord>> {
        Box::pin(async move { self.blocking(|s| s.load_sessions()) })
    }
    fn get<'a>(&'a self, client_id: &'a str) -> StoreFuture<'a, Option<SessionRecord>> {
        Box::pin(async move { self.blocking(|s| s.get_session(client_id)) })
    }
    fn name(&self) -> &'static str {
        NAME
    }
}

impl RetainedStore for EmbeddedStore {
    fn apply<'a>(&'a self, ops: &'a [RetainedOp]) -> StoreFuture<'a, ()> {
        RetainedStore::apply_shared(self, ops.into())
    }
    fn apply_shared(&self, ops: Arc<[RetainedOp]>) -> StoreFuture<'_, ()> {
        Box::pin(self.off_runtime(move |s| s.apply_retained(&ops)))
    }
    fn load(&self) -> StoreFuture<'_, Vec<StoredMessage>> {
        Box::pin(async move { self.blocking(|s| s.load_retained(now_ms())) })
    }
    fn name(&self) -> &'static str {
        NAME
    }
}

impl QueueStore for EmbeddedStore {
    fn apply<'a>(&'a self, ops: &'a [QueueOp]) -> StoreFuture<'a, ()> {
        QueueStore::apply_shared(self, ops.into())
    }
    fn apply_shared(&self, ops: Arc<[QueueOp]>) -> StoreFuture<'_, ()> {
        Box::pin(self.off_runtime(move |s| s.apply_queue(&ops)))
    }
    fn load<'a>(&'a self, client_id: &'a str) -> StoreFuture<'a, (Vec<QueueEntry>, Vec<u16>)> {
        Box::pin(async move { self.blocking(|s| s.load_queue(client_id, now_ms())) })
    }
    fn clients(&self) -> StoreFuture<'_, Vec<String>> {
        Box::pin(async move { self.blocking(|s| s.queue_clients()) })
    }
    fn forward_mark<'a>(
        &'a self,
        receiver: &'a str,
        sender: &'a str,
    ) -> StoreFuture<'a, Option<ForwardMark>> {
        Box::pin(async move { self.blocking(|s| s.forward_mark(receiver, sender)) })
    }
    fn forward_marks<'a>(&'a self, receiver: &'a str) -> StoreFuture<'a, Vec<ForwardMark>> {
        Box::pin(async move { self.blocking(|s| s.forward_marks(receiver)) })
    }
    fn name(&self) -> &'static str {
        NAME
    }
}
