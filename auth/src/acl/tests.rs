use super::*;
use proptest::prelude::*;

fn acl(text: &str) -> Acl {
    Acl::parse(text).expect("parse")
}

fn user<'a>(username: &'a str, client_id: &'a str) -> Subject<'a> {
    Subject {
        username: Some(username),
        client_id,
    }
}

fn anon(client_id: &str) -> Subject<'_> {
    Subject {
        username: None,
        client_id,
    }
}

const ALLOWED: SubscribeDecision = SubscribeDecision::Allowed {
    check_each_message: false,
};
const PER_MESSAGE: SubscribeDecision = SubscribeDecision::Allowed {
    check_each_message: true,
};
const DENIED: SubscribeDecision = SubscribeDecision::Denied;

#[test]
fn field_example_sensor_device() {
    let acl = acl("user sensor_device\n\
                   topic readwrite sensors/#\n\
                   topic read commands/device_123\n");
    let dev = user("sensor_device", "device_123");

    assert!(acl.can_publish(&dev, "sensors/temp"));
    assert!(acl.can_publish(&dev, "sensors/kitchen/temp"));
    assert!(acl.can_publish(&dev, "sensors"));
    assert!(acl.can_read(&dev, "sensors/kitchen/temp"));
    assert_eq!(acl.check_subscribe(&dev, "sensors/#"), ALLOWED);
    assert_eq!(acl.check_subscribe(&dev, "sensors/+/temp"), ALLOWED);

    assert!(acl.can_read(&dev, "commands/device_123"));
    assert_eq!(acl.check_subscribe(&dev, "commands/device_123"), ALLOWED);
    assert!(!acl.can_publish(&dev, "commands/device_123"));

    assert!(!acl.can_read(&dev, "commands/device_456"));
    assert!(!acl.can_publish(&dev, "other"));
    for filter in [
        "#",
        "commands/#",
        "commands/+",
        "+/device_123",
        "+/#",
        "$SYS/#",
    ] {
        assert_eq!(acl.check_subscribe(&dev, filter), DENIED, "{filter}");
    }

    for other in [
        user("someone_else", "device_123"),
        anon("device_123"),
        anon("x"),
    ] {
        assert!(!acl.can_publish(&other, "sensors/temp"));
        assert!(!acl.can_read(&other, "sensors/temp"));
        assert!(!acl.can_read(&other, "commands/device_123"));
        assert_eq!(acl.check_subscribe(&other, "sensors/#"), DENIED);
        assert_eq!(acl.check_subscribe(&other, "#"), DENIED);
    }
    assert_eq!(acl.users().collect::<Vec<_>>(), ["sensor_device"]);
}

#[test]
fn rules_before_the_first_user_apply_to_everyone() {
    let acl = acl("topic read public/#\nuser alice\ntopic write alice/#\n");
    for who in [anon("c"), user("alice", "c"), user("bob", "c")] {
        assert!(acl.can_read(&who, "public/news"), "{who:?}");
        assert!(!acl.can_publish(&who, "public/news"), "{who:?}");
    }
    assert!(acl.can_publish(&user("alice", "c"), "alice/x"));
    assert!(!acl.can_publish(&user("bob", "c"), "alice/x"));
    assert!(!acl.can_publish(&anon("c"), "alice/x"));
}

#[test]
fn access_defaults_to_readwrite() {
    let acl = acl("topic a/b\n");
    assert!(acl.can_read(&anon("c"), "a/b"));
    assert!(acl.can_publish(&anon("c"), "a/b"));
}

#[test]
fn write_only_rule_does_not_allow_reading() {
    let acl = acl("topic write up/#\n");
    assert!(acl.can_publish(&anon("c"), "up/x"));
    assert!(!acl.can_read(&anon("c"), "up/x"));
    assert_eq!(acl.check_subscribe(&anon("c"), "up/#"), DENIED);
}

#[test]
fn deny_wins_over_any_allow() {
    let acl = acl("topic readwrite #\n\
                   topic deny secret/#\n\
                   pattern deny private/%c/#\n\
                   user alice\n\
                   topic readwrite secret/alice\n");
    let alice = user("alice", "phone");
    assert!(acl.can_read(&alice, "public"));
    assert!(!acl.can_read(&alice, "secret/alice"));
    assert!(!acl.can_publish(&alice, "secret/alice"));
    assert!(!acl.can_read(&alice, "private/phone/x"));
    assert!(acl.can_read(&alice, "private/other/x"));
}

