//! Cluster links between brokers in one process: a full mesh from one shared peer list,
//! one link per pair, a node going and coming back, and a node of another cluster refused.

use std::time::{Duration, Instant};

use rookery_broker::Server;

use crate::support::*;

/// A free port below the kernel's ephemeral range (32768 and up), so that no test binding
/// port 0 meanwhile can take it before the node does.
pub(crate) fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    // Held until this test process exits: a port is claimed by one process at a time (nextest
    // runs each test in its own), even between this check and the node's bind.
    static CLAIMS: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join("rookery-test-ports");
    std::fs::create_dir_all(&dir).unwrap();
    // Below the OS's ephemeral range, so no outgoing connection takes it meanwhile.
    let base = 20_000 + (std::process::id() % 500) as u16 * 20;
    loop {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % 2_000;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(port.to_string()))
            .unwrap();
        if lock.try_lock().is_err() {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            CLAIMS.lock().unwrap().push(lock);
            return port;
        }
    }
}

async fn node(id: &str, cluster: &str, port: u16, peers: &[String]) -> Server {
    node_with(id, cluster, port, peers, |_| {}).await
}

/// A node of `cluster` with `tweak` applied after the cluster settings.
pub(crate) async fn node_with(
    id: &str,
    cluster: &str,
    port: u16,
    peers: &[String],
    tweak: impl FnOnce(&mut rookery_broker::Config),
) -> Server {
    let (id, cluster, peers) = (id.to_owned(), cluster.to_owned(), peers.to_vec());
    start(move |c| {
        c.node_id = id;
        c.cluster_name = cluster;
        c.cluster_listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
        c.peers = peers;
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        // A drain lets one client go per second: the tests see it under way.
        c.drain_rate = 1;
        tweak(c);
    })
    .await
}

/// A TCP connection to a node's cluster port that has introduced itself as node `node_id` of
/// cluster "prod" at protocol `level`: the test then plays that peer, frame by frame.
pub(crate) async fn link_as_peer(port: u16, node_id: &str, level: u8) -> tokio::net::TcpStream {
    use rookery_broker::cluster::frame::{self, Frame, Hello};
    use tokio::io::AsyncWriteExt;
    let mut peer = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut out = bytes::BytesMut::new();
    frame::encode(
        &Frame::Hello(Hello {
            cluster: "prod".into(),
            node_id: node_id.into(),
            epoch: 1,
            // Its id is the larger: without this the node would wait for it to dial instead.
            insist: true,
            protocol: level,
        }),
        &mut out,
    );
    peer.write_all(&out).await.unwrap();
    peer
}

pub(crate) fn up(s: &Server) -> Vec<String> {
    s.broker.cluster.get().unwrap().up_peers()
}

pub(crate) async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_from_one_peer_list_link_once_per_pair_and_relink_after_a_restart() {
    let ports = [free_port(), free_port(), free_port()];
    let peers: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let a = node("node-a", "prod", ports[0], &peers).await;
    let b = node("node-b", "prod", ports[1], &peers).await;
    let c = node("node-c", "prod", ports[2], &peers).await;
    until("a full mesh", || {
        up(&a) == ["node-b", "node-c"]
            && up(&b) == ["node-a", "node-c"]
            && up(&c) == ["node-a", "node-b"]
    })
    .await;
    // Each node shows the two others by their configured address, up; not itself. (A link
    // the peer dialed is matched to its address once this node's own dial has met it.)
    until("A's status by address", || {
        let s = a.broker.cluster.get().unwrap().status();
        s.len() == 2 && s.iter().all(|p| p.up)
    })
    .await;
    let m = scrape(a.metrics_addr.unwrap()).await;
    assert_eq!(
        value(
            &m,
            &format!("rookery_cluster_link_up{{peer=\"{}\"}}", peers[1])
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            &format!("rookery_cluster_link_up{{peer=\"{}\"}}", peers[2])
        ),
        1.0
    );
    assert!(!m.contains_key(&format!("rookery_cluster_link_up{{peer=\"{}\"}}", peers[0])));

    // Both sides dialed each other; the links settle on one per pair and stay.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(up(&a), ["node-b", "node-c"]);

    // C goes away: A and B see it down.
    c.shutdown().await;
    until("C down on A and B", || {
        up(&a) == ["node-b"] && up(&b) == ["node-a"]
    })
    .await;
    let m = scrape(a.metrics_addr.unwrap()).await;
    assert_eq!(
        value(
            &m,
            &format!("rookery_cluster_link_up{{peer=\"{}\"}}", peers[2])
        ),
        0.0
    );

    // C comes back on the same address with a new boot epoch: linked again.
    let c = node("node-c", "prod", ports[2], &peers).await;
    until("C back", || {
        up(&a) == ["node-b", "node-c"]
            && up(&b) == ["node-a", "node-c"]
            && up(&c) == ["node-a", "node-b"]
    })
    .await;
    for s in [a, b, c] {
        s.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_cluster_is_refused() {
    let ports = [free_port(), free_port()];
    let peers: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let a = node("node-a", "prod", ports[0], &peers).await;
    let intruder = node("node-x", "staging", ports[1], &peers).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(up(&a).is_empty());
    assert!(up(&intruder).is_empty());
    a.shutdown().await;
    intruder.shutdown().await;
}

#[tokio::test]
async fn peers_without_a_cluster_listener_or_not_host_port_are_config_errors() {
    let c = rookery_broker::Config {
        peers: vec!["node-1.headless:4370".into()],
        ..rookery_broker::Config::default()
    };
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("cluster_listen")
    );
    let c = rookery_broker::Config {
        peers: vec!["node-1.headless".into()],
        cluster_listen: Some("127.0.0.1:4370".parse().unwrap()),
        ..rookery_broker::Config::default()
    };
    assert!(c.validate().unwrap_err().to_string().contains("peers"));
}

async fn mesh(n: usize) -> (Vec<Server>, Vec<String>) {
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let peers: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut nodes = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        nodes.push(node(&format!("node-{i}"), "prod", *port, &peers).await);
    }
    let all = nodes.len() - 1;
    let ready = || nodes.iter().all(|s| up(s).len() == all);
    until("a full mesh", ready).await;
    (nodes, peers)
}

