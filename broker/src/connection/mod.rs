//! One task per client connection.
//!
//! The task reads into one buffer and decodes every whole packet in it, handles each (a PUBLISH
//! is routed right here, in this task), drains its session's queue into one write buffer, and
//! writes that buffer in one call before it waits again: many packets, one syscall. Reads stop
//! while the write buffer is above its high-water mark, so a client that does not read cannot
//! make us buffer without bound.

pub(crate) mod connect;
mod durable;
mod inbound;
mod outbound;
pub mod source;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ahash::AHashMap;
use bytes::BytesMut;
use bytestring::ByteString;
use rookery_codec::{DecodeError, Disconnect, LastWill, Packet, Protocol, reason};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tracing::{Instrument, debug, field, info, info_span};

use crate::broker::Broker;
use crate::listener::ListenerKind;
use crate::metrics::{LocalCounts, RefuseReason};
use crate::security::authenticate::{admit, authenticate};
use crate::session::{Control, PendingWill, Session, SessionState};
use source::{Reader, Source};

/// Above this many buffered output bytes we stop reading and draining until the socket drains.
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// Initial size of a write buffer for one batch.
const WRITE_CHUNK: usize = 4 * 1024;
/// Time allowed to flush a final packet (DISCONNECT, refused CONNACK) before closing.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);
/// Deliveries queued (one per subscriber reached) and packets handled between two yields of
/// a connection's task: about a hundred microseconds of routing.
const YIELD_AFTER_WORK: u32 = 4096;
/// The keep-alive timer's period when the client asked for none.
const NO_KEEP_ALIVE: Duration = Duration::from_secs(86_400 * 365);
/// Deliveries taken from the session queue per lock.
const DRAIN_BATCH: usize = 64;

/// How a connection ended.
#[derive(Debug)]
enum Close {
    /// DISCONNECT from the client; `with_will` for MQTT 5.0 reason 0x04.
    ClientDisconnect { with_will: bool },
    /// The socket closed or failed.
    Gone,
    /// A malformed packet.
    Decode(DecodeError),
    /// A protocol violation with its MQTT 5.0 reason code.
    Violation(u8, &'static str),
    /// No packet within 1.5 times the keep alive.
    KeepAlive,
    /// Another connection took the session over.
    TakenOver {
        resumes: bool,
        moved: bool,
        done: oneshot::Sender<()>,
    },
    /// Closed by the broker with this reason code (e.g. queue overflow).
    Kicked(u8),
    /// The broker is shutting down.
    Shutdown,
    /// The node is draining: the client should use another server.
    Drained,
}

/// Where a connection comes from, as the listener saw it.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address (from the PROXY header when the listener expects one).
    pub peer: SocketAddr,
    /// The listener it arrived on.
    pub listener: ListenerKind,
    /// The identity from a verified client certificate, when `cert_identity` is set.
    pub cert_identity: Option<String>,
    /// The client presented a certificate that chains to the configured CA.
    pub cert_verified: bool,
    /// `peer` is where the bytes really come from (a TCP peer, or a PROXY header from our
    /// load balancer). A UDP source address (a CoAP device's) can be forged: failed logins
    /// and flapping are then counted against the client id, not against the address, so
    /// that forged datagrams cannot get a victim's address banned.
    pub address_verified: bool,
}

impl ConnInfo {
    /// A plain TCP connection from `peer`.
    pub fn tcp(peer: SocketAddr) -> ConnInfo {
        ConnInfo {
            peer,
            listener: ListenerKind::Mqtt,
            cert_identity: None,
            cert_verified: false,
            address_verified: true,
        }
    }
}

/// Serves one client over any byte stream.
pub async fn serve<S>(stream: S, info: ConnInfo, broker: Arc<Broker>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (reader, writer) = tokio::io::split(stream);
    serve_split(Reader(reader), writer, info, broker, ()).await;
}

