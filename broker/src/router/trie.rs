//! The subscription trie: topic filters to subscribers, one node per filter level.
//!
//! The trie is plain data: [`SubscriptionTrie::collect`] returns the matching subscriptions for a
//! topic and the caller delivers them, so tests and benchmarks need no runtime. The broker keeps
//! it behind a read-mostly lock: publishing connections match concurrently under the read lock;
//! SUBSCRIBE and UNSUBSCRIBE take the write lock briefly.

use std::sync::atomic::{AtomicUsize, Ordering};

use ahash::AHashMap;
use indexmap::IndexMap;
use rookery_codec::{QoS, SubscriptionOptions};
use smallvec::SmallVec;

/// Identifies a session in the trie: unique for the process lifetime of a session object.
pub type SessionId = u64;

/// What the trie needs from a subscriber handle.
pub trait Subscriber: Clone {
    /// The session's id.
    fn session_id(&self) -> SessionId;
    /// True when the session has a live connection; shared groups prefer such members.
    fn is_online(&self) -> bool;
}

/// One subscription's options as stored in the trie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Subscription {
    /// Options from SUBSCRIBE.
    pub options: SubscriptionOptions,
    /// Subscription identifier (MQTT 5.0), if the SUBSCRIBE carried one.
    pub id: Option<u32>,
    /// The ACL allows this filter only in part: check read access for each message.
    pub acl_check: bool,
}

type FastIndexMap<K, V> = IndexMap<K, V, ahash::RandomState>;

struct Entry<S> {
    handle: S,
    sub: Subscription,
}

struct Group<S> {
    name: Box<str>,
    /// `$share/{name}/{filter}`: the group's name cluster-wide.
    key: Box<str>,
    members: FastIndexMap<SessionId, Entry<S>>,
    /// Round-robin cursor; atomic so that matching needs only the read lock.
    next: AtomicUsize,
}

struct Bucket<S> {
    direct: FastIndexMap<SessionId, Entry<S>>,
    groups: Vec<Group<S>>,
}

impl<S> Default for Bucket<S> {
    fn default() -> Self {
        Bucket {
            direct: FastIndexMap::default(),
            groups: Vec::new(),
        }
    }
}

impl<S> Bucket<S> {
    fn is_empty(&self) -> bool {
        self.direct.is_empty() && self.groups.is_empty()
    }
}

struct Node<S> {
    children: AHashMap<Box<str>, Node<S>>,
    plus: Option<Box<Node<S>>>,
    /// Subscriptions whose filter ends at this node.
    exact: Option<Box<Bucket<S>>>,
    /// Subscriptions whose filter is this node's path followed by `/#`.
    hash: Option<Box<Bucket<S>>>,
}

impl<S> Default for Node<S> {
    fn default() -> Self {
        Node {
            children: AHashMap::new(),
            plus: None,
            exact: None,
            hash: None,
        }
    }
}

impl<S> Node<S> {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.exact.is_none()
            && self.hash.is_none()
    }
}

/// One matching subscription, borrowed from the trie.
pub struct Match<'a, S> {
    /// The subscriber.
    pub handle: &'a S,
    /// Its options.
    pub sub: Subscription,
    /// For a delivery from a shared group (never merged with others), the group's key,
    /// `$share/{group}/{filter}`. A thin pointer on purpose: matches are many and copied when
    /// sorted, and a `&str` would double the field (measured: fan-out 12% slower).
    #[allow(clippy::borrowed_box)]
    pub group: Option<&'a Box<str>>,
}

impl<S> Match<'_, S> {
    /// True when this delivery comes from a shared group.
    pub fn shared(&self) -> bool {
        self.group.is_some()
    }
}

/// The result of [`SubscriptionTrie::collect`], inline for the common few-subscriber case.
pub type Matches<'a, S> = SmallVec<[Match<'a, S>; 8]>;

/// Topic filters to subscribers.
pub struct SubscriptionTrie<S> {
    root: Node<S>,
    count: usize,
}

