//! Test clients that keep their MQTT 5.0 session across reconnects: a QoS 2 publisher that
//! numbers its messages and a QoS 2 subscriber that counts what it is given, for the tests
//! that restart, drain, kill or cut off brokers under load and then check that nothing was
//! lost and nothing delivered twice.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rookery_codec::{
    Ack, ConnAck, Connect, ConnectProperties, Packet, Protocol, Publish, QoS, Subscribe,
    SubscribeFilter, SubscriptionOptions, decode, encode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A persistent MQTT 5.0 session (expiry one hour), reconnected when dropped.
pub struct Resuming {
    addr: SocketAddr,
    id: String,
    conn: Option<(TcpStream, BytesMut)>,
    /// Successful connects so far.
    pub connects: u32,
    /// Connects that found no session (it was lost).
    pub sessions_lost: u32,
}

impl Resuming {
    /// A session for `id` at `addr` (a broker or a load balancer); not connected yet.
    pub fn new(addr: SocketAddr, id: &str) -> Resuming {
        Resuming {
            addr,
            id: id.into(),
            conn: None,
            connects: 0,
            sessions_lost: 0,
        }
    }

    /// Forgets the connection (the next [`Resuming::ensure`] reconnects).
    pub fn drop_connection(&mut self) {
        self.conn = None;
    }

