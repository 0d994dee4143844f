//! Where messages go: topic rules, the subscription trie, retained messages. Plain data, no I/O.

pub mod retained;
pub mod topic;
pub mod trie;
