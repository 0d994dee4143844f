//! Decoding: one whole packet off the front of a [`BytesMut`].
//!
//! The frame is split off the buffer and frozen, and every string, binary field and
//! payload of the packet is a slice of it: decoding copies no data, and allocates only the
//! `Vec`s a packet type holds (filters, reason codes, user properties).
//!
//! Every check the spec asks of a receiver that needs nothing but the packet itself is
//! done here; what needs state or policy (topic names and filters, aliases, quotas,
//! client-to-server-only rules) is the broker's.

use bytes::BytesMut;

use crate::error::DecodeError;
use crate::packet::*;
use crate::properties as props;
use crate::reader::{Reader, Vbi, read_vbi};

/// Takes one whole packet off the front of `buf`.
///
/// - `Ok(Some(packet))`: the packet's bytes have been removed from `buf`.
/// - `Ok(None)`: `buf` holds only part of a packet; it is left untouched.
/// - `Err(_)`: the stream is not valid MQTT and the connection should be closed (after a
///   CONNACK or DISCONNECT with [`DecodeError::reason_code`] for MQTT 5.0). What is left
///   in `buf` is then unspecified.
///
/// CONNECT is decoded whatever `protocol` says, since it names its own version (see
/// [`Connect::protocol`]); every other packet is decoded as `protocol` defines it.
/// `max_packet_size` bounds the whole packet, fixed header included, and is checked as
/// soon as the Remaining Length has arrived, before the rest of the packet.
pub fn decode(
    buf: &mut BytesMut,
    protocol: Protocol,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    check_first_byte(first, protocol)?;
    let (remaining, len_bytes) = match read_vbi(buf.get(1..).unwrap_or_default()) {
        Vbi::Done(v, n) => (v as usize, n),
        Vbi::Incomplete => return Ok(None),
        // MQTT 3.1.1 section 2.2.3 / 5.0 section 1.5.5: at most four bytes.
        Vbi::TooLong => {
            return Err(DecodeError::Malformed(
                "remaining length longer than 4 bytes",
            ));
        }
    };
    // At most 1 + 4 + 268,435,455: no overflow even on 32-bit targets.
    let total = 1 + len_bytes + remaining;
    if total > max_packet_size {
        return Err(DecodeError::TooLarge {
            size: total,
            max: max_packet_size,
        });
    }
    if buf.len() < total {
        return Ok(None);
    }
    let frame = buf.split_to(total).freeze();
    let mut r = Reader::new(frame, 1 + len_bytes);
    decode_body(first, protocol, &mut r).map(Some)
}

/// Checks the packet type and its fixed-header flags, which the first byte alone tells.
#[inline]
fn check_first_byte(first: u8, protocol: Protocol) -> Result<(), DecodeError> {
    let flags = first & 0x0F;
    let expected = match first >> 4 {
        // MQTT 3.1.1 section 2.2.1 / 5.0 section 2.1.2: type 0 is reserved.
        0 => return Err(DecodeError::Malformed("reserved packet type 0")),
        3 => {
            // MQTT 3.1.1 [MQTT-3.3.1-4] / 5.0 [MQTT-3.3.1-4]: QoS 3 is malformed.
            if flags & 0b0110 == 0b0110 {
                return Err(DecodeError::Malformed("PUBLISH with QoS 3"));
            }
            // MQTT 3.1.1 [MQTT-3.3.1-2] / 5.0 [MQTT-3.3.1-2]: DUP is 0 for QoS 0.
            if flags & 0b1110 == 0b1000 {
                return Err(DecodeError::Malformed("PUBLISH with DUP set and QoS 0"));
            }
            return Ok(());
        }
        // MQTT 3.1.1 [MQTT-3.6.1-1], [MQTT-3.8.1-1], [MQTT-3.10.1-1]; 5.0 section 2.1.3.
        6 | 8 | 10 => 0b0010,
        // Type 15 is AUTH in MQTT 5.0 and reserved before (3.1.1 section 2.2.1).
        15 if !protocol.is_v5() => {
            return Err(DecodeError::Malformed("reserved packet type 15"));
        }
        _ => 0,
    };
    // MQTT 3.1.1 [MQTT-2.2.2-2] / 5.0 [MQTT-2.1.3-1]: other flag values are malformed.
    if flags != expected {
        return Err(DecodeError::Malformed("invalid fixed header flags"));
    }
    Ok(())
}

