//! Messages to the client: the session queue drained into the write buffer within the
//! in-flight window, topic aliases, message expiry, the client's Maximum Packet Size, and the
//! resend of unacknowledged messages when a session resumes.

use std::collections::VecDeque;
use std::time::Instant;

use bytestring::ByteString;
use rookery_codec::encode::{PublishView, encode_publish};
use rookery_codec::{Ack, Packet, QoS, reason};
use rookery_store::stats::LocalHistogram;
use smallvec::SmallVec;

use super::{Conn, DRAIN_BATCH, WRITE_HIGH_WATER};
use crate::message::Delivery;
use crate::session::inflight::OutState;

impl Conn {
    /// Moves deliveries from the session queue into the write buffer until the queue is empty,
    /// the in-flight window is full or the buffer reaches its high-water mark.
    pub(super) fn drain_queue(&mut self) {
        let now = Instant::now();
        // Merged into the broker's histogram once per drain, not once per delivery.
        let mut latency = LocalHistogram::default();
        self.drain_queue_at(now, &mut latency);
        self.broker.metrics.delivery_latency.merge(&latency);
    }

    fn drain_queue_at(&mut self, now: Instant, latency: &mut LocalHistogram) {
        if self.resend_backlog.is_some() {
            // Messages left in flight by the last connection go first, in their order.
            self.resend_from_backlog(now);
            if self.resend_backlog.is_some() {
                self.out_pending = true;
                return;
            }
        }
        while self.wbuf.len() < WRITE_HIGH_WATER {
            let mut batch: SmallVec<[Delivery; DRAIN_BATCH]> = SmallVec::new();
            let window = self.window();
            let mut inflight = self.state.outgoing.len();
            let limit = super::resume_below(&self.broker);
            let mut was_over = false;
            // Under the queue lock only pops: encoding happens after it is released.
            let (empty, window_full) = self.session.with_queue(|q| {
                was_over = q.len() >= limit;
                while batch.len() < DRAIN_BATCH {
                    match q.front_qos() {
                        None => return (true, false),
                        Some(QoS::AtMostOnce) => {}
                        Some(_) if inflight >= window => return (false, true),
                        Some(_) => inflight += 1,
                    }
                    if let Some(d) = q.pop() {
                        batch.push(d);
                    }
                }
                (q.is_empty(), false)
            });
            if was_over && self.session.queued() < limit {
                // Publishers paused by backpressure may go on (see `resume_below`).
                self.session.space.notify_waiters();
            }
            for delivery in batch {
                latency.observe(now.saturating_duration_since(delivery.message.received));
                self.send_delivery(delivery, now);
            }
            if empty {
                // The next push that finds the queue empty wakes us.
                self.out_pending = false;
                return;
            }
            // Deliveries counted into the window may have been dropped (expired, too large):
            // only a window that is really full waits for acknowledgements.
            if window_full && self.state.outgoing.len() >= self.window() {
                self.out_pending = true;
                return;
            }
        }
    }

    fn send_delivery(&mut self, delivery: Delivery, now: Instant) {
        let message = &delivery.message;
        if message.is_expired(now) {
            // MQTT 5.0 [MQTT-3.3.2-5]: an expired message is not sent.
            self.counts.expired();
            self.forget_stored(delivery.stored);
            return;
        }
        let qos = delivery.qos;
        let packet_id = if qos == QoS::AtMostOnce {
            0
        } else {
            match self.state.outgoing.insert(delivery.clone()) {
                Some(pid) => pid,
                None => return, // cannot happen: the window is at most 65,535
            }
        };
        if packet_id != 0
            && self.record_inflight(packet_id, delivery.stored, qos == QoS::ExactlyOnce)
        {
            // Sent once its packet id is durable.
            self.counts
                .sent(qos as usize, delivery.message.payload.len());
            return;
        }
        let delivery = &delivery;
        self.ensure_wbuf();
        let (topic, alias, new_alias) = self.outgoing_alias(&delivery.message.topic);
        let start = self.wbuf.len();
        let message = &delivery.message;
        encode_publish(
            &mut self.wbuf,
            self.protocol,
            &PublishView {
                dup: false,
                qos,
                retain: delivery.retain,
                topic,
                packet_id,
                payload: &message.payload,
                properties: &message.properties,
                topic_alias: alias,
                message_expiry_interval: message.remaining_expiry(now),
                subscription_identifiers: &delivery.subscription_ids,
            },
        );
        if self.wbuf.len() - start > self.max_packet_to_client() {
            // MQTT 5.0 [MQTT-3.1.2-24], [MQTT-3.1.2-25]: too large for the client; discard as if sent.
            self.wbuf.truncate(start);
            if new_alias && let Some(aliases) = &mut self.out_aliases {
                aliases.remove(&message.topic);
            }
            if packet_id != 0 {
                let stored = self.state.outgoing.discard(packet_id);
                self.forget_stored(stored);
            }
            self.counts.too_large();
            return;
        }
        self.counts
            .sent(qos as usize, delivery.message.payload.len());
    }

