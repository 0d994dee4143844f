//! The brokers' password file, from `auth.passwordSecretRef` (a Mosquitto password file, used
//! as is) and `auth.users` (plain passwords in Secrets, hashed here with Argon2id).
//!
//! Hashes are salted, so hashing again would change the Secret on every reconcile and make the
//! brokers reload for nothing: a user whose password still verifies against the file the
//! operator wrote last keeps the hash it has.

use rookery_auth::password::{PasswordFile, Scheme, Verify};

/// Errors of building the password file; each names what is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PasswordError {
    /// The file of `auth.passwordSecretRef` does not parse.
    #[error("spec.auth.passwordSecretRef: not a Mosquitto password file: {0}")]
    Base(String),
    /// A user of `auth.users` cannot be written.
    #[error("spec.auth.users: {0}")]
    User(String),
}

fn line_of<'a>(text: &'a str, user: &str) -> Option<&'a str> {
    text.lines()
        .find(|l| l.split_once(':').is_some_and(|(u, _)| u == user))
}

/// The password file: `base`'s users (those not in `users`), then `users` in order. `existing`
/// is the file written last time, whose hashes are kept where the password is unchanged.
pub fn password_file(
    base: Option<&str>,
    users: &[(String, Vec<u8>)],
    existing: Option<&str>,
) -> Result<String, PasswordError> {
    let mut out = String::new();
    if let Some(base) = base {
        let parsed = PasswordFile::parse(base).map_err(|e| PasswordError::Base(e.to_string()))?;
        for name in parsed.usernames() {
            if users.iter().any(|(u, _)| u == name) {
                continue;
            }
            if let Some(line) = line_of(base, name) {
                out.push_str(line.trim_end());
                out.push('\n');
            }
        }
    }
    let previous = existing.and_then(|e| PasswordFile::parse(e).ok().map(|f| (e, f)));
    for (name, password) in users {
        let kept = previous.as_ref().and_then(|(text, file)| {
            (file.verify(name, password) == Verify::Ok)
                .then(|| line_of(text, name))
                .flatten()
        });
        match kept {
            Some(line) => out.push_str(line.trim_end()),
            None => {
                let mut one = PasswordFile::default();
                one.set(name, password, Scheme::Argon2id)
                    .map_err(|e| PasswordError::User(format!("{name:?}: {e}")))?;
                out.push_str(one.render().trim_end());
            }
        }
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(list: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        list.iter()
            .map(|(u, p)| ((*u).to_owned(), p.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn users_are_hashed_and_verify_and_unchanged_ones_keep_their_hash() {
        let first = password_file(None, &users(&[("a", "pa"), ("b", "pb")]), None).unwrap();
        let f = PasswordFile::parse(&first).unwrap();
        assert_eq!(f.verify("a", b"pa"), Verify::Ok);
        assert_eq!(f.verify("b", b"pb"), Verify::Ok);
        assert_eq!(f.verify("a", b"pb"), Verify::WrongPassword);
        let again = password_file(None, &users(&[("a", "pa"), ("b", "pb")]), Some(&first)).unwrap();
        assert_eq!(again, first, "nothing changed, nothing rewritten");
        let changed =
            password_file(None, &users(&[("a", "pa"), ("b", "new")]), Some(&first)).unwrap();
        assert_eq!(line_of(&changed, "a"), line_of(&first, "a"));
        assert_ne!(line_of(&changed, "b"), line_of(&first, "b"));
        assert_eq!(
            PasswordFile::parse(&changed).unwrap().verify("b", b"new"),
            Verify::Ok
        );
    }

    #[test]
    fn the_base_file_is_kept_and_users_override_it() {
        let base = password_file(None, &users(&[("x", "px"), ("a", "old")]), None).unwrap();
        let out = password_file(Some(&base), &users(&[("a", "pa")]), None).unwrap();
        let f = PasswordFile::parse(&out).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f.verify("x", b"px"), Verify::Ok);
        assert_eq!(f.verify("a", b"pa"), Verify::Ok);
    }

    #[test]
    fn errors_name_the_field() {
        let e = password_file(Some("not a file line"), &[], None).unwrap_err();
        assert!(
            e.to_string().starts_with("spec.auth.passwordSecretRef"),
            "{e}"
        );
        let e = password_file(None, &users(&[("a:b", "p")]), None).unwrap_err();
        assert!(e.to_string().starts_with("spec.auth.users"), "{e}");
    }
}
