//! `RedisSessionStore` against a real redis-server (rookery-testkit), and a real Sentinel.

#![allow(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rookery_store::redis::RedisSessionStore;
use rookery_store::{
    SessionOp, SessionRecord, SessionStore, StoreError, StoredMessage, SubscriptionRecord,
    WillRecord,
};
use rookery_testkit::{RedisSentinel, RedisServer};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn session(client_id: &str) -> SessionRecord {
    SessionRecord {
        client_id: client_id.into(),
        expiry_secs: 3600,
        disconnected_at_ms: None,
        username: Some("user".into()),
        by_password: true,
        subscriptions: vec![
            SubscriptionRecord {
                filter: "sensors/#".into(),
                qos: 1,
                no_local: false,
                retain_as_published: true,
                retain_handling: 0,
                id: Some(7),
            },
            SubscriptionRecord {
                filter: "$share/g/jobs".into(),
                qos: 2,
                no_local: true,
                retain_as_published: false,
                retain_handling: 2,
                id: None,
            },
        ],
        will: Some(WillRecord {
            message: StoredMessage {
                topic: "status/c".into(),
                payload: Bytes::from_static(b"offline"),
                qos: 1,
                retain: true,
                properties: Bytes::from_static(&[1, 2, 3]),
                expires_at_ms: None,
            },
            expiry_secs: Some(60),
            delay_secs: 5,
        }),
        owner_node: "node-1".into(),
        epoch: 3,
    }
}

fn sorted(mut sessions: Vec<SessionRecord>) -> Vec<SessionRecord> {
    sessions.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    sessions
}

async fn store(server: &RedisServer) -> (RedisSessionStore, String) {
    let cluster = RedisServer::prefix();
    let store = RedisSessionStore::connect(server.url(), &cluster)
        .await
        .unwrap();
    (store, cluster)
}

#[tokio::test]
async fn sessions_round_trip() {
    let (store, _) = store(RedisServer::shared()).await;
    assert_eq!(store.name(), "redis");
    assert!(store.load().await.unwrap().is_empty());
    let a = session("a");
    let mut b = session("b:with:colons");
    b.will = None;
    b.subscriptions.clear();
    b.username = None;
    store
        .apply(&[SessionOp::Put(a.clone()), SessionOp::Put(b.clone())])
        .await
        .unwrap();
    assert_eq!(
        sorted(store.load().await.unwrap()),
        vec![a.clone(), b.clone()]
    );
    assert_eq!(store.get("a").await.unwrap(), Some(a.clone()));
    assert_eq!(store.get("nobody").await.unwrap(), None);

    // Put replaces; Delete deletes.
    let mut a2 = a.clone();
    a2.epoch = 4;
    a2.owner_node = "node-2".into();
    store
        .apply(&[
            SessionOp::Put(a2.clone()),
            SessionOp::Delete {
                client_id: "b:with:colons".into(),
                owner: None,
            },
        ])
        .await
        .unwrap();
    assert_eq!(store.load().await.unwrap(), vec![a2.clone()]);
    assert_eq!(store.get("b:with:colons").await.unwrap(), None);
    store.apply(&[]).await.unwrap();
}

#[tokio::test]
async fn batches_apply_in_order() {
    let (store, _) = store(RedisServer::shared()).await;
    store
        .apply(&[
            SessionOp::Put(session("x")),
            SessionOp::Delete {
                client_id: "x".into(),
                owner: None,
            },
            SessionOp::Delete {
                client_id: "y".into(),
                owner: None,
            },
            SessionOp::Put(session("y")),
        ])
        .await
        .unwrap();
    assert_eq!(store.load().await.unwrap(), vec![session("y")]);
}

#[tokio::test]
async fn clusters_do_not_see_each_other() {
    let server = RedisServer::shared();
    let (one, _) = store(server).await;
    let (two, _) = store(server).await;
    one.apply(&[SessionOp::Put(session("same"))]).await.unwrap();
    assert!(two.load().await.unwrap().is_empty());
    assert_eq!(two.get("same").await.unwrap(), None);
}

