//! Seed inputs for the fuzz targets in `codec/fuzz`.
//!
//! `ROOKERY_WRITE_FUZZ_SEEDS=1 cargo test -p rookery-codec --test fuzz_seeds` rewrites
//! `codec/fuzz/seeds/<target>/`; the other test checks that the committed seeds still
//! decode cleanly, so they keep leading the fuzzer into every packet type.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use rookery_codec::*;

fn s(v: &str) -> ByteString {
    ByteString::from(v)
}

fn users() -> Vec<UserProperty> {
    vec![(s("k"), s("v")), (s("k"), s("w"))]
}

/// One packet of each type, with every field and property the protocol has set.
fn samples(proto: Protocol) -> Vec<(&'static str, Packet)> {
    let v5 = proto.is_v5();
    let ack_props = AckProperties {
        reason_string: Some(s("why")),
        user_properties: users(),
    };
    let ack_props = if v5 {
        ack_props
    } else {
        AckProperties::default()
    };
    let ack = |reason| Ack {
        packet_id: 7,
        reason: if v5 { reason } else { 0 },
        properties: ack_props.clone(),
    };
    let mut connect = Connect {
        protocol: proto,
        clean_start: true,
        keep_alive: 30,
        client_id: s("client-1"),
        will: Some(LastWill {
            topic: s("will/topic"),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: WillProperties::default(),
        }),
        username: Some(s("user")),
        password: Some(Bytes::from_static(b"secret")),
        properties: ConnectProperties::default(),
    };
    let mut connack = ConnAck {
        session_present: true,
        code: 0,
        ..ConnAck::default()
    };
    let mut publish = Publish {
        dup: true,
        qos: QoS::ExactlyOnce,
        retain: true,
        topic: s("a/b/c"),
        packet_id: 0x1234,
        payload: Bytes::from_static(b"payload"),
        properties: PublishProperties::default(),
    };
    let mut subscribe = Subscribe {
        packet_id: 9,
        filters: vec![
            SubscribeFilter {
                filter: s("a/+/c"),
                options: SubscriptionOptions::default(),
            },
            SubscribeFilter {
                filter: s("$share/g/#"),
                options: SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    ..Default::default()
                },
            },
        ],
        properties: SubscribeProperties::default(),
    };
    let mut disconnect = Disconnect::default();
    if v5 {
        connect.properties = ConnectProperties {
            session_expiry_interval: Some(3600),
            receive_maximum: Some(10),
            maximum_packet_size: Some(65_536),
            topic_alias_maximum: Some(5),
            request_response_information: Some(1),
            request_problem_information: Some(0),
            user_properties: users(),
            authentication_method: Some(s("SCRAM-SHA-1")),
            authentication_data: Some(Bytes::from_static(b"data")),
        };
        if let Some(w) = connect.will.as_mut() {
            w.properties = WillProperties {
                will_delay_interval: Some(5),
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(60),
                content_type: Some(s("text/plain")),
                response_topic: Some(s("reply")),
                correlation_data: Some(Bytes::from_static(b"corr")),
                user_properties: users(),
            };
        }
        connack.properties = ConnAckProperties {
            session_expiry_interval: Some(60),
            receive_maximum: Some(100),
            maximum_qos: Some(1),
            retain_available: Some(1),
            maximum_packet_size: Some(1 << 20),
            assigned_client_identifier: Some(s("auto-1")),
            topic_alias_maximum: Some(10),
            reason_string: Some(s("ok")),
            user_properties: users(),
            wildcard_subscription_available: Some(1),
            subscription_identifiers_available: Some(1),
            shared_subscription_available: Some(0),
            server_keep_alive: Some(20),
            response_information: Some(s("resp")),
            server_reference: Some(s("other")),
            authentication_method: Some(s("SCRAM-SHA-1")),
            authentication_data: Some(Bytes::from_static(b"data")),
        };
        publish.properties = PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(30),
            topic_alias: Some(3),
            response_topic: Some(s("reply")),
            correlation_data: Some(Bytes::from_static(b"corr")),
            user_properties: users(),
            subscription_identifiers: vec![1, 200_000],
            content_type: Some(s("json")),
        };
        subscribe.properties = SubscribeProperties {
            subscription_identifier: Some(42),
            user_properties: users(),
        };
        subscribe.filters[0].options = SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: RetainHandling::SendIfNew,
        };
        disconnect = Disconnect {
            reason: reason::SERVER_MOVED,
            properties: DisconnectProperties {
                session_expiry_interval: Some(0),
                reason_string: Some(s("bye")),
                user_properties: users(),
                server_reference: Some(s("other")),
            },
        };
    }
    let mut out = vec![
        ("connect", Packet::Connect(Box::new(connect))),
        ("connack", Packet::ConnAck(connack)),
        ("publish", Packet::Publish(publish)),
        (
            "publish_qos0",
            Packet::Publish(Publish {
                topic: s("t"),
                ..Publish::default()
            }),
        ),
        ("puback", Packet::PubAck(ack(0x10))),
        ("pubrec", Packet::PubRec(ack(0x80))),
        ("pubrel", Packet::PubRel(ack(0))),
        (
            "pubcomp",
            Packet::PubComp(Ack {
                packet_id: 7,
                ..Ack::default()
            }),
        ),
        ("subscribe", Packet::Subscribe(subscribe)),
        (
            "suback",
            Packet::SubAck(SubAck {
                packet_id: 9,
                reason_codes: vec![1, 0x80],
                properties: ack_props.clone(),
            }),
        ),
        (
            "unsubscribe",
            Packet::Unsubscribe(Unsubscribe {
                packet_id: 11,
                filters: vec![s("a/+/c"), s("#")],
                user_properties: if v5 { users() } else { vec![] },
            }),
        ),
        (
            "unsuback",
            Packet::UnsubAck(UnsubAck {
                packet_id: 11,
                reason_codes: if v5 { vec![0, 0x11] } else { vec![] },
                properties: ack_props,
            }),
        ),
        ("pingreq", Packet::PingReq),
        ("pingresp", Packet::PingResp),
        ("disconnect", Packet::Disconnect(disconnect)),
    ];
    if v5 {
        out.push((
            "auth",
            Packet::Auth(Auth {
                reason: reason::CONTINUE_AUTHENTICATION,
                properties: AuthProperties {
                    authentication_method: Some(s("SCRAM-SHA-1")),
                    authentication_data: Some(Bytes::from_static(b"data")),
                    reason_string: Some(s("more")),
                    user_properties: users(),
                },
            }),
        ));
    }
    out
}

