//! Durable state: what the broker writes to its stores, and reading it back at start.
//!
//! Which writes happen (only for persistent sessions, those with a session expiry above 0):
//! - a QoS 1/2 delivery to such a session: the message (once) and a queue entry, before the
//!   delivery enters the session's queue; the entry is deleted when the subscriber acknowledges
//!   it (or it expires or is dropped);
//! - the packet id a delivery was sent with, and PUBREC for QoS 2;
//! - the packet ids of QoS 2 messages received and not yet released;
//! - the session itself (subscriptions, expiry, will, owner) at CONNECT, SUBSCRIBE,
//!   UNSUBSCRIBE and disconnect; deleted when it ends;
//! - retained messages, for everyone.
//!
//! In `sync` durability the acknowledgement each write is for (PUBACK, PUBREC, PUBCOMP,
//! PUBREL, SUBACK, UNSUBACK) waits for its commit; see `connection::durable`.

pub mod convert;
pub mod ids;
pub mod restore;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use ahash::AHashMap;
use bytestring::ByteString;
use rookery_codec::LastWill;
use rookery_store::committer::{Committer, CommitterConfig, Durability, Op, Stores, Ticket};
use rookery_store::embedded::EmbeddedStore;
use rookery_store::now_ms;
use rookery_store::{QueueOp, QueueStore, RetainedStore, SessionOp, SessionRecord, SessionStore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::config::{Config, DurabilityMode};
use crate::router::trie::Subscription;

/// The broker's handle on its stores.
pub struct Persist {
    committer: Arc<Committer>,
    ids: ids::IdGen,
    node_id: String,
    stop: CancellationToken,
    writer: parking_lot::Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Persist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Persist")
            .field("committer", &self.committer)
            .finish()
    }
}

fn store_error(e: rookery_store::StoreError) -> io::Error {
    io::Error::other(e.to_string())
}

impl Persist {
    /// Opens the stores the configuration names (the embedded one for whatever Redis and
    /// PostgreSQL do not hold) and starts the committer. `None` with `durability = "none"`.
    pub async fn open(config: &Config) -> io::Result<Option<Arc<Persist>>> {
        let durability = match config.durability {
            DurabilityMode::None => return Ok(None),
            DurabilityMode::Sync => Durability::Sync,
            DurabilityMode::Async => Durability::Async,
        };
        let (redis_url, postgres_url) = config
            .store_urls()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let mut embedded: Option<EmbeddedStore> = None;
        let mut open_embedded = || -> io::Result<EmbeddedStore> {
            if let Some(e) = &embedded {
                return Ok(e.clone());
            }
            let e = EmbeddedStore::open(&config.data_dir).map_err(store_error)?;
            embedded = Some(e.clone());
            Ok(e)
        };
        let sessions: Arc<dyn SessionStore> = match &redis_url {
            Some(url) => redis_sessions(url, &config.cluster_name).await?,
            None => Arc::new(open_embedded()?),
        };
        let (retained, queue): (Arc<dyn RetainedStore>, Arc<dyn QueueStore>) = match &postgres_url {
            Some(url) => postgres_stores(url).await?,
            None => {
                let e = open_embedded()?;
                (Arc::new(e.clone()), Arc::new(e))
            }
        };
        let stores = Stores {
            sessions,
            retained,
            queue,
        };
        debug!(sessions = stores.sessions.name(), retained = stores.retained.name(),
            queues = stores.queue.name(), durability = ?config.durability,
            data_dir = %config.data_dir.display(), "stores open");
        let committer = Committer::new(
            stores,
            CommitterConfig {
                durability,
                flush_interval: Duration::from_millis(config.flush_interval_ms.max(1)),
                max_pending: config.store_max_pending,
            },
        );
        let stop = CancellationToken::new();
        let writer = tokio::spawn(committer.clone().run(stop.clone().cancelled_owned()));
        // Ids ascend across restarts.
        let seed = ids::seed(now_ms());
        Ok(Some(Arc::new(Persist {
            committer,
            ids: ids::IdGen::new(&config.node_id, seed),
            node_id: config.node_id.clone(),
            stop,
            writer: parking_lot::Mutex::new(Some(writer)),
        })))
    }

