//! An MQTT client inside the broker: the CoAP gateway's device sessions and the edge bridge's
//! two sides speak MQTT through it, to this broker over an in-memory pipe ([`local`]) or to
//! an upstream broker over TCP or TLS. Going through the broker's own connection code means
//! authentication, ACLs, QoS, persistence and clustering apply to them exactly as to any
//! device.
//!
//! One task owns the stream. [`Client`] sends commands to it; incoming PUBLISH packets come
//! out of a channel as [`Incoming`], and a QoS 1/2 message is acknowledged to the sender only
//! when its [`Incoming`] is acked (or dropped: dropping without ack leaves it unacknowledged,
//! so the sender redelivers it on the next connection).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rookery_codec::{
    Ack, ConnAck, Connect, Disconnect, Packet, Protocol, Publish, QoS, Subscribe, SubscribeFilter,
    Unsubscribe, decode, encode,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

pub mod local;

/// Why a client operation failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ClientError {
    /// The connection is closed (the reason says why).
    #[error("connection closed: {0}")]
    Closed(String),
    /// The server refused the CONNECT.
    #[error("connection refused with code {0:#04x}")]
    Refused(u8),
    /// The handshake failed or timed out.
    #[error("handshake failed: {0}")]
    Handshake(String),
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct Options {
    /// The CONNECT to send (protocol, client id, credentials, clean start, keep alive...).
    pub connect: Connect,
    /// Largest packet accepted from the server.
    pub max_packet_size: usize,
    /// How long the CONNACK may take.
    pub connect_timeout: Duration,
    /// Packet ids of our QoS 2 publishes not known to be complete. Give every connection of
    /// one persistent session the same set: a resumed session releases them (PUBREL) before
    /// anything else, and they are not reused until completed (the server still holds them,
    /// and would take a new message with one of them for a duplicate).
    pub qos2_in_doubt: InDoubt,
}

/// See [`Options::qos2_in_doubt`].
pub type InDoubt = Arc<parking_lot::Mutex<BTreeSet<u16>>>;

/// A received PUBLISH; [`Incoming::ack`] acknowledges it to the sender.
#[derive(Debug)]
pub struct Incoming {
    /// The message (topic resolved, never an alias).
    pub publish: Publish,
    acker: Option<(mpsc::UnboundedSender<Command>, u16, QoS)>,
}

impl Incoming {
    /// Acknowledges the message (PUBACK or PUBREC); nothing for QoS 0.
    pub fn ack(mut self) {
        if let Some((tx, packet_id, qos)) = self.acker.take() {
            let _ = tx.send(Command::AckIncoming(packet_id, qos));
        }
    }
}

enum Command {
    Publish(
        Box<Publish>,
        Option<OwnedSemaphorePermit>,
        oneshot::Sender<Result<u8, ClientError>>,
    ),
    Subscribe(
        Vec<SubscribeFilter>,
        oneshot::Sender<Result<Vec<u8>, ClientError>>,
    ),
    Unsubscribe(
        Vec<bytestring::ByteString>,
        oneshot::Sender<Result<Vec<u8>, ClientError>>,
    ),
    Ping(oneshot::Sender<Result<u8, ClientError>>),
    AckIncoming(u16, QoS),
    Disconnect,
}

/// A connected client. Cloning shares the connection; it closes when every clone is dropped
/// or [`Client::disconnect`] is called.
#[derive(Clone)]
pub struct Client {
    tx: mpsc::UnboundedSender<Command>,
    inflight: Arc<Semaphore>,
    closed: watch::Receiver<Option<String>>,
    protocol: Protocol,
}

