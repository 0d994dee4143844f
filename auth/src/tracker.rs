//! Counting events per key (a client id, a username, an address) in a sliding window, and
//! banning a key that has too many: the logic behind failed-login limits and flapping
//! detection. Pure: the caller passes the time.
//!
//! The window slides: an event counts while it is younger than `window`, and the event that
//! makes more than `max_events` of them bans the key for `ban` from that moment. Its event log
//! is then cleared, so counting starts afresh once the ban ends. Each key keeps at most
//! `max_events` timestamps.
//!
//! Memory is bounded by `max_keys`. When a new key would go past it, expired entries are
//! pruned, then the least recently seen keys without an active ban are evicted, a sixteenth of
//! `max_keys` at a time (so a flood of new keys costs amortized O(log n) each); keys under an
//! active ban go last, soonest-expiring first. An attacker with many addresses can therefore
//! only push out other keys' counts, and bans only once every tracked key is banned.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Limits of a [`Tracker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackerConfig {
    /// Events allowed inside one window; the next one bans.
    pub max_events: u32,
    /// How long an event counts.
    pub window: Duration,
    /// How long a ban lasts.
    pub ban: Duration,
    /// Most keys tracked at once (at least 1).
    pub max_keys: usize,
}

impl Default for TrackerConfig {
    /// EMQX's flapping detection defaults: 15 events in one minute ban for five minutes; up to
    /// 10 000 keys (a few megabytes).
    fn default() -> Self {
        TrackerConfig {
            max_events: 15,
            window: Duration::from_secs(60),
            ban: Duration::from_secs(5 * 60),
            max_keys: 10_000,
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    /// Times of the events still inside the window, oldest first; at most `max_events`.
    events: VecDeque<Instant>,
    banned_until: Option<Instant>,
    /// The latest event, for eviction order.
    last_seen: Instant,
}

impl Entry {
    fn active_ban(&self, now: Instant) -> Option<Instant> {
        self.banned_until.filter(|&until| until > now)
    }

    /// Drops events that left the window ending at `now`.
    fn expire(&mut self, now: Instant, window: Duration) {
        // When the window reaches back before the clock's origin, every event still counts.
        if let Some(cutoff) = now.checked_sub(window) {
            while self.events.front().is_some_and(|&t| t <= cutoff) {
                self.events.pop_front();
            }
        }
    }
}

/// Per-key event counts and bans; see the [module documentation](self).
#[derive(Debug, Clone)]
pub struct Tracker {
    config: TrackerConfig,
    entries: HashMap<String, Entry>,
}

impl Tracker {
    /// An empty tracker.
    pub fn new(config: TrackerConfig) -> Tracker {
        let config = TrackerConfig {
            max_keys: config.max_keys.max(1),
            ..config
        };
        Tracker {
            config,
            entries: HashMap::new(),
        }
    }

    /// The limits in force (`max_keys` raised to at least 1).
    pub fn config(&self) -> &TrackerConfig {
        &self.config
    }

    /// Counts an event for `key` at `now`. Returns `Some(ban_until)` when this event makes
    /// more than `max_events` inside the window and so bans the key, and also while the key is
    /// already banned (the event then neither counts nor extends the ban). `None` otherwise.
    pub fn record(&mut self, key: &str, now: Instant) -> Option<Instant> {
        let TrackerConfig {
            max_events,
            window,
            ban,
            ..
        } = self.config;
        if !self.entries.contains_key(key) {
            self.make_room(now);
        }
        let entry = self.entries.entry(key.to_owned()).or_insert_with(|| Entry {
            events: VecDeque::new(),
            banned_until: None,
            last_seen: now,
        });
        entry.last_seen = entry.last_seen.max(now);
        if let Some(until) = entry.active_ban(now) {
            return Some(until);
        }
        entry.banned_until = None;
        entry.expire(now, window);
        if entry.events.len() >= usize::try_from(max_events).unwrap_or(usize::MAX) {
            let until = add_saturating(now, ban);
            entry.events.clear();
            entry.banned_until = Some(until);
            return Some(until);
        }
        entry.events.push_back(now);
        None
    }

    /// When the ban on `key` ends, if it is banned at `now`.
    pub fn banned_until(&self, key: &str, now: Instant) -> Option<Instant> {
        self.entries
            .get(key)
            .and_then(|entry| entry.active_ban(now))
    }

    /// Forgets `key`: its events and any ban. Returns whether it was tracked.
    pub fn clear(&mut self, key: &str) -> bool {
        self.entries.remove(key).is_some()
    }

    /// Forgets every key.
    pub fn clear_all(&mut self) {
        self.entries.clear();
    }

    /// The keys banned at `now` with the end of their ban, soonest first (then by key).
    pub fn bans(&self, now: Instant) -> Vec<(String, Instant)> {
        let mut bans: Vec<(String, Instant)> = self
            .entries
            .iter()
            .filter_map(|(key, entry)| entry.active_ban(now).map(|until| (key.clone(), until)))
            .collect();
        bans.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        bans
    }

    /// Drops events older than the window and bans that ended; forgets keys left with
    /// neither. Call it now and then (say, every window) to give memory back.
    pub fn prune(&mut self, now: Instant) {
        let window = self.config.window;
        self.entries.retain(|_, entry| {
            entry.expire(now, window);
            if entry.active_ban(now).is_none() {
                entry.banned_until = None;
            }
            !entry.events.is_empty() || entry.banned_until.is_some()
        });
        if self.entries.capacity() > 2 * self.entries.len().max(16) {
            self.entries.shrink_to_fit();
        }
    }

    /// Number of keys tracked (with events in the window or a ban; until pruned, maybe
    /// expired ones too).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Before adding a key: if the table is full, prune, then evict a batch.
    fn make_room(&mut self, now: Instant) {
        let max_keys = self.config.max_keys;
        if self.entries.len() < max_keys {
            return;
        }
        self.prune(now);
        if self.entries.len() < max_keys {
            return;
        }
        let batch = (max_keys / 16).max(1);
        let excess = self.entries.len() + batch - max_keys;
        // Unbanned keys first, least recently seen first; then bans, soonest ending first.
        let mut order: Vec<(bool, Instant, &String)> = self
            .entries
            .iter()
            .map(|(key, entry)| match entry.active_ban(now) {
                Some(until) => (true, until, key),
                None => (false, entry.last_seen, key),
            })
            .collect();
        if excess < order.len() {
            order.select_nth_unstable(excess);
        }
        let victims: Vec<String> = order
            .iter()
            .take(excess)
            .map(|(_, _, k)| (*k).clone())
            .collect();
        for key in victims {
            self.entries.remove(&key);
        }
    }
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker::new(TrackerConfig::default())
    }
}

/// `now + duration`, or as far as `Instant` goes.
fn add_saturating(now: Instant, mut duration: Duration) -> Instant {
    loop {
        if let Some(t) = now.checked_add(duration) {
            return t;
        }
        duration /= 2;
    }
}

#[cfg(test)]
mod tests;
