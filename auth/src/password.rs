//! Mosquitto password files: one `username:hash` line per user.
//!
//! Hash formats, as Mosquitto 2.x reads them (`common/password_mosq.c` upstream):
//!
//! - `$6$<salt>$<hash>`: one SHA-512 over the password bytes followed by the salt bytes (not
//!   `sha512-crypt`). `mosquitto_passwd -H sha512` writes it.
//! - `$7$<iterations>$<salt>$<hash>`: PBKDF2-HMAC-SHA512 with a 64-byte output.
//!   `mosquitto_passwd -H sha512-pbkdf2` (the default) writes it with 101 iterations.
//! - `$argon2id$v=19$m=..,t=..,p=..$<salt>$<hash>`: an Argon2id PHC string, as the reference
//!   implementation (which Mosquitto 2.1 uses) writes and reads it: `m`, `t`, `p` in that
//!   order, unpadded base64, no `v=` meaning version 0x10. Mosquitto 2.1 writes
//!   `m=47104,t=1,p=1` with a 64-byte salt and a 64-byte hash.
//!
//! Salts and hashes of `$6$` and `$7$` are standard base64 with padding. The salt must decode
//! to 12 bytes (what Mosquitto 2.0 writes and the only length it accepts) or 64 bytes (what
//! Mosquitto 2.1 writes); the hash to 64 bytes.
//!
//! PBKDF2-HMAC pads passwords shorter than the SHA-512 block with zero bytes, so under `$7$`
//! `pw` and `pw\0` are the same password (in Mosquitto too).
//!
//! Where this differs from Mosquitto:
//!
//! - A line Mosquitto would skip or drop with a log line (no `:`, an undecodable hash) is an
//!   error here, so a typo cannot silently lock a user out.
//! - Mosquitto hashes the password up to its first NUL byte (C strings); we hash every byte.
//!   Files written by `mosquitto_passwd` cannot contain such passwords, so they verify the same.
//!   A username containing NUL (which no MQTT client can send) is an error.
//! - Argon2 cost parameters are bounded (see [`MAX_ARGON2_M_COST`] and friends) and `$7$`
//!   iterations too ([`MAX_PBKDF2_ITERATIONS`]), so a hostile or mistyped file cannot make one
//!   login allocate gigabytes or spin for minutes.
//!
//! Duplicate users: the last line wins, as in Mosquitto 2.0 (checked against 2.0.11: its hash
//! table finds the most recently added entry). The user keeps the position of its first line.

use std::fmt;
use std::hint::black_box;

use argon2::{Algorithm, Argon2, Version};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD as BASE64, STANDARD_NO_PAD as BASE64_NO_PAD};
use indexmap::IndexMap;
use rand::RngCore;
use rand::rngs::OsRng;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

/// Length of a `$6$` or `$7$` hash, in bytes.
const SHA512_LEN: usize = 64;
/// Salt length we write for `$7$`: the only length Mosquitto 2.0 accepts.
const PBKDF2_SALT_LEN: usize = 12;
/// Salt length we write for Argon2id (the `argon2` crate's recommendation).
const ARGON2_SALT_LEN: usize = 16;

/// Largest `$7$` iteration count accepted (about ten seconds of one core).
pub const MAX_PBKDF2_ITERATIONS: u32 = 10_000_000;
/// Largest Argon2 memory cost accepted, in KiB (1 GiB).
pub const MAX_ARGON2_M_COST: u32 = 1 << 20;
/// Largest Argon2 time cost (passes) accepted.
pub const MAX_ARGON2_T_COST: u32 = 64;
/// Largest Argon2 parallelism accepted.
pub const MAX_ARGON2_P_COST: u32 = 64;
/// Longest Argon2 salt or hash accepted, in bytes.
const MAX_ARGON2_FIELD_LEN: usize = 1024;

/// An error in a password file, or a username or scheme [`PasswordFile::set`] refused.
///
/// The message never contains a password or a hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordFileError {
    /// 1-based line number in the parsed text; 0 for errors from [`PasswordFile::set`].
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl PasswordFileError {
    fn new(line: usize, message: impl Into<String>) -> Self {
        Self {
            line,
            message: message.into(),
        }
    }
}

impl fmt::Display for PasswordFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            f.write_str(&self.message)
        } else {
            write!(f, "line {}: {}", self.line, self.message)
        }
    }
}

impl std::error::Error for PasswordFileError {}

/// The outcome of [`PasswordFile::verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// The user exists and the password matches.
    Ok,
    /// The user exists and the password does not match.
    WrongPassword,
    /// No such user (a dummy hash was still computed, so this took as long as a check).
    UnknownUser,
}

