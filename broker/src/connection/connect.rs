//! The CONNECT handshake: read the first packet under a deadline, check it, attach the session
//! (taking it over from another connection if need be) and build the CONNACK.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use bytestring::ByteString;
use rookery_codec::{ConnAck, ConnAckProperties, Connect, DecodeError, Packet, Protocol, reason};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::broker::Broker;
use crate::listener::ListenerKind;
use crate::router::topic;
use crate::security::authenticate::Identity;
use crate::session::{Attachment, Control, NEVER_EXPIRES, Session};

/// How long a new connection waits for the old one to hand a session over.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the first packet could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer closed or the socket failed.
    #[error("connection closed before CONNECT: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes were not a valid CONNECT; `level` is the protocol level its header named, when
    /// that much could be read (an MQTT 5.0 client is told why in a CONNACK).
    #[error("bad CONNECT: {error}")]
    Decode {
        /// What was wrong.
        error: DecodeError,
        /// The protocol level byte, if the header got that far.
        level: Option<u8>,
    },
    /// Another packet came first. MQTT 5.0 [MQTT-3.1.0-1].
    #[error("first packet was {0}, not CONNECT")]
    NotConnect(&'static str),
}

/// Reads until one whole packet is in `rbuf` and returns it if it is a CONNECT.
pub async fn read_connect<R: super::source::Source>(
    reader: &mut R,
    rbuf: &mut BytesMut,
    max_packet_size: usize,
) -> Result<Box<Connect>, HandshakeError> {
    loop {
        if crate::listener::proxy::looks_like_header(rbuf) {
            return Err(HandshakeError::NotConnect(
                "a PROXY protocol header (this listener does not expect one)",
            ));
        }
        let level = peek_connect_level(rbuf);
        let decoded = rookery_codec::decode(rbuf, Protocol::V311, max_packet_size)
            .map_err(|error| HandshakeError::Decode { error, level })?;
        match decoded {
            Some(Packet::Connect(c)) => return Ok(c),
            Some(other) => return Err(HandshakeError::NotConnect(other.name())),
            None => {
                if reader.read_into(rbuf).await? == 0 {
                    return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
                }
            }
        }
    }
}

/// The protocol level of a CONNECT at the front of `buf`, read from its header before the
/// packet is complete or valid: fixed header, remaining length, `00 04 "MQTT"` (or
/// `00 06 "MQIsdp"`), level.
pub fn peek_connect_level(buf: &[u8]) -> Option<u8> {
    if buf.first()? >> 4 != 1 {
        return None;
    }
    // Skip the variable-length remaining length (at most 4 bytes).
    let len_bytes = buf.get(1..)?.iter().take(4).position(|b| b & 0x80 == 0)? + 1;
    let rest = buf.get(1 + len_bytes..)?;
    let name_len = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
    rest.get(2 + name_len).copied()
}

/// A CONNECT refused.
#[derive(Debug)]
pub struct Refusal {
    /// MQTT 5.0 reason code (mapped to a 3.1.1 return code for older clients).
    pub code: u8,
    /// False when a 3.1.x client gets no CONNACK: the spec wants the connection closed on a
    /// protocol violation. MQTT 3.1.1 [MQTT-3.1.4-1].
    pub connack_for_v3: bool,
    /// For the log.
    pub why: &'static str,
}

/// The CONNACK for a refusal, or `None` when the connection is just closed.
pub fn refusal_connack(protocol: Protocol, refusal: &Refusal) -> Option<ConnAck> {
    if protocol.is_v5() {
        return Some(ConnAck {
            session_present: false,
            code: refusal.code,
            properties: Default::default(),
        });
    }
    refusal.connack_for_v3.then(|| ConnAck {
        session_present: false,
        code: reason::connack_v3_from_v5(refusal.code),
        properties: Default::default(),
    })
}

/// A CONNECT accepted and its session attached.
pub struct Accepted {
    /// The session.
    pub session: Arc<Session>,
    /// What the connection now owns.
    pub attachment: Attachment,
    /// Keep alive in force, seconds (0 = none).
    pub keep_alive: u16,
    /// Session expiry in force, seconds.
    pub expiry_secs: u32,
    /// The CONNACK to send.
    pub connack: ConnAck,
}

