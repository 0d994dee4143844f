//! Duplicate detection (RFC 7252 section 4.5): a message id seen from an address within
//! EXCHANGE_LIFETIME is the same message. A repeated confirmable request gets the response
//! it got the first time, and is not acted on twice. Pure logic: callers pass the time.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::transport::Peer;

/// EXCHANGE_LIFETIME with the default transmission parameters (RFC 7252 section 4.8.2).
pub const EXCHANGE_LIFETIME: Duration = Duration::from_secs(247);

type Key = (Peer, u16);

enum Entry {
    /// Being handled: a duplicate now is ignored (the answer follows).
    InProgress,
    /// Answered with these bytes (empty: nothing to repeat, a NON).
    Answered(Vec<u8>),
}

/// What a message id means.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// First time: handle it.
    New,
    /// A duplicate of a message still being handled.
    InProgress,
    /// A duplicate of an answered message: send these bytes again (empty: nothing).
    Answered(Vec<u8>),
}

/// The exchanges of the last EXCHANGE_LIFETIME, at most `max` of them.
pub struct Exchanges {
    entries: HashMap<Key, (Instant, Entry)>,
    order: VecDeque<(Key, Instant)>,
    lifetime: Duration,
    max: usize,
}

impl Exchanges {
    /// Remembers exchanges for `lifetime`, at most `max` at once (the oldest go first).
    pub fn new(lifetime: Duration, max: usize) -> Exchanges {
        Exchanges {
            entries: HashMap::new(),
            order: VecDeque::new(),
            lifetime,
            max,
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some((key, at)) = self.order.front() {
            if now.saturating_duration_since(*at) < self.lifetime && self.order.len() <= self.max {
                break;
            }
            let (key, at) = (*key, *at);
            self.order.pop_front();
            // A key forgotten and seen again has a newer entry: that one stays.
            if self.entries.get(&key).is_some_and(|(t, _)| *t == at) {
                self.entries.remove(&key);
            }
        }
    }

    /// Records a message id from `peer`; says whether it was seen.
    pub fn begin(&mut self, peer: Peer, message_id: u16, now: Instant) -> Seen {
        self.expire(now);
        let key = (peer, message_id);
        match self.entries.get(&key) {
            Some((_, Entry::InProgress)) => Seen::InProgress,
            Some((_, Entry::Answered(bytes))) => Seen::Answered(bytes.clone()),
            None => {
                self.entries.insert(key, (now, Entry::InProgress));
                self.order.push_back((key, now));
                Seen::New
            }
        }
    }

    /// Records the answer to a message (empty for none).
    pub fn answer(&mut self, peer: Peer, message_id: u16, response: Vec<u8>) {
        if let Some((_, entry)) = self.entries.get_mut(&(peer, message_id)) {
            *entry = Entry::Answered(response);
        }
    }

    /// Forgets a message that was not handled (it may come again and be handled then).
    pub fn forget(&mut self, peer: Peer, message_id: u16) {
        self.entries.remove(&(peer, message_id));
    }

    /// Exchanges remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when none is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> Peer {
        Peer::plain(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[test]
    fn a_duplicate_gets_the_first_answer() {
        let t0 = Instant::now();
        let mut ex = Exchanges::new(EXCHANGE_LIFETIME, 100);
        assert_eq!(ex.begin(addr(1), 7, t0), Seen::New);
        assert_eq!(ex.begin(addr(1), 7, t0), Seen::InProgress);
        // Another address, same id: another message.
        assert_eq!(ex.begin(addr(2), 7, t0), Seen::New);
        ex.answer(addr(1), 7, vec![1, 2, 3]);
        assert_eq!(ex.begin(addr(1), 7, t0), Seen::Answered(vec![1, 2, 3]));
    }

    #[test]
    fn ids_expire_after_the_lifetime() {
        let t0 = Instant::now();
        let mut ex = Exchanges::new(Duration::from_secs(10), 100);
        assert_eq!(ex.begin(addr(1), 7, t0), Seen::New);
        ex.answer(addr(1), 7, vec![]);
        assert_eq!(
            ex.begin(addr(1), 7, t0 + Duration::from_secs(9)),
            Seen::Answered(vec![])
        );
        assert_eq!(
            ex.begin(addr(1), 7, t0 + Duration::from_secs(11)),
            Seen::New
        );
    }

    #[test]
    fn the_oldest_go_when_full_and_forgotten_ones_come_again() {
        let t0 = Instant::now();
        let mut ex = Exchanges::new(EXCHANGE_LIFETIME, 3);
        for id in 0..10 {
            assert_eq!(ex.begin(addr(1), id, t0), Seen::New);
        }
        assert!(ex.len() <= 4, "{}", ex.len());
        assert_eq!(ex.begin(addr(1), 0, t0), Seen::New);
        ex.forget(addr(1), 0);
        assert_eq!(ex.begin(addr(1), 0, t0), Seen::New);
    }
}
