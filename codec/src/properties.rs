//! MQTT 5.0 properties (section 2.2.2): parsing and writing, one pair of functions per
//! packet's property set.
//!
//! Parsing rules enforced here, for every packet:
//! - an unknown identifier, or one not allowed in the packet, is a Malformed Packet
//!   (5.0 section 2.2.2.2: "a Control Packet which contains an Identifier which is not
//!   valid for its packet type ... [is] a Malformed Packet");
//! - a property other than User Property (and Subscription Identifier in PUBLISH)
//!   appearing twice is a Protocol Error (5.0 section 3.x.2.x, "It is a Protocol Error to
//!   include ... more than once");
//! - values with a restricted range are checked where the spec calls them a Protocol Error.

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use crate::encode::{bin_len, put_bin, put_str, str_len, variable_int_len, write_variable_int};
use crate::error::DecodeError;
use crate::packet::*;
use crate::reader::Reader;

pub(crate) const PAYLOAD_FORMAT_INDICATOR: u32 = 0x01;
pub(crate) const MESSAGE_EXPIRY_INTERVAL: u32 = 0x02;
pub(crate) const CONTENT_TYPE: u32 = 0x03;
pub(crate) const RESPONSE_TOPIC: u32 = 0x08;
pub(crate) const CORRELATION_DATA: u32 = 0x09;
pub(crate) const SUBSCRIPTION_IDENTIFIER: u32 = 0x0B;
pub(crate) const SESSION_EXPIRY_INTERVAL: u32 = 0x11;
pub(crate) const ASSIGNED_CLIENT_IDENTIFIER: u32 = 0x12;
pub(crate) const SERVER_KEEP_ALIVE: u32 = 0x13;
pub(crate) const AUTHENTICATION_METHOD: u32 = 0x15;
pub(crate) const AUTHENTICATION_DATA: u32 = 0x16;
pub(crate) const REQUEST_PROBLEM_INFORMATION: u32 = 0x17;
pub(crate) const WILL_DELAY_INTERVAL: u32 = 0x18;
pub(crate) const REQUEST_RESPONSE_INFORMATION: u32 = 0x19;
pub(crate) const RESPONSE_INFORMATION: u32 = 0x1A;
pub(crate) const SERVER_REFERENCE: u32 = 0x1C;
pub(crate) const REASON_STRING: u32 = 0x1F;
pub(crate) const RECEIVE_MAXIMUM: u32 = 0x21;
pub(crate) const TOPIC_ALIAS_MAXIMUM: u32 = 0x22;
pub(crate) const TOPIC_ALIAS: u32 = 0x23;
pub(crate) const MAXIMUM_QOS: u32 = 0x24;
pub(crate) const RETAIN_AVAILABLE: u32 = 0x25;
pub(crate) const USER_PROPERTY: u32 = 0x26;
pub(crate) const MAXIMUM_PACKET_SIZE: u32 = 0x27;
pub(crate) const WILDCARD_SUBSCRIPTION_AVAILABLE: u32 = 0x28;
pub(crate) const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u32 = 0x29;
pub(crate) const SHARED_SUBSCRIPTION_AVAILABLE: u32 = 0x2A;

// ---------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------

/// Reads a Property Length and calls `f(identifier, reader)` for each property in the
/// block; `f` reads the value. Reads are confined to the block.
#[inline]
fn parse(
    r: &mut Reader,
    mut f: impl FnMut(u32, &mut Reader) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let len = r.vbi()? as usize;
    if len == 0 {
        return Ok(());
    }
    // MQTT 5.0 section 2.2.2.1: the Property Length counts the bytes of the properties.
    let outer = r.limit(len)?;
    while r.remaining() > 0 {
        let id = r.vbi()?;
        f(id, r)?;
    }
    r.unlimit(outer);
    Ok(())
}

/// The error for an identifier the packet may not carry.
#[cold]
fn not_allowed(id: u32) -> DecodeError {
    match id {
        0x01..=0x03
        | 0x08
        | 0x09
        | 0x0B
        | 0x11..=0x13
        | 0x15..=0x1A
        | 0x1C
        | 0x1F
        | 0x21..=0x2A => DecodeError::Malformed("property not allowed in this packet"),
        _ => DecodeError::Malformed("unknown property identifier"),
    }
}

/// Stores a property that may appear only once.
#[inline]
fn once<T>(slot: &mut Option<T>, v: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::Protocol("property appears more than once"));
    }
    *slot = Some(v);
    Ok(())
}