/// How [`hash`] and [`PasswordFile::set`] hash a new password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheme {
    /// Argon2id with the `argon2` crate's recommended parameters (19 MiB, 2 passes, 1 lane)
    /// and a 16-byte salt. Mosquitto reads it only when built with Argon2 support (2.1 and
    /// later).
    #[default]
    Argon2id,
    /// Mosquitto's `$7$`: PBKDF2-HMAC-SHA512 with a 12-byte salt, which every Mosquitto 2.x
    /// reads. `mosquitto_passwd` uses 101 iterations; OWASP recommends 210 000 for this PRF.
    /// `iterations` must be between 1 and [`MAX_PBKDF2_ITERATIONS`].
    Pbkdf2Sha512 {
        /// PBKDF2 iteration count.
        iterations: u32,
    },
}

/// Hashes `password` with a fresh random salt and returns the hash part of a password line
/// (what follows `username:`).
///
/// An iteration count of [`Scheme::Pbkdf2Sha512`] outside 1..=[`MAX_PBKDF2_ITERATIONS`] is
/// clamped into that range; [`PasswordFile::set`] refuses it instead.
///
/// # Panics
///
/// Only if `password` is longer than 4 GiB (Argon2's limit) or the operating system's random
/// number generator fails. MQTT passwords are at most 65 535 bytes.
pub fn hash(password: &[u8], scheme: Scheme) -> String {
    match scheme {
        Scheme::Argon2id => {
            let mut salt = [0u8; ARGON2_SALT_LEN];
            OsRng.fill_bytes(&mut salt);
            argon2id_phc(password, &salt, argon2::Params::default())
        }
        Scheme::Pbkdf2Sha512 { iterations } => {
            let iterations = iterations.clamp(1, MAX_PBKDF2_ITERATIONS);
            let mut salt = [0u8; PBKDF2_SALT_LEN];
            OsRng.fill_bytes(&mut salt);
            let mut out = [0u8; SHA512_LEN];
            pbkdf2::pbkdf2_hmac::<Sha512>(password, &salt, iterations, &mut out);
            format!(
                "$7${iterations}${}${}",
                BASE64.encode(salt),
                BASE64.encode(out)
            )
        }
    }
}

