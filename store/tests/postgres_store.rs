//! `PostgresStore` against a real PostgreSQL (rookery-testkit).

#![allow(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rookery_store::postgres::{PostgresOptions, PostgresStore, Swept};
use rookery_store::{
    ForwardMark, QueueEntry, QueueOp, QueueStore, RetainedOp, RetainedStore, StoreError,
    StoredMessage,
};
use rookery_testkit::PostgresServer;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn message(topic: &str, payload: &str) -> StoredMessage {
    StoredMessage {
        topic: topic.into(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos: 1,
        retain: false,
        properties: Bytes::from_static(&[0x23, 0x00, 0x05]),
        expires_at_ms: None,
    }
}

fn entry(id: u64, message_id: u64) -> QueueEntry {
    QueueEntry {
        id,
        message_id,
        qos: 1,
        retain: false,
        subscription_ids: vec![],
        packet_id: None,
        released: false,
        message: None,
    }
}

fn enqueue(client_id: &str, entry: QueueEntry) -> QueueOp {
    QueueOp::Enqueue {
        client_id: client_id.into(),
        entry,
    }
}

/// A store on a fresh database of the shared server, and the database's URL.
async fn store() -> (PostgresStore, String) {
    let url = PostgresServer::shared().database();
    (PostgresStore::connect(&url).await.unwrap(), url)
}

fn count(url: &str, table: &str) -> i64 {
    PostgresServer::psql(url, &format!("SELECT count(*) FROM {table}"))
        .parse()
        .unwrap()
}

fn ids(entries: &[QueueEntry]) -> Vec<u64> {
    entries.iter().map(|e| e.id).collect()
}

#[tokio::test]
async fn retained_messages_round_trip() {
    let (store, _) = store().await;
    assert_eq!(RetainedStore::name(&store), "postgres");
    assert!(RetainedStore::load(&store).await.unwrap().is_empty());
    let mut a = message("status/a", "online");
    a.retain = true;
    a.qos = 2;
    a.expires_at_ms = Some(now_ms() + 3_600_000);
    let mut b = message("status/b", "");
    b.properties = Bytes::new();
    RetainedStore::apply(
        &store,
        &[
            RetainedOp::Put(a.clone()),
            RetainedOp::Put(b.clone()),
            RetainedOp::Put(message("status/c", "x")),
            RetainedOp::Delete {
                topic: "status/c".into(),
            },
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        RetainedStore::load(&store).await.unwrap(),
        vec![a.clone(), b.clone()]
    );

    // Put replaces, Delete deletes, the last operation on a topic wins.
    let b2 = message("status/b", "replaced");
    RetainedStore::apply(
        &store,
        &[
            RetainedOp::Delete {
                topic: "status/a".into(),
            },
            RetainedOp::Put(message("status/b", "first")),
            RetainedOp::Put(b2.clone()),
            RetainedOp::Delete {
                topic: "status/c".into(),
            },
            RetainedOp::Put(message("status/c", "back")),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        RetainedStore::load(&store).await.unwrap(),
        vec![b2, message("status/c", "back")]
    );
    RetainedStore::apply(&store, &[]).await.unwrap();
}

#[tokio::test]
async fn expired_retained_messages_are_not_loaded_and_are_swept() {
    let (store, url) = store().await;
    let mut old = message("t/old", "x");
    old.expires_at_ms = Some(now_ms() - 1);
    let mut new = message("t/new", "y");
    new.expires_at_ms = Some(now_ms() + 60_000);
    RetainedStore::apply(
        &store,
        &[RetainedOp::Put(old), RetainedOp::Put(new.clone())],
    )
    .await
    .unwrap();
    assert_eq!(RetainedStore::load(&store).await.unwrap(), vec![new]);
    assert_eq!(count(&url, "retained"), 2);
    let swept = store.sweep_expired().await.unwrap();
    assert_eq!(swept.retained, 1);
    assert_eq!(count(&url, "retained"), 1);
}

#[tokio::test]
async fn queue_round_trip() {
    let (store, url) = store().await;
    assert_eq!(QueueStore::name(&store), "postgres");
    let m1 = message("a/1", "one");
    let mut m2 = message("a/2", "two");
    m2.qos = 2;
    m2.retain = true;
    m2.expires_at_ms = Some(now_ms() + 3_600_123);
    let mut e2 = entry(2, 101);
    e2.qos = 2;
    e2.retain = true;
    e2.subscription_ids = vec![1, 268_435_455];
    QueueStore::apply(
        &store,
        &[
            QueueOp::Message {
                id: 100,
                message: m1.clone(),
            },
            QueueOp::Message {
                id: 101,
                message: m2.clone(),
            },
            enqueue("alice", entry(1, 100)),
            enqueue("alice", e2.clone()),
            enqueue("bob", entry(5, 100)),
            QueueOp::IncomingAdd {
                client_id: "carol".into(),
                packet_id: 9,
            },
            QueueOp::IncomingAdd {
                client_id: "alice".into(),
                packet_id: 3,
            },
            QueueOp::IncomingAdd {
                client_id: "alice".into(),
                packet_id: 1,
            },
        ],
    )
    .await
    .unwrap();

    let (entries, incoming) = QueueStore::load(&store, "alice").await.unwrap();
    assert_eq!(ids(&entries), [1, 2]);
    assert_eq!(entries[0].message.as_ref(), Some(&m1));
    assert_eq!(entries[1].message.as_ref(), Some(&m2));
    let mut expected = e2.clone();
    expected.message = Some(m2.clone());
    assert_eq!(entries[1], expected);
    assert_eq!(incoming, [1, 3]);
    assert_eq!(
        QueueStore::clients(&store).await.unwrap(),
        ["alice", "bob", "carol"]
    );

    // In flight, then PUBREC; PUBREL for a received id.
    QueueStore::apply(
        &store,
        &[
            QueueOp::Inflight {
                client_id: "alice".into(),
                id: 1,
                packet_id: 11,
                released: false,
            },
            QueueOp::Inflight {
                client_id: "alice".into(),
                id: 2,
                packet_id: 12,
                released: false,
            },
            QueueOp::Inflight {
                client_id: "alice".into(),
                id: 2,
                packet_id: 12,
                released: true,
            },
            QueueOp::IncomingRemove {
                client_id: "alice".into(),
                packet_id: 3,
            },
        ],
    )
    .await
    .unwrap();
    let (entries, incoming) = QueueStore::load(&store, "alice").await.unwrap();
    assert_eq!(
        entries
            .iter()
            .map(|e| (e.packet_id, e.released))
            .collect::<Vec<_>>(),
        [(Some(11), false), (Some(12), true)]
    );
    assert_eq!(incoming, [1]);

    // Acks delete entries; a body goes with its last entry.
    QueueStore::apply(
        &store,
        &[
            QueueOp::Ack {
                client_id: "alice".into(),
                id: 1,
            },
            QueueOp::Ack {
                client_id: "alice".into(),
                id: 2,
            },
        ],
    )
    .await
    .unwrap();
    assert_eq!(QueueStore::load(&store, "alice").await.unwrap().0, vec![]);
    // Message 100 is still queued for bob; 101 is gone.
    assert_eq!(
        PostgresServer::psql(&url, "SELECT id FROM messages ORDER BY id"),
        "100"
    );
    let (bob, _) = QueueStore::load(&store, "bob").await.unwrap();
    assert_eq!(ids(&bob), [5]);
    assert_eq!(bob[0].message.as_ref(), Some(&m1));

    // Purge: entries, received ids and unreferenced bodies.
    QueueStore::apply(
        &store,
        &[
            QueueOp::Purge {
                client_id: "bob".into(),
            },
            QueueOp::Purge {
                client_id: "alice".into(),
            },
        ],
    )
    .await
    .unwrap();
    assert_eq!(QueueStore::clients(&store).await.unwrap(), ["carol"]);
    assert_eq!(count(&url, "messages"), 0);
    assert_eq!(count(&url, "queue"), 0);
    assert_eq!(
        QueueStore::load(&store, "nobody").await.unwrap(),
        (vec![], vec![])
    );
}

#[tokio::test]
async fn a_batch_is_reduced_to_its_net_effect() {
    let (store, url) = store().await;
    QueueStore::apply(
        &store,
        &[
            QueueOp::Message {
                id: 1,
                message: message("t", "old"),
            },
            enqueue("c", entry(1, 1)),
            enqueue("c", entry(2, 1)),
        ],
    )
    .await
    .unwrap();
    QueueStore::apply(
        &store,
        &[
            // Enqueued and acknowledged in one batch: never written, its body freed.
            QueueOp::Message {
                id: 2,
                message: message("t", "short-lived"),
            },
            enqueue("c", entry(3, 2)),
            QueueOp::Inflight {
                client_id: "c".into(),
                id: 3,
                packet_id: 1,
                released: false,
            },
            QueueOp::Ack {
                client_id: "c".into(),
                id: 3,
            },
            // Purge, then a fresh queue: the purge does not eat what follows it.
            QueueOp::IncomingAdd {
                client_id: "c".into(),
                packet_id: 5,
            },
            QueueOp::Purge {
                client_id: "c".into(),
            },
            QueueOp::Message {
                id: 3,
                message: message("t", "new"),
            },
            enqueue("c", entry(4, 3)),
            QueueOp::Inflight {
                client_id: "c".into(),
                id: 4,
                packet_id: 2,
                released: false,
            },
            QueueOp::IncomingAdd {
                client_id: "c".into(),
                packet_id: 6,
            },
            // Removed and added again: present.
            QueueOp::IncomingRemove {
                client_id: "c".into(),
                packet_id: 6,
            },
            QueueOp::IncomingAdd {
                client_id: "c".into(),
                packet_id: 6,
            },
            // In flight for an entry the purge deleted: nothing.
            QueueOp::Inflight {
                client_id: "c".into(),
                id: 1,
                packet_id: 3,
                released: false,
            },
        ],
    )
    .await
    .unwrap();
    let (entries, incoming) = QueueStore::load(&store, "c").await.unwrap();
    assert_eq!(ids(&entries), [4]);
    assert_eq!(entries[0].packet_id, Some(2));
    assert_eq!(entries[0].message.as_ref(), Some(&message("t", "new")));
    assert_eq!(incoming, [6]);
    assert_eq!(
        PostgresServer::psql(&url, "SELECT id FROM messages ORDER BY id"),
        "3"
    );
}

#[tokio::test]
async fn a_failing_batch_changes_nothing() {
    let (store, url) = store().await;
    QueueStore::apply(
        &store,
        &[
            QueueOp::Message {
                id: 1,
                message: message("t", "kept"),
            },
            enqueue("c", entry(1, 1)),
        ],
    )
    .await
    .unwrap();
    // PostgreSQL text cannot hold NUL: the queue insert fails after the message insert and
    // the ack have run inside the transaction.
    let error = QueueStore::apply(
        &store,
        &[
            QueueOp::Message {
                id: 2,
                message: message("t", "lost"),
            },
            QueueOp::Ack {
                client_id: "c".into(),
                id: 1,
            },
            enqueue("bad\0client", entry(2, 2)),
        ],
    )
    .await
    .unwrap_err();
    assert!(!error.is_transient(), "{error}");
    assert_eq!(ids(&QueueStore::load(&store, "c").await.unwrap().0), [1]);
    assert_eq!(
        PostgresServer::psql(&url, "SELECT id FROM messages ORDER BY id"),
        "1"
    );

    let mut bad = message("t\0", "x");
    bad.retain = true;
    RetainedStore::apply(&store, &[RetainedOp::Put(message("ok", "x"))])
        .await
        .unwrap();
    RetainedStore::apply(
        &store,
        &[
            RetainedOp::Delete { topic: "ok".into() },
            RetainedOp::Put(bad),
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(RetainedStore::load(&store).await.unwrap().len(), 1);
}

#[tokio::test]
async fn expired_messages_are_not_loaded_and_are_swept() {
    let (store, url) = store().await;
    let mut expired = message("t", "expired");
    expired.expires_at_ms = Some(now_ms() - 1_000);
    let mut live = message("t", "live");
    live.expires_at_ms = Some(now_ms() + 60_000);
    let mut inflight = entry(2, 1);
    inflight.packet_id = Some(4);
    QueueStore::apply(
        &store,
        &[
            QueueOp::Message {
                id: 1,
                message: expired,
            },
            QueueOp::Message {
                id: 2,
                message: live.clone(),
            },
            QueueOp::Message {
                id: 3,
                message: message("t", "forever"),
            },
            enqueue("a", entry(1, 1)),
            enqueue("b", inflight),
            enqueue("a", entry(3, 2)),
            enqueue("a", entry(4, 3)),
        ],
    )
    .await
    .unwrap();
    let (entries, _) = QueueStore::load(&store, "a").await.unwrap();
    assert_eq!(ids(&entries), [3, 4]);
    assert_eq!(entries[0].message.as_ref(), Some(&live));
    assert_eq!(QueueStore::load(&store, "b").await.unwrap().0, vec![]);
    assert_eq!(count(&url, "queue"), 4);

    assert_eq!(
        store.sweep_expired().await.unwrap(),
        Swept {
            messages: 1,
            queue_entries: 2,
            retained: 0
        }
    );
    assert_eq!(count(&url, "queue"), 2);
    assert_eq!(
        PostgresServer::psql(&url, "SELECT id FROM messages ORDER BY id"),
        "2\n3"
    );
    assert_eq!(store.sweep_expired().await.unwrap(), Swept::default());
}

#[tokio::test]
async fn group_commit_batches_of_a_thousand() {
    let (store, url) = store().await;
    let mut ops = Vec::new();
    for i in 0..500u64 {
        ops.push(QueueOp::Message {
            id: i,
            message: message("load/t", &format!("m{i}")),
        });
        ops.push(enqueue(&format!("c{}", i % 10), entry(i, i)));
    }
    QueueStore::apply(&store, &ops).await.unwrap();
    assert_eq!(count(&url, "messages"), 500);
    let (entries, _) = QueueStore::load(&store, "c3").await.unwrap();
    assert_eq!(entries.len(), 50);
    assert!(entries.windows(2).all(|w| w[0].id < w[1].id));
    assert!(
        entries
            .iter()
            .all(|e| e.message.as_ref().unwrap().payload == format!("m{}", e.id))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_migrate_once() {
    let url = PostgresServer::shared().database();
    let connects = (0..8).map(|_| {
        let url = url.clone();
        tokio::spawn(async move {
            PostgresStore::connect_with(
                &url,
                PostgresOptions {
                    pool_size: 2,
                    ..PostgresOptions::default()
                },
            )
            .await
        })
    });
    let stores: Vec<PostgresStore> = futures_join(connects).await;
    assert_eq!(stores.len(), 8);
    let migrations: i64 =
        PostgresServer::psql(&url, "SELECT count(*) FROM _sqlx_migrations WHERE success")
            .parse()
            .unwrap();
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .count() as i64;
    assert_eq!(migrations, files);
    // And a store started later finds them applied.
    PostgresStore::connect(&url).await.unwrap();
    assert_eq!(count(&url, "_sqlx_migrations"), files);
}

async fn futures_join(
    handles: impl Iterator<Item = tokio::task::JoinHandle<Result<PostgresStore, StoreError>>>,
) -> Vec<PostgresStore> {
    let mut out = Vec::new();
    for handle in handles.collect::<Vec<_>>() {
        out.push(handle.await.unwrap().unwrap());
    }
    out
}

#[tokio::test]
async fn connect_fails_unavailable_without_a_server() {
    let server = PostgresServer::start_private();
    let url = server.url().to_owned();
    drop(server);
    let error = PostgresStore::connect_with(
        &url,
        PostgresOptions {
            acquire_timeout: Duration::from_millis(500),
            ..PostgresOptions::default()
        },
    )
    .await
    .err()
    .unwrap();
    assert!(error.is_transient(), "{error}");
}

#[tokio::test]
async fn survives_a_server_restart() {
    let server = PostgresServer::start_private();
    let url = server.database();
    let store = PostgresStore::connect_with(
        &url,
        PostgresOptions {
            pool_size: 2,
            acquire_timeout: Duration::from_secs(1),
        },
    )
    .await
    .unwrap();
    let batch = |id: u64| {
        vec![
            QueueOp::Message {
                id,
                message: message("t", "m"),
            },
            enqueue("c", entry(id, id)),
        ]
    };
    QueueStore::apply(&store, &batch(1)).await.unwrap();

    server.stop();
    let error = QueueStore::apply(&store, &batch(2)).await.unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::Unavailable {
                store: "postgres",
                ..
            }
        ),
        "{error}"
    );
    assert!(
        QueueStore::load(&store, "c")
            .await
            .unwrap_err()
            .is_transient()
    );
    assert!(
        RetainedStore::apply(&store, &[RetainedOp::Put(message("r", "x"))])
            .await
            .unwrap_err()
            .is_transient()
    );

    server.start();
    QueueStore::apply(&store, &batch(3)).await.unwrap();
    let (entries, _) = QueueStore::load(&store, "c").await.unwrap();
    assert_eq!(ids(&entries), [1, 3]);
}

fn mark(receiver: &str, sender: &str, sender_epoch: u64, upto: u64) -> QueueOp {
    QueueOp::ForwardMark(ForwardMark {
        receiver: receiver.into(),
        receiver_epoch: u64::MAX - 1,
        sender: sender.into(),
        sender_epoch,
        upto,
    })
}

#[tokio::test]
async fn forward_marks_keep_the_last_per_pair_and_commit_with_the_entries() {
    let (store, url) = store().await;
    assert_eq!(store.forward_mark("node-1", "node-0").await.unwrap(), None);
    // The last of a batch wins, per (receiver, sender); epochs of any u64 fit.
    QueueStore::apply(
        &store,
        &[
            QueueOp::Message {
                id: 1,
                message: message("t", "a"),
            },
            enqueue("c", entry(10, 1)),
            mark("node-1", "node-0", 5, 3),
            mark("node-1", "node-0", 5, 4),
            mark("node-1", "node-2", 9, 1),
        ],
    )
    .await
    .unwrap();
    let m = store
        .forward_mark("node-1", "node-0")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (m.receiver_epoch, m.sender_epoch, m.upto),
        (u64::MAX - 1, 5, 4)
    );
    assert_eq!(
        store
            .forward_mark("node-1", "node-2")
            .await
            .unwrap()
            .unwrap()
            .upto,
        1
    );
    assert_eq!(store.forward_mark("node-0", "node-1").await.unwrap(), None);
    let all = store.forward_marks("node-1").await.unwrap();
    let got: Vec<_> = all.iter().map(|m| (m.sender.as_str(), m.upto)).collect();
    assert_eq!(got, [("node-0", 4), ("node-2", 1)]);
    assert!(store.forward_marks("node-0").await.unwrap().is_empty());
    // A later batch replaces it, epochs included.
    QueueStore::apply(&store, &[mark("node-1", "node-0", 6, 1)])
        .await
        .unwrap();
    let m = store
        .forward_mark("node-1", "node-0")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((m.sender_epoch, m.upto), (6, 1));
    // A batch that fails commits neither its entries nor its mark.
    let failing = QueueStore::apply(
        &store,
        &[
            enqueue("c", entry(11, 1)),
            mark("node-1", "node-0", 6, 2),
            enqueue(
                "c",
                QueueEntry {
                    qos: 1,
                    subscription_ids: vec![u32::MAX],
                    ..entry(12, 1)
                },
            ),
        ],
    )
    .await;
    assert!(failing.is_err());
    assert_eq!(
        store
            .forward_mark("node-1", "node-0")
            .await
            .unwrap()
            .unwrap()
            .upto,
        1
    );
    assert_eq!(count(&url, "queue"), 1);
}
