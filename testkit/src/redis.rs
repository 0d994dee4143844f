//! Real `redis-server` processes (and a Sentinel) for tests.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::process::{self, Mutex, Resp, Watchdog};

/// The environment variable naming a Redis every test of the run shares
/// (`redis://127.0.0.1:PORT`); set by `scripts/test-servers`, nextest's setup script.
pub const REDIS_URL_ENV: &str = "ROOKERY_TEST_REDIS_URL";

/// How long a server may take to answer after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The `redis-server` binary (also Sentinel's: `redis-server CONFIG --sentinel`).
fn redis_binary() -> PathBuf {
    process::find_binary("redis-server", &["/usr/bin", "/usr/local/bin", "/usr/sbin"])
        .expect("redis-server not found on PATH or in /usr/bin: install the Debian package redis-server (scripts/test does)")
}

/// A real Redis server: the shared one of the test process (or of the whole nextest run), or a
/// private one a test may stop and start.
pub struct RedisServer {
    url: String,
    port: u16,
    local: Option<LocalRedis>,
}

struct LocalRedis {
    /// Extra arguments (`--replicaof`, persistence).
    args: Vec<String>,
    /// Removed by `Drop` of a private server; by the watchdog once the test process is gone
    /// (statics such as the shared server are never dropped).
    dir: TempDir,
    /// The running process and its watchdog; `None` while stopped.
    running: Mutex<Option<(Child, Watchdog)>>,
    /// True for the shared server: it cannot be stopped.
    shared: bool,
}

impl RedisServer {
    /// The Redis every test of this process shares: the one `ROOKERY_TEST_REDIS_URL` names (the
    /// nextest setup script starts one for the whole run), or else one started on first use on
    /// a free loopback port, which a watchdog stops once this process has exited. Keep tests
    /// apart with [`RedisServer::prefix`].
    pub fn shared() -> &'static RedisServer {
        static SHARED: OnceLock<RedisServer> = OnceLock::new();
        SHARED.get_or_init(|| match std::env::var(REDIS_URL_ENV) {
            Ok(url) if !url.trim().is_empty() => {
                let url = url.trim().to_owned();
                let port = port_of(&url).unwrap_or(6379);
                RedisServer {
                    url,
                    port,
                    local: None,
                }
            }
            _ => Self::start_local(Vec::new(), true),
        })
    }

    /// A Redis of this test's own, which it may [`stop`](Self::stop) and [`start`](Self::start)
    /// again (same port, same directory). It keeps an append-only file (fsync every second,
    /// and at shutdown), so what was written before a clean stop is there after the start.
    /// Dropping it stops the server and removes its directory.
    pub fn start_private() -> RedisServer {
        Self::start_local(
            vec![
                "--appendonly".into(),
                "yes".into(),
                "--appendfsync".into(),
                "everysec".into(),
            ],
            false,
        )
    }

    /// A private Redis replicating `master` (for Sentinel failover tests). Returns once the
    /// replica has finished its first sync.
    pub fn start_replica_of(master: &RedisServer) -> RedisServer {
        let replica = Self::start_local(
            vec![
                "--replicaof".into(),
                "127.0.0.1".into(),
                master.port.to_string(),
            ],
            false,
        );
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let info = process::redis_command(replica.port, &["INFO", "replication"]);
            let synced = matches!(&info, Ok(reply) if reply.as_str().is_some_and(|s| s.contains("master_link_status:up")));
            if synced {
                return replica;
            }
            assert!(
                Instant::now() < deadline,
                "replica on port {} did not sync with {}: {info:?}",
                replica.port,
                master.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start_local(args: Vec<String>, shared: bool) -> RedisServer {
        let mut dir = Some(
            tempfile::Builder::new()
                .prefix("rookery-redis-")
                .tempdir()
                .expect("temporary directory for redis"),
        );
        let mut last_error = String::new();
        // The free port may be taken between asking for it and the server binding it: retry.
        for _ in 0..5 {
            let port = process::free_port();
            let local = LocalRedis {
                args: args.clone(),
                dir: dir.take().expect("directory kept between attempts"),
                running: Mutex::new(None),
                shared,
            };
            match local.spawn(port) {
                Ok(()) => {
                    return RedisServer {
                        url: format!("redis://127.0.0.1:{port}"),
                        port,
                        local: Some(local),
                    };
                }
                Err(error) => {
                    last_error = error;
                    dir = Some(local.into_dir());
                }
            }
        }
        panic!("redis-server did not start: {last_error}");
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A key prefix (or Rookery cluster name) no other test of the run uses, so that tests
    /// sharing one server do not see each other's keys: `t<pid>_<counter>_<clock>`.
    pub fn prefix() -> String {
        process::unique_name("t")
    }

    /// Sends one command with redis's wire protocol and returns the reply's text (simple or
    /// bulk string, integer as text); panics on an error reply or I/O error. For checks such
    /// as `TTL key` or `DBSIZE`.
    pub fn command(&self, args: &[&str]) -> String {
        match process::redis_command(self.port, args) {
            Ok(Resp::Simple(s)) | Ok(Resp::Bulk(Some(s))) => s,
            Ok(Resp::Int(i)) => i.to_string(),
            Ok(Resp::Bulk(None)) | Ok(Resp::Array(None)) => String::new(),
            Ok(Resp::Array(Some(items))) => items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_owned))
                .collect::<Vec<_>>()
                .join("\n"),
            Ok(Resp::Error(e)) => panic!("redis {args:?}: {e}"),
            Err(e) => panic!("redis {args:?} on port {}: {e}", self.port),
        }
    }

    /// Stops a private server (SIGTERM: redis writes its append-only file and exits). Panics on
    /// the shared server.
    pub fn stop(&self) {
        self.private("stop").stop();
    }

    /// Starts a stopped private server again on the same port and directory, and waits until
    /// it answers. Panics on the shared server, or if the port was taken meanwhile.
    pub fn start(&self) {
        let local = self.private("start");
        if local.running.lock().is_some() {
            return;
        }
        if let Err(error) = local.spawn(self.port) {
            panic!(
                "redis-server did not restart on port {}: {error}",
                self.port
            );
        }
    }

    /// Freezes a private server (SIGSTOP): its connections stay open and nothing answers, as
    /// behind a cut cable. Panics on the shared server.
    pub fn freeze(&self) {
        self.private("freeze").signal("STOP");
    }

    /// Lets a frozen private server run again (SIGCONT).
    pub fn thaw(&self) {
        self.private("thaw").signal("CONT");
    }

    /// [`stop`](Self::stop), then [`start`](Self::start).
    pub fn restart(&self) {
        self.stop();
        self.start();
    }

    /// True while a local server's process runs (always true for an external one).
    pub fn is_running(&self) -> bool {
        self.local
            .as_ref()
            .is_none_or(|local| local.running.lock().is_some())
    }

    fn private(&self, what: &str) -> &LocalRedis {
        match &self.local {
            Some(local) if !local.shared => local,
            _ => panic!("{what}() needs a private server (RedisServer::start_private)"),
        }
    }
}

