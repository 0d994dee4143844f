//! PUBLISH at QoS 0, 1 and 2 in both directions, in-flight windows, retransmission, queues.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rookery_codec::*;

use crate::support::*;

const BOTH: [Protocol; 2] = [Protocol::V311, Protocol::V5];

#[tokio::test]
async fn each_qos_flows_both_ways_with_its_handshake() {
    let server = start(|_| {}).await;
    for protocol in BOTH {
        let (mut sub, _) = Raw::connect(server.addr(), protocol, "sub", true).await;
        assert_eq!(sub.subscribe("q/#", QoS::ExactlyOnce).await, vec![2]);
        let (mut publ, _) = Raw::connect(server.addr(), protocol, "pub", true).await;
        for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
            .into_iter()
            .enumerate()
        {
            publ.publish(&format!("q/{i}"), b"payload", qos, false, 10 + i as u16)
                .await;
            let p = sub.recv_publish().await;
            assert_eq!(p.qos, qos);
            assert_eq!(&p.topic[..], format!("q/{i}"));
            assert!(!p.dup && !p.retain);
            match qos {
                QoS::AtMostOnce => assert_eq!(p.packet_id, 0),
                QoS::AtLeastOnce => {
                    sub.send(Packet::PubAck(Ack {
                        packet_id: p.packet_id,
                        ..Default::default()
                    }))
                    .await
                }
                QoS::ExactlyOnce => {
                    assert_ne!(p.packet_id, 0);
                    sub.send(Packet::PubRec(Ack {
                        packet_id: p.packet_id,
                        ..Default::default()
                    }))
                    .await;
                    match sub.recv().await {
                        Packet::PubRel(a) => assert_eq!(a.packet_id, p.packet_id),
                        other => panic!("{other:?}"),
                    }
                    sub.send(Packet::PubComp(Ack {
                        packet_id: p.packet_id,
                        ..Default::default()
                    }))
                    .await;
                }
            }
        }
        sub.disconnect().await;
        publ.disconnect().await;
    }
}

#[tokio::test]
async fn delivery_qos_is_the_lower_of_published_and_granted() {
    let server = start(|_| {}).await;
    let (mut sub, _) = Raw::connect(server.addr(), Protocol::V311, "sub", true).await;
    sub.subscribe("d", QoS::AtLeastOnce).await;
    let (mut publ, _) = Raw::connect(server.addr(), Protocol::V311, "pub", true).await;
    publ.publish("d", b"2", QoS::ExactlyOnce, false, 1).await;
    assert_eq!(sub.recv_publish().await.qos, QoS::AtLeastOnce);
    publ.publish("d", b"0", QoS::AtMostOnce, false, 1).await;
    assert_eq!(sub.recv_publish().await.qos, QoS::AtMostOnce);
}

#[tokio::test]
async fn a_resent_qos2_publish_is_delivered_once() {
    let server = start(|_| {}).await;
    let (mut sub, _) = Raw::connect(server.addr(), Protocol::V311, "sub", true).await;
    sub.subscribe("once", QoS::AtMostOnce).await;
    let (mut publ, _) = Raw::connect(server.addr(), Protocol::V5, "pub", true).await;
    let mut p = publish("once", b"x", QoS::ExactlyOnce, false, 7);
    publ.send(Packet::Publish(p.clone())).await;
    assert!(matches!(publ.recv().await, Packet::PubRec(a) if a.packet_id == 7));
    p.dup = true;
    publ.send(Packet::Publish(p)).await;
    assert!(matches!(publ.recv().await, Packet::PubRec(a) if a.packet_id == 7));
    assert_eq!(&sub.recv_publish().await.payload[..], b"x");
    sub.expect_silence(Duration::from_millis(200)).await;
    publ.send(Packet::PubRel(Ack {
        packet_id: 7,
        ..Default::default()
    }))
    .await;
    assert!(matches!(publ.recv().await, Packet::PubComp(a) if a.packet_id == 7 && a.reason == 0));
    // Unknown id: PUBCOMP with 0x92 on 5.0.
    publ.send(Packet::PubRel(Ack {
        packet_id: 7,
        ..Default::default()
    }))
    .await;
    assert!(
        matches!(publ.recv().await, Packet::PubComp(a) if a.reason == reason::PACKET_IDENTIFIER_NOT_FOUND)
    );
}