impl Client {
    /// Sends CONNECT over `stream` and waits for the CONNACK; then runs the connection in a
    /// task. Returns the client, the CONNACK and the receiver of incoming messages.
    pub async fn connect<S>(
        stream: S,
        options: Options,
    ) -> Result<(Client, ConnAck, mpsc::Receiver<Incoming>), ClientError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let mut stream = stream;
        let protocol = options.connect.protocol;
        let mut buf = BytesMut::new();
        encode(
            &Packet::Connect(Box::new(options.connect.clone())),
            protocol,
            &mut buf,
        );
        let mut rbuf = BytesMut::with_capacity(1024);
        let handshake = async {
            stream.write_all(&buf).await?;
            stream.flush().await?;
            loop {
                match decode(&mut rbuf, protocol, options.max_packet_size) {
                    Ok(Some(Packet::ConnAck(ack))) => return Ok(ack),
                    Ok(Some(other)) => {
                        return Err(std::io::Error::other(format!(
                            "expected CONNACK, got {}",
                            other.name()
                        )));
                    }
                    Ok(None) => {}
                    Err(e) => return Err(std::io::Error::other(e.to_string())),
                }
                if stream.read_buf(&mut rbuf).await? == 0 {
                    return Err(std::io::Error::other("closed before CONNACK"));
                }
            }
        };
        let ack = match tokio::time::timeout(options.connect_timeout, handshake).await {
            Ok(Ok(ack)) => ack,
            Ok(Err(e)) => return Err(ClientError::Handshake(e.to_string())),
            Err(_) => return Err(ClientError::Handshake("no CONNACK in time".into())),
        };
        if ack.code != 0 {
            return Err(ClientError::Refused(ack.code));
        }
        let window = ack.properties.receive_maximum.unwrap_or(u16::MAX).max(1);
        let inflight = Arc::new(Semaphore::new(usize::from(window)));
        let (tx, rx) = mpsc::unbounded_channel();
        // Room for every QoS 1/2 message the server may have unacknowledged with us (our
        // receive maximum; MQTT 3.1.1 has none, so the server's own window, rarely above a
        // few hundred, is trusted), so that handing one over never waits: the connection
        // task must keep reading acknowledgements. QoS 0 messages that find it full are
        // dropped, as a broker drops them for a slow subscriber.
        let ours = options.connect.properties.receive_maximum.unwrap_or(1024);
        let (incoming_tx, incoming_rx) = mpsc::channel(usize::from(ours) + 64);
        let in_doubt = options.qos2_in_doubt.clone();
        let mut wbuf = BytesMut::new();
        if ack.session_present {
            // Releases first: the server keeps these ids until it gets them.
            for id in in_doubt.lock().iter() {
                encode(&ack_packet(Packet::PubRel, *id), protocol, &mut wbuf);
            }
        } else {
            in_doubt.lock().clear();
        }
        let (closed_tx, closed) = watch::channel(None);
        let keep_alive = match ack.properties.server_keep_alive {
            Some(k) => k,
            None => options.connect.keep_alive,
        };
        let conn = Connection {
            protocol,
            max_packet_size: options.max_packet_size,
            keep_alive: Duration::from_secs(u64::from(keep_alive)),
            self_tx: tx.downgrade(),
            incoming: incoming_tx,
            pending: HashMap::new(),
            received_qos2: HashSet::new(),
            pings: VecDeque::new(),
            in_doubt,
            qos0_dropped: 0,
            next_id: 0,
            aliases: HashMap::new(),
        };
        tokio::spawn(async move {
            let reason = conn.run(stream, rbuf, wbuf, rx).await;
            let _ = closed_tx.send(Some(reason));
        });
        Ok((
            Client {
                tx,
                inflight,
                closed,
                protocol,
            },
            ack,
            incoming_rx,
        ))
    }

    /// The protocol version this client speaks.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    fn closed_error(&self) -> ClientError {
        ClientError::Closed(
            self.closed
                .borrow()
                .clone()
                .unwrap_or_else(|| "connection task ended".into()),
        )
    }

    /// Publishes; returns when the message is written (QoS 0), acknowledged (QoS 1) or
    /// completed (QoS 2), with the server's reason code (0 for success, and always 0 for
    /// MQTT 3.1.1). Waits while the server's receive maximum is reached.
    pub async fn publish(&self, publish: Publish) -> Result<u8, ClientError> {
        self.publish_queued(publish).await?.await
    }

    /// Queues a publish in call order (waiting only for room in the server's receive
    /// maximum) and returns the wait for its acknowledgement: a forwarder keeps many in
    /// flight without reordering them.
    pub async fn publish_queued(
        &self,
        mut publish: Publish,
    ) -> Result<
        impl std::future::Future<Output = Result<u8, ClientError>> + Send + 'static,
        ClientError,
    > {
        let permit = if publish.qos == QoS::AtMostOnce {
            None
        } else {
            let mut closed = self.closed.clone();
            tokio::select! {
                p = self.inflight.clone().acquire_owned() => Some(p.map_err(|_| self.closed_error())?),
                _ = closed.wait_for(Option::is_some) => return Err(self.closed_error()),
            }
        };
        publish.packet_id = 0;
        let (done, result) = oneshot::channel();
        self.tx
            .send(Command::Publish(Box::new(publish), permit, done))
            .map_err(|_| self.closed_error())?;
        let closed = self.closed.clone();
        Ok(async move {
            match result.await {
                Ok(r) => r,
                Err(_) => Err(ClientError::Closed(
                    closed
                        .borrow()
                        .clone()
                        .unwrap_or_else(|| "connection task ended".into()),
                )),
            }
        })
    }

    /// Subscribes; returns one reason code per filter.
    pub async fn subscribe(&self, filters: Vec<SubscribeFilter>) -> Result<Vec<u8>, ClientError> {
        let (done, result) = oneshot::channel();
        self.tx
            .send(Command::Subscribe(filters, done))
            .map_err(|_| self.closed_error())?;
        result.await.map_err(|_| self.closed_error())?
    }

    /// Unsubscribes; returns the reason codes (empty for MQTT 3.1.1).
    pub async fn unsubscribe(
        &self,
        filters: Vec<bytestring::ByteString>,
    ) -> Result<Vec<u8>, ClientError> {
        let (done, result) = oneshot::channel();
        self.tx
            .send(Command::Unsubscribe(filters, done))
            .map_err(|_| self.closed_error())?;
        result.await.map_err(|_| self.closed_error())?
    }

    /// A round trip: PINGREQ, then waits for the PINGRESP. The server answers packets in
    /// order, so whatever it sent before (retained messages after a SUBACK) has arrived.
    pub async fn ping(&self) -> Result<(), ClientError> {
        let (done, result) = oneshot::channel();
        self.tx
            .send(Command::Ping(done))
            .map_err(|_| self.closed_error())?;
        result.await.map_err(|_| self.closed_error())?.map(|_| ())
    }

    /// Sends DISCONNECT (normal, the will is not published) and closes.
    pub fn disconnect(&self) {
        let _ = self.tx.send(Command::Disconnect);
    }

    /// True once the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.borrow().is_some()
    }

    /// Waits until the connection has ended; returns why.
    pub async fn closed(&self) -> String {
        let mut closed = self.closed.clone();
        match closed.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => "connection task ended".into(),
        }
    }
}

