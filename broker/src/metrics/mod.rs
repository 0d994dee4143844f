//! Broker-wide counters and gauges: plain atomics, cheap to bump, read by the metrics endpoint
//! ([`crate::admin`]) and the `$SYS` publisher ([`crate::sys`]).
//!
//! Connections batch their increments (one add per read or write batch, not per packet) so
//! that the hot path does not bounce these cache lines between cores. What can be counted
//! from the state itself (sessions, subscriptions, queues) is not counted here but surveyed
//! at scrape time ([`survey`]).

pub mod survey;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use rookery_codec::{Protocol, reason};
use rookery_store::stats::Histogram;

use crate::listener::ListenerKind;

/// Index of a listener kind in per-listener arrays.
pub fn listener_index(kind: ListenerKind) -> usize {
    match kind {
        ListenerKind::Mqtt => 0,
        ListenerKind::Mqtts => 1,
        ListenerKind::Ws => 2,
        ListenerKind::Wss => 3,
        ListenerKind::Coap => 4,
        ListenerKind::Bridge => 5,
    }
}

/// Listener kinds in index order.
pub const LISTENERS: [ListenerKind; 6] = [
    ListenerKind::Mqtt,
    ListenerKind::Mqtts,
    ListenerKind::Ws,
    ListenerKind::Wss,
    ListenerKind::Coap,
    ListenerKind::Bridge,
];

/// Index of a protocol version in per-protocol arrays.
pub fn protocol_index(p: Protocol) -> usize {
    match p {
        Protocol::V31 => 0,
        Protocol::V311 => 1,
        Protocol::V5 => 2,
    }
}

/// Protocol label values in index order.
pub const PROTOCOLS: [&str; 3] = ["3.1", "3.1.1", "5.0"];

/// Why a connection was refused before it became a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseReason {
    /// Malformed CONNECT or protocol error before it.
    Malformed = 0,
    /// Protocol level not supported.
    UnsupportedProtocol,
    /// Wrong or missing credentials.
    BadCredentials,
    /// The ACL or certificate rules do not allow this client.
    NotAuthorized,
    /// Banned (failed logins, flapping).
    Banned,
    /// Client id refused.
    ClientIdInvalid,
    /// Too many connections (per address) or the server cannot serve it now.
    ServerBusy,
    /// No CONNECT (or no TLS/WebSocket handshake) within the connect timeout.
    Timeout,
    /// A quota (e.g. the store cannot take the session).
    QuotaExceeded,
    /// The TLS handshake failed (no or a bad client certificate, no shared protocol).
    TlsHandshake,
    /// Anything else.
    Other,
}

impl RefuseReason {
    /// Every reason, in index order.
    pub const ALL: [RefuseReason; 11] = [
        RefuseReason::Malformed,
        RefuseReason::UnsupportedProtocol,
        RefuseReason::BadCredentials,
        RefuseReason::NotAuthorized,
        RefuseReason::Banned,
        RefuseReason::ClientIdInvalid,
        RefuseReason::ServerBusy,
        RefuseReason::Timeout,
        RefuseReason::QuotaExceeded,
        RefuseReason::TlsHandshake,
        RefuseReason::Other,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RefuseReason::Malformed => "malformed",
            RefuseReason::UnsupportedProtocol => "unsupported_protocol",
            RefuseReason::BadCredentials => "bad_credentials",
            RefuseReason::NotAuthorized => "not_authorized",
            RefuseReason::Banned => "banned",
            RefuseReason::ClientIdInvalid => "client_id_invalid",
            RefuseReason::ServerBusy => "server_busy",
            RefuseReason::Timeout => "timeout",
            RefuseReason::QuotaExceeded => "quota_exceeded",
            RefuseReason::TlsHandshake => "tls_handshake",
            RefuseReason::Other => "other",
        }
    }

    /// The reason behind an MQTT 5.0 CONNACK reason code.
    pub fn from_code(code: u8) -> RefuseReason {
        match code {
            reason::MALFORMED_PACKET | reason::PROTOCOL_ERROR => RefuseReason::Malformed,
            reason::UNSUPPORTED_PROTOCOL_VERSION => RefuseReason::UnsupportedProtocol,
            reason::BAD_USERNAME_OR_PASSWORD | reason::BAD_AUTHENTICATION_METHOD => {
                RefuseReason::BadCredentials
            }
            reason::NOT_AUTHORIZED => RefuseReason::NotAuthorized,
            reason::BANNED => RefuseReason::Banned,
            reason::CLIENT_IDENTIFIER_NOT_VALID => RefuseReason::ClientIdInvalid,
            reason::SERVER_BUSY | reason::SERVER_UNAVAILABLE | reason::CONNECTION_RATE_EXCEEDED => {
                RefuseReason::ServerBusy
            }
            reason::QUOTA_EXCEEDED => RefuseReason::QuotaExceeded,
            _ => RefuseReason::Other,
        }
    }
}