/// Serves one client over separate read and write halves (a TCP socket's, without locking).
///
/// Not an `async fn`: the arguments of one stay in its future for the connection's whole
/// life, beside the copies its body moved on. Here they go into the boxed handshake at once,
/// and what lives on is only what an established connection uses.
///
/// `hold` is kept until the connection ends (the listener's permits).
pub fn serve_split<R, W, H>(
    reader: R,
    writer: W,
    info: ConnInfo,
    broker: Arc<Broker>,
    hold: H,
) -> impl Future<Output = ()> + Send + 'static
where
    R: Source + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
    H: Send + 'static,
{
    let span = info_span!("conn", peer = %info.peer, listener = %info.listener,
        node = %broker.config.node_id, client_id = field::Empty);
    // Boxed with the gauge: a pointer in the task instead of the listener's permits inline.
    let open = Box::new((Open::new(broker.clone()), hold));
    // The handshake is boxed: its future is large and short-lived, and inline it would size
    // every connection's task for its whole life. So is its span (see `Conn::span`).
    let handshake = Box::pin(handshake(reader, writer, info, broker, open).instrument(span));
    run(handshake)
}

/// Counts a connection in the `connections` gauge while it lives.
struct Open(Arc<Broker>);

impl Open {
    fn new(broker: Arc<Broker>) -> Open {
        broker.metrics.connections.fetch_add(1, Ordering::Relaxed);
        broker
            .metrics
            .connections_total
            .fetch_add(1, Ordering::Relaxed);
        Open(broker)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.metrics.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a finished handshake hands the connection: its state, its halves, the bytes read
/// past the CONNECT, the channel the broker reaches it on, and what it holds until it ends
/// (passed through the handshake so that the task keeps one slot for it, not two).
type Established<R, W, G> = (Conn, R, W, BytesMut, oneshot::Receiver<Control>, G);

async fn run<R, W, G>(
    handshake: std::pin::Pin<Box<impl Future<Output = Option<Established<R, W, G>>>>>,
) where
    R: Source,
    W: AsyncWrite + Unpin + Send,
{
    let Some((mut conn, mut reader, mut writer, mut rbuf, control, _open)) = handshake.await else {
        return;
    };
    // A span lives in the subscriber's registry with its fields formatted (about 400 bytes):
    // an established connection keeps one only while debug logging wants it on every line.
    // Its few events at info level make one when they log (`Conn::span`).
    let close = if tracing::enabled!(tracing::Level::DEBUG) {
        let span = conn.span();
        let serve = conn.serve(&mut reader, &mut writer, &mut rbuf, control);
        Box::pin(serve.instrument(span)).await
    } else {
        conn.serve(&mut reader, &mut writer, &mut rbuf, control)
            .await
    };
    // Boxed like the handshake, and logged in the connection's span.
    let span = conn.span();
    Box::pin(conn.finish(close, &mut writer).instrument(span)).await;
}

/// Reads and answers the CONNECT; `None` when the connection ends there.
async fn handshake<R, W, G>(
    mut reader: R,
    mut writer: W,
    info: ConnInfo,
    broker: Arc<Broker>,
    open: G,
) -> Option<Established<R, W, G>>
where
    R: Source,
    W: AsyncWrite + Unpin + Send,
{
    let (conn, rbuf, control) = accept_connect(&mut reader, &mut writer, info, broker).await?;
    Some((conn, reader, writer, rbuf, control, open))
}

/// Reads and answers the CONNECT over borrowed halves; `None` when the connection ends there.
async fn accept_connect<R, W>(
    reader: &mut R,
    writer: &mut W,
    info: ConnInfo,
    broker: Arc<Broker>,
) -> Option<(Conn, BytesMut, oneshot::Receiver<Control>)>
where
    R: Source,
    W: AsyncWrite + Unpin + Send,
{
    let max_packet = broker.config.max_packet_size as usize;
    let mut rbuf = BytesMut::new();
    let deadline = Duration::from_secs(broker.config.connect_timeout_secs);
    let first = tokio::select! {
        r = tokio::time::timeout(deadline, connect::read_connect(reader, &mut rbuf, max_packet)) => r,
        _ = broker.shutdown.cancelled() => return None,
    };
    let connect = match first {
        Err(_) => {
            broker
                .metrics
                .connect_timeouts_total
                .fetch_add(1, Ordering::Relaxed);
            broker.metrics.refused(RefuseReason::Timeout);
            debug!("no CONNECT within {}s", deadline.as_secs());
            return None;
        }
        Ok(Err(connect::HandshakeError::Decode {
            error: DecodeError::UnsupportedProtocol { level },
            ..
        })) => {
            // MQTT 3.1.1 [MQTT-3.1.2-2] / 5.0 [MQTT-3.1.2-2]: CONNACK 0x01 / 0x84, then close.
            let (protocol, code) = if level == 5 {
                (Protocol::V5, reason::UNSUPPORTED_PROTOCOL_VERSION)
            } else {
                (Protocol::V311, reason::v3::UNACCEPTABLE_PROTOCOL_VERSION)
            };
            broker.metrics.refused(RefuseReason::UnsupportedProtocol);
            info!(level, "refused CONNECT: unsupported protocol level");
            let packet = Packet::ConnAck(rookery_codec::ConnAck {
                code,
                ..Default::default()
            });
            send_and_close(writer, &packet, protocol).await;
            return None;
        }
        Ok(Err(e)) => {
            broker
                .metrics
                .protocol_errors_total
                .fetch_add(1, Ordering::Relaxed);
            broker.metrics.refused(RefuseReason::Malformed);
            info!(error = %e, "closing connection before CONNECT");
            // MQTT 5.0 section 3.1.4: a 5.0 client may be told why in a CONNACK; 3.1.1 has no
            // return code for a malformed CONNECT and just sees the connection close.
            if let connect::HandshakeError::Decode {
                error,
                level: Some(5),
            } = &e
            {
                let connack = rookery_codec::ConnAck {
                    code: error.reason_code(),
                    ..Default::default()
                };
                send_and_close(writer, &Packet::ConnAck(connack), Protocol::V5).await;
            }
            return None;
        }
        Ok(Ok(c)) => c,
    };
    let mut connect = connect;
    let protocol = connect.protocol;
    if !connect.client_id.is_empty() {
        tracing::Span::current().record("client_id", field::display(&connect.client_id));
    }
    if let Err(refusal) = connect::check(&broker, &connect) {
        refuse(&broker, writer, protocol, &refusal).await;
        return None;
    }
    let identity = match authenticate(&broker, &mut connect, &info).await {
        Ok(i) => i,
        Err(refusal) => {
            refuse(&broker, writer, protocol, &refusal).await;
            return None;
        }
    };
    if let Err(refusal) = connect::check_reserved(info.listener, &connect.client_id) {
        refuse(&broker, writer, protocol, &refusal).await;
        return None;
    }
    let assigned = connect.client_id.is_empty();
    if assigned {
        connect.client_id = ByteString::from(format!("auto-{:016x}", rand::random::<u64>()));
        tracing::Span::current().record("client_id", field::display(&connect.client_id));
    }
    if let Err(refusal) = admit(&broker, &connect, &info, assigned, &identity).await {
        refuse(&broker, writer, protocol, &refusal).await;
        return None;
    }
    // One message is all a connection ever needs: it closes on the first (takeover or kick).
    let (control_tx, control_rx) = oneshot::channel();
    let accepted = match connect::accept(
        &broker, &connect, assigned, &identity, info.peer, control_tx,
    )
    .await
    {
        Ok(a) => a,
        Err(refusal) => {
            refuse(&broker, writer, protocol, &refusal).await;
            return None;
        }
    };
    debug!(protocol = ?protocol, clean_start = connect.clean_start, keep_alive = accepted.keep_alive,
        session_present = accepted.connack.session_present,
        username = identity.username.as_deref().unwrap_or(""), "client connected");

    let props = &connect.properties;
    let out_window = if protocol.is_v5() {
        props
            .receive_maximum
            .unwrap_or(u16::MAX)
            .min(broker.config.max_inflight)
    } else {
        broker.config.max_inflight
    };
    broker.metrics.client_connected(info.listener, protocol);
    let mut conn = Conn {
        protocol,
        listener: info.listener,
        session: accepted.session,
        state: accepted.attachment.state,
        generation: accepted.attachment.generation,
        username: identity.username,
        acl_denials: 0,
        work: 0,
        keep_alive: accepted.keep_alive,
        expiry_secs: accepted.expiry_secs,
        will: connect
            .will
            .as_ref()
            .map(|w| Box::new(crate::message::compact_will(w))),
        out_window,
        client_max_packet: props.maximum_packet_size.unwrap_or(u32::MAX),
        alias_max: if protocol.is_v5() && broker.config.outgoing_topic_aliases {
            props.topic_alias_maximum.unwrap_or(0)
        } else {
            0
        },
        out_aliases: None,
        in_aliases: None,
        problem_info: props.request_problem_information != Some(0),
        wbuf: BytesMut::new(),
        counts: LocalCounts::default(),
        reported_inflight: 0,
        out_pending: true,
        resend_backlog: None,
        congested: None,
        deferred: None,
        held: None,
        rate: None,
        broker,
    };
    conn.persist_connect(accepted.attachment.session_present);
    conn.write_packet(&Packet::ConnAck(accepted.connack));
    conn.resend_inflight();
    // The CONNECT and an emptied read buffer share one allocation: keep neither while idle.
    drop(connect);
    if rbuf.is_empty() {
        rbuf = BytesMut::new();
    }
    Some((conn, rbuf, control_rx))
}

/// Longest a publisher is paused for a congested subscriber: past it, the queue's overflow
/// policy applies, so that one stuck subscriber cannot silence a publisher for good.
const BACKPRESSURE_MAX_PAUSE: Duration = Duration::from_secs(5);

/// Paused publishers resume when the congested queue is below half the depth that paused them:
/// the gap keeps them from waking for every message drained.
pub(crate) fn resume_below(broker: &Broker) -> usize {
    let c = &broker.config;
    c.backpressure_depth.min(c.max_queued_messages).div_ceil(2)
}

/// Waits until `session`'s queue is below `limit`, it goes offline, or the pause limit passes.
pub(crate) async fn wait_for_space(session: Option<&Arc<Session>>, limit: usize) {
    let Some(session) = session else {
        return std::future::pending().await;
    };
    let deadline = tokio::time::sleep(BACKPRESSURE_MAX_PAUSE);
    tokio::pin!(deadline);
    loop {
        let notified = session.space.notified();
        tokio::pin!(notified);
        // Registered before the check, so a drain in between is not missed.
        notified.as_mut().enable();
        if session.queued() < limit || !session.is_online() {
            return;
        }
        tokio::select! {
            _ = notified => {}
            _ = &mut deadline => return,
        }
    }
}

/// A wait that is rarely on, boxed and made only while it is: `tokio::select!` evaluates
/// the future of a disabled branch too (it just does not poll it), so a plain `Box::pin` would
/// allocate on every pass, and an inline future would size every connection's task.
struct Rare<F>(Option<std::pin::Pin<Box<F>>>);

impl<F: Future> Rare<F> {
    fn new(on: bool, make: impl FnOnce() -> F) -> Rare<F> {
        Rare(on.then(|| Box::pin(make())))
    }
}

impl<F: Future> Future for Rare<F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        match self.0.as_mut() {
            Some(f) => f.as_mut().poll(cx),
            // Off: its branch is disabled and never polls it.
            None => std::task::Poll::Pending,
        }
    }
}

