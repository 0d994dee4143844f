use super::*;

const SEC: Duration = Duration::from_secs(1);

fn tracker(max_events: u32, window_s: u64, ban_s: u64, max_keys: usize) -> Tracker {
    Tracker::new(TrackerConfig {
        max_events,
        window: Duration::from_secs(window_s),
        ban: Duration::from_secs(ban_s),
        max_keys,
    })
}

#[test]
fn defaults_are_emqx_flapping_detection() {
    let c = TrackerConfig::default();
    assert_eq!((c.max_events, c.window, c.ban), (15, 60 * SEC, 300 * SEC));
    assert!(Tracker::default().is_empty());
}

#[test]
fn the_event_after_max_events_in_the_window_bans() {
    let t0 = Instant::now();
    let mut t = tracker(3, 10, 100, 100);
    assert_eq!(t.record("k", t0), None);
    assert_eq!(t.record("k", t0 + SEC), None);
    assert_eq!(t.record("k", t0 + 2 * SEC), None);
    assert_eq!(t.banned_until("k", t0 + 2 * SEC), None);
    let until = t0 + 3 * SEC + 100 * SEC;
    assert_eq!(t.record("k", t0 + 3 * SEC), Some(until));
    assert_eq!(t.banned_until("k", t0 + 3 * SEC), Some(until));
    assert_eq!(t.banned_until("k", until - SEC), Some(until));
    assert_eq!(t.banned_until("k", until), None);
    assert_eq!(t.banned_until("other", t0), None);
}

#[test]
fn the_window_slides() {
    let t0 = Instant::now();
    let mut t = tracker(2, 10, 100, 100);
    assert_eq!(t.record("k", t0), None);
    assert_eq!(t.record("k", t0 + 9 * SEC), None);
    // The first event is exactly one window old: it no longer counts.
    assert_eq!(t.record("k", t0 + 10 * SEC), None);
    // Events at 9 and 10 still count: a third one within the window bans.
    assert!(t.record("k", t0 + 18 * SEC).is_some());
}

#[test]
fn spread_out_events_never_ban() {
    let t0 = Instant::now();
    let mut t = tracker(2, 10, 100, 100);
    for i in 0..100 {
        assert_eq!(t.record("k", t0 + i * 5 * SEC), None, "event {i}");
    }
}

#[test]
fn events_during_a_ban_neither_count_nor_extend_it() {
    let t0 = Instant::now();
    let mut t = tracker(1, 10, 100, 100);
    assert_eq!(t.record("k", t0), None);
    let until = t.record("k", t0 + SEC).expect("banned");
    assert_eq!(t.record("k", t0 + 50 * SEC), Some(until));
    // After the ban the count starts afresh.
    assert_eq!(t.record("k", until), None);
    assert!(t.record("k", until + SEC).is_some());
}

#[test]
fn zero_max_events_bans_on_the_first_event() {
    let t0 = Instant::now();
    let mut t = tracker(0, 10, 100, 100);
    assert_eq!(t.record("k", t0), Some(t0 + 100 * SEC));
}

#[test]
fn keys_are_independent() {
    let t0 = Instant::now();
    let mut t = tracker(1, 10, 100, 100);
    assert_eq!(t.record("a", t0), None);
    assert_eq!(t.record("b", t0), None);
    assert!(t.record("a", t0).is_some());
    assert_eq!(t.banned_until("b", t0), None);
}

#[test]
fn clear_and_clear_all_forget() {
    let t0 = Instant::now();
    let mut t = tracker(0, 10, 100, 100);
    t.record("a", t0);
    t.record("b", t0);
    assert!(t.clear("a"));
    assert!(!t.clear("a"));
    assert_eq!(t.banned_until("a", t0), None);
    assert!(t.banned_until("b", t0).is_some());
    t.clear_all();
    assert!(t.is_empty());
    assert!(t.bans(t0).is_empty());
}

#[test]
fn bans_lists_active_bans_soonest_first() {
    let t0 = Instant::now();
    let mut t = tracker(0, 10, 100, 100);
    t.record("late", t0 + 5 * SEC);
    t.record("early", t0);
    t.record("same", t0);
    let bans = t.bans(t0 + 5 * SEC);
    let expect = [
        ("early".to_owned(), t0 + 100 * SEC),
        ("same".to_owned(), t0 + 100 * SEC),
        ("late".to_owned(), t0 + 105 * SEC),
    ];
    assert_eq!(bans, expect);
    assert_eq!(
        t.bans(t0 + 100 * SEC),
        [("late".to_owned(), t0 + 105 * SEC)]
    );
}