/// Which limit held a client back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimit {
    /// Per-client PUBLISH packets per second.
    PublishRate = 0,
    /// Per-client PUBLISH payload bytes per second.
    ByteRate,
    /// Per-listener new connections per second.
    ConnectionRate,
    /// Publishers paused at the memory high-water mark.
    Memory,
}

impl RateLimit {
    /// Every limit, in index order.
    pub const ALL: [RateLimit; 4] = [
        RateLimit::PublishRate,
        RateLimit::ByteRate,
        RateLimit::ConnectionRate,
        RateLimit::Memory,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RateLimit::PublishRate => "publish_rate",
            RateLimit::ByteRate => "byte_rate",
            RateLimit::ConnectionRate => "connection_rate",
            RateLimit::Memory => "memory",
        }
    }
}

/// Why a message was not delivered to one subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The subscriber's queue was full.
    QueueFull,
    /// The message expired before it could be sent.
    Expired,
    /// Larger than the subscriber's Maximum Packet Size.
    TooLarge,
    /// QoS 0 for an offline session.
    Offline,
}

/// The counters. Field names follow the Prometheus names they are exported under.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Open sockets (before and after CONNECT).
    pub connections: AtomicI64,
    /// Sockets accepted since start.
    pub connections_total: AtomicU64,
    /// Sockets accepted, by listener.
    pub connection_attempts_total: [AtomicU64; 6],
    /// Connected clients (CONNACK sent), by listener and protocol.
    pub clients: [[AtomicI64; 3]; 6],
    /// CONNECTs accepted, by listener and protocol.
    pub clients_total: [[AtomicU64; 3]; 6],
    /// CONNECTs refused (any reason).
    pub connects_refused_total: AtomicU64,
    /// CONNECTs refused, by [`RefuseReason`].
    pub refused_by_reason: [AtomicU64; 11],
    /// Bridges whose link to their upstream is up.
    pub bridges_up: AtomicI64,
    /// CoAP requests, by method ([`crate::coap::METHODS`]).
    pub coap_requests_total: [AtomicU64; 4],
    /// CoAP datagrams dropped, by [`crate::coap::Dropped`].
    pub coap_dropped_total: [AtomicU64; 5],
    /// CoAP notifications sent to observers.
    pub coap_notifications_total: AtomicU64,
    /// MQTT commands sent to CoAP devices, by [`crate::coap::COMMAND_RESULTS`].
    pub coap_commands_total: [AtomicU64; 3],
    /// DTLS handshakes on the CoAP gateway's secure listener, by
    /// [`crate::coap::dtls::HANDSHAKE_RESULTS`].
    pub coap_handshakes_total: [AtomicU64; 3],
    /// DTLS sessions of the CoAP gateway (established or in their handshake).
    pub coap_dtls_sessions: AtomicI64,
    /// Times a limit held a client back, by [`RateLimit`].
    pub rate_limited_total: [AtomicU64; 4],
    /// Outgoing QoS 1/2 messages waiting for their acknowledgement (connections report
    /// changes when they flush their counts).
    pub inflight: AtomicI64,
    /// Publish to delivery: from the PUBLISH being read to the delivery being written.
    pub delivery_latency: Histogram,
    /// Bans for failed logins.
    pub bans_auth_total: AtomicU64,
    /// Bans for flapping.
    pub bans_flapping_total: AtomicU64,
    /// Messages forwarded by the `$SYS` publisher.
    pub sys_published_total: AtomicU64,
    /// Connections closed for a malformed packet or protocol error.
    pub protocol_errors_total: AtomicU64,
    /// Connections closed for keep-alive timeout.
    pub keepalive_timeouts_total: AtomicU64,
    /// Connections that sent no CONNECT in time.
    pub connect_timeouts_total: AtomicU64,
    /// PUBLISH packets received, by QoS.
    pub messages_received_total: [AtomicU64; 3],
    /// PUBLISH packets sent, by QoS.
    pub messages_sent_total: [AtomicU64; 3],
    /// PUBLISH payload bytes received, by QoS.
    pub payload_bytes_received_total: [AtomicU64; 3],
    /// PUBLISH payload bytes sent, by QoS.
    pub payload_bytes_sent_total: [AtomicU64; 3],
    /// Bytes read from clients.
    pub bytes_received_total: AtomicU64,
    /// Bytes written to clients.
    pub bytes_sent_total: AtomicU64,
    /// Deliveries dropped: queue full.
    pub dropped_queue_full_total: AtomicU64,
    /// Deliveries dropped: expired.
    pub dropped_expired_total: AtomicU64,
    /// Deliveries dropped: larger than the client's maximum packet size.
    pub dropped_too_large_total: AtomicU64,
    /// QoS 0 deliveries not queued for offline sessions.
    pub dropped_offline_total: AtomicU64,
    /// Session takeovers (a CONNECT with a client id already connected).
    pub takeovers_total: AtomicU64,
    /// Will messages published.
    pub wills_published_total: AtomicU64,
    /// Sessions that expired.
    pub sessions_expired_total: AtomicU64,
    /// TLS handshakes that failed (bad or missing client certificate, protocol mismatch).
    pub tls_handshake_failures_total: AtomicU64,
    /// CONNECTs refused for bad credentials.
    pub auth_failures_total: AtomicU64,
    /// CONNECTs refused because the client id, address or username is banned.
    pub connects_banned_total: AtomicU64,
    /// PUBLISH packets refused by the ACL.
    pub publishes_denied_total: AtomicU64,
    /// QoS 1/2 PUBLISH refused because the store could not take it.
    pub publishes_refused_store_total: AtomicU64,
    /// Subscription filters refused by the ACL.
    pub subscriptions_denied_total: AtomicU64,
    /// Deliveries withheld by the ACL (read access).
    pub dropped_acl_total: AtomicU64,
}

