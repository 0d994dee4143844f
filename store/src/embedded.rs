//! The embedded store: every record in one redb file under the data directory.
//!
//! One write transaction per batch, committed with one fsync (redb's `Durability::Immediate`):
//! the committer hands over everything that accumulated while the previous commit ran, so
//! concurrent writers share a commit. Messages are stored once and referenced by queue
//! entries; a reference count kept in memory (rebuilt from the queue table at open) deletes a
//! message with its last entry. Reads happen only at start.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ahash::AHashMap;
use parking_lot::Mutex;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{
    QueueEntry, QueueOp, QueueStore, RetainedOp, RetainedStore, SessionOp, SessionRecord,
    SessionStore, StoreError, StoreFuture, StoreResult, StoredMessage,
};

const NAME: &str = "embedded";
/// The database file inside the data directory.
pub const FILE_NAME: &str = "rookery.redb";

const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const RETAINED: TableDefinition<&str, &[u8]> = TableDefinition::new("retained");
const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
const QUEUE: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("queue");
const INCOMING: TableDefinition<(&str, u16), ()> = TableDefinition::new("incoming");

/// The embedded store: implements all three store traits on one file.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
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
    /// Opens (or creates) the store in `dir`. Unreadable data is an error naming the file,
    /// never an empty start.
    pub fn open(dir: &Path) -> StoreResult<EmbeddedStore> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Other {
            store: NAME,
            message: format!("cannot create data directory {}: {e}", dir.display()),
        })?;
        let path = dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|e| corrupt(&path, &e))?;
        let inner = Inner {
            db,
            path,
            refs: Mutex::new(AHashMap::new()),
        };
        inner.init()?;
        Ok(EmbeddedStore {
            inner: Arc::new(inner),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Other {
                store: NAME,
                message: format!("store task failed: {e}"),
            })?
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

impl Inner {
    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        // Errors from redb after open are I/O or format errors of this file.
        corrupt(&self.path, &e)
    }

    fn decode<T: DeserializeOwned>(&self, what: &str, bytes: &[u8]) -> StoreResult<T> {
        postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt {
            store: NAME,
            path: self.path.clone(),
            message: format!("{what}: {e}"),
        })
    }

    /// Creates the tables and counts message references.
    fn init(&self) -> StoreResult<()> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            tx.open_table(SESSIONS).map_err(|e| self.err(e))?;
            tx.open_table(RETAINED).map_err(|e| self.err(e))?;
            tx.open_table(MESSAGES).map_err(|e| self.err(e))?;
            tx.open_table(INCOMING).map_err(|e| self.err(e))?;
            let queue = tx.open_table(QUEUE).map_err(|e| self.err(e))?;
            let mut refs = self.refs.lock();
            for row in queue.iter().map_err(|e| self.err(e))? {
                let (key, value) = row.map_err(|e| self.err(e))?;
                let entry: QueueEntry =
                    self.decode(&format!("queue entry {:?}", key.value()), value.value())?;
                *refs.entry(entry.message_id).or_default() += 1;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    fn apply_sessions(&self, ops: &[SessionOp]) -> StoreResult<()> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = tx.open_table(SESSIONS).map_err(|e| self.err(e))?;
            for op in ops {
                match op {
                    SessionOp::Put(record) => {
                        let bytes = encode(record)?;
                        table
                            .insert(record.client_id.as_str(), bytes.as_slice())
                            .map_err(|e| self.err(e))?;
                    }
                    SessionOp::Delete { client_id } => {
                        table.remove(client_id.as_str()).map_err(|e| self.err(e))?;
                    }
                }
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    fn load_sessions(&self) -> StoreResult<Vec<SessionRecord>> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = tx.open_table(SESSIONS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| self.err(e))? {
            let (key, value) = row.map_err(|e| self.err(e))?;
            out.push(self.decode(&format!("session {:?}", key.value()), value.value())?);
        }
        Ok(out)
    }

    fn get_session(&self, client_id: &str) -> StoreResult<Option<SessionRecord>> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = tx.open_table(SESSIONS).map_err(|e| self.err(e))?;
        match table.get(client_id).map_err(|e| self.err(e))? {
            Some(v) => Ok(Some(
                self.decode(&format!("session {client_id:?}"), v.value())?,
            )),
            None => Ok(None),
        }
    }

    fn apply_retained(&self, ops: &[RetainedOp]) -> StoreResult<()> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = tx.open_table(RETAINED).map_err(|e| self.err(e))?;
            for op in ops {
                match op {
                    RetainedOp::Put(message) => {
                        let bytes = encode(message)?;
                        table
                            .insert(message.topic.as_str(), bytes.as_slice())
                            .map_err(|e| self.err(e))?;
                    }
                    RetainedOp::Delete { topic } => {
                        table.remove(topic.as_str()).map_err(|e| self.err(e))?;
                    }
                }
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    fn load_retained(&self, now_ms: u64) -> StoreResult<Vec<StoredMessage>> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = tx.open_table(RETAINED).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| self.err(e))? {
            let (key, value) = row.map_err(|e| self.err(e))?;
            let m: StoredMessage =
                self.decode(&format!("retained {:?}", key.value()), value.value())?;
            if !m.is_expired(now_ms) {
                out.push(m);
            }
        }
        Ok(out)
    }

    fn apply_queue(&self, ops: &[QueueOp]) -> StoreResult<()> {
        // Reference counts change only if the transaction commits.
        let mut delta: AHashMap<u64, i64> = AHashMap::new();
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut messages = tx.open_table(MESSAGES).map_err(|e| self.err(e))?;
            let mut queue = tx.open_table(QUEUE).map_err(|e| self.err(e))?;
            let mut incoming = tx.open_table(INCOMING).map_err(|e| self.err(e))?;
            for op in ops {
                match op {
                    QueueOp::Message { id, message } => {
                        let bytes = encode(message)?;
                        messages
                            .insert(*id, bytes.as_slice())
                            .map_err(|e| self.err(e))?;
                        delta.entry(*id).or_insert(0);
                    }
                    QueueOp::Enqueue { client_id, entry } => {
                        let bytes = encode(entry)?;
                        queue
                            .insert((client_id.as_str(), entry.id), bytes.as_slice())
                            .map_err(|e| self.err(e))?;
                        *delta.entry(entry.message_id).or_insert(0) += 1;
                    }
                    QueueOp::Inflight {
                        client_id,
                        id,
                        packet_id,
                        released,
                    } => {
                        let key = (client_id.as_str(), *id);
                        let old = queue
                            .get(key)
                            .map_err(|e| self.err(e))?
                            .map(|v| v.value().to_vec());
                        // Acknowledged meanwhile: nothing to update.
                        let Some(old) = old else { continue };
                        let mut entry: QueueEntry =
                            self.decode(&format!("queue entry {key:?}"), &old)?;
                        entry.packet_id = Some(*packet_id);
                        entry.released = *released;
                        let bytes = encode(&entry)?;
                        queue
                            .insert(key, bytes.as_slice())
                            .map_err(|e| self.err(e))?;
                    }
                    QueueOp::Ack { client_id, id } => {
                        let key = (client_id.as_str(), *id);
                        if let Some(old) = queue.remove(key).map_err(|e| self.err(e))? {
                            let entry: QueueEntry =
                                self.decode(&format!("queue entry {key:?}"), old.value())?;
                            *delta.entry(entry.message_id).or_insert(0) -= 1;
                        }
                    }
                    QueueOp::IncomingAdd {
                        client_id,
                        packet_id,
                    } => {
                        incoming
                            .insert((client_id.as_str(), *packet_id), ())
                            .map_err(|e| self.err(e))?;
                    }
                    QueueOp::IncomingRemove {
                        client_id,
                        packet_id,
                    } => {
                        incoming
                            .remove((client_id.as_str(), *packet_id))
                            .map_err(|e| self.err(e))?;
                    }
                    QueueOp::Purge { client_id } => {
                        let c = client_id.as_str();
                        let removed = queue
                            .extract_from_if((c, 0)..=(c, u64::MAX), |_, _| true)
                            .map_err(|e| self.err(e))?;
                        for row in removed {
                            let (key, value) = row.map_err(|e| self.err(e))?;
                            let entry: QueueEntry = self
                                .decode(&format!("queue entry {:?}", key.value()), value.value())?;
                            *delta.entry(entry.message_id).or_insert(0) -= 1;
                        }
                        let removed = incoming
                            .extract_from_if((c, 0)..=(c, u16::MAX), |_, _| true)
                            .map_err(|e| self.err(e))?;
                        for row in removed {
                            row.map_err(|e| self.err(e))?;
                        }
                    }
                }
            }
            // Messages no entry refers to any more.
            let refs = self.refs.lock();
            for (id, d) in &delta {
                let count = i64::from(refs.get(id).copied().unwrap_or(0)) + d;
                if count <= 0 {
                    messages.remove(*id).map_err(|e| self.err(e))?;
                }
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        let mut refs = self.refs.lock();
        for (id, d) in delta {
            let count = i64::from(refs.get(&id).copied().unwrap_or(0)) + d;
            if count <= 0 {
                refs.remove(&id);
            } else {
                refs.insert(id, u32::try_from(count).unwrap_or(u32::MAX));
            }
        }
        Ok(())
    }

    fn load_queue(&self, client_id: &str, now_ms: u64) -> StoreResult<(Vec<QueueEntry>, Vec<u16>)> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let queue = tx.open_table(QUEUE).map_err(|e| self.err(e))?;
        let messages = tx.open_table(MESSAGES).map_err(|e| self.err(e))?;
        let incoming = tx.open_table(INCOMING).map_err(|e| self.err(e))?;
        let mut entries = Vec::new();
        for row in queue
            .range((client_id, 0)..=(client_id, u64::MAX))
            .map_err(|e| self.err(e))?
        {
            let (key, value) = row.map_err(|e| self.err(e))?;
            let what = format!("queue entry {:?}", key.value());
            let mut entry: QueueEntry = self.decode(&what, value.value())?;
            let Some(m) = messages.get(entry.message_id).map_err(|e| self.err(e))? else {
                return Err(StoreError::Corrupt {
                    store: NAME,
                    path: self.path.clone(),
                    message: format!("{what} refers to missing message {}", entry.message_id),
                });
            };
            let message: StoredMessage =
                self.decode(&format!("message {}", entry.message_id), m.value())?;
            // An expired message is never delivered; one already in flight is resent anyway
            // only if the client still holds its packet id (it does not, for an expired one).
            if message.is_expired(now_ms) && entry.packet_id.is_none() {
                continue;
            }
            entry.message = Some(message);
            entries.push(entry);
        }
        let mut ids = Vec::new();
        for row in incoming
            .range((client_id, 0)..=(client_id, u16::MAX))
            .map_err(|e| self.err(e))?
        {
            let (key, _) = row.map_err(|e| self.err(e))?;
            ids.push(key.value().1);
        }
        Ok((entries, ids))
    }

    fn queue_clients(&self) -> StoreResult<Vec<String>> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let mut out: Vec<String> = Vec::new();
        let queue = tx.open_table(QUEUE).map_err(|e| self.err(e))?;
        for row in queue.iter().map_err(|e| self.err(e))? {
            let (key, _) = row.map_err(|e| self.err(e))?;
            let c = key.value().0;
            if out.last().map(String::as_str) != Some(c) {
                out.push(c.to_owned());
            }
        }
        let incoming = tx.open_table(INCOMING).map_err(|e| self.err(e))?;
        for row in incoming.iter().map_err(|e| self.err(e))? {
            let (key, _) = row.map_err(|e| self.err(e))?;
            out.push(key.value().0.to_owned());
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl SessionStore for EmbeddedStore {
    fn apply<'a>(&'a self, ops: &'a [SessionOp]) -> StoreFuture<'a, ()> {
        let ops = ops.to_vec();
        Box::pin(self.blocking(move |s| s.apply_sessions(&ops)))
    }
    fn load(&self) -> StoreFuture<'_, Vec<SessionRecord>> {
        Box::pin(self.blocking(|s| s.load_sessions()))
    }
    fn get<'a>(&'a self, client_id: &'a str) -> StoreFuture<'a, Option<SessionRecord>> {
        let client_id = client_id.to_owned();
        Box::pin(self.blocking(move |s| s.get_session(&client_id)))
    }
    fn name(&self) -> &'static str {
        NAME
    }
}

