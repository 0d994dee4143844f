//! The codec's hot path: decoding a read buffer full of PUBLISH packets and encoding a PUBLISH
//! for one subscriber.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rookery_codec::encode::{PublishView, encode_publish};
use rookery_codec::{Packet, Protocol, Publish, PublishProperties, QoS, decode, encode};

fn publish(payload: usize) -> Publish {
    Publish {
        qos: QoS::AtLeastOnce,
        topic: "site/42/device/1234/telemetry".into(),
        packet_id: 7,
        payload: Bytes::from(vec![0xA5; payload]),
        ..Default::default()
    }
}

/// A read buffer holding `n` PUBLISH packets back to back.
fn batch(protocol: Protocol, n: usize, payload: usize) -> BytesMut {
    let mut buf = BytesMut::new();
    for _ in 0..n {
        encode(&Packet::Publish(publish(payload)), protocol, &mut buf);
    }
    buf
}

fn decoding(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    for (name, protocol) in [("v311", Protocol::V311), ("v5", Protocol::V5)] {
        let input = batch(protocol, 100, 100).freeze();
        g.throughput(Throughput::Elements(100));
        g.bench_function(format!("100 PUBLISH 100B {name}"), |b| {
            b.iter(|| {
                let mut buf = BytesMut::from(&input[..]);
                let mut n = 0;
                while let Some(p) = decode(&mut buf, protocol, usize::MAX).unwrap() {
                    black_box(&p);
                    n += 1;
                }
                assert_eq!(n, 100);
            })
        });
    }
    g.finish();
}

fn encoding(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    let p = publish(100);
    let props = PublishProperties::default();
    for (name, protocol) in [("v311", Protocol::V311), ("v5", Protocol::V5)] {
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("encode_publish 100B {name}"), |b| {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            b.iter(|| {
                if buf.len() > 60 * 1024 {
                    buf.clear();
                }
                let view = PublishView {
                    properties: &props,
                    subscription_identifiers: &[],
                    ..PublishView::from_publish(&p)
                };
                encode_publish(&mut buf, protocol, black_box(&view));
            })
        });
    }
    g.finish();
}

criterion_group!(benches, decoding, encoding);
criterion_main!(benches);
