//! Byte-exact vectors for every packet type, MQTT 3.1, 3.1.1 and 5.0, checked both ways
//! and at every split point. Where the specs give an example, it is used.

mod common;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use common::*;
use rookery_codec::encode::{
    PublishView, encode_publish, encoded_len, variable_int_len, write_variable_int,
};
use rookery_codec::*;

use Protocol::{V5, V31, V311};

fn s(v: &str) -> ByteString {
    ByteString::from(v)
}

fn ack(packet_id: u16, reason: u8) -> Ack {
    Ack {
        packet_id,
        reason,
        properties: AckProperties::default(),
    }
}

fn connect(protocol: Protocol) -> Connect {
    Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: s(""),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }
}

// --- Variable Byte Integer (MQTT 5.0 section 1.5.5 table, 3.1.1 table 2.4) ------------

#[test]
fn variable_int_spec_table() {
    let table: &[(u32, &[u8])] = &[
        (0, &[0x00]),
        (127, &[0x7F]),
        (128, &[0x80, 0x01]),
        (16_383, &[0xFF, 0x7F]),
        (16_384, &[0x80, 0x80, 0x01]),
        (2_097_151, &[0xFF, 0xFF, 0x7F]),
        (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
        (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
    ];
    for &(v, bytes) in table {
        let mut buf = BytesMut::new();
        write_variable_int(&mut buf, v);
        assert_eq!(&buf[..], bytes, "{v}");
        assert_eq!(variable_int_len(v), bytes.len());
    }
}

#[test]
fn remaining_length_boundaries() {
    // PUBLISH QoS 0, topic "t" (3 bytes), payload sized for each boundary.
    for (rem, len_bytes) in [
        (127usize, 1usize),
        (128, 2),
        (16_383, 2),
        (16_384, 3),
        (2_097_152, 4),
    ] {
        let p = Packet::Publish(Publish {
            topic: s("t"),
            payload: Bytes::from(vec![7u8; rem - 3]),
            ..Publish::default()
        });
        let bytes = enc(&p, V311);
        assert_eq!(bytes.len(), 1 + len_bytes + rem);
        assert_eq!(dec(&bytes, V311), Ok(Some(p)));
    }
}

#[test]
fn non_minimal_remaining_length_is_accepted() {
    // PINGREQ with Remaining Length 0 written in two bytes.
    assert_eq!(dec(&[0xC0, 0x80, 0x00], V311), Ok(Some(Packet::PingReq)));
}

// --- MQTT 3.1.1 -------------------------------------------------------------------------

#[test]
fn v311_connect_spec_example() {
    // MQTT 3.1.1 section 3.1.2.10, figure 3.6: flags 0xCE (user name, password, will QoS 1,
    // will flag, clean session), keep alive 10.
    let p = Packet::Connect(Box::new(Connect {
        keep_alive: 10,
        client_id: s("cid"),
        will: Some(LastWill {
            topic: s("w/t"),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: WillProperties::default(),
        }),
        username: Some(s("user")),
        password: Some(Bytes::from_static(b"pw")),
        ..connect(V311)
    }));
    let bytes = cat(&[
        &[0x10, 35, 0, 4],
        b"MQTT",
        &[4, 0xCE, 0, 10],
        &[0, 3],
        b"cid",
        &[0, 3],
        b"w/t",
        &[0, 3],
        b"bye",
        &[0, 4],
        b"user",
        &[0, 2],
        b"pw",
    ]);
    vector(&p, V311, &bytes);
    // CONNECT names its own version, whatever the decoder was told.
    assert_eq!(dec(&bytes, V5), Ok(Some(p)));
}

#[test]
fn v311_connect_minimal() {
    let p = Packet::Connect(Box::new(connect(V311)));
    vector(
        &p,
        V311,
        &cat(&[&[0x10, 12, 0, 4], b"MQTT", &[4, 0x02, 0, 60, 0, 0]]),
    );
}

#[test]
fn v31_connect() {
    let p = Packet::Connect(Box::new(Connect {
        client_id: s("abc"),
        ..connect(V31)
    }));
    let bytes = cat(&[
        &[0x10, 17, 0, 6],
        b"MQIsdp",
        &[3, 0x02, 0, 60, 0, 3],
        b"abc",
    ]);
    vector(&p, V31, &bytes);
    // The protocol argument does not matter for CONNECT, in either direction.
    assert_eq!(enc(&p, V5), bytes);
    assert_eq!(dec(&bytes, V311), Ok(Some(p)));
}

#[test]
fn v311_connack() {
    let p = Packet::ConnAck(ConnAck {
        session_present: true,
        code: 0,
        ..ConnAck::default()
    });
    vector(&p, V311, &[0x20, 2, 1, 0]);
    let p = Packet::ConnAck(ConnAck {
        code: reason::v3::NOT_AUTHORIZED,
        ..ConnAck::default()
    });
    vector(&p, V311, &[0x20, 2, 0, 5]);
}

#[test]
fn v311_publish() {
    // MQTT 3.1.1 section 3.3.2.3, figure 3.11: topic "a/b", packet identifier 10.
    let p = Packet::Publish(Publish {
        dup: true,
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: s("a/b"),
        packet_id: 10,
        payload: Bytes::from_static(b"hi"),
        properties: PublishProperties::default(),
    });
    vector(&p, V311, &cat(&[&[0x3B, 9, 0, 3], b"a/b", &[0, 10], b"hi"]));
    let p = Packet::Publish(Publish {
        topic: s("a/b"),
        ..Publish::default()
    });
    vector(&p, V311, &cat(&[&[0x30, 5, 0, 3], b"a/b"]));
    let p = Packet::Publish(Publish {
        qos: QoS::ExactlyOnce,
        topic: s("A\u{2A6D4}"),
        packet_id: 0xFFFF,
        payload: Bytes::from_static(&[0, 0xFF]),
        ..Publish::default()
    });
    // MQTT 3.1.1 section 1.5.3, figure 1.1: "A𪛔" is 00 05 41 F0 AA 9B 94.
    vector(
        &p,
        V311,
        &[
            0x34, 11, 0, 5, 0x41, 0xF0, 0xAA, 0x9B, 0x94, 0xFF, 0xFF, 0, 0xFF,
        ],
    );
}

#[test]
fn v311_acks() {
    vector(&Packet::PubAck(ack(10, 0)), V311, &[0x40, 2, 0, 10]);
    vector(&Packet::PubRec(ack(10, 0)), V311, &[0x50, 2, 0, 10]);
    vector(&Packet::PubRel(ack(10, 0)), V311, &[0x62, 2, 0, 10]);
    vector(
        &Packet::PubComp(ack(0x1234, 0)),
        V311,
        &[0x70, 2, 0x12, 0x34],
    );
    // Reason codes and properties do not exist before 5.0: they are not written.
    let mut a = ack(10, 0x80);
    a.properties.reason_string = Some(s("no"));
    assert_eq!(enc(&Packet::PubAck(a), V311), [0x40, 2, 0, 10]);
}

#[test]
fn v311_subscribe_spec_example() {
    // MQTT 3.1.1 section 3.8.3.1, figure 3.22: "a/b" QoS 1, "c/d" QoS 2, identifier 10.
    let filter = |f: &str, qos| SubscribeFilter {
        filter: s(f),
        options: SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        },
    };
    let p = Packet::Subscribe(Subscribe {
        packet_id: 10,
        filters: vec![
            filter("a/b", QoS::AtLeastOnce),
            filter("c/d", QoS::ExactlyOnce),
        ],
        properties: SubscribeProperties::default(),
    });
    vector(
        &p,
        V311,
        &cat(&[&[0x82, 14, 0, 10, 0, 3], b"a/b", &[1, 0, 3], b"c/d", &[2]]),
    );
}

#[test]
fn v311_suback_spec_example() {
    // MQTT 3.1.1 section 3.9.3, figure 3.26: success QoS 0, success QoS 2, failure.
    let p = Packet::SubAck(SubAck {
        packet_id: 10,
        reason_codes: vec![0, 2, 0x80],
        properties: AckProperties::default(),
    });
    vector(&p, V311, &[0x90, 5, 0, 10, 0, 2, 0x80]);
}

#[test]
fn v311_unsubscribe_spec_example() {
    // MQTT 3.1.1 section 3.10.3, figure 3.30: "a/b" and "c/d".
    let p = Packet::Unsubscribe(Unsubscribe {
        packet_id: 10,
        filters: vec![s("a/b"), s("c/d")],
        user_properties: vec![],
    });
    vector(
        &p,
        V311,
        &cat(&[&[0xA2, 12, 0, 10, 0, 3], b"a/b", &[0, 3], b"c/d"]),
    );
}

#[test]
fn v311_unsuback_and_empties() {
    vector(
        &Packet::UnsubAck(UnsubAck {
            packet_id: 10,
            ..UnsubAck::default()
        }),
        V311,
        &[0xB0, 2, 0, 10],
    );
    // Reason codes exist only in 5.0.
    let p = Packet::UnsubAck(UnsubAck {
        packet_id: 10,
        reason_codes: vec![0],
        ..UnsubAck::default()
    });
    assert_eq!(enc(&p, V311), [0xB0, 2, 0, 10]);
    vector(&Packet::PingReq, V311, &[0xC0, 0]);
    vector(&Packet::PingResp, V311, &[0xD0, 0]);
    vector(&Packet::Disconnect(Disconnect::default()), V311, &[0xE0, 0]);
    let d = Disconnect {
        reason: 0x8E,
        ..Disconnect::default()
    };
    assert_eq!(enc(&Packet::Disconnect(d), V311), [0xE0, 0]);
    // AUTH does not exist before 5.0: nothing is written.
    assert_eq!(enc(&Packet::Auth(Auth::default()), V311), [0u8; 0]);
    assert_eq!(encoded_len(&Packet::Auth(Auth::default()), V311), 0);
}

#[test]
fn v31_non_connect_packets_match_v311() {
    let p = Packet::PubAck(ack(7, 0));
    vector(&p, V31, &[0x40, 2, 0, 7]);
    vector(&Packet::Disconnect(Disconnect::default()), V31, &[0xE0, 0]);
}

// --- MQTT 5.0 ---------------------------------------------------------------------------

#[test]
fn v5_connect_spec_example() {
    // MQTT 5.0 section 3.1.2.12, figure 3-6: keep alive 10, Session Expiry Interval 10.
    let mut c = Connect {
        keep_alive: 10,
        client_id: s("cid"),
        ..connect(V5)
    };
    c.properties.session_expiry_interval = Some(10);
    let bytes = cat(&[
        &[0x10, 21, 0, 4],
        b"MQTT",
        &[5, 0x02, 0, 10, 5, 0x11, 0, 0, 0, 10, 0, 3],
        b"cid",
    ]);
    vector(&Packet::Connect(Box::new(c)), V5, &bytes);
}

#[test]
fn v5_connect_with_will_and_password_only() {
    // 5.0 allows a password without a user name (section 3.1.2.9).
    let mut c = Connect {
        clean_start: false,
        client_id: s("c"),
        password: Some(Bytes::from_static(b"p")),
        will: Some(LastWill {
            topic: s("t"),
            payload: Bytes::from_static(&[1, 2]),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: WillProperties {
                will_delay_interval: Some(5),
                ..Default::default()
            },
        }),
        ..connect(V5)
    };
    c.properties.receive_maximum = Some(20);
    c.properties.user_properties = vec![(s("k"), s("v"))];
    let bytes = cat(&[
        &[0x10, 40, 0, 4],
        b"MQTT",
        &[5, 0x74, 0, 60],
        &[10, 0x21, 0, 20, 0x26, 0, 1, b'k', 0, 1, b'v'],
        &[0, 1, b'c'],
        &[5, 0x18, 0, 0, 0, 5],
        &[0, 1, b't', 0, 2, 1, 2],
        &[0, 1, b'p'],
    ]);
    vector(&Packet::Connect(Box::new(c)), V5, &bytes);
}

#[test]
fn v5_connack() {
    let p = Packet::ConnAck(ConnAck::default());
    vector(&p, V5, &[0x20, 3, 0, 0, 0]);
    let p = Packet::ConnAck(ConnAck {
        code: reason::UNSUPPORTED_PROTOCOL_VERSION,
        ..ConnAck::default()
    });
    vector(&p, V5, &[0x20, 3, 0, 0x84, 0]);
    let mut c = ConnAck {
        session_present: true,
        ..ConnAck::default()
    };
    c.properties.assigned_client_identifier = Some(s("id"));
    c.properties.topic_alias_maximum = Some(10);
    let bytes = [0x20, 11, 1, 0, 8, 0x12, 0, 2, b'i', b'd', 0x22, 0, 10];
    vector(&Packet::ConnAck(c.clone()), V5, &bytes);
    // Properties may come in any order.
    let swapped = [0x20, 11, 1, 0, 8, 0x22, 0, 10, 0x12, 0, 2, b'i', b'd'];
    assert_eq!(dec(&swapped, V5), Ok(Some(Packet::ConnAck(c))));
}

#[test]
fn v5_publish() {
    let p = Packet::Publish(Publish {
        topic: s("a/b"),
        payload: Bytes::from_static(b"hi"),
        ..Publish::default()
    });
    vector(&p, V5, &cat(&[&[0x30, 8, 0, 3], b"a/b", &[0], b"hi"]));

    let props = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(60),
        topic_alias: Some(5),
        subscription_identifiers: vec![300, 1],
        content_type: Some(s("j")),
        ..PublishProperties::default()
    };
    let p = Packet::Publish(Publish {
        qos: QoS::ExactlyOnce,
        packet_id: 1,
        payload: Bytes::from_static(b"x"),
        properties: props,
        ..Publish::default()
    });
    let bytes = [
        0x34, 25, 0, 0, 0, 1, 19, 0x01, 1, 0x02, 0, 0, 0, 60, 0x23, 0, 5, 0x0B, 0xAC, 0x02, 0x0B,
        1, 0x03, 0, 1, b'j', b'x',
    ];
    vector(&p, V5, &bytes);
    // Properties are dropped before 5.0.
    assert_eq!(enc(&p, V311), [0x34, 5, 0, 0, 0, 1, b'x']);
}

