//! CoAP over DTLS 1.2 with pre-shared keys (`coaps://`, RFC 7252 section 9.1, PreSharedKey
//! mode), on the `webrtc-dtls` crate.
//!
//! The crate's own UDP listener is not used: it never forgets a peer (a device that
//! reconnects from the same address and port could not handshake again) and runs each
//! handshake inside `accept`, one at a time. Instead one socket is read here and each source
//! address gets a [`Pipe`], a bounded queue of datagrams that the crate's `DTLSConn` reads as
//! its connection:
//!
//! - only well-formed records reach the crate ([`acceptable`]);
//! - a datagram from an address with a session goes to that session, if it is something a
//!   peer in that session's state sends ([`route`]); a new ClientHello on an established
//!   session starts the peer over (a rebooted device);
//! - from a new address, only a ClientHello starts a session, within the per-address rate
//!   limit, [`CONCURRENT_HANDSHAKES`] and [`MAX_SESSIONS`]; anything else is dropped;
//! - the crate answers a first ClientHello with a HelloVerifyRequest cookie, so a forged
//!   source address never completes a handshake; it holds a handshake slot for
//!   [`COOKIE_WAIT`], and a real handshake has [`HANDSHAKE_TIMEOUT`] to finish;
//! - the PSK identity the client sent is the device id, and its MQTT session's trusted
//!   username, as a certificate identity is for MQTT over TLS;
//! - a session ends after `coap_idle_secs` without authenticated traffic either way, when its
//!   peer closes it or starts over, or when its identity leaves the PSK file (checked on
//!   reload and on each datagram).
//!
//! What an off-path sender who knows a device's address and port can still do: end its
//! session, with a forged ClientHello or a record that does not decrypt (the crate treats
//! that as fatal); the device's next request then opens a new one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
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
/// DTLS sessions one PSK identity may hold at once; a newer one closes the oldest.
pub const SESSIONS_PER_IDENTITY: usize = 4;
/// Datagrams queued for one session before more are dropped.
const PIPE_DEPTH: usize = 64;
/// Datagrams a session takes before its handshake is done (a handshake needs a handful, with
/// retransmissions a few more); more would only grow the crate's handshake cache.
pub const HANDSHAKE_DATAGRAMS: u32 = 32;
/// How long a new session waits for the client's answer to the HelloVerifyRequest before
/// its handshake slot goes back.
pub const COOKIE_WAIT: Duration = Duration::from_secs(3);
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

/// Handshake message types a client sends in the clear in a PSK handshake.
const CLIENT_HELLO: u8 = 1;
const CLIENT_KEY_EXCHANGE: u8 = 16;

/// True when every record of `datagram` may go to `webrtc-dtls`.
///
/// The crate parses every handshake message it receives, whatever its type, and some of its
/// parsers index past the end of malformed input and panic (our fuzzer found a ClientHello
/// whose extension list overruns itself; the ServerHello, ServerKeyExchange and
/// ClientKeyExchange parsers have the same pattern). A panic ends only that session's task,
/// but would leave its handshake slot taken until the timeout, for the price of one forged
/// datagram. So the clear-text (epoch 0) handshake records are checked here first:
///
/// - only the messages a PSK client sends in the clear, ClientHello and ClientKeyExchange;
/// - whole, not fragmented (both fit any datagram; the crate would otherwise reassemble
///   fragments into a message this check never saw);
/// - a ClientHello walked field by field, every extension header inside the extension list;
/// - a ClientKeyExchange holding exactly a PSK identity.
///
/// Records of later epochs are encrypted: the crate authenticates them before it parses them.
pub fn acceptable(datagram: &[u8]) -> bool {
    let mut rest = datagram;
    while !rest.is_empty() {
        if rest.len() < 13 {
            return false;
        }
        let (content, epoch) = (rest[0], u16::from_be_bytes([rest[3], rest[4]]));
        let len = usize::from(u16::from_be_bytes([rest[11], rest[12]]));
        let Some(record) = rest.get(13..13 + len) else {
            return false;
        };
        if content == 22 && epoch == 0 && !clear_handshake(record) {
            return false;
        }
        rest = &rest[13 + len..];
    }
    true
}

