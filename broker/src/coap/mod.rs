//! The CoAP gateway (RFC 7252, with block-wise transfer, RFC 7959, and Observe, RFC 7641):
//! devices speak CoAP over UDP, and each becomes an ordinary MQTT session of this broker.
//!
//! - [`topics`] and [`request`]: pure mapping of requests to devices and topics.
//! - [`exchanges`]: duplicate detection by message id.
//! - [`outbox`]: the gateway's own confirmable messages, retransmitted.
//! - [`device`]: a device's MQTT session, observers, notifications and commands.
//! - [`transport`] and [`dtls`]: the plain UDP listener and the DTLS-PSK one (`coaps://`).
//!
//! Message encoding is the `coap-lite` crate's, block-wise transfer its `BlockHandler`.

pub mod blocks;
pub mod datagram;
pub mod device;
pub mod dtls;
pub mod exchanges;
pub mod outbox;
pub mod request;
pub mod topics;
pub mod transport;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use coap_lite::block_handler::BlockValue;
use coap_lite::{
    BlockHandler, BlockHandlerConfig, CoapOption, CoapRequest, MessageClass, MessageType, Packet,
    ResponseType,
};
use indexmap::IndexMap;
use parking_lot::Mutex;
use rookery_codec::{QoS, reason};
use tokio::net::UdpSocket;
use tracing::{debug, warn};

use self::device::{Device, Identity, Observer, observe_filter, publish_for};
use self::exchanges::{EXCHANGE_LIFETIME, Exchanges, Seen};
use self::outbox::{Outbox, Timing};
use self::request::{Method, Observe, Request, uint_bytes};
use self::transport::{Peer, Transport};
use crate::broker::Broker;
use crate::config::Config;
use crate::limits::bucket::TokenBucket;

use self::blocks::Slice;
use self::datagram::MAX_DATAGRAM;

/// Last values kept for reads without a device wake-up.
const CACHE_ENTRIES: usize = 10_000;
/// Largest payload cached.
const CACHE_PAYLOAD: usize = 64 * 1024;
/// Exchanges remembered for duplicate detection.
const EXCHANGES: usize = 100_000;
/// Requests handled at once; past it a request gets 5.03 Service Unavailable.
const CONCURRENT_REQUESTS: usize = 4096;
/// Devices known at once (each is a session); past it a new device gets 5.03.
const MAX_DEVICES: usize = 100_000;
/// Largest request body reassembled from Block1 parts.
const MAX_BLOCK1_BODY: usize = 64 * 1024;

/// Why a datagram was dropped (the `reason` label of `rookery_coap_dropped_total`).
#[derive(Debug, Clone, Copy)]
pub enum Dropped {
    /// Not a CoAP message.
    Malformed = 0,
    /// Over the per-address rate.
    RateLimited,
    /// A duplicate, answered from the exchange cache or ignored.
    Duplicate,
    /// Longer than one datagram may be.
    TooLarge,
    /// An ACK, RST or response nobody waits for.
    Unexpected,
}

impl Dropped {
    /// Every reason, in index order.
    pub const ALL: [Dropped; 5] = [
        Dropped::Malformed,
        Dropped::RateLimited,
        Dropped::Duplicate,
        Dropped::TooLarge,
        Dropped::Unexpected,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Dropped::Malformed => "malformed",
            Dropped::RateLimited => "rate_limited",
            Dropped::Duplicate => "duplicate",
            Dropped::TooLarge => "too_large",
            Dropped::Unexpected => "unexpected",
        }
    }
}

/// Method labels of `rookery_coap_requests_total`, in index order.
pub const METHODS: [&str; 4] = ["GET", "POST", "PUT", "DELETE"];

/// Result labels of `rookery_coap_commands_total`, in index order.
pub const COMMAND_RESULTS: [&str; 3] = ["answered", "error", "timeout"];

struct Cached {
    payload: Bytes,
    format: Option<u16>,
    at: Instant,
}

