//! Ownership of client ids through a session store the nodes share (Redis).
//!
//! The links settle which connection of a client id stands (`Claim` frames; newest wins).
//! A partition of the links cannot: so with sessions in Redis every claim also goes there
//! ([`rookery_store::SessionStore::claim`], a compare-and-set on `(ms, node id)`), and every
//! node follows the claims the others make there ([`watch`]). A node that learns of a newer
//! claim, over a link or from Redis, gives its connection and its copy of the session up, as
//! before. Session writes carry the claim they were made under, and Redis refuses those of an
//! older claim, so a node that lost a session cannot overwrite the new owner's record.

use std::sync::Arc;

use rookery_store::Claimed;
use tokio::sync::mpsc;
use tracing::debug;

use crate::broker::Broker;
use crate::session::Session;

impl Broker {
    /// A connection here claimed `session`'s client id: the claim goes to the shared session
    /// store too, and a newer claim found there wins as one from a link would.
    pub(crate) fn claim_in_store(self: &Arc<Self>, session: &Session) {
        let Some(p) = &self.persist else {
            return;
        };
        if !p.sessions_shared() {
            return;
        }
        let stores = p.committer().stores().clone();
        let (broker, client_id, at_ms) = (
            self.clone(),
            session.client_id.to_string(),
            session.claimed(),
        );
        tokio::spawn(async move {
            let node = broker.config.node_id.as_str();
            match stores.sessions.claim(&client_id, node, at_ms).await {
                Ok(Claimed::Stands) => {}
                Ok(Claimed::Newer { node: newer, epoch }) if newer != node => {
                    broker.remote_claim(&newer, &client_id, epoch);
                }
                // A newer connection here claimed it meanwhile.
                Ok(Claimed::Newer { .. }) => {}
                Err(e) => debug!(client_id, error = %e, "claim not recorded in the session store"),
            }
        });
    }
}

/// Follows the claims other nodes make in the shared session store until shutdown: each is
/// handled as a `Claim` from a link. Nothing to do without a shared session store.
pub fn watch(broker: &Arc<Broker>) {
    let Some(p) = &broker.persist else {
        return;
    };
    if !p.sessions_shared() {
        return;
    }
    let stores = p.committer().stores().clone();
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        if let Err(e) = stores.sessions.watch_claims(tx).await {
            tracing::warn!(error = %e, "claims in the session store not followed");
        }
    });
    let broker = broker.clone();
    tokio::spawn(async move {
        loop {
            let notice = tokio::select! {
                n = rx.recv() => n,
                _ = broker.shutdown.cancelled() => return,
            };
            let Some(notice) = notice else { return };
            if notice.node != broker.config.node_id {
                broker.remote_claim(&notice.node, &notice.client_id, notice.epoch);
            }
        }
    });
}
