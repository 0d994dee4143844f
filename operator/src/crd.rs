//! The `MqttCluster` resource (`rookery.dev/v1alpha1`): what a user writes, and the status the
//! operator reports. `rookery-operator crdgen` turns these types into `crds/`.
//!
//! Every field has a default that makes sense for a production cluster, so the smallest valid
//! resource is `spec: {}`: three brokers with the embedded store, plain MQTT behind an HAProxy
//! LoadBalancer, anonymous clients refused unless `auth.allowAnonymous` says otherwise.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every Rookery resource.
pub const GROUP: &str = "rookery.dev";

/// The most broker nodes one cluster may have (the schema's bound on `replicas`; HAProxy has a
/// server slot for each).
pub const MAX_REPLICAS: i32 = 64;

/// A clustered MQTT broker: brokers in a StatefulSet behind HAProxy, with optional TLS, Redis and
/// PostgreSQL.
// Each `printcolumn(...)` repeats the same keys, which clippy takes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "rookery.dev",
    version = "v1alpha1",
    kind = "MqttCluster",
    plural = "mqttclusters",
    shortname = "mqc",
    category = "rookery",
    namespaced,
    status = "MqttClusterStatus",
    derive = "PartialEq",
    doc = "A clustered MQTT broker: brokers in a StatefulSet behind HAProxy, with TLS, authentication, ACLs and durable state.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Connections",
        type_ = "integer",
        json_path = ".status.connections"
    ),
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".status.endpoints[0]"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MqttClusterSpec {
    /// Number of broker nodes.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 64))]
    pub replicas: i32,
    /// Broker image; defaults to the image of the operator's own release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// `Always`, `IfNotPresent` or `Never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// Secrets for pulling the images.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Requests and limits of each broker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The volume of each broker's embedded store.
    #[serde(default)]
    pub storage: StorageSpec,
    /// Node selector of the broker pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Affinity of the broker pods; without it, brokers prefer distinct nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Tolerations of the broker pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Spread constraints of the broker pods; without them, brokers spread across nodes and
    /// zones where they can.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// The PodDisruptionBudget of the brokers.
    #[serde(default)]
    pub pod_disruption_budget: PodDisruptionBudgetSpec,
    /// Which MQTT listeners are open, and on which ports.
    #[serde(default)]
    pub listeners: ListenersSpec,
    /// The HAProxy load balancer in front of the brokers.
    #[serde(default)]
    pub load_balancer: LoadBalancerSpec,
    /// Server certificates of the TLS listeners and client certificate checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Who may connect.
    #[serde(default)]
    pub auth: AuthSpec,
    /// What each client may publish and subscribe to (Mosquitto ACL format).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl: Option<AclSpec>,
    /// Redis for sessions, PostgreSQL for retained messages and queues.
    #[serde(default)]
    pub persistence: PersistenceSpec,
    /// Limits applied by every broker.
    #[serde(default)]
    pub limits: LimitsSpec,
    /// The CoAP gateway.
    #[serde(default)]
    pub coap: CoapSpec,
    /// Prometheus scraping.
    #[serde(default)]
    pub monitoring: MonitoringSpec,
    /// Extra broker configuration in TOML, appended to what the operator writes; a key the
    /// operator sets itself is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
}

fn default_replicas() -> i32 {
    3
}

/// Image pull policy.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    /// Pull every time a container starts.
    Always,
    /// Pull when the node does not have the image.
    IfNotPresent,
    /// Never pull.
    Never,
}

impl PullPolicy {
    /// The name Kubernetes uses.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// The embedded store's volume.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// `false` keeps the embedded store on an `emptyDir`: what Redis and PostgreSQL do not hold
    /// is lost when a pod moves.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Size of each broker's PersistentVolumeClaim.
    #[serde(default = "default_storage_size")]
    pub size: String,
    /// StorageClass of the claims; the cluster's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            enabled: true,
            size: default_storage_size(),
            storage_class_name: None,
        }
    }
}

fn default_storage_size() -> String {
    "1Gi".to_owned()
}

fn yes() -> bool {
    true
}

/// The brokers' PodDisruptionBudget.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodDisruptionBudgetSpec {
    /// Create the PodDisruptionBudget.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Brokers that voluntary disruptions may take down at once.
    #[serde(default = "one")]
    #[schemars(range(min = 1))]
    pub max_unavailable: i32,
}

