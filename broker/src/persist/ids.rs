//! Ids of stored messages and queue entries: ascending on each node (queue order), and
//! unique across the nodes of a cluster that share one PostgreSQL (the low bits name the
//! node), so one node's message can never stand in for another's.

use std::sync::atomic::{AtomicU64, Ordering};

/// 2025-01-01T00:00:00Z: ids count from here, so that they stay within PostgreSQL's `bigint`
/// for a century.
pub const EPOCH_MS: u64 = 1_735_689_600_000;

/// Where a node's ids start: one per microsecond of wall clock since [`EPOCH_MS`] (ids made
/// faster than that for a whole run are caught up with by [`IdGen::saw`] at the next start).
pub fn seed(now_ms: u64) -> u64 {
    now_ms.saturating_sub(EPOCH_MS).saturating_mul(1_000)
}

/// Low bits of an id that name the node that made it.
pub const NODE_BITS: u32 = 10;
const NODE_MASK: u64 = (1 << NODE_BITS) - 1;

/// The node's tag: a StatefulSet pod's ordinal (`rookery-3` is 3), unique among the pods of
/// one cluster; any other name is hashed (FNV-1a).
pub fn node_tag(node_id: &str) -> u64 {
    if let Some((_, n)) = node_id.rsplit_once('-')
        && let Ok(n) = n.parse::<u64>()
        && n <= NODE_MASK
    {
        return n;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h & NODE_MASK
}

/// Makes ids.
#[derive(Debug)]
pub struct IdGen {
    counter: AtomicU64,
    tag: u64,
}

impl IdGen {
    /// Ids for `node_id`, starting above `seed`.
    pub fn new(node_id: &str, seed: u64) -> IdGen {
        IdGen {
            counter: AtomicU64::new(seed),
            tag: node_tag(node_id),
        }
    }

    /// A fresh id, above every one made or seen before.
    pub fn next(&self) -> u64 {
        ((self.counter.fetch_add(1, Ordering::Relaxed) + 1) << NODE_BITS) | self.tag
    }

    /// Makes later ids exceed `id` (read back from a store or handed over by another node).
    pub fn saw(&self, id: u64) {
        self.counter.fetch_max(id >> NODE_BITS, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_get_their_ordinal_and_other_names_a_hash() {
        assert_eq!(node_tag("rookery-0"), 0);
        assert_eq!(node_tag("rookery-17"), 17);
        assert_eq!(node_tag("rookery-1024"), node_tag("rookery-1024"));
        assert!(node_tag("broker.example") <= NODE_MASK);
        assert_ne!(node_tag("alpha"), node_tag("beta"));
    }

    #[test]
    fn ids_ascend_and_never_collide_between_nodes() {
        let seed = 1_800_000_000_000 * 4000;
        let (a, b) = (IdGen::new("rookery-0", seed), IdGen::new("rookery-1", seed));
        let mut seen = std::collections::HashSet::new();
        let mut last = (0, 0);
        for _ in 0..1000 {
            let (x, y) = (a.next(), b.next());
            assert!(x > last.0 && y > last.1);
            last = (x, y);
            assert!(seen.insert(x) && seen.insert(y));
        }
    }

    #[test]
    fn ids_fit_a_signed_64_bit_column_for_a_century() {
        let in_a_century = EPOCH_MS + 100 * 365 * 24 * 3600 * 1000;
        let g = IdGen::new("rookery-1023", seed(in_a_century));
        assert!(g.next() < i64::MAX as u64);
    }

    #[test]
    fn an_id_seen_elsewhere_moves_the_counter_past_it() {
        let a = IdGen::new("rookery-0", 10);
        let b = IdGen::new("rookery-1", 0);
        let theirs = b.next();
        let far = (500 << NODE_BITS) | 1;
        a.saw(far);
        let mine = a.next();
        assert!(mine > far && mine > theirs);
        assert_eq!(mine & NODE_MASK, 0);
    }
}