/// Writes what `wbuf` holds (`Some(bytes written)`), or when it is empty flushes the writer
/// (`None`): one future, so one borrow of the writer in the connection's select. A poll
/// function, so that it takes a few bytes of every connection's task.
fn write_or_flush<'a, W: AsyncWrite + Unpin>(
    writer: &'a mut W,
    wbuf: &'a mut BytesMut,
) -> impl Future<Output = std::io::Result<Option<usize>>> + 'a {
    std::future::poll_fn(move |cx| {
        if wbuf.is_empty() {
            std::pin::Pin::new(&mut *writer)
                .poll_flush(cx)
                .map_ok(|()| None)
        } else {
            tokio_util::io::poll_write_buf(std::pin::Pin::new(&mut *writer), cx, wbuf).map_ok(Some)
        }
    })
}

/// Counts, logs and answers a refused CONNECT, then closes.
async fn refuse<W: AsyncWrite + Unpin>(
    broker: &Broker,
    writer: &mut W,
    protocol: Protocol,
    refusal: &connect::Refusal,
) {
    broker
        .metrics
        .refused(RefuseReason::from_code(refusal.code));
    info!(code = refusal.code, why = refusal.why, "refused CONNECT");
    if let Some(connack) = connect::refusal_connack(protocol, refusal) {
        send_and_close(writer, &Packet::ConnAck(connack), protocol).await;
    }
}

