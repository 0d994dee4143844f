//! Each malformed or protocol-violating input the codec must refuse, with the error the
//! specs call for.

mod common;

use common::*;
use rookery_codec::{DecodeError, Packet, Protocol, reason};

use DecodeError::{Malformed, Protocol as ProtocolErr, UnsupportedProtocol};
use Protocol::{V5, V31, V311};

fn is_malformed(e: &DecodeError) -> bool {
    matches!(e, Malformed(_))
}

fn is_protocol(e: &DecodeError) -> bool {
    matches!(e, ProtocolErr(_))
}

#[track_caller]
fn malformed(bytes: &[u8], proto: Protocol) {
    let e = err(bytes, proto);
    assert!(
        is_malformed(&e),
        "{bytes:02X?} on {proto:?}: expected Malformed, got {e:?}"
    );
    assert_eq!(e.reason_code(), reason::MALFORMED_PACKET);
}

#[track_caller]
fn protocol_error(bytes: &[u8], proto: Protocol) {
    let e = err(bytes, proto);
    assert!(
        is_protocol(&e),
        "{bytes:02X?} on {proto:?}: expected Protocol, got {e:?}"
    );
    assert_eq!(e.reason_code(), reason::PROTOCOL_ERROR);
}

/// A 5.0 CONNECT with client id "c" and the given property bytes.
fn v5_connect_with(props: &[u8]) -> Vec<u8> {
    let body = cat(&[
        &[0, 4],
        b"MQTT",
        &[5, 0x02, 0, 60, props.len() as u8],
        props,
        &[0, 1, b'c'],
    ]);
    cat(&[&[0x10, body.len() as u8], &body])
}

/// A 5.0 CONNACK with the given property bytes.
fn v5_connack_with(props: &[u8]) -> Vec<u8> {
    cat(&[
        &[0x20, 3 + props.len() as u8, 0, 0, props.len() as u8],
        props,
    ])
}

/// A 5.0 QoS 0 PUBLISH to "t" with the given property bytes and no payload.
fn v5_publish_with(props: &[u8]) -> Vec<u8> {
    cat(&[
        &[0x30, 4 + props.len() as u8, 0, 1, b't', props.len() as u8],
        props,
    ])
}

/// A 3.1.1 CONNECT with client id "c" and the given flags, nothing else in the payload.
fn v311_connect_flags(flags: u8) -> Vec<u8> {
    cat(&[&[0x10, 13, 0, 4], b"MQTT", &[4, flags, 0, 60, 0, 1, b'c']])
}

#[test]
fn remaining_length_over_four_bytes() {
    malformed(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F], V311);
    // The fourth byte has its continuation bit set: malformed without waiting for a fifth.
    malformed(&[0xC0, 0x80, 0x80, 0x80, 0x80], V5);
    // Three bytes with continuation: just incomplete.
    assert_eq!(dec(&[0x30, 0xFF, 0xFF, 0xFF], V311), Ok(None));
}

#[test]
fn fixed_header_flags() {
    for proto in [V31, V311, V5] {
        malformed(&[0x60, 2, 0, 1], proto); // PUBREL must be 0b0010
        malformed(&[0x63, 2, 0, 1], proto);
        malformed(&cat(&[&[0x80, 6, 0, 1, 0, 1], b"a", &[0]]), proto); // SUBSCRIBE
        malformed(&cat(&[&[0xA0, 5, 0, 1, 0, 1], b"a"]), proto); // UNSUBSCRIBE
        malformed(&[0x41, 2, 0, 1], proto); // PUBACK
        malformed(&[0x58, 2, 0, 1], proto); // PUBREC
        malformed(&[0x72, 2, 0, 1], proto); // PUBCOMP
        malformed(&[0x21, 2, 0, 0], proto); // CONNACK
        malformed(&[0x11, 0], proto); // CONNECT: from the first byte alone
        malformed(&[0x92, 3, 0, 1, 0], proto); // SUBACK
        malformed(&[0xB4, 2, 0, 1], proto); // UNSUBACK
        malformed(&[0xC1, 0], proto); // PINGREQ
        malformed(&[0xDF, 0], proto); // PINGRESP
        malformed(&[0xE2, 0], proto); // DISCONNECT
    }
    malformed(&[0xF1, 0], V5); // AUTH
    // Flags are checked on the first byte, before the rest arrives.
    malformed(&[0x60], V311);
}

