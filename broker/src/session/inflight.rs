//! QoS 1 and 2 state of a session in both directions.
//!
//! Outgoing: deliveries sent and not yet fully acknowledged, in send order, so that a resumed
//! session resends them in the same order with DUP set (MQTT 5.0 [MQTT-4.4.0-1], [MQTT-4.6.0-1]).
//! Incoming: QoS 2 packet ids received and not yet released, so that a resent PUBLISH is not
//! delivered twice (exactly once across reconnects).

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasherDefault;

use crate::message::Delivery;

/// Packet ids hash with fixed keys: a client's ids are its own (at most 65,535), so there is
/// nothing to flood, and a zero-sized hasher saves the 32 bytes of per-map random keys in
/// every connection and parked session.
type PacketIds = BuildHasherDefault<ahash::AHasher>;

/// Where one outgoing QoS 1/2 message stands.
#[derive(Debug, Clone)]
pub enum OutState {
    /// PUBLISH sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published(Delivery),
    /// PUBREC received and PUBREL sent; waiting for PUBCOMP. Holds the delivery's stored
    /// entry id (0 when not stored).
    Released(u64),
}

/// Why an acknowledgement did not fit the outgoing state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckError {
    /// No message in flight has this packet id (a late duplicate ack: harmless).
    NotFound,
    /// The packet id is in flight but in another state (e.g. PUBACK for a QoS 2 message).
    WrongState,
}

/// Outgoing in-flight window.
#[derive(Debug, Default)]
pub struct Outgoing {
    entries: HashMap<u16, (u64, OutState), PacketIds>,
    /// Send order; entries whose sequence no longer matches `entries` are stale and skipped.
    order: VecDeque<(u16, u64)>,
    next_pid: u16,
    next_seq: u64,
}

impl Outgoing {
    /// Messages in flight.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Takes a free packet id for `delivery` and records it as published.
    /// Returns `None` only when all 65,535 ids are in use.
    pub fn insert(&mut self, delivery: Delivery) -> Option<u16> {
        if self.entries.len() >= usize::from(u16::MAX) {
            return None;
        }
        let pid = loop {
            self.next_pid = self.next_pid.wrapping_add(1);
            if self.next_pid != 0 && !self.entries.contains_key(&self.next_pid) {
                break self.next_pid;
            }
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries
            .insert(pid, (seq, OutState::Published(delivery)));
        self.order.push_back((pid, seq));
        Some(pid)
    }

    /// PUBACK: completes a QoS 1 message.
    pub fn puback(&mut self, pid: u16) -> Result<Delivery, AckError> {
        match self.entries.get(&pid) {
            None => Err(AckError::NotFound),
            Some((_, OutState::Published(d))) if d.qos == rookery_codec::QoS::AtLeastOnce => {
                let Some(OutState::Published(d)) = self.remove(pid) else {
                    return Err(AckError::NotFound);
                };
                Ok(d)
            }
            Some(_) => Err(AckError::WrongState),
        }
    }

    /// PUBREC: a QoS 2 message moves to released (the caller sends PUBREL). When `failed`
    /// (an MQTT 5.0 reason code of 0x80 or more) the message is finished instead, with no PUBREL.
    /// Returns the delivery's stored entry id (0 when not stored).
    pub fn pubrec(&mut self, pid: u16, failed: bool) -> Result<u64, AckError> {
        match self.entries.get_mut(&pid) {
            None => Err(AckError::NotFound),
            Some((_, state @ OutState::Published(_))) => {
                let OutState::Published(d) = state else {
                    return Err(AckError::NotFound);
                };
                if d.qos != rookery_codec::QoS::ExactlyOnce {
                    return Err(AckError::WrongState);
                }
                let stored = d.stored;
                if failed {
                    self.remove(pid);
                } else {
                    *state = OutState::Released(stored);
                }
                Ok(stored)
            }
            // A repeated PUBREC after a reconnect: answer with PUBREL again.
            Some((_, OutState::Released(stored))) => Ok(*stored),
        }
    }

    /// PUBCOMP: completes a QoS 2 message; returns its stored entry id (0 when not stored).
    pub fn pubcomp(&mut self, pid: u16) -> Result<u64, AckError> {
        match self.entries.get(&pid) {
            None => Err(AckError::NotFound),
            Some((_, OutState::Released(stored))) => {
                let stored = *stored;
                self.remove(pid);
                Ok(stored)
            }
            Some(_) => Err(AckError::WrongState),
        }
    }

    /// Forgets a message without an acknowledgement (one the client can never receive, such
    /// as a packet above its Maximum Packet Size: MQTT 5.0 [MQTT-3.1.2-25]).
    /// Returns the stored entry id of what was discarded (0 when not stored).
    pub fn discard(&mut self, pid: u16) -> u64 {
        match self.remove(pid) {
            Some(OutState::Published(d)) => d.stored,
            Some(OutState::Released(stored)) => stored,
            None => 0,
        }
    }

    /// Puts back a message that was in flight with `pid` when the broker stopped (read from
    /// the store at start), in the order of the calls.
    pub fn restore(&mut self, pid: u16, state: OutState) {
        if pid == 0 || self.entries.contains_key(&pid) {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries.insert(pid, (seq, state));
        self.order.push_back((pid, seq));
        self.next_pid = self.next_pid.max(pid);
    }

    fn remove(&mut self, pid: u16) -> Option<OutState> {
        let (_, state) = self.entries.remove(&pid)?;
        // Acks usually arrive in order: trim stale entries from the front so `order` stays short.
        while let Some(&(p, s)) = self.order.front() {
            if self.entries.get(&p).is_some_and(|(seq, _)| *seq == s) {
                break;
            }
            self.order.pop_front();
        }
        if self.order.len() > 2 * self.entries.len() + 32 {
            let entries = &self.entries;
            self.order
                .retain(|(p, s)| entries.get(p).is_some_and(|(seq, _)| seq == s));
        }
        Some(state)
    }

    /// The state of one packet id.
    pub fn get(&self, pid: u16) -> Option<&OutState> {
        self.entries.get(&pid).map(|(_, state)| state)
    }

    /// Everything in flight, in send order: what a resumed session resends.
    pub fn in_order(&self) -> impl Iterator<Item = (u16, &OutState)> {
        self.order
            .iter()
            .filter_map(|(pid, seq)| match self.entries.get(pid) {
                Some((s, state)) if s == seq => Some((*pid, state)),
                _ => None,
            })
    }

    /// Drops every message in flight (a session that ends).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
    }
}

/// Incoming QoS 2 packet ids awaiting PUBREL.
#[derive(Debug, Default)]
pub struct Incoming {
    ids: HashSet<u16, PacketIds>,
}

impl Incoming {
    /// Records a QoS 2 PUBLISH; returns false when the id is already recorded (a resend that
    /// must not be delivered again). MQTT 5.0 section 4.3.3 (method B).
    pub fn receive(&mut self, pid: u16) -> bool {
        self.ids.insert(pid)
    }

