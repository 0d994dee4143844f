//! Pre-shared key files, in the format of Mosquitto's `psk_file`: one `identity:key` line per
//! client, the key in hexadecimal.
//!
//! ```text
//! # sensors of building 7
//! sensor-0001:0f1e2d3c4b5a69788796a5b4c3d2e1f0
//! sensor-0002:00112233445566778899aabbccddeeff
//! ```
//!
//! Rules, as Mosquitto reads the file, and where we are stricter:
//!
//! - Blank lines and lines starting with `#` are skipped; a trailing `\r` is ignored.
//! - The identity is everything before the first `:`; it may not be empty or contain NUL.
//! - The key is hexadecimal (either case) of 1 to [`MAX_KEY_LEN`] bytes. Mosquitto hands the
//!   text to OpenSSL's `BN_hex2bn`, which also takes an odd number of digits (and drops leading
//!   zero bytes); here an odd count or a non-hex character is an error naming the line, so that
//!   a typo cannot silently change a device's key.
//! - Duplicate identities: the last line wins, as in Mosquitto.
//!
//! Keys never appear in messages or in `Debug` output.

use std::fmt;

use indexmap::IndexMap;

/// Longest key accepted, in bytes (OpenSSL's `PSK_MAX_PSK_LEN`).
pub const MAX_KEY_LEN: usize = 256;
/// Longest identity accepted, in bytes (RFC 4279 allows 65535; nothing real comes close).
pub const MAX_IDENTITY_LEN: usize = 1024;

/// An error in a PSK file. The message never contains a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PskFileError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for PskFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for PskFileError {}

struct Entry {
    key: Vec<u8>,
    line: usize,
}

/// A parsed PSK file.
#[derive(Default)]
pub struct PskFile {
    entries: IndexMap<String, Entry>,
}

impl fmt::Debug for PskFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PskFile")
            .field("identities", &self.entries.len())
            .finish()
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes a hex key; the error says what is wrong without repeating the key.
fn decode_key(text: &str) -> Result<Vec<u8>, String> {
    let bytes = text.as_bytes();
    if bytes.is_empty() {
        return Err("empty key".into());
    }
    if !bytes.len().is_multiple_of(2) {
        return Err(format!(
            "the key has {} hex digits: an even number is needed",
            bytes.len()
        ));
    }
    if bytes.len() / 2 > MAX_KEY_LEN {
        return Err(format!(
            "the key is {} bytes long: at most {MAX_KEY_LEN}",
            bytes.len() / 2
        ));
    }
    bytes
        .chunks_exact(2)
        .enumerate()
        .map(|(i, pair)| match (hex_digit(pair[0]), hex_digit(pair[1])) {
            (Some(hi), Some(lo)) => Ok((hi << 4) | lo),
            _ => Err(format!(
                "the key is not hexadecimal (a bad digit at position {})",
                2 * i + usize::from(hex_digit(pair[0]).is_some()) + 1
            )),
        })
        .collect()
}

impl PskFile {
    /// Parses the text of a PSK file.
    pub fn parse(text: &str) -> Result<PskFile, PskFileError> {
        let mut entries = IndexMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let err = |message: String| PskFileError { line, message };
            let l = raw.strip_suffix('\r').unwrap_or(raw);
            if l.trim().is_empty() || l.starts_with('#') {
                continue;
            }
            let Some((identity, key)) = l.split_once(':') else {
                return Err(err("expected identity:hexkey".into()));
            };
            if identity.is_empty() {
                return Err(err("empty identity".into()));
            }
            if identity.contains('\0') {
                return Err(err("the identity contains a NUL byte".into()));
            }
            if identity.len() > MAX_IDENTITY_LEN {
                return Err(err(format!(
                    "the identity is {} bytes long: at most {MAX_IDENTITY_LEN}",
                    identity.len()
                )));
            }
            let key = decode_key(key.trim_end()).map_err(err)?;
            entries.insert(identity.to_owned(), Entry { key, line });
        }
        Ok(PskFile { entries })
    }

    /// The key of `identity`, when the file has one.
    pub fn key(&self, identity: &str) -> Option<&[u8]> {
        self.entries.get(identity).map(|e| e.key.as_slice())
    }

    /// True when the file has a key for `identity`.
    pub fn contains(&self, identity: &str) -> bool {
        self.entries.contains_key(identity)
    }

    /// Number of identities.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the file has no identity.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Each identity with the line that defines it, in file order.
    pub fn identities(&self) -> impl Iterator<Item = (&str, usize)> {
        self.entries.iter().map(|(id, e)| (id.as_str(), e.line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_identities_and_keys() {
        let f = PskFile::parse("# comment\n\nsensor-1:0F1e\r\nsensor-2:00ff\nsensor-1:aa\n  \n")
            .unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f.key("sensor-1"), Some(&[0xaa][..]), "the last line wins");
        assert_eq!(f.key("sensor-2"), Some(&[0x00, 0xff][..]));
        assert_eq!(f.key("sensor-3"), None);
        assert!(f.contains("sensor-2"));
        assert_eq!(
            f.identities().collect::<Vec<_>>(),
            [("sensor-1", 5), ("sensor-2", 4)]
        );
        assert!(PskFile::parse("").unwrap().is_empty());
    }

    #[test]
    fn identities_may_hold_anything_but_colon_and_nul() {
        let f = PskFile::parse("a b=c@d:01\n").unwrap();
        assert_eq!(f.key("a b=c@d"), Some(&[1][..]));
        // Everything after the first colon is the key, so it must be hex.
        assert!(PskFile::parse("a:b:01\n").is_err());
    }

    #[test]
    fn errors_name_the_line_and_never_the_key() {
        for (text, line, words) in [
            ("ok:00\nno-colon\n", 2, "identity:hexkey"),
            (":00\n", 1, "empty identity"),
            ("a\0b:00\n", 1, "NUL"),
            ("a:\n", 1, "empty key"),
            ("a:abc\n", 1, "even number"),
            ("a:secretzz\n", 1, "not hexadecimal"),
        ] {
            let e = PskFile::parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}");
            assert!(e.message.contains(words), "{text:?}: {e}");
            assert!(!e.to_string().contains("secret"), "{e}");
        }
        let long = format!("a:{}\n", "00".repeat(MAX_KEY_LEN + 1));
        assert!(
            PskFile::parse(&long)
                .unwrap_err()
                .message
                .contains("at most")
        );
        let long = format!("{}:00\n", "i".repeat(MAX_IDENTITY_LEN + 1));
        assert!(
            PskFile::parse(&long)
                .unwrap_err()
                .message
                .contains("at most")
        );
    }

    #[test]
    fn debug_output_hides_keys() {
        let f = PskFile::parse("dev:deadbeef\n").unwrap();
        let shown = format!("{f:?}");
        assert!(!shown.contains("de") || !shown.contains("ad"), "{shown}");
        assert_eq!(shown, "PskFile { identities: 1 }");
    }
}
