//! Loop prevention, for brokers that bridge the same topics both ways (pure logic).
//!
//! Three layers: subscriptions on both sides use No Local (MQTT 5.0), so a broker never
//! hands the bridge back what the bridge published there; every forwarded message carries
//! the bridges it went through in a user property, and a bridge drops a message that already
//! names it (two brokers bridging to each other); and, for MQTT 3.1.1 upstreams, which have
//! neither, an echo filter drops a message coming back within a few seconds with the topic
//! and payload the bridge just sent that way.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use bytestring::ByteString;
use rookery_codec::UserProperty;

/// The user property listing the bridges a message went through.
pub const HOPS: &str = "rookery-bridge";

/// True when `me` forwarded this message before.
pub fn went_through(properties: &[UserProperty], me: &str) -> bool {
    properties
        .iter()
        .filter(|(k, _)| k == HOPS)
        .any(|(_, v)| v.split(',').any(|hop| hop == me))
}

/// Adds `me` to the message's hops.
pub fn add_hop(properties: &mut Vec<UserProperty>, me: &str) {
    match properties.iter_mut().find(|(k, _)| k == HOPS) {
        Some((_, v)) => *v = ByteString::from(format!("{v},{me}")),
        None => properties.push((ByteString::from(HOPS), ByteString::from(me))),
    }
}

/// Messages sent one way recently, to recognise them when they come back the other way.
pub struct Echoes {
    window: Duration,
    max: usize,
    order: VecDeque<(Instant, u64)>,
    counts: HashMap<u64, u32>,
    hasher: ahash::RandomState,
}

impl Echoes {
    /// Remembers messages for `window`, at most `max` at once.
    pub fn new(window: Duration, max: usize) -> Echoes {
        Echoes {
            window,
            max,
            order: VecDeque::new(),
            counts: HashMap::new(),
            hasher: ahash::RandomState::new(),
        }
    }

    fn key(&self, topic: &str, payload: &[u8]) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write(topic.as_bytes());
        h.write_u8(0);
        h.write(payload);
        h.finish()
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, key)) = self.order.front().copied() {
            if now.saturating_duration_since(at) < self.window && self.order.len() <= self.max {
                break;
            }
            self.order.pop_front();
            if let Some(n) = self.counts.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    self.counts.remove(&key);
                }
            }
        }
    }

    /// Records a message sent with this topic and payload.
    pub fn sent(&mut self, topic: &str, payload: &[u8], now: Instant) {
        self.expire(now);
        let key = self.key(topic, payload);
        self.order.push_back((now, key));
        *self.counts.entry(key).or_default() += 1;
    }

    /// True (once per send) when a message arriving with this topic and payload is the echo
    /// of one sent.
    pub fn is_echo(&mut self, topic: &str, payload: &[u8], now: Instant) -> bool {
        self.expire(now);
        let key = self.key(topic, payload);
        match self.counts.get_mut(&key) {
            Some(n) if *n > 0 => {
                *n -= 1;
                if *n == 0 {
                    self.counts.remove(&key);
                }
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hops_accumulate_and_are_recognised() {
        let mut props = Vec::new();
        assert!(!went_through(&props, "edge-a"));
        add_hop(&mut props, "edge-a");
        assert!(went_through(&props, "edge-a"));
        add_hop(&mut props, "cloud-b");
        assert!(went_through(&props, "edge-a"));
        assert!(went_through(&props, "cloud-b"));
        assert!(!went_through(&props, "edge"));
        assert_eq!(props.len(), 1);
    }

    #[test]
    fn an_echo_is_dropped_once_per_send_within_the_window() {
        let t0 = Instant::now();
        let mut e = Echoes::new(Duration::from_secs(5), 100);
        e.sent("a/b", b"1", t0);
        assert!(!e.is_echo("a/b", b"2", t0));
        assert!(!e.is_echo("a/c", b"1", t0));
        assert!(e.is_echo("a/b", b"1", t0));
        // A second message with the same content is a new message, not an echo.
        assert!(!e.is_echo("a/b", b"1", t0));
        e.sent("a/b", b"1", t0);
        assert!(!e.is_echo("a/b", b"1", t0 + Duration::from_secs(6)));
    }

    #[test]
    fn the_memory_is_bounded() {
        let t0 = Instant::now();
        let mut e = Echoes::new(Duration::from_secs(60), 10);
        for i in 0..1000u32 {
            e.sent("t", &i.to_be_bytes(), t0);
        }
        assert!(e.order.len() <= 11);
        assert!(e.counts.len() <= 11);
    }
}
