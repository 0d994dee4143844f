//! Applying a reload to live clients: subscriptions the new ACL no longer allows are removed
//! (and those it now allows only in part are checked per message), and clients whose user was
//! deleted from the password file are disconnected (MQTT 5.0 reason 0x87).

use rookery_auth::acl::SubscribeDecision;
use rookery_codec::reason;
use tracing::{info, warn};

use super::Reloaded;
use crate::broker::Broker;

/// What applying a reload did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Revoked {
    /// Subscriptions removed.
    pub subscriptions: usize,
    /// Connections closed.
    pub connections: usize,
}

impl Broker {
    /// Re-reads the password and ACL files and applies what changed to live clients. Errors
    /// are logged (with file and line) and leave the rules in force.
    pub fn reload_security(&self) -> (Reloaded, Revoked) {
        let (reloaded, errors) = self.security.reload();
        for e in &errors {
            warn!(error = %e, "refused the new file; the rules in force stay");
        }
        let mut revoked = Revoked::default();
        if reloaded.acl {
            revoked.subscriptions = self.recheck_subscriptions();
            info!(
                removed_subscriptions = revoked.subscriptions,
                "ACL file reloaded"
            );
        }
        if reloaded.passwords {
            revoked.connections = self.disconnect_deleted_users();
            info!(disconnected = revoked.connections, "password file reloaded");
        }
        (reloaded, revoked)
    }

    /// Checks every subscription against the ACL in force; returns how many were removed.
    fn recheck_subscriptions(&self) -> usize {
        let mut removed = 0;
        self.router.write().retain(|session, filter, group, sub| {
            let username = session.username();
            match self
                .security
                .check_subscribe(username.as_deref(), &session.client_id, filter)
            {
                SubscribeDecision::Denied => {
                    info!(client_id = %session.client_id, filter, group = group.unwrap_or(""),
                        "subscription revoked by the reloaded ACL");
                    removed += 1;
                    false
                }
                SubscribeDecision::Allowed { check_each_message } => {
                    sub.acl_check = check_each_message;
                    true
                }
            }
        });
        removed
    }

    /// Disconnects clients authenticated as users the password file no longer has.
    fn disconnect_deleted_users(&self) -> usize {
        let mut closed = 0;
        for session in self.sessions.all() {
            if let Some(user) = session.password_user()
                && !self.security.user_exists(&user)
                && session.kick(reason::NOT_AUTHORIZED)
            {
                info!(client_id = %session.client_id, username = %user,
                    "disconnected: user removed from the password file");
                closed += 1;
            }
        }
        closed
    }
}