impl Metrics {
    /// Counts a refused connection (also in the total).
    pub fn refused(&self, why: RefuseReason) {
        self.connects_refused_total.fetch_add(1, Ordering::Relaxed);
        self.refused_by_reason[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one hit of a limit.
    pub fn rate_limited(&self, which: RateLimit) {
        self.rate_limited_total[which as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A client connected: counted by listener and protocol until [`Metrics::client_gone`].
    pub fn client_connected(&self, listener: ListenerKind, protocol: Protocol) {
        let (l, p) = (listener_index(listener), protocol_index(protocol));
        self.clients[l][p].fetch_add(1, Ordering::Relaxed);
        self.clients_total[l][p].fetch_add(1, Ordering::Relaxed);
    }

    /// A connected client's connection ended.
    pub fn client_gone(&self, listener: ListenerKind, protocol: Protocol) {
        let (l, p) = (listener_index(listener), protocol_index(protocol));
        self.clients[l][p].fetch_sub(1, Ordering::Relaxed);
    }

    /// Connected clients, all listeners.
    pub fn clients_connected(&self) -> i64 {
        self.clients
            .iter()
            .flatten()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Bans imposed, both kinds.
    pub fn bans(&self) -> u64 {
        Metrics::get(&self.bans_auth_total) + Metrics::get(&self.bans_flapping_total)
    }

    /// Counts a dropped delivery.
    pub fn dropped(&self, reason: DropReason, n: u64) {
        let c = match reason {
            DropReason::QueueFull => &self.dropped_queue_full_total,
            DropReason::Expired => &self.dropped_expired_total,
            DropReason::TooLarge => &self.dropped_too_large_total,
            DropReason::Offline => &self.dropped_offline_total,
        };
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// Total PUBLISH packets received.
    pub fn received(&self) -> u64 {
        self.messages_received_total.iter().map(Metrics::get).sum()
    }

    /// Total PUBLISH packets sent.
    pub fn sent(&self) -> u64 {
        self.messages_sent_total.iter().map(Metrics::get).sum()
    }
}

/// A connection's counts between two flushes into [`Metrics`]. 32-bit: a flush comes at
/// least once per read or write batch, and every idle connection carries this.
#[derive(Debug, Default)]
pub struct LocalCounts {
    /// PUBLISH received by QoS.
    received: [u32; 3],
    /// PUBLISH sent by QoS.
    sent: [u32; 3],
    /// Payload bytes received by QoS.
    received_payload: [u32; 3],
    /// Payload bytes sent by QoS.
    sent_payload: [u32; 3],
    /// Bytes read.
    bytes_in: u32,
    /// Bytes written.
    bytes_out: u32,
    /// Expired deliveries dropped.
    expired: u32,
    /// Too-large deliveries dropped.
    too_large: u32,
}

fn add(c: &mut u32, n: usize) {
    *c = c.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
}

impl LocalCounts {
    /// A PUBLISH received.
    pub fn received(&mut self, qos: usize, payload: usize) {
        add(&mut self.received[qos], 1);
        add(&mut self.received_payload[qos], payload);
    }

    /// A PUBLISH sent.
    pub fn sent(&mut self, qos: usize, payload: usize) {
        add(&mut self.sent[qos], 1);
        add(&mut self.sent_payload[qos], payload);
    }

    /// Bytes read.
    pub fn bytes_in(&mut self, n: usize) {
        add(&mut self.bytes_in, n);
    }

    /// Bytes written.
    pub fn bytes_out(&mut self, n: usize) {
        add(&mut self.bytes_out, n);
    }

    /// A delivery dropped because it expired.
    pub fn expired(&mut self) {
        add(&mut self.expired, 1);
    }

    /// A delivery dropped for the client's Maximum Packet Size.
    pub fn too_large(&mut self) {
        add(&mut self.too_large, 1);
    }

    /// Adds the counts to `m` and zeroes them.
    pub fn flush(&mut self, m: &Metrics) {
        let bump = |c: &AtomicU64, n: u32| {
            if n > 0 {
                c.fetch_add(u64::from(n), Ordering::Relaxed);
            }
        };
        for q in 0..3 {
            bump(&m.messages_received_total[q], self.received[q]);
            bump(&m.messages_sent_total[q], self.sent[q]);
            bump(&m.payload_bytes_received_total[q], self.received_payload[q]);
            bump(&m.payload_bytes_sent_total[q], self.sent_payload[q]);
        }
        bump(&m.bytes_received_total, self.bytes_in);
        bump(&m.bytes_sent_total, self.bytes_out);
        if self.expired > 0 {
            m.dropped(DropReason::Expired, u64::from(self.expired));
        }
        if self.too_large > 0 {
            m.dropped(DropReason::TooLarge, u64::from(self.too_large));
        }
        *self = LocalCounts::default();
    }
}
