//! The embedded store on a real file, and the committer over it.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rookery_store::committer::{Committer, CommitterConfig, Durability, Op, Stores, coalesce};
use rookery_store::embedded::{EmbeddedStore, STORE_DIR};
use rookery_store::now_ms;
use rookery_store::{
    ForwardMark, QueueEntry, QueueOp, QueueStore, RetainedOp, RetainedStore, SessionOp,
    SessionRecord, SessionStore, StoredMessage, SubscriptionRecord,
};

fn msg(topic: &str, payload: &str, expires_at_ms: Option<u64>) -> StoredMessage {
    StoredMessage {
        topic: topic.into(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos: 1,
        retain: false,
        properties: Bytes::new(),
        expires_at_ms,
    }
}

fn entry(id: u64, message_id: u64) -> QueueEntry {
    QueueEntry {
        id,
        message_id,
        qos: 1,
        retain: false,
        subscription_ids: vec![3],
        packet_id: None,
        released: false,
        message: None,
    }
}

fn enqueue(client: &str, id: u64, message_id: u64) -> QueueOp {
    QueueOp::Enqueue {
        client_id: client.into(),
        entry: entry(id, message_id),
    }
}

fn session(id: &str) -> SessionRecord {
    SessionRecord {
        client_id: id.into(),
        expiry_secs: 60,
        disconnected_at_ms: Some(1),
        username: Some("u".into()),
        by_password: true,
        subscriptions: vec![SubscriptionRecord {
            filter: "a/#".into(),
            qos: 1,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
            id: Some(3),
        }],
        will: None,
        owner_node: "n1".into(),
        epoch: 2,
    }
}

#[tokio::test]
async fn sessions_and_retained_round_trip_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(dir.path()).unwrap();
    SessionStore::apply(
        &s,
        &[SessionOp::Put(session("a")), SessionOp::Put(session("b"))],
    )
    .await
    .unwrap();
    SessionStore::apply(
        &s,
        &[SessionOp::Delete {
            client_id: "b".into(),
            owner: None,
        }],
    )
    .await
    .unwrap();
    RetainedStore::apply(
        &s,
        &[
            RetainedOp::Put(msg("r/1", "one", None)),
            RetainedOp::Put(msg("r/2", "two", None)),
            RetainedOp::Put(msg("r/old", "expired", Some(1))),
            RetainedOp::Delete {
                topic: "r/2".into(),
            },
        ],
    )
    .await
    .unwrap();
    drop(s);
    let s = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(SessionStore::load(&s).await.unwrap(), vec![session("a")]);
    assert_eq!(
        SessionStore::get(&s, "a").await.unwrap(),
        Some(session("a"))
    );
    assert_eq!(SessionStore::get(&s, "b").await.unwrap(), None);
    let retained = RetainedStore::load(&s).await.unwrap();
    assert_eq!(retained, vec![msg("r/1", "one", None)]);
}

#[tokio::test]
async fn queues_keep_order_state_and_share_messages() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(dir.path()).unwrap();
    QueueStore::apply(
        &s,
        &[
            QueueOp::Message {
                id: 100,
                message: msg("t", "shared", None),
            },
            QueueOp::Message {
                id: 101,
                message: msg("t", "gone", Some(1)),
            },
            enqueue("a", 3, 100),
            enqueue("a", 1, 100),
            enqueue("a", 2, 101),
            enqueue("b", 1, 100),
            QueueOp::Inflight {
                client_id: "a".into(),
                id: 1,
                packet_id: 7,
                released: true,
            },
            QueueOp::IncomingAdd {
                client_id: "c".into(),
                packet_id: 9,
            },
            QueueOp::IncomingAdd {
                client_id: "c".into(),
                packet_id: 10,
            },
            QueueOp::IncomingRemove {
                client_id: "c".into(),
                packet_id: 9,
            },
        ],
    )
    .await
    .unwrap();
    let (a, ids) = QueueStore::load(&s, "a").await.unwrap();
    assert!(ids.is_empty());
    // Ascending ids; the expired message is skipped (it was never sent).
    assert_eq!(a.iter().map(|e| e.id).collect::<Vec<_>>(), vec![1, 3]);
    assert_eq!(a[0].packet_id, Some(7));
    assert!(a[0].released);
    assert_eq!(a[0].message.as_ref().unwrap().payload, "shared");
    // The expired entry is gone for good (deleted while loading): reopening shows the same.
    drop(s);
    let s = EmbeddedStore::open(dir.path()).unwrap();
    let (a, _) = QueueStore::load(&s, "a").await.unwrap();
    assert_eq!(a.iter().map(|e| e.id).collect::<Vec<_>>(), vec![1, 3]);
    assert_eq!(QueueStore::load(&s, "c").await.unwrap().1, vec![10]);
    assert_eq!(QueueStore::clients(&s).await.unwrap(), vec!["a", "b", "c"]);

    // The shared message outlives a's entries while b still refers to it.
    QueueStore::apply(
        &s,
        &[QueueOp::Purge {
            client_id: "a".into(),
        }],
    )
    .await
    .unwrap();
    drop(s);
    let s = EmbeddedStore::open(dir.path()).unwrap();
    let (b, _) = QueueStore::load(&s, "b").await.unwrap();
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].message.as_ref().unwrap().payload, "shared");
    QueueStore::apply(
        &s,
        &[QueueOp::Ack {
            client_id: "b".into(),
            id: 1,
        }],
    )
    .await
    .unwrap();
    assert!(QueueStore::load(&s, "b").await.unwrap().0.is_empty());
    assert_eq!(QueueStore::clients(&s).await.unwrap(), vec!["c"]);
}