#[tokio::test]
async fn keys_expire_with_the_session() {
    let server = RedisServer::shared();
    let (store, cluster) = store(server).await;
    let key = |id: &str| format!("rookery:{cluster}:session:{id}");
    let index = format!("rookery:{cluster}:sessions");

    let connected = session("connected");
    let mut never = session("never");
    never.expiry_secs = u32::MAX;
    never.disconnected_at_ms = Some(now_ms());
    let mut later = session("later");
    later.expiry_secs = 100;
    later.disconnected_at_ms = Some(now_ms());
    let mut gone = session("gone");
    gone.expiry_secs = 10;
    gone.disconnected_at_ms = Some(now_ms() - 11_000);
    let mut soon = session("soon");
    soon.expiry_secs = 1;
    soon.disconnected_at_ms = Some(now_ms());
    // Sessions without a will expire exactly; one with a will stays a day longer (below).
    for s in [&mut later, &mut gone, &mut soon] {
        s.will = None;
    }
    let mut willing = session("willing");
    willing.expiry_secs = 100;
    willing.disconnected_at_ms = Some(now_ms() - 200_000);
    assert!(willing.will.is_some());
    store
        .apply(&[
            SessionOp::Put(connected.clone()),
            SessionOp::Put(never.clone()),
            SessionOp::Put(later.clone()),
            SessionOp::Put(gone.clone()),
            SessionOp::Put(soon.clone()),
            SessionOp::Put(willing.clone()),
        ])
        .await
        .unwrap();
    // Expired, but its will is still to be published by the broker that ends it.
    let ttl: i64 = server.command(&["PTTL", &key("willing")]).parse().unwrap();
    assert!(
        (86_000_000..=86_400_000).contains(&ttl),
        "PTTL {ttl}: a session holding a will outlives its expiry by a day"
    );
    assert_eq!(server.command(&["ZREM", &index, "willing"]), "1");

    // No TTL while connected or when the expiry is "never".
    assert_eq!(server.command(&["PTTL", &key("connected")]), "-1");
    assert_eq!(server.command(&["PTTL", &key("never")]), "-1");
    // The expiry interval, counted from the disconnection.
    let ttl: i64 = server.command(&["PTTL", &key("later")]).parse().unwrap();
    assert!((90_000..=100_000).contains(&ttl), "PTTL {ttl}");
    // Already past its deadline: not written at all.
    assert_eq!(server.command(&["EXISTS", &key("gone")]), "0");
    assert_eq!(server.command(&["ZSCORE", &index, "gone"]), "");
    assert_eq!(server.command(&["ZCARD", &index]), "4");

    // Reconnecting clears the TTL.
    let mut back = later.clone();
    back.disconnected_at_ms = None;
    store.apply(&[SessionOp::Put(back.clone())]).await.unwrap();
    assert_eq!(server.command(&["PTTL", &key("later")]), "-1");

    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert_eq!(server.command(&["EXISTS", &key("soon")]), "0");
    assert_eq!(store.get("soon").await.unwrap(), None);
    assert_eq!(
        sorted(store.load().await.unwrap()),
        vec![connected, back, never]
    );
    // load pruned the index.
    assert_eq!(server.command(&["ZCARD", &index]), "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_seen_whole_or_not_at_all() {
    let server = RedisServer::shared();
    let (store, cluster) = store(server).await;
    let index = format!("rookery:{cluster}:sessions");
    let watcher = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..200 {
            let n: usize = RedisServer::shared()
                .command(&["ZCARD", &index])
                .parse()
                .unwrap();
            seen.push(n);
            if n == 20 * 50 {
                break;
            }
        }
        seen
    });
    for batch in 0..20 {
        let ops: Vec<SessionOp> = (0..50)
            .map(|i| SessionOp::Put(session(&format!("c{batch}-{i}"))))
            .collect();
        store.apply(&ops).await.unwrap();
    }
    let seen = watcher.join().unwrap();
    assert!(seen.iter().all(|n| n % 50 == 0), "{seen:?}");
    assert_eq!(store.load().await.unwrap().len(), 1000);
}

