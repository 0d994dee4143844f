//! The memory high-water mark: a watch task sums the bytes queued for delivery in every
//! session; above the mark publishers are paused (each after the PUBLISH it is handling)
//! until the total falls below nine tenths of it.
//!
//! The measure is the broker's own account of message bytes waiting in queues, not the
//! process RSS: an allocator keeps freed memory, so RSS may not fall after the queues drain,
//! and a gate on RSS could stay shut for good. Queued messages are what a flood grows.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tracing::{info, warn};

use crate::broker::Broker;
use crate::metrics::survey;

/// How often the watch sums the queues.
const WATCH_INTERVAL: Duration = Duration::from_millis(200);
/// Longest a publisher waits for the gate in one go: it then reads one more batch, so that a
/// gate held shut by a stuck subscriber slows publishers instead of silencing them.
pub const MAX_PAUSE: Duration = Duration::from_secs(1);

/// Open or shut, with a way to wait for it to open.
#[derive(Debug, Default)]
pub struct MemoryGate {
    high: AtomicBool,
    opened: Notify,
}

impl MemoryGate {
    /// True while queued bytes are above the mark.
    pub fn is_high(&self) -> bool {
        self.high.load(Ordering::Relaxed)
    }

    /// Waits until the gate opens or [`MAX_PAUSE`] passes.
    pub async fn wait_open(&self) {
        let opened = self.opened.notified();
        tokio::pin!(opened);
        opened.as_mut().enable();
        if !self.is_high() {
            return;
        }
        let _ = tokio::time::timeout(MAX_PAUSE, opened).await;
    }

    /// The gate's next state from the queued total: shut at the mark, open below 90% of it.
    pub fn update(&self, queued: u64, mark: u64) -> Option<bool> {
        let high = self.is_high();
        let next = if mark == 0 {
            false
        } else if high {
            queued >= mark / 10 * 9
        } else {
            queued >= mark
        };
        if next == high {
            return None;
        }
        self.high.store(next, Ordering::Relaxed);
        if !next {
            self.opened.notify_waiters();
        }
        Some(next)
    }
}

/// `memory_high_watermark` as configured: 0 means half the memory this process may use
/// (its cgroup's limit, else the host's memory).
pub fn resolve_watermark(configured: u64) -> u64 {
    if configured > 0 {
        return configured;
    }
    memory_limit().map_or(0, |m| m / 2)
}

/// The cgroup v2 memory limit, else physical memory.
fn memory_limit() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    cgroup.or_else(|| {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    })
}

/// The watch task: runs until shutdown.
pub async fn watch(broker: Arc<Broker>) {
    let mut ticks = tokio::time::interval(WATCH_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = broker.shutdown.cancelled() => return,
        }
        let mark = broker.limits.load().memory_high_watermark;
        let queued = if mark == 0 {
            0
        } else {
            // A walk over every session: off the runtime's worker threads.
            let b = broker.clone();
            match tokio::task::spawn_blocking(move || survey::queued_bytes(&b)).await {
                Ok(q) => q,
                Err(_) => continue,
            }
        };
        match broker.memory.update(queued, mark) {
            Some(true) => warn!(
                queued_bytes = queued,
                high_watermark = mark,
                "memory high-water mark reached: publishers are paused until queues drain"
            ),
            Some(false) => info!(
                queued_bytes = queued,
                "below the memory high-water mark: publishers resume"
            ),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_shuts_at_the_mark_and_opens_below_nine_tenths() {
        let g = MemoryGate::default();
        assert_eq!(g.update(999, 1000), None);
        assert_eq!(g.update(1000, 1000), Some(true));
        assert!(g.is_high());
        assert_eq!(g.update(950, 1000), None);
        assert_eq!(g.update(899, 1000), Some(false));
        assert!(!g.is_high());
        // Turning the mark off opens it too.
        assert_eq!(g.update(5000, 1000), Some(true));
        assert_eq!(g.update(5000, 0), Some(false));
    }

    #[test]
    fn an_explicit_mark_is_kept_and_auto_is_half_of_some_memory() {
        assert_eq!(resolve_watermark(12345), 12345);
        assert!(resolve_watermark(0) > 0);
    }
}
