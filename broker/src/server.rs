//! A running broker: its listeners, reloads (SIGHUP and a file poll), and a shutdown that stops
//! accepting, tells every client (MQTT 5.0 DISCONNECT 0x8B), flushes and waits for connections
//! to close.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::broker::Broker;
use crate::config::{Config, ConfigError};
use crate::listener::tls::ReloadingTls;
use crate::listener::{self, AddressCounts, ListenerContext, ListenerKind};
use crate::security::Security;
use crate::security::cluster_bans::{self, ClusterBans};
use parking_lot::Mutex;

/// A running broker.
pub struct Server {
    /// Shared state, for tests and the admin interface.
    pub broker: Arc<Broker>,
    /// The addresses the MQTT listeners bound (port 0 resolved), with their kind, in the order
    /// mqtt, mqtts, ws, wss.
    pub listeners: Vec<(ListenerKind, SocketAddr)>,
    /// The addresses of the plain MQTT listeners.
    pub local_addrs: Vec<SocketAddr>,
    /// The address of the metrics endpoint, when `metrics_listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    /// The address of the cluster listener, when `cluster_listen` is set.
    pub cluster_addr: Option<SocketAddr>,
    /// The UDP address of the CoAP gateway's DTLS listener, when `coaps_listen` is set.
    pub coaps_addr: Option<SocketAddr>,
    tls: Option<Arc<ReloadingTls>>,
    source: Arc<ConfigSource>,
}

/// Builds the configuration again, as at start.
pub type BuildConfig = Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;
/// Applies a new `log_level` to the running logger.
pub type SetLogLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Where a reload reads the configuration from, and how it changes the log filter.
pub struct ConfigSource {
    /// Builds the configuration again (file, environment, flags); `None` in embedded use.
    pub build: Option<BuildConfig>,
    /// Applies a new `log_level`.
    pub set_log_level: Option<SetLogLevel>,
    /// The configuration the last reload applied.
    current: Mutex<Config>,
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
}

