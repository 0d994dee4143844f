//! Forward acknowledgements (protocol level 5): a real node, and a peer the test plays frame by
//! frame. The publisher's PUBACK waits until the peer has the message; a peer that comes back
//! to the same boot epoch gets again what it had not acknowledged, and a node that receives a
//! message twice that way routes it once.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use rookery_broker::Server;
use rookery_broker::cluster::frame::{self, Frame, Hello};
use rookery_codec::{Packet, Protocol, QoS};
use rookery_store::StoredMessage;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cluster::{free_port, node_with, routed, until, up};
use crate::support::*;

/// The test's side of a link: node `node-z` of cluster "prod".
pub(crate) struct Peer {
    stream: TcpStream,
    buf: BytesMut,
}

impl Peer {
    /// Links to the node on `port` as `node-z` at protocol `level`, boot epoch `epoch`.
    pub(crate) async fn link(port: u16, level: u8, epoch: u64) -> Peer {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut peer = Peer {
            stream,
            buf: BytesMut::new(),
        };
        peer.send(&[Frame::Hello(Hello {
            cluster: "prod".into(),
            node_id: "node-z".into(),
            epoch,
            // Its id is the larger: without this the node would wait for it to dial instead.
            insist: true,
            protocol: level,
        })])
        .await;
        peer
    }

    pub(crate) async fn send(&mut self, frames: &[Frame]) {
        let mut out = BytesMut::new();
        for f in frames {
            frame::encode(f, &mut out);
        }
        self.stream.write_all(&out).await.unwrap();
    }

    /// The next frame other than a heartbeat, a route change or the node's `Restarted`.
    pub(crate) async fn next(&mut self) -> Frame {
        self.next_but(|f| matches!(f, Frame::Restarted { .. }))
            .await
    }

    /// The next frame other than a heartbeat, a route change or one `skip` says.
    pub(crate) async fn next_but(&mut self, skip: impl Fn(&Frame) -> bool) -> Frame {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                while let Some(f) = frame::decode(&mut self.buf).unwrap() {
                    match f {
                        Frame::Heartbeat
                        | Frame::Hello(_)
                        | Frame::Routes(_)
                        | Frame::RouteAdd(_)
                        | Frame::RouteRemove(_)
                        | Frame::Claim { .. }
                        | Frame::Claims(_) => {}
                        f if skip(&f) => {}
                        f => return f,
                    }
                }
                assert!(
                    self.stream.read_buf(&mut self.buf).await.unwrap() > 0,
                    "link closed"
                );
            }
        })
        .await
        .expect("no frame from the node")
    }

    /// The payload of the next frame, which must be a forwarded message.
    pub(crate) async fn next_publish(&mut self) -> String {
        match self.next().await {
            Frame::Publish { message, .. } => String::from_utf8_lossy(&message.payload).into(),
            other => panic!("not a Publish: {other:?}"),
        }
    }

    /// Waits for `ForwardAck { upto }` with this count (earlier, smaller ones are skipped).
    async fn expect_ack(&mut self, upto: u64) {
        loop {
            match self.next().await {
                Frame::ForwardAck { upto: n } if n == upto => return,
                Frame::ForwardAck { upto: n } if n < upto => {}
                // The node's own side of the link.
                Frame::ForwardResume { .. } => {}
                other => panic!("waiting for ForwardAck {{ upto: {upto} }}: {other:?}"),
            }
        }
    }
}

fn forwarded(id: u64, payload: &str) -> Frame {
    Frame::Publish {
        id,
        message: StoredMessage {
            topic: "t".into(),
            payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
            qos: 1,
            retain: false,
            properties: bytes::Bytes::new(),
            expires_at_ms: None,
        },
        groups: vec![],
    }
}

async fn node(port: u16) -> Server {
    node_with("node-a", "prod", port, &[], |_| {}).await
}

/// A node, the test's peer linked to it at level 5 with a subscriber for `t` (its opening
/// `ForwardResume { from: 0 }` read), and a publisher on the node.
async fn linked_with_publisher(port: u16) -> (Server, Peer, Raw) {
    let a = node(port).await;
    let mut z = Peer::link(port, frame::LEVEL, 1).await;
    z.send(&[Frame::Routes(vec!["t".into()])]).await;
    routed(&a, "t", &["node-z"]).await;
    assert_eq!(z.next().await, Frame::ForwardResume { from: 0 });
    let (p, _) = Raw::connect(a.addr(), Protocol::V5, "p", true).await;
    (a, z, p)
}

