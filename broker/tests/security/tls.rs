//! TLS listeners: key types, TLS 1.2 and 1.3, mutual TLS refusals, certificate identity,
//! and hot reload of the certificate files.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rookery_broker::listener::ListenerKind;
use rookery_broker::listener::identity::CertIdentity;
use rookery_codec::*;
use tempfile::TempDir;

use crate::pki::{self, Ca, Leaf};
use crate::support::*;

struct Tls {
    dir: TempDir,
    ca: Ca,
    server: rookery_broker::Server,
}

/// A broker with an mqtts listener (server certificate from `ca`, signed with `alg`);
/// `client_ca` enables client certificates.
async fn tls_broker(
    alg: &'static rcgen::SignatureAlgorithm,
    client_ca: Option<&Ca>,
    tweak: impl FnOnce(&mut rookery_broker::Config),
) -> Tls {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki::ca("Test CA");
    let leaf = ca.server(alg);
    let cert = pki::write(dir.path(), "tls.crt", &leaf.cert_pem);
    let key = pki::write(dir.path(), "tls.key", &leaf.key_pem);
    let ca_file = client_ca.map(|c| pki::write(dir.path(), "ca.crt", &c.pem));
    let server = start(|c| {
        c.tls_listen = vec!["127.0.0.1:0".parse().unwrap()];
        c.cert = Some(cert);
        c.key = Some(key);
        c.ca = ca_file;
        tweak(c);
    })
    .await;
    Tls { dir, ca, server }
}

impl Tls {
    fn addr(&self) -> std::net::SocketAddr {
        self.server.addr_of(ListenerKind::Mqtts).unwrap()
    }

