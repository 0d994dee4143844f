//! Routes between nodes (pure data): which filters this node announces, and which filters each
//! peer announced, so that a message goes to a peer only when the peer has a subscriber for it.
//!
//! A node announces a filter while at least one of its sessions subscribes to it (counted
//! here: the first subscription announces it, the last unsubscription withdraws it). Shared
//! subscriptions are not announced: their groups are served by the node they live on.

use std::sync::Arc;

use ahash::AHashMap;
use smallvec::SmallVec;

use super::trie::{SessionId, Subscriber, Subscription, SubscriptionTrie};

/// Subscriptions per filter on this node.
#[derive(Debug, Default)]
pub struct FilterCounts {
    counts: AHashMap<Box<str>, u32>,
}

impl FilterCounts {
    /// Counts one more subscription to `filter`; true when it is the first (announce it).
    pub fn add(&mut self, filter: &str) -> bool {
        match self.counts.get_mut(filter) {
            Some(n) => {
                *n += 1;
                false
            }
            None => {
                self.counts.insert(filter.into(), 1);
                true
            }
        }
    }

    /// Counts one subscription fewer; true when it was the last (withdraw it).
    pub fn remove(&mut self, filter: &str) -> bool {
        match self.counts.get_mut(filter) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.counts.remove(filter);
                true
            }
            None => false,
        }
    }

    /// Every filter with a subscriber, sorted.
    pub fn filters(&self) -> Vec<String> {
        let mut v: Vec<String> = self.counts.keys().map(|k| k.to_string()).collect();
        v.sort();
        v
    }
}

/// A peer in a route trie: the trie needs a subscriber handle, and a peer is always "online"
/// while its routes are kept.
#[derive(Debug, Clone, Copy)]
struct PeerRoute;

impl Subscriber for PeerRoute {
    fn session_id(&self) -> SessionId {
        0
    }
    fn is_online(&self) -> bool {
        true
    }
}

/// The filters each peer announced.
#[derive(Default)]
pub struct RemoteRoutes {
    /// Names are shared: matching a message hands out `Arc` clones, no allocation.
    peers: AHashMap<Arc<str>, SubscriptionTrie<PeerRoute>>,
}

impl std::fmt::Debug for RemoteRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.peers.iter().map(|(k, t)| (k, t.len())))
            .finish()
    }
}

impl RemoteRoutes {
    /// Replaces everything `peer` announced (its snapshot on link-up).
    pub fn replace(&mut self, peer: &str, filters: &[String]) {
        let mut trie = SubscriptionTrie::default();
        for f in filters {
            trie.subscribe(&PeerRoute, f, None, Subscription::default());
        }
        self.peers.insert(peer.into(), trie);
    }

    /// `peer` has a subscriber for `filter` now.
    pub fn add(&mut self, peer: &str, filter: &str) {
        self.peers.entry(peer.into()).or_default().subscribe(
            &PeerRoute,
            filter,
            None,
            Subscription::default(),
        );
    }

    /// `peer` has no subscriber for `filter` any more.
    pub fn remove(&mut self, peer: &str, filter: &str) {
        if let Some(t) = self.peers.get_mut(peer) {
            t.unsubscribe(0, filter, None);
        }
    }

    /// Forgets `peer`'s routes (its link went down).
    pub fn drop_peer(&mut self, peer: &str) {
        self.peers.remove(peer);
    }

    /// The peers with a subscriber for `topic`, each once.
    pub fn peers_for(&self, topic: &str) -> SmallVec<[Arc<str>; 4]> {
        self.peers
            .iter()
            .filter(|(_, t)| !t.is_empty() && t.has_match(topic))
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Filters announced by `peer`.
    pub fn count(&self, peer: &str) -> usize {
        self.peers.get(peer).map_or(0, |t| t.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_subscription_announces_and_the_last_withdraws() {
        let mut c = FilterCounts::default();
        assert!(c.add("a/+"));
        assert!(!c.add("a/+"));
        assert!(c.add("b/#"));
        assert_eq!(c.filters(), vec!["a/+", "b/#"]);
        assert!(!c.remove("a/+"));
        assert!(c.remove("a/+"));
        assert!(!c.remove("a/+"), "not subscribed any more");
        assert_eq!(c.filters(), vec!["b/#"]);
    }

    #[test]
    fn a_topic_goes_to_each_peer_with_a_matching_filter_once() {
        let mut r = RemoteRoutes::default();
        r.replace("n2", &["a/+".into(), "a/#".into(), "#".into()]);
        r.add("n3", "a/b");
        r.add("n4", "x/y");
        let mut got: Vec<String> = r.peers_for("a/b").iter().map(|p| p.to_string()).collect();
        got.sort();
        assert_eq!(got, vec!["n2", "n3"]);
        assert!(
            r.peers_for("$SYS/x").is_empty(),
            "`#` does not match `$` topics"
        );
        r.remove("n3", "a/b");
        assert_eq!(&*r.peers_for("a/b")[0], "n2");
        assert_eq!(r.peers_for("a/b").len(), 1);
        r.replace("n2", &[]);
        assert!(r.peers_for("a/b").is_empty());
        r.drop_peer("n4");
        assert!(r.peers_for("x/y").is_empty());
        assert_eq!(r.count("n2"), 0);
    }
}
