//! Where messages go: topic rules, the subscription trie, retained messages, routes between
//! nodes. Plain data, no I/O (`local` announces route changes through the cluster's queues).

pub mod local;
pub mod retained;
pub mod routes;
pub mod topic;
pub mod trie;
