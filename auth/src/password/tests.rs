use super::*;

/// Made with the reference Argon2 command-line tool (Debian package `argon2`):
/// `echo -n "correct horse battery staple" | argon2 somesalt1234 -id -t 2 -m 12 -p 1 -e`.
const ARGON2_REFERENCE: &str = "$argon2id$v=19$m=4096,t=2,p=1$c29tZXNhbHQxMjM0$\
                                lqWNHT+T5aNMzuSZzg1RPh5kpAkGk1fM8niliGsUUVM";
/// `echo -n "pässwörd-日本語" | argon2 saltsaltsalt -id -t 1 -m 10 -p 2 -l 32 -e`.
const ARGON2_REFERENCE_2: &str = "$argon2id$v=19$m=1024,t=1,p=2$c2FsdHNhbHRzYWx0$\
                                  dax8F6YdryJzBQS5pfDKSkmCWcMZ4WHe1ncqPMBHf6Q";

/// A `$7$` hash of the password `pw` with the salt `123456789012`, computed with Python's
/// `hashlib.pbkdf2_hmac("sha512", ...)` so that the expected value does not come from our code.
const PBKDF2_PW: &str = "$7$101$MTIzNDU2Nzg5MDEy$\
    YqSHXsIyFJNpOCjlyUKpSncPXuK0dbnignolAdISLS/UGu81OPDRwRMvhcln1vutrR/dtc+bRNwa5tpLKkORfg==";

fn err(text: &str) -> PasswordFileError {
    PasswordFile::parse(text).expect_err("parse should fail")
}

#[test]
fn argon2id_reference_vectors_verify() {
    let file = PasswordFile::parse(&format!("a:{ARGON2_REFERENCE}\nb:{ARGON2_REFERENCE_2}\n"))
        .expect("parse");
    assert_eq!(
        file.verify("a", b"correct horse battery staple"),
        Verify::Ok
    );
    assert_eq!(
        file.verify("a", b"correct horse battery stapl"),
        Verify::WrongPassword
    );
    assert_eq!(file.verify("b", "pässwörd-日本語".as_bytes()), Verify::Ok);
    assert_eq!(file.verify("b", b"p"), Verify::WrongPassword);
}

#[test]
fn pbkdf2_vector_computed_elsewhere_verifies() {
    let file = PasswordFile::parse(&format!("u:{PBKDF2_PW}")).expect("parse");
    assert_eq!(file.verify("u", b"pw"), Verify::Ok);
    assert_eq!(file.verify("u", b"pW"), Verify::WrongPassword);
}

#[test]
fn unknown_user_is_reported_as_such() {
    let file = PasswordFile::parse(&format!("u:{PBKDF2_PW}")).expect("parse");
    assert_eq!(file.verify("nobody", b"pw"), Verify::UnknownUser);
    assert_eq!(
        PasswordFile::default().verify("nobody", b"pw"),
        Verify::UnknownUser
    );
}

#[test]
fn dummy_costs_what_most_users_cost() {
    let a = hash(b"x", Scheme::Pbkdf2Sha512 { iterations: 7 });
    let b = hash(b"y", Scheme::Pbkdf2Sha512 { iterations: 7 });
    let text = format!("one:{ARGON2_REFERENCE}\ntwo:{a}\nthree:{b}\n");
    let file = PasswordFile::parse(&text).expect("parse");
    assert_eq!(file.dummy.cost_key(), (7, 7, 0, 0, 0));
    // The dummy has its own salt and never matches.
    assert!(!file.dummy.verify(b"x"));

    let mut file = file;
    file.remove("two");
    file.remove("three");
    assert_eq!(file.dummy.cost_key(), (2, 4096, 2, 1, 32));
}

#[test]
fn empty_file_dummy_is_the_default_scheme() {
    let file = PasswordFile::parse("# nothing\n\n").expect("parse");
    assert!(file.is_empty());
    let params = argon2::Params::default();
    assert_eq!(
        file.dummy.cost_key(),
        (2, params.m_cost(), params.t_cost(), params.p_cost(), 32)
    );
}

#[test]
fn comments_blank_lines_and_crlf_are_skipped() {
    let text = format!("# users\r\n\r\n   \r\n  # indented comment\r\nu:{PBKDF2_PW}\r\n");
    let file = PasswordFile::parse(&text).expect("parse");
    assert_eq!(file.usernames().collect::<Vec<_>>(), ["u"]);
    assert_eq!(file.verify("u", b"pw"), Verify::Ok);
}

