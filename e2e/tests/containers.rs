//! The cluster in containers, as Kubernetes would run it: three brokers named
//! `rookery-N.rookery-headless`, Redis, PostgreSQL and HAProxy (with the operator's generated
//! configuration) on a private Docker network; clients on the host reach the brokers only
//! through HAProxy's published port. Under QoS 2 load: a rolling restart, a node killed, a node
//! cut off from the network and brought back, and a scale-down from three nodes to two; each
//! checked for every QoS 2 message delivered to every subscriber exactly once.
//!
//! The images come from `e2e/images/build.sh` (nothing is pulled from a registry);
//! `scripts/test` builds them before the tests run.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rookery_e2e::client::{self, Published, Received};
use rookery_operator::builders::haproxy::{self, Haproxy, Listener, ListenerKind, Node};

const IMAGES: [&str; 4] = [
    "rookery-broker:dev",
    "rookery-redis:dev",
    "rookery-postgres:dev",
    "rookery-haproxy:dev",
];

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("docker is not installed")
}

/// Runs a docker command that must succeed; its standard output, trimmed.
fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The containers and network of one run, removed on drop.
struct Env {
    prefix: String,
    net: String,
    dir: tempfile::TempDir,
    lb: SocketAddr,
    stats: SocketAddr,
    nodes: usize,
}

impl Env {
    fn name(&self, what: &str) -> String {
        format!("{}-{what}", self.prefix)
    }

    fn broker(&self, i: usize) -> String {
        self.name(&format!("rookery-{i}"))
    }

    fn start() -> Env {
        for image in IMAGES {
            let out = docker(&["image", "inspect", image]);
            assert!(
                out.status.success(),
                "image {image} is missing: run e2e/images/build.sh (scripts/test does)"
            );
        }
        let prefix = format!("rk{}", std::process::id());
        let net = format!("{prefix}-net");
        docker_ok(&["network", "create", &net]);
        let mut env = Env {
            prefix,
            net,
            dir: tempfile::tempdir().unwrap(),
            lb: "127.0.0.1:1".parse().unwrap(),
            stats: "127.0.0.1:1".parse().unwrap(),
            nodes: 3,
        };
        docker_ok(&[
            "run",
            "-d",
            "--name",
            &env.name("redis"),
            "--network",
            &env.net,
            "--network-alias",
            "redis",
            "rookery-redis:dev",
        ]);
        docker_ok(&[
            "run",
            "-d",
            "--name",
            &env.name("postgres"),
            "--network",
            &env.net,
            "--network-alias",
            "postgres",
            "-e",
            "POSTGRES_PASSWORD=secret",
            "rookery-postgres:dev",
        ]);
        // The brokers need their stores answering at start.
        env.until("PostgreSQL", Duration::from_secs(120), |e| {
            docker(&[
                "exec",
                &e.name("postgres"),
                "pg_isready",
                "-h",
                "127.0.0.1",
                "-q",
            ])
            .status
            .success()
        });
        env.until("Redis", Duration::from_secs(60), |e| {
            docker(&["exec", &e.name("redis"), "redis-cli", "ping"])
                .status
                .success()
        });
        for i in 0..env.nodes {
            env.run_broker(i);
        }
        env.write_haproxy_config(env.nodes);
        let config_dir = env.dir.path().to_str().unwrap().to_owned();
        docker_ok(&[
            "run",
            "-d",
            "--name",
            &env.name("haproxy"),
            "--network",
            &env.net,
            "-p",
            "127.0.0.1::1883",
            "-p",
            "127.0.0.1::8404",
            "-v",
            &format!("{config_dir}:/usr/local/etc/haproxy:ro"),
            "rookery-haproxy:dev",
        ]);
        env.lb = env.published("1883/tcp");
        env.stats = env.published("8404/tcp");
        env.until_up(env.nodes);
        env
    }

    fn published(&self, port: &str) -> SocketAddr {
        let out = docker_ok(&["port", &self.name("haproxy"), port]);
        out.lines().next().unwrap().parse().unwrap()
    }