/// The gateway's shared state.
pub struct Gateway {
    /// The broker it is part of.
    pub broker: Arc<Broker>,
    /// The configuration at start.
    pub config: Config,
    /// The listeners, for sending.
    pub transport: Transport,
    /// Confirmable messages in flight.
    pub outbox: Outbox,
    /// Retransmission parameters.
    pub timing: Timing,
    devices: Mutex<HashMap<String, Arc<Device>>>,
    exchanges: Mutex<Exchanges>,
    blocks: Mutex<BlockHandler<Peer>>,
    /// Per source address (an IPv6 source by its /64).
    buckets: Mutex<HashMap<(&'static str, std::net::IpAddr), TokenBucket>>,
    cache: Mutex<IndexMap<String, Cached>>,
    handling: Arc<tokio::sync::Semaphore>,
    /// NON notifications sent lately, by (observer, message id): an RST in answer ends the
    /// observation (RFC 7641 section 3.6).
    non_sent: Mutex<IndexMap<(Peer, u16), SentNotification>>,
}

/// A NON notification, remembered for a while in case its observer answers with RST.
struct SentNotification {
    at: Instant,
    device: String,
    topic: String,
    token: Vec<u8>,
}

/// NON notifications remembered at once (the oldest go first).
const NON_REMEMBERED: usize = 10_000;
/// How long an RST may follow a NON notification (RFC 7252's NON_LIFETIME).
const NON_LIFETIME: Duration = Duration::from_secs(145);

/// Binds one of the gateway's sockets.
pub async fn bind(addr: std::net::SocketAddr) -> std::io::Result<UdpSocket> {
    UdpSocket::bind(addr).await
}

/// Runs the gateway on its plain socket (`coap_listen`) and its secure one (`coaps_listen`)
/// until the broker shuts down.
pub async fn run(plain: Option<UdpSocket>, secure: Option<UdpSocket>, broker: Arc<Broker>) {
    let config = broker.config.clone();
    let statics = config.coap_device_map().unwrap_or_default();
    let gateway = Arc::new(Gateway {
        timing: Timing {
            ack_timeout: Duration::from_millis(config.coap_ack_timeout_ms),
            max_retransmit: config.coap_max_retransmit,
        },
        devices: Mutex::new(
            statics
                .iter()
                .map(|(id, addr)| {
                    let device = Device::new(id, Some(Peer::plain(*addr)), true);
                    (id.clone(), Arc::new(device))
                })
                .collect(),
        ),
        exchanges: Mutex::new(Exchanges::new(EXCHANGE_LIFETIME, EXCHANGES)),
        blocks: Mutex::new(BlockHandler::new(BlockHandlerConfig {
            max_total_message_size: datagram::BLOCK_MESSAGE_SIZE,
            cache_expiry_duration: Duration::from_secs(120),
        })),
        buckets: Mutex::new(HashMap::new()),
        cache: Mutex::new(IndexMap::new()),
        handling: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_REQUESTS)),
        non_sent: Mutex::new(IndexMap::new()),
        outbox: Outbox::new(),
        transport: Transport {
            plain: plain.map(Arc::new),
            secure: secure.map(|s| {
                Arc::new(dtls::Sessions::new(
                    s,
                    broker.config.psk_hint.as_deref(),
                    broker.clone(),
                ))
            }),
        },
        config,
        broker: broker.clone(),
    });
    broker.tasks.spawn(housekeeping(gateway.clone()));
    if let Some(sessions) = gateway.transport.secure.clone() {
        broker.tasks.spawn(dtls::serve(gateway.clone(), sessions));
    }
    if let Some(socket) = gateway.transport.plain.clone() {
        let shutdown = broker.shutdown.clone();
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        loop {
            let (len, addr) = tokio::select! {
                r = socket.recv_from(&mut buf) => match r {
                    Ok(r) => r,
                    Err(e) => {
                        // ICMP errors surface here on some systems; the socket is still good.
                        debug!("coap: receive failed: {e}");
                        continue;
                    }
                },
                _ = shutdown.cancelled() => break,
            };
            gateway.datagram(&buf[..len], Peer::plain(addr), None).await;
        }
    } else {
        broker.shutdown.cancelled().await;
    }
    let devices: Vec<Arc<Device>> = gateway.devices.lock().drain().map(|(_, d)| d).collect();
    for device in devices {
        device.disconnect().await;
    }
}