impl<S> Default for SubscriptionTrie<S> {
    fn default() -> Self {
        SubscriptionTrie {
            root: Node::default(),
            count: 0,
        }
    }
}

impl<S: Subscriber> SubscriptionTrie<S> {
    /// Number of subscriptions stored (shared members count one each).
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when no subscription is stored.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds or replaces a subscription. `filter` must be valid and without the `$share/` prefix.
    /// Returns true when the subscription is new, false when it replaced an existing one.
    pub fn subscribe(
        &mut self,
        handle: &S,
        filter: &str,
        group: Option<&str>,
        sub: Subscription,
    ) -> bool {
        let bucket = bucket_for(&mut self.root, filter);
        let id = handle.session_id();
        let entry = Entry {
            handle: handle.clone(),
            sub,
        };
        let members = match group {
            None => &mut bucket.direct,
            Some(name) => match bucket.groups.iter().position(|g| &*g.name == name) {
                Some(i) => &mut bucket.groups[i].members,
                None => {
                    bucket.groups.push(Group {
                        name: name.into(),
                        key: format!("$share/{name}/{filter}").into(),
                        members: FastIndexMap::default(),
                        next: AtomicUsize::new(0),
                    });
                    let last = bucket.groups.len() - 1;
                    &mut bucket.groups[last].members
                }
            },
        };
        let new = members.insert(id, entry).is_none();
        if new {
            self.count += 1;
        }
        new
    }

    /// Removes a subscription; returns true when it existed.
    pub fn unsubscribe(&mut self, id: SessionId, filter: &str, group: Option<&str>) -> bool {
        let levels: SmallVec<[&str; 8]> = filter.split('/').collect();
        let removed = remove(&mut self.root, &levels, id, group);
        if removed {
            self.count -= 1;
        }
        removed
    }

    /// Appends every subscription matching `topic` to `out`. A shared group contributes one
    /// member, chosen round-robin among online members (any member when none is online).
    pub fn collect<'a>(&'a self, topic: &str, out: &mut Matches<'a, S>) {
        self.collect_filtered(topic, out, &|_, _| true);
    }

    /// [`SubscriptionTrie::collect`] keeping only the subscriptions `accept` takes; a shared
    /// group's pick skips members it refuses, so the group still delivers when some member
    /// may take the message.
    pub fn collect_filtered<'a>(
        &'a self,
        topic: &str,
        out: &mut Matches<'a, S>,
        accept: &Accept<'_, S>,
    ) {
        let levels: SmallVec<[&str; 8]> = topic.split('/').collect();
        // MQTT 5.0 [MQTT-4.7.2-1]: `$` topics are not matched by first-level wildcards.
        let dollar = topic.starts_with('$');
        collect_node(&self.root, &levels, 0, dollar, accept, out);
    }

    /// Visits every subscription with its filter and group; those for which `keep` returns
    /// false are removed (and emptied nodes pruned). `keep` may change the options in place.
    /// Used when ACL rules change at reload; O(subscriptions).
    pub fn retain(
        &mut self,
        mut keep: impl FnMut(&S, &str, Option<&str>, &mut Subscription) -> bool,
    ) {
        let mut path = String::new();
        let removed = retain_node(&mut self.root, &mut path, true, &mut keep);
        self.count -= removed;
    }

    /// True when a subscription to exactly `filter` (in `group`, for a shared one) is stored.
    pub fn contains(&self, filter: &str, group: Option<&str>) -> bool {
        let mut node = &self.root;
        let mut levels = filter.split('/').peekable();
        let bucket = loop {
            let Some(level) = levels.next() else {
                return false;
            };
            if level == "#" {
                break node.hash.as_deref();
            }
            let next = if level == "+" {
                node.plus.as_deref()
            } else {
                node.children.get(level)
            };
            let Some(next) = next else {
                return false;
            };
            node = next;
            if levels.peek().is_none() {
                break node.exact.as_deref();
            }
        };
        bucket.is_some_and(|b| match group {
            None => !b.direct.is_empty(),
            Some(name) => b.groups.iter().any(|g| &*g.name == name),
        })
    }

    /// True when at least one subscription (shared or not) matches `topic`.
    pub fn has_match(&self, topic: &str) -> bool {
        let mut out = Matches::new();
        self.collect(topic, &mut out);
        !out.is_empty()
    }
}

