//! The `rookery-broker` binary as a user runs it: flags, environment, config errors, JSON logs
//! and graceful shutdown on SIGTERM and SIGINT.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use bytes::BytesMut;
use rookery_codec::*;
use rookery_e2e::{BrokerProcess, run_to_exit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rookery-broker"))
}

/// Opens a TCP connection and sends a CONNECT.
async fn send_connect(
    addr: std::net::SocketAddr,
    protocol: Protocol,
    id: &str,
    clean_start: bool,
) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let connect = Connect {
        protocol,
        clean_start,
        keep_alive: 30,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
    };
    let mut out = BytesMut::new();
    encode(&Packet::Connect(Box::new(connect)), protocol, &mut out);
    s.write_all(&out).await.unwrap();
    s
}

/// Connects with MQTT 5.0 and returns the stream and the CONNACK.
async fn connect_v5(addr: std::net::SocketAddr, id: &str) -> (TcpStream, BytesMut, ConnAck) {
    let mut s = send_connect(addr, Protocol::V5, id, true).await;
    let mut buf = BytesMut::new();
    let ack = loop {
        if let Some(p) = decode(&mut buf, Protocol::V5, usize::MAX).unwrap() {
            match p {
                Packet::ConnAck(a) => break a,
                other => panic!("{other:?}"),
            }
        }
        assert!(s.read_buf(&mut buf).await.unwrap() > 0);
    };
    (s, buf, ack)
}

async fn read_until_closed(s: &mut TcpStream, buf: &mut BytesMut) -> Vec<Packet> {
    let mut packets = Vec::new();
    loop {
        while let Some(p) = decode(buf, Protocol::V5, usize::MAX).unwrap() {
            packets.push(p);
        }
        match tokio::time::timeout(Duration::from_secs(10), s.read_buf(buf))
            .await
            .expect("not closed")
        {
            Ok(0) | Err(_) => return packets,
            Ok(_) => {}
        }
    }
}

#[test]
fn first_log_line_names_the_address_and_anonymous_access() {
    let broker = BrokerProcess::start(binary(), &["--node-id", "n1"]).unwrap();
    let first = &broker.log[0];
    assert!(first.contains("listening on 127.0.0.1:"), "{first}");
    assert!(first.contains("anonymous access allowed"), "{first}");
}

#[tokio::test]
async fn sigterm_sends_0x8b_to_v5_clients_and_exits_cleanly() {
    for signal in [15, 2] {
        let mut broker = BrokerProcess::start(binary(), &[]).unwrap();
        let (mut s, mut buf, ack) = connect_v5(broker.addr, "bye").await;
        assert_eq!(ack.code, 0);
        broker.signal(signal).unwrap();
        let packets = read_until_closed(&mut s, &mut buf).await;
        assert!(
            matches!(packets.last(), Some(Packet::Disconnect(d)) if d.reason == reason::SERVER_SHUTTING_DOWN),
            "{packets:?}"
        );
        let status = broker.wait_exit(Duration::from_secs(10)).unwrap();
        assert!(status.success(), "exit status {status}");
    }
}

#[tokio::test]
async fn sigterm_drains_clients_to_the_server_reference_then_exits() {
    let mut broker = BrokerProcess::start(
        binary(),
        &["--server-reference", "lb.example:1883", "--drain-rate", "5"],
    )
    .unwrap();
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(connect_v5(broker.addr, &format!("c{i}")).await);
    }
    broker.signal(15).unwrap();
    for (s, buf, _) in &mut clients {
        let packets = read_until_closed(s, buf).await;
        assert!(
            matches!(packets.last(), Some(Packet::Disconnect(d))
                if d.reason == reason::USE_ANOTHER_SERVER
                    && d.properties.server_reference.as_deref() == Some("lb.example:1883")),
            "{packets:?}"
        );
    }
    let status = broker.wait_exit(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn the_healthcheck_command_asks_the_http_endpoint() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let metrics = format!("127.0.0.1:{port}");
    let broker = BrokerProcess::start(binary(), &["--metrics-listen", &metrics]).unwrap();
    let check = |url: &str| {
        std::process::Command::new(binary())
            .args(["healthcheck", "--url", url])
            .output()
            .unwrap()
    };
    let ok = check(&format!("http://{metrics}/healthz"));
    assert!(ok.status.success(), "{ok:?}");
    let missing = check(&format!("http://{metrics}/nothing"));
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("answered 404"),
        "{missing:?}"
    );
    drop(broker);
    let down = check(&format!("http://{metrics}/healthz"));
    assert!(!down.status.success());
}

