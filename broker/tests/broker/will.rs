//! Wills: on abnormal close and keep-alive expiry, not on a normal DISCONNECT; v5 delay and 0x04.

use std::time::Duration;

use bytes::Bytes;
use rookery_codec::*;

use crate::support::*;

fn with_will(protocol: Protocol, id: &str, delay: Option<u32>) -> Connect {
    let mut c = connect_packet(protocol, id, true);
    c.will = Some(LastWill {
        topic: "wills/dead".into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties {
            will_delay_interval: delay,
            ..Default::default()
        },
    });
    c
}

async fn watcher(server: &rookery_broker::Server, protocol: Protocol) -> Raw {
    let (mut w, _) = Raw::connect(server.addr(), protocol, "watcher", true).await;
    w.subscribe("wills/#", QoS::AtLeastOnce).await;
    w
}

#[tokio::test]
async fn will_is_published_when_the_connection_drops() {
    let server = start(|_| {}).await;
    for protocol in [Protocol::V311, Protocol::V5] {
        let mut w = watcher(&server, protocol).await;
        let (c, _) = Raw::connect_with(server.addr(), with_will(protocol, "dying", None)).await;
        drop(c);
        let p = w.recv_publish().await;
        assert_eq!(
            (&p.topic[..], &p.payload[..], p.qos),
            ("wills/dead", &b"gone"[..], QoS::AtLeastOnce)
        );
    }
}

#[tokio::test]
async fn will_is_not_published_after_a_normal_disconnect() {
    let server = start(|_| {}).await;
    let mut w = watcher(&server, Protocol::V311).await;
    let (c, _) = Raw::connect_with(server.addr(), with_will(Protocol::V311, "polite", None)).await;
    c.disconnect().await;
    w.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn disconnect_with_reason_4_publishes_the_will() {
    let server = start(|_| {}).await;
    let mut w = watcher(&server, Protocol::V5).await;
    let (mut c, _) = Raw::connect_with(server.addr(), with_will(Protocol::V5, "w4", None)).await;
    c.send(Packet::Disconnect(Disconnect {
        reason: reason::DISCONNECT_WITH_WILL,
        ..Default::default()
    }))
    .await;
    assert_eq!(&w.recv_publish().await.payload[..], b"gone");
}

#[tokio::test]
async fn will_is_published_on_keep_alive_expiry() {
    let server = start(|_| {}).await;
    let mut w = watcher(&server, Protocol::V311).await;
    let mut connect = with_will(Protocol::V311, "silent", None);
    connect.keep_alive = 1;
    let (_c, _) = Raw::connect_with(server.addr(), connect).await;
    let p = w.recv_publish().await;
    assert_eq!(&p.payload[..], b"gone");
}

#[tokio::test]
async fn will_is_published_on_a_protocol_error() {
    let server = start(|_| {}).await;
    let mut w = watcher(&server, Protocol::V5).await;
    let (mut c, _) = Raw::connect_with(server.addr(), with_will(Protocol::V5, "bad", None)).await;
    c.send_bytes(&[0xF0, 0x00]).await; // reserved packet type 15 without AUTH semantics
    let _ = c.expect_closed().await;
    assert_eq!(&w.recv_publish().await.payload[..], b"gone");
}

#[tokio::test]
async fn will_delay_waits_and_a_resume_cancels_it() {
    let server = start(|_| {}).await;
    let mut w = watcher(&server, Protocol::V5).await;
    let mut connect = with_will(Protocol::V5, "delayed", Some(1));
    connect.clean_start = false;
    connect.properties.session_expiry_interval = Some(60);
    // Dropped, then back within the delay: no will.
    let (c, _) = Raw::connect_with(server.addr(), connect.clone()).await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (c, ack) = Raw::connect_with(server.addr(), connect.clone()).await;
    assert!(ack.session_present);
    w.expect_silence(Duration::from_millis(1300)).await;
    // Dropped and not back: the will comes after about a second.
    drop(c);
    let started = std::time::Instant::now();
    assert_eq!(&w.recv_publish().await.payload[..], b"gone");
    assert!(started.elapsed() >= Duration::from_millis(800));
}

#[tokio::test]
async fn will_delay_longer_than_session_expiry_fires_at_session_end() {
    let server = start(|_| {}).await;
    let mut w = watcher(&server, Protocol::V5).await;
    let mut connect = with_will(Protocol::V5, "short-session", Some(100));
    connect.properties.session_expiry_interval = Some(1);
    let (c, _) = Raw::connect_with(server.addr(), connect).await;
    drop(c);
    let started = std::time::Instant::now();
    assert_eq!(&w.recv_publish().await.payload[..], b"gone");
    assert!(started.elapsed() >= Duration::from_millis(800));
}

#[tokio::test]
async fn an_invalid_will_topic_refuses_the_connect() {
    let server = start(|_| {}).await;
    let mut connect = with_will(Protocol::V5, "wt", None);
    if let Some(w) = connect.will.as_mut() {
        w.topic = "wills/#".into();
    }
    let (_c, ack) = Raw::try_connect(server.addr(), connect).await;
    assert_eq!(ack.code, reason::TOPIC_NAME_INVALID);
}
