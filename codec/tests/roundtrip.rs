//! Property tests: arbitrary valid packets survive encode then decode, for MQTT 3.1,
//! 3.1.1 and 5.0; streams of packets come back in order whatever the read sizes; and
//! arbitrary or mutated bytes never make the decoder panic.

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;
use rookery_codec::encode::encoded_len;
use rookery_codec::*;

const MAX: usize = 1 << 28;
const VBI_MAX: u32 = 268_435_455;

fn string() -> impl Strategy<Value = ByteString> {
    // Any characters but U+0000, which MQTT strings may not hold.
    "[^\\x00]{0,8}".prop_map(ByteString::from)
}

fn binary() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..16).prop_map(Bytes::from)
}

fn users() -> impl Strategy<Value = Vec<UserProperty>> {
    vec((string(), string()), 0..3)
}

fn flag() -> impl Strategy<Value = Option<u8>> {
    of(0u8..=1)
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn sub_id() -> impl Strategy<Value = u32> {
    prop_oneof![1u32..200, 1u32..=VBI_MAX]
}

fn ack_props(v5: bool) -> BoxedStrategy<AckProperties> {
    if !v5 {
        return Just(AckProperties::default()).boxed();
    }
    (of(string()), users())
        .prop_map(|(reason_string, user_properties)| AckProperties {
            reason_string,
            user_properties,
        })
        .boxed()
}

fn connect_props() -> impl Strategy<Value = ConnectProperties> {
    (
        of(any::<u32>()),
        of(1u16..),
        of(1u32..),
        of(any::<u16>()),
        flag(),
        flag(),
        users(),
        of(string()),
        of(binary()),
    )
        .prop_map(|(se, rm, mp, ta, rri, rpi, up, am, ad)| ConnectProperties {
            session_expiry_interval: se,
            receive_maximum: rm,
            maximum_packet_size: mp,
            topic_alias_maximum: ta,
            request_response_information: rri,
            request_problem_information: rpi,
            user_properties: up,
            authentication_method: am,
            authentication_data: ad,
        })
}

fn will_props() -> impl Strategy<Value = WillProperties> {
    (
        of(any::<u32>()),
        flag(),
        of(any::<u32>()),
        of(string()),
        of(string()),
        of(binary()),
        users(),
    )
        .prop_map(|(wd, pf, me, ct, rt, cd, up)| WillProperties {
            will_delay_interval: wd,
            payload_format_indicator: pf,
            message_expiry_interval: me,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd,
            user_properties: up,
        })
}

fn connect(protocol: Protocol) -> impl Strategy<Value = Packet> {
    let v5 = protocol.is_v5();
    let will = (string(), binary(), qos(), any::<bool>(), will_props()).prop_map(
        move |(topic, payload, qos, retain, properties)| LastWill {
            topic,
            payload,
            qos,
            retain,
            properties: if v5 {
                properties
            } else {
                WillProperties::default()
            },
        },
    );
    (
        any::<bool>(),
        any::<u16>(),
        string(),
        of(will),
        of(string()),
        of(binary()),
        connect_props(),
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, username, password, p)| {
                // Before 5.0 a password needs a user name (3.1.1 [MQTT-3.1.2-22]).
                let password = if v5 || username.is_some() {
                    password
                } else {
                    None
                };
                Packet::Connect(Box::new(Connect {
                    protocol,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties: if v5 { p } else { ConnectProperties::default() },
                }))
            },
        )
}

fn connack(v5: bool) -> impl Strategy<Value = Packet> {
    let props = (
        (
            of(any::<u32>()),
            of(1u16..),
            flag(),
            flag(),
            of(1u32..),
            of(string()),
        ),
        (
            of(any::<u16>()),
            of(string()),
            users(),
            flag(),
            flag(),
            flag(),
        ),
        (
            of(any::<u16>()),
            of(string()),
            of(string()),
            of(string()),
            of(binary()),
        ),
    )
        .prop_map(
            |((se, rm, mq, ra, mp, aci), (tam, rs, up, wsa, sia, ssa), (ska, ri, sr, am, ad))| {
                ConnAckProperties {
                    session_expiry_interval: se,
                    receive_maximum: rm,
                    maximum_qos: mq,
                    retain_available: ra,
                    maximum_packet_size: mp,
                    assigned_client_identifier: aci,
                    topic_alias_maximum: tam,
                    reason_string: rs,
                    user_properties: up,
                    wildcard_subscription_available: wsa,
                    subscription_identifiers_available: sia,
                    shared_subscription_available: ssa,
                    server_keep_alive: ska,
                    response_information: ri,
                    server_reference: sr,
                    authentication_method: am,
                    authentication_data: ad,
                }
            },
        );
    (any::<bool>(), any::<u8>(), props).prop_map(move |(session_present, code, p)| {
        Packet::ConnAck(ConnAck {
            session_present,
            code,
            properties: if v5 { p } else { ConnAckProperties::default() },
        })
    })
}