#[test]
fn v5_publish_user_properties_keep_order() {
    let p = Packet::Publish(Publish {
        topic: s("t"),
        properties: PublishProperties {
            user_properties: vec![(s("b"), s("1")), (s("a"), s("2")), (s("b"), s("0"))],
            response_topic: Some(s("r")),
            correlation_data: Some(Bytes::from_static(&[9])),
            ..PublishProperties::default()
        },
        ..Publish::default()
    });
    let bytes = enc(&p, V5);
    assert_eq!(dec(&bytes, V5), Ok(Some(p)));
    check_partial(&bytes, V5);
}

#[test]
fn publish_view_overrides_three_properties() {
    let props = PublishProperties {
        topic_alias: Some(9),
        message_expiry_interval: Some(99),
        subscription_identifiers: vec![42],
        ..PublishProperties::default()
    };
    let view = PublishView {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "t",
        packet_id: 3,
        payload: b"p",
        properties: &props,
        topic_alias: None,
        message_expiry_interval: Some(7),
        subscription_identifiers: &[1, 2],
    };
    let mut buf = BytesMut::new();
    encode_publish(&mut buf, V5, &view);
    assert_eq!(view.encoded_len(V5), buf.len());
    let want = [
        0x32, 16, 0, 1, b't', 0, 3, 9, 0x02, 0, 0, 0, 7, 0x0B, 1, 0x0B, 2, b'p',
    ];
    assert_eq!(&buf[..], want);
    // QoS 0 ignores the packet identifier and DUP; empty properties are one 0 byte.
    let empty = PublishProperties::default();
    let view = PublishView {
        qos: QoS::AtMostOnce,
        dup: true,
        packet_id: 77,
        properties: &empty,
        message_expiry_interval: None,
        subscription_identifiers: &[],
        ..view
    };
    let mut buf = BytesMut::from(&b"xy"[..]);
    encode_publish(&mut buf, V5, &view);
    assert_eq!(&buf[..], [b'x', b'y', 0x30, 5, 0, 1, b't', 0, b'p']);
}

