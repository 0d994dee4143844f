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
//! - `rookery:C:owner:<client id>`: the newest claim of the client id, `"{ms} {node id}"`
//!   ([`SessionStore::claim`], and every write). It lives as long as the session's record, and
//!   a day past a delete or a claim without a record.
//! - `rookery:C:claims`: the pub/sub channel on which each claim that stands is published,
//!   `"{ms} {node id} {client id}"` ([`SessionStore::watch_claims`]).
//!
//! [`apply`](SessionStore::apply) sends all of a batch's commands as one `MULTI`/`EXEC`
//! pipeline: one round trip, applied atomically. Each write and delete is a Lua script that
//! refuses it when the owner key holds a newer claim than the one it was made under (fencing:
//! decision 0017). A session whose deadline has already passed is deleted rather than written.
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
//! master without a restart. Each operation is tried twice (all are idempotent: writes,
//! deletes and claims are compare-and-set scripts that a repeat leaves as they were, bar a
//! claim's second publication) before it fails with [`StoreError::Unavailable`].

use std::time::Duration;

use crate::now_ms;

use ::redis::ServerErrorKind;
use ::redis::aio::MultiplexedConnection;
use ::redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use ::redis::{AsyncConnectionConfig, Client, ErrorKind, RedisConnectionInfo, RedisError};
use parking_lot::Mutex;

use crate::{
    ClaimNotice, ClaimWatch, Claimed, Owner, SessionOp, SessionRecord, SessionStore, StoreError,
    StoreFuture, StoreResult,
};

const STORE: &str = "redis";

/// Format byte in front of every stored session.
const FORMAT: u8 = 1;

/// How long connecting, and waiting for a reply, may take before the attempt counts as failed.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Keys per `MGET` in `load` and `owners`.
const MGET_CHUNK: usize = 500;

/// `MGET`s of [`SessionStore::owners`] sent together.
const OWNERS_IN_FLIGHT: usize = 16;

/// How long a client id's claim is remembered without a session record that keeps it (a
/// connected session's claim stays as long as its record).
const OWNER_TTL_MS: u64 = 24 * 3600 * 1000;

/// Pause before subscribing to the claims again after the subscription broke.
const WATCH_RETRY: Duration = Duration::from_secs(1);

/// How often the claims subscription is pinged, and how long the answer may take: a
/// connection that died without a word (a cut cable, a frozen server) counts as broken after
/// that, and the watch subscribes again.
const WATCH_PING_EVERY: Duration = Duration::from_secs(1);
const WATCH_PING_TIMEOUT: Duration = Duration::from_secs(3);

/// Lua shared by the scripts: `newer(cur, epoch, node)` is true when the claim `cur`
/// (`"{epoch} {node}"`) is newer than (`epoch`, `node`): a larger epoch, or the same one and a
/// larger node id, compared byte by byte as Rust compares strings (Lua's own comparison
/// follows the server's locale).
macro_rules! newer_lua {
    () => {
        r#"
local function newer(cur, epoch, node)
  if not cur then return false end
  local e, n = string.match(cur, '^(%d+) (.*)$')
  if not e then return false end
  e = tonumber(e)
  epoch = tonumber(epoch)
  if e ~= epoch then return e > epoch end
  local la, lb = #n, #node
  for i = 1, math.min(la, lb) do
    local x, y = string.byte(n, i), string.byte(node, i)
    if x ~= y then return x > y end
  end
  return la > lb
end
"#
    };
}

/// Writes a session unless a newer claim owns it, and records its claim. KEYS: session,
/// owner, index. ARGV: epoch, node, value, expiry at (ms, or empty), index score, client id,
/// claim TTL (ms). Returns 1, or 0 when refused.
const PUT_SCRIPT: &str = concat!(
    newer_lua!(),
    r#"
if newer(redis.call('GET', KEYS[2]), ARGV[1], ARGV[2]) then return 0 end
local owner = ARGV[1] .. ' ' .. ARGV[2]
if ARGV[4] == '' then
  redis.call('SET', KEYS[1], ARGV[3])
  redis.call('SET', KEYS[2], owner)
else
  redis.call('SET', KEYS[1], ARGV[3], 'PXAT', ARGV[4])
  local keep = math.max(tonumber(ARGV[4]), tonumber(redis.call('TIME')[1]) * 1000 + tonumber(ARGV[7]))
  redis.call('SET', KEYS[2], owner, 'PXAT', keep)
end
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[6])
return 1
"#
);

