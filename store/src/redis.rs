//! Persistent sessions in Redis ([`RedisSessionStore`]).
//!
//! # Layout
//!
//! For the Rookery cluster named `C` (given at construction, so that several clusters can share
//! one Redis):
//!
//! - `rookery:C:session:<client id>`: a string, one format byte (1) followed by the
//!   postcard-encoded [`SessionRecord`]. It expires (`PXAT`) when the session does:
//!   `disconnected_at_ms + expiry_secs * 1000`, a day later when the session still holds a will
//!   (the broker that ends the session publishes it, even after a downtime). It has no TTL while a connection is attached
//!   (`disconnected_at_ms` unset) or when the expiry is `u32::MAX` (never).
//! - `rookery:C:sessions`: a sorted set of the client ids, scored with that deadline in
//!   milliseconds (`+inf` for none), so that [`load`](SessionStore::load) lists sessions without
//!   `KEYS` or `SCAN`. `load` first drops the members whose deadline has passed
//!   (`ZREMRANGEBYSCORE`), then reads the rest with `MGET` and drops members whose key is gone.
//!
//! [`apply`](SessionStore::apply) sends all of a batch's commands as one `MULTI`/`EXEC`
//! pipeline: one round trip, applied atomically. A session whose deadline has already passed is
//! deleted rather than written.
//!
//! # Connections and failover
//!
//! URLs are `redis://host[:port][/db]` (with `user:password@` if needed), `unix:///path` or,
//! for Sentinel (TLS is not compiled in):
//!
//! ```text
//! redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]
//! ```
//!
//! names Sentinels (port 26379 by default) and the service (master name) they monitor; the
//! user, password and database apply to the master. The store keeps one multiplexed connection
//! and replaces it when it fails: after a connection error, a timeout, or a `READONLY`,
//! `MASTERDOWN` or `LOADING` reply (what an old master answers after a failover), the next
//! attempt connects afresh, through the Sentinels for a Sentinel URL, so it reaches the new
//! master without a restart. Each operation is tried twice (both are idempotent: `SET`, `DEL`,
//! `ZADD`, `ZREM`) before it fails with [`StoreError::Unavailable`].

use std::time::Duration;

use crate::now_ms;

use ::redis::ServerErrorKind;
use ::redis::aio::MultiplexedConnection;
use ::redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use ::redis::{AsyncConnectionConfig, Client, ErrorKind, RedisConnectionInfo, RedisError};
use parking_lot::Mutex;

use crate::{SessionOp, SessionRecord, SessionStore, StoreError, StoreFuture, StoreResult};

const STORE: &str = "redis";

/// Format byte in front of every stored session.
const FORMAT: u8 = 1;

/// How long connecting, and waiting for a reply, may take before the attempt counts as failed.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Keys per `MGET` in `load`.
const MGET_CHUNK: usize = 500;

/// Persistent sessions in Redis, or in a Redis that Sentinels watch. See the [module
/// documentation](self) for the key layout and the failover behaviour.
pub struct RedisSessionStore {
    key_prefix: String,
    index_key: String,
    connector: Connector,
}

impl RedisSessionStore {
    /// Connects to the Redis at `url` (`redis://`, `unix://` or `redis+sentinel://`, see the
    /// [module documentation](self)) for the cluster named `cluster_name`. Fails with
    /// [`StoreError::Unavailable`] if Redis cannot be reached now.
    pub async fn connect(url: &str, cluster_name: &str) -> StoreResult<Self> {
        let store = RedisSessionStore {
            key_prefix: format!("rookery:{cluster_name}:session:"),
            index_key: format!("rookery:{cluster_name}:sessions"),
            connector: Connector::new(url)?,
        };
        store.connector.connection().await.map_err(map_error)?;
        Ok(store)
    }

    /// The key of a session.
    pub fn session_key(&self, client_id: &str) -> String {
        format!("{}{client_id}", self.key_prefix)
    }