async fn send_and_close<W: AsyncWrite + Unpin>(
    writer: &mut W,
    packet: &Packet,
    protocol: Protocol,
) {
    let mut buf = BytesMut::new();
    rookery_codec::encode(packet, protocol, &mut buf);
    let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, async {
        writer.write_all(&buf).await?;
        writer.shutdown().await
    })
    .await;
}

/// A connected client.
pub(crate) struct Conn {
    broker: Arc<Broker>,
    protocol: Protocol,
    /// The listener it came in on (metrics).
    listener: ListenerKind,
    session: Arc<Session>,
    state: SessionState,
    generation: u64,
    /// The username ACLs apply to (from the password check or the certificate).
    username: Option<ByteString>,
    /// PUBLISH and SUBSCRIBE requests the ACL refused, for log rate limiting.
    acl_denials: u32,
    /// Routing work since the task last yielded (see [`YIELD_AFTER_WORK`]).
    work: u32,
    keep_alive: u16,
    expiry_secs: u32,
    /// Boxed: most connections have none, and inline it would take 216 bytes of each.
    will: Option<Box<LastWill>>,
    /// Most outgoing QoS 1/2 in flight.
    out_window: u16,
    /// The client's Maximum Packet Size.
    client_max_packet: u32,
    /// Topic aliases the client accepts from us.
    alias_max: u16,
    /// Boxed, and only once used: most connections never alias, and every idle byte counts.
    out_aliases: Option<Box<AHashMap<ByteString, u16>>>,
    /// Topic aliases the client set up towards us (boxed once used, as above).
    in_aliases: Option<Box<AHashMap<u16, ByteString>>>,
    /// MQTT 5.0 Request Problem Information: reason strings allowed.
    problem_info: bool,
    wbuf: BytesMut,
    counts: LocalCounts,
    /// The in-flight count last added to the broker-wide gauge.
    reported_inflight: u32,
    /// The session queue may hold deliveries we have not taken yet.
    out_pending: bool,
    /// Packet ids left in flight by the previous connection, not yet resent on this one
    /// (boxed while there are some: most connections resume nothing).
    #[expect(
        clippy::box_collection,
        reason = "one pointer in every connection instead of a VecDeque's four words"
    )]
    resend_backlog: Option<Box<VecDeque<u16>>>,
    /// A subscriber session whose queue this client's publishes pushed over its limit: reads
    /// pause until it drains (backpressure).
    congested: Option<Arc<Session>>,
    /// Writes waiting for a commit (`sync` durability); made on first use.
    deferred: Option<Box<durable::Deferred>>,
    /// Reads paused by a limit (publish rate, memory high-water mark) until this completes.
    /// Boxed, and only while held: the wait (a timer) would otherwise size every
    /// connection's task for its whole life; boxed once more so that the field is one
    /// pointer, not two.
    held: Option<Box<Hold>>,
    /// Publish rate buckets, made on the first PUBLISH while rate limits are on.
    rate: Option<Box<crate::limits::ClientRate>>,
}

