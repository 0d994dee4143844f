//! CoAP over DTLS 1.2 with pre-shared keys (`coaps://`, RFC 7252 section 9.1, PreSharedKey
//! mode), on the `webrtc-dtls` crate.
//!
//! The crate's own UDP listener is not used: it never forgets a peer (a device that
//! reconnects from the same address and port could not handshake again) and runs each
//! handshake inside `accept`, one at a time. Instead one socket is read here and each source
//! address gets a [`Pipe`], a bounded queue of datagrams that the crate's `DTLSConn` reads as
//! its connection:
//!
//! - a datagram from an address with a session goes to that session;
//! - from a new address, only a ClientHello starts a session, within the per-address rate
//!   limit, [`CONCURRENT_HANDSHAKES`] and [`MAX_SESSIONS`]; anything else is dropped;
//! - a handshake has [`HANDSHAKE_TIMEOUT`] to finish (the crate answers a first ClientHello
//!   with a HelloVerifyRequest cookie, so a forged source address gets no session);
//! - the PSK identity the client sent is the device id, and its MQTT session's trusted
//!   username, as a certificate identity is for MQTT over TLS;
//! - a session ends after `coap_idle_secs` without traffic either way, when its peer closes
//!   it, or when its identity leaves the PSK file (checked on reload and on each datagram).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::net::UdpSocket;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tracing::{debug, info};
use webrtc_dtls::cipher_suite::CipherSuiteId;
use webrtc_dtls::config::{Config as DtlsConfig, ExtendedMasterSecretType};
use webrtc_dtls::conn::DTLSConn;

use super::transport::Peer;
use super::{Dropped, Gateway};
use crate::broker::Broker;

/// DTLS sessions (and handshakes) at once; past it a new ClientHello is dropped.
pub const MAX_SESSIONS: usize = 100_000;
/// Handshakes in progress at once.
pub const CONCURRENT_HANDSHAKES: usize = 1024;
/// Time a handshake has to finish.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
/// Datagrams queued for one session before more are dropped.
const PIPE_DEPTH: usize = 64;
/// Largest record read from the socket (the crate's own limit is 8 KiB).
const MAX_RECORD: usize = 16 * 1024;

/// Result labels of `rookery_coap_handshakes_total`, in index order.
pub const HANDSHAKE_RESULTS: [&str; 3] = ["established", "failed", "timeout"];

/// True when `datagram` starts with a DTLS record holding a ClientHello at epoch 0: the
/// only thing that may open a session.
pub fn is_client_hello(datagram: &[u8]) -> bool {
    // Record header: type (22 = handshake), version (254.253 for 1.2, 254.255 for 1.0),
    // epoch (2 bytes), sequence number (6), length (2); then the handshake message type
    // (1 = client_hello).
    datagram.len() > 13
        && datagram[0] == 22
        && datagram[1] == 254
        && (datagram[2] == 253 || datagram[2] == 255)
        && datagram[3] == 0
        && datagram[4] == 0
        && datagram[13] == 1
}

/// One source address's datagrams, read by `DTLSConn` as its connection.
struct Pipe {
    socket: Arc<UdpSocket>,
    peer: SocketAddr,
    rx: tokio::sync::Mutex<mpsc::Receiver<Vec<u8>>>,
}

#[async_trait]
impl webrtc_util::Conn for Pipe {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(())
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        let datagram = self.rx.lock().await.recv().await;
        match datagram {
            Some(d) => {
                let n = d.len().min(buf.len());
                buf[..n].copy_from_slice(&d[..n]);
                Ok(n)
            }
            // The session is gone from the table. The crate's reader loops on any error but
            // its own "closed", and stops when the connection is dropped or closed: wait
            // for that.
            None => std::future::pending().await,
        }
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let n = self.recv(buf).await?;
        Ok((n, self.peer))
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        Ok(self.socket.send_to(buf, self.peer).await?)
    }

    async fn send_to(&self, buf: &[u8], _target: SocketAddr) -> webrtc_util::Result<usize> {
        self.send(buf).await
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.peer)
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

struct Session {
    generation: u64,
    tx: mpsc::Sender<Vec<u8>>,
    /// Set once the handshake is done.
    conn: Option<Arc<DTLSConn>>,
    identity: Option<Arc<str>>,
    active: Instant,
}

/// The DTLS sessions of the secure listener.
pub struct Sessions {
    broker: Arc<Broker>,
    socket: Arc<UdpSocket>,
    table: Mutex<HashMap<SocketAddr, Session>>,
    handshakes: Arc<Semaphore>,
    generation: std::sync::atomic::AtomicU64,
    hint: Option<Vec<u8>>,
}

impl Sessions {
    /// Sessions on `socket`; `hint` is the PSK identity hint sent to clients.
    pub fn new(socket: UdpSocket, hint: Option<&str>, broker: Arc<Broker>) -> Sessions {
        Sessions {
            broker,
            socket: Arc::new(socket),
            table: Mutex::new(HashMap::new()),
            handshakes: Arc::new(Semaphore::new(CONCURRENT_HANDSHAKES)),
            generation: std::sync::atomic::AtomicU64::new(0),
            hint: hint.map(|h| h.as_bytes().to_vec()),
        }
    }