#[test]
fn v5_acks() {
    // Reason 0 and no properties: the short form (MQTT 5.0 section 3.4.2.1).
    vector(&Packet::PubAck(ack(10, 0)), V5, &[0x40, 2, 0, 10]);
    vector(&Packet::PubAck(ack(10, 0x10)), V5, &[0x40, 3, 0, 10, 0x10]);
    vector(&Packet::PubRec(ack(10, 0x80)), V5, &[0x50, 3, 0, 10, 0x80]);
    vector(&Packet::PubRel(ack(10, 0x92)), V5, &[0x62, 3, 0, 10, 0x92]);
    vector(&Packet::PubComp(ack(10, 0)), V5, &[0x70, 2, 0, 10]);
    let mut a = ack(10, 0x10);
    a.properties.reason_string = Some(s("x"));
    vector(
        &Packet::PubAck(a),
        V5,
        &[0x40, 8, 0, 10, 0x10, 4, 0x1F, 0, 1, b'x'],
    );
    let mut a = ack(10, 0);
    a.properties.user_properties = vec![(s("k"), s(""))];
    vector(
        &Packet::PubComp(a),
        V5,
        &[0x70, 10, 0, 10, 0, 6, 0x26, 0, 1, b'k', 0, 0],
    );
    // Longer-than-needed forms decode to the same packet.
    assert_eq!(
        dec(&[0x40, 3, 0, 10, 0], V5),
        Ok(Some(Packet::PubAck(ack(10, 0))))
    );
    assert_eq!(
        dec(&[0x40, 4, 0, 10, 0, 0], V5),
        Ok(Some(Packet::PubAck(ack(10, 0))))
    );
}

