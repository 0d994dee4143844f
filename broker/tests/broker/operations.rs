//! Operations: `/metrics` against real traffic, health and readiness, `$SYS`, rate limits, the
//! memory high-water mark, configuration reload and the admin API.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rookery_broker::Config;
use rookery_codec::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

async fn start_with_metrics(
    tweak: impl FnOnce(&mut Config),
) -> (rookery_broker::Server, SocketAddr) {
    let server = start(|c| {
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        tweak(c);
    })
    .await;
    let addr = server.metrics_addr.unwrap();
    (server, addr)
}

#[tokio::test]
async fn metrics_count_real_traffic() {
    let (server, metrics) = start_with_metrics(|_| {}).await;
    let before = scrape(metrics).await;
    let (mut sub, _) = Raw::connect(server.addr(), Protocol::V5, "sub", true).await;
    sub.subscribe("t/#", QoS::AtLeastOnce).await;
    let (mut publ, _) = Raw::connect(server.addr(), Protocol::V311, "pub", true).await;
    const N: u16 = 40;
    for i in 1..=N {
        publ.publish("t/x", b"0123456789", QoS::AtLeastOnce, false, i)
            .await;
    }
    for _ in 0..N {
        let p = sub.recv_publish().await;
        sub.send(Packet::PubAck(Ack {
            packet_id: p.packet_id,
            ..Default::default()
        }))
        .await;
    }
    // A refused CONNECT (protocol level 9) counts under its reason.
    let mut bad = TcpStream::connect(server.addr()).await.unwrap();
    bad.write_all(&[0x10, 0x0c, 0, 4, b'M', b'Q', b'T', b'T', 9, 2, 0, 60, 0, 0])
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(WAIT, bad.read_to_end(&mut sink)).await;

    let n = f64::from(N);
    let mut after = scrape(metrics).await;
    // Counters move with connections' flushes: wait until the last acknowledgement is in.
    let deadline = Instant::now() + WAIT;
    while value(&after, "rookery_inflight_messages") != 0.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        after = scrape(metrics).await;
    }
    let moved = |key: &str| value(&after, key) - before.get(key).copied().unwrap_or(0.0);
    assert_eq!(moved("rookery_messages_received_total{qos=\"1\"}"), n);
    assert_eq!(moved("rookery_messages_sent_total{qos=\"1\"}"), n);
    assert_eq!(moved("rookery_messages_received_total{qos=\"0\"}"), 0.0);
    assert!(moved("rookery_bytes_received_total") >= n * 15.0);
    assert_eq!(
        moved("rookery_payload_bytes_received_total{qos=\"1\"}"),
        n * 10.0
    );
    assert_eq!(
        moved("rookery_payload_bytes_sent_total{qos=\"1\"}"),
        n * 10.0
    );
    assert_eq!(moved("rookery_payload_bytes_sent_total{qos=\"0\"}"), 0.0);
    assert_eq!(
        value(
            &after,
            "rookery_connections{listener=\"mqtt\",protocol=\"5.0\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "rookery_connections{listener=\"mqtt\",protocol=\"3.1.1\"}"
        ),
        1.0
    );
    assert_eq!(
        moved("rookery_connections_accepted_total{listener=\"mqtt\",protocol=\"3.1.1\"}"),
        1.0
    );
    assert_eq!(
        moved("rookery_connection_attempts_total{listener=\"mqtt\"}"),
        3.0
    );
    assert_eq!(
        moved("rookery_connects_refused_total{reason=\"unsupported_protocol\"}"),
        1.0
    );
    assert_eq!(value(&after, "rookery_subscriptions"), 1.0);
    assert_eq!(value(&after, "rookery_sessions{state=\"online\"}"), 2.0);
    assert_eq!(value(&after, "rookery_inflight_messages"), 0.0);
    assert_eq!(moved("rookery_delivery_latency_seconds_count"), n);
    assert_eq!(
        value(
            &after,
            "rookery_delivery_latency_seconds_bucket{le=\"+Inf\"}"
        ),
        value(&after, "rookery_delivery_latency_seconds_count")
    );
    assert!(value(&after, "process_resident_memory_bytes") > 1e6);
    assert_eq!(value(&after, "rookery_ready"), 1.0);

    // Disconnecting is counted too.
    publ.disconnect().await;
    eventually(|| server.broker.metrics.clients_connected() == 1).await;
    let last = scrape(metrics).await;
    assert_eq!(
        value(
            &last,
            "rookery_connections{listener=\"mqtt\",protocol=\"3.1.1\"}"
        ),
        0.0
    );
    server.shutdown().await;
}