#[tokio::test]
async fn incoming_qos2_state_survives_a_reconnect() {
    let server = start(|_| {}).await;
    let (mut sub, _) = Raw::connect(server.addr(), Protocol::V311, "sub", true).await;
    sub.subscribe("x2", QoS::ExactlyOnce).await;
    for protocol in BOTH {
        let mut connect = connect_packet(protocol, "pub2", false);
        connect.properties.session_expiry_interval = protocol.is_v5().then_some(300);
        let (mut publ, _) = Raw::connect_with(server.addr(), connect.clone()).await;
        publ.send(Packet::Publish(publish(
            "x2",
            b"once",
            QoS::ExactlyOnce,
            false,
            42,
        )))
        .await;
        assert!(matches!(publ.recv().await, Packet::PubRec(_)));
        drop(publ); // lost before PUBREL
        let got = sub.recv_publish().await;
        sub.send(Packet::PubRec(Ack {
            packet_id: got.packet_id,
            ..Default::default()
        }))
        .await;
        assert!(matches!(sub.recv().await, Packet::PubRel(_)));
        sub.send(Packet::PubComp(Ack {
            packet_id: got.packet_id,
            ..Default::default()
        }))
        .await;

        let (mut publ, ack) = Raw::connect_with(server.addr(), connect).await;
        assert!(ack.session_present);
        let mut again = publish("x2", b"once", QoS::ExactlyOnce, false, 42);
        again.dup = true;
        publ.send(Packet::Publish(again)).await;
        assert!(matches!(publ.recv().await, Packet::PubRec(a) if a.packet_id == 42));
        publ.send(Packet::PubRel(Ack {
            packet_id: 42,
            ..Default::default()
        }))
        .await;
        assert!(
            matches!(publ.recv().await, Packet::PubComp(a) if a.packet_id == 42 && a.reason == 0)
        );
        sub.expect_silence(Duration::from_millis(200)).await;
        publ.disconnect().await;
    }
}

#[tokio::test]
async fn unacknowledged_messages_are_resent_with_dup_on_resume() {
    let server = start(|_| {}).await;
    for protocol in BOTH {
        let mut connect = connect_packet(protocol, "resume", false);
        connect.properties.session_expiry_interval = protocol.is_v5().then_some(300);
        let (mut sub, _) = Raw::connect_with(server.addr(), connect.clone()).await;
        sub.subscribe("r/+", QoS::ExactlyOnce).await;
        let (mut publ, _) = Raw::connect(server.addr(), Protocol::V311, "p", true).await;
        publ.publish("r/1", b"one", QoS::AtLeastOnce, false, 1)
            .await;
        publ.publish("r/2", b"two", QoS::ExactlyOnce, false, 2)
            .await;
        let first = sub.recv_publish().await;
        let second = sub.recv_publish().await;
        // Acknowledge only the PUBREC of the QoS 2 message, then drop the connection.
        sub.send(Packet::PubRec(Ack {
            packet_id: second.packet_id,
            ..Default::default()
        }))
        .await;
        assert!(matches!(sub.recv().await, Packet::PubRel(_)));
        drop(sub);

        let (mut sub, ack) = Raw::connect_with(server.addr(), connect).await;
        assert!(ack.session_present);
        let again = sub.recv_publish().await;
        assert!(again.dup);
        assert_eq!(again.packet_id, first.packet_id);
        assert_eq!(&again.payload[..], b"one");
        match sub.recv().await {
            Packet::PubRel(a) => assert_eq!(a.packet_id, second.packet_id),
            other => panic!("expected PUBREL resend, got {other:?}"),
        }
        sub.send(Packet::PubAck(Ack {
            packet_id: first.packet_id,
            ..Default::default()
        }))
        .await;
        sub.send(Packet::PubComp(Ack {
            packet_id: second.packet_id,
            ..Default::default()
        }))
        .await;
        sub.expect_silence(Duration::from_millis(200)).await;
        // Clean up so the next protocol starts fresh.
        let (c, _) = Raw::connect(server.addr(), protocol, "resume", true).await;
        c.disconnect().await;
    }
}