/// Waits until `node` routes `topic` to `peers` (route announcements are asynchronous).
pub(crate) async fn routed(node: &Server, topic: &str, peers: &[&str]) {
    let cluster = node.broker.cluster.get().unwrap().clone();
    let want: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
    until(&format!("routes for {topic}"), || {
        let mut got: Vec<String> = cluster
            .remote
            .read()
            .peers_for(topic)
            .iter()
            .map(|p| p.to_string())
            .collect();
        got.sort();
        got == want
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_on_one_node_gets_what_is_published_on_another_once() {
    let (nodes, _) = mesh(3).await;
    let (mut s1, _) = Raw::connect(nodes[1].addr(), rookery_codec::Protocol::V5, "s1", true).await;
    s1.subscribe("plant/+/temp", rookery_codec::QoS::AtLeastOnce)
        .await;
    // Overlapping filters on one node still make one forward.
    s1.subscribe("plant/#", rookery_codec::QoS::AtLeastOnce)
        .await;
    let (mut s2, _) =
        Raw::connect(nodes[2].addr(), rookery_codec::Protocol::V311, "s2", true).await;
    s2.subscribe("plant/#", rookery_codec::QoS::AtMostOnce)
        .await;
    routed(&nodes[0], "plant/a/temp", &["node-1", "node-2"]).await;

    let (mut p, _) = Raw::connect(nodes[0].addr(), rookery_codec::Protocol::V5, "p", true).await;
    for i in 1..=20u16 {
        p.publish(
            "plant/a/temp",
            format!("{i}").as_bytes(),
            rookery_codec::QoS::AtLeastOnce,
            false,
            i,
        )
        .await;
    }
    for i in 1..=20u16 {
        let m = s1.recv_publish().await;
        assert_eq!(&m.payload[..], format!("{i}").as_bytes(), "in order");
        assert_eq!(m.qos, rookery_codec::QoS::AtLeastOnce);
        s1.send(rookery_codec::Packet::PubAck(rookery_codec::Ack {
            packet_id: m.packet_id,
            ..Default::default()
        }))
        .await;
        let m = s2.recv_publish().await;
        assert_eq!(&m.payload[..], format!("{i}").as_bytes());
        assert_eq!(
            m.qos,
            rookery_codec::QoS::AtMostOnce,
            "downgraded to the subscription"
        );
    }
    // Once per node: no duplicates, and nothing comes back to node 0 (no loops).
    s1.expect_silence(Duration::from_millis(300)).await;
    s2.expect_silence(Duration::from_millis(10)).await;
    let c0 = nodes[0].broker.cluster.get().unwrap();
    assert_eq!(
        c0.forward_counts(),
        vec![("node-1".into(), 20, 0), ("node-2".into(), 20, 0)]
    );
    assert!(
        nodes[1]
            .broker
            .cluster
            .get()
            .unwrap()
            .forward_counts()
            .is_empty()
    );
    let m = scrape(nodes[0].metrics_addr.unwrap()).await;
    assert_eq!(
        value(
            &m,
            "rookery_cluster_forwarded_messages_total{peer=\"node-1\"}"
        ),
        20.0
    );

    // The last unsubscribe on a node withdraws its route: node 0 stops forwarding there.
    s2.send(rookery_codec::Packet::Unsubscribe(
        rookery_codec::Unsubscribe {
            packet_id: 9,
            filters: vec!["plant/#".into()],
            user_properties: Default::default(),
        },
    ))
    .await;
    routed(&nodes[0], "plant/a/temp", &["node-1"]).await;
    p.publish(
        "plant/a/temp",
        b"21",
        rookery_codec::QoS::AtLeastOnce,
        false,
        21,
    )
    .await;
    assert_eq!(&s1.recv_publish().await.payload[..], b"21");
    assert_eq!(
        nodes[0].broker.cluster.get().unwrap().forward_counts(),
        vec![("node-1".into(), 21, 0), ("node-2".into(), 20, 0)]
    );
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_reach_every_node_and_a_late_subscriber_anywhere_gets_them() {
    let (nodes, _) = mesh(3).await;
    let (mut p, _) = Raw::connect(nodes[0].addr(), rookery_codec::Protocol::V5, "p", true).await;
    p.publish(
        "status/line-1",
        b"running",
        rookery_codec::QoS::AtLeastOnce,
        true,
        1,
    )
    .await;
    let b = nodes[2].broker.clone();
    until("the retained message on node 2", || {
        b.retained.read().len() == 1
    })
    .await;
    let (mut late, _) =
        Raw::connect(nodes[2].addr(), rookery_codec::Protocol::V5, "late", true).await;
    late.subscribe("status/#", rookery_codec::QoS::AtLeastOnce)
        .await;
    let m = late.recv_publish().await;
    assert_eq!(
        (&m.topic[..], &m.payload[..], m.retain),
        ("status/line-1", &b"running"[..], true)
    );
    // Cleared on node 0, cleared everywhere.
    p.publish(
        "status/line-1",
        b"",
        rookery_codec::QoS::AtLeastOnce,
        true,
        2,
    )
    .await;
    until("the retained message gone on node 2", || {
        b.retained.read().is_empty()
    })
    .await;
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_on_its_own_store_has_the_retained_messages_published_elsewhere() {
    let ports = [free_port(), free_port()];
    let peers: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let with_store = |i: usize| {
        let data = dirs[i].path().to_path_buf();
        move |c: &mut rookery_broker::Config| {
            c.data_dir = data;
            c.durability = rookery_broker::config::DurabilityMode::Sync;
        }
    };
    let n0 = node_with("node-0", "prod", ports[0], &peers, with_store(0)).await;
    let n1 = node_with("node-1", "prod", ports[1], &peers, with_store(1)).await;
    until("linked", || up(&n0).len() == 1 && up(&n1).len() == 1).await;
    let (mut p, _) = Raw::connect(n0.addr(), rookery_codec::Protocol::V5, "p", true).await;
    let qos1 = rookery_codec::QoS::AtLeastOnce;
    p.publish("status/a", b"on", qos1, true, 1).await;
    p.publish("status/b", b"x", qos1, true, 2).await;
    // Cleared where it was published: cleared in every node's store too.
    p.publish("status/b", b"", qos1, true, 3).await;
    let b = n1.broker.clone();
    until("node 1 has the retained messages", || {
        let r = b.retained.read();
        r.len() == 1 && r.matching("status/b").is_empty()
    })
    .await;
    drop(b);
    n1.shutdown().await;
    n0.shutdown().await;

    // Node 1 alone on its disk: node 0's retained message is there, the cleared one is not.
    let n1 = start(with_store(1)).await;
    assert_eq!(n1.broker.retained.read().len(), 1);
    let (mut late, _) = Raw::connect(n1.addr(), rookery_codec::Protocol::V5, "late", true).await;
    late.subscribe("status/#", qos1).await;
    let m = late.recv_publish().await;
    assert_eq!((&m.topic[..], &m.payload[..]), ("status/a", &b"on"[..]));
    late.expect_silence(Duration::from_millis(200)).await;
    n1.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_shared_retained_store_a_node_back_from_a_cut_has_what_was_set_and_cleared_meanwhile()
 {
    use crate::cable::Cable;
    let pg = rookery_testkit::PostgresServer::shared().database();
    let (port_0, port_1) = (free_port(), free_port());
    let to_0 = Cable::to(format!("127.0.0.1:{port_0}").parse().unwrap()).await;
    let to_1 = Cable::to(format!("127.0.0.1:{port_1}").parse().unwrap()).await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let with_pg = |i: usize| {
        let (pg, data) = (pg.clone(), dirs[i].path().to_path_buf());
        move |c: &mut rookery_broker::Config| {
            c.data_dir = data;
            c.durability = rookery_broker::config::DurabilityMode::Sync;
            c.postgres_url = Some(pg);
        }
    };
    let n0 = node_with(
        "node-0",
        "prod",
        port_0,
        &[to_1.addr().to_string()],
        with_pg(0),
    )
    .await;
    let n1 = node_with(
        "node-1",
        "prod",
        port_1,
        &[to_0.addr().to_string()],
        with_pg(1),
    )
    .await;
    until("linked", || up(&n0).len() == 1 && up(&n1).len() == 1).await;
    let (mut p, _) = Raw::connect(n0.addr(), rookery_codec::Protocol::V5, "p", true).await;
    let qos1 = rookery_codec::QoS::AtLeastOnce;
    p.publish("cfg/old", b"1", qos1, true, 1).await;
    let b = n1.broker.clone();
    until("node 1 has cfg/old", || b.retained.read().len() == 1).await;

    // Cut: node 0's client clears one and sets another; node 1 hears of neither.
    to_0.cut();
    to_1.cut();
    until("the link down", || up(&n0).is_empty() && up(&n1).is_empty()).await;
    p.publish("cfg/old", b"", qos1, true, 2).await;
    p.publish("cfg/new", b"2", qos1, true, 3).await;
    assert!(b.retained.read().get("cfg/old").is_some());

    // Mended: node 1 reads the store again once the link is back.
    to_0.mend();
    to_1.mend();
    until("node 1 back in step", || {
        let r = b.retained.read();
        r.len() == 1 && r.get("cfg/new").is_some()
    })
    .await;
    let (mut late, _) = Raw::connect(n1.addr(), rookery_codec::Protocol::V5, "late", true).await;
    late.subscribe("cfg/#", qos1).await;
    let m = late.recv_publish().await;
    assert_eq!((&m.topic[..], &m.payload[..]), ("cfg/new", &b"2"[..]));
    late.expect_silence(Duration::from_millis(200)).await;
    drop(b);
    n0.shutdown().await;
    n1.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_drains_away_takes_its_routes_with_it_at_once() {
    // (One that stops without a word keeps them for a while: see `forward_acks`.)
    let (mut nodes, _) = mesh(2).await;
    // A persistent session: its subscription outlives the connection, so only the node's
    // departure (its session handed over, then its link gone) takes the route.
    let (mut s, _) = Raw::connect(nodes[1].addr(), rookery_codec::Protocol::V311, "s", false).await;
    s.subscribe("x/#", rookery_codec::QoS::AtLeastOnce).await;
    routed(&nodes[0], "x/y", &["node-1"]).await;
    let started = Instant::now();
    let gone = nodes.pop().unwrap();
    gone.drain().await;
    gone.shutdown().await;
    routed(&nodes[0], "x/y", &[]).await;
    assert!(started.elapsed() < rookery_broker::cluster::KEPT_WHILE_DOWN);
    assert!(
        nodes[0].broker.sessions.get("s").is_some(),
        "the drained node's session was handed over"
    );
    drop(s);
    nodes.pop().unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_on_another_node_slows_the_publisher_and_loses_nothing() {
    let (nodes, _) = mesh(2).await;
    let (mut slow, _) =
        Raw::connect(nodes[1].addr(), rookery_codec::Protocol::V311, "slow", true).await;
    slow.subscribe("flood", rookery_codec::QoS::AtLeastOnce)
        .await;
    routed(&nodes[0], "flood", &["node-1"]).await;
    // Far more than the subscriber's queue (1000), its backpressure depth (256) and the
    // link's queue before publishers pause (8192) together.
    const N: u32 = 20_000;
    let addr = nodes[0].addr();
    let publisher = tokio::spawn(async move {
        let (mut p, _) = Raw::connect(addr, rookery_codec::Protocol::V311, "p", true).await;
        let mut acked = 0u32;
        let mut sent = 0u32;
        // Up to 100 in flight, as a client with a window does.
        while acked < N {
            while sent < N && sent - acked < 100 {
                sent += 1;
                let id = (sent % 65_000 + 1) as u16;
                p.send(rookery_codec::Packet::Publish(publish(
                    "flood",
                    &sent.to_be_bytes(),
                    rookery_codec::QoS::AtLeastOnce,
                    false,
                    id,
                )))
                .await;
            }
            match p.recv_within(Duration::from_secs(30)).await {
                Some(rookery_codec::Packet::PubAck(_)) => acked += 1,
                other => panic!("publisher got {other:?} after {acked} acks"),
            }
        }
    });
    // The subscriber reads nothing for a while, then everything.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 1..=N {
        let m = slow.recv_publish().await;
        assert_eq!(
            &m.payload[..],
            &i.to_be_bytes(),
            "message {i}; forwarded {:?}; dropped on node 1 {:?}",
            nodes[0].broker.cluster.get().unwrap().forward_counts(),
            nodes[1].broker.metrics.dropped_queue_full_total
        );
        slow.send(rookery_codec::Packet::PubAck(rookery_codec::Ack {
            packet_id: m.packet_id,
            ..Default::default()
        }))
        .await;
    }
    publisher.await.unwrap();
    let c0 = nodes[0].broker.cluster.get().unwrap();
    assert_eq!(
        c0.forward_counts(),
        vec![("node-1".into(), u64::from(N), 0)]
    );
    for n in &nodes {
        let m = &n.broker.metrics;
        assert_eq!(
            m.dropped_queue_full_total
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_connecting_on_another_node_takes_the_id_over() {
    let (nodes, _) = mesh(2).await;
    let (mut first, _) =
        Raw::connect(nodes[0].addr(), rookery_codec::Protocol::V5, "dev-1", true).await;
    let (_second, ack) =
        Raw::connect(nodes[1].addr(), rookery_codec::Protocol::V5, "dev-1", true).await;
    assert_eq!(ack.code, 0);
    let d = first.expect_closed().await.expect("a DISCONNECT");
    assert_eq!(d.reason, rookery_codec::reason::SESSION_TAKEN_OVER);
    let online = |s: &Server| {
        s.broker
            .sessions
            .get("dev-1")
            .is_some_and(|s| s.is_attached())
    };
    until("dev-1 only on node 1", || {
        !online(&nodes[0]) && online(&nodes[1])
    })
    .await;
    assert_eq!(
        nodes[0]
            .broker
            .metrics
            .takeovers_total
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_connects_of_one_client_id_on_two_nodes_leave_one_owner() {
    let (nodes, _) = mesh(2).await;
    for round in 0..10 {
        let id = format!("twin-{round}");
        let (a, b) = (nodes[0].addr(), nodes[1].addr());
        let (ia, ib) = (id.clone(), id.clone());
        let (ra, rb) = tokio::join!(
            Raw::connect(a, rookery_codec::Protocol::V5, &ia, true),
            Raw::connect(b, rookery_codec::Protocol::V5, &ib, true),
        );
        let online = |s: &Server| s.broker.sessions.get(&id).is_some_and(|s| s.is_attached());
        let deadline = Instant::now() + Duration::from_secs(5);
        while online(&nodes[0]) == online(&nodes[1]) {
            assert!(
                Instant::now() < deadline,
                "round {round}: online on node 0 {}, on node 1 {}",
                online(&nodes[0]),
                online(&nodes[1])
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // And it stays so.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(online(&nodes[0]) != online(&nodes[1]), "round {round}");
        drop((ra, rb));
    }
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_with_mutual_tls_admit_only_certificates_of_the_cluster_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::pki::ca("cluster CA");
    let other = crate::pki::ca("someone else");
    let ca_file = crate::pki::write(dir.path(), "ca.pem", &ca.pem);
    let files = |name: &str, leaf: &crate::pki::Leaf| {
        (
            crate::pki::write(dir.path(), &format!("{name}.crt"), &leaf.cert_pem),
            crate::pki::write(dir.path(), &format!("{name}.key"), &leaf.key_pem),
        )
    };
    let good = [
        files("n0", &ca.server(&rcgen::PKCS_ECDSA_P256_SHA256)),
        files("n1", &ca.server(&rcgen::PKCS_ECDSA_P256_SHA256)),
    ];
    let rogue = files("rogue", &other.server(&rcgen::PKCS_ECDSA_P256_SHA256));
    let ports = [free_port(), free_port()];
    // Peers by name, checked against the certificates' SAN (localhost).
    let peers: Vec<String> = ports.iter().map(|p| format!("localhost:{p}")).collect();
    let start_node = |i: usize, (cert, key): (std::path::PathBuf, std::path::PathBuf)| {
        let (peers, ca_file, port) = (peers.clone(), ca_file.clone(), ports[i]);
        async move {
            start(move |c| {
                c.node_id = format!("node-{i}");
                c.cluster_listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
                c.peers = peers;
                c.cluster_ca = Some(ca_file);
                c.cluster_cert = Some(cert);
                c.cluster_key = Some(key);
            })
            .await
        }
    };
    let n0 = start_node(0, good[0].clone()).await;
    let n1 = start_node(1, good[1].clone()).await;
    until("a TLS link", || {
        up(&n0) == ["node-1"] && up(&n1) == ["node-0"]
    })
    .await;
    // Messages cross it.
    let (mut s, _) = Raw::connect(n1.addr(), rookery_codec::Protocol::V5, "s", true).await;
    s.subscribe("t", rookery_codec::QoS::AtLeastOnce).await;
    routed(&n0, "t", &["node-1"]).await;
    let (mut p, _) = Raw::connect(n0.addr(), rookery_codec::Protocol::V5, "p", true).await;
    p.publish("t", b"over TLS", rookery_codec::QoS::AtLeastOnce, false, 1)
        .await;
    assert_eq!(&s.recv_publish().await.payload[..], b"over TLS");
    n1.shutdown().await;
    until("node-1 gone", || up(&n0).is_empty()).await;

    // A node whose certificate another CA signed cannot link, whichever side dials.
    let intruder = start_node(1, rogue).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(up(&n0).is_empty());
    assert!(up(&intruder).is_empty());
    n0.shutdown().await;
    intruder.shutdown().await;
}

/// As the operator runs it: peers found through DNS are dialed at their addresses, and every
/// node's certificate names only the headless Service, which `cluster_server_name` checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_dialed_by_address_are_checked_against_cluster_server_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::pki::ca("cluster CA");
    let ca_file = crate::pki::write(dir.path(), "ca.pem", &ca.pem);
    let leaf = ca.named("nodes.test");
    let cert = crate::pki::write(dir.path(), "n.crt", &leaf.cert_pem);
    let key = crate::pki::write(dir.path(), "n.key", &leaf.key_pem);
    let ports = [free_port(), free_port()];
    let start_node = |i: usize, server_name: Option<&str>| {
        let (ca_file, cert, key) = (ca_file.clone(), cert.clone(), key.clone());
        let server_name = server_name.map(str::to_owned);
        let (port, other) = (ports[i], ports[1 - i]);
        async move {
            start(move |c| {
                c.node_id = format!("node-{i}");
                c.cluster_listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
                // Resolves to 127.0.0.1: dialed by address, which no certificate names.
                c.peers_dns = Some(format!("localhost:{other}"));
                c.cluster_ca = Some(ca_file);
                c.cluster_cert = Some(cert);
                c.cluster_key = Some(key);
                c.cluster_server_name = server_name;
            })
            .await
        }
    };
    // Without it, the dialed address is checked and no link comes up.
    let a = start_node(0, None).await;
    let b = start_node(1, None).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(up(&a).is_empty() && up(&b).is_empty());
    a.shutdown().await;
    b.shutdown().await;
    // With it, the links come up.
    let a = start_node(0, Some("nodes.test")).await;
    let b = start_node(1, Some("nodes.test")).await;
    until("links checked against the server name", || {
        up(&a) == ["node-1"] && up(&b) == ["node-0"]
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_until_every_peer_is_linked_or_found_unreachable() {
    let ports = [free_port(), free_port(), free_port()];
    let peers: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    // Node 2 never starts: node 0 is ready once node 1 is linked and node 2 found unreachable.
    let a = node("node-0", "prod", ports[0], &peers).await;
    let b = node("node-1", "prod", ports[1], &peers).await;
    let ready = |s: &Server| rookery_broker::admin::readiness(&s.broker).is_ok();
    until("both ready", || ready(&a) && ready(&b)).await;
    assert_eq!(up(&a), ["node-1"]);
    let (status, body) = http(a.metrics_addr.unwrap(), "GET", "/readyz", &[]).await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_found_by_dns_are_dialed() {
    let ports = [free_port(), free_port()];
    let b_addr = format!("127.0.0.1:{}", ports[1]);
    let a = {
        let dns = format!("localhost:{}", ports[1]);
        let port = ports[0];
        start(move |c| {
            c.node_id = "node-a".into();
            c.cluster_listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
            c.peers_dns = Some(dns);
        })
        .await
    };
    // B knows nobody: only A's discovery can link them (A has the smaller id, so A dials).
    let b = node("node-b", "rookery", ports[1], &[]).await;
    until("linked through DNS", || {
        up(&a) == ["node-b"] && up(&b) == ["node-a"]
    })
    .await;
    let ready = |s: &Server| rookery_broker::admin::readiness(&s.broker).is_ok();
    until("A ready", || ready(&a)).await;
    let status = a.broker.cluster.get().unwrap().status();
    assert!(
        status.iter().any(|p| p.peer == b_addr && p.up),
        "{status:?}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_falls_silent_is_declared_down_even_while_messages_flow_to_it() {
    use rookery_broker::cluster::frame::{self, Frame};
    use tokio::io::AsyncWriteExt;
    let port = free_port();
    let a = node("node-a", "prod", port, &[]).await;
    // A "node" that links, asks for a topic, then neither reads nor writes again: a peer cut
    // off without a reset.
    let mut ghost = link_as_peer(port, "node-z", frame::FIRST_LEVEL).await;
    let mut out = bytes::BytesMut::new();
    frame::encode(&Frame::Routes(vec!["t".into()]), &mut out);
    ghost.write_all(&out).await.unwrap();
    until("the ghost linked", || up(&a) == ["node-z"]).await;
    routed(&a, "t", &["node-z"]).await;
    let (mut p, _) = Raw::connect(a.addr(), rookery_codec::Protocol::V5, "p", true).await;
    let started = Instant::now();
    // A trickle that the socket buffers would take for hours.
    while !up(&a).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "the ghost still counts as up"
        );
        p.publish("t", b"x", rookery_codec::QoS::AtMostOnce, false, 0)
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "down only after the detector's 3.5 s"
    );
    drop(ghost);
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_sends_clients_to_another_server_and_keeps_serving_until_they_go() {
    use rookery_codec::{Protocol, QoS, reason};
    let (mut nodes, _) = mesh(2).await;
    // A subscriber on the node that stays, two publishers on the node that drains.
    let (mut s, _) = Raw::connect(nodes[1].addr(), Protocol::V5, "stays", true).await;
    s.subscribe("d/#", QoS::AtLeastOnce).await;
    routed(&nodes[0], "d/x", &["node-1"]).await;
    let (p1, _) = Raw::connect(nodes[0].addr(), Protocol::V5, "p1", true).await;
    let (p2, _) = Raw::connect(nodes[0].addr(), Protocol::V5, "p2", true).await;
    let mut publishers = vec![("p1", p1), ("p2", p2)];
    let drained = nodes.remove(0);
    assert!(rookery_broker::drain::start(&drained.broker));
    assert_eq!(
        rookery_broker::admin::readiness(&drained.broker),
        Err("draining")
    );
    // One client goes at once, the other a second later (drain_rate 1).
    let attached = |id: &str| {
        drained
            .broker
            .sessions
            .get(id)
            .is_some_and(|s| s.is_attached())
    };
    until("the first client drained", || {
        !attached("p1") || !attached("p2")
    })
    .await;
    let first = if attached("p1") { 1 } else { 0 };
    let (_, mut gone) = publishers.remove(first);
    let (_, mut remaining) = publishers.remove(0);
    let d = gone.expect_closed().await.unwrap();
    assert_eq!(d.reason, reason::USE_ANOTHER_SERVER);
    assert_eq!(d.properties.server_reference, None);
    // The node still forwards what its remaining client publishes.
    remaining
        .publish("d/x", b"during", QoS::AtLeastOnce, false, 1)
        .await;
    assert_eq!(&s.recv_publish().await.payload[..], b"during");
    let d = remaining.expect_closed().await.unwrap();
    assert_eq!(d.reason, reason::USE_ANOTHER_SERVER);
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        drained.broker.drained.cancelled(),
    )
    .await
    .unwrap();
    // The clients come back on the other node.
    let (_p, ack) = Raw::connect(nodes[0].addr(), Protocol::V5, "p1", true).await;
    assert_eq!(ack.code, 0);
    drained.shutdown().await;
}

/// Waits until `node` knows the peers with members of groups matching `topic`.
async fn shared_routed(node: &Server, topic: &str, peers: &[&str]) {
    let cluster = node.broker.cluster.get().unwrap().clone();
    let want: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
    until(&format!("shared routes for {topic}"), || {
        let mut got: Vec<String> = cluster
            .remote
            .read()
            .shared_for(topic)
            .iter()
            .flat_map(|(_, p)| p.iter().map(|x| x.to_string()))
            .collect();
        got.sort();
        got == want
    })
    .await;
}

/// Reads what arrives within `wait`; the payloads.
async fn drain_publishes(c: &mut Raw, wait: std::time::Duration) -> Vec<String> {
    let mut got = Vec::new();
    while let Some(p) = c.recv_within(wait).await {
        if let rookery_codec::Packet::Publish(p) = p {
            got.push(String::from_utf8_lossy(&p.payload).into_owned());
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_group_across_nodes_gets_each_message_once_preferring_a_local_member() {
    use rookery_codec::{Protocol, QoS};
    use std::time::Duration;
    let (nodes, _) = mesh(3).await;
    let (mut m1, _) = Raw::connect(nodes[1].addr(), Protocol::V5, "m1", true).await;
    m1.subscribe("$share/workers/jobs/#", QoS::AtMostOnce).await;
    let (mut m2, _) = Raw::connect(nodes[2].addr(), Protocol::V5, "m2", true).await;
    m2.subscribe("$share/workers/jobs/#", QoS::AtMostOnce).await;
    // A plain subscriber on node 2 as well: it gets everything, and its forwards must not
    // reach node 2's group member unless node 2 was picked.
    let (mut plain, _) = Raw::connect(nodes[2].addr(), Protocol::V5, "plain", true).await;
    plain.subscribe("jobs/#", QoS::AtMostOnce).await;
    shared_routed(&nodes[0], "jobs/a", &["node-1", "node-2"]).await;
    routed(&nodes[0], "jobs/a", &["node-2"]).await;

    // Published where the group has no member: each message to one member, in turn.
    let (mut p, _) = Raw::connect(nodes[0].addr(), Protocol::V5, "p", true).await;
    for i in 0..60 {
        p.publish(
            &format!("jobs/{i}"),
            format!("{i}").as_bytes(),
            QoS::AtMostOnce,
            false,
            0,
        )
        .await;
    }
    let wait = Duration::from_millis(500);
    let (a, b) = (
        drain_publishes(&mut m1, wait).await,
        drain_publishes(&mut m2, wait).await,
    );
    let mut all: Vec<String> = a.iter().chain(b.iter()).cloned().collect();
    all.sort_by_key(|s| s.parse::<u32>().unwrap());
    let want: Vec<String> = (0..60).map(|i| i.to_string()).collect();
    assert_eq!(all, want, "each message once across the group");
    // Spread by message id: about half each.
    assert!(
        a.len() >= 20 && b.len() >= 20,
        "{} and {}",
        a.len(),
        b.len()
    );
    assert_eq!(drain_publishes(&mut plain, wait).await.len(), 60);

    // Published on node 1: its own member takes everything.
    let (mut p1, _) = Raw::connect(nodes[1].addr(), Protocol::V5, "p1", true).await;
    for i in 0..20 {
        p1.publish(
            "jobs/local",
            format!("{i}").as_bytes(),
            QoS::AtMostOnce,
            false,
            0,
        )
        .await;
    }
    assert_eq!(drain_publishes(&mut m1, wait).await.len(), 20);
    assert!(drain_publishes(&mut m2, wait).await.is_empty());

    // A member that leaves gets no more: the group is node 1's alone.
    m2.disconnect().await;
    shared_routed(&nodes[0], "jobs/a", &["node-1"]).await;
    for i in 0..10 {
        p.publish(
            "jobs/after",
            format!("{i}").as_bytes(),
            QoS::AtMostOnce,
            false,
            0,
        )
        .await;
    }
    assert_eq!(drain_publishes(&mut m1, wait).await.len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_certificates_rotate_with_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (crate::pki::ca("old CA"), crate::pki::ca("new CA"));
    let ports = [free_port(), free_port()];
    let peers: Vec<String> = ports.iter().map(|p| format!("localhost:{p}")).collect();
    // Each node's files; node 0's are rewritten in place.
    let write = |name: &str, ca: &crate::pki::Ca| {
        let leaf = ca.server(&rcgen::PKCS_ECDSA_P256_SHA256);
        (
            crate::pki::write(dir.path(), &format!("{name}-ca.pem"), &ca.pem),
            crate::pki::write(dir.path(), &format!("{name}.crt"), &leaf.cert_pem),
            crate::pki::write(dir.path(), &format!("{name}.key"), &leaf.key_pem),
        )
    };
    let start_node =
        |i: usize,
         (ca, cert, key): (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf)| {
            let (peers, port) = (peers.clone(), ports[i]);
            async move {
                // A node shut down on this port a moment ago: its link listener goes with its
                // link tasks, which shutdown cancels without waiting for them.
                let deadline = Instant::now() + Duration::from_secs(5);
                while std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                    assert!(Instant::now() < deadline, "port {port} still taken");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                start(move |c| {
                    c.node_id = format!("node-{i}");
                    c.cluster_listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
                    c.peers = peers;
                    c.cluster_ca = Some(ca);
                    c.cluster_cert = Some(cert);
                    c.cluster_key = Some(key);
                })
                .await
            }
        };
    let n0 = start_node(0, write("n0", &old_ca)).await;
    let n1 = start_node(1, write("n1-old", &old_ca)).await;
    until("a link under the old CA", || up(&n0) == ["node-1"]).await;
    n1.shutdown().await;
    until("node-1 gone", || up(&n0).is_empty()).await;

    // Node 0 moves to the new CA, files replaced in place, then reloaded.
    write("n0", &new_ca);
    n0.reload().await;
    // A node still on the old CA no longer links with it...
    let stale = start_node(1, write("n1-stale", &old_ca)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(up(&n0).is_empty() && up(&stale).is_empty());
    stale.shutdown().await;
    // ... and one on the new CA does.
    let fresh = start_node(1, write("n1-new", &new_ca)).await;
    until("a link under the new CA", || {
        up(&n0) == ["node-1"] && up(&fresh) == ["node-0"]
    })
    .await;
    n0.shutdown().await;
    fresh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_of_the_same_millisecond_goes_to_the_larger_node_id_when_it_is_acted_on() {
    // Two CONNECTs of one id on two nodes in one millisecond: the claim of the smaller node
    // can reach the larger one before its connection noted its own time; acted on once the
    // connection is attached, it must lose to it (ties go to the larger node id), not take
    // both connections down.
    let node = node_with("node-b", "prod", free_port(), &[], |_| {}).await;
    let (mut c, _) = Raw::connect(node.addr(), rookery_codec::Protocol::V5, "twin", true).await;
    let at = node.broker.sessions.get("twin").unwrap().claimed();
    assert!(
        !node
            .broker
            .discard_for_peer("twin", (at, "node-a"), false)
            .await,
        "an equal claim of a smaller node id loses"
    );
    c.expect_silence(Duration::from_millis(200)).await;
    assert!(node.broker.sessions.get("twin").unwrap().is_attached());
    assert!(
        node.broker
            .discard_for_peer("twin", (at, "node-c"), false)
            .await,
        "an equal claim of a larger node id wins"
    );
    let d = c.expect_closed().await.unwrap();
    assert_eq!(d.reason, rookery_codec::reason::SESSION_TAKEN_OVER);
    node.shutdown().await;
}
