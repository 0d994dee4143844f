//! A published message as the broker routes it: decoded once, shared by every subscriber.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;
use rookery_codec::{LastWill, Publish, PublishProperties, QoS, UserProperty};
use smallvec::SmallVec;

use crate::router::trie::SessionId;

/// One application message. Subscribers share it through an `Arc`; nothing in it depends on
/// the receiver (packet id, QoS downgrade, topic alias and subscription ids are per delivery).
#[derive(Debug, Clone)]
pub struct Message {
    /// Topic name (never an alias).
    pub topic: ByteString,
    /// Payload.
    pub payload: Bytes,
    /// QoS as published.
    pub qos: QoS,
    /// RETAIN flag as published.
    pub retain: bool,
    /// Properties forwarded to subscribers. Topic alias and subscription identifiers are
    /// cleared: they belong to one connection (MQTT 5.0 section 3.3.2.3).
    pub properties: PublishProperties,
    /// When the message expires, from the Message Expiry Interval.
    pub expires_at: Option<Instant>,
    /// The session that published it, for No Local; 0 for the broker itself.
    pub origin: SessionId,
    /// When the broker read it (or restored it): the start of its delivery latency.
    pub received: Instant,
    /// Unique in the cluster (see [`next_id`]): a node receiving one message along two paths
    /// while a session moves between nodes delivers it once.
    pub id: u64,
}

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static NODE_TAG: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// Sets the low bits of this process's message ids from the node id (the first call wins;
/// several nodes in one process share the counter, so their ids differ too).
pub fn set_node(node_id: &str) {
    if NODE_TAG.set(crate::persist::ids::node_tag(node_id)).is_ok() {
        let seed = crate::persist::ids::seed(rookery_store::now_ms());
        NEXT_ID.fetch_max(seed, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A message id unique in the cluster: a per-process counter and the node's tag.
pub fn next_id() -> u64 {
    let n = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    (n << crate::persist::ids::NODE_BITS) | NODE_TAG.get().copied().unwrap_or(0)
}

impl Message {
    /// Builds a message from a received PUBLISH whose topic has been resolved.
    ///
    /// Topic, payload and properties are copied into buffers of their own (topic and payload in
    /// one allocation): the decoded slices share the connection's read buffer, and a message
    /// that waits in a queue must not keep that whole buffer alive.
    pub fn from_publish(publish: Publish, origin: SessionId, now: Instant) -> Message {
        let mut properties = publish.properties;
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        compact_properties(&mut properties);
        let expires_at = properties
            .message_expiry_interval
            .map(|secs| now + Duration::from_secs(u64::from(secs)));
        let (topic, payload) = compact_topic_payload(&publish.topic, &publish.payload);
        Message {
            topic,
            payload,
            qos: publish.qos,
            retain: publish.retain,
            properties,
            expires_at,
            origin,
            received: now,
            id: next_id(),
        }
    }

    /// Builds the message a will becomes.
    pub fn from_will(will: &LastWill, origin: SessionId, now: Instant) -> Message {
        let p = &will.properties;
        let properties = PublishProperties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            response_topic: p.response_topic.clone(),
            correlation_data: p.correlation_data.clone(),
            user_properties: p.user_properties.clone(),
            content_type: p.content_type.clone(),
            ..Default::default()
        };
        let expires_at = p
            .message_expiry_interval
            .map(|secs| now + Duration::from_secs(u64::from(secs)));
        Message {
            topic: will.topic.clone(),
            payload: will.payload.clone(),
            qos: will.qos,
            retain: will.retain,
            properties,
            expires_at,
            origin,
            received: now,
            id: next_id(),
        }
    }

    /// True once the message expiry interval has passed: such a message is never delivered.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Seconds left before expiry, rounded up, for the forwarded Message Expiry Interval.
    /// MQTT 5.0 [MQTT-3.3.2-6]: the forwarded value is the received value minus the time waited.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX).max(1)
        })
    }

    /// Approximate bytes a queued copy of this message costs, for queue byte limits.
    pub fn weight(&self) -> usize {
        let p = &self.properties;
        let props = if p.is_empty() {
            0
        } else {
            p.response_topic.as_ref().map_or(0, |s| s.len())
                + p.correlation_data.as_ref().map_or(0, |b| b.len())
                + p.content_type.as_ref().map_or(0, |s| s.len())
                + p.user_properties
                    .iter()
                    .map(|(k, v)| k.len() + v.len() + 16)
                    .sum::<usize>()
        };
        self.topic.len() + self.payload.len() + props + 64
    }

    /// A retained QoS 0 message from the broker itself (`$SYS`).
    pub fn from_broker(topic: &str, payload: Bytes) -> Message {
        Message {
            topic: topic.into(),
            payload,
            qos: QoS::AtMostOnce,
            retain: true,
            properties: PublishProperties::default(),
            expires_at: None,
            origin: 0,
            received: Instant::now(),
            id: next_id(),
        }
    }

    #[cfg(test)]
    pub(crate) fn test(topic: &str, payload: &str) -> Message {
        Message::from_broker(topic, Bytes::copy_from_slice(payload.as_bytes()))
    }
}

