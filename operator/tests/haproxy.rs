//! The HAProxy configuration from `builders::haproxy`, run by the real HAProxy (Debian's
//! package) in front of three real, clustered broker processes on loopback (each on an
//! address of its own, 127.0.0.2 to .4, so that they share ports as pods do).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rookery_codec::*;
use rookery_e2e::{BrokerProcess, client};
use rookery_operator::builders::haproxy::{self, Haproxy, Listener, ListenerKind, Node};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "haproxy-test-admin-token-0123";

fn broker_binary() -> PathBuf {
    rookery_e2e::debug_broker_binary().unwrap()
}

/// Debian puts it in /usr/sbin, which a user's PATH may lack.
fn haproxy_binary() -> &'static str {
    for candidate in ["haproxy", "/usr/sbin/haproxy"] {
        if Command::new(candidate).arg("-v").output().is_ok() {
            return candidate;
        }
    }
    panic!("haproxy is not installed (Debian package `haproxy`; scripts/test installs it)");
}

/// A port free on every address used here (below the ephemeral range, so that no outgoing
/// connection takes it meanwhile).
fn free_port(hosts: &[&str]) -> u16 {
    loop {
        let port = 20_000 + (std::process::id() as u16 % 97) * 50 + rand_u16() % 5_000;
        if hosts
            .iter()
            .all(|h| std::net::TcpListener::bind((*h, port)).is_ok())
        {
            return port;
        }
    }
}

fn rand_u16() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    h.finish() as u16
}

/// Checks a configuration with `haproxy -c`.
fn haproxy_accepts(text: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("haproxy.cfg");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(haproxy_binary())
        .arg("-c")
        .arg("-f")
        .arg(&file)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn pod_nodes(n: usize) -> Vec<Node> {
    (0..n)
        .map(|i| Node {
            name: format!("rookery-{i}"),
            host: format!("rookery-{i}.rookery-headless.iot.svc.cluster.local"),
        })
        .collect()
}

#[test]
fn haproxy_accepts_every_variant_of_the_configuration() {
    let base = Haproxy::standard(pod_nodes(3));
    let mut variants = vec![base.clone()];
    let mut all = base.clone();
    all.listeners = [
        ListenerKind::Mqtt,
        ListenerKind::Mqtts,
        ListenerKind::Ws,
        ListenerKind::Wss,
    ]
    .into_iter()
    .map(Listener::standard)
    .collect();
    variants.push(all);
    let mut bare = base.clone();
    bare.proxy_protocol = false;
    bare.sticky = false;
    bare.stats_port = None;
    bare.resolve_dns = false;
    bare.nodes = vec![Node {
        name: "one".into(),
        host: "10.0.0.7".into(),
    }];
    variants.push(bare);
    let mut v6 = base;
    v6.nodes = vec![Node {
        name: "v6".into(),
        host: "fd00::7".into(),
    }];
    v6.bind_host = "::".into();
    variants.push(v6);
    for (i, v) in variants.iter().enumerate() {
        haproxy::validate(v).unwrap();
        if let Err(e) = haproxy_accepts(&haproxy::render(v)) {
            panic!(
                "variant {i} refused by haproxy -c:\n{e}\n{}",
                haproxy::render(v)
            );
        }
    }
}

/// HAProxy running a configuration; stopped on drop.
struct HaproxyProcess {
    child: Child,
    _dir: tempfile::TempDir,
}

impl HaproxyProcess {
    fn start(text: &str) -> HaproxyProcess {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("haproxy.cfg");
        std::fs::write(&file, text).unwrap();
        let log = std::fs::File::create(dir.path().join("haproxy.log")).unwrap();
        let mut child = Command::new(haproxy_binary())
            .arg("-db")
            .arg("-f")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        // A configuration it cannot run (a port taken, a limit) ends it at once: say why.
        std::thread::sleep(Duration::from_millis(300));
        if let Some(status) = child.try_wait().unwrap() {
            let log = std::fs::read_to_string(dir.path().join("haproxy.log")).unwrap();
            panic!("haproxy exited ({status}):\n{log}\n{text}");
        }
        HaproxyProcess { child, _dir: dir }
    }
}

impl Drop for HaproxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.0 GET: (status, body).
async fn get(addr: SocketAddr, path: &str, headers: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: t\r\n{headers}\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.get(9..12)?.parse().ok()?;
    Some((status, text.split_once("\r\n\r\n")?.1.to_owned()))
}

async fn post(addr: SocketAddr, path: &str) -> u16 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.0\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    String::from_utf8_lossy(&raw)[9..12].parse().unwrap()
}

