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

/// Sends an acknowledgement of `kind` for `packet_id`.
async fn send_ack(c: &mut Raw, kind: fn(Ack) -> Packet, packet_id: u16) {
    c.send(kind(Ack {
        packet_id,
        ..Default::default()
    }))
    .await;
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
                    send_ack(&mut sub, Packet::PubRec, p.packet_id).await;
                    match sub.recv().await {
                        Packet::PubRel(r) => assert_eq!(r.packet_id, p.packet_id),
                        other => panic!("expected PUBREL, got {other:?}"),
                    }
                    send_ack(&mut sub, Packet::PubComp, p.packet_id).await;
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
        send_ack(&mut sub, Packet::PubAck, p.packet_id).await;
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
        send_ack(&mut sub, Packet::PubAck, again.packet_id).await;
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
        send_ack(&mut sub, Packet::PubRec, p.packet_id).await;
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
        send_ack(&mut sub, Packet::PubComp, p.packet_id).await;
        let second = sub.recv_publish().await;
        assert_eq!(&second.payload[..], b"second");
        send_ack(&mut sub, Packet::PubRec, second.packet_id).await;
        assert!(matches!(sub.recv().await, Packet::PubRel(_)));
        send_ack(&mut sub, Packet::PubComp, second.packet_id).await;
        // The publisher resends its PUBLISH (as a client does after reconnecting): a duplicate.
        let (mut publ, ack) = Raw::connect(addr, Protocol::V311, "pub", false).await;
        assert!(ack.session_present);
        let mut again = publish("q", b"second", QoS::ExactlyOnce, false, 7);
        again.dup = true;
        publ.send(Packet::Publish(again)).await;
        assert!(matches!(publ.recv().await, Packet::PubRec(_)));
        send_ack(&mut publ, Packet::PubRel, 7).await;
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
        dir.path().join(rookery_store::embedded::STORE_DIR),
        vec![0x5a; 8192],
    )
    .unwrap();
    let config = rookery_broker::Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        data_dir: dir.path().to_owned(),
        ..Default::default()
    };
    let err = rookery_broker::Server::start(config).await.err().unwrap();
    assert!(err.to_string().contains("rookery-store"), "{err}");
}

