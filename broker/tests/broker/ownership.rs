//! Client-id ownership through Redis: two nodes of one cluster whose links are down (here:
//! never configured, a partition of the links) still end with one connection per client id,
//! because each claim also goes to Redis and every node follows the claims there; and a
//! node that lost a session cannot overwrite the new owner's record. A node cut off from
//! everything, whose sessions were adopted meanwhile, gives them up when it is back.

use rookery_broker::Server;
use rookery_codec::{ConnectProperties, Protocol, QoS, reason};
use rookery_store::redis::RedisSessionStore;
use rookery_store::{SessionOp, SessionStore};
use rookery_testkit::RedisServer;

use crate::cable::Cable;
use crate::cluster::{free_port, node_with, routed, until};
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
    let mut connect = persistent("dev");
    connect.will = Some(rookery_codec::LastWill {
        topic: "gone/dev".into(),
        payload: bytes::Bytes::from_static(b"offline"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    });
    let (mut on_a, _) = Raw::connect_with(a.addr(), connect).await;
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

    // Someone on node-a watches for dev's will.
    let (mut watcher, _) = Raw::connect(a.addr(), Protocol::V5, "watcher", true).await;
    watcher.subscribe("gone/#", QoS::AtLeastOnce).await;

    assert_eq!(b.broker.adopt_sessions_of("node-a").await, 1);
    let d = on_a.expect_closed().await.expect("a DISCONNECT");
    assert_eq!(d.reason, reason::SESSION_TAKEN_OVER);
    assert!(b.broker.sessions.get("dev").is_some());
    until("node-a gave its copy up", || {
        a.broker.sessions.get("dev").is_none()
    })
    .await;
    // The client is alive, and its will went with the adopted session: not published here.
    watcher
        .expect_silence(std::time::Duration::from_millis(500))
        .await;

    // The client, back on node-b, finds its session there.
    let (_on_b, ack) = Raw::connect_with(b.addr(), persistent("dev")).await;
    assert!(ack.session_present);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_from_a_cut_gives_up_the_sessions_adopted_meanwhile() {
    // node-a reaches node-b and Redis only through cables the test cuts. While cut, node-b
    // adopts dev, which stays connected to node-a, and a message for dev is published; node-a
    // hears of none of it (the claim was published while its subscription hung, and no link
    // carries claims of sessions without a connection). Back, it checks the owners in Redis:
    // dev's connection is closed (0x8E) and the client, back on node-a, gets the adopted copy.
    let redis = RedisServer::shared();
    let cluster = RedisServer::prefix();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let (port_a, port_b) = (free_port(), free_port());
    let to_a = Cable::to(format!("127.0.0.1:{port_a}").parse().unwrap()).await;
    let to_b = Cable::to(format!("127.0.0.1:{port_b}").parse().unwrap()).await;
    let a_to_redis = Cable::to(redis.addr().parse().unwrap()).await;
    let settings = |redis_url: String, dir: std::path::PathBuf| {
        move |c: &mut rookery_broker::Config| {
            c.durability = rookery_broker::config::DurabilityMode::Sync;
            c.data_dir = dir;
            c.redis_url = Some(redis_url);
        }
    };
    let a = node_with(
        "node-a",
        &cluster,
        port_a,
        &[to_b.addr().to_string()],
        settings(
            format!("redis://{}", a_to_redis.addr()),
            dirs[0].path().into(),
        ),
    )
    .await;
    let b = node_with(
        "node-b",
        &cluster,
        port_b,
        &[to_a.addr().to_string()],
        settings(redis.url().into(), dirs[1].path().into()),
    )
    .await;
    let owner_key = format!("rookery:{cluster}:owner:dev");
    let (mut on_a, _) = Raw::connect_with(a.addr(), persistent("dev")).await;
    on_a.subscribe("x", QoS::AtLeastOnce).await;
    routed(&b, "x", &["node-a"]).await;
    until("node-a's claim in Redis", || {
        redis.command(&["GET", &owner_key]).ends_with(" node-a")
    })
    .await;

    for c in [&to_a, &to_b, &a_to_redis] {
        c.cut();
    }
    until("node-b adopted dev", || {
        b.broker.sessions.get("dev").is_some()
    })
    .await;
    assert!(redis.command(&["GET", &owner_key]).ends_with(" node-b"));
    let (mut publisher, _) = Raw::connect(b.addr(), Protocol::V5, "pub", true).await;
    publisher
        .publish("x", b"during the cut", QoS::AtLeastOnce, false, 1)
        .await;
    // node-a still serves dev from its copy, which has not got it.
    on_a.expect_silence(std::time::Duration::from_millis(300))
        .await;
    assert!(a.broker.sessions.get("dev").is_some());

    for c in [&to_a, &to_b, &a_to_redis] {
        c.mend();
    }
    let d = on_a.expect_closed().await.expect("a DISCONNECT");
    assert_eq!(d.reason, reason::SESSION_TAKEN_OVER);
    until("node-a gave its copy up", || {
        a.broker.sessions.get("dev").is_none()
    })
    .await;
    until("the nodes linked again", || {
        crate::cluster::up(&a) == ["node-b"]
    })
    .await;
    let (mut back, ack) = Raw::connect_with(a.addr(), persistent("dev")).await;
    assert!(ack.session_present);
    let p = back.recv_publish().await;
    assert_eq!(&p.payload[..], b"during the cut");
    back.expect_silence(std::time::Duration::from_millis(500))
        .await;
    a.shutdown().await;
    b.shutdown().await;
}
