//! Durable state on the embedded store: what survives a restart of the broker on the same
//! data directory (graceful here; `durability_kill.rs` kills the process).

use std::time::Duration;

use rookery_broker::config::DurabilityMode;
use rookery_codec::{Ack, ConnectProperties, Packet, Protocol, QoS};

use crate::support::*;

/// Where the state lives: the embedded store alone, or Redis (sessions) and PostgreSQL
/// (retained, queues) beside it. Real servers, shared by the test run (rookery-testkit).
struct Place {
    dir: tempfile::TempDir,
    redis: Option<(String, String)>,
    postgres: Option<String>,
}

impl Place {
    fn all() -> [Place; 2] {
        [Place::embedded(), Place::servers()]
    }

    fn embedded() -> Place {
        Place {
            dir: tempfile::tempdir().unwrap(),
            redis: None,
            postgres: None,
        }
    }

    fn servers() -> Place {
        let redis = rookery_testkit::RedisServer::shared();
        let postgres = rookery_testkit::PostgresServer::shared();
        Place {
            dir: tempfile::tempdir().unwrap(),
            redis: Some((
                redis.url().to_owned(),
                rookery_testkit::RedisServer::prefix(),
            )),
            postgres: Some(postgres.database()),
        }
    }

    fn name(&self) -> &'static str {
        if self.redis.is_some() {
            "redis+postgres"
        } else {
            "embedded"
        }
    }

    async fn start(&self, mode: DurabilityMode) -> rookery_broker::Server {
        let dir = self.dir.path().to_owned();
        let redis = self.redis.clone();
        let postgres = self.postgres.clone();
        start(move |c| {
            c.durability = mode;
            c.data_dir = dir;
            if let Some((url, cluster)) = redis {
                c.redis_url = Some(url);
                c.cluster_name = cluster;
            }
            c.postgres_url = postgres;
        })
        .await
    }
}

async fn start_on(place: &Place, mode: DurabilityMode) -> rookery_broker::Server {
    place.start(mode).await
}

fn v5_persistent(id: &str, expiry: u32) -> rookery_codec::Connect {
    let mut c = connect_packet(Protocol::V5, id, false);
    c.properties = ConnectProperties {
        session_expiry_interval: Some(expiry),
        ..Default::default()
    };
    c
}

#[tokio::test]
async fn queued_messages_subscriptions_and_retained_survive_a_restart() {
    for (place, mode) in Place::all()
        .into_iter()
        .zip([DurabilityMode::Sync, DurabilityMode::Async])
        .chain(
            Place::all()
                .into_iter()
                .zip([DurabilityMode::Async, DurabilityMode::Sync]),
        )
    {
        let what = format!("{} {mode:?}", place.name());
        let server = start_on(&place, mode).await;
        let addr = server.addr();
        let (mut sub, _) = Raw::connect(addr, Protocol::V311, "sub", false).await;
        assert_eq!(sub.subscribe("d/#", QoS::ExactlyOnce).await, vec![2]);
        sub.disconnect().await;
        let (mut publ, _) = Raw::connect(addr, Protocol::V311, "pub", true).await;
        publ.publish("d/r", b"retained", QoS::AtLeastOnce, true, 1)
            .await;
        for i in 0..5u16 {
            publ.publish(
                &format!("d/{i}"),
                format!("m{i}").as_bytes(),
                QoS::AtLeastOnce,
                false,
                10 + i,
            )
            .await;
        }
        publ.publish("d/q2", b"exactly", QoS::ExactlyOnce, false, 20)
            .await;
        publ.disconnect().await;
        server.shutdown().await;

        let server = start_on(&place, mode).await;
        let addr = server.addr();
        let (mut sub, ack) = Raw::connect(addr, Protocol::V311, "sub", false).await;
        assert!(ack.session_present, "{what}");
        let mut got = Vec::new();
        for _ in 0..7 {
            let p = sub.recv_publish().await;
            got.push(String::from_utf8(p.payload.to_vec()).unwrap());
            match p.qos {
                QoS::AtLeastOnce => {
                    sub.send(Packet::PubAck(Ack {
                        packet_id: p.packet_id,
                        ..Default::default()
                    }))
                    .await
                }
                QoS::ExactlyOnce => {
                    sub.send(Packet::PubRec(Ack {
                        packet_id: p.packet_id,
                        ..Default::default()
                    }))
                    .await;
                    match sub.recv().await {
                        Packet::PubRel(r) => assert_eq!(r.packet_id, p.packet_id),
                        other => panic!("expected PUBREL, got {other:?}"),
                    }
                    sub.send(Packet::PubComp(Ack {
                        packet_id: p.packet_id,
                        ..Default::default()
                    }))
                    .await;
                }
                QoS::AtMostOnce => {}
            }
        }
        assert_eq!(
            got,
            ["retained", "m0", "m1", "m2", "m3", "m4", "exactly"],
            "{what}"
        );
        sub.expect_silence(Duration::from_millis(200)).await;
        // The subscription came back too: a new message is delivered.
        let (mut publ, _) = Raw::connect(addr, Protocol::V311, "pub", true).await;
        publ.publish("d/new", b"after", QoS::AtLeastOnce, false, 1)
            .await;
        assert_eq!(&sub.recv_publish().await.payload[..], b"after");
        // And the retained message is there for a new subscriber.
        let (mut other, _) = Raw::connect(addr, Protocol::V311, "other", true).await;
        other.subscribe("d/r", QoS::AtMostOnce).await;
        assert_eq!(&other.recv_publish().await.payload[..], b"retained");
        server.shutdown().await;
    }
}

