//! ACL evaluation on the publish path: a file shaped like a fleet (global rules, 10,000 users,
//! patterns), checked for a user near the end of the file and for an anonymous client.
#![allow(missing_docs, clippy::unwrap_used)]

use std::fmt::Write;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use rookery_auth::acl::{Acl, Subject};

fn fleet_acl(users: usize) -> Acl {
    let mut text = String::from("topic read public/#\ntopic deny public/secret/#\n");
    text += "pattern readwrite devices/%c/#\npattern read users/%u/inbox\n";
    for u in 0..users {
        let _ = write!(
            text,
            "user device-{u}\ntopic readwrite sensors/{u}/#\ntopic read commands/device-{u}\n"
        );
    }
    Acl::parse(&text).unwrap()
}

fn acl(c: &mut Criterion) {
    let acl = fleet_acl(10_000);
    let user = Subject {
        username: Some("device-9876"),
        client_id: "dev-9876",
    };
    let anonymous = Subject {
        username: None,
        client_id: "anon",
    };
    let mut g = c.benchmark_group("acl");
    g.bench_function("can_publish user rule", |b| {
        b.iter(|| acl.can_publish(black_box(&user), black_box("sensors/9876/temp")))
    });
    g.bench_function("can_publish pattern %c", |b| {
        b.iter(|| acl.can_publish(black_box(&user), black_box("devices/dev-9876/state")))
    });
    g.bench_function("can_publish denied", |b| {
        b.iter(|| acl.can_publish(black_box(&user), black_box("commands/device-9876")))
    });
    g.bench_function("can_read anonymous", |b| {
        b.iter(|| acl.can_read(black_box(&anonymous), black_box("public/news/today")))
    });
    g.bench_function("check_subscribe wildcard", |b| {
        b.iter(|| acl.check_subscribe(black_box(&user), black_box("sensors/9876/+/temp")))
    });
    g.finish();
}

criterion_group!(benches, acl);
criterion_main!(benches);
