//! Topic matching and retained lookup with many subscriptions: the router's hot path.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use rookery_broker::router::topic;
use rookery_broker::router::trie::{
    Matches, SessionId, Subscriber, Subscription, SubscriptionTrie,
};

#[derive(Clone)]
struct Id(u64);

impl Subscriber for Id {
    fn session_id(&self) -> SessionId {
        self.0
    }
    fn is_online(&self) -> bool {
        true
    }
}

/// One million subscriptions shaped like a device fleet: each device subscribes to its own
/// command topic; every hundredth also to a wildcard of its site; a few backends to `#`-trees.
fn fleet(devices: u64) -> SubscriptionTrie<Id> {
    let mut trie = SubscriptionTrie::default();
    for d in 0..devices {
        let site = d % 1000;
        trie.subscribe(
            &Id(d),
            &format!("site/{site}/device/{d}/cmd"),
            None,
            Subscription::default(),
        );
        if d % 100 == 0 {
            trie.subscribe(
                &Id(d),
                &format!("site/{site}/+/+/alert"),
                None,
                Subscription::default(),
            );
        }
    }
    for b in 0..10 {
        trie.subscribe(
            &Id(devices + b),
            "site/+/device/+/telemetry",
            Some("backend"),
            Subscription::default(),
        );
        trie.subscribe(
            &Id(devices + 100 + b),
            &format!("site/{b}/#"),
            None,
            Subscription::default(),
        );
    }
    trie
}

fn bench(c: &mut Criterion) {
    let trie = fleet(1_000_000);
    let mut group = c.benchmark_group("trie_1m_subscriptions");
    group.bench_function("exact_command_topic", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i = (i + 7919) % 1_000_000;
            let t = format!("site/{}/device/{i}/cmd", i % 1000);
            let mut out = Matches::new();
            trie.collect(black_box(&t), &mut out);
            black_box(out.len())
        })
    });
    group.bench_function("telemetry_to_shared_group", |b| {
        let t = "site/5/device/5005/telemetry";
        b.iter(|| {
            let mut out = Matches::new();
            trie.collect(black_box(t), &mut out);
            black_box(out.len())
        })
    });
    group.bench_function("no_match", |b| {
        b.iter(|| {
            let mut out = Matches::new();
            trie.collect(black_box("other/tree/entirely"), &mut out);
            black_box(out.len())
        })
    });
    group.finish();
    c.bench_function("reference_matcher", |b| {
        b.iter(|| {
            topic::matches(
                black_box("site/+/device/+/telemetry"),
                black_box("site/5/device/5005/telemetry"),
            )
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
