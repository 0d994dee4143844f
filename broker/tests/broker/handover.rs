//! Sessions moving between nodes: a client that resumes on another node finds its
//! subscriptions, queued messages and QoS state there, the old node lets go of everything,
//! and with per-node disks or shared stores the session lives where its client is.

use rookery_broker::Server;
use rookery_codec::{ConnectProperties, Packet, Protocol, QoS, reason};

use crate::cluster::{free_port, node_with, routed, until, up};
use crate::support::*;

fn persistent(id: &str) -> rookery_codec::Connect {
    let mut c = connect_packet(Protocol::V5, id, false);
    c.properties = ConnectProperties {
        session_expiry_interval: Some(3600),
        ..Default::default()
    };
    c
}

/// Parks the persistent session "big" on the node at `addr` with `n` messages of 1 MB queued
/// (payloads `"{i}:xxx..."`, in order; the node needs `max_packet_size` above 1 MB).
async fn park_big_session(addr: std::net::SocketAddr, n: usize) {
    let (mut c, _) = Raw::connect_with(addr, persistent("big")).await;
    c.subscribe("big/#", QoS::AtLeastOnce).await;
    c.disconnect().await;
    let (mut p, _) = Raw::connect(addr, Protocol::V5, "publisher", true).await;
    for i in 1..=n {
        let mut payload = format!("{i}:").into_bytes();
        payload.resize(1_000_000, b'x');
        p.publish("big/1", &payload, QoS::AtLeastOnce, false, i as u16)
            .await;
    }
    p.disconnect().await;
}

async fn pair(tweak: impl Fn(usize, &mut rookery_broker::Config)) -> (Vec<Server>, Vec<String>) {
    let ports = [free_port(), free_port()];
    let peers: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut nodes = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        nodes.push(node_with(&format!("node-{i}"), "ho", *port, &peers, |c| tweak(i, c)).await);
    }
    until("linked", || nodes.iter().all(|n| up(n).len() == 1)).await;
    (nodes, peers)
}

async fn publish_all(addr: std::net::SocketAddr, topic: &str, n: u16) {
    let (mut p, _) = Raw::connect(addr, Protocol::V5, "publisher", true).await;
    for i in 1..=n {
        p.publish(topic, format!("{i}").as_bytes(), QoS::AtLeastOnce, false, i)
            .await;
    }
    p.disconnect().await;
}