/// Copies topic and payload into one new allocation.
fn compact_topic_payload(topic: &ByteString, payload: &Bytes) -> (ByteString, Bytes) {
    let mut buf = BytesMut::with_capacity(topic.len() + payload.len());
    buf.put_slice(topic.as_bytes());
    buf.put_slice(payload);
    let mut all = buf.freeze();
    let payload = all.split_off(topic.len());
    // The bytes came from a valid string, so this cannot fail; fall back to a plain copy.
    let topic = ByteString::try_from(all).unwrap_or_else(|_| ByteString::from(&**topic));
    (topic, payload)
}

/// A string in a buffer of its own.
pub fn own_str(s: &ByteString) -> ByteString {
    ByteString::from(&**s)
}

/// Copies the string and binary properties a PUBLISH and a will share into buffers of their own.
fn own_properties(
    response_topic: &mut Option<ByteString>,
    content_type: &mut Option<ByteString>,
    correlation_data: &mut Option<Bytes>,
    user_properties: &mut [UserProperty],
) {
    for s in [response_topic, content_type].into_iter().flatten() {
        *s = own_str(s);
    }
    if let Some(b) = correlation_data.as_mut() {
        *b = Bytes::copy_from_slice(b);
    }
    for (k, v) in user_properties {
        *k = own_str(k);
        *v = own_str(v);
    }
}

/// Copies every string and binary property into buffers of their own.
pub fn compact_properties(p: &mut PublishProperties) {
    if !p.is_empty() {
        own_properties(
            &mut p.response_topic,
            &mut p.content_type,
            &mut p.correlation_data,
            &mut p.user_properties,
        );
    }
}

/// A will whose strings and payload own their buffers (not slices of the CONNECT's frame).
pub fn compact_will(will: &LastWill) -> LastWill {
    let mut w = will.clone();
    let (topic, payload) = compact_topic_payload(&will.topic, &will.payload);
    w.topic = topic;
    w.payload = payload;
    let p = &mut w.properties;
    own_properties(
        &mut p.response_topic,
        &mut p.content_type,
        &mut p.correlation_data,
        &mut p.user_properties,
    );
    w
}

/// One message on its way to one session: the shared message plus what is particular to it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The message.
    pub message: Arc<Message>,
    /// QoS for this subscriber (the lower of published and granted).
    pub qos: QoS,
    /// RETAIN flag to send.
    pub retain: bool,
    /// Subscription identifiers of the matching subscriptions (MQTT 5.0).
    pub subscription_ids: SmallVec<[u32; 2]>,
    /// The queue-store entry of this delivery; 0 when it is not stored (QoS 0, a session
    /// that is not persistent, or durability off).
    pub stored: u64,
}