fn bucket_for<'n, S>(mut node: &'n mut Node<S>, filter: &str) -> &'n mut Bucket<S> {
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level == "#" {
            return node.hash.get_or_insert_with(Default::default);
        }
        node = if level == "+" {
            node.plus.get_or_insert_with(Default::default)
        } else {
            node.children.entry(level.into()).or_default()
        };
        if levels.peek().is_none() {
            return node.exact.get_or_insert_with(Default::default);
        }
    }
    // An empty filter never reaches here (validated), but keep the function total.
    node.exact.get_or_insert_with(Default::default)
}

fn remove_from_bucket<S>(
    slot: &mut Option<Box<Bucket<S>>>,
    id: SessionId,
    group: Option<&str>,
) -> bool {
    let Some(bucket) = slot else { return false };
    let removed = match group {
        None => bucket.direct.swap_remove(&id).is_some(),
        Some(name) => match bucket.groups.iter().position(|g| &*g.name == name) {
            Some(i) => {
                let removed = bucket.groups[i].members.swap_remove(&id).is_some();
                if bucket.groups[i].members.is_empty() {
                    bucket.groups.swap_remove(i);
                }
                removed
            }
            None => false,
        },
    };
    if bucket.is_empty() {
        *slot = None;
    }
    removed
}

/// Removes a subscription below `node` and prunes nodes left empty.
fn remove<S>(node: &mut Node<S>, levels: &[&str], id: SessionId, group: Option<&str>) -> bool {
    let Some((&level, rest)) = levels.split_first() else {
        return false;
    };
    if level == "#" {
        return remove_from_bucket(&mut node.hash, id, group);
    }
    if level == "+" {
        let Some(child) = node.plus.as_mut() else {
            return false;
        };
        let removed = if rest.is_empty() {
            remove_from_bucket(&mut child.exact, id, group)
        } else {
            remove(child, rest, id, group)
        };
        if child.is_empty() {
            node.plus = None;
        }
        return removed;
    }
    let Some(child) = node.children.get_mut(level) else {
        return false;
    };
    let removed = if rest.is_empty() {
        remove_from_bucket(&mut child.exact, id, group)
    } else {
        remove(child, rest, id, group)
    };
    if child.is_empty() {
        node.children.remove(level);
    }
    removed
}

/// A filter on matching subscriptions: the subscriber and its options.
pub type Accept<'f, S> = dyn Fn(&S, &Subscription) -> bool + 'f;

type Keep<'k, S> = dyn FnMut(&S, &str, Option<&str>, &mut Subscription) -> bool + 'k;

fn retain_bucket<S>(
    slot: &mut Option<Box<Bucket<S>>>,
    filter: &str,
    keep: &mut Keep<'_, S>,
) -> usize {
    let Some(bucket) = slot else { return 0 };
    let mut removed = 0;
    bucket.direct.retain(|_, e| {
        let k = keep(&e.handle, filter, None, &mut e.sub);
        removed += usize::from(!k);
        k
    });
    for group in &mut bucket.groups {
        let name = &group.name;
        group.members.retain(|_, e| {
            let k = keep(&e.handle, filter, Some(name), &mut e.sub);
            removed += usize::from(!k);
            k
        });
    }
    bucket.groups.retain(|g| !g.members.is_empty());
    if bucket.is_empty() {
        *slot = None;
    }
    removed
}