/// Checks a CONNECT before any session is touched.
pub fn check(broker: &Broker, connect: &Connect) -> Result<(), Refusal> {
    let c = &broker.config;
    if broker.drain.is_cancelled() {
        // Accepted just before the drain began: this node takes no new sessions.
        return Err(Refusal {
            code: reason::USE_ANOTHER_SERVER,
            connack_for_v3: true,
            why: "the node is draining",
        });
    }
    if connect.client_id.len() > c.max_client_id_len {
        return Err(Refusal {
            code: reason::CLIENT_IDENTIFIER_NOT_VALID,
            connack_for_v3: true,
            why: "client id too long",
        });
    }
    if connect.client_id.is_empty() && !connect.clean_start && !connect.protocol.is_v5() {
        // MQTT 3.1.1 [MQTT-3.1.3-8]: an empty client id needs Clean Session 1.
        return Err(Refusal {
            code: reason::CLIENT_IDENTIFIER_NOT_VALID,
            connack_for_v3: true,
            why: "empty client id without clean session",
        });
    }
    if connect.client_id.is_empty() && connect.protocol == Protocol::V31 {
        // MQTT 3.1 requires 1 to 23 characters.
        return Err(Refusal {
            code: reason::CLIENT_IDENTIFIER_NOT_VALID,
            connack_for_v3: true,
            why: "empty client id on MQTT 3.1",
        });
    }
    if let Some(will) = &connect.will
        && topic::validate_name(&will.topic, c.max_topic_levels).is_err()
    {
        return Err(Refusal {
            code: reason::TOPIC_NAME_INVALID,
            connack_for_v3: false,
            why: "invalid will topic",
        });
    }
    if let Some(will) = &connect.will
        && will.properties.payload_format_indicator == Some(1)
        && std::str::from_utf8(&will.payload).is_err()
    {
        // MQTT 5.0 section 3.1.3.2.3: the will payload claims UTF-8 and is not.
        return Err(Refusal {
            code: reason::PAYLOAD_FORMAT_INVALID,
            connack_for_v3: false,
            why: "will payload is not UTF-8 as its format indicator says",
        });
    }
    if connect.properties.authentication_method.is_some() {
        // Enhanced authentication (AUTH exchanges) is not offered.
        return Err(Refusal {
            code: reason::BAD_AUTHENTICATION_METHOD,
            connack_for_v3: false,
            why: "unsupported authentication method",
        });
    }
    if !connect.protocol.is_v5()
        && c.max_keepalive_secs > 0
        && connect.keep_alive > c.max_keepalive_secs
    {
        // Mosquitto's rule for clients that cannot be told a Server Keep Alive.
        return Err(Refusal {
            code: reason::CLIENT_IDENTIFIER_NOT_VALID,
            connack_for_v3: true,
            why: "keep alive above max_keepalive_secs",
        });
    }
    Ok(())
}

/// Client id prefixes of the sessions the broker makes for itself: the CoAP gateway's devices
/// and the bridges' local sides.
pub const RESERVED_PREFIXES: [&str; 2] = ["coap-", "bridge-"];

/// Refuses a network client that names one of the broker's own sessions: taking it over
/// would end a device's observations or empty a bridge's queue for its upstream.
pub fn check_reserved(listener: ListenerKind, client_id: &str) -> Result<(), Refusal> {
    let internal = matches!(listener, ListenerKind::Coap | ListenerKind::Bridge);
    if !internal && RESERVED_PREFIXES.iter().any(|p| client_id.starts_with(p)) {
        return Err(Refusal {
            code: reason::CLIENT_IDENTIFIER_NOT_VALID,
            connack_for_v3: true,
            why: "client id reserved for the gateway's and the bridges' sessions",
        });
    }
    Ok(())
}

