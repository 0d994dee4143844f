//! Encoding: packets to bytes, appended to a [`BytesMut`].
//!
//! Every encoder first computes the Remaining Length, reserves the whole packet once and
//! then writes it with `put_*` calls: no intermediate buffer, no allocation beyond the one
//! `reserve` (none at all when the buffer already has room).
//!
//! Fields that the protocol version lacks are left out: properties and reason codes before
//! MQTT 5.0. In MQTT 5.0 the shortest valid form is chosen: an acknowledgement with reason
//! 0 and no properties is just its packet identifier, and such a DISCONNECT or AUTH is empty.
//!
//! Encoding cannot fail. Strings and binary data longer than 65,535 bytes (which no valid
//! packet holds) are cut to 65,535 bytes, strings at a character boundary; a packet whose
//! Remaining Length would exceed 268,435,455 bytes is a caller bug (checked in debug
//! builds). [`encoded_len`] tells a packet's size beforehand, to check it against a
//! peer's Maximum Packet Size.

use bytes::{BufMut, BytesMut};

use crate::packet::*;
use crate::properties as props;
use crate::reader::VBI_MAX;

/// The longest string or binary field: its length is a Two Byte Integer.
const MAX_FIELD: usize = u16::MAX as usize;

/// Bytes a Variable Byte Integer takes for `v` (1 to 4; values above 268,435,455, which
/// cannot be encoded, count as 4).
#[inline]
pub fn variable_int_len(v: u32) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Appends `v` as a Variable Byte Integer (MQTT 5.0 section 1.5.5, 3.1.1 section 2.2.3).
/// `v` must be at most 268,435,455; larger values are written as that maximum.
#[inline]
pub fn write_variable_int(buf: &mut BytesMut, v: u32) {
    debug_assert!(v <= VBI_MAX, "variable byte integer {v} out of range");
    let mut v = v.min(VBI_MAX);
    let mut out = [0u8; 4];
    let mut n = 0;
    for slot in out.iter_mut() {
        let mut b = (v & 0x7F) as u8;
        v >>= 7;
        if v > 0 {
            b |= 0x80;
        }
        *slot = b;
        n += 1;
        if v == 0 {
            break;
        }
    }
    buf.put_slice(out.get(..n).unwrap_or(&out));
}

#[inline]
fn clamp_str(s: &str) -> &str {
    if s.len() <= MAX_FIELD {
        s
    } else {
        s.get(..s.floor_char_boundary(MAX_FIELD)).unwrap_or("")
    }
}

#[inline]
fn clamp_bin(b: &[u8]) -> &[u8] {
    b.get(..MAX_FIELD).unwrap_or(b)
}

/// Bytes a UTF-8 Encoded String takes, length prefix included.
#[inline]
pub(crate) fn str_len(s: &str) -> usize {
    2 + clamp_str(s).len()
}

/// Bytes a Binary Data field takes, length prefix included.
#[inline]
pub(crate) fn bin_len(b: &[u8]) -> usize {
    2 + b.len().min(MAX_FIELD)
}

/// Appends a UTF-8 Encoded String.
#[inline]
pub(crate) fn put_str(buf: &mut BytesMut, s: &str) {
    put_bin(buf, clamp_str(s).as_bytes());
}

/// Appends Binary Data.
#[inline]
pub(crate) fn put_bin(buf: &mut BytesMut, b: &[u8]) {
    let b = clamp_bin(b);
    buf.put_u16(u16::try_from(b.len()).unwrap_or(u16::MAX));
    buf.put_slice(b);
}

/// A usize length as the u32 a Variable Byte Integer takes.
#[inline]
fn vbi_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Reserves room for a whole packet and writes its fixed header.
#[inline]
fn header(buf: &mut BytesMut, first: u8, remaining: usize) {
    let rem = vbi_u32(remaining);
    buf.reserve(1 + variable_int_len(rem) + remaining);
    buf.put_u8(first);
    write_variable_int(buf, rem);
}

