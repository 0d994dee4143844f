//! Group commit against one transaction per message, on a real PostgreSQL.
//!
//! ```sh
//! cargo bench -p rookery-store --bench postgres_commit
//! ```
//!
//! Applies N QoS 1 messages (each a `QueueOp::Message` and a `QueueOp::Enqueue`) to
//! `PostgresStore`: (a) in batches of 1000 messages, one transaction each, and (b) one
//! transaction per message, one after the other, and prints messages per second for each and
//! the ratio. N is 10,000 (`ROOKERY_BENCH_MESSAGES` changes it). The server is the one
//! `ROOKERY_TEST_POSTGRES_URL` names, else one rookery-testkit starts (fsync on).

use std::time::{Duration, Instant};

use bytes::Bytes;
use rookery_store::postgres::PostgresStore;
use rookery_store::{QueueEntry, QueueOp, QueueStore, StoredMessage};
use rookery_testkit::PostgresServer;

const BATCH: usize = 1000;

fn ops(first: u64, count: u64) -> Vec<QueueOp> {
    let mut ops = Vec::with_capacity(2 * count as usize);
    for id in first..first + count {
        ops.push(QueueOp::Message {
            id,
            message: StoredMessage {
                topic: "bench/sensors/temperature".into(),
                payload: Bytes::from(vec![b'x'; 64]),
                qos: 1,
                retain: false,
                properties: Bytes::new(),
                expires_at_ms: None,
            },
        });
        ops.push(QueueOp::Enqueue {
            client_id: format!("client-{}", id % 100),
            entry: QueueEntry {
                id,
                message_id: id,
                qos: 1,
                retain: false,
                subscription_ids: vec![1],
                packet_id: None,
                released: false,
                message: None,
            },
        });
    }
    ops
}

fn rate(messages: u64, elapsed: Duration) -> f64 {
    messages as f64 / elapsed.as_secs_f64()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = std::env::var("ROOKERY_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let server = PostgresServer::shared();

    // (a) group commit: one transaction per 1000 messages.
    let store = PostgresStore::connect(&server.database()).await?;
    store.apply(&ops(u64::MAX / 4, 10)).await?; // warm-up: connection, prepared statements
    let batches: Vec<Vec<QueueOp>> = (0..n)
        .step_by(BATCH)
        .map(|first| ops(first, (n - first).min(BATCH as u64)))
        .collect();
    let start = Instant::now();
    for batch in &batches {
        store.apply(batch).await?;
    }
    let grouped = start.elapsed();

    // (b) one transaction per message.
    let store = PostgresStore::connect(&server.database()).await?;
    store.apply(&ops(u64::MAX / 4, 1)).await?;
    let singles: Vec<Vec<QueueOp>> = (0..n).map(|id| ops(id, 1)).collect();
    let start = Instant::now();
    for single in &singles {
        store.apply(single).await?;
    }
    let single = start.elapsed();

    let (a, b) = (rate(n, grouped), rate(n, single));
    println!("postgres group commit, {n} QoS 1 messages (message + enqueue each):");
    println!("  (a) batches of {BATCH}:         {grouped:>10.2?}  {a:>10.0} msgs/s");
    println!("  (b) one transaction each: {single:>10.2?}  {b:>10.0} msgs/s");
    println!("  ratio a/b: {:.1}x", a / b);
    Ok(())
}