/// One clear-text handshake record: its header, then its message.
fn clear_handshake(record: &[u8]) -> bool {
    if record.len() < 12 {
        return false;
    }
    let u24 = |b: &[u8]| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]);
    let (kind, length) = (record[0], u24(&record[1..4]));
    let (offset, fragment) = (u24(&record[6..9]), u24(&record[9..12]));
    let body = &record[12..];
    if offset != 0 || fragment != length || body.len() != length {
        return false;
    }
    match kind {
        CLIENT_HELLO => client_hello(body).is_some(),
        CLIENT_KEY_EXCHANGE => {
            body.len() >= 2 && usize::from(u16::from_be_bytes([body[0], body[1]])) + 2 == body.len()
        }
        _ => false,
    }
}

/// Walks a ClientHello body as the crate reads it; `None` when a field runs past its end or
/// the crate would misread it. The crate skips the session id's length byte but not the id
/// itself, so only an empty session id (a new session, what DTLS clients send) reads right;
/// it reads cipher suites in pairs, so their length must be even.
fn client_hello(body: &[u8]) -> Option<()> {
    let mut at = 2 + 32; // version, random
    if *body.get(at)? != 0 {
        return None;
    }
    at += 1;
    for width in [1, 2, 1] {
        // cookie, cipher suites, compression methods
        let field = body.get(at..at + width)?;
        let n = field.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b));
        if width == 2 && n % 2 != 0 {
            return None;
        }
        at += width + n;
        body.get(..at)?;
    }
    // The crate requires the extension list (it may be empty) and ignores what follows it.
    let ext_len = usize::from(u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]));
    let extensions = body.get(at + 2..at + 2 + ext_len)?;
    let mut offset = 0;
    while offset < extensions.len() {
        let header = extensions.get(offset..offset + 4)?;
        offset += 4 + usize::from(u16::from_be_bytes([header[2], header[3]]));
        extensions.get(..offset)?;
    }
    Some(())
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
    /// The client random of the ClientHello that started it.
    random: [u8; 32],
    /// Datagrams queued to it so far (a handshake gets a bounded number).
    received: u32,
    /// How far the client is with the cookie exchange.
    cookie: Arc<CookieExchange>,
    /// Set once the handshake is done.
    conn: Option<Arc<DTLSConn>>,
    identity: Option<Arc<str>>,
    /// The last authenticated traffic: a datagram that decrypted, or one we sent.
    active: Instant,
}

/// What a handshake's task watches to give up on a client that never answers the cookie.
#[derive(Default)]
struct CookieExchange {
    /// ClientHellos without a cookie so far (the first, and retransmissions of it).
    hellos: AtomicU32,
    /// A ClientHello with a cookie came: the client answered.
    answered: std::sync::atomic::AtomicBool,
}

/// The client random and cookie length of a datagram whose first record is a ClientHello
/// (one that passed [`acceptable`]: whole, with an empty session id).
pub fn hello_fields(datagram: &[u8]) -> Option<([u8; 32], usize)> {
    if !is_client_hello(datagram) {
        return None;
    }
    // Record header (13), handshake header (12), version (2): the random, the session id's
    // length (0), the cookie's length.
    let random: [u8; 32] = datagram.get(27..59)?.try_into().ok()?;
    Some((random, usize::from(*datagram.get(60)?)))
}

/// What to do with a datagram from an address that has a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// To the session.
    Pass,
    /// Dropped: nothing a peer of that session sends in its state.
    Drop,
    /// A new ClientHello: the peer starts over (a rebooted device on the same address and
    /// port); the old session goes.
    Restart,
}

/// Where a datagram from an address with a session goes (it passed [`acceptable`]);
/// `random` is the client random of the ClientHello that started the session.
///
/// During the handshake: everything, up to [`HANDSHAKE_DATAGRAMS`]. Once established, only
/// records of epoch 1 (application data and alerts, encrypted). The crate's handshake is
/// over then: a clear-text record is nobody's it answers, and it would end the session for
/// some (an alert) and keep others in its handshake cache for good; a later epoch (we never
/// renegotiate) it would queue for good. A ClientHello without a cookie and with a new client
/// random is the peer starting over (a rebooted device); a late copy of the one that started
/// the session is not.
pub fn route(datagram: &[u8], established: bool, received: u32, random: &[u8; 32]) -> Route {
    if !established {
        return if received < HANDSHAKE_DATAGRAMS {
            Route::Pass
        } else {
            Route::Drop
        };
    }
    if let Some((hello, cookie)) = hello_fields(datagram) {
        return if cookie == 0 && hello != *random {
            Route::Restart
        } else {
            Route::Drop
        };
    }
    let mut rest = datagram;
    while rest.len() >= 13 {
        if u16::from_be_bytes([rest[3], rest[4]]) != 1 {
            return Route::Drop;
        }
        let len = usize::from(u16::from_be_bytes([rest[11], rest[12]]));
        rest = rest.get(13 + len..).unwrap_or_default();
    }
    Route::Pass
}