/// A decoded hash, ready to check a password against.
#[derive(Clone)]
enum Credential {
    Sha512 {
        salt: Vec<u8>,
        hash: [u8; SHA512_LEN],
    },
    Pbkdf2 {
        iterations: u32,
        salt: Vec<u8>,
        hash: [u8; SHA512_LEN],
    },
    Argon2id {
        version: Version,
        params: argon2::Params,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

impl Credential {
    /// Decodes the hash part of a line; the error message names no secret.
    fn decode(encoded: &str) -> Result<Credential, String> {
        if let Some(rest) = encoded.strip_prefix("$6$") {
            let mut parts = rest.split('$');
            let (Some(salt), Some(hash), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err("malformed $6$ hash (expected $6$<salt>$<hash>)".into());
            };
            Ok(Credential::Sha512 {
                salt: decode_salt(salt)?,
                hash: decode_sha512(hash)?,
            })
        } else if let Some(rest) = encoded.strip_prefix("$7$") {
            let mut parts = rest.split('$');
            let (Some(iterations), Some(salt), Some(hash), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err("malformed $7$ hash (expected $7$<iterations>$<salt>$<hash>)".into());
            };
            let iterations = decimal(iterations)
                .filter(|i| (1..=MAX_PBKDF2_ITERATIONS).contains(i))
                .ok_or_else(|| {
                    format!("$7$ iteration count must be between 1 and {MAX_PBKDF2_ITERATIONS}")
                })?;
            Ok(Credential::Pbkdf2 {
                iterations,
                salt: decode_salt(salt)?,
                hash: decode_sha512(hash)?,
            })
        } else if encoded.starts_with("$argon2id$") {
            decode_argon2id(encoded)
        } else {
            Err("unknown hash format (expected $6$, $7$ or $argon2id$)".into())
        }
    }

    /// Hashes `password` the way this credential was made and compares in constant time.
    fn verify(&self, password: &[u8]) -> bool {
        match self {
            Credential::Sha512 { salt, hash } => {
                let mut digest = Sha512::new();
                digest.update(password);
                digest.update(salt);
                bool::from(digest.finalize().as_slice().ct_eq(hash))
            }
            Credential::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => {
                let mut out = [0u8; SHA512_LEN];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
                bool::from(out.ct_eq(hash))
            }
            Credential::Argon2id {
                version,
                params,
                salt,
                hash,
            } => {
                let argon = Argon2::new(Algorithm::Argon2id, *version, params.clone());
                let mut out = vec![0u8; hash.len()];
                match argon.hash_password_into(password, salt, &mut out) {
                    Ok(()) => bool::from(out.ct_eq(hash)),
                    // Only a password over 4 GiB or an allocation failure gets here.
                    Err(_) => false,
                }
            }
        }
    }

    /// A credential that costs the same to check as `self` but matches no password: a fresh
    /// salt and an all-zero expected hash.
    fn dummy_like(&self) -> Credential {
        let mut salt = vec![0u8; self.salt_len()];
        OsRng.fill_bytes(&mut salt);
        match self {
            Credential::Sha512 { .. } => Credential::Sha512 {
                salt,
                hash: [0; SHA512_LEN],
            },
            Credential::Pbkdf2 { iterations, .. } => Credential::Pbkdf2 {
                iterations: *iterations,
                salt,
                hash: [0; SHA512_LEN],
            },
            Credential::Argon2id {
                version,
                params,
                hash,
                ..
            } => Credential::Argon2id {
                version: *version,
                params: params.clone(),
                salt,
                hash: vec![0; hash.len()],
            },
        }
    }

    fn salt_len(&self) -> usize {
        match self {
            Credential::Sha512 { salt, .. }
            | Credential::Pbkdf2 { salt, .. }
            | Credential::Argon2id { salt, .. } => salt.len(),
        }
    }

    /// What determines how long a check takes; entries with equal keys cost the same.
    fn cost_key(&self) -> (u8, u32, u32, u32, usize) {
        match self {
            Credential::Sha512 { .. } => (6, 0, 0, 0, 0),
            Credential::Pbkdf2 { iterations, .. } => (7, *iterations, 0, 0, 0),
            Credential::Argon2id { params, hash, .. } => (
                2,
                params.m_cost(),
                params.t_cost(),
                params.p_cost(),
                hash.len(),
            ),
        }
    }
}

fn decode_salt(b64: &str) -> Result<Vec<u8>, String> {
    let salt = BASE64
        .decode(b64)
        .map_err(|_| "salt is not valid base64".to_string())?;
    if salt.len() == 12 || salt.len() == 64 {
        Ok(salt)
    } else {
        Err("salt must decode to 12 or 64 bytes".into())
    }
}

fn decode_sha512(b64: &str) -> Result<[u8; SHA512_LEN], String> {
    let hash = BASE64
        .decode(b64)
        .map_err(|_| "hash is not valid base64".to_string())?;
    <[u8; SHA512_LEN]>::try_from(hash.as_slice()).map_err(|_| "hash must decode to 64 bytes".into())
}

/// Hashes with Argon2id and encodes the PHC string the way the reference implementation
/// (and so Mosquitto) does: `$argon2id$v=19$m=M,t=T,p=P$<salt>$<hash>`, unpadded base64.
fn argon2id_phc(password: &[u8], salt: &[u8], params: argon2::Params) -> String {
    let len = params
        .output_len()
        .unwrap_or(argon2::Params::DEFAULT_OUTPUT_LEN);
    let mut out = vec![0u8; len];
    let (m, t, p) = (params.m_cost(), params.t_cost(), params.p_cost());
    #[allow(
        clippy::expect_used,
        reason = "fixed parameters; see the # Panics of `hash`"
    )]
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(password, salt, &mut out)
        .expect("Argon2id with valid parameters and salt fails only for passwords over 4 GiB");
    format!(
        "$argon2id$v=19$m={m},t={t},p={p}${}${}",
        BASE64_NO_PAD.encode(salt),
        BASE64_NO_PAD.encode(&out)
    )
}