impl Default for PodDisruptionBudgetSpec {
    fn default() -> Self {
        PodDisruptionBudgetSpec {
            enabled: true,
            max_unavailable: 1,
        }
    }
}

fn one() -> i32 {
    1
}

/// The four kinds of MQTT listener.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ListenersSpec {
    /// Plain MQTT (default: on, 1883).
    #[serde(default = "default_mqtt")]
    pub mqtt: ListenerSpec,
    /// MQTT over TLS (default: off, 8883); needs `tls`.
    #[serde(default = "default_mqtts")]
    pub mqtts: ListenerSpec,
    /// MQTT over WebSocket (default: off, 8083).
    #[serde(default = "default_ws")]
    pub ws: ListenerSpec,
    /// MQTT over secure WebSocket (default: off, 8084); needs `tls`.
    #[serde(default = "default_wss")]
    pub wss: ListenerSpec,
    /// HTTP path of the WebSocket endpoint.
    #[serde(default = "default_ws_path")]
    pub ws_path: String,
}

impl Default for ListenersSpec {
    fn default() -> Self {
        ListenersSpec {
            mqtt: default_mqtt(),
            mqtts: default_mqtts(),
            ws: default_ws(),
            wss: default_wss(),
            ws_path: default_ws_path(),
        }
    }
}

fn default_mqtt() -> ListenerSpec {
    ListenerSpec {
        enabled: true,
        port: 1883,
    }
}
fn default_mqtts() -> ListenerSpec {
    ListenerSpec {
        enabled: false,
        port: 8883,
    }
}
fn default_ws() -> ListenerSpec {
    ListenerSpec {
        enabled: false,
        port: 8083,
    }
}
fn default_wss() -> ListenerSpec {
    ListenerSpec {
        enabled: false,
        port: 8084,
    }
}
fn default_ws_path() -> String {
    "/mqtt".to_owned()
}

/// One listener: on or off, and the port the load balancer serves it on.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ListenerSpec {
    /// Open this listener.
    pub enabled: bool,
    /// Port of the load balancer's Service (the brokers keep the standard ports).
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// The HAProxy load balancer.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerSpec {
    /// HAProxy replicas.
    #[serde(default = "default_lb_replicas")]
    #[schemars(range(min = 1, max = 16))]
    pub replicas: i32,
    /// HAProxy image; defaults to the one of the operator's release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Type of the client-facing Service.
    #[serde(default)]
    pub service_type: ServiceType,
    /// Annotations of the client-facing Service (cloud load balancer settings).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// CIDRs allowed to reach the LoadBalancer Service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub load_balancer_source_ranges: Vec<String>,
    /// Send a plain-MQTT client back to the same broker on reconnect (stickiness on the client
    /// id); TLS and WebSocket clients are balanced by least connections.
    #[serde(default = "yes")]
    pub sticky: bool,
    /// Requests and limits of each HAProxy container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

impl Default for LoadBalancerSpec {
    fn default() -> Self {
        LoadBalancerSpec {
            replicas: default_lb_replicas(),
            image: None,
            service_type: ServiceType::default(),
            annotations: BTreeMap::new(),
            load_balancer_source_ranges: Vec::new(),
            sticky: true,
            resources: None,
        }
    }
}

fn default_lb_replicas() -> i32 {
    2
}

/// Type of the client-facing Service.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ServiceType {
    /// A cloud load balancer (the default).
    #[default]
    LoadBalancer,
    /// A port on every node.
    NodePort,
    /// Reachable inside the cluster only.
    ClusterIP,
}

impl ServiceType {
    /// The name Kubernetes uses.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::LoadBalancer => "LoadBalancer",
            ServiceType::NodePort => "NodePort",
            ServiceType::ClusterIP => "ClusterIP",
        }
    }
}

/// Server certificates and client certificate checks. Exactly one source of the server
/// certificate: `secretName`, `certManager` or `selfSigned`.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.secretName), has(self.certManager), has(self.selfSigned)].filter(x, x).size() == 1").message("tls: set exactly one of secretName, certManager, selfSigned"))]
pub struct TlsSpec {
    /// A `kubernetes.io/tls` Secret you manage (`tls.crt`, `tls.key`, optionally `ca.crt` for
    /// client certificates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Have cert-manager issue the certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_manager: Option<CertManagerSpec>,
    /// Have the operator make a CA and a server certificate, and renew them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_signed: Option<SelfSignedSpec>,
    /// Extra DNS names of the server certificate (the Services' names are always in it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
    /// Client certificates: `none`, `optional` (checked when presented) or `required` (mutual
    /// TLS).
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// A Secret whose `ca.crt` client certificates must chain to; defaults to the `ca.crt` of
    /// the server certificate's Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_secret_name: Option<String>,
    /// Use this part of a verified client certificate as the username.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_identity: Option<CertIdentity>,
}

