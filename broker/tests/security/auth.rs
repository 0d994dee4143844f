//! Password files, anonymous access, failed-login bans, flapping bans, and password-file
//! reloads while clients are connected.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rookery_auth::password::{PasswordFile, Scheme};
use rookery_codec::*;

use crate::support::*;

/// Fast hashes for tests; the format is Mosquitto's `$7$`.
const FAST: Scheme = Scheme::Pbkdf2Sha512 { iterations: 1000 };

fn password_file(dir: &Path, users: &[(&str, &str)]) -> PathBuf {
    let mut file = PasswordFile::parse("").unwrap();
    for (user, password) in users {
        file.set(user, password.as_bytes(), FAST).unwrap();
    }
    let path = dir.join("passwd");
    std::fs::write(&path, file.render()).unwrap();
    path
}

/// `n` CONNECTs as `alice` with a wrong password, each refused as such.
async fn fail_logins(addr: std::net::SocketAddr, n: usize) {
    for i in 0..n {
        let (_r, ack) = Raw::try_connect(
            addr,
            login(Protocol::V5, &format!("x{i}"), Some("alice"), Some("guess")),
        )
        .await;
        assert_eq!(ack.code, reason::BAD_USERNAME_OR_PASSWORD, "attempt {i}");
    }
}

fn login(protocol: Protocol, id: &str, user: Option<&str>, password: Option<&str>) -> Connect {
    let mut c = connect_packet(protocol, id, true);
    c.username = user.map(Into::into);
    c.password = password.map(|p| bytes::Bytes::copy_from_slice(p.as_bytes()));
    c
}

#[tokio::test]
async fn passwords_are_checked_and_anonymous_is_refused_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = password_file(dir.path(), &[("alice", "wonderland"), ("bob", "builder")]);
    let server = start(|c| c.password_file = Some(file)).await;
    let addr = server.addr();
    let (_a, ack) = Raw::try_connect(
        addr,
        login(Protocol::V5, "a", Some("alice"), Some("wonderland")),
    )
    .await;
    assert_eq!(ack.code, 0);
    let (_b, ack) = Raw::try_connect(
        addr,
        login(Protocol::V5, "b", Some("alice"), Some("builder")),
    )
    .await;
    assert_eq!(ack.code, reason::BAD_USERNAME_OR_PASSWORD);
    let (_c, ack) =
        Raw::try_connect(addr, login(Protocol::V311, "c", Some("carol"), Some("x"))).await;
    assert_eq!(ack.code, reason::v3::BAD_USERNAME_OR_PASSWORD);
    let (_d, ack) = Raw::try_connect(addr, login(Protocol::V5, "d", None, None)).await;
    assert_eq!(ack.code, reason::NOT_AUTHORIZED);
    let (_e, ack) = Raw::try_connect(addr, login(Protocol::V311, "e", None, None)).await;
    assert_eq!(ack.code, reason::v3::NOT_AUTHORIZED);
    let (_f, ack) = Raw::try_connect(addr, login(Protocol::V5, "f", Some("bob"), None)).await;
    assert_eq!(ack.code, reason::BAD_USERNAME_OR_PASSWORD);
}

#[tokio::test]
async fn allow_anonymous_lets_clients_without_credentials_in() {
    let dir = tempfile::tempdir().unwrap();
    let file = password_file(dir.path(), &[("alice", "wonderland")]);
    let server = start(|c| {
        c.password_file = Some(file);
        c.allow_anonymous = Some(true);
    })
    .await;
    let (_a, ack) = Raw::try_connect(server.addr(), login(Protocol::V5, "anon", None, None)).await;
    assert_eq!(ack.code, 0);
    // Credentials, when given, are still checked.
    let (_b, ack) = Raw::try_connect(
        server.addr(),
        login(Protocol::V5, "b", Some("alice"), Some("no")),
    )
    .await;
    assert_eq!(ack.code, reason::BAD_USERNAME_OR_PASSWORD);
}

