//! MQTT 5.0 features: properties passed through, message expiry, topic aliases both ways,
//! receive maximum both ways, maximum packet size both ways.

use std::time::Duration;

use bytes::Bytes;
use rookery_codec::*;

use crate::support::*;

#[tokio::test]
async fn properties_pass_through_to_subscribers() {
    let server = start(|_| {}).await;
    let (mut sub, _) = Raw::connect(server.addr(), Protocol::V5, "s", true).await;
    sub.subscribe("req", QoS::AtMostOnce).await;
    let (mut publ, _) = Raw::connect(server.addr(), Protocol::V5, "p", true).await;
    let mut p = publish("req", b"{}", QoS::AtMostOnce, false, 0);
    p.properties = PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json".into()),
        response_topic: Some("resp/1".into()),
        correlation_data: Some(Bytes::from_static(b"\x01\x02")),
        user_properties: vec![
            ("a".into(), "1".into()),
            ("b".into(), "2".into()),
            ("a".into(), "3".into()),
        ],
        ..Default::default()
    };
    publ.send(Packet::Publish(p.clone())).await;
    let got = sub.recv_publish().await;
    assert_eq!(
        got.properties, p.properties,
        "all properties, user properties in order"
    );
}

#[tokio::test]
async fn payload_not_matching_its_utf8_indicator_is_refused_with_0x99() {
    let server = start(|_| {}).await;
    let (mut publ, _) = Raw::connect(server.addr(), Protocol::V5, "p", true).await;
    let mut p = publish("pfi", b"\xff\xfe", QoS::AtLeastOnce, false, 4);
    p.properties.payload_format_indicator = Some(1);
    publ.send(Packet::Publish(p)).await;
    assert!(
        matches!(publ.recv().await, Packet::PubAck(a) if a.reason == reason::PAYLOAD_FORMAT_INVALID)
    );
}

#[tokio::test]
async fn expired_messages_are_dropped_and_remaining_time_is_forwarded() {
    let server = start(|_| {}).await;
    let mut connect = connect_packet(Protocol::V5, "late", false);
    connect.properties.session_expiry_interval = Some(60);
    let (mut sub, _) = Raw::connect_with(server.addr(), connect.clone()).await;
    sub.subscribe("exp/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let (mut publ, _) = Raw::connect(server.addr(), Protocol::V5, "p", true).await;
    let mut short = publish("exp/short", b"short", QoS::AtLeastOnce, false, 1);
    short.properties.message_expiry_interval = Some(1);
    let mut long = publish("exp/long", b"long", QoS::AtLeastOnce, false, 2);
    long.properties.message_expiry_interval = Some(100);
    publ.send(Packet::Publish(short)).await;
    publ.send(Packet::Publish(long)).await;
    publ.recv().await;
    publ.recv().await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (mut sub, _) = Raw::connect_with(server.addr(), connect).await;
    let p = sub.recv_publish().await;
    assert_eq!(
        &p.payload[..],
        b"long",
        "the expired message is never delivered"
    );
    let left = p.properties.message_expiry_interval.unwrap();
    assert!((97..=99).contains(&left), "remaining expiry {left}");
    sub.send(Packet::PubAck(Ack {
        packet_id: p.packet_id,
        ..Default::default()
    }))
    .await;
    sub.expect_silence(Duration::from_millis(150)).await;
}

#[tokio::test]
async fn client_topic_aliases_are_resolved() {
    let server = start(|_| {}).await;
    let (mut sub, _) = Raw::connect(server.addr(), Protocol::V5, "s", true).await;
    sub.subscribe("alias/#", QoS::AtMostOnce).await;
    let (mut publ, _) = Raw::connect(server.addr(), Protocol::V5, "p", true).await;
    let mut set = publish("alias/x", b"1", QoS::AtMostOnce, false, 0);
    set.properties.topic_alias = Some(3);
    publ.send(Packet::Publish(set)).await;
    let mut use_it = publish("", b"2", QoS::AtMostOnce, false, 0);
    use_it.properties.topic_alias = Some(3);
    publ.send(Packet::Publish(use_it)).await;
    for payload in [b"1", b"2"] {
        let p = sub.recv_publish().await;
        assert_eq!((&p.topic[..], &p.payload[..]), ("alias/x", &payload[..]));
        assert_eq!(p.properties.topic_alias, None, "aliases are per connection");
    }
}

#[tokio::test]
async fn bad_topic_aliases_close_with_0x94_or_0x82() {
    let server = start(|c| c.topic_alias_maximum = 5).await;
    let (mut c, _) = Raw::connect(server.addr(), Protocol::V5, "a", true).await;
    let mut p = publish("t", b"x", QoS::AtMostOnce, false, 0);
    p.properties.topic_alias = Some(6);
    c.send(Packet::Publish(p)).await;
    assert_eq!(
        c.expect_closed().await.unwrap().reason,
        reason::TOPIC_ALIAS_INVALID
    );
    let (mut c, _) = Raw::connect(server.addr(), Protocol::V5, "b", true).await;
    let mut p = publish("", b"x", QoS::AtMostOnce, false, 0);
    p.properties.topic_alias = Some(2);
    c.send(Packet::Publish(p)).await;
    assert_eq!(
        c.expect_closed().await.unwrap().reason,
        reason::PROTOCOL_ERROR
    );
}

#[tokio::test]
async fn outgoing_topic_aliases_are_used_when_the_client_allows() {
    let server = start(|_| {}).await;
    let mut connect = connect_packet(Protocol::V5, "s", true);
    connect.properties.topic_alias_maximum = Some(1);
    let (mut sub, _) = Raw::connect_with(server.addr(), connect).await;
    sub.subscribe("oa/#", QoS::AtMostOnce).await;
    let (mut publ, _) = Raw::connect(server.addr(), Protocol::V5, "p", true).await;
    for t in ["oa/1", "oa/1", "oa/2"] {
        publ.publish(t, b"x", QoS::AtMostOnce, false, 0).await;
    }
    let first = sub.recv_publish().await;
    assert_eq!(
        (&first.topic[..], first.properties.topic_alias),
        ("oa/1", Some(1))
    );
    let second = sub.recv_publish().await;
    assert_eq!(
        (&second.topic[..], second.properties.topic_alias),
        ("", Some(1))
    );
    let third = sub.recv_publish().await;
    assert_eq!(
        (&third.topic[..], third.properties.topic_alias),
        ("oa/2", None),
        "only one alias allowed"
    );
}

#[tokio::test]
async fn exceeding_our_receive_maximum_closes_with_0x93() {
    let server = start(|c| c.receive_maximum = 2).await;
    let (mut c, ack) = Raw::connect(server.addr(), Protocol::V5, "rm", true).await;
    assert_eq!(ack.properties.receive_maximum, Some(2));
    for id in 1..=3 {
        c.send(Packet::Publish(publish(
            "rm",
            b"x",
            QoS::ExactlyOnce,
            false,
            id,
        )))
        .await;
    }
    let mut reason_seen = None;
    while let Some(p) = c.recv_within(WAIT).await {
        if let Packet::Disconnect(d) = p {
            reason_seen = Some(d.reason);
        }
    }
    assert_eq!(reason_seen, Some(reason::RECEIVE_MAXIMUM_EXCEEDED));
}

#[tokio::test]
async fn the_clients_receive_maximum_limits_what_we_send() {
    let server = start(|_| {}).await;
    let mut connect = connect_packet(Protocol::V5, "rm1", true);
    connect.properties.receive_maximum = Some(1);
    let (mut sub, _) = Raw::connect_with(server.addr(), connect).await;
    sub.subscribe("rm1", QoS::AtLeastOnce).await;
    let (mut publ, _) = Raw::connect(server.addr(), Protocol::V5, "p", true).await;
    publ.publish("rm1", b"a", QoS::AtLeastOnce, false, 1).await;
    publ.publish("rm1", b"b", QoS::AtLeastOnce, false, 2).await;
    let a = sub.recv_publish().await;
    sub.expect_silence(Duration::from_millis(150)).await;
    sub.send(Packet::PubAck(Ack {
        packet_id: a.packet_id,
        ..Default::default()
    }))
    .await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"b");
}