#[test]
fn a_second_open_of_the_same_directory_is_refused_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let _first = EmbeddedStore::open(dir.path()).unwrap();
    let err = EmbeddedStore::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains(STORE_DIR), "{err}");
}

#[tokio::test]
async fn corrupt_data_is_an_error_naming_it_not_an_empty_start() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = EmbeddedStore::open(dir.path()).unwrap();
        SessionStore::apply(&s, &[SessionOp::Put(session("a"))])
            .await
            .unwrap();
    }
    // Every file of the database overwritten with garbage of the same length.
    let mut files = Vec::new();
    let mut stack = vec![dir.path().join(STORE_DIR)];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().unwrap() != "lock" {
                files.push(p);
            }
        }
    }
    assert!(!files.is_empty());
    for f in &files {
        let len = std::fs::metadata(f).unwrap().len().max(64);
        std::fs::write(f, vec![0xa5u8; len as usize]).unwrap();
    }
    let err = EmbeddedStore::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains(STORE_DIR), "{err}");
}

#[test]
fn a_file_where_the_database_should_be_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(STORE_DIR), b"not a database at all").unwrap();
    let err = EmbeddedStore::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains(STORE_DIR), "{err}");
}

#[test]
fn coalesce_folds_in_flight_updates_into_their_entries() {
    let ops = vec![
        QueueOp::Message {
            id: 1,
            message: msg("t", "a", None),
        },
        enqueue("x", 10, 1),
        QueueOp::Inflight {
            client_id: "x".into(),
            id: 10,
            packet_id: 4,
            released: false,
        },
        QueueOp::Inflight {
            client_id: "x".into(),
            id: 10,
            packet_id: 4,
            released: true,
        },
        // Entry 7 came in an earlier batch: its update stays, unless it is acknowledged too.
        QueueOp::Inflight {
            client_id: "x".into(),
            id: 7,
            packet_id: 5,
            released: false,
        },
        QueueOp::Inflight {
            client_id: "x".into(),
            id: 8,
            packet_id: 6,
            released: false,
        },
        QueueOp::Ack {
            client_id: "x".into(),
            id: 8,
        },
    ];
    let mut folded = entry(10, 1);
    folded.packet_id = Some(4);
    folded.released = true;
    assert_eq!(
        coalesce(ops),
        vec![
            QueueOp::Message {
                id: 1,
                message: msg("t", "a", None)
            },
            QueueOp::Enqueue {
                client_id: "x".into(),
                entry: folded
            },
            QueueOp::Inflight {
                client_id: "x".into(),
                id: 7,
                packet_id: 5,
                released: false
            },
            QueueOp::Ack {
                client_id: "x".into(),
                id: 8
            },
        ]
    );
}

#[test]
fn coalesce_drops_entries_acknowledged_within_the_batch() {
    let ops = vec![
        QueueOp::Message {
            id: 1,
            message: msg("t", "a", None),
        },
        enqueue("x", 10, 1),
        QueueOp::Message {
            id: 2,
            message: msg("t", "b", None),
        },
        enqueue("x", 11, 2),
        enqueue("y", 12, 2),
        QueueOp::Inflight {
            client_id: "x".into(),
            id: 10,
            packet_id: 1,
            released: false,
        },
        QueueOp::Ack {
            client_id: "x".into(),
            id: 10,
        },
        QueueOp::Ack {
            client_id: "x".into(),
            id: 11,
        },
        QueueOp::Ack {
            client_id: "z".into(),
            id: 99,
        },
    ];
    let out = coalesce(ops);
    assert_eq!(
        out,
        vec![
            // Message 1 had only entry 10, gone; message 2 still has y's entry.
            QueueOp::Message {
                id: 2,
                message: msg("t", "b", None)
            },
            enqueue("y", 12, 2),
            // An ack for an entry of an earlier batch stays.
            QueueOp::Ack {
                client_id: "z".into(),
                id: 99
            },
        ]
    );
}