/// Decodes `$argon2id$[v=V$]m=M,t=T,p=P$<salt>$<hash>` as the reference implementation does.
///
/// Parsed by hand rather than with the `password-hash` crate: that one refuses salts over 48
/// bytes, and Mosquitto 2.1 writes 64-byte salts.
fn decode_argon2id(encoded: &str) -> Result<Credential, String> {
    const MALFORMED: &str =
        "malformed argon2id hash (expected $argon2id$v=19$m=M,t=T,p=P$<salt>$<hash>)";
    let rest = encoded.strip_prefix("$argon2id$").ok_or(MALFORMED)?;
    let mut fields: Vec<&str> = rest.split('$').collect();
    // A PHC string without `v=` is version 0x10, as the reference implementation reads it.
    let version = match fields.first().and_then(|f| f.strip_prefix("v=")) {
        Some(v) => {
            let version = match decimal(v) {
                Some(0x10) => Version::V0x10,
                Some(0x13) => Version::V0x13,
                _ => return Err("unsupported argon2 version (expected v=16 or v=19)".into()),
            };
            fields.remove(0);
            version
        }
        None => Version::V0x10,
    };
    let [params, salt, hash] = fields[..] else {
        return Err(MALFORMED.into());
    };
    let mut costs = params.split(',');
    let mut cost = |name: &str| {
        costs
            .next()
            .and_then(|kv| kv.strip_prefix(name))
            .and_then(decimal)
            .ok_or(MALFORMED)
    };
    let (m, t, p) = (cost("m=")?, cost("t=")?, cost("p=")?);
    if costs.next().is_some() {
        return Err(MALFORMED.into());
    }
    if m > MAX_ARGON2_M_COST || t > MAX_ARGON2_T_COST || p > MAX_ARGON2_P_COST {
        return Err(format!(
            "argon2id cost too high (limits: m={MAX_ARGON2_M_COST}, t={MAX_ARGON2_T_COST}, \
             p={MAX_ARGON2_P_COST})"
        ));
    }
    let salt = BASE64_NO_PAD
        .decode(salt)
        .map_err(|_| "argon2id salt is not valid base64")?;
    let hash = BASE64_NO_PAD
        .decode(hash)
        .map_err(|_| "argon2id hash is not valid base64")?;
    if !(argon2::MIN_SALT_LEN..=MAX_ARGON2_FIELD_LEN).contains(&salt.len()) {
        return Err(format!(
            "argon2id salt must be 8 to {MAX_ARGON2_FIELD_LEN} bytes"
        ));
    }
    if !(argon2::Params::MIN_OUTPUT_LEN..=MAX_ARGON2_FIELD_LEN).contains(&hash.len()) {
        return Err(format!(
            "argon2id hash must be 4 to {MAX_ARGON2_FIELD_LEN} bytes"
        ));
    }
    let params = argon2::Params::new(m, t, p, Some(hash.len()))
        .map_err(|_| "invalid argon2id parameters".to_string())?;
    Ok(Credential::Argon2id {
        version,
        params,
        salt,
        hash,
    })
}

/// A plain decimal number: ASCII digits only (no sign), fitting a `u32`.
fn decimal(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[derive(Clone)]
struct Entry {
    /// The hash exactly as read or written, for [`PasswordFile::render`].
    encoded: String,
    credential: Credential,
}

/// A parsed Mosquitto password file. Users keep the order of the file.
///
/// `Debug` shows the usernames only, never a hash.
#[derive(Clone)]
pub struct PasswordFile {
    users: IndexMap<String, Entry>,
    /// Checked for unknown users so that their rejection takes as long as a real check.
    dummy: Credential,
}

impl Default for PasswordFile {
    fn default() -> Self {
        let mut file = PasswordFile {
            users: IndexMap::new(),
            dummy: default_dummy(),
        };
        file.refresh_dummy();
        file
    }
}

impl fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordFile")
            .field("users", &self.users.keys())
            .finish_non_exhaustive()
    }
}

/// The dummy for a file with no users: what [`Scheme::default`] would write.
fn default_dummy() -> Credential {
    let params = argon2::Params::default();
    let mut salt = vec![0u8; ARGON2_SALT_LEN];
    OsRng.fill_bytes(&mut salt);
    let len = params
        .output_len()
        .unwrap_or(argon2::Params::DEFAULT_OUTPUT_LEN);
    Credential::Argon2id {
        version: Version::V0x13,
        params,
        salt,
        hash: vec![0; len],
    }
}