impl LocalRedis {
    fn spawn(&self, port: u16) -> Result<(), String> {
        let dir = self.dir.path();
        let log = File::options()
            .create(true)
            .append(true)
            .open(dir.join("redis.log"))
            .map_err(|e| format!("redis.log: {e}"))?;
        let mut command = Command::new(redis_binary());
        command
            .arg("--port")
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1", "--protected-mode", "no"])
            .args(["--save", "", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .args(&self.args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        if !self.args.iter().any(|a| a == "--appendonly") {
            command.args(["--appendonly", "no"]);
        }
        let child = command
            .spawn()
            .map_err(|e| format!("spawn redis-server: {e}"))?;
        wait_ready(child, port, dir, &self.running)
    }

    fn into_dir(self) -> TempDir {
        self.stop();
        self.dir
    }

    fn signal(&self, name: &str) {
        if let Some((child, _)) = &*self.running.lock() {
            process::signal(child.id(), name);
        }
    }

    fn stop(&self) {
        if let Some((mut child, watchdog)) = self.running.lock().take() {
            drop(watchdog);
            process::stop_child(&mut child, "TERM", Duration::from_secs(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // Stop the process before the TempDir field removes its directory.
        if let Some(local) = &self.local {
            local.stop();
        }
    }
}

/// Waits until the server on `port` answers PING with PONG; stores the child and a watchdog in
/// `running`. On failure kills the child and returns the log's tail.
fn wait_ready(
    mut child: Child,
    port: u16,
    dir: &Path,
    running: &Mutex<Option<(Child, Watchdog)>>,
) -> Result<(), String> {
    let watchdog = Watchdog::spawn(child.id(), "TERM", dir);
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "redis-server on port {port} exited ({status}): {}",
                log_tail(&dir.join("redis.log"))
            ));
        }
        if let Ok(reply) = process::redis_command(port, &["PING"])
            && reply == Resp::Simple("PONG".into())
        {
            *running.lock() = Some((child, watchdog));
            return Ok(());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "redis-server on port {port} did not answer within {START_TIMEOUT:?}: {}",
                log_tail(&dir.join("redis.log"))
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last lines of a log file, for error messages.
pub(crate) fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn port_of(url: &str) -> Option<u16> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next()?;
    let host_port = authority.rsplit('@').next()?;
    host_port.rsplit_once(':')?.1.parse().ok()
}

/// A real Redis Sentinel (`redis-server CONFIG --sentinel`) monitoring one master, with short
/// timeouts (master down after 1 s) so that failover tests are quick.
pub struct RedisSentinel {
    port: u16,
    service: String,
    dir: TempDir,
    running: Mutex<Option<(Child, Watchdog)>>,
}

impl RedisSentinel {
    /// Starts a Sentinel that monitors `master` under the name `service` (quorum 1), and waits
    /// until it answers and knows the master.
    pub fn start(master: &RedisServer, service: &str) -> RedisSentinel {
        let dir = tempfile::Builder::new()
            .prefix("rookery-sentinel-")
            .tempdir()
            .expect("temporary directory for redis-sentinel");
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = process::free_port();
            let config = dir.path().join("sentinel.conf");
            let text = format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {dir}\n\
                 sentinel monitor {service} 127.0.0.1 {master} 1\n\
                 sentinel down-after-milliseconds {service} 1000\n\
                 sentinel failover-timeout {service} 10000\n\
                 sentinel parallel-syncs {service} 1\n",
                dir = dir.path().display(),
                master = master.port,
            );
            std::fs::write(&config, text).expect("write sentinel.conf");
            let log = File::options()
                .create(true)
                .append(true)
                .open(dir.path().join("redis.log"))
                .expect("sentinel log file");
            let child = Command::new(redis_binary())
                .arg(&config)
                .arg("--sentinel")
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log file"))
                .stderr(log)
                .spawn()
                .expect("spawn redis-server --sentinel");
            let running = Mutex::new(None);
            match wait_ready(child, port, dir.path(), &running) {
                Ok(()) => {
                    let sentinel = RedisSentinel {
                        port,
                        service: service.to_owned(),
                        dir,
                        running,
                    };
                    sentinel.wait_for_master(master.port);
                    return sentinel;
                }
                Err(error) => last_error = error,
            }
        }
        panic!("redis-sentinel did not start: {last_error}");
    }

    /// The Sentinel's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port of the master the Sentinel currently names for the service.
    pub fn master_port(&self) -> Option<u16> {
        let reply = process::redis_command(
            self.port,
            &["SENTINEL", "get-master-addr-by-name", &self.service],
        )
        .ok()?;
        match reply {
            Resp::Array(Some(items)) => items.get(1)?.as_str()?.parse().ok(),
            _ => None,
        }
    }

    /// Waits until the Sentinel names the master on `port` (up to 30 s).
    pub fn wait_for_master(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.master_port() != Some(port) {
            assert!(
                Instant::now() < deadline,
                "sentinel on port {} still names master {:?}, not {port}: {}",
                self.port,
                self.master_port(),
                log_tail(&self.dir.path().join("redis.log"))
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Forces a failover (`SENTINEL FAILOVER`), retrying while the Sentinel has not yet found a
    /// replica to promote, and waits until it names a new master; returns the new master's port.
    pub fn failover(&self) -> u16 {
        let old = self.master_port();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let reply = process::redis_command(self.port, &["SENTINEL", "FAILOVER", &self.service]);
            match reply {
                Ok(Resp::Simple(_)) => break,
                other => assert!(
                    Instant::now() < deadline,
                    "SENTINEL FAILOVER {}: {other:?}",
                    self.service
                ),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        loop {
            let now = self.master_port();
            if let Some(port) = now
                && now != old
            {
                return port;
            }
            assert!(
                Instant::now() < deadline,
                "sentinel did not switch master from {old:?}: {}",
                log_tail(&self.dir.path().join("redis.log"))
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        if let Some((mut child, watchdog)) = self.running.lock().take() {
            drop(watchdog);
            process::stop_child(&mut child, "TERM", Duration::from_secs(5));
        }
    }
}
