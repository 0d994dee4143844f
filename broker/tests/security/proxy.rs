//! PROXY protocol: the real client address is used for limits and bans; a listener that did
//! not enable it refuses a header.

use std::time::Duration;

use rookery_codec::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::*;

fn v2_header(src: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&[10, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&1883u16.to_be_bytes());
    h
}

async fn open_with(server: &rookery_broker::Server, header: &[u8]) -> Raw {
    let mut tcp = TcpStream::connect(server.addr()).await.unwrap();
    tcp.write_all(header).await.unwrap();
    Raw::over(tcp, Protocol::V5)
}

#[tokio::test]
async fn the_address_from_the_header_is_the_one_limited() {
    let server = start(|c| {
        c.proxy_protocol = vec![rookery_broker::listener::ListenerKind::Mqtt];
        c.max_connections_per_address = 1;
    })
    .await;
    // v1 and v2 from two different client addresses: both fit the limit of 1 per address.
    let mut a = open_with(&server, b"PROXY TCP4 198.51.100.1 10.0.0.1 5000 1883\r\n").await;
    assert_eq!(
        a.handshake(connect_packet(Protocol::V5, "a", true))
            .await
            .code,
        0
    );
    let mut b = open_with(&server, &v2_header([198, 51, 100, 2], 6000)).await;
    assert_eq!(
        b.handshake(connect_packet(Protocol::V5, "b", true))
            .await
            .code,
        0
    );
    // A second connection from 198.51.100.1 is over the limit.
    let mut c = open_with(&server, b"PROXY TCP4 198.51.100.1 10.0.0.1 5001 1883\r\n").await;
    assert!(c.expect_closed().await.is_none());
    // A load balancer health check (LOCAL) is served with the socket's own address.
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    let mut d = open_with(&server, &local).await;
    assert_eq!(
        d.handshake(connect_packet(Protocol::V5, "d", true))
            .await
            .code,
        0
    );
}

#[tokio::test]
async fn a_listener_without_proxy_protocol_refuses_a_header() {
    let server = start(|_| {}).await;
    for header in [
        b"PROXY TCP4 198.51.100.1 10.0.0.1 5000 1883\r\n".to_vec(),
        v2_header([198, 51, 100, 1], 5000),
    ] {
        let mut raw = open_with(&server, &header).await;
        raw.send(Packet::Connect(Box::new(connect_packet(
            Protocol::V5,
            "x",
            true,
        ))))
        .await;
        // Closed at once, not after the connect timeout.
        let started = std::time::Instant::now();
        assert!(raw.expect_closed().await.is_none());
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}

#[tokio::test]
async fn a_proxy_listener_refuses_a_connection_without_a_header() {
    let server = start(|c| {
        c.proxy_protocol = vec![rookery_broker::listener::ListenerKind::Mqtt];
    })
    .await;
    let mut raw = Raw::open(server.addr(), Protocol::V5).await;
    raw.send(Packet::Connect(Box::new(connect_packet(
        Protocol::V5,
        "x",
        true,
    ))))
    .await;
    assert!(raw.recv_within(Duration::from_secs(2)).await.is_none());
}