impl PasswordFile {
    /// Parses the text of a password file.
    ///
    /// Blank lines and lines whose first non-blank character is `#` are skipped; spaces around
    /// the username and the hash are trimmed (as Mosquitto does). Errors carry the line number.
    pub fn parse(text: &str) -> Result<PasswordFile, PasswordFileError> {
        let mut users = IndexMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((username, encoded)) = line.split_once(':') else {
                return Err(PasswordFileError::new(
                    line_no,
                    "missing ':' between username and password hash",
                ));
            };
            let (username, encoded) = (username.trim(), encoded.trim());
            if username.is_empty() {
                return Err(PasswordFileError::new(line_no, "empty username"));
            }
            // MQTT strings cannot hold U+0000 [MQTT-1.5.4-2], so such a user could never log in.
            if username.contains('\0') {
                return Err(PasswordFileError::new(line_no, "username contains NUL"));
            }
            if encoded.is_empty() {
                return Err(PasswordFileError::new(line_no, "missing password hash"));
            }
            let credential =
                Credential::decode(encoded).map_err(|m| PasswordFileError::new(line_no, m))?;
            // Last line wins, in the first line's place (IndexMap keeps the position).
            users.insert(
                username.to_owned(),
                Entry {
                    encoded: encoded.to_owned(),
                    credential,
                },
            );
        }
        let mut file = PasswordFile {
            users,
            dummy: default_dummy(),
        };
        file.refresh_dummy();
        Ok(file)
    }

    /// Checks `password` for `username`. CPU heavy (a key derivation): run it off the async
    /// executor.
    ///
    /// An unknown user costs a check against a dummy hash with the parameters most users in
    /// the file have, so the time taken does not tell which users exist. Hash comparisons are
    /// constant-time.
    pub fn verify(&self, username: &str, password: &[u8]) -> Verify {
        match self.users.get(username) {
            Some(entry) => {
                if entry.credential.verify(password) {
                    Verify::Ok
                } else {
                    Verify::WrongPassword
                }
            }
            None => {
                black_box(self.dummy.verify(black_box(password)));
                Verify::UnknownUser
            }
        }
    }

    /// Whether the file has a line for `username`.
    pub fn contains(&self, username: &str) -> bool {
        self.users.contains_key(username)
    }

    /// Usernames in file order.
    pub fn usernames(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file has no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Adds `username`, or replaces its password in place, hashing `password` with a fresh
    /// salt.
    ///
    /// Refuses (with `line` 0) a username that could not be read back: empty, containing `:`,
    /// a line break or NUL, starting with `#`, or with leading or trailing whitespace; and a
    /// `$7$` iteration count outside 1..=[`MAX_PBKDF2_ITERATIONS`].
    pub fn set(
        &mut self,
        username: &str,
        password: &[u8],
        scheme: Scheme,
    ) -> Result<(), PasswordFileError> {
        validate_username(username)?;
        if u32::try_from(password.len()).is_err() {
            // Argon2's limit, and `hash` would panic on it: refuse here instead.
            return Err(PasswordFileError::new(0, "password longer than 4 GiB"));
        }
        if let Scheme::Pbkdf2Sha512 { iterations } = scheme
            && !(1..=MAX_PBKDF2_ITERATIONS).contains(&iterations)
        {
            return Err(PasswordFileError::new(
                0,
                format!("iterations must be between 1 and {MAX_PBKDF2_ITERATIONS}"),
            ));
        }
        let encoded = hash(password, scheme);
        let credential = Credential::decode(&encoded).map_err(|m| PasswordFileError::new(0, m))?;
        match self.users.get_mut(username) {
            Some(entry) => {
                *entry = Entry {
                    encoded,
                    credential,
                }
            }
            None => {
                self.users.insert(
                    username.to_owned(),
                    Entry {
                        encoded,
                        credential,
                    },
                );
            }
        }
        self.refresh_dummy();
        Ok(())
    }

    /// Removes `username`; returns whether it was there. The order of the others is kept.
    pub fn remove(&mut self, username: &str) -> bool {
        let removed = self.users.shift_remove(username).is_some();
        if removed {
            self.refresh_dummy();
        }
        removed
    }

    /// The file text: one `username:hash` line per user, in order. Comments and blank lines of
    /// the parsed text are not kept.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (username, entry) in &self.users {
            out.push_str(username);
            out.push(':');
            out.push_str(&entry.encoded);
            out.push('\n');
        }
        out
    }

    /// Points the dummy at the most common cost among the users (ties: the earliest).
    fn refresh_dummy(&mut self) {
        let mut counts: IndexMap<_, (usize, &Credential)> = IndexMap::new();
        for entry in self.users.values() {
            counts
                .entry(entry.credential.cost_key())
                .or_insert((0, &entry.credential))
                .0 += 1;
        }
        let mut best: Option<(usize, &Credential)> = None;
        for &(count, credential) in counts.values() {
            if best.is_none_or(|(n, _)| count > n) {
                best = Some((count, credential));
            }
        }
        if let Some((_, credential)) = best {
            self.dummy = credential.dummy_like();
        }
    }
}

fn validate_username(username: &str) -> Result<(), PasswordFileError> {
    let problem = if username.is_empty() {
        "username is empty"
    } else if username.contains(':') {
        "username contains ':'"
    } else if username.contains(['\n', '\r', '\0']) {
        "username contains a line break or NUL"
    } else if username.starts_with('#') {
        "username starts with '#' (it would read back as a comment)"
    } else if username.trim() != username {
        "username has leading or trailing whitespace"
    } else {
        return Ok(());
    };
    Err(PasswordFileError::new(0, problem))
}

#[cfg(test)]
mod tests;
