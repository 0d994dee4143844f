//! Real PostgreSQL servers for tests.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::process::{self, Mutex, Watchdog};
use crate::redis::log_tail;

/// The environment variable naming a PostgreSQL every test of the run shares
/// (`postgres://postgres@127.0.0.1:PORT/postgres`, a superuser); set by `scripts/test-servers`.
pub const POSTGRES_URL_ENV: &str = "ROOKERY_TEST_POSTGRES_URL";

/// How long a server may take to accept connections after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The directory with `initdb`, `postgres`, `pg_isready` and `psql`: the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian's layout), else the directory of `initdb` on
/// `PATH`.
pub fn postgres_bin_dir() -> PathBuf {
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version);
    if let Some((_, bin)) = newest {
        return bin;
    }
    process::find_binary("initdb", &["/usr/local/pgsql/bin"])
        .and_then(|initdb| initdb.parent().map(Path::to_path_buf))
        .expect(
            "PostgreSQL server binaries (initdb, postgres) not found: install the Debian package \
             postgresql (scripts/test does)",
        )
}

/// The `psql` to run SQL with: the server's, else the one on `PATH`.
fn psql_binary() -> PathBuf {
    let bin = postgres_bin_dir().join("psql");
    if bin.is_file() {
        return bin;
    }
    process::find_binary("psql", &["/usr/bin"]).expect("psql not found")
}

