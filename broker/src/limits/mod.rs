//! Overload protection: per-client publish rate limits, the per-listener connection rate, and
//! the memory high-water mark above which publishers are paused.
//!
//! The limits live in [`LiveLimits`], swapped whole on a reload so that every check sees one
//! consistent set; the buckets ([`bucket`]) and the memory watch ([`memory`]) read them on use.

pub mod bucket;
pub mod memory;

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::metrics::RateLimit;
use bucket::TokenBucket;

/// What happens to an MQTT 5.0 client over its publish rate (MQTT 3.1.1 clients are always
/// slowed: they have no reason code for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RateAction {
    /// Stop reading from it until the rate allows the next message.
    #[default]
    Slow,
    /// DISCONNECT with reason 0x96 (message rate too high).
    Disconnect,
}

/// The limits that a reload can change while clients stay connected.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveLimits {
    /// PUBLISH packets per second per client (0 = no limit).
    pub publish_rate: u32,
    /// PUBLISH payload bytes per second per client (0 = no limit).
    pub publish_byte_rate: u64,
    /// What an MQTT 5.0 client over its rate gets.
    pub action: RateAction,
    /// New connections per second per listener (0 = no limit).
    pub max_connection_rate: u32,
    /// Bytes queued for delivery, broker-wide, above which publishers are paused (0 = off).
    pub memory_high_watermark: u64,
}

impl LiveLimits {
    /// The limits a configuration sets (the `auto` memory mark resolved against this host).
    pub fn from_config(c: &Config) -> LiveLimits {
        LiveLimits {
            publish_rate: c.publish_rate_limit,
            publish_byte_rate: c.publish_byte_rate_limit,
            action: c.rate_limit_action,
            max_connection_rate: c.max_connection_rate,
            memory_high_watermark: memory::resolve_watermark(c.memory_high_watermark),
        }
    }

    /// True when a client's publishes are rate limited at all.
    pub fn limits_publishers(&self) -> bool {
        self.publish_rate > 0 || self.publish_byte_rate > 0
    }
}

/// One client's publish buckets (made on its first PUBLISH when limits are on).
#[derive(Debug)]
pub struct ClientRate {
    messages: TokenBucket,
    bytes: TokenBucket,
}

impl ClientRate {
    /// Full buckets: a client may send one second's worth at once.
    pub fn new(limits: &LiveLimits, now: Instant) -> ClientRate {
        ClientRate {
            messages: TokenBucket::new(f64::from(limits.publish_rate), now),
            bytes: TokenBucket::new(limits.publish_byte_rate as f64, now),
        }
    }

    /// Counts one PUBLISH of `payload` bytes; the pause it earns and the limit that set it.
    pub fn take(
        &mut self,
        limits: &LiveLimits,
        payload: usize,
        now: Instant,
    ) -> Option<(Duration, RateLimit)> {
        let mut worst: Option<(Duration, RateLimit)> = None;
        if limits.publish_rate > 0 {
            let rate = f64::from(limits.publish_rate);
            if let Some(w) = self.messages.take(1.0, rate, rate, now) {
                worst = Some((w, RateLimit::PublishRate));
            }
        }
        if limits.publish_byte_rate > 0 {
            let rate = limits.publish_byte_rate as f64;
            if let Some(w) = self.bytes.take(payload as f64, rate, rate, now)
                && worst.is_none_or(|(d, _)| w > d)
            {
                worst = Some((w, RateLimit::ByteRate));
            }
        }
        worst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: u32, bytes: u64) -> LiveLimits {
        LiveLimits {
            publish_rate: rate,
            publish_byte_rate: bytes,
            action: RateAction::Slow,
            max_connection_rate: 0,
            memory_high_watermark: 0,
        }
    }

    #[test]
    fn the_stricter_limit_sets_the_pause() {
        let t0 = Instant::now();
        let l = limits(100, 1000);
        let mut r = ClientRate::new(&l, t0);
        // 1 message of 1500 bytes: within 100 msg/s, half a second over 1000 B/s.
        let (wait, which) = r.take(&l, 1500, t0).unwrap();
        assert_eq!(which, RateLimit::ByteRate);
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-9);
    }

    #[test]
    fn no_limits_never_pause() {
        let t0 = Instant::now();
        let l = limits(0, 0);
        assert!(!l.limits_publishers());
        let mut r = ClientRate::new(&l, t0);
        for _ in 0..10_000 {
            assert!(r.take(&l, 1 << 20, t0).is_none());
        }
    }

    #[test]
    fn a_reload_applies_to_existing_buckets() {
        let t0 = Instant::now();
        let mut r = ClientRate::new(&limits(1, 0), t0);
        assert!(r.take(&limits(1, 0), 10, t0).is_none());
        assert!(r.take(&limits(1, 0), 10, t0).is_some());
        // Raised to 1000/s: a millisecond later there is room again.
        let t1 = t0 + Duration::from_millis(3);
        assert!(r.take(&limits(1000, 0), 10, t1).is_none());
    }
}
