//! The filter relations against a brute-force reference: enumerate every topic over a small
//! alphabet and compare match sets.

use super::*;
use proptest::prelude::*;

/// Reference matcher, written independently of `covers_levels`: recursion on slices.
fn reference_matches(filter: &[&str], topic: &[&str]) -> bool {
    fn go(filter: &[&str], topic: &[&str]) -> bool {
        match (filter.split_first(), topic.split_first()) {
            (None, None) => true,
            (Some((&"#", _)), _) => true,
            (Some((&"+", f)), Some((_, t))) => go(f, t),
            (Some((l, f)), Some((m, t))) => l == m && go(f, t),
            _ => false,
        }
    }
    if topic.first().is_some_and(|l| l.starts_with('$'))
        && filter.first().is_some_and(|l| *l == "+" || *l == "#")
    {
        return false;
    }
    go(filter, topic)
}

/// Every topic of 1..=`max_levels` levels over `alphabet`. This includes the empty topic (one
/// empty level), which MQTT forbids as a name but the relations treat like any other.
fn topics(alphabet: &[&'static str], max_levels: usize) -> Vec<Vec<&'static str>> {
    let mut all: Vec<Vec<&str>> = vec![vec![]];
    let mut out = Vec::new();
    for _ in 0..max_levels {
        all = all
            .iter()
            .flat_map(|prefix| {
                alphabet.iter().map(move |l| {
                    let mut t = prefix.clone();
                    t.push(*l);
                    t
                })
            })
            .collect();
        out.extend(all.iter().cloned());
    }
    out
}

/// Every valid filter of 1..=`max_levels` levels over `literals` plus `+` and `#`.
fn filters(literals: &[&'static str], max_levels: usize) -> Vec<String> {
    let mut symbols = literals.to_vec();
    symbols.push("+");
    symbols.push("#");
    topics(&symbols, max_levels)
        .into_iter()
        .map(|levels| levels.join("/"))
        .filter(|f| is_valid_filter(f))
        .collect()
}

struct Universe {
    topics: Vec<Vec<&'static str>>,
}

impl Universe {
    fn match_set(&self, filter: &str) -> Vec<bool> {
        let f: Vec<&str> = filter.split('/').collect();
        self.topics
            .iter()
            .map(|t| reference_matches(&f, t))
            .collect()
    }
}

#[test]
fn reference_agrees_on_the_classic_examples() {
    let m = |f: &str, t: &str| {
        reference_matches(
            &f.split('/').collect::<Vec<_>>(),
            &t.split('/').collect::<Vec<_>>(),
        )
    };
    assert!(m("sensors/#", "sensors"));
    assert!(m("+/+", "/finance"));
    assert!(!m("#", "$SYS/x"));
    assert!(m("$SYS/#", "$SYS/x"));
    assert!(!m("+/x", "$SYS/x"));
}

#[test]
fn examples_from_the_spec() {
    assert!(covers("sensors/#", "sensors/+/temp"));
    assert!(covers("sensors/#", "sensors/#"));
    assert!(covers("sensors/#", "sensors"));
    assert!(!covers("sensors/+", "sensors/#"));
    assert!(!covers("#", "$SYS/#"));
    assert!(covers("#", "+/#"));
    // A first-level `#` needs at least one level, so `+/#` matches just as much.
    assert!(covers("+/#", "#"));
    assert!(!covers("a/+/#", "a/#"));
    assert!(covers("$SYS/#", "$SYS/broker/+"));
    assert!(intersects("sensors/+/temp", "sensors/kitchen/#"));
    assert!(!intersects("#", "$SYS/#"));
    assert!(!intersects("a/b", "a/c"));
    assert!(matches("sensors/#", "sensors"));
    assert!(!matches("+/#", "$SYS/broker/uptime"));
    assert!(matches("$SYS/+/uptime", "$SYS/broker/uptime"));
}

#[test]
fn filter_validation() {
    for ok in [
        "#", "+", "a", "/", "a//b", "+/+/#", "$SYS/#", "a b/ c", "%c/%u", "ü/🦀",
    ] {
        assert!(is_valid_filter(ok), "{ok}");
    }
    let long = "a".repeat(65_536);
    for bad in [
        "",
        "a#",
        "#/a",
        "a/#/b",
        "a+",
        "+a/b",
        "a/b+",
        "##",
        "a\0b",
        long.as_str(),
    ] {
        assert!(!is_valid_filter(bad), "{bad}");
    }
}

/// Every pair of filters of up to three levels, against every topic of up to five levels.
#[test]
fn covers_and_intersects_match_brute_force_exhaustively() {
    let universe = Universe {
        topics: topics(&["a", "b", "$a", "", "c"], 5),
    };
    let filters = filters(&["a", "b", "$a", ""], 3);
    let sets: Vec<Vec<bool>> = filters.iter().map(|f| universe.match_set(f)).collect();
    for (f, set) in filters.iter().zip(&sets) {
        for (t, &m) in universe.topics.iter().zip(set) {
            assert_eq!(matches(f, &t.join("/")), m, "matches({f:?}, {t:?})");
        }
    }
    for (r, rs) in filters.iter().zip(&sets) {
        for (s, ss) in filters.iter().zip(&sets) {
            let expect_covers = ss.iter().zip(rs).all(|(&s, &r)| !s || r);
            let expect_intersects = ss.iter().zip(rs).any(|(&s, &r)| s && r);
            assert_eq!(covers(r, s), expect_covers, "covers({r:?}, {s:?})");
            assert_eq!(
                intersects(r, s),
                expect_intersects,
                "intersects({r:?}, {s:?})"
            );
        }
    }
}

fn arb_filter() -> impl Strategy<Value = String> {
    let level = prop_oneof![
        Just("x"),
        Just("y"),
        Just("$x"),
        Just(""),
        Just("+"),
        Just("#"),
    ];
    proptest::collection::vec(level, 1..=4)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("valid filter", |f| is_valid_filter(f))
}

proptest! {
    /// Longer filters than the exhaustive test, against topics of up to six levels.
    #[test]
    fn covers_and_intersects_match_brute_force(a in arb_filter(), b in arb_filter()) {
        let universe = Universe { topics: topics(&["x", "y", "$x", "", "z"], 6) };
        let (sa, sb) = (universe.match_set(&a), universe.match_set(&b));
        let expect_covers = sb.iter().zip(&sa).all(|(&b, &a)| !b || a);
        let expect_intersects = sb.iter().zip(&sa).any(|(&b, &a)| b && a);
        prop_assert_eq!(covers(&a, &b), expect_covers, "covers({:?}, {:?})", a, b);
        prop_assert_eq!(intersects(&a, &b), expect_intersects, "intersects({:?}, {:?})", a, b);
        prop_assert_eq!(intersects(&a, &b), intersects(&b, &a));
    }

    #[test]
    fn a_filter_covers_itself_and_everything_it_matches(f in arb_filter()) {
        prop_assert!(covers(&f, &f));
        prop_assert!(intersects(&f, &f));
        for t in topics(&["x", "$x", ""], 4) {
            let topic = t.join("/");
            prop_assert_eq!(covers(&f, &topic), matches(&f, &topic));
        }
    }
}

/// `Any` (only from rules) against the reference: a level that matches everything, `$` too.
#[test]
fn any_level_matches_dollar_levels_too() {
    let rule = [Level::Any, Level::Lit("b")];
    assert!(covers_levels(rule.into_iter(), levels("$SYS/b")));
    assert!(covers_levels(rule.into_iter(), levels("+/b")));
    assert!(!covers_levels(rule.into_iter(), levels("#")));
    assert!(intersects_levels(rule.into_iter(), levels("$SYS/#")));
    assert!(intersects_levels(rule.into_iter(), levels("#")));
    assert!(!covers_levels(levels("#"), [Level::Any].into_iter()));
    assert!(!covers_levels(levels("+"), [Level::Any].into_iter()));
    assert!(covers_levels(
        levels("a/+"),
        [Level::Lit("a"), Level::Any].into_iter()
    ));
}
