//! Authentication and authorization logic with no I/O: Mosquitto-compatible password files and
//! ACL files, and the trackers behind failed-attempt limits and flapping bans.
//!
//! - [`password`]: password files (`username:hash` lines; `$6$`, `$7$` and Argon2id hashes).
//! - [`acl`]: ACL files (`user`, `topic` and `pattern` rules) and the topic-filter relations
//!   behind them.
//! - [`psk`]: pre-shared key files (`identity:hexkey` lines, as Mosquitto's `psk_file`).
//! - [`tracker`]: counting events per key in a window and banning keys that exceed a limit.
//!
//! Time is passed in as [`std::time::Instant`]; nothing here spawns, sleeps or reads files.

pub mod acl;
pub mod password;
pub mod psk;
pub mod tracker;

pub use acl::{Acl, AclFileError, Subject, SubscribeDecision};
pub use password::{PasswordFile, PasswordFileError, Scheme, Verify};
pub use psk::{PskFile, PskFileError};
pub use tracker::{Tracker, TrackerConfig};