fn decode_body(first: u8, protocol: Protocol, r: &mut Reader) -> Result<Packet, DecodeError> {
    let v5 = protocol.is_v5();
    Ok(match first >> 4 {
        1 => Packet::Connect(Box::new(connect(r)?)),
        2 => Packet::ConnAck(connack(r, v5)?),
        3 => Packet::Publish(publish(first, r, v5)?),
        4 => Packet::PubAck(ack(r, v5)?),
        5 => Packet::PubRec(ack(r, v5)?),
        6 => Packet::PubRel(ack(r, v5)?),
        7 => Packet::PubComp(ack(r, v5)?),
        8 => Packet::Subscribe(subscribe(r, v5)?),
        9 => Packet::SubAck(suback(r, v5)?),
        10 => Packet::Unsubscribe(unsubscribe(r, v5)?),
        11 => Packet::UnsubAck(unsuback(r, v5)?),
        12 => {
            r.finish("PINGREQ with a body")?;
            Packet::PingReq
        }
        13 => {
            r.finish("PINGRESP with a body")?;
            Packet::PingResp
        }
        14 => Packet::Disconnect(disconnect(r, v5)?),
        15 => Packet::Auth(auth(r)?),
        // Unreachable: check_first_byte refused type 0.
        _ => return Err(DecodeError::Malformed("reserved packet type 0")),
    })
}

/// A packet identifier that must not be 0 (PUBLISH QoS > 0, SUBSCRIBE, UNSUBSCRIBE).
#[inline]
fn nonzero_packet_id(r: &mut Reader, v5: bool) -> Result<u16, DecodeError> {
    match r.u16()? {
        // MQTT 3.1.1 [MQTT-2.3.1-1]: non-zero. MQTT 5.0 [MQTT-2.2.1-3]: a Protocol Error.
        0 if v5 => Err(DecodeError::Protocol("packet identifier 0")),
        0 => Err(DecodeError::Malformed("packet identifier 0")),
        id => Ok(id),
    }
}

fn connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    // MQTT 3.1.1 section 3.1.2.1 / 5.0 section 3.1.2.1: name then level; 3.1 is "MQIsdp" 3.
    let name_len = usize::from(r.u16()?);
    let name = r.take_ref(name_len)?;
    let is_mqtt = name == b"MQTT";
    if !is_mqtt && name != b"MQIsdp" {
        return Err(DecodeError::UnsupportedProtocol { level: 0 });
    }
    let level = r.u8()?;
    let protocol = match (is_mqtt, level) {
        (true, 4) => Protocol::V311,
        (true, 5) => Protocol::V5,
        (false, 3) => Protocol::V31,
        // MQTT 3.1.1 [MQTT-3.1.2-2] / 5.0 [MQTT-3.1.2-2]: unsupported level.
        _ => return Err(DecodeError::UnsupportedProtocol { level }),
    };
    let v5 = protocol.is_v5();

    let flags = r.u8()?;
    // MQTT 3.1.1 [MQTT-3.1.2-3] / 5.0 [MQTT-3.1.2-3]: the reserved flag is 0.
    if flags & 0x01 != 0 {
        return Err(DecodeError::Malformed("CONNECT reserved flag set"));
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        // MQTT 3.1.1 [MQTT-3.1.2-13], [MQTT-3.1.2-15] / 5.0 [MQTT-3.1.2-11], [MQTT-3.1.2-13].
        return Err(DecodeError::Malformed(
            "will QoS or retain set without will flag",
        ));
    }
    // MQTT 3.1.1 [MQTT-3.1.2-14] / 5.0 [MQTT-3.1.2-12]: will QoS 3 is malformed.
    let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::Malformed("will QoS 3"))?;
    // MQTT 3.1.1 [MQTT-3.1.2-22]: no password without a user name (5.0 allows it).
    if password_flag && !username_flag && !v5 {
        return Err(DecodeError::Malformed(
            "password flag set without user name flag",
        ));
    }
    let keep_alive = r.u16()?;
    let properties = if v5 {
        props::parse_connect(r)?
    } else {
        ConnectProperties::default()
    };

    // Payload: client id, will properties, will topic, will payload, user name, password
    // (3.1.1 section 3.1.3 / 5.0 section 3.1.3), each present only if its flag says so.
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = if v5 {
            props::parse_will(r)?
        } else {
            WillProperties::default()
        };
        let topic = r.string()?;
        let payload = r.binary()?;
        Some(LastWill {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string()?)
    } else {
        None
    };
    let password = if password_flag {
        Some(r.binary()?)
    } else {
        None
    };
    r.finish("trailing bytes after CONNECT payload")?;
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