/// A Byte property whose only values are 0 and 1 (Payload Format Indicator, Request
/// Problem/Response Information, Maximum QoS, Retain/Wildcard/Subscription Identifier/
/// Shared Subscription Available): anything else is a Protocol Error.
#[inline]
fn flag(r: &mut Reader) -> Result<u8, DecodeError> {
    match r.u8()? {
        v @ (0 | 1) => Ok(v),
        _ => Err(DecodeError::Protocol("property value must be 0 or 1")),
    }
}

/// A Two Byte Integer property for which 0 is a Protocol Error (Receive Maximum, 5.0
/// sections 3.1.2.11.3 and 3.2.2.3.3; Topic Alias, [MQTT-3.3.2-8]).
#[inline]
fn nonzero16(r: &mut Reader) -> Result<u16, DecodeError> {
    match r.u16()? {
        0 => Err(DecodeError::Protocol("property value must not be 0")),
        v => Ok(v),
    }
}

/// Maximum Packet Size: 0 is a Protocol Error (5.0 sections 3.1.2.11.4, 3.2.2.3.6).
#[inline]
fn nonzero32(r: &mut Reader) -> Result<u32, DecodeError> {
    match r.u32()? {
        0 => Err(DecodeError::Protocol("maximum packet size must not be 0")),
        v => Ok(v),
    }
}

/// Subscription Identifier: 0 is a Protocol Error (5.0 sections 3.3.2.3.8, 3.8.2.1.2).
#[inline]
fn sub_id(r: &mut Reader) -> Result<u32, DecodeError> {
    match r.vbi()? {
        0 => Err(DecodeError::Protocol(
            "subscription identifier must not be 0",
        )),
        v => Ok(v),
    }
}

#[inline]
fn user(r: &mut Reader, into: &mut Vec<UserProperty>) -> Result<(), DecodeError> {
    let k = r.string()?;
    let v = r.string()?;
    into.push((k, v));
    Ok(())
}

/// CONNECT properties (5.0 section 3.1.2.11).
pub(crate) fn parse_connect(r: &mut Reader) -> Result<ConnectProperties, DecodeError> {
    let mut p = ConnectProperties::default();
    parse(r, |id, r| match id {
        SESSION_EXPIRY_INTERVAL => once(&mut p.session_expiry_interval, r.u32()?),
        RECEIVE_MAXIMUM => once(&mut p.receive_maximum, nonzero16(r)?),
        MAXIMUM_PACKET_SIZE => once(&mut p.maximum_packet_size, nonzero32(r)?),
        TOPIC_ALIAS_MAXIMUM => once(&mut p.topic_alias_maximum, r.u16()?),
        REQUEST_RESPONSE_INFORMATION => once(&mut p.request_response_information, flag(r)?),
        REQUEST_PROBLEM_INFORMATION => once(&mut p.request_problem_information, flag(r)?),
        USER_PROPERTY => user(r, &mut p.user_properties),
        AUTHENTICATION_METHOD => once(&mut p.authentication_method, r.string()?),
        AUTHENTICATION_DATA => once(&mut p.authentication_data, r.binary()?),
        _ => Err(not_allowed(id)),
    })?;
    Ok(p)
}

/// Will properties (5.0 section 3.1.3.2).
pub(crate) fn parse_will(r: &mut Reader) -> Result<WillProperties, DecodeError> {
    let mut p = WillProperties::default();
    parse(r, |id, r| match id {
        WILL_DELAY_INTERVAL => once(&mut p.will_delay_interval, r.u32()?),
        PAYLOAD_FORMAT_INDICATOR => once(&mut p.payload_format_indicator, flag(r)?),
        MESSAGE_EXPIRY_INTERVAL => once(&mut p.message_expiry_interval, r.u32()?),
        CONTENT_TYPE => once(&mut p.content_type, r.string()?),
        RESPONSE_TOPIC => once(&mut p.response_topic, r.string()?),
        CORRELATION_DATA => once(&mut p.correlation_data, r.binary()?),
        USER_PROPERTY => user(r, &mut p.user_properties),
        _ => Err(not_allowed(id)),
    })?;
    Ok(p)
}