fn publish(v5: bool) -> impl Strategy<Value = Packet> {
    let props = (
        flag(),
        of(any::<u32>()),
        of(1u16..),
        of(string()),
        of(binary()),
        users(),
        vec(sub_id(), 0..3),
        of(string()),
    )
        .prop_map(|(pf, me, ta, rt, cd, up, si, ct)| PublishProperties {
            payload_format_indicator: pf,
            message_expiry_interval: me,
            topic_alias: ta,
            response_topic: rt,
            correlation_data: cd,
            user_properties: up,
            subscription_identifiers: si,
            content_type: ct,
        });
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        string(),
        1u16..,
        vec(any::<u8>(), 0..64),
        props,
    )
        .prop_map(move |(qos, dup, retain, topic, id, payload, p)| {
            let qos0 = qos == QoS::AtMostOnce;
            Packet::Publish(Publish {
                // DUP is 0 and there is no identifier for QoS 0 ([MQTT-3.3.1-2]).
                dup: dup && !qos0,
                qos,
                retain,
                topic,
                packet_id: if qos0 { 0 } else { id },
                payload: Bytes::from(payload),
                properties: if v5 { p } else { PublishProperties::default() },
            })
        })
}

fn ack(v5: bool) -> impl Strategy<Value = Packet> {
    (0u8..4, any::<u16>(), any::<u8>(), ack_props(v5)).prop_map(move |(kind, packet_id, r, p)| {
        let a = Ack {
            packet_id,
            reason: if v5 { r } else { 0 },
            properties: p,
        };
        match kind {
            0 => Packet::PubAck(a),
            1 => Packet::PubRec(a),
            2 => Packet::PubRel(a),
            _ => Packet::PubComp(a),
        }
    })
}

fn subscribe(v5: bool) -> impl Strategy<Value = Packet> {
    let rh = prop_oneof![
        Just(RetainHandling::SendAtSubscribe),
        Just(RetainHandling::SendIfNew),
        Just(RetainHandling::DoNotSend)
    ];
    let options = (qos(), any::<bool>(), any::<bool>(), rh).prop_map(move |(qos, nl, rap, rh)| {
        if v5 {
            SubscriptionOptions {
                qos,
                no_local: nl,
                retain_as_published: rap,
                retain_handling: rh,
            }
        } else {
            SubscriptionOptions {
                qos,
                ..SubscriptionOptions::default()
            }
        }
    });
    let filter =
        (string(), options).prop_map(|(filter, options)| SubscribeFilter { filter, options });
    (1u16.., vec(filter, 1..4), of(sub_id()), users()).prop_map(
        move |(packet_id, filters, si, up)| {
            let properties = if v5 {
                SubscribeProperties {
                    subscription_identifier: si,
                    user_properties: up,
                }
            } else {
                SubscribeProperties::default()
            };
            Packet::Subscribe(Subscribe {
                packet_id,
                filters,
                properties,
            })
        },
    )
}

fn suback(v5: bool) -> impl Strategy<Value = Packet> {
    let code = if v5 {
        any::<u8>().boxed()
    } else {
        prop_oneof![Just(0u8), Just(1), Just(2), Just(0x80)].boxed()
    };
    (any::<u16>(), vec(code, 1..4), ack_props(v5)).prop_map(
        |(packet_id, reason_codes, properties)| {
            Packet::SubAck(SubAck {
                packet_id,
                reason_codes,
                properties,
            })
        },
    )
}

fn unsubscribe(v5: bool) -> impl Strategy<Value = Packet> {
    (1u16.., vec(string(), 1..4), users()).prop_map(move |(packet_id, filters, up)| {
        Packet::Unsubscribe(Unsubscribe {
            packet_id,
            filters,
            user_properties: if v5 { up } else { vec![] },
        })
    })
}

fn unsuback(v5: bool) -> impl Strategy<Value = Packet> {
    (any::<u16>(), vec(any::<u8>(), 1..4), ack_props(v5)).prop_map(move |(packet_id, codes, p)| {
        Packet::UnsubAck(UnsubAck {
            packet_id,
            reason_codes: if v5 { codes } else { vec![] },
            properties: p,
        })
    })
}