/// A PUBACK, PUBREC, PUBREL or PUBCOMP for `packet_id`, success and no properties.
fn ack_packet(kind: fn(Ack) -> Packet, packet_id: u16) -> Packet {
    kind(Ack {
        packet_id,
        ..Ack::default()
    })
}

enum Pending {
    /// A QoS 1/2 publish waiting for PUBACK, or PUBREC then PUBCOMP (the PUBREC's reason
    /// code once it came).
    Publish {
        qos: QoS,
        rec: Option<u8>,
        done: oneshot::Sender<Result<u8, ClientError>>,
        _permit: Option<OwnedSemaphorePermit>,
    },
    Subscribe(oneshot::Sender<Result<Vec<u8>, ClientError>>),
    Unsubscribe(oneshot::Sender<Result<Vec<u8>, ClientError>>),
}

struct Connection {
    protocol: Protocol,
    max_packet_size: usize,
    keep_alive: Duration,
    /// Weak: the connection closes when every [`Client`] is gone (acks of messages still
    /// held by the consumer hold strong ones).
    self_tx: mpsc::WeakUnboundedSender<Command>,
    incoming: mpsc::Sender<Incoming>,
    pending: HashMap<u16, Pending>,
    /// QoS 2 messages received whose PUBREL has not come: a resent PUBLISH with one of these
    /// ids is the same message.
    received_qos2: HashSet<u16>,
    /// One entry per PINGREQ sent, in order: a caller's, or `None` for a keep-alive one.
    pings: VecDeque<Option<oneshot::Sender<Result<u8, ClientError>>>>,
    in_doubt: InDoubt,
    qos0_dropped: u64,
    next_id: u16,
    /// Topic aliases the server set (MQTT 5.0), should it use them.
    aliases: HashMap<u16, bytestring::ByteString>,
}

impl Connection {
    fn packet_id(&mut self) -> u16 {
        let in_doubt = self.in_doubt.lock();
        loop {
            self.next_id = self.next_id.wrapping_add(1);
            if self.next_id != 0
                && !self.pending.contains_key(&self.next_id)
                && !in_doubt.contains(&self.next_id)
            {
                return self.next_id;
            }
        }
    }

