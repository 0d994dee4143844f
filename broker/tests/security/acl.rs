//! ACL files: the field example, per-message read checks, wills and retained messages, and
//! reloads that revoke live subscriptions.

use std::path::PathBuf;

use rookery_codec::*;

use crate::support::*;

const FIELD_EXAMPLE: &str =
    "user sensor_device\ntopic readwrite sensors/#\ntopic read commands/device_123\n";

fn as_user(protocol: Protocol, id: &str, user: &str) -> Connect {
    let mut c = connect_packet(protocol, id, true);
    c.username = Some(user.into());
    c
}

async fn acl_broker(text: &str) -> (tempfile::TempDir, PathBuf, rookery_broker::Server) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("acl");
    std::fs::write(&path, text).unwrap();
    let p = path.clone();
    let server = start(|c| {
        c.acl_file = Some(p);
        c.reload_interval_secs = 0;
    })
    .await;
    (dir, path, server)
}

#[tokio::test]
async fn the_field_example_works_exactly() {
    let (_d, _p, server) = acl_broker(FIELD_EXAMPLE).await;
    let addr = server.addr();
    let (mut dev, _) = Raw::connect_with(addr, as_user(Protocol::V5, "dev", "sensor_device")).await;
    assert_eq!(dev.subscribe("sensors/#", QoS::AtLeastOnce).await, vec![1]);
    assert_eq!(
        dev.subscribe("sensors/+/temp", QoS::AtLeastOnce).await,
        vec![1]
    );
    assert_eq!(
        dev.subscribe("commands/device_123", QoS::AtLeastOnce).await,
        vec![1]
    );
    for denied in [
        "#",
        "commands/#",
        "commands/+",
        "commands/device_124",
        "$SYS/#",
    ] {
        assert_eq!(
            dev.subscribe(denied, QoS::AtLeastOnce).await,
            vec![reason::NOT_AUTHORIZED],
            "{denied}"
        );
    }
    // Publishing under sensors/ works (and comes back once: two overlapping subscriptions
    // of one session make one delivery).
    dev.send(Packet::Publish(publish(
        "sensors/a/temp",
        b"21",
        QoS::AtLeastOnce,
        false,
        1,
    )))
    .await;
    let mut acked = false;
    let mut delivered = 0;
    while !(acked && delivered == 1) {
        match dev.recv().await {
            Packet::PubAck(a) => {
                assert_eq!(a.reason, 0);
                acked = true;
            }
            Packet::Publish(p) => {
                assert_eq!(p.topic, "sensors/a/temp");
                dev.send(Packet::PubAck(Ack {
                    packet_id: p.packet_id,
                    ..Default::default()
                }))
                .await;
                delivered += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    // Read-only topic: not writable.
    dev.send(Packet::Publish(publish(
        "commands/device_123",
        b"x",
        QoS::AtLeastOnce,
        false,
        2,
    )))
    .await;
    match dev.recv().await {
        Packet::PubAck(a) => assert_eq!(a.reason, reason::NOT_AUTHORIZED),
        other => panic!("{other:?}"),
    }
    dev.send(Packet::Publish(publish(
        "other",
        b"x",
        QoS::ExactlyOnce,
        false,
        3,
    )))
    .await;
    match dev.recv().await {
        Packet::PubRec(a) => assert_eq!(a.reason, reason::NOT_AUTHORIZED),
        other => panic!("{other:?}"),
    }

    // 3.1.1: SUBACK 0x80 for a denied filter.
    let (mut v3, _) =
        Raw::connect_with(addr, as_user(Protocol::V311, "dev3", "sensor_device")).await;
    assert_eq!(v3.subscribe("#", QoS::AtMostOnce).await, vec![0x80]);
    assert_eq!(v3.subscribe("sensors/x", QoS::AtMostOnce).await, vec![0]);

    // Another user and an anonymous client get nothing.
    for connect in [
        as_user(Protocol::V5, "other", "someone"),
        connect_packet(Protocol::V5, "anon", true),
    ] {
        let (mut c, _) = Raw::connect_with(addr, connect).await;
        assert_eq!(
            c.subscribe("sensors/#", QoS::AtMostOnce).await,
            vec![reason::NOT_AUTHORIZED]
        );
        c.send(Packet::Publish(publish(
            "sensors/a",
            b"x",
            QoS::AtLeastOnce,
            false,
            4,
        )))
        .await;
        match c.recv().await {
            Packet::PubAck(a) => assert_eq!(a.reason, reason::NOT_AUTHORIZED),
            other => panic!("{other:?}"),
        }
    }
    assert!(
        server
            .broker
            .metrics
            .publishes_denied_total
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 4
    );
}

#[tokio::test]
async fn a_deny_inside_an_allowed_filter_is_checked_per_message_and_for_retained() {
    let acl = "topic write #\nuser reader\ntopic read a/#\ntopic deny a/secret\n";
    let (_d, _p, server) = acl_broker(acl).await;
    let addr = server.addr();
    let (mut publ, _) = Raw::connect_with(addr, as_user(Protocol::V5, "p", "writer")).await;
    publ.publish("a/secret", b"retained secret", QoS::AtLeastOnce, true, 1)
        .await;
    publ.publish("a/open", b"retained open", QoS::AtLeastOnce, true, 2)
        .await;
    let (mut r, _) = Raw::connect_with(addr, as_user(Protocol::V5, "r", "reader")).await;
    assert_eq!(r.subscribe("a/#", QoS::AtMostOnce).await, vec![0]);
    let first = r.recv_publish().await;
    assert_eq!(
        first.topic, "a/open",
        "the denied retained message is withheld"
    );
    publ.publish("a/secret", b"live secret", QoS::AtLeastOnce, false, 3)
        .await;
    publ.publish("a/open", b"live open", QoS::AtLeastOnce, false, 4)
        .await;
    let next = r.recv_publish().await;
    assert_eq!(&next.payload[..], b"live open");
    assert_eq!(
        r.subscribe("a/secret", QoS::AtMostOnce).await,
        vec![reason::NOT_AUTHORIZED]
    );
}

#[tokio::test]
async fn a_will_needs_write_access() {
    let (_d, _p, server) = acl_broker(FIELD_EXAMPLE).await;
    let mut c = as_user(Protocol::V5, "dev", "sensor_device");
    c.will = Some(LastWill {
        topic: "commands/device_123".into(),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    });
    let (_r, ack) = Raw::try_connect(server.addr(), c).await;
    assert_eq!(ack.code, reason::NOT_AUTHORIZED);
}

#[tokio::test]
async fn reload_revokes_live_subscriptions_and_a_bad_file_keeps_the_rules() {
    let (_d, path, server) = acl_broker(FIELD_EXAMPLE).await;
    let addr = server.addr();
    let (mut dev, _) = Raw::connect_with(addr, as_user(Protocol::V5, "dev", "sensor_device")).await;
    assert_eq!(
        dev.subscribe("commands/device_123", QoS::AtMostOnce).await,
        vec![0]
    );
    assert_eq!(dev.subscribe("sensors/#", QoS::AtMostOnce).await, vec![0]);
    let (mut ops, _) = Raw::connect(addr, Protocol::V5, "ops", true).await;

    // A broken file: refused, and it never opens everything.
    std::fs::write(
        &path,
        "user sensor_device\ntopic readwrite sensors/#\ntopik read x\n",
    )
    .unwrap();
    server.reload();
    assert_eq!(
        dev.subscribe("#", QoS::AtMostOnce).await,
        vec![reason::NOT_AUTHORIZED]
    );

    // The read rule for commands/device_123 is revoked (and anonymous ops may now write).
    std::fs::write(
        &path,
        "topic write commands/#\nuser sensor_device\ntopic readwrite sensors/#\n",
    )
    .unwrap();
    server.reload();
    ops.send(Packet::Publish(publish(
        "commands/device_123",
        b"cmd",
        QoS::AtMostOnce,
        false,
        0,
    )))
    .await;
    dev.publish("sensors/still", b"ok", QoS::AtMostOnce, false, 0)
        .await;
    let got = dev.recv_publish().await;
    assert_eq!(
        got.topic, "sensors/still",
        "the revoked subscription got nothing"
    );
    assert_eq!(
        server
            .broker
            .metrics
            .dropped_acl_total
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "removed from the router, not filtered per message"
    );
}
