//! One device as the gateway knows it: its MQTT session on this broker (through an in-process
//! connection, so authentication, ACLs and persistence are the broker's own), its address,
//! its observers, and the worker that turns MQTT messages into notifications and commands.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytestring::ByteString;
use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use parking_lot::Mutex;
use rookery_codec::{
    Connect, ConnectProperties, Protocol, Publish, PublishProperties, QoS, RetainHandling,
    SubscribeFilter, SubscriptionOptions, reason,
};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::outbox::Outcome;
use super::request::{code_text, content_format, uint_bytes};
use super::transport::Peer;
use super::{Gateway, topics};
use crate::client::{Client, ClientError, InDoubt, Incoming, Options, local};
use crate::listener::ListenerKind;

/// Commands and notifications in flight per device session (the broker holds the rest).
const RECEIVE_MAXIMUM: u16 = 16;
/// Observations per device; a new one past it replaces the oldest.
const MAX_OBSERVERS: usize = 16;

/// Who a device session connects as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The username (none for an anonymous device).
    pub username: Option<String>,
    /// The password given with it.
    pub password: Vec<u8>,
    /// True when `username` is a PSK identity the DTLS handshake proved: the session is
    /// trusted as that user, as for a client certificate.
    pub trusted: bool,
}

/// Someone observing a resource of this device.
#[derive(Debug, Clone)]
pub struct Observer {
    /// The MQTT topic observed.
    pub topic: String,
    /// Where notifications go.
    pub addr: Peer,
    /// The registration's token.
    pub token: Vec<u8>,
    /// The last Observe sequence number sent.
    pub seq: u32,
}

struct Conn {
    client: Client,
    identity: Identity,
}

/// A device.
pub struct Device {
    /// Its id (a topic level).
    pub id: String,
    conn: tokio::sync::Mutex<Option<Conn>>,
    /// Where it was last heard from (or its static address).
    pub addr: Mutex<Option<Peer>>,
    /// Its address from the configuration: such a device stays connected.
    pub fixed: bool,
    last_seen: Mutex<Instant>,
    /// Its observers.
    pub observers: Mutex<Vec<Observer>>,
    /// The session's QoS 2 publishes not known to be complete, across connections.
    in_doubt: InDoubt,
    /// Who the session last connected as: an observed device whose connection ended (taken
    /// over, kicked) is connected again as that identity.
    last_identity: Mutex<Option<Identity>>,
}

/// Why a device session could not be used, as a CoAP response code.
pub fn refusal_code(error: &ClientError) -> ResponseType {
    match error {
        ClientError::Refused(reason::BAD_USERNAME_OR_PASSWORD | reason::NOT_AUTHORIZED) => {
            ResponseType::Unauthorized
        }
        ClientError::Refused(reason::BANNED) => ResponseType::Forbidden,
        ClientError::Refused(_) | ClientError::Closed(_) | ClientError::Handshake(_) => {
            ResponseType::ServiceUnavailable
        }
    }
}

impl Device {
    /// A device not connected yet.
    pub fn new(id: &str, addr: Option<Peer>, fixed: bool) -> Device {
        Device {
            id: id.to_owned(),
            conn: tokio::sync::Mutex::new(None),
            addr: Mutex::new(addr),
            fixed,
            last_seen: Mutex::new(Instant::now()),
            observers: Mutex::new(Vec::new()),
            in_doubt: InDoubt::default(),
            last_identity: Mutex::new(None),
        }
    }

    /// The device spoke from `addr`.
    pub fn seen(&self, addr: Peer) {
        *self.last_seen.lock() = Instant::now();
        *self.addr.lock() = Some(addr);
    }

    /// True when it has been silent for `idle` and nobody observes it.
    pub fn is_idle(&self, idle: Duration) -> bool {
        !self.fixed && self.observers.lock().is_empty() && self.last_seen.lock().elapsed() > idle
    }

    /// The MQTT client id of the device's session.
    pub fn client_id(&self) -> String {
        format!("coap-{}", self.id)
    }

    /// Closes the device's MQTT connection (the persistent session stays).
    pub async fn disconnect(&self) {
        if let Some(conn) = self.conn.lock().await.take() {
            conn.client.disconnect();
        }
    }

