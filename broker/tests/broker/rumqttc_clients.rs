//! The same behaviours driven by `rumqttc`, a client we did not write, in 3.1.1 and 5.0.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::support::*;

mod v4 {
    use super::*;
    use rumqttc::{AsyncClient, Event, Incoming, LastWill, MqttOptions, Publish, QoS};

    pub async fn client(
        port: u16,
        id: &str,
        tweak: impl FnOnce(&mut MqttOptions),
    ) -> (AsyncClient, mpsc::UnboundedReceiver<Incoming>) {
        let (client, rx, _task) = client_task(port, id, tweak).await;
        (client, rx)
    }

    /// Also returns the event loop's task: aborting it drops the socket without DISCONNECT.
    pub async fn client_task(
        port: u16,
        id: &str,
        tweak: impl FnOnce(&mut MqttOptions),
    ) -> (
        AsyncClient,
        mpsc::UnboundedReceiver<Incoming>,
        tokio::task::JoinHandle<()>,
    ) {
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5));
        tweak(&mut opts);
        let (client, mut eventloop) = AsyncClient::new(opts, 100);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok(event) = eventloop.poll().await {
                if let Event::Incoming(i) = event
                    && tx.send(i).is_err()
                {
                    break;
                }
            }
        });
        (client, rx, task)
    }

    pub async fn next_publish(rx: &mut mpsc::UnboundedReceiver<Incoming>) -> Publish {
        loop {
            match tokio::time::timeout(WAIT, rx.recv())
                .await
                .expect("no PUBLISH in time")
                .expect("event loop ended")
            {
                Incoming::Publish(p) => return p,
                _ => continue,
            }
        }
    }

    pub async fn wait_suback(
        rx: &mut mpsc::UnboundedReceiver<Incoming>,
    ) -> Vec<rumqttc::SubscribeReasonCode> {
        loop {
            match tokio::time::timeout(WAIT, rx.recv())
                .await
                .unwrap()
                .unwrap()
            {
                Incoming::SubAck(a) => return a.return_codes,
                _ => continue,
            }
        }
    }

    #[tokio::test]
    async fn rumqttc_311_publishes_and_receives_every_qos() {
        let server = start(|_| {}).await;
        let port = server.addr().port();
        let (sub, mut srx) = client(port, "rsub", |_| {}).await;
        sub.subscribe("rq/#", QoS::ExactlyOnce).await.unwrap();
        wait_suback(&mut srx).await;
        let (publ, _prx) = client(port, "rpub", |_| {}).await;
        for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
            .into_iter()
            .enumerate()
        {
            publ.publish(format!("rq/{i}"), qos, false, vec![i as u8; 10])
                .await
                .unwrap();
            let p = next_publish(&mut srx).await;
            assert_eq!(
                (p.topic.as_str(), p.qos, &p.payload[..]),
                (format!("rq/{i}").as_str(), qos, &[i as u8; 10][..])
            );
        }
    }

    #[tokio::test]
    async fn rumqttc_311_gets_retained_and_wills() {
        let server = start(|_| {}).await;
        let port = server.addr().port();
        let (publ, _prx, publ_task) = client_task(port, "rp", |o| {
            o.set_last_will(LastWill::new("rw/will", "bye", QoS::AtLeastOnce, false));
        })
        .await;
        publ.publish("rw/state", QoS::AtLeastOnce, true, "on")
            .await
            .unwrap();
        let (sub, mut srx) = client(port, "rs", |_| {}).await;
        sub.subscribe("rw/#", QoS::AtLeastOnce).await.unwrap();
        let p = next_publish(&mut srx).await;
        assert_eq!(
            (p.topic.as_str(), &p.payload[..], p.retain),
            ("rw/state", &b"on"[..], true)
        );
        // Kill the publisher's connection without DISCONNECT: the will follows.
        let session = server.broker.sessions.get("rp").unwrap();
        publ_task.abort();
        let p = next_publish(&mut srx).await;
        assert_eq!((p.topic.as_str(), &p.payload[..]), ("rw/will", &b"bye"[..]));
        assert!(!session.is_online());
    }

    #[tokio::test]
    async fn rumqttc_311_persistent_session_gets_what_was_queued() {
        let server = start(|_| {}).await;
        let port = server.addr().port();
        let (sub, mut srx) = client(port, "persist", |o| {
            o.set_clean_session(false);
        })
        .await;
        sub.subscribe("pq", QoS::AtLeastOnce).await.unwrap();
        wait_suback(&mut srx).await;
        sub.disconnect().await.unwrap();
        eventually(|| !server.broker.sessions.get("persist").unwrap().is_online()).await;
        let (publ, _prx) = client(port, "pp", |_| {}).await;
        for i in 0..5u8 {
            publ.publish("pq", QoS::AtLeastOnce, false, vec![i])
                .await
                .unwrap();
        }
        eventually(|| server.broker.sessions.get("persist").unwrap().queued() == 5).await;
        let (_sub, mut srx) = client(port, "persist", |o| {
            o.set_clean_session(false);
        })
        .await;
        for i in 0..5u8 {
            assert_eq!(&next_publish(&mut srx).await.payload[..], &[i]);
        }
    }
}