#[test]
fn prune_drops_expired_windows_and_bans() {
    let t0 = Instant::now();
    let mut t = tracker(1, 10, 100, 100);
    t.record("counting", t0);
    t.record("banned", t0);
    t.record("banned", t0);
    t.prune(t0 + 10 * SEC);
    assert_eq!(t.len(), 1);
    assert!(t.banned_until("banned", t0 + 10 * SEC).is_some());
    t.prune(t0 + 100 * SEC);
    assert!(t.is_empty());
}

#[test]
fn memory_stays_within_max_keys() {
    let t0 = Instant::now();
    let mut t = tracker(5, 60, 300, 64);
    for i in 0..10_000u32 {
        t.record(
            &format!("attacker-{i}"),
            t0 + Duration::from_millis(u64::from(i)),
        );
        assert!(t.len() <= 64);
    }
}

#[test]
fn the_least_recently_seen_keys_are_evicted_first() {
    let t0 = Instant::now();
    let mut t = tracker(5, 1000, 1000, 16);
    for i in 0..16u32 {
        t.record(&format!("k{i}"), t0 + i * SEC);
    }
    // k0 is seen again: now k1 is the least recently seen.
    t.record("k0", t0 + 20 * SEC);
    t.record("new", t0 + 21 * SEC);
    assert_eq!(t.len(), 16);
    assert!(!t.entries.contains_key("k1"));
    assert!(t.entries.contains_key("k0"));
    assert!(t.entries.contains_key("new"));
}

#[test]
fn active_bans_are_evicted_last() {
    let t0 = Instant::now();
    let mut t = tracker(0, 10, 10_000, 32);
    // Ban eight keys first: they are the oldest entries.
    for i in 0..8 {
        assert!(t.record(&format!("banned-{i}"), t0).is_some());
    }
    // Then a flood of fresh keys that stay unbanned.
    t.config.max_events = 100;
    for i in 0..1000u64 {
        t.record(&format!("flood-{i}"), t0 + Duration::from_millis(i + 1));
    }
    for i in 0..8 {
        assert!(
            t.banned_until(&format!("banned-{i}"), t0 + SEC).is_some(),
            "banned-{i}"
        );
    }
    assert!(t.len() <= 32);
}

#[test]
fn when_every_key_is_banned_the_soonest_ending_ban_goes() {
    let t0 = Instant::now();
    let mut t = tracker(0, 10, 1000, 16);
    for i in 0..16u32 {
        t.record(&format!("k{i}"), t0 + i * SEC);
    }
    t.record("new", t0 + 20 * SEC);
    assert!(t.len() <= 16);
    assert!(t.banned_until("k0", t0 + 20 * SEC).is_none());
    assert!(t.banned_until("k15", t0 + 20 * SEC).is_some());
    assert!(t.banned_until("new", t0 + 20 * SEC).is_some());
}

#[test]
fn expired_entries_make_room_before_live_ones_are_evicted() {
    let t0 = Instant::now();
    let mut t = tracker(5, 10, 10, 4);
    t.record("old", t0);
    t.record("a", t0 + 100 * SEC);
    t.record("b", t0 + 100 * SEC);
    t.record("c", t0 + 100 * SEC);
    t.record("d", t0 + 101 * SEC);
    for key in ["a", "b", "c", "d"] {
        assert!(t.entries.contains_key(key), "{key}");
    }
}

#[test]
fn max_keys_zero_is_one() {
    let t0 = Instant::now();
    let mut t = tracker(0, 10, 10, 0);
    assert_eq!(t.config().max_keys, 1);
    assert!(t.record("a", t0).is_some());
    assert!(t.record("b", t0).is_some());
    assert_eq!(t.len(), 1);
}

#[test]
fn huge_durations_do_not_panic() {
    let t0 = Instant::now();
    let mut t = Tracker::new(TrackerConfig {
        max_events: 1,
        window: Duration::MAX,
        ban: Duration::MAX,
        max_keys: 10,
    });
    t.record("k", t0);
    let until = t.record("k", t0).expect("banned");
    assert!(until > t0);
    t.prune(t0);
    assert_eq!(t.len(), 1);
}

#[test]
fn events_never_exceed_max_events_per_key() {
    let t0 = Instant::now();
    let mut t = tracker(4, 1000, 1, 10);
    for i in 0..100u32 {
        t.record("k", t0 + i * 2 * SEC);
        assert!(t.entries.get("k").is_none_or(|e| e.events.len() <= 4));
    }
}