/// Deletes a session unless a newer claim owns it. KEYS: session, owner, index. ARGV: "1" to
/// check the claim ("0": whoever owns it), epoch, node, client id, claim TTL (ms). The claim
/// itself is kept a while: a late write of an older claim stays refused. Returns 1, or 0.
const DELETE_SCRIPT: &str = concat!(
    newer_lua!(),
    r#"
if ARGV[1] == '1' and newer(redis.call('GET', KEYS[2]), ARGV[2], ARGV[3]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[4])
if redis.call('PTTL', KEYS[2]) == -1 then redis.call('PEXPIRE', KEYS[2], ARGV[5]) end
return 1
"#
);

/// Claims a client id unless a newer claim owns it, and publishes the claim. KEYS: owner.
/// ARGV: epoch, node, channel, client id, claim TTL (ms). Returns nil, or the newer claim.
const CLAIM_SCRIPT: &str = concat!(
    newer_lua!(),
    r#"
local cur = redis.call('GET', KEYS[1])
if newer(cur, ARGV[1], ARGV[2]) then return cur end
local owner = ARGV[1] .. ' ' .. ARGV[2]
if cur and redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('SET', KEYS[1], owner, 'KEEPTTL')
else
  redis.call('SET', KEYS[1], owner, 'PX', ARGV[5])
end
redis.call('PUBLISH', ARGV[3], owner .. ' ' .. ARGV[4])
return false
"#
);

/// `"{epoch} {node}"`: the claim. Pure.
fn parse_owner(value: &str) -> Option<(u64, &str)> {
    let (epoch, node) = value.split_once(' ')?;
    Some((epoch.parse().ok()?, node))
}

/// `"{epoch} {node} {client id}"`: a published claim (node ids hold no space; client ids
/// may). Pure.
fn parse_notice(payload: &str) -> Option<ClaimNotice> {
    let (epoch, rest) = payload.split_once(' ')?;
    let (node, client_id) = rest.split_once(' ')?;
    Some(ClaimNotice {
        client_id: client_id.to_owned(),
        node: node.to_owned(),
        epoch: epoch.parse().ok()?,
    })
}

/// Persistent sessions in Redis, or in a Redis that Sentinels watch. See the [module
/// documentation](self) for the key layout and the failover behaviour.
pub struct RedisSessionStore {
    key_prefix: String,
    index_key: String,
    owner_prefix: String,
    claims_channel: String,
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
            owner_prefix: format!("rookery:{cluster_name}:owner:"),
            claims_channel: format!("rookery:{cluster_name}:claims"),
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

    /// The key of a client id's newest claim: `"{epoch} {node}"`.
    pub fn owner_key(&self, client_id: &str) -> String {
        format!("{}{client_id}", self.owner_prefix)
    }