    /// The key of the sorted set that indexes the sessions.
    pub fn index_key(&self) -> &str {
        &self.index_key
    }

    /// Runs `f` on the current connection (see [`Connector::run`]).
    async fn run<T, F, Fut>(&self, f: F) -> StoreResult<T>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        self.connector.run(f).await
    }

    async fn apply_ops(&self, ops: &[SessionOp]) -> StoreResult<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let mut pipe = ::redis::pipe();
        pipe.atomic();
        for op in ops {
            match op {
                SessionOp::Put(record) => {
                    let key = self.session_key(&record.client_id);
                    let deadline = deadline_ms(record);
                    if deadline.is_some_and(|at| at <= now) {
                        pipe.del(&key).ignore();
                        pipe.zrem(&self.index_key, &record.client_id).ignore();
                        continue;
                    }
                    let value = encode(record)?;
                    let set = pipe.cmd("SET").arg(&key).arg(value);
                    if let Some(at) = deadline {
                        set.arg("PXAT").arg(at);
                    }
                    set.ignore();
                    let score = deadline.map_or_else(|| "+inf".to_owned(), |at| at.to_string());
                    pipe.cmd("ZADD")
                        .arg(&self.index_key)
                        .arg(score)
                        .arg(&record.client_id)
                        .ignore();
                }
                SessionOp::Delete { client_id } => {
                    pipe.del(self.session_key(client_id)).ignore();
                    pipe.zrem(&self.index_key, client_id).ignore();
                }
            }
        }
        self.run(|mut connection| {
            let pipe = &pipe;
            async move { pipe.exec_async(&mut connection).await }
        })
        .await
    }

    async fn load_all(&self) -> StoreResult<Vec<SessionRecord>> {
        let now = now_ms();
        let index_key = &self.index_key;
        let client_ids: Vec<String> = self
            .run(|mut connection| async move {
                let (ids,): (Vec<String>,) = ::redis::pipe()
                    .cmd("ZREMRANGEBYSCORE")
                    .arg(index_key)
                    .arg("-inf")
                    .arg(now)
                    .ignore()
                    .cmd("ZRANGE")
                    .arg(index_key)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut connection)
                    .await?;
                Ok(ids)
            })
            .await?;
        let mut sessions = Vec::with_capacity(client_ids.len());
        let mut gone = Vec::new();
        for chunk in client_ids.chunks(MGET_CHUNK) {
            let keys: Vec<String> = chunk.iter().map(|id| self.session_key(id)).collect();
            let values: Vec<Option<Vec<u8>>> = self
                .run(|mut connection| {
                    let keys = &keys;
                    async move {
                        ::redis::cmd("MGET")
                            .arg(keys)
                            .query_async(&mut connection)
                            .await
                    }
                })
                .await?;
            for ((client_id, key), value) in chunk.iter().zip(&keys).zip(values) {
                match value {
                    Some(bytes) => {
                        let record = decode(key, &bytes)?;
                        if deadline_ms(&record).is_none_or(|at| at > now) {
                            sessions.push(record);
                        }
                    }
                    None => gone.push(client_id.clone()),
                }
            }
        }
        if !gone.is_empty() {
            self.run(|mut connection| {
                let gone = &gone;
                async move {
                    ::redis::cmd("ZREM")
                        .arg(index_key)
                        .arg(gone)
                        .exec_async(&mut connection)
                        .await
                }
            })
            .await?;
        }
        Ok(sessions)
    }

    async fn get_one(&self, client_id: &str) -> StoreResult<Option<SessionRecord>> {
        let key = self.session_key(client_id);
        let value: Option<Vec<u8>> = self
            .run(|mut connection| {
                let key = &key;
                async move {
                    ::redis::cmd("GET")
                        .arg(key)
                        .query_async(&mut connection)
                        .await
                }
            })
            .await?;
        let Some(bytes) = value else {
            return Ok(None);
        };
        let record = decode(&key, &bytes)?;
        Ok(deadline_ms(&record)
            .is_none_or(|at| at > now_ms())
            .then_some(record))
    }
}

