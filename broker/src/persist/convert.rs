//! Conversions between the broker's types and the store's records. Pure functions.

use std::time::{Duration, Instant};

use ahash::AHashMap;
use bytes::Bytes;
use bytestring::ByteString;
use rookery_codec::{
    LastWill, PublishProperties, QoS, RetainHandling, SubscriptionOptions, WillProperties,
};
use rookery_store::{StoredMessage, SubscriptionRecord, WillRecord};
use serde::{Deserialize, Serialize};

use crate::message::Message;
use crate::router::trie::{SessionId, Subscription};

/// The PUBLISH properties a stored message keeps (topic alias and subscription identifiers
/// belong to one connection and are never stored).
#[derive(Debug, Default, Serialize, Deserialize)]
struct StoredProperties {
    payload_format_indicator: Option<u8>,
    response_topic: Option<String>,
    correlation_data: Option<Bytes>,
    user_properties: Vec<(String, String)>,
    content_type: Option<String>,
}

impl StoredProperties {
    /// The properties a PUBLISH and a will share.
    fn new(
        payload_format_indicator: Option<u8>,
        response_topic: &Option<ByteString>,
        correlation_data: &Option<Bytes>,
        user_properties: &[(ByteString, ByteString)],
        content_type: &Option<ByteString>,
    ) -> StoredProperties {
        StoredProperties {
            payload_format_indicator,
            response_topic: response_topic.as_ref().map(|s| s.to_string()),
            correlation_data: correlation_data.clone(),
            user_properties: stored_user_properties(user_properties),
            content_type: content_type.as_ref().map(|s| s.to_string()),
        }
    }
}

fn encode_properties(p: &StoredProperties) -> Bytes {
    if p.payload_format_indicator.is_none()
        && p.response_topic.is_none()
        && p.correlation_data.is_none()
        && p.user_properties.is_empty()
        && p.content_type.is_none()
    {
        return Bytes::new();
    }
    postcard::to_allocvec(p)
        .map(Bytes::from)
        .unwrap_or_default()
}

fn decode_properties(bytes: &[u8]) -> StoredProperties {
    if bytes.is_empty() {
        return StoredProperties::default();
    }
    postcard::from_bytes(bytes).unwrap_or_default()
}

fn user_properties(v: Vec<(String, String)>) -> Vec<(ByteString, ByteString)> {
    v.into_iter().map(|(k, v)| (k.into(), v.into())).collect()
}

