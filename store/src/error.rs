//! Store errors.

use std::path::PathBuf;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached (connection refused or lost, timeout): worth retrying.
    #[error("{store} store unavailable: {message}")]
    Unavailable {
        /// Which store.
        store: &'static str,
        /// What happened.
        message: String,
    },
    /// Stored data cannot be read: never start empty over it.
    #[error("{store} store data in {path} is unreadable: {message}")]
    Corrupt {
        /// Which store.
        store: &'static str,
        /// The file or key.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Any other failure.
    #[error("{store} store: {message}")]
    Other {
        /// Which store.
        store: &'static str,
        /// What happened.
        message: String,
    },
}

impl StoreError {
    /// True when retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}

/// Result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;