    fn run_broker(&self, i: usize) {
        let peers: Vec<String> = (0..3)
            .map(|n| format!("rookery-{n}.rookery-headless:4370"))
            .collect();
        let alias = format!("rookery-{i}.rookery-headless");
        let host = format!("rookery-{i}");
        docker_ok(&[
            "run",
            "-d",
            "--name",
            &self.broker(i),
            "--hostname",
            &host,
            "--network",
            &self.net,
            "--network-alias",
            &alias,
            "--stop-timeout",
            "90",
            "rookery-broker:dev",
            "--listen",
            "0.0.0.0:1883",
            "--proxy-protocol",
            "mqtt",
            "--metrics-listen",
            "0.0.0.0:9100",
            "--cluster-listen",
            "0.0.0.0:4370",
            "--peers",
            &peers.join(","),
            "--node-id",
            &host,
            "--redis-url",
            "redis://redis:6379",
            "--postgres-url",
            "postgres://rookery:secret@postgres:5432/rookery",
            "--durability",
            "sync",
        ]);
    }

    /// The generated HAProxy configuration for the first `nodes` brokers.
    fn write_haproxy_config(&self, nodes: usize) {
        let mut config = Haproxy::standard(
            (0..nodes)
                .map(|i| Node {
                    name: format!("rookery-{i}"),
                    host: format!("rookery-{i}.rookery-headless"),
                })
                .collect(),
        );
        config.listeners = vec![Listener::standard(ListenerKind::Mqtt)];
        config.max_connections = 10_000;
        haproxy::validate(&config).unwrap();
        std::fs::write(
            self.dir.path().join("haproxy.cfg"),
            haproxy::render(&config),
        )
        .unwrap();
    }