#[tokio::test]
async fn argon2id_entries_verify() {
    let dir = tempfile::tempdir().unwrap();
    let mut file = PasswordFile::parse("").unwrap();
    file.set("dev", b"s3cret", Scheme::Argon2id).unwrap();
    let path = dir.path().join("passwd");
    std::fs::write(&path, file.render()).unwrap();
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .contains("$argon2id$")
    );
    let server = start(|c| c.password_file = Some(path)).await;
    let (_a, ack) = Raw::try_connect(
        server.addr(),
        login(Protocol::V5, "d", Some("dev"), Some("s3cret")),
    )
    .await;
    assert_eq!(ack.code, 0);
}

#[tokio::test]
async fn repeated_failures_ban_the_address_and_the_ban_can_be_lifted() {
    let dir = tempfile::tempdir().unwrap();
    let file = password_file(dir.path(), &[("alice", "wonderland")]);
    let server = start(|c| {
        c.password_file = Some(file);
        c.auth_fail_max = 2;
    })
    .await;
    let addr = server.addr();
    fail_logins(addr, 3).await;
    // Banned now, even with the right password.
    let (_r, ack) = Raw::try_connect(
        addr,
        login(Protocol::V5, "ok", Some("alice"), Some("wonderland")),
    )
    .await;
    assert_eq!(ack.code, reason::BANNED);
    let bans = server.broker.security.bans(std::time::Instant::now());
    assert!(bans.iter().any(|(k, _)| k == "addr/127.0.0.1"), "{bans:?}");
    assert!(server.broker.security.clear_ban("addr/127.0.0.1"));
    server.broker.security.clear_ban("user/alice");
    let (_r, ack) = Raw::try_connect(
        addr,
        login(Protocol::V5, "ok", Some("alice"), Some("wonderland")),
    )
    .await;
    assert_eq!(ack.code, 0);
}

#[tokio::test]
async fn a_flapping_client_id_is_banned() {
    let server = start(|c| c.flapping_max = 3).await;
    for _ in 0..3 {
        let (raw, ack) =
            Raw::try_connect(server.addr(), login(Protocol::V5, "flap", None, None)).await;
        assert_eq!(ack.code, 0);
        raw.disconnect().await;
    }
    let (_r, ack) = Raw::try_connect(server.addr(), login(Protocol::V5, "flap", None, None)).await;
    assert_eq!(ack.code, reason::BANNED);
    // Other client ids are not affected.
    let (_r, ack) = Raw::try_connect(server.addr(), login(Protocol::V5, "calm", None, None)).await;
    assert_eq!(ack.code, 0);
}

#[tokio::test]
async fn deleting_a_user_disconnects_it_and_a_bad_file_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = password_file(dir.path(), &[("alice", "wonderland"), ("bob", "builder")]);
    let server = start(|c| {
        c.password_file = Some(file.clone());
        c.reload_interval_secs = 0;
    })
    .await;
    let (mut alice, _) = Raw::connect_with(
        server.addr(),
        login(Protocol::V5, "a", Some("alice"), Some("wonderland")),
    )
    .await;
    let (mut bob, _) = Raw::connect_with(
        server.addr(),
        login(Protocol::V5, "b", Some("bob"), Some("builder")),
    )
    .await;

    // A file that does not parse: refused, the old users stay.
    std::fs::write(&file, "alice:$7$oops\nnot a line\n").unwrap();
    server.reload().await;
    let (_r, ack) = Raw::try_connect(
        server.addr(),
        login(Protocol::V5, "a2", Some("alice"), Some("wonderland")),
    )
    .await;
    assert_eq!(ack.code, 0);

    // Bob is deleted: his live connection is closed with 0x87; Alice stays.
    password_file(dir.path(), &[("alice", "wonderland")]);
    server.reload().await;
    let d = bob.expect_closed().await.expect("DISCONNECT");
    assert_eq!(d.reason, reason::NOT_AUTHORIZED);
    alice.send(Packet::PingReq).await;
    assert!(matches!(alice.recv().await, Packet::PingResp));
    let (_r, ack) = Raw::try_connect(
        server.addr(),
        login(Protocol::V5, "b2", Some("bob"), Some("builder")),
    )
    .await;
    assert_eq!(ack.code, reason::BAD_USERNAME_OR_PASSWORD);
    let _ = Duration::ZERO;
}

