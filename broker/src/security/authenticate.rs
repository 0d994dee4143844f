//! The security checks of a CONNECT, in order:
//! 1. bans: the client id, address or username is banned (flapping or failed logins): 0x8A;
//! 2. flapping: this CONNECT is one too many for the client id (or address) in the window;
//! 3. identity: a verified client certificate (with `cert_identity`) names the user, or
//! 4. the password file verifies username and password on the blocking pool: 0x86 when wrong,
//!    and failures count towards a ban of the address and of the username;
//! 5. otherwise (no credentials, or no password file to check them against) the client is
//!    let in only when anonymous access is allowed or it presented a verified certificate:
//!    0x87 if not;
//! 6. the will topic needs write access: 0x87.
//!
//! Every refusal is logged with the client id, address and username, never the password.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytestring::ByteString;
use rookery_auth::password::Verify;
use rookery_codec::{Connect, reason};
use tracing::{info, warn};

use super::Security;
use crate::broker::Broker;
use crate::connection::ConnInfo;
use crate::connection::connect::Refusal;

/// Who a connection is, once its CONNECT is let in.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// The username ACLs apply to: from the certificate, or the CONNECT's username.
    pub username: Option<ByteString>,
    /// True when the password file vouched for `username` (a deleted user is disconnected
    /// at reload).
    pub by_password: bool,
}

fn refusal(code: u8, why: &'static str) -> Refusal {
    Refusal {
        code,
        connack_for_v3: true,
        why,
    }
}

/// Runs the checks; on success the CONNECT's client id may have been replaced by the
/// certificate identity (`cert_identity_as_client_id`).
pub async fn authenticate(
    broker: &Arc<Broker>,
    connect: &mut Connect,
    info: &ConnInfo,
) -> Result<Identity, Refusal> {
    let security = &broker.security;
    let config = &broker.config;
    let now = Instant::now();
    let addr_key = format!("addr/{}", info.peer.ip());

    if config.cert_identity_as_client_id
        && let Some(identity) = &info.cert_identity
    {
        connect.client_id = ByteString::from(identity.as_str());
    }
    let id_key = format!("id/{}", connect.client_id);
    let claimed_user = info
        .cert_identity
        .as_deref()
        .or(connect.username.as_deref());
    let user_key = claimed_user.map(|u| format!("user/{u}"));

    if let Some(key) = banned(security, now, [&id_key, &addr_key], user_key.as_deref()) {
        broker
            .metrics
            .connects_banned_total
            .fetch_add(1, Ordering::Relaxed);
        info!(key, "refused CONNECT: banned");
        return Err(refusal(reason::BANNED, "banned"));
    }
    if !connect.client_id.is_empty() {
        let mut flapping = security.flapping.lock();
        let by_id = flapping.record(&id_key, now);
        let by_addr = if config.flapping_max_per_address > 0 {
            security.flapping_addr.lock().record(&addr_key, now)
        } else {
            None
        };
        drop(flapping);
        if let Some(until) = by_id.or(by_addr) {
            broker.metrics.bans_total.fetch_add(1, Ordering::Relaxed);
            let which = if by_id.is_some() { &id_key } else { &addr_key };
            warn!(key = %which, peer = %info.peer, ban_secs = until.saturating_duration_since(now).as_secs(),
                "flapping: too many connections in the window; banned");
            return Err(refusal(reason::BANNED, "flapping"));
        }
    }

    // A verified client certificate authenticates even without `cert_identity`: only
    // devices holding a key the CA signed get this far.
    let trusted = security.anonymous || info.cert_verified;
    let identity = if let Some(cert_user) = &info.cert_identity {
        Identity {
            username: Some(ByteString::from(cert_user.as_str())),
            by_password: false,
        }
    } else if let (Some(passwords), Some(username)) = (security.passwords(), &connect.username) {
        let Some(password) = &connect.password else {
            return Err(failed(
                broker,
                info,
                &addr_key,
                user_key.as_deref(),
                "no password",
            ));
        };
        let Ok(_permit) = security.workers.acquire().await else {
            return Err(refusal(reason::SERVER_UNAVAILABLE, "shutting down"));
        };
        let (user, pass) = (username.to_string(), password.clone());
        let verdict = tokio::task::spawn_blocking(move || passwords.verify(&user, &pass)).await;
        match verdict {
            Ok(Verify::Ok) => Identity {
                username: Some(ByteString::from(&**username)),
                by_password: true,
            },
            Ok(Verify::WrongPassword) => {
                return Err(failed(
                    broker,
                    info,
                    &addr_key,
                    user_key.as_deref(),
                    "wrong password",
                ));
            }
            Ok(Verify::UnknownUser) => {
                return Err(failed(
                    broker,
                    info,
                    &addr_key,
                    user_key.as_deref(),
                    "unknown user",
                ));
            }
            Err(_) => return Err(refusal(reason::SERVER_UNAVAILABLE, "password check failed")),
        }
    } else if trusted {
        // Without a password file a username is a label for ACLs, as in Mosquitto.
        Identity {
            username: connect.username.as_deref().map(ByteString::from),
            by_password: false,
        }
    } else {
        broker
            .metrics
            .auth_failures_total
            .fetch_add(1, Ordering::Relaxed);
        info!(peer = %info.peer, client_id = %connect.client_id,
            "refused CONNECT: no credentials and anonymous access is not allowed");
        return Err(refusal(
            reason::NOT_AUTHORIZED,
            "anonymous access not allowed",
        ));
    };
    check_will(broker, connect, identity)
}