#[tokio::test]
async fn acknowledged_messages_are_not_delivered_again_after_a_restart() {
    for place in Place::all() {
        let server = start_on(&place, DurabilityMode::Sync).await;
        let addr = server.addr();
        let (mut sub, _) = Raw::connect(addr, Protocol::V311, "sub", false).await;
        sub.subscribe("t", QoS::AtLeastOnce).await;
        let (mut publ, _) = Raw::connect(addr, Protocol::V311, "pub", true).await;
        publ.publish("t", b"one", QoS::AtLeastOnce, false, 1).await;
        let p = sub.recv_publish().await;
        sub.send(Packet::PubAck(Ack {
            packet_id: p.packet_id,
            ..Default::default()
        }))
        .await;
        // Unacknowledged: comes back.
        publ.publish("t", b"two", QoS::AtLeastOnce, false, 2).await;
        let p2 = sub.recv_publish().await;
        assert_eq!(&p2.payload[..], b"two");
        // Let the PUBACK of "one" reach the broker before it stops.
        publ.publish("t2", b"x", QoS::AtLeastOnce, false, 3).await;
        server.shutdown().await;

        let server = start_on(&place, DurabilityMode::Sync).await;
        let (mut sub, ack) = Raw::connect(server.addr(), Protocol::V311, "sub", false).await;
        assert!(ack.session_present);
        let again = sub.recv_publish().await;
        assert_eq!(&again.payload[..], b"two");
        assert!(
            again.dup,
            "a message in flight before the restart is resent with DUP"
        );
        assert_eq!(again.packet_id, p2.packet_id, "with the same packet id");
        sub.send(Packet::PubAck(Ack {
            packet_id: again.packet_id,
            ..Default::default()
        }))
        .await;
        sub.expect_silence(Duration::from_millis(300)).await;
        server.shutdown().await;
    }
}

#[tokio::test]
async fn qos2_state_both_ways_survives_a_restart() {
    for place in Place::all() {
        let server = start_on(&place, DurabilityMode::Sync).await;
        let addr = server.addr();
        let (mut sub, _) = Raw::connect(addr, Protocol::V311, "sub", false).await;
        sub.subscribe("q", QoS::ExactlyOnce).await;
        // Outgoing: PUBREC sent by the subscriber, PUBCOMP not yet.
        let (mut publ, _) = Raw::connect(addr, Protocol::V311, "pub", false).await;
        publ.publish("q", b"first", QoS::ExactlyOnce, false, 1)
            .await;
        let p = sub.recv_publish().await;
        sub.send(Packet::PubRec(Ack {
            packet_id: p.packet_id,
            ..Default::default()
        }))
        .await;
        assert!(matches!(sub.recv().await, Packet::PubRel(_)));
        // Incoming: the publisher's second message got PUBREC, PUBREL not yet sent.
        publ.send(Packet::Publish(publish(
            "q",
            b"second",
            QoS::ExactlyOnce,
            false,
            7,
        )))
        .await;
        assert!(matches!(publ.recv().await, Packet::PubRec(_)));
        server.shutdown().await;

        let server = start_on(&place, DurabilityMode::Sync).await;
        let addr = server.addr();
        let (mut sub, ack) = Raw::connect(addr, Protocol::V311, "sub", false).await;
        assert!(ack.session_present);
        // PUBREL again, never the first PUBLISH; then the second message once.
        match sub.recv().await {
            Packet::PubRel(r) => assert_eq!(r.packet_id, p.packet_id),
            other => panic!("expected PUBREL, got {other:?}"),
        }
        sub.send(Packet::PubComp(Ack {
            packet_id: p.packet_id,
            ..Default::default()
        }))
        .await;
        let second = sub.recv_publish().await;
        assert_eq!(&second.payload[..], b"second");
        sub.send(Packet::PubRec(Ack {
            packet_id: second.packet_id,
            ..Default::default()
        }))
        .await;
        assert!(matches!(sub.recv().await, Packet::PubRel(_)));
        sub.send(Packet::PubComp(Ack {
            packet_id: second.packet_id,
            ..Default::default()
        }))
        .await;
        // The publisher resends its PUBLISH (as a client does after reconnecting): a duplicate.
        let (mut publ, ack) = Raw::connect(addr, Protocol::V311, "pub", false).await;
        assert!(ack.session_present);
        let mut again = publish("q", b"second", QoS::ExactlyOnce, false, 7);
        again.dup = true;
        publ.send(Packet::Publish(again)).await;
        assert!(matches!(publ.recv().await, Packet::PubRec(_)));
        publ.send(Packet::PubRel(Ack {
            packet_id: 7,
            ..Default::default()
        }))
        .await;
        match publ.recv().await {
            Packet::PubComp(c) => assert_eq!(c.reason, 0),
            other => panic!("expected PUBCOMP, got {other:?}"),
        }
        sub.expect_silence(Duration::from_millis(300)).await;
        server.shutdown().await;
    }
}