    /// Sessions established or being established.
    pub fn len(&self) -> usize {
        self.table.lock().len()
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.table.lock().is_empty()
    }

    /// The PSK identity of the session with `addr`, once established.
    pub fn identity(&self, addr: SocketAddr) -> Option<Arc<str>> {
        self.table
            .lock()
            .get(&addr)
            .and_then(|s| s.identity.clone())
    }

    /// Sends one datagram through the session with `addr`, if it has one.
    pub async fn send(&self, addr: SocketAddr, bytes: &[u8]) {
        let conn = {
            let mut table = self.table.lock();
            let Some(session) = table.get_mut(&addr) else {
                return;
            };
            session.active = Instant::now();
            session.conn.clone()
        };
        if let Some(conn) = conn {
            let _ = conn.write(bytes, Some(Duration::from_secs(5))).await;
        }
    }

    /// Closes the sessions whose identity `keep` refuses (it left the PSK file); their
    /// identities.
    pub fn revoke(&self, keep: impl Fn(&str) -> bool) -> Vec<Arc<str>> {
        let gone: Vec<(Arc<str>, Arc<DTLSConn>)> = self
            .table
            .lock()
            .values()
            .filter_map(|s| match (&s.identity, &s.conn) {
                (Some(id), Some(conn)) if !keep(id) => Some((id.clone(), conn.clone())),
                _ => None,
            })
            .collect();
        let mut ids = Vec::with_capacity(gone.len());
        for (id, conn) in gone {
            // Closing ends the session's read loop, which removes it.
            tokio::spawn(async move {
                let _ = conn.close().await;
            });
            ids.push(id);
        }
        ids
    }

    fn remove(&self, addr: SocketAddr, generation: u64) {
        let mut table = self.table.lock();
        if table.get(&addr).is_some_and(|s| s.generation == generation) {
            table.remove(&addr);
        }
        self.count(table.len());
    }

    fn count(&self, sessions: usize) {
        self.broker
            .metrics
            .coap_dtls_sessions
            .store(sessions as i64, Ordering::Relaxed);
    }

    /// True when the session has seen no traffic for `idle`.
    fn is_idle(&self, addr: SocketAddr, generation: u64, idle: Duration) -> bool {
        self.table
            .lock()
            .get(&addr)
            .is_none_or(|s| s.generation != generation || s.active.elapsed() > idle)
    }

    /// One datagram from `addr`: to its session, or the start of a new one. A new session's
    /// handshake permit, pipe and generation when one starts.
    fn dispatch(
        &self,
        gateway: &Gateway,
        datagram: &[u8],
        addr: SocketAddr,
    ) -> Option<(OwnedSemaphorePermit, Pipe, u64)> {
        let mut table = self.table.lock();
        if let Some(session) = table.get_mut(&addr) {
            session.active = Instant::now();
            if session.tx.try_send(datagram.to_vec()).is_err() {
                gateway.dropped(Dropped::RateLimited);
            }
            return None;
        }
        if !is_client_hello(datagram) {
            gateway.dropped(Dropped::Unexpected);
            return None;
        }
        if !gateway.allowed(addr) {
            gateway.dropped(Dropped::RateLimited);
            return None;
        }
        if table.len() >= MAX_SESSIONS {
            gateway.dropped(Dropped::RateLimited);
            return None;
        }
        let Ok(permit) = self.handshakes.clone().try_acquire_owned() else {
            gateway.dropped(Dropped::RateLimited);
            return None;
        };
        let (tx, rx) = mpsc::channel(PIPE_DEPTH);
        let _ = tx.try_send(datagram.to_vec());
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        table.insert(
            addr,
            Session {
                generation,
                tx,
                conn: None,
                identity: None,
                active: Instant::now(),
            },
        );
        self.count(table.len());
        let pipe = Pipe {
            socket: self.socket.clone(),
            peer: addr,
            rx: tokio::sync::Mutex::new(rx),
        };
        Some((permit, pipe, generation))
    }

    fn config(&self) -> DtlsConfig {
        let broker = self.broker.clone();
        DtlsConfig {
            psk: Some(Arc::new(move |identity: &[u8]| {
                let key = std::str::from_utf8(identity)
                    .ok()
                    .and_then(|id| broker.security.psk_key(id));
                match key {
                    Some(key) => Ok(key),
                    None => {
                        broker
                            .metrics
                            .auth_failures_total
                            .fetch_add(1, Ordering::Relaxed);
                        Err(webrtc_dtls::Error::Other("unknown PSK identity".into()))
                    }
                }
            })),
            psk_identity_hint: self.hint.clone(),
            // TLS_PSK_WITH_AES_128_CCM_8 is the suite RFC 7252 requires of PSK devices.
            cipher_suites: vec![
                CipherSuiteId::Tls_Psk_With_Aes_128_Ccm_8,
                CipherSuiteId::Tls_Psk_With_Aes_128_Ccm,
                CipherSuiteId::Tls_Psk_With_Aes_128_Gcm_Sha256,
            ],
            extended_master_secret: ExtendedMasterSecretType::Request,
            ..DtlsConfig::default()
        }
    }
}