impl SessionStore for RedisSessionStore {
    fn apply<'a>(&'a self, ops: &'a [SessionOp]) -> StoreFuture<'a, ()> {
        Box::pin(self.apply_ops(ops))
    }

    fn load(&self) -> StoreFuture<'_, Vec<SessionRecord>> {
        Box::pin(self.load_all())
    }

    fn get<'a>(&'a self, client_id: &'a str) -> StoreFuture<'a, Option<SessionRecord>> {
        Box::pin(self.get_one(client_id))
    }

    fn name(&self) -> &'static str {
        STORE
    }
}

/// How long a session that still holds a will outlives its expiry in Redis: the broker that
/// ends it publishes the will, so a session that expired while every broker was down must
/// still be there when one starts.
const WILL_GRACE_MS: u64 = 24 * 3600 * 1000;

/// When a stored session leaves Redis, in milliseconds since the Unix epoch: `None` while
/// connected or when it never expires. A session with a pending will stays
/// [`WILL_GRACE_MS`] longer.
fn deadline_ms(record: &SessionRecord) -> Option<u64> {
    let disconnected = record.disconnected_at_ms?;
    let grace = if record.will.is_some() {
        WILL_GRACE_MS
    } else {
        0
    };
    (record.expiry_secs != u32::MAX).then(|| {
        disconnected
            .saturating_add(u64::from(record.expiry_secs) * 1000)
            .saturating_add(grace)
    })
}

fn encode(record: &SessionRecord) -> StoreResult<Vec<u8>> {
    postcard::to_extend(record, vec![FORMAT]).map_err(|e| StoreError::Other {
        store: STORE,
        message: format!("encoding session {}: {e}", record.client_id),
    })
}

fn decode(key: &str, bytes: &[u8]) -> StoreResult<SessionRecord> {
    let corrupt = |message: String| StoreError::Corrupt {
        store: STORE,
        path: key.into(),
        message,
    };
    match bytes.split_first() {
        Some((&FORMAT, rest)) => {
            postcard::from_bytes(rest).map_err(|e| corrupt(format!("undecodable session: {e}")))
        }
        Some((format, _)) => Err(corrupt(format!("unknown format byte {format}"))),
        None => Err(corrupt("empty value".into())),
    }
}

/// Worth replacing the connection and trying again.
fn is_transient(error: &RedisError) -> bool {
    if error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
    {
        return true;
    }
    let transient_kind = |kind: Option<ServerErrorKind>| {
        matches!(
            kind,
            Some(
                ServerErrorKind::ReadOnly
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
            )
        )
    };
    match error.kind() {
        ErrorKind::Server(kind) if transient_kind(Some(kind)) => true,
        ErrorKind::MasterNameNotFoundBySentinel | ErrorKind::ClusterConnectionNotFound => true,
        // A MULTI whose commands were refused (READONLY on a demoted master) fails as a whole
        // with EXECABORT: look at why.
        _ => error
            .clone()
            .into_server_errors()
            .is_some_and(|errors| errors.iter().any(|(_, e)| transient_kind(e.kind()))),
    }
}