#[tokio::test]
async fn session_expiry_counts_from_the_disconnect_across_a_restart() {
    for place in Place::all() {
        let server = start_on(&place, DurabilityMode::Sync).await;
        let addr = server.addr();
        let (mut short, _) = Raw::connect_with(addr, v5_persistent("short", 1)).await;
        short.subscribe("x", QoS::AtLeastOnce).await;
        short.disconnect().await;
        let (mut long, _) = Raw::connect_with(addr, v5_persistent("long", 3600)).await;
        long.subscribe("x", QoS::AtLeastOnce).await;
        long.disconnect().await;
        server.shutdown().await;
        tokio::time::sleep(Duration::from_millis(1500)).await;

        let server = start_on(&place, DurabilityMode::Sync).await;
        let addr = server.addr();
        let (_, ack) = Raw::connect_with(addr, v5_persistent("short", 1)).await;
        assert!(!ack.session_present, "expired while the broker was down");
        let (_, ack) = Raw::connect_with(addr, v5_persistent("long", 3600)).await;
        assert!(ack.session_present);
        server.shutdown().await;
    }
}

#[tokio::test]
async fn a_clean_start_or_an_unsubscribe_is_durable_too() {
    for place in Place::all() {
        let server = start_on(&place, DurabilityMode::Sync).await;
        let addr = server.addr();
        let (mut a, _) = Raw::connect(addr, Protocol::V311, "a", false).await;
        a.subscribe("keep", QoS::AtLeastOnce).await;
        a.subscribe("drop", QoS::AtLeastOnce).await;
        a.send(Packet::Unsubscribe(rookery_codec::Unsubscribe {
            packet_id: 9,
            filters: vec!["drop".into()],
            user_properties: Vec::new(),
        }))
        .await;
        assert!(matches!(a.recv().await, Packet::UnsubAck(_)));
        a.disconnect().await;
        let (mut b, _) = Raw::connect(addr, Protocol::V311, "b", false).await;
        b.subscribe("keep", QoS::AtLeastOnce).await;
        b.disconnect().await;
        let (mut publ, _) = Raw::connect(addr, Protocol::V311, "pub", true).await;
        publ.publish("keep", b"k", QoS::AtLeastOnce, false, 1).await;
        publ.publish("drop", b"d", QoS::AtLeastOnce, false, 2).await;
        // b comes back clean: its session and queue are gone for good.
        let (b, ack) = Raw::connect(addr, Protocol::V311, "b", true).await;
        assert!(!ack.session_present);
        b.disconnect().await;
        server.shutdown().await;

        let server = start_on(&place, DurabilityMode::Sync).await;
        let addr = server.addr();
        let (mut a, ack) = Raw::connect(addr, Protocol::V311, "a", false).await;
        assert!(ack.session_present);
        assert_eq!(&a.recv_publish().await.payload[..], b"k");
        a.expect_silence(Duration::from_millis(200)).await;
        let (_, ack) = Raw::connect(addr, Protocol::V311, "b", false).await;
        assert!(!ack.session_present);
        server.shutdown().await;
    }
}

#[tokio::test]
async fn unreadable_data_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(rookery_store::embedded::FILE_NAME),
        vec![0x5a; 8192],
    )
    .unwrap();
    let config = rookery_broker::Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        data_dir: dir.path().to_owned(),
        ..Default::default()
    };
    let err = rookery_broker::Server::start(config).await.err().unwrap();
    assert!(err.to_string().contains("rookery.redb"), "{err}");
}
