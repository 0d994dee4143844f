use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use proptest::prelude::*;

use super::*;
use crate::router::topic;

#[derive(Clone)]
struct Sub(u64, Arc<AtomicBool>);

impl Subscriber for Sub {
    fn session_id(&self) -> SessionId {
        self.0
    }
    fn is_online(&self) -> bool {
        self.1.load(Ordering::Relaxed)
    }
}

fn sub(id: u64) -> Sub {
    Sub(id, Arc::new(AtomicBool::new(true)))
}

fn ids(trie: &SubscriptionTrie<Sub>, topic: &str) -> Vec<u64> {
    let mut out = Matches::new();
    trie.collect(topic, &mut out);
    let mut v: Vec<u64> = out.iter().map(|m| m.handle.0).collect();
    v.sort_unstable();
    v
}

fn qos1() -> Subscription {
    Subscription {
        options: SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            ..Default::default()
        },
        id: None,
        acl_check: false,
    }
}

#[test]
fn exact_plus_and_hash_filters_match() {
    let mut t = SubscriptionTrie::default();
    t.subscribe(&sub(1), "a/b/c", None, qos1());
    t.subscribe(&sub(2), "a/+/c", None, qos1());
    t.subscribe(&sub(3), "a/#", None, qos1());
    t.subscribe(&sub(4), "#", None, qos1());
    t.subscribe(&sub(5), "+/+", None, qos1());
    assert_eq!(ids(&t, "a/b/c"), vec![1, 2, 3, 4]);
    assert_eq!(ids(&t, "a"), vec![3, 4]);
    assert_eq!(ids(&t, "a/x"), vec![3, 4, 5]);
    assert_eq!(ids(&t, "b/c/d"), vec![4]);
    assert_eq!(t.len(), 5);
}

#[test]
fn dollar_topics_skip_root_wildcards() {
    let mut t = SubscriptionTrie::default();
    t.subscribe(&sub(1), "#", None, qos1());
    t.subscribe(&sub(2), "+/broker/uptime", None, qos1());
    t.subscribe(&sub(3), "$SYS/#", None, qos1());
    t.subscribe(&sub(4), "$SYS/+/uptime", None, qos1());
    assert_eq!(ids(&t, "$SYS/broker/uptime"), vec![3, 4]);
}

#[test]
fn resubscribe_replaces_and_unsubscribe_prunes() {
    let mut t = SubscriptionTrie::default();
    assert!(t.subscribe(&sub(1), "a/+/c", None, qos1()));
    assert!(!t.subscribe(&sub(1), "a/+/c", None, Subscription::default()));
    assert_eq!(t.len(), 1);
    assert!(t.unsubscribe(1, "a/+/c", None));
    assert!(!t.unsubscribe(1, "a/+/c", None));
    assert!(t.is_empty());
    assert!(t.root.is_empty(), "empty nodes are pruned");
}

#[test]
fn shared_group_delivers_each_message_once_round_robin() {
    let mut t = SubscriptionTrie::default();
    for id in 1..=3 {
        t.subscribe(&sub(id), "s/+", Some("g"), qos1());
    }
    t.subscribe(&sub(9), "s/+", Some("other"), qos1());
    let mut seen = Vec::new();
    for _ in 0..6 {
        let got = ids(&t, "s/x");
        assert_eq!(got.len(), 2, "one member per group");
        assert!(got.contains(&9));
        seen.extend(got.into_iter().filter(|&i| i != 9));
    }
    seen.sort_unstable();
    assert_eq!(seen, vec![1, 1, 2, 2, 3, 3]);
}

#[test]
fn shared_group_prefers_online_members() {
    let mut t = SubscriptionTrie::default();
    let offline = Sub(1, Arc::new(AtomicBool::new(false)));
    t.subscribe(&offline, "s", Some("g"), qos1());
    t.subscribe(&sub(2), "s", Some("g"), qos1());
    for _ in 0..5 {
        assert_eq!(ids(&t, "s"), vec![2]);
    }
    assert!(t.unsubscribe(2, "s", Some("g")));
    assert_eq!(
        ids(&t, "s"),
        vec![1],
        "an offline member still gets it when it is the only one"
    );
    assert!(t.unsubscribe(1, "s", Some("g")));
    assert!(ids(&t, "s").is_empty());
}

fn level() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("".to_string()),
        Just("$x".to_string())
    ]
}

fn topic_strategy() -> impl Strategy<Value = String> {
    prop::collection::vec(level(), 1..5).prop_map(|v| v.join("/"))
}

fn filter_strategy() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop_oneof![level(), Just("+".to_string())], 1..5),
        any::<bool>(),
    )
        .prop_map(|(v, hash)| {
            let mut f = v.join("/");
            if hash {
                f.push_str("/#");
            }
            f
        })
}

proptest! {
    #[test]
    fn trie_agrees_with_the_reference_matcher(
        filters in prop::collection::vec(filter_strategy(), 1..20),
        topics in prop::collection::vec(topic_strategy(), 1..20),
    ) {
        let mut t = SubscriptionTrie::default();
        for (i, f) in filters.iter().enumerate() {
            t.subscribe(&sub(i as u64), f, None, qos1());
        }
        for topic in &topics {
            let expected: Vec<u64> = filters.iter().enumerate()
                .filter(|(_, f)| topic::matches(f, topic)).map(|(i, _)| i as u64).collect();
            prop_assert_eq!(ids(&t, topic), expected, "topic {}", topic);
        }
        for (i, f) in filters.iter().enumerate() {
            t.unsubscribe(i as u64, f, None);
        }
        prop_assert!(t.root.is_empty());
    }
}

#[test]
fn retain_visits_every_filter_and_removes_what_it_rejects() {
    let mut trie = SubscriptionTrie::default();
    let filters = ["a/b", "a/+", "#", "/a", "a/#", "+/x/#", "a", "$SYS/#"];
    for (i, f) in filters.iter().enumerate() {
        trie.subscribe(&sub(i as u64 + 1), f, None, Subscription::default());
    }
    trie.subscribe(&sub(99), "a/b", Some("g"), Subscription::default());
    let mut seen = Vec::new();
    trie.retain(|h, filter, group, sub| {
        seen.push((filter.to_string(), group.map(str::to_string)));
        sub.acl_check = true;
        !(filter.starts_with("a/") && h.0 != 99)
    });
    seen.sort();
    let mut expected: Vec<_> = filters.iter().map(|f| (f.to_string(), None)).collect();
    expected.push(("a/b".into(), Some("g".into())));
    expected.sort();
    assert_eq!(seen, expected);
    assert_eq!(trie.len(), filters.len() + 1 - 3);
    let mut out = Matches::new();
    trie.collect("a/b", &mut out);
    // `#` and the shared member remain; `a/b`, `a/+`, `a/#` are gone.
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|m| m.sub.acl_check));
}
