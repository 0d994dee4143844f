//! Test harness: starts real `rookery-broker` processes on free loopback ports, finds the port
//! each one bound from its first log line, and stops them (SIGTERM, then SIGKILL).
//!
//! The broker is a separate package, so callers pass the binary's path (inside the broker
//! package, `env!("CARGO_BIN_EXE_rookery-broker")`).

pub mod bench;
pub mod client;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long a broker has to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A broker process.
pub struct BrokerProcess {
    child: Child,
    /// The first MQTT listener's address.
    pub addr: SocketAddr,
    lines: mpsc::Receiver<String>,
    /// Every log line read so far.
    pub log: Vec<String>,
    /// The data directory made for this process when the arguments named none.
    _data: Option<tempfile::TempDir>,
}

impl BrokerProcess {
    /// Starts `binary` with `--listen 127.0.0.1:0` and `args`, and waits until it listens.
    pub fn start(binary: &Path, args: &[&str]) -> anyhow::Result<BrokerProcess> {
        Self::start_with_env(binary, args, &[])
    }

    /// Like [`BrokerProcess::start`] with extra environment variables.
    pub fn start_with_env(
        binary: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<BrokerProcess> {
        let mut cmd = Command::new(binary);
        cmd.args(["--listen", "127.0.0.1:0"]).args(args);
        // A data directory of its own, unless the test chose one (to restart on it).
        let data = if args
            .iter()
            .any(|a| *a == "--data-dir" || *a == "--durability")
        {
            None
        } else {
            let dir = tempfile::tempdir().context("cannot make a data directory")?;
            cmd.arg("--data-dir").arg(dir.path());
            Some(dir)
        };
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut process = BrokerProcess {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            lines,
            log: Vec::new(),
            _data: data,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match process.lines.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => bail!(
                    "broker did not report its address; log so far:\n{}",
                    process.log.join("\n")
                ),
            };
            process.log.push(line.clone());
            if let Some(addr) = listening_addr(&line) {
                process.addr = addr;
                return Ok(process);
            }
        }
    }

    /// The address of the first listener of `kind` (`mqtt`, `mqtts`, `ws`, `wss`), from the
    /// listening line (`listening on 127.0.0.1:1883 (mqtt), 127.0.0.1:8883 (mqtts); ...`).
    pub fn listener(&self, kind: &str) -> Option<SocketAddr> {
        let line = self.log.iter().find(|l| l.contains("listening on "))?;
        listener_addr(line, kind)
    }

    /// Reads log lines until one contains `needle` or `wait` passes.
    pub fn wait_for_log(&mut self, needle: &str, wait: Duration) -> Option<String> {
        if let Some(l) = self.log.iter().find(|l| l.contains(needle)) {
            return Some(l.clone());
        }
        let deadline = Instant::now() + wait;
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.log.push(line.clone());
            if line.contains(needle) {
                return Some(line);
            }
        }
        None
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (by number, e.g. 15 for SIGTERM).
    pub fn signal(&self, signal: i32) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()?;
        if !status.success() {
            bail!("kill -{signal} {} failed", self.pid());
        }
        Ok(())
    }

    /// Waits for the process to exit, up to `wait`; then collects the rest of its log.
    pub fn wait_exit(&mut self, wait: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(status) = self.child.try_wait()? {
                // Until the readers reach the end of the pipes (the channel disconnects): on a
                // loaded machine they may lag behind the exit by more than a moment.
                let drained = Instant::now() + Duration::from_secs(5);
                while let Ok(line) = self
                    .lines
                    .recv_timeout(drained.saturating_duration_since(Instant::now()))
                {
                    self.log.push(line);
                }
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("broker still running after {wait:?}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a cluster of `n` broker processes on loopback (node ids `{prefix}-0`, ...; each
/// with `args` too), and returns them once each has logged its link up. With info logging
/// (the link lines are info): pass no `--log-level` that hides them.
pub fn start_cluster(
    binary: &Path,
    prefix: &str,
    n: usize,
    args: &[&str],
) -> anyhow::Result<Vec<BrokerProcess>> {
    let ports = (0..n)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
        })
        .collect::<Result<Vec<u16>, _>>()?;
    let peers = ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let link = format!("127.0.0.1:{port}");
        nodes.push(start_cluster_node(
            binary,
            &format!("{prefix}-{i}"),
            &link,
            &peers,
            args,
        )?);
    }
    // Only the link that stays logs "up" (the larger node hangs up its own dial unseen).
    for node in &mut nodes {
        node.wait_for_log("cluster link up", Duration::from_secs(10))
            .context("no cluster link came up")?;
    }
    Ok(nodes)
}