/// The DTLS sessions of the secure listener.
pub struct Sessions {
    broker: Arc<Broker>,
    socket: Arc<UdpSocket>,
    table: Mutex<HashMap<SocketAddr, Session>>,
    /// The established sessions of each identity, (generation, address): a few per identity,
    /// so that a handshake counts its identity's sessions without a pass over the table.
    /// Locked after `table` when both are.
    identities: Mutex<HashMap<Arc<str>, Vec<SessionKey>>>,
    handshakes: Arc<Semaphore>,
    generation: std::sync::atomic::AtomicU64,
    hint: Option<Vec<u8>>,
}

/// A session's generation and address: which one it is.
type SessionKey = (u64, SocketAddr);

/// Removes its session from the table when the session's task ends, however it ends.
struct Registered {
    sessions: Arc<Sessions>,
    addr: SocketAddr,
    generation: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.sessions.remove(self.addr, self.generation);
    }
}

impl Sessions {
    /// Sessions on `socket`; `hint` is the PSK identity hint sent to clients.
    pub fn new(socket: UdpSocket, hint: Option<&str>, broker: Arc<Broker>) -> Sessions {
        Sessions {
            broker,
            socket: Arc::new(socket),
            table: Mutex::new(HashMap::new()),
            identities: Mutex::new(HashMap::new()),
            handshakes: Arc::new(Semaphore::new(CONCURRENT_HANDSHAKES)),
            generation: std::sync::atomic::AtomicU64::new(1),
            hint: hint.map(|h| h.as_bytes().to_vec()),
        }
    }