#[test]
fn reserved_packet_types() {
    for proto in [V31, V311, V5] {
        malformed(&[0x00, 0], proto);
    }
    // AUTH (15) exists only in 5.0.
    malformed(&[0xF0, 0], V311);
    malformed(&[0xF0, 0], V31);
}

#[test]
fn publish_qos_3_and_dup_with_qos_0() {
    for proto in [V311, V5] {
        malformed(&cat(&[&[0x36, 5, 0, 1, b't', 0, 1]]), proto);
        malformed(&[0x36], proto);
        malformed(&cat(&[&[0x38, 3, 0, 1, b't']]), proto);
    }
}

#[test]
fn zero_packet_identifier() {
    // PUBLISH QoS 1 and 2.
    malformed(&[0x32, 5, 0, 1, b't', 0, 0], V311);
    malformed(&[0x34, 5, 0, 1, b't', 0, 0], V311);
    protocol_error(&[0x32, 6, 0, 1, b't', 0, 0, 0], V5);
    // SUBSCRIBE and UNSUBSCRIBE.
    malformed(&[0x82, 6, 0, 0, 0, 1, b'a', 0], V311);
    protocol_error(&[0x82, 7, 0, 0, 0, 0, 1, b'a', 0], V5);
    malformed(&[0xA2, 5, 0, 0, 0, 1, b'a'], V311);
    protocol_error(&[0xA2, 6, 0, 0, 0, 0, 1, b'a'], V5);
    // QoS 0 carries no identifier: these two bytes are payload.
    assert!(dec(&[0x30, 5, 0, 1, b't', 0, 0], V311).unwrap().is_some());
}

#[test]
fn bad_utf8_strings() {
    for topic in [
        &[0xFF][..],
        &[b'a', 0x00],
        &[0xED, 0xA0, 0x80],
        &[0xC3],
        &[0xC0, 0xAF],
    ] {
        let n = topic.len() as u8;
        malformed(&cat(&[&[0x30, 2 + n, 0, n], topic]), V311);
        malformed(&cat(&[&[0x30, 3 + n, 0, n], topic, &[0]]), V5);
    }
    // In a CONNECT client id, a subscription filter and a user property.
    malformed(
        &cat(&[&[0x10, 13, 0, 4], b"MQTT", &[4, 2, 0, 60, 0, 1, 0]]),
        V311,
    );
    malformed(&[0x82, 6, 0, 1, 0, 1, 0xFE, 0], V311);
    malformed(&v5_publish_with(&[0x26, 0, 1, b'k', 0, 1, 0]), V5);
}

#[test]
fn truncated_fields() {
    // Remaining Length says 3 but the topic claims 5 bytes.
    malformed(&[0x30, 3, 0, 5, b't'], V311);
    // QoS 1 PUBLISH without room for the packet identifier.
    malformed(&[0x32, 3, 0, 1, b't'], V311);
    // 5.0 PUBLISH without property length.
    malformed(&[0x32, 5, 0, 1, b't', 0, 1], V5);
    // PUBACK with one byte.
    malformed(&[0x40, 1, 0], V311);
    malformed(&[0x40, 1, 0], V5);
    // CONNECT cut inside the protocol name, the level, the flags, the keep alive, the id.
    for rem in [1u8, 3, 6, 7, 8, 10, 11] {
        let full = v311_connect_flags(0x02);
        let mut bytes = full[..2 + rem as usize].to_vec();
        bytes[1] = rem;
        let e = err(&bytes, V311);
        assert!(
            is_malformed(&e) || matches!(e, UnsupportedProtocol { .. }),
            "{rem}: {e:?}"
        );
    }
    // Will flag set but no will topic/payload.
    malformed(&v311_connect_flags(0x06), V311);
    // User name flag set but no user name.
    malformed(&v311_connect_flags(0x82), V311);
    // CONNACK too short; 5.0 CONNACK without property length.
    malformed(&[0x20, 1, 0], V311);
    malformed(&[0x20, 2, 0, 0], V5);
    // SUBSCRIBE filter without options byte.
    malformed(&[0x82, 5, 0, 1, 0, 1, b'a'], V311);
    // UNSUBACK in 5.0 without property length.
    malformed(&[0xB0, 2, 0, 1], V5);
}