fn map_error(error: RedisError) -> StoreError {
    if is_transient(&error) {
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

/// Where connections go: one server, or the master that Sentinels name.
enum Target {
    Direct(Client),
    Sentinel(Sentinels),
}

/// The Sentinels of a `redis+sentinel://` URL. Their names are resolved again at every
/// connection, to every address each has: a Kubernetes Service name resolves to all the
/// Sentinel pods, and after a failover the first address may be the dead pod's.
struct Sentinels {
    /// `host:port` as the URL gives them.
    hosts: Vec<String>,
    service: String,
    node: SentinelNodeConnectionInfo,
}

impl Sentinels {
    /// A client over every address of every Sentinel, asked in turn until one names a master
    /// that answers as master.
    async fn client(&self) -> Result<SentinelClient, RedisError> {
        let mut urls = Vec::new();
        for host in &self.hosts {
            match tokio::net::lookup_host(host.as_str()).await {
                Ok(addrs) => {
                    for addr in addrs {
                        let url = format!("redis://{addr}");
                        if !urls.contains(&url) {
                            urls.push(url);
                        }
                    }
                }
                // A name that does not resolve now may later; the others are tried.
                Err(error) => {
                    tracing::debug!(%host, %error, "redis: a Sentinel name does not resolve")
                }
            }
        }
        if urls.is_empty() {
            return Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no Sentinel address resolves",
            )));
        }
        SentinelClient::build(
            urls,
            self.service.clone(),
            Some(self.node.clone()),
            SentinelServerType::Master,
        )
    }
}

impl Target {
    fn parse(url: &str) -> StoreResult<Target> {
        let invalid = |message: String| StoreError::Other {
            store: STORE,
            message: format!("invalid redis URL: {message}"),
        };
        let Some(rest) = url.strip_prefix("redis+sentinel://") else {
            return Client::open(url)
                .map(Target::Direct)
                .map_err(|e| invalid(e.to_string()));
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (credentials, hosts) = match authority.rsplit_once('@') {
            Some((credentials, hosts)) => (Some(credentials), hosts),
            None => (None, authority),
        };
        let mut segments = path.split('/').filter(|s| !s.is_empty());
        let service = segments
            .next()
            .ok_or_else(|| invalid("redis+sentinel:// needs the service name as its path".into()))?
            .to_owned();
        let mut info = RedisConnectionInfo::default();
        if let Some(db) = segments.next() {
            let db: i64 = db
                .parse()
                .map_err(|_| invalid(format!("database {db:?} is not a number")))?;
            info = info.set_db(db);
        }
        if let Some(credentials) = credentials {
            let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
            if !user.is_empty() {
                info = info.set_username(user);
            }
            if !password.is_empty() {
                info = info.set_password(password);
            }
        }
        let sentinels: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|host| {
                let has_port = host
                    .rsplit_once(':')
                    .is_some_and(|(_, port)| port.parse::<u16>().is_ok());
                if has_port {
                    host.to_owned()
                } else {
                    format!("{host}:26379")
                }
            })
            .collect();
        if sentinels.is_empty() {
            return Err(invalid("redis+sentinel:// names no sentinel".into()));
        }
        let node = SentinelNodeConnectionInfo::default().set_redis_connection_info(info);
        // Checked once here, with the names as given (a client is built at each connection).
        let urls: Vec<String> = sentinels.iter().map(|h| format!("redis://{h}")).collect();
        SentinelClient::build(
            urls,
            service.clone(),
            Some(node.clone()),
            SentinelServerType::Master,
        )
        .map_err(|e| invalid(e.to_string()))?;
        Ok(Target::Sentinel(Sentinels {
            hosts: sentinels,
            service,
            node,
        }))
    }
}

/// One multiplexed connection, made on demand and replaced after a failure. Shared by the
/// session store and [`crate::redis_bans`].
pub(crate) struct Connector {
    target: Target,
    current: Mutex<Option<MultiplexedConnection>>,
    /// Held while connecting, so that concurrent callers wait for one new connection.
    connecting: tokio::sync::Mutex<()>,
    config: AsyncConnectionConfig,
}