/// [`linked_with_publisher`], then messages "1" to "n" (packet ids 1 to n) forwarded and read
/// by the peer, which acknowledges the first `acked` of them (their PUBACKs read) before its
/// link goes down.
async fn forwarded_then_down(port: u16, n: u16, acked: u16) -> (Server, Raw) {
    let (a, mut z, mut p) = linked_with_publisher(port).await;
    for pid in 1..=n {
        send_qos1(&mut p, &pid.to_string(), pid).await;
    }
    for pid in 1..=n {
        assert_eq!(z.next_publish().await, pid.to_string());
    }
    if acked > 0 {
        z.send(&[Frame::ForwardAck {
            upto: u64::from(acked),
        }])
        .await;
        for pid in 1..=acked {
            expect_puback(&mut p, pid).await;
        }
    }
    drop(z);
    until("the link down", || up(&a).is_empty()).await;
    (a, p)
}

/// Sends a QoS 1 PUBLISH without waiting for its PUBACK.
async fn send_qos1(p: &mut Raw, payload: &str, pid: u16) {
    p.send(Packet::Publish(publish(
        "t",
        payload.as_bytes(),
        QoS::AtLeastOnce,
        false,
        pid,
    )))
    .await;
}

async fn expect_puback(p: &mut Raw, pid: u16) {
    expect_puback_within(p, pid, WAIT).await;
}

