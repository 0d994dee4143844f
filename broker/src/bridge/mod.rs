//! The edge bridge: forwards topics between this broker and an upstream broker, in either
//! direction or both, with prefix remapping (`[[bridge]]` sections, [`config`]).
//!
//! Each side is an ordinary persistent MQTT session: on this broker through an in-process
//! connection, on the upstream over TCP or TLS. A message is acknowledged to the side it came
//! from only once the other side acknowledged it, so nothing is lost when either side goes
//! away: while the upstream is unreachable the bridge closes its local session too, and this
//! broker queues the outbound QoS 1/2 messages for it, in its durable store; the upstream
//! does the same for the inbound ones. Loops are prevented as [`loops`] describes.

pub mod config;
pub mod loops;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytestring::ByteString;
use parking_lot::Mutex;
use rand::Rng;
use rookery_codec::{
    Connect, ConnectProperties, Protocol, Publish, PublishProperties, QoS, RetainHandling,
    SubscribeFilter, SubscriptionOptions,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use self::config::{BridgeConfig, BridgeProtocol};
use self::loops::Echoes;
use crate::broker::Broker;
use crate::client::{Client, InDoubt, Incoming, Options, local};
use crate::listener::ListenerKind;

/// QoS 1/2 messages in flight from this broker to the bridge.
const LOCAL_RECEIVE_MAXIMUM: u16 = 256;
/// How long an echo is recognised (MQTT 3.1.1 upstreams).
const ECHO_WINDOW: Duration = Duration::from_secs(10);

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// Runs one bridge until the broker shuts down: connect, forward, and on any failure
/// reconnect with a growing, jittered delay.
pub async fn run(bridge: BridgeConfig, broker: Arc<Broker>) {
    let me = bridge
        .client_id
        .clone()
        .unwrap_or_else(|| format!("{}-{}", broker.config.node_id, bridge.name));
    let min = Duration::from_millis(bridge.reconnect_min_ms);
    let max = Duration::from_millis(bridge.reconnect_max_ms);
    let mut delay = min;
    let mut last_error = String::new();
    let in_doubt = (InDoubt::default(), InDoubt::default());
    let shutdown = broker.shutdown.clone();
    loop {
        let started = Instant::now();
        let outcome = tokio::select! {
            r = session(&bridge, &broker, &me, &in_doubt) => r,
            _ = shutdown.cancelled() => return,
        };
        match outcome {
            Ok(reason) => {
                warn!(bridge = %bridge.name, "bridge link down: {reason}");
                last_error.clear();
            }
            Err(e) => {
                // One line per new error, not one per attempt.
                if e != last_error {
                    warn!(bridge = %bridge.name, address = %bridge.address, "bridge cannot connect: {e}");
                    last_error = e;
                }
            }
        }
        if started.elapsed() > max {
            delay = min;
        }
        let jitter = rand::thread_rng().gen_range(0.5..1.0);
        tokio::select! {
            _ = tokio::time::sleep(delay.mul_f64(jitter)) => {}
            _ = shutdown.cancelled() => return,
        }
        delay = (delay * 2).min(max);
    }
}

async fn upstream_stream(bridge: &BridgeConfig) -> Result<Box<dyn Stream>, String> {
    let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&bridge.address))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let Some(ca) = &bridge.ca else {
        return Ok(Box::new(tcp));
    };
    let identity = bridge.cert.as_deref().zip(bridge.key.as_deref());
    let connector =
        crate::listener::tls::upstream_connector(ca, identity).map_err(|e| e.to_string())?;
    let host = bridge
        .server_name
        .clone()
        .or_else(|| {
            bridge
                .address
                .rsplit_once(':')
                .map(|(h, _)| h.trim_matches(['[', ']']).to_owned())
        })
        .unwrap_or_default();
    let name = rustls_pki_types::ServerName::try_from(host.clone())
        .map_err(|_| format!("{host:?} is not a server name"))?;
    let tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_owned())?
        .map_err(|e| format!("TLS: {e}"))?;
    Ok(Box::new(tls))
}

fn password(bridge: &BridgeConfig) -> Result<Option<bytes::Bytes>, String> {
    let Some(path) = &bridge.password_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("password_file {}: {e}", path.display()))?;
    Ok(Some(bytes::Bytes::from(
        text.lines().next().unwrap_or_default().to_owned(),
    )))
}