impl Connector {
    /// A connector for `url` (not connected yet).
    pub(crate) fn new(url: &str) -> StoreResult<Connector> {
        Ok(Connector {
            target: Target::parse(url)?,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(TIMEOUT))
                .set_response_timeout(Some(TIMEOUT)),
        })
    }

    /// Runs `f` on the current connection; on a transient failure replaces the connection and
    /// runs it once more. `f` must be idempotent.
    pub(crate) async fn run<T, F, Fut>(&self, f: F) -> StoreResult<T>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let mut last = None;
        for _ in 0..2 {
            let result = match self.connection().await {
                Ok(connection) => f(connection).await,
                Err(error) => Err(error),
            };
            match result {
                Ok(value) => return Ok(value),
                Err(error) if is_transient(&error) => {
                    tracing::debug!(%error, "redis: replacing the connection");
                    self.reset();
                    last = Some(error);
                }
                Err(error) => return Err(map_error(error)),
            }
        }
        Err(last.map_or_else(
            || StoreError::Unavailable {
                store: STORE,
                message: "no connection".into(),
            },
            map_error,
        ))
    }

    pub(crate) async fn connection(&self) -> Result<MultiplexedConnection, RedisError> {
        if let Some(connection) = self.current.lock().clone() {
            return Ok(connection);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(connection) = self.current.lock().clone() {
            return Ok(connection);
        }
        let connect = async {
            match &self.target {
                Target::Direct(client) => {
                    client
                        .get_multiplexed_async_connection_with_config(&self.config)
                        .await
                }
                Target::Sentinel(sentinels) => {
                    sentinels
                        .client()
                        .await?
                        .get_async_connection_with_config(&self.config)
                        .await
                }
            }
        };
        // The config's timeouts cover the connection to the server, not the questions to the
        // Sentinels: bound the whole.
        let connection = tokio::time::timeout(2 * TIMEOUT, connect)
            .await
            .map_err(|_| {
                RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connecting to redis timed out",
                ))
            })??;
        *self.current.lock() = Some(connection.clone());
        Ok(connection)
    }

    fn reset(&self) {
        *self.current.lock() = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines() {
        let mut record = SessionRecord {
            client_id: "c".into(),
            expiry_secs: 10,
            disconnected_at_ms: None,
            username: None,
            by_password: false,
            subscriptions: Vec::new(),
            will: None,
            owner_node: "n".into(),
            epoch: 1,
        };
        assert_eq!(deadline_ms(&record), None);
        record.disconnected_at_ms = Some(1_000);
        assert_eq!(deadline_ms(&record), Some(11_000));
        record.will = Some(crate::WillRecord {
            message: crate::StoredMessage {
                topic: "w".into(),
                payload: Default::default(),
                qos: 0,
                retain: false,
                properties: Default::default(),
                expires_at_ms: None,
            },
            expiry_secs: None,
            delay_secs: 30,
        });
        assert_eq!(deadline_ms(&record), Some(11_000 + WILL_GRACE_MS));
        record.expiry_secs = u32::MAX;
        assert_eq!(deadline_ms(&record), None);
    }

    #[test]
    fn encoding_round_trips_and_rejects_garbage() {
        let record = SessionRecord {
            client_id: "c".into(),
            expiry_secs: 10,
            disconnected_at_ms: Some(5),
            username: Some("u".into()),
            by_password: true,
            subscriptions: Vec::new(),
            will: None,
            owner_node: "n".into(),
            epoch: 7,
        };
        let bytes = encode(&record).unwrap();
        assert_eq!(bytes[0], FORMAT);
        assert_eq!(decode("k", &bytes).unwrap(), record);
        assert!(matches!(
            decode("k", &[9, 1]),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(decode("k", &[]), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn sentinel_urls() {
        assert!(matches!(
            Target::parse("redis+sentinel://127.0.0.1:26379,127.0.0.1/mymaster/2"),
            Ok(Target::Sentinel(_))
        ));
        assert!(Target::parse("redis+sentinel://127.0.0.1:26379").is_err());
        assert!(Target::parse("redis+sentinel:///svc").is_err());
        assert!(matches!(
            Target::parse("redis://127.0.0.1:6379/0"),
            Ok(Target::Direct(_))
        ));
    }
}