#[tokio::test]
async fn failed_logins_under_a_client_id_do_not_get_it_banned_for_flapping() {
    let dir = tempfile::tempdir().unwrap();
    let file = password_file(dir.path(), &[("dev", "right")]);
    let server = start(|c| {
        c.password_file = Some(file);
        c.flapping_max = 2;
        c.auth_fail_max = 0;
    })
    .await;
    for _ in 0..5 {
        let (_r, ack) = Raw::try_connect(
            server.addr(),
            login(Protocol::V5, "device-1", Some("dev"), Some("wrong")),
        )
        .await;
        assert_eq!(ack.code, reason::BAD_USERNAME_OR_PASSWORD);
    }
    let (_r, ack) = Raw::try_connect(
        server.addr(),
        login(Protocol::V5, "device-1", Some("dev"), Some("right")),
    )
    .await;
    assert_eq!(ack.code, 0, "the device's own login is not banned");
}

#[tokio::test]
async fn a_username_ban_holds_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let file = password_file(dir.path(), &[("alice", "a"), ("bob", "b")]);
    let server = start(|c| {
        c.password_file = Some(file);
        c.auth_fail_max = 2;
    })
    .await;
    for i in 0..3 {
        Raw::try_connect(
            server.addr(),
            login(Protocol::V5, &format!("x{i}"), Some("alice"), Some("no")),
        )
        .await;
    }
    // Lift the address ban: alice stays banned, bob gets in.
    assert!(server.broker.security.clear_ban("addr/127.0.0.1"));
    let (_r, ack) = Raw::try_connect(
        server.addr(),
        login(Protocol::V5, "a", Some("alice"), Some("a")),
    )
    .await;
    assert_eq!(ack.code, reason::BANNED);
    let (_r, ack) = Raw::try_connect(
        server.addr(),
        login(Protocol::V5, "b", Some("bob"), Some("b")),
    )
    .await;
    assert_eq!(ack.code, 0);
}

#[tokio::test]
async fn one_user_cannot_take_over_or_resume_another_users_session() {
    let dir = tempfile::tempdir().unwrap();
    let file = password_file(dir.path(), &[("alice", "a"), ("mallory", "m")]);
    let server = start(|c| c.password_file = Some(file)).await;
    let addr = server.addr();
    let mut alice_login = login(Protocol::V5, "shared-id", Some("alice"), Some("a"));
    alice_login.clean_start = false;
    alice_login.properties.session_expiry_interval = Some(600);
    let (mut alice, _) = Raw::connect_with(addr, alice_login.clone()).await;
    assert_eq!(
        alice.subscribe("alice/inbox", QoS::AtLeastOnce).await,
        vec![1]
    );

    // Live: refused, and Alice stays connected.
    let mut mallory_login = login(Protocol::V5, "shared-id", Some("mallory"), Some("m"));
    mallory_login.clean_start = false;
    mallory_login.properties.session_expiry_interval = Some(600);
    let (_m, ack) = Raw::try_connect(addr, mallory_login.clone()).await;
    assert_eq!(ack.code, reason::NOT_AUTHORIZED);
    alice.send(Packet::PingReq).await;
    assert!(matches!(alice.recv().await, Packet::PingResp));

    // Offline: Mallory gets a clean session, not Alice's subscription or queue.
    alice.disconnect().await;
    let (mut publ, _) =
        Raw::connect_with(addr, login(Protocol::V5, "p", Some("alice"), Some("a"))).await;
    publ.publish("alice/inbox", b"for alice", QoS::AtLeastOnce, false, 1)
        .await;
    let (mut mallory, ack) = Raw::connect_with(addr, mallory_login).await;
    assert!(!ack.session_present);
    mallory
        .expect_silence(std::time::Duration::from_millis(300))
        .await;
}

