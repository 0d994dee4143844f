//! A running broker: its listeners, and a shutdown that stops accepting, tells every client
//! (MQTT 5.0 DISCONNECT 0x8B), flushes and waits for connections to close.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::broker::Broker;
use crate::config::Config;
use crate::listener::tcp;

/// A running broker.
pub struct Server {
    /// Shared state, for tests and the admin interface.
    pub broker: Arc<Broker>,
    /// The addresses the MQTT listeners bound (port 0 resolved).
    pub local_addrs: Vec<SocketAddr>,
}

impl Server {
    /// Binds every listener and starts accepting.
    pub async fn start(config: Config) -> io::Result<Server> {
        let broker = Broker::new(config);
        let mut local_addrs = Vec::new();
        for addr in broker.config.listen.clone() {
            let listener = tcp::bind(addr)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            local_addrs.push(listener.local_addr()?);
            broker.tasks.spawn(tcp::run(listener, broker.clone()));
        }
        Ok(Server {
            broker,
            local_addrs,
        })
    }

    /// The first listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.local_addrs[0]
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
    }
}
