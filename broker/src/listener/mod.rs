//! Accept loops, one per listener, and the layers a connection passes before it speaks MQTT:
//! an optional PROXY protocol header ([`proxy`]), TLS ([`tls`]), WebSocket ([`ws`]). Each
//! listener has a connection limit, a per-address limit and stops on shutdown; every layer's
//! handshake runs under the connect deadline in the connection's own task, never in the loop.

pub mod identity;
pub mod proxy;
pub mod tls;
pub mod ws;

use std::collections::hash_map::Entry;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ahash::AHashMap;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::broker::Broker;
use crate::connection::{self, ConnInfo};
use crate::limits::bucket::TokenBucket;
use crate::metrics::{RateLimit, RefuseReason, listener_index};

/// The kinds of listener.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Deserialize,
    Serialize,
    clap::ValueEnum,
    PartialOrd,
    Ord,
)]
#[serde(rename_all = "kebab-case")]
pub enum ListenerKind {
    /// MQTT over TCP.
    Mqtt,
    /// MQTT over TLS.
    Mqtts,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
    /// The CoAP gateway's device sessions (in-process).
    #[value(skip)]
    #[serde(skip)]
    Coap,
    /// The edge bridge's local side (in-process).
    #[value(skip)]
    #[serde(skip)]
    Bridge,
}

impl ListenerKind {
    /// The name used in config, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::Mqtt => "mqtt",
            ListenerKind::Mqtts => "mqtts",
            ListenerKind::Ws => "ws",
            ListenerKind::Wss => "wss",
            ListenerKind::Coap => "coap",
            ListenerKind::Bridge => "bridge",
        }
    }

    /// Whether connections on it are TLS.
    pub fn is_tls(self) -> bool {
        matches!(self, ListenerKind::Mqtts | ListenerKind::Wss)
    }

    /// Whether connections on it are WebSocket.
    pub fn is_ws(self) -> bool {
        matches!(self, ListenerKind::Ws | ListenerKind::Wss)
    }
}

impl fmt::Display for ListenerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A listener to bind.
#[derive(Debug, Clone, Copy)]
pub struct ListenerSpec {
    /// What it speaks.
    pub kind: ListenerKind,
    /// Where.
    pub addr: SocketAddr,
    /// Expect a PROXY protocol header before anything else.
    pub proxy_protocol: bool,
}

/// Binds a TCP socket for a listener.
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Open connections per client address, for `max_connections_per_address`.
#[derive(Default)]
pub struct AddressCounts {
    counts: Mutex<AHashMap<IpAddr, u32>>,
}

/// One counted connection; uncounts on drop.
pub struct AddressGuard(Option<(Arc<AddressCounts>, IpAddr)>);

impl AddressCounts {
    /// Counts a connection from `ip` unless it already has `limit`. With no limit (0) nothing
    /// is counted: no lock, no entry.
    pub fn try_add(self: &Arc<Self>, ip: IpAddr, limit: u32) -> Option<AddressGuard> {
        if limit == 0 {
            return Some(AddressGuard(None));
        }
        let mut counts = self.counts.lock();
        let n = counts.entry(ip).or_insert(0);
        if limit > 0 && *n >= limit {
            if *n == 0 {
                counts.remove(&ip);
            }
            return None;
        }
        *n += 1;
        Some(AddressGuard(Some((self.clone(), ip))))
    }
}

