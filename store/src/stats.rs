//! Counters for the metrics endpoint: a lock-free histogram with fixed buckets, and what the
//! committer records about each store (operations, commit time, errors).
//!
//! Observing is a few relaxed atomic adds; reading takes a snapshot for the exporter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds, in seconds, of the latency buckets: 50 µs to 10 s. One set for every
/// histogram, so that dashboards can compare them.
pub const LATENCY_BUCKETS: [f64; 18] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A histogram of durations over [`LATENCY_BUCKETS`] (plus +Inf).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket, not cumulative; the last is +Inf.
    counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum of observations in nanoseconds.
    sum_ns: AtomicU64,
}

/// A histogram's state at one moment, as `prometheus-client` encodes it (it accumulates the
/// bucket counts itself).
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Sum of observations, seconds.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
    /// (upper bound, count in this bucket alone) per bucket, +Inf last.
    pub buckets: Vec<(f64, u64)>,
}

/// [`LATENCY_BUCKETS`] in nanoseconds: the hot path compares integers.
const BUCKETS_NS: [u64; 18] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
];

/// The bucket a duration falls in.
#[inline]
pub fn bucket_of(d: Duration) -> usize {
    bucket_of_ns(nanos(d))
}

#[inline]
fn bucket_of_ns(ns: u64) -> usize {
    // Most observations are short: a scan from the bottom ends in a few comparisons.
    let mut i = 0;
    while i < BUCKETS_NS.len() && ns > BUCKETS_NS[i] {
        i += 1;
    }
    i
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let ns = nanos(d);
        self.counts[bucket_of_ns(ns)].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Adds a batch observed elsewhere (see [`LocalHistogram`]).
    pub fn merge(&self, local: &LocalHistogram) {
        if local.observed == 0 {
            return;
        }
        for (i, &n) in local.counts.iter().enumerate() {
            if n > 0 {
                self.counts[i].fetch_add(u64::from(n), Ordering::Relaxed);
            }
        }
        if local.sum_ns > 0 {
            self.sum_ns.fetch_add(local.sum_ns, Ordering::Relaxed);
        }
    }

    /// The current state.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut count = 0;
        let mut buckets = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            count += n;
            let le = LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((le, n));
        }
        HistogramSnapshot {
            sum: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
            count,
            buckets,
        }
    }
}

/// Observations gathered on one task and merged into a [`Histogram`] at once: a batch of
/// deliveries costs a few atomic adds, not one per delivery.
#[derive(Debug, Default)]
pub struct LocalHistogram {
    counts: [u32; LATENCY_BUCKETS.len() + 1],
    sum_ns: u64,
    observed: u32,
}

impl LocalHistogram {
    /// Records one duration.
    #[inline]
    pub fn observe(&mut self, d: Duration) {
        let ns = nanos(d);
        self.counts[bucket_of_ns(ns)] += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
        self.observed += 1;
    }
}

#[inline]
fn nanos(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(d.subsec_nanos()))
}

/// Which of the three stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// The session store.
    Sessions = 0,
    /// The retained store.
    Retained = 1,
    /// The queue store.
    Queue = 2,
}

impl StoreKind {
    /// All three, in index order.
    pub const ALL: [StoreKind; 3] = [StoreKind::Sessions, StoreKind::Retained, StoreKind::Queue];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Sessions => "sessions",
            StoreKind::Retained => "retained",
            StoreKind::Queue => "queue",
        }
    }
}

/// What the committer saw of one store.
#[derive(Debug, Default)]
pub struct StoreCounters {
    /// Operations committed.
    pub operations: AtomicU64,
    /// Commits (batches) attempted, successful or not.
    pub commits: AtomicU64,
    /// Commits that failed (each retry counts).
    pub errors: AtomicU64,
    /// Time per commit attempt.
    pub commit_duration: Histogram,
}

/// Per store kind.
#[derive(Debug, Default)]
pub struct CommitStats {
    /// Indexed by [`StoreKind`].
    pub stores: [StoreCounters; 3],
}

impl CommitStats {
    /// The counters of one store.
    pub fn of(&self, kind: StoreKind) -> &StoreCounters {
        &self.stores[kind as usize]
    }

    /// Records one commit attempt.
    pub fn record(&self, kind: StoreKind, ops: usize, took: Duration, ok: bool) {
        let c = self.of(kind);
        c.commits.fetch_add(1, Ordering::Relaxed);
        c.commit_duration.observe(took);
        if ok {
            c.operations.fetch_add(ops as u64, Ordering::Relaxed);
        } else {
            c.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_buckets_with_inf_last() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(10)); // first bucket
        h.observe(Duration::from_micros(900)); // le 0.001
        h.observe(Duration::from_millis(1)); // le 0.001 (bounds are inclusive)
        h.observe(Duration::from_secs(60)); // +Inf
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.buckets[0], (0.000_05, 1));
        let le_1ms = s.buckets.iter().find(|(le, _)| *le == 0.001).unwrap();
        assert_eq!(le_1ms.1, 2);
        assert_eq!(s.buckets.iter().map(|b| b.1).sum::<u64>(), 4);
        assert_eq!(*s.buckets.last().unwrap(), (f64::INFINITY, 1));
        assert!((s.sum - 60.00191).abs() < 1e-9, "{}", s.sum);
    }

    #[test]
    fn the_integer_buckets_are_the_published_bounds() {
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            assert_eq!(BUCKETS_NS[i], (le * 1e9).round() as u64);
            let d = Duration::from_nanos(BUCKETS_NS[i]);
            assert_eq!(bucket_of(d), i, "the bound itself is inside");
            assert_eq!(bucket_of(d + Duration::from_nanos(1)), i + 1);
        }
    }

    #[test]
    fn a_local_batch_merges_like_single_observations() {
        let direct = Histogram::default();
        let merged = Histogram::default();
        let mut local = LocalHistogram::default();
        for us in [1u64, 70, 300, 5_000, 5_000, 2_000_000] {
            direct.observe(Duration::from_micros(us));
            local.observe(Duration::from_micros(us));
        }
        merged.merge(&local);
        assert_eq!(direct.snapshot(), merged.snapshot());
    }

    #[test]
    fn commit_stats_count_operations_only_when_committed() {
        let s = CommitStats::default();
        s.record(StoreKind::Queue, 10, Duration::from_millis(2), true);
        s.record(StoreKind::Queue, 5, Duration::from_millis(2), false);
        let q = s.of(StoreKind::Queue);
        assert_eq!(q.operations.load(Ordering::Relaxed), 10);
        assert_eq!(q.commits.load(Ordering::Relaxed), 2);
        assert_eq!(q.errors.load(Ordering::Relaxed), 1);
        assert_eq!(s.of(StoreKind::Sessions).commits.load(Ordering::Relaxed), 0);
    }
}