async fn expect_puback_within(p: &mut Raw, pid: u16, wait: Duration) {
    match p.recv_within(wait).await {
        Some(Packet::PubAck(a)) => assert_eq!(a.packet_id, pid),
        other => panic!("not a PUBACK: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publishers_puback_waits_until_the_peer_has_the_message() {
    let (a, mut z, mut p) = linked_with_publisher(free_port()).await;
    send_qos1(&mut p, "1", 1).await;
    send_qos1(&mut p, "2", 2).await;
    assert_eq!(z.next_publish().await, "1");
    assert_eq!(z.next_publish().await, "2");
    p.expect_silence(Duration::from_millis(300)).await;
    z.send(&[Frame::ForwardAck { upto: 1 }]).await;
    expect_puback(&mut p, 1).await;
    p.expect_silence(Duration::from_millis(200)).await;
    z.send(&[Frame::ForwardAck { upto: 2 }]).await;
    expect_puback(&mut p, 2).await;
    // QoS 0 waits for nothing (and is counted like the rest).
    p.publish("t", b"0", QoS::AtMostOnce, false, 0).await;
    assert_eq!(z.next_publish().await, "0");
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_of_level_four_is_not_waited_for() {
    let port = free_port();
    let a = node(port).await;
    let mut z = Peer::link(port, 4, 1).await;
    z.send(&[Frame::Routes(vec!["t".into()])]).await;
    routed(&a, "t", &["node-z"]).await;
    let (mut p, _) = Raw::connect(a.addr(), Protocol::V5, "p", true).await;
    send_qos1(&mut p, "1", 1).await;
    expect_puback(&mut p, 1).await;
    // No ForwardResume (a level-4 node would close the link on it): the message comes first.
    assert_eq!(z.next_publish().await, "1");
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_back_from_a_cut_gets_again_what_it_had_not_acknowledged() {
    let port = free_port();
    let (a, mut z, mut p) = linked_with_publisher(port).await;
    let metrics = a.metrics_addr.unwrap();
    send_qos1(&mut p, "1", 1).await;
    send_qos1(&mut p, "2", 2).await;
    assert_eq!(z.next_publish().await, "1");
    assert_eq!(z.next_publish().await, "2");
    z.send(&[Frame::ForwardAck { upto: 1 }]).await;
    expect_puback(&mut p, 1).await;

    // The link drops with message 2 unacknowledged.
    drop(z);
    until("the link down", || up(&a).is_empty()).await;
    // Its routes stay: a QoS 1 message waits for the peer, a QoS 0 one goes.
    routed(&a, "t", &["node-z"]).await;
    send_qos1(&mut p, "3", 3).await;
    p.publish("t", b"lost", QoS::AtMostOnce, false, 0).await;
    p.expect_silence(Duration::from_millis(300)).await;
    let m = scrape(metrics).await;
    assert_eq!(
        value(
            &m,
            "rookery_cluster_forward_unacknowledged{peer=\"node-z\"}"
        ),
        2.0
    );

    // Back, same boot epoch: what was not acknowledged comes again, in order, then new ones.
    let mut z = Peer::link(port, frame::LEVEL, 1).await;
    z.send(&[Frame::Routes(vec!["t".into()])]).await;
    assert_eq!(z.next().await, Frame::ForwardResume { from: 1 });
    assert_eq!(z.next_publish().await, "2");
    assert_eq!(z.next_publish().await, "3");
    send_qos1(&mut p, "4", 4).await;
    assert_eq!(z.next_publish().await, "4");
    z.send(&[Frame::ForwardAck { upto: 4 }]).await;
    for pid in [2, 3, 4] {
        expect_puback(&mut p, pid).await;
    }
    let m = scrape(metrics).await;
    assert_eq!(
        value(
            &m,
            "rookery_cluster_forward_unacknowledged{peer=\"node-z\"}"
        ),
        0.0
    );
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_restarted_or_stayed_away_has_its_messages_given_up_and_counted() {
    let port = free_port();
    let (a, mut p) = forwarded_then_down(port, 1, 0).await;
    let metrics = a.metrics_addr.unwrap();
    p.expect_silence(Duration::from_millis(200)).await;

    // It comes back restarted (a new epoch) at level 6: its old life's messages are given
    // up, and the publisher hears back. (From level 7 it is sent them: see below.)
    let mut z = Peer::link(port, 6, 2).await;
    z.send(&[Frame::Routes(vec!["t".into()])]).await;
    expect_puback(&mut p, 1).await;
    assert_eq!(z.next().await, Frame::ForwardResume { from: 0 });
    let m = scrape(metrics).await;
    assert_eq!(
        value(&m, "rookery_cluster_forward_dropped_total{peer=\"node-z\"}"),
        1.0
    );

    // It goes and does not come back: after the wait its routes go and the publisher hears
    // back (nobody adopts sessions without Redis).
    send_qos1(&mut p, "2", 2).await;
    assert_eq!(z.next_publish().await, "2");
    drop(z);
    let gone = Instant::now();
    until("the link down", || up(&a).is_empty()).await;
    send_qos1(&mut p, "3", 3).await;
    p.expect_silence(Duration::from_secs(2)).await;
    expect_puback_within(&mut p, 2, Duration::from_secs(15)).await;
    expect_puback(&mut p, 3).await;
    assert!(gone.elapsed() >= rookery_broker::cluster::KEPT_WHILE_DOWN);
    routed(&a, "t", &[]).await;
    let m = scrape(metrics).await;
    assert_eq!(
        value(&m, "rookery_cluster_forward_dropped_total{peer=\"node-z\"}"),
        3.0
    );

    // Back after all, the same life: what was given up comes again first (kept for a while,
    // `restart::GIVEN_UP_KEPT`), numbered as before.
    let mut z = Peer::link(port, 6, 2).await;
    z.send(&[Frame::Routes(vec!["t".into()])]).await;
    assert_eq!(z.next().await, Frame::ForwardResume { from: 0 });
    assert_eq!(z.next_publish().await, "2");
    assert_eq!(z.next_publish().await, "3");
    // Its routes, given up with it, are back once its announcement is read.
    routed(&a, "t", &["node-z"]).await;
    send_qos1(&mut p, "4", 4).await;
    assert_eq!(z.next_publish().await, "4");
    z.send(&[Frame::ForwardAck { upto: 3 }]).await;
    expect_puback(&mut p, 4).await;
    a.shutdown().await;
}

/// The payload of a `PublishAdopted` for `departed`'s sessions.
fn adopted_payload(f: Frame, departed: &str) -> String {
    match f {
        Frame::PublishAdopted {
            departed: d,
            message,
            ..
        } => {
            assert_eq!(d, departed);
            String::from_utf8_lossy(&message.payload).into()
        }
        other => panic!("not a PublishAdopted: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_is_sent_what_its_previous_life_had_not_committed() {
    let port = free_port();
    let (a, mut p) = forwarded_then_down(port, 3, 1).await;
    let metrics = a.metrics_addr.unwrap();
    let epoch = a.broker.cluster.get().unwrap().epoch;

    // A new life (epoch 2): the publishers of 2 and 3 wait for its word.
    let mut z = Peer::link(port, frame::LEVEL, 2).await;
    z.send(&[Frame::Routes(vec!["t".into()])]).await;
    assert_eq!(z.next().await, Frame::ForwardResume { from: 0 });
    p.expect_silence(Duration::from_millis(300)).await;
    // Its previous life had committed 2 of our frames: 3 comes again, for the sessions it
    // restored, numbered in the new life's count.
    let mark = frame::PreviousMark {
        receiver_epoch: 1,
        sender_epoch: epoch,
        upto: 2,
    };
    z.send(&[Frame::Restarted { mark: Some(mark) }]).await;
    assert_eq!(adopted_payload(z.next().await, "node-z"), "3");
    p.expect_silence(Duration::from_millis(300)).await;
    z.send(&[Frame::ForwardAck { upto: 1 }]).await;
    expect_puback(&mut p, 2).await;
    expect_puback(&mut p, 3).await;
    // New messages go the usual way.
    routed(&a, "t", &["node-z"]).await;
    send_qos1(&mut p, "4", 4).await;
    assert_eq!(z.next_publish().await, "4");
    z.send(&[Frame::ForwardAck { upto: 2 }]).await;
    expect_puback(&mut p, 4).await;
    let m = scrape(metrics).await;
    assert_eq!(
        value(
            &m,
            "rookery_cluster_forward_rerouted_total{peer=\"node-z\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&m, "rookery_cluster_forward_dropped_total{peer=\"node-z\"}"),
        0.0
    );
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_that_says_nothing_releases_its_publishers_and_is_sent_them_later() {
    let port = free_port();
    let (a, mut p) = forwarded_then_down(port, 1, 0).await;
    let z = Peer::link(port, frame::LEVEL, 2).await;
    let silent = Instant::now();
    expect_puback_within(&mut p, 1, Duration::from_secs(15)).await;
    assert!(silent.elapsed() >= rookery_broker::cluster::restart::RESTARTED_WAIT / 2);
    // Its word on a later link of that life: the message comes, though nobody waits now.
    drop(z);
    until("the link down", || up(&a).is_empty()).await;
    let mut z = Peer::link(port, frame::LEVEL, 2).await;
    z.send(&[Frame::Restarted { mark: None }]).await;
    assert_eq!(z.next().await, Frame::ForwardResume { from: 0 });
    assert_eq!(adopted_payload(z.next().await, "node-z"), "1");
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_on_its_store_says_how_far_it_had_committed_and_delivers_the_rest_to_its_restored_sessions()
 {
    let dir = tempfile::tempdir().unwrap();
    let start = |port: u16| {
        let data = dir.path().to_path_buf();
        node_with("node-a", "prod", port, &[], move |c| {
            c.data_dir = data;
            c.durability = rookery_broker::config::DurabilityMode::Sync;
        })
    };
    let port = free_port();
    let a = start(port).await;
    let mut connect = connect_packet(Protocol::V5, "dev", false);
    connect.properties.session_expiry_interval = Some(3600);
    let (mut d, _) = Raw::connect_with(a.addr(), connect.clone()).await;
    d.subscribe("t", QoS::AtLeastOnce).await;
    d.disconnect().await;
    let mut z = Peer::link(port, frame::LEVEL, 1).await;
    until("linked", || up(&a) == ["node-z"]).await;
    // A fresh node has no mark of ours.
    let restarted = |f: &Frame| !matches!(f, Frame::Restarted { .. });
    assert_eq!(z.next_but(restarted).await, Frame::Restarted { mark: None });
    z.send(&[Frame::ForwardResume { from: 0 }, forwarded(7, "kept")])
        .await;
    z.expect_ack(1).await;
    let old_epoch = a.broker.cluster.get().unwrap().epoch;
    a.shutdown().await;
    drop(z);

    // Restarted on its store: it says it had committed our frame 1.
    let port = free_port();
    let a = start(port).await;
    assert!(a.broker.cluster.get().unwrap().epoch > old_epoch);
    let mut z = Peer::link(port, frame::LEVEL, 1).await;
    let mark = frame::PreviousMark {
        receiver_epoch: old_epoch,
        sender_epoch: 1,
        upto: 1,
    };
    assert_eq!(
        z.next_but(restarted).await,
        Frame::Restarted { mark: Some(mark) }
    );
    // A session started since (clean) has a subscription too; what the previous life had not
    // committed is for the restored one only.
    let (mut other, _) = Raw::connect(a.addr(), Protocol::V5, "other", true).await;
    other.subscribe("t", QoS::AtLeastOnce).await;
    let again = match forwarded(8, "again") {
        Frame::Publish {
            id,
            message,
            groups,
        } => Frame::PublishAdopted {
            departed: "node-a".into(),
            id,
            message,
            groups,
        },
        _ => unreachable!(),
    };
    z.send(&[Frame::ForwardResume { from: 0 }, again]).await;
    z.expect_ack(1).await;
    other.expect_silence(Duration::from_millis(300)).await;
    let (mut d, _) = Raw::connect_with(a.addr(), connect).await;
    let mut got = Vec::new();
    while let Some(Packet::Publish(p)) = d.recv_within(Duration::from_millis(500)).await {
        got.push(String::from_utf8_lossy(&p.payload).to_string());
        d.send(Packet::PubAck(rookery_codec::Ack {
            packet_id: p.packet_id,
            ..Default::default()
        }))
        .await;
    }
    assert_eq!(got, ["kept", "again"]);
    a.shutdown().await;
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_a_peer_sends_again_are_routed_once_and_acknowledged() {
    let port = free_port();
    let a = node(port).await;
    let (mut s, _) = Raw::connect(a.addr(), Protocol::V5, "s", true).await;
    s.subscribe("t", QoS::AtLeastOnce).await;

    let mut z = Peer::link(port, frame::LEVEL, 1).await;
    until("linked", || up(&a) == ["node-z"]).await;
    z.send(&[
        Frame::ForwardResume { from: 0 },
        forwarded(101, "1"),
        forwarded(102, "2"),
    ])
    .await;
    z.expect_ack(2).await;
    // The link drops before the node's acknowledgement of 2 came (as far as the peer knows):
    // it sends 2 again after 1.
    drop(z);
    until("the link down", || up(&a).is_empty()).await;
    let mut z = Peer::link(port, frame::LEVEL, 1).await;
    z.send(&[
        Frame::ForwardResume { from: 1 },
        forwarded(102, "2"),
        forwarded(103, "3"),
    ])
    .await;
    z.expect_ack(3).await;
    let mut got = Vec::new();
    while let Some(Packet::Publish(p)) = s.recv_within(Duration::from_millis(500)).await {
        got.push(String::from_utf8_lossy(&p.payload).to_string());
        s.send(Packet::PubAck(rookery_codec::Ack {
            packet_id: p.packet_id,
            ..Default::default()
        }))
        .await;
    }
    assert_eq!(got, ["1", "2", "3"]);

    // Restarted (a new epoch): its count starts again from nothing.
    drop(z);
    until("the link down", || up(&a).is_empty()).await;
    let mut z = Peer::link(port, frame::LEVEL, 2).await;
    z.send(&[Frame::ForwardResume { from: 0 }, forwarded(1, "4")])
        .await;
    z.expect_ack(1).await;
    assert_eq!(&s.recv_publish().await.payload[..], b"4");
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_sync_durability_the_acknowledgement_follows_the_commit() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let a = node_with("node-a", "prod", port, &[], move |c| {
        c.data_dir = data;
        c.durability = rookery_broker::config::DurabilityMode::Sync;
    })
    .await;
    // A persistent session, offline: what is forwarded for it is stored before it is acked.
    let mut connect = connect_packet(Protocol::V5, "dev", false);
    connect.properties.session_expiry_interval = Some(3600);
    let (mut d, _) = Raw::connect_with(a.addr(), connect.clone()).await;
    d.subscribe("t", QoS::AtLeastOnce).await;
    d.disconnect().await;

    let mut z = Peer::link(port, frame::LEVEL, 1).await;
    until("linked", || up(&a) == ["node-z"]).await;
    let persist = a.broker.persist.clone().unwrap();
    let before = *persist.committer().watch().borrow();
    z.send(&[Frame::ForwardResume { from: 0 }, forwarded(7, "kept")])
        .await;
    z.expect_ack(1).await;
    // By the time the node says it has the message, its queue entry is committed.
    assert!(*persist.committer().watch().borrow() > before);
    let stored = persist
        .committer()
        .stores()
        .queue
        .load("dev")
        .await
        .unwrap()
        .0;
    assert_eq!(stored.len(), 1);
    a.shutdown().await;
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_drained_is_not_waited_for_once_gone() {
    let (a, mut z, mut p) = linked_with_publisher(free_port()).await;
    send_qos1(&mut p, "1", 1).await;
    assert_eq!(z.next_publish().await, "1");
    // It drains and leaves without acknowledging: it is not coming back as it was.
    z.send(&[Frame::Draining]).await;
    until("the drain seen", || {
        a.broker.cluster.get().unwrap().is_draining("node-z")
    })
    .await;
    let gone = Instant::now();
    drop(z);
    expect_puback(&mut p, 1).await;
    assert!(gone.elapsed() < rookery_broker::cluster::KEPT_WHILE_DOWN);
    routed(&a, "t", &[]).await;
    a.shutdown().await;
}
