//! Draining a node: readiness fails, the listeners close, connected clients are told to use
//! another server at a bounded rate, wills wait with their sessions, and the drain ends with
//! every client gone.

use std::time::{Duration, Instant};

use rookery_codec::*;

use crate::support::*;

const TOKEN: &str = "drain-admin-token-0123456789";

fn will_connect(id: &str) -> Connect {
    let mut c = connect_packet(Protocol::V5, id, true);
    c.properties.session_expiry_interval = Some(3600);
    c.will = Some(LastWill {
        topic: "status/gone".into(),
        payload: bytes::Bytes::from_static(b"offline"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties {
            will_delay_interval: Some(1),
            ..Default::default()
        },
    });
    c
}

#[tokio::test]
async fn a_drain_closes_the_door_and_sends_clients_elsewhere_at_its_rate() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let server = start(|c| {
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        c.admin_token_file = Some(token_file);
        c.server_reference = Some("mqtt.example.net:1883".into());
        c.drain_rate = 10;
        c.drain_timeout_secs = 60;
    })
    .await;
    let (addr, admin) = (server.addr(), server.metrics_addr.unwrap());
    // A watcher that must not see any will: the drained clients are coming back elsewhere.
    let (mut watcher, _) = Raw::connect(addr, Protocol::V5, "watcher", true).await;
    watcher.subscribe("status/#", QoS::AtLeastOnce).await;
    let mut v5 = Vec::new();
    for i in 0..15 {
        v5.push(
            Raw::connect_with(addr, will_connect(&format!("dev-{i}")))
                .await
                .0,
        );
    }
    let mut v3 = Vec::new();
    for i in 0..5 {
        v3.push(
            Raw::connect(addr, Protocol::V311, &format!("old-{i}"), true)
                .await
                .0,
        );
    }
    assert_eq!(http(admin, "GET", "/readyz", &[]).await.0, 200);

    // Without the token, nothing happens.
    assert_eq!(http(admin, "POST", "/admin/drain", &[]).await.0, 401);
    assert_eq!(http(admin, "GET", "/readyz", &[]).await.0, 200);

    let bearer = format!("Bearer {TOKEN}");
    // The status the operator reads: the token is needed, the counts are the live ones.
    assert_eq!(http(admin, "GET", "/admin/status", &[]).await.0, 401);
    let (status, body) = http(admin, "GET", "/admin/status", &[("Authorization", &bearer)]).await;
    assert_eq!(status, 200, "{body}");
    let st: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(st["connections"], 21, "{st}");
    assert_eq!(st["sessions_online"], 21, "{st}");
    assert_eq!(
        (st["ready"].clone(), st["draining"].clone()),
        (true.into(), false.into())
    );
    assert_eq!(st["subscriptions"], 1, "{st}");

    let (status, body) = http(admin, "POST", "/admin/drain", &[("Authorization", &bearer)]).await;
    assert_eq!(status, 202, "{body}");
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reply["started"], true);
    assert_eq!(reply["connections"], 21);
    let began = Instant::now();
    // Asked again: already under way.
    let (_, body) = http(admin, "POST", "/admin/drain", &[("Authorization", &bearer)]).await;
    assert!(body.contains("\"started\":false"), "{body}");

    let (status, body) = http(admin, "GET", "/readyz", &[]).await;
    assert_eq!((status, body.as_str()), (503, "not ready: draining\n"));
    let (_, body) = http(admin, "GET", "/admin/status", &[("Authorization", &bearer)]).await;
    let st: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (st["ready"].clone(), st["draining"].clone()),
        (false.into(), true.into())
    );
    // The listener is closed: a new client is refused by the kernel, not by the broker.
    eventually(|| std::net::TcpStream::connect(addr).is_err()).await;

    let mut reasons = Vec::new();
    let mut last = Duration::ZERO;
    for c in &mut v5 {
        let d = c
            .expect_closed()
            .await
            .expect("a DISCONNECT before the close");
        last = last.max(began.elapsed());
        reasons.push((d.reason, d.properties.server_reference.clone()));
    }
    for c in &mut v3 {
        assert_eq!(c.expect_closed().await, None, "3.1.1 has no DISCONNECT");
    }
    assert!(
        reasons.iter().all(|(r, s)| *r == reason::USE_ANOTHER_SERVER
            && s.as_deref() == Some("mqtt.example.net:1883")),
        "{reasons:?}"
    );
    // 21 clients at 10 per second: not all at once. (A lower bound only: a slow machine is
    // slower, never faster.)
    assert!(
        last >= Duration::from_millis(1400),
        "all clients gone after {last:?}"
    );
    watcher.expect_closed().await;
    tokio::time::timeout(Duration::from_secs(10), server.broker.drained.cancelled())
        .await
        .expect("the drain ends once every client is gone");
    // Nothing in the metrics of a will, and every will-bearing session kept it.
    for i in 0..15 {
        let s = server.broker.sessions.get(&format!("dev-{i}")).unwrap();
        assert!(!s.is_attached());
    }
    let m = scrape(admin).await;
    for protocol in ["3.1.1", "5.0"] {
        let key = format!("rookery_connections{{listener=\"mqtt\",protocol=\"{protocol}\"}}");
        assert_eq!(value(&m, &key), 0.0);
    }
    assert_eq!(value(&m, "rookery_ready"), 0.0);
}