impl Server {
    /// Loads certificates, password and ACL files, binds every listener and starts accepting.
    /// Errors name the file or address at fault.
    pub async fn start(config: Config) -> io::Result<Server> {
        crate::message::set_node(&config.node_id);
        let security = Security::load(&config).map_err(invalid)?;
        let tls = match config.tls_files() {
            Some(files) => Some(Arc::new(ReloadingTls::load(files).map_err(invalid)?)),
            None => None,
        };
        let admin_token = config.admin_token().map_err(invalid)?;
        let admin = match config.metrics_listen {
            Some(addr) => Some(crate::admin::bind(addr).await?),
            None => None,
        };
        let persist = crate::persist::Persist::open(&config).await?;
        let (redis_url, _) = config.store_urls().map_err(invalid)?;
        let broker = Broker::with_persist(config, security, persist);
        if let Some(url) = redis_url {
            // Failed logins and flapping count cluster-wide: a load balancer spreading an
            // attacker over the nodes does not spread the count.
            let store =
                rookery_store::redis_bans::RedisBans::new(&url, &broker.config.cluster_name)
                    .map_err(invalid)?;
            let bans = ClusterBans::new(store);
            bans.sync().await;
            broker.security.share_bans(bans.clone());
            broker
                .tasks
                .spawn(cluster_bans::run_sync(bans, broker.shutdown.clone()));
        }
        let metrics_addr = match admin {
            Some(socket) => {
                let addr = socket.local_addr()?;
                // Up before the restore, so that probes see "starting" rather than nothing.
                tokio::spawn(crate::admin::serve(
                    socket,
                    broker.clone(),
                    admin_token.map(Arc::from),
                ));
                Some(addr)
            }
            None => None,
        };
        // Everything stored comes back before the first client can connect.
        crate::persist::restore::restore(&broker)
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        let ctx = ListenerContext {
            broker: broker.clone(),
            tls: tls.clone(),
            addresses: Arc::new(AddressCounts::default()),
        };
        let mut listeners = Vec::new();
        for spec in broker.config.listeners() {
            let socket = listener::bind(spec.addr).await.map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot listen on {} ({}): {e}", spec.addr, spec.kind),
                )
            })?;
            listeners.push((spec.kind, socket.local_addr()?));
            broker.tasks.spawn(listener::run(socket, spec, ctx.clone()));
        }
        let mut plain = None;
        if let Some(addr) = broker.config.coap_listen {
            let socket = crate::coap::bind(addr).await.map_err(|e| {
                io::Error::new(e.kind(), format!("cannot listen on {addr} (coap): {e}"))
            })?;
            listeners.push((ListenerKind::Coap, socket.local_addr()?));
            plain = Some(socket);
        }
        let mut secure = None;
        let mut coaps_addr = None;
        if let Some(addr) = broker.config.coaps_listen {
            let socket = crate::coap::bind(addr).await.map_err(|e| {
                io::Error::new(e.kind(), format!("cannot listen on {addr} (coaps): {e}"))
            })?;
            coaps_addr = Some(socket.local_addr()?);
            secure = Some(socket);
        }
        if plain.is_some() || secure.is_some() {
            broker
                .tasks
                .spawn(crate::coap::run(plain, secure, broker.clone()));
        }
        for bridge in &broker.config.bridge {
            broker
                .tasks
                .spawn(crate::bridge::run(bridge.clone(), broker.clone()));
        }
        let local_addrs = listeners
            .iter()
            .filter(|(k, _)| *k == ListenerKind::Mqtt)
            .map(|(_, a)| *a)
            .collect();
        let cluster_addr = match broker.config.cluster_listen {
            Some(addr) => Some(start_cluster(&broker, addr).await?),
            None => None,
        };
        broker
            .tasks
            .spawn(crate::limits::memory::watch(broker.clone()));
        broker.tasks.spawn(crate::sys::run(broker.clone()));
        broker
            .ready
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let source = Arc::new(ConfigSource {
            build: None,
            set_log_level: None,
            current: Mutex::new(broker.config.clone()),
        });
        let server = Server {
            broker,
            listeners,
            local_addrs,
            metrics_addr,
            cluster_addr,
            coaps_addr,
            tls,
            source,
        };
        server.spawn_housekeeping();
        Ok(server)
    }

    /// The first listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.listeners[0].1
    }

    /// The first address of a listener of this kind.
    pub fn addr_of(&self, kind: ListenerKind) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, a)| *a)
    }

    /// Says where reloads read the configuration from (the binary passes its file,
    /// environment and flags) and how they change the log filter. Call before serving.
    pub fn set_config_source(&mut self, build: BuildConfig, set_log_level: SetLogLevel) {
        self.source = Arc::new(ConfigSource {
            build: Some(build),
            set_log_level: Some(set_log_level),
            current: Mutex::new(self.broker.config.clone()),
        });
    }

    /// Re-reads the configuration, certificates, password and ACL files (SIGHUP). What fails
    /// to load is logged and the previous version stays in force; one line says what changed
    /// and what needs a restart. The file reads, the TLS build and the walk over every
    /// subscription run on a blocking thread, not on the runtime.
    pub async fn reload(&self) {
        reload_off_runtime(
            self.broker.clone(),
            self.tls.clone(),
            self.source.clone(),
            true,
        )
        .await;
    }

    /// Polls the files for changes and forgets expired bans.
    fn spawn_housekeeping(&self) {
        let broker = self.broker.clone();
        let tls = self.tls.clone();
        let source = self.source.clone();
        let secs = broker.config.reload_interval_secs;
        let shutdown = broker.shutdown.clone();
        self.broker.tasks.spawn(async move {
            let period = Duration::from_secs(if secs == 0 { 60 } else { secs });
            let mut ticks = tokio::time::interval(period);
            ticks.tick().await;
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = shutdown.cancelled() => return,
                }
                if secs > 0 {
                    reload_off_runtime(broker.clone(), tls.clone(), source.clone(), false).await;
                }
                broker.security.prune(Instant::now());
            }
        });
    }

    /// Drains the node (see [`crate::drain`]): returns once every client is gone. The caller
    /// then shuts down.
    pub async fn drain(&self) {
        crate::drain::drain(&self.broker).await;
    }

    /// Graceful shutdown: stop accepting, disconnect clients, wait up to the configured timeout.
    pub async fn shutdown(self) {
        let broker = self.broker;
        info!("shutting down");
        broker.shutdown.cancel();
        // Established connections listen on their session's control channel only. One that
        // attaches after this sweep sees the cancelled token before it serves (the session's
        // lock orders the two).
        for session in broker.sessions.all() {
            session.shut_down();
        }
        broker.tasks.close();
        let limit = Duration::from_secs(broker.config.shutdown_timeout_secs);
        if tokio::time::timeout(limit, broker.tasks.wait())
            .await
            .is_err()
        {
            warn!(
                open = broker.tasks.len(),
                "shutdown timed out with tasks still running"
            );
        }
        // What the closing connections wrote (their sessions' last state) is committed.
        if let Some(p) = &broker.persist {
            p.close().await;
        }
    }
}

