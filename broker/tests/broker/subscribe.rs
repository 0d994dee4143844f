//! SUBSCRIBE and UNSUBSCRIBE: wildcards, `$` topics, validation, overlaps, shared groups.

use std::time::Duration;

use rookery_codec::*;

use crate::support::*;

#[tokio::test]
async fn wildcards_match_and_dollar_topics_need_explicit_filters() {
    let server = start(|_| {}).await;
    let (mut all, _) = Raw::connect(server.addr(), Protocol::V311, "all", true).await;
    all.subscribe("#", QoS::AtMostOnce).await;
    let (mut plus, _) = Raw::connect(server.addr(), Protocol::V311, "plus", true).await;
    plus.subscribe("+/b/+", QoS::AtMostOnce).await;
    let (mut sys, _) = Raw::connect(server.addr(), Protocol::V311, "sys", true).await;
    sys.subscribe("$app/#", QoS::AtMostOnce).await;
    let (mut publ, _) = Raw::connect(server.addr(), Protocol::V311, "p", true).await;
    publ.publish("a/b/c", b"1", QoS::AtMostOnce, false, 0).await;
    publ.publish("$app/x", b"2", QoS::AtMostOnce, false, 0)
        .await;
    assert_eq!(&all.recv_publish().await.topic[..], "a/b/c");
    assert_eq!(&plus.recv_publish().await.topic[..], "a/b/c");
    assert_eq!(&sys.recv_publish().await.topic[..], "$app/x");
    all.expect_silence(Duration::from_millis(150)).await;
    plus.expect_silence(Duration::from_millis(10)).await;
}