fn connack(r: &mut Reader, v5: bool) -> Result<ConnAck, DecodeError> {
    let flags = r.u8()?;
    // MQTT 3.1.1 section 3.2.2.1 / 5.0 [MQTT-3.2.2-1]: bits 7-1 are reserved, 0.
    if flags & 0xFE != 0 {
        return Err(DecodeError::Malformed("CONNACK reserved flags set"));
    }
    let code = r.u8()?;
    let properties = if v5 {
        props::parse_connack(r)?
    } else {
        ConnAckProperties::default()
    };
    r.finish("trailing bytes after CONNACK")?;
    Ok(ConnAck {
        session_present: flags & 0x01 != 0,
        code,
        properties,
    })
}

fn publish(first: u8, r: &mut Reader, v5: bool) -> Result<Publish, DecodeError> {
    let qos = QoS::from_u8((first >> 1) & 0x03).ok_or(DecodeError::Malformed("QoS 3"))?;
    let topic = r.string()?;
    // MQTT 3.1.1 section 3.3.2.2 / 5.0 section 3.3.2.2: an identifier only for QoS > 0.
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        nonzero_packet_id(r, v5)?
    };
    let properties = if v5 {
        props::parse_publish(r)?
    } else {
        PublishProperties::default()
    };
    // The payload is the rest of the packet, possibly empty (3.1.1 section 3.3.3).
    let payload = r.rest();
    Ok(Publish {
        dup: first & 0x08 != 0,
        qos,
        retain: first & 0x01 != 0,
        topic,
        packet_id,
        payload,
        properties,
    })
}

/// Reads an optional reason code then optional properties (5.0 PUBACK, PUBREC, PUBREL,
/// PUBCOMP, DISCONNECT, AUTH): whatever the Remaining Length leaves out is 0 / none.
#[inline]
fn reason_and<P: Default>(
    r: &mut Reader,
    parse: fn(&mut Reader) -> Result<P, DecodeError>,
) -> Result<(u8, P), DecodeError> {
    let reason = if r.remaining() > 0 { r.u8()? } else { 0 };
    let properties = if r.remaining() > 0 {
        parse(r)?
    } else {
        P::default()
    };
    Ok((reason, properties))
}

fn ack(r: &mut Reader, v5: bool) -> Result<Ack, DecodeError> {
    let packet_id = r.u16()?;
    if !v5 {
        // MQTT 3.1.1 sections 3.4 to 3.7: Remaining Length is exactly 2.
        r.finish("trailing bytes after acknowledgement")?;
        return Ok(Ack {
            packet_id,
            ..Ack::default()
        });
    }
    // MQTT 5.0 section 3.4.2.1: Remaining Length 2 means reason 0 and no properties;
    // section 3.4.2.2: less than 4 means no properties.
    let (reason, properties) = reason_and(r, props::parse_ack)?;
    r.finish("trailing bytes after acknowledgement properties")?;
    Ok(Ack {
        packet_id,
        reason,
        properties,
    })
}

fn subscribe(r: &mut Reader, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = nonzero_packet_id(r, v5)?;
    let properties = if v5 {
        props::parse_subscribe(r)?
    } else {
        SubscribeProperties::default()
    };
    let mut filters = Vec::new();
    while r.remaining() > 0 {
        let filter = r.string()?;
        let options = subscription_options(r.u8()?, v5)?;
        filters.push(SubscribeFilter { filter, options });
    }
    // MQTT 3.1.1 [MQTT-3.8.3-3] / 5.0 [MQTT-3.8.3-2]: at least one filter.
    if filters.is_empty() {
        return Err(DecodeError::Protocol("SUBSCRIBE with no topic filter"));
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties,
    })
}