    /// Connects over TLS and sends CONNECT; `None` when the TLS or MQTT exchange fails.
    async fn mqtt(&self, leaf: Option<&Leaf>, connect: Connect) -> Option<(Raw, ConnAck)> {
        let stream = pki::tls_connect(&pki::connector(&self.ca, leaf), self.addr())
            .await
            .ok()?;
        let mut raw = Raw::over(stream, connect.protocol);
        raw.send(Packet::Connect(Box::new(connect))).await;
        match raw.recv_within(WAIT).await? {
            Packet::ConnAck(ack) => Some((raw, ack)),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn mqtt_over_tls_with_each_key_type() {
    for alg in [
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &rcgen::PKCS_ED25519,
    ] {
        let t = tls_broker(alg, None, |_| {}).await;
        let (mut sub, ack) = t
            .mqtt(None, connect_packet(Protocol::V5, "tls-sub", true))
            .await
            .expect("TLS connect");
        assert_eq!(ack.code, 0);
        assert_eq!(sub.subscribe("t/#", QoS::AtLeastOnce).await, vec![1]);
        // A plain TCP publisher reaches the TLS subscriber.
        let (mut publ, _) = Raw::connect(t.server.addr(), Protocol::V311, "plain", true).await;
        publ.publish("t/1", b"over tls", QoS::AtLeastOnce, false, 1)
            .await;
        assert_eq!(&sub.recv_publish().await.payload[..], b"over tls");
    }
}

#[tokio::test]
async fn tls_1_2_and_1_3_are_both_served() {
    let t = tls_broker(&rcgen::PKCS_ECDSA_P256_SHA256, None, |_| {}).await;
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let connector = pki::connector_versions(&t.ca, None, &[version]);
        let stream = pki::tls_connect(&connector, t.addr()).await.unwrap();
        assert_eq!(stream.get_ref().1.protocol_version(), Some(version.version));
        let mut raw = Raw::over(stream, Protocol::V311);
        let ack = raw
            .handshake(connect_packet(Protocol::V311, "v", true))
            .await;
        assert_eq!(ack.code, 0);
    }
}

#[tokio::test]
async fn mutual_tls_refuses_missing_foreign_and_expired_certificates() {
    let client_ca = pki::ca("Device CA");
    let t = tls_broker(&rcgen::PKCS_ECDSA_P256_SHA256, Some(&client_ca), |c| {
        c.require_client_cert = true;
    })
    .await;
    let good = client_ca.client("dev-1");
    let (_c, ack) = t
        .mqtt(Some(&good), connect_packet(Protocol::V311, "dev-1", true))
        .await
        .expect("a valid client certificate is accepted");
    assert_eq!(ack.code, 0);

    let foreign = pki::ca("Other CA").client("dev-2");
    let expired = client_ca.expired_client("dev-3");
    for leaf in [None, Some(&foreign), Some(&expired)] {
        let got = t
            .mqtt(leaf, connect_packet(Protocol::V311, "x", true))
            .await;
        assert!(got.is_none(), "refused in the handshake, never a CONNACK");
    }
    eventually(|| {
        t.server
            .broker
            .metrics
            .tls_handshake_failures_total
            .load(Ordering::Relaxed)
            == 3
    })
    .await;
}

#[tokio::test]
async fn certificate_identity_is_the_username_and_optionally_the_client_id() {
    let client_ca = pki::ca("Device CA");
    let t = tls_broker(&rcgen::PKCS_ECDSA_P256_SHA256, Some(&client_ca), |c| {
        c.require_client_cert = true;
        c.cert_identity = Some(CertIdentity::Cn);
        c.cert_identity_as_client_id = true;
    })
    .await;
    let leaf = client_ca.client("sensor-7");
    let mut connect = connect_packet(Protocol::V5, "ignored", true);
    connect.username = Some("someone-else".into());
    let (_c, ack) = t.mqtt(Some(&leaf), connect).await.unwrap();
    assert_eq!(ack.code, 0);
    let session = t
        .server
        .broker
        .sessions
        .get("sensor-7")
        .expect("client id from the CN");
    assert_eq!(session.username().as_deref(), Some("sensor-7"));
    assert!(t.server.broker.sessions.get("ignored").is_none());
}

#[tokio::test]
async fn anonymous_is_refused_once_client_certificates_are_configured() {
    let client_ca = pki::ca("Device CA");
    // Optional client certificates; a client without one and without credentials is
    // anonymous, which is off by default when a CA is configured.
    let t = tls_broker(&rcgen::PKCS_ECDSA_P256_SHA256, Some(&client_ca), |c| {
        c.cert_identity = Some(CertIdentity::Cn);
    })
    .await;
    let (_raw, ack) = t
        .mqtt(None, connect_packet(Protocol::V5, "anon", true))
        .await
        .unwrap();
    assert_eq!(ack.code, reason::NOT_AUTHORIZED);
    let leaf = client_ca.client("dev");
    let (_raw, ack) = t
        .mqtt(Some(&leaf), connect_packet(Protocol::V5, "dev", true))
        .await
        .unwrap();
    assert_eq!(ack.code, 0);
}

#[tokio::test]
async fn certificate_files_reload_without_dropping_connections() {
    let t = tls_broker(&rcgen::PKCS_ECDSA_P256_SHA256, None, |c| {
        c.reload_interval_secs = 0;
    })
    .await;
    let first = pki::tls_connect(&pki::connector(&t.ca, None), t.addr())
        .await
        .unwrap();
    let old_cert = pki::server_cert(&first);
    let mut live = Raw::over(first, Protocol::V311);
    live.handshake(connect_packet(Protocol::V311, "live", true))
        .await;

    // Kubernetes-style rotation: new files written beside the old, then swapped in.
    let next = t.ca.server(&rcgen::PKCS_ED25519);
    pki::write(t.dir.path(), "tls.crt.new", &next.cert_pem);
    pki::write(t.dir.path(), "tls.key.new", &next.key_pem);
    std::fs::rename(
        t.dir.path().join("tls.crt.new"),
        t.dir.path().join("tls.crt"),
    )
    .unwrap();
    std::fs::rename(
        t.dir.path().join("tls.key.new"),
        t.dir.path().join("tls.key"),
    )
    .unwrap();
    t.server.reload().await;

    let second = pki::tls_connect(&pki::connector(&t.ca, None), t.addr())
        .await
        .unwrap();
    let new_cert = pki::server_cert(&second);
    assert_ne!(old_cert, new_cert, "new handshakes use the new certificate");
    // The old connection is still up.
    live.send(Packet::PingReq).await;
    assert!(matches!(live.recv().await, Packet::PingResp));

    // A broken certificate file is refused; the last good one stays in force.
    pki::write(
        t.dir.path(),
        "tls.crt",
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    );
    t.server.reload().await;
    let third = pki::tls_connect(&pki::connector(&t.ca, None), t.addr())
        .await
        .unwrap();
    assert_eq!(pki::server_cert(&third), new_cert);
}

#[tokio::test]
async fn the_poll_picks_up_rotated_files() {
    let t = tls_broker(&rcgen::PKCS_ECDSA_P256_SHA256, None, |c| {
        c.reload_interval_secs = 1;
    })
    .await;
    let before = pki::server_cert(
        &pki::tls_connect(&pki::connector(&t.ca, None), t.addr())
            .await
            .unwrap(),
    );
    let next = t.ca.server(&rcgen::PKCS_ECDSA_P384_SHA384);
    pki::write(t.dir.path(), "tls.key", &next.key_pem);
    pki::write(t.dir.path(), "tls.crt", &next.cert_pem);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = pki::server_cert(
            &pki::tls_connect(&pki::connector(&t.ca, None), t.addr())
                .await
                .unwrap(),
        );
        if now != before {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no reload within 10s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn bad_tls_files_at_start_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cert = pki::write(dir.path(), "c.pem", "garbage");
    let key = pki::write(dir.path(), "k.pem", "garbage");
    let config = rookery_broker::Config {
        listen: vec![],
        tls_listen: vec!["127.0.0.1:0".parse().unwrap()],
        cert: Some(cert),
        key: Some(key.clone()),
        durability: rookery_broker::config::DurabilityMode::None,
        ..Default::default()
    };
    let err = rookery_broker::Server::start(config).await.err().unwrap();
    assert!(err.to_string().contains("c.pem"), "{err}");
}

#[tokio::test]
async fn a_kubernetes_style_symlink_swap_is_picked_up() {
    // A mounted Secret: tls.crt -> ..data/tls.crt, ..data -> ..2026_01 (a timestamped dir);
    // rotation writes a new timestamped dir and swaps the ..data link atomically.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let ca = pki::ca("Test CA");
    let write_version = |name: &str, leaf: &Leaf| {
        let v = root.join(name);
        std::fs::create_dir(&v).unwrap();
        pki::write(&v, "tls.crt", &leaf.cert_pem);
        pki::write(&v, "tls.key", &leaf.key_pem);
    };
    write_version("..2026_01", &ca.server(&rcgen::PKCS_ECDSA_P256_SHA256));
    std::os::unix::fs::symlink("..2026_01", root.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/tls.crt", root.join("tls.crt")).unwrap();
    std::os::unix::fs::symlink("..data/tls.key", root.join("tls.key")).unwrap();
    let (cert, key) = (root.join("tls.crt"), root.join("tls.key"));
    let server = start(|c| {
        c.tls_listen = vec!["127.0.0.1:0".parse().unwrap()];
        c.cert = Some(cert);
        c.key = Some(key);
        c.reload_interval_secs = 0;
    })
    .await;
    let addr = server.addr_of(ListenerKind::Mqtts).unwrap();
    let before = pki::server_cert(
        &pki::tls_connect(&pki::connector(&ca, None), addr)
            .await
            .unwrap(),
    );

    write_version("..2026_02", &ca.server(&rcgen::PKCS_ED25519));
    std::os::unix::fs::symlink("..2026_02", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    server.reload().await;
    let after = pki::server_cert(
        &pki::tls_connect(&pki::connector(&ca, None), addr)
            .await
            .unwrap(),
    );
    assert_ne!(before, after);
}

#[tokio::test]
async fn a_certificate_without_the_identity_field_is_refused() {
    let client_ca = pki::ca("Device CA");
    let t = tls_broker(&rcgen::PKCS_ECDSA_P256_SHA256, Some(&client_ca), |c| {
        c.require_client_cert = true;
        c.cert_identity = Some(CertIdentity::SanUri); // test client certs carry no URI SAN
    })
    .await;
    let leaf = client_ca.client("dev");
    let (_r, ack) = t
        .mqtt(Some(&leaf), connect_packet(Protocol::V5, "dev", true))
        .await
        .unwrap();
    assert_eq!(ack.code, reason::NOT_AUTHORIZED);
}

#[tokio::test]
async fn san_dns_identity_reaches_the_acl() {
    let client_ca = pki::ca("Device CA");
    let dir = tempfile::tempdir().unwrap();
    let acl = pki::write(
        dir.path(),
        "acl",
        "user dev-9.devices.test\ntopic readwrite dev9/#\n",
    );
    let t = tls_broker(&rcgen::PKCS_ECDSA_P256_SHA256, Some(&client_ca), |c| {
        c.require_client_cert = true;
        c.cert_identity = Some(CertIdentity::SanDns);
        c.acl_file = Some(acl);
    })
    .await;
    let leaf = client_ca.client("dev-9");
    let (mut raw, ack) = t
        .mqtt(Some(&leaf), connect_packet(Protocol::V5, "dev", true))
        .await
        .unwrap();
    assert_eq!(ack.code, 0);
    assert_eq!(raw.subscribe("dev9/x", QoS::AtMostOnce).await, vec![0]);
    assert_eq!(
        raw.subscribe("dev8/x", QoS::AtMostOnce).await,
        vec![reason::NOT_AUTHORIZED]
    );
}

#[tokio::test]
async fn proxy_protocol_in_front_of_tls() {
    use tokio::io::AsyncWriteExt;
    let t = tls_broker(&rcgen::PKCS_ECDSA_P256_SHA256, None, |c| {
        c.proxy_protocol = vec![ListenerKind::Mqtts];
        c.max_connections_per_address = 1;
    })
    .await;
    let connect_via = |src: &'static str| {
        let ca = &t.ca;
        let addr = t.addr();
        async move {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tcp.write_all(format!("PROXY TCP4 {src} 10.0.0.1 4000 8883\r\n").as_bytes())
                .await
                .unwrap();
            let tls = pki::connector(ca, None)
                .connect(
                    rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
                    tcp,
                )
                .await;
            let mut raw = Raw::over(tls.ok()?, Protocol::V5);
            raw.send(Packet::Connect(Box::new(connect_packet(
                Protocol::V5,
                src,
                true,
            ))))
            .await;
            match raw.recv_within(Duration::from_secs(2)).await? {
                Packet::ConnAck(a) => Some((raw, a)),
                _ => None,
            }
        }
    };
    let (_a, ack) = connect_via("192.0.2.1")
        .await
        .expect("first from 192.0.2.1");
    assert_eq!(ack.code, 0);
    let (_b, ack) = connect_via("192.0.2.2")
        .await
        .expect("first from 192.0.2.2");
    assert_eq!(ack.code, 0);
    assert!(
        connect_via("192.0.2.1").await.is_none(),
        "second from 192.0.2.1 is over the limit"
    );
}