fn check_will(broker: &Broker, connect: &Connect, identity: Identity) -> Result<Identity, Refusal> {
    if let Some(will) = &connect.will
        && !broker.security.can_publish(
            identity.username.as_deref(),
            &connect.client_id,
            &will.topic,
        )
    {
        broker
            .metrics
            .publishes_denied_total
            .fetch_add(1, Ordering::Relaxed);
        info!(topic = %will.topic, username = identity.username.as_deref().unwrap_or(""),
            "refused CONNECT: the ACL does not allow publishing the will topic");
        return Err(refusal(reason::NOT_AUTHORIZED, "will topic not allowed"));
    }
    Ok(identity)
}

/// The first active ban among the keys.
fn banned<'k>(
    security: &Security,
    now: Instant,
    keys: [&'k String; 2],
    user_key: Option<&'k str>,
) -> Option<&'k str> {
    {
        let flapping = security.flapping.lock();
        if flapping.banned_until(keys[0], now).is_some() {
            return Some(keys[0]);
        }
    }
    if security
        .flapping_addr
        .lock()
        .banned_until(keys[1], now)
        .is_some()
    {
        return Some(keys[1]);
    }
    let failures = security.failures.lock();
    if failures.banned_until(keys[1], now).is_some() {
        return Some(keys[1]);
    }
    user_key.filter(|k| failures.banned_until(k, now).is_some())
}

/// Counts and logs a failed login; bans the address or username past the limit.
fn failed(
    broker: &Broker,
    info: &ConnInfo,
    addr_key: &str,
    user_key: Option<&str>,
    why: &'static str,
) -> Refusal {
    broker
        .metrics
        .auth_failures_total
        .fetch_add(1, Ordering::Relaxed);
    let now = Instant::now();
    let mut failures = broker.security.failures.lock();
    let mut banned = failures.record(addr_key, now).map(|u| (addr_key, u));
    if let Some(k) = user_key
        && let Some(u) = failures.record(k, now)
    {
        banned.get_or_insert((k, u));
    }
    drop(failures);
    info!(peer = %info.peer, username = user_key.map_or("", |k| &k[5..]), why, "authentication failed");
    if let Some((key, until)) = banned {
        broker.metrics.bans_total.fetch_add(1, Ordering::Relaxed);
        warn!(
            key,
            ban_secs = until.saturating_duration_since(now).as_secs(),
            "too many failed logins; banned"
        );
    }
    refusal(reason::BAD_USERNAME_OR_PASSWORD, why)
}
