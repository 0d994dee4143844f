//! The broker's own MQTT client (`rookery_broker::client`), in-process and over TCP: what the
//! CoAP gateway and the bridge are built on.

use std::time::Duration;

use bytestring::ByteString;
use rookery_broker::client::{Client, ClientError, Options, local};
use rookery_broker::listener::ListenerKind;
use rookery_codec::*;
use tokio::net::TcpStream;

use crate::support::*;

fn options(protocol: Protocol, id: &str, clean_start: bool) -> Options {
    let mut connect = connect_packet(protocol, id, clean_start);
    if protocol.is_v5() {
        connect.properties.session_expiry_interval = Some(3600);
        connect.properties.receive_maximum = Some(8);
    }
    Options {
        connect,
        max_packet_size: 1 << 20,
        connect_timeout: WAIT,
        qos2_in_doubt: Default::default(),
    }
}

fn filter(f: &str, qos: QoS) -> SubscribeFilter {
    SubscribeFilter {
        filter: ByteString::from(f),
        options: SubscriptionOptions {
            qos,
            ..Default::default()
        },
    }
}

fn publish(topic: &str, payload: &str, qos: QoS) -> Publish {
    Publish {
        qos,
        topic: topic.into(),
        payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
        ..Default::default()
    }
}

#[tokio::test]
async fn every_qos_round_trips_over_tcp_and_in_process() {
    let server = start(|_| {}).await;
    for protocol in [Protocol::V311, Protocol::V5] {
        let tcp = TcpStream::connect(server.addr()).await.unwrap();
        let (sub, ack, mut incoming) = Client::connect(tcp, options(protocol, "sub", true))
            .await
            .unwrap();
        assert_eq!(ack.code, 0);
        let codes = sub
            .subscribe(vec![filter("c/#", QoS::ExactlyOnce)])
            .await
            .unwrap();
        assert_eq!(codes, vec![2]);
        let peer = "127.0.0.9:1".parse().unwrap();
        let (publ, _, _) = local::connect(
            &server.broker,
            peer,
            ListenerKind::Bridge,
            None,
            true,
            options(Protocol::V5, "pub", true),
        )
        .await
        .unwrap();
        for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
            .into_iter()
            .enumerate()
        {
            let code = publ
                .publish(publish(&format!("c/{i}"), "x", qos))
                .await
                .unwrap();
            assert_eq!(code, 0, "{qos:?}");
            let got = tokio::time::timeout(WAIT, incoming.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got.publish.topic, format!("c/{i}"));
            assert_eq!(got.publish.qos, qos);
            got.ack();
        }
        // A refusal comes back as the reason code: nobody subscribes to this one (v5 0x10 is
        // a success code).
        let code = publ
            .publish(publish("none", "x", QoS::AtLeastOnce))
            .await
            .unwrap();
        assert_eq!(code, reason::NO_MATCHING_SUBSCRIBERS);
        assert!(sub.ping().await.is_ok());
        publ.disconnect();
        sub.disconnect();
        assert_eq!(sub.closed().await, "disconnected");
    }
}

#[tokio::test]
async fn a_message_not_acked_is_delivered_again_to_the_resumed_session() {
    let server = start(|_| {}).await;
    let peer = "127.0.0.9:1".parse().unwrap();
    let connect = || {
        local::connect(
            &server.broker,
            peer,
            ListenerKind::Bridge,
            None,
            true,
            options(Protocol::V5, "keeper", false),
        )
    };
    let (sub, _, mut incoming) = connect().await.unwrap();
    sub.subscribe(vec![filter("k", QoS::AtLeastOnce)])
        .await
        .unwrap();
    let (publ, _, _) = Client::connect(
        TcpStream::connect(server.addr()).await.unwrap(),
        options(Protocol::V311, "p", true),
    )
    .await
    .unwrap();
    publ.publish(publish("k", "kept", QoS::AtLeastOnce))
        .await
        .unwrap();
    let first = tokio::time::timeout(WAIT, incoming.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&first.publish.payload[..], b"kept");
    // Dropped without an ack, then the connection goes: the broker still owes it.
    drop(first);
    sub.disconnect();
    sub.closed().await;
    let (again, ack, mut incoming) = connect().await.unwrap();
    assert!(ack.session_present);
    let redelivered = tokio::time::timeout(WAIT, incoming.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&redelivered.publish.payload[..], b"kept");
    assert!(redelivered.publish.dup);
    redelivered.ack();
    again.disconnect();
}

#[tokio::test]
async fn a_refused_connect_and_a_closed_connection_are_errors() {
    let server = start(|c| c.allow_anonymous = Some(false)).await;
    let peer = "127.0.0.9:1".parse().unwrap();
    let refused = local::connect(
        &server.broker,
        peer,
        ListenerKind::Coap,
        None,
        true,
        options(Protocol::V5, "anon", true),
    )
    .await;
    assert!(
        matches!(
            refused,
            Err(ClientError::Refused(
                reason::NOT_AUTHORIZED | reason::BAD_USERNAME_OR_PASSWORD
            ))
        ),
        "{:?}",
        refused.err()
    );
    let open = start(|_| {}).await;
    let (client, _, _) = local::connect(
        &open.broker,
        peer,
        ListenerKind::Coap,
        None,
        true,
        options(Protocol::V5, "gone", true),
    )
    .await
    .unwrap();
    client.disconnect();
    client.closed().await;
    let err = client
        .publish(publish("t", "x", QoS::AtLeastOnce))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Closed(_)), "{err:?}");
    let _ = tokio::time::timeout(Duration::from_secs(1), client.ping()).await;
}