/// The end of a pause imposed by a limit (besides backpressure and the store).
type Hold = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// A hold until `until` (a publish rate).
fn hold_until(until: tokio::time::Instant) -> Box<Hold> {
    Box::new(Box::pin(tokio::time::sleep_until(until)))
}

/// A hold until the memory gate opens (or a second passes).
fn hold_for_memory(broker: Arc<Broker>) -> Box<Hold> {
    Box::new(Box::pin(async move { broker.memory.wait_open().await }))
}

/// A hold until a peer's link queue drains (or the backpressure pause limit passes).
fn hold_for_link(queue: Arc<crate::cluster::LinkQueue>) -> Box<Hold> {
    Box::new(Box::pin(async move {
        queue.wait_drained(BACKPRESSURE_MAX_PAUSE).await
    }))
}

/// Waits until the hold ends (a poll function: a few bytes in every connection's task).
fn hold_ends(held: &mut Option<Box<Hold>>) -> impl Future<Output = ()> + '_ {
    std::future::poll_fn(move |cx| match held {
        Some(f) => (**f).as_mut().poll(cx),
        None => std::task::Poll::Pending,
    })
}

impl Conn {
    async fn serve<R, W>(
        &mut self,
        reader: &mut R,
        writer: &mut W,
        rbuf: &mut BytesMut,
        mut control: oneshot::Receiver<Control>,
    ) -> Close
    where
        R: Source,
        W: AsyncWrite + Unpin,
    {
        let mut last_read = Instant::now();
        let ka_timer = tokio::time::sleep(self.keep_alive_limit().unwrap_or(NO_KEEP_ALIVE));
        tokio::pin!(ka_timer);
        // A shutdown that began before this connection attached found no channel to tell it
        // on (see `Server::shutdown`).
        if self.broker.shutdown.is_cancelled() {
            return Close::Shutdown;
        }
        // Packets that arrived with the CONNECT.
        if let Err(close) = self.decode_all(rbuf) {
            return close;
        }
        // Bytes handed to the writer but perhaps held in its buffer (TLS records, WebSocket
        // frames): flushed once the write buffer is empty. A no-op on a TCP socket.
        let mut unflushed = false;
        loop {
            if self.out_pending && self.wbuf.len() < WRITE_HIGH_WATER {
                self.drain_queue();
            }
            if !self.wbuf.is_empty() {
                self.flush_counts();
            } else if self.wbuf.capacity() > 0 {
                // Hold no write buffer while idle.
                self.wbuf = BytesMut::new();
            }
            // Acknowledgements waiting for a slow store are bounded like in-flight messages:
            // past the Receive Maximum the publisher is not read until they are released.
            let can_read = self.wbuf.len() < WRITE_HIGH_WATER
                && self.congested.is_none()
                && self.held.is_none()
                && !self.deferred_full();
            let wait_queue = !self.out_pending;
            let deferring = self.has_deferred();
            let congested = self.congested.is_some();
            tokio::select! {
                biased;
                ctl = &mut control => match ctl {
                    Ok(Control::TakeOver { resumes, moved, done }) => return Close::TakenOver { resumes, moved, done },
                    Ok(Control::Kick(code)) => return Close::Kicked(code),
                    Ok(Control::Drain) => return Close::Drained,
                    Ok(Control::Shutdown) => return Close::Shutdown,
                    Err(_) => return Close::Kicked(reason::UNSPECIFIED_ERROR),
                },
                r = write_or_flush(writer, &mut self.wbuf), if !self.wbuf.is_empty() || unflushed => match r {
                    Ok(Some(0)) | Err(_) => return Close::Gone,
                    Ok(None) => unflushed = false,
                    Ok(Some(n)) => {
                        unflushed = true;
                        self.counts.bytes_out(n);
                        if !can_read {
                            // We are not reading (backpressure), so the client's PINGREQs wait
                            // in the socket: its reading our data is the sign of life instead.
                            last_read = Instant::now();
                        }
                    }
                },
                r = reader.read_into(rbuf), if can_read => {
                    match r {
                        Ok(0) | Err(_) => return Close::Gone,
                        Ok(n) => self.counts.bytes_in(n),
                    }
                    last_read = Instant::now();
                    if let Err(close) = self.decode_all(rbuf) {
                        return close;
                    }
                    // Once per read batch (a QoS 0 publisher may never be written to).
                    self.flush_counts();
                    if rbuf.is_empty() {
                        // Decoded packets hold slices of this buffer; let them own it, and
                        // keep no read buffer while the connection is idle.
                        *rbuf = BytesMut::new();
                    }
                    // A publisher whose socket is always readable would otherwise never give
                    // its thread back: its subscribers, on the same thread, would starve.
                    if self.work >= YIELD_AFTER_WORK {
                        self.work = 0;
                        tokio::task::yield_now().await;
                    }
                },
                _ = self.session.wake.notified(), if wait_queue => self.out_pending = true,
                // The rare waits are boxed, and made only while they are on: inline, each
                // would size every connection's task for its whole life.
                _ = Rare::new(deferring, || durable::committed_changed(self.deferred.as_mut())), if deferring => {
                    let was_full = self.deferred_full();
                    self.release_deferred();
                    if was_full && !self.deferred_full() {
                        // Packets left in the buffer while the window was full.
                        if let Err(close) = self.decode_all(rbuf) {
                            return close;
                        }
                    }
                },
                _ = Rare::new(congested, || wait_for_space(self.congested.as_ref(), resume_below(&self.broker))), if congested => {
                    self.congested = None;
                    // The client was not ignoring us: we were not reading.
                    last_read = Instant::now();
                    if let Err(close) = self.decode_all(rbuf) {
                        return close;
                    }
                },
                _ = hold_ends(&mut self.held), if self.held.is_some() => {
                    self.held = None;
                    last_read = Instant::now();
                    if let Err(close) = self.decode_all(rbuf) {
                        return close;
                    }
                },
                _ = &mut ka_timer => {
                    let Some(limit) = self.keep_alive_limit() else {
                        ka_timer.as_mut().reset(tokio::time::Instant::now() + NO_KEEP_ALIVE);
                        continue;
                    };
                    if self.congested.is_some() || self.held.is_some() || self.deferred_full() {
                        // Paused by backpressure: we are the ones not reading.
                        last_read = Instant::now();
                    }
                    let idle = last_read.elapsed();
                    if idle >= limit {
                        return Close::KeepAlive;
                    }
                    ka_timer.as_mut().reset(tokio::time::Instant::now() + (limit - idle));
                },
            }
        }
    }