#[tokio::test]
async fn environment_variables_set_keys_and_flags_win_over_them() {
    let broker =
        BrokerProcess::start_with_env(binary(), &[], &[("ROOKERY_RECEIVE_MAXIMUM", "7")]).unwrap();
    let (_s, _b, ack) = connect_v5(broker.addr, "env").await;
    assert_eq!(ack.properties.receive_maximum, Some(7));
    drop(broker);
    let broker = BrokerProcess::start_with_env(
        binary(),
        &["--receive-maximum", "9"],
        &[("ROOKERY_RECEIVE_MAXIMUM", "7")],
    )
    .unwrap();
    let (_s, _b, ack) = connect_v5(broker.addr, "env").await;
    assert_eq!(ack.properties.receive_maximum, Some(9));
}

#[test]
fn config_file_errors_name_the_field_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "max_inflight = \"lots\"\n").unwrap();
    let (status, stderr) =
        run_to_exit(binary(), &["--config", file.to_str().unwrap()], &[]).unwrap();
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("max_inflight"), "{stderr}");
    std::fs::write(&file, "max_inflight = 0\n").unwrap();
    let (status, stderr) =
        run_to_exit(binary(), &["--config", file.to_str().unwrap()], &[]).unwrap();
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("max_inflight"), "{stderr}");
    let (status, stderr) =
        run_to_exit(binary(), &[], &[("ROOKERY_MAX_PACKET_SIZE", "big")]).unwrap();
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("max-packet-size"), "{stderr}");
}

#[test]
fn coaps_settings_are_checked_and_a_bad_psk_file_names_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let psk = dir.path().join("psk");
    std::fs::write(&psk, "dev1:00ff\n").unwrap();
    let psk = psk.to_str().unwrap();
    for (args, field) in [
        (&["--coaps-listen", "127.0.0.1:0"][..], "coaps_listen"),
        (&["--psk-file", psk][..], "psk_file"),
        (&["--psk-hint", "h"][..], "psk_hint"),
    ] {
        let (status, stderr) = run_to_exit(binary(), args, &[]).unwrap();
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(field), "{args:?}: {stderr}");
    }
    let bad = dir.path().join("bad-psk");
    for (text, words) in [
        ("dev1:00ff\nsensors/7:00ff\n", ["line 2", "sensors/7"]),
        ("dev1:0g\n", ["line 1", "not hexadecimal"]),
    ] {
        std::fs::write(&bad, text).unwrap();
        let args = [
            "--coaps-listen",
            "127.0.0.1:0",
            "--psk-file",
            bad.to_str().unwrap(),
        ];
        let (status, stderr) = run_to_exit(binary(), &args, &[]).unwrap();
        assert_ne!(status.code(), Some(0), "{stderr}");
        assert!(words.iter().all(|w| stderr.contains(w)), "{stderr}");
    }
}

#[test]
fn json_logs_are_one_object_per_line() {
    let mut broker = BrokerProcess::start(binary(), &["--log-format", "json"]).unwrap();
    broker.signal(15).unwrap();
    broker.wait_exit(Duration::from_secs(10)).unwrap();
    assert!(broker.log.len() >= 2);
    for line in &broker.log {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v.get("level").is_some(), "{line}");
    }
}

#[test]
fn the_default_listen_address_is_localhost_1883() {
    let c = rookery_broker::Config::default();
    assert_eq!(c.listen, vec!["127.0.0.1:1883".parse().unwrap()]);
}

/// Sends a 3.1.1 CONNECT for `id` and waits for the CONNACK.
async fn connect_v311(addr: std::net::SocketAddr, id: &str) -> TcpStream {
    let mut s = send_connect(addr, Protocol::V311, id, false).await;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).await.unwrap();
    assert_eq!(ack[0], 0x20);
    s
}

