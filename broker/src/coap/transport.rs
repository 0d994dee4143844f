//! Where a CoAP message comes from and goes to: a [`Peer`] is an address on the plain UDP
//! listener (`coap://`) or a DTLS session on the secure one (`coaps://`), and the
//! [`Transport`] sends to either.
//!
//! The two are kept apart everywhere a peer is a key (duplicate detection, block-wise
//! transfers, observers, the outbox): a UDP source address can be forged on the plain
//! listener, and must never reach state that belongs to an authenticated DTLS session. A
//! secure peer is one session, not only an address: a later session from the same address
//! and port (another device behind the same NAT mapping, say) is another peer, and nothing
//! sent to the earlier one reaches it.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;

use super::dtls::Sessions;

/// A CoAP endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Peer {
    /// Its UDP address.
    pub addr: SocketAddr,
    /// The DTLS session (numbered from 1), or 0 on the plain listener.
    pub session: u64,
}

impl Peer {
    /// An address on the plain listener.
    pub fn plain(addr: SocketAddr) -> Peer {
        Peer { addr, session: 0 }
    }

    /// DTLS session number `session` (at least 1) on the secure listener.
    pub fn secure(addr: SocketAddr, session: u64) -> Peer {
        Peer {
            addr,
            session: session.max(1),
        }
    }

    /// True for a DTLS session.
    pub fn is_secure(&self) -> bool {
        self.session != 0
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_secure() {
            write!(f, "coaps://{} (session {})", self.addr, self.session)
        } else {
            write!(f, "coap://{}", self.addr)
        }
    }
}

/// The gateway's listeners, for sending.
pub struct Transport {
    /// The plain UDP socket (`coap_listen`).
    pub plain: Option<Arc<UdpSocket>>,
    /// The DTLS sessions (`coaps_listen`).
    pub secure: Option<Arc<Sessions>>,
}

impl Transport {
    /// Sends one datagram to `peer`, ignoring errors (UDP: the peer retransmits or gives
    /// up). False when `peer` is a DTLS session that has ended (or was replaced): nothing
    /// can reach it any more.
    pub async fn send(&self, peer: Peer, bytes: &[u8]) -> bool {
        match (peer.is_secure(), &self.plain, &self.secure) {
            (false, Some(socket), _) => {
                let _ = socket.send_to(bytes, peer.addr).await;
                true
            }
            (true, _, Some(sessions)) => sessions.send(peer, bytes).await,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_secure_peers_differ() {
        let addr = SocketAddr::from(([192, 0, 2, 1], 5683));
        assert_ne!(Peer::plain(addr), Peer::secure(addr, 1));
        assert_ne!(Peer::secure(addr, 1), Peer::secure(addr, 2), "two sessions");
        assert!(Peer::secure(addr, 0).is_secure());
        assert_eq!(Peer::plain(addr).to_string(), "coap://192.0.2.1:5683");
        assert_eq!(
            Peer::secure(addr, 7).to_string(),
            "coaps://192.0.2.1:5683 (session 7)"
        );
    }
}