/// The uid and gid of the `postgres` user when this process is root (postgres refuses to run as
/// root), `None` otherwise.
fn server_owner() -> Option<(u32, u32)> {
    let id = |args: &[&str]| -> Option<u32> {
        let out = Command::new("id").args(args).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    if id(&["-u"])? != 0 {
        return None;
    }
    match (id(&["-u", "postgres"]), id(&["-g", "postgres"])) {
        (Some(uid), Some(gid)) => Some((uid, gid)),
        _ => panic!(
            "running as root and there is no `postgres` user to run the server as \
             (the Debian package postgresql creates it)"
        ),
    }
}

/// A real PostgreSQL server: the shared one of the test process (or of the whole nextest run),
/// or a private one a test may stop and start.
pub struct PostgresServer {
    url: String,
    port: u16,
    local: Option<LocalPostgres>,
}

struct LocalPostgres {
    bin: PathBuf,
    owner: Option<(u32, u32)>,
    /// Holds `data/` (the cluster), the unix socket and `postgres.log`.
    dir: TempDir,
    running: Mutex<Option<(Child, Watchdog)>>,
    shared: bool,
}

impl PostgresServer {
    /// The PostgreSQL every test of this process shares: the one `ROOKERY_TEST_POSTGRES_URL`
    /// names (the nextest setup script starts one for the whole run), or else one initialised
    /// and started on first use, which a watchdog stops once this process has exited. Keep
    /// tests apart with [`PostgresServer::database`].
    pub fn shared() -> &'static PostgresServer {
        static SHARED: OnceLock<PostgresServer> = OnceLock::new();
        SHARED.get_or_init(|| match std::env::var(POSTGRES_URL_ENV) {
            Ok(url) if !url.trim().is_empty() => {
                let url = url.trim().to_owned();
                let port = port_of(&url).unwrap_or(5432);
                PostgresServer {
                    url,
                    port,
                    local: None,
                }
            }
            _ => Self::start_local(true),
        })
    }

    /// A PostgreSQL of this test's own (its own `initdb`), which it may [`stop`](Self::stop)
    /// and [`start`](Self::start) again on the same port and data directory. Dropping it stops
    /// the server and removes the directory.
    pub fn start_private() -> PostgresServer {
        Self::start_local(false)
    }

    fn start_local(shared: bool) -> PostgresServer {
        let bin = postgres_bin_dir();
        let owner = server_owner();
        let dir = tempfile::Builder::new()
            .prefix("rookery-postgres-")
            .tempdir()
            .expect("temporary directory for postgres");
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("chown the postgres directory to the postgres user");
        }
        let local = LocalPostgres {
            bin,
            owner,
            dir,
            running: Mutex::new(None),
            shared,
        };
        local.initdb();
        let mut last_error = String::new();
        // The free port may be taken between asking for it and the server binding it: retry.
        for _ in 0..5 {
            let port = process::free_port();
            match local.spawn(port) {
                Ok(()) => {
                    return PostgresServer {
                        url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
                        port,
                        local: Some(local),
                    };
                }
                Err(error) => last_error = error,
            }
        }
        panic!("postgres did not start: {last_error}");
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`: the superuser and the maintenance
    /// database. Tests should work in a [`database`](Self::database) of their own.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates a database no other test uses and returns its URL.
    pub fn database(&self) -> String {
        let name = process::unique_name("rookery_test_");
        Self::psql(&self.url, &format!("CREATE DATABASE {name}"));
        with_database(&self.url, &name)
    }

    /// Runs `sql` with `psql` against the database at `url` and returns what it prints
    /// (unaligned, tuples only: one row a line, columns separated by `|`). Panics on an error.
    pub fn psql(url: &str, sql: &str) -> String {
        let out = Command::new(psql_binary())
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                url,
                "-c",
                sql,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql:?} on {url}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
    }

    /// Stops a private server (fast shutdown: SIGINT, open connections are closed). Panics on
    /// the shared server.
    pub fn stop(&self) {
        self.private("stop").stop();
    }

    /// Starts a stopped private server again on the same port and data directory, and waits
    /// until it accepts connections. Panics on the shared server or if the port was taken.
    pub fn start(&self) {
        let local = self.private("start");
        if local.running.lock().is_some() {
            return;
        }
        if let Err(error) = local.spawn(self.port) {
            panic!("postgres did not restart on port {}: {error}", self.port);
        }
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

    fn private(&self, what: &str) -> &LocalPostgres {
        match &self.local {
            Some(local) if !local.shared => local,
            _ => panic!("{what}() needs a private server (PostgresServer::start_private)"),
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // Stop the process before the TempDir field removes its directory.
        if let Some(local) = &self.local {
            local.stop();
        }
    }
}

impl LocalPostgres {
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command.current_dir(self.dir.path()).stdin(Stdio::null());
        if let Some((uid, gid)) = self.owner {
            command.uid(uid).gid(gid);
        }
        command
    }

    fn log(&self) -> File {
        File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("postgres.log"))
            .expect("postgres.log")
    }

    fn initdb(&self) {
        let log = self.log();
        let status = self
            .command("initdb")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"])
            // Skips the fsyncs of initdb's own files only; the server keeps fsync on.
            .arg("--no-sync")
            .stdout(log.try_clone().expect("clone log file"))
            .stderr(log)
            .status()
            .expect("run initdb");
        assert!(
            status.success(),
            "initdb failed ({status}): {}",
            log_tail(&self.dir.path().join("postgres.log"))
        );
    }

    fn spawn(&self, port: u16) -> Result<(), String> {
        let log = self.log();
        let mut child = self
            .command("postgres")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-p")
            .arg(port.to_string())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            .args(["-c", "max_connections=300"])
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn postgres: {e}"))?;
        let watchdog = Watchdog::spawn(child.id(), "QUIT", self.dir.path());
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "postgres on port {port} exited ({status}): {}",
                    log_tail(&self.dir.path().join("postgres.log"))
                ));
            }
            let ready = Command::new(self.bin.join("pg_isready"))
                .args([
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-t",
                    "2",
                ])
                .arg("-p")
                .arg(port.to_string())
                .stdin(Stdio::null())
                .status()
                .is_ok_and(|status| status.success());
            if ready {
                *self.running.lock() = Some((child, watchdog));
                return Ok(());
            }
            if Instant::now() >= deadline {
                process::stop_child(&mut child, "QUIT", Duration::from_secs(5));
                return Err(format!(
                    "postgres on port {port} did not accept connections within \
                     {START_TIMEOUT:?}: {}",
                    log_tail(&self.dir.path().join("postgres.log"))
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&self) {
        if let Some((mut child, watchdog)) = self.running.lock().take() {
            drop(watchdog);
            process::stop_child(&mut child, "INT", Duration::from_secs(30));
        }
    }
}

fn port_of(url: &str) -> Option<u16> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority.rsplit('@').next()?;
    host_port.rsplit_once(':')?.1.parse().ok()
}

/// `url` with its database name replaced by `name` (query parameters kept).
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{name}", &base[..authority_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h:1?sslmode=disable", "x"),
            "postgres://u:p@h:1/x?sslmode=disable"
        );
        assert_eq!(
            port_of("postgres://postgres@127.0.0.1:5433/postgres"),
            Some(5433)
        );
        assert_eq!(port_of("postgres://h/db"), None);
    }
}
