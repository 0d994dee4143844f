//! Plain TCP listener.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::warn;

use crate::broker::Broker;
use crate::connection;

/// Binds a TCP listener.
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Accepts connections until shutdown. At `max_connections` open connections it stops
/// accepting (new clients wait in the kernel's backlog) until one closes.
pub async fn run(listener: TcpListener, broker: Arc<Broker>) {
    let limit = Arc::new(Semaphore::new(broker.config.max_connections));
    let shutdown = broker.shutdown.clone();
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = shutdown.cancelled() => return,
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.cancelled() => return,
        };
        let (socket, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Latency over throughput per packet: our own batching already coalesces writes.
        let _ = socket.set_nodelay(true);
        let broker = broker.clone();
        broker.tasks.clone().spawn(async move {
            let _permit = permit;
            let (reader, writer) = socket.into_split();
            connection::serve_split(reader, writer, peer, broker).await;
        });
    }
}
