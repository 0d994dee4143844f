//! Authentication and authorization in force: the password file and ACL file (parsed by
//! `rookery-auth`), the blocking pool that verifies passwords, and the trackers behind
//! failed-login and flapping bans.
//!
//! The files are swapped atomically on reload ([`Security::reload`]); a file that does not
//! parse is refused with its line number and the rules in force stay. Readers on the hot path
//! (every PUBLISH checks the ACL) take a lock-free snapshot.
//!
//! - [`authenticate`]: the CONNECT checks, in order: bans, certificate identity, password,
//!   anonymous access, will topic.

pub mod authenticate;
pub mod cluster_bans;
pub mod revoke;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use rookery_auth::acl::{Acl, Subject, SubscribeDecision};
use rookery_auth::password::PasswordFile;
use rookery_auth::psk::PskFile;
use rookery_auth::tracker::{Tracker, TrackerConfig};
use tokio::sync::Semaphore;

use crate::config::Config;
use cluster_bans::ClusterBans;

/// How long a changed file must stay the same before it is loaded.
const SETTLE: Duration = Duration::from_millis(100);

/// Most keys each tracker remembers (addresses, usernames, client ids).
const TRACKER_KEYS: usize = 100_000;

/// A file that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// Unreadable.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// `password file` or `ACL file`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Did not parse; the message names the line.
    #[error("{what} {path}: {message}")]
    Parse {
        /// `password file` or `ACL file`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The parser's message, with the line number.
        message: String,
    },
}

/// What a reload changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reloaded {
    /// A new password file is in force.
    pub passwords: bool,
    /// A new ACL is in force.
    pub acl: bool,
    /// A new PSK file is in force.
    pub psk: bool,
}

/// The security state of a running broker.
pub struct Security {
    password_path: Option<PathBuf>,
    acl_path: Option<PathBuf>,
    psk_path: Option<PathBuf>,
    passwords: ArcSwapOption<PasswordFile>,
    acl: ArcSwapOption<Acl>,
    psk: ArcSwapOption<PskFile>,
    /// The text each file had when last loaded (or refused), to skip unchanged files.
    password_text: Mutex<Option<String>>,
    acl_text: Mutex<Option<String>>,
    psk_text: Mutex<Option<String>>,
    /// Bounds the password hashes running at once.
    pub(crate) workers: Semaphore,
    /// Failed logins by `addr/IP` and `user/NAME`.
    pub(crate) failures: Limiter,
    /// CONNECTs by `id/CLIENT`.
    pub(crate) flapping: Limiter,
    /// CONNECTs by `addr/IP` (off unless `flapping_max_per_address` is set: behind NAT or a
    /// load balancer without PROXY protocol, many devices share one address).
    pub(crate) flapping_addr: Limiter,
    pub(crate) anonymous: bool,
    /// Bans and counters shared through Redis, when Redis is configured.
    cluster: std::sync::OnceLock<Arc<ClusterBans>>,
}

fn read(what: &'static str, path: &Path) -> Result<String, SecurityError> {
    std::fs::read_to_string(path).map_err(|source| SecurityError::Read {
        what,
        path: path.into(),
        source,
    })
}

fn parse_passwords(path: &Path, text: &str) -> Result<PasswordFile, SecurityError> {
    PasswordFile::parse(text).map_err(|e| SecurityError::Parse {
        what: "password file",
        path: path.into(),
        message: e.to_string(),
    })
}

fn parse_acl(path: &Path, text: &str) -> Result<Acl, SecurityError> {
    Acl::parse(text).map_err(|e| SecurityError::Parse {
        what: "ACL file",
        path: path.into(),
        message: e.to_string(),
    })
}

/// A PSK file whose identities are all usable as CoAP device ids (they become topic levels).
fn parse_psk(path: &Path, text: &str) -> Result<PskFile, SecurityError> {
    let error = |message: String| SecurityError::Parse {
        what: "PSK file",
        path: path.into(),
        message,
    };
    let file = PskFile::parse(text).map_err(|e| error(e.to_string()))?;
    for (identity, line) in file.identities() {
        if let Err(reason) = crate::coap::topics::check_device_id(identity) {
            return Err(error(format!(
                "line {line}: identity {identity:?} cannot be a device id: {reason}"
            )));
        }
    }
    Ok(file)
}

/// A ban tracker, or nothing when its limit is 0: the one place where "0 disables" lives.
pub(crate) struct Limiter(Option<Mutex<Tracker>>);