#[tokio::test]
async fn bans_are_counted_listed_and_lifted_through_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let file = password_file(dir.path(), &[("alice", "wonderland")]);
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "s3cret-admin-token-0123456789\n").unwrap();
    let server = start(|c| {
        c.password_file = Some(file);
        c.auth_fail_max = 2;
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        c.admin_token_file = Some(token_file);
    })
    .await;
    let (addr, admin) = (server.addr(), server.metrics_addr.unwrap());
    fail_logins(addr, 3).await;
    let (_r, ack) = Raw::try_connect(
        addr,
        login(Protocol::V311, "ok", Some("alice"), Some("wonderland")),
    )
    .await;
    assert_eq!(ack.code, 5, "3.1.1 has no 'banned': not authorized");

    let m = scrape(admin).await;
    assert_eq!(value(&m, "rookery_auth_failures_total"), 3.0);
    assert_eq!(
        value(
            &m,
            "rookery_connects_refused_total{reason=\"bad_credentials\"}"
        ),
        3.0
    );
    assert_eq!(
        value(&m, "rookery_connects_refused_total{reason=\"banned\"}"),
        1.0
    );
    assert!(value(&m, "rookery_bans_total{reason=\"auth\"}") >= 1.0);
    assert_eq!(
        value(&m, "rookery_bans_active"),
        2.0,
        "address and username"
    );

    // Without the token, nothing.
    assert_eq!(http(admin, "GET", "/admin/bans", &[]).await.0, 401);
    let wrong = [("Authorization", "Bearer guess-guess-guess-guess")];
    assert_eq!(http(admin, "GET", "/admin/bans", &wrong).await.0, 401);
    let auth = [("Authorization", "Bearer s3cret-admin-token-0123456789")];
    let (status, body) = http(admin, "GET", "/admin/bans", &auth).await;
    assert_eq!(status, 200);
    let bans: serde_json::Value = serde_json::from_str(&body).unwrap();
    let keys: Vec<&str> = bans
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["key"].as_str().unwrap())
        .collect();
    assert!(keys.contains(&"addr/127.0.0.1"), "{body}");
    assert!(keys.contains(&"user/alice"), "{body}");
    assert!(bans[0]["expires_in_secs"].as_u64().unwrap() > 200);

    for key in ["addr/127.0.0.1", "user/alice"] {
        let path = format!("/admin/bans/{key}");
        assert_eq!(http(admin, "DELETE", &path, &auth).await.0, 204);
        assert_eq!(http(admin, "DELETE", &path, &auth).await.0, 404);
    }
    let (_r, ack) = Raw::try_connect(
        addr,
        login(Protocol::V5, "ok", Some("alice"), Some("wonderland")),
    )
    .await;
    assert_eq!(ack.code, 0);
    assert_eq!(value(&scrape(admin).await, "rookery_bans_active"), 0.0);
}