#[test]
fn spaces_around_username_and_hash_are_trimmed() {
    let file = PasswordFile::parse(&format!("  u  :  {PBKDF2_PW}  ")).expect("parse");
    assert!(file.contains("u"));
    assert_eq!(file.verify("u", b"pw"), Verify::Ok);
}

#[test]
fn duplicate_user_last_line_wins_in_first_position() {
    let first = hash(b"first", Scheme::Pbkdf2Sha512 { iterations: 2 });
    let second = hash(b"second", Scheme::Pbkdf2Sha512 { iterations: 2 });
    let text = format!("a:{first}\nb:{first}\na:{second}\n");
    let file = PasswordFile::parse(&text).expect("parse");
    assert_eq!(file.len(), 2);
    assert_eq!(file.usernames().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(file.verify("a", b"first"), Verify::WrongPassword);
    assert_eq!(file.verify("a", b"second"), Verify::Ok);
    assert_eq!(file.render(), format!("a:{second}\nb:{first}\n"));
}

#[test]
fn errors_carry_the_line_number_and_no_secret() {
    let secretish = "$9$c2VjcmV0$aGFzaA==";
    let e = err(&format!("# c\n\nu:{PBKDF2_PW}\nv:{secretish}\n"));
    assert_eq!(e.line, 4);
    assert_eq!(
        e.to_string(),
        "line 4: unknown hash format (expected $6$, $7$ or $argon2id$)"
    );
    assert!(!e.message.contains("c2VjcmV0"));
}

#[test]
fn malformed_lines_are_rejected() {
    let cases: &[(&str, &str)] = &[
        ("no colon here", "missing ':'"),
        (":$7$1$a$b", "empty username"),
        ("a\0b:$7$1$a$b", "username contains NUL"),
        ("u:", "missing password hash"),
        ("u:   ", "missing password hash"),
        ("u:plaintext", "unknown hash format"),
        ("u:$6$onlyone", "malformed $6$"),
        ("u:$6$a$b$c", "malformed $6$"),
        ("u:$7$101$a", "malformed $7$"),
        ("u:$7$0$MTIzNDU2Nzg5MDEy$AA==", "iteration count"),
        ("u:$7$-1$MTIzNDU2Nzg5MDEy$AA==", "iteration count"),
        ("u:$7$99999999999$MTIzNDU2Nzg5MDEy$AA==", "iteration count"),
        ("u:$7$101$!!!!$AA==", "salt is not valid base64"),
        (
            "u:$7$101$c2FsdA==$AA==",
            "salt must decode to 12 or 64 bytes",
        ),
        (
            "u:$7$101$MTIzNDU2Nzg5MDEy$AA==",
            "hash must decode to 64 bytes",
        ),
        (
            "u:$6$MTIzNDU2Nzg5MDEy$not base64",
            "hash is not valid base64",
        ),
        ("u:$argon2id$garbage", "malformed argon2id"),
        (
            "u:$argon2i$v=19$m=4096,t=2,p=1$c29tZXNhbHQxMjM0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "unknown hash format",
        ),
        (
            "u:$argon2id$v=19$m=4096,t=2,p=1$c29tZXNhbHQxMjM0",
            "malformed argon2id",
        ),
        (
            "u:$argon2id$v=19$t=2,m=4096,p=1$c29tZXNhbHQxMjM0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "malformed argon2id",
        ),
        (
            "u:$argon2id$v=19$m=4096,t=2$c29tZXNhbHQxMjM0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "malformed argon2id",
        ),
        (
            "u:$argon2id$v=19$m=4096,t=2,p=1,x=1$c29tZXNhbHQxMjM0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "malformed argon2id",
        ),
        (
            "u:$argon2id$v=19$m=+4096,t=2,p=1$c29tZXNhbHQxMjM0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "malformed argon2id",
        ),
        (
            "u:$argon2id$v=19$m=4194304,t=1,p=1$c29tZXNhbHQxMjM0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "cost too high",
        ),
        (
            "u:$argon2id$v=19$m=4096,t=1000,p=1$c29tZXNhbHQxMjM0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "cost too high",
        ),
        (
            "u:$argon2id$v=19$m=4096,t=1,p=1000$c29tZXNhbHQxMjM0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "cost too high",
        ),
        (
            "u:$argon2id$v=19$m=1,t=1,p=1$c29tZXNhbHQxMjM0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "invalid argon2id parameters",
        ),
        (
            "u:$argon2id$v=19$m=4096,t=0,p=1$c29tZXNhbHQxMjM0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "invalid argon2id parameters",
        ),
        (
            "u:$argon2id$v=19$m=4096,t=1,p=1$c2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "salt must be 8 to 1024 bytes",
        ),
        (
            "u:$argon2id$v=19$m=4096,t=1,p=1$c29tZXNhbHQxMjM0$AAA",
            "hash must be 4 to 1024",
        ),
        (
            "u:$argon2id$v=19$m=4096,t=1,p=1$c29tZXNhbHQxMjM0=$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "salt is not valid base64",
        ),
        (
            "u:$argon2id$v=19$m=4096,t=1,p=1$c29tZXNhbHQxMjM0$!!",
            "hash is not valid base64",
        ),
        (
            "u:$argon2id$v=7$m=4096,t=1,p=1$c29tZXNhbHQxMjM0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "version",
        ),
        ("u:$7$+101$MTIzNDU2Nzg5MDEy$AA==", "iteration count"),
    ];
    for (line, expected) in cases {
        let e = err(line);
        assert_eq!(e.line, 1, "{line}");
        assert!(e.message.contains(expected), "{line}: {}", e.message);
    }
}

#[test]
fn sha512_salt_of_64_bytes_is_accepted() {
    // Mosquitto 2.1 writes 64-byte salts.
    let salt = [7u8; 64];
    let mut digest = Sha512::new();
    digest.update(b"pw");
    digest.update(salt);
    let line = format!(
        "u:$6${}${}",
        BASE64.encode(salt),
        BASE64.encode(digest.finalize())
    );
    let file = PasswordFile::parse(&line).expect("parse");
    assert_eq!(file.verify("u", b"pw"), Verify::Ok);
}

#[test]
fn argon2id_without_version_is_version_0x10() {
    let line =
        "u:$argon2id$m=4096,t=2,p=1$c29tZXNhbHQxMjM0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let file = PasswordFile::parse(line).expect("parse");
    let Some(entry) = file.users.get("u") else {
        panic!("no user")
    };
    assert!(matches!(
        entry.credential,
        Credential::Argon2id {
            version: Version::V0x10,
            ..
        }
    ));
}

#[test]
fn argon2id_with_mosquittos_64_byte_salt_and_hash_verifies() {
    // Mosquitto 2.1 writes m=47104,t=1,p=1 with a 64-byte salt and a 64-byte hash.
    let params = argon2::Params::new(47104, 1, 1, Some(64)).expect("params");
    let line = argon2id_phc(b"pw", &[9u8; 64], params);
    assert!(
        line.starts_with("$argon2id$v=19$m=47104,t=1,p=1$"),
        "{line}"
    );
    let file = PasswordFile::parse(&format!("u:{line}")).expect("parse");
    assert_eq!(file.verify("u", b"pw"), Verify::Ok);
    assert_eq!(file.verify("u", b"pv"), Verify::WrongPassword);
}

#[test]
fn argon2id_encoding_matches_the_reference_tool() {
    let params = argon2::Params::new(4096, 2, 1, Some(32)).expect("params");
    let line = argon2id_phc(b"correct horse battery staple", b"somesalt1234", params);
    assert_eq!(line, ARGON2_REFERENCE);
}

#[test]
fn hash_formats_have_mosquittos_structure() {
    let line = hash(b"secret", Scheme::Pbkdf2Sha512 { iterations: 101 });
    let parts: Vec<&str> = line.split('$').collect();
    assert_eq!(parts[..3], ["", "7", "101"]);
    assert_eq!(parts.len(), 5);
    assert_eq!(BASE64.decode(parts[3]).expect("salt").len(), 12);
    assert_eq!(BASE64.decode(parts[4]).expect("hash").len(), 64);

    let argon = hash(b"secret", Scheme::default());
    assert!(
        argon.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{argon}"
    );
}

#[test]
fn fresh_salt_every_time() {
    let scheme = Scheme::Pbkdf2Sha512 { iterations: 1 };
    assert_ne!(hash(b"same", scheme), hash(b"same", scheme));
    assert_ne!(
        hash(b"same", Scheme::Argon2id),
        hash(b"same", Scheme::Argon2id)
    );
}

#[test]
fn hash_clamps_iterations() {
    assert!(hash(b"x", Scheme::Pbkdf2Sha512 { iterations: 0 }).starts_with("$7$1$"));
}

#[test]
fn set_adds_replaces_and_render_keeps_order() {
    let mut file = PasswordFile::parse(&format!("a:{PBKDF2_PW}\nb:{PBKDF2_PW}\n")).expect("parse");
    let fast = Scheme::Pbkdf2Sha512 { iterations: 3 };
    file.set("c", b"new user", fast).expect("set c");
    file.set("a", b"changed", Scheme::Argon2id).expect("set a");
    assert_eq!(file.usernames().collect::<Vec<_>>(), ["a", "b", "c"]);
    assert_eq!(file.verify("a", b"changed"), Verify::Ok);
    assert_eq!(file.verify("a", b"pw"), Verify::WrongPassword);
    assert_eq!(file.verify("c", b"new user"), Verify::Ok);

    let reparsed = PasswordFile::parse(&file.render()).expect("reparse");
    assert_eq!(reparsed.render(), file.render());
    assert_eq!(reparsed.verify("a", b"changed"), Verify::Ok);
    assert_eq!(reparsed.verify("b", b"pw"), Verify::Ok);
    assert_eq!(reparsed.verify("c", b"new user"), Verify::Ok);

    assert!(file.remove("b"));
    assert!(!file.remove("b"));
    assert!(!file.contains("b"));
    assert_eq!(file.usernames().collect::<Vec<_>>(), ["a", "c"]);
    assert_eq!(file.len(), 2);
}

#[test]
fn set_refuses_usernames_that_would_not_read_back() {
    let mut file = PasswordFile::default();
    let fast = Scheme::Pbkdf2Sha512 { iterations: 1 };
    for bad in ["", "a:b", "a\nb", "a\rb", "a\0b", "#a", " a", "a ", "a\t"] {
        let e = file.set(bad, b"pw", fast).expect_err(bad);
        assert_eq!(e.line, 0);
        assert!(!e.to_string().starts_with("line"), "{e}");
    }
    assert!(file.is_empty());
    file.set("zoë with spaces", b"pw", fast)
        .expect("inner spaces and non-ASCII are fine");
}

#[test]
fn set_refuses_out_of_range_iterations() {
    let mut file = PasswordFile::default();
    for iterations in [0, MAX_PBKDF2_ITERATIONS + 1] {
        let e = file
            .set("u", b"pw", Scheme::Pbkdf2Sha512 { iterations })
            .expect_err("refused");
        assert!(e.message.contains("iterations"));
    }
}

#[test]
fn debug_shows_no_hash() {
    let file = PasswordFile::parse(&format!("u:{PBKDF2_PW}")).expect("parse");
    let debug = format!("{file:?}");
    assert!(debug.contains("\"u\""), "{debug}");
    assert!(!debug.contains("MTIzNDU2Nzg5MDEy"), "{debug}");
}

#[test]
fn empty_password_verifies() {
    let mut file = PasswordFile::default();
    file.set("u", b"", Scheme::Pbkdf2Sha512 { iterations: 1 })
        .expect("set");
    assert_eq!(file.verify("u", b""), Verify::Ok);
    assert_eq!(file.verify("u", b"x"), Verify::WrongPassword);
}

#[test]
fn hmac_pads_short_keys_with_zeros() {
    // A property of PBKDF2-HMAC (and so of Mosquitto's `$7$`): trailing NUL bytes of a password
    // shorter than the SHA-512 block are indistinguishable. Mosquitto stops at the first NUL
    // anyway; this pins the behaviour so that nobody "fixes" it into an incompatibility.
    let mut file = PasswordFile::default();
    file.set("u", b"pw", Scheme::Pbkdf2Sha512 { iterations: 1 })
        .expect("set");
    assert_eq!(file.verify("u", b"pw\0"), Verify::Ok);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn parse_never_panics(text in "\\PC*") {
            let _ = PasswordFile::parse(&text);
        }

        #[test]
        fn pbkdf2_round_trip(password in proptest::collection::vec(any::<u8>(), 0..64),
                             other in proptest::collection::vec(any::<u8>(), 0..64)) {
            let line = hash(&password, Scheme::Pbkdf2Sha512 { iterations: 1 });
            let file = PasswordFile::parse(&format!("u:{line}")).expect("parse");
            prop_assert_eq!(file.verify("u", &password), Verify::Ok);
            if other != password {
                prop_assert_eq!(file.verify("u", &other), Verify::WrongPassword);
            }
        }
    }
}