    /// (name, status) of each server of the `mqtt` backend.
    fn servers(&self) -> Vec<(String, String)> {
        let Ok(body) = http_get(self.stats, "/stats;csv") else {
            return Vec::new();
        };
        body.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f.len() > 17 && f[0] == "mqtt" && f[1] != "BACKEND" && f[1] != "FRONTEND")
                    .then(|| (f[1].to_owned(), f[17].to_owned()))
            })
            .collect()
    }

    fn until(&self, what: &str, wait: Duration, mut f: impl FnMut(&Env) -> bool) {
        let deadline = Instant::now() + wait;
        while !f(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn until_up(&self, n: usize) {
        self.until("every broker UP in HAProxy", Duration::from_secs(90), |e| {
            let s = e.servers();
            s.len() == n && s.iter().all(|(_, st)| st == "UP")
        });
    }

    fn until_down(&self, i: usize) {
        let name = format!("rookery-{i}");
        self.until(
            &format!("{name} DOWN in HAProxy"),
            Duration::from_secs(90),
            |e| {
                e.servers()
                    .iter()
                    .any(|(n, st)| *n == name && st.starts_with("DOWN"))
            },
        );
    }

    /// The last lines of every broker's log, for a failure message.
    fn logs(&self) -> String {
        let mut out = String::new();
        for i in 0..3 {
            let o = docker(&["logs", "--tail", "15", &self.broker(i)]);
            out.push_str(&format!(
                "--- rookery-{i}\n{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        out
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let mut names: Vec<String> = (0..3).map(|i| self.broker(i)).collect();
        for n in ["redis", "postgres", "haproxy"] {
            names.push(self.name(n));
        }
        let mut args = vec!["rm", "-f"];
        args.extend(names.iter().map(String::as_str));
        let _ = docker(&args);
        let _ = docker(&["network", "rm", &self.net]);
    }
}

/// A blocking HTTP/1.0 GET: the body of a 200.
fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).map_err(|e| e.to_string())?;
    if !raw.starts_with("HTTP/1.1 200") && !raw.starts_with("HTTP/1.0 200") {
        return Err(raw.lines().next().unwrap_or_default().to_owned());
    }
    Ok(raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}

/// A QoS 2 publisher and three QoS 2 subscribers (one per node, as the load balancer spreads
/// them) through the load balancer while `disturb` runs.
fn under_load(
    rt: &tokio::runtime::Runtime,
    env: &Env,
    name: &str,
    disturb: impl FnOnce(&Env),
) -> (Published, Vec<Received>) {
    let stop_sub = Arc::new(AtomicBool::new(false));
    let stop_pub = Arc::new(AtomicBool::new(false));
    let subscribers: Vec<_> = (0..3)
        .map(|k| {
            let task = rt.spawn(client::qos2_subscriber(
                env.lb,
                format!("{name}-sub-{k}"),
                format!("{name}/#"),
                stop_sub.clone(),
            ));
            // Connected before the next one, so that least-connections spreads them.
            std::thread::sleep(Duration::from_millis(300));
            task
        })
        .collect();
    let publisher = rt.spawn(client::qos2_publisher(
        env.lb,
        format!("{name}-pub"),
        format!("{name}/seq"),
        stop_pub.clone(),
    ));
    std::thread::sleep(Duration::from_secs(1));
    disturb(env);
    std::thread::sleep(Duration::from_secs(1));
    stop_pub.store(true, Ordering::Relaxed);
    let published = rt.block_on(publisher).unwrap();
    stop_sub.store(true, Ordering::Relaxed);
    let received: Vec<Received> = subscribers
        .into_iter()
        .map(|t| rt.block_on(t).unwrap())
        .collect();
    for (k, r) in received.iter().enumerate() {
        eprintln!(
            "{name}: {} QoS 2 messages; publisher connected {} times, subscriber {k} {} times; {} missing, {} repeated",
            published.last,
            published.connects,
            r.connects,
            r.missing(published.last).len(),
            r.repeated().len()
        );
    }
    (published, received)
}

fn assert_exactly_once(name: &str, p: &Published, subscribers: &[Received]) {
    assert!(
        subscribers.iter().any(|r| r.connects > 1) || name.starts_with("after"),
        "{name}: no subscriber was moved"
    );
    for r in subscribers {
        assert_exactly_once_one(name, p, r);
    }
}

fn assert_exactly_once_one(name: &str, p: &Published, r: &Received) {
    assert!(p.last > 50, "{name}: only {} published", p.last);
    assert_eq!(
        p.sessions_lost + r.sessions_lost,
        0,
        "{name}: a session was lost"
    );
    let missing = r.missing(p.last);
    // When the first missing one was sent, from the phase's first message.
    let first_sent = missing
        .first()
        .map(|n| p.sent_at[*n as usize - 1].saturating_duration_since(p.sent_at[0]));
    assert!(
        missing.is_empty(),
        "{name}: {} of {} missing, the first sent {first_sent:?} into the phase: {:?}",
        missing.len(),
        p.last,
        &missing[..missing.len().min(20)]
    );
    assert_eq!(r.repeated(), vec![], "{name}: delivered more than once");
}

#[test]
fn the_cluster_in_containers_survives_restarts_kills_cuts_and_a_scale_down() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let env = Env::start();

    // A rolling restart: each node stopped (SIGTERM: it drains), started, back in rotation.
    let (p, r) = under_load(&rt, &env, "rolling", |env| {
        for i in 0..3 {
            docker_ok(&["stop", &env.broker(i)]);
            env.until_down(i);
            docker_ok(&["start", &env.broker(i)]);
            env.until_up(3);
        }
    });
    assert_exactly_once("rolling restart", &p, &r);

    // A node killed (SIGKILL), then started again: what it had not committed reaches the
    // nodes that adopted its sessions (docs/clustering.md, "When a node dies with messages
    // unacknowledged").
    let (p, r) = under_load(&rt, &env, "kill", |env| {
        docker_ok(&["kill", &env.broker(1)]);
        env.until_down(1);
        std::thread::sleep(Duration::from_secs(2));
        docker_ok(&["start", &env.broker(1)]);
        env.until_up(3);
    });
    assert_exactly_once("kill", &p, &r);

    // A node cut off from the network (from the other nodes, Redis and PostgreSQL too), then
    // reconnected: back, it gives up the sessions adopted meanwhile before it links again, and
    // a client it kept connected resumes the adopted copy (docs/clustering.md, "Partitions").
    let (p, r) = under_load(&rt, &env, "cut", |env| {
        docker_ok(&["network", "disconnect", &env.net, &env.broker(2)]);
        env.until_down(2);
        std::thread::sleep(Duration::from_secs(3));
        docker_ok(&[
            "network",
            "connect",
            "--alias",
            "rookery-2.rookery-headless",
            &env.net,
            &env.broker(2),
        ]);
        env.until_up(3);
    });
    assert_exactly_once("cut", &p, &r);

    // After all that, the cluster routes between every pair of nodes again.
    let (p, r) = under_load(&rt, &env, "after", |_| {});
    assert_exactly_once("after the disturbances", &p, &r);

    // Scale-down from three to two: the last node drains, HAProxy is given the smaller
    // configuration, the node goes.
    let (p, r) = under_load(&rt, &env, "scale", |env| {
        docker_ok(&["stop", &env.broker(2)]);
        env.write_haproxy_config(2);
        docker_ok(&["kill", "-s", "USR2", &env.name("haproxy")]);
        env.until_up(2);
        docker_ok(&["rm", &env.broker(2)]);
    });
    assert_exactly_once("scale-down", &p, &r);
}
