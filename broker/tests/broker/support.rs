//! Test support: a broker on 127.0.0.1:0 and a raw MQTT client built on the codec, for checking
//! exactly what goes over the wire (flags, packet ids, reason codes, malformed input).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use rookery_broker::{Config, Server};
use rookery_codec::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Any byte stream a test client can talk over (TCP, TLS, WebSocket).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// How long a test waits for a packet that must come.
pub const WAIT: Duration = Duration::from_secs(5);

/// Starts a broker on a free loopback port with `tweak` applied to the defaults.
pub async fn start(tweak: impl FnOnce(&mut Config)) -> Server {
    let mut config = Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        node_id: "test".into(),
        // In memory unless a test asks for a store (and gives it a directory of its own).
        durability: rookery_broker::config::DurabilityMode::None,
        // No `$SYS` messages unless a test asks: they would count as retained messages.
        sys_interval: 0,
        ..Config::default()
    };
    tweak(&mut config);
    config.validate().unwrap();
    Server::start(config).await.unwrap()
}

/// A client that speaks packets, not a library's API.
pub struct Raw {
    stream: Box<dyn Stream>,
    buf: BytesMut,
    pub protocol: Protocol,
}

/// A CONNECT with the usual fields.
pub fn connect_packet(protocol: Protocol, client_id: &str, clean_start: bool) -> Connect {
    Connect {
        protocol,
        clean_start,
        keep_alive: 60,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }
}

impl Raw {
    /// Opens a TCP connection without sending anything.
    pub async fn open(addr: SocketAddr, protocol: Protocol) -> Raw {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Raw::over(stream, protocol)
    }

    /// A client over an already open stream.
    pub fn over(stream: impl Stream + 'static, protocol: Protocol) -> Raw {
        Raw {
            stream: Box::new(stream),
            buf: BytesMut::new(),
            protocol,
        }
    }

    /// Sends CONNECT over this stream and returns the CONNACK.
    pub async fn handshake(&mut self, connect: Connect) -> ConnAck {
        self.send(Packet::Connect(Box::new(connect))).await;
        match self.recv().await {
            Packet::ConnAck(ack) => ack,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Connects and returns the client with its CONNACK (asserting success).
    pub async fn connect(
        addr: SocketAddr,
        protocol: Protocol,
        client_id: &str,
        clean_start: bool,
    ) -> (Raw, ConnAck) {
        Raw::connect_with(addr, connect_packet(protocol, client_id, clean_start)).await
    }

    /// Connects with a prepared CONNECT; asserts success.
    pub async fn connect_with(addr: SocketAddr, connect: Connect) -> (Raw, ConnAck) {
        let (raw, ack) = Raw::try_connect(addr, connect).await;
        assert_eq!(ack.code, 0, "CONNACK refused: {ack:?}");
        (raw, ack)
    }

    /// Connects with a prepared CONNECT and returns whatever CONNACK came.
    pub async fn try_connect(addr: SocketAddr, connect: Connect) -> (Raw, ConnAck) {
        let mut raw = Raw::open(addr, connect.protocol).await;
        let ack = raw.handshake(connect).await;
        (raw, ack)
    }

    /// Sends one packet.
    pub async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        encode(&packet, self.protocol, &mut out);
        self.stream.write_all(&out).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// Sends one packet; false when the connection is gone.
    pub async fn try_send(&mut self, packet: Packet) -> bool {
        let mut out = BytesMut::new();
        encode(&packet, self.protocol, &mut out);
        self.stream.write_all(&out).await.is_ok() && self.stream.flush().await.is_ok()
    }

    /// Sends raw bytes.
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// The next packet, or `None` at end of stream or after `wait`.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<Packet> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(p) = decode(&mut self.buf, self.protocol, usize::MAX)
                .expect("server sent a malformed packet")
            {
                return Some(p);
            }
            self.buf.reserve(4096);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The next packet; panics when none comes within [`WAIT`].
    pub async fn recv(&mut self) -> Packet {
        self.recv_within(WAIT)
            .await
            .expect("no packet from the broker")
    }

    /// Asserts that nothing arrives for a short while.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Some(p) = self.recv_within(wait).await {
            panic!("unexpected packet {p:?}");
        }
    }