/// Plays the server on the other end of a pipe: reads one packet.
async fn server_reads(s: &mut tokio::io::DuplexStream, buf: &mut bytes::BytesMut) -> Packet {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(p) = decode(buf, Protocol::V5, usize::MAX).unwrap() {
            return p;
        }
        let n = tokio::time::timeout(WAIT, s.read_buf(buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the client closed");
    }
}

async fn server_sends(s: &mut tokio::io::DuplexStream, p: Packet) {
    use tokio::io::AsyncWriteExt;
    let mut out = bytes::BytesMut::new();
    encode(&p, Protocol::V5, &mut out);
    s.write_all(&out).await.unwrap();
}

#[tokio::test]
async fn a_qos2_id_in_doubt_is_released_on_resume_and_not_reused() {
    let in_doubt = rookery_broker::client::InDoubt::default();
    let mut opts = options(Protocol::V5, "q2", false);
    opts.qos2_in_doubt = in_doubt.clone();

    // First connection: the server takes the PUBLISH (PUBREC), then the link dies.
    let (ours, mut server) = tokio::io::duplex(4096);
    let mut buf = bytes::BytesMut::new();
    let accept = async {
        assert!(matches!(
            server_reads(&mut server, &mut buf).await,
            Packet::Connect(_)
        ));
        server_sends(&mut server, Packet::ConnAck(ConnAck::default())).await;
    };
    let (connected, ()) = tokio::join!(Client::connect(ours, opts.clone()), accept);
    let (client, _, _rx) = connected.unwrap();
    let publishing = tokio::spawn({
        let client = client.clone();
        async move { client.publish(publish("t", "once", QoS::ExactlyOnce)).await }
    });
    let Packet::Publish(p) = server_reads(&mut server, &mut buf).await else {
        panic!("expected PUBLISH")
    };
    let id = p.packet_id;
    server_sends(
        &mut server,
        Packet::PubRec(Ack {
            packet_id: id,
            ..Ack::default()
        }),
    )
    .await;
    assert!(
        matches!(server_reads(&mut server, &mut buf).await, Packet::PubRel(a) if a.packet_id == id)
    );
    drop(server);
    assert!(
        publishing.await.unwrap().is_err(),
        "not completed: an error to the caller"
    );
    assert!(in_doubt.lock().contains(&id));

    // The session resumes: the release comes first, and a new message takes another id.
    let (ours, mut server) = tokio::io::duplex(4096);
    let mut buf = bytes::BytesMut::new();
    let accept = async {
        assert!(matches!(
            server_reads(&mut server, &mut buf).await,
            Packet::Connect(_)
        ));
        server_sends(
            &mut server,
            Packet::ConnAck(ConnAck {
                session_present: true,
                ..ConnAck::default()
            }),
        )
        .await;
    };
    let (connected, ()) = tokio::join!(Client::connect(ours, opts), accept);
    let (client, _, _rx) = connected.unwrap();
    let again = tokio::spawn({
        let client = client.clone();
        async move { client.publish(publish("t", "next", QoS::ExactlyOnce)).await }
    });
    assert!(
        matches!(server_reads(&mut server, &mut buf).await, Packet::PubRel(a) if a.packet_id == id)
    );
    let Packet::Publish(p) = server_reads(&mut server, &mut buf).await else {
        panic!("expected PUBLISH")
    };
    assert_ne!(p.packet_id, id, "an id in doubt is not reused");
    server_sends(
        &mut server,
        Packet::PubComp(Ack {
            packet_id: id,
            ..Ack::default()
        }),
    )
    .await;
    server_sends(
        &mut server,
        Packet::PubRec(Ack {
            packet_id: p.packet_id,
            ..Ack::default()
        }),
    )
    .await;
    assert!(matches!(
        server_reads(&mut server, &mut buf).await,
        Packet::PubRel(_)
    ));
    server_sends(
        &mut server,
        Packet::PubComp(Ack {
            packet_id: p.packet_id,
            ..Ack::default()
        }),
    )
    .await;
    assert_eq!(again.await.unwrap(), Ok(0));
    assert!(in_doubt.lock().is_empty());
}

#[tokio::test]
async fn the_connection_closes_when_every_client_is_dropped() {
    let server = start(|_| {}).await;
    let peer = "127.0.0.9:1".parse().unwrap();
    let (client, _, _rx) = local::connect(
        &server.broker,
        peer,
        ListenerKind::Bridge,
        None,
        true,
        options(Protocol::V5, "dropped", true),
    )
    .await
    .unwrap();
    let watcher = client.clone();
    let closed = tokio::spawn(async move { watcher.closed().await });
    drop(client);
    // `watcher` moved into the task still holds a clone: the connection stays until that goes.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), async {
            while server
                .broker
                .sessions
                .get("dropped")
                .is_none_or(|s| !s.is_online())
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .is_ok()
    );
    closed.abort();
    let _ = closed.await;
    tokio::time::timeout(WAIT, async {
        while server
            .broker
            .sessions
            .get("dropped")
            .is_some_and(|s| s.is_online())
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the broker sees the connection end once no client is left");
}
