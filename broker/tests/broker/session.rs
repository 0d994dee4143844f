//! Clean start, session present, session expiry (including its change at DISCONNECT).

use std::time::Duration;

use rookery_codec::*;

use crate::support::*;

fn persistent(id: &str, expiry: u32) -> Connect {
    let mut c = connect_packet(Protocol::V5, id, false);
    c.properties.session_expiry_interval = Some(expiry);
    c
}

#[tokio::test]
async fn session_present_follows_clean_start() {
    let server = start(|_| {}).await;
    let (c, ack) = Raw::connect(server.addr(), Protocol::V311, "sp", false).await;
    assert!(!ack.session_present);
    c.disconnect().await;
    let (c, ack) = Raw::connect(server.addr(), Protocol::V311, "sp", false).await;
    assert!(ack.session_present);
    c.disconnect().await;
    let (c, ack) = Raw::connect(server.addr(), Protocol::V311, "sp", true).await;
    assert!(!ack.session_present);
    c.disconnect().await;
    eventually(|| server.broker.sessions.get("sp").is_none()).await;
}

#[tokio::test]
async fn v5_session_with_zero_expiry_ends_with_the_connection() {
    let server = start(|_| {}).await;
    let (mut c, _) = Raw::connect_with(server.addr(), persistent("zero", 0)).await;
    c.subscribe("z", QoS::AtLeastOnce).await;
    c.disconnect().await;
    eventually(|| server.broker.sessions.get("zero").is_none()).await;
    let (_c, ack) = Raw::connect_with(server.addr(), persistent("zero", 0)).await;
    assert!(!ack.session_present);
    assert!(server.broker.router.read().is_empty());
}

#[tokio::test]
async fn session_expires_after_its_interval() {
    let server = start(|_| {}).await;
    let (mut c, _) = Raw::connect_with(server.addr(), persistent("exp", 1)).await;
    c.subscribe("e", QoS::AtLeastOnce).await;
    c.disconnect().await;
    let (c, ack) = Raw::connect_with(server.addr(), persistent("exp", 1)).await;
    assert!(ack.session_present, "still there right after");
    c.disconnect().await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(server.broker.sessions.get("exp").is_none());
    assert!(server.broker.router.read().is_empty());
    let (_c, ack) = Raw::connect_with(server.addr(), persistent("exp", 1)).await;
    assert!(!ack.session_present);
}

#[tokio::test]
async fn disconnect_can_shorten_the_session_expiry() {
    let server = start(|_| {}).await;
    let (mut c, _) = Raw::connect_with(server.addr(), persistent("shorten", 300)).await;
    c.subscribe("s", QoS::AtLeastOnce).await;
    c.send(Packet::Disconnect(Disconnect {
        reason: 0,
        properties: DisconnectProperties {
            session_expiry_interval: Some(0),
            ..Default::default()
        },
    }))
    .await;
    eventually(|| server.broker.sessions.get("shorten").is_none()).await;
}

#[tokio::test]
async fn disconnect_cannot_set_expiry_after_zero_at_connect() {
    let server = start(|_| {}).await;
    let (mut c, _) = Raw::connect_with(server.addr(), persistent("grow", 0)).await;
    c.send(Packet::Disconnect(Disconnect {
        reason: 0,
        properties: DisconnectProperties {
            session_expiry_interval: Some(30),
            ..Default::default()
        },
    }))
    .await;
    assert_eq!(
        c.expect_closed().await.unwrap().reason,
        reason::PROTOCOL_ERROR
    );
}

#[tokio::test]
async fn session_expiry_is_capped_and_the_client_is_told() {
    let server = start(|c| c.max_session_expiry_secs = 10).await;
    let (_c, ack) = Raw::connect_with(server.addr(), persistent("cap", 1000)).await;
    assert_eq!(ack.properties.session_expiry_interval, Some(10));
}

#[tokio::test]
async fn shutdown_tells_v5_clients_0x8b() {
    let server = start(|_| {}).await;
    let (mut v5, _) = Raw::connect(server.addr(), Protocol::V5, "bye5", true).await;
    let (mut v3, _) = Raw::connect(server.addr(), Protocol::V311, "bye3", true).await;
    let shutdown = tokio::spawn(server.shutdown());
    assert_eq!(
        v5.expect_closed().await.unwrap().reason,
        reason::SERVER_SHUTTING_DOWN
    );
    assert!(v3.expect_closed().await.is_none());
    shutdown.await.unwrap();
}