    /// The next PUBLISH (panics on anything else).
    pub async fn recv_publish(&mut self) -> Publish {
        match self.recv().await {
            Packet::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Reads until the broker closes; returns the DISCONNECT it sent first, if any.
    pub async fn expect_closed(&mut self) -> Option<Disconnect> {
        let mut disconnect = None;
        loop {
            let deadline = tokio::time::Instant::now() + WAIT;
            if let Some(p) = decode(&mut self.buf, self.protocol, usize::MAX)
                .ok()
                .flatten()
            {
                if let Packet::Disconnect(d) = p {
                    disconnect = Some(d);
                }
                continue;
            }
            self.buf.reserve(4096);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return disconnect,
                Ok(Ok(_)) => {}
                Err(_) => panic!("the broker did not close the connection"),
            }
        }
    }

    /// SUBSCRIBE to one filter and return the SUBACK's reason codes.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Vec<u8> {
        self.subscribe_with(
            filter,
            SubscriptionOptions {
                qos,
                ..Default::default()
            },
            None,
        )
        .await
    }

    /// SUBSCRIBE with options and an optional subscription identifier.
    pub async fn subscribe_with(
        &mut self,
        filter: &str,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) -> Vec<u8> {
        let packet_id = 1000 + (filter.len() as u16);
        self.send(Packet::Subscribe(Subscribe {
            packet_id,
            filters: vec![SubscribeFilter {
                filter: filter.into(),
                options,
            }],
            properties: SubscribeProperties {
                subscription_identifier: id,
                user_properties: vec![],
            },
        }))
        .await;
        match self.recv().await {
            Packet::SubAck(ack) => {
                assert_eq!(ack.packet_id, packet_id);
                ack.reason_codes
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// PUBLISH and wait for the acknowledgement the QoS calls for (completing QoS 2).
    pub async fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
        packet_id: u16,
    ) {
        self.send(Packet::Publish(publish(
            topic, payload, qos, retain, packet_id,
        )))
        .await;
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => match self.recv().await {
                Packet::PubAck(a) => assert_eq!(a.packet_id, packet_id),
                other => panic!("expected PUBACK, got {other:?}"),
            },
            QoS::ExactlyOnce => {
                match self.recv().await {
                    Packet::PubRec(a) => assert_eq!(a.packet_id, packet_id),
                    other => panic!("expected PUBREC, got {other:?}"),
                }
                self.send(Packet::PubRel(Ack {
                    packet_id,
                    ..Default::default()
                }))
                .await;
                match self.recv().await {
                    Packet::PubComp(a) => assert_eq!(a.packet_id, packet_id),
                    other => panic!("expected PUBCOMP, got {other:?}"),
                }
            }
        }
    }

    /// Sends a normal DISCONNECT.
    pub async fn disconnect(mut self) {
        self.send(Packet::Disconnect(Disconnect::default())).await;
        let _ = self.stream.shutdown().await;
    }
}

/// A PUBLISH packet.
pub fn publish(topic: &str, payload: &[u8], qos: QoS, retain: bool, packet_id: u16) -> Publish {
    Publish {
        dup: false,
        qos,
        retain,
        topic: topic.into(),
        packet_id: if qos == QoS::AtMostOnce { 0 } else { packet_id },
        payload: bytes::Bytes::copy_from_slice(payload),
        properties: PublishProperties::default(),
    }
}

/// Polls `f` until it is true or [`WAIT`] passes.
pub async fn eventually(mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One HTTP/1.1 request over a fresh connection: (status, body).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Every sample of a scrape, `name{labels}` to value (label order as exported).
pub async fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let (status, body) = http(addr, "GET", "/metrics", &[]).await;
    assert_eq!(status, 200, "{body}");
    // A chunked body: keep only sample lines.
    body.lines()
        .filter(|l| l.starts_with("rookery_") || l.starts_with("process_"))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

pub fn value(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no sample {key} in {:?}", m.keys().collect::<Vec<_>>()))
}