/// The status HAProxy shows for each server of `backend` (`UP`, `DOWN`, ...).
async fn server_status(stats: SocketAddr, backend: &str) -> Vec<(String, String)> {
    let Some((200, csv)) = get(stats, "/stats;csv", "").await else {
        return Vec::new();
    };
    csv.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f.len() > 17 && f[0] == backend && f[1] != "BACKEND" && f[1] != "FRONTEND")
                .then(|| (f[1].to_owned(), f[17].to_owned()))
        })
        .collect()
}

async fn until<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A v5 CONNECT through `addr`: the stream and the CONNACK, or `None` if the connection
/// closed first.
async fn connect(addr: SocketAddr, id: &str) -> Option<(TcpStream, BytesMut, ConnAck)> {
    let connect = Connect {
        protocol: Protocol::V5,
        clean_start: true,
        keep_alive: 60,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
    };
    client::connect_with(addr, connect).await
}

/// Reads until the broker closes; the DISCONNECT it sent, if any.
async fn closed(s: &mut TcpStream, buf: &mut BytesMut) -> Option<Disconnect> {
    let mut last = None;
    loop {
        while let Ok(Some(p)) = decode(buf, Protocol::V5, usize::MAX) {
            if let Packet::Disconnect(d) = p {
                last = Some(d);
            }
        }
        match tokio::time::timeout(Duration::from_secs(10), s.read_buf(buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return last,
            Ok(Ok(_)) => {}
            Err(_) => panic!("not closed"),
        }
    }
}

/// Three clustered brokers on 127.0.0.2-4 behind HAProxy on 127.0.0.1.
struct Cluster {
    brokers: Vec<Option<BrokerProcess>>,
    health: Vec<SocketAddr>,
    /// Each broker's arguments, to restart it as it was.
    args: Vec<Vec<String>>,
    lb: SocketAddr,
    stats: SocketAddr,
    _dir: tempfile::TempDir,
}

const HOSTS: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];