#[test]
fn user_deny_rules_apply_to_that_user_only() {
    let acl = acl("topic read #\nuser bob\ntopic deny news/#\n");
    assert!(!acl.can_read(&user("bob", "c"), "news/a"));
    assert!(acl.can_read(&user("alice", "c"), "news/a"));
    assert!(acl.can_read(&anon("c"), "news/a"));
}

#[test]
fn dollar_topics_need_a_dollar_rule() {
    let acl = acl("topic read #\ntopic read +/broker/#\nuser admin\ntopic read $SYS/#\n");
    let someone = user("someone", "c");
    assert!(!acl.can_read(&someone, "$SYS/broker/uptime"));
    assert_eq!(acl.check_subscribe(&someone, "$SYS/#"), DENIED);
    assert_eq!(acl.check_subscribe(&someone, "#"), ALLOWED);
    let admin = user("admin", "c");
    assert!(acl.can_read(&admin, "$SYS/broker/uptime"));
    assert_eq!(acl.check_subscribe(&admin, "$SYS/broker/+"), ALLOWED);
}

#[test]
fn patterns_substitute_client_id_and_username() {
    let acl = acl("user alice\n\
                   pattern readwrite devices/%c/#\n\
                   pattern read users/%u/inbox\n\
                   pattern write out/%u/%c\n");
    let alice = user("alice", "phone");
    assert!(acl.can_publish(&alice, "devices/phone/status"));
    assert!(!acl.can_publish(&alice, "devices/laptop/status"));
    assert!(acl.can_read(&alice, "users/alice/inbox"));
    assert!(!acl.can_read(&alice, "users/bob/inbox"));
    assert!(acl.can_publish(&alice, "out/alice/phone"));
    assert!(!acl.can_publish(&alice, "out/phone/alice"));
    assert_eq!(acl.check_subscribe(&alice, "devices/phone/#"), ALLOWED);
    assert_eq!(acl.check_subscribe(&alice, "devices/+/#"), DENIED);

    // Patterns apply to everyone, wherever they are in the file.
    let bob = user("bob", "tablet");
    assert!(acl.can_publish(&bob, "devices/tablet/x"));
    assert!(acl.can_read(&bob, "users/bob/inbox"));

    // `%u` allow patterns do not apply to anonymous clients; `%c` ones do.
    let guest = anon("kiosk");
    assert!(acl.can_publish(&guest, "devices/kiosk/x"));
    assert!(!acl.can_read(&guest, "users//inbox"));
    assert!(!acl.can_read(&guest, "users/%u/inbox"));
    assert!(!acl.can_publish(&guest, "out/%u/kiosk"));
}

#[test]
fn only_whole_levels_are_substituted_and_topic_rules_never() {
    let acl = acl("pattern read dev-%c/x\ntopic read t/%c\n");
    let who = anon("a");
    assert!(!acl.can_read(&who, "dev-a/x"));
    assert!(acl.can_read(&who, "dev-%c/x"));
    assert!(!acl.can_read(&who, "t/a"));
    assert!(acl.can_read(&who, "t/%c"));
}

#[test]
fn unsafe_substitutions_never_widen_an_allow() {
    let acl = acl("pattern readwrite devices/%c/#\npattern read %u/#\n");
    for client_id in ["#", "+", "a/b", "", "x+y"] {
        let who = anon(client_id);
        for topic in [
            "devices/a/b",
            "devices/x",
            "devices/#",
            "devices/+/b",
            "devices/a/b/c",
        ] {
            assert!(!acl.can_read(&who, topic), "{client_id:?} {topic}");
            assert!(!acl.can_publish(&who, topic), "{client_id:?} {topic}");
        }
        assert_eq!(
            acl.check_subscribe(&who, "devices/#"),
            DENIED,
            "{client_id:?}"
        );
    }
    for username in ["#", "+", "a/b", "", "$SYS"] {
        let who = user(username, "c");
        assert!(!acl.can_read(&who, "$SYS/broker/uptime"), "{username:?}");
        assert!(!acl.can_read(&who, "a/b/c"), "{username:?}");
        assert_eq!(acl.check_subscribe(&who, "$SYS/#"), DENIED, "{username:?}");
    }
    // A `$` value is fine below the first level.
    assert!(acl.can_read(&anon("$dev"), "devices/$dev/x"));
}