#[tokio::test]
async fn repeated_takeovers_log_a_warning_with_both_addresses() {
    let mut broker = BrokerProcess::start(binary(), &["--takeover-warn-count", "3"]).unwrap();
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(connect_v311(broker.addr, "twin-device").await);
    }
    let line = broker
        .wait_for_log(
            "two devices may be sharing one client id",
            Duration::from_secs(5),
        )
        .expect("takeover warning");
    assert!(line.contains("twin-device"), "{line}");
    assert!(
        line.contains("old_peer=127.0.0.1:") && line.contains("new_peer=127.0.0.1:"),
        "{line}"
    );
}

#[tokio::test]
async fn a_malformed_packet_is_logged_once_with_the_client_id() {
    let mut broker = BrokerProcess::start(binary(), &[]).unwrap();
    let mut s = connect_v311(broker.addr, "broken-sensor").await;
    s.write_all(&[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01])
        .await
        .unwrap(); // QoS 3
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    let line = broker
        .wait_for_log("malformed packet", Duration::from_secs(5))
        .expect("log line");
    assert!(line.contains("broken-sensor"), "{line}");
    broker.signal(15).unwrap();
    broker.wait_exit(Duration::from_secs(10)).unwrap();
    assert_eq!(
        broker
            .log
            .iter()
            .filter(|l| l.contains("malformed packet"))
            .count(),
        1
    );
}

/// A publisher flooding QoS 0 as fast as its socket takes it must not starve the subscribers
/// that share its thread: before connections yielded after a slice of routing work, a
/// one-thread broker read and routed the flood forever and delivered nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_publisher_does_not_starve_subscribers_on_one_thread() {
    let broker = BrokerProcess::start(
        binary(),
        &["--threads", "1", "--log-level", "warn,rookery_broker=info"],
    )
    .unwrap();
    let mut subs = Vec::new();
    for i in 0..50 {
        let (mut s, mut buf, ack) = connect_v5(broker.addr, &format!("sub-{i}")).await;
        assert_eq!(ack.code, 0);
        let mut out = BytesMut::new();
        let subscribe = Subscribe {
            packet_id: 1,
            filters: vec![SubscribeFilter {
                filter: "flood".into(),
                options: Default::default(),
            }],
            properties: Default::default(),
        };
        encode(&Packet::Subscribe(subscribe), Protocol::V5, &mut out);
        s.write_all(&out).await.unwrap();
        loop {
            if let Some(Packet::SubAck(_)) = decode(&mut buf, Protocol::V5, usize::MAX).unwrap() {
                break;
            }
            s.read_buf(&mut buf).await.unwrap();
        }
        subs.push((s, buf));
    }
    let (mut publ, _, _) = connect_v5(broker.addr, "flooder").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut batch = BytesMut::new();
            for _ in 0..64 {
                let p = Publish {
                    topic: "flood".into(),
                    payload: bytes::Bytes::from_static(&[0u8; 100]),
                    ..Default::default()
                };
                encode(&Packet::Publish(p), Protocol::V5, &mut batch);
            }
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if publ.write_all(&batch).await.is_err() {
                    return;
                }
            }
        })
    };
    let (s, buf) = &mut subs[0];
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(Packet::Publish(_)) = decode(buf, Protocol::V5, usize::MAX).unwrap() {
                return;
            }
            s.read_buf(buf).await.unwrap();
        }
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = flood.await;
    assert!(
        got.is_ok(),
        "no message reached a subscriber while the publisher flooded"
    );
}

/// Sends one packet (MQTT 5.0).
async fn send(s: &mut TcpStream, packet: Packet) {
    let mut out = BytesMut::new();
    encode(&packet, Protocol::V5, &mut out);
    s.write_all(&out).await.unwrap();
}

