//! A short run of the load tool against a real broker process, so that the tool keeps working.
//! Its figures are not checked: timings never decide a test. Loss and duplicates are.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use rookery_e2e::BrokerProcess;
use rookery_e2e::bench::{self, Options, Scenario};

fn broker_binary() -> std::path::PathBuf {
    let path = rookery_e2e::target_dir().join("debug/rookery-broker");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p rookery-broker` first",
        path.display()
    );
    path
}

#[tokio::test]
async fn every_scenario_runs_without_loss() {
    let broker = BrokerProcess::start(
        &broker_binary(),
        &["--log-level", "warn,rookery_broker=info"],
    )
    .unwrap();
    for (scenario, qos) in [
        (Scenario::FanIn, 1),
        (Scenario::Pairs, 2),
        (Scenario::FanOut, 1),
    ] {
        let report = bench::run(Options {
            broker: broker.addr,
            scenario,
            clients: 3,
            qos,
            payload: 64,
            rate: 0,
            inflight: 16,
            duration: 1.0,
            warmup: 0.3,
            v5: scenario == Scenario::Pairs,
            broker_pid: Some(broker.pid()),
        })
        .await
        .unwrap();
        assert!(report.delivered > 0, "{scenario:?}: nothing delivered");
        assert_eq!((report.lost, report.duplicated), (0, 0), "{scenario:?}");
        assert!(report.broker_cpu_secs.is_some() && report.broker_peak_rss_kib.unwrap() > 0);
        assert!(report.table().contains("delivered"));
    }
}
