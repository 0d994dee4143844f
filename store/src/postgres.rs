//! Retained messages and QoS 1/2 queues in PostgreSQL ([`PostgresStore`]).
//!
//! # Schema
//!
//! `store/migrations/`, embedded in the binary and applied by [`PostgresStore::connect`] with
//! sqlx's migrator, which holds a PostgreSQL advisory lock (`pg_advisory_lock`, keyed by the
//! database name) while it checks and applies them: nodes that start together migrate once,
//! the others wait and then find nothing to do. Migrations a newer node applied and this one
//! does not know are ignored, so that a rolling upgrade does not stop old nodes from starting.
//!
//! - `messages(id, topic, payload, qos, retain, properties, expires_at)`: bodies, stored once.
//! - `queue(client_id, id, message_id, qos, retain, subscription_ids, packet_id, released)`,
//!   primary key `(client_id, id)`, indexed by `message_id`.
//! - `incoming(client_id, packet_id)`: received QoS 2 packet ids.
//! - `retained(topic, payload, qos, retain, properties, expires_at)`.
//!
//! # Group commit
//!
//! [`apply`](QueueStore::apply) runs a batch in one transaction with at most one statement per
//! kind of operation, whatever the number of messages: the batch is first reduced in memory to
//! its net effect per row (an entry enqueued and acknowledged in the same batch is never
//! written; a purge drops what the batch did to the session before it), and each kind of change
//! then goes to the server as arrays bound to one `UNNEST` statement. After acknowledgements and
//! purges it deletes the bodies that no entry refers to any more, looking only at the bodies
//! of the entries it deleted.
//!
//! A body is expected to be enqueued in the batch that stores it (or while another entry still
//! refers to it): a body that loses its last entry is deleted at once.
//!
//! Expired messages: [`load`](QueueStore::load) skips them, and
//! [`sweep_expired`](PostgresStore::sweep_expired) (or [`spawn_sweeper`](PostgresStore::spawn_sweeper))
//! deletes them, their queue entries and expired retained messages.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::now_ms;

use bytes::Bytes;
use sqlx::Row;
use sqlx::migrate::MigrateError;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};

use crate::{
    ForwardMark, QueueEntry, QueueOp, QueueStore, RetainedOp, RetainedStore, StoreError,
    StoreFuture, StoreResult, StoredMessage,
};

const STORE: &str = "postgres";

/// Connection settings of a [`PostgresStore`].
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Most connections the pool opens.
    pub pool_size: u32,
    /// How long an operation waits for a connection (including connecting to a server that
    /// refuses connections) before it fails with [`StoreError::Unavailable`].
    pub acquire_timeout: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            pool_size: 8,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// What [`PostgresStore::sweep_expired`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Expired message bodies.
    pub messages: u64,
    /// Queue entries of those messages.
    pub queue_entries: u64,
    /// Expired retained messages.
    pub retained: u64,
}

