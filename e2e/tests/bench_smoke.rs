//! A short run of the load tool against a real broker process, so that the tool keeps working.
//! Its figures are not checked: timings never decide a test. Loss and duplicates are.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use rookery_e2e::BrokerProcess;
use rookery_e2e::bench::{self, Options, Scenario};

fn broker_binary() -> std::path::PathBuf {
    rookery_e2e::debug_broker_binary().unwrap()
}

fn options(broker: &BrokerProcess, scenario: Scenario, qos: u8) -> Options {
    Options {
        broker: broker.addr,
        subscriber_broker: None,
        scenario,
        tag: String::new(),
        clients: 3,
        qos,
        payload: 64,
        rate: 0,
        inflight: 16,
        duration: 1.0,
        warmup: 0.3,
        v5: scenario == Scenario::Pairs,
        broker_pid: Some(broker.pid()),
        group: 2,
        retained: 50,
        tls_ca: None,
        tls_server_name: "localhost".into(),
        persistent: false,
    }
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
        (Scenario::Shared, 1),
        (Scenario::Retained, 0),
    ] {
        let report = bench::run(options(&broker, scenario, qos)).await.unwrap();
        assert!(report.delivered > 0, "{scenario:?}: nothing delivered");
        assert_eq!((report.lost, report.duplicated), (0, 0), "{scenario:?}");
        assert!(report.broker_cpu_secs.is_some() && report.broker_peak_rss_kib.unwrap() > 0);
        assert!(report.table().contains("delivered"));
    }
    // Persistent subscribers: their deliveries go through the store (the broker's default
    // `sync` durability on its own data directory).
    let durable = bench::run(Options {
        persistent: true,
        ..options(&broker, Scenario::FanIn, 1)
    })
    .await
    .unwrap();
    assert!(durable.delivered > 0);
    assert_eq!((durable.lost, durable.duplicated), (0, 0));
    let storm = bench::run(options(&broker, Scenario::ConnectStorm, 0))
        .await
        .unwrap();
    assert!(storm.connects_per_sec.unwrap() > 0.0);
    let idle = bench::run(Options {
        clients: 200,
        ..options(&broker, Scenario::Idle, 0)
    })
    .await
    .unwrap();
    assert_eq!(idle.idle_connections, Some(200));
    assert!(idle.table().contains("RSS per conn"));
}

#[tokio::test]
async fn the_tool_speaks_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let path = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ca = path("ca.pem", ca_cert.pem());
    let crt = path("tls.crt", cert.pem());
    let key = path("tls.key", key.serialize_pem());
    let broker = BrokerProcess::start(
        &broker_binary(),
        &[
            "--tls-listen",
            "127.0.0.1:0",
            "--cert",
            crt.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--log-level",
            "warn,rookery_broker=info",
        ],
    )
    .unwrap();
    let tls_addr = broker.listener("mqtts").expect("an mqtts listener");
    for scenario in [Scenario::FanIn, Scenario::ConnectStorm] {
        let report = bench::run(Options {
            broker: tls_addr,
            tls_ca: Some(ca.clone()),
            ..options(&broker, scenario, 1)
        })
        .await
        .unwrap();
        assert_eq!((report.lost, report.duplicated), (0, 0));
        assert!(report.delivered > 0 || report.connects_per_sec.unwrap() > 0.0);
        assert!(report.table().contains("TLS"));
    }
}

#[tokio::test]
async fn across_two_cluster_nodes_nothing_is_lost() {
    let nodes = rookery_e2e::start_cluster(&broker_binary(), "bench", 2, &[]).unwrap();
    for (scenario, qos) in [(Scenario::Pairs, 1), (Scenario::FanIn, 2)] {
        let report = bench::run(Options {
            subscriber_broker: Some(nodes[1].addr),
            ..options(&nodes[0], scenario, qos)
        })
        .await
        .unwrap();
        assert!(report.delivered > 0, "{scenario:?}: nothing delivered");
        assert_eq!((report.lost, report.duplicated), (0, 0), "{scenario:?}");
    }
}