impl Drop for AddressGuard {
    fn drop(&mut self) {
        let Some((owner, ip)) = self.0.take() else {
            return;
        };
        let mut counts = owner.counts.lock();
        if let Entry::Occupied(mut e) = counts.entry(ip) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

/// What a listener needs besides the socket.
#[derive(Clone)]
pub struct ListenerContext {
    /// The broker.
    pub broker: Arc<Broker>,
    /// The TLS configuration, for `mqtts` and `wss`.
    pub tls: Option<Arc<tls::ReloadingTls>>,
    /// Shared by all listeners.
    pub addresses: Arc<AddressCounts>,
}

/// Accepts connections until shutdown. At `max_connections` open connections on this listener
/// it stops accepting (new clients wait in the kernel's backlog) until one closes; past
/// `max_connection_rate` new connections per second it waits before accepting the next.
pub async fn run(listener: TcpListener, spec: ListenerSpec, ctx: ListenerContext) {
    let broker = ctx.broker.clone();
    let limit = Arc::new(Semaphore::new(broker.config.max_connections));
    // A drain (or the shutdown) closes the listening socket: new clients go elsewhere.
    let shutdown = broker.drain.clone();
    let burst = f64::from(broker.limits.load().max_connection_rate);
    let mut rate = TokenBucket::new(burst, std::time::Instant::now());
    loop {
        let per_sec = f64::from(broker.limits.load().max_connection_rate);
        if per_sec > 0.0
            && let Some(wait) = rate.take(1.0, per_sec, per_sec, std::time::Instant::now())
        {
            broker.metrics.rate_limited(RateLimit::ConnectionRate);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return,
            }
        }
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = shutdown.cancelled() => return,
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.cancelled() => return,
        };
        let (socket, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, listener = %spec.kind, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        broker.metrics.connection_attempts_total[listener_index(spec.kind)]
            .fetch_add(1, Ordering::Relaxed);
        // Latency over throughput per packet: our own batching already coalesces writes.
        let _ = socket.set_nodelay(true);
        if spec.kind == ListenerKind::Mqtt && !spec.proxy_protocol {
            // The common case, plain TCP with the peer known now: the leanest task, sized
            // for the connection alone (every byte counts with a million idle devices).
            let Some(address) = admit_address(&ctx, peer.ip(), spec.kind) else {
                continue;
            };
            // No async block of our own around it: its captures would stay in the task
            // beside the connection's.
            let (reader, writer) = socket.into_split();
            let info = ConnInfo::tcp(peer);
            let connection =
                connection::serve_split(reader, writer, info, broker.clone(), (permit, address));
            broker.tasks.spawn(connection);
            continue;
        }
        let ctx = ctx.clone();
        broker.tasks.clone().spawn(async move {
            let _permit = permit;
            connect_layers(socket, peer, spec, ctx).await;
        });
    }
}

/// Why a connection ended before it reached MQTT.
#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error("PROXY header: {0}")]
    Proxy(#[from] proxy::ProxyError),
    #[error("TLS handshake: {0}")]
    Tls(io::Error),
    #[error("WebSocket handshake: {0}")]
    WebSocket(String),
    #[error("no handshake within the connect timeout")]
    Timeout,
}

/// PROXY header, address limit, TLS, WebSocket, then MQTT.
async fn connect_layers(
    mut socket: TcpStream,
    peer: SocketAddr,
    spec: ListenerSpec,
    ctx: ListenerContext,
) {
    let broker = &ctx.broker;
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(broker.config.connect_timeout_secs);
    let shutdown = broker.shutdown.clone();
    let mut info = ConnInfo {
        peer,
        listener: spec.kind,
        cert_identity: None,
        cert_verified: false,
        address_verified: true,
    };
    if spec.proxy_protocol {
        // Boxed: only listeners behind a load balancer pay for this step's future.
        let header = Box::pin(within(deadline, &shutdown, async {
            Ok(proxy::read_header(&mut socket).await?)
        }))
        .await;
        match header {
            Ok(Some(source)) => {
                debug!(proxy = %peer, client = %source, "PROXY header");
                info.peer = source;
            }
            Ok(None) => {}
            Err(e) => {
                note_setup_failure(broker, &info, &e);
                return;
            }
        }
    }
    let Some(_address) = admit_address(&ctx, info.peer.ip(), spec.kind) else {
        return;
    };
    if spec.kind == ListenerKind::Mqtt {
        // Plain TCP, the common case, stays inline: this task's future is sized for it.
        let (reader, writer) = socket.into_split();
        connection::serve_split(reader, writer, info, ctx.broker.clone(), ()).await;
    } else {
        // TLS and WebSocket handshake futures are large (a WebSocket upgrade over TLS is tens
        // of kilobytes): boxed, they cost only while they run, not for the connection's life.
        Box::pin(serve_layered(socket, info, spec.kind, &ctx, deadline)).await;
    }
}

/// TLS and/or WebSocket, then MQTT.
async fn serve_layered(
    socket: TcpStream,
    mut info: ConnInfo,
    kind: ListenerKind,
    ctx: &ListenerContext,
    deadline: tokio::time::Instant,
) {
    let broker = &ctx.broker;
    let shutdown = broker.shutdown.clone();
    if kind == ListenerKind::Ws {
        return serve_ws(socket, info, broker, deadline).await;
    }
    let Some(tls) = &ctx.tls else {
        return;
    };
    let handshake = Box::pin(tls.acceptor().accept(socket));
    let stream = match within(deadline, &shutdown, async {
        handshake.await.map_err(SetupError::Tls)
    })
    .await
    {
        Ok(s) => s,
        Err(e) => {
            note_setup_failure(broker, &info, &e);
            return;
        }
    };
    // rustls only completes a handshake whose client certificate verified.
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first());
    info.cert_verified = leaf.is_some();
    if let (Some(which), Some(leaf)) = (broker.config.cert_identity, leaf) {
        info.cert_identity = identity::extract(leaf, which);
    }
    if kind == ListenerKind::Mqtts {
        connection::serve(stream, info, broker.clone()).await;
        return;
    }
    serve_ws(stream, info, broker, deadline).await;
}