    /// True when a QoS 2 PUBLISH with this id was received and not yet released.
    pub fn contains(&self, pid: u16) -> bool {
        self.ids.contains(&pid)
    }

    /// PUBREL: forgets the id; returns false when it was unknown.
    pub fn release(&mut self, pid: u16) -> bool {
        self.ids.remove(&pid)
    }

    /// QoS 2 messages received and not yet released.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// The packet ids received and not yet released.
    pub fn ids(&self) -> impl Iterator<Item = u16> + '_ {
        self.ids.iter().copied()
    }

    /// True when none is pending.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rookery_codec::QoS;

    use super::*;
    use crate::message::Message;

    fn d(qos: QoS) -> Delivery {
        Delivery {
            message: Arc::new(Message::test("t", "p")),
            qos,
            retain: false,
            subscription_ids: Default::default(),
            stored: 0,
        }
    }

    #[test]
    fn qos1_and_qos2_complete_in_their_own_way() {
        let mut o = Outgoing::default();
        let a = o.insert(d(QoS::AtLeastOnce)).unwrap();
        let b = o.insert(d(QoS::ExactlyOnce)).unwrap();
        assert_ne!(a, b);
        assert_eq!(o.puback(b).unwrap_err(), AckError::WrongState);
        assert!(o.puback(a).is_ok());
        assert_eq!(o.puback(a).unwrap_err(), AckError::NotFound);
        assert_eq!(o.pubcomp(b).unwrap_err(), AckError::WrongState);
        o.pubrec(b, false).unwrap();
        o.pubrec(b, false).unwrap();
        o.pubcomp(b).unwrap();
        assert!(o.is_empty());
    }

    #[test]
    fn resend_order_is_send_order_even_with_out_of_order_acks() {
        let mut o = Outgoing::default();
        let ids: Vec<u16> = (0..5)
            .map(|_| o.insert(d(QoS::ExactlyOnce)).unwrap())
            .collect();
        o.pubrec(ids[1], false).unwrap();
        o.pubrec(ids[3], true).unwrap(); // failed: finished without PUBREL
        let order: Vec<(u16, bool)> = o
            .in_order()
            .map(|(p, s)| (p, matches!(s, OutState::Released(_))))
            .collect();
        assert_eq!(
            order,
            vec![
                (ids[0], false),
                (ids[1], true),
                (ids[2], false),
                (ids[4], false)
            ]
        );
    }

    #[test]
    fn packet_ids_skip_zero_and_ids_in_use() {
        let mut o = Outgoing::default();
        let first = o.insert(d(QoS::AtLeastOnce)).unwrap();
        o.next_pid = u16::MAX - 1;
        assert_eq!(o.insert(d(QoS::AtLeastOnce)), Some(u16::MAX));
        // Wraps past 0 and past `first`, which is still in flight.
        let next = o.insert(d(QoS::AtLeastOnce)).unwrap();
        assert_ne!(next, 0);
        assert_ne!(next, first);
    }

    #[test]
    fn order_stays_short_under_steady_acks() {
        let mut o = Outgoing::default();
        for _ in 0..10_000 {
            let p = o.insert(d(QoS::AtLeastOnce)).unwrap();
            o.puback(p).unwrap();
        }
        assert!(o.order.is_empty());
    }

    #[test]
    fn incoming_qos2_dedupes_until_released() {
        let mut i = Incoming::default();
        assert!(i.receive(7));
        assert!(!i.receive(7));
        assert!(i.release(7));
        assert!(!i.release(7));
        assert!(i.receive(7));
    }
}