#[tokio::test]
async fn the_inflight_window_holds_back_the_rest_until_acks() {
    let server = start(|c| c.max_inflight = 2).await;
    let (mut sub, _) = Raw::connect(server.addr(), Protocol::V311, "slow", true).await;
    sub.subscribe("w", QoS::AtLeastOnce).await;
    let (mut publ, _) = Raw::connect(server.addr(), Protocol::V311, "p", true).await;
    for i in 0..5u16 {
        publ.publish("w", &[b'0' + i as u8], QoS::AtLeastOnce, false, i + 1)
            .await;
    }
    let a = sub.recv_publish().await;
    let b = sub.recv_publish().await;
    assert_eq!((&a.payload[..], &b.payload[..]), (&b"0"[..], &b"1"[..]));
    sub.expect_silence(Duration::from_millis(200)).await;
    sub.send(Packet::PubAck(Ack {
        packet_id: a.packet_id,
        ..Default::default()
    }))
    .await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"2");
    sub.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn offline_persistent_sessions_queue_qos1_and_qos2_but_not_qos0() {
    let server = start(|_| {}).await;
    for protocol in BOTH {
        let mut connect = connect_packet(protocol, "offline", false);
        connect.properties.session_expiry_interval = protocol.is_v5().then_some(300);
        let (sub, _) = Raw::connect_with(server.addr(), connect.clone()).await;
        let mut sub = sub;
        sub.subscribe("o", QoS::ExactlyOnce).await;
        sub.disconnect().await;
        let (mut publ, _) = Raw::connect(server.addr(), Protocol::V311, "p", true).await;
        publ.publish("o", b"zero", QoS::AtMostOnce, false, 1).await;
        publ.publish("o", b"one", QoS::AtLeastOnce, false, 2).await;
        publ.publish("o", b"two", QoS::ExactlyOnce, false, 3).await;
        let (mut sub, ack) = Raw::connect_with(server.addr(), connect).await;
        assert!(ack.session_present);
        let p1 = sub.recv_publish().await;
        assert_eq!(
            (&p1.payload[..], p1.qos, p1.dup),
            (&b"one"[..], QoS::AtLeastOnce, false)
        );
        let p2 = sub.recv_publish().await;
        assert_eq!((&p2.payload[..], p2.qos), (&b"two"[..], QoS::ExactlyOnce));
        let (c, _) = Raw::connect(server.addr(), protocol, "offline", true).await;
        c.disconnect().await;
    }
}

#[tokio::test]
async fn qos0_is_queued_offline_when_configured() {
    let server = start(|c| c.queue_qos0_offline = true).await;
    let (mut sub, _) = Raw::connect(server.addr(), Protocol::V311, "q0", false).await;
    sub.subscribe("o0", QoS::AtMostOnce).await;
    sub.disconnect().await;
    let (mut publ, _) = Raw::connect(server.addr(), Protocol::V311, "p", true).await;
    publ.publish("o0", b"zero", QoS::AtMostOnce, false, 1).await;
    let (mut sub, _) = Raw::connect(server.addr(), Protocol::V311, "q0", false).await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"zero");
}