#[test]
fn v5_subscribe() {
    let p = Packet::Subscribe(Subscribe {
        packet_id: 10,
        filters: vec![SubscribeFilter {
            filter: s("a/+"),
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::DoNotSend,
            },
        }],
        properties: SubscribeProperties {
            subscription_identifier: Some(5),
            ..Default::default()
        },
    });
    vector(
        &p,
        V5,
        &cat(&[&[0x82, 11, 0, 10, 2, 0x0B, 5, 0, 3], b"a/+", &[0x2D]]),
    );
    // Before 5.0 only the QoS of the options is written.
    assert_eq!(enc(&p, V311), cat(&[&[0x82, 8, 0, 10, 0, 3], b"a/+", &[1]]));
}

#[test]
fn v5_suback_unsubscribe_unsuback() {
    let p = Packet::SubAck(SubAck {
        packet_id: 10,
        reason_codes: vec![1, 0x87],
        properties: AckProperties::default(),
    });
    vector(&p, V5, &[0x90, 5, 0, 10, 0, 1, 0x87]);
    let p = Packet::Unsubscribe(Unsubscribe {
        packet_id: 10,
        filters: vec![s("a/b")],
        user_properties: vec![(s("k"), s("v"))],
    });
    vector(
        &p,
        V5,
        &cat(&[
            &[0xA2, 15, 0, 10, 7, 0x26, 0, 1, b'k', 0, 1, b'v', 0, 3],
            b"a/b",
        ]),
    );
    let p = Packet::UnsubAck(UnsubAck {
        packet_id: 10,
        reason_codes: vec![0x11],
        properties: AckProperties::default(),
    });
    vector(&p, V5, &[0xB0, 4, 0, 10, 0, 0x11]);
}

