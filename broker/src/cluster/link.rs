//! The links: the accept loop on `cluster_listen`, one dial loop per configured peer, and the
//! task that runs one link (handshake, heartbeats, a bounded send queue written in batches).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use std::sync::atomic::{AtomicUsize, Ordering};

use super::frame::{self, Frame, Hello};
use super::{Cluster, PeerLink, Registered};
use crate::broker::Broker;

/// Time between heartbeats on a quiet link.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// Silence after which a peer counts as gone and its link is closed.
pub const DEAD_AFTER: Duration = Duration::from_millis(3_500);
/// Time allowed for the peer's Hello.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
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
    /// Nothing heard for [`DEAD_AFTER`].
    #[error("peer silent for {0:?}")]
    Silent(Duration),
}

/// Accepts links until `shutdown`.
pub async fn listen(
    broker: Arc<Broker>,
    cluster: Arc<Cluster>,
    listener: TcpListener,
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
        tokio::spawn(async move {
            if let Err(e) = run(&broker, &cluster, stream, None, &shutdown).await {
                debug!(%from, error = %e, "inbound cluster link ended");
            }
        });
    }
}

/// Keeps a link to `addr` up until `shutdown`: dials, runs the link, and dials again with
/// backoff when it ends. Stops for good when `addr` turns out to be this node.
pub async fn dial(
    broker: Arc<Broker>,
    cluster: Arc<Cluster>,
    addr: String,
    shutdown: CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        // A link the peer dialed may be the one kept: nothing to do while it is up.
        if let Some(id) = cluster.node_at(&addr)
            && cluster.is_up(&id)
        {
            tokio::select! {
                _ = tokio::time::sleep(HEARTBEAT) => continue,
                _ = shutdown.cancelled() => return,
            }
        }
        // Resolved on every attempt: in Kubernetes a restarted peer comes back on a new IP.
        let connected = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(&addr)).await;
        match connected {
            Ok(Ok(stream)) => {
                match run(&broker, &cluster, stream, Some(addr.clone()), &shutdown).await {
                    Err(LinkError::SelfLink) => {
                        debug!(%addr, "cluster peer address is this node: not dialed again");
                        return;
                    }
                    Err(LinkError::OtherCluster { .. }) | Err(LinkError::Handshake(_)) => {
                        backoff = BACKOFF_MAX;
                    }
                    Ok(()) => backoff = BACKOFF_MIN,
                    Err(e) => {
                        debug!(%addr, error = %e, "cluster link ended");
                        backoff = BACKOFF_MIN;
                    }
                }
            }
            Ok(Err(e)) => debug!(%addr, error = %e, "cannot reach cluster peer"),
            Err(_) => debug!(%addr, "cluster peer did not answer in time"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Runs one link: handshake, registration, then frames both ways until it ends.
async fn run(
    broker: &Arc<Broker>,
    cluster: &Arc<Cluster>,
    stream: TcpStream,
    dialed: Option<String>,
    shutdown: &CancellationToken,
) -> Result<(), LinkError> {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let mut out = BytesMut::new();
    frame::encode(
        &Frame::Hello(Hello {
            cluster: cluster.name.clone(),
            node_id: cluster.node_id.clone(),
            epoch: cluster.epoch,
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
    let (tx, mut rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let close = CancellationToken::new();
    let link_id = cluster.next_link_id();
    let peer = hello.node_id.clone();
    let link = PeerLink {
        link_id,
        epoch: hello.epoch,
        dialer: if dialed.is_some() {
            cluster.node_id.clone()
        } else {
            peer.clone()
        },
        dialed,
        tx: tx.clone(),
        queued: queued.clone(),
        close: close.clone(),
    };
    if cluster.register(&peer, link) == Registered::Duplicate {
        debug!(peer, "second link to a linked peer closed");
        return Ok(());
    }
    {
        // Our routes, queued under the router's lock: every change after this snapshot is
        // queued after it, every change before it is in it.
        let router = broker.router.read();
        let _ = tx.send(Frame::Routes(router.announced()));
    }
    info!(peer, epoch = hello.epoch, "cluster link up");
    let mut ends = Ends {
        reader: &mut reader,
        writer: &mut writer,
        buf: &mut buf,
        rx: &mut rx,
        queued: &queued,
    };
    let ended = serve(broker, cluster, &peer, &mut ends, &close, shutdown).await;
    cluster.unregister(&peer, link_id);
    close.cancel();
    match &ended {
        Ok(()) => info!(peer, "cluster link closed"),
        Err(e) => warn!(peer, error = %e, "cluster link down"),
    }
    ended
}

/// A link's socket halves and queue.
struct Ends<'a> {
    reader: &'a mut tokio::net::tcp::OwnedReadHalf,
    writer: &'a mut tokio::net::tcp::OwnedWriteHalf,
    buf: &'a mut BytesMut,
    rx: &'a mut mpsc::UnboundedReceiver<Frame>,
    queued: &'a AtomicUsize,
}

/// Queues `f` in `out`, counting a forwarded message off the peer's budget.
fn take(f: &Frame, out: &mut BytesMut, queued: &AtomicUsize) {
    if matches!(f, Frame::Publish(_)) {
        queued.fetch_sub(1, Ordering::Relaxed);
    }
    frame::encode(f, out);
}

/// Frames both ways until the link is closed, fails, or falls silent.
async fn serve(
    broker: &Broker,
    cluster: &Cluster,
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
    } = ends;
    let mut out = BytesMut::new();
    let mut beat = tokio::time::interval(HEARTBEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let dead = tokio::time::sleep(DEAD_AFTER);
    tokio::pin!(dead);
    loop {
        tokio::select! {
            _ = close.cancelled() => return Ok(()),
            _ = shutdown.cancelled() => return Ok(()),
            _ = &mut dead => return Err(LinkError::Silent(DEAD_AFTER)),
            _ = beat.tick() => {
                frame::encode(&Frame::Heartbeat, &mut out);
                writer.write_all(&out).await?;
                out.clear();
            }
            f = rx.recv() => {
                let Some(f) = f else { return Ok(()) };
                // Everything queued goes out in one write.
                take(&f, &mut out, queued);
                while out.len() < 1 << 20 && let Ok(f) = rx.try_recv() {
                    take(&f, &mut out, queued);
                }
                writer.write_all(&out).await?;
                out.clear();
            }
            r = reader.read_buf(buf) => {
                if r? == 0 {
                    return Err(LinkError::Io(io::ErrorKind::UnexpectedEof.into()));
                }
                dead.as_mut().reset(tokio::time::Instant::now() + DEAD_AFTER);
                while let Some(f) = frame::decode(buf)? {
                    match f {
                        Frame::Heartbeat => {}
                        Frame::Hello(_) => return Err(LinkError::Handshake("a second Hello")),
                        Frame::Routes(filters) => {
                            debug!(peer, routes = filters.len(), "routes from peer");
                            cluster.remote.write().replace(peer, &filters);
                        }
                        Frame::RouteAdd(filter) => cluster.remote.write().add(peer, &filter),
                        Frame::RouteRemove(filter) => cluster.remote.write().remove(peer, &filter),
                        Frame::Publish(message) => broker.route_forwarded(message),
                    }
                }
            }
        }
    }
}