impl RetainedStore for EmbeddedStore {
    fn apply<'a>(&'a self, ops: &'a [RetainedOp]) -> StoreFuture<'a, ()> {
        let ops = ops.to_vec();
        Box::pin(self.blocking(move |s| s.apply_retained(&ops)))
    }
    fn load(&self) -> StoreFuture<'_, Vec<StoredMessage>> {
        Box::pin(self.blocking(|s| s.load_retained(now_ms())))
    }
    fn name(&self) -> &'static str {
        NAME
    }
}

impl QueueStore for EmbeddedStore {
    fn apply<'a>(&'a self, ops: &'a [QueueOp]) -> StoreFuture<'a, ()> {
        let ops = ops.to_vec();
        Box::pin(self.blocking(move |s| s.apply_queue(&ops)))
    }
    fn load<'a>(&'a self, client_id: &'a str) -> StoreFuture<'a, (Vec<QueueEntry>, Vec<u16>)> {
        let client_id = client_id.to_owned();
        Box::pin(self.blocking(move |s| s.load_queue(&client_id, now_ms())))
    }
    fn clients(&self) -> StoreFuture<'_, Vec<String>> {
        Box::pin(self.blocking(|s| s.queue_clients()))
    }
    fn name(&self) -> &'static str {
        NAME
    }
}
