//! Adopting the sessions of a node that left without handing them over (a crash, a kill, a
//! cut cable): with sessions in Redis, the surviving nodes split them among themselves by the
//! same hash as a drain's hand-off, read each from Redis and PostgreSQL, and route for it
//! again, so messages published for an offline device keep being queued until it returns.
//!
//! Each adoption is a claim in Redis just after the departed node's own claim: a connection
//! the client made anywhere since wins over it (the session is not adopted), and a connection
//! the departed node still holds across a partition is closed when that node hears of it.
//!
//! A node that drained first hands everything over itself and leaves nothing to adopt. A node
//! that comes back restores only the sessions it still owns; an adopted one belongs to its
//! adopter now. Without Redis the departed node's sessions are on its own disk: they return
//! with it.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::KEPT_WHILE_DOWN;
use super::handover::pick_node;
use super::restart::GIVEN_UP_KEPT;
use crate::broker::Broker;

/// How long a peer must stay unlinked before its sessions are adopted: a link that drops and
/// comes straight back is not a departure.
const GRACE: Duration = Duration::from_secs(1);

impl Broker {
    /// The link `link_id` to `peer` went down: adopts our share of its sessions unless it
    /// comes back within the grace. When its routes were `kept` (a level-5 link), what is
    /// forwarded to it waits for its return until its sessions are adopted here or elsewhere,
    /// or for [`KEPT_WHILE_DOWN`] when nobody adopts them; then it is given up.
    pub fn peer_down(self: &Arc<Self>, peer: &str, link_id: u64, kept: bool) {
        let Some(cluster) = self.cluster.get() else {
            return;
        };
        let adopts = self.persist.as_ref().is_some_and(|p| p.sessions_shared());
        if !adopts && !kept {
            return;
        }
        if adopts && !cluster.has_majority() {
            // The others may adopt ours meanwhile: checked when a link comes up again.
            cluster.suspect_owners();
        }
        let (broker, peer, cluster) = (self.clone(), peer.to_owned(), cluster.clone());
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            tokio::select! {
                _ = tokio::time::sleep(GRACE) => {}
                _ = broker.drain.cancelled() => return,
            }
            if cluster.is_up(&peer) {
                return;
            }
            // On the minority side of a partition, the others may be fine: leave their
            // sessions to the majority, which adopts ours.
            if adopts && !cluster.has_majority() {
                warn!(
                    peer,
                    "peer unreachable, but so is most of the cluster: its sessions are not adopted"
                );
            } else if adopts {
                let adopted = broker.adopt_sessions_of(&peer).await;
                if adopted > 0 {
                    info!(
                        peer,
                        sessions = adopted,
                        "sessions of a departed node adopted"
                    );
                }
                // Its sessions are now here or on the other nodes, which route for them; what
                // it had not committed goes to them.
                broker.reroute_for(&peer, link_id).await;
                return;
            }
            if !kept {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(started + KEPT_WHILE_DOWN) => {}
                _ = broker.drain.cancelled() => {}
            }
            if cluster.give_up(&peer, link_id) == 0 {
                return;
            }
            // What was given up is kept for its return a while longer (`restart.rs`).
            let (Some(ledger), at) = (cluster.ledger(&peer), std::time::Instant::now()) else {
                return;
            };
            tokio::select! {
                _ = tokio::time::sleep(GIVEN_UP_KEPT) => {}
                _ = broker.shutdown.cancelled() => return,
            }
            ledger.drop_kept_since(at);
        });
    }

    /// Installs the sessions Redis says `departed` owns and that hash to this node among the
    /// nodes still linked. Returns how many.
    pub async fn adopt_sessions_of(self: &Arc<Self>, departed: &str) -> usize {
        let (Some(p), Some(cluster)) = (&self.persist, self.cluster.get()) else {
            return 0;
        };
        let stores = p.committer().stores().clone();
        let records = match stores.sessions.load().await {
            Ok(r) => r,
            Err(e) => {
                warn!(departed, error = %e, "cannot read the sessions of a departed node");
                return 0;
            }
        };
        // Nodes that are draining take nothing.
        let mut nodes: Vec<String> = cluster
            .up_peers()
            .into_iter()
            .filter(|p| !cluster.is_draining(p))
            .collect();
        nodes.push(self.config.node_id.clone());
        let mut adopted = 0;
        for record in records {
            if record.owner_node != departed
                || pick_node(&record.client_id, &nodes) != self.config.node_id
                || self.sessions.get(&record.client_id).is_some()
                // Its client connected to another node lately: that node has it or is
                // fetching it.
                || cluster.claim_of(&record.client_id).is_some_and(|(at, node)| {
                    node != departed && rookery_store::now_ms().saturating_sub(at) < 30_000
                })
            {
                continue;
            }
            // Its client may have come back somewhere meanwhile (and that node owns it now).
            let record = match stores.sessions.get(&record.client_id).await {
                Ok(Some(now)) if now.owner_node == departed => now,
                _ => continue,
            };
            let (entries, incoming) = match stores.queue.load(&record.client_id).await {
                Ok(q) => q,
                Err(e) => {
                    warn!(client_id = %record.client_id, error = %e,
                        "cannot read an adopted session's queue");
                    continue;
                }
            };
            // Claimed just after the departed node's own claim: it stands unless the client
            // connected somewhere since (that node has the session or is fetching it), and
            // a connection the departed node still holds across a partition is closed when
            // it hears of it.
            let node = self.config.node_id.as_str();
            let at = record.epoch.saturating_add(1);
            match stores.sessions.claim(&record.client_id, node, at).await {
                Ok(rookery_store::Claimed::Stands) => {}
                Ok(rookery_store::Claimed::Newer { .. }) => continue,
                Err(e) => {
                    warn!(client_id = %record.client_id, error = %e,
                        "cannot claim an adopted session");
                    continue;
                }
            }
            let arrival = super::handover::Arrival::Adopted(departed);
            if self.install(record, entries, incoming, arrival).is_some() {
                adopted += 1;
            }
        }
        adopted
    }
}
