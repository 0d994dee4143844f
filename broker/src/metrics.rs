//! Broker-wide counters and gauges: plain atomics, cheap to bump, read by the admin endpoint.
//!
//! Connections batch their increments (one add per read or write batch, not per packet) so
//! that the hot path does not bounce these cache lines between cores.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

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

/// The counters. Field names follow the Prometheus names they will be exported under.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Open connections.
    pub connections: AtomicI64,
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// CONNECTs refused (any reason).
    pub connects_refused_total: AtomicU64,
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
    /// Bans imposed (failed logins or flapping).
    pub bans_total: AtomicU64,
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

/// A connection's counts between two flushes into [`Metrics`].
#[derive(Debug, Default)]
pub struct LocalCounts {
    /// PUBLISH received by QoS.
    pub received: [u64; 3],
    /// PUBLISH sent by QoS.
    pub sent: [u64; 3],
    /// Bytes read.
    pub bytes_in: u64,
    /// Bytes written.
    pub bytes_out: u64,
    /// Expired deliveries dropped.
    pub expired: u64,
    /// Too-large deliveries dropped.
    pub too_large: u64,
}

impl LocalCounts {
    /// Adds the counts to `m` and zeroes them.
    pub fn flush(&mut self, m: &Metrics) {
        for q in 0..3 {
            if self.received[q] > 0 {
                m.messages_received_total[q].fetch_add(self.received[q], Ordering::Relaxed);
            }
            if self.sent[q] > 0 {
                m.messages_sent_total[q].fetch_add(self.sent[q], Ordering::Relaxed);
            }
        }
        if self.bytes_in > 0 {
            m.bytes_received_total
                .fetch_add(self.bytes_in, Ordering::Relaxed);
        }
        if self.bytes_out > 0 {
            m.bytes_sent_total
                .fetch_add(self.bytes_out, Ordering::Relaxed);
        }
        if self.expired > 0 {
            m.dropped(DropReason::Expired, self.expired);
        }
        if self.too_large > 0 {
            m.dropped(DropReason::TooLarge, self.too_large);
        }
        *self = LocalCounts::default();
    }
}