    /// One line for the start-up log: durability and where each kind of state lives.
    pub fn describe(&self) -> String {
        let s = self.committer.stores();
        format!(
            "durability {} (sessions: {}, retained: {}, queues: {})",
            if self.is_sync() { "sync" } else { "async" },
            s.sessions.name(),
            s.retained.name(),
            s.queue.name()
        )
    }

    /// The committer.
    pub fn committer(&self) -> &Arc<Committer> {
        &self.committer
    }

    /// True in `sync` durability.
    pub fn is_sync(&self) -> bool {
        self.committer.is_sync()
    }

    /// True when sessions are in a store every node shares (Redis), not on this node's disk.
    pub fn sessions_shared(&self) -> bool {
        self.committer.stores().sessions.name() != rookery_store::embedded::NAME
    }

    /// True when retained messages are in a store every node shares (PostgreSQL).
    pub fn retained_shared(&self) -> bool {
        self.committer.stores().retained.name() != rookery_store::embedded::NAME
    }

    /// True when queued messages are in a store every node shares (PostgreSQL).
    pub fn queues_shared(&self) -> bool {
        self.committer.stores().queue.name() != rookery_store::embedded::NAME
    }

    /// A fresh id for a message or a queue entry (ascending).
    pub fn next_id(&self) -> u64 {
        self.ids.next()
    }

    /// Makes later ids exceed `id` (one read back from a store).
    pub fn saw_id(&self, id: u64) {
        self.ids.saw(id);
    }

    /// Queues writes for the next commit.
    pub fn submit(&self, ops: impl IntoIterator<Item = Op>) -> Ticket {
        self.committer.submit(ops)
    }

    /// Queues one queue-store write.
    pub fn queue_op(&self, op: QueueOp) -> Ticket {
        self.committer.submit([Op::Queue(op)])
    }

    /// False while the stores cannot take new messages.
    pub fn accepts_messages(&self) -> bool {
        self.committer.accepts_messages()
    }

    /// A session's record.
    #[allow(clippy::too_many_arguments)]
    pub fn session_record(
        &self,
        client_id: &str,
        expiry_secs: u32,
        disconnected_at_ms: Option<u64>,
        username: Option<&ByteString>,
        by_password: bool,
        subscriptions: &AHashMap<ByteString, Subscription>,
        will: Option<&LastWill>,
        epoch: u64,
    ) -> SessionRecord {
        SessionRecord {
            client_id: client_id.to_owned(),
            expiry_secs,
            disconnected_at_ms,
            username: username.map(|u| u.to_string()),
            by_password,
            subscriptions: convert::subscription_records(subscriptions),
            will: will.map(convert::will_record),
            owner_node: self.node_id.clone(),
            epoch,
        }
    }

    /// Writes (or replaces) a session.
    pub fn put_session(&self, record: SessionRecord) -> Ticket {
        self.committer.submit([Op::Session(SessionOp::Put(record))])
    }

    /// Deletes a session and everything queued for it; `owner` is the claim this node holds
    /// it under (a shared store refuses the delete when a newer claim owns it).
    pub fn delete_session(&self, client_id: &str, owner: Option<(u64, String)>) -> Ticket {
        self.committer.submit([
            Op::Session(SessionOp::Delete {
                client_id: client_id.to_owned(),
                owner,
            }),
            Op::Queue(QueueOp::Purge {
                client_id: client_id.to_owned(),
            }),
        ])
    }

    /// Commits what is pending and stops the writer (after the connections have finished).
    pub async fn close(&self) {
        self.committer.flush().await;
        self.stop.cancel();
        let writer = self.writer.lock().take();
        if let Some(w) = writer {
            let _ = w.await;
        }
    }
}

async fn redis_sessions(url: &str, cluster: &str) -> io::Result<Arc<dyn SessionStore>> {
    let store = rookery_store::redis::RedisSessionStore::connect(url, cluster)
        .await
        .map_err(store_error)?;
    Ok(Arc::new(store))
}

async fn postgres_stores(url: &str) -> io::Result<(Arc<dyn RetainedStore>, Arc<dyn QueueStore>)> {
    let store = Arc::new(
        rookery_store::postgres::PostgresStore::connect(url)
            .await
            .map_err(store_error)?,
    );
    // Expired messages leave the tables even when nobody reads them.
    store.spawn_sweeper(Duration::from_secs(60));
    Ok((store.clone(), store))
}