#[test]
fn unsafe_substitutions_make_deny_patterns_match_everything() {
    let acl = acl("topic readwrite #\npattern deny private/%c/#\n");
    assert!(acl.can_read(&anon("safe"), "public"));
    assert!(!acl.can_read(&anon("safe"), "private/safe/x"));
    for client_id in ["#", "+", "a/b", ""] {
        let who = anon(client_id);
        assert!(!acl.can_read(&who, "public"), "{client_id:?}");
        assert!(!acl.can_publish(&who, "private/other"), "{client_id:?}");
        assert_eq!(acl.check_subscribe(&who, "public"), DENIED, "{client_id:?}");
    }
}

#[test]
fn username_deny_patterns_bind_anonymous_clients_as_a_wildcard() {
    let acl = acl("topic readwrite #\ntopic readwrite $SYS/#\npattern deny %u/private/#\n");
    let guest = anon("c");
    assert!(!acl.can_read(&guest, "alice/private/x"));
    assert!(!acl.can_read(&guest, "$SYS/private/x"));
    assert!(acl.can_read(&guest, "alice/public/x"));
    assert_eq!(acl.check_subscribe(&guest, "+/private/#"), DENIED);
    assert_eq!(acl.check_subscribe(&guest, "alice/#"), PER_MESSAGE);
    assert_eq!(acl.check_subscribe(&guest, "#"), PER_MESSAGE);
    // A named user is only kept out of their own `private` tree.
    let alice = user("alice", "c");
    assert!(!acl.can_read(&alice, "alice/private/x"));
    assert!(acl.can_read(&alice, "bob/private/x"));
}

#[test]
fn subscribe_needs_one_rule_covering_the_filter() {
    let acl = acl("topic read sensors/#\ntopic read a/b\ntopic read a/c\ntopic read x/+\n");
    let who = anon("c");
    assert_eq!(acl.check_subscribe(&who, "sensors"), ALLOWED);
    assert_eq!(acl.check_subscribe(&who, "sensors/+/temp"), ALLOWED);
    assert_eq!(acl.check_subscribe(&who, "a/b"), ALLOWED);
    assert_eq!(acl.check_subscribe(&who, "a/+"), DENIED);
    assert_eq!(acl.check_subscribe(&who, "x/+"), ALLOWED);
    assert_eq!(acl.check_subscribe(&who, "x/#"), DENIED);
    assert_eq!(acl.check_subscribe(&who, "a/#/b"), DENIED);
    assert_eq!(acl.check_subscribe(&who, ""), DENIED);
}

#[test]
fn deny_intersecting_a_subscription_asks_for_per_message_checks() {
    let acl = acl("topic read sensors/#\ntopic deny sensors/secret/#\ntopic deny sensors/+/pin\n");
    let who = anon("c");
    assert_eq!(acl.check_subscribe(&who, "sensors/#"), PER_MESSAGE);
    // `sensors/secret/temp` is denied.
    assert_eq!(acl.check_subscribe(&who, "sensors/+/temp"), PER_MESSAGE);
    assert_eq!(acl.check_subscribe(&who, "sensors/kitchen/+"), PER_MESSAGE);
    assert_eq!(acl.check_subscribe(&who, "sensors/kitchen/temp"), ALLOWED);
    assert_eq!(acl.check_subscribe(&who, "sensors/kitchen/#"), PER_MESSAGE);
    assert_eq!(acl.check_subscribe(&who, "sensors/secret/x"), DENIED);
    assert_eq!(acl.check_subscribe(&who, "sensors/secret/#"), DENIED);
    assert_eq!(acl.check_subscribe(&who, "sensors/kitchen/pin"), DENIED);
    assert!(acl.can_read(&who, "sensors/kitchen/temp"));
    assert!(!acl.can_read(&who, "sensors/kitchen/pin"));
}