/// Connects the static devices (so that their commands flow) and closes idle sessions.
async fn housekeeping(gateway: Arc<Gateway>) {
    let idle = Duration::from_secs(gateway.config.coap_idle_secs.max(1));
    let every = (idle / 4).clamp(Duration::from_millis(200), Duration::from_secs(5));
    let shutdown = gateway.broker.shutdown.clone();
    loop {
        let devices: Vec<Arc<Device>> = gateway.devices.lock().values().cloned().collect();
        for device in devices {
            if device.fixed {
                // Without anonymous access the device's session waits for its first
                // authenticated request.
                if gateway.broker.config.anonymous_allowed()
                    && gateway.broker.security.passwords().is_none()
                    && !gateway.broker.security.psk_contains(&device.id)
                    && !device.is_connected().await
                {
                    let anonymous = Identity {
                        username: None,
                        password: Vec::new(),
                        trusted: false,
                    };
                    if let Err(code) = device.client(&gateway, &anonymous, None).await {
                        debug!(device = %device.id, ?code, "static device: no session yet");
                    }
                }
            } else if !device.observers.lock().is_empty() {
                device.keep_observed(&gateway).await;
            } else if device.is_idle(idle) {
                device.disconnect().await;
                gateway
                    .devices
                    .lock()
                    .retain(|_, d| !Arc::ptr_eq(d, &device));
            }
        }
        if let Some(sessions) = &gateway.transport.secure {
            let security = &gateway.broker.security;
            for id in sessions.revoke(|id| security.psk_contains(id)) {
                debug!(device = %id, "coaps: identity revoked: its DTLS session is closed");
            }
            // And every device session made as an identity no longer in the file, with or
            // without a DTLS session open now.
            let devices: Vec<Arc<Device>> = gateway.devices.lock().values().cloned().collect();
            for device in devices {
                if let Some(id) = device.trusted_as()
                    && !security.psk_contains(&id)
                {
                    debug!(device = %id, "coaps: identity revoked: its MQTT connection is closed");
                    device.disconnect_trusted().await;
                }
            }
        }
        // Rate-limit buckets: a flood of source addresses must not grow them without end
        // (a cleared bucket starts full again, which only forgives a burst).
        {
            let mut buckets = gateway.buckets.lock();
            if buckets.len() > 100_000 {
                buckets.clear();
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

fn bump(counter: &std::sync::atomic::AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// An empty message (code 0.00: an ACK or RST without a response).
fn empty(kind: MessageType, message_id: u16) -> Packet {
    let mut p = Packet::new();
    p.header.set_version(1);
    p.header.set_type(kind);
    p.header.code = MessageClass::Empty;
    p.header.message_id = message_id;
    p
}

/// A response to `request` with `code` (piggybacked on the ACK of a CON, a NON for a NON).
fn reply(request: &Packet, code: ResponseType) -> Packet {
    let mut p = Packet::new();
    p.header.set_version(1);
    p.header.set_type(match request.header.get_type() {
        MessageType::Confirmable => MessageType::Acknowledgement,
        _ => MessageType::NonConfirmable,
    });
    p.header.code = MessageClass::Response(code);
    p.header.message_id = request.header.message_id;
    p.set_token(request.get_token().to_vec());
    p
}

fn diagnostic(request: &Packet, code: ResponseType, why: &str) -> Packet {
    let mut p = reply(request, code);
    p.payload = why.as_bytes().to_vec();
    p
}

impl Gateway {
    fn dropped(&self, why: Dropped) {
        bump(&self.broker.metrics.coap_dropped_total[why as usize]);
    }

    /// Sends a packet, ignoring errors (UDP: the peer retransmits or gives up). False when
    /// `peer` is a DTLS session that has ended.
    pub async fn send(&self, peer: Peer, packet: &Packet) -> bool {
        match packet.to_bytes_unlimited() {
            Ok(bytes) => self.transport.send(peer, &bytes).await,
            Err(e) => {
                warn!(%peer, "coap: cannot encode a response: {e:?}");
                true
            }
        }
    }

    /// Within the per-address rate of `class`: plain requests, DTLS requests and DTLS
    /// handshake starts count apart, so that forged plain datagrams or forged ClientHellos
    /// cannot use up a DTLS device's allowance for its requests.
    fn allowed(&self, class: &'static str, ip: std::net::IpAddr) -> bool {
        let rate = f64::from(self.config.coap_rate_limit);
        if rate <= 0.0 {
            return true;
        }
        let now = Instant::now();
        let key = (class, crate::security::authenticate::address_block(ip));
        let mut buckets = self.buckets.lock();
        let bucket = buckets
            .entry(key)
            .or_insert_with(|| TokenBucket::new(rate * 2.0, now));
        bucket.take(1.0, rate, rate * 2.0, now).is_none()
    }

    /// One datagram from `peer`; `identity` is the PSK identity of a DTLS session.
    async fn datagram(self: &Arc<Self>, bytes: &[u8], peer: Peer, identity: Option<&str>) {
        let class = if peer.is_secure() { "coaps" } else { "coap" };
        let limited = !self.allowed(class, peer.addr.ip());
        let packet = match datagram::decode(bytes) {
            Ok(p) => p,
            Err(why) => {
                self.dropped(match why {
                    datagram::Refused::TooLarge => Dropped::TooLarge,
                    datagram::Refused::Malformed => Dropped::Malformed,
                });
                // RFC 7252 section 4.2: a confirmable message that cannot be processed is
                // rejected with RST (when at least its header can be read).
                if !limited && datagram::is_confirmable_header(bytes) {
                    let id = u16::from_be_bytes([bytes[2], bytes[3]]);
                    self.send(peer, &empty(MessageType::Reset, id)).await;
                }
                return;
            }
        };
        match (packet.header.get_type(), packet.header.code) {
            (MessageType::Reset, _) if self.reset_of_notification(peer, &packet) => {}
            (MessageType::Acknowledgement | MessageType::Reset, _) => {
                if !self.outbox.on_ack(peer, packet) {
                    self.dropped(Dropped::Unexpected);
                }
            }
            // CoAP ping (an empty CON) is answered with RST.
            (MessageType::Confirmable, MessageClass::Empty) => {
                self.send(peer, &empty(MessageType::Reset, packet.header.message_id))
                    .await;
            }
            (t, MessageClass::Response(_)) => {
                let id = packet.header.message_id;
                if t == MessageType::Confirmable {
                    self.send(peer, &empty(MessageType::Acknowledgement, id))
                        .await;
                }
                if !self.outbox.on_response(peer, packet) {
                    self.dropped(Dropped::Unexpected);
                }
            }
            (MessageType::Confirmable | MessageType::NonConfirmable, MessageClass::Request(_)) => {
                if limited {
                    self.dropped(Dropped::RateLimited);
                    if packet.header.get_type() == MessageType::Confirmable {
                        let mut p = reply(&packet, ResponseType::TooManyRequests);
                        p.add_option(CoapOption::MaxAge, uint_bytes(1));
                        self.send(peer, &p).await;
                    }
                    return;
                }
                let id = packet.header.message_id;
                let Ok(permit) = self.handling.clone().try_acquire_owned() else {
                    // Not remembered as seen: its retransmission may find room.
                    let mut p = reply(&packet, ResponseType::ServiceUnavailable);
                    p.add_option(CoapOption::MaxAge, uint_bytes(2));
                    self.send(peer, &p).await;
                    return;
                };
                let seen = self.exchanges.lock().begin(peer, id, Instant::now());
                match seen {
                    Seen::New => {
                        let gateway = self.clone();
                        let identity = identity.map(str::to_owned);
                        // Publishing waits for the broker: each request runs on its own.
                        tokio::spawn(async move {
                            let _permit = permit;
                            let response = gateway.request(packet, peer, identity.as_deref()).await;
                            let bytes = response.and_then(|p| p.to_bytes_unlimited().ok());
                            if let Some(bytes) = &bytes {
                                let _ = gateway.transport.send(peer, bytes).await;
                            }
                            gateway
                                .exchanges
                                .lock()
                                .answer(peer, id, bytes.unwrap_or_default());
                        });
                    }
                    Seen::InProgress => self.dropped(Dropped::Duplicate),
                    Seen::Answered(bytes) => {
                        self.dropped(Dropped::Duplicate);
                        if !bytes.is_empty() {
                            let _ = self.transport.send(peer, &bytes).await;
                        }
                    }
                }
            }
            _ => self.dropped(Dropped::Malformed),
        }
    }

    /// Handles one request; the response to send, if any.
    async fn request(
        self: &Arc<Self>,
        packet: Packet,
        peer: Peer,
        identity: Option<&str>,
    ) -> Option<Packet> {
        let mut response = self.respond(packet, peer, identity).await?;
        // A response to a NON is a NON of its own, with its own message id (RFC 7252
        // section 5.2.3); a response to a CON rides on its ACK, with the request's id.
        if response.header.get_type() == MessageType::NonConfirmable {
            response.header.message_id = self.outbox.message_id();
        }
        Some(response)
    }

    async fn respond(
        self: &Arc<Self>,
        packet: Packet,
        peer: Peer,
        identity: Option<&str>,
    ) -> Option<Packet> {
        let limit = (self.config.max_packet_size as usize).min(MAX_BLOCK1_BODY);
        let block1 = packet
            .get_first_option_as::<BlockValue>(CoapOption::Block1)
            .and_then(Result::ok);
        if let Some(b) = &block1
            && (usize::from(b.num) + 1).saturating_mul(b.size()) > limit
        {
            let mut p = diagnostic(
                &packet,
                ResponseType::RequestEntityTooLarge,
                "request body too large",
            );
            p.add_option(CoapOption::Size1, uint_bytes(limit as u32));
            return Some(p);
        }
        if !datagram::leaves_room_for_a_block(&packet) {
            return Some(diagnostic(
                &packet,
                ResponseType::BadOption,
                "options too long to leave room for a block",
            ));
        }
        let asked2 = packet
            .get_first_option_as::<BlockValue>(CoapOption::Block2)
            .and_then(Result::ok);
        let mut exchange = CoapRequest::from_packet(packet, peer);
        // Block1 parts are put together by coap-lite's handler (2.31 Continue for each but
        // the last, which comes back whole).
        if block1.is_some() {
            let intercepted = {
                let mut blocks = self.blocks.lock();
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    blocks.intercept_request(&mut exchange)
                }))
            };
            match intercepted {
                Ok(Ok(true)) => return exchange.response.map(|r| r.message),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    let mut p = reply(
                        &exchange.message,
                        e.code.unwrap_or(ResponseType::BadRequest),
                    );
                    p.payload = e.message.into_bytes();
                    return Some(p);
                }
                Err(_) => return Some(reply(&exchange.message, ResponseType::InternalServerError)),
            }
        }
        let mut response = self.handle(&exchange.message, peer, identity).await;
        if let Some(b1) = exchange
            .response
            .as_ref()
            .and_then(|r| r.message.get_option(CoapOption::Block1).cloned())
        {
            response.set_option(CoapOption::Block1, b1);
        }
        // Block2: the part of the value asked for, cut from the current value.
        match blocks::block2(response.payload.len(), asked2.as_ref()) {
            Slice::Whole => {}
            Slice::Block(range, value) => {
                response.payload = response.payload[range].to_vec();
                response.add_option_as(CoapOption::Block2, value);
            }
            Slice::OutOfRange => {
                return Some(diagnostic(
                    &exchange.message,
                    ResponseType::BadOption,
                    "no such block",
                ));
            }
        }
        Some(response)
    }

    /// Remembers a NON notification sent to `observer` of `device`.
    pub fn sent_non(&self, device: &str, observer: &Observer, message_id: u16) {
        let now = Instant::now();
        let mut sent = self.non_sent.lock();
        while sent.len() >= NON_REMEMBERED
            || sent
                .first()
                .is_some_and(|(_, n)| now.duration_since(n.at) > NON_LIFETIME)
        {
            sent.shift_remove_index(0);
        }
        sent.insert(
            (observer.addr, message_id),
            SentNotification {
                at: now,
                device: device.to_owned(),
                topic: observer.topic.clone(),
                token: observer.token.clone(),
            },
        );
    }

    /// An RST answering a NON notification: the observer is gone. True when it was one.
    fn reset_of_notification(&self, peer: Peer, packet: &Packet) -> bool {
        let Some(sent) = self
            .non_sent
            .lock()
            .shift_remove(&(peer, packet.header.message_id))
        else {
            return false;
        };
        let device = self.devices.lock().get(&sent.device).cloned();
        if let Some(device) = device
            && device.unobserve(&sent.topic, peer, Some(&sent.token))
        {
            let topic = sent.topic.clone();
            tokio::spawn(async move { device.unsubscribe(&topic).await });
        }
        true
    }

    /// The first block of a notification too large for one datagram; the observer fetches
    /// the rest with GETs for the following blocks.
    pub fn first_block(&self, mut packet: Packet) -> Packet {
        if let Slice::Block(range, value) = blocks::block2(packet.payload.len(), None) {
            packet.payload = packet.payload[range].to_vec();
            packet.add_option_as(CoapOption::Block2, value);
        }
        packet
    }

    /// Remembers the last value of a topic.
    pub fn cache_put(&self, topic: &str, payload: Bytes, format: Option<u16>) {
        if payload.len() > CACHE_PAYLOAD {
            self.cache.lock().shift_remove(topic);
            return;
        }
        let mut cache = self.cache.lock();
        cache.shift_remove(topic);
        cache.insert(
            topic.to_owned(),
            Cached {
                payload,
                format,
                at: Instant::now(),
            },
        );
        while cache.len() > CACHE_ENTRIES {
            cache.shift_remove_index(0);
        }
    }

    /// The last value of a topic: the newer of the gateway's cache and the retained message.
    fn last_value(&self, topic: &str) -> Option<(Bytes, Option<u16>)> {
        let now = Instant::now();
        let retained = self
            .broker
            .retained
            .read()
            .get(topic)
            .filter(|m| !m.is_expired(now))
            .cloned();
        let cache = self.cache.lock();
        let cached = cache.get(topic);
        match (retained, cached) {
            (Some(r), Some(c)) if c.at > r.received => Some((c.payload.clone(), c.format)),
            (Some(r), _) => Some((
                r.payload.clone(),
                r.properties
                    .content_type
                    .as_deref()
                    .and_then(request::content_format),
            )),
            (None, Some(c)) => Some((c.payload.clone(), c.format)),
            (None, None) => None,
        }
    }

    fn device(&self, id: &str) -> Option<Arc<Device>> {
        let mut devices = self.devices.lock();
        if let Some(d) = devices.get(id) {
            return Some(d.clone());
        }
        if devices.len() >= MAX_DEVICES {
            return None;
        }
        let d = Arc::new(Device::new(id, None, false));
        devices.insert(id.to_owned(), d.clone());
        Some(d)
    }

    async fn handle(
        self: &Arc<Self>,
        packet: &Packet,
        peer: Peer,
        authenticated: Option<&str>,
    ) -> Packet {
        let anonymous = self.broker.config.anonymous_allowed();
        let req = match request::parse(packet, anonymous, authenticated) {
            Ok(r) => r,
            Err(refusal) => return diagnostic(packet, refusal.code, &refusal.reason),
        };
        let slot = match req.method {
            Method::Get => 0,
            Method::Post => 1,
            Method::Put => 2,
            Method::Delete => 3,
        };
        bump(&self.broker.metrics.coap_requests_total[slot]);
        // A device with a pre-shared key speaks only over DTLS: a plain request naming it,
        // whatever its credentials, is someone else.
        if authenticated.is_none() && self.broker.security.psk_contains(&req.device) {
            return diagnostic(
                packet,
                ResponseType::Unauthorized,
                "this device authenticates with DTLS",
            );
        }
        let Some(device) = self.device(&req.device) else {
            return reply(packet, ResponseType::ServiceUnavailable);
        };
        let identity = match authenticated {
            Some(id) => Identity {
                username: Some(id.to_owned()),
                password: Vec::new(),
                trusted: true,
            },
            None => Identity {
                username: req.credentials.as_ref().map(|(u, _)| u.clone()),
                password: req
                    .credentials
                    .as_ref()
                    .map(|(_, p)| p.clone())
                    .unwrap_or_default(),
                trusted: false,
            },
        };
        let client = match device.client(self, &identity, Some(peer)).await {
            Ok(c) => c,
            Err(code) => return reply(packet, code),
        };
        device.seen(peer);
        let topic = topics::resource_topic(&self.config.coap_prefix, &req.device, &req.resource);
        match req.method {
            Method::Post | Method::Put => {
                let retain = req.method == Method::Put;
                let payload = packet.payload.clone();
                if payload.len() + topic.len() + 64 > self.config.max_packet_size as usize {
                    return diagnostic(
                        packet,
                        ResponseType::RequestEntityTooLarge,
                        "larger than max_packet_size",
                    );
                }
                let publish =
                    publish_for(&topic, payload.clone(), req.qos, retain, req.content_format);
                match client.publish(publish).await {
                    // A QoS 0 publish the ACL refuses is dropped without a word: only what
                    // the device may write becomes its last value.
                    Ok(code)
                        if code < 0x80
                            && self.broker.security.can_publish(
                                identity.username.as_deref(),
                                &device.client_id(),
                                &topic,
                            ) =>
                    {
                        self.cache_put(&topic, Bytes::from(payload), req.content_format);
                        reply(packet, ResponseType::Changed)
                    }
                    Ok(code) if code < 0x80 => reply(packet, ResponseType::Forbidden),
                    Ok(code) => reply(packet, publish_refusal(code)),
                    Err(_) => reply(packet, ResponseType::ServiceUnavailable),
                }
            }
            Method::Delete => {
                let publish = publish_for(&topic, Vec::new(), QoS::AtLeastOnce, true, None);
                match client.publish(publish).await {
                    Ok(code) if code < 0x80 => {
                        self.cache.lock().shift_remove(&topic);
                        reply(packet, ResponseType::Deleted)
                    }
                    Ok(code) => reply(packet, publish_refusal(code)),
                    Err(_) => reply(packet, ResponseType::ServiceUnavailable),
                }
            }
            Method::Get => {
                self.get(packet, peer, &req, &device, &client, &topic, &identity)
                    .await
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn get(
        self: &Arc<Self>,
        packet: &Packet,
        peer: Peer,
        req: &Request,
        device: &Arc<Device>,
        client: &crate::client::Client,
        topic: &str,
        identity: &Identity,
    ) -> Packet {
        let client_id = device.client_id();
        if !self
            .broker
            .security
            .can_read(identity.username.as_deref(), &client_id, topic)
        {
            return reply(packet, ResponseType::Forbidden);
        }
        let mut observing = None;
        match req.observe {
            Some(Observe::Register) => {
                // The observer first, so that a message arriving as the subscription is
                // made finds it; subscribed before the current value is read, so that
                // nothing falls in between.
                let token = packet.get_token().to_vec();
                device.observe(Observer {
                    topic: topic.to_owned(),
                    addr: peer,
                    token: token.clone(),
                    seq: 2,
                });
                let refused = match client.subscribe(vec![observe_filter(topic, req.qos)]).await {
                    Ok(codes) if codes.iter().all(|c| *c < 0x80) => None,
                    Ok(_) => Some(ResponseType::Forbidden),
                    Err(_) => Some(ResponseType::ServiceUnavailable),
                };
                if let Some(code) = refused {
                    device.unobserve(topic, peer, Some(&token));
                    return reply(packet, code);
                }
                observing = Some(2);
            }
            Some(Observe::Deregister)
                if device.unobserve(topic, peer, Some(packet.get_token())) =>
            {
                let _ = client.unsubscribe(vec![topic.into()]).await;
            }
            Some(Observe::Deregister) | None => {}
        }
        let value = self.last_value(topic);
        let (payload, format) = match (value, observing) {
            (Some(v), _) => v,
            (None, Some(_)) => (Bytes::new(), None),
            (None, None) => return reply(packet, ResponseType::NotFound),
        };
        let mut p = reply(packet, ResponseType::Content);
        if let Some(seq) = observing {
            p.set_observe_value(seq);
        }
        if let Some(cf) = format {
            p.add_option(CoapOption::ContentFormat, uint_bytes(u32::from(cf)));
        }
        p.payload = payload.to_vec();
        p
    }
}

/// The CoAP code for a PUBACK or PUBREC reason code of 0x80 or more.
fn publish_refusal(code: u8) -> ResponseType {
    match code {
        reason::NOT_AUTHORIZED => ResponseType::Forbidden,
        reason::TOPIC_NAME_INVALID => ResponseType::BadRequest,
        reason::PACKET_TOO_LARGE => ResponseType::RequestEntityTooLarge,
        reason::QUOTA_EXCEEDED | reason::MESSAGE_RATE_TOO_HIGH => ResponseType::TooManyRequests,
        reason::PAYLOAD_FORMAT_INVALID => ResponseType::BadRequest,
        _ => ResponseType::InternalServerError,
    }
}