fn wire(packets: &[(&str, Packet)], proto: Protocol) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for (_, p) in packets {
        encode(p, proto, &mut buf);
    }
    buf.to_vec()
}

fn seeds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds")
}

/// Every seed file for every target, as (target, file name, bytes).
fn all_seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    for (target, proto) in [("decode_v311", Protocol::V311), ("decode_v5", Protocol::V5)] {
        let packets = samples(proto);
        for (name, p) in &packets {
            out.push((
                target,
                format!("{name}.bin"),
                wire(std::slice::from_ref(&(*name, p.clone())), proto),
            ));
        }
        out.push((target, "all.bin".to_string(), wire(&packets, proto)));
    }
    // decode_stream: control byte (protocol % 3, read size from the upper bits) + stream.
    for (proto, ctl_proto) in [(Protocol::V31, 0u8), (Protocol::V311, 1), (Protocol::V5, 2)] {
        let packets = samples(proto);
        for chunk in [1u8, 7, 64] {
            let ctl = ctl_proto | ((chunk - 1) << 2);
            let mut bytes = vec![ctl];
            bytes.extend(wire(&packets, proto));
            out.push((
                "decode_stream",
                format!("{proto:?}_chunk{chunk}.bin"),
                bytes,
            ));
        }
    }
    out
}

/// Rewrites the committed seeds; runs first in `committed_seeds_are_current` when
/// `ROOKERY_WRITE_FUZZ_SEEDS=1` is set (after changing the samples).
fn write_fuzz_seeds() {
    for (target, name, bytes) in all_seeds() {
        let dir = seeds_dir().join(target);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(name), bytes).unwrap();
    }
}

#[test]
fn committed_seeds_are_current() {
    if std::env::var_os("ROOKERY_WRITE_FUZZ_SEEDS").is_some() {
        write_fuzz_seeds();
    }
    let seeds = all_seeds();
    for (target, name, bytes) in &seeds {
        let path = seeds_dir().join(target).join(name);
        let on_disk = fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; rerun with ROOKERY_WRITE_FUZZ_SEEDS=1",
                path.display()
            )
        });
        assert_eq!(
            &on_disk,
            bytes,
            "{} is stale: rerun with ROOKERY_WRITE_FUZZ_SEEDS=1",
            path.display()
        );
    }
    // And they decode cleanly, all of them.
    for (target, proto) in [("decode_v311", Protocol::V311), ("decode_v5", Protocol::V5)] {
        let packets = samples(proto);
        let all = fs::read(seeds_dir().join(target).join("all.bin")).unwrap();
        let mut buf = BytesMut::from(&all[..]);
        for (_, p) in &packets {
            assert_eq!(decode(&mut buf, proto, 1 << 20), Ok(Some(p.clone())));
        }
        assert!(buf.is_empty());
    }
}