    async fn run<S>(
        mut self,
        stream: S,
        mut rbuf: BytesMut,
        mut wbuf: BytesMut,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) -> String
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let ping_every = if self.keep_alive.is_zero() {
            Duration::from_secs(3600)
        } else {
            self.keep_alive
                .mul_f32(0.75)
                .max(Duration::from_millis(500))
        };
        let mut ping = tokio::time::interval(ping_every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let mut last_read = tokio::time::Instant::now();
        let reason = loop {
            // Whatever is already buffered is handled before waiting.
            loop {
                match decode(&mut rbuf, self.protocol, self.max_packet_size) {
                    Ok(Some(packet)) => {
                        if let Err(reason) = self.on_packet(packet, &mut wbuf).await {
                            return self.finish(reason);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return self.finish(format!("malformed packet from the server: {e}")),
                }
            }
            if !wbuf.is_empty() {
                if let Err(e) = writer.write_all(&wbuf).await {
                    break format!("write failed: {e}");
                }
                wbuf.clear();
                if let Err(e) = writer.flush().await {
                    break format!("write failed: {e}");
                }
            }
            tokio::select! {
                read = reader.read_buf(&mut rbuf) => match read {
                    Ok(0) => break "closed by the server".to_owned(),
                    Ok(_) => last_read = tokio::time::Instant::now(),
                    Err(e) => break format!("read failed: {e}"),
                },
                command = commands.recv() => match command {
                    Some(Command::Disconnect) | None => {
                        wbuf.clear();
                        encode(&Packet::Disconnect(Disconnect::default()), self.protocol, &mut wbuf);
                        let _ = writer.write_all(&wbuf).await;
                        let _ = writer.flush().await;
                        let _ = writer.shutdown().await;
                        break "disconnected".to_owned();
                    }
                    Some(command) => self.on_command(command, &mut wbuf),
                },
                _ = ping.tick() => {
                    if !self.keep_alive.is_zero() && last_read.elapsed() > self.keep_alive * 2 {
                        break "the server stopped answering (keep alive)".to_owned();
                    }
                    encode(&Packet::PingReq, self.protocol, &mut wbuf);
                    self.pings.push_back(None);
                }
            }
        };
        self.finish(reason)
    }

    fn finish(mut self, reason: String) -> String {
        for (_, pending) in self.pending.drain() {
            let error = ClientError::Closed(reason.clone());
            match pending {
                Pending::Publish { done, .. } => {
                    let _ = done.send(Err(error));
                }
                Pending::Subscribe(done) | Pending::Unsubscribe(done) => {
                    let _ = done.send(Err(error));
                }
            }
        }
        for done in self.pings.drain(..).flatten() {
            let _ = done.send(Err(ClientError::Closed(reason.clone())));
        }
        if self.qos0_dropped > 0 {
            tracing::debug!(
                dropped = self.qos0_dropped,
                "QoS 0 messages dropped: the consumer was behind"
            );
        }
        reason
    }

    fn on_command(&mut self, command: Command, wbuf: &mut BytesMut) {
        match command {
            Command::Publish(publish, permit, done) => {
                let mut publish = *publish;
                if publish.qos == QoS::AtMostOnce {
                    encode(&Packet::Publish(publish), self.protocol, wbuf);
                    let _ = done.send(Ok(0));
                    return;
                }
                let id = self.packet_id();
                publish.packet_id = id;
                let qos = publish.qos;
                if qos == QoS::ExactlyOnce {
                    self.in_doubt.lock().insert(id);
                }
                encode(&Packet::Publish(publish), self.protocol, wbuf);
                self.pending.insert(
                    id,
                    Pending::Publish {
                        qos,
                        rec: None,
                        done,
                        _permit: permit,
                    },
                );
            }
            Command::Subscribe(filters, done) => {
                let id = self.packet_id();
                encode(
                    &Packet::Subscribe(Subscribe {
                        packet_id: id,
                        filters,
                        properties: Default::default(),
                    }),
                    self.protocol,
                    wbuf,
                );
                self.pending.insert(id, Pending::Subscribe(done));
            }
            Command::Unsubscribe(filters, done) => {
                let id = self.packet_id();
                encode(
                    &Packet::Unsubscribe(Unsubscribe {
                        packet_id: id,
                        filters,
                        user_properties: Vec::new(),
                    }),
                    self.protocol,
                    wbuf,
                );
                self.pending.insert(id, Pending::Unsubscribe(done));
            }
            Command::Ping(done) => {
                encode(&Packet::PingReq, self.protocol, wbuf);
                self.pings.push_back(Some(done));
            }
            Command::AckIncoming(packet_id, qos) => {
                let kind = if qos == QoS::ExactlyOnce {
                    Packet::PubRec
                } else {
                    Packet::PubAck
                };
                encode(&ack_packet(kind, packet_id), self.protocol, wbuf);
            }
            Command::Disconnect => {}
        }
    }

    async fn on_packet(&mut self, packet: Packet, wbuf: &mut BytesMut) -> Result<(), String> {
        match packet {
            Packet::Publish(mut publish) => {
                if let Some(alias) = publish.properties.topic_alias.take() {
                    if publish.topic.is_empty() {
                        match self.aliases.get(&alias) {
                            Some(topic) => publish.topic = topic.clone(),
                            None => return Err(format!("unknown topic alias {alias}")),
                        }
                    } else {
                        self.aliases.insert(alias, publish.topic.clone());
                    }
                }
                let qos = publish.qos;
                let id = publish.packet_id;
                if qos == QoS::ExactlyOnce && !self.received_qos2.insert(id) {
                    // Resent before our PUBREC: the consumer has it already. A PUBREC is
                    // only sent once the consumer acked, so say nothing now.
                    return Ok(());
                }
                let Some(tx) = self.self_tx.upgrade() else {
                    return Err("the client is gone".into());
                };
                let acker = (qos != QoS::AtMostOnce).then_some((tx, id, qos));
                let incoming = Incoming { publish, acker };
                if qos == QoS::AtMostOnce {
                    match self.incoming.try_send(incoming) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => self.qos0_dropped += 1,
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            return Err("the consumer is gone".into());
                        }
                    }
                } else if self.incoming.send(incoming).await.is_err() {
                    // Never waits in practice: the channel has room for the whole window.
                    return Err("the consumer is gone".into());
                }
            }
            Packet::PubAck(ack) => {
                if let Some(Pending::Publish { done, .. }) = self.pending.remove(&ack.packet_id) {
                    let _ = done.send(Ok(ack.reason));
                }
            }
            Packet::PubRec(ack) => match self.pending.get_mut(&ack.packet_id) {
                Some(Pending::Publish {
                    qos: QoS::ExactlyOnce,
                    rec,
                    ..
                }) => {
                    if ack.reason >= 0x80 {
                        // Refused: the exchange ends here (MQTT 5.0 section 4.3.3).
                        self.in_doubt.lock().remove(&ack.packet_id);
                        if let Some(Pending::Publish { done, .. }) =
                            self.pending.remove(&ack.packet_id)
                        {
                            let _ = done.send(Ok(ack.reason));
                        }
                    } else {
                        *rec = Some(ack.reason);
                        encode(
                            &ack_packet(Packet::PubRel, ack.packet_id),
                            self.protocol,
                            wbuf,
                        );
                    }
                }
                _ => {
                    // Not ours (a session resumed by the server): release it anyway.
                    encode(
                        &ack_packet(Packet::PubRel, ack.packet_id),
                        self.protocol,
                        wbuf,
                    );
                }
            },
            Packet::PubComp(ack) => {
                self.in_doubt.lock().remove(&ack.packet_id);
                if let Some(Pending::Publish { done, rec, .. }) =
                    self.pending.remove(&ack.packet_id)
                {
                    let _ = done.send(Ok(rec.unwrap_or(ack.reason)));
                }
            }
            Packet::PubRel(ack) => {
                self.received_qos2.remove(&ack.packet_id);
                encode(
                    &ack_packet(Packet::PubComp, ack.packet_id),
                    self.protocol,
                    wbuf,
                );
            }
            Packet::SubAck(ack) => {
                if let Some(Pending::Subscribe(done)) = self.pending.remove(&ack.packet_id) {
                    let _ = done.send(Ok(ack.reason_codes));
                }
            }
            Packet::UnsubAck(ack) => {
                if let Some(Pending::Unsubscribe(done)) = self.pending.remove(&ack.packet_id) {
                    let _ = done.send(Ok(ack.reason_codes));
                }
            }
            Packet::PingResp => {
                if let Some(Some(done)) = self.pings.pop_front() {
                    let _ = done.send(Ok(0));
                }
            }
            Packet::Disconnect(d) => {
                return Err(format!(
                    "disconnected by the server (reason {:#04x})",
                    d.reason
                ));
            }
            Packet::PingReq => encode(&Packet::PingResp, self.protocol, wbuf),
            other => return Err(format!("unexpected {} from the server", other.name())),
        }
        Ok(())
    }
}