/// Binds the cluster listener and starts the links to every peer.
async fn start_cluster(broker: &Arc<Broker>, addr: SocketAddr) -> io::Result<SocketAddr> {
    use crate::cluster::{Cluster, link};
    let socket = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {addr} (cluster_listen): {e}"),
        )
    })?;
    let bound = socket.local_addr()?;
    let c = &broker.config;
    let cluster = Cluster::new(
        c.node_id.clone(),
        c.cluster_name.clone(),
        rookery_store::now_ms(),
        c.peers.clone(),
    );
    let tls = match (&c.cluster_ca, &c.cluster_cert, &c.cluster_key) {
        (Some(ca), Some(cert), Some(key)) => {
            let files = crate::listener::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: Some(ca.clone()),
                require_client_cert: true,
            };
            let acceptor = ReloadingTls::load(files).map_err(invalid)?;
            let connector =
                crate::listener::tls::client_connector(cert, key, ca).map_err(invalid)?;
            Some(Arc::new(link::LinkTls {
                acceptor: Arc::new(acceptor),
                connector: arc_swap::ArcSwap::from_pointee(connector),
                files: (cert.clone(), key.clone(), ca.clone()),
                server_name: c.cluster_server_name.clone(),
            }))
        }
        _ => None,
    };
    if let Some(t) = &tls {
        cluster.set_link_tls(t.clone());
    }
    cluster.set_previous_marks(broker.load_previous_marks().await);
    let _ = broker.cluster.set(cluster.clone());
    broker.router.write().set_cluster(cluster.clone());
    crate::cluster::ownership::watch(broker);
    // Links are not the broker's tasks: shutdown cancels them, it does not wait for them.
    let mtls = tls.is_some();
    tokio::spawn(link::listen(
        broker.clone(),
        cluster.clone(),
        socket,
        tls.clone(),
        broker.shutdown.clone(),
    ));
    for peer in &c.peers {
        tokio::spawn(link::dial(
            broker.clone(),
            cluster.clone(),
            peer.clone(),
            tls.clone(),
            broker.shutdown.clone(),
        ));
    }
    if let Some(name) = &c.peers_dns {
        cluster.expect_dns();
        tokio::spawn(crate::cluster::discovery::run(
            broker.clone(),
            cluster.clone(),
            name.clone(),
            tls.clone(),
            broker.shutdown.clone(),
        ));
    }
    info!(%bound, peers = c.peers.len(), cluster = %c.cluster_name, mtls,
        "cluster links starting");
    Ok(bound)
}

async fn reload_off_runtime(
    broker: Arc<Broker>,
    tls: Option<Arc<ReloadingTls>>,
    source: Arc<ConfigSource>,
    asked: bool,
) {
    let done =
        tokio::task::spawn_blocking(move || reload(&broker, tls.as_deref(), &source, asked)).await;
    if let Err(e) = done {
        warn!(error = %e, "reload failed");
    }
}

/// One reload: files, then the configuration; then one line with what changed. `asked`
/// (SIGHUP) logs the line even when nothing changed.
fn reload(broker: &Broker, tls: Option<&ReloadingTls>, source: &ConfigSource, asked: bool) {
    let mut applied: Vec<String> = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    if let Some(tls) = tls {
        match tls.reload() {
            Ok(true) => {
                info!("TLS certificate files reloaded; new handshakes use them");
                applied.push("TLS files".into());
            }
            Ok(false) => {}
            Err(e) => {
                warn!(error = %e, "refused the new TLS files; the previous ones stay in force");
                refused.push("TLS files".into());
            }
        }
    }
    if let Some(link_tls) = broker.cluster.get().and_then(|c| c.link_tls()) {
        match link_tls.reload() {
            Ok(true) => {
                info!("cluster link certificate files reloaded; new links use them");
                applied.push("cluster link TLS files".into());
            }
            Ok(false) => {}
            Err(e) => {
                warn!(error = %e, "refused the new cluster link TLS files; the previous ones stay in force");
                refused.push("cluster link TLS files".into());
            }
        }
    }
    let (reloaded, _) = broker.reload_security();
    if reloaded.passwords {
        applied.push("password file".into());
    }
    if reloaded.acl {
        applied.push("ACL file".into());
    }
    if reloaded.psk {
        applied.push("PSK file".into());
    }
    let mut restart: Vec<String> = Vec::new();
    if let Some(build) = &source.build {
        match build() {
            Err(e) => {
                warn!(error = %e, "refused the new configuration; the settings in force stay");
                refused.push("configuration".into());
            }
            Ok(new) => {
                let mut current = source.current.lock();
                let change = crate::reload::diff(&current, &new);
                let mut log_ok = true;
                if change.live.iter().any(|k| k == "log_level")
                    && let Some(set) = &source.set_log_level
                    && let Err(e) = set(&new.log_level)
                {
                    warn!(error = %e, "refused the new log_level; the filter in force stays");
                    log_ok = false;
                }
                broker.set_limits(crate::limits::LiveLimits::from_config(&new));
                applied.extend(
                    change
                        .live
                        .iter()
                        .filter(|k| log_ok || k.as_str() != "log_level")
                        .cloned(),
                );
                restart = change.restart;
                let mut next = new;
                if !log_ok {
                    next.log_level = current.log_level.clone();
                }
                *current = next;
            }
        }
    }
    if asked || !applied.is_empty() || !restart.is_empty() || !refused.is_empty() {
        info!(
            applied = %list(&applied),
            needs_restart = %list(&restart),
            refused = %list(&refused),
            "reload: applied {}; needs a restart: {}",
            list(&applied),
            list(&restart),
        );
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "nothing".into()
    } else {
        items.join(", ")
    }
}
