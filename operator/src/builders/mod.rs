//! Pure builders: each takes what the cluster asks for and returns the desired object.
//!
//! One file per kind of object the operator owns. Builders do no I/O: what they need from the
//! outside world (images, the DNS domain, which optional CRDs exist, generated key material)
//! comes in as [`Environment`] or as arguments.

pub mod certificate;
pub mod config;
pub mod haproxy;
pub mod load_balancer;
pub mod meta;
pub mod network_policy;
pub mod pdb;
pub mod postgres;
pub mod redis;
pub mod secrets;
pub mod service_monitor;
pub mod services;
pub mod statefulset;

/// What the builders need to know about the Kubernetes cluster and the operator's release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    /// The broker image when the spec names none.
    pub broker_image: String,
    /// The HAProxy image when the spec names none.
    pub haproxy_image: String,
    /// The Redis image of managed Redis.
    pub redis_image: String,
    /// The PostgreSQL image of a managed PostgreSQL StatefulSet.
    pub postgres_image: String,
    /// The Kubernetes cluster's DNS domain.
    pub domain: String,
    /// The Prometheus Operator's ServiceMonitor CRD is installed.
    pub service_monitor_crd: bool,
    /// cert-manager's Certificate CRD is installed.
    pub cert_manager_crd: bool,
    /// CloudNativePG's Cluster CRD is installed.
    pub cnpg_crd: bool,
}

impl Default for Environment {
    fn default() -> Self {
        let v = env!("CARGO_PKG_VERSION");
        Environment {
            broker_image: format!("rookery/broker:{v}"),
            haproxy_image: format!("rookery/haproxy:{v}"),
            redis_image: format!("rookery/redis:{v}"),
            postgres_image: format!("rookery/postgres:{v}"),
            domain: "cluster.local".into(),
            service_monitor_crd: false,
            cert_manager_crd: false,
            cnpg_crd: false,
        }
    }
}