#[test]
fn v5_disconnect() {
    vector(&Packet::Disconnect(Disconnect::default()), V5, &[0xE0, 0]);
    let d = Disconnect {
        reason: reason::DISCONNECT_WITH_WILL,
        ..Disconnect::default()
    };
    vector(&Packet::Disconnect(d), V5, &[0xE0, 1, 4]);
    let mut d = Disconnect {
        reason: reason::USE_ANOTHER_SERVER,
        ..Disconnect::default()
    };
    d.properties.server_reference = Some(s("ho"));
    vector(
        &Packet::Disconnect(d),
        V5,
        &[0xE0, 7, 0x9C, 5, 0x1C, 0, 2, b'h', b'o'],
    );
    let mut d = Disconnect::default();
    d.properties.session_expiry_interval = Some(0);
    vector(
        &Packet::Disconnect(d),
        V5,
        &[0xE0, 7, 0, 5, 0x11, 0, 0, 0, 0],
    );
}

#[test]
fn v5_auth() {
    vector(&Packet::Auth(Auth::default()), V5, &[0xF0, 0]);
    let mut a = Auth {
        reason: reason::CONTINUE_AUTHENTICATION,
        ..Auth::default()
    };
    a.properties.authentication_method = Some(s("SCRAM"));
    a.properties.authentication_data = Some(Bytes::from_static(&[1, 2]));
    let bytes = cat(&[
        &[0xF0, 15, 0x18, 13, 0x15, 0, 5],
        b"SCRAM",
        &[0x16, 0, 2, 1, 2],
    ]);
    vector(&Packet::Auth(a), V5, &bytes);
}