/// Starts node `id` of a loopback cluster, its link listener on `link`, the cluster's `peers`
/// (comma-separated, itself included), with `args` too; returns once its links are starting.
/// With info logging, as [`start_cluster`].
pub fn start_cluster_node(
    binary: &Path,
    id: &str,
    link: &str,
    peers: &str,
    args: &[&str],
) -> anyhow::Result<BrokerProcess> {
    let mut all = vec![
        "--log-level",
        "warn,rookery_broker=info",
        "--node-id",
        id,
        "--cluster-listen",
        link,
        "--peers",
        peers,
    ];
    all.extend_from_slice(args);
    let mut node = BrokerProcess::start(binary, &all)?;
    node.wait_for_log("cluster links starting", Duration::from_secs(10))
        .context("the cluster links did not start")?;
    Ok(node)
}

/// Finds `listening on ADDR` in a log line (text or JSON).
pub fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let end = rest.find(|c: char| {
        !(c.is_ascii_alphanumeric() || c == '.' || c == ':' || c == '[' || c == ']')
    })?;
    rest[..end].parse().ok()
}

/// The address of the first listener of `kind` named in a listening line.
pub fn listener_addr(line: &str, kind: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let marker = format!(" ({kind})");
    rest.split(", ").find_map(|part| {
        let end = part.find(&marker)?;
        part[..end].parse().ok()
    })
}

/// Runs the binary to completion (for configuration errors) and returns status and stderr.
pub fn run_to_exit(
    binary: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<(ExitStatus, String)> {
    let mut cmd = Command::new(binary);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn()?;
    let mut stderr = String::new();
    if let Some(mut s) = child.stderr.take() {
        s.read_to_string(&mut stderr)?;
    }
    Ok((child.wait()?, stderr))
}

/// The workspace's target directory (for binaries built by an earlier `cargo build`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The debug build of the broker, for tests in other packages; the error says how to make
/// it when it is missing.
pub fn debug_broker_binary() -> anyhow::Result<PathBuf> {
    let path = target_dir().join("debug/rookery-broker");
    if !path.exists() {
        bail!(
            "{} is missing: run `cargo build -p rookery-broker` first",
            path.display()
        );
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_address_in_text_and_json_lines() {
        let text = "2026-11-25 INFO rookery_broker: rookery-broker 0.1.0 listening on 127.0.0.1:4567 (MQTT";
        assert_eq!(
            listening_addr(text),
            Some("127.0.0.1:4567".parse().unwrap())
        );
        let json = r#"{"fields":{"message":"rookery-broker 0.1.0 listening on 127.0.0.1:80, 127.0.0.1:81 (MQTT"}}"#;
        assert_eq!(listening_addr(json), Some("127.0.0.1:80".parse().unwrap()));
        assert_eq!(listening_addr("nothing here"), None);
        let line = "listening on 127.0.0.1:80 (mqtt), 127.0.0.1:81 (mqtts), [::1]:82 (ws); MQTT";
        assert_eq!(
            listener_addr(line, "mqtts"),
            Some("127.0.0.1:81".parse().unwrap())
        );
        assert_eq!(listener_addr(line, "ws"), Some("[::1]:82".parse().unwrap()));
        assert_eq!(listener_addr(line, "wss"), None);
    }
}