#[test]
fn trailing_bytes() {
    malformed(&[0x40, 3, 0, 1, 0], V311); // PUBACK
    malformed(&[0x62, 3, 0, 1, 0], V31); // PUBREL
    malformed(&[0x40, 5, 0, 1, 0, 0, 9], V5); // PUBACK after empty properties
    malformed(&[0x20, 3, 0, 0, 0], V311); // CONNACK
    malformed(&[0x20, 4, 0, 0, 0, 9], V5);
    malformed(&[0xB0, 3, 0, 1, 0], V311); // UNSUBACK has no payload in 3.1.1
    malformed(&[0xC0, 1, 0], V5); // PINGREQ
    malformed(&[0xD0, 1, 0], V311); // PINGRESP
    malformed(&[0xE0, 1, 0], V311); // DISCONNECT
    malformed(&[0xE0, 3, 0, 0, 0], V5);
    malformed(&[0xF0, 3, 0, 0, 0], V5); // AUTH
    let mut c = v311_connect_flags(0x02);
    c[1] += 1;
    c.push(0);
    malformed(&c, V311);
}

#[test]
fn connect_flags() {
    malformed(&v311_connect_flags(0x03), V311); // reserved bit 0 [MQTT-3.1.2-3]
    malformed(&v311_connect_flags(0x0A), V311); // will QoS 1 without will flag
    malformed(&v311_connect_flags(0x12), V311); // will QoS 2 without will flag
    malformed(&v311_connect_flags(0x22), V311); // will retain without will flag
    malformed(&v311_connect_flags(0x1E), V311); // will QoS 3
    // 3.1.1 [MQTT-3.1.2-22]: password without user name.
    let with_password = cat(&[
        &[0x10, 16, 0, 4],
        b"MQTT",
        &[4, 0x42, 0, 60, 0, 1, b'c', 0, 1, b'p'],
    ]);
    malformed(&with_password, V311);
    // The same in 5.0 is allowed.
    let v5 = cat(&[
        &[0x10, 17, 0, 4],
        b"MQTT",
        &[5, 0x42, 0, 60, 0, 0, 1, b'c', 0, 1, b'p'],
    ]);
    let Ok(Some(Packet::Connect(c))) = dec(&v5, V311) else {
        panic!()
    };
    assert!(c.username.is_none() && c.password.as_deref() == Some(&b"p"[..]));
    // 5.0 flag checks.
    let mut bad = v5.clone();
    bad[9] = 0x43;
    malformed(&bad, V5);
    bad[9] = 0x5E;
    malformed(&bad, V5);
}

#[test]
fn unsupported_protocols() {
    let with = |name: &[u8], level: u8| {
        let body = cat(&[&[0, name.len() as u8], name, &[level, 2, 0, 60, 0, 0]]);
        cat(&[&[0x10, body.len() as u8], &body])
    };
    assert_eq!(
        err(&with(b"MQTX", 4), V311),
        UnsupportedProtocol { level: 0 }
    );
    assert_eq!(
        err(&with(b"MQTT", 3), V311),
        UnsupportedProtocol { level: 3 }
    );
    assert_eq!(err(&with(b"MQTT", 6), V5), UnsupportedProtocol { level: 6 });
    assert_eq!(
        err(&with(b"MQIsdp", 4), V311),
        UnsupportedProtocol { level: 4 }
    );
    assert_eq!(
        err(&with(b"mqtt", 4), V311),
        UnsupportedProtocol { level: 0 }
    );
    assert_eq!(
        UnsupportedProtocol { level: 6 }.reason_code(),
        reason::UNSUPPORTED_PROTOCOL_VERSION
    );
    assert!(matches!(
        dec(&with(b"MQIsdp", 3), V5),
        Ok(Some(Packet::Connect(_)))
    ));
}

