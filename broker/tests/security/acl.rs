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
    server.reload().await;
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
    server.reload().await;
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

#[tokio::test]
async fn shared_subscriptions_are_checked_and_the_group_picks_a_member_that_may_read() {
    let acl = "topic write #\nuser a\ntopic read jobs/#\ntopic deny jobs/secret\nuser b\ntopic read jobs/#\nuser c\ntopic read other\n";
    let (_d, _p, server) = acl_broker(acl).await;
    let addr = server.addr();
    let (mut a, _) = Raw::connect_with(addr, as_user(Protocol::V5, "a", "a")).await;
    let (mut b, _) = Raw::connect_with(addr, as_user(Protocol::V5, "b", "b")).await;
    let (mut c, _) = Raw::connect_with(addr, as_user(Protocol::V5, "c", "c")).await;
    assert_eq!(
        a.subscribe("$share/g/jobs/#", QoS::AtMostOnce).await,
        vec![0]
    );
    assert_eq!(
        b.subscribe("$share/g/jobs/#", QoS::AtMostOnce).await,
        vec![0]
    );
    assert_eq!(
        c.subscribe("$share/g/jobs/#", QoS::AtMostOnce).await,
        vec![reason::NOT_AUTHORIZED]
    );
    let (mut p, _) = Raw::connect_with(addr, as_user(Protocol::V5, "p", "writer")).await;
    for i in 0..6u16 {
        p.publish(
            "jobs/secret",
            &i.to_be_bytes(),
            QoS::AtLeastOnce,
            false,
            i + 1,
        )
        .await;
    }
    // Every secret job reaches b, the member that may read it, whatever the round robin says.
    for _ in 0..6 {
        assert_eq!(b.recv_publish().await.topic, "jobs/secret");
    }
    a.expect_silence(std::time::Duration::from_millis(200))
        .await;
}

#[tokio::test]
async fn a_topic_alias_cannot_reach_a_forbidden_topic() {
    let (_d, _p, server) = acl_broker(FIELD_EXAMPLE).await;
    let (mut dev, _) =
        Raw::connect_with(server.addr(), as_user(Protocol::V5, "dev", "sensor_device")).await;
    let mut first = publish("commands/device_123", b"x", QoS::AtLeastOnce, false, 1);
    first.properties.topic_alias = Some(3);
    dev.send(Packet::Publish(first)).await;
    match dev.recv().await {
        Packet::PubAck(a) => assert_eq!(a.reason, reason::NOT_AUTHORIZED),
        other => panic!("{other:?}"),
    }
    let mut again = publish("", b"y", QoS::AtLeastOnce, false, 2);
    again.properties.topic_alias = Some(3);
    dev.send(Packet::Publish(again)).await;
    match dev.recv().await {
        Packet::PubAck(a) => assert_eq!(a.reason, reason::NOT_AUTHORIZED),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn v311_denied_publishes_complete_their_flows_and_go_nowhere() {
    let (_d, _p, server) = acl_broker(&format!("topic read #\n{FIELD_EXAMPLE}")).await;
    let addr = server.addr();
    let (mut watcher, _) = Raw::connect(addr, Protocol::V311, "watch", true).await;
    assert_eq!(watcher.subscribe("#", QoS::ExactlyOnce).await, vec![2]);
    let (mut dev, _) =
        Raw::connect_with(addr, as_user(Protocol::V311, "dev", "sensor_device")).await;
    // QoS 1 and QoS 2 complete normally (3.1.1 has no code for "not authorized")...
    dev.publish("commands/device_123", b"q1", QoS::AtLeastOnce, false, 1)
        .await;
    dev.publish("commands/device_123", b"q2", QoS::ExactlyOnce, false, 2)
        .await;
    dev.publish("commands/device_123", b"q0", QoS::AtMostOnce, false, 0)
        .await;
    // ...and nothing is delivered.
    watcher
        .expect_silence(std::time::Duration::from_millis(300))
        .await;
    dev.publish("sensors/ok", b"fine", QoS::AtLeastOnce, false, 3)
        .await;
    assert_eq!(watcher.recv_publish().await.topic, "sensors/ok");
}

#[tokio::test]
async fn wills_follow_the_acl_in_force() {
    let acl = "topic read #\nuser dev\ntopic write status/#\nuser partial\ntopic read status/#\ntopic deny status/private\n";
    let (_d, path, server) = acl_broker(acl).await;
    let addr = server.addr();
    let (mut partial, _) =
        Raw::connect_with(addr, as_user(Protocol::V5, "partial", "partial")).await;
    assert_eq!(
        partial.subscribe("status/#", QoS::AtMostOnce).await,
        vec![0]
    );
    let (mut everyone, _) = Raw::connect(addr, Protocol::V5, "everyone", true).await;
    assert_eq!(
        everyone.subscribe("status/#", QoS::AtMostOnce).await,
        vec![0]
    );

    let with_will = |id: &str, topic: &str| {
        let mut c = as_user(Protocol::V5, id, "dev");
        c.will = Some(LastWill {
            topic: topic.into(),
            payload: bytes::Bytes::from_static(b"gone"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
        });
        c
    };
    // A will on a topic `partial` may not read reaches only `everyone`.
    let (d1, _) = Raw::connect_with(addr, with_will("d1", "status/private")).await;
    drop(d1);
    assert_eq!(everyone.recv_publish().await.topic, "status/private");
    partial
        .expect_silence(std::time::Duration::from_millis(200))
        .await;

    // A will whose topic is revoked after CONNECT is not published.
    let (d2, _) = Raw::connect_with(addr, with_will("d2", "status/d2")).await;
    std::fs::write(&path, "topic read #\nuser dev\ntopic write other/#\n").unwrap();
    server.reload().await;
    drop(d2);
    everyone
        .expect_silence(std::time::Duration::from_millis(300))
        .await;
}

#[tokio::test]
async fn the_poll_reloads_the_acl_without_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("acl");
    std::fs::write(&path, "topic readwrite a/#\n").unwrap();
    let p = path.clone();
    let server = start(|c| {
        c.acl_file = Some(p);
        c.reload_interval_secs = 1;
    })
    .await;
    let (mut c, _) = Raw::connect(server.addr(), Protocol::V5, "c", true).await;
    assert_eq!(
        c.subscribe("b/1", QoS::AtMostOnce).await,
        vec![reason::NOT_AUTHORIZED]
    );
    std::fs::write(&path, "topic readwrite a/#\ntopic readwrite b/#\n").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while c.subscribe("b/1", QoS::AtMostOnce).await != vec![0] {
        assert!(
            std::time::Instant::now() < deadline,
            "ACL not reloaded by the poll"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
