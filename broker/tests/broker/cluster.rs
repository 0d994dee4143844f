//! Cluster links between brokers in one process: a full mesh from one shared peer list,
//! one link per pair, a node going and coming back, and a node of another cluster refused.

use std::time::{Duration, Instant};

use rookery_broker::Server;

use crate::support::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn node(id: &str, cluster: &str, port: u16, peers: &[String]) -> Server {
    let (id, cluster, peers) = (id.to_owned(), cluster.to_owned(), peers.to_vec());
    start(move |c| {
        c.node_id = id;
        c.cluster_name = cluster;
        c.cluster_listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
        c.peers = peers;
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await
}

fn up(s: &Server) -> Vec<String> {
    s.broker.cluster.get().unwrap().up_peers()
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
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