#[test]
fn empty_subscribe_and_unsubscribe() {
    protocol_error(&[0x82, 2, 0, 1], V311);
    protocol_error(&[0x82, 3, 0, 1, 0], V5);
    protocol_error(&[0xA2, 2, 0, 1], V311);
    protocol_error(&[0xA2, 3, 0, 1, 0], V5);
    protocol_error(&[0x90, 2, 0, 1], V311); // SUBACK without codes
    protocol_error(&[0xB0, 3, 0, 1, 0], V5); // 5.0 UNSUBACK without codes
    protocol_error(&[0x90, 3, 0, 1, 0x81], V311); // reserved 3.1.1 return code
}

#[test]
fn subscription_options() {
    let sub = |proto: Protocol, opts: u8| match proto {
        V5 => vec![0x82, 7, 0, 1, 0, 0, 1, b'a', opts],
        _ => vec![0x82, 6, 0, 1, 0, 1, b'a', opts],
    };
    // 5.0 [MQTT-3.8.3-5]: reserved bits 6 and 7.
    malformed(&sub(V5, 0x40), V5);
    malformed(&sub(V5, 0x80), V5);
    // 5.0: retain handling 3 and QoS 3 are Protocol Errors.
    protocol_error(&sub(V5, 0x30), V5);
    protocol_error(&sub(V5, 0x03), V5);
    // 3.1.1 [MQTT-3-8.3-4]: upper six bits reserved, QoS 3 malformed.
    for opts in [0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0x03] {
        malformed(&sub(V311, opts), V311);
        malformed(&sub(V31, opts), V31);
    }
    assert!(dec(&sub(V5, 0x2E), V5).unwrap().is_some());
}

#[test]
fn property_block_errors() {
    // Property Length beyond the packet.
    malformed(&[0x30, 4, 0, 1, b't', 9], V5);
    // Property Length itself truncated / too long.
    malformed(&[0x30, 4, 0, 1, b't', 0x80], V5);
    malformed(&[0x30, 8, 0, 1, b't', 0xFF, 0xFF, 0xFF, 0xFF, 0x7F], V5);
    // A value running past the block, even though the packet has more bytes.
    malformed(&[0x30, 9, 0, 1, b't', 1, 0x02, 0, 0, 0, 1], V5);
    // Unknown identifier, and an identifier encoded past one byte that is still unknown.
    malformed(&v5_publish_with(&[0x7F, 0]), V5);
    malformed(&v5_publish_with(&[0x00]), V5);
    malformed(&v5_publish_with(&[0x81, 0x01, 0]), V5);
    // Known identifiers not allowed in the packet.
    malformed(&v5_publish_with(&[0x11, 0, 0, 0, 1]), V5); // Session Expiry in PUBLISH
    malformed(&v5_connect_with(&[0x23, 0, 1]), V5); // Topic Alias in CONNECT
    malformed(&v5_connect_with(&[0x18, 0, 0, 0, 1]), V5); // Will Delay in CONNECT
    malformed(&v5_connack_with(&[0x17, 1]), V5); // Request Problem Information in CONNACK
    malformed(&[0x40, 6, 0, 1, 0, 2, 0x0B, 1], V5); // Subscription Id in PUBACK
    malformed(&[0xE0, 4, 0, 2, 0x15, 0], V5); // Auth Method in DISCONNECT
    malformed(&[0xF0, 6, 0, 4, 0x11, 0, 0, 0], V5); // Session Expiry in AUTH
    malformed(&cat(&[&[0xA2, 8, 0, 1, 3, 0x1F, 0, 0, 0, 0]]), V5); // Reason String in UNSUBSCRIBE
    malformed(&[0x82, 9, 0, 1, 2, 0x23, 1, 0, 1, b'a', 0], V5); // Topic Alias in SUBSCRIBE
}

