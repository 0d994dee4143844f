//! Our password checks against files written by Mosquitto's own `mosquitto_passwd`: committed
//! fixtures, and lines made at test time for random passwords.
#![allow(clippy::expect_used, reason = "test helpers outside #[test] functions")]

use std::path::Path;
use std::process::Command;

use rand::Rng;
use rand::seq::SliceRandom;
use rookery_auth::password::{PasswordFile, Scheme, Verify};

/// The users and passwords of `tests/fixtures/mosquitto-*.txt`, which were written with
/// `mosquitto_passwd -H sha512 -b FILE USER PASS` and `-H sha512-pbkdf2` (Mosquitto 2.0.11).
const FIXTURE_USERS: &[(&str, &str)] = &[
    ("alice", "correct horse battery staple"),
    ("bob", "p@ss:word$with#symbols"),
    ("carol", "pässwörd-ünïcødé-日本語"),
    ("zoë", "x"),
    ("eve", " spaces around "),
    (
        "long",
        "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\
         0123456789abcdefghijklmnopqrstuvwxyz",
    ),
    ("dave", ""),
];

fn check_fixture(name: &str, prefix: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("read fixture");
    let file = PasswordFile::parse(&text).expect("parse fixture");
    let names: Vec<&str> = FIXTURE_USERS.iter().map(|(u, _)| *u).collect();
    assert_eq!(file.usernames().collect::<Vec<_>>(), names);
    for line in text.lines() {
        assert!(
            line.split_once(':').expect("colon").1.starts_with(prefix),
            "{line}"
        );
    }
    for (user, password) in FIXTURE_USERS {
        assert_eq!(file.verify(user, password.as_bytes()), Verify::Ok, "{user}");
        let wrong = format!("{password}!");
        assert_eq!(
            file.verify(user, wrong.as_bytes()),
            Verify::WrongPassword,
            "{user}"
        );
    }
    // Every user's password is wrong for every other user.
    assert_eq!(file.verify("alice", b"x"), Verify::WrongPassword);
    assert_eq!(file.verify("mallory", b"x"), Verify::UnknownUser);
    // What we render reads back the same.
    assert_eq!(
        PasswordFile::parse(&file.render())
            .expect("reparse")
            .render(),
        file.render()
    );
}

#[test]
fn mosquitto_sha512_fixture_verifies() {
    check_fixture("mosquitto-sha512.txt", "$6$");
}

#[test]
fn mosquitto_sha512_pbkdf2_fixture_verifies() {
    check_fixture("mosquitto-sha512-pbkdf2.txt", "$7$101$");
}

/// A password `mosquitto_passwd -b` can take as an argument: no NUL, not starting with `-`.
fn random_password(rng: &mut impl Rng) -> String {
    const POOL: &[char] = &[
        'a', 'Z', '0', '9', ' ', ':', '$', '#', '/', '+', '"', '\'', '\\', 'é', 'ß', 'ø', 'Ж', 'ж',
        'λ', 'ع', 'ש', '中', '文', '日', '本', '한', '🙂', '🦀', '\u{00A0}', '\u{200D}',
    ];
    let len = rng.gen_range(1..=40);
    (0..len).map(|_| *POOL.choose(rng).expect("pool")).collect()
}

#[test]
fn live_mosquitto_passwd_lines_verify() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rng = rand::thread_rng();
    let mut users = Vec::new();
    for (i, hash) in ["sha512", "sha512-pbkdf2", "sha512", "sha512-pbkdf2"]
        .iter()
        .enumerate()
    {
        // Two ASCII-only passwords, and the rest drawn from a pool with non-ASCII characters.
        let password = match i {
            0 => "plain ascii password".to_owned(),
            1 => (0..24)
                .map(|_| rng.gen_range('!'..='~'))
                .collect::<String>()
                .replace('-', "_"),
            _ => random_password(&mut rng),
        };
        users.push((format!("user{i}"), *hash, password));
    }
    users.push((
        "ünïcødé user".to_owned(),
        "sha512-pbkdf2",
        "Grüße, 世界! 🦀".to_owned(),
    ));

    let path = dir.path().join("passwords");
    for (i, (user, hash, password)) in users.iter().enumerate() {
        let mut command = Command::new("mosquitto_passwd");
        command.args(["-H", hash]);
        if i == 0 {
            command.arg("-c");
        }
        command.arg("-b").arg(&path).arg(user).arg(password);
        let output = match command.output() {
            Ok(output) => output,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "mosquitto_passwd is not installed: install the Debian package `mosquitto` \
                 (apt-get install mosquitto); CI installs it"
            ),
            Err(e) => panic!("running mosquitto_passwd: {e}"),
        };
        assert!(
            output.status.success(),
            "mosquitto_passwd failed: {output:?}"
        );
    }

    let text = std::fs::read_to_string(&path).expect("read password file");
    let file = PasswordFile::parse(&text).expect("parse mosquitto_passwd output");
    assert_eq!(file.len(), users.len());
    for (user, hash, password) in &users {
        let expected = if *hash == "sha512" { "$6$" } else { "$7$" };
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{user}:")))
            .expect("line");
        assert!(line[user.len() + 1..].starts_with(expected), "{line}");
        assert_eq!(
            file.verify(user, password.as_bytes()),
            Verify::Ok,
            "{user}: {password:?}"
        );
        let mut wrong = password.clone();
        wrong.pop();
        assert_eq!(
            file.verify(user, wrong.as_bytes()),
            Verify::WrongPassword,
            "{user}"
        );
        let wrong = format!("{password} ");
        assert_eq!(
            file.verify(user, wrong.as_bytes()),
            Verify::WrongPassword,
            "{user}"
        );
    }
}

#[test]
fn our_lines_have_mosquittos_structure_and_verify() {
    let mut file = PasswordFile::default();
    file.set("m", b"secret", Scheme::Pbkdf2Sha512 { iterations: 101 })
        .expect("set");
    file.set("a", "ßecret".as_bytes(), Scheme::default())
        .expect("set");
    let text = file.render();
    let mut lines = text.lines();
    let pbkdf2 = lines.next().expect("first line");
    // Same shape as the committed `mosquitto_passwd` fixture lines: `user:$7$101$<16>$<88>`.
    let fields: Vec<&str> = pbkdf2.split('$').collect();
    assert_eq!(fields[..3], ["m:", "7", "101"]);
    assert_eq!((fields[3].len(), fields[4].len()), (16, 88), "{pbkdf2}");
    assert!(
        lines
            .next()
            .expect("second line")
            .starts_with("a:$argon2id$v=19$")
    );

    let reparsed = PasswordFile::parse(&text).expect("reparse");
    assert_eq!(reparsed.verify("m", b"secret"), Verify::Ok);
    assert_eq!(reparsed.verify("a", "ßecret".as_bytes()), Verify::Ok);
    assert_eq!(reparsed.verify("a", b"secret"), Verify::WrongPassword);
}
