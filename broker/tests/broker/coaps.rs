//! The CoAP gateway over DTLS with pre-shared keys (`coaps_listen`, `psk_file`), driven by a
//! DTLS client on `webrtc-dtls` in client mode: the PSK identity is the device id and its
//! username for the ACL, commands reach the device through its session, and a failed or
//! revoked identity gets no session. (tests/interop/test_coaps.py drives it with libcoap's
//! GnuTLS and OpenSSL clients.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use rookery_codec::*;
use tokio::net::UdpSocket;
use webrtc_dtls::cipher_suite::CipherSuiteId;
use webrtc_dtls::config::Config as DtlsConfig;
use webrtc_dtls::conn::DTLSConn;

use crate::support::*;

const KEY1: &[u8] = b"key of device one";
const KEY2: &[u8] = b"key of device two";

fn hex(key: &[u8]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// The application may do anything; `dev1` only its own topics; `dev2` nothing.
const ACL: &str = "user app\ntopic readwrite #\n\nuser dev1\ntopic readwrite devices/dev1/#\ntopic readwrite commands/dev1/#\n";

/// An MQTT client with the username `app` (a label for the ACL: there is no password file).
async fn app(server: &rookery_broker::Server, id: &str) -> Raw {
    let mut connect = connect_packet(Protocol::V5, id, true);
    connect.username = Some("app".into());
    Raw::connect_with(server.addr(), connect).await.0
}

struct Files {
    _dir: tempfile::TempDir,
    psk: std::path::PathBuf,
    acl: std::path::PathBuf,
}

fn files() -> Files {
    let dir = tempfile::tempdir().unwrap();
    let psk = dir.path().join("psk");
    std::fs::write(
        &psk,
        format!("# devices\ndev1:{}\ndev2:{}\n", hex(KEY1), hex(KEY2)),
    )
    .unwrap();
    let acl = dir.path().join("acl");
    std::fs::write(&acl, ACL).unwrap();
    Files {
        _dir: dir,
        psk,
        acl,
    }
}

async fn start_coaps(files: &Files) -> (rookery_broker::Server, SocketAddr) {
    let (psk, acl) = (files.psk.clone(), files.acl.clone());
    let server = start(move |c| {
        c.coaps_listen = Some("127.0.0.1:0".parse().unwrap());
        c.psk_file = Some(psk);
        c.acl_file = Some(acl);
        c.coap_ack_timeout_ms = 500;
    })
    .await;
    let addr = server.coaps_addr.expect("the DTLS listener's address");
    (server, addr)
}

/// A DTLS client session as `identity` with `key` (CoAP's mandatory PSK suite).
async fn dtls(server: SocketAddr, identity: &str, key: &[u8]) -> Option<Arc<DTLSConn>> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    dtls_over(Arc::new(socket), server, identity, key).await
}

/// The same over a socket of the caller's (to send raw datagrams from the session's own
/// address and port).
async fn dtls_over(
    socket: Arc<UdpSocket>,
    server: SocketAddr,
    identity: &str,
    key: &[u8],
) -> Option<Arc<DTLSConn>> {
    socket.connect(server).await.unwrap();
    let key = key.to_vec();
    let config = DtlsConfig {
        psk: Some(Arc::new(move |_hint: &[u8]| Ok(key.clone()))),
        psk_identity_hint: Some(identity.as_bytes().to_vec()),
        cipher_suites: vec![CipherSuiteId::Tls_Psk_With_Aes_128_Ccm_8],
        ..DtlsConfig::default()
    };
    match tokio::time::timeout(WAIT, DTLSConn::new(socket, config, true, None)).await {
        Ok(Ok(conn)) => Some(Arc::new(conn)),
        _ => None,
    }
}

fn coap(kind: MessageType, code: MessageClass, id: u16, token: &[u8], path: &str) -> Packet {
    let mut p = Packet::new();
    p.header.set_version(1);
    p.header.set_type(kind);
    p.header.code = code;
    p.header.message_id = id;
    p.set_token(token.to_vec());
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        p.add_option(CoapOption::UriPath, segment.as_bytes().to_vec());
    }
    p
}

async fn send(conn: &DTLSConn, p: &Packet) {
    conn.write(&p.to_bytes().unwrap(), Some(WAIT))
        .await
        .unwrap();
}

/// The next CoAP message over the session, or `None` when the session ends or stays silent
/// for `wait`.
async fn recv_within(conn: &DTLSConn, wait: Duration) -> Result<Packet, webrtc_dtls::Error> {
    let mut buf = vec![0u8; 8192];
    let n = conn.read(&mut buf, Some(wait)).await?;
    Ok(Packet::from_bytes(&buf[..n]).unwrap())
}