#[tokio::test]
async fn packets_above_our_maximum_close_with_0x95() {
    let server = start(|c| c.max_packet_size = 1024).await;
    let (mut c, _) = Raw::connect(server.addr(), Protocol::V5, "big", true).await;
    c.send(Packet::Publish(publish(
        "t",
        &[0u8; 2000],
        QoS::AtMostOnce,
        false,
        0,
    )))
    .await;
    assert_eq!(
        c.expect_closed().await.unwrap().reason,
        reason::PACKET_TOO_LARGE
    );
}

#[tokio::test]
async fn messages_above_the_clients_maximum_are_not_sent() {
    let server = start(|_| {}).await;
    let mut connect = connect_packet(Protocol::V5, "small", true);
    connect.properties.maximum_packet_size = Some(100);
    let (mut sub, _) = Raw::connect_with(server.addr(), connect).await;
    sub.subscribe("m", QoS::AtLeastOnce).await;
    let (mut publ, _) = Raw::connect(server.addr(), Protocol::V5, "p", true).await;
    publ.publish("m", &[7u8; 500], QoS::AtLeastOnce, false, 1)
        .await;
    publ.publish("m", b"fits", QoS::AtLeastOnce, false, 2).await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"fits");
    let m = &server.broker.metrics;
    eventually(|| {
        m.dropped_too_large_total
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    })
    .await;
}

#[tokio::test]
async fn auth_method_is_refused_with_0x8c() {
    let server = start(|_| {}).await;
    let mut connect = connect_packet(Protocol::V5, "auth", true);
    connect.properties.authentication_method = Some("SCRAM-SHA-1".into());
    let (_c, ack) = Raw::try_connect(server.addr(), connect).await;
    assert_eq!(ack.code, reason::BAD_AUTHENTICATION_METHOD);
}

#[tokio::test]
async fn a_message_dropped_inside_the_window_does_not_stall_delivery() {
    let server = start(|c| c.max_inflight = 1).await;
    let mut connect = connect_packet(Protocol::V5, "stall", true);
    connect.properties.maximum_packet_size = Some(200);
    let (mut sub, _) = Raw::connect_with(server.addr(), connect).await;
    sub.subscribe("st", QoS::AtLeastOnce).await;
    let (mut publ, _) = Raw::connect(server.addr(), Protocol::V5, "p", true).await;
    publ.publish("st", b"first", QoS::AtLeastOnce, false, 1)
        .await;
    publ.publish("st", &[0u8; 500], QoS::AtLeastOnce, false, 2)
        .await;
    let mut expiring = publish("st", b"expires", QoS::AtLeastOnce, false, 3);
    expiring.properties.message_expiry_interval = Some(1);
    publ.send(Packet::Publish(expiring)).await;
    publ.recv().await;
    publ.publish("st", b"last", QoS::AtLeastOnce, false, 4)
        .await;
    let first = sub.recv_publish().await;
    assert_eq!(&first.payload[..], b"first");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    sub.send(Packet::PubAck(Ack {
        packet_id: first.packet_id,
        ..Default::default()
    }))
    .await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"last");
}
