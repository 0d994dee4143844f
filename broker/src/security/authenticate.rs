//! The security checks of a CONNECT. [`authenticate`], in order:
//! 1. bans: the client id, address or username is banned (flapping or failed logins): 0x8A;
//! 2. a verified client certificate without the configured identity field: 0x87;
//! 3. identity: a verified client certificate (with `cert_identity`) names the user, or
//! 4. the password file verifies username and password on the blocking pool: 0x86 when wrong,
//!    and failures count towards a ban of the address and of the username;
//! 5. otherwise (no credentials, or no password file to check them against) the client is
//!    let in only when anonymous access is allowed or it presented a verified certificate:
//!    0x87 if not;
//!
//! Then, once the client id is final (assigned when the client sent none), [`admit`]:
//! 6. the will topic needs write access: 0x87;
//! 7. flapping: this CONNECT is one too many for the client id (or address) in the window,
//!    counted only for clients that authenticated, so that nobody can get another's client
//!    id banned by connecting with it and failing.
//!
//! Every refusal is logged with the client id, address and username, never the password.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytestring::ByteString;
use rookery_auth::password::Verify;
use rookery_codec::{Connect, reason};
use tracing::{info, warn};

use super::Security;
use super::cluster_bans::Kind;
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
    let addr_key = counted_address(info, &connect.client_id);

    if config.cert_identity_as_client_id
        && let Some(identity) = &info.cert_identity
    {
        connect.client_id = ByteString::from(identity.as_str());
    }
    let id_key = key("id/", &connect.client_id);
    // Failed-login bans are for password users: a certificate identity cannot be guessed, and
    // must not be lockable by someone failing passwords under its name.
    let user_key = match &info.cert_identity {
        Some(_) => None,
        None => connect.username.as_deref().map(|u| key("user/", u)),
    };

    if let Some(key) = banned(security, now, [&id_key, &addr_key], user_key.as_deref()) {
        broker
            .metrics
            .connects_banned_total
            .fetch_add(1, Ordering::Relaxed);
        info!(key, "refused CONNECT: banned");
        return Err(refusal(reason::BANNED, "banned"));
    }
    if config.cert_identity.is_some() && info.cert_verified && info.cert_identity.is_none() {
        broker
            .metrics
            .auth_failures_total
            .fetch_add(1, Ordering::Relaxed);
        info!(peer = %info.peer, "refused CONNECT: the client certificate has no {:?} identity",
            config.cert_identity);
        return Err(refusal(
            reason::NOT_AUTHORIZED,
            "certificate without the configured identity field",
        ));
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
            return Err(failed(broker, info, &addr_key, user_key.as_deref(), "no password").await);
        };
        // Bounded: under a flood of logins, clients wait at most the connect timeout for a
        // hashing slot, then get "server busy".
        let deadline = Duration::from_secs(config.connect_timeout_secs);
        let permit = tokio::select! {
            p = tokio::time::timeout(deadline, security.workers.acquire()) => p,
            _ = broker.shutdown.cancelled() => return Err(refusal(reason::SERVER_UNAVAILABLE, "shutting down")),
        };
        let Ok(Ok(_permit)) = permit else {
            return Err(refusal(
                reason::SERVER_BUSY,
                "no password worker free in time",
            ));
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
                )
                .await);
            }
            Ok(Verify::UnknownUser) => {
                return Err(
                    failed(broker, info, &addr_key, user_key.as_deref(), "unknown user").await,
                );
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
    Ok(identity)
}

/// The checks that need the final client id: the will topic, then flapping.
pub async fn admit(
    broker: &Broker,
    connect: &Connect,
    info: &ConnInfo,
    assigned: bool,
    identity: &Identity,
) -> Result<(), Refusal> {
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
    if assigned {
        // A fresh random id every time: nothing to count.
        return Ok(());
    }
    let security = &broker.security;
    let now = Instant::now();
    let id_key = key("id/", &connect.client_id);
    let addr_key = counted_address(info, &connect.client_id);
    let mut by_id = security.flapping.record(&id_key, now);
    let mut by_addr = security.flapping_addr.record(&addr_key, now);
    if let Some(cluster) = security.cluster_bans() {
        if let Some(limits) = security.flapping.config() {
            by_id = by_id.or(cluster.record(Kind::Flapping, &id_key, limits).await);
        }
        if let Some(limits) = security.flapping_addr.config() {
            by_addr = by_addr.or(cluster.record(Kind::Flapping, &addr_key, limits).await);
        }
    }
    if let Some(until) = by_id.or(by_addr) {
        broker
            .metrics
            .bans_flapping_total
            .fetch_add(1, Ordering::Relaxed);
        warn!(client_id = %connect.client_id, by_address = by_id.is_none(),
            ban_secs = until.saturating_duration_since(now).as_secs(),
            "flapping: too many connections in the window; banned");
        return Err(refusal(reason::BANNED, "flapping"));
    }
    Ok(())
}

