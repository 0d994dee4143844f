//! Bad input closes only that connection, with the right reason code, and never disturbs others.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rookery_codec::*;

use crate::support::*;

/// Each case: bytes sent after a successful CONNECT, the v5 reason code expected, and whether
/// the bytes are malformed on 3.1.1 too (properties exist only in 5.0).
fn cases() -> Vec<(&'static str, Vec<u8>, u8, bool)> {
    vec![
        (
            "reserved bits in PUBACK",
            vec![0x41, 0x02, 0x00, 0x01],
            reason::MALFORMED_PACKET,
            true,
        ),
        (
            "reserved bits in SUBSCRIBE",
            vec![0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00],
            reason::MALFORMED_PACKET,
            true,
        ),
        (
            "publish QoS 3",
            vec![0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01],
            reason::MALFORMED_PACKET,
            true,
        ),
        (
            "remaining length of 5 bytes",
            vec![0x30, 0xff, 0xff, 0xff, 0xff, 0x01],
            reason::MALFORMED_PACKET,
            true,
        ),
        (
            "packet type 0",
            vec![0x00, 0x00],
            reason::MALFORMED_PACKET,
            true,
        ),
        (
            "bad UTF-8 in topic",
            vec![0x30, 0x05, 0x00, 0x02, 0xc3, 0x28, 0x00],
            reason::MALFORMED_PACKET,
            true,
        ),
        (
            "NUL in topic",
            vec![0x30, 0x05, 0x00, 0x02, b'a', 0x00, 0x00],
            reason::MALFORMED_PACKET,
            true,
        ),
        (
            "truncated SUBSCRIBE",
            vec![0x82, 0x04, 0x00, 0x01, 0x00, 0x00],
            reason::MALFORMED_PACKET,
            true,
        ),
        (
            "unknown property",
            vec![0x30, 0x06, 0x00, 0x01, b'a', 0x02, 0x7f, 0x00],
            reason::MALFORMED_PACKET,
            false,
        ),
        (
            "packet too large",
            {
                let mut v = vec![0x30, 0x80, 0x80, 0x40]; // 1 MiB remaining length, above the 64 KiB limit
                v.extend_from_slice(&[0; 16]);
                v
            },
            reason::PACKET_TOO_LARGE,
            true,
        ),
    ]
}

#[tokio::test]
async fn malformed_packets_close_only_that_connection_with_the_reason_code() {
    let server = start(|c| c.max_packet_size = 64 * 1024).await;
    // A bystander that keeps working throughout.
    let (mut sub, _) = Raw::connect(server.addr(), Protocol::V311, "bystander-sub", true).await;
    sub.subscribe("alive", QoS::AtLeastOnce).await;
    let (mut publ, _) = Raw::connect(server.addr(), Protocol::V311, "bystander-pub", true).await;
    for (i, (name, bytes, code, on_v3)) in cases().into_iter().enumerate() {
        for protocol in [Protocol::V311, Protocol::V5] {
            if !on_v3 && !protocol.is_v5() {
                continue;
            }
            let (mut bad, _) =
                Raw::connect(server.addr(), protocol, &format!("bad-{i}"), true).await;
            bad.send_bytes(&bytes).await;
            let disconnect = bad.expect_closed().await;
            if protocol.is_v5() {
                assert_eq!(disconnect.map(|d| d.reason), Some(code), "{name} on 5.0");
            } else {
                assert!(
                    disconnect.is_none(),
                    "{name}: 3.1.1 has no server DISCONNECT"
                );
            }
        }
        publ.publish(
            "alive",
            name.as_bytes(),
            QoS::AtLeastOnce,
            false,
            i as u16 + 1,
        )
        .await;
        let p = sub.recv_publish().await;
        assert_eq!(&p.payload[..], name.as_bytes());
        sub.send(Packet::PubAck(Ack {
            packet_id: p.packet_id,
            ..Default::default()
        }))
        .await;
    }
    let expected = cases().iter().map(|c| if c.3 { 2 } else { 1 }).sum::<u64>();
    assert_eq!(
        server
            .broker
            .metrics
            .protocol_errors_total
            .load(Ordering::Relaxed),
        expected
    );
}

#[tokio::test]
async fn garbage_before_connect_closes_quietly() {
    let server = start(|_| {}).await;
    for bytes in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0x10, 0xff, 0xff, 0xff, 0xff, 0xff],
        &[0x10, 0x02, 0x00, 0x04],
    ] {
        let mut raw = Raw::open(server.addr(), Protocol::V311).await;
        raw.send_bytes(bytes).await;
        assert!(raw.expect_closed().await.is_none());
    }
}

#[tokio::test]
async fn a_slow_trickle_of_bytes_does_not_stall_other_clients() {
    let server = start(|_| {}).await;
    let (mut slow, _) = Raw::connect(server.addr(), Protocol::V311, "trickle", true).await;
    // Half a PUBLISH, never finished.
    slow.send_bytes(&[0x30, 0x7f, 0x00, 0x01]).await;
    let (mut sub, _) = Raw::connect(server.addr(), Protocol::V311, "s", true).await;
    sub.subscribe("t", QoS::AtMostOnce).await;
    let (mut publ, _) = Raw::connect(server.addr(), Protocol::V311, "p", true).await;
    for _ in 0..100 {
        publ.publish("t", b"x", QoS::AtMostOnce, false, 0).await;
    }
    for _ in 0..100 {
        sub.recv_publish().await;
    }
    slow.expect_silence(Duration::from_millis(50)).await;
}