impl Limiter {
    fn new(max: u32, window_secs: u64, ban_secs: u64) -> Limiter {
        Limiter((max > 0).then(|| {
            Mutex::new(Tracker::new(TrackerConfig {
                max_events: max,
                window: Duration::from_secs(window_secs),
                ban: Duration::from_secs(ban_secs),
                max_keys: TRACKER_KEYS,
            }))
        }))
    }

    /// Counts an event; `Some(until)` when the key is (now) banned.
    pub(crate) fn record(&self, key: &str, now: Instant) -> Option<Instant> {
        self.0.as_ref()?.lock().record(key, now)
    }

    /// True while `key` is banned.
    pub(crate) fn is_banned(&self, key: &str, now: Instant) -> bool {
        self.0
            .as_ref()
            .is_some_and(|t| t.lock().banned_until(key, now).is_some())
    }

    fn bans(&self, now: Instant) -> Vec<(String, Instant)> {
        self.0
            .as_ref()
            .map_or_else(Vec::new, |t| t.lock().bans(now))
    }

    /// The limits, when this limiter is on.
    pub(crate) fn config(&self) -> Option<TrackerConfig> {
        self.0.as_ref().map(|t| *t.lock().config())
    }

    fn clear(&self, key: &str) -> bool {
        self.0.as_ref().is_some_and(|t| t.lock().clear(key))
    }

    fn prune(&self, now: Instant) {
        if let Some(t) = &self.0 {
            t.lock().prune(now);
        }
    }
}

impl Security {
    /// Loads the configured files; an error names the file and line.
    pub fn load(config: &Config) -> Result<Security, SecurityError> {
        let security = Security {
            password_path: config.password_file.clone(),
            acl_path: config.acl_file.clone(),
            psk_path: config.psk_file.clone(),
            passwords: ArcSwapOption::empty(),
            acl: ArcSwapOption::empty(),
            psk: ArcSwapOption::empty(),
            password_text: Mutex::new(None),
            acl_text: Mutex::new(None),
            psk_text: Mutex::new(None),
            workers: Semaphore::new(match config.auth_workers {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n,
            }),
            failures: Limiter::new(
                config.auth_fail_max,
                config.auth_fail_window_secs,
                config.auth_ban_secs,
            ),
            flapping: Limiter::new(
                config.flapping_max,
                config.flapping_window_secs,
                config.flapping_ban_secs,
            ),
            flapping_addr: Limiter::new(
                config.flapping_max_per_address,
                config.flapping_window_secs,
                config.flapping_ban_secs,
            ),
            anonymous: config.anonymous_allowed(),
            cluster: std::sync::OnceLock::new(),
        };
        if let Some(path) = &security.password_path {
            let text = read("password file", path)?;
            security
                .passwords
                .store(Some(Arc::new(parse_passwords(path, &text)?)));
            *security.password_text.lock() = Some(text);
        }
        if let Some(path) = &security.acl_path {
            let text = read("ACL file", path)?;
            security.acl.store(Some(Arc::new(parse_acl(path, &text)?)));
            *security.acl_text.lock() = Some(text);
        }
        if let Some(path) = &security.psk_path {
            let text = read("PSK file", path)?;
            security.psk.store(Some(Arc::new(parse_psk(path, &text)?)));
            *security.psk_text.lock() = Some(text);
        }
        Ok(security)
    }