/// The whole size of a packet with this Remaining Length.
#[inline]
fn total(remaining: usize) -> usize {
    1 + variable_int_len(vbi_u32(remaining)) + remaining
}

/// A PUBLISH to encode, borrowed: the broker's hot path, which sends one stored message
/// to many subscribers, each with its own QoS, packet identifier, topic alias, expiry and
/// subscription identifiers, without building a [`Publish`] for each.
#[derive(Debug, Clone, Copy)]
pub struct PublishView<'a> {
    /// DUP flag; not written for QoS 0, where it must be 0 ([MQTT-3.3.1-2]).
    pub dup: bool,
    /// QoS.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name; empty when `topic_alias` stands for it.
    pub topic: &'a str,
    /// Packet identifier; ignored for QoS 0.
    pub packet_id: u16,
    /// Application payload.
    pub payload: &'a [u8],
    /// MQTT 5.0 properties. Its `topic_alias`, `message_expiry_interval` and
    /// `subscription_identifiers` are ignored: the three fields below are used instead.
    pub properties: &'a PublishProperties,
    /// Topic Alias to send (5.0).
    pub topic_alias: Option<u16>,
    /// Message Expiry Interval to send (5.0): the remaining lifetime for this receiver.
    pub message_expiry_interval: Option<u32>,
    /// Subscription Identifiers to send (5.0).
    pub subscription_identifiers: &'a [u32],
}

impl<'a> PublishView<'a> {
    /// A view of `p` that sends its own topic alias, expiry and subscription identifiers.
    pub fn from_publish(p: &'a Publish) -> Self {
        PublishView {
            dup: p.dup,
            qos: p.qos,
            retain: p.retain,
            topic: &p.topic,
            packet_id: p.packet_id,
            payload: &p.payload,
            properties: &p.properties,
            topic_alias: p.properties.topic_alias,
            message_expiry_interval: p.properties.message_expiry_interval,
            subscription_identifiers: &p.properties.subscription_identifiers,
        }
    }

    /// Property length (0 for non-5.0) and Remaining Length.
    #[inline]
    fn sizes(&self, protocol: Protocol) -> (usize, usize) {
        let mut rem = str_len(self.topic) + self.payload.len();
        if self.qos != QoS::AtMostOnce {
            rem += 2;
        }
        if !protocol.is_v5() {
            return (0, rem);
        }
        let plen = props::publish_len(
            self.properties,
            self.topic_alias,
            self.message_expiry_interval,
            self.subscription_identifiers,
        );
        (plen, rem + props::block_len(plen))
    }

    /// Bytes [`encode_publish`] appends for this view.
    pub fn encoded_len(&self, protocol: Protocol) -> usize {
        total(self.sizes(protocol).1)
    }
}

impl<'a> From<&'a Publish> for PublishView<'a> {
    fn from(p: &'a Publish) -> Self {
        PublishView::from_publish(p)
    }
}

/// Appends a PUBLISH (MQTT 3.1.1 section 3.3, 5.0 section 3.3).
#[inline]
pub fn encode_publish(buf: &mut BytesMut, protocol: Protocol, p: &PublishView<'_>) {
    let (plen, rem) = p.sizes(protocol);
    // MQTT 3.1.1 / 5.0 [MQTT-3.3.1-2]: DUP is 0 for QoS 0, whatever the view says (a
    // forwarded message may keep the DUP of a higher-QoS original).
    let dup = p.dup && p.qos != QoS::AtMostOnce;
    let first = 0x30 | (u8::from(dup) << 3) | ((p.qos as u8) << 1) | u8::from(p.retain);
    header(buf, first, rem);
    put_str(buf, p.topic);
    if p.qos != QoS::AtMostOnce {
        buf.put_u16(p.packet_id);
    }
    if protocol.is_v5() {
        if plen == 0 {
            buf.put_u8(0);
        } else {
            write_variable_int(buf, vbi_u32(plen));
            props::put_publish(
                buf,
                p.properties,
                p.topic_alias,
                p.message_expiry_interval,
                p.subscription_identifiers,
            );
        }
    }
    buf.put_slice(p.payload);
}