/// cert-manager issues the server certificate.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CertManagerSpec {
    /// The Issuer or ClusterIssuer.
    pub issuer_ref: IssuerRef,
}

/// A cert-manager issuer.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// Name of the issuer.
    pub name: String,
    /// `Issuer` or `ClusterIssuer`.
    #[serde(default = "default_issuer_kind")]
    pub kind: String,
    /// API group of the issuer.
    #[serde(default = "default_issuer_group")]
    pub group: String,
}

fn default_issuer_kind() -> String {
    "Issuer".to_owned()
}
fn default_issuer_group() -> String {
    "cert-manager.io".to_owned()
}

/// The operator makes and renews the CA and server certificate.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SelfSignedSpec {
    /// Validity of the server certificate.
    #[serde(default = "default_validity_days")]
    #[schemars(range(min = 2, max = 3650))]
    pub validity_days: i32,
    /// Renew this many days before expiry.
    #[serde(default = "default_renew_days")]
    #[schemars(range(min = 1))]
    pub renew_before_days: i32,
}

fn default_validity_days() -> i32 {
    90
}
fn default_renew_days() -> i32 {
    30
}

/// Client certificate policy.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum ClientAuth {
    /// Client certificates are not asked for.
    #[default]
    None,
    /// Checked when presented.
    Optional,
    /// Mutual TLS: no valid certificate, no connection.
    Required,
}

/// Part of a client certificate used as the username.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertIdentity {
    /// The subject's common name.
    #[serde(rename = "cn")]
    Cn,
    /// The first DNS subject alternative name.
    #[serde(rename = "san-dns")]
    SanDns,
    /// The first URI subject alternative name.
    #[serde(rename = "san-uri")]
    SanUri,
    /// The whole subject.
    #[serde(rename = "subject")]
    Subject,
}

impl CertIdentity {
    /// The broker's name for it (`cert_identity`).
    pub fn as_str(self) -> &'static str {
        match self {
            CertIdentity::Cn => "cn",
            CertIdentity::SanDns => "san-dns",
            CertIdentity::SanUri => "san-uri",
            CertIdentity::Subject => "subject",
        }
    }
}

/// Who may connect.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// A Secret key holding a Mosquitto-format password file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// Users whose plain passwords are in Secrets; the operator hashes them into the
    /// brokers' password file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<UserSpec>,
    /// Let clients without credentials in. Unset: only when no password and no client
    /// certificate authority is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_anonymous: Option<bool>,
}

/// A user whose password the operator hashes.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UserSpec {
    /// User name.
    #[schemars(length(min = 1))]
    pub name: String,
    /// The Secret key holding the plain password.
    pub password_secret_ref: SecretKeyRef,
}

/// A key of a Secret in the cluster's namespace.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key in the Secret.
    #[schemars(length(min = 1))]
    pub key: String,
}

/// A Mosquitto ACL, inline or from a ConfigMap. Exactly one of the two.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.inline) != has(self.configMapRef)").message("acl: set exactly one of inline, configMapRef"))]
pub struct AclSpec {
    /// The ACL text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
    /// A ConfigMap key holding the ACL text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<ConfigMapKeyRef>,
}

/// A key of a ConfigMap in the cluster's namespace.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKeyRef {
    /// Name of the ConfigMap.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key in the ConfigMap.
    #[schemars(length(min = 1))]
    pub key: String,
}

/// Durable state shared by the nodes.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PersistenceSpec {
    /// Redis for sessions (client id ownership, subscriptions, expiry); without it sessions
    /// live in each broker's embedded store and move with hand-over only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSpec>,
    /// PostgreSQL for retained messages and queued QoS 1/2 messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresSpec>,
    /// `sync`: a QoS 1/2 message is acknowledged once committed; `async`: at once, committed
    /// within milliseconds.
    #[serde(default)]
    pub durability: Durability,
}