/// Attaches the session of an accepted CONNECT, taking it over from a live connection.
pub async fn accept(
    broker: &Arc<Broker>,
    connect: &Connect,
    assigned: bool,
    identity: &Identity,
    peer: SocketAddr,
    control: oneshot::Sender<Control>,
) -> Result<Accepted, Refusal> {
    let mut control = Some(control);
    let c = &broker.config;
    // A compact copy: the decoded string would pin the read buffer for the session's life.
    let client_id = ByteString::from(&*connect.client_id);
    let requested_expiry = if connect.protocol.is_v5() {
        connect.properties.session_expiry_interval.unwrap_or(0)
    } else if connect.clean_start {
        0
    } else {
        NEVER_EXPIRES
    };
    let expiry_secs = requested_expiry.min(c.max_session_expiry_secs);

    let username = identity.username.as_deref();
    if !connect.clean_start
        && broker.sessions.get(&client_id).is_none()
        && broker.fetch_session(&client_id).await == crate::cluster::handover::Fetched::Busy
    {
        // Resuming here a session another node may hold: it is handed over first, and a
        // node that does not answer may hold it.
        return Err(Refusal {
            code: reason::SERVER_BUSY,
            connack_for_v3: true,
            why: "another node that may hold the session did not answer",
        });
    }
    let (session, attachment, old_owner) = loop {
        let session = broker.sessions.get_or_create(&client_id);
        let _guard = session.attach_lock.lock().await;
        // Claimed before attaching: a claim from another node that arrives meanwhile is
        // compared with this connection, not with the previous one.
        session.set_claimed(rookery_store::now_ms());
        // One user cannot take another's session: not its live connection, and not its
        // subscriptions or queued messages (a different user starts clean).
        let other_user = session.owned_by_other(username);
        if other_user && session.is_attached() {
            warn!(client_id = %client_id, new_peer = %peer,
                "refused CONNECT: the client id is connected as another user");
            return Err(Refusal {
                code: reason::NOT_AUTHORIZED,
                connack_for_v3: true,
                why: "client id in use by another user",
            });
        }
        let window = Duration::from_secs(c.takeover_window_secs);
        if let Some((old, old_peer, recent)) = session.begin_takeover(window, Instant::now()) {
            broker
                .metrics
                .takeovers_total
                .fetch_add(1, Ordering::Relaxed);
            if recent >= c.takeover_warn_count {
                warn!(
                    client_id = %client_id, old_peer = %old_peer, new_peer = %peer, count = recent,
                    window_secs = c.takeover_window_secs,
                    "client id taken over repeatedly: two devices may be sharing one client id"
                );
            } else {
                info!(client_id = %client_id, old_peer = %old_peer, new_peer = %peer, "session taken over");
            }
            let (done, handed_back) = oneshot::channel();
            let resumes = !connect.clean_start;
            let deadline = tokio::time::Instant::now() + TAKEOVER_TIMEOUT;
            if let Some(old) = old
                && old
                    .send(Control::TakeOver {
                        resumes,
                        moved: false,
                        done,
                    })
                    .is_ok()
            {
                let _ = tokio::time::timeout_at(deadline, handed_back).await;
            }
            // The old connection may have been closing already (its control channel gone):
            // wait until it has handed the state back, so in-flight state is not lost.
            while session.is_attached() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if session.is_attached() {
                // Attaching over a live connection would lose its state: refuse instead, the
                // client retries. MQTT 5.0 0x89 (3.1.1: server unavailable).
                warn!(client_id = %client_id, "previous connection did not hand the session over in time");
                return Err(Refusal {
                    code: reason::SERVER_BUSY,
                    connack_for_v3: true,
                    why: "takeover timed out",
                });
            }
        }
        let clean_start = connect.clean_start || other_user;
        match session.attach(clean_start, expiry_secs, &mut control, peer) {
            Some(attachment) => break (session.clone(), attachment, session.username()),
            // The session ended meanwhile: look the id up again.
            None => tokio::task::yield_now().await,
        }
    };
    if !attachment.discarded_subscriptions.is_empty() {
        broker.unsubscribe_all(session.id, &attachment.discarded_subscriptions);
        // Publishes that matched the old subscriptions while they were being removed.
        session.with_queue(|q| q.clear());
    }
    if let Some(will) = &attachment.will_to_publish {
        // The old session's will, under the old owner's rights.
        broker.publish_will(will, session.id, &client_id, old_owner.as_deref());
    }
    session.set_identity(identity.username.clone(), identity.by_password);

    let mut keep_alive = connect.keep_alive;
    let mut properties = ConnAckProperties::default();
    if connect.protocol.is_v5() {
        if c.max_keepalive_secs > 0 && (keep_alive == 0 || keep_alive > c.max_keepalive_secs) {
            keep_alive = c.max_keepalive_secs;
            properties.server_keep_alive = Some(keep_alive);
        }
        if assigned {
            properties.assigned_client_identifier = Some(client_id.clone());
        }
        if expiry_secs != requested_expiry {
            properties.session_expiry_interval = Some(expiry_secs);
        }
        if c.receive_maximum != u16::MAX {
            properties.receive_maximum = Some(c.receive_maximum);
        }
        properties.maximum_packet_size = Some(c.max_packet_size);
        if c.topic_alias_maximum > 0 {
            properties.topic_alias_maximum = Some(c.topic_alias_maximum);
        }
    }
    let connack = ConnAck {
        session_present: attachment.session_present,
        code: reason::SUCCESS,
        properties,
    };
    broker.claim(&session);
    Ok(Accepted {
        session,
        attachment,
        keep_alive,
        expiry_secs,
        connack,
    })
}

#[cfg(test)]
mod tests {
    use super::peek_connect_level;

    #[test]
    fn the_level_is_read_from_an_incomplete_or_broken_connect() {
        assert_eq!(
            peek_connect_level(&[0x10, 0x7f, 0, 4, b'M', b'Q', b'T', b'T', 5]),
            Some(5)
        );
        assert_eq!(
            peek_connect_level(&[0x10, 0x80, 0x01, 0, 4, b'M', b'Q', b'T', b'T', 4]),
            Some(4)
        );
        assert_eq!(
            peek_connect_level(&[0x10, 0x7f, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3]),
            Some(3)
        );
        assert_eq!(peek_connect_level(&[0x10, 0x7f, 0, 4, b'M', b'Q']), None);
        assert_eq!(peek_connect_level(&[0x30, 0x02, 0, 4]), None);
        assert_eq!(
            peek_connect_level(&[0x10, 0xff, 0xff, 0xff, 0xff, 0x01]),
            None
        );
        assert_eq!(peek_connect_level(&[]), None);
    }
}