    /// The PSK identity the device's session was last made as, if it was made with a key.
    pub fn trusted_as(&self) -> Option<String> {
        self.last_identity
            .lock()
            .as_ref()
            .filter(|i| i.trusted)
            .and_then(|i| i.username.clone())
    }

    /// Closes the device's MQTT connection if it was made as a PSK identity (which has just
    /// been revoked); observers and the remembered identity go too, so that nothing connects
    /// it again as that identity.
    pub async fn disconnect_trusted(&self) {
        let mut conn = self.conn.lock().await;
        if conn.as_ref().is_some_and(|c| c.identity.trusted)
            && let Some(c) = conn.take()
        {
            c.client.disconnect();
        }
        if self.trusted_as().is_some() {
            self.observers.lock().clear();
            *self.last_identity.lock() = None;
        }
    }

    /// True while the device's MQTT connection is up.
    pub async fn is_connected(&self) -> bool {
        self.conn
            .lock()
            .await
            .as_ref()
            .is_some_and(|c| !c.client.is_closed())
    }

    /// The device's MQTT session as `identity`, connecting (and authenticating) when there
    /// is none or it was made with other credentials.
    pub async fn client(
        self: &Arc<Self>,
        gateway: &Arc<Gateway>,
        identity: &Identity,
        peer: Option<Peer>,
    ) -> Result<Client, ResponseType> {
        let mut conn = self.conn.lock().await;
        if let Some(c) = conn.as_ref() {
            if !c.client.is_closed() && c.identity == *identity {
                return Ok(c.client.clone());
            }
            // A device that authenticated is not taken over by a request without
            // credentials (which would clear its session: another user's), nor one that
            // authenticated with a key by one that did not.
            if (identity.username.is_none() && c.identity.username.is_some())
                || (c.identity.trusted && !identity.trusted)
            {
                return Err(ResponseType::Unauthorized);
            }
        }
        // A key removed from the PSK file no longer connects (an observed device is
        // connected again as its last identity).
        if identity.trusted
            && !identity
                .username
                .as_deref()
                .is_some_and(|u| gateway.broker.security.psk_contains(u))
        {
            return Err(ResponseType::Unauthorized);
        }
        let connect = Connect {
            protocol: Protocol::V5,
            clean_start: false,
            keep_alive: 0,
            client_id: ByteString::from(self.client_id()),
            will: None,
            username: identity.username.as_deref().map(ByteString::from),
            password: identity
                .username
                .as_ref()
                .map(|_| bytes::Bytes::copy_from_slice(&identity.password)),
            properties: ConnectProperties {
                session_expiry_interval: Some(gateway.config.coap_session_expiry_secs),
                receive_maximum: Some(RECEIVE_MAXIMUM),
                ..ConnectProperties::default()
            },
        };
        let options = Options {
            connect,
            max_packet_size: gateway.config.max_packet_size as usize + 64,
            connect_timeout: Duration::from_secs(gateway.config.connect_timeout_secs.max(1)),
            qos2_in_doubt: self.in_doubt.clone(),
        };
        // The address the session is reported with (logs, per-address limits); the device's
        // address for commands changes only once the request is authenticated.
        let peer = peer
            .or(*self.addr.lock())
            .map_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)), |p| p.addr);
        let trusted_as = identity.username.as_deref().filter(|_| identity.trusted);
        // A DTLS handshake proves the address (its cookie exchange).
        let (client, _ack, incoming) = match local::connect(
            &gateway.broker,
            peer,
            ListenerKind::Coap,
            trusted_as,
            identity.trusted,
            options,
        )
        .await
        {
            Ok(c) => c,
            Err(e) => {
                debug!(device = %self.id, "device session refused: {e}");
                return Err(refusal_code(&e));
            }
        };
        // Commands for this device, whatever node they are published on.
        let commands = SubscribeFilter {
            filter: topics::command_filter(&gateway.config.coap_command_prefix, &self.id).into(),
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                retain_as_published: false,
                retain_handling: RetainHandling::DoNotSend,
            },
        };
        match client.subscribe(vec![commands]).await {
            Ok(codes) if codes.iter().all(|c| *c < 0x80) => {}
            Ok(codes) => {
                debug!(device = %self.id, ?codes, "the ACL refuses the device its commands");
            }
            Err(e) => return Err(refusal_code(&e)),
        }
        if let Some(old) = conn.take() {
            old.client.disconnect();
        }
        gateway.broker.tasks.spawn(worker(
            gateway.clone(),
            self.clone(),
            client.clone(),
            incoming,
        ));
        *conn = Some(Conn {
            client: client.clone(),
            identity: identity.clone(),
        });
        *self.last_identity.lock() = Some(identity.clone());
        Ok(client)
    }

    /// Connects again, as before, a device that is observed and whose connection ended (its
    /// persistent session still has the observations' subscriptions).
    pub async fn keep_observed(self: &Arc<Self>, gateway: &Arc<Gateway>) {
        if self.observers.lock().is_empty() || self.is_connected().await {
            return;
        }
        let identity = self.last_identity.lock().clone();
        if let Some(identity) = identity
            && let Err(code) = self.client(gateway, &identity, None).await
        {
            debug!(device = %self.id, ?code, "an observed device could not be connected again");
        }
    }

    /// Unsubscribes the device's session from `topic` (an observation ended).
    pub async fn unsubscribe(&self, topic: &str) {
        let client = self.conn.lock().await.as_ref().map(|c| c.client.clone());
        if let Some(client) = client {
            let _ = client.unsubscribe(vec![topic.into()]).await;
        }
    }

    /// Adds (or renews) an observer; true when the topic had none before.
    pub fn observe(&self, observer: Observer) -> bool {
        let mut observers = self.observers.lock();
        let first = !observers.iter().any(|o| o.topic == observer.topic);
        observers.retain(|o| !(o.addr == observer.addr && o.topic == observer.topic));
        if observers.len() >= MAX_OBSERVERS {
            observers.remove(0);
        }
        observers.push(observer);
        first
    }

    /// Removes the observers of `topic` at `addr` (with `token`, when given); true when the
    /// topic has none left.
    pub fn unobserve(&self, topic: &str, addr: Peer, token: Option<&[u8]>) -> bool {
        let mut observers = self.observers.lock();
        observers.retain(|o| {
            !(o.topic == topic && o.addr == addr && token.is_none_or(|t| t == o.token.as_slice()))
        });
        !observers.iter().any(|o| o.topic == topic)
    }
}

