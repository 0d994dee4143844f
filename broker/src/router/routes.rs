//! Routes between nodes (pure data): which filters this node announces, and which filters each
//! peer announced, so that a message goes to a peer only when the peer has a subscriber for it.
//!
//! A node announces a filter while at least one of its sessions subscribes to it (counted
//! here: the first subscription announces it, the last unsubscription withdraws it). A shared
//! group is announced as `$share/{group}/{filter}` while the node has a member: the node a
//! message is published on then picks one node per group (itself when it has an online
//! member, else one of the announcing peers in turn), and tells that node which groups it
//! was picked for, so each message reaches one member cluster-wide.

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

/// Splits `$share/{group}/{filter}` into the group and the filter.
pub fn split_shared(announced: &str) -> Option<(&str, &str)> {
    let rest = announced.strip_prefix("$share/")?;
    let (group, filter) = rest.split_once('/')?;
    (!group.is_empty() && !filter.is_empty()).then_some((group, filter))
}

/// The shared groups a message matches on other nodes: for each group's key
/// (`$share/{group}/{filter}`), the peers with a member.
pub type SharedMatches = SmallVec<[(Box<str>, SmallVec<[Arc<str>; 4]>); 2]>;

/// The filters each peer announced.
#[derive(Default)]
pub struct RemoteRoutes {
    /// Names are shared: matching a message hands out `Arc` clones, no allocation.
    peers: AHashMap<Arc<str>, SubscriptionTrie<PeerRoute>>,
    /// Each peer's shared groups, one member (the peer) per group.
    shared: AHashMap<Arc<str>, SubscriptionTrie<PeerRoute>>,
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
        self.peers.insert(peer.into(), SubscriptionTrie::default());
        self.shared.remove(peer);
        for f in filters {
            self.add(peer, f);
        }
    }

    /// `peer` has a subscriber for `filter` (or a member of the shared group) now.
    pub fn add(&mut self, peer: &str, filter: &str) {
        let (tries, group, filter) = match split_shared(filter) {
            Some((group, filter)) => (&mut self.shared, Some(group), filter),
            None => (&mut self.peers, None, filter),
        };
        tries.entry(peer.into()).or_default().subscribe(
            &PeerRoute,
            filter,
            group,
            Subscription::default(),
        );
    }

    /// `peer` has no subscriber for `filter` (or no member of the group) any more.
    pub fn remove(&mut self, peer: &str, filter: &str) {
        let (tries, group, filter) = match split_shared(filter) {
            Some((group, filter)) => (&mut self.shared, Some(group), filter),
            None => (&mut self.peers, None, filter),
        };
        if let Some(t) = tries.get_mut(peer) {
            t.unsubscribe(0, filter, group);
        }
    }

    /// Forgets `peer`'s routes (its link went down).
    pub fn drop_peer(&mut self, peer: &str) {
        self.peers.remove(peer);
        self.shared.remove(peer);
    }

    /// True when `peer` announced `filter` (as announced: plain, or `$share/{group}/{filter}`).
    pub fn announced(&self, peer: &str, filter: &str) -> bool {
        match split_shared(filter) {
            Some((group, f)) => self
                .shared
                .get(peer)
                .is_some_and(|t| t.contains(f, Some(group))),
            None => self
                .peers
                .get(peer)
                .is_some_and(|t| t.contains(filter, None)),
        }
    }

    /// True when some peer has a member of some shared group.
    pub fn has_shared(&self) -> bool {
        self.shared.values().any(|t| !t.is_empty())
    }

    /// The shared groups matching `topic` on other nodes, with the peers that have members.
    pub fn shared_for(&self, topic: &str) -> SharedMatches {
        let mut out = SharedMatches::new();
        for (peer, trie) in &self.shared {
            if trie.is_empty() {
                continue;
            }
            let mut matches = super::trie::Matches::new();
            trie.collect(topic, &mut matches);
            for m in matches {
                let Some(key) = m.group else { continue };
                match out.iter_mut().find(|(k, _)| **k == **key) {
                    Some((_, peers)) => peers.push(peer.clone()),
                    None => out.push((key.clone(), smallvec::smallvec![peer.clone()])),
                }
            }
        }
        out
    }

    /// The peer of `peers` that delivers message `message_id` for group `key`: in turn from
    /// one message to the next, each group on its own turn (no counter shared between groups,
    /// so two groups matching every message do not always land on the same peers).
    pub fn pick<'p>(
        &self,
        peers: &'p [Arc<str>],
        key: &str,
        message_id: u64,
    ) -> Option<&'p Arc<str>> {
        if peers.is_empty() {
            return None;
        }
        let offset = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        // Message ids ascend by one in their upper bits, the low ones name the node.
        let turn = (message_id >> crate::persist::ids::NODE_BITS).wrapping_add(offset);
        peers.get((turn % peers.len() as u64) as usize)
    }

    /// The peers with a subscriber for `topic`, each once.
    pub fn peers_for(&self, topic: &str) -> SmallVec<[Arc<str>; 4]> {
        self.peers
            .iter()
            .filter(|(_, t)| !t.is_empty() && t.has_match(topic))
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Filters and shared groups announced by `peer`.
    pub fn count(&self, peer: &str) -> usize {
        self.peers.get(peer).map_or(0, |t| t.len()) + self.shared.get(peer).map_or(0, |t| t.len())
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

    #[test]
    fn shared_groups_are_kept_apart_from_plain_routes() {
        let mut r = RemoteRoutes::default();
        r.replace("n2", &["$share/g/a/+".into(), "b/#".into()]);
        r.add("n3", "$share/g/a/+");
        r.add("n3", "$share/h/a/#");
        assert!(r.has_shared());
        // A shared group alone makes no plain route.
        assert!(r.peers_for("a/x").is_empty());
        let mut got: Vec<(String, Vec<String>)> = r
            .shared_for("a/x")
            .into_iter()
            .map(|(k, p)| {
                let mut p: Vec<String> = p.iter().map(|x| x.to_string()).collect();
                p.sort();
                (k.to_string(), p)
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                (
                    "$share/g/a/+".to_string(),
                    vec!["n2".to_string(), "n3".to_string()]
                ),
                ("$share/h/a/#".to_string(), vec!["n3".to_string()]),
            ]
        );
        assert!(r.announced("n3", "$share/g/a/+"));
        assert!(r.announced("n2", "b/#"));
        assert!(!r.announced("n2", "b/+"));
        assert!(!r.announced("n2", "$share/h/a/#"));
        r.remove("n3", "$share/g/a/+");
        assert!(!r.announced("n3", "$share/g/a/+"));
        assert_eq!(r.shared_for("a/x").len(), 2);
        assert_eq!(r.count("n2"), 2);
        r.drop_peer("n2");
        r.remove("n3", "$share/h/a/#");
        assert!(r.shared_for("a/x").is_empty());
        assert!(!r.has_shared());
    }

    #[test]
    fn peers_of_a_group_take_turns_and_groups_turn_on_their_own() {
        let r = RemoteRoutes::default();
        let peers: Vec<Arc<str>> = vec!["a".into(), "b".into(), "c".into()];
        let id = |n: u64| (n << crate::persist::ids::NODE_BITS) | 5;
        let picks: Vec<String> = (0..6)
            .map(|n| r.pick(&peers, "$share/g/x", id(n)).unwrap().to_string())
            .collect();
        assert_eq!(picks[..3], picks[3..]);
        let distinct: std::collections::HashSet<&String> = picks[..3].iter().collect();
        assert_eq!(distinct.len(), 3, "{picks:?}");
        // Two groups with the same two peers, both matching every message: each group
        // alternates (a shared counter would pin each group to one peer).
        let two: Vec<Arc<str>> = vec!["a".into(), "b".into()];
        for key in ["$share/g1/x", "$share/g2/x"] {
            let got: std::collections::HashSet<String> = (0..4)
                .map(|n| r.pick(&two, key, id(n)).unwrap().to_string())
                .collect();
            assert_eq!(got.len(), 2, "{key}");
        }
        assert!(r.pick(&[], "k", 1).is_none());
    }

    #[test]
    fn announced_shared_keys_split_into_group_and_filter() {
        assert_eq!(split_shared("$share/g/a/b"), Some(("g", "a/b")));
        assert_eq!(split_shared("$share/g/#"), Some(("g", "#")));
        assert_eq!(split_shared("$share//a"), None);
        assert_eq!(split_shared("$share/g"), None);
        assert_eq!(split_shared("a/b"), None);
    }
}