fn committer(dir: &std::path::Path, durability: Durability) -> Arc<Committer> {
    let s = EmbeddedStore::open(dir).unwrap();
    Committer::new(
        Stores {
            sessions: Arc::new(s.clone()),
            retained: Arc::new(s.clone()),
            queue: Arc::new(s),
        },
        CommitterConfig {
            durability,
            flush_interval: Duration::from_millis(20),
            max_pending: 10,
        },
    )
}

#[tokio::test]
async fn tickets_are_committed_in_order_and_writes_survive_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let c = committer(dir.path(), Durability::Sync);
    let stop = tokio_util_like::Stop::default();
    let writer = tokio::spawn(c.clone().run(stop.wait()));
    let mut rx = c.watch();
    let t1 = c.submit([Op::Retained(RetainedOp::Put(msg("r", "1", None)))]);
    let t2 = c.submit([Op::Session(SessionOp::Put(session("s")))]);
    assert!(t2 > t1);
    rx.wait_for(|t| *t >= t2).await.unwrap();
    assert!(c.is_committed(t1) && c.is_committed(t2));
    // Submitted just before shutdown: still written.
    c.submit([Op::Retained(RetainedOp::Put(msg("r2", "2", None)))]);
    stop.fire();
    writer.await.unwrap();
    let stores = c.stores().clone();
    drop(c);
    let retained = stores.retained.load().await.unwrap();
    assert_eq!(retained.len(), 2);
}

#[tokio::test]
async fn too_many_pending_writes_refuse_new_messages() {
    let dir = tempfile::tempdir().unwrap();
    // No writer runs: everything stays pending.
    let c = committer(dir.path(), Durability::Async);
    assert!(c.accepts_messages());
    for i in 0..10 {
        c.submit([Op::Queue(QueueOp::Ack {
            client_id: "a".into(),
            id: i,
        })]);
    }
    assert!(!c.accepts_messages());
}

#[test]
fn now_ms_is_wall_clock() {
    // 2020-01-01 in ms; a clock before that is broken.
    assert!(now_ms() > 1_577_836_800_000);
}

/// A one-shot stop signal for the writer loop.
mod tokio_util_like {
    use std::sync::Arc;
    use tokio::sync::Notify;

    #[derive(Default, Clone)]
    pub struct Stop(Arc<(Notify, std::sync::atomic::AtomicBool)>);

    impl Stop {
        pub fn fire(&self) {
            self.0.1.store(true, std::sync::atomic::Ordering::SeqCst);
            self.0.0.notify_waiters();
        }
        pub fn wait(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
            let me = self.clone();
            async move {
                loop {
                    let n = me.0.0.notified();
                    if me.0.1.load(std::sync::atomic::Ordering::SeqCst) {
                        return;
                    }
                    n.await;
                }
            }
        }
    }
}

#[tokio::test]
async fn forward_marks_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mark = |upto| {
        QueueOp::ForwardMark(ForwardMark {
            receiver: "node-1".into(),
            receiver_epoch: 3,
            sender: "node-0".into(),
            sender_epoch: 4,
            upto,
        })
    };
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(store.forward_mark("node-1", "node-0").await.unwrap(), None);
        QueueStore::apply(&store, &[mark(2), mark(7)])
            .await
            .unwrap();
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let m = store
        .forward_mark("node-1", "node-0")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((m.receiver_epoch, m.sender_epoch, m.upto), (3, 4, 7));
    assert_eq!(store.forward_mark("node-0", "node-1").await.unwrap(), None);
    // All of one receiver's, the last per sender; not those of a receiver whose id it
    // begins with.
    let other = |receiver: &str, sender: &str| {
        QueueOp::ForwardMark(ForwardMark {
            receiver: receiver.into(),
            receiver_epoch: 3,
            sender: sender.into(),
            sender_epoch: 5,
            upto: 1,
        })
    };
    QueueStore::apply(
        &store,
        &[other("node-1", "node-2"), other("node-10", "node-0")],
    )
    .await
    .unwrap();
    let all = store.forward_marks("node-1").await.unwrap();
    let got: Vec<_> = all.iter().map(|m| (m.sender.as_str(), m.upto)).collect();
    assert_eq!(got, [("node-0", 7), ("node-2", 1)]);
    assert!(store.forward_marks("node-3").await.unwrap().is_empty());
}