/// Turns the device session's MQTT messages into CoAP: commands become confirmable PUTs to
/// the device, everything else notifications to observers. One at a time per device: CoAP
/// allows one outstanding confirmable message per peer (NSTART = 1).
async fn worker(
    gateway: Arc<Gateway>,
    device: Arc<Device>,
    client: Client,
    mut incoming: mpsc::Receiver<Incoming>,
) {
    // Nothing here waits on `client` itself (an acknowledgement from the broker): the
    // connection may be waiting for this loop to take the next message. Publishes and
    // unsubscribes run in tasks of their own.
    while let Some(message) = incoming.recv().await {
        let topic = message.publish.topic.to_string();
        match topics::parse_command(&gateway.config.coap_command_prefix, &topic) {
            Some((id, path)) if id == device.id => {
                let path: Vec<String> = path.into_iter().map(str::to_owned).collect();
                command(&gateway, &device, &client, &path, message).await;
            }
            Some(_) => message.ack(),
            None => {
                notify(&gateway, &device, &client, &topic, &message.publish).await;
                message.ack();
            }
        }
    }
}

fn unsubscribe_later(client: &Client, topic: &str) {
    let (client, topic) = (client.clone(), ByteString::from(topic));
    tokio::spawn(async move {
        let _ = client.unsubscribe(vec![topic]).await;
    });
}