/// Retained messages and QoS 1/2 queues in PostgreSQL. See the [module documentation](self).
///
/// A connection pool: clone-free sharing through `Arc`, and connections that broke (a server
/// restart) are replaced on the next use.
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user[:password]@host[:port]/database[?...]`) with
    /// [`PostgresOptions::default`] and applies the migrations.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        Self::connect_with(url, PostgresOptions::default()).await
    }

    /// Connects to `url` with `options` and applies the migrations. Fails with
    /// [`StoreError::Unavailable`] if the server cannot be reached.
    pub async fn connect_with(url: &str, options: PostgresOptions) -> StoreResult<Self> {
        let connect: PgConnectOptions = url.parse().map_err(|e| StoreError::Other {
            store: STORE,
            message: format!("invalid PostgreSQL URL: {e}"),
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(options.pool_size.max(1))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(map_error)?;
        let mut migrator = sqlx::migrate!("./migrations");
        migrator.set_ignore_missing(true);
        migrator.run(&pool).await.map_err(map_migrate_error)?;
        Ok(PostgresStore { pool })
    }

    /// Deletes expired messages with their queue entries, and expired retained messages, in
    /// one transaction.
    pub async fn sweep_expired(&self) -> StoreResult<Swept> {
        let now = to_bigint(now_ms())?;
        let mut tx = self.pool.begin().await.map_err(map_error)?;
        let row = sqlx::query(
            "WITH expired AS (
                 SELECT id FROM messages
                 WHERE expires_at <= timestamptz 'epoch' + $1::bigint * interval '1 millisecond'
             ),
             entries AS (
                 DELETE FROM queue WHERE message_id IN (SELECT id FROM expired) RETURNING 1
             ),
             bodies AS (
                 DELETE FROM messages WHERE id IN (SELECT id FROM expired) RETURNING 1
             )
             SELECT (SELECT count(*) FROM bodies), (SELECT count(*) FROM entries)",
        )
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(map_error)?;
        let retained = sqlx::query(
            "DELETE FROM retained
             WHERE expires_at <= timestamptz 'epoch' + $1::bigint * interval '1 millisecond'",
        )
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(map_error)?
        .rows_affected();
        tx.commit().await.map_err(map_error)?;
        let count = |i: usize| -> StoreResult<u64> {
            let n: i64 = row.try_get(i).map_err(map_error)?;
            Ok(u64::try_from(n).unwrap_or(0))
        };
        Ok(Swept {
            messages: count(0)?,
            queue_entries: count(1)?,
            retained,
        })
    }

    /// Runs [`sweep_expired`](Self::sweep_expired) every `every` until the returned task is
    /// aborted (failures are logged and retried at the next tick).
    pub fn spawn_sweeper(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let store = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                match store.sweep_expired().await {
                    Ok(swept) if swept != Swept::default() => {
                        tracing::debug!(?swept, "postgres: swept expired messages");
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "postgres: sweeping expired messages"),
                }
            }
        })
    }

    /// Closes the pool's connections (operations afterwards fail).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn apply_queue(&self, ops: &[QueueOp]) -> StoreResult<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let batch = QueueBatch::reduce(ops)?;
        let mut tx = self.pool.begin().await.map_err(map_error)?;
        let mut freed: Vec<i64> = Vec::new();

        if !batch.messages.is_empty() {
            let mut ids = Vec::with_capacity(batch.messages.len());
            let mut topics = Vec::with_capacity(batch.messages.len());
            let mut payloads = Vec::with_capacity(batch.messages.len());
            let mut qos = Vec::with_capacity(batch.messages.len());
            let mut retain = Vec::with_capacity(batch.messages.len());
            let mut properties = Vec::with_capacity(batch.messages.len());
            let mut expires = Vec::with_capacity(batch.messages.len());
            for (&id, message) in &batch.messages {
                ids.push(id);
                topics.push(message.topic.as_str());
                payloads.push(message.payload.as_ref());
                qos.push(i16::from(message.qos));
                retain.push(message.retain);
                properties.push(message.properties.as_ref());
                expires.push(message.expires_at_ms.map(to_bigint).transpose()?);
            }
            sqlx::query(
                "INSERT INTO messages (id, topic, payload, qos, retain, properties, expires_at)
                 SELECT id, topic, payload, qos, retain, properties,
                        timestamptz 'epoch' + expires * interval '1 millisecond'
                 FROM UNNEST($1::bigint[], $2::text[], $3::bytea[], $4::smallint[],
                             $5::boolean[], $6::bytea[], $7::bigint[])
                      AS m(id, topic, payload, qos, retain, properties, expires)
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(ids)
            .bind(topics)
            .bind(payloads)
            .bind(qos)
            .bind(retain)
            .bind(properties)
            .bind(expires)
            .execute(&mut *tx)
            .await
            .map_err(map_error)?;
        }

        if !batch.purged.is_empty() {
            let clients: Vec<&str> = batch.purged.iter().copied().collect();
            let rows = sqlx::query(
                "DELETE FROM queue WHERE client_id = ANY($1::text[]) RETURNING message_id",
            )
            .bind(&clients)
            .fetch_all(&mut *tx)
            .await
            .map_err(map_error)?;
            for row in rows {
                freed.push(row.try_get(0).map_err(map_error)?);
            }
            sqlx::query("DELETE FROM incoming WHERE client_id = ANY($1::text[])")
                .bind(&clients)
                .execute(&mut *tx)
                .await
                .map_err(map_error)?;
        }

        let mut delete_clients = Vec::new();
        let mut delete_ids = Vec::new();
        let mut insert = EntryColumns::default();
        let mut update_clients = Vec::new();
        let mut update_ids = Vec::new();
        let mut update_packet_ids = Vec::new();
        let mut update_released = Vec::new();
        for (&(client_id, id), state) in &batch.entries {
            let id = to_bigint(id)?;
            match state {
                EntryState::Deleted => {
                    delete_clients.push(client_id);
                    delete_ids.push(id);
                }
                EntryState::Present {
                    entry,
                    packet_id,
                    released,
                } => insert.push(client_id, id, entry, *packet_id, *released)?,
                EntryState::Updated {
                    packet_id,
                    released,
                } => {
                    update_clients.push(client_id);
                    update_ids.push(id);
                    update_packet_ids.push(i32::from(*packet_id));
                    update_released.push(*released);
                }
            }
        }

        if !delete_ids.is_empty() {
            let rows = sqlx::query(
                "DELETE FROM queue q
                 USING UNNEST($1::text[], $2::bigint[]) AS d(client_id, id)
                 WHERE q.client_id = d.client_id AND q.id = d.id
                 RETURNING q.message_id",
            )
            .bind(delete_clients)
            .bind(delete_ids)
            .fetch_all(&mut *tx)
            .await
            .map_err(map_error)?;
            for row in rows {
                freed.push(row.try_get(0).map_err(map_error)?);
            }
        }

        if !insert.ids.is_empty() {
            sqlx::query(
                "INSERT INTO queue (client_id, id, message_id, qos, retain, subscription_ids,
                                    packet_id, released)
                 SELECT client_id, id, message_id, qos, retain, subscription_ids::integer[],
                        packet_id, released
                 FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::smallint[],
                             $5::boolean[], $6::text[], $7::integer[], $8::boolean[])
                      AS e(client_id, id, message_id, qos, retain, subscription_ids,
                           packet_id, released)
                 ON CONFLICT (client_id, id) DO UPDATE SET
                     message_id = EXCLUDED.message_id, qos = EXCLUDED.qos,
                     retain = EXCLUDED.retain, subscription_ids = EXCLUDED.subscription_ids,
                     packet_id = EXCLUDED.packet_id, released = EXCLUDED.released",
            )
            .bind(insert.clients)
            .bind(insert.ids)
            .bind(insert.message_ids)
            .bind(insert.qos)
            .bind(insert.retain)
            .bind(insert.subscription_ids)
            .bind(insert.packet_ids)
            .bind(insert.released)
            .execute(&mut *tx)
            .await
            .map_err(map_error)?;
        }

        if !update_ids.is_empty() {
            sqlx::query(
                "UPDATE queue q SET packet_id = u.packet_id, released = u.released
                 FROM UNNEST($1::text[], $2::bigint[], $3::integer[], $4::boolean[])
                      AS u(client_id, id, packet_id, released)
                 WHERE q.client_id = u.client_id AND q.id = u.id",
            )
            .bind(update_clients)
            .bind(update_ids)
            .bind(update_packet_ids)
            .bind(update_released)
            .execute(&mut *tx)
            .await
            .map_err(map_error)?;
        }

        let (mut add_clients, mut add_ids, mut remove_clients, mut remove_ids) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (&(client_id, packet_id), &present) in &batch.incoming {
            if present {
                add_clients.push(client_id);
                add_ids.push(i32::from(packet_id));
            } else {
                remove_clients.push(client_id);
                remove_ids.push(i32::from(packet_id));
            }
        }
        if !remove_ids.is_empty() {
            sqlx::query(
                "DELETE FROM incoming i
                 USING UNNEST($1::text[], $2::integer[]) AS d(client_id, packet_id)
                 WHERE i.client_id = d.client_id AND i.packet_id = d.packet_id",
            )
            .bind(remove_clients)
            .bind(remove_ids)
            .execute(&mut *tx)
            .await
            .map_err(map_error)?;
        }
        if !add_ids.is_empty() {
            sqlx::query(
                "INSERT INTO incoming (client_id, packet_id)
                 SELECT * FROM UNNEST($1::text[], $2::integer[])
                 ON CONFLICT DO NOTHING",
            )
            .bind(add_clients)
            .bind(add_ids)
            .execute(&mut *tx)
            .await
            .map_err(map_error)?;
        }

        if !batch.marks.is_empty() {
            let (mut receivers, mut senders, mut receiver_epochs, mut sender_epochs, mut upto) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for mark in batch.marks.values() {
                receivers.push(mark.receiver.as_str());
                senders.push(mark.sender.as_str());
                receiver_epochs.push(bits(mark.receiver_epoch));
                sender_epochs.push(bits(mark.sender_epoch));
                upto.push(bits(mark.upto));
            }
            sqlx::query(
                "INSERT INTO forward_marks (receiver, sender, receiver_epoch, sender_epoch, upto)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[],
                                      $5::bigint[])
                 ON CONFLICT (receiver, sender) DO UPDATE SET
                     receiver_epoch = EXCLUDED.receiver_epoch,
                     sender_epoch = EXCLUDED.sender_epoch, upto = EXCLUDED.upto",
            )
            .bind(receivers)
            .bind(senders)
            .bind(receiver_epochs)
            .bind(sender_epochs)
            .bind(upto)
            .execute(&mut *tx)
            .await
            .map_err(map_error)?;
        }

        freed.extend(batch.dropped_message_ids.iter().copied());
        if !freed.is_empty() {
            freed.sort_unstable();
            freed.dedup();
            sqlx::query(
                "DELETE FROM messages m
                 WHERE m.id = ANY($1::bigint[])
                   AND NOT EXISTS (SELECT 1 FROM queue q WHERE q.message_id = m.id)",
            )
            .bind(freed)
            .execute(&mut *tx)
            .await
            .map_err(map_error)?;
        }

        tx.commit().await.map_err(map_error)
    }

    async fn load_queue(&self, client_id: &str) -> StoreResult<(Vec<QueueEntry>, Vec<u16>)> {
        let now = to_bigint(now_ms())?;
        let rows = sqlx::query(
            "SELECT q.id, q.message_id, q.qos, q.retain, q.subscription_ids, q.packet_id,
                    q.released, m.topic, m.payload, m.qos, m.retain, m.properties,
                    (extract(epoch FROM m.expires_at) * 1000)::bigint
             FROM queue q JOIN messages m ON m.id = q.message_id
             WHERE q.client_id = $1
               AND (m.expires_at IS NULL
                    OR m.expires_at > timestamptz 'epoch' + $2::bigint * interval '1 millisecond')
             ORDER BY q.id",
        )
        .bind(client_id)
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(map_error)?;
        let mut entries = Vec::with_capacity(rows.len());
        for row in &rows {
            entries.push(entry_from_row(row)?);
        }
        let incoming: Vec<i32> = sqlx::query_scalar(
            "SELECT packet_id FROM incoming WHERE client_id = $1 ORDER BY packet_id",
        )
        .bind(client_id)
        .fetch_all(&self.pool)
        .await
        .map_err(map_error)?;
        let incoming = incoming
            .into_iter()
            .map(|p| u16::try_from(p).map_err(|_| corrupt("incoming", format!("packet id {p}"))))
            .collect::<StoreResult<_>>()?;
        Ok((entries, incoming))
    }

    async fn load_forward_marks(&self, receiver: &str) -> StoreResult<Vec<ForwardMark>> {
        let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
            "SELECT sender, receiver_epoch, sender_epoch, upto FROM forward_marks
             WHERE receiver = $1 ORDER BY sender",
        )
        .bind(receiver)
        .fetch_all(&self.pool)
        .await
        .map_err(map_error)?;
        Ok(rows
            .into_iter()
            .map(|(sender, receiver_epoch, sender_epoch, upto)| ForwardMark {
                receiver: receiver.to_owned(),
                receiver_epoch: unbits(receiver_epoch),
                sender,
                sender_epoch: unbits(sender_epoch),
                upto: unbits(upto),
            })
            .collect())
    }

    async fn load_forward_mark(
        &self,
        receiver: &str,
        sender: &str,
    ) -> StoreResult<Option<ForwardMark>> {
        let row: Option<(i64, i64, i64)> = sqlx::query_as(
            "SELECT receiver_epoch, sender_epoch, upto FROM forward_marks
             WHERE receiver = $1 AND sender = $2",
        )
        .bind(receiver)
        .bind(sender)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_error)?;
        Ok(row.map(|(receiver_epoch, sender_epoch, upto)| ForwardMark {
            receiver: receiver.to_owned(),
            receiver_epoch: unbits(receiver_epoch),
            sender: sender.to_owned(),
            sender_epoch: unbits(sender_epoch),
            upto: unbits(upto),
        }))
    }

    async fn queue_clients(&self) -> StoreResult<Vec<String>> {
        sqlx::query_scalar(
            "SELECT client_id FROM queue UNION SELECT client_id FROM incoming ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(map_error)
    }

    async fn apply_retained(&self, ops: &[RetainedOp]) -> StoreResult<()> {
        if ops.is_empty() {
            return Ok(());
        }
        // Net effect per topic: the last operation wins.
        let mut net: BTreeMap<&str, Option<&StoredMessage>> = BTreeMap::new();
        for op in ops {
            match op {
                RetainedOp::Put(message) => net.insert(&message.topic, Some(message)),
                RetainedOp::Delete { topic } => net.insert(topic, None),
            };
        }
        let mut deleted = Vec::new();
        let (mut topics, mut payloads, mut qos, mut retain, mut properties, mut expires) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        for (topic, message) in net {
            match message {
                None => deleted.push(topic),
                Some(message) => {
                    topics.push(topic);
                    payloads.push(message.payload.as_ref());
                    qos.push(i16::from(message.qos));
                    retain.push(message.retain);
                    properties.push(message.properties.as_ref());
                    expires.push(message.expires_at_ms.map(to_bigint).transpose()?);
                }
            }
        }
        let mut tx = self.pool.begin().await.map_err(map_error)?;
        if !deleted.is_empty() {
            sqlx::query("DELETE FROM retained WHERE topic = ANY($1::text[])")
                .bind(deleted)
                .execute(&mut *tx)
                .await
                .map_err(map_error)?;
        }
        if !topics.is_empty() {
            sqlx::query(
                "INSERT INTO retained (topic, payload, qos, retain, properties, expires_at)
                 SELECT topic, payload, qos, retain, properties,
                        timestamptz 'epoch' + expires * interval '1 millisecond'
                 FROM UNNEST($1::text[], $2::bytea[], $3::smallint[], $4::boolean[],
                             $5::bytea[], $6::bigint[])
                      AS r(topic, payload, qos, retain, properties, expires)
                 ON CONFLICT (topic) DO UPDATE SET
                     payload = EXCLUDED.payload, qos = EXCLUDED.qos, retain = EXCLUDED.retain,
                     properties = EXCLUDED.properties, expires_at = EXCLUDED.expires_at",
            )
            .bind(topics)
            .bind(payloads)
            .bind(qos)
            .bind(retain)
            .bind(properties)
            .bind(expires)
            .execute(&mut *tx)
            .await
            .map_err(map_error)?;
        }
        tx.commit().await.map_err(map_error)
    }

    async fn load_retained(&self) -> StoreResult<Vec<StoredMessage>> {
        let now = to_bigint(now_ms())?;
        let rows = sqlx::query(
            "SELECT topic, payload, qos, retain, properties,
                    (extract(epoch FROM expires_at) * 1000)::bigint
             FROM retained
             WHERE expires_at IS NULL
                OR expires_at > timestamptz 'epoch' + $1::bigint * interval '1 millisecond'
             ORDER BY topic",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(map_error)?;
        rows.iter().map(|row| message_from_row(row, 0)).collect()
    }
}

impl QueueStore for PostgresStore {
    fn apply<'a>(&'a self, ops: &'a [QueueOp]) -> StoreFuture<'a, ()> {
        Box::pin(self.apply_queue(ops))
    }

    fn load<'a>(&'a self, client_id: &'a str) -> StoreFuture<'a, (Vec<QueueEntry>, Vec<u16>)> {
        Box::pin(self.load_queue(client_id))
    }

    fn clients(&self) -> StoreFuture<'_, Vec<String>> {
        Box::pin(self.queue_clients())
    }

    fn forward_mark<'a>(
        &'a self,
        receiver: &'a str,
        sender: &'a str,
    ) -> StoreFuture<'a, Option<ForwardMark>> {
        Box::pin(self.load_forward_mark(receiver, sender))
    }

    fn forward_marks<'a>(&'a self, receiver: &'a str) -> StoreFuture<'a, Vec<ForwardMark>> {
        Box::pin(self.load_forward_marks(receiver))
    }

    fn name(&self) -> &'static str {
        STORE
    }
}

impl RetainedStore for PostgresStore {
    fn apply<'a>(&'a self, ops: &'a [RetainedOp]) -> StoreFuture<'a, ()> {
        Box::pin(self.apply_retained(ops))
    }

    fn load(&self) -> StoreFuture<'_, Vec<StoredMessage>> {
        Box::pin(self.load_retained())
    }

    fn name(&self) -> &'static str {
        STORE
    }
}

/// What a batch does to one queue row, after reduction.
#[derive(Debug)]
enum EntryState<'a> {
    /// Written (inserted, or replaced) with these in-flight fields.
    Present {
        entry: &'a QueueEntry,
        packet_id: Option<u16>,
        released: bool,
    },
    /// Deleted.
    Deleted,
    /// A row the batch did not write: its in-flight fields change.
    Updated { packet_id: u16, released: bool },
}

/// A queue batch reduced to its net effect. Applied in this order: messages, purges, entry
/// deletions, entry writes, entry updates, incoming removals and additions, freed bodies. A
/// purge clears what the batch did to the session before it, so doing purges first is the
/// same as doing them in place.
#[derive(Debug, Default)]
struct QueueBatch<'a> {
    messages: BTreeMap<i64, &'a StoredMessage>,
    purged: BTreeSet<&'a str>,
    entries: BTreeMap<(&'a str, u64), EntryState<'a>>,
    /// true: add, false: remove.
    incoming: BTreeMap<(&'a str, u16), bool>,
    /// Bodies of entries the batch enqueued and then dropped (never written).
    dropped_message_ids: Vec<i64>,
    /// The last forward mark of each (receiver, sender).
    marks: BTreeMap<(&'a str, &'a str), &'a ForwardMark>,
}

impl<'a> QueueBatch<'a> {
    fn reduce(ops: &'a [QueueOp]) -> StoreResult<QueueBatch<'a>> {
        let mut batch = QueueBatch::default();
        for op in ops {
            match op {
                QueueOp::Message { id, message } => {
                    batch.messages.entry(to_bigint(*id)?).or_insert(message);
                }
                QueueOp::Enqueue { client_id, entry } => {
                    let state = EntryState::Present {
                        entry,
                        packet_id: entry.packet_id,
                        released: entry.released,
                    };
                    if let Some(old) = batch.entries.insert((client_id, entry.id), state) {
                        batch.drop_state(old)?;
                    }
                }
                QueueOp::Inflight {
                    client_id,
                    id,
                    packet_id,
                    released,
                } => {
                    let state =
                        batch
                            .entries
                            .entry((client_id, *id))
                            .or_insert(EntryState::Updated {
                                packet_id: *packet_id,
                                released: *released,
                            });
                    match state {
                        EntryState::Present {
                            packet_id: p,
                            released: r,
                            ..
                        } => {
                            *p = Some(*packet_id);
                            *r = *released;
                        }
                        EntryState::Updated {
                            packet_id: p,
                            released: r,
                        } => {
                            *p = *packet_id;
                            *r = *released;
                        }
                        EntryState::Deleted => {}
                    }
                }
                QueueOp::Ack { client_id, id } => {
                    if let Some(old) = batch.entries.insert((client_id, *id), EntryState::Deleted) {
                        batch.drop_state(old)?;
                    }
                }
                QueueOp::IncomingAdd {
                    client_id,
                    packet_id,
                } => {
                    batch.incoming.insert((client_id, *packet_id), true);
                }
                QueueOp::IncomingRemove {
                    client_id,
                    packet_id,
                } => {
                    batch.incoming.insert((client_id, *packet_id), false);
                }
                QueueOp::Purge { client_id } => {
                    let client: &str = client_id;
                    let keys: Vec<(&str, u64)> = batch
                        .entries
                        .range((client, 0)..=(client, u64::MAX))
                        .map(|(key, _)| *key)
                        .collect();
                    for key in keys {
                        if let Some(old) = batch.entries.remove(&key) {
                            batch.drop_state(old)?;
                        }
                    }
                    batch
                        .incoming
                        .retain(|(incoming_client, _), _| *incoming_client != client);
                    batch.purged.insert(client);
                }
                QueueOp::ForwardMark(mark) => {
                    batch
                        .marks
                        .insert((mark.receiver.as_str(), mark.sender.as_str()), mark);
                }
            }
        }
        Ok(batch)
    }

    fn drop_state(&mut self, old: EntryState<'a>) -> StoreResult<()> {
        if let EntryState::Present { entry, .. } = old {
            self.dropped_message_ids.push(to_bigint(entry.message_id)?);
        }
        Ok(())
    }
}

/// The columns of the queue rows a batch writes, as arrays for `UNNEST`.
#[derive(Default)]
struct EntryColumns<'a> {
    clients: Vec<&'a str>,
    ids: Vec<i64>,
    message_ids: Vec<i64>,
    qos: Vec<i16>,
    retain: Vec<bool>,
    /// Array literals (`{1,2}`): `UNNEST` cannot take an array of arrays of differing lengths.
    subscription_ids: Vec<String>,
    packet_ids: Vec<Option<i32>>,
    released: Vec<bool>,
}

impl<'a> EntryColumns<'a> {
    fn push(
        &mut self,
        client_id: &'a str,
        id: i64,
        entry: &QueueEntry,
        packet_id: Option<u16>,
        released: bool,
    ) -> StoreResult<()> {
        let mut ids = String::from("{");
        for (i, sub) in entry.subscription_ids.iter().enumerate() {
            if i > 0 {
                ids.push(',');
            }
            let sub = i32::try_from(*sub).map_err(|_| StoreError::Other {
                store: STORE,
                message: format!("subscription identifier {sub} out of range"),
            })?;
            ids.push_str(&sub.to_string());
        }
        ids.push('}');
        self.clients.push(client_id);
        self.ids.push(id);
        self.message_ids.push(to_bigint(entry.message_id)?);
        self.qos.push(i16::from(entry.qos));
        self.retain.push(entry.retain);
        self.subscription_ids.push(ids);
        self.packet_ids.push(packet_id.map(i32::from));
        self.released.push(released);
        Ok(())
    }
}

fn entry_from_row(row: &PgRow) -> StoreResult<QueueEntry> {
    let get_err = |e: sqlx::Error| corrupt("queue", e.to_string());
    let id: i64 = row.try_get(0).map_err(get_err)?;
    let message_id: i64 = row.try_get(1).map_err(get_err)?;
    let qos: i16 = row.try_get(2).map_err(get_err)?;
    let retain: bool = row.try_get(3).map_err(get_err)?;
    let subscription_ids: Vec<i32> = row.try_get(4).map_err(get_err)?;
    let packet_id: Option<i32> = row.try_get(5).map_err(get_err)?;
    let released: bool = row.try_get(6).map_err(get_err)?;
    let bad = |what: &str, value: i64| corrupt("queue", format!("{what} {value} out of range"));
    Ok(QueueEntry {
        id: u64::try_from(id).map_err(|_| bad("id", id))?,
        message_id: u64::try_from(message_id).map_err(|_| bad("message id", message_id))?,
        qos: u8::try_from(qos).map_err(|_| bad("qos", qos.into()))?,
        retain,
        subscription_ids: subscription_ids
            .into_iter()
            .map(|s| u32::try_from(s).map_err(|_| bad("subscription id", s.into())))
            .collect::<StoreResult<_>>()?,
        packet_id: packet_id
            .map(|p| u16::try_from(p).map_err(|_| bad("packet id", p.into())))
            .transpose()?,
        released,
        message: Some(message_from_row(row, 7)?),
    })
}

/// A message from the columns topic, payload, qos, retain, properties, expiry (ms) starting at
/// `first`.
fn message_from_row(row: &PgRow, first: usize) -> StoreResult<StoredMessage> {
    let get_err = |e: sqlx::Error| corrupt("messages", e.to_string());
    let topic: String = row.try_get(first).map_err(get_err)?;
    let payload: Vec<u8> = row.try_get(first + 1).map_err(get_err)?;
    let qos: i16 = row.try_get(first + 2).map_err(get_err)?;
    let retain: bool = row.try_get(first + 3).map_err(get_err)?;
    let properties: Vec<u8> = row.try_get(first + 4).map_err(get_err)?;
    let expires: Option<i64> = row.try_get(first + 5).map_err(get_err)?;
    Ok(StoredMessage {
        topic,
        payload: Bytes::from(payload),
        qos: u8::try_from(qos).map_err(|_| corrupt("messages", format!("qos {qos}")))?,
        retain,
        properties: Bytes::from(properties),
        expires_at_ms: expires.map(|ms| u64::try_from(ms).unwrap_or(0)),
    })
}

fn corrupt(table: &str, message: String) -> StoreError {
    StoreError::Corrupt {
        store: STORE,
        path: table.into(),
        message,
    }
}

/// A boot epoch or count as a bigint, bit for bit (any `u64` a peer sends fits).
fn bits(value: u64) -> i64 {
    i64::from_be_bytes(value.to_be_bytes())
}

/// The inverse of [`bits`].
fn unbits(value: i64) -> u64 {
    u64::from_be_bytes(value.to_be_bytes())
}

/// An id or time as a bigint; values past `i64::MAX` are refused.
fn to_bigint(value: u64) -> StoreResult<i64> {
    i64::try_from(value).map_err(|_| StoreError::Other {
        store: STORE,
        message: format!("{value} does not fit a bigint"),
    })
}

/// SQLSTATEs that mean the server is (for now) out of reach: connection exceptions (class 08),
/// shutdown in progress (57P01-57P03), too many connections (53300).
fn is_unavailable_code(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
}

fn map_error(error: sqlx::Error) -> StoreError {
    let unavailable = match &error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| is_unavailable_code(&code)),
        _ => false,
    };
    if unavailable {
        StoreError::Unavailable {
            store: STORE,
            message: error.to_string(),
        }
    } else {
        StoreError::Other {
            store: STORE,
            message: error.to_string(),
        }
    }
}

fn map_migrate_error(error: MigrateError) -> StoreError {
    match error {
        MigrateError::Execute(error) => map_error(error),
        MigrateError::ExecuteMigration(error, version) => match map_error(error) {
            StoreError::Other { message, .. } => StoreError::Other {
                store: STORE,
                message: format!("migration {version}: {message}"),
            },
            other => other,
        },
        other => StoreError::Other {
            store: STORE,
            message: format!("migrations: {other}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64, message_id: u64) -> QueueEntry {
        QueueEntry {
            id,
            message_id,
            qos: 1,
            retain: false,
            subscription_ids: vec![],
            packet_id: None,
            released: false,
            message: None,
        }
    }

    #[test]
    fn reduction_keeps_the_net_effect() {
        let ops = vec![
            QueueOp::Enqueue {
                client_id: "a".into(),
                entry: entry(1, 10),
            },
            QueueOp::Inflight {
                client_id: "a".into(),
                id: 1,
                packet_id: 5,
                released: false,
            },
            QueueOp::Enqueue {
                client_id: "a".into(),
                entry: entry(2, 11),
            },
            QueueOp::Ack {
                client_id: "a".into(),
                id: 2,
            },
            QueueOp::Inflight {
                client_id: "b".into(),
                id: 7,
                packet_id: 9,
                released: true,
            },
            QueueOp::Enqueue {
                client_id: "c".into(),
                entry: entry(3, 12),
            },
            QueueOp::IncomingAdd {
                client_id: "c".into(),
                packet_id: 4,
            },
            QueueOp::Purge {
                client_id: "c".into(),
            },
            QueueOp::Enqueue {
                client_id: "c".into(),
                entry: entry(4, 13),
            },
            QueueOp::IncomingAdd {
                client_id: "a".into(),
                packet_id: 1,
            },
            QueueOp::IncomingRemove {
                client_id: "a".into(),
                packet_id: 1,
            },
        ];
        let batch = QueueBatch::reduce(&ops).unwrap();
        assert!(matches!(
            batch.entries.get(&("a", 1)),
            Some(EntryState::Present {
                packet_id: Some(5),
                ..
            })
        ));
        assert!(matches!(
            batch.entries.get(&("a", 2)),
            Some(EntryState::Deleted)
        ));
        assert!(matches!(
            batch.entries.get(&("b", 7)),
            Some(EntryState::Updated {
                packet_id: 9,
                released: true
            })
        ));
        assert!(!batch.entries.contains_key(&("c", 3)));
        assert!(matches!(
            batch.entries.get(&("c", 4)),
            Some(EntryState::Present { .. })
        ));
        assert_eq!(batch.purged.iter().copied().collect::<Vec<_>>(), ["c"]);
        assert_eq!(batch.incoming.get(&("a", 1)), Some(&false));
        assert_eq!(batch.incoming.get(&("c", 4)), None);
        assert_eq!(batch.dropped_message_ids, [11, 12]);
    }

    #[test]
    fn unavailable_codes() {
        assert!(is_unavailable_code("08006"));
        assert!(is_unavailable_code("57P01"));
        assert!(!is_unavailable_code("23505"));
    }
}
