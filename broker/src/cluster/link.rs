//! The links: the accept loop on `cluster_listen`, one dial loop per configured peer, and the
//! task that runs one link (handshake, heartbeats, a bounded send queue written in batches).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::acks;
use super::frame::{self, Frame, Hello};
use super::restart;
use super::{Cluster, LinkQueue, PeerLink, Registered};
use crate::broker::Broker;
use crate::connection::{resume_below, wait_for_space};
use crate::session::Session;

/// Time between heartbeats on a quiet link.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// Silence after which a peer counts as gone and its link is closed.
pub const DEAD_AFTER: Duration = Duration::from_millis(3_500);
/// A write that took this long waited for the peer to read (see `serve`).
const WRITE_PROVES_LIFE: Duration = Duration::from_millis(50);
/// Time allowed for the peer's Hello.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a node waits for a peer with a smaller id to dial it before dialing itself.
pub const PEER_DIALS_GRACE: Duration = Duration::from_secs(3);
/// Dial backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Why a link ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Socket error or the peer closed.
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    /// Bytes that are not frames.
    #[error("{0}")]
    Frame(#[from] frame::FrameError),
    /// No Hello in time, or something else first.
    #[error("handshake: {0}")]
    Handshake(&'static str),
    /// The peer belongs to another cluster.
    #[error("peer {node} is in cluster {theirs:?}, not {ours:?}")]
    OtherCluster {
        /// The peer's node id.
        node: String,
        /// Its cluster.
        theirs: String,
        /// Ours.
        ours: String,
    },
    /// We dialed ourselves (our own address is in the shared peer list).
    #[error("this is our own address")]
    SelfLink,
    /// The peer's id is smaller: it dials us (one link per pair, never replaced while up).
    #[error("the peer dials this node")]
    PeerDials,
    /// Nothing heard for [`DEAD_AFTER`].
    #[error("peer silent for {0:?}")]
    Silent(Duration),
}

/// A link's byte stream: TCP, or TLS over it.
pub trait LinkIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> LinkIo for T {}
type Stream = Box<dyn LinkIo>;

/// Mutual TLS on links: the acceptor for links dialed to us (client certificates required,
/// from the cluster CA) and the connector for ours.
pub struct LinkTls {
    /// Accepts links (the node's certificate; client certificates checked).
    pub acceptor: Arc<crate::listener::tls::ReloadingTls>,
    /// Dials links (the same certificate as client; the cluster CA as the only root).
    pub connector: arc_swap::ArcSwap<tokio_rustls::TlsConnector>,
    /// The certificate, key and CA files, read again by [`LinkTls::reload`].
    pub files: (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf),
    /// The name every peer's certificate must carry; `None`: the host it was dialed at.
    pub server_name: Option<String>,
}

impl LinkTls {
    /// Reads the files again; new links use them (those up stay as they are). `Ok(false)`
    /// when nothing changed; on an error the files in force stay.
    pub fn reload(&self) -> Result<bool, crate::listener::tls::TlsError> {
        let (cert, key, ca) = &self.files;
        // Both or neither: the connector is built first, so that a bad file changes nothing.
        let connector = crate::listener::tls::client_connector(cert, key, ca)?;
        if !self.acceptor.reload()? {
            return Ok(false);
        }
        self.connector.store(Arc::new(connector));
        Ok(true)
    }
}

/// Accepts links until `shutdown`.
pub async fn listen(
    broker: Arc<Broker>,
    cluster: Arc<Cluster>,
    listener: TcpListener,
    tls: Option<Arc<LinkTls>>,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, from) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    warn!(error = %e, "cluster listener: accept failed");
                    tokio::time::sleep(BACKOFF_MIN).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let (broker, cluster, shutdown) = (broker.clone(), cluster.clone(), shutdown.clone());
        let tls = tls.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let stream: Stream = match tls {
                None => Box::new(stream),
                Some(tls) => {
                    let accept = tls.acceptor.acceptor().accept(stream);
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
                        Ok(Ok(s)) => Box::new(s),
                        Ok(Err(e)) => {
                            warn!(%from, error = %e, "cluster link refused: TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    }
                }
            };
            if let Err(e) = run(&broker, &cluster, stream, None, false, &shutdown).await {
                debug!(%from, error = %e, "inbound cluster link ended");
            }
        });
    }
}