/// The next packet within `wait`, `None` when none came.
async fn next_within(s: &mut TcpStream, buf: &mut BytesMut, wait: Duration) -> Option<Packet> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(p) = decode(buf, Protocol::V5, usize::MAX).unwrap() {
            return Some(p);
        }
        match tokio::time::timeout_at(deadline, s.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => panic!("connection closed"),
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn a_publishers_puback_waits_while_the_subscribers_node_is_stopped() {
    let nodes = rookery_e2e::start_cluster(binary(), "node", 2, &[]).unwrap();
    let (mut sub, mut sub_buf, _) = connect_v5(nodes[1].addr, "sub").await;
    send(&mut sub, subscribe_t()).await;
    assert!(matches!(
        next_within(&mut sub, &mut sub_buf, Duration::from_secs(5)).await,
        Some(Packet::SubAck(_))
    ));
    let (mut publ, mut pub_buf, _) = connect_v5(nodes[0].addr, "pub").await;
    let mut pid = publish_once_routed(&mut publ, &mut pub_buf, b"x").await;

    // The subscriber's node stops (SIGSTOP; shorter than the failure detector's 3.5 s).
    nodes[1].signal(19).unwrap();
    until_stopped(&nodes[1]).await;
    pid += 1;
    send(&mut publ, qos1(pid, b"x")).await;
    let early = next_within(&mut publ, &mut pub_buf, Duration::from_millis(1000)).await;
    assert!(
        early.is_none(),
        "acknowledged while the node was stopped: {early:?}"
    );
    nodes[1].signal(18).unwrap();
    match next_within(&mut publ, &mut pub_buf, Duration::from_secs(5)).await {
        Some(Packet::PubAck(a)) => {
            assert_eq!((a.packet_id, a.reason), (pid, reason::SUCCESS));
        }
        other => panic!("{other:?}"),
    }
    // And the subscriber has it (after the first one).
    let mut got = 0;
    while let Some(p) = next_within(&mut sub, &mut sub_buf, Duration::from_secs(2)).await {
        if let Packet::Publish(p) = p {
            got += 1;
            send(
                &mut sub,
                Packet::PubAck(Ack {
                    packet_id: p.packet_id,
                    ..Default::default()
                }),
            )
            .await;
        }
    }
    assert_eq!(got, 2);
}

/// Waits until /proc says the process is stopped (a signal takes effect a moment later).
async fn until_stopped(node: &BrokerProcess) {
    let stat = format!("/proc/{}/stat", node.pid());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&stat)
        .unwrap()
        .split(") ")
        .nth(1)
        .is_some_and(|rest| rest.starts_with('T'))
    {
        assert!(std::time::Instant::now() < deadline, "not stopped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Publishes `payload` on `t` at QoS 1 until a subscriber on another node has it: until that
/// node's route arrives, a message finds no subscriber (0x10). Returns the packet id used.
async fn publish_once_routed(
    publ: &mut TcpStream,
    buf: &mut BytesMut,
    payload: &'static [u8],
) -> u16 {
    let mut pid = 1;
    loop {
        send(publ, qos1(pid, payload)).await;
        match next_within(publ, buf, Duration::from_secs(5)).await {
            Some(Packet::PubAck(a)) if a.reason == reason::SUCCESS => return pid,
            Some(Packet::PubAck(a)) if a.reason == reason::NO_MATCHING_SUBSCRIBERS => {}
            other => panic!("{other:?}"),
        }
        pid += 1;
        assert!(pid < 100, "the route never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A SUBSCRIBE to `t` at QoS 1.
fn subscribe_t() -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![SubscribeFilter {
            filter: "t".into(),
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        }],
        properties: Default::default(),
    })
}

/// A QoS 1 PUBLISH of `payload` on `t`.
fn qos1(pid: u16, payload: &'static [u8]) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "t".into(),
        packet_id: pid,
        payload: bytes::Bytes::from_static(payload),
        properties: Default::default(),
    })
}

#[tokio::test]
async fn a_node_killed_and_restarted_without_redis_gets_what_its_previous_life_had_not_committed() {
    // Two nodes, each with its own embedded store; node 1 is restarted on its own.
    let ports: Vec<u16> = (0..2)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .collect();
    let peers = format!("127.0.0.1:{},127.0.0.1:{}", ports[0], ports[1]);
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let start = |i: usize| {
        let (id, link) = (format!("node-{i}"), format!("127.0.0.1:{}", ports[i]));
        let dir = dirs[i].path().to_str().unwrap();
        rookery_e2e::start_cluster_node(binary(), &id, &link, &peers, &["--data-dir", dir]).unwrap()
    };
    let mut n0 = start(0);
    let mut n1 = start(1);
    for n in [&mut n0, &mut n1] {
        n.wait_for_log("cluster link up", Duration::from_secs(10))
            .unwrap();
    }

    // A persistent session on node 1, offline, subscribed to t at QoS 1.
    let mut sub = send_connect(n1.addr, Protocol::V311, "sub", false).await;
    let mut sub_buf = BytesMut::new();
    let v3 = |s: &mut BytesMut| decode(s, Protocol::V311, usize::MAX).unwrap();
    let next3 = async |s: &mut TcpStream, buf: &mut BytesMut, wait: Duration| {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(p) = v3(buf) {
                return Some(p);
            }
            match tokio::time::timeout_at(deadline, s.read_buf(buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => panic!("connection closed"),
                Err(_) => return None,
            }
        }
    };
    assert!(matches!(
        next3(&mut sub, &mut sub_buf, Duration::from_secs(5)).await,
        Some(Packet::ConnAck(_))
    ));
    let mut out = BytesMut::new();
    encode(&subscribe_t(), Protocol::V311, &mut out);
    sub.write_all(&out).await.unwrap();
    assert!(matches!(
        next3(&mut sub, &mut sub_buf, Duration::from_secs(5)).await,
        Some(Packet::SubAck(_))
    ));
    drop(sub);

    // Message 1 is committed on node 1 (queued for the offline session, with the mark).
    let (mut publ, mut pub_buf, _) = connect_v5(n0.addr, "pub").await;
    publish_once_routed(&mut publ, &mut pub_buf, b"1").await;

    // Node 1 stops, message 2 is forwarded to it and not handled, and node 1 is killed.
    n1.signal(19).unwrap();
    until_stopped(&n1).await;
    send(&mut publ, qos1(100, b"2")).await;
    let early = next_within(&mut publ, &mut pub_buf, Duration::from_millis(1000)).await;
    assert!(
        early.is_none(),
        "acknowledged before node 1 had it: {early:?}"
    );
    n1.signal(9).unwrap();
    n1.wait_exit(Duration::from_secs(5)).unwrap();

    // Restarted on its store (a new boot epoch): node 0 sends it message 2, not message 1,
    // and only then acknowledges it.
    let mut n1 = start(1);
    n1.wait_for_log("cluster link up", Duration::from_secs(10))
        .unwrap();
    match next_within(&mut publ, &mut pub_buf, Duration::from_secs(10)).await {
        Some(Packet::PubAck(a)) => assert_eq!((a.packet_id, a.reason), (100, reason::SUCCESS)),
        other => panic!("{other:?}"),
    }
    assert!(
        n0.wait_for_log(
            "previous life had not committed sent to its new one",
            Duration::from_secs(5)
        )
        .is_some_and(|l| l.contains("messages=1") && l.contains("committed_upto=1")),
        "node 0's log: {:?}",
        n0.wait_for_log("restarted peer", Duration::from_millis(1))
    );

    // The subscriber resumes: 1 and 2, once each.
    let mut sub = send_connect(n1.addr, Protocol::V311, "sub", false).await;
    let mut sub_buf = BytesMut::new();
    let mut got = Vec::new();
    while let Some(p) = next3(&mut sub, &mut sub_buf, Duration::from_secs(2)).await {
        if let Packet::Publish(p) = p {
            got.push(p.payload.clone());
            let mut out = BytesMut::new();
            encode(
                &Packet::PubAck(Ack {
                    packet_id: p.packet_id,
                    ..Default::default()
                }),
                Protocol::V311,
                &mut out,
            );
            sub.write_all(&out).await.unwrap();
        }
    }
    assert_eq!(got, [&b"1"[..], &b"2"[..]]);
}