mod v5 {
    use super::*;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::{Packet, Publish, PublishProperties};
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    async fn client(
        port: u16,
        id: &str,
        tweak: impl FnOnce(&mut MqttOptions),
    ) -> (AsyncClient, mpsc::UnboundedReceiver<Packet>) {
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5));
        tweak(&mut opts);
        let (client, mut eventloop) = AsyncClient::new(opts, 100);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(event) = eventloop.poll().await {
                if let Event::Incoming(i) = event
                    && tx.send(i).is_err()
                {
                    break;
                }
            }
        });
        (client, rx)
    }

    async fn next_publish(rx: &mut mpsc::UnboundedReceiver<Packet>) -> Publish {
        loop {
            match tokio::time::timeout(WAIT, rx.recv())
                .await
                .expect("no PUBLISH in time")
                .expect("event loop ended")
            {
                Packet::Publish(p) => return p,
                _ => continue,
            }
        }
    }

    async fn wait_suback(rx: &mut mpsc::UnboundedReceiver<Packet>) {
        loop {
            if let Packet::SubAck(_) = tokio::time::timeout(WAIT, rx.recv())
                .await
                .unwrap()
                .unwrap()
            {
                return;
            }
        }
    }

    #[tokio::test]
    async fn rumqttc_5_publishes_every_qos_with_properties() {
        let server = start(|_| {}).await;
        let port = server.addr().port();
        let (sub, mut srx) = client(port, "r5sub", |_| {}).await;
        sub.subscribe("r5/#", QoS::ExactlyOnce).await.unwrap();
        wait_suback(&mut srx).await;
        let (publ, _prx) = client(port, "r5pub", |_| {}).await;
        for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
            .into_iter()
            .enumerate()
        {
            let props = PublishProperties {
                user_properties: vec![("k".into(), format!("v{i}"))],
                content_type: Some("text/plain".into()),
                response_topic: Some("r5/reply".into()),
                correlation_data: Some(bytes::Bytes::from_static(b"cid")),
                ..Default::default()
            };
            publ.publish_with_properties(format!("r5/{i}"), qos, false, format!("m{i}"), props)
                .await
                .unwrap();
            let p = next_publish(&mut srx).await;
            assert_eq!(p.qos, qos);
            assert_eq!(&p.payload[..], format!("m{i}").as_bytes());
            let props = p.properties.expect("properties");
            assert_eq!(
                props.user_properties,
                vec![("k".to_string(), format!("v{i}"))]
            );
            assert_eq!(props.content_type.as_deref(), Some("text/plain"));
            assert_eq!(props.response_topic.as_deref(), Some("r5/reply"));
            assert_eq!(props.correlation_data.as_deref(), Some(&b"cid"[..]));
        }
    }

    #[tokio::test]
    async fn rumqttc_5_shared_subscription_splits_the_stream() {
        let server = start(|_| {}).await;
        let port = server.addr().port();
        let (a, mut arx) = client(port, "ga", |_| {}).await;
        let (b, mut brx) = client(port, "gb", |_| {}).await;
        a.subscribe("$share/workers/jobs", QoS::AtLeastOnce)
            .await
            .unwrap();
        b.subscribe("$share/workers/jobs", QoS::AtLeastOnce)
            .await
            .unwrap();
        wait_suback(&mut arx).await;
        wait_suback(&mut brx).await;
        let (publ, _prx) = client(port, "gp", |_| {}).await;
        for i in 0..20u8 {
            publ.publish("jobs", QoS::AtLeastOnce, false, vec![i])
                .await
                .unwrap();
        }
        let mut seen = Vec::new();
        while seen.len() < 20 {
            tokio::select! {
                Some(Packet::Publish(p)) = arx.recv() => seen.push(p.payload[0]),
                Some(Packet::Publish(p)) = brx.recv() => seen.push(p.payload[0]),
                _ = tokio::time::sleep(WAIT) => panic!("only {} of 20 messages", seen.len()),
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..20).collect::<Vec<u8>>());
    }
}
