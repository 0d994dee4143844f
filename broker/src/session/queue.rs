//! A session's pending queue: deliveries waiting for the connection (or, offline, for the next
//! one), bounded by count and bytes with a named overflow policy.

use std::collections::VecDeque;

use rookery_codec::QoS;
use serde::{Deserialize, Serialize};

use crate::message::Delivery;

/// What happens when a queue is at its limit and one more message arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum OverflowPolicy {
    /// Drop the message that arrived (Mosquitto's behaviour); the queue keeps the oldest.
    #[default]
    DropNew,
    /// Drop the oldest queued message to make room (EMQX's behaviour); the queue keeps the newest.
    DropOldest,
    /// Disconnect the slow client (online sessions; offline ones drop the new message).
    Disconnect,
}

/// Bounds of one session's queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Most messages queued.
    pub max_messages: usize,
    /// Most bytes queued (approximate: topic + payload + overhead), 0 for no byte limit.
    pub max_bytes: usize,
    /// What to do at the limit.
    pub overflow: OverflowPolicy,
    /// Queue depth from which QoS 1/2 pushes for an online client ask the publisher to pause.
    pub backpressure_depth: usize,
}

/// Result of [`Queue::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued; `was_empty` tells the caller whether to wake the consumer.
    Queued {
        /// The queue was empty before this push.
        was_empty: bool,
        /// Queued beyond the limits (backpressure): the publisher should pause.
        over_limit: bool,
    },
    /// Queued after the oldest message was dropped.
    QueuedDroppedOldest,
    /// Not queued: the queue is full and the policy drops new messages.
    DroppedFull,
    /// Not queued: the queue is full and the policy disconnects the client.
    Overflow,
}

/// The queue itself.
#[derive(Debug, Default)]
pub struct Queue {
    items: VecDeque<Delivery>,
    bytes: usize,
    /// Stored entry ids of deliveries the overflow policy dropped, for the caller to delete
    /// from the queue store (see [`Queue::take_dropped`]).
    dropped: Vec<u64>,
}

impl Queue {
    /// Number of queued deliveries.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Approximate bytes queued.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Appends a delivery within `limits`. With `backpressure` (QoS 1/2 for an online client)
    /// the push reports `over_limit` once the queue is deeper than `backpressure_depth`, and a
    /// full queue still takes the delivery up to twice its limits: the publisher is then paused
    /// instead of the message being dropped.
    pub fn push(&mut self, delivery: Delivery, limits: &QueueLimits, backpressure: bool) -> Pushed {
        let weight = delivery.message.weight();
        let over = |factor: usize| {
            self.items.len() >= limits.max_messages * factor
                || (limits.max_bytes > 0
                    && self.bytes + weight > limits.max_bytes * factor
                    && !self.items.is_empty())
        };
        let full = over(1);
        if !full || (backpressure && !over(2)) {
            let was_empty = self.items.is_empty();
            self.bytes += weight;
            self.items.push_back(delivery);
            let over_limit = backpressure && (full || self.items.len() > limits.backpressure_depth);
            return Pushed::Queued {
                was_empty,
                over_limit,
            };
        }
        match limits.overflow {
            OverflowPolicy::DropNew => Pushed::DroppedFull,
            OverflowPolicy::Disconnect => Pushed::Overflow,
            OverflowPolicy::DropOldest => {
                // Drop until the new message fits, QoS 0 messages (nobody was promised those)
                // first, then the oldest.
                while !self.items.is_empty()
                    && (self.items.len() >= limits.max_messages
                        || (limits.max_bytes > 0 && self.bytes + weight > limits.max_bytes))
                {
                    let victim = self
                        .items
                        .iter()
                        .position(|d| d.qos == QoS::AtMostOnce)
                        .unwrap_or(0);
                    if let Some(old) = self.items.remove(victim) {
                        self.bytes -= old.message.weight();
                        if old.stored != 0 {
                            self.dropped.push(old.stored);
                        }
                    }
                }
                self.bytes += weight;
                self.items.push_back(delivery);
                Pushed::QueuedDroppedOldest
            }
        }
    }

