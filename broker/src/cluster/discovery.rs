//! `peers_dns`: the StatefulSet's headless Service as the peer list. The name is resolved every
//! [`RESOLVE_EVERY`]; an address that appears gets a dial loop, one that disappears loses it
//! (a live link to it stays until it fails), so scaling up or down needs no restart.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use ahash::AHashMap;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Cluster;
use super::link::{self, LinkTls};
use crate::broker::Broker;

/// Time between two resolutions of `peers_dns`.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(5);

/// What changed between the addresses dialed and the addresses resolved.
pub fn diff(dialed: &BTreeSet<String>, resolved: &BTreeSet<String>) -> (Vec<String>, Vec<String>) {
    let added = resolved.difference(dialed).cloned().collect();
    let removed = dialed.difference(resolved).cloned().collect();
    (added, removed)
}

/// Resolves `name` (`host:port`) until `shutdown`, keeping one dial loop per address.
pub async fn run(
    broker: Arc<Broker>,
    cluster: Arc<Cluster>,
    name: String,
    tls: Option<Arc<LinkTls>>,
    shutdown: CancellationToken,
) {
    let mut dialing: AHashMap<String, CancellationToken> = AHashMap::new();
    let mut failing = false;
    let mut first_done = false;
    loop {
        let answer = tokio::net::lookup_host(name.as_str()).await;
        // Failing counts as answered: readiness must not wait for a DNS that does not work.
        let first = std::mem::replace(&mut first_done, true);
        match answer {
            Ok(addrs) => {
                failing = false;
                let resolved: BTreeSet<String> = addrs.map(|a| a.to_string()).collect();
                let dialed: BTreeSet<String> = dialing.keys().cloned().collect();
                let (added, removed) = diff(&dialed, &resolved);
                for addr in added {
                    info!(peer = %addr, dns = %name, "cluster peer found");
                    cluster.add_peer(&addr);
                    let stop = shutdown.child_token();
                    tokio::spawn(link::dial(
                        broker.clone(),
                        cluster.clone(),
                        addr.clone(),
                        tls.clone(),
                        stop.clone(),
                    ));
                    dialing.insert(addr, stop);
                }
                for addr in removed {
                    info!(peer = %addr, dns = %name, "cluster peer gone from DNS");
                    if let Some(stop) = dialing.remove(&addr) {
                        stop.cancel();
                    }
                    cluster.remove_peer(&addr);
                }
            }
            Err(e) => {
                if !failing {
                    warn!(dns = %name, error = %e, "cannot resolve peers_dns; the peers known stay");
                }
                failing = true;
            }
        }
        if !first {
            // After the first dials have their addresses registered.
            cluster.dns_resolved();
        }
        tokio::select! {
            _ = tokio::time::sleep(RESOLVE_EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_up_adds_and_scale_down_removes() {
        let set = |v: &[&str]| {
            v.iter()
                .map(|s| s.to_string())
                .collect::<BTreeSet<String>>()
        };
        let (added, removed) = diff(
            &set(&["10.0.0.1:4370", "10.0.0.2:4370"]),
            &set(&["10.0.0.1:4370", "10.0.0.3:4370"]),
        );
        assert_eq!(added, vec!["10.0.0.3:4370"]);
        assert_eq!(removed, vec!["10.0.0.2:4370"]);
        let (added, removed) = diff(&set(&[]), &set(&[]));
        assert!(added.is_empty() && removed.is_empty());
    }
}