#[tokio::test]
async fn invalid_filters_get_a_failure_code_per_filter() {
    let server = start(|_| {}).await;
    for (protocol, fail) in [
        (Protocol::V311, 0x80),
        (Protocol::V5, reason::TOPIC_FILTER_INVALID),
    ] {
        let (mut c, _) = Raw::connect(server.addr(), protocol, "bad", true).await;
        let opts = SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            ..Default::default()
        };
        let filters = ["ok/+", "a#", "a/#/b", "$share/g", "x+/y", "good/#"];
        c.send(Packet::Subscribe(Subscribe {
            packet_id: 9,
            filters: filters
                .iter()
                .map(|f| SubscribeFilter {
                    filter: (*f).into(),
                    options: opts,
                })
                .collect(),
            properties: Default::default(),
        }))
        .await;
        match c.recv().await {
            Packet::SubAck(ack) => assert_eq!(ack.reason_codes, vec![1, fail, fail, fail, fail, 1]),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn invalid_topic_names_close_the_connection() {
    let server = start(|_| {}).await;
    let (mut v5, _) = Raw::connect(server.addr(), Protocol::V5, "w5", true).await;
    v5.send(Packet::Publish(publish(
        "a/+",
        b"x",
        QoS::AtMostOnce,
        false,
        0,
    )))
    .await;
    assert_eq!(
        v5.expect_closed().await.unwrap().reason,
        reason::TOPIC_NAME_INVALID
    );
    let (mut v3, _) = Raw::connect(server.addr(), Protocol::V311, "w3", true).await;
    v3.send(Packet::Publish(publish(
        "a/#",
        b"x",
        QoS::AtMostOnce,
        false,
        0,
    )))
    .await;
    assert!(v3.expect_closed().await.is_none());
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_once_with_highest_qos_and_all_ids() {
    let server = start(|_| {}).await;
    let (mut c, _) = Raw::connect(server.addr(), Protocol::V5, "overlap", true).await;
    c.subscribe_with(
        "o/+",
        SubscriptionOptions {
            qos: QoS::AtMostOnce,
            ..Default::default()
        },
        Some(11),
    )
    .await;
    c.subscribe_with(
        "o/#",
        SubscriptionOptions {
            qos: QoS::ExactlyOnce,
            ..Default::default()
        },
        Some(22),
    )
    .await;
    let (mut publ, _) = Raw::connect(server.addr(), Protocol::V5, "p", true).await;
    publ.publish("o/x", b"m", QoS::ExactlyOnce, false, 1).await;
    let p = c.recv_publish().await;
    assert_eq!(p.qos, QoS::ExactlyOnce);
    let mut ids = p.properties.subscription_identifiers.clone();
    ids.sort_unstable();
    assert_eq!(ids, vec![11, 22]);
    c.send(Packet::PubRec(Ack {
        packet_id: p.packet_id,
        ..Default::default()
    }))
    .await;
    assert!(matches!(c.recv().await, Packet::PubRel(_)));
    c.expect_silence(Duration::from_millis(150)).await;
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_once_on_311_too() {
    let server = start(|_| {}).await;
    let (mut c, _) = Raw::connect(server.addr(), Protocol::V311, "overlap3", true).await;
    c.subscribe("o/+", QoS::AtMostOnce).await;
    c.subscribe("o/#", QoS::AtLeastOnce).await;
    let (mut publ, _) = Raw::connect(server.addr(), Protocol::V311, "p", true).await;
    publ.publish("o/x", b"m", QoS::AtLeastOnce, false, 1).await;
    assert_eq!(c.recv_publish().await.qos, QoS::AtLeastOnce);
    c.expect_silence(Duration::from_millis(150)).await;
}

#[tokio::test]
async fn unsubscribe_stops_delivery_and_reports_what_existed() {
    let server = start(|_| {}).await;
    let (mut c, _) = Raw::connect(server.addr(), Protocol::V5, "u", true).await;
    c.subscribe("u/1", QoS::AtMostOnce).await;
    c.send(Packet::Unsubscribe(Unsubscribe {
        packet_id: 5,
        filters: vec!["u/1".into(), "u/2".into(), "bad#".into()],
        user_properties: vec![],
    }))
    .await;
    match c.recv().await {
        Packet::UnsubAck(a) => {
            assert_eq!(a.packet_id, 5);
            assert_eq!(
                a.reason_codes,
                vec![
                    0,
                    reason::NO_SUBSCRIPTION_EXISTED,
                    reason::TOPIC_FILTER_INVALID
                ]
            );
        }
        other => panic!("{other:?}"),
    }
    let (mut publ, _) = Raw::connect(server.addr(), Protocol::V5, "p", true).await;
    publ.publish("u/1", b"x", QoS::AtMostOnce, false, 0).await;
    c.expect_silence(Duration::from_millis(150)).await;
    assert!(server.broker.router.read().is_empty());
}

#[tokio::test]
async fn shared_subscriptions_give_each_message_to_one_member_on_both_versions() {
    let server = start(|_| {}).await;
    let (mut a, _) = Raw::connect(server.addr(), Protocol::V311, "a", true).await;
    let (mut b, _) = Raw::connect(server.addr(), Protocol::V5, "b", true).await;
    assert_eq!(a.subscribe("$share/g/s/+", QoS::AtLeastOnce).await, vec![1]);
    assert_eq!(b.subscribe("$share/g/s/+", QoS::AtLeastOnce).await, vec![1]);
    let (mut publ, _) = Raw::connect(server.addr(), Protocol::V311, "p", true).await;
    for i in 0..10u16 {
        publ.publish("s/x", &i.to_be_bytes(), QoS::AtLeastOnce, false, i + 1)
            .await;
    }
    let mut seen = Vec::new();
    for c in [&mut a, &mut b] {
        while let Some(Packet::Publish(p)) = c.recv_within(Duration::from_millis(200)).await {
            assert_eq!(&p.topic[..], "s/x");
            seen.push(u16::from_be_bytes([p.payload[0], p.payload[1]]));
            c.send(Packet::PubAck(Ack {
                packet_id: p.packet_id,
                ..Default::default()
            }))
            .await;
        }
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..10).collect::<Vec<_>>(),
        "each message exactly once across the group"
    );

    // A member that leaves gets no more.
    b.send(Packet::Unsubscribe(Unsubscribe {
        packet_id: 2,
        filters: vec!["$share/g/s/+".into()],
        user_properties: vec![],
    }))
    .await;
    assert!(matches!(b.recv().await, Packet::UnsubAck(_)));
    for i in 0..4u16 {
        publ.publish("s/y", b"z", QoS::AtLeastOnce, false, 100 + i)
            .await;
    }
    for _ in 0..4 {
        let p = a.recv_publish().await;
        a.send(Packet::PubAck(Ack {
            packet_id: p.packet_id,
            ..Default::default()
        }))
        .await;
    }
    b.expect_silence(Duration::from_millis(150)).await;
    // A member that disconnects gets no more either.
    a.disconnect().await;
    publ.publish("s/y", b"after", QoS::AtLeastOnce, false, 200)
        .await;
    assert!(server.broker.router.read().is_empty());
}

#[tokio::test]
async fn no_local_on_a_shared_subscription_is_a_protocol_error() {
    let server = start(|_| {}).await;
    let (mut c, _) = Raw::connect(server.addr(), Protocol::V5, "nl", true).await;
    c.send(Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![SubscribeFilter {
            filter: "$share/g/t".into(),
            options: SubscriptionOptions {
                no_local: true,
                ..Default::default()
            },
        }],
        properties: Default::default(),
    }))
    .await;
    assert_eq!(
        c.expect_closed().await.unwrap().reason,
        reason::PROTOCOL_ERROR
    );
}