/// Longest key kept in a tracker: longer usernames and client ids are cut, so that an attacker
/// cannot make each remembered key cost kilobytes.
const MAX_KEY: usize = 256;

/// `prefix` + `name`, cut to [`MAX_KEY`] bytes at a character boundary.
fn key(prefix: &str, name: &str) -> String {
    let mut end = name.len().min(MAX_KEY);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{prefix}{}", &name[..end])
}

/// The key failures and flapping are counted against for the connection's address: the
/// address itself, or, where it could be forged, the client id.
fn counted_address(info: &ConnInfo, client_id: &str) -> String {
    if info.address_verified {
        address_key(info.peer.ip())
    } else {
        key("unverified/", client_id)
    }
}

/// The block an address is limited as: an IPv4 address (also when mapped into IPv6) alone,
/// an IPv6 address by its /64 (one host or network usually holds a whole /64). Pure.
pub fn address_block(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from_bits(
                v6.to_bits() & !u128::from(u64::MAX),
            )),
        },
    }
}

/// The ban key of an address: IPv4 as is, IPv6 by its /64 (one subscriber's usual allocation,
/// so that an attacker cannot step through addresses to dodge a ban).
pub fn address_key(ip: IpAddr) -> String {
    match address_block(ip) {
        IpAddr::V4(v4) => format!("addr/{v4}"),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("addr/{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// The first active ban among the keys.
fn banned<'k>(
    security: &Security,
    now: Instant,
    keys: [&'k String; 2],
    user_key: Option<&'k str>,
) -> Option<&'k str> {
    let [id_key, addr_key] = keys;
    let cluster = |k: &str| {
        security
            .cluster_bans()
            .is_some_and(|c| c.banned_until(k, now).is_some())
    };
    if security.flapping.is_banned(id_key, now) || cluster(id_key) {
        return Some(id_key);
    }
    if security.flapping_addr.is_banned(addr_key, now)
        || security.failures.is_banned(addr_key, now)
        || cluster(addr_key)
    {
        return Some(addr_key);
    }
    user_key.filter(|k| security.failures.is_banned(k, now) || cluster(k))
}

/// Counts and logs a failed login; bans the address or username past the limit (this node's,
/// or with Redis the cluster's).
async fn failed(
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
    let failures = &broker.security.failures;
    let mut banned = failures.record(addr_key, now).map(|u| (addr_key, u));
    if let Some(k) = user_key
        && let Some(u) = failures.record(k, now)
    {
        banned.get_or_insert((k, u));
    }
    if let (Some(cluster), Some(limits)) = (broker.security.cluster_bans(), failures.config()) {
        for k in std::iter::once(addr_key).chain(user_key) {
            if let Some(u) = cluster.record(Kind::Auth, k, limits).await {
                banned.get_or_insert((k, u));
            }
        }
    }
    info!(peer = %info.peer, username = user_key.map_or("", |k| &k[5..]), why, "authentication failed");
    if let Some((key, until)) = banned {
        broker
            .metrics
            .bans_auth_total
            .fetch_add(1, Ordering::Relaxed);
        warn!(
            key,
            ban_secs = until.saturating_duration_since(now).as_secs(),
            "too many failed logins; banned"
        );
    }
    refusal(reason::BAD_USERNAME_OR_PASSWORD, why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_limited_alone_in_ipv4_and_by_their_64_in_ipv6() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(address_block(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(address_block(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(
            address_block(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            address_block(ip("2001:db8:1:2::1")),
            address_block(ip("2001:db8:1:2:ffff::9"))
        );
        assert_eq!(address_key(ip("192.0.2.7")), "addr/192.0.2.7");
        assert_eq!(address_key(ip("::ffff:192.0.2.7")), "addr/192.0.2.7");
        assert_eq!(
            address_key(ip("2001:db8:0:2:aaaa::1")),
            "addr/2001:db8:0:2::/64"
        );
    }
}
