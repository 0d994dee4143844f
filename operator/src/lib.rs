//! Rookery's operator: it turns one `MqttCluster` resource into a running broker cluster.
//!
//! Map of the crate:
//! - [`builders`]: one pure function per object the operator owns (desired state as data, no
//!   I/O), unit tested and also run as-is by the container and process tests.

pub mod builders;