/// CONNACK properties (5.0 section 3.2.2.3).
pub(crate) fn parse_connack(r: &mut Reader) -> Result<ConnAckProperties, DecodeError> {
    let mut p = ConnAckProperties::default();
    parse(r, |id, r| match id {
        SESSION_EXPIRY_INTERVAL => once(&mut p.session_expiry_interval, r.u32()?),
        RECEIVE_MAXIMUM => once(&mut p.receive_maximum, nonzero16(r)?),
        MAXIMUM_QOS => once(&mut p.maximum_qos, flag(r)?),
        RETAIN_AVAILABLE => once(&mut p.retain_available, flag(r)?),
        MAXIMUM_PACKET_SIZE => once(&mut p.maximum_packet_size, nonzero32(r)?),
        ASSIGNED_CLIENT_IDENTIFIER => once(&mut p.assigned_client_identifier, r.string()?),
        TOPIC_ALIAS_MAXIMUM => once(&mut p.topic_alias_maximum, r.u16()?),
        REASON_STRING => once(&mut p.reason_string, r.string()?),
        USER_PROPERTY => user(r, &mut p.user_properties),
        WILDCARD_SUBSCRIPTION_AVAILABLE => once(&mut p.wildcard_subscription_available, flag(r)?),
        SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
            once(&mut p.subscription_identifiers_available, flag(r)?)
        }
        SHARED_SUBSCRIPTION_AVAILABLE => once(&mut p.shared_subscription_available, flag(r)?),
        SERVER_KEEP_ALIVE => once(&mut p.server_keep_alive, r.u16()?),
        RESPONSE_INFORMATION => once(&mut p.response_information, r.string()?),
        SERVER_REFERENCE => once(&mut p.server_reference, r.string()?),
        AUTHENTICATION_METHOD => once(&mut p.authentication_method, r.string()?),
        AUTHENTICATION_DATA => once(&mut p.authentication_data, r.binary()?),
        _ => Err(not_allowed(id)),
    })?;
    Ok(p)
}