/// Appends `packet` encoded for `protocol`.
///
/// CONNECT is encoded for the protocol it names (`Connect::protocol`: MQTT 3.1 as
/// `MQIsdp` level 3), whatever `protocol` says. AUTH exists only in MQTT 5.0: for older
/// versions nothing is written.
pub fn encode(packet: &Packet, protocol: Protocol, buf: &mut BytesMut) {
    match packet {
        Packet::Publish(p) => encode_publish(buf, protocol, &PublishView::from_publish(p)),
        _ => {
            let s = sizes(packet, protocol);
            if let Some(first) = s.first {
                header(buf, first, s.rem);
                write_body(packet, protocol, s, buf);
            }
        }
    }
}

/// Bytes [`encode`] appends for `packet`: fixed header included, so it compares directly
/// with a Maximum Packet Size.
pub fn encoded_len(packet: &Packet, protocol: Protocol) -> usize {
    match packet {
        Packet::Publish(p) => PublishView::from_publish(p).encoded_len(protocol),
        _ => {
            let s = sizes(packet, protocol);
            if s.first.is_some() { total(s.rem) } else { 0 }
        }
    }
}

/// What the first pass over a packet learns.
#[derive(Clone, Copy)]
struct Sizes {
    /// First byte of the fixed header; `None` when nothing is to be written.
    first: Option<u8>,
    /// Remaining Length.
    rem: usize,
    /// Length of the (main) property block, 5.0 only.
    props: usize,
    /// Length of the will property block, CONNECT 5.0 only.
    will_props: usize,
}

impl Sizes {
    fn new(first: u8, rem: usize) -> Self {
        Sizes {
            first: Some(first),
            rem,
            props: 0,
            will_props: 0,
        }
    }
}

/// Shape of a 5.0 acknowledgement-like packet with a reason code that may be left out.
#[derive(Clone, Copy, PartialEq)]
enum Tail {
    /// Nothing after the fixed part: reason 0, no properties.
    None,
    /// The reason code only.
    Reason,
    /// Reason code, Property Length, properties.
    Full,
}

#[inline]
fn tail(v5: bool, reason: u8, plen: usize) -> Tail {
    if !v5 || (reason == 0 && plen == 0) {
        Tail::None
    } else if plen == 0 {
        Tail::Reason
    } else {
        Tail::Full
    }
}

#[inline]
fn tail_len(t: Tail, plen: usize) -> usize {
    match t {
        Tail::None => 0,
        Tail::Reason => 1,
        Tail::Full => 1 + props::block_len(plen),
    }
}

fn connect_protocol_name(p: Protocol) -> &'static [u8] {
    match p {
        Protocol::V31 => b"MQIsdp",
        Protocol::V311 | Protocol::V5 => b"MQTT",
    }
}

