//! What the broker's state holds right now, counted by walking it: sessions online and
//! offline, queued messages and bytes, queue lengths, subscriptions, retained messages.
//!
//! Nothing here is on the message path: a scrape, the `$SYS` tick and the memory watch take a
//! survey. The session registry is locked only to copy its handles; each queue is then locked
//! on its own for a moment.

use crate::broker::Broker;

/// Upper bounds of the per-session queue length histogram.
pub const QUEUE_LENGTH_BUCKETS: [f64; 7] = [0.0, 1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0];

/// One survey of the broker's state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Survey {
    /// Sessions with a connection.
    pub online: u64,
    /// Sessions kept without one (persistent sessions of disconnected clients).
    pub offline: u64,
    /// Messages in all session queues.
    pub queued_messages: u64,
    /// Approximate bytes in all session queues.
    pub queued_bytes: u64,
    /// Queue length per session: non-cumulative counts per [`QUEUE_LENGTH_BUCKETS`] bound,
    /// +Inf last.
    pub queue_lengths: [u64; QUEUE_LENGTH_BUCKETS.len() + 1],
    /// Sum of all queue lengths (the histogram's sum).
    pub queue_length_sum: u64,
    /// Subscriptions (filters, shared ones included).
    pub subscriptions: u64,
    /// Retained messages.
    pub retained: u64,
    /// Bytes of retained payloads.
    pub retained_bytes: u64,
}

impl Survey {
    /// Counts one session's queue.
    pub fn add_queue(&mut self, len: usize, bytes: usize) {
        let len_u = len as u64;
        self.queued_messages += len_u;
        self.queued_bytes += bytes as u64;
        self.queue_length_sum += len_u;
        let slot = QUEUE_LENGTH_BUCKETS
            .iter()
            .position(|&le| len as f64 <= le)
            .unwrap_or(QUEUE_LENGTH_BUCKETS.len());
        self.queue_lengths[slot] += 1;
    }

    /// The queue length histogram as (upper bound, sessions in that bucket alone).
    pub fn queue_length_buckets(&self) -> Vec<(f64, u64)> {
        self.queue_lengths
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let le = QUEUE_LENGTH_BUCKETS
                    .get(i)
                    .copied()
                    .unwrap_or(f64::INFINITY);
                (le, *n)
            })
            .collect()
    }
}

/// Sums queued bytes only: what the memory watch needs, every few hundred milliseconds.
pub fn queued_bytes(broker: &Broker) -> u64 {
    broker
        .sessions
        .all()
        .iter()
        .map(|s| s.with_queue(|q| q.bytes()) as u64)
        .sum()
}

/// Walks the whole state once.
pub fn take(broker: &Broker) -> Survey {
    let mut survey = Survey::default();
    for session in broker.sessions.all() {
        if session.is_online() {
            survey.online += 1;
        } else {
            survey.offline += 1;
        }
        let (len, bytes) = session.with_queue(|q| (q.len(), q.bytes()));
        survey.add_queue(len, bytes);
    }
    survey.subscriptions = broker.router.read().len() as u64;
    let retained = broker.retained.read();
    survey.retained = retained.len() as u64;
    survey.retained_bytes = retained.payload_bytes() as u64;
    drop(retained);
    survey
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_lengths_fall_in_their_buckets() {
        let mut s = Survey::default();
        for (len, bytes) in [
            (0, 0),
            (1, 10),
            (5, 50),
            (10, 100),
            (2_000, 1),
            (1_000_000, 0),
        ] {
            s.add_queue(len, bytes);
        }
        assert_eq!(s.queued_messages, 1_002_016);
        assert_eq!(s.queued_bytes, 161);
        assert_eq!(s.queue_lengths, [1, 1, 2, 0, 0, 1, 0, 1]);
        let buckets = s.queue_length_buckets();
        assert_eq!(buckets.first(), Some(&(0.0, 1)));
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, 1)));
        assert_eq!(s.queue_length_sum, 1_002_016);
    }
}
