//! Oracles shared by the fuzz targets.
//!
//! - Parsing never panics.
//! - A parsed password file renders to text that parses to the same users and renders the
//!   same again; checking a password never panics (only for files of cheap `$6$` hashes: the
//!   others are deliberately slow).
//! - With a parsed ACL file, no check panics; subscribing to a filter without wildcards is
//!   allowed exactly when reading that topic is; a subscription allowed without per-message
//!   checks only matches readable topics (among those tried).
//! - A parsed PSK file names each identity on the line it says, with the key that line spells.

use rookery_auth::acl::{Acl, Subject, SubscribeDecision, matches};
use rookery_auth::password::{PasswordFile, Verify};
use rookery_auth::psk::{MAX_KEY_LEN, PskFile};

/// See the crate documentation.
pub fn check_password_file(text: &str) {
    let Ok(file) = PasswordFile::parse(text) else {
        return;
    };
    let rendered = file.render();
    let again = PasswordFile::parse(&rendered).expect("rendered file parses");
    assert_eq!(again.render(), rendered, "render is not stable");
    assert!(file.usernames().eq(again.usernames()), "users changed");
    assert_eq!(file.len(), again.len());
    for user in file.usernames() {
        assert!(file.contains(user));
    }
    // With no users the dummy is Argon2id: slow, so leave empty files out too.
    if !file.is_empty() && !text.contains("$7$") && !text.contains("argon2") {
        for user in file.usernames().take(4) {
            let verdict = file.verify(user, user.as_bytes());
            assert_ne!(verdict, Verify::UnknownUser);
        }
        assert_eq!(file.verify("\u{0}no such user", b"x"), Verify::UnknownUser);
    }
}

/// See the crate documentation.
pub fn check_acl_file(text: &str) {
    let Ok(acl) = Acl::parse(text) else { return };
    let users: Vec<&str> = acl.users().take(3).collect();
    let mut subjects = vec![
        Subject {
            username: None,
            client_id: "client",
        },
        Subject {
            username: Some("nobody"),
            client_id: "c/+#",
        },
        Subject {
            username: Some("$SYS"),
            client_id: "",
        },
    ];
    for user in &users {
        subjects.push(Subject {
            username: Some(user),
            client_id: user,
        });
    }
    // Topics and filters: fixed ones, plus the words of the input's last line.
    let mut probes = vec![
        "a",
        "a/b",
        "$SYS/broker/uptime",
        "/",
        "sensors/x/temp",
        "#",
        "+/+",
    ];
    if let Some(last) = text.lines().last() {
        probes.extend(last.split_whitespace().take(6));
    }
    for who in &subjects {
        for probe in &probes {
            let _ = acl.can_publish(who, probe);
            let readable = acl.can_read(who, probe);
            let decision = acl.check_subscribe(who, probe);
            let wildcard = probe.contains(['+', '#']);
            if !wildcard && !probe.is_empty() && !probe.contains('\0') {
                let allowed = decision
                    == SubscribeDecision::Allowed {
                        check_each_message: false,
                    };
                assert_eq!(allowed, readable, "{who:?} {probe:?}");
            }
            if decision
                == (SubscribeDecision::Allowed {
                    check_each_message: false,
                })
            {
                for topic in &probes {
                    if !topic.contains(['+', '#']) && !topic.is_empty() && matches(probe, topic) {
                        assert!(acl.can_read(who, topic), "{who:?} {probe:?} {topic:?}");
                    }
                }
            }
        }
    }
}

/// See the crate documentation.
pub fn check_psk_file(text: &str) {
    let Ok(file) = PskFile::parse(text) else {
        return;
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut count = 0;
    for (identity, line) in file.identities() {
        count += 1;
        let key = file.key(identity).expect("a listed identity has a key");
        assert!(!key.is_empty() && key.len() <= MAX_KEY_LEN);
        let l = lines[line - 1].trim_end_matches('\r');
        let (id, hex) = l.split_once(':').expect("the line has a colon");
        assert_eq!(id, identity);
        let spelled: String = key.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(spelled, hex.trim_end().to_ascii_lowercase());
    }
    assert_eq!(count, file.len());
}