/// `path` is the filter up to and including this node; `root` is true only for the root,
/// whose path is empty (a first level may itself be empty, as in `/a`).
fn retain_node<S>(
    node: &mut Node<S>,
    path: &mut String,
    root: bool,
    keep: &mut Keep<'_, S>,
) -> usize {
    let len = path.len();
    let mut removed = retain_bucket(&mut node.exact, path, keep);
    let extend = |path: &mut String, level: &str| {
        if !root {
            path.push('/');
        }
        path.push_str(level);
    };
    if node.hash.is_some() {
        extend(path, "#");
        removed += retain_bucket(&mut node.hash, path, keep);
        path.truncate(len);
    }
    if let Some(plus) = node.plus.as_mut() {
        extend(path, "+");
        removed += retain_node(plus, path, false, keep);
        path.truncate(len);
        if plus.is_empty() {
            node.plus = None;
        }
    }
    for (level, child) in node.children.iter_mut() {
        extend(path, level);
        removed += retain_node(child, path, false, keep);
        path.truncate(len);
    }
    node.children.retain(|_, c| !c.is_empty());
    removed
}

fn collect_bucket<'a, S: Subscriber>(
    bucket: &'a Bucket<S>,
    accept: &Accept<'_, S>,
    out: &mut Matches<'a, S>,
) {
    for entry in bucket.direct.values() {
        if !accept(&entry.handle, &entry.sub) {
            continue;
        }
        out.push(Match {
            handle: &entry.handle,
            sub: entry.sub,
            group: None,
        });
    }
    for group in &bucket.groups {
        if let Some(entry) = pick(group, accept) {
            out.push(Match {
                handle: &entry.handle,
                sub: entry.sub,
                group: Some(&group.key),
            });
        }
    }
}

/// Round-robin over online members; falls back to any member so that a group of offline
/// persistent sessions still queues the message rather than losing it.
fn pick<'g, S: Subscriber>(group: &'g Group<S>, accept: &Accept<'_, S>) -> Option<&'g Entry<S>> {
    let n = group.members.len();
    if n == 0 {
        return None;
    }
    let start = group.next.fetch_add(1, Ordering::Relaxed);
    let mut fallback = None;
    for k in 0..n {
        let (_, entry) = group.members.get_index((start + k) % n)?;
        if !accept(&entry.handle, &entry.sub) {
            continue;
        }
        if entry.handle.is_online() {
            return Some(entry);
        }
        fallback.get_or_insert(entry);
    }
    fallback
}

fn collect_node<'a, S: Subscriber>(
    node: &'a Node<S>,
    levels: &[&str],
    depth: usize,
    dollar: bool,
    accept: &Accept<'_, S>,
    out: &mut Matches<'a, S>,
) {
    let first_level_of_dollar = dollar && depth == 0;
    if let Some(hash) = &node.hash
        && !first_level_of_dollar
    {
        // `a/#` also matches `a` itself: MQTT 5.0 section 4.7.1.2.
        collect_bucket(hash, accept, out);
    }
    let Some((&level, rest)) = levels.split_first() else {
        if let Some(exact) = &node.exact {
            collect_bucket(exact, accept, out);
        }
        return;
    };
    if let Some(child) = node.children.get(level) {
        descend(child, rest, depth + 1, dollar, accept, out);
    }
    if let Some(plus) = &node.plus
        && !first_level_of_dollar
    {
        descend(plus, rest, depth + 1, dollar, accept, out);
    }
}

fn descend<'a, S: Subscriber>(
    child: &'a Node<S>,
    rest: &[&str],
    depth: usize,
    dollar: bool,
    accept: &Accept<'_, S>,
    out: &mut Matches<'a, S>,
) {
    if rest.is_empty() {
        if let Some(exact) = &child.exact {
            collect_bucket(exact, accept, out);
        }
        if let Some(hash) = &child.hash {
            collect_bucket(hash, accept, out);
        }
    } else {
        collect_node(child, rest, depth, dollar, accept, out);
    }
}

/// The QoS a subscriber receives: the lower of the published QoS and the subscription's.
pub fn effective_qos(published: QoS, granted: QoS) -> QoS {
    published.min(granted)
}

#[cfg(test)]
mod tests;