    /// True while connected.
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Connects unless connected, retrying for up to a minute (panics after). A connect
    /// after the first that finds no session counts in `sessions_lost`.
    pub async fn ensure(&mut self) {
        if self.conn.is_some() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some((s, buf, ack)) = self.try_connect().await
                && ack.code == 0
            {
                if self.connects > 0 && !ack.session_present {
                    self.sessions_lost += 1;
                }
                self.conn = Some((s, buf));
                self.connects += 1;
                return;
            }
            assert!(Instant::now() < deadline, "{} could not reconnect", self.id);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn try_connect(&self) -> Option<(TcpStream, BytesMut, ConnAck)> {
        let connect = Connect {
            protocol: Protocol::V5,
            clean_start: false,
            keep_alive: 30,
            client_id: self.id.as_str().into(),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties {
                session_expiry_interval: Some(3600),
                ..Default::default()
            },
        };
        connect_with(self.addr, connect).await
    }

    /// Sends; false (and disconnected) when the connection is gone.
    pub async fn send(&mut self, p: Packet) -> bool {
        let Some((s, _)) = self.conn.as_mut() else {
            return false;
        };
        let mut out = BytesMut::new();
        encode(&p, Protocol::V5, &mut out);
        if s.write_all(&out).await.is_err() {
            self.conn = None;
            return false;
        }
        true
    }

    /// The next packet within `wait`: `Ok(None)` on silence, `Err` (and disconnected) when
    /// the connection is gone or the server sent DISCONNECT.
    #[allow(clippy::result_unit_err)]
    pub async fn recv(&mut self, wait: Duration) -> Result<Option<Packet>, ()> {
        let Some((s, buf)) = self.conn.as_mut() else {
            return Err(());
        };
        loop {
            match decode(buf, Protocol::V5, usize::MAX) {
                Ok(Some(Packet::Disconnect(_))) | Err(_) => {
                    self.conn = None;
                    return Err(());
                }
                Ok(Some(p)) => return Ok(Some(p)),
                Ok(None) => {}
            }
            match tokio::time::timeout(wait, s.read_buf(buf)).await {
                Err(_) => return Ok(None),
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => {
                    self.conn = None;
                    return Err(());
                }
            }
        }
    }
}

/// Sends `connect` over a new connection to `addr` and reads the CONNACK: the stream, what
/// was read past the CONNACK, and the CONNACK; `None` when the connection failed or closed
/// first, or the first packet back was not a CONNACK (5 s per step).
pub async fn connect_with(
    addr: SocketAddr,
    connect: Connect,
) -> Option<(TcpStream, BytesMut, ConnAck)> {
    let protocol = connect.protocol;
    let mut s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let mut out = BytesMut::new();
    encode(&Packet::Connect(Box::new(connect)), protocol, &mut out);
    s.write_all(&out).await.ok()?;
    let mut buf = BytesMut::new();
    loop {
        if let Some(p) = decode(&mut buf, protocol, usize::MAX).ok()? {
            return match p {
                Packet::ConnAck(a) => Some((s, buf, a)),
                _ => None,
            };
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read_buf(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
    }
}

fn ack(packet_id: u16) -> Ack {
    Ack {
        packet_id,
        ..Default::default()
    }
}

/// What a [`qos2_publisher`] did.
#[derive(Debug)]
pub struct Published {
    /// Messages 1 to `last` were published, each exchange completed (PUBCOMP).
    pub last: u32,
    /// When each was first sent, by number (index 0 is message 1).
    pub sent_at: Vec<Instant>,
    /// Connects it took.
    pub connects: u32,
    /// Reconnects that found its session gone.
    pub sessions_lost: u32,
}

/// Publishes QoS 2 messages numbered from 1 to `topic` at `addr` until `stop`, completing
/// each exchange across reconnects (PUBLISH again with DUP before PUBREC, PUBREL again after).
pub async fn qos2_publisher(
    addr: SocketAddr,
    id: String,
    topic: String,
    stop: Arc<AtomicBool>,
) -> Published {
    let mut s = Resuming::new(addr, &id);
    s.ensure().await;
    let mut seq = 0u32;
    let mut sent_at = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        sent_at.push(Instant::now());
        let pid = (seq % 60_000) as u16 + 1;
        let mut released = false;
        let mut dup = false;
        loop {
            s.ensure().await;
            let sent = if released {
                s.send(Packet::PubRel(ack(pid))).await
            } else {
                s.send(Packet::Publish(Publish {
                    dup,
                    qos: QoS::ExactlyOnce,
                    retain: false,
                    topic: topic.as_str().into(),
                    packet_id: pid,
                    payload: bytes::Bytes::from(seq.to_string()),
                    properties: Default::default(),
                }))
                .await
            };
            if !sent {
                dup = true;
                continue;
            }
            match s.recv(Duration::from_secs(5)).await {
                Ok(Some(Packet::PubRec(a))) if a.packet_id == pid => released = true,
                Ok(Some(Packet::PubComp(a))) if a.packet_id == pid => break,
                Ok(Some(_)) => {}
                // Silence: the connection may be dead without a reset (a node cut off).
                Ok(None) => {
                    s.drop_connection();
                    dup = true;
                }
                Err(()) => dup = true,
            }
        }
    }
    Published {
        last: seq,
        sent_at,
        connects: s.connects,
        sessions_lost: s.sessions_lost,
    }
}

/// What a [`qos2_subscriber`] received.
#[derive(Debug)]
pub struct Received {
    /// How many times each number was given to the application (QoS 2: a resend of a packet
    /// id not yet released is not given again).
    pub counts: HashMap<u32, u32>,
    /// Connects it took.
    pub connects: u32,
    /// Reconnects that found its session gone.
    pub sessions_lost: u32,
}

impl Received {
    /// The numbers from 1 to `last` never received.
    pub fn missing(&self, last: u32) -> Vec<u32> {
        (1..=last)
            .filter(|n| !self.counts.contains_key(n))
            .collect()
    }

    /// The numbers received more than once, with how often.
    pub fn repeated(&self) -> Vec<(u32, u32)> {
        let mut v: Vec<(u32, u32)> = self
            .counts
            .iter()
            .filter(|(_, c)| **c > 1)
            .map(|(n, c)| (*n, *c))
            .collect();
        v.sort_unstable();
        v
    }
}

/// Subscribes at QoS 2 to `filter` (once: the session keeps it) and receives until `stop` and
/// then 3 s of silence.
pub async fn qos2_subscriber(
    addr: SocketAddr,
    id: String,
    filter: String,
    stop: Arc<AtomicBool>,
) -> Received {
    let mut s = Resuming::new(addr, &id);
    s.ensure().await;
    s.send(Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![SubscribeFilter {
            filter: filter.as_str().into(),
            options: SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                ..Default::default()
            },
        }],
        properties: Default::default(),
    }))
    .await;
    let mut counts: HashMap<u32, u32> = HashMap::new();
    let mut pending: HashSet<u16> = HashSet::new();
    let mut quiet_since = Instant::now();
    let mut heard = Instant::now();
    let mut pinged = false;
    loop {
        s.ensure().await;
        // A connection silent for long gets a PINGREQ; no answer, and it is dropped (a dead
        // peer without a reset, as a node cut off from the network leaves it).
        if heard.elapsed() > Duration::from_secs(6) {
            s.drop_connection();
            heard = Instant::now();
            pinged = false;
            continue;
        }
        if heard.elapsed() > Duration::from_secs(2) && !pinged {
            s.send(Packet::PingReq).await;
            pinged = true;
        }
        let got = s.recv(Duration::from_millis(200)).await;
        if matches!(got, Ok(Some(_))) {
            heard = Instant::now();
            pinged = false;
        }
        match got {
            Ok(Some(Packet::Publish(p))) => {
                quiet_since = Instant::now();
                // MQTT 5.0 section 4.3.3, method B: a resend of an id not yet released is
                // the same message.
                if pending.insert(p.packet_id)
                    && let Ok(n) = String::from_utf8_lossy(&p.payload).parse::<u32>()
                {
                    *counts.entry(n).or_default() += 1;
                }
                s.send(Packet::PubRec(ack(p.packet_id))).await;
            }
            Ok(Some(Packet::PubRel(a))) => {
                pending.remove(&a.packet_id);
                s.send(Packet::PubComp(ack(a.packet_id))).await;
            }
            Ok(_) => {
                if stop.load(Ordering::Relaxed) && quiet_since.elapsed() > Duration::from_secs(3) {
                    return Received {
                        counts,
                        connects: s.connects,
                        sessions_lost: s.sessions_lost,
                    };
                }
            }
            Err(()) => heard = Instant::now(),
        }
    }
}