#[test]
fn duplicate_properties() {
    protocol_error(&v5_connect_with(&[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2]), V5);
    protocol_error(&v5_connack_with(&[0x24, 0, 0x24, 0]), V5);
    protocol_error(&v5_publish_with(&[0x23, 0, 1, 0x23, 0, 1]), V5);
    protocol_error(&v5_publish_with(&[0x03, 0, 0, 0x03, 0, 0]), V5);
    protocol_error(&[0x40, 10, 0, 1, 0, 6, 0x1F, 0, 0, 0x1F, 0, 0], V5);
    // Subscription Identifier: once in SUBSCRIBE...
    protocol_error(&[0x82, 11, 0, 1, 4, 0x0B, 1, 0x0B, 2, 0, 1, b'a', 0], V5);
    // ...but any number of times in PUBLISH, in order, as user properties.
    let Ok(Some(Packet::Publish(p))) = dec(&v5_publish_with(&[0x0B, 2, 0x0B, 1, 0x0B, 2]), V5)
    else {
        panic!()
    };
    assert_eq!(p.properties.subscription_identifiers, [2, 1, 2]);
    let users = [0x26, 0, 1, b'k', 0, 1, b'2', 0x26, 0, 1, b'k', 0, 1, b'1'];
    let Ok(Some(Packet::ConnAck(c))) = dec(&v5_connack_with(&users), V5) else {
        panic!()
    };
    let got: Vec<(&str, &str)> = c
        .properties
        .user_properties
        .iter()
        .map(|(k, v)| (&**k, &**v))
        .collect();
    assert_eq!(got, [("k", "2"), ("k", "1")]);
}

#[test]
fn property_values() {
    protocol_error(&v5_connect_with(&[0x21, 0, 0]), V5); // Receive Maximum 0
    protocol_error(&v5_connack_with(&[0x21, 0, 0]), V5);
    protocol_error(&v5_connect_with(&[0x27, 0, 0, 0, 0]), V5); // Maximum Packet Size 0
    protocol_error(&v5_connack_with(&[0x27, 0, 0, 0, 0]), V5);
    protocol_error(&v5_publish_with(&[0x23, 0, 0]), V5); // Topic Alias 0
    protocol_error(&v5_publish_with(&[0x0B, 0]), V5); // Subscription Identifier 0
    protocol_error(&[0x82, 9, 0, 1, 2, 0x0B, 0, 0, 1, b'a', 0], V5);
    protocol_error(&v5_publish_with(&[0x01, 2]), V5); // Payload Format Indicator 2
    protocol_error(&v5_connect_with(&[0x17, 2]), V5); // Request Problem Information
    protocol_error(&v5_connect_with(&[0x19, 2]), V5); // Request Response Information
    for id in [0x24, 0x25, 0x28, 0x29, 0x2A] {
        protocol_error(&v5_connack_with(&[id, 2]), V5);
        assert!(dec(&v5_connack_with(&[id, 1]), V5).unwrap().is_some());
    }
    // Will properties are checked too.
    let body = cat(&[
        &[0, 4],
        b"MQTT",
        &[5, 0x06, 0, 60, 0, 0, 1, b'c', 2, 0x01, 5, 0, 1, b't', 0, 0],
    ]);
    protocol_error(&cat(&[&[0x10, body.len() as u8], &body]), V5);
}

#[test]
fn malformed_inputs_never_panic_on_any_prefix() {
    // Every prefix of every case above is either incomplete or refused, never a panic.
    let cases: Vec<Vec<u8>> = vec![
        v5_connect_with(&[0x11, 0, 0, 0, 1, 0x11]),
        v5_publish_with(&[0x26, 0, 1]),
        vec![0x82, 4, 0, 1, 0, 9],
    ];
    for c in &cases {
        for proto in [V31, V311, V5] {
            for i in 0..=c.len() {
                let _ = dec(&c[..i], proto);
            }
        }
    }
}