/// PUBLISH properties (5.0 section 3.3.2.3). Subscription Identifier may repeat: a
/// server sends one per matching subscription (5.0 section 3.3.4).
pub(crate) fn parse_publish(r: &mut Reader) -> Result<PublishProperties, DecodeError> {
    let mut p = PublishProperties::default();
    parse(r, |id, r| match id {
        PAYLOAD_FORMAT_INDICATOR => once(&mut p.payload_format_indicator, flag(r)?),
        MESSAGE_EXPIRY_INTERVAL => once(&mut p.message_expiry_interval, r.u32()?),
        // MQTT 5.0 [MQTT-3.3.2-8]: a Topic Alias of 0 is a Protocol Error.
        TOPIC_ALIAS => once(&mut p.topic_alias, nonzero16(r)?),
        RESPONSE_TOPIC => once(&mut p.response_topic, r.string()?),
        CORRELATION_DATA => once(&mut p.correlation_data, r.binary()?),
        USER_PROPERTY => user(r, &mut p.user_properties),
        SUBSCRIPTION_IDENTIFIER => {
            p.subscription_identifiers.push(sub_id(r)?);
            Ok(())
        }
        CONTENT_TYPE => once(&mut p.content_type, r.string()?),
        _ => Err(not_allowed(id)),
    })?;
    Ok(p)
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK properties.
pub(crate) fn parse_ack(r: &mut Reader) -> Result<AckProperties, DecodeError> {
    let mut p = AckProperties::default();
    parse(r, |id, r| match id {
        REASON_STRING => once(&mut p.reason_string, r.string()?),
        USER_PROPERTY => user(r, &mut p.user_properties),
        _ => Err(not_allowed(id)),
    })?;
    Ok(p)
}

/// SUBSCRIBE properties (5.0 section 3.8.2.1).
pub(crate) fn parse_subscribe(r: &mut Reader) -> Result<SubscribeProperties, DecodeError> {
    let mut p = SubscribeProperties::default();
    parse(r, |id, r| match id {
        SUBSCRIPTION_IDENTIFIER => once(&mut p.subscription_identifier, sub_id(r)?),
        USER_PROPERTY => user(r, &mut p.user_properties),
        _ => Err(not_allowed(id)),
    })?;
    Ok(p)
}

/// UNSUBSCRIBE properties (5.0 section 3.10.2.1): user properties only.
pub(crate) fn parse_unsubscribe(r: &mut Reader) -> Result<Vec<UserProperty>, DecodeError> {
    let mut v = Vec::new();
    parse(r, |id, r| match id {
        USER_PROPERTY => user(r, &mut v),
        _ => Err(not_allowed(id)),
    })?;
    Ok(v)
}

/// DISCONNECT properties (5.0 section 3.14.2.2).
pub(crate) fn parse_disconnect(r: &mut Reader) -> Result<DisconnectProperties, DecodeError> {
    let mut p = DisconnectProperties::default();
    parse(r, |id, r| match id {
        SESSION_EXPIRY_INTERVAL => once(&mut p.session_expiry_interval, r.u32()?),
        REASON_STRING => once(&mut p.reason_string, r.string()?),
        USER_PROPERTY => user(r, &mut p.user_properties),
        SERVER_REFERENCE => once(&mut p.server_reference, r.string()?),
        _ => Err(not_allowed(id)),
    })?;
    Ok(p)
}

/// AUTH properties (5.0 section 3.15.2.2).
pub(crate) fn parse_auth(r: &mut Reader) -> Result<AuthProperties, DecodeError> {
    let mut p = AuthProperties::default();
    parse(r, |id, r| match id {
        AUTHENTICATION_METHOD => once(&mut p.authentication_method, r.string()?),
        AUTHENTICATION_DATA => once(&mut p.authentication_data, r.binary()?),
        REASON_STRING => once(&mut p.reason_string, r.string()?),
        USER_PROPERTY => user(r, &mut p.user_properties),
        _ => Err(not_allowed(id)),
    })?;
    Ok(p)
}

// ---------------------------------------------------------------------------------------
// Writing: `*_len` gives the bytes of the properties (without the Property Length), and
// `put_*` writes them, also without the Property Length. All identifiers are below 128,
// so each takes one byte.
// ---------------------------------------------------------------------------------------

#[inline]
fn l8(o: Option<u8>) -> usize {
    if o.is_some() { 2 } else { 0 }
}
#[inline]
fn l16(o: Option<u16>) -> usize {
    if o.is_some() { 3 } else { 0 }
}
#[inline]
fn l32(o: Option<u32>) -> usize {
    if o.is_some() { 5 } else { 0 }
}
#[inline]
fn lstr(o: &Option<ByteString>) -> usize {
    o.as_ref().map_or(0, |s| 1 + str_len(s))
}
#[inline]
fn lbin(o: &Option<Bytes>) -> usize {
    o.as_ref().map_or(0, |b| 1 + bin_len(b))
}
#[inline]
fn lusers(v: &[UserProperty]) -> usize {
    v.iter().map(|(k, v)| 1 + str_len(k) + str_len(v)).sum()
}
#[inline]
fn lsubids(v: &[u32]) -> usize {
    v.iter().map(|&id| 1 + variable_int_len(id)).sum()
}

#[inline]
fn w8(buf: &mut BytesMut, id: u32, o: Option<u8>) {
    if let Some(v) = o {
        buf.put_slice(&[id as u8, v]);
    }
}
#[inline]
fn w16(buf: &mut BytesMut, id: u32, o: Option<u16>) {
    if let Some(v) = o {
        buf.put_u8(id as u8);
        buf.put_u16(v);
    }
}
#[inline]
fn w32(buf: &mut BytesMut, id: u32, o: Option<u32>) {
    if let Some(v) = o {
        buf.put_u8(id as u8);
        buf.put_u32(v);
    }
}
#[inline]
fn wstr(buf: &mut BytesMut, id: u32, o: &Option<ByteString>) {
    if let Some(s) = o {
        buf.put_u8(id as u8);
        put_str(buf, s);
    }
}
#[inline]
fn wbin(buf: &mut BytesMut, id: u32, o: &Option<Bytes>) {
    if let Some(b) = o {
        buf.put_u8(id as u8);
        put_bin(buf, b);
    }
}
#[inline]
fn wusers(buf: &mut BytesMut, v: &[UserProperty]) {
    for (k, v) in v {
        buf.put_u8(USER_PROPERTY as u8);
        put_str(buf, k);
        put_str(buf, v);
    }
}
#[inline]
fn wsubids(buf: &mut BytesMut, v: &[u32]) {
    for &id in v {
        buf.put_u8(SUBSCRIPTION_IDENTIFIER as u8);
        write_variable_int(buf, id);
    }
}

/// Writes a Property Length then the properties.
#[inline]
pub(crate) fn put_block(buf: &mut BytesMut, len: usize, write: impl FnOnce(&mut BytesMut)) {
    write_variable_int(buf, u32::try_from(len).unwrap_or(u32::MAX));
    if len > 0 {
        write(buf);
    }
}

/// Property Length plus properties.
#[inline]
pub(crate) fn block_len(len: usize) -> usize {
    variable_int_len(u32::try_from(len).unwrap_or(u32::MAX)) + len
}

pub(crate) fn connect_len(p: &ConnectProperties) -> usize {
    l32(p.session_expiry_interval)
        + l16(p.receive_maximum)
        + l32(p.maximum_packet_size)
        + l16(p.topic_alias_maximum)
        + l8(p.request_response_information)
        + l8(p.request_problem_information)
        + lusers(&p.user_properties)
        + lstr(&p.authentication_method)
        + lbin(&p.authentication_data)
}

pub(crate) fn put_connect(buf: &mut BytesMut, p: &ConnectProperties) {
    w32(buf, SESSION_EXPIRY_INTERVAL, p.session_expiry_interval);
    w16(buf, RECEIVE_MAXIMUM, p.receive_maximum);
    w32(buf, MAXIMUM_PACKET_SIZE, p.maximum_packet_size);
    w16(buf, TOPIC_ALIAS_MAXIMUM, p.topic_alias_maximum);
    w8(
        buf,
        REQUEST_RESPONSE_INFORMATION,
        p.request_response_information,
    );
    w8(
        buf,
        REQUEST_PROBLEM_INFORMATION,
        p.request_problem_information,
    );
    wusers(buf, &p.user_properties);
    wstr(buf, AUTHENTICATION_METHOD, &p.authentication_method);
    wbin(buf, AUTHENTICATION_DATA, &p.authentication_data);
}

pub(crate) fn will_len(p: &WillProperties) -> usize {
    l32(p.will_delay_interval)
        + l8(p.payload_format_indicator)
        + l32(p.message_expiry_interval)
        + lstr(&p.content_type)
        + lstr(&p.response_topic)
        + lbin(&p.correlation_data)
        + lusers(&p.user_properties)
}

pub(crate) fn put_will(buf: &mut BytesMut, p: &WillProperties) {
    w32(buf, WILL_DELAY_INTERVAL, p.will_delay_interval);
    w8(buf, PAYLOAD_FORMAT_INDICATOR, p.payload_format_indicator);
    w32(buf, MESSAGE_EXPIRY_INTERVAL, p.message_expiry_interval);
    wstr(buf, CONTENT_TYPE, &p.content_type);
    wstr(buf, RESPONSE_TOPIC, &p.response_topic);
    wbin(buf, CORRELATION_DATA, &p.correlation_data);
    wusers(buf, &p.user_properties);
}

pub(crate) fn connack_len(p: &ConnAckProperties) -> usize {
    l32(p.session_expiry_interval)
        + l16(p.receive_maximum)
        + l8(p.maximum_qos)
        + l8(p.retain_available)
        + l32(p.maximum_packet_size)
        + lstr(&p.assigned_client_identifier)
        + l16(p.topic_alias_maximum)
        + lstr(&p.reason_string)
        + lusers(&p.user_properties)
        + l8(p.wildcard_subscription_available)
        + l8(p.subscription_identifiers_available)
        + l8(p.shared_subscription_available)
        + l16(p.server_keep_alive)
        + lstr(&p.response_information)
        + lstr(&p.server_reference)
        + lstr(&p.authentication_method)
        + lbin(&p.authentication_data)
}

pub(crate) fn put_connack(buf: &mut BytesMut, p: &ConnAckProperties) {
    w32(buf, SESSION_EXPIRY_INTERVAL, p.session_expiry_interval);
    w16(buf, RECEIVE_MAXIMUM, p.receive_maximum);
    w8(buf, MAXIMUM_QOS, p.maximum_qos);
    w8(buf, RETAIN_AVAILABLE, p.retain_available);
    w32(buf, MAXIMUM_PACKET_SIZE, p.maximum_packet_size);
    wstr(
        buf,
        ASSIGNED_CLIENT_IDENTIFIER,
        &p.assigned_client_identifier,
    );
    w16(buf, TOPIC_ALIAS_MAXIMUM, p.topic_alias_maximum);
    wstr(buf, REASON_STRING, &p.reason_string);
    wusers(buf, &p.user_properties);
    w8(
        buf,
        WILDCARD_SUBSCRIPTION_AVAILABLE,
        p.wildcard_subscription_available,
    );
    w8(
        buf,
        SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        p.subscription_identifiers_available,
    );
    w8(
        buf,
        SHARED_SUBSCRIPTION_AVAILABLE,
        p.shared_subscription_available,
    );
    w16(buf, SERVER_KEEP_ALIVE, p.server_keep_alive);
    wstr(buf, RESPONSE_INFORMATION, &p.response_information);
    wstr(buf, SERVER_REFERENCE, &p.server_reference);
    wstr(buf, AUTHENTICATION_METHOD, &p.authentication_method);
    wbin(buf, AUTHENTICATION_DATA, &p.authentication_data);
}

/// PUBLISH properties, with Topic Alias, Message Expiry Interval and Subscription
/// Identifiers taken from the arguments rather than from `p`.
#[inline]
pub(crate) fn publish_len(
    p: &PublishProperties,
    topic_alias: Option<u16>,
    message_expiry_interval: Option<u32>,
    subscription_identifiers: &[u32],
) -> usize {
    l16(topic_alias)
        + l32(message_expiry_interval)
        + lsubids(subscription_identifiers)
        + publish_rest_len(p)
}

/// The PUBLISH properties other than the three the view overrides; 0 when there are none,
/// which is the common case and costs five tests.
#[inline]
fn publish_rest_len(p: &PublishProperties) -> usize {
    if p.payload_format_indicator.is_none()
        && p.response_topic.is_none()
        && p.correlation_data.is_none()
        && p.user_properties.is_empty()
        && p.content_type.is_none()
    {
        return 0;
    }
    l8(p.payload_format_indicator)
        + lstr(&p.response_topic)
        + lbin(&p.correlation_data)
        + lusers(&p.user_properties)
        + lstr(&p.content_type)
}

/// Writes what [`publish_len`] counted.
#[inline]
pub(crate) fn put_publish(
    buf: &mut BytesMut,
    p: &PublishProperties,
    topic_alias: Option<u16>,
    message_expiry_interval: Option<u32>,
    subscription_identifiers: &[u32],
) {
    w8(buf, PAYLOAD_FORMAT_INDICATOR, p.payload_format_indicator);
    w32(buf, MESSAGE_EXPIRY_INTERVAL, message_expiry_interval);
    w16(buf, TOPIC_ALIAS, topic_alias);
    wstr(buf, RESPONSE_TOPIC, &p.response_topic);
    wbin(buf, CORRELATION_DATA, &p.correlation_data);
    wusers(buf, &p.user_properties);
    wsubids(buf, subscription_identifiers);
    wstr(buf, CONTENT_TYPE, &p.content_type);
}

pub(crate) fn ack_len(p: &AckProperties) -> usize {
    lstr(&p.reason_string) + lusers(&p.user_properties)
}

pub(crate) fn put_ack(buf: &mut BytesMut, p: &AckProperties) {
    wstr(buf, REASON_STRING, &p.reason_string);
    wusers(buf, &p.user_properties);
}

pub(crate) fn subscribe_len(p: &SubscribeProperties) -> usize {
    lsubids(p.subscription_identifier.as_slice()) + lusers(&p.user_properties)
}

pub(crate) fn put_subscribe(buf: &mut BytesMut, p: &SubscribeProperties) {
    wsubids(buf, p.subscription_identifier.as_slice());
    wusers(buf, &p.user_properties);
}

pub(crate) fn users_len(v: &[UserProperty]) -> usize {
    lusers(v)
}

pub(crate) fn put_users(buf: &mut BytesMut, v: &[UserProperty]) {
    wusers(buf, v);
}

pub(crate) fn disconnect_len(p: &DisconnectProperties) -> usize {
    l32(p.session_expiry_interval)
        + lstr(&p.reason_string)
        + lusers(&p.user_properties)
        + lstr(&p.server_reference)
}

pub(crate) fn put_disconnect(buf: &mut BytesMut, p: &DisconnectProperties) {
    w32(buf, SESSION_EXPIRY_INTERVAL, p.session_expiry_interval);
    wstr(buf, REASON_STRING, &p.reason_string);
    wusers(buf, &p.user_properties);
    wstr(buf, SERVER_REFERENCE, &p.server_reference);
}

pub(crate) fn auth_len(p: &AuthProperties) -> usize {
    lstr(&p.authentication_method)
        + lbin(&p.authentication_data)
        + lstr(&p.reason_string)
        + lusers(&p.user_properties)
}

pub(crate) fn put_auth(buf: &mut BytesMut, p: &AuthProperties) {
    wstr(buf, AUTHENTICATION_METHOD, &p.authentication_method);
    wbin(buf, AUTHENTICATION_DATA, &p.authentication_data);
    wstr(buf, REASON_STRING, &p.reason_string);
    wusers(buf, &p.user_properties);
}
