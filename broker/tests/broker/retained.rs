//! Retained messages, retain handling, retain as published, no local.

use std::time::Duration;

use rookery_codec::*;

use crate::support::*;

#[tokio::test]
async fn retained_messages_are_stored_replaced_and_deleted() {
    let server = start(|_| {}).await;
    for protocol in [Protocol::V311, Protocol::V5] {
        let (mut publ, _) = Raw::connect(server.addr(), protocol, "p", true).await;
        publ.publish("r/a", b"first", QoS::AtLeastOnce, true, 1)
            .await;
        publ.publish("r/a", b"second", QoS::AtLeastOnce, true, 2)
            .await;
        publ.publish("r/b", b"bee", QoS::AtMostOnce, true, 0).await;
        let (mut sub, _) = Raw::connect(server.addr(), protocol, "s", true).await;
        sub.subscribe("r/+", QoS::AtLeastOnce).await;
        let mut got = Vec::new();
        for _ in 0..2 {
            let p = sub.recv_publish().await;
            assert!(
                p.retain,
                "retained messages keep RETAIN when sent for a new subscription"
            );
            if p.qos == QoS::AtLeastOnce {
                sub.send(Packet::PubAck(Ack {
                    packet_id: p.packet_id,
                    ..Default::default()
                }))
                .await;
            }
            got.push((p.topic.to_string(), p.payload.to_vec(), p.qos));
        }
        got.sort();
        assert_eq!(
            got,
            vec![
                ("r/a".to_string(), b"second".to_vec(), QoS::AtLeastOnce),
                ("r/b".to_string(), b"bee".to_vec(), QoS::AtMostOnce)
            ]
        );
        // A live subscriber sees RETAIN cleared on normal forwarding.
        publ.publish("r/a", b"third", QoS::AtMostOnce, true, 0)
            .await;
        assert!(!sub.recv_publish().await.retain);
        // Empty payload deletes; the delete is forwarded to live subscribers.
        publ.publish("r/a", b"", QoS::AtMostOnce, true, 0).await;
        publ.publish("r/b", b"", QoS::AtMostOnce, true, 0).await;
        assert!(sub.recv_publish().await.payload.is_empty());
        assert!(sub.recv_publish().await.payload.is_empty());
        assert!(server.broker.retained.read().is_empty());
        let (mut late, _) = Raw::connect(server.addr(), protocol, "late", true).await;
        late.subscribe("r/#", QoS::AtLeastOnce).await;
        late.expect_silence(Duration::from_millis(150)).await;
    }
}

#[tokio::test]
async fn retain_handling_controls_replay_on_subscribe() {
    let server = start(|_| {}).await;
    let (mut publ, _) = Raw::connect(server.addr(), Protocol::V5, "p", true).await;
    publ.publish("rh", b"kept", QoS::AtMostOnce, true, 0).await;
    let (mut c, _) = Raw::connect(server.addr(), Protocol::V5, "c", true).await;
    let opts = |rh| SubscriptionOptions {
        retain_handling: rh,
        ..Default::default()
    };
    c.subscribe_with("rh", opts(RetainHandling::DoNotSend), None)
        .await;
    c.expect_silence(Duration::from_millis(100)).await;
    // Existing subscription: "send if new" sends nothing...
    c.subscribe_with("rh", opts(RetainHandling::SendIfNew), None)
        .await;
    c.expect_silence(Duration::from_millis(100)).await;
    // ...while "send at subscribe" always sends.
    c.subscribe_with("rh", opts(RetainHandling::SendAtSubscribe), None)
        .await;
    assert_eq!(&c.recv_publish().await.payload[..], b"kept");
    let (mut d, _) = Raw::connect(server.addr(), Protocol::V5, "d", true).await;
    d.subscribe_with("rh", opts(RetainHandling::SendIfNew), None)
        .await;
    assert_eq!(&d.recv_publish().await.payload[..], b"kept");
}

#[tokio::test]
async fn retain_as_published_keeps_the_flag_for_live_messages() {
    let server = start(|_| {}).await;
    let (mut c, _) = Raw::connect(server.addr(), Protocol::V5, "rap", true).await;
    c.subscribe_with(
        "rap",
        SubscriptionOptions {
            retain_as_published: true,
            ..Default::default()
        },
        None,
    )
    .await;
    let (mut publ, _) = Raw::connect(server.addr(), Protocol::V5, "p", true).await;
    publ.publish("rap", b"r", QoS::AtMostOnce, true, 0).await;
    assert!(c.recv_publish().await.retain);
    publ.publish("rap", b"n", QoS::AtMostOnce, false, 0).await;
    assert!(!c.recv_publish().await.retain);
}

#[tokio::test]
async fn no_local_skips_the_publisher_itself() {
    let server = start(|_| {}).await;
    let (mut c, _) = Raw::connect(server.addr(), Protocol::V5, "me", true).await;
    c.subscribe_with(
        "nl",
        SubscriptionOptions {
            no_local: true,
            ..Default::default()
        },
        None,
    )
    .await;
    c.publish("nl", b"mine", QoS::AtMostOnce, false, 0).await;
    c.expect_silence(Duration::from_millis(150)).await;
    let (mut other, _) = Raw::connect(server.addr(), Protocol::V5, "other", true).await;
    other
        .publish("nl", b"theirs", QoS::AtMostOnce, false, 0)
        .await;
    assert_eq!(&c.recv_publish().await.payload[..], b"theirs");
}