/// The WebSocket upgrade (boxed: its future is large), then MQTT over it.
async fn serve_ws<S>(
    stream: S,
    info: ConnInfo,
    broker: &Arc<Broker>,
    deadline: tokio::time::Instant,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let upgrade = Box::pin(ws::accept(stream, &broker.config));
    let upgraded = within(deadline, &broker.shutdown, async {
        upgrade.await.map_err(ws_error)
    });
    match upgraded.await {
        Ok(stream) => connection::serve(stream, info, broker.clone()).await,
        Err(e) => note_setup_failure(broker, &info, &e),
    }
}

fn ws_error(e: tokio_tungstenite::tungstenite::Error) -> SetupError {
    SetupError::WebSocket(e.to_string())
}

/// Counts a connection from `ip` against `max_connections_per_address`; `None` (logged and
/// counted) when it is over the limit.
fn admit_address(ctx: &ListenerContext, ip: IpAddr, kind: ListenerKind) -> Option<AddressGuard> {
    let broker = &ctx.broker;
    let limit = broker.config.max_connections_per_address;
    let guard = ctx.addresses.try_add(ip, limit);
    if guard.is_none() {
        broker.metrics.refused(RefuseReason::ServerBusy);
        info!(peer = %ip, listener = %kind, limit, "refused connection: too many from this address");
    }
    guard
}

/// Runs a handshake step under the connect deadline; shutdown ends it too.
async fn within<T>(
    deadline: tokio::time::Instant,
    shutdown: &tokio_util::sync::CancellationToken,
    step: impl Future<Output = Result<T, SetupError>>,
) -> Result<T, SetupError> {
    tokio::select! {
        r = tokio::time::timeout_at(deadline, step) => r.unwrap_or(Err(SetupError::Timeout)),
        _ = shutdown.cancelled() => Err(SetupError::Timeout),
    }
}

fn note_setup_failure(broker: &Broker, info: &ConnInfo, e: &SetupError) {
    let (counter, why) = match e {
        SetupError::Tls(_) => (
            &broker.metrics.tls_handshake_failures_total,
            RefuseReason::TlsHandshake,
        ),
        SetupError::Timeout => (
            &broker.metrics.connect_timeouts_total,
            RefuseReason::Timeout,
        ),
        _ => (
            &broker.metrics.protocol_errors_total,
            RefuseReason::Malformed,
        ),
    };
    counter.fetch_add(1, Ordering::Relaxed);
    broker.metrics.refused(why);
    info!(peer = %info.peer, listener = %info.listener, error = %e, "connection closed before MQTT");
}