impl Cluster {
    /// Starts the brokers (with `extra` arguments) and HAProxy with the builder's
    /// configuration, and waits until HAProxy sees every broker up.
    async fn start(extra: &[&str]) -> (Cluster, HaproxyProcess) {
        let mqtt = free_port(&HOSTS);
        let health = free_port(&HOSTS);
        let link = free_port(&HOSTS);
        let lb = free_port(&["127.0.0.1"]);
        let stats = free_port(&["127.0.0.1"]);
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, TOKEN).unwrap();
        let peers: Vec<String> = HOSTS.iter().map(|h| format!("{h}:{link}")).collect();
        let peers = peers.join(",");
        let mut cluster = Cluster {
            brokers: Vec::new(),
            health: HOSTS
                .iter()
                .map(|h| format!("{h}:{health}").parse().unwrap())
                .collect(),
            args: Vec::new(),
            lb: format!("127.0.0.1:{lb}").parse().unwrap(),
            stats: format!("127.0.0.1:{stats}").parse().unwrap(),
            _dir: dir,
        };
        for (i, h) in HOSTS.iter().enumerate() {
            let mut args: Vec<String> = [
                "--listen",
                &format!("{h}:{mqtt}"),
                "--proxy-protocol",
                "mqtt",
                "--metrics-listen",
                &format!("{h}:{health}"),
                "--admin-token-file",
                token.to_str().unwrap(),
                "--cluster-listen",
                &format!("{h}:{link}"),
                "--peers",
                &peers,
                "--node-id",
                &format!("rookery-{i}"),
                "--drain-rate",
                "1000",
            ]
            .iter()
            .map(|a| a.to_string())
            .collect();
            args.extend(extra.iter().map(|a| a.to_string()));
            cluster.args.push(args);
            cluster.brokers.push(None);
            cluster.restart(i);
        }
        let config = Haproxy {
            listeners: vec![Listener {
                kind: ListenerKind::Mqtt,
                port: lb,
                broker_port: mqtt,
            }],
            nodes: HOSTS
                .iter()
                .enumerate()
                .map(|(i, h)| Node {
                    name: format!("rookery-{i}"),
                    host: (*h).into(),
                })
                .collect(),
            health_port: health,
            proxy_protocol: true,
            sticky: true,
            max_connections: 10_000,
            idle_timeout_secs: 600,
            stats_port: Some(stats),
            bind_host: "127.0.0.1".into(),
            resolve_dns: false,
        };
        haproxy::validate(&config).unwrap();
        let haproxy = HaproxyProcess::start(&haproxy::render(&config));
        cluster.until_all_up().await;
        (cluster, haproxy)
    }

    /// Starts broker `i` (again) with its arguments.
    fn restart(&mut self, i: usize) {
        let args: Vec<&str> = self.args[i].iter().map(String::as_str).collect();
        self.brokers[i] = Some(BrokerProcess::start(&broker_binary(), &args).unwrap());
    }

    async fn until_all_up(&self) {
        until("every broker UP in HAProxy", || async {
            let s = server_status(self.stats, "mqtt").await;
            s.len() == 3 && s.iter().all(|(_, st)| st == "UP")
        })
        .await;
    }

    /// MQTT v5 connections each broker accepted so far (0 for a stopped one).
    async fn accepted(&self) -> Vec<f64> {
        let mut out = Vec::new();
        for (i, h) in self.health.iter().enumerate() {
            let n = if self.brokers[i].is_some() {
                let (_, body) = get(*h, "/metrics", "").await.unwrap();
                body.lines()
                    .find(|l| {
                        l.starts_with(
                            "rookery_connections_accepted_total{listener=\"mqtt\",protocol=\"5.0\"}",
                        )
                    })
                    .and_then(|l| l.rsplit_once(' '))
                    .map_or(0.0, |(_, v)| v.parse().unwrap())
            } else {
                0.0
            };
            out.push(n);
        }
        out
    }

    /// Which broker took the next connection (compares counts before and after).
    async fn which(&self, before: &[f64]) -> usize {
        let after = self.accepted().await;
        let moved: Vec<usize> = (0..after.len())
            .filter(|i| after[*i] > before[*i])
            .collect();
        assert_eq!(moved.len(), 1, "before {before:?}, after {after:?}");
        moved[0]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_balances_sticks_checks_and_fails_over_across_real_brokers() {
    let (cluster, _haproxy) = Cluster::start(&[]).await;
    let (lb, stats) = (cluster.lb, cluster.stats);

    // The stats page, HAProxy's own metrics and its liveness answer.
    assert_eq!(get(stats, "/healthz", "").await.unwrap().0, 200);
    let (status, metrics) = get(stats, "/metrics", "").await.unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("haproxy_backend_active_servers{proxy=\"mqtt\"} 3"));

    // Something that is not MQTT never reaches a broker.
    let before = cluster.accepted().await;
    let mut junk = TcpStream::connect(lb).await.unwrap();
    junk.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), junk.read_to_end(&mut sink)).await;
    assert!(sink.is_empty(), "{sink:?}");
    let attempts = |b: &str| {
        b.lines()
            .filter(|l| l.starts_with("rookery_connection_attempts_total{listener=\"mqtt\"}"))
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
            .sum::<f64>()
    };
    for h in &cluster.health {
        let (_, body) = get(*h, "/metrics", "").await.unwrap();
        assert_eq!(attempts(&body), 0.0, "a broker saw the junk connection");
    }
    assert_eq!(cluster.accepted().await, before);

    // New client ids go to the least loaded broker: 9 connected clients, 3 per broker. The
    // brokers see the PROXY v2 header (their listeners require it).
    let mut home = Vec::new();
    let mut open = Vec::new();
    for i in 0..9 {
        let before = cluster.accepted().await;
        let (s, buf, ack) = connect(lb, &format!("dev-{i}")).await.unwrap();
        assert_eq!(ack.code, 0);
        home.push(cluster.which(&before).await);
        open.push((s, buf));
    }
    for b in 0..3 {
        assert_eq!(home.iter().filter(|h| **h == b).count(), 3, "{home:?}");
    }
    drop(open);
    // Back again, each id lands where it was, whatever the load says.
    let mut held = Vec::new();
    for round in 0..2 {
        for (i, want) in home.iter().enumerate() {
            let before = cluster.accepted().await;
            let (s, buf, ack) = connect(lb, &format!("dev-{i}")).await.unwrap();
            assert_eq!(ack.code, 0);
            assert_eq!(
                cluster.which(&before).await,
                *want,
                "dev-{i}, round {round}"
            );
            if round == 1 {
                held.push((s, buf));
            }
        }
    }

    // A drained broker leaves the rotation; its clients are told to go and find another.
    let drained = home[0];
    assert_eq!(post(cluster.health[drained], "/admin/drain").await, 202);
    let (s, buf) = &mut held[0];
    let d = closed(s, buf).await.expect("a DISCONNECT");
    assert_eq!(d.reason, reason::USE_ANOTHER_SERVER);
    until("the drained broker DOWN in HAProxy", || async {
        let s = server_status(stats, "mqtt").await;
        s.iter()
            .any(|(name, st)| *name == format!("rookery-{drained}") && st.starts_with("DOWN"))
    })
    .await;
    let mut cluster = cluster;
    cluster.brokers[drained]
        .as_mut()
        .unwrap()
        .wait_exit(Duration::from_secs(20))
        .unwrap();
    cluster.brokers[drained] = None;
    let before = cluster.accepted().await;
    let (_s, _b, ack) = connect(lb, "dev-0").await.unwrap();
    assert_eq!(ack.code, 0);
    let moved = cluster.which(&before).await;
    assert_ne!(moved, drained);

    // A broker killed outright: HAProxy finds it down and sends everyone to the last one.
    let killed = (0..3).find(|b| *b != drained && *b != moved).unwrap();
    cluster.brokers[killed].take();
    until("the killed broker DOWN in HAProxy", || async {
        let s = server_status(stats, "mqtt").await;
        s.iter()
            .any(|(name, st)| *name == format!("rookery-{killed}") && st.starts_with("DOWN"))
    })
    .await;
    for i in 20..26 {
        let before = cluster.accepted().await;
        let (_s, _b, ack) = connect(lb, &format!("dev-{i}")).await.unwrap();
        assert_eq!(ack.code, 0);
        assert_eq!(cluster.which(&before).await, moved);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_qos2_load_loses_nothing_and_delivers_nothing_twice() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let (mut cluster, _haproxy) = Cluster::start(&["--durability", "none"]).await;
    let lb = cluster.lb;
    let stop_sub = Arc::new(AtomicBool::new(false));
    let subscriber = tokio::spawn(client::qos2_subscriber(
        lb,
        "roll-subscriber".into(),
        "roll/#".into(),
        stop_sub.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stop_pub = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn(client::qos2_publisher(
        lb,
        "roll-publisher".into(),
        "roll/seq".into(),
        stop_pub.clone(),
    ));
    // Each node in turn: drained by SIGTERM (what Kubernetes sends), restarted, back in
    // rotation, while the messages flow.
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let b = cluster.brokers[i].as_mut().unwrap();
        b.signal(15).unwrap();
        let status = b.wait_exit(Duration::from_secs(60)).unwrap();
        assert!(status.success(), "node {i} exited with {status}");
        let name = format!("rookery-{i}");
        until("the stopped broker DOWN in HAProxy", || async {
            let s = server_status(cluster.stats, "mqtt").await;
            s.iter().any(|(n, st)| *n == name && st.starts_with("DOWN"))
        })
        .await;
        cluster.restart(i);
        cluster.until_all_up().await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop_pub.store(true, Ordering::Relaxed);
    let published = publisher.await.unwrap();
    stop_sub.store(true, Ordering::Relaxed);
    let received = subscriber.await.unwrap();
    let last = published.last;
    eprintln!(
        "published {last} QoS 2 messages; publisher connected {} times, subscriber {} times",
        published.connects, received.connects
    );
    assert!(last > 100, "only {last} published");
    assert_eq!(
        published.sessions_lost + received.sessions_lost,
        0,
        "a session was lost"
    );
    assert!(
        received.connects >= 2,
        "the restarts never moved the subscriber"
    );
    let missing = received.missing(last);
    assert!(
        missing.is_empty(),
        "{} of {last} missing: {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    assert_eq!(received.repeated(), vec![], "delivered more than once");
}