#[tokio::test]
async fn a_connect_that_arrives_while_draining_is_refused_with_use_another_server() {
    let server = start(|c| c.drain_rate = 1000).await;
    let addr = server.addr();
    // Opened before the drain, CONNECT sent after it began.
    let mut late_v5 = Raw::open(addr, Protocol::V5).await;
    let mut late_v3 = Raw::open(addr, Protocol::V311).await;
    eventually(|| {
        server
            .broker
            .metrics
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
            == 2
    })
    .await;
    assert!(rookery_broker::drain::start(&server.broker));
    let ack = late_v5
        .handshake(connect_packet(Protocol::V5, "late", true))
        .await;
    assert_eq!(ack.code, reason::USE_ANOTHER_SERVER);
    let ack = late_v3
        .handshake(connect_packet(Protocol::V311, "late3", true))
        .await;
    assert_eq!(ack.code, 3, "3.1.1: server unavailable");
    tokio::time::timeout(Duration::from_secs(10), server.broker.drained.cancelled())
        .await
        .expect("drained");
}

#[tokio::test]
async fn without_a_cluster_or_reference_a_drain_says_shutting_down_and_queues_survive() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_owned();
    let store = |c: &mut rookery_broker::Config| {
        c.durability = rookery_broker::config::DurabilityMode::Sync;
        c.data_dir = data.clone();
    };
    let server = start(store).await;
    let addr = server.addr();
    // One persistent subscriber offline with a message queued, one online.
    let (mut away, _) = Raw::connect_with(addr, will_connect("away")).await;
    away.subscribe("q/#", QoS::AtLeastOnce).await;
    away.disconnect().await;
    let (mut online, _) = Raw::connect_with(addr, will_connect("online")).await;
    online.subscribe("q/#", QoS::AtLeastOnce).await;
    let (mut publ, _) = Raw::connect(addr, Protocol::V5, "pub", true).await;
    publ.send(Packet::Publish(publish(
        "q/1",
        b"kept",
        QoS::AtLeastOnce,
        false,
        1,
    )))
    .await;
    assert!(matches!(publ.recv().await, Packet::PubAck(_)));
    let p = online.recv_publish().await;
    assert_eq!(&p.payload[..], b"kept");

    server.drain().await;
    let d = online.expect_closed().await.unwrap();
    assert_eq!(d.reason, reason::SERVER_SHUTTING_DOWN);
    server.shutdown().await;

    // Both sessions come back with what they had not acknowledged.
    let server = start(store).await;
    for id in ["away", "online"] {
        let mut c = connect_packet(Protocol::V5, id, false);
        c.properties.session_expiry_interval = Some(3600);
        let (mut sub, ack) = Raw::connect_with(server.addr(), c).await;
        assert!(ack.session_present, "{id}");
        let p = sub.recv_publish().await;
        assert_eq!(&p.payload[..], b"kept", "{id}");
    }
}