/// One connected period of the bridge: returns why it ended (`Err` when it never connected).
/// `in_doubt`: the QoS 2 ids in doubt of the local and the upstream session.
async fn session(
    bridge: &BridgeConfig,
    broker: &Arc<Broker>,
    me: &str,
    in_doubt: &(InDoubt, InDoubt),
) -> Result<String, String> {
    let protocol = match bridge.protocol {
        BridgeProtocol::V5 => Protocol::V5,
        BridgeProtocol::V311 => Protocol::V311,
    };
    // This broker's side first, with its subscriptions: from the bridge's first start on,
    // this broker keeps what is published for the upstream, even before the upstream was
    // ever reached. The session goes offline again when the upstream cannot be reached.
    let local_options = Options {
        connect: Connect {
            protocol: Protocol::V5,
            clean_start: false,
            keep_alive: 0,
            client_id: ByteString::from(local_client_id(bridge)),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties {
                session_expiry_interval: Some(u32::MAX),
                receive_maximum: Some(LOCAL_RECEIVE_MAXIMUM),
                ..ConnectProperties::default()
            },
        },
        max_packet_size: broker.config.max_packet_size as usize + 64,
        connect_timeout: Duration::from_secs(10),
        qos2_in_doubt: in_doubt.0.clone(),
    };
    let peer = tokio::net::lookup_host(&bridge.address)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
    let identity = local_client_id(bridge);
    let (local, _, local_rx) = local::connect(
        broker,
        peer,
        ListenerKind::Bridge,
        Some(&identity),
        true,
        local_options,
    )
    .await
    .map_err(|e| format!("local session: {e}"))?;
    let local_filters = filters(bridge, false);
    if !local_filters.is_empty() {
        let codes = match local.subscribe(local_filters).await {
            Ok(c) => c,
            Err(e) => return Err(format!("local session: {e}")),
        };
        if let Some(c) = codes.iter().find(|c| **c >= 0x80) {
            warn!(bridge = %bridge.name, "this broker refused the bridge a subscription ({c:#04x}): does the ACL let user {identity:?} read it?");
        }
    }
    let remote_options = Options {
        connect: Connect {
            protocol,
            clean_start: false,
            keep_alive: bridge.keep_alive_secs,
            client_id: ByteString::from(me),
            will: None,
            username: bridge.username.as_deref().map(ByteString::from),
            password: password(bridge)?,
            properties: ConnectProperties {
                session_expiry_interval: protocol.is_v5().then_some(bridge.session_expiry_secs),
                receive_maximum: protocol.is_v5().then_some(LOCAL_RECEIVE_MAXIMUM),
                ..ConnectProperties::default()
            },
        },
        max_packet_size: broker.config.max_packet_size as usize + 64,
        connect_timeout: Duration::from_secs(10),
        qos2_in_doubt: in_doubt.1.clone(),
    };
    let upstream = async {
        let stream = upstream_stream(bridge).await?;
        let (remote, _, remote_rx) = Client::connect(stream, remote_options)
            .await
            .map_err(|e| e.to_string())?;
        let remote_filters = filters(bridge, true);
        if !remote_filters.is_empty() {
            let codes = remote
                .subscribe(remote_filters)
                .await
                .map_err(|e| e.to_string())?;
            if let Some(c) = codes.iter().find(|c| **c >= 0x80) {
                warn!(bridge = %bridge.name, "the upstream refused a subscription ({c:#04x})");
            }
        }
        Ok::<_, String>((remote, remote_rx))
    };
    let (remote, remote_rx) = match upstream.await {
        Ok(r) => r,
        Err(e) => {
            // Dropping the receiver ends the local connection even while it waits to hand
            // over a message; what it held stays owed to the session.
            drop(local_rx);
            local.disconnect();
            return Err(e);
        }
    };
    info!(bridge = %bridge.name, address = %bridge.address, "bridge connected");
    broker
        .metrics
        .bridges_up
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let reason = forward(bridge, me, &local, local_rx, &remote, remote_rx).await;
    broker
        .metrics
        .bridges_up
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    // The local session goes offline with the link: this broker keeps what is published for
    // the upstream meanwhile, in its store, until the next connection.
    local.disconnect();
    remote.disconnect();
    Ok(reason)
}

/// The client id (and trusted username) of the bridge's session on this broker.
fn local_client_id(bridge: &BridgeConfig) -> String {
    format!("bridge-{}", bridge.name)
}

