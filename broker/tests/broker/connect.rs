//! CONNECT and CONNACK, keep alive, client ids, takeover.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rookery_codec::*;

use crate::support::*;

#[tokio::test]
async fn connack_accepts_both_versions_without_session() {
    let server = start(|_| {}).await;
    for protocol in [Protocol::V31, Protocol::V311, Protocol::V5] {
        let (_c, ack) = Raw::connect(server.addr(), protocol, "c1", true).await;
        assert!(!ack.session_present);
        if protocol.is_v5() {
            assert_eq!(ack.properties.maximum_packet_size, Some(1024 * 1024));
            assert_eq!(ack.properties.receive_maximum, Some(1024));
            assert_eq!(ack.properties.topic_alias_maximum, Some(1024));
        }
    }
}

#[tokio::test]
async fn unsupported_protocol_level_gets_return_code_1() {
    let server = start(|_| {}).await;
    let mut raw = Raw::open(server.addr(), Protocol::V311).await;
    // CONNECT, protocol name MQTT, level 6.
    raw.send_bytes(&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 6, 0x02, 0, 60, 0, 0])
        .await;
    match raw.recv().await {
        Packet::ConnAck(ack) => assert_eq!(ack.code, reason::v3::UNACCEPTABLE_PROTOCOL_VERSION),
        other => panic!("{other:?}"),
    }
    assert!(raw.expect_closed().await.is_none());
}

#[tokio::test]
async fn connection_without_connect_is_closed_after_the_timeout() {
    let server = start(|c| c.connect_timeout_secs = 1).await;
    let mut raw = Raw::open(server.addr(), Protocol::V311).await;
    let started = std::time::Instant::now();
    assert!(raw.expect_closed().await.is_none());
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(
        server
            .broker
            .metrics
            .connect_timeouts_total
            .load(Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn first_packet_other_than_connect_closes() {
    let server = start(|_| {}).await;
    let mut raw = Raw::open(server.addr(), Protocol::V311).await;
    raw.send(Packet::PingReq).await;
    assert!(raw.expect_closed().await.is_none());
}

#[tokio::test]
async fn second_connect_is_a_protocol_error() {
    let server = start(|_| {}).await;
    let (mut v5, _) = Raw::connect(server.addr(), Protocol::V5, "twice5", true).await;
    v5.send(Packet::Connect(Box::new(connect_packet(
        Protocol::V5,
        "twice5",
        true,
    ))))
    .await;
    assert_eq!(
        v5.expect_closed().await.unwrap().reason,
        reason::PROTOCOL_ERROR
    );
    let (mut v3, _) = Raw::connect(server.addr(), Protocol::V311, "twice3", true).await;
    v3.send(Packet::Connect(Box::new(connect_packet(
        Protocol::V311,
        "twice3",
        true,
    ))))
    .await;
    assert!(v3.expect_closed().await.is_none());
}

#[tokio::test]
async fn empty_client_id_gets_an_assigned_id_on_v5() {
    let server = start(|_| {}).await;
    let (_c, ack) = Raw::connect(server.addr(), Protocol::V5, "", true).await;
    let id = ack
        .properties
        .assigned_client_identifier
        .expect("assigned id");
    assert!(!id.is_empty());
    assert!(server.broker.sessions.get(&id).is_some());
}

#[tokio::test]
async fn empty_client_id_without_clean_session_is_rejected_on_311() {
    let server = start(|_| {}).await;
    let (_c, ack) = Raw::connect(server.addr(), Protocol::V311, "", true).await;
    assert_eq!(ack.code, 0);
    let (mut c, ack) =
        Raw::try_connect(server.addr(), connect_packet(Protocol::V311, "", false)).await;
    assert_eq!(ack.code, reason::v3::IDENTIFIER_REJECTED);
    assert!(c.expect_closed().await.is_none());
}

#[tokio::test]
async fn overlong_client_id_is_refused_with_the_version_code() {
    let server = start(|c| c.max_client_id_len = 8).await;
    let (_c, ack) = Raw::try_connect(
        server.addr(),
        connect_packet(Protocol::V5, "123456789", true),
    )
    .await;
    assert_eq!(ack.code, reason::CLIENT_IDENTIFIER_NOT_VALID);
    let (_c, ack) = Raw::try_connect(
        server.addr(),
        connect_packet(Protocol::V311, "123456789", true),
    )
    .await;
    assert_eq!(ack.code, reason::v3::IDENTIFIER_REJECTED);
}

#[tokio::test]
async fn keep_alive_is_enforced_at_one_and_a_half_times() {
    let server = start(|_| {}).await;
    let mut connect = connect_packet(Protocol::V5, "sleepy", true);
    connect.keep_alive = 1;
    let (mut c, _) = Raw::connect_with(server.addr(), connect).await;
    let started = std::time::Instant::now();
    let d = c.expect_closed().await.expect("DISCONNECT");
    assert_eq!(d.reason, reason::KEEP_ALIVE_TIMEOUT);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1400),
        "closed after {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(2500),
        "closed after {waited:?}"
    );
}

#[tokio::test]
async fn ping_keeps_a_connection_alive() {
    let server = start(|_| {}).await;
    let mut connect = connect_packet(Protocol::V311, "pinger", true);
    connect.keep_alive = 1;
    let (mut c, _) = Raw::connect_with(server.addr(), connect).await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        c.send(Packet::PingReq).await;
        assert_eq!(c.recv().await, Packet::PingResp);
    }
}