fn disconnect(v5: bool) -> impl Strategy<Value = Packet> {
    let props =
        (of(any::<u32>()), of(string()), users(), of(string())).prop_map(|(se, rs, up, sr)| {
            DisconnectProperties {
                session_expiry_interval: se,
                reason_string: rs,
                user_properties: up,
                server_reference: sr,
            }
        });
    (any::<u8>(), props).prop_map(move |(reason, p)| {
        Packet::Disconnect(if v5 {
            Disconnect {
                reason,
                properties: p,
            }
        } else {
            Disconnect::default()
        })
    })
}

fn auth() -> impl Strategy<Value = Packet> {
    (
        any::<u8>(),
        of(string()),
        of(binary()),
        of(string()),
        users(),
    )
        .prop_map(|(reason, am, ad, rs, up)| {
            Packet::Auth(Auth {
                reason,
                properties: AuthProperties {
                    authentication_method: am,
                    authentication_data: ad,
                    reason_string: rs,
                    user_properties: up,
                },
            })
        })
}

/// Any packet that is valid for `protocol`.
fn packet(protocol: Protocol) -> BoxedStrategy<Packet> {
    let v5 = protocol.is_v5();
    let common = prop_oneof![
        connect(protocol),
        connack(v5),
        publish(v5),
        publish(v5),
        ack(v5),
        subscribe(v5),
        suback(v5),
        unsubscribe(v5),
        unsuback(v5),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        disconnect(v5),
    ];
    if v5 {
        prop_oneof![11 => common, 1 => auth()].boxed()
    } else {
        common.boxed()
    }
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![
        Just(Protocol::V31),
        Just(Protocol::V311),
        Just(Protocol::V5)
    ]
}

fn protocol_and_packets() -> impl Strategy<Value = (Protocol, Vec<Packet>)> {
    protocol().prop_flat_map(|p| (Just(p), vec(packet(p), 1..6)))
}

/// Decodes everything in `buf`; stops at the first incomplete packet or error.
fn drain(buf: &mut BytesMut, proto: Protocol, max: usize) -> Vec<Packet> {
    let mut out = Vec::new();
    while let Ok(Some(p)) = decode(buf, proto, max) {
        out.push(p);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn roundtrip(p in protocol().prop_flat_map(|proto| (Just(proto), packet(proto)))) {
        let (proto, p) = p;
        let mut buf = BytesMut::new();
        encode(&p, proto, &mut buf);
        prop_assert_eq!(buf.len(), encoded_len(&p, proto));
        let back = decode(&mut buf, proto, MAX);
        prop_assert_eq!(back, Ok(Some(p)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn stream_in_order_whatever_the_chunks(
        (proto, packets) in protocol_and_packets(),
        chunk in 1usize..40,
    ) {
        let mut wire = BytesMut::new();
        for p in &packets {
            encode(p, proto, &mut wire);
        }
        // All at once.
        let mut all = wire.clone();
        prop_assert_eq!(&drain(&mut all, proto, MAX), &packets);
        prop_assert!(all.is_empty());
        // In chunks, as reads would deliver them.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for piece in wire.chunks(chunk) {
            buf.extend_from_slice(piece);
            loop {
                match decode(&mut buf, proto, MAX) {
                    Ok(Some(p)) => got.push(p),
                    Ok(None) => break,
                    Err(e) => return Err(TestCaseError::fail(format!("{e}"))),
                }
            }
        }
        prop_assert_eq!(got, packets);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in vec(any::<u8>(), 0..256),
        proto in protocol(),
        max in prop_oneof![Just(MAX), 0usize..300],
    ) {
        let mut buf = BytesMut::from(&bytes[..]);
        loop {
            let before = buf.len();
            match decode(&mut buf, proto, max) {
                Ok(Some(_)) => prop_assert!(buf.len() < before),
                Ok(None) => {
                    prop_assert_eq!(buf.len(), before);
                    break;
                }
                Err(_) => break,
            }
        }
    }

    #[test]
    fn mutated_packets_never_panic_and_reencode(
        (proto, p) in protocol().prop_flat_map(|proto| (Just(proto), packet(proto))),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut wire = BytesMut::new();
        encode(&p, proto, &mut wire);
        let mut bytes = wire.to_vec();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        bytes.truncate(cut.index(bytes.len() + 1).max(1));
        let mut buf = BytesMut::from(&bytes[..]);
        if let Ok(Some(decoded)) = decode(&mut buf, proto, MAX) {
            // Whatever decodes must survive a round trip of its own.
            let mut again = BytesMut::new();
            encode(&decoded, proto, &mut again);
            prop_assert_eq!(decode(&mut again, proto, MAX), Ok(Some(decoded)));
        }
    }
}