    /// Re-reads the files that changed. Each file is swapped only when it parses; an error
    /// leaves that file's rules in force (and a file that fails the same way twice is reported
    /// once).
    pub fn reload(&self) -> (Reloaded, Vec<SecurityError>) {
        let mut done = Reloaded::default();
        let mut errors = Vec::new();
        if let Some(path) = &self.password_path {
            match self.reload_one(path, "password file", &self.password_text, parse_passwords) {
                Ok(Some(p)) => {
                    self.passwords.store(Some(Arc::new(p)));
                    done.passwords = true;
                }
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        if let Some(path) = &self.acl_path {
            match self.reload_one(path, "ACL file", &self.acl_text, parse_acl) {
                Ok(Some(a)) => {
                    self.acl.store(Some(Arc::new(a)));
                    done.acl = true;
                }
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        if let Some(path) = &self.psk_path {
            match self.reload_one(path, "PSK file", &self.psk_text, parse_psk) {
                Ok(Some(p)) => {
                    self.psk.store(Some(Arc::new(p)));
                    done.psk = true;
                }
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        (done, errors)
    }

    fn reload_one<T>(
        &self,
        path: &Path,
        what: &'static str,
        last: &Mutex<Option<String>>,
        parse: fn(&Path, &str) -> Result<T, SecurityError>,
    ) -> Result<Option<T>, SecurityError> {
        let text = read(what, path)?;
        if last.lock().as_deref() == Some(text.as_str()) {
            return Ok(None);
        }
        // A file caught mid-write may parse and mean something else (a truncated ACL denies
        // what it no longer lists): take a change only when a second read agrees. Runs on a
        // blocking thread (see `Server::reload`).
        std::thread::sleep(SETTLE);
        if read(what, path)? != text {
            return Ok(None);
        }
        let mut last = last.lock();
        let parsed = parse(path, &text);
        // Remember refused text too, so an unchanged bad file is not reported on every poll.
        *last = Some(text);
        parsed.map(Some)
    }

    /// The password file in force, if one is configured.
    pub fn passwords(&self) -> Option<Arc<PasswordFile>> {
        self.passwords.load_full()
    }

    /// Whether `username` (authenticated by password) is still in the password file.
    pub fn user_exists(&self, username: &str) -> bool {
        self.passwords
            .load()
            .as_ref()
            .is_none_or(|p| p.contains(username))
    }

    /// True when the PSK file in force has a key for `identity`.
    pub fn psk_contains(&self, identity: &str) -> bool {
        self.psk
            .load()
            .as_ref()
            .is_some_and(|f| f.contains(identity))
    }

    /// The pre-shared key of a DTLS identity, from the PSK file in force.
    pub fn psk_key(&self, identity: &str) -> Option<Vec<u8>> {
        self.psk
            .load()
            .as_ref()
            .and_then(|f| f.key(identity).map(<[u8]>::to_vec))
    }

    /// True when an ACL file is configured.
    pub fn has_acl(&self) -> bool {
        self.acl.load().is_some()
    }

    /// Write access to `topic`; everything is allowed without an ACL file.
    pub fn can_publish(&self, username: Option<&str>, client_id: &str, topic: &str) -> bool {
        match &*self.acl.load() {
            None => true,
            Some(acl) => acl.can_publish(
                &Subject {
                    username,
                    client_id,
                },
                topic,
            ),
        }
    }

    /// Read access to `topic`, for a message about to be delivered.
    pub fn can_read(&self, username: Option<&str>, client_id: &str, topic: &str) -> bool {
        match &*self.acl.load() {
            None => true,
            Some(acl) => acl.can_read(
                &Subject {
                    username,
                    client_id,
                },
                topic,
            ),
        }
    }

    /// The ACL's answer to a subscription filter (without any `$share/group/` prefix).
    /// `$SYS` is readable only where an ACL grants it: without an ACL file it is refused.
    pub fn check_subscribe(
        &self,
        username: Option<&str>,
        client_id: &str,
        filter: &str,
    ) -> SubscribeDecision {
        match &*self.acl.load() {
            None if filter.starts_with("$SYS") => SubscribeDecision::Denied,
            None => SubscribeDecision::Allowed {
                check_each_message: false,
            },
            Some(acl) => acl.check_subscribe(
                &Subject {
                    username,
                    client_id,
                },
                filter,
            ),
        }
    }

    /// Shares bans and counters with the other nodes through Redis from now on.
    pub fn share_bans(&self, bans: Arc<ClusterBans>) {
        let _ = self.cluster.set(bans);
    }

    /// The shared bans, when Redis is configured.
    pub fn cluster_bans(&self) -> Option<&Arc<ClusterBans>> {
        self.cluster.get()
    }

    /// Active bans (failed logins and flapping, this node's and the cluster's), one entry per
    /// key with the latest end, for the admin interface.
    pub fn bans(&self, now: Instant) -> Vec<(String, Instant)> {
        let mut all = self.failures.bans(now);
        all.extend(self.flapping.bans(now));
        all.extend(self.flapping_addr.bans(now));
        if let Some(c) = self.cluster.get() {
            all.extend(c.bans(now));
        }
        all.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        all.dedup_by(|a, b| a.0 == b.0);
        all
    }

    /// Lifts a ban (`addr/IP`, `user/NAME` or `id/CLIENT`) on this node; true when there was
    /// one. See [`Security::clear_ban_everywhere`] for the cluster.
    pub fn clear_ban(&self, key: &str) -> bool {
        let a = self.failures.clear(key);
        let b = self.flapping.clear(key);
        let c = self.flapping_addr.clear(key);
        a || b || c
    }

    /// Lifts a ban on this node and, with Redis, on every node; true when there was one.
    pub async fn clear_ban_everywhere(&self, key: &str) -> bool {
        let here = self.clear_ban(key);
        match self.cluster.get() {
            Some(c) => c.clear(key).await || here,
            None => here,
        }
    }

    /// Forgets expired windows and bans.
    pub fn prune(&self, now: Instant) {
        self.failures.prune(now);
        self.flapping.prune(now);
        self.flapping_addr.prune(now);
    }
}
