//! The embedded engine choice, measured on the queue workload: append QoS 1 entries in
//! group-commit batches (one fsync each), read them back by client, delete them on
//! acknowledgement in batches. redb against fjall, same keys and values, same machine.
//!
//! `cargo bench -p rookery-store --bench engines` prints one line per engine and batch size.
//! Results and the choice are in docs/benchmarks.md and docs/dependencies.md.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

const CLIENTS: u64 = 100;
const VALUE: usize = 160;

fn key(client: u64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&client.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

struct Rates {
    append: f64,
    read: f64,
    delete: f64,
}

fn redb_run(dir: &std::path::Path, n: u64, batch: u64) -> Rates {
    use redb::{Database, ReadableDatabase, TableDefinition};
    const T: TableDefinition<&[u8], &[u8]> = TableDefinition::new("queue");
    let db = Database::create(dir.join("bench.redb")).unwrap();
    let value = [7u8; VALUE];
    let t = Instant::now();
    for start in (0..n).step_by(batch as usize) {
        let tx = db.begin_write().unwrap();
        {
            let mut table = tx.open_table(T).unwrap();
            for i in start..(start + batch).min(n) {
                table.insert(&key(i % CLIENTS, i)[..], &value[..]).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let append = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut read = 0u64;
    let tx = db.begin_read().unwrap();
    let table = tx.open_table(T).unwrap();
    for c in 0..CLIENTS {
        let lo = key(c, 0);
        let hi = key(c, u64::MAX);
        for row in table.range(&lo[..]..=&hi[..]).unwrap() {
            read += row.unwrap().1.value().len() as u64 / VALUE as u64;
        }
    }
    drop(table);
    drop(tx);
    assert_eq!(read, n);
    let read = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for start in (0..n).step_by(batch as usize) {
        let tx = db.begin_write().unwrap();
        {
            let mut table = tx.open_table(T).unwrap();
            for i in start..(start + batch).min(n) {
                table.remove(&key(i % CLIENTS, i)[..]).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let delete = n as f64 / t.elapsed().as_secs_f64();
    Rates {
        append,
        read,
        delete,
    }
}

fn fjall_run(dir: &std::path::Path, n: u64, batch: u64) -> Rates {
    use fjall::{Database, KeyspaceCreateOptions, PersistMode};
    let db = Database::builder(dir.join("bench.fjall")).open().unwrap();
    let ks = db
        .keyspace("queue", KeyspaceCreateOptions::default)
        .unwrap();
    let value = vec![7u8; VALUE];
    let t = Instant::now();
    for start in (0..n).step_by(batch as usize) {
        let mut b = db.batch();
        for i in start..(start + batch).min(n) {
            b.insert(&ks, key(i % CLIENTS, i).to_vec(), value.clone());
        }
        b.commit().unwrap();
        db.persist(PersistMode::SyncAll).unwrap();
    }
    let append = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut read = 0u64;
    for c in 0..CLIENTS {
        for kv in ks.prefix(c.to_be_bytes()) {
            let (_, v) = kv.into_inner().unwrap();
            read += v.len() as u64 / VALUE as u64;
        }
    }
    assert_eq!(read, n);
    let read = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for start in (0..n).step_by(batch as usize) {
        let mut b = db.batch();
        for i in start..(start + batch).min(n) {
            b.remove(&ks, key(i % CLIENTS, i).to_vec());
        }
        b.commit().unwrap();
        db.persist(PersistMode::SyncAll).unwrap();
    }
    let delete = n as f64 / t.elapsed().as_secs_f64();
    Rates {
        append,
        read,
        delete,
    }
}

fn main() {
    // `cargo test --benches` runs this too: keep that quick.
    let quick = std::env::args().any(|a| a == "--test" || a == "--quick");
    let sizes: &[(u64, u64)] = if quick {
        &[(200, 1), (2_000, 100)]
    } else {
        &[(2_000, 1), (50_000, 64), (200_000, 1024)]
    };
    println!("engine  batch  entries   append/s     read/s   delete/s   (one fsync per batch)");
    for &(n, batch) in sizes {
        for (name, run) in [
            ("redb", redb_run as fn(&std::path::Path, u64, u64) -> Rates),
            ("fjall", fjall_run),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let r = run(dir.path(), n, batch);
            println!(
                "{name:<6} {batch:>6} {n:>8} {:>10.0} {:>10.0} {:>10.0}",
                r.append, r.read, r.delete
            );
        }
    }
}