fn sizes(packet: &Packet, protocol: Protocol) -> Sizes {
    let v5 = protocol.is_v5();
    match packet {
        Packet::Connect(c) => {
            let cv5 = c.protocol.is_v5();
            // Protocol Name, Level, Connect Flags, Keep Alive.
            let mut rem = 2 + connect_protocol_name(c.protocol).len() + 1 + 1 + 2;
            let mut s = Sizes::new(0x10, 0);
            if cv5 {
                s.props = props::connect_len(&c.properties);
                rem += props::block_len(s.props);
            }
            rem += str_len(&c.client_id);
            if let Some(w) = &c.will {
                if cv5 {
                    s.will_props = props::will_len(&w.properties);
                    rem += props::block_len(s.will_props);
                }
                rem += str_len(&w.topic) + bin_len(&w.payload);
            }
            if let Some(u) = &c.username {
                rem += str_len(u);
            }
            if let Some(pw) = &c.password {
                rem += bin_len(pw);
            }
            s.rem = rem;
            s
        }
        Packet::ConnAck(c) => {
            let mut s = Sizes::new(0x20, 2);
            if v5 {
                s.props = props::connack_len(&c.properties);
                s.rem += props::block_len(s.props);
            }
            s
        }
        Packet::Publish(_) => Sizes {
            first: None,
            rem: 0,
            props: 0,
            will_props: 0,
        },
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            let first = match packet {
                Packet::PubAck(_) => 0x40,
                Packet::PubRec(_) => 0x50,
                // MQTT 3.1.1 [MQTT-3.6.1-1] / 5.0 section 3.6.1: PUBREL flags are 0b0010.
                Packet::PubRel(_) => 0x62,
                _ => 0x70,
            };
            let plen = if v5 { props::ack_len(&a.properties) } else { 0 };
            let mut s = Sizes::new(first, 2 + tail_len(tail(v5, a.reason, plen), plen));
            s.props = plen;
            s
        }
        Packet::Subscribe(sub) => {
            // MQTT 3.1.1 [MQTT-3.8.1-1] / 5.0 section 3.8.1: SUBSCRIBE flags are 0b0010.
            let mut s = Sizes::new(0x82, 2);
            if v5 {
                s.props = props::subscribe_len(&sub.properties);
                s.rem += props::block_len(s.props);
            }
            s.rem += sub
                .filters
                .iter()
                .map(|f| str_len(&f.filter) + 1)
                .sum::<usize>();
            s
        }
        Packet::SubAck(a) => {
            let mut s = Sizes::new(0x90, 2 + a.reason_codes.len());
            if v5 {
                s.props = props::ack_len(&a.properties);
                s.rem += props::block_len(s.props);
            }
            s
        }
        Packet::Unsubscribe(u) => {
            // MQTT 3.1.1 [MQTT-3.10.1-1] / 5.0 section 3.10.1: flags are 0b0010.
            let mut s = Sizes::new(0xA2, 2);
            if v5 {
                s.props = props::users_len(&u.user_properties);
                s.rem += props::block_len(s.props);
            }
            s.rem += u.filters.iter().map(|f| str_len(f)).sum::<usize>();
            s
        }
        Packet::UnsubAck(a) => {
            let mut s = Sizes::new(0xB0, 2);
            // MQTT 3.1.1 section 3.11: UNSUBACK has no payload.
            if v5 {
                s.props = props::ack_len(&a.properties);
                s.rem += props::block_len(s.props) + a.reason_codes.len();
            }
            s
        }
        Packet::PingReq => Sizes::new(0xC0, 0),
        Packet::PingResp => Sizes::new(0xD0, 0),
        Packet::Disconnect(d) => {
            let plen = if v5 {
                props::disconnect_len(&d.properties)
            } else {
                0
            };
            let mut s = Sizes::new(0xE0, tail_len(tail(v5, d.reason, plen), plen));
            s.props = plen;
            s
        }
        Packet::Auth(a) => {
            if !v5 {
                return Sizes {
                    first: None,
                    rem: 0,
                    props: 0,
                    will_props: 0,
                };
            }
            let plen = props::auth_len(&a.properties);
            let mut s = Sizes::new(0xF0, tail_len(tail(true, a.reason, plen), plen));
            s.props = plen;
            s
        }
    }
}

/// Subscription options byte (MQTT 5.0 section 3.8.3.1; before 5.0 only the QoS).
#[inline]
fn options_byte(o: &SubscriptionOptions, v5: bool) -> u8 {
    let mut b = o.qos as u8;
    if v5 {
        b |= u8::from(o.no_local) << 2;
        b |= u8::from(o.retain_as_published) << 3;
        b |= (o.retain_handling as u8) << 4;
    }
    b
}