/// The subscriptions of one side: the upstream's (`inward`) or this broker's.
fn filters(bridge: &BridgeConfig, inward: bool) -> Vec<SubscribeFilter> {
    bridge
        .topics
        .iter()
        .filter(|t| {
            if inward {
                t.direction.inward()
            } else {
                t.direction.out()
            }
        })
        .map(|t| SubscribeFilter {
            filter: if inward {
                t.remote_filter()
            } else {
                t.local_filter()
            }
            .into(),
            options: SubscriptionOptions {
                qos: QoS::from_u8(t.qos).unwrap_or(QoS::AtLeastOnce),
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::SendIfNew,
            },
        })
        .collect()
}

/// Which way a message goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Way {
    Out,
    In,
}

struct Forwarder<'a> {
    bridge: &'a BridgeConfig,
    me: &'a str,
    /// Echo filters (MQTT 3.1.1 upstreams only): what went out, and what came in.
    echoes: Option<Mutex<(Echoes, Echoes)>>,
}

impl Forwarder<'_> {
    /// The publish for the other side, or `None` to drop (and acknowledge) the message.
    fn translate(&self, way: Way, publish: &Publish, target: Protocol) -> Option<Publish> {
        let (topic, max_qos) = self.bridge.topics.iter().find_map(|rule| {
            let topic = match way {
                Way::Out => rule.to_remote(&publish.topic),
                Way::In => rule.to_local(&publish.topic),
            }?;
            Some((topic, rule.qos))
        })?;
        if loops::went_through(&publish.properties.user_properties, self.me) {
            debug!(bridge = %self.bridge.name, topic = %publish.topic, "dropped: it went through this bridge already");
            return None;
        }
        if let Some(echoes) = &self.echoes {
            let now = Instant::now();
            let mut echoes = echoes.lock();
            let (out, inward) = &mut *echoes;
            let (seen, record) = match way {
                Way::Out => (inward, out),
                Way::In => (out, inward),
            };
            if seen.is_echo(&publish.topic, &publish.payload, now) {
                debug!(bridge = %self.bridge.name, topic = %publish.topic, "dropped: the echo of a message the bridge forwarded");
                return None;
            }
            record.sent(&topic, &publish.payload, now);
        }
        let mut properties = if target.is_v5() {
            PublishProperties {
                payload_format_indicator: publish.properties.payload_format_indicator,
                message_expiry_interval: publish.properties.message_expiry_interval,
                response_topic: publish.properties.response_topic.clone(),
                correlation_data: publish.properties.correlation_data.clone(),
                user_properties: publish.properties.user_properties.clone(),
                content_type: publish.properties.content_type.clone(),
                ..PublishProperties::default()
            }
        } else {
            PublishProperties::default()
        };
        if target.is_v5() {
            loops::add_hop(&mut properties.user_properties, self.me);
        }
        Some(Publish {
            dup: false,
            qos: publish
                .qos
                .min(QoS::from_u8(max_qos).unwrap_or(QoS::AtLeastOnce)),
            retain: publish.retain,
            topic: topic.into(),
            packet_id: 0,
            payload: publish.payload.clone(),
            properties,
        })
    }
}

/// Forwards both ways until either side's connection ends.
async fn forward(
    bridge: &BridgeConfig,
    me: &str,
    local: &Client,
    mut local_rx: mpsc::Receiver<Incoming>,
    remote: &Client,
    mut remote_rx: mpsc::Receiver<Incoming>,
) -> String {
    let f = Forwarder {
        bridge,
        me,
        echoes: (!remote.protocol().is_v5()).then(|| {
            Mutex::new((
                Echoes::new(ECHO_WINDOW, 100_000),
                Echoes::new(ECHO_WINDOW, 100_000),
            ))
        }),
    };
    loop {
        let (way, message) = tokio::select! {
            m = local_rx.recv() => match m {
                Some(m) => (Way::Out, m),
                None => return format!("local session closed: {}", local.closed().await),
            },
            m = remote_rx.recv() => match m {
                Some(m) => (Way::In, m),
                None => return format!("upstream closed: {}", remote.closed().await),
            },
        };
        let target = if way == Way::Out { remote } else { local };
        let Some(publish) = f.translate(way, &message.publish, target.protocol()) else {
            message.ack();
            continue;
        };
        // Queued in order; acknowledged to the source once the target acknowledged.
        let wait = match target.publish_queued(publish).await {
            Ok(w) => w,
            Err(e) => {
                return format!(
                    "{}: {e}",
                    if way == Way::Out {
                        "upstream"
                    } else {
                        "local session"
                    }
                );
            }
        };
        tokio::spawn(async move {
            if let Ok(code) = wait.await {
                if code >= 0x80 {
                    debug!(
                        "bridge: the other side refused a message ({code:#04x}); acknowledged so it is not retried forever"
                    );
                }
                message.ack();
            }
        });
    }
}