    async fn apply_ops(&self, ops: &[SessionOp]) -> StoreResult<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let mut pipe = ::redis::pipe();
        pipe.atomic();
        // Which op each script's answer is about (1: done, 0: refused, a newer claim owns it).
        let mut fenced: Vec<&str> = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                SessionOp::Put(record) => {
                    let deadline = deadline_ms(record);
                    fenced.push(&record.client_id);
                    if deadline.is_some_and(|at| at <= now) {
                        self.delete_script(
                            &mut pipe,
                            &record.client_id,
                            Some((record.epoch, &record.owner_node)),
                        );
                        continue;
                    }
                    let value = encode(record)?;
                    let score = deadline.map_or_else(|| "+inf".to_owned(), |at| at.to_string());
                    pipe.cmd("EVAL")
                        .arg(PUT_SCRIPT)
                        .arg(3)
                        .arg(self.session_key(&record.client_id))
                        .arg(self.owner_key(&record.client_id))
                        .arg(&self.index_key)
                        .arg(record.epoch)
                        .arg(&record.owner_node)
                        .arg(value)
                        .arg(deadline.map_or_else(String::new, |at| at.to_string()))
                        .arg(score)
                        .arg(&record.client_id)
                        .arg(OWNER_TTL_MS);
                }
                SessionOp::Delete { client_id, owner } => {
                    fenced.push(client_id);
                    let owner = owner.as_ref().map(|(e, n)| (*e, n.as_str()));
                    self.delete_script(&mut pipe, client_id, owner);
                }
            }
        }
        let done: Vec<i64> = self
            .run(|mut connection| {
                let pipe = &pipe;
                async move { pipe.query_async(&mut connection).await }
            })
            .await?;
        for (client_id, done) in fenced.iter().zip(done) {
            if done == 0 {
                tracing::info!(
                    client_id,
                    "session write refused: another node's newer claim owns the session"
                );
            }
        }
        Ok(())
    }

    fn delete_script(
        &self,
        pipe: &mut ::redis::Pipeline,
        client_id: &str,
        owner: Option<(u64, &str)>,
    ) {
        let (epoch, node) = owner.unwrap_or((0, ""));
        pipe.cmd("EVAL")
            .arg(DELETE_SCRIPT)
            .arg(3)
            .arg(self.session_key(client_id))
            .arg(self.owner_key(client_id))
            .arg(&self.index_key)
            .arg(if owner.is_some() { "1" } else { "0" })
            .arg(epoch)
            .arg(node)
            .arg(client_id)
            .arg(OWNER_TTL_MS);
    }

    async fn claim_one(&self, client_id: &str, node: &str, epoch: u64) -> StoreResult<Claimed> {
        let owner_key = self.owner_key(client_id);
        let newer: Option<String> = self
            .run(|mut connection| {
                let owner_key = &owner_key;
                async move {
                    ::redis::cmd("EVAL")
                        .arg(CLAIM_SCRIPT)
                        .arg(1)
                        .arg(owner_key)
                        .arg(epoch)
                        .arg(node)
                        .arg(&self.claims_channel)
                        .arg(client_id)
                        .arg(OWNER_TTL_MS)
                        .query_async(&mut connection)
                        .await
                }
            })
            .await?;
        Ok(match newer.as_deref().and_then(parse_owner) {
            Some((epoch, node)) => Claimed::Newer {
                node: node.to_owned(),
                epoch,
            },
            None => Claimed::Stands,
        })
    }

    /// Forwards the claims published on the cluster's channel to `tx` until it closes,
    /// subscribing again (after a pause) whenever the subscription breaks: an error, the
    /// server closing it, or a ping not answered in [`WATCH_PING_TIMEOUT`]. Each subscription
    /// starts with [`ClaimWatch::Following`].
    async fn watch(&self, tx: tokio::sync::mpsc::UnboundedSender<ClaimWatch>) -> StoreResult<()> {
        use futures_util::StreamExt;
        while !tx.is_closed() {
            let subscribed = async {
                let mut pubsub = self.connector.pubsub().await?;
                pubsub.subscribe(&self.claims_channel).await?;
                Ok::<_, RedisError>(pubsub)
            };
            let pubsub = match tokio::time::timeout(2 * TIMEOUT, subscribed).await {
                Ok(Ok(pubsub)) => pubsub,
                Ok(Err(error)) => {
                    tracing::warn!(%error, "redis: cannot watch claims; trying again");
                    tokio::time::sleep(WATCH_RETRY).await;
                    continue;
                }
                Err(_) => {
                    tracing::warn!("redis: watching claims timed out; trying again");
                    tokio::time::sleep(WATCH_RETRY).await;
                    continue;
                }
            };
            if tx.send(ClaimWatch::Following).is_err() {
                return Ok(());
            }
            let (mut sink, mut messages) = pubsub.split();
            let mut ping = tokio::time::interval(WATCH_PING_EVERY);
            ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let broke = loop {
                tokio::select! {
                    m = messages.next() => {
                        let Some(m) = m else { break "ended" };
                        let Ok(payload) = m.get_payload::<String>() else { continue };
                        if let Some(notice) = parse_notice(&payload) {
                            let _ = tx.send(ClaimWatch::Claim(notice));
                        }
                    }
                    _ = ping.tick() => {
                        let pong = sink.ping::<::redis::Value>();
                        match tokio::time::timeout(WATCH_PING_TIMEOUT, pong).await {
                            Ok(Ok(_)) => {}
                            Ok(Err(_)) => break "failed a ping",
                            Err(_) => break "did not answer a ping in time",
                        }
                    }
                    _ = tx.closed() => return Ok(()),
                }
            };
            tracing::warn!("redis: the claims subscription {broke}; subscribing again");
            tokio::time::sleep(WATCH_RETRY).await;
        }
        Ok(())
    }

    /// The owner keys of `client_ids`: `MGET`s of `MGET_CHUNK` keys, sent
    /// [`OWNERS_IN_FLIGHT`] at a time on the one connection.
    async fn owners_of(&self, client_ids: &[String]) -> StoreResult<Vec<Option<Owner>>> {
        let mut owners = Vec::with_capacity(client_ids.len());
        for wave in client_ids.chunks(MGET_CHUNK * OWNERS_IN_FLIGHT) {
            let answers = futures_util::future::try_join_all(
                wave.chunks(MGET_CHUNK).map(|c| self.owners_chunk(c)),
            )
            .await?;
            owners.extend(answers.into_iter().flatten());
        }
        Ok(owners)
    }

    /// `MGET keys`: each key's value, `None` where there is none.
    async fn mget<T: ::redis::FromRedisValue>(
        &self,
        keys: &[String],
    ) -> StoreResult<Vec<Option<T>>> {
        self.run(|mut connection| async move {
            ::redis::cmd("MGET")
                .arg(keys)
                .query_async(&mut connection)
                .await
        })
        .await
    }

    async fn owners_chunk(&self, chunk: &[String]) -> StoreResult<Vec<Option<Owner>>> {
        let keys: Vec<String> = chunk.iter().map(|id| self.owner_key(id)).collect();
        let values: Vec<Option<String>> = self.mget(&keys).await?;
        Ok(values
            .iter()
            .map(|v| {
                v.as_deref()
                    .and_then(parse_owner)
                    .map(|(epoch, node)| Owner {
                        node: node.to_owned(),
                        epoch,
                    })
            })
            .collect())
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
            let values: Vec<Option<Vec<u8>>> = self.mget(&keys).await?;
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

    fn claim<'a>(
        &'a self,
        client_id: &'a str,
        node: &'a str,
        epoch: u64,
    ) -> StoreFuture<'a, Claimed> {
        Box::pin(self.claim_one(client_id, node, epoch))
    }

    fn watch_claims(
        &self,
        tx: tokio::sync::mpsc::UnboundedSender<ClaimWatch>,
    ) -> StoreFuture<'_, ()> {
        Box::pin(self.watch(tx))
    }

    fn owners<'a>(&'a self, client_ids: &'a [String]) -> StoreFuture<'a, Vec<Option<Owner>>> {
        Box::pin(self.owners_of(client_ids))
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

    /// A connection of its own for a subscription (through the Sentinels for a Sentinel URL:
    /// the master now).
    pub(crate) async fn pubsub(&self) -> Result<::redis::aio::PubSub, RedisError> {
        match &self.target {
            Target::Direct(client) => client.get_async_pubsub().await,
            Target::Sentinel(sentinels) => {
                let master = sentinels.client().await?.async_get_client().await?;
                master.get_async_pubsub().await
            }
        }
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