/// Reads the secure listener's socket until the broker shuts down.
pub async fn serve(gateway: Arc<Gateway>, sessions: Arc<Sessions>) {
    let shutdown = gateway.broker.shutdown.clone();
    let mut buf = vec![0u8; MAX_RECORD];
    loop {
        let (len, addr) = tokio::select! {
            r = sessions.socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    debug!("coaps: receive failed: {e}");
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        if let Some((permit, pipe, generation)) = sessions.dispatch(&gateway, &buf[..len], addr) {
            tokio::spawn(session(
                gateway.clone(),
                sessions.clone(),
                addr,
                generation,
                pipe,
                permit,
            ));
        }
    }
    let conns: Vec<Arc<DTLSConn>> = {
        let mut table = sessions.table.lock();
        let conns = table.drain().filter_map(|(_, s)| s.conn).collect();
        sessions.count(0);
        conns
    };
    for conn in conns {
        let _ = conn.close().await;
    }
}

fn handshake_result(gateway: &Gateway, slot: usize) {
    gateway.broker.metrics.coap_handshakes_total[slot].fetch_add(1, Ordering::Relaxed);
}

/// One session: the handshake, then its datagrams to the gateway.
async fn session(
    gateway: Arc<Gateway>,
    sessions: Arc<Sessions>,
    addr: SocketAddr,
    generation: u64,
    pipe: Pipe,
    permit: OwnedSemaphorePermit,
) {
    let config = sessions.config();
    let handshake = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        DTLSConn::new(Arc::new(pipe), config, false, None),
    )
    .await;
    drop(permit);
    let conn = match handshake {
        Ok(Ok(conn)) => Arc::new(conn),
        Ok(Err(e)) => {
            debug!(%addr, "coaps: handshake failed: {e}");
            handshake_result(&gateway, 1);
            sessions.remove(addr, generation);
            return;
        }
        Err(_) => {
            debug!(%addr, "coaps: handshake timed out");
            handshake_result(&gateway, 2);
            sessions.remove(addr, generation);
            return;
        }
    };
    let state = conn.connection_state().await;
    let identity: Arc<str> = match String::from_utf8(state.identity_hint) {
        Ok(id) if gateway.broker.security.psk_key(&id).is_some() => Arc::from(id),
        _ => {
            handshake_result(&gateway, 1);
            let _ = conn.close().await;
            sessions.remove(addr, generation);
            return;
        }
    };
    handshake_result(&gateway, 0);
    let current = match sessions.table.lock().get_mut(&addr) {
        Some(s) if s.generation == generation => {
            s.conn = Some(conn.clone());
            s.identity = Some(identity.clone());
            s.active = Instant::now();
            true
        }
        _ => false,
    };
    if !current {
        let _ = conn.close().await;
        return;
    }
    info!(%addr, device = %identity, "coaps: session established");
    let idle = Duration::from_secs(gateway.config.coap_idle_secs.max(1));
    let shutdown = gateway.broker.shutdown.clone();
    let peer = Peer::secure(addr);
    let mut buf = vec![0u8; MAX_RECORD];
    loop {
        let read = tokio::select! {
            r = conn.read(&mut buf, Some(idle)) => r,
            _ = shutdown.cancelled() => break,
        };
        match read {
            Ok(n) => {
                if gateway.broker.security.psk_key(&identity).is_none() {
                    debug!(%addr, device = %identity, "coaps: identity revoked");
                    break;
                }
                gateway.datagram(&buf[..n], peer, Some(&identity)).await;
            }
            Err(webrtc_dtls::Error::ErrDeadlineExceeded) => {
                if sessions.is_idle(addr, generation, idle) {
                    debug!(%addr, device = %identity, "coaps: session idle");
                    break;
                }
            }
            // A datagram too large for the buffer is lost; the session goes on.
            Err(webrtc_dtls::Error::ErrBufferTooSmall) => gateway.dropped(Dropped::TooLarge),
            Err(e) => {
                debug!(%addr, device = %identity, "coaps: session ended: {e}");
                break;
            }
        }
    }
    let _ = conn.close().await;
    sessions.remove(addr, generation);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_client_hello_at_epoch_zero_opens_a_session() {
        let mut hello = vec![22, 254, 253, 0, 0, 0, 0, 0, 0, 0, 0, 0, 50, 1];
        hello.extend([0; 49]);
        assert!(is_client_hello(&hello));
        let mut old = hello.clone();
        old[2] = 255;
        assert!(is_client_hello(&old), "DTLS 1.0 record version");
        for (i, v) in [(0, 23), (1, 3), (3, 1), (13, 2)] {
            let mut other = hello.clone();
            other[i] = v;
            assert!(!is_client_hello(&other), "byte {i} = {v}");
        }
        assert!(!is_client_hello(&hello[..13]));
        assert!(!is_client_hello(b"\x40\x01\x00\x01"), "plain CoAP");
    }
}