fn stored_user_properties(v: &[(ByteString, ByteString)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Wall-clock milliseconds for an `Instant`, given the same moment in both clocks.
fn wall_ms(at: Instant, now: Instant, now_ms: u64) -> u64 {
    if at >= now {
        now_ms.saturating_add(u64::try_from(at.duration_since(now).as_millis()).unwrap_or(0))
    } else {
        now_ms.saturating_sub(u64::try_from(now.duration_since(at).as_millis()).unwrap_or(0))
    }
}

/// The `Instant` for wall-clock milliseconds.
pub fn instant_at(ms: u64, now: Instant, now_ms: u64) -> Instant {
    if ms >= now_ms {
        now + Duration::from_millis(ms - now_ms)
    } else {
        now.checked_sub(Duration::from_millis(now_ms - ms))
            .unwrap_or(now)
    }
}

/// A message as stored.
pub fn stored_message(m: &Message, now: Instant, now_ms: u64) -> StoredMessage {
    let p = &m.properties;
    let props = StoredProperties::new(
        p.payload_format_indicator,
        &p.response_topic,
        &p.correlation_data,
        &p.user_properties,
        &p.content_type,
    );
    StoredMessage {
        topic: m.topic.to_string(),
        payload: m.payload.clone(),
        qos: m.qos as u8,
        retain: m.retain,
        properties: encode_properties(&props),
        expires_at_ms: m.expires_at.map(|at| wall_ms(at, now, now_ms)),
    }
}

/// A message read back from a store (a fresh `id`) or forwarded by a peer (the id it made).
pub fn message(s: StoredMessage, origin: SessionId, id: u64, now: Instant, now_ms: u64) -> Message {
    let p = decode_properties(&s.properties);
    let expires_at = s.expires_at_ms.map(|ms| instant_at(ms, now, now_ms));
    Message {
        topic: s.topic.into(),
        payload: s.payload,
        qos: QoS::from_u8(s.qos).unwrap_or(QoS::AtLeastOnce),
        retain: s.retain,
        properties: PublishProperties {
            payload_format_indicator: p.payload_format_indicator,
            // Sent from `expires_at`, as for a message just published.
            message_expiry_interval: None,
            response_topic: p.response_topic.map(Into::into),
            correlation_data: p.correlation_data,
            user_properties: user_properties(p.user_properties),
            content_type: p.content_type.map(Into::into),
            ..Default::default()
        },
        expires_at,
        origin,
        received: now,
        id,
    }
}

/// A will as stored with its session.
pub fn will_record(w: &LastWill) -> WillRecord {
    let p = &w.properties;
    let props = StoredProperties::new(
        p.payload_format_indicator,
        &p.response_topic,
        &p.correlation_data,
        &p.user_properties,
        &p.content_type,
    );
    WillRecord {
        message: StoredMessage {
            topic: w.topic.to_string(),
            payload: w.payload.clone(),
            qos: w.qos as u8,
            retain: w.retain,
            properties: encode_properties(&props),
            expires_at_ms: None,
        },
        expiry_secs: p.message_expiry_interval,
        delay_secs: p.will_delay_interval.unwrap_or(0),
    }
}

/// A will read back from a store.
pub fn will(r: WillRecord) -> LastWill {
    let p = decode_properties(&r.message.properties);
    LastWill {
        topic: r.message.topic.into(),
        payload: r.message.payload,
        qos: QoS::from_u8(r.message.qos).unwrap_or(QoS::AtMostOnce),
        retain: r.message.retain,
        properties: WillProperties {
            will_delay_interval: (r.delay_secs > 0).then_some(r.delay_secs),
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: r.expiry_secs,
            content_type: p.content_type.map(Into::into),
            response_topic: p.response_topic.map(Into::into),
            correlation_data: p.correlation_data,
            user_properties: user_properties(p.user_properties),
        },
    }
}

/// A session's subscriptions as stored, sorted by filter (a stable record).
pub fn subscription_records(subs: &AHashMap<ByteString, Subscription>) -> Vec<SubscriptionRecord> {
    let mut out: Vec<SubscriptionRecord> = subs
        .iter()
        .map(|(filter, s)| SubscriptionRecord {
            filter: filter.to_string(),
            qos: s.options.qos as u8,
            no_local: s.options.no_local,
            retain_as_published: s.options.retain_as_published,
            retain_handling: s.options.retain_handling as u8,
            id: s.id,
        })
        .collect();
    out.sort_by(|a, b| a.filter.cmp(&b.filter));
    out
}

/// Subscription options read back from a store.
pub fn subscription_options(r: &SubscriptionRecord) -> SubscriptionOptions {
    SubscriptionOptions {
        qos: QoS::from_u8(r.qos).unwrap_or(QoS::AtMostOnce),
        no_local: r.no_local,
        retain_as_published: r.retain_as_published,
        retain_handling: match r.retain_handling {
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => RetainHandling::SendAtSubscribe,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_survives_the_round_trip_with_its_expiry() {
        let now = Instant::now();
        let now_ms = 1_700_000_000_000;
        let mut m = Message::test("a/b", "payload");
        m.qos = QoS::ExactlyOnce;
        m.properties.content_type = Some("text/plain".into());
        m.properties.user_properties = vec![("k".into(), "v".into())];
        m.properties.correlation_data = Some(Bytes::from_static(b"\x00\x01"));
        m.expires_at = Some(now + Duration::from_secs(30));
        let s = stored_message(&m, now, now_ms);
        assert_eq!(s.expires_at_ms, Some(now_ms + 30_000));
        // Read back ten seconds later: twenty left.
        let later = now + Duration::from_secs(10);
        let back = message(s, 0, 1, later, now_ms + 10_000);
        assert_eq!(back.topic, m.topic);
        assert_eq!(back.payload, m.payload);
        assert_eq!(back.qos, QoS::ExactlyOnce);
        assert_eq!(back.properties.content_type, m.properties.content_type);
        assert_eq!(
            back.properties.user_properties,
            m.properties.user_properties
        );
        assert_eq!(
            back.properties.correlation_data,
            m.properties.correlation_data
        );
        assert_eq!(back.remaining_expiry(later), Some(20));
    }

    #[test]
    fn a_message_without_properties_stores_none() {
        let s = stored_message(&Message::test("t", "p"), Instant::now(), 0);
        assert!(s.properties.is_empty());
        assert_eq!(s.expires_at_ms, None);
    }

    #[test]
    fn a_will_survives_the_round_trip() {
        let w = LastWill {
            topic: "dev/1/status".into(),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: WillProperties {
                will_delay_interval: Some(30),
                message_expiry_interval: Some(60),
                content_type: Some("text/plain".into()),
                ..Default::default()
            },
        };
        assert_eq!(will(will_record(&w)), w);
    }
}
