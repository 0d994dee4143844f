//! The gateway's own confirmable messages (notifications and commands): message ids,
//! retransmission with the RFC 7252 timers, and matching of ACK, RST and separate responses.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use coap_lite::{MessageType, Packet};
use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::oneshot;

use super::transport::{Peer, Transport};

/// ACK_RANDOM_FACTOR (RFC 7252 section 4.8).
const ACK_RANDOM_FACTOR: f64 = 1.5;

/// How long a separate response may take after an empty ACK.
const SEPARATE_RESPONSE_WAIT: Duration = Duration::from_secs(60);

/// Retransmission parameters.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// ACK_TIMEOUT.
    pub ack_timeout: Duration,
    /// MAX_RETRANSMIT.
    pub max_retransmit: u32,
}

/// How a confirmable message ended.
#[derive(Debug)]
pub enum Outcome {
    /// Answered: an ACK carrying a response, or a separate response (an empty ACK when the
    /// message was a notification, which has no response).
    Answered(Packet),
    /// The peer reset it (RST): it does not want it.
    Reset,
    /// No answer after every retransmission.
    Timeout,
    /// The peer's DTLS session has ended: nothing can reach it.
    Gone,
}

/// What came back for a message id.
enum Reply {
    Ack(Packet),
    Reset,
    /// A separate response, before its ACK.
    Response(Packet),
}

/// Requests of ours that wait for a separate response, by peer and token.
type AwaitingResponse = HashMap<(Peer, Vec<u8>), oneshot::Sender<Packet>>;

/// Pending confirmable messages.
pub struct Outbox {
    by_id: Mutex<HashMap<(Peer, u16), oneshot::Sender<Reply>>>,
    by_token: Mutex<AwaitingResponse>,
    next_id: AtomicU16,
    next_token: AtomicU64,
}

impl Outbox {
    /// An empty outbox; message ids start at a random point (RFC 7252 section 4.4).
    pub fn new() -> Outbox {
        let mut rng = rand::thread_rng();
        Outbox {
            by_id: Mutex::new(HashMap::new()),
            by_token: Mutex::new(HashMap::new()),
            next_id: AtomicU16::new(rng.r#gen()),
            next_token: AtomicU64::new(rng.r#gen()),
        }
    }

    /// A fresh message id.
    pub fn message_id(&self) -> u16 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A fresh token: 8 random bytes, so that an off-path sender cannot guess it to forge a
    /// device's response (RFC 7252 section 5.3.1).
    pub fn token(&self) -> Vec<u8> {
        let mut token = (self.next_token.fetch_add(1, Ordering::Relaxed)
            ^ rand::thread_rng().r#gen::<u64>())
        .to_be_bytes()
        .to_vec();
        token.truncate(8);
        token
    }

    /// Sends `packet` as a confirmable message to `peer` and waits for its ACK or RST,
    /// retransmitting. With `expect_response` an empty ACK means the response comes
    /// separately, matched by token.
    pub async fn confirm(
        &self,
        transport: &Transport,
        peer: Peer,
        mut packet: Packet,
        timing: Timing,
        expect_response: bool,
    ) -> Outcome {
        packet.header.set_type(MessageType::Confirmable);
        let id = self.message_id();
        packet.header.message_id = id;
        let Ok(bytes) = packet.to_bytes_unlimited() else {
            return Outcome::Timeout;
        };
        let token = packet.get_token().to_vec();
        let (tx, mut rx) = oneshot::channel();
        self.by_id.lock().insert((peer, id), tx);
        let (separate_tx, mut separate_rx) = oneshot::channel();
        if expect_response {
            self.by_token
                .lock()
                .insert((peer, token.clone()), separate_tx);
        }
        let factor = rand::thread_rng().gen_range(1.0..ACK_RANDOM_FACTOR);
        let mut wait = timing.ack_timeout.mul_f64(factor);
        let mut outcome = Outcome::Timeout;
        for attempt in 0..=timing.max_retransmit {
            if !transport.send(peer, &bytes).await {
                outcome = Outcome::Gone;
                break;
            }
            let replied = tokio::time::timeout(wait, async {
                tokio::select! {
                    r = &mut rx => r,
                    // A separate response that overtakes its empty ACK acknowledges the
                    // request as well (RFC 7252 section 5.3.2).
                    Ok(response) = &mut separate_rx, if expect_response => {
                        Ok(Reply::Response(response))
                    }
                }
            });
            match replied.await {
                Ok(Ok(Reply::Response(response))) => {
                    outcome = Outcome::Answered(response);
                    break;
                }
                Ok(Ok(Reply::Reset)) => {
                    outcome = Outcome::Reset;
                    break;
                }
                Ok(Ok(Reply::Ack(ack))) => {
                    let empty = matches!(ack.header.code, coap_lite::MessageClass::Empty);
                    if expect_response && empty {
                        outcome =
                            match tokio::time::timeout(SEPARATE_RESPONSE_WAIT, separate_rx).await {
                                Ok(Ok(response)) => Outcome::Answered(response),
                                _ => Outcome::Timeout,
                            };
                    } else {
                        outcome = Outcome::Answered(ack);
                    }
                    break;
                }
                Ok(Err(_)) => break,
                Err(_) if attempt < timing.max_retransmit => wait *= 2,
                Err(_) => {}
            }
        }
        self.by_id.lock().remove(&(peer, id));
        if expect_response {
            self.by_token.lock().remove(&(peer, token));
        }
        outcome
    }

    /// An ACK or RST from `peer`: true when it was for one of ours.
    pub fn on_ack(&self, peer: Peer, packet: Packet) -> bool {
        let id = packet.header.message_id;
        let Some(tx) = self.by_id.lock().remove(&(peer, id)) else {
            return false;
        };
        let reply = if packet.header.get_type() == MessageType::Reset {
            Reply::Reset
        } else {
            Reply::Ack(packet)
        };
        let _ = tx.send(reply);
        true
    }

    /// A separate response (CON or NON carrying a response code): true when it answers one of
    /// ours.
    pub fn on_response(&self, peer: Peer, packet: Packet) -> bool {
        let key = (peer, packet.get_token().to_vec());
        match self.by_token.lock().remove(&key) {
            Some(tx) => {
                let _ = tx.send(packet);
                true
            }
            None => false,
        }
    }
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox::new()
    }
}