/// Sends a command to the device and publishes how it went.
async fn command(
    gateway: &Arc<Gateway>,
    device: &Device,
    client: &Client,
    path: &[String],
    message: Incoming,
) {
    let publish = &message.publish;
    let topic = publish.topic.to_string();
    let addr = *device.addr.lock();
    let result = match addr {
        None => "unreachable".to_owned(),
        Some(addr) => {
            let mut packet = Packet::new();
            packet.header.code = MessageClass::Request(RequestType::Put);
            packet.set_token(gateway.outbox.token());
            for segment in path {
                packet.add_option(CoapOption::UriPath, segment.as_bytes().to_vec());
            }
            if let Some(cf) = publish
                .properties
                .content_type
                .as_deref()
                .and_then(content_format)
            {
                packet.add_option(CoapOption::ContentFormat, uint_bytes(u32::from(cf)));
            }
            packet.payload = publish.payload.to_vec();
            match gateway
                .outbox
                .confirm(&gateway.transport, addr, packet, gateway.timing, true)
                .await
            {
                Outcome::Answered(response) => code_text(u8::from(response.header.code)),
                Outcome::Reset => "reset".to_owned(),
                Outcome::Timeout => "timeout".to_owned(),
                Outcome::Gone => "unreachable".to_owned(),
            }
        }
    };
    let slot = match result.as_str() {
        r if r.starts_with('2') => 0,
        "timeout" | "unreachable" => 2,
        _ => 1,
    };
    gateway.broker.metrics.coap_commands_total[slot].fetch_add(1, Ordering::Relaxed);
    debug!(device = %device.id, %topic, %result, "command");
    let (client, id) = (client.clone(), device.id.clone());
    tokio::spawn(async move {
        let outcome = client
            .publish(Publish {
                qos: QoS::AtLeastOnce,
                topic: topics::result_topic(&topic).into(),
                payload: bytes::Bytes::from(result),
                ..Publish::default()
            })
            .await;
        match outcome {
            // The command is acknowledged once its result is out: a crash before that
            // delivers it again.
            Ok(_) => message.ack(),
            Err(e) => {
                warn!(device = %id, %topic, "the result of a command could not be published: {e}");
            }
        }
    });
}

/// Sends an MQTT message to the observers of its topic.
async fn notify(
    gateway: &Arc<Gateway>,
    device: &Device,
    client: &Client,
    topic: &str,
    publish: &Publish,
) {
    let cf = publish
        .properties
        .content_type
        .as_deref()
        .and_then(content_format);
    gateway.cache_put(topic, publish.payload.clone(), cf);
    let observers: Vec<Observer> = {
        let mut all = device.observers.lock();
        for o in all.iter_mut().filter(|o| o.topic == topic) {
            o.seq = (o.seq + 1) & 0x00ff_ffff;
        }
        all.iter().filter(|o| o.topic == topic).cloned().collect()
    };
    if observers.is_empty() {
        // A subscription left from before a restart of the gateway: nobody wants it now.
        if !device.observers.lock().iter().any(|o| o.topic == topic) {
            unsubscribe_later(client, topic);
        }
        return;
    }
    for observer in observers {
        let mut packet = Packet::new();
        packet.header.code = MessageClass::Response(ResponseType::Content);
        packet.set_token(observer.token.clone());
        packet.set_observe_value(observer.seq);
        if let Some(cf) = cf {
            packet.add_option(CoapOption::ContentFormat, uint_bytes(u32::from(cf)));
        }
        packet.payload = publish.payload.to_vec();
        let packet = gateway.first_block(packet);
        gateway
            .broker
            .metrics
            .coap_notifications_total
            .fetch_add(1, Ordering::Relaxed);
        let gone = if publish.qos == QoS::AtMostOnce {
            let mut packet = packet;
            packet.header.set_type(MessageType::NonConfirmable);
            packet.header.message_id = gateway.outbox.message_id();
            gateway.sent_non(&device.id, &observer, packet.header.message_id);
            // A DTLS observer whose session ended is gone.
            !gateway.send(observer.addr, &packet).await
        } else {
            !matches!(
                gateway
                    .outbox
                    .confirm(
                        &gateway.transport,
                        observer.addr,
                        packet,
                        gateway.timing,
                        false
                    )
                    .await,
                Outcome::Answered(_)
            )
        };
        if gone {
            debug!(device = %device.id, %topic, addr = %observer.addr, "observer gone");
            if device.unobserve(topic, observer.addr, Some(&observer.token)) {
                unsubscribe_later(client, topic);
            }
        }
    }
}

/// The subscription an observation makes.
pub fn observe_filter(topic: &str, qos: QoS) -> SubscribeFilter {
    SubscribeFilter {
        filter: topic.into(),
        options: SubscriptionOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::DoNotSend,
        },
    }
}

/// The publish a POST, PUT or DELETE makes.
pub fn publish_for(
    topic: &str,
    payload: Vec<u8>,
    qos: QoS,
    retain: bool,
    cf: Option<u16>,
) -> Publish {
    Publish {
        qos,
        retain,
        topic: topic.into(),
        payload: payload.into(),
        properties: PublishProperties {
            content_type: cf.map(|n| super::request::content_type(n).into()),
            ..PublishProperties::default()
        },
        ..Publish::default()
    }
}