/// When an acknowledged message is on disk.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum Durability {
    /// Acknowledged after the commit.
    #[default]
    Sync,
    /// Acknowledged at once, committed every few milliseconds.
    Async,
}

impl Durability {
    /// The broker's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Sync => "sync",
            Durability::Async => "async",
        }
    }
}

/// Redis, run by the operator or yours. Exactly one of `managed` and `external`.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.managed) != has(self.external)").message("redis: set exactly one of managed, external"))]
pub struct RedisSpec {
    /// The operator runs Redis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedRedis>,
    /// Your Redis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalStore>,
}

/// Redis run by the operator.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.replicas == 1 || self.replicas == 3").message("redis.managed.replicas must be 1 or 3"))]
pub struct ManagedRedis {
    /// 1: a single Redis; 3: a primary, two replicas and Sentinel on each.
    #[serde(default = "one")]
    pub replicas: i32,
    /// Redis image; defaults to the one of the operator's release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Size of each Redis volume.
    #[serde(default = "default_storage_size")]
    pub storage_size: String,
    /// StorageClass of the volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Requests and limits of each Redis container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// PostgreSQL, run by the operator or yours. Exactly one of `managed` and `external`.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.managed) != has(self.external)").message("postgres: set exactly one of managed, external"))]
pub struct PostgresSpec {
    /// The operator runs PostgreSQL (a CloudNativePG `Cluster` when that operator is
    /// installed, a single StatefulSet otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedPostgres>,
    /// Your PostgreSQL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalStore>,
}

/// PostgreSQL run by the operator.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManagedPostgres {
    /// Instances under CloudNativePG (a single StatefulSet ignores more than one).
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 9))]
    pub instances: i32,
    /// PostgreSQL image; defaults to the one of the operator's release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Size of each PostgreSQL volume.
    #[serde(default = "default_pg_storage_size")]
    pub storage_size: String,
    /// StorageClass of the volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Requests and limits of each PostgreSQL container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

fn default_pg_storage_size() -> String {
    "10Gi".to_owned()
}

/// A store you run: its URL is in a Secret.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExternalStore {
    /// The Secret key holding the URL (`redis://`, `redis+sentinel://`, `postgres://`).
    pub url_secret_ref: SecretKeyRef,
}

/// Limits every broker applies; unset fields keep the broker's defaults.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LimitsSpec {
    /// Open connections per listener per broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_connections: Option<i64>,
    /// Largest packet accepted, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 64, max = 268435455))]
    pub max_packet_size: Option<i64>,
    /// Outgoing QoS 1/2 messages in flight per client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub max_inflight: Option<i64>,
    /// Messages queued per session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_queued_messages: Option<i64>,
    /// Bytes queued per session (0: no byte limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_queued_bytes: Option<i64>,
    /// At the queue limit: drop the new message, drop the oldest, or disconnect the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_overflow: Option<QueueOverflow>,
    /// PUBLISH packets per second per client (0: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub publish_rate_limit: Option<i64>,
    /// PUBLISH payload bytes per second per client (0: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub publish_byte_rate_limit: Option<i64>,
    /// New connections per second per listener per broker (0: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_connection_rate: Option<i64>,
    /// Bytes of queued messages per broker at which publishers are paused (0: half the
    /// container's memory limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub memory_high_watermark: Option<i64>,
}

/// The queue overflow policy.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum QueueOverflow {
    /// Keep the oldest.
    DropNew,
    /// Keep the newest.
    DropOldest,
    /// Close a slow client.
    Disconnect,
}

impl QueueOverflow {
    /// The broker's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueOverflow::DropNew => "drop-new",
            QueueOverflow::DropOldest => "drop-oldest",
            QueueOverflow::Disconnect => "disconnect",
        }
    }
}

/// The CoAP gateway.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.plain || has(self.dtls)").message("coap: plain: false needs dtls (the gateway would serve nothing)"))]
pub struct CoapSpec {
    /// Open the gateway (UDP).
    #[serde(default)]
    pub enabled: bool,
    /// UDP port of the gateway's Service.
    #[serde(default = "default_coap_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Annotations of the gateway's Service (a cloud load balancer for UDP usually needs its
    /// own; the TCP load balancer's are not copied, since an address annotation there would
    /// make two Services claim one address).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Serve plain CoAP (`coap://`) on `port`; false serves DTLS only.
    #[serde(default = "yes")]
    pub plain: bool,
    /// CoAP over DTLS with pre-shared keys (`coaps://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtls: Option<CoapDtlsSpec>,
}