    /// Sends one datagram through `peer`'s session, if it is still the one at its address;
    /// false when it is not (or not established).
    pub async fn send(&self, peer: Peer, bytes: &[u8]) -> bool {
        let conn = {
            let mut table = self.table.lock();
            match table.get_mut(&peer.addr) {
                Some(session) if session.generation == peer.session => {
                    session.active = Instant::now();
                    session.conn.clone()
                }
                _ => None,
            }
        };
        match conn {
            Some(conn) => {
                let _ = conn.write(bytes, Some(Duration::from_secs(5))).await;
                true
            }
            None => false,
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
        if table.get(&addr).is_some_and(|s| s.generation == generation)
            && let Some(gone) = table.remove(&addr)
        {
            self.forget(&gone);
        }
        self.count(table.len());
    }

    /// Takes a session that left the table out of its identity's list.
    fn forget(&self, gone: &Session) {
        let Some(identity) = &gone.identity else {
            return;
        };
        let mut identities = self.identities.lock();
        if let Some(list) = identities.get_mut(identity) {
            list.retain(|&(generation, _)| generation != gone.generation);
            if list.is_empty() {
                identities.remove(identity);
            }
        }
    }

    fn count(&self, sessions: usize) {
        self.broker
            .metrics
            .coap_dtls_sessions
            .store(sessions as i64, Ordering::Relaxed);
    }

    /// Records a finished handshake; `None` when the session is no longer the one at `addr`.
    /// Otherwise the sessions of the same identity past [`SESSIONS_PER_IDENTITY`], the
    /// earliest established first, to close: one key opens a few sessions, not the whole
    /// table.
    fn establish(
        &self,
        addr: SocketAddr,
        generation: u64,
        conn: &Arc<DTLSConn>,
        identity: &Arc<str>,
    ) -> Option<Vec<Arc<DTLSConn>>> {
        let mut table = self.table.lock();
        match table.get_mut(&addr) {
            Some(s) if s.generation == generation => {
                s.conn = Some(conn.clone());
                s.identity = Some(identity.clone());
                s.active = Instant::now();
            }
            _ => return None,
        }
        let mut identities = self.identities.lock();
        let same = identities.entry(identity.clone()).or_default();
        // In the order they were established: the oldest go first.
        same.push((generation, addr));
        let surplus = same.len().saturating_sub(SESSIONS_PER_IDENTITY);
        // They leave the list when their tasks end and take them out of the table.
        Some(
            same[..surplus]
                .iter()
                .filter_map(|(g, a)| {
                    table
                        .get(a)
                        .filter(|s| s.generation == *g)
                        .and_then(|s| s.conn.clone())
                })
                .collect(),
        )
    }

    /// Notes authenticated traffic from the session.
    fn touch(&self, addr: SocketAddr, generation: u64) {
        if let Some(s) = self.table.lock().get_mut(&addr)
            && s.generation == generation
        {
            s.active = Instant::now();
        }
    }

    /// True when the session has seen no authenticated traffic for `idle`.
    fn is_idle(&self, addr: SocketAddr, generation: u64, idle: Duration) -> bool {
        self.table
            .lock()
            .get(&addr)
            .is_none_or(|s| s.generation != generation || s.active.elapsed() > idle)
    }

    /// One datagram from `addr`: to its session, or the start of a new one (what that needs
    /// to start, when one does).
    fn dispatch(&self, gateway: &Gateway, datagram: &[u8], addr: SocketAddr) -> Option<NewSession> {
        if !acceptable(datagram) {
            gateway.dropped(Dropped::Malformed);
            return None;
        }
        let mut table = self.table.lock();
        let restart = match table.get_mut(&addr) {
            None => false,
            Some(session) => {
                match route(
                    datagram,
                    session.conn.is_some(),
                    session.received,
                    &session.random,
                ) {
                    Route::Pass => {
                        if session.tx.try_send(datagram.to_vec()).is_err() {
                            gateway.dropped(Dropped::RateLimited);
                            return None;
                        }
                        session.received = session.received.saturating_add(1);
                        match hello_fields(datagram) {
                            Some((_, 0)) => {
                                session.cookie.hellos.fetch_add(1, Ordering::Relaxed);
                            }
                            Some(_) => session.cookie.answered.store(true, Ordering::Relaxed),
                            None => {}
                        }
                        return None;
                    }
                    Route::Drop => {
                        gateway.dropped(Dropped::Unexpected);
                        return None;
                    }
                    Route::Restart => true,
                }
            }
        };
        let Some((random, 0)) = hello_fields(datagram) else {
            gateway.dropped(Dropped::Unexpected);
            return None;
        };
        // Handshake starts have an allowance of their own: forged ClientHellos from a device's
        // address cannot use up what its requests may send.
        if !gateway.allowed("coaps-hello", addr.ip()) {
            gateway.dropped(Dropped::RateLimited);
            return None;
        }
        if !restart && table.len() >= MAX_SESSIONS {
            gateway.dropped(Dropped::RateLimited);
            return None;
        }
        let Ok(permit) = self.handshakes.clone().try_acquire_owned() else {
            gateway.dropped(Dropped::RateLimited);
            return None;
        };
        // The old session goes only now that the new one can start. Its task sees the
        // connection close and ends.
        if restart && let Some(old) = table.remove(&addr) {
            self.forget(&old);
            if let Some(conn) = old.conn {
                tokio::spawn(async move {
                    let _ = conn.close().await;
                });
            }
        }
        let (tx, rx) = mpsc::channel(PIPE_DEPTH);
        let _ = tx.try_send(datagram.to_vec());
        let cookie = Arc::new(CookieExchange::default());
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        table.insert(
            addr,
            Session {
                generation,
                tx,
                random,
                received: 1,
                cookie: cookie.clone(),
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
        Some(NewSession {
            permit,
            pipe,
            cookie,
            generation,
        })
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

/// What a session needs to start.
struct NewSession {
    permit: OwnedSemaphorePermit,
    pipe: Pipe,
    cookie: Arc<CookieExchange>,
    generation: u64,
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
        if let Some(new) = sessions.dispatch(&gateway, &buf[..len], addr) {
            tokio::spawn(session(gateway.clone(), sessions.clone(), addr, new));
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
    new: NewSession,
) {
    let NewSession {
        permit,
        pipe,
        cookie,
        generation,
    } = new;
    let _registered = Registered {
        sessions: sessions.clone(),
        addr,
        generation,
    };
    let config = sessions.config();
    let handshake = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        DTLSConn::new(Arc::new(pipe), config, false, None),
    );
    // A client answers the HelloVerifyRequest with a ClientHello carrying the cookie within
    // a round trip, or sends its first ClientHello again when the answer was lost; a forged
    // source address does neither, and gives its handshake slot back after COOKIE_WAIT. (A
    // wrong cookie fails the handshake at once.)
    let unanswered = async {
        loop {
            let hellos = cookie.hellos.load(Ordering::Relaxed);
            tokio::time::sleep(COOKIE_WAIT).await;
            if cookie.answered.load(Ordering::Relaxed) {
                std::future::pending::<()>().await;
            }
            if cookie.hellos.load(Ordering::Relaxed) == hellos {
                return;
            }
        }
    };
    let outcome = tokio::select! {
        r = handshake => r.ok(),
        () = unanswered => None,
    };
    drop(permit);
    let conn = match outcome {
        Some(Ok(conn)) => Arc::new(conn),
        Some(Err(e)) => {
            debug!(%addr, "coaps: handshake failed: {e}");
            handshake_result(&gateway, 1);
            return;
        }
        None => {
            debug!(%addr, "coaps: handshake timed out");
            handshake_result(&gateway, 2);
            return;
        }
    };
    let state = conn.connection_state().await;
    let identity: Arc<str> = match String::from_utf8(state.identity_hint) {
        Ok(id) if gateway.broker.security.psk_contains(&id) => Arc::from(id),
        _ => {
            handshake_result(&gateway, 1);
            let _ = conn.close().await;
            return;
        }
    };
    handshake_result(&gateway, 0);
    let Some(surplus) = sessions.establish(addr, generation, &conn, &identity) else {
        let _ = conn.close().await;
        return;
    };
    for old in surplus {
        debug!(device = %identity, "coaps: too many sessions for one identity: the oldest goes");
        tokio::spawn(async move {
            let _ = old.close().await;
        });
    }
    info!(%addr, device = %identity, "coaps: session established");
    let idle = Duration::from_secs(gateway.config.coap_idle_secs.max(1));
    let shutdown = gateway.broker.shutdown.clone();
    let peer = Peer::secure(addr, generation);
    let mut buf = vec![0u8; MAX_RECORD];
    loop {
        let read = tokio::select! {
            r = conn.read(&mut buf, Some(idle)) => r,
            _ = shutdown.cancelled() => break,
        };
        match read {
            Ok(n) => {
                if !gateway.broker.security.psk_contains(&identity) {
                    debug!(%addr, device = %identity, "coaps: identity revoked");
                    break;
                }
                sessions.touch(addr, generation);
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

    /// A record around a handshake message.
    fn record(epoch: u16, kind: u8, body: &[u8]) -> Vec<u8> {
        let len = body.len() as u32;
        let mut h = vec![kind];
        h.extend(&len.to_be_bytes()[1..]);
        h.extend([0, 0, 0, 0, 0]);
        h.extend(&len.to_be_bytes()[1..]);
        h.extend(body);
        let mut r = vec![22, 254, 253];
        r.extend(epoch.to_be_bytes());
        r.extend([0; 6]);
        r.extend((h.len() as u16).to_be_bytes());
        r.extend(h);
        r
    }

    fn hello(extensions: &[u8]) -> Vec<u8> {
        let mut b = vec![254, 253];
        b.extend([7; 32]);
        b.extend([0]); // session id
        b.extend([2, 9, 9]); // cookie
        b.extend([0, 2, 0xc0, 0xa8]); // one cipher suite
        b.extend([1, 0]); // null compression
        b.extend((extensions.len() as u16).to_be_bytes());
        b.extend(extensions);
        b
    }

    #[test]
    fn well_formed_client_records_pass() {
        let ems = [0, 23, 0, 0];
        assert!(acceptable(&record(0, CLIENT_HELLO, &hello(&ems))));
        assert!(acceptable(&record(0, CLIENT_HELLO, &hello(&[]))));
        let mut two = record(0, CLIENT_KEY_EXCHANGE, &[0, 4, b'd', b'e', b'v', b'1']);
        two.extend(record(1, 20, &[1, 2, 3]));
        assert!(acceptable(&two), "epoch 1 is not looked into");
        // A non-handshake record (an alert) passes untouched.
        assert!(acceptable(&[
            21, 254, 253, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 1, 0
        ]));
    }

    #[test]
    fn records_the_crate_would_choke_on_are_dropped() {
        // The fuzzer's find: an extension header that runs past the extension list.
        assert!(!acceptable(&record(
            0,
            CLIENT_HELLO,
            &hello(&[0, 23, 0, 0, 0, 28])
        )));
        assert!(!acceptable(&record(
            0,
            CLIENT_HELLO,
            &hello(&[0, 23, 0, 9])
        )));
        assert!(!acceptable(&record(0, CLIENT_HELLO, &hello(&[])[..40])));
        // Read as the crate reads it: a session id, or an odd cipher-suite length, would
        // shift every field after it.
        let mut with_session = hello(&[]);
        with_session[34] = 1;
        with_session.insert(35, 0);
        assert!(!acceptable(&record(0, CLIENT_HELLO, &with_session)));
        let mut odd = hello(&[]);
        odd[39] = 3;
        odd.insert(42, 0);
        assert!(!acceptable(&record(0, CLIENT_HELLO, &odd)));
        // Server messages from a client, a short ClientKeyExchange, fragments, bad lengths.
        assert!(!acceptable(&record(0, 2, &hello(&[]))));
        assert!(!acceptable(&record(0, 12, &[0])));
        assert!(!acceptable(&record(0, CLIENT_KEY_EXCHANGE, &[0])));
        assert!(!acceptable(&record(0, CLIENT_KEY_EXCHANGE, &[0, 9, 1])));
        let mut fragment = record(0, CLIENT_HELLO, &hello(&[]));
        fragment[13 + 8] = 1; // fragment offset
        assert!(!acceptable(&fragment));
        let mut short = record(0, CLIENT_HELLO, &hello(&[]));
        short.pop();
        assert!(!acceptable(&short));
        assert!(!acceptable(&[22, 254, 253, 0, 0]));
    }

    #[test]
    fn an_established_session_takes_only_what_its_peer_sends_then() {
        let with_cookie = record(0, CLIENT_HELLO, &hello(&[]));
        let fresh = |random: u8| {
            let mut b = hello(&[]);
            b[2..34].fill(random);
            b[35] = 0; // no cookie
            b.drain(36..38);
            record(0, CLIENT_HELLO, &b)
        };
        let app = |epoch: u16| {
            let mut r = vec![23, 254, 253];
            r.extend(epoch.to_be_bytes());
            r.extend([0, 0, 0, 0, 0, 1, 0, 2, 9, 9]);
            r
        };
        let alert0 = vec![21, 254, 253, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2, 2, 40];
        let first = [7u8; 32];
        assert!(acceptable(&fresh(7)) && acceptable(&with_cookie));
        assert_eq!(hello_fields(&fresh(7)), Some((first, 0)));
        assert_eq!(hello_fields(&with_cookie), Some((first, 2)));
        // During the handshake everything goes, up to a bound.
        assert_eq!(route(&alert0, false, 0, &first), Route::Pass);
        assert_eq!(route(&with_cookie, false, 1, &first), Route::Pass);
        assert_eq!(
            route(&with_cookie, false, HANDSHAKE_DATAGRAMS, &first),
            Route::Drop
        );
        // Afterwards: epoch 1 only.
        assert_eq!(route(&app(1), true, 9, &first), Route::Pass);
        let mut flight = record(0, CLIENT_KEY_EXCHANGE, &[0, 1, b'd']);
        flight.extend(app(1));
        assert_eq!(
            route(&flight, true, 9, &first),
            Route::Drop,
            "clear text after it"
        );
        assert_eq!(
            route(&alert0, true, 9, &first),
            Route::Drop,
            "a clear-text alert"
        );
        assert_eq!(
            route(&app(0), true, 9, &first),
            Route::Drop,
            "clear-text data"
        );
        assert_eq!(
            route(&app(2), true, 9, &first),
            Route::Drop,
            "an epoch never negotiated"
        );
        // A new ClientHello starts the peer over; late copies of the handshake's own do not.
        assert_eq!(route(&fresh(8), true, 9, &first), Route::Restart);
        assert_eq!(route(&fresh(7), true, 9, &first), Route::Drop);
        assert_eq!(route(&with_cookie, true, 9, &first), Route::Drop);
    }

    #[test]
    fn the_fuzzers_client_hellos_are_dropped_and_real_ones_pass() {
        for seed in ["client_hello_gnutls", "client_hello_openssl"] {
            let path = format!(
                "{}/fuzz/seeds/dtls_handshake/{seed}",
                env!("CARGO_MANIFEST_DIR")
            );
            let bytes = std::fs::read(path).unwrap();
            assert!(acceptable(&bytes[2..]), "{seed}");
        }
        // What the fuzzer found panicking the crate; the first datagram of each is the one.
        for crash in [
            "crash-client-hello-extensions",
            "crash-client-hello-session-id",
        ] {
            let path = format!(
                "{}/fuzz/seeds/dtls_handshake/{crash}",
                env!("CARGO_MANIFEST_DIR")
            );
            let bytes = std::fs::read(path).unwrap();
            let len = usize::from(u16::from_be_bytes([bytes[0], bytes[1]]));
            assert!(!acceptable(&bytes[2..2 + len]), "{crash}");
        }
    }
}