#[tokio::test]
async fn a_full_queue_drops_new_messages_and_counts_them() {
    let server = start(|c| {
        c.max_queued_messages = 3;
        c.max_inflight = 1;
    })
    .await;
    let (mut sub, _) = Raw::connect(server.addr(), Protocol::V311, "full", false).await;
    sub.subscribe("f", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let (mut publ, _) = Raw::connect(server.addr(), Protocol::V311, "p", true).await;
    for i in 0..6u16 {
        publ.publish("f", &[b'a' + i as u8], QoS::AtLeastOnce, false, i + 1)
            .await;
    }
    assert_eq!(
        server
            .broker
            .metrics
            .dropped_queue_full_total
            .load(Ordering::Relaxed),
        3
    );
    let (mut sub, _) = Raw::connect(server.addr(), Protocol::V311, "full", false).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let p = sub.recv_publish().await;
        got.push(p.payload[0]);
        sub.send(Packet::PubAck(Ack {
            packet_id: p.packet_id,
            ..Default::default()
        }))
        .await;
    }
    assert_eq!(got, b"abc");
    sub.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn the_disconnect_policy_closes_a_slow_online_client() {
    let server = start(|c| {
        c.max_queued_messages = 2;
        c.max_inflight = 1;
        c.queue_overflow = rookery_broker::session::queue::OverflowPolicy::Disconnect;
    })
    .await;
    let (mut sub, _) = Raw::connect(server.addr(), Protocol::V5, "slowpoke", true).await;
    sub.subscribe("s", QoS::AtLeastOnce).await;
    let (mut publ, _) = Raw::connect(server.addr(), Protocol::V311, "p", true).await;
    for i in 0..5u16 {
        publ.publish("s", b"m", QoS::AtLeastOnce, false, i + 1)
            .await;
    }
    assert_eq!(
        sub.expect_closed().await.unwrap().reason,
        reason::QUOTA_EXCEEDED
    );
}

#[tokio::test]
async fn puback_says_when_nobody_subscribed_on_v5() {
    let server = start(|_| {}).await;
    let (mut publ, _) = Raw::connect(server.addr(), Protocol::V5, "p", true).await;
    publ.send(Packet::Publish(publish(
        "nobody",
        b"x",
        QoS::AtLeastOnce,
        false,
        3,
    )))
    .await;
    assert!(
        matches!(publ.recv().await, Packet::PubAck(a) if a.reason == reason::NO_MATCHING_SUBSCRIBERS)
    );
}

#[tokio::test]
async fn counters_follow_real_traffic() {
    let server = start(|_| {}).await;
    let (mut sub, _) = Raw::connect(server.addr(), Protocol::V311, "s", true).await;
    sub.subscribe("c", QoS::AtLeastOnce).await;
    let (mut publ, _) = Raw::connect(server.addr(), Protocol::V311, "p", true).await;
    for i in 0..10u16 {
        publ.publish("c", b"m", QoS::AtLeastOnce, false, i + 1)
            .await;
        let p = sub.recv_publish().await;
        sub.send(Packet::PubAck(Ack {
            packet_id: p.packet_id,
            ..Default::default()
        }))
        .await;
    }
    let m = &server.broker.metrics;
    eventually(|| m.received() == 10 && m.sent() == 10).await;
}

#[tokio::test]
async fn resent_messages_respect_the_new_connections_receive_maximum() {
    let server = start(|_| {}).await;
    let mut connect = connect_packet(Protocol::V5, "shrink", false);
    connect.properties.session_expiry_interval = Some(300);
    let (mut sub, _) = Raw::connect_with(server.addr(), connect.clone()).await;
    sub.subscribe("rs", QoS::AtLeastOnce).await;
    let (mut publ, _) = Raw::connect(server.addr(), Protocol::V5, "p", true).await;
    for i in 0..3u8 {
        publ.publish("rs", &[i], QoS::AtLeastOnce, false, u16::from(i) + 1)
            .await;
    }
    for _ in 0..3 {
        sub.recv_publish().await;
    }
    drop(sub); // nothing acknowledged
    connect.properties.receive_maximum = Some(1);
    let (mut sub, ack) = Raw::connect_with(server.addr(), connect).await;
    assert!(ack.session_present);
    for i in 0..3u8 {
        let p = sub.recv_publish().await;
        assert!(p.dup);
        assert_eq!(&p.payload[..], &[i]);
        sub.expect_silence(Duration::from_millis(100)).await;
        sub.send(Packet::PubAck(Ack {
            packet_id: p.packet_id,
            ..Default::default()
        }))
        .await;
    }
}

#[tokio::test]
async fn a_slow_subscriber_pauses_the_publisher_instead_of_losing_qos1() {
    let server = start(|c| {
        c.max_queued_messages = 5;
        c.max_inflight = 1;
    })
    .await;
    let (mut sub, _) = Raw::connect(server.addr(), Protocol::V311, "slow-sub", true).await;
    sub.subscribe("bp", QoS::AtLeastOnce).await;
    let (mut publ, _) = Raw::connect(server.addr(), Protocol::V311, "fast-pub", true).await;
    for i in 0..40u16 {
        publ.send(Packet::Publish(publish(
            "bp",
            &i.to_be_bytes(),
            QoS::AtLeastOnce,
            false,
            i + 1,
        )))
        .await;
    }
    // The publisher is held back: far fewer than 40 acknowledgements while nobody drains.
    let mut acked = 0;
    while let Some(Packet::PubAck(_)) = publ
        .recv_within(std::time::Duration::from_millis(300))
        .await
    {
        acked += 1;
    }
    assert!(acked < 40, "publisher was not paused ({acked} acks)");
    // Draining the subscriber lets everything through, in order, with nothing dropped.
    for i in 0..40u16 {
        let p = sub.recv_publish().await;
        assert_eq!(u16::from_be_bytes([p.payload[0], p.payload[1]]), i);
        sub.send(Packet::PubAck(Ack {
            packet_id: p.packet_id,
            ..Default::default()
        }))
        .await;
    }
    while acked < 40 {
        assert!(matches!(publ.recv().await, Packet::PubAck(_)));
        acked += 1;
    }
    assert_eq!(
        server
            .broker
            .metrics
            .dropped_queue_full_total
            .load(Ordering::Relaxed),
        0
    );
}
