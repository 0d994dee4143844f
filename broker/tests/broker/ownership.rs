//! Client-id ownership through Redis: two nodes of one cluster whose links are down (here:
//! never configured, a partition of the links) still end with one connection per client id,
//! because each claim also goes to Redis and every node follows the claims there; and a
//! node that lost a session cannot overwrite the new owner's record.

use rookery_broker::Server;
use rookery_codec::{ConnectProperties, Protocol, QoS, reason};
use rookery_store::redis::RedisSessionStore;
use rookery_store::{SessionOp, SessionStore};
use rookery_testkit::RedisServer;

use crate::cluster::{free_port, node_with, until};
use crate::support::*;

fn persistent(id: &str) -> rookery_codec::Connect {
    let mut c = connect_packet(Protocol::V5, id, false);
    c.properties = ConnectProperties {
        session_expiry_interval: Some(3600),
        ..Default::default()
    };
    c
}

async fn node(id: &str, cluster: &str, dir: &std::path::Path) -> Server {
    let (url, dir) = (RedisServer::shared().url().to_owned(), dir.to_owned());
    node_with(id, cluster, free_port(), &[], move |c| {
        c.durability = rookery_broker::config::DurabilityMode::Sync;
        c.data_dir = dir;
        c.redis_url = Some(url);
    })
    .await
}

/// Two nodes of one cluster on the shared Redis, no links, and client "dev" connected to
/// node-a (subscribed to `x`) with its claim in Redis.
struct Pair {
    redis: &'static RedisServer,
    cluster: String,
    owner_key: String,
    _dirs: [tempfile::TempDir; 2],
    a: Server,
    b: Server,
    on_a: Raw,
}

async fn pair_with_dev_on_a() -> Pair {
    let redis = RedisServer::shared();
    let cluster = RedisServer::prefix();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let a = node("node-a", &cluster, dirs[0].path()).await;
    let b = node("node-b", &cluster, dirs[1].path()).await;
    let owner_key = format!("rookery:{cluster}:owner:dev");
    let (mut on_a, _) = Raw::connect_with(a.addr(), persistent("dev")).await;
    on_a.subscribe("x", QoS::AtLeastOnce).await;
    until("node-a's claim in Redis", || {
        redis.command(&["GET", &owner_key]).ends_with(" node-a")
    })
    .await;
    Pair {
        redis,
        cluster,
        owner_key,
        _dirs: dirs,
        a,
        b,
        on_a,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_links_redis_keeps_one_connection_per_client_id_and_fences_the_loser() {
    let Pair {
        redis,
        cluster,
        owner_key,
        _dirs,
        a,
        b,
        mut on_a,
    } = pair_with_dev_on_a().await;
    let store = RedisSessionStore::connect(redis.url(), &cluster)
        .await
        .unwrap();
    let before = store.get("dev").await.unwrap().unwrap();
    assert_eq!(before.owner_node, "node-a");

    // The same client id on the other node: no link tells node-a, Redis does.
    let (_on_b, _) = Raw::connect_with(b.addr(), persistent("dev")).await;
    let d = on_a.expect_closed().await.expect("a DISCONNECT");
    assert_eq!(d.reason, reason::SESSION_TAKEN_OVER);
    until("node-a gave its copy up", || {
        a.broker.sessions.get("dev").is_none()
    })
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let now = loop {
        let now = store.get("dev").await.unwrap().unwrap();
        if now.owner_node == "node-b" {
            break now;
        }
        assert!(std::time::Instant::now() < deadline, "no record by node-b");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(redis.command(&["GET", &owner_key]).ends_with(" node-b"));

    // What node-a would still write under its old claim is refused.
    let mut stale = before.clone();
    stale.subscriptions.clear();
    store.apply(&[SessionOp::Put(stale)]).await.unwrap();
    store
        .apply(&[SessionOp::Delete {
            client_id: "dev".into(),
            owner: Some((before.epoch, "node-a".into())),
        }])
        .await
        .unwrap();
    assert_eq!(store.get("dev").await.unwrap(), Some(now));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adoption_claims_the_client_id_and_closes_a_connection_the_departed_node_kept() {
    // node-b thinks node-a departed (a partition of the links) and adopts its sessions; the
    // client is in fact still connected to node-a, which hears of the claim through Redis.
    let Pair {
        _dirs,
        a,
        b,
        mut on_a,
        ..
    } = pair_with_dev_on_a().await;

    assert_eq!(b.broker.adopt_sessions_of("node-a").await, 1);
    let d = on_a.expect_closed().await.expect("a DISCONNECT");
    assert_eq!(d.reason, reason::SESSION_TAKEN_OVER);
    assert!(b.broker.sessions.get("dev").is_some());
    until("node-a gave its copy up", || {
        a.broker.sessions.get("dev").is_none()
    })
    .await;

    // The client, back on node-b, finds its session there.
    let (_on_b, ack) = Raw::connect_with(b.addr(), persistent("dev")).await;
    assert!(ack.session_present);
    a.shutdown().await;
    b.shutdown().await;
}
