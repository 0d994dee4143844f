//! DTLS records as the CoAP gateway's secure listener takes them from the network: the checks
//! that decide whether a datagram may open a session (`is_client_hello`) and may reach the
//! crate at all (`acceptable`), then the server handshake of `webrtc-dtls` (record and
//! handshake decoding, fragment reassembly, the flight state machine, the PSK callback) fed
//! the datagrams that pass. It must never panic or hang; time is virtual (a paused tokio
//! clock), so its retransmission timers cost nothing.
//!
//! The server's HelloVerifyRequest cookie is random, so the fuzzer explores what comes before
//! it (the first ClientHello, and anything sent in its place) far more than what comes after.
//!
//! Input: datagrams, each a big-endian u16 length then that many bytes.
#![no_main]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use libfuzzer_sys::fuzz_target;
use rookery_broker::coap::dtls::{acceptable, is_client_hello};
use webrtc_dtls::cipher_suite::CipherSuiteId;
use webrtc_dtls::config::Config;
use webrtc_dtls::conn::DTLSConn;

/// A connection that yields the input's datagrams, then nothing; what the server sends is
/// dropped.
struct Feed {
    datagrams: Mutex<VecDeque<Vec<u8>>>,
}

fn peer() -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1], 5684))
}

#[async_trait]
impl webrtc_util::Conn for Feed {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(())
    }
    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        let next = self.datagrams.lock().expect("not poisoned").pop_front();
        match next {
            Some(d) => {
                let n = d.len().min(buf.len());
                buf[..n].copy_from_slice(&d[..n]);
                Ok(n)
            }
            None => std::future::pending().await,
        }
    }
    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        Ok((self.recv(buf).await?, peer()))
    }
    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        Ok(buf.len())
    }
    async fn send_to(&self, buf: &[u8], _target: SocketAddr) -> webrtc_util::Result<usize> {
        Ok(buf.len())
    }
    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(SocketAddr::from(([127, 0, 0, 1], 5684)))
    }
    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(peer())
    }
    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }
    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

fn split(mut data: &[u8]) -> VecDeque<Vec<u8>> {
    let mut out = VecDeque::new();
    while data.len() >= 2 && out.len() < 32 {
        let n = usize::from(u16::from_be_bytes([data[0], data[1]])).min(data.len() - 2);
        out.push_back(data[2..2 + n].to_vec());
        data = &data[2 + n..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut datagrams = split(data);
    // The listener opens a session only for a ClientHello; the fuzzer explores the rest too.
    if let Some(first) = datagrams.front() {
        let _ = is_client_hello(first);
    }
    // What the listener drops never reaches the crate.
    datagrams.retain(|d| acceptable(d));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let feed = Arc::new(Feed {
            datagrams: Mutex::new(datagrams),
        });
        let config = Config {
            psk: Some(Arc::new(|identity: &[u8]| {
                if identity == b"dev1" {
                    Ok(b"device-one-secret".to_vec())
                } else {
                    Err(webrtc_dtls::Error::Other("unknown PSK identity".into()))
                }
            })),
            cipher_suites: vec![
                CipherSuiteId::Tls_Psk_With_Aes_128_Ccm_8,
                CipherSuiteId::Tls_Psk_With_Aes_128_Ccm,
                CipherSuiteId::Tls_Psk_With_Aes_128_Gcm_Sha256,
            ],
            ..Config::default()
        };
        let handshake = DTLSConn::new(feed, config, false, None);
        if let Ok(Ok(conn)) = tokio::time::timeout(Duration::from_secs(30), handshake).await {
            let _ = conn.close().await;
        }
    });
    // Dropping the runtime drops whatever the handshake left running.
    drop(runtime);
});