/// Publishes QoS 1 with MQTT 5.0 and returns the PUBACK's reason code, or `None` when no
/// PUBACK came within `wait`.
async fn puback_code(c: &mut Raw, topic: &str, packet_id: u16, wait: Duration) -> Option<u8> {
    c.send(Packet::Publish(publish(
        topic,
        b"m",
        QoS::AtLeastOnce,
        false,
        packet_id,
    )))
    .await;
    match c.recv_within(wait).await? {
        Packet::PubAck(a) => {
            assert_eq!(a.packet_id, packet_id);
            Some(a.reason)
        }
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_database_holds_then_refuses_persistent_messages_and_the_broker_recovers() {
    let pg = rookery_testkit::PostgresServer::start_private();
    let url = pg.database();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_owned();
    let server = start(move |c| {
        c.durability = DurabilityMode::Sync;
        c.data_dir = data;
        c.postgres_url = Some(url);
    })
    .await;
    let addr = server.addr();
    // A persistent subscriber, offline: what it is sent must be stored.
    let (mut p, _) = Raw::connect_with(addr, v5_persistent("p", 3600)).await;
    p.subscribe("f/#", QoS::AtLeastOnce).await;
    p.disconnect().await;
    // An online subscriber without a session: needs no store.
    let (mut online, _) = Raw::connect(addr, Protocol::V5, "online", true).await;
    online.subscribe("f/#", QoS::AtMostOnce).await;
    let (mut publ, _) = Raw::connect(addr, Protocol::V5, "pub", true).await;
    assert_eq!(puback_code(&mut publ, "f/before", 1, WAIT).await, Some(0));
    assert_eq!(&online.recv_publish().await.payload[..], b"m");

    tokio::task::block_in_place(|| pg.stop());
    // Accepted before the broker knows: its PUBACK waits for the commit.
    assert_eq!(
        puback_code(&mut publ, "f/held", 2, Duration::from_millis(500)).await,
        None
    );
    assert_eq!(&online.recv_publish().await.payload[..], b"m");
    // Once the store is known to fail, new persistent messages are refused, not acknowledged.
    // Each try from a new publisher: acknowledgements keep their order (MQTT 5.0
    // [MQTT-4.6.0-2]), so one held acknowledgement holds back every later one of its
    // connection, refusals included.
    let mut refused = None;
    let mut others = Vec::new();
    for id in 3..200u16 {
        let (mut other, _) = Raw::connect(addr, Protocol::V5, &format!("other{id}"), true).await;
        let topic = format!("f/try{id}");
        match puback_code(&mut other, &topic, id, Duration::from_millis(200)).await {
            Some(0x97) => {
                refused = Some(topic);
                break;
            }
            Some(code) => panic!("unexpected PUBACK reason {code:#x}"),
            // Accepted before the failure was known, held like the first one.
            None => others.push((other, topic)),
        }
    }
    let refused = refused.expect("the broker never refused while the database was down");
    // Online traffic without the store goes on.
    publ.send(Packet::Publish(publish(
        "f/qos0",
        b"live",
        QoS::AtMostOnce,
        false,
        0,
    )))
    .await;
    loop {
        let m = online.recv_publish().await;
        if &m.payload[..] == b"live" {
            break;
        }
    }

    tokio::task::block_in_place(|| pg.start());
    // The held message commits and is acknowledged; new ones are taken again.
    let mut held_acked = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !held_acked {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the held PUBACK never came"
        );
        if let Some(Packet::PubAck(a)) = publ.recv_within(Duration::from_millis(200)).await {
            held_acked = a.packet_id == 2 && a.reason == 0;
        }
    }
    for (other, _) in &mut others {
        assert!(matches!(other.recv().await, Packet::PubAck(a) if a.reason == 0));
    }
    assert_eq!(puback_code(&mut publ, "f/after", 500, WAIT).await, Some(0));
    // The persistent subscriber gets everything acknowledged, in order, and never the refused
    // message.
    let (mut p, ack) = Raw::connect_with(addr, v5_persistent("p", 3600)).await;
    assert!(ack.session_present);
    let mut topics = Vec::new();
    while let Some(Packet::Publish(m)) = p.recv_within(Duration::from_millis(500)).await {
        topics.push(m.topic.to_string());
        send_ack(&mut p, Packet::PubAck, m.packet_id).await;
    }
    let mut expected = vec!["f/before".to_owned(), "f/held".to_owned()];
    expected.extend(others.iter().map(|(_, t)| t.clone()));
    expected.push("f/after".into());
    assert_eq!(topics, expected);
    assert!(!topics.contains(&refused));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_redis_holds_session_changes_until_it_is_back() {
    let redis = rookery_testkit::RedisServer::start_private();
    let url = redis.url().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_owned();
    let server = start(move |c| {
        c.durability = DurabilityMode::Sync;
        c.data_dir = data;
        c.redis_url = Some(url);
    })
    .await;
    let addr = server.addr();
    let (mut online, _) = Raw::connect(addr, Protocol::V5, "online", true).await;
    online.subscribe("s/#", QoS::AtMostOnce).await;

    tokio::task::block_in_place(|| redis.stop());
    // A persistent session's SUBSCRIBE is acknowledged only once Redis has it.
    let (mut p, _) = Raw::connect_with(addr, v5_persistent("p", 3600)).await;
    p.send(Packet::Subscribe(rookery_codec::Subscribe {
        packet_id: 5,
        filters: vec![rookery_codec::SubscribeFilter {
            filter: "s/#".into(),
            options: rookery_codec::SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        }],
        properties: Default::default(),
    }))
    .await;
    assert!(p.recv_within(Duration::from_millis(700)).await.is_none());
    // Meanwhile traffic that needs no store flows.
    let (mut publ, _) = Raw::connect(addr, Protocol::V5, "pub", true).await;
    publ.send(Packet::Publish(publish(
        "s/x",
        b"live",
        QoS::AtMostOnce,
        false,
        0,
    )))
    .await;
    assert_eq!(&online.recv_publish().await.payload[..], b"live");

    tokio::task::block_in_place(|| redis.start());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no SUBACK after Redis came back"
        );
        match p.recv_within(Duration::from_millis(200)).await {
            // The subscription works before it is acknowledged (MQTT 5.0 section 3.8.4).
            Some(Packet::Publish(_)) | None => {}
            Some(Packet::SubAck(a)) => {
                assert_eq!(a.packet_id, 5);
                break;
            }
            Some(other) => panic!("expected SUBACK, got {other:?}"),
        }
    }
    // And the subscription it acknowledged is stored: it survives a restart.
    p.disconnect().await;
    server.shutdown().await;
    let data = dir.path().to_owned();
    let url = redis.url().to_owned();
    let server = start(move |c| {
        c.durability = DurabilityMode::Sync;
        c.data_dir = data;
        c.redis_url = Some(url);
    })
    .await;
    let (_, ack) = Raw::connect_with(server.addr(), v5_persistent("p", 3600)).await;
    assert!(ack.session_present);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_waiting_for_a_slow_store_are_bounded_by_the_receive_maximum() {
    let pg = rookery_testkit::PostgresServer::start_private();
    let url = pg.database();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_owned();
    let server = start(move |c| {
        c.durability = DurabilityMode::Sync;
        c.data_dir = data;
        c.postgres_url = Some(url);
        c.receive_maximum = 5;
    })
    .await;
    let addr = server.addr();
    let (mut p, _) = Raw::connect_with(addr, v5_persistent("p", 3600)).await;
    p.subscribe("b/#", QoS::AtLeastOnce).await;
    p.disconnect().await;
    // MQTT 5.0: a publish refused meanwhile gets 0x97 in its place, not a closed connection.
    let (mut publ, _) = Raw::connect(addr, Protocol::V5, "pub", true).await;
    tokio::task::block_in_place(|| pg.stop());
    // Five held acknowledgements fill the window: the broker stops reading this client, so
    // even its PINGREQ waits.
    for id in 1..=5u16 {
        publ.send(Packet::Publish(publish(
            "b/x",
            b"m",
            QoS::AtLeastOnce,
            false,
            id,
        )))
        .await;
    }
    publ.send(Packet::PingReq).await;
    if let Some(p) = publ.recv_within(Duration::from_millis(700)).await {
        panic!("got {p:?} while five acknowledgements wait for the store");
    }
    tokio::task::block_in_place(|| pg.start());
    // Then everything comes: the acknowledgements in order. The PINGRESP may come as soon as
    // one acknowledgement frees a place in the window (the committer's retry can carry the
    // first publish alone), and MQTT does not order PINGRESP against PUBACKs.
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while got.len() < 6 {
        assert!(tokio::time::Instant::now() < deadline, "got: {got:?}");
        match publ.recv_within(Duration::from_millis(200)).await {
            Some(Packet::PubAck(a)) => got.push(format!("PUBACK {}", a.packet_id)),
            Some(Packet::PingResp) => got.push("PINGRESP".into()),
            Some(other) => panic!("unexpected {other:?}"),
            None => {}
        }
    }
    let acks: Vec<&str> = got
        .iter()
        .map(String::as_str)
        .filter(|p| *p != "PINGRESP")
        .collect();
    assert_eq!(
        acks,
        ["PUBACK 1", "PUBACK 2", "PUBACK 3", "PUBACK 4", "PUBACK 5"],
        "got: {got:?}"
    );
    assert_ne!(
        got[0], "PINGRESP",
        "the ping was answered before any acknowledgement"
    );
    server.shutdown().await;
}

fn with_will(id: &str, delay: u32) -> rookery_codec::Connect {
    let mut c = v5_persistent(id, 3600);
    c.will = Some(rookery_codec::LastWill {
        topic: format!("will/{id}").into(),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: rookery_codec::WillProperties {
            will_delay_interval: Some(delay),
            ..Default::default()
        },
    });
    c
}

#[tokio::test]
async fn wills_with_a_delay_follow_their_rules_after_a_restart() {
    for place in Place::all() {
        let server = start_on(&place, DurabilityMode::Sync).await;
        let addr = server.addr();
        // Connected when the broker stops: their wills wait in the stored sessions.
        let (_a, _) = Raw::connect_with(addr, with_will("a", 1)).await;
        let (_b, _) = Raw::connect_with(addr, with_will("b", 2)).await;
        server.shutdown().await;

        let server = start_on(&place, DurabilityMode::Sync).await;
        let addr = server.addr();
        let (mut watcher, _) = Raw::connect(addr, Protocol::V5, "watcher", true).await;
        watcher.subscribe("will/#", QoS::AtLeastOnce).await;
        // b comes back within its delay: its will is not sent.
        let (_b, ack) = Raw::connect_with(addr, with_will("b", 2)).await;
        assert!(ack.session_present, "{}", place.name());
        let will = watcher.recv_publish().await;
        assert_eq!(&will.topic[..], "will/a", "{}", place.name());
        watcher.expect_silence(Duration::from_millis(2500)).await;
        server.shutdown().await;
    }
}

#[tokio::test]
async fn with_redis_and_postgres_another_node_takes_everything_over() {
    // The node's disk is gone: a new one starts on an empty data directory with the same
    // Redis and PostgreSQL, and finds every session, queue and retained message.
    let first = Place::servers();
    let server = first.start(DurabilityMode::Sync).await;
    let addr = server.addr();
    let (mut sub, _) = Raw::connect(addr, Protocol::V311, "device", false).await;
    sub.subscribe("cmd/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let (mut publ, _) = Raw::connect(addr, Protocol::V311, "app", true).await;
    publ.publish("cmd/1", b"open", QoS::AtLeastOnce, false, 1)
        .await;
    publ.publish("state", b"on", QoS::AtLeastOnce, true, 2)
        .await;
    publ.disconnect().await;
    server.shutdown().await;

    let second = Place {
        dir: tempfile::tempdir().unwrap(),
        redis: first.redis.clone(),
        postgres: first.postgres.clone(),
    };
    drop(first);
    let server = second.start(DurabilityMode::Sync).await;
    let addr = server.addr();
    let (mut sub, ack) = Raw::connect(addr, Protocol::V311, "device", false).await;
    assert!(ack.session_present);
    let m = sub.recv_publish().await;
    assert_eq!((&m.topic[..], &m.payload[..]), ("cmd/1", &b"open"[..]));
    send_ack(&mut sub, Packet::PubAck, m.packet_id).await;
    let (mut other, _) = Raw::connect(addr, Protocol::V311, "other", true).await;
    other.subscribe("state", QoS::AtMostOnce).await;
    assert_eq!(&other.recv_publish().await.payload[..], b"on");
    server.shutdown().await;
}

#[tokio::test]
async fn a_will_due_at_restart_reaches_sessions_restored_after_its_own() {
    for place in Place::all() {
        let server = start_on(&place, DurabilityMode::Sync).await;
        let addr = server.addr();
        // "watcher" sorts after "dying": restored after it.
        let (mut watcher, _) = Raw::connect(addr, Protocol::V311, "watcher", false).await;
        watcher.subscribe("will/#", QoS::AtLeastOnce).await;
        watcher.disconnect().await;
        // The will waits for the session's end (its delay is longer than the expiry), and the
        // session ends while the broker is down.
        let mut dying = with_will("dying", 3600);
        dying.properties.session_expiry_interval = Some(1);
        let (_dying, _) = Raw::connect_with(addr, dying).await;
        server.shutdown().await;
        tokio::time::sleep(Duration::from_millis(1500)).await;

        let server = start_on(&place, DurabilityMode::Sync).await;
        let (mut watcher, ack) =
            Raw::connect(server.addr(), Protocol::V311, "watcher", false).await;
        assert!(ack.session_present);
        let will = watcher.recv_publish().await;
        assert_eq!(&will.topic[..], "will/dying", "{}", place.name());
        server.shutdown().await;
    }
}
