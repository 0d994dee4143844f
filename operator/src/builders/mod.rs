//! Pure builders: each takes what the cluster asks for and returns the desired object.

pub mod haproxy;