#[test]
fn v5_pings() {
    vector(&Packet::PingReq, V5, &[0xC0, 0]);
    vector(&Packet::PingResp, V5, &[0xD0, 0]);
}

#[test]
fn publish_payload_and_topic_are_slices_of_the_frame() {
    let bytes = cat(&[&[0x30, 8, 0, 3], b"a/b", b"hello"]);
    let mut buf = BytesMut::from(&bytes[..]);
    let Some(Packet::Publish(p)) = decode(&mut buf, V311, MAX).unwrap() else {
        panic!()
    };
    // Both point into one allocation: the payload starts 3 bytes after the topic.
    let topic = p.topic.as_bytes().as_ptr() as usize;
    let payload = p.payload.as_ptr() as usize;
    assert_eq!(payload - topic, 3);
}

#[test]
fn several_packets_in_one_buffer() {
    let mut buf = BytesMut::new();
    let packets = [
        Packet::PingReq,
        Packet::PubAck(ack(1, 0)),
        Packet::Publish(Publish {
            topic: s("x"),
            ..Publish::default()
        }),
    ];
    for p in &packets {
        encode(p, V311, &mut buf);
    }
    buf.extend_from_slice(&[0x40]); // start of a fourth
    for p in &packets {
        assert_eq!(decode(&mut buf, V311, MAX), Ok(Some(p.clone())));
    }
    assert_eq!(decode(&mut buf, V311, MAX), Ok(None));
    assert_eq!(&buf[..], [0x40]);
}

#[test]
fn too_large_is_reported_from_the_header() {
    // Only the fixed header of a 2,097,155-byte PUBLISH has arrived.
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0x7F][..]);
    assert_eq!(
        decode(&mut buf, V311, 1024),
        Err(DecodeError::TooLarge {
            size: 1 + 3 + 2_097_151,
            max: 1024
        })
    );
    // The limit counts the whole packet: a 4-byte PUBACK fits 4, not 3.
    assert_eq!(
        dec(&[0x40, 2, 0, 1], V311),
        Ok(Some(Packet::PubAck(ack(1, 0))))
    );
    let mut buf = BytesMut::from(&[0x40, 2][..]);
    assert_eq!(
        decode(&mut buf, V311, 3),
        Err(DecodeError::TooLarge { size: 4, max: 3 })
    );
    let mut buf = BytesMut::from(&[0x40, 2, 0, 1][..]);
    assert_eq!(
        decode(&mut buf, V311, 4),
        Ok(Some(Packet::PubAck(ack(1, 0))))
    );
    assert_eq!(
        DecodeError::TooLarge { size: 4, max: 3 }.reason_code(),
        reason::PACKET_TOO_LARGE
    );
}

#[test]
fn encoded_len_matches_for_a_big_connect() {
    let mut c = connect(V5);
    c.properties.authentication_data = Some(Bytes::from(vec![1; 300]));
    c.properties.maximum_packet_size = Some(1 << 20);
    let p = Packet::Connect(Box::new(c));
    assert_eq!(encoded_len(&p, V5), enc(&p, V5).len());
    assert_eq!(dec(&enc(&p, V5), V5), Ok(Some(p)));
}

#[test]
fn oversized_strings_are_cut_at_a_char_boundary() {
    // 70,000 bytes of 2-byte characters: cut to 65,534 bytes, still valid UTF-8.
    let long = "é".repeat(35_000);
    let p = Packet::Publish(Publish {
        topic: ByteString::from(long),
        ..Publish::default()
    });
    let bytes = enc(&p, V311);
    assert_eq!(bytes.len(), encoded_len(&p, V311));
    let Ok(Some(Packet::Publish(back))) = dec(&bytes, V311) else {
        panic!()
    };
    assert_eq!(back.topic.len(), 65_534);
}