fn subscription_options(b: u8, v5: bool) -> Result<SubscriptionOptions, DecodeError> {
    if !v5 {
        // MQTT 3.1.1 [MQTT-3-8.3-4]: upper 6 bits reserved and QoS 0 to 2, else malformed.
        if b & 0xFC != 0 {
            return Err(DecodeError::Malformed(
                "subscription options reserved bits set",
            ));
        }
        let qos = QoS::from_u8(b).ok_or(DecodeError::Malformed("subscription QoS 3"))?;
        return Ok(SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        });
    }
    // MQTT 5.0 [MQTT-3.8.3-5]: bits 6 and 7 are reserved; non-zero is malformed.
    if b & 0xC0 != 0 {
        return Err(DecodeError::Malformed(
            "subscription options reserved bits set",
        ));
    }
    // MQTT 5.0 section 3.8.3.1: Maximum QoS 3 and Retain Handling 3 are Protocol Errors.
    let qos = QoS::from_u8(b & 0x03).ok_or(DecodeError::Protocol("subscription QoS 3"))?;
    let retain_handling = match (b >> 4) & 0x03 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(DecodeError::Protocol("retain handling 3")),
    };
    Ok(SubscriptionOptions {
        qos,
        no_local: b & 0x04 != 0,
        retain_as_published: b & 0x08 != 0,
        retain_handling,
    })
}

fn suback(r: &mut Reader, v5: bool) -> Result<SubAck, DecodeError> {
    let packet_id = r.u16()?;
    let properties = if v5 {
        props::parse_ack(r)?
    } else {
        AckProperties::default()
    };
    let reason_codes = r.rest().to_vec();
    // One code per filter of the SUBSCRIBE, which had at least one.
    if reason_codes.is_empty() {
        return Err(DecodeError::Protocol("SUBACK with no reason code"));
    }
    // MQTT 3.1.1 [MQTT-3.9.3-2]: return codes other than 0, 1, 2 and 0x80 are reserved.
    if !v5 && reason_codes.iter().any(|&c| !matches!(c, 0 | 1 | 2 | 0x80)) {
        return Err(DecodeError::Protocol("SUBACK with a reserved return code"));
    }
    Ok(SubAck {
        packet_id,
        reason_codes,
        properties,
    })
}

fn unsubscribe(r: &mut Reader, v5: bool) -> Result<Unsubscribe, DecodeError> {
    let packet_id = nonzero_packet_id(r, v5)?;
    let user_properties = if v5 {
        props::parse_unsubscribe(r)?
    } else {
        Vec::new()
    };
    let mut filters = Vec::new();
    while r.remaining() > 0 {
        filters.push(r.string()?);
    }
    // MQTT 3.1.1 [MQTT-3.10.3-2] / 5.0 [MQTT-3.10.3-2]: at least one filter.
    if filters.is_empty() {
        return Err(DecodeError::Protocol("UNSUBSCRIBE with no topic filter"));
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        user_properties,
    })
}

fn unsuback(r: &mut Reader, v5: bool) -> Result<UnsubAck, DecodeError> {
    let packet_id = r.u16()?;
    if !v5 {
        // MQTT 3.1.1 section 3.11: Remaining Length 2, no payload.
        r.finish("trailing bytes after UNSUBACK")?;
        return Ok(UnsubAck {
            packet_id,
            ..UnsubAck::default()
        });
    }
    let properties = props::parse_ack(r)?;
    let reason_codes = r.rest().to_vec();
    // MQTT 5.0 [MQTT-3.11.3-1]: one reason code per filter, so at least one.
    if reason_codes.is_empty() {
        return Err(DecodeError::Protocol("UNSUBACK with no reason code"));
    }
    Ok(UnsubAck {
        packet_id,
        reason_codes,
        properties,
    })
}

fn disconnect(r: &mut Reader, v5: bool) -> Result<Disconnect, DecodeError> {
    if !v5 {
        // MQTT 3.1.1 section 3.14: no variable header, no payload.
        r.finish("DISCONNECT with a body")?;
        return Ok(Disconnect::default());
    }
    // MQTT 5.0 section 3.14.2.1: Remaining Length 0 means reason 0 (normal disconnection).
    let (reason, properties) = reason_and(r, props::parse_disconnect)?;
    r.finish("trailing bytes after DISCONNECT properties")?;
    Ok(Disconnect { reason, properties })
}

fn auth(r: &mut Reader) -> Result<Auth, DecodeError> {
    // MQTT 5.0 section 3.15.2.1: Remaining Length 0 means reason 0 (success).
    let (reason, properties) = reason_and(r, props::parse_auth)?;
    r.finish("trailing bytes after AUTH properties")?;
    Ok(Auth { reason, properties })
}