#[test]
fn topics_with_wildcards_are_never_allowed() {
    let acl = acl("topic readwrite #\n");
    for topic in ["a/+", "#", "a/#", ""] {
        assert!(!acl.can_publish(&anon("c"), topic), "{topic}");
        assert!(!acl.can_read(&anon("c"), topic), "{topic}");
    }
}

#[test]
fn whitespace_comments_and_spaces_in_names_and_filters() {
    let text = "# a comment\n\
                \n\
                   \t  # an indented comment\r\n\
                \tuser   John Smith  \r\n\
                topic   read    rooms/living room/#   \n\
                user\tbob\n\
                topic\tread\tb/#\n";
    let acl = acl(text);
    assert_eq!(acl.users().collect::<Vec<_>>(), ["John Smith", "bob"]);
    let john = user("John Smith", "c");
    assert!(acl.can_read(&john, "rooms/living room/lamp"));
    assert!(!acl.can_read(&john, "rooms/living/lamp"));
    assert!(acl.can_read(&user("bob", "c"), "b/x"));
}

#[test]
fn repeated_user_sections_add_up_and_list_once() {
    let acl = acl("user a\ntopic read x\nuser b\ntopic read y\nuser a\ntopic read z\n");
    assert_eq!(acl.users().collect::<Vec<_>>(), ["a", "b"]);
    let a = user("a", "c");
    assert!(acl.can_read(&a, "x") && acl.can_read(&a, "z") && !acl.can_read(&a, "y"));
}

#[test]
fn user_with_no_rules_is_listed_and_gets_only_global_rules() {
    let acl = acl("topic read g\nuser empty\n");
    assert_eq!(acl.users().collect::<Vec<_>>(), ["empty"]);
    assert!(acl.can_read(&user("empty", "c"), "g"));
}

#[test]
fn an_empty_acl_allows_nothing() {
    let acl = acl("# nothing\n");
    assert!(!acl.can_read(&anon("c"), "a"));
    assert_eq!(acl.check_subscribe(&anon("c"), "a"), DENIED);
    assert_eq!(acl.users().count(), 0);
}

#[test]
fn parse_errors_name_the_line() {
    let cases: &[(&str, usize, &str)] = &[
        (
            "topic read a\nfrobnicate x\n",
            2,
            "unknown keyword `frobnicate`",
        ),
        ("users alice\n", 1, "unknown keyword `users`"),
        ("\n\nuser\n", 3, "`user` with no username"),
        ("user   \n", 1, "`user` with no username"),
        ("topic\n", 1, "`topic` with no topic filter"),
        ("pattern  \n", 1, "`pattern` with no topic filter"),
        ("topic read\n", 1, "`topic read` with no topic filter"),
        ("topic deny \n", 1, "`topic deny` with no topic filter"),
        ("topic dney secret/#\n", 1, "`dney` is not an access type"),
        ("topic a/#/b\n", 1, "invalid topic filter: '#' must be"),
        ("topic read a/b#\n", 1, "invalid topic filter: '#' must be"),
        (
            "pattern write a+/b\n",
            1,
            "invalid topic filter: '+' must be",
        ),
        ("topic read a/+b\n", 1, "invalid topic filter: '+' must be"),
    ];
    for (text, line, expected) in cases {
        let e = Acl::parse(text).expect_err(text);
        assert_eq!(e.line, *line, "{text:?}");
        assert!(e.message.starts_with(expected), "{text:?}: {}", e.message);
        assert_eq!(e.to_string(), format!("line {line}: {}", e.message));
    }
}

#[test]
fn filters_with_spaces_need_an_explicit_access_type() {
    assert!(Acl::parse("topic a b\n").is_err());
    let acl = acl("topic readwrite a b\n");
    assert!(acl.can_read(&anon("c"), "a b"));
    // A lone word that is not an access type is the filter.
    assert!(
        Acl::parse("topic reading\n")
            .expect("parse")
            .can_read(&anon("c"), "reading")
    );
}

#[test]
fn long_unknown_keywords_are_cut_in_messages() {
    let e = Acl::parse(&"x".repeat(500)).expect_err("unknown");
    assert!(e.message.len() < 120, "{}", e.message);
}

// Property tests over small random ACLs and subjects.

