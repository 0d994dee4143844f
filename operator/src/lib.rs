//! Rookery's operator: it turns one `MqttCluster` resource into a running broker cluster.
//!
//! Map of the crate:
//! - [`crd`]: the `MqttCluster` resource, spec and status, from which `crds/` is generated.
//! - [`validate`]: checks of a spec that the schema cannot express; each error names its field.
//! - [`inputs`], [`passwords`], [`pki`]: what the builders take from Secrets, and the key
//!   material and password hashes the operator makes.
//! - [`builders`]: one pure function per object the operator owns (desired state as data, no
//!   I/O), unit tested and also run as-is by the container and process tests.
//! - [`controller`]: the reconcile loop (apply what differs, prune, read back, status);
//!   [`rollout`] steps upgrades pod by pod, [`status`] computes the status, [`leader`] elects one replica, [`http`] serves health
//!   and metrics.
//! - [`render`]: every object of one cluster, in apply order (what `rookery-operator render`
//!   prints).

pub mod builders;
pub mod controller;
pub mod crd;
pub mod http;
pub mod inputs;
pub mod leader;
pub mod passwords;
pub mod pki;
pub mod render;
pub mod rollout;
pub mod status;
pub mod validate;