#[tokio::test]
async fn the_admin_api_is_off_without_a_token_file() {
    let server = start(|c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let admin = server.metrics_addr.unwrap();
    let (status, body) = http(admin, "GET", "/admin/bans", &[]).await;
    assert_eq!(status, 404);
    assert!(body.contains("admin_token_file"), "{body}");
    // A token file too short to be a secret is a configuration error naming the key.
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("t");
    std::fs::write(&short, "abc").unwrap();
    let c = rookery_broker::Config {
        admin_token_file: Some(short),
        ..rookery_broker::Config::default()
    };
    let err = c.admin_token().unwrap_err().to_string();
    assert!(err.contains("admin_token_file"), "{err}");
}

/// Two nodes sharing one Redis, as a cluster: each gets its own data directory.
async fn two_nodes(
    redis: &str,
    cluster: &str,
    tweak: impl Fn(&mut rookery_broker::Config) + Clone,
) -> (
    rookery_broker::Server,
    rookery_broker::Server,
    Vec<tempfile::TempDir>,
) {
    let mut servers = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let (data, url, cluster, tweak) = (
            dir.path().to_owned(),
            redis.to_owned(),
            cluster.to_owned(),
            tweak.clone(),
        );
        servers.push(
            start(move |c| {
                c.durability = rookery_broker::config::DurabilityMode::Sync;
                c.data_dir = data;
                c.redis_url = Some(url);
                c.cluster_name = cluster;
                tweak(c);
            })
            .await,
        );
        dirs.push(dir);
    }
    let b = servers.pop().unwrap();
    let a = servers.pop().unwrap();
    (a, b, dirs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_failed_logins_spread_over_nodes_ban_on_every_node() {
    let redis = rookery_testkit::RedisServer::shared();
    let cluster = rookery_testkit::RedisServer::prefix();
    let dir = tempfile::tempdir().unwrap();
    let file = password_file(dir.path(), &[("alice", "wonderland")]);
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "cluster-admin-token-0123456789").unwrap();
    let (a, b, _dirs) = two_nodes(redis.url(), &cluster, move |c| {
        c.password_file = Some(file.clone());
        c.auth_fail_max = 3;
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        c.admin_token_file = Some(token_file.clone());
    })
    .await;
    // Two failures on each node: three allowed in the window, the fourth bans, cluster-wide,
    // although neither node alone saw more than two.
    for (i, node) in [&a, &b, &a, &b].into_iter().enumerate() {
        let (_r, ack) = Raw::try_connect(
            node.addr(),
            login(Protocol::V5, &format!("x{i}"), Some("alice"), Some("guess")),
        )
        .await;
        assert_eq!(ack.code, reason::BAD_USERNAME_OR_PASSWORD, "attempt {i}");
    }
    // Node A banned the address and the user at the fourth failure (which B saw); A learns of
    // it within a second.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    for node in [&b, &a] {
        loop {
            let (_r, ack) = Raw::try_connect(
                node.addr(),
                login(Protocol::V5, "ok", Some("alice"), Some("wonderland")),
            )
            .await;
            if ack.code == reason::BANNED {
                break;
            }
            assert_eq!(ack.code, 0);
            assert!(
                std::time::Instant::now() < deadline,
                "not banned on every node"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let keys: Vec<String> = a
        .broker
        .security
        .bans(std::time::Instant::now())
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(keys.contains(&"addr/127.0.0.1".to_owned()), "{keys:?}");
    assert!(keys.contains(&"user/alice".to_owned()), "{keys:?}");

    // Lifted through node B's admin API: lifted on A too.
    let auth = [("Authorization", "Bearer cluster-admin-token-0123456789")];
    for key in ["addr/127.0.0.1", "user/alice"] {
        let path = format!("/admin/bans/{key}");
        assert_eq!(
            http(b.metrics_addr.unwrap(), "DELETE", &path, &auth)
                .await
                .0,
            204
        );
    }
    // A keeps its own tracker's view until lifted there too; the cluster's copy is gone
    // within a second.
    a.broker.security.clear_ban("addr/127.0.0.1");
    a.broker.security.clear_ban("user/alice");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_r, ack) = Raw::try_connect(
            a.addr(),
            login(Protocol::V5, "ok", Some("alice"), Some("wonderland")),
        )
        .await;
        if ack.code == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still banned: {}",
            ack.code
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_a_client_id_flapping_across_nodes_is_banned_everywhere() {
    let redis = rookery_testkit::RedisServer::shared();
    let cluster = rookery_testkit::RedisServer::prefix();
    let (a, b, _dirs) = two_nodes(redis.url(), &cluster, |c| {
        c.flapping_max = 4;
        c.allow_anonymous = Some(true);
    })
    .await;
    // Alternating nodes: each sees at most three CONNECTs, the cluster five.
    let mut codes = Vec::new();
    for node in [&a, &b, &a, &b, &a] {
        let (_r, ack) =
            Raw::try_connect(node.addr(), connect_packet(Protocol::V5, "device-7", true)).await;
        codes.push(ack.code);
    }
    assert_eq!(codes, [0, 0, 0, 0, reason::BANNED]);
    // B learns of the ban within a second.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_r, ack) =
            Raw::try_connect(b.addr(), connect_packet(Protocol::V5, "device-7", true)).await;
        if ack.code == reason::BANNED {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "B lets device-7 in");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Another client id is not affected.
    let (_r, ack) =
        Raw::try_connect(b.addr(), connect_packet(Protocol::V5, "device-8", true)).await;
    assert_eq!(ack.code, 0);
    a.shutdown().await;
    b.shutdown().await;
}