impl Default for CoapSpec {
    fn default() -> Self {
        CoapSpec {
            enabled: false,
            port: default_coap_port(),
            annotations: BTreeMap::new(),
            plain: true,
            dtls: None,
        }
    }
}

/// The CoAP gateway's DTLS listener.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CoapDtlsSpec {
    /// The Secret key holding the pre-shared keys: `identity:hexkey` lines, the format of
    /// Mosquitto's `psk_file`. The identity is the device id and its username for the ACL.
    /// The brokers re-read it when the Secret changes.
    pub psk_secret_ref: SecretKeyRef,
    /// UDP port of `coaps://` on the gateway's Service.
    #[serde(default = "default_coaps_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

fn default_coap_port() -> i32 {
    5683
}

fn default_coaps_port() -> i32 {
    5684
}

/// Prometheus scraping.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// Create a ServiceMonitor (when the Prometheus Operator's CRD is installed).
    #[serde(default)]
    pub service_monitor: bool,
    /// Scrape interval of the ServiceMonitor, e.g. `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
}

/// What the operator observed.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MqttClusterStatus {
    /// `Pending`, `Running`, `Progressing`, `Degraded` or `Invalid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// `Ready`, `Progressing`, `Degraded`, `ConfigValid`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Broker pods that exist.
    #[serde(default)]
    pub replicas: i32,
    /// Broker pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the broker pods (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Client connections over all brokers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<i64>,
    /// Each broker as its admin API reports it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeStatus>,
    /// Where clients connect (`host:port` per listener).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// When the server certificate expires (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_expiry: Option<String>,
    /// How PostgreSQL and Redis are run (e.g. "postgres: single StatefulSet, CloudNativePG not
    /// installed").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// One broker.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// Pod name, which is the broker's node id.
    pub name: String,
    /// The pod is ready.
    pub ready: bool,
    /// Client connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<i64>,
    /// Sessions, online and offline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<i64>,
    /// Messages queued for sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_messages: Option<i64>,
    /// The broker is draining.
    #[serde(default)]
    pub draining: bool,
}

/// The files `rookery-operator crdgen` writes into `crds/`: file name and YAML text.
pub fn crd_files() -> Result<Vec<(String, String)>, serde_yaml::Error> {
    use kube::CustomResourceExt;
    let crd = MqttCluster::crd();
    let name = crd.metadata.name.clone().unwrap_or_default();
    let text = format!(
        "# Generated by `rookery-operator crdgen` from operator/src/crd.rs: do not edit.\n{}",
        serde_yaml::to_string(&crd)?
    );
    Ok(vec![(format!("{name}.yaml"), text)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn crds_in_the_repository_are_up_to_date() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
        for (name, text) in crd_files().unwrap() {
            let on_disk = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
            assert!(
                on_disk == text,
                "crds/{name} is stale: run `cargo run -p rookery-operator -- crdgen` and `scripts/sync-chart`"
            );
        }
    }

    #[test]
    fn the_smallest_resource_is_an_empty_spec() {
        let spec: MqttClusterSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(spec.replicas, 3);
        assert!(spec.listeners.mqtt.enabled);
        assert_eq!(spec.listeners.mqtt.port, 1883);
        assert!(!spec.listeners.mqtts.enabled);
        assert_eq!(spec.load_balancer.service_type, ServiceType::LoadBalancer);
        assert!(spec.storage.enabled);
        assert_eq!(spec.persistence.durability, Durability::Sync);
    }

    #[test]
    fn the_crd_has_status_scale_printer_columns_and_cel_rules() {
        let crd = serde_json::to_value(MqttCluster::crd()).unwrap();
        let v = &crd["spec"]["versions"][0];
        assert_eq!(crd["spec"]["group"], "rookery.dev");
        assert_eq!(v["name"], "v1alpha1");
        assert_eq!(
            v["subresources"]["scale"]["specReplicasPath"],
            ".spec.replicas"
        );
        assert!(v["subresources"]["status"].is_object());
        assert!(v["additionalPrinterColumns"].as_array().unwrap().len() >= 5);
        let text = crd.to_string();
        for rule in [
            "tls: set exactly one",
            "acl: set exactly one",
            "redis: set exactly one",
        ] {
            assert!(text.contains(rule), "{rule}");
        }
    }
}
