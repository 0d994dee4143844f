//! MQTT over WebSocket and secure WebSocket, with a tungstenite client.

use rookery_broker::listener::ListenerKind;
use rookery_broker::listener::ws::WsStream;
use rookery_codec::*;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::pki;
use crate::support::*;

fn request(
    addr: std::net::SocketAddr,
    scheme: &str,
    path: &str,
    protocol: Option<&str>,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = format!("{scheme}://127.0.0.1:{}{path}", addr.port())
        .into_client_request()
        .unwrap();
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(p).unwrap());
    }
    req
}

#[tokio::test]
async fn mqtt_over_websocket_both_ways() {
    let server = start(|c| c.ws_listen = vec!["127.0.0.1:0".parse().unwrap()]).await;
    let addr = server.addr_of(ListenerKind::Ws).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (ws, resp) =
        tokio_tungstenite::client_async(request(addr, "ws", "/mqtt", Some("mqtt")), tcp)
            .await
            .unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "mqtt");
    let mut sub = Raw::over(WsStream::new(ws), Protocol::V5);
    assert_eq!(
        sub.handshake(connect_packet(Protocol::V5, "ws-sub", true))
            .await
            .code,
        0
    );
    assert_eq!(sub.subscribe("w/#", QoS::ExactlyOnce).await, vec![2]);
    let (mut publ, _) = Raw::connect(server.addr(), Protocol::V311, "tcp-pub", true).await;
    // Big enough to span several WebSocket reads.
    let payload = vec![7u8; 200_000];
    publ.publish("w/big", &payload, QoS::ExactlyOnce, false, 3)
        .await;
    let got = sub.recv_publish().await;
    assert_eq!(got.payload.len(), payload.len());
    sub.publish("w/back", b"from ws", QoS::AtLeastOnce, false, 9)
        .await;
}

#[tokio::test]
async fn wrong_path_or_subprotocol_is_refused() {
    let server = start(|c| c.ws_listen = vec!["127.0.0.1:0".parse().unwrap()]).await;
    let addr = server.addr_of(ListenerKind::Ws).unwrap();
    for (path, protocol) in [("/other", Some("mqtt")), ("/mqtt", Some("chat"))] {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let r = tokio_tungstenite::client_async(request(addr, "ws", path, protocol), tcp).await;
        assert!(r.is_err(), "{path} {protocol:?}");
    }
}

#[tokio::test]
async fn mqtt_over_secure_websocket() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki::ca("Test CA");
    let leaf = ca.server(&rcgen::PKCS_ECDSA_P256_SHA256);
    let cert = pki::write(dir.path(), "c.pem", &leaf.cert_pem);
    let key = pki::write(dir.path(), "k.pem", &leaf.key_pem);
    let server = start(|c| {
        c.wss_listen = vec!["127.0.0.1:0".parse().unwrap()];
        c.cert = Some(cert);
        c.key = Some(key);
    })
    .await;
    let addr = server.addr_of(ListenerKind::Wss).unwrap();
    let tls = pki::tls_connect(&pki::connector(&ca, None), addr)
        .await
        .unwrap();
    let (ws, _) = tokio_tungstenite::client_async(request(addr, "wss", "/mqtt", Some("mqtt")), tls)
        .await
        .unwrap();
    let mut raw = Raw::over(WsStream::new(ws), Protocol::V311);
    assert_eq!(
        raw.handshake(connect_packet(Protocol::V311, "wss", true))
            .await
            .code,
        0
    );
    assert_eq!(raw.subscribe("s", QoS::AtMostOnce).await, vec![0]);
    raw.publish("s", b"loop", QoS::AtMostOnce, false, 0).await;
    assert_eq!(&raw.recv_publish().await.payload[..], b"loop");
}
