//! Packets from the client: PUBLISH and its acknowledgements, SUBSCRIBE, UNSUBSCRIBE, PINGREQ,
//! DISCONNECT. Each handler either answers into the write buffer or ends the connection.

use std::sync::Arc;
use std::time::Instant;

use bytestring::ByteString;
use rookery_codec::{
    Ack, AckProperties, Packet, Publish, QoS, RetainHandling, SubAck, Subscribe, UnsubAck,
    Unsubscribe, reason,
};
use std::sync::atomic::Ordering;

use rookery_auth::acl::SubscribeDecision;
use tracing::{debug, info};

use super::{Close, Conn, hold_for_link, hold_for_memory, hold_until};
use crate::limits::{ClientRate, RateAction};
use crate::message::Message;
use crate::metrics::RateLimit;
use crate::router::topic;
use crate::router::trie::Subscription;
use crate::session::inflight::AckError;

impl Conn {
    pub(super) fn handle(&mut self, packet: Packet) -> Result<(), Close> {
        match packet {
            Packet::Publish(p) => self.on_publish(p),
            Packet::PubAck(a) => {
                match self.state.outgoing.puback(a.packet_id) {
                    Ok(d) => self.forget_stored(d.stored),
                    Err(AckError::WrongState) => debug!(
                        packet_id = a.packet_id,
                        "PUBACK for a message not awaiting one"
                    ),
                    Err(AckError::NotFound) => {}
                }
                self.out_pending = true;
                Ok(())
            }
            Packet::PubRec(a) => self.on_pubrec(a),
            Packet::PubRel(a) => {
                let known = self.state.incoming.release(a.packet_id);
                let code = if known || !self.protocol.is_v5() {
                    reason::SUCCESS
                } else {
                    reason::PACKET_IDENTIFIER_NOT_FOUND
                };
                // Forgetting the id must be durable before PUBCOMP: a crash after PUBCOMP
                // with the id still stored would take the client's next message with that id
                // for a resend and drop it.
                let ticket = if known {
                    self.record_incoming(a.packet_id, false)
                } else {
                    None
                };
                self.write_ack_packet_after(
                    ticket,
                    Vec::new(),
                    Packet::PubComp,
                    Ack {
                        packet_id: a.packet_id,
                        reason: code,
                        ..Default::default()
                    },
                );
                Ok(())
            }
            Packet::PubComp(a) => {
                match self.state.outgoing.pubcomp(a.packet_id) {
                    Ok(stored) => self.forget_stored(stored),
                    Err(AckError::WrongState) => debug!(
                        packet_id = a.packet_id,
                        "PUBCOMP for a message not awaiting one"
                    ),
                    Err(AckError::NotFound) => {}
                }
                self.out_pending = true;
                Ok(())
            }
            Packet::Subscribe(s) => self.on_subscribe(s),
            Packet::Unsubscribe(u) => self.on_unsubscribe(u),
            Packet::PingReq => {
                self.write_packet(&Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(d) => self.on_disconnect(d),
            // MQTT 5.0 [MQTT-3.1.0-2]: a second CONNECT is a protocol error.
            Packet::Connect(_) => Err(Close::Violation(reason::PROTOCOL_ERROR, "second CONNECT")),
            // No AUTH method was negotiated, so AUTH is out of place. [MQTT-4.12.0-1]
            Packet::Auth(_) => Err(Close::Violation(
                reason::PROTOCOL_ERROR,
                "AUTH without an authentication method",
            )),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                Err(Close::Violation(
                    reason::PROTOCOL_ERROR,
                    "server-to-client packet from a client",
                ))
            }
        }
    }

    fn on_publish(&mut self, mut p: Publish) -> Result<(), Close> {
        let qos = p.qos;
        self.counts.received(qos as usize, p.payload.len());
        self.resolve_topic_alias(&mut p)?;
        if topic::validate_name(&p.topic, self.broker.config.max_topic_levels).is_err() {
            // MQTT 5.0 [MQTT-3.3.2-2]: Topic Name invalid; 3.1.1 closes the connection.
            return Err(Close::Violation(
                reason::TOPIC_NAME_INVALID,
                "invalid topic name in PUBLISH",
            ));
        }
        if qos == QoS::ExactlyOnce && self.state.incoming.contains(p.packet_id) {
            // A resend of a QoS 2 message we already have: acknowledge, do not deliver again.
            self.write_ack_after(None, Packet::PubRec, p.packet_id, reason::SUCCESS, None);
            return Ok(());
        }
        // `$SYS` belongs to the broker: no client publishes there, whatever the ACL says.
        if p.topic.starts_with("$SYS")
            || !self.broker.security.can_publish(
                self.username.as_deref(),
                &self.session.client_id,
                &p.topic,
            )
        {
            return self.deny_publish(&p);
        }
        if qos == QoS::ExactlyOnce {
            if self.state.incoming.len() >= usize::from(self.broker.config.receive_maximum) {
                // MQTT 5.0 [MQTT-3.3.4-9]. Checked before the id is recorded, so that a resend
                // after reconnecting is routed and not taken for a duplicate.
                return Err(Close::Violation(
                    reason::RECEIVE_MAXIMUM_EXCEEDED,
                    "receive maximum exceeded",
                ));
            }
            self.state.incoming.receive(p.packet_id);
        }
        if p.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&p.payload).is_err()
        {
            // MQTT 5.0 section 3.3.2.3.2: the payload claims UTF-8 and is not.
            let why = self.reason_string("payload is not UTF-8 as its format indicator says");
            if qos == QoS::ExactlyOnce {
                self.state.incoming.release(p.packet_id);
            }
            match qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => self.write_ack(
                    Packet::PubAck,
                    p.packet_id,
                    reason::PAYLOAD_FORMAT_INVALID,
                    why,
                ),
                QoS::ExactlyOnce => self.write_ack(
                    Packet::PubRec,
                    p.packet_id,
                    reason::PAYLOAD_FORMAT_INVALID,
                    why,
                ),
            }
            return Ok(());
        }
        let packet_id = p.packet_id;
        let payload_len = p.payload.len();
        let message = Arc::new(Message::from_publish(p, self.session.id, Instant::now()));
        let routed = self.broker.route(&message);
        if routed.refused {
            return self.refuse_unstorable(qos, packet_id);
        }
        // The received id is stored after the message's entries, in the same or a later
        // commit: PUBREC waits for both.
        let incoming_ticket = if qos == QoS::ExactlyOnce {
            self.record_incoming(packet_id, true)
        } else {
            None
        };
        let ticket = routed.ticket.max(incoming_ticket);
        let receivers = routed.receivers;
        let forwarded = routed.forwarded;
        self.work = self
            .work
            .saturating_add(u32::try_from(receivers).unwrap_or(u32::MAX))
            .saturating_add(1);
        if let Some(session) = routed.congested {
            // A subscriber's queue is over its limit: stop reading from this publisher until
            // it drains, rather than drop what we acknowledge.
            self.congested = Some(session);
        }
        if let Some(queue) = routed.peer_congested {
            // The same for a peer node's link.
            self.held = Some(hold_for_link(queue));
        }
        // MQTT 5.0: 0x10 tells the publisher nobody subscribed; 3.1.1 acks carry no code.
        let code = if receivers == 0 {
            reason::NO_MATCHING_SUBSCRIBERS
        } else {
            reason::SUCCESS
        };
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                self.write_forwarded_ack_after(ticket, forwarded, Packet::PubAck, packet_id, code)
            }
            QoS::ExactlyOnce => {
                self.write_forwarded_ack_after(ticket, forwarded, Packet::PubRec, packet_id, code)
            }
        }
        self.apply_limits(payload_len)
    }

    /// After a PUBLISH: the client's rate limits and the broker's memory mark decide whether
    /// (and how long) it is read no more. The message itself is already taken.
    fn apply_limits(&mut self, payload_len: usize) -> Result<(), Close> {
        let metrics = &self.broker.metrics;
        if self.broker.memory.is_high() {
            metrics.rate_limited(RateLimit::Memory);
            self.held = Some(hold_for_memory(self.broker.clone()));
            return Ok(());
        }
        if !self.broker.publish_limits_on() {
            return Ok(());
        }
        let limits = self.broker.limits.load();
        let now = Instant::now();
        let rate = self
            .rate
            .get_or_insert_with(|| Box::new(ClientRate::new(&limits, now)));
        let Some((wait, which)) = rate.take(&limits, payload_len, now) else {
            return Ok(());
        };
        metrics.rate_limited(which);
        if self.protocol.is_v5() && limits.action == RateAction::Disconnect {
            return Err(Close::Kicked(reason::MESSAGE_RATE_TOO_HIGH));
        }
        self.held = Some(hold_until(tokio::time::Instant::from_std(now + wait)));
        Ok(())
    }

    /// A QoS 1/2 message for persistent sessions that the store cannot take now (failing, or
    /// behind): not acknowledged as if kept. MQTT 5.0 clients get 0x97 (quota exceeded) and
    /// may retry; 3.1.1 has no failure code in PUBACK, so the connection closes without one
    /// and the client resends after reconnecting.
    fn refuse_unstorable(&mut self, qos: QoS, packet_id: u16) -> Result<(), Close> {
        self.broker
            .metrics
            .publishes_refused_store_total
            .fetch_add(1, Ordering::Relaxed);
        if qos == QoS::ExactlyOnce {
            self.state.incoming.release(packet_id);
        }
        if !self.protocol.is_v5() {
            return Err(Close::Kicked(reason::QUOTA_EXCEEDED));
        }
        let why = self.reason_string("the message store cannot take this message now");
        let kind = if qos == QoS::ExactlyOnce {
            Packet::PubRec
        } else {
            Packet::PubAck
        };
        self.write_ack_after(None, kind, packet_id, reason::QUOTA_EXCEEDED, why);
        Ok(())
    }

    /// A PUBLISH the ACL does not allow: dropped and counted. MQTT 5.0 clients get 0x87 in
    /// the PUBACK or PUBREC; 3.1.1 has no way to say it, so their acknowledgements look
    /// normal (as in Mosquitto) and the message goes nowhere.
    fn deny_publish(&mut self, p: &Publish) -> Result<(), Close> {
        self.broker
            .metrics
            .publishes_denied_total
            .fetch_add(1, Ordering::Relaxed);
        self.note_denied("PUBLISH", &p.topic);
        let v5 = self.protocol.is_v5();
        let why = if v5 {
            self.reason_string("the ACL does not allow publishing to this topic")
        } else {
            None
        };
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                let code = if v5 {
                    reason::NOT_AUTHORIZED
                } else {
                    reason::SUCCESS
                };
                self.write_ack(Packet::PubAck, p.packet_id, code, why);
            }
            QoS::ExactlyOnce if v5 => {
                // A failure code in PUBREC ends the exchange: no PUBREL follows.
                self.write_ack(Packet::PubRec, p.packet_id, reason::NOT_AUTHORIZED, why);
            }
            QoS::ExactlyOnce => {
                if !self.state.incoming.contains(p.packet_id) {
                    self.state.incoming.receive(p.packet_id);
                }
                self.write_ack(Packet::PubRec, p.packet_id, reason::SUCCESS, None);
            }
        }
        Ok(())
    }

    /// Logs an ACL denial: the first per connection, then every 1000th, so that a device
    /// stuck on a forbidden topic cannot flood the log.
    fn note_denied(&mut self, what: &'static str, topic: &str) {
        if self.acl_denials.is_multiple_of(1000) {
            let _span = self.log_span().entered();
            info!(
                what,
                topic,
                username = self.username.as_deref().unwrap_or(""),
                denied_so_far = self.acl_denials + 1,
                "denied by the ACL"
            );
        }
        self.acl_denials += 1;
    }

    /// MQTT 5.0 section 3.3.2.3.4: a topic alias either sets a mapping (topic given) or uses one
    /// (empty topic).
    fn resolve_topic_alias(&mut self, p: &mut Publish) -> Result<(), Close> {
        let Some(alias) = p.properties.topic_alias else {
            if p.topic.is_empty() {
                return Err(Close::Violation(
                    reason::PROTOCOL_ERROR,
                    "empty topic without a topic alias",
                ));
            }
            return Ok(());
        };
        if alias == 0 || alias > self.broker.config.topic_alias_maximum {
            // [MQTT-3.3.2-8], [MQTT-3.3.2-9].
            return Err(Close::Violation(
                reason::TOPIC_ALIAS_INVALID,
                "topic alias out of range",
            ));
        }
        if p.topic.is_empty() {
            match self.in_aliases.as_ref().and_then(|a| a.get(&alias)) {
                Some(topic) => p.topic = topic.clone(),
                None => {
                    return Err(Close::Violation(
                        reason::PROTOCOL_ERROR,
                        "unknown topic alias",
                    ));
                }
            }
        } else {
            // A compact copy: the mapping outlives this packet's read buffer.
            self.in_aliases
                .get_or_insert_with(Default::default)
                .insert(alias, ByteString::from(&*p.topic));
        }
        Ok(())
    }

    fn write_ack(
        &mut self,
        kind: fn(Ack) -> Packet,
        packet_id: u16,
        code: u8,
        why: Option<ByteString>,
    ) {
        self.write_ack_after(None, kind, packet_id, code, why);
    }

    /// An acknowledgement, written once `ticket` is durable (and after any that wait).
    fn write_ack_after(
        &mut self,
        ticket: Option<rookery_store::committer::Ticket>,
        kind: fn(Ack) -> Packet,
        packet_id: u16,
        code: u8,
        why: Option<ByteString>,
    ) {
        let properties = AckProperties {
            reason_string: why,
            user_properties: Vec::new(),
        };
        self.write_ack_packet_after(
            ticket,
            Vec::new(),
            kind,
            Ack {
                packet_id,
                reason: code,
                properties,
            },
        );
    }

    /// The PUBACK or PUBREC of a routed PUBLISH: written once `ticket` is durable and the peers
    /// it was forwarded to acknowledged it (and after any that wait).
    fn write_forwarded_ack_after(
        &mut self,
        ticket: Option<rookery_store::committer::Ticket>,
        forwarded: Vec<crate::cluster::AckWait>,
        kind: fn(Ack) -> Packet,
        packet_id: u16,
        code: u8,
    ) {
        self.write_ack_packet_after(
            ticket,
            forwarded,
            kind,
            Ack {
                packet_id,
                reason: code,
                properties: AckProperties::default(),
            },
        );
    }

    fn on_pubrec(&mut self, a: Ack) -> Result<(), Close> {
        let failed = self.protocol.is_v5() && a.reason >= 0x80;
        match self.state.outgoing.pubrec(a.packet_id, failed) {
            Ok(stored) if failed => {
                self.forget_stored(stored);
                self.out_pending = true;
            }
            Ok(stored) => {
                // After a crash the broker must resend PUBREL, never the PUBLISH again.
                let ticket = self.record_released(a.packet_id, stored);
                self.write_ack_after(ticket, Packet::PubRel, a.packet_id, reason::SUCCESS, None);
            }
            Err(AckError::NotFound) => {
                // MQTT 5.0 section 4.3.3: answer PUBREL with 0x92 so the client can finish.
                let code = if self.protocol.is_v5() {
                    reason::PACKET_IDENTIFIER_NOT_FOUND
                } else {
                    reason::SUCCESS
                };
                self.write_ack(Packet::PubRel, a.packet_id, code, None);
            }
            Err(AckError::WrongState) => {
                debug!(packet_id = a.packet_id, "PUBREC for a QoS 1 message")
            }
        }
        Ok(())
    }

    fn on_subscribe(&mut self, s: Subscribe) -> Result<(), Close> {
        let v5 = self.protocol.is_v5();
        let id = s.properties.subscription_identifier;
        let max_levels = self.broker.config.max_topic_levels;
        let mut codes = Vec::with_capacity(s.filters.len());
        let now = Instant::now();
        let mut retained_ticket = None;
        {
            // A handle of our own: the router guard must not borrow `self`.
            let broker = self.broker.clone();
            let mut router = broker.router.write();
            for f in &s.filters {
                let parsed = match topic::parse_filter(&f.filter, max_levels) {
                    Ok(p) => p,
                    Err(_) => {
                        codes.push(if v5 {
                            reason::TOPIC_FILTER_INVALID
                        } else {
                            reason::v3::SUBACK_FAILURE
                        });
                        continue;
                    }
                };
                if parsed.group.is_some() && f.options.no_local {
                    // MQTT 5.0 [MQTT-3.8.3-4].
                    return Err(Close::Violation(
                        reason::PROTOCOL_ERROR,
                        "No Local on a shared subscription",
                    ));
                }
                let acl_check = match self.broker.security.check_subscribe(
                    self.username.as_deref(),
                    &self.session.client_id,
                    parsed.filter,
                ) {
                    SubscribeDecision::Denied => {
                        self.broker
                            .metrics
                            .subscriptions_denied_total
                            .fetch_add(1, Ordering::Relaxed);
                        self.note_denied("SUBSCRIBE", &f.filter);
                        codes.push(if v5 {
                            reason::NOT_AUTHORIZED
                        } else {
                            reason::v3::SUBACK_FAILURE
                        });
                        continue;
                    }
                    SubscribeDecision::Allowed { check_each_message } => check_each_message,
                };
                let sub = Subscription {
                    options: f.options,
                    id,
                    acl_check,
                };
                let key = ByteString::from(&*f.filter);
                let existed = self.state.subscriptions.insert(key, sub).is_some();
                router.subscribe(&self.session, parsed.filter, parsed.group, sub);
                codes.push(f.options.qos as u8);
                // Retained messages: not for shared subscriptions (MQTT 5.0 section 4.8.2).
                let send = parsed.group.is_none()
                    && match f.options.retain_handling {
                        RetainHandling::SendAtSubscribe => true,
                        RetainHandling::SendIfNew => !existed,
                        RetainHandling::DoNotSend => false,
                    };
                // Queued under the router lock, so that a retained publish racing this
                // SUBSCRIBE cannot arrive before the older value. They are written after the
                // SUBACK: the queue is drained only once this packet is handled.
                if send {
                    let (sent, ticket) = broker.send_retained(
                        &self.session,
                        parsed.filter,
                        f.options.qos,
                        id,
                        acl_check.then_some(self.username.as_deref()),
                        now,
                    );
                    if sent > 0 {
                        self.out_pending = true;
                    }
                    retained_ticket = retained_ticket.max(ticket);
                }
            }
        }
        let ticket = self.store_session().max(retained_ticket);
        self.write_after(
            ticket,
            Packet::SubAck(SubAck {
                packet_id: s.packet_id,
                reason_codes: codes,
                properties: AckProperties::default(),
            }),
        );
        Ok(())
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe) -> Result<(), Close> {
        let mut codes = Vec::with_capacity(u.filters.len());
        {
            let mut router = self.broker.router.write();
            for raw in &u.filters {
                let Ok(parsed) = topic::parse_filter(raw, self.broker.config.max_topic_levels)
                else {
                    codes.push(reason::TOPIC_FILTER_INVALID);
                    continue;
                };
                let existed = self.state.subscriptions.remove(raw).is_some();
                router.unsubscribe(self.session.id, parsed.filter, parsed.group);
                codes.push(if existed {
                    reason::SUCCESS
                } else {
                    reason::NO_SUBSCRIPTION_EXISTED
                });
            }
        }
        let ticket = self.store_session();
        let reason_codes = if self.protocol.is_v5() {
            codes
        } else {
            Vec::new()
        };
        self.write_after(
            ticket,
            Packet::UnsubAck(UnsubAck {
                packet_id: u.packet_id,
                reason_codes,
                properties: AckProperties::default(),
            }),
        );
        Ok(())
    }

    fn on_disconnect(&mut self, d: rookery_codec::Disconnect) -> Result<(), Close> {
        if let Some(secs) = d.properties.session_expiry_interval {
            if self.expiry_secs == 0 && secs != 0 {
                // MQTT 5.0 [MQTT-3.14.2-2].
                return Err(Close::Violation(
                    reason::PROTOCOL_ERROR,
                    "session expiry set at DISCONNECT after 0 at CONNECT",
                ));
            }
            self.expiry_secs = secs.min(self.broker.config.max_session_expiry_secs);
            self.session.set_expiry_secs(self.expiry_secs);
        }
        // Only a normal disconnection (0x00) deletes the will. MQTT 5.0 [MQTT-3.1.2-10].
        Err(Close::ClientDisconnect {
            with_will: d.reason != reason::SUCCESS,
        })
    }
}