    /// The topic to put in a PUBLISH and the alias to send with it. The third value is true
    /// when this PUBLISH establishes the alias.
    fn outgoing_alias<'t>(&mut self, topic: &'t ByteString) -> (&'t str, Option<u16>, bool) {
        if self.alias_max == 0 {
            return (topic, None, false);
        }
        let aliases = self.out_aliases.get_or_insert_with(Default::default);
        if let Some(&alias) = aliases.get(topic) {
            return ("", Some(alias), false);
        }
        let next = aliases.len() + 1;
        if next > usize::from(self.alias_max) {
            return (topic, None, false);
        }
        let alias = next as u16;
        // A compact copy: the key outlives the message it came from.
        aliases.insert(ByteString::from(&**topic), alias);
        (topic, Some(alias), true)
    }

    /// After a resume, resends what the session left in flight in its original order:
    /// PUBLISH with DUP for messages not acknowledged (within the new connection's window),
    /// PUBREL for QoS 2 messages already received. MQTT 5.0 [MQTT-4.4.0-1], [MQTT-3.3.4-9].
    pub(super) fn resend_inflight(&mut self) {
        let backlog: VecDeque<u16> = self.state.outgoing.in_order().map(|(pid, _)| pid).collect();
        if !backlog.is_empty() {
            self.resend_backlog = Some(Box::new(backlog));
            self.resend_from_backlog(Instant::now());
        }
    }

    /// Resends backlog entries while the window allows: an entry still waiting to be resent is
    /// in `outgoing` but not on this connection's wire, so it does not count as in flight.
    /// (A released QoS 2 entry still counts until PUBCOMP, which keeps the window conservative.)
    fn resend_from_backlog(&mut self, now: Instant) {
        while let Some(backlog) = self.resend_backlog.as_mut() {
            let Some(&packet_id) = backlog.front() else {
                self.resend_backlog = None;
                return;
            };
            let on_wire = self.state.outgoing.len() - backlog.len();
            if on_wire >= usize::from(self.out_window) || self.wbuf.len() >= WRITE_HIGH_WATER {
                return;
            }
            backlog.pop_front();
            // Acknowledged meanwhile (the client may ack a packet it got before reconnecting):
            // nothing is written.
            self.write_inflight(packet_id, true, now);
        }
    }

    /// Encodes the in-flight message `pid`: PUBLISH (with `dup` on a resend), or PUBREL once
    /// PUBREC came. No topic alias: a resend may reach a connection that never set it up.
    pub(super) fn write_inflight(&mut self, pid: u16, dup: bool, now: Instant) {
        self.ensure_wbuf();
        let start = self.wbuf.len();
        match self.state.outgoing.get(pid) {
            Some(OutState::Published(d)) => {
                let m = &d.message;
                encode_publish(
                    &mut self.wbuf,
                    self.protocol,
                    &PublishView {
                        dup,
                        qos: d.qos,
                        retain: d.retain,
                        topic: &m.topic,
                        packet_id: pid,
                        payload: &m.payload,
                        properties: &m.properties,
                        topic_alias: None,
                        message_expiry_interval: m.remaining_expiry(now),
                        subscription_identifiers: &d.subscription_ids,
                    },
                );
            }
            Some(OutState::Released(_)) => {
                let rel = Packet::PubRel(Ack {
                    packet_id: pid,
                    reason: reason::SUCCESS,
                    ..Default::default()
                });
                rookery_codec::encode(&rel, self.protocol, &mut self.wbuf);
                return;
            }
            None => return,
        }
        if self.wbuf.len() - start > self.max_packet_to_client() {
            // Too large for what this connection accepts: as for a new message, discard.
            self.wbuf.truncate(start);
            let stored = self.state.outgoing.discard(pid);
            self.forget_stored(stored);
            self.counts.too_large();
        }
    }
}
