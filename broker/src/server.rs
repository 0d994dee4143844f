//! A running broker: its listeners, reloads (SIGHUP and a file poll), and a shutdown that stops
//! accepting, tells every client (MQTT 5.0 DISCONNECT 0x8B), flushes and waits for connections
//! to close.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::broker::Broker;
use crate::config::Config;
use crate::listener::tls::ReloadingTls;
use crate::listener::{self, AddressCounts, ListenerContext, ListenerKind};
use crate::security::Security;

/// A running broker.
pub struct Server {
    /// Shared state, for tests and the admin interface.
    pub broker: Arc<Broker>,
    /// The addresses the MQTT listeners bound (port 0 resolved), with their kind, in the order
    /// mqtt, mqtts, ws, wss.
    pub listeners: Vec<(ListenerKind, SocketAddr)>,
    /// The addresses of the plain MQTT listeners.
    pub local_addrs: Vec<SocketAddr>,
    tls: Option<Arc<ReloadingTls>>,
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
}

impl Server {
    /// Loads certificates, password and ACL files, binds every listener and starts accepting.
    /// Errors name the file or address at fault.
    pub async fn start(config: Config) -> io::Result<Server> {
        let security = Security::load(&config).map_err(invalid)?;
        let tls = match config.tls_files() {
            Some(files) => Some(Arc::new(ReloadingTls::load(files).map_err(invalid)?)),
            None => None,
        };
        let persist = crate::persist::Persist::open(&config).await?;
        let broker = Broker::with_persist(config, security, persist);
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
        let local_addrs = listeners
            .iter()
            .filter(|(k, _)| *k == ListenerKind::Mqtt)
            .map(|(_, a)| *a)
            .collect();
        let server = Server {
            broker,
            listeners,
            local_addrs,
            tls,
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

    /// Re-reads certificates, password and ACL files (SIGHUP). What fails to load is logged
    /// and the previous version stays in force. The file reads, the TLS build and the walk over
    /// every subscription run on a blocking thread, not on the runtime.
    pub async fn reload(&self) {
        reload_off_runtime(self.broker.clone(), self.tls.clone()).await;
    }

    /// Polls the files for changes and forgets expired bans.
    fn spawn_housekeeping(&self) {
        let broker = self.broker.clone();
        let tls = self.tls.clone();
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
                    reload_off_runtime(broker.clone(), tls.clone()).await;
                }
                broker.security.prune(Instant::now());
            }
        });
    }

    /// Graceful shutdown: stop accepting, disconnect clients, wait up to the configured timeout.
    pub async fn shutdown(self) {
        let broker = self.broker;
        info!("shutting down");
        broker.shutdown.cancel();
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

async fn reload_off_runtime(broker: Arc<Broker>, tls: Option<Arc<ReloadingTls>>) {
    let done = tokio::task::spawn_blocking(move || reload(&broker, tls.as_deref())).await;
    if let Err(e) = done {
        warn!(error = %e, "reload failed");
    }
}

fn reload(broker: &Broker, tls: Option<&ReloadingTls>) {
    if let Some(tls) = tls {
        match tls.reload() {
            Ok(true) => info!("TLS certificate files reloaded; new handshakes use them"),
            Ok(false) => {}
            Err(e) => {
                warn!(error = %e, "refused the new TLS files; the previous ones stay in force")
            }
        }
    }
    broker.reload_security();
}