#[tokio::test]
async fn server_keep_alive_caps_v5_clients() {
    let server = start(|c| c.max_keepalive_secs = 30).await;
    let mut connect = connect_packet(Protocol::V5, "ka", true);
    connect.keep_alive = 0;
    let (_c, ack) = Raw::connect_with(server.addr(), connect).await;
    assert_eq!(ack.properties.server_keep_alive, Some(30));
    let mut connect = connect_packet(Protocol::V311, "ka3", true);
    connect.keep_alive = 100;
    let (_c, ack) = Raw::try_connect(server.addr(), connect).await;
    assert_eq!(ack.code, reason::v3::IDENTIFIER_REJECTED);
}

#[tokio::test]
async fn takeover_closes_the_old_connection_with_0x8e_and_keeps_the_session() {
    let server = start(|_| {}).await;
    let mut first = connect_packet(Protocol::V5, "dup-id", false);
    first.properties.session_expiry_interval = Some(60);
    let (mut old, _) = Raw::connect_with(server.addr(), first.clone()).await;
    old.subscribe("t/1", QoS::AtLeastOnce).await;
    let (mut new, ack) = Raw::connect_with(server.addr(), first).await;
    assert!(ack.session_present, "clean start 0 resumes the session");
    assert_eq!(
        old.expect_closed().await.unwrap().reason,
        reason::SESSION_TAKEN_OVER
    );
    // The subscription came along.
    let (mut p, _) = Raw::connect(server.addr(), Protocol::V311, "pub", true).await;
    p.publish("t/1", b"x", QoS::AtLeastOnce, false, 1).await;
    assert_eq!(&new.recv_publish().await.payload[..], b"x");
    assert_eq!(
        server
            .broker
            .metrics
            .takeovers_total
            .load(Ordering::Relaxed),
        1
    );
    assert_eq!(server.broker.sessions.get("dup-id").unwrap().takeovers(), 1);
}

#[tokio::test]
async fn takeover_with_clean_start_discards_the_session() {
    let server = start(|_| {}).await;
    let (mut old, _) = Raw::connect(server.addr(), Protocol::V311, "dup3", false).await;
    old.subscribe("t/2", QoS::AtLeastOnce).await;
    let (mut new, ack) = Raw::connect(server.addr(), Protocol::V311, "dup3", true).await;
    assert!(!ack.session_present);
    assert!(
        old.expect_closed().await.is_none(),
        "3.1.1 has no DISCONNECT from the server"
    );
    let (mut p, _) = Raw::connect(server.addr(), Protocol::V311, "pub", true).await;
    p.publish("t/2", b"x", QoS::AtLeastOnce, false, 1).await;
    new.expect_silence(Duration::from_millis(200)).await;
    assert!(server.broker.router.read().is_empty());
}

#[tokio::test]
async fn repeated_takeovers_are_counted_per_client_id() {
    let server = start(|c| c.takeover_warn_count = 2).await;
    let mut conns = Vec::new();
    for _ in 0..4 {
        let (c, _) = Raw::connect(server.addr(), Protocol::V311, "fighting", false).await;
        conns.push(c);
    }
    assert_eq!(
        server.broker.sessions.get("fighting").unwrap().takeovers(),
        3
    );
    assert_eq!(
        server
            .broker
            .metrics
            .takeovers_total
            .load(Ordering::Relaxed),
        3
    );
}

#[tokio::test]
async fn a_malformed_v5_connect_gets_connack_with_the_reason() {
    let server = start(|c| c.max_packet_size = 1024).await;
    // Reserved connect-flags bit set: malformed. MQTT 5.0 [MQTT-3.1.2-3].
    let mut raw = Raw::open(server.addr(), Protocol::V5).await;
    raw.send_bytes(&[
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x03, 0, 60, 0, 0, 0,
    ])
    .await;
    match raw.recv().await {
        Packet::ConnAck(ack) => assert_eq!(ack.code, reason::MALFORMED_PACKET),
        other => panic!("{other:?}"),
    }
    assert!(raw.expect_closed().await.is_none());
    // Too large.
    let mut raw = Raw::open(server.addr(), Protocol::V5).await;
    raw.send_bytes(&[0x10, 0x80, 0x10, 0, 4, b'M', b'Q', b'T', b'T', 5])
        .await;
    match raw.recv().await {
        Packet::ConnAck(ack) => assert_eq!(ack.code, reason::PACKET_TOO_LARGE),
        other => panic!("{other:?}"),
    }
    // The same on 3.1.1: closed without a CONNACK.
    let mut raw = Raw::open(server.addr(), Protocol::V311).await;
    raw.send_bytes(&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x03, 0, 60, 0, 0])
        .await;
    assert!(raw.expect_closed().await.is_none());
}

#[tokio::test]
async fn a_will_payload_that_is_not_the_utf8_it_claims_is_refused_with_0x99() {
    let server = start(|_| {}).await;
    let mut connect = connect_packet(Protocol::V5, "pfi-will", true);
    connect.will = Some(LastWill {
        topic: "w".into(),
        payload: bytes::Bytes::from_static(b"\xff"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: WillProperties {
            payload_format_indicator: Some(1),
            ..Default::default()
        },
    });
    let (_c, ack) = Raw::try_connect(server.addr(), connect).await;
    assert_eq!(ack.code, reason::PAYLOAD_FORMAT_INVALID);
}

#[tokio::test]
async fn client_ids_of_the_gateways_sessions_are_reserved() {
    let server = start(|_| {}).await;
    for id in ["coap-dev1", "bridge-cloud"] {
        let (_, ack) =
            Raw::try_connect(server.addr(), connect_packet(Protocol::V5, id, true)).await;
        assert_eq!(ack.code, reason::CLIENT_IDENTIFIER_NOT_VALID, "{id}");
    }
    let (_, ack) =
        Raw::try_connect(server.addr(), connect_packet(Protocol::V5, "coap", true)).await;
    assert_eq!(ack.code, 0);
}