/// Keeps a link to `addr` up until `shutdown`: dials, runs the link, and dials again with
/// backoff when it ends. Stops for good when `addr` turns out to be this node.
///
/// Of two nodes, the one with the smaller id dials: the other hangs up after the handshake
/// and waits, so a pair has one link and a link carrying messages is never replaced by a
/// second one (its queued messages would go with it). If the smaller node does not dial
/// within [`PEER_DIALS_GRACE`] (its peer list lacks this node), this node keeps its own link.
pub async fn dial(
    broker: Arc<Broker>,
    cluster: Arc<Cluster>,
    addr: String,
    tls: Option<Arc<LinkTls>>,
    shutdown: CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    let mut waiting_since: Option<tokio::time::Instant> = None;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        // Linked (whoever dialed): nothing to do while the link is up.
        if let Some(id) = cluster.node_at(&addr)
            && cluster.is_up(&id)
        {
            waiting_since = None;
            tokio::select! {
                _ = tokio::time::sleep(HEARTBEAT / 4) => continue,
                _ = shutdown.cancelled() => return,
            }
        }
        let insist = waiting_since.is_some_and(|t| t.elapsed() >= PEER_DIALS_GRACE);
        // Resolved on every attempt: in Kubernetes a restarted peer comes back on a new IP.
        let connected =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, connect(&addr, tls.as_deref())).await;
        match connected {
            Ok(Ok(stream)) => {
                match run(
                    &broker,
                    &cluster,
                    stream,
                    Some(addr.clone()),
                    insist,
                    &shutdown,
                )
                .await
                {
                    Err(LinkError::SelfLink) => {
                        debug!(%addr, "cluster peer address is this node: not dialed again");
                        return;
                    }
                    Err(LinkError::PeerDials) => {
                        waiting_since.get_or_insert_with(tokio::time::Instant::now);
                        tokio::select! {
                            _ = tokio::time::sleep(HEARTBEAT / 4) => continue,
                            _ = shutdown.cancelled() => return,
                        }
                    }
                    Err(LinkError::OtherCluster { .. }) | Err(LinkError::Handshake(_)) => {
                        cluster.note_unreachable(&addr);
                        backoff = BACKOFF_MAX;
                    }
                    Ok(()) => backoff = BACKOFF_MIN,
                    Err(e) => {
                        debug!(%addr, error = %e, "cluster link ended");
                        cluster.note_unreachable(&addr);
                        backoff = BACKOFF_MIN;
                    }
                }
            }
            Ok(Err(e)) => {
                debug!(%addr, error = %e, "cannot reach cluster peer");
                cluster.note_unreachable(&addr);
            }
            Err(_) => {
                debug!(%addr, "cluster peer did not answer in time");
                cluster.note_unreachable(&addr);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Connects to a peer, with TLS when configured (the peer's certificate must name the host
/// part of `addr`, or `cluster_server_name` when set).
async fn connect(addr: &str, tls: Option<&LinkTls>) -> io::Result<Stream> {
    let tcp = TcpStream::connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    let Some(tls) = tls else {
        return Ok(Box::new(tcp));
    };
    let host = match &tls.server_name {
        Some(name) => name.as_str(),
        None => {
            let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
            host.trim_start_matches('[').trim_end_matches(']')
        }
    };
    let name = rustls_pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    Ok(Box::new(tls.connector.load().connect(name, tcp).await?))
}

/// Runs one link: handshake, registration, then frames both ways until it ends.
async fn run(
    broker: &Arc<Broker>,
    cluster: &Arc<Cluster>,
    stream: Stream,
    dialed: Option<String>,
    insist: bool,
    shutdown: &CancellationToken,
) -> Result<(), LinkError> {
    // After a cut from the majority, sessions adopted elsewhere meanwhile go before our
    // routes are announced to anyone (within the peer's handshake timeout).
    broker.recheck_owners_if_suspect().await;
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut out = BytesMut::new();
    frame::encode(
        &Frame::Hello(Hello {
            cluster: cluster.name.clone(),
            node_id: cluster.node_id.clone(),
            epoch: cluster.epoch,
            insist,
            protocol: frame::LEVEL,
        }),
        &mut out,
    );
    writer.write_all(&out).await?;
    out.clear();
    let mut buf = BytesMut::with_capacity(4096);
    let hello = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        loop {
            if let Some(f) = frame::decode(&mut buf)? {
                return match f {
                    Frame::Hello(h) => Ok(h),
                    _ => Err(LinkError::Handshake("a frame before Hello")),
                };
            }
            if reader.read_buf(&mut buf).await? == 0 {
                return Err(LinkError::Handshake("closed before Hello"));
            }
        }
    })
    .await
    .map_err(|_| LinkError::Handshake("no Hello in time"))??;
    if hello.node_id == cluster.node_id {
        if let Some(addr) = &dialed {
            cluster.note_seen(addr, &hello.node_id);
        }
        return Err(LinkError::SelfLink);
    }
    if hello.cluster != cluster.name {
        let e = LinkError::OtherCluster {
            node: hello.node_id,
            theirs: hello.cluster,
            ours: cluster.name.clone(),
        };
        warn!(error = %e, "cluster link refused");
        return Err(e);
    }
    if let Some(addr) = &dialed {
        cluster.note_seen(addr, &hello.node_id);
        if hello.node_id < cluster.node_id && !insist {
            return Err(LinkError::PeerDials);
        }
    } else if hello.node_id > cluster.node_id && !hello.insist {
        // The dialer has the larger id: it hangs up now and waits for us to dial it.
        return Err(LinkError::PeerDials);
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let queued = Arc::new(LinkQueue::default());
    let close = CancellationToken::new();
    let link_id = cluster.next_link_id();
    let peer = hello.node_id.clone();
    let level = hello.protocol.min(frame::LEVEL);
    let link = PeerLink {
        link_id,
        epoch: hello.epoch,
        level,
        dialer: if dialed.is_some() {
            cluster.node_id.clone()
        } else {
            peer.clone()
        },
        dialed,
        tx: tx.clone(),
        queued: queued.clone(),
        close: close.clone(),
        ledger: None,
    };
    if cluster.register(&peer, link) == Registered::Duplicate {
        debug!(peer, "second link to a linked peer closed");
        return Ok(());
    }
    // What the peer's clients set or cleared as retained while it was not linked.
    broker.refresh_retained();
    if level >= restart::RESTART_LEVEL {
        // How far our previous life committed its frames: it sends the rest for the sessions
        // we restored (`restart.rs`).
        let mark = cluster.previous_mark(&peer);
        let _ = tx.send(Frame::Restarted { mark });
        // And its previous life's, if it restarted, waits for its word.
        broker.watch_orphan(&peer);
    }
    {
        // Our routes, queued under the router's lock: every change after this snapshot is
        // queued after it, every change before it is in it.
        let router = broker.router.read();
        let _ = tx.send(Frame::Routes(router.announced()));
    }
    let claims: Vec<(String, u64)> = broker
        .sessions
        .all()
        .into_iter()
        .filter(|s| s.is_attached())
        .map(|s| (s.client_id.to_string(), s.claimed()))
        .collect();
    if !claims.is_empty() {
        let _ = tx.send(Frame::Claims(claims));
    }
    info!(peer, epoch = hello.epoch, level, "cluster link up");
    if crate::persist::ids::node_tag(&peer) == crate::persist::ids::node_tag(&cluster.node_id) {
        // Store ids carry a 10-bit tag of the node: two nodes with one tag sharing a
        // PostgreSQL could make the same id.
        warn!(peer, node = %cluster.node_id,
            "these node ids share a store-id tag: name nodes NAME-0, NAME-1, ... (a StatefulSet does)");
    }
    let acks = (level >= acks::ACK_LEVEL).then(|| Acks {
        ledger: cluster.ledger(&peer),
        reading: acks::Reading::new(cluster.handled(&peer, hello.epoch)),
        peer_epoch: hello.epoch,
    });
    let mut ends = Ends {
        reader: &mut reader,
        writer: &mut writer,
        buf: &mut buf,
        rx: &mut rx,
        queued: &queued,
        acks,
    };
    let ended = serve(broker, cluster, &peer, &mut ends, &close, shutdown).await;
    let kept = cluster.unregister(&peer, link_id);
    close.cancel();
    if !shutdown.is_cancelled() {
        broker.peer_down(&peer, link_id, kept);
    }
    match &ended {
        Ok(()) => info!(peer, "cluster link closed"),
        Err(e) => warn!(peer, error = %e, "cluster link down"),
    }
    ended
}

/// A link's socket halves and queue.
struct Ends<'a> {
    reader: &'a mut ReadHalf<Stream>,
    writer: &'a mut WriteHalf<Stream>,
    buf: &'a mut BytesMut,
    rx: &'a mut mpsc::UnboundedReceiver<Frame>,
    queued: &'a LinkQueue,
    /// Forward acknowledgements, on a link of level 5.
    acks: Option<Acks>,
}

/// A level-5 link's acknowledgements: of what we forwarded (the peer's ledger) and of what
/// the peer forwarded (our reading of it).
struct Acks {
    ledger: Option<Arc<acks::Ledger>>,
    reading: acks::Reading,
    /// The peer's boot epoch (its forward marks name it).
    peer_epoch: u64,
}

/// What a read pass did.
#[derive(Default)]
struct Pass {
    /// A session a forwarded message pushed over its queue limit (the link waits for it).
    congested: Option<Arc<Session>>,
    /// The highest commit ticket the forwarded messages made.
    ticket: u64,
}

/// Queues `f` in `out`, counting a forwarded message off the peer's budget.
fn take(f: &Frame, out: &mut BytesMut, queued: &LinkQueue) {
    if f.is_forwarded() {
        queued.taken();
    }
    frame::encode(f, out);
}

/// Frames both ways until the link is closed, fails, or falls silent.
async fn serve(
    broker: &Arc<Broker>,
    cluster: &Arc<Cluster>,
    peer: &str,
    ends: &mut Ends<'_>,
    close: &CancellationToken,
    shutdown: &CancellationToken,
) -> Result<(), LinkError> {
    let Ends {
        reader,
        writer,
        buf,
        rx,
        queued,
        acks,
    } = ends;
    let mut out = BytesMut::new();
    // A session this link's messages pushed over its queue limit: the link is not read until
    // it drains, so TCP pushes back on the peer, whose publishers then pause.
    let mut congested: Option<Arc<Session>>;
    let mut beat = tokio::time::interval(HEARTBEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let dead = tokio::time::sleep(DEAD_AFTER);
    tokio::pin!(dead);
    // In `sync` durability an acknowledgement waits for the commits of what it covers.
    let mut committed = broker
        .persist
        .as_ref()
        .filter(|p| p.is_sync() && acks.is_some())
        .map(|p| p.committer().watch());
    // Frames that came with the peer's Hello (its route snapshot, often) are handled now, not
    // at the next read.
    let pass = handle_frames(broker, cluster, peer, buf, acks.as_mut())?;
    congested = pass.congested;
    acknowledge(acks.as_mut(), pass.ticket, committed.as_ref(), &mut out);
    loop {
        if !out.is_empty() {
            writer.write_all(&out).await?;
            out.clear();
        }
        let owed = acks.as_ref().and_then(|a| a.reading.waiting_for());
        tokio::select! {
            _ = close.cancelled() => return Ok(()),
            _ = shutdown.cancelled() => return Ok(()),
            _ = &mut dead, if congested.is_none() => return Err(LinkError::Silent(DEAD_AFTER)),
            _ = beat.tick() => frame::encode(&Frame::Heartbeat, &mut out),
            f = rx.recv() => {
                let Some(f) = f else { return Ok(()) };
                // Everything queued goes out in one write.
                take(&f, &mut out, queued);
                while out.len() < 1 << 20 && let Ok(f) = rx.try_recv() {
                    take(&f, &mut out, queued);
                }
                let started = tokio::time::Instant::now();
                writer.write_all(&out).await?;
                out.clear();
                // A write that had to wait ended because the peer read: it is alive, even if
                // its heartbeats wait unread behind the write. (A write that went straight
                // into the socket buffer proves nothing: a vanished peer takes those too.)
                if started.elapsed() >= WRITE_PROVES_LIFE {
                    dead.as_mut().reset(tokio::time::Instant::now() + DEAD_AFTER);
                }
            }
            r = wait_committed(committed.as_mut(), owed), if owed.is_some() => {
                if let (Some(acks), Some(now)) = (acks.as_mut(), r)
                    && let Some(upto) = acks.reading.committed(now)
                {
                    frame::encode(&Frame::ForwardAck { upto }, &mut out);
                }
            }
            _ = wait_for_space(congested.as_ref(), resume_below(broker)), if congested.is_some() => {
                // We were the ones not reading: the peer is not silent.
                dead.as_mut().reset(tokio::time::Instant::now() + DEAD_AFTER);
                let pass = handle_frames(broker, cluster, peer, buf, acks.as_mut())?;
                congested = pass.congested;
                acknowledge(acks.as_mut(), pass.ticket, committed.as_ref(), &mut out);
            }
            r = reader.read_buf(buf), if congested.is_none() => {
                if r? == 0 {
                    return Err(LinkError::Io(io::ErrorKind::UnexpectedEof.into()));
                }
                dead.as_mut().reset(tokio::time::Instant::now() + DEAD_AFTER);
                let pass = handle_frames(broker, cluster, peer, buf, acks.as_mut())?;
                congested = pass.congested;
                acknowledge(acks.as_mut(), pass.ticket, committed.as_ref(), &mut out);
            }
        }
    }
}

/// After a read pass: the `ForwardAck` it earns, into `out` (now, or once its commits land).
fn acknowledge(
    acks: Option<&mut Acks>,
    ticket: u64,
    committed: Option<&tokio::sync::watch::Receiver<u64>>,
    out: &mut BytesMut,
) {
    let Some(acks) = acks else { return };
    // Without `sync` durability nothing waits for a commit.
    let (ticket, now) = match committed {
        Some(c) => (ticket, *c.borrow()),
        None => (0, 0),
    };
    if let Some(upto) = acks.reading.after_pass(ticket, now) {
        frame::encode(&Frame::ForwardAck { upto }, out);
    }
}

/// Waits until the committer reaches `ticket`; returns the ticket committed then. `None` when
/// the committer stopped (nothing more will commit).
async fn wait_committed(
    committed: Option<&mut tokio::sync::watch::Receiver<u64>>,
    ticket: Option<u64>,
) -> Option<u64> {
    let (Some(committed), Some(ticket)) = (committed, ticket) else {
        return std::future::pending().await;
    };
    let reached = committed.wait_for(|t| *t >= ticket).await.map(|t| *t);
    match reached {
        Ok(t) => Some(t),
        Err(_) => std::future::pending().await,
    }
}

/// Handles every whole frame in `buf`, stopping after a forwarded message that pushed a
/// session over its queue limit (the caller waits for it before reading on).
fn handle_frames(
    broker: &Arc<Broker>,
    cluster: &Arc<Cluster>,
    peer: &str,
    buf: &mut BytesMut,
    mut acks: Option<&mut Acks>,
) -> Result<Pass, LinkError> {
    let mut pass = Pass::default();
    while let Some(f) = frame::decode(buf)? {
        match f {
            Frame::Heartbeat => {}
            Frame::Hello(_) => return Err(LinkError::Handshake("a second Hello")),
            Frame::Routes(filters) => {
                debug!(peer, routes = filters.len(), "routes from peer");
                cluster.remote.write().replace(peer, &filters);
                broker.recheck_fences();
            }
            Frame::RouteAdd(filter) => {
                cluster.remote.write().add(peer, &filter);
                broker.recheck_fences();
            }
            Frame::RouteRemove(filter) => cluster.remote.write().remove(peer, &filter),
            Frame::Claim { client_id, at_ms } => broker.remote_claim(peer, &client_id, at_ms),
            Frame::Claims(claims) => broker.remote_claims(peer, claims),
            Frame::HandoverAsk { client_id, at_ms } => {
                // Waits for the connection to hand the session back: off the link's loop.
                let (broker, peer) = (broker.clone(), peer.to_owned());
                tokio::spawn(async move {
                    broker.give_session(&peer, &client_id, at_ms).await;
                });
            }
            Frame::HandoverPart {
                client_id,
                at_ms,
                entries,
            } => cluster.asks.part(peer, &client_id, at_ms, entries),
            Frame::HandoverReply {
                client_id,
                at_ms,
                mut transfer,
            } => {
                cluster
                    .asks
                    .join_parts(peer, &client_id, at_ms, &mut transfer);
                if let Some(late) = cluster.asks.answer(peer, &client_id, at_ms, transfer) {
                    broker.install_late(peer, at_ms, *late);
                }
            }
            Frame::HandoverInstalled { client_id } => broker.finish_relay(peer, &client_id),
            Frame::Draining => cluster.note_draining(peer),
            f @ (Frame::Deliver { .. } | Frame::DeliverInGroup { .. }) => broker.deliver_relayed(f),
            Frame::RouteFence { id, node, filters } => broker.route_fence(peer, id, node, filters),
            Frame::RouteFenceAck { id } => cluster.moves.fence_ack(peer, id),
            Frame::HandoverFinished { client_id } => broker.relay_finished(&client_id),
            Frame::ForwardAck { upto } => {
                if let Some(ledger) = acks.as_ref().and_then(|a| a.ledger.as_ref()) {
                    ledger.ack(upto);
                }
            }
            Frame::ForwardResume { from } => {
                if let Some(acks) = acks.as_mut() {
                    acks.reading.resume(from);
                }
            }
            Frame::Adopted { departed } => cluster.note_adopted(peer, &departed),
            Frame::Resumed { departed } => broker.resend_for_resumed(departed, Some(peer.into())),
            Frame::Restarted { mark } => broker.resend_to_restarted(peer, mark),
            f @ (Frame::Publish { .. } | Frame::PublishAdopted { .. }) => {
                // Sent again after a reconnection and handled already: skipped.
                if let Some(acks) = acks.as_mut()
                    && !acks.reading.arrived()
                {
                    continue;
                }
                let (session, ticket) = match f {
                    Frame::Publish {
                        id,
                        message,
                        groups,
                    } => broker.route_forwarded(id, message, &groups),
                    Frame::PublishAdopted {
                        departed,
                        id,
                        message,
                        groups,
                    } => broker.route_adopted(&departed, id, message, &groups),
                    _ => (None, None),
                };
                pass.ticket = pass.ticket.max(ticket.unwrap_or(0));
                if session.is_some() {
                    pass.congested = session;
                    return Ok(mark(broker, peer, acks, pass));
                }
            }
        }
    }
    Ok(mark(broker, peer, acks, pass))
}

/// After a read pass that wrote to the store: records how far this node has handled the
/// peer's forwarded messages, in the same commit as what they wrote or a later one, so that
/// if this node dies the peer sends its adopters only what was not committed (`reroute.rs`).
fn mark(broker: &Broker, peer: &str, acks: Option<&mut Acks>, mut pass: Pass) -> Pass {
    if pass.ticket == 0 {
        return pass;
    }
    let Some(acks) = acks else { return pass };
    if let Some(ticket) = broker.write_forward_mark(peer, acks.peer_epoch, acks.reading.position) {
        pass.ticket = pass.ticket.max(ticket);
    }
    pass
}