    /// Stored entry ids of deliveries dropped to make room since the last call.
    pub fn take_dropped(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.dropped)
    }

    /// Appends a delivery read back from the store at start, whatever the limits: it was
    /// accepted once and is not dropped now.
    pub fn push_restored(&mut self, delivery: Delivery) {
        self.bytes += delivery.message.weight();
        self.items.push_back(delivery);
    }

    /// The next delivery.
    pub fn pop(&mut self) -> Option<Delivery> {
        let d = self.items.pop_front()?;
        self.bytes -= d.message.weight();
        Some(d)
    }

    /// The next delivery's QoS, without taking it.
    pub fn front_qos(&self) -> Option<QoS> {
        self.items.front().map(|d| d.qos)
    }

    /// Drops QoS 0 deliveries (when a session goes offline and QoS 0 is not queued offline).
    pub fn drop_qos0(&mut self) -> usize {
        let before = self.items.len();
        let mut bytes = self.bytes;
        self.items.retain(|d| {
            let keep = d.qos != QoS::AtMostOnce;
            if !keep {
                bytes -= d.message.weight();
            }
            keep
        });
        self.bytes = bytes;
        before - self.items.len()
    }

    /// Takes every delivery out, in order.
    pub fn take_all(&mut self) -> Vec<Delivery> {
        self.bytes = 0;
        self.items.drain(..).collect()
    }

    /// Empties the queue.
    pub fn clear(&mut self) {
        self.items.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::message::Message;

    fn d(payload: &str, qos: QoS) -> Delivery {
        Delivery {
            message: Arc::new(Message::test("t", payload)),
            qos,
            retain: false,
            subscription_ids: Default::default(),
            stored: 0,
        }
    }

    fn limits(max: usize, overflow: OverflowPolicy) -> QueueLimits {
        QueueLimits {
            max_messages: max,
            max_bytes: 0,
            overflow,
            backpressure_depth: usize::MAX,
        }
    }

    fn payloads(q: &mut Queue) -> Vec<String> {
        std::iter::from_fn(|| q.pop())
            .map(|d| String::from_utf8(d.message.payload.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn drop_new_keeps_the_oldest() {
        let mut q = Queue::default();
        let l = limits(2, OverflowPolicy::DropNew);
        assert_eq!(
            q.push(d("1", QoS::AtLeastOnce), &l, false),
            Pushed::Queued {
                was_empty: true,
                over_limit: false
            }
        );
        assert_eq!(
            q.push(d("2", QoS::AtLeastOnce), &l, false),
            Pushed::Queued {
                was_empty: false,
                over_limit: false
            }
        );
        assert_eq!(
            q.push(d("3", QoS::AtLeastOnce), &l, false),
            Pushed::DroppedFull
        );
        assert_eq!(payloads(&mut q), vec!["1", "2"]);
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn backpressure_admits_up_to_twice_the_limit_and_says_so() {
        let mut q = Queue::default();
        let l = limits(2, OverflowPolicy::DropNew);
        q.push(d("1", QoS::AtLeastOnce), &l, true);
        q.push(d("2", QoS::AtLeastOnce), &l, true);
        assert_eq!(
            q.push(d("3", QoS::AtLeastOnce), &l, true),
            Pushed::Queued {
                was_empty: false,
                over_limit: true
            }
        );
        assert_eq!(
            q.push(d("4", QoS::AtLeastOnce), &l, true),
            Pushed::Queued {
                was_empty: false,
                over_limit: true
            }
        );
        assert_eq!(
            q.push(d("5", QoS::AtLeastOnce), &l, true),
            Pushed::DroppedFull
        );
    }

    #[test]
    fn drop_oldest_prefers_qos0_victims() {
        let mut q = Queue::default();
        let l = limits(2, OverflowPolicy::DropOldest);
        q.push(d("1", QoS::AtLeastOnce), &l, false);
        q.push(d("2", QoS::AtMostOnce), &l, false);
        assert_eq!(
            q.push(d("3", QoS::AtLeastOnce), &l, false),
            Pushed::QueuedDroppedOldest
        );
        assert_eq!(
            q.push(d("4", QoS::AtLeastOnce), &l, false),
            Pushed::QueuedDroppedOldest
        );
        assert_eq!(payloads(&mut q), vec!["3", "4"]);
    }

    #[test]
    fn byte_limit_bounds_the_queue_but_admits_one() {
        let mut q = Queue::default();
        let l = QueueLimits {
            max_messages: 100,
            max_bytes: 100,
            overflow: OverflowPolicy::Disconnect,
            backpressure_depth: usize::MAX,
        };
        let big = "x".repeat(500);
        assert!(matches!(
            q.push(d(&big, QoS::AtLeastOnce), &l, false),
            Pushed::Queued { .. }
        ));
        assert_eq!(
            q.push(d("y", QoS::AtLeastOnce), &l, false),
            Pushed::Overflow
        );
    }

    #[test]
    fn drop_oldest_makes_room_for_a_large_message_within_the_byte_limit() {
        let mut q = Queue::default();
        let l = QueueLimits {
            max_messages: 100,
            max_bytes: 300,
            overflow: OverflowPolicy::DropOldest,
            backpressure_depth: usize::MAX,
        };
        for p in ["a", "b", "c"] {
            q.push(d(p, QoS::AtLeastOnce), &l, false);
        }
        assert_eq!(
            q.push(d(&"x".repeat(150), QoS::AtLeastOnce), &l, false),
            Pushed::QueuedDroppedOldest
        );
        assert!(q.bytes() <= 300, "{}", q.bytes());
        assert_eq!(payloads(&mut q).last().map(|s| s.len()), Some(150));
    }

    #[test]
    fn offline_drop_of_qos0_keeps_order_of_the_rest() {
        let mut q = Queue::default();
        let l = limits(10, OverflowPolicy::DropNew);
        q.push(d("1", QoS::AtMostOnce), &l, false);
        q.push(d("2", QoS::ExactlyOnce), &l, false);
        q.push(d("3", QoS::AtMostOnce), &l, false);
        q.push(d("4", QoS::AtLeastOnce), &l, false);
        assert_eq!(q.drop_qos0(), 2);
        assert_eq!(payloads(&mut q), vec!["2", "4"]);
    }
}