#[tokio::test]
async fn connect_fails_unavailable_without_a_server() {
    let server = RedisServer::start_private();
    let url = server.url().to_owned();
    drop(server);
    let error = RedisSessionStore::connect(&url, "c").await.err().unwrap();
    assert!(error.is_transient(), "{error}");
}

#[tokio::test]
async fn survives_a_server_restart() {
    let server = RedisServer::start_private();
    let (store, _) = store(&server).await;
    store
        .apply(&[SessionOp::Put(session("before"))])
        .await
        .unwrap();

    server.stop();
    let error = store
        .apply(&[SessionOp::Put(session("during"))])
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::Unavailable { store: "redis", .. }),
        "{error}"
    );
    assert!(store.load().await.unwrap_err().is_transient());
    assert!(store.get("before").await.unwrap_err().is_transient());

    server.start();
    store
        .apply(&[SessionOp::Put(session("after"))])
        .await
        .unwrap();
    let names: Vec<String> = sorted(store.load().await.unwrap())
        .into_iter()
        .map(|s| s.client_id)
        .collect();
    // "before" survived through the append-only file; "during" was never written.
    assert_eq!(names, ["after", "before"]);
}

/// Waits until `server` reports `role` ("master" or "slave") in ROLE.
fn wait_for_role(server: &RedisServer, role: &str) {
    for _ in 0..600 {
        if server.command(&["ROLE"]).lines().next() == Some(role) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("redis on port {} never became {role}", server.port());
}

/// Applies `ops`, retrying while the store is unavailable (what the committer does), for up to
/// 30 s; returns how many attempts failed.
async fn apply_until_ok(store: &RedisSessionStore, ops: &[SessionOp]) -> usize {
    for failures in 0..300 {
        match store.apply(ops).await {
            Ok(()) => return failures,
            Err(error) if error.is_transient() => {
                eprintln!("apply failed, retrying: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("{error}"),
        }
    }
    panic!("still unavailable after 30 s");
}

fn wait_for_key(server: &RedisServer, key: &str) {
    for _ in 0..200 {
        if server.command(&["EXISTS", key]) == "1" {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{key} never reached redis on port {}", server.port());
}

#[tokio::test]
async fn follows_a_sentinel_failover_without_a_restart() {
    let master = RedisServer::start_private();
    let replica = RedisServer::start_replica_of(&master);
    let sentinel = RedisSentinel::start(&master, "rookery-test");
    let url = format!("redis+sentinel://{}/rookery-test", sentinel.addr());
    let store = RedisSessionStore::connect(&url, "failover").await.unwrap();
    store
        .apply(&[SessionOp::Put(session("one"))])
        .await
        .unwrap();
    // Replication is asynchronous: let the replica have the write before failing over.
    wait_for_key(&replica, &store.session_key("one"));

    // A planned failover: the old master is demoted to a replica and answers writes with
    // READONLY; the store asks the Sentinel again and writes to the new master.
    assert_eq!(sentinel.failover(), replica.port());
    // The Sentinel demotes the old master at its next look at it (up to 10 s later); do it now.
    // Until then the old master still takes writes and loses them at demotion: the window
    // Sentinel's asynchronous replication leaves.
    master.command(&["REPLICAOF", "127.0.0.1", &replica.port().to_string()]);
    wait_for_role(&master, "slave");
    // (The Sentinel may briefly name no valid master while it settles: Unavailable, retried.)
    apply_until_ok(&store, &[SessionOp::Put(session("two"))]).await;
    assert_eq!(replica.command(&["EXISTS", &store.session_key("two")]), "1");
    let names: Vec<String> = sorted(store.load().await.unwrap())
        .into_iter()
        .map(|s| s.client_id)
        .collect();
    assert_eq!(names, ["one", "two"]);
}

#[tokio::test]
async fn follows_a_sentinel_failover_after_the_master_dies() {
    let master = RedisServer::start_private();
    let replica = RedisServer::start_replica_of(&master);
    let sentinel = RedisSentinel::start(&master, "rookery-test");
    let url = format!("redis+sentinel://{}/rookery-test", sentinel.addr());
    let store = RedisSessionStore::connect(&url, "failover").await.unwrap();
    store
        .apply(&[SessionOp::Put(session("one"))])
        .await
        .unwrap();
    wait_for_key(&replica, &store.session_key("one"));

    // The master dies: writes fail (Unavailable) until the Sentinel has promoted the replica
    // (down after 1 s), then go to the new master through the same store object.
    master.stop();
    let failures = apply_until_ok(&store, &[SessionOp::Put(session("two"))]).await;
    assert!(
        failures > 0,
        "the first write after the master died should fail"
    );
    sentinel.wait_for_master(replica.port());
    assert_eq!(replica.command(&["EXISTS", &store.session_key("two")]), "1");
    assert_eq!(store.load().await.unwrap().len(), 2);
}

#[tokio::test]
async fn the_newest_claim_owns_a_client_id_and_fences_older_writes() {
    use rookery_store::{ClaimNotice, ClaimWatch, Claimed, Owner};
    let server = RedisServer::shared();
    let (store, cluster) = store(server).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // The same cluster's feed (a second store of that cluster name, as another node has).
    let watcher = RedisSessionStore::connect(server.url(), &cluster)
        .await
        .unwrap();
    let watching = tokio::spawn(async move { watcher.watch_claims(tx).await });
    // The subscription is up once a claim made after it arrives.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        assert_eq!(
            store.claim("probe", "node-1", 1).await.unwrap(),
            Claimed::Stands
        );
        if let Ok(Some(ClaimWatch::Claim(_))) =
            tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no claim came through"
        );
    }

    // Claims: newer epochs win, ties go to the larger node id, older ones are told the newer.
    assert_eq!(
        store.claim("dev", "node-1", 100).await.unwrap(),
        Claimed::Stands
    );
    assert_eq!(
        store.claim("dev", "node-2", 99).await.unwrap(),
        Claimed::Newer {
            node: "node-1".into(),
            epoch: 100
        }
    );
    assert_eq!(
        store.claim("dev", "node-2", 100).await.unwrap(),
        Claimed::Stands
    );
    assert_eq!(
        store.claim("dev", "node-10", 100).await.unwrap(),
        Claimed::Newer {
            node: "node-2".into(),
            epoch: 100
        }
    );
    // A client id with spaces, as MQTT allows.
    assert_eq!(
        store.claim("a b", "node-1", 5).await.unwrap(),
        Claimed::Stands
    );
    let mut seen = Vec::new();
    while let Ok(Some(w)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
        match w {
            ClaimWatch::Claim(n) if n.client_id != "probe" => seen.push(n),
            ClaimWatch::Claim(_) => {}
            ClaimWatch::Following => panic!("the watch started again with no reason"),
        }
    }
    let notice = |id: &str, node: &str, epoch| ClaimNotice {
        client_id: id.into(),
        node: node.into(),
        epoch,
    };
    assert_eq!(
        seen,
        vec![
            notice("dev", "node-1", 100),
            notice("dev", "node-2", 100),
            notice("a b", "node-1", 5)
        ],
        "every claim that stood, and no other"
    );

    // Writes: one of an older claim is refused, one of the newest or a newer claim goes.
    let mut old = session("dev");
    old.owner_node = "node-1".into();
    old.epoch = 100;
    store.apply(&[SessionOp::Put(old.clone())]).await.unwrap();
    assert_eq!(store.get("dev").await.unwrap(), None, "node-2 owns it");
    let mut current = old.clone();
    current.owner_node = "node-2".into();
    store
        .apply(&[SessionOp::Put(current.clone())])
        .await
        .unwrap();
    assert_eq!(store.get("dev").await.unwrap(), Some(current.clone()));
    let mut stale = current.clone();
    stale.owner_node = "node-1".into();
    stale.subscriptions.clear();
    store
        .apply(&[
            SessionOp::Put(stale.clone()),
            SessionOp::Delete {
                client_id: "dev".into(),
                owner: Some((99, "node-3".into())),
            },
        ])
        .await
        .unwrap();
    assert_eq!(
        store.get("dev").await.unwrap(),
        Some(current.clone()),
        "fenced"
    );
    // A write under a newer claim is that claim: older claims lose to it from then on.
    let mut newer = current.clone();
    newer.owner_node = "node-3".into();
    newer.epoch = 200;
    store.apply(&[SessionOp::Put(newer.clone())]).await.unwrap();
    assert_eq!(
        store.claim("dev", "node-2", 150).await.unwrap(),
        Claimed::Newer {
            node: "node-3".into(),
            epoch: 200
        }
    );
    // A delete by the owner goes; the claim stays a while (a late write stays refused).
    store
        .apply(&[SessionOp::Delete {
            client_id: "dev".into(),
            owner: Some((200, "node-3".into())),
        }])
        .await
        .unwrap();
    assert_eq!(store.get("dev").await.unwrap(), None);
    store.apply(&[SessionOp::Put(current)]).await.unwrap();
    assert_eq!(store.get("dev").await.unwrap(), None);
    let owner = format!("rookery:{cluster}:owner:dev");
    assert_eq!(server.command(&["GET", &owner]), "200 node-3");
    let ttl: i64 = server.command(&["PTTL", &owner]).parse().unwrap();
    assert!(ttl > 0, "PTTL {ttl}");

    // The owners on record, in the order asked, `None` for a client id never claimed; more
    // ids than one `MGET` takes (500), the last one's in the third.
    let mut ids = vec!["dev".to_owned(), "never".to_owned()];
    ids.extend((0..1200).map(|i| format!("none-{i}")));
    ids.push("a b".to_owned());
    let owners = store.owners(&ids).await.unwrap();
    assert_eq!(owners.len(), ids.len());
    assert_eq!(
        owners[0],
        Some(Owner {
            node: "node-3".into(),
            epoch: 200
        })
    );
    assert_eq!(
        owners[1202],
        Some(Owner {
            node: "node-1".into(),
            epoch: 5
        })
    );
    assert!(owners[1..1202].iter().all(Option::is_none));
    drop(rx);
    drop(watching);
}

/// A claims subscription whose server stops answering (frozen, as behind a cut cable, its
/// connection open) is noticed by its pings and made again once the server answers:
/// `Following` says claims may have been missed, and claims made after it come through.
#[tokio::test]
async fn the_claims_watch_notices_a_silent_server_and_follows_again() {
    use rookery_store::ClaimWatch;
    let server = RedisServer::start_private();
    let cluster = RedisServer::prefix();
    let store = RedisSessionStore::connect(server.url(), &cluster)
        .await
        .unwrap();
    let watcher = RedisSessionStore::connect(server.url(), &cluster)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watching = tokio::spawn(async move { watcher.watch_claims(tx).await });
    assert_eq!(next(&mut rx, 10).await, Some(ClaimWatch::Following));

    server.freeze();
    // Nothing but the pings' silence tells the watch: its connection stays open.
    tokio::time::sleep(Duration::from_secs(6)).await;
    server.thaw();
    assert_eq!(
        next(&mut rx, 20).await,
        Some(ClaimWatch::Following),
        "the silent subscription was not replaced"
    );
    store.claim("dev", "node-1", 7).await.unwrap();
    match next(&mut rx, 10).await {
        Some(ClaimWatch::Claim(n)) => assert_eq!((n.client_id.as_str(), n.epoch), ("dev", 7)),
        other => panic!("expected the claim, got {other:?}"),
    }
    drop(rx);
    drop(watching);
}

/// What the claims watch says next, if anything within `secs` seconds.
async fn next(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<rookery_store::ClaimWatch>,
    secs: u64,
) -> Option<rookery_store::ClaimWatch> {
    tokio::time::timeout(Duration::from_secs(secs), rx.recv())
        .await
        .ok()
        .flatten()
}