    fn decode_all(&mut self, rbuf: &mut BytesMut) -> Result<(), Close> {
        let max = self.broker.config.max_packet_size as usize;
        loop {
            match rookery_codec::decode(rbuf, self.protocol, max) {
                Ok(Some(packet)) => {
                    self.handle(packet)?;
                    if self.congested.is_some() || self.held.is_some() || self.deferred_full() {
                        // Leave the rest in the buffer until the congested queue drains or
                        // the store catches up.
                        return Ok(());
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(Close::Decode(e)),
            }
        }
    }

    /// Ends the connection: final DISCONNECT, will, session hand-back, timers.
    async fn finish<W: AsyncWrite + Unpin>(mut self, close: Close, writer: &mut W) {
        let broker = self.broker.clone();
        let server_reason = match &close {
            Close::Decode(e) => {
                broker
                    .metrics
                    .protocol_errors_total
                    .fetch_add(1, Ordering::Relaxed);
                info!(error = %e, "closing connection: malformed packet");
                Some(e.reason_code())
            }
            Close::Violation(code, why) => {
                broker
                    .metrics
                    .protocol_errors_total
                    .fetch_add(1, Ordering::Relaxed);
                info!(code, why, "closing connection: protocol error");
                Some(*code)
            }
            Close::KeepAlive => {
                broker
                    .metrics
                    .keepalive_timeouts_total
                    .fetch_add(1, Ordering::Relaxed);
                info!(
                    keep_alive = self.keep_alive,
                    "closing connection: keep alive timeout"
                );
                Some(reason::KEEP_ALIVE_TIMEOUT)
            }
            Close::TakenOver { .. } => Some(reason::SESSION_TAKEN_OVER),
            Close::Kicked(code) => {
                info!(code, "closing connection");
                Some(*code)
            }
            Close::Shutdown => Some(reason::SERVER_SHUTTING_DOWN),
            Close::Drained => Some(crate::drain::disconnect_reason(&broker)),
            Close::ClientDisconnect { .. } => {
                debug!("client disconnected");
                None
            }
            Close::Gone => {
                debug!("connection lost");
                None
            }
        };
        if let Some(code) = server_reason
            && self.protocol.is_v5()
        {
            let mut disconnect = Disconnect {
                reason: code,
                ..Default::default()
            };
            if code == reason::USE_ANOTHER_SERVER {
                disconnect.properties.server_reference =
                    broker.config.server_reference.as_deref().map(Into::into);
            }
            self.write_packet(&Packet::Disconnect(disconnect));
        }
        if !matches!(close, Close::Gone) {
            // Also when nothing is left to write: TLS and WebSocket writers may still hold
            // bytes, and their shutdown sends a close_notify or a close frame.
            let wbuf = &self.wbuf;
            let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, async {
                writer.write_all(wbuf).await?;
                writer.shutdown().await
            })
            .await;
        }
        self.counts.flush(&broker.metrics);
        broker.metrics.client_gone(self.listener, self.protocol);
        // Its in-flight messages are parked with the session now.
        broker
            .metrics
            .inflight
            .fetch_sub(i64::from(self.reported_inflight), Ordering::Relaxed);

        // The will: published unless the client said a normal DISCONNECT. MQTT 5.0 section 3.1.2.5.
        let will = self.will.take().map(|w| *w);
        let will_delay = will
            .as_ref()
            .and_then(|w| w.properties.will_delay_interval)
            .unwrap_or(0);
        let mut publish_now = None;
        let mut pending = None;
        match &close {
            // A client closed because its user was deleted speaks for nobody any more.
            Close::ClientDisconnect { with_will: false }
            | Close::Kicked(reason::NOT_AUTHORIZED) => {}
            Close::Shutdown | Close::Drained => {
                // Not published now (decision 0003), but a stored session keeps it: after the
                // restart it follows the usual rules (its delay, unless the client returns).
                if self.expiry_secs > 0 && broker.persist.is_some() {
                    pending = will.map(|will| PendingWill {
                        will,
                        generation: self.generation,
                    });
                }
            }
            // The session went on on another node, its will with it.
            Close::TakenOver { moved: true, .. } => {}
            Close::TakenOver { resumes, .. } => {
                // The newcomer resuming before the delay passed cancels the will.
                if !(*resumes && will_delay > 0 && self.expiry_secs > 0) {
                    publish_now = will;
                }
            }
            _ => {
                if will_delay == 0 || self.expiry_secs == 0 {
                    publish_now = will;
                } else {
                    pending = will.map(|will| PendingWill {
                        will,
                        generation: self.generation,
                    });
                }
            }
        }
        let state = std::mem::take(&mut self.state);
        let queue_qos0 = broker.config.queue_qos0_offline;
        let detached = self
            .session
            .detach(self.generation, state, pending, queue_qos0);
        if detached && self.expiry_secs > 0 {
            // The stored record learns when the connection ended and which will still waits.
            broker.store_parked_session(&self.session);
        }
        if let Some(will) = &publish_now {
            broker.publish_will(
                will,
                self.session.id,
                &self.session.client_id,
                self.username.as_deref(),
            );
        }
        match close {
            Close::TakenOver { done, .. } => {
                let _ = done.send(());
            }
            Close::Shutdown => {}
            _ if detached => {
                if self.expiry_secs == 0 {
                    broker.end_session(&self.session, self.generation);
                } else {
                    // A drained client is reconnecting elsewhere: its will waits with the
                    // stored session rather than firing here while the node winds down.
                    let delay =
                        (will_delay > 0 && !matches!(close, Close::Drained)).then_some(will_delay);
                    broker.schedule_after_disconnect(
                        self.session.clone(),
                        self.generation,
                        delay,
                        self.expiry_secs,
                    );
                }
            }
            _ => {}
        }
    }

    /// Adds this connection's counts to the broker's, with the change in its in-flight count.
    fn flush_counts(&mut self) {
        self.counts.flush(&self.broker.metrics);
        let now = u32::try_from(self.state.outgoing.len()).unwrap_or(u32::MAX);
        if now != self.reported_inflight {
            let delta = i64::from(now) - i64::from(self.reported_inflight);
            self.broker
                .metrics
                .inflight
                .fetch_add(delta, Ordering::Relaxed);
            self.reported_inflight = now;
        }
    }

    /// Appends a packet to the write buffer.
    fn write_packet(&mut self, packet: &Packet) {
        self.ensure_wbuf();
        rookery_codec::encode(packet, self.protocol, &mut self.wbuf);
    }

    /// Gives an empty write buffer room for a batch at once rather than growing it packet by
    /// packet (it is released again when it drains).
    fn ensure_wbuf(&mut self) {
        if self.wbuf.capacity() == 0 {
            self.wbuf.reserve(WRITE_CHUNK);
        }
    }

    /// The connection's span, made afresh: an established connection keeps none while idle
    /// (unless debug logging is on), so its logs at info level enter this one.
    fn span(&self) -> tracing::Span {
        // The address is kept once, with the session's attachment.
        let peer = self.session.attached_peer();
        info_span!("conn", peer = field::display(peer.map_or_else(String::new, |p| p.to_string())),
            listener = %self.listener, node = %self.broker.config.node_id,
            client_id = %self.session.client_id)
    }

    /// Most outgoing QoS 1/2 messages in flight at once.
    fn window(&self) -> usize {
        usize::from(self.out_window)
    }

    /// The client's Maximum Packet Size, in bytes.
    fn max_packet_to_client(&self) -> usize {
        usize::try_from(self.client_max_packet).unwrap_or(usize::MAX)
    }

    /// MQTT 5.0 [MQTT-3.1.2-22]: one and a half times the keep alive, if the client set one.
    fn keep_alive_limit(&self) -> Option<Duration> {
        (self.keep_alive > 0).then(|| Duration::from_millis(u64::from(self.keep_alive) * 1500))
    }

    /// The connection's span for an event, unless the task already runs in it.
    fn log_span(&self) -> tracing::Span {
        if tracing::Span::current().is_none() {
            self.span()
        } else {
            tracing::Span::none()
        }
    }

    /// A reason string, when the client allows them. MQTT 5.0 [MQTT-3.1.2-29].
    fn reason_string(&self, text: &'static str) -> Option<ByteString> {
        (self.protocol.is_v5() && self.problem_info).then(|| ByteString::from_static(text))
    }
}
