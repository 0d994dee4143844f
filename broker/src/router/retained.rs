//! The in-memory index of retained messages: one trie of topic levels, matched by filters.
//!
//! Plain data. The broker keeps it behind its own lock and (from the durable-state work on)
//! writes each change through to the `RetainedStore`.

use std::sync::Arc;

use ahash::AHashMap;

use crate::message::Message;

#[derive(Default)]
struct Node {
    children: AHashMap<Box<str>, Node>,
    message: Option<Arc<Message>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.message.is_none()
    }
}

/// Retained messages by topic.
#[derive(Default)]
pub struct RetainedIndex {
    root: Node,
    count: usize,
    bytes: usize,
    /// Sets and deletions so far (a reread from the store checks that none came meanwhile).
    changes: u64,
}

impl RetainedIndex {
    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Total payload bytes retained.
    pub fn payload_bytes(&self) -> usize {
        self.bytes
    }

    /// How many sets and deletions this index has seen.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Takes `fresh` (read from the store) for every topic but the `$SYS` ones, which are
    /// this node's own and never stored. Counts as a change.
    pub fn replace_stored(&mut self, mut fresh: RetainedIndex) {
        for m in self.matching("$SYS/#") {
            fresh.set(m);
        }
        fresh.changes = self.changes + 1;
        *self = fresh;
    }

    /// Stores `message` under its topic, or deletes the topic's retained message when the
    /// payload is empty. MQTT 5.0 [MQTT-3.3.1-6], [MQTT-3.3.1-7].
    pub fn set(&mut self, message: Arc<Message>) {
        self.changes += 1;
        let topic = message.topic.clone();
        if message.payload.is_empty() {
            self.remove(&topic);
            return;
        }
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        self.bytes += message.payload.len();
        match node.message.replace(message) {
            Some(old) => self.bytes -= old.payload.len(),
            None => self.count += 1,
        }
    }

    /// Deletes the retained message of `topic`; returns true when there was one.
    pub fn remove(&mut self, topic: &str) -> bool {
        self.changes += 1;
        let levels: Vec<&str> = topic.split('/').collect();
        match remove(&mut self.root, &levels) {
            Some(old) => {
                self.count -= 1;
                self.bytes -= old.payload.len();
                true
            }
            None => false,
        }
    }

    /// The retained message of one topic.
    pub fn get(&self, topic: &str) -> Option<&Arc<Message>> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.message.as_ref()
    }

    /// Every retained message whose topic matches `filter` (a valid, non-shared filter).
    pub fn matching(&self, filter: &str) -> Vec<Arc<Message>> {
        let levels: Vec<&str> = filter.split('/').collect();
        let mut out = Vec::new();
        collect(&self.root, &levels, true, &mut out);
        out
    }
}

fn remove(node: &mut Node, levels: &[&str]) -> Option<Arc<Message>> {
    let Some((&level, rest)) = levels.split_first() else {
        return node.message.take();
    };
    let child = node.children.get_mut(level)?;
    let removed = remove(child, rest);
    if child.is_empty() {
        node.children.remove(level);
    }
    removed
}

fn collect(node: &Node, levels: &[&str], root: bool, out: &mut Vec<Arc<Message>>) {
    let Some((&level, rest)) = levels.split_first() else {
        out.extend(node.message.iter().cloned());
        return;
    };
    match level {
        "#" => {
            // `a/#` matches `a` too; the node itself holds `a`'s message.
            if !root {
                out.extend(node.message.iter().cloned());
            }
            for (name, child) in &node.children {
                if root && name.starts_with('$') {
                    continue; // MQTT 5.0 [MQTT-4.7.2-1]
                }
                collect_all(child, out);
            }
        }
        "+" => {
            for (name, child) in &node.children {
                if root && name.starts_with('$') {
                    continue;
                }
                collect(child, rest, false, out);
            }
        }
        exact => {
            if let Some(child) = node.children.get(exact) {
                collect(child, rest, false, out);
            }
        }
    }
}

fn collect_all(node: &Node, out: &mut Vec<Arc<Message>>) {
    out.extend(node.message.iter().cloned());
    for child in node.children.values() {
        collect_all(child, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::topic;

    fn msg(topic: &str, payload: &str) -> Arc<Message> {
        Arc::new(Message::test(topic, payload))
    }

    fn topics(idx: &RetainedIndex, filter: &str) -> Vec<String> {
        let mut v: Vec<String> = idx
            .matching(filter)
            .iter()
            .map(|m| m.topic.to_string())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_reread_from_the_store_keeps_the_sys_topics_and_counts_as_a_change() {
        let mut idx = RetainedIndex::default();
        idx.set(msg("$SYS/broker/uptime", "5"));
        idx.set(msg("cfg/old", "1"));
        let before = idx.changes();
        let mut fresh = RetainedIndex::default();
        fresh.set(msg("cfg/new", "2"));
        idx.replace_stored(fresh);
        assert_eq!(topics(&idx, "#"), ["cfg/new"]);
        assert_eq!(topics(&idx, "$SYS/#"), ["$SYS/broker/uptime"]);
        assert_eq!((idx.len(), idx.payload_bytes()), (2, 2));
        assert!(idx.changes() > before);
        idx.remove("cfg/new");
        assert_eq!(idx.changes(), before + 2);
    }

    #[test]
    fn set_replaces_and_empty_payload_deletes() {
        let mut idx = RetainedIndex::default();
        idx.set(msg("a/b", "1"));
        idx.set(msg("a/b", "22"));
        assert_eq!(idx.len(), 1);
        assert_eq!(idx.payload_bytes(), 2);
        assert_eq!(&idx.get("a/b").unwrap().payload[..], b"22");
        idx.set(msg("a/b", ""));
        assert!(idx.is_empty());
        assert!(idx.root.is_empty(), "empty nodes are pruned");
    }

    #[test]
    fn wildcard_filters_find_retained_topics() {
        let mut idx = RetainedIndex::default();
        for t in ["a", "a/b", "a/b/c", "a/x/c", "b", "$SYS/up", "/lead"] {
            idx.set(msg(t, "v"));
        }
        assert_eq!(topics(&idx, "a/#"), vec!["a", "a/b", "a/b/c", "a/x/c"]);
        assert_eq!(topics(&idx, "a/+/c"), vec!["a/b/c", "a/x/c"]);
        assert_eq!(
            topics(&idx, "#"),
            vec!["/lead", "a", "a/b", "a/b/c", "a/x/c", "b"]
        );
        assert_eq!(topics(&idx, "+"), vec!["a", "b"]);
        assert_eq!(topics(&idx, "$SYS/#"), vec!["$SYS/up"]);
        assert_eq!(topics(&idx, "+/lead"), vec!["/lead"]);
        // Cross-check against the reference matcher.
        for f in ["a/#", "a/+/c", "#", "+", "+/+", "$SYS/#", "+/lead", "a/b"] {
            let mut expected: Vec<String> = ["a", "a/b", "a/b/c", "a/x/c", "b", "$SYS/up", "/lead"]
                .iter()
                .filter(|t| topic::matches(f, t))
                .map(|t| t.to_string())
                .collect();
            expected.sort();
            assert_eq!(topics(&idx, f), expected, "{f}");
        }
    }
}