/// Writes the reason code and properties a [`Tail`] calls for.
#[inline]
fn put_tail(buf: &mut BytesMut, t: Tail, reason: u8, plen: usize, f: impl FnOnce(&mut BytesMut)) {
    match t {
        Tail::None => {}
        Tail::Reason => buf.put_u8(reason),
        Tail::Full => {
            buf.put_u8(reason);
            props::put_block(buf, plen, f);
        }
    }
}

fn write_body(packet: &Packet, protocol: Protocol, s: Sizes, buf: &mut BytesMut) {
    let v5 = protocol.is_v5();
    match packet {
        Packet::Connect(c) => {
            let cv5 = c.protocol.is_v5();
            put_bin(buf, connect_protocol_name(c.protocol));
            buf.put_u8(c.protocol.level());
            let mut flags = u8::from(c.clean_start) << 1;
            if let Some(w) = &c.will {
                flags |= 0x04 | ((w.qos as u8) << 3) | (u8::from(w.retain) << 5);
            }
            if c.password.is_some() {
                flags |= 0x40;
            }
            if c.username.is_some() {
                flags |= 0x80;
            }
            buf.put_u8(flags);
            buf.put_u16(c.keep_alive);
            if cv5 {
                props::put_block(buf, s.props, |b| props::put_connect(b, &c.properties));
            }
            put_str(buf, &c.client_id);
            if let Some(w) = &c.will {
                if cv5 {
                    props::put_block(buf, s.will_props, |b| props::put_will(b, &w.properties));
                }
                put_str(buf, &w.topic);
                put_bin(buf, &w.payload);
            }
            if let Some(u) = &c.username {
                put_str(buf, u);
            }
            if let Some(pw) = &c.password {
                put_bin(buf, pw);
            }
        }
        Packet::ConnAck(c) => {
            buf.put_u8(u8::from(c.session_present));
            buf.put_u8(c.code);
            if v5 {
                props::put_block(buf, s.props, |b| props::put_connack(b, &c.properties));
            }
        }
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            buf.put_u16(a.packet_id);
            let t = tail(v5, a.reason, s.props);
            put_tail(buf, t, a.reason, s.props, |b| {
                props::put_ack(b, &a.properties)
            });
        }
        Packet::Subscribe(sub) => {
            buf.put_u16(sub.packet_id);
            if v5 {
                props::put_block(buf, s.props, |b| props::put_subscribe(b, &sub.properties));
            }
            for f in &sub.filters {
                put_str(buf, &f.filter);
                buf.put_u8(options_byte(&f.options, v5));
            }
        }
        Packet::SubAck(a) => {
            buf.put_u16(a.packet_id);
            if v5 {
                props::put_block(buf, s.props, |b| props::put_ack(b, &a.properties));
            }
            buf.put_slice(&a.reason_codes);
        }
        Packet::Unsubscribe(u) => {
            buf.put_u16(u.packet_id);
            if v5 {
                props::put_block(buf, s.props, |b| props::put_users(b, &u.user_properties));
            }
            for f in &u.filters {
                put_str(buf, f);
            }
        }
        Packet::UnsubAck(a) => {
            buf.put_u16(a.packet_id);
            if v5 {
                props::put_block(buf, s.props, |b| props::put_ack(b, &a.properties));
                buf.put_slice(&a.reason_codes);
            }
        }
        Packet::Disconnect(d) => {
            let t = tail(v5, d.reason, s.props);
            put_tail(buf, t, d.reason, s.props, |b| {
                props::put_disconnect(b, &d.properties)
            });
        }
        Packet::Auth(a) => {
            let t = tail(v5, a.reason, s.props);
            put_tail(buf, t, a.reason, s.props, |b| {
                props::put_auth(b, &a.properties)
            });
        }
        Packet::Publish(_) | Packet::PingReq | Packet::PingResp => {}
    }
}