async fn post(conn: &DTLSConn, id: u16, path: &str, payload: &[u8]) -> Packet {
    let mut p = coap(
        MessageType::Confirmable,
        MessageClass::Request(RequestType::Post),
        id,
        &id.to_be_bytes(),
        path,
    );
    p.payload = payload.to_vec();
    send(conn, &p).await;
    let answer = recv_within(conn, WAIT).await.unwrap();
    assert_eq!(answer.header.message_id, id);
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_psk_device_publishes_as_its_identity_and_takes_commands_through_its_session() {
    let files = files();
    let (server, coaps) = start_coaps(&files).await;
    let mut app = app(&server, "app").await;
    app.subscribe("devices/#", QoS::AtLeastOnce).await;
    app.subscribe("commands/+/+/result", QoS::AtLeastOnce).await;

    let dev1 = dtls(coaps, "dev1", KEY1).await.expect("a session for dev1");
    // The PSK identity names the device: the path is all resource.
    let answer = post(&dev1, 1, "sensor/temp", b"21.5").await;
    assert_eq!(answer.header.get_type(), MessageType::Acknowledgement);
    assert_eq!(
        answer.header.code,
        MessageClass::Response(ResponseType::Changed)
    );
    let p = app.recv_publish().await;
    assert_eq!(&*p.topic, "devices/dev1/sensor/temp");
    assert_eq!(&p.payload[..], b"21.5");

    // A command goes to the device through its DTLS session, and its answer comes back.
    let mut commander = self::app(&server, "commander").await;
    commander
        .publish("commands/dev1/led", b"on", QoS::AtLeastOnce, false, 1)
        .await;
    let put = recv_within(&dev1, WAIT).await.unwrap();
    assert_eq!(put.header.get_type(), MessageType::Confirmable);
    assert_eq!(put.header.code, MessageClass::Request(RequestType::Put));
    assert_eq!(put.payload, b"on");
    let mut ack = coap(
        MessageType::Acknowledgement,
        MessageClass::Response(ResponseType::Changed),
        put.header.message_id,
        put.get_token(),
        "",
    );
    ack.payload.clear();
    send(&dev1, &ack).await;
    let result = app.recv_publish().await;
    assert_eq!(&*result.topic, "commands/dev1/led/result");
    assert_eq!(&result.payload[..], b"2.04");

    // dev2 authenticates, but the ACL grants its username nothing.
    let dev2 = dtls(coaps, "dev2", KEY2).await.expect("a session for dev2");
    let answer = post(&dev2, 7, "sensor/temp", b"1").await;
    assert_eq!(
        answer.header.code,
        MessageClass::Response(ResponseType::Forbidden)
    );
    app.expect_silence(Duration::from_millis(300)).await;
    let m = &server.broker.metrics;
    assert_eq!(m.coap_handshakes_total[0].load(Ordering::Relaxed), 2);
    assert_eq!(m.coap_dtls_sessions.load(Ordering::Relaxed), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_or_an_unknown_identity_gets_no_session() {
    let files = files();
    let (server, coaps) = start_coaps(&files).await;
    assert!(dtls(coaps, "dev1", KEY2).await.is_none(), "wrong key");
    assert!(
        dtls(coaps, "nobody", KEY1).await.is_none(),
        "unknown identity"
    );
    let m = &server.broker.metrics;
    eventually(|| m.coap_handshakes_total[1].load(Ordering::Relaxed) == 2).await;
    eventually(|| m.coap_dtls_sessions.load(Ordering::Relaxed) == 0).await;
    assert_eq!(m.coap_handshakes_total[0].load(Ordering::Relaxed), 0);
    // And the right key still works afterwards, from a new address.
    let dev1 = dtls(coaps, "dev1", KEY1).await.expect("a session");
    let answer = post(&dev1, 2, "t", b"x").await;
    assert_eq!(
        answer.header.code,
        MessageClass::Response(ResponseType::Changed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_removed_from_the_psk_file_loses_its_session_at_reload() {
    let files = files();
    let (server, coaps) = start_coaps(&files).await;
    let dev1 = dtls(coaps, "dev1", KEY1).await.expect("a session");
    assert_eq!(
        post(&dev1, 3, "t", b"x").await.header.code,
        MessageClass::Response(ResponseType::Changed)
    );
    // A file that does not parse changes nothing.
    std::fs::write(&files.psk, "dev2:nothex\n").unwrap();
    server.reload().await;
    assert_eq!(
        post(&dev1, 4, "t", b"y").await.header.code,
        MessageClass::Response(ResponseType::Changed)
    );
    std::fs::write(&files.psk, format!("dev2:{}\n", hex(KEY2))).unwrap();
    server.reload().await;
    // The gateway closes the session on its own (its sweep runs every few seconds).
    match recv_within(&dev1, 3 * WAIT).await {
        Err(webrtc_dtls::Error::ErrDeadlineExceeded) => panic!("the session is still open"),
        Err(_) => {}
        Ok(p) => panic!("unexpected {p:?}"),
    }
    let m = &server.broker.metrics;
    eventually(|| m.coap_dtls_sessions.load(Ordering::Relaxed) == 0).await;
    assert!(dtls(coaps, "dev1", KEY1).await.is_none(), "no new session");
    assert!(dtls(coaps, "dev2", KEY2).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_text_records_from_the_sessions_address_do_not_end_it() {
    let files = files();
    let (server, coaps) = start_coaps(&files).await;
    let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let dev1 = dtls_over(socket.clone(), coaps, "dev1", KEY1)
        .await
        .expect("a session");
    assert_eq!(
        post(&dev1, 1, "t", b"x").await.header.code,
        MessageClass::Response(ResponseType::Changed)
    );
    // What an off-path sender could forge with the device's address: a clear-text fatal
    // alert, clear-text application data, a record of an epoch never negotiated.
    for forged in [
        vec![21, 254, 253, 0, 0, 0, 0, 0, 0, 0, 9, 0, 2, 2, 40],
        vec![23, 254, 253, 0, 0, 0, 0, 0, 0, 0, 9, 0, 3, 1, 2, 3],
        vec![23, 254, 253, 0, 2, 0, 0, 0, 0, 0, 9, 0, 3, 1, 2, 3],
    ] {
        socket.send(&forged).await.unwrap();
    }
    assert_eq!(
        post(&dev1, 2, "t", b"y").await.header.code,
        MessageClass::Response(ResponseType::Changed),
        "the session survives them"
    );
    assert!(server.broker.metrics.coap_dropped_total[4].load(Ordering::Relaxed) >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebooted_device_starts_over_from_the_same_address_and_port() {
    let files = files();
    let (server, coaps) = start_coaps(&files).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = socket.local_addr().unwrap();
    let dev1 = dtls_over(Arc::new(socket), coaps, "dev1", KEY1)
        .await
        .expect("a session");
    assert_eq!(
        post(&dev1, 1, "t", b"before").await.header.code,
        MessageClass::Response(ResponseType::Changed)
    );
    // The device loses its state without a word to the gateway, then comes back on the same
    // port: its new ClientHello replaces the old session (which would otherwise hold the
    // address until it idled out).
    drop(dev1);
    let mut socket = None;
    for _ in 0..250 {
        if let Ok(s) = UdpSocket::bind(local).await {
            socket = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let again = dtls_over(
        Arc::new(socket.expect("the port again")),
        coaps,
        "dev1",
        KEY1,
    )
    .await
    .expect("a new session from the same port");
    assert_eq!(
        post(&again, 2, "t", b"after").await.header.code,
        MessageClass::Response(ResponseType::Changed)
    );
    let m = &server.broker.metrics;
    assert_eq!(m.coap_handshakes_total[0].load(Ordering::Relaxed), 2);
    eventually(|| m.coap_dtls_sessions.load(Ordering::Relaxed) == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_for_a_device_whose_session_ended_is_reported_unreachable_at_once() {
    let files = files();
    let (server, coaps) = start_coaps(&files).await;
    let mut app = app(&server, "app").await;
    app.subscribe("commands/+/+/result", QoS::AtLeastOnce).await;
    let dev1 = dtls(coaps, "dev1", KEY1).await.expect("a session");
    assert_eq!(
        post(&dev1, 1, "t", b"x").await.header.code,
        MessageClass::Response(ResponseType::Changed)
    );
    dev1.close().await.unwrap();
    let m = &server.broker.metrics;
    eventually(|| m.coap_dtls_sessions.load(Ordering::Relaxed) == 0).await;
    // Its learned address is a session that is gone: no retransmissions into the void (they
    // would take longer than WAIT here), the result says so, and the command is consumed.
    app.publish("commands/dev1/led", b"on", QoS::AtLeastOnce, false, 1)
        .await;
    let result = app.recv_publish().await;
    assert_eq!(&*result.topic, "commands/dev1/led/result");
    assert_eq!(&result.payload[..], b"unreachable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_holds_a_few_sessions_and_a_newer_one_closes_the_oldest() {
    let files = files();
    let (server, coaps) = start_coaps(&files).await;
    let mut sessions = Vec::new();
    for _ in 0..5 {
        sessions.push(dtls(coaps, "dev1", KEY1).await.expect("a session"));
    }
    let m = &server.broker.metrics;
    eventually(|| m.coap_dtls_sessions.load(Ordering::Relaxed) == 4).await;
    // The first one was closed by the gateway; the newest work.
    match recv_within(&sessions[0], WAIT).await {
        Err(webrtc_dtls::Error::ErrDeadlineExceeded) => panic!("the oldest session is still open"),
        Err(_) => {}
        Ok(p) => panic!("unexpected {p:?}"),
    }
    assert_eq!(
        post(&sessions[4], 1, "t", b"x").await.header.code,
        MessageClass::Response(ResponseType::Changed)
    );
}