async fn payloads(c: &mut Raw, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < n {
        match c.recv().await {
            Packet::Publish(p) => {
                got.push(String::from_utf8_lossy(&p.payload).into_owned());
                if p.qos != QoS::AtMostOnce {
                    c.send(Packet::PubAck(rookery_codec::Ack {
                        packet_id: p.packet_id,
                        ..Default::default()
                    }))
                    .await;
                }
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    got
}

fn numbers(n: usize) -> Vec<String> {
    (1..=n).map(|i| i.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_session_resumes_on_another_node_with_its_queue_and_subscriptions() {
    let (nodes, _) = pair(|_, _| {}).await;
    let (mut c, _) = Raw::connect_with(nodes[0].addr(), persistent("mover")).await;
    c.subscribe("m/#", QoS::AtLeastOnce).await;
    c.disconnect().await;
    publish_all(nodes[0].addr(), "m/1", 5).await;

    let (mut c, ack) = Raw::connect_with(nodes[1].addr(), persistent("mover")).await;
    assert!(ack.session_present, "the session came along");
    assert_eq!(payloads(&mut c, 5).await, numbers(5));
    // Node 0 let go: no session, no route of its own; node 1 routes for it now.
    assert!(nodes[0].broker.sessions.get("mover").is_none());
    routed(&nodes[0], "m/x", &["node-1"]).await;
    // Its subscription works from anywhere.
    publish_all(nodes[0].addr(), "m/2", 3).await;
    assert_eq!(payloads(&mut c, 3).await, numbers(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_larger_than_a_transfer_part_moves_whole_and_in_order() {
    // 40 messages of 1 MB queued: more than one part of a transfer (32 MiB), so the session
    // goes in several frames.
    const N: usize = 40;
    let (nodes, _) = pair(|_, c| c.max_packet_size = 2 << 20).await;
    park_big_session(nodes[0].addr(), N).await;

    let (mut c, ack) = Raw::connect_with(nodes[1].addr(), persistent("big")).await;
    assert!(ack.session_present, "the session came along");
    let got: Vec<String> = payloads(&mut c, N)
        .await
        .into_iter()
        .map(|p| p.split(':').next().unwrap().to_owned())
        .collect();
    assert_eq!(got, numbers(N));
    assert!(nodes[0].broker.sessions.get("big").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_session_is_taken_over_across_nodes_with_what_was_in_flight() {
    let (nodes, _) = pair(|_, _| {}).await;
    let (mut old, _) = Raw::connect_with(nodes[0].addr(), persistent("dev")).await;
    old.subscribe("f/#", QoS::AtLeastOnce).await;
    let (mut p, _) = Raw::connect(nodes[0].addr(), Protocol::V5, "p", true).await;
    p.publish("f/a", b"unacked", QoS::AtLeastOnce, false, 1)
        .await;
    // Received, never acknowledged.
    assert_eq!(&old.recv_publish().await.payload[..], b"unacked");

    let (mut new, ack) = Raw::connect_with(nodes[1].addr(), persistent("dev")).await;
    assert!(ack.session_present);
    let d = old.expect_closed().await.unwrap();
    assert_eq!(d.reason, reason::SESSION_TAKEN_OVER);
    let again = new.recv_publish().await;
    assert_eq!(&again.payload[..], b"unacked");
    assert!(again.dup, "a resend of what was in flight");
    assert_eq!(
        nodes[0]
            .broker
            .metrics
            .takeovers_total
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_start_elsewhere_ends_the_old_session_and_publishes_its_will() {
    let (nodes, _) = pair(|_, _| {}).await;
    let (mut watcher, _) = Raw::connect(nodes[1].addr(), Protocol::V5, "w", true).await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    routed(&nodes[0], "wills/x", &["node-1"]).await;
    let mut c = persistent("dev");
    c.will = Some(rookery_codec::LastWill {
        topic: "wills/dev".into(),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: rookery_codec::WillProperties {
            will_delay_interval: Some(600),
            ..Default::default()
        },
    });
    let (mut old, _) = Raw::connect_with(nodes[0].addr(), c).await;
    old.subscribe("x/#", QoS::AtLeastOnce).await;
    drop(old); // dropped: the will waits for its delay, the session stays parked
    until("parked", || {
        nodes[0]
            .broker
            .sessions
            .get("dev")
            .is_some_and(|s| !s.is_attached())
    })
    .await;
    let (_new, ack) = Raw::connect(nodes[1].addr(), Protocol::V5, "dev", true).await;
    assert!(!ack.session_present);
    assert_eq!(&watcher.recv_publish().await.payload[..], b"gone");
    until("node 0 let go", || {
        nodes[0].broker.sessions.get("dev").is_none()
    })
    .await;
    routed(&nodes[1], "x/y", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_disk_each_the_session_lives_on_the_node_its_client_is_on_after_restarts() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let paths: Vec<std::path::PathBuf> = dirs.iter().map(|d| d.path().to_owned()).collect();
    let store = |i: usize, c: &mut rookery_broker::Config| {
        c.durability = rookery_broker::config::DurabilityMode::Sync;
        c.data_dir = paths[i].clone();
    };
    let (nodes, peers) = pair(store).await;
    let (mut c, _) = Raw::connect_with(nodes[0].addr(), persistent("d")).await;
    c.subscribe("q/#", QoS::AtLeastOnce).await;
    c.disconnect().await;
    publish_all(nodes[0].addr(), "q/1", 4).await;
    let (mut c, ack) = Raw::connect_with(nodes[1].addr(), persistent("d")).await;
    assert!(ack.session_present);
    assert_eq!(payloads(&mut c, 4).await, numbers(4));
    c.disconnect().await;
    publish_all(nodes[1].addr(), "q/2", 2).await;
    // Both restart on their disks: only node 1 brings the session back.
    let ports: Vec<u16> = peers
        .iter()
        .map(|p| p.rsplit_once(':').unwrap().1.parse().unwrap())
        .collect();
    for n in nodes {
        n.shutdown().await;
    }
    let mut nodes = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        nodes.push(node_with(&format!("node-{i}"), "ho", *port, &peers, |c| store(i, c)).await);
    }
    assert!(nodes[0].broker.sessions.get("d").is_none());
    assert!(nodes[1].broker.sessions.get("d").is_some());
    until("linked", || nodes.iter().all(|n| up(n).len() == 1)).await;
    let (mut c, ack) = Raw::connect_with(nodes[0].addr(), persistent("d")).await;
    assert!(ack.session_present);
    assert_eq!(payloads(&mut c, 2).await, numbers(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_shared_stores_a_session_whose_node_is_gone_resumes_from_them() {
    let redis = rookery_testkit::RedisServer::start_private();
    let pg = rookery_testkit::PostgresServer::start_private();
    let (redis_url, pg_url) = (redis.url().to_owned(), pg.database());
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let paths: Vec<std::path::PathBuf> = dirs.iter().map(|d| d.path().to_owned()).collect();
    let prefix = format!("ho{}", std::process::id());
    let store = |i: usize, c: &mut rookery_broker::Config| {
        c.durability = rookery_broker::config::DurabilityMode::Sync;
        c.data_dir = paths[i].clone();
        c.redis_url = Some(redis_url.clone());
        c.postgres_url = Some(pg_url.clone());
        c.cluster_name = prefix.clone();
    };
    let (mut nodes, _) = pair(store).await;
    let (mut c, _) = Raw::connect_with(nodes[0].addr(), persistent("s")).await;
    c.subscribe("s/#", QoS::AtLeastOnce).await;
    c.disconnect().await;
    publish_all(nodes[0].addr(), "s/1", 3).await;
    // Moves to node 1 over the link; the shared rows are node 1's now.
    let (mut c, ack) = Raw::connect_with(nodes[1].addr(), persistent("s")).await;
    assert!(ack.session_present);
    assert_eq!(payloads(&mut c, 3).await, numbers(3));
    c.disconnect().await;
    publish_all(nodes[1].addr(), "s/2", 2).await;
    // Node 1 goes for good; the client comes back to node 0, which reads Redis and PostgreSQL.
    nodes.pop().unwrap().shutdown().await;
    until("alone", || up(&nodes[0]).is_empty()).await;
    let (mut c, ack) = Raw::connect_with(nodes[0].addr(), persistent("s")).await;
    assert!(ack.session_present);
    assert_eq!(payloads(&mut c, 2).await, numbers(2));
}

/// Reads a connection until the broker closes it, acknowledging QoS 1; the publishes seen
/// as (payload, dup).
async fn read_until_closed(mut c: Raw, seen: &mut Vec<(u32, bool)>) {
    loop {
        match c.recv_within(std::time::Duration::from_secs(5)).await {
            Some(Packet::Publish(p)) => {
                seen.push((String::from_utf8_lossy(&p.payload).parse().unwrap(), p.dup));
                c.try_send(Packet::PubAck(rookery_codec::Ack {
                    packet_id: p.packet_id,
                    ..Default::default()
                }))
                .await;
            }
            Some(_) => {}
            None => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_moving_back_and_forth_under_load_misses_nothing_and_repeats_only_resends() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let ports = [free_port(), free_port(), free_port()];
    let peers: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut nodes = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        // Queues big enough for the whole run: a drop would be the queue's policy at work,
        // not the hand-over's doing.
        nodes.push(
            node_with(&format!("node-{i}"), "mv", *port, &peers, |c| {
                c.max_queued_messages = 100_000;
                c.max_queued_bytes = 1 << 30;
            })
            .await,
        );
    }
    until("mesh", || nodes.iter().all(|n| up(n).len() == 2)).await;
    let (mut c, _) = Raw::connect_with(nodes[0].addr(), persistent("mover")).await;
    c.subscribe("load/#", QoS::AtLeastOnce).await;
    routed(&nodes[2], "load/x", &["node-0"]).await;

    // A publisher on the third node, QoS 1, as fast as acknowledged.
    const N: u32 = 4_000;
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let publisher_addr = nodes[2].addr();
    let finished = done.clone();
    let publisher = tokio::spawn(async move {
        let (mut p, _) = Raw::connect(publisher_addr, Protocol::V5, "pub", true).await;
        for i in 1..=N {
            let pid = (i % 60_000) as u16 + 1;
            p.publish(
                "load/x",
                i.to_string().as_bytes(),
                QoS::AtLeastOnce,
                false,
                pid,
            )
            .await;
        }
        finished.store(true, Ordering::Relaxed);
    });

    // The subscriber moves between node 0 and node 1 while the messages flow.
    let mut seen = Vec::new();
    let mut at = 0;
    for _ in 0..6 {
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
        at = 1 - at;
        let addr = nodes[at].addr();
        let next = tokio::spawn(async move { Raw::connect_with(addr, persistent("mover")).await });
        read_until_closed(c, &mut seen).await;
        let (new, ack) = next.await.unwrap();
        assert!(ack.session_present);
        c = new;
    }
    // The last connection gets the rest. It reads while the publisher goes on: the
    // publisher's PUBACK waits until the subscriber's node has each message, and that node
    // stops taking messages from the link while the subscriber reads none.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let got: std::collections::HashSet<u32> = seen.iter().map(|(n, _)| *n).collect();
        if got.len() == N as usize || tokio::time::Instant::now() > deadline {
            break;
        }
        if let Some(Packet::Publish(p)) = c.recv_within(std::time::Duration::from_millis(500)).await
        {
            seen.push((String::from_utf8_lossy(&p.payload).parse().unwrap(), p.dup));
            c.send(Packet::PubAck(rookery_codec::Ack {
                packet_id: p.packet_id,
                ..Default::default()
            }))
            .await;
        }
    }
    publisher.await.unwrap();
    assert!(done.load(Ordering::Relaxed));
    let mut count = std::collections::HashMap::new();
    for (n, dup) in &seen {
        let e = count.entry(*n).or_insert((0, 0));
        e.0 += 1;
        if *dup {
            e.1 += 1;
        }
    }
    let missing: Vec<u32> = (1..=N).filter(|n| !count.contains_key(n)).collect();
    assert!(
        missing.is_empty(),
        "{} missing, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    // A message seen twice is a resend of one in flight when its connection was taken over.
    let repeated: Vec<(u32, (u32, u32))> = count
        .iter()
        .filter(|(_, (n, dups))| *n > 1 && *dups < *n - 1)
        .map(|(k, v)| (*k, *v))
        .collect();
    assert!(
        repeated.is_empty(),
        "delivered twice without DUP: {repeated:?}"
    );
    // No queue overflowed (that would be the queue's policy, not the moves), and no node
    // but the last holds the session.
    for n in &nodes {
        let m = scrape(n.metrics_addr.unwrap()).await;
        let dropped: f64 = m
            .iter()
            .filter(|(k, _)| k.starts_with("rookery_messages_dropped_total"))
            .map(|(_, v)| v)
            .sum();
        assert_eq!(dropped, 0.0);
    }
    for (i, n) in nodes.iter().enumerate() {
        let held = n.broker.sessions.get("mover").is_some();
        assert_eq!(held, i == at, "node {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_hands_its_parked_sessions_to_the_others() {
    let (mut nodes, _) = pair(|_, c| c.drain_rate = 1000).await;
    for id in ["p1", "p2", "p3"] {
        let (mut c, _) = Raw::connect_with(nodes[0].addr(), persistent(id)).await;
        c.subscribe("d/#", QoS::AtLeastOnce).await;
        c.disconnect().await;
    }
    publish_all(nodes[0].addr(), "d/1", 3).await;
    let leaving = nodes.remove(0);
    leaving.drain().await;
    // Everything is on the node that stays, routed there, and nothing is left behind.
    for id in ["p1", "p2", "p3"] {
        assert!(leaving.broker.sessions.get(id).is_none(), "{id}");
        assert!(nodes[0].broker.sessions.get(id).is_some(), "{id}");
    }
    leaving.shutdown().await;
    publish_all(nodes[0].addr(), "d/2", 2).await;
    for id in ["p1", "p2", "p3"] {
        let (mut c, ack) = Raw::connect_with(nodes[0].addr(), persistent(id)).await;
        assert!(ack.session_present, "{id}");
        let mut got = payloads(&mut c, 5).await;
        got.sort();
        assert_eq!(got, ["1", "1", "2", "2", "3"], "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sessions_of_a_node_that_dies_are_adopted_and_keep_queueing() {
    let redis = rookery_testkit::RedisServer::start_private();
    let pg = rookery_testkit::PostgresServer::start_private();
    let (redis_url, pg_url) = (redis.url().to_owned(), pg.database());
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let ports = [free_port(), free_port(), free_port()];
    let peers: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut nodes = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let (r, p, d) = (redis_url.clone(), pg_url.clone(), dirs[i].path().to_owned());
        nodes.push(
            node_with(&format!("node-{i}"), "adopt", *port, &peers, move |c| {
                c.durability = rookery_broker::config::DurabilityMode::Sync;
                c.data_dir = d;
                c.redis_url = Some(r);
                c.postgres_url = Some(p);
            })
            .await,
        );
    }
    until("mesh", || nodes.iter().all(|n| up(n).len() == 2)).await;
    // Offline sessions on node 2, with messages queued.
    let ids: Vec<String> = (0..16).map(|i| format!("sleeper-{i}")).collect();
    for id in &ids {
        let (mut c, _) = Raw::connect_with(nodes[2].addr(), persistent(id)).await;
        c.subscribe("a/#", QoS::AtLeastOnce).await;
        c.disconnect().await;
    }
    publish_all(nodes[0].addr(), "a/1", 2).await;
    // Forwarded and queued there (a forward not yet taken in is lost with a node that dies:
    // docs/clustering.md).
    until("queued on node 2", || {
        ids.iter().all(|id| {
            nodes[2]
                .broker
                .sessions
                .get(id)
                .is_some_and(|s| s.queued() == 2)
        })
    })
    .await;
    // With the entries, node 2 wrote how far it handled node 0's forwarded messages.
    until("node 2's forward mark", || {
        rookery_testkit::PostgresServer::psql(
            &pg_url,
            "SELECT upto FROM forward_marks WHERE receiver = 'node-2' AND sender = 'node-0'",
        )
        .trim()
            == "2"
    })
    .await;
    // Node 2 stops without draining (as a crash would leave it, its state in the stores).
    let dead = nodes.pop().unwrap();
    dead.shutdown().await;
    until("every session adopted", || {
        ids.iter().all(|id| {
            nodes
                .iter()
                .filter(|n| n.broker.sessions.get(id).is_some())
                .count()
                == 1
        })
    })
    .await;
    // Each adoption is a claim in Redis, just after node 2's own.
    for id in &ids {
        let holder = nodes
            .iter()
            .find(|n| n.broker.sessions.get(id).is_some())
            .unwrap();
        let owner = redis.command(&["GET", &format!("rookery:adopt:owner:{id}")]);
        assert!(
            owner.ends_with(&format!(" {}", holder.broker.config.node_id)),
            "{id}: {owner}"
        );
    }
    // Both survivors took a share, and route for them again.
    assert!(
        nodes
            .iter()
            .all(|n| ids.iter().any(|id| n.broker.sessions.get(id).is_some()))
    );
    routed(&nodes[0], "a/x", &["node-1"]).await;
    // What is published now is queued for them.
    publish_all(nodes[0].addr(), "a/2", 2).await;
    for id in &ids {
        let (mut c, ack) = Raw::connect_with(nodes[0].addr(), persistent(id)).await;
        assert!(ack.session_present, "{id}");
        let mut got = payloads(&mut c, 4).await;
        got.sort();
        assert_eq!(got, ["1", "1", "2", "2"], "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_of_the_first_protocol_level_gets_a_large_queue_in_one_reply_not_in_parts() {
    // A node that does not know `HandoverPart` (its Hello says level 2) would close the link
    // on one: it gets the whole queue in the `HandoverReply`, as before parts existed.
    use rookery_broker::cluster::frame::{self, Frame};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const N: usize = 40;
    let port = free_port();
    let node = node_with("node-a", "prod", port, &[], |c| {
        c.max_packet_size = 2 << 20;
    })
    .await;
    park_big_session(node.addr(), N).await;

    let mut old = crate::cluster::link_as_peer(port, "node-z", frame::FIRST_LEVEL).await;
    let mut out = bytes::BytesMut::new();
    frame::encode(
        &Frame::HandoverAsk {
            client_id: "big".into(),
            at_ms: rookery_store::now_ms(),
        },
        &mut out,
    );
    old.write_all(&out).await.unwrap();
    let mut buf = bytes::BytesMut::new();
    let entries = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            while let Some(f) = frame::decode(&mut buf).unwrap() {
                match f {
                    Frame::HandoverPart { .. } => panic!("a part sent to a level-2 peer"),
                    Frame::HandoverReply { transfer, .. } => {
                        return transfer.expect("the session").entries.len();
                    }
                    _ => {}
                }
            }
            assert!(old.read_buf(&mut buf).await.unwrap() > 0, "link closed");
        }
    })
    .await
    .expect("no HandoverReply");
    assert_eq!(entries, N);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moving_session_in_two_shared_groups_gets_the_relayed_delivery_of_each() {
    // The old node (a peer played by the test) hands a session over and relays deliveries
    // for it: one message picked for the session in two shared groups comes twice, once per
    // group, and reaches the client twice; a repeat of either, or a level-3 relay naming no
    // group, is a duplicate.
    use rookery_broker::cluster::frame::{self, Frame};
    use rookery_broker::cluster::handover::Transfer;
    use rookery_store::{SessionRecord, StoredMessage, SubscriptionRecord};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let port = free_port();
    let node = node_with("node-a", "prod", port, &[], |_| {}).await;
    let mut old = crate::cluster::link_as_peer(port, "node-z", frame::LEVEL).await;
    until("the old node linked", || up(&node) == ["node-z"]).await;

    // The client resumes here; the old node answers the ask with the session.
    let addr = node.addr();
    let client = tokio::spawn(async move { Raw::connect_with(addr, persistent("dev")).await });
    let mut buf = bytes::BytesMut::new();
    let at_ms = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            while let Some(f) = frame::decode(&mut buf).unwrap() {
                if let Frame::HandoverAsk { client_id, at_ms } = f {
                    assert_eq!(client_id, "dev");
                    return at_ms;
                }
            }
            assert!(old.read_buf(&mut buf).await.unwrap() > 0, "link closed");
        }
    })
    .await
    .expect("no HandoverAsk");
    let subscription = |filter: &str, id: u32| SubscriptionRecord {
        filter: filter.into(),
        qos: 1,
        no_local: false,
        retain_as_published: false,
        retain_handling: 0,
        id: Some(id),
    };
    let transfer = Transfer {
        record: SessionRecord {
            client_id: "dev".into(),
            expiry_secs: 3600,
            disconnected_at_ms: None,
            username: None,
            by_password: false,
            subscriptions: vec![subscription("$share/a/t", 1), subscription("$share/b/t", 2)],
            will: None,
            owner_node: "node-z".into(),
            epoch: 1,
        },
        entries: vec![],
        incoming: vec![],
    };
    let message = StoredMessage {
        topic: "t".into(),
        payload: bytes::Bytes::from_static(b"42"),
        qos: 1,
        retain: false,
        properties: bytes::Bytes::new(),
        expires_at_ms: None,
    };
    let relayed = |id: u64, sub: u32| frame::Relayed {
        client_id: "dev".into(),
        id,
        message: message.clone(),
        qos: 1,
        retain: false,
        subscription_ids: vec![sub],
    };
    let in_group = |id: u64, group: &str, sub: u32| Frame::DeliverInGroup {
        delivery: relayed(id, sub),
        group: group.into(),
    };
    let mut out = bytes::BytesMut::new();
    frame::encode(
        &Frame::HandoverReply {
            client_id: "dev".into(),
            at_ms,
            transfer: Some(Box::new(transfer)),
        },
        &mut out,
    );
    frame::encode(&in_group(42, "$share/a/t", 1), &mut out);
    frame::encode(&in_group(42, "$share/b/t", 2), &mut out);
    frame::encode(&in_group(42, "$share/a/t", 1), &mut out);
    frame::encode(
        &Frame::Deliver {
            delivery: relayed(42, 1),
            shared: true,
        },
        &mut out,
    );
    old.write_all(&out).await.unwrap();
    let (mut c, ack) = client.await.unwrap();
    assert!(ack.session_present, "the session came from the old node");

    let mut got = Vec::new();
    while let Some(packet) = c.recv_within(std::time::Duration::from_secs(1)).await {
        if let Packet::Publish(p) = packet {
            got.push(p.properties.subscription_identifiers.clone());
            c.send(Packet::PubAck(rookery_codec::Ack {
                packet_id: p.packet_id,
                ..Default::default()
            }))
            .await;
        }
    }
    got.sort();
    assert_eq!(
        got,
        vec![vec![1], vec![2]],
        "one delivery per group, no repeats"
    );
    node.shutdown().await;
}