#[tokio::test]
async fn openmetrics_is_served_when_asked_for() {
    let (server, metrics) = start_with_metrics(|_| {}).await;
    let (status, body) = http(
        metrics,
        "GET",
        "/metrics",
        &[("Accept", "application/openmetrics-text; version=1.0.0")],
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        body.contains("# TYPE rookery_messages_received counter"),
        "{body}"
    );
    assert!(body.contains("# EOF"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_answer_and_readiness_follows_the_store() {
    let pg = rookery_testkit::PostgresServer::start_private();
    let url = pg.database();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_owned();
    let (server, metrics) = start_with_metrics(move |c| {
        c.durability = rookery_broker::config::DurabilityMode::Sync;
        c.data_dir = data;
        c.postgres_url = Some(url);
    })
    .await;
    assert_eq!(http(metrics, "GET", "/healthz", &[]).await.0, 200);
    assert_eq!(
        http(metrics, "GET", "/readyz", &[]).await,
        (200, "ready\n".into())
    );
    // A failing store makes the node unready once a write finds it failing: a QoS 1 message
    // for a persistent session goes to PostgreSQL's queue table.
    let (mut p, _) = Raw::connect_with(server.addr(), {
        let mut c = connect_packet(Protocol::V5, "durable", false);
        c.properties.session_expiry_interval = Some(3600);
        c
    })
    .await;
    p.subscribe("a/#", QoS::AtLeastOnce).await;
    tokio::task::block_in_place(|| pg.stop());
    p.send(Packet::Publish(publish(
        "a/x",
        b"m",
        QoS::AtLeastOnce,
        false,
        1,
    )))
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = http(metrics, "GET", "/readyz", &[]).await;
        if status == 503 {
            assert!(body.contains("store unavailable"), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still ready with the database down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(value(&scrape(metrics).await, "rookery_store_degraded"), 1.0);
    tokio::task::block_in_place(|| pg.start());
    let deadline = Instant::now() + Duration::from_secs(30);
    while http(metrics, "GET", "/readyz", &[]).await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "not ready again after the database came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = scrape(metrics).await;
    assert!(
        value(
            &m,
            "rookery_store_errors_total{store=\"postgres\",kind=\"queue\"}"
        ) >= 1.0
    );
    assert_eq!(
        value(
            &m,
            "rookery_store_errors_total{store=\"embedded\",kind=\"sessions\"}"
        ),
        0.0
    );
    assert!(
        value(
            &m,
            "rookery_store_operations_total{store=\"postgres\",kind=\"queue\"}"
        ) >= 1.0
    );
    assert!(
        value(
            &m,
            "rookery_store_commit_duration_seconds_count{store=\"postgres\",kind=\"queue\"}"
        ) >= 2.0
    );
    server.shutdown().await;
}

#[tokio::test]
async fn sys_topics_follow_the_acl_and_clients_cannot_publish_there() {
    // Without an ACL `$SYS` is refused.
    let server = start(|c| c.sys_interval = 1).await;
    let (mut c, _) = Raw::connect(server.addr(), Protocol::V5, "c", true).await;
    assert_eq!(
        c.subscribe("$SYS/#", QoS::AtMostOnce).await,
        vec![reason::NOT_AUTHORIZED]
    );
    server.shutdown().await;

    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl");
    std::fs::write(
        &acl,
        "topic read $SYS/#\ntopic readwrite app/#\ntopic write $SYS/#\n",
    )
    .unwrap();
    let server = start(|c| {
        c.sys_interval = 1;
        c.acl_file = Some(acl.clone());
    })
    .await;
    let (mut c, _) = Raw::connect(server.addr(), Protocol::V5, "c", true).await;
    assert_eq!(c.subscribe("$SYS/broker/#", QoS::AtMostOnce).await, vec![0]);
    let mut seen = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(seen.contains_key("$SYS/broker/uptime")
        && seen.contains_key("$SYS/broker/version")
        && seen.contains_key("$SYS/broker/load/messages/received/1min"))
    {
        assert!(Instant::now() < deadline, "seen: {:?}", seen.keys());
        if let Some(Packet::Publish(p)) = c.recv_within(Duration::from_millis(200)).await {
            seen.insert(
                p.topic.to_string(),
                String::from_utf8_lossy(&p.payload).into_owned(),
            );
        }
    }
    assert!(seen["$SYS/broker/version"].starts_with("rookery "));
    assert!(seen["$SYS/broker/uptime"].ends_with(" seconds"));
    // Whatever the ACL says, a client's PUBLISH under $SYS is refused.
    c.send(Packet::Publish(publish(
        "$SYS/broker/uptime",
        b"forged",
        QoS::AtLeastOnce,
        false,
        7,
    )))
    .await;
    loop {
        match c.recv().await {
            Packet::PubAck(a) => break assert_eq!(a.reason, reason::NOT_AUTHORIZED),
            Packet::Publish(p) => assert_ne!(&p.payload[..], b"forged"),
            other => panic!("{other:?}"),
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_publisher_over_its_rate_is_slowed_and_loses_nothing() {
    let (server, metrics) = start_with_metrics(|c| c.publish_rate_limit = 10).await;
    let (mut sub, _) = Raw::connect(server.addr(), Protocol::V311, "sub", true).await;
    sub.subscribe("r", QoS::AtMostOnce).await;
    let (mut publ, _) = Raw::connect(server.addr(), Protocol::V311, "pub", true).await;
    let start = Instant::now();
    // 25 messages at 10/s with a burst of 10: at least 1.5 s, however fast they are sent.
    for i in 1..=25u16 {
        publ.send(Packet::Publish(publish(
            "r",
            b"x",
            QoS::AtLeastOnce,
            false,
            i,
        )))
        .await;
    }
    for i in 1..=25u16 {
        match publ.recv().await {
            Packet::PubAck(a) => assert_eq!(a.packet_id, i),
            other => panic!("{other:?}"),
        }
    }
    for _ in 0..25 {
        sub.recv_publish().await;
    }
    assert!(
        start.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        start.elapsed()
    );
    let m = scrape(metrics).await;
    assert!(value(&m, "rookery_rate_limited_total{limit=\"publish_rate\"}") >= 10.0);
    server.shutdown().await;
}

#[tokio::test]
async fn an_mqtt5_publisher_over_its_rate_can_be_disconnected_with_0x96() {
    let server = start(|c| {
        c.publish_rate_limit = 5;
        c.rate_limit_action = rookery_broker::limits::RateAction::Disconnect;
    })
    .await;
    let (mut publ, _) = Raw::connect(server.addr(), Protocol::V5, "pub", true).await;
    for _ in 0..10 {
        publ.send(Packet::Publish(publish(
            "r",
            b"x",
            QoS::AtMostOnce,
            false,
            0,
        )))
        .await;
    }
    let d = publ.expect_closed().await.expect("a DISCONNECT");
    assert_eq!(d.reason, reason::MESSAGE_RATE_TOO_HIGH);
    server.shutdown().await;
}

#[tokio::test]
async fn connections_over_the_listener_rate_wait_their_turn() {
    let (server, metrics) = start_with_metrics(|c| c.max_connection_rate = 5).await;
    let start = Instant::now();
    let mut clients = Vec::new();
    for i in 0..10 {
        let (c, ack) = Raw::connect(server.addr(), Protocol::V311, &format!("c{i}"), true).await;
        assert_eq!(ack.code, 0);
        clients.push(c);
    }
    // 5 at once, then 5 per second.
    assert!(
        start.elapsed() >= Duration::from_millis(800),
        "{:?}",
        start.elapsed()
    );
    let m = scrape(metrics).await;
    assert!(value(&m, "rookery_rate_limited_total{limit=\"connection_rate\"}") >= 4.0);
    server.shutdown().await;
}

#[tokio::test]
async fn publishers_pause_at_the_memory_mark_until_queues_drain() {
    let (server, metrics) = start_with_metrics(|c| {
        c.memory_high_watermark = 200_000;
        c.max_queued_messages = 100_000;
    })
    .await;
    // A subscriber that does not read: its socket fills, then its queue.
    let (mut slow, _) = Raw::connect(server.addr(), Protocol::V311, "slow", true).await;
    slow.subscribe("m", QoS::AtMostOnce).await;
    let (mut publ, _) = Raw::connect(server.addr(), Protocol::V311, "pub", true).await;
    let payload = vec![7u8; 4096];
    let broker = server.broker.clone();
    // Paced a little, so that the flood lasts longer than one tick of the memory watch.
    const FLOOD: usize = 10_000;
    let flood = tokio::spawn(async move {
        for i in 0..FLOOD {
            publ.send(Packet::Publish(publish(
                "m",
                &payload,
                QoS::AtMostOnce,
                false,
                0,
            )))
            .await;
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        publ
    });
    eventually(|| broker.memory.is_high()).await;
    // The mark is high before the publisher's next PUBLISH meets it: wait for that pause.
    let deadline = tokio::time::Instant::now() + WAIT;
    let m = loop {
        let m = scrape(metrics).await;
        if value(&m, "rookery_rate_limited_total{limit=\"memory\"}") >= 1.0 {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no publisher paused"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(value(&m, "rookery_memory_pressure"), 1.0);
    // Queued bytes stop well short of the flood: the publisher is paused, not dropped.
    let queued = value(&m, "rookery_queued_bytes");
    assert!(queued < (FLOOD * 4096 / 2) as f64, "{queued}");
    // The subscriber reads: the gate opens and every message arrives.
    let mut got = 0;
    while got < FLOOD {
        match slow.recv_within(WAIT).await {
            Some(Packet::Publish(_)) => got += 1,
            other => panic!("after {got}: {other:?}"),
        }
    }
    let _publ = flood.await.unwrap();
    eventually(|| !broker.memory.is_high()).await;
    assert_eq!(
        server
            .broker
            .metrics
            .dropped_queue_full_total
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_reload_applies_live_limits_and_keeps_the_old_ones_on_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rookery.toml");
    std::fs::write(&file, "publish_rate_limit = 0\n").unwrap();
    let mut server = start(|_| {}).await;
    let levels = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = levels.clone();
    let path = file.clone();
    server.set_config_source(
        Box::new(move || {
            let mut c = Config::from_file(&path)?;
            c.listen = vec!["127.0.0.1:0".parse().unwrap()];
            c.validate()?;
            Ok(c)
        }),
        Box::new(move |level| {
            seen.lock().push(level.to_owned());
            Ok(())
        }),
    );
    std::fs::write(
        &file,
        "publish_rate_limit = 50\nmemory_high_watermark = 1000000\nlog_level = \"debug\"\nmax_inflight = 3\n",
    )
    .unwrap();
    server.reload().await;
    let limits = server.broker.limits.load();
    assert_eq!(limits.publish_rate, 50);
    assert_eq!(limits.memory_high_watermark, 1_000_000);
    assert_eq!(*levels.lock(), vec!["debug".to_owned()]);
    // max_inflight needs a restart: the running broker keeps its own.
    assert_eq!(
        server.broker.config.max_inflight,
        Config::default().max_inflight
    );

    // A bad file changes nothing.
    std::fs::write(&file, "publish_rate_limit = \"fast\"\n").unwrap();
    server.reload().await;
    assert_eq!(server.broker.limits.load().publish_rate, 50);
    std::fs::write(&file, "log_level = \"no such level[\"\n").unwrap();
    server.reload().await;
    assert_eq!(server.broker.limits.load().publish_rate, 50);
    assert_eq!(levels.lock().len(), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_exported_metric_is_documented_and_every_documented_one_exported() {
    // With a store and a cluster listener, so that the store and link metrics are exported.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_owned();
    let (server, metrics) = start_with_metrics(move |c| {
        c.durability = rookery_broker::config::DurabilityMode::Sync;
        c.data_dir = data.clone();
        c.cluster_listen = Some("127.0.0.1:0".parse().unwrap());
        // And the CoAP gateway and a bridge (to nowhere), for theirs.
        c.coap_listen = Some("127.0.0.1:0".parse().unwrap());
        // And its DTLS listener, for the handshake metrics.
        let psk = data.join("psk");
        std::fs::write(&psk, "dev:00ff\n").unwrap();
        c.coaps_listen = Some("127.0.0.1:0".parse().unwrap());
        c.psk_file = Some(psk);
        c.bridge = vec![
            toml::from_str(
                "name = \"b\"\naddress = \"127.0.0.1:1\"\ntopics = [{ pattern = \"x\" }]",
            )
            .unwrap(),
        ];
    })
    .await;
    let (status, body) = http(metrics, "GET", "/metrics", &[]).await;
    assert_eq!(status, 200);
    let exported: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    assert!(exported.len() > 40, "{exported:?}");
    let doc = include_str!("../../../docs/operations.md");
    let table = doc
        .split("\n## Metrics\n")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .unwrap();
    let documented: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("| rookery_") || l.starts_with("| process_"))
        .filter(|l| !l.contains("(clustering, later)"))
        .filter_map(|l| l.split('|').nth(1))
        .map(str::trim)
        .collect();
    for name in &exported {
        assert!(
            documented.contains(name),
            "{name} is exported but not in docs/operations.md"
        );
    }
    for name in &documented {
        assert!(
            exported.contains(name),
            "{name} is in docs/operations.md but not exported"
        );
    }
    server.shutdown().await;
}