fn arb_filter() -> impl Strategy<Value = String> {
    let level = prop_oneof![
        Just("a"),
        Just("b"),
        Just("$s"),
        Just("+"),
        Just("#"),
        Just("%c"),
        Just("%u"),
    ];
    proptest::collection::vec(level, 1..=3)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("valid filter", |f| is_valid_filter(f))
}

fn arb_line() -> impl Strategy<Value = String> {
    let keyword = prop_oneof![Just("topic"), Just("pattern")];
    let access = prop_oneof![Just("read"), Just("write"), Just("readwrite"), Just("deny")];
    prop_oneof![
        4 => (keyword, access, arb_filter()).prop_map(|(k, a, f)| format!("{k} {a} {f}")),
        1 => prop_oneof![Just("user u"), Just("user v")].prop_map(str::to_owned),
    ]
}

fn arb_acl() -> impl Strategy<Value = String> {
    proptest::collection::vec(arb_line(), 0..8).prop_map(|lines| lines.join("\n"))
}

fn arb_subject() -> impl Strategy<Value = (Option<&'static str>, &'static str)> {
    let username = prop_oneof![
        Just(None),
        Just(Some("u")),
        Just(Some("v")),
        Just(Some("a/#"))
    ];
    let client_id = prop_oneof![Just("a"), Just("b"), Just("+"), Just("$s"), Just("")];
    (username, client_id)
}

/// Every topic of up to four levels over the rules' alphabet plus a fresh level.
fn all_topics() -> Vec<String> {
    let alphabet = ["a", "b", "$s", "u", "z"];
    let mut current = vec![String::new()];
    let mut out = Vec::new();
    for depth in 0..4 {
        current = current
            .iter()
            .flat_map(|prefix| {
                alphabet.iter().map(move |l| {
                    if depth == 0 {
                        (*l).to_owned()
                    } else {
                        format!("{prefix}/{l}")
                    }
                })
            })
            .collect();
        out.extend(current.iter().cloned());
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A subscription allowed without per-message checks delivers only readable topics.
    #[test]
    fn allowed_subscriptions_deliver_only_readable_topics(
        text in arb_acl(),
        (username, client_id) in arb_subject(),
        filter in arb_filter().prop_filter("no substitutions", |f| !f.contains('%')),
    ) {
        let acl = Acl::parse(&text).expect("generated ACL parses");
        let who = Subject { username, client_id };
        if acl.check_subscribe(&who, &filter) == ALLOWED {
            for topic in all_topics() {
                if matches(&filter, &topic) {
                    prop_assert!(acl.can_read(&who, &topic), "{} via {}", topic, filter);
                }
            }
        }
    }

    /// For a filter without wildcards, subscribing is exactly reading.
    #[test]
    fn subscribing_to_a_topic_is_reading_it(
        text in arb_acl(),
        (username, client_id) in arb_subject(),
    ) {
        let acl = Acl::parse(&text).expect("generated ACL parses");
        let who = Subject { username, client_id };
        for topic in all_topics() {
            let decision = acl.check_subscribe(&who, &topic);
            prop_assert_ne!(decision, PER_MESSAGE);
            prop_assert_eq!(decision == ALLOWED, acl.can_read(&who, &topic), "{}", topic);
        }
    }

    /// Adding a deny rule never grants anything.
    #[test]
    fn deny_rules_only_take_away(
        text in arb_acl(),
        deny in arb_filter(),
        pattern in any::<bool>(),
        (username, client_id) in arb_subject(),
    ) {
        let before = Acl::parse(&text).expect("parses");
        let keyword = if pattern { "pattern" } else { "topic" };
        let after = Acl::parse(&format!("{text}\n{keyword} deny {deny}")).expect("parses");
        let who = Subject { username, client_id };
        for topic in all_topics() {
            prop_assert!(!after.can_read(&who, &topic) || before.can_read(&who, &topic));
            prop_assert!(!after.can_publish(&who, &topic) || before.can_publish(&who, &topic));
        }
    }

    #[test]
    fn parse_never_panics(text in "\\PC*") {
        if let Ok(acl) = Acl::parse(&text) {
            let who = Subject { username: Some("u"), client_id: "c" };
            let _ = acl.can_read(&who, "a/b");
            let _ = acl.check_subscribe(&who, "#");
        }
    }
}
