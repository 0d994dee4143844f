//! Managed Redis (`persistence.redis.managed`): the Secret holding its password and the
//! brokers' URL, the Services, the StatefulSet and, with Sentinel, a ConfigMap of its start
//! script.
//!
//! For an `MqttCluster` named `iot`, everything is named `iot-redis`:
//!
//! - `replicas: 1`: one pod (`iot-redis-0`) with a volume for the append-only file, behind the
//!   ClusterIP Service `iot-redis`; the brokers' URL is
//!   `redis://:PASSWORD@iot-redis.<ns>.svc.<domain>:6379/0`.
//! - `replicas: 3`: three pods, each running redis-server and a Sentinel beside it. Pod names
//!   come from the headless Service `iot-redis-nodes` (which publishes pods that are not ready
//!   yet, so that replicas and Sentinels can reach a starting pod). At start a pod asks the
//!   Sentinels which pod is the primary (after a failover it is no longer pod 0) and falls
//!   back to pod 0 when none answers. The brokers' URL is
//!   `redis+sentinel://:PASSWORD@iot-redis.<ns>.svc.<domain>:26379/rookery`: the store asks a
//!   Sentinel for the primary and follows failovers.
//!
//! The password never appears in the pod spec: containers take it from the Secret as the
//! environment variable `REDIS_PASSWORD`. Sentinels themselves take no password (the store
//! connects to them without one); the NetworkPolicy of [`super::network_policy`] lets only the
//! brokers and Redis's own pods reach them.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort,
    EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction, ObjectFieldSelector,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec,
    Probe, ResourceRequirements, SeccompProfile, Secret, SecretKeySelector, SecurityContext,
    Service, ServicePort, ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Environment;
use super::meta::{Component, Names, object_meta, ports, selector, selector_labels};
use super::statefulset::{CONFIG_HASH, config_hash};
use crate::crd::MqttCluster;

/// The uid and gid Redis runs as (the release image's `redis` user should have them). Redis
/// needs no account for its uid, and the volume is writable through `fsGroup`, so any image
/// whose Redis runs as a non-root user works.
pub const REDIS_UID: i64 = 999;

/// The name the Sentinels monitor the primary under (the service of the brokers' URL).
pub const MASTER_NAME: &str = "rookery";

/// Sentinels that must agree that the primary is down before one fails it over.
pub const QUORUM: u32 = 2;

/// Pods of a managed Redis with Sentinel.
pub const SENTINEL_PODS: i32 = 3;

/// Key of the password in the Secret.
pub const PASSWORD_KEY: &str = "password";

/// Key of the brokers' URL in the Secret.
pub const URL_KEY: &str = "url";

/// Where the volume is mounted: the image's working directory, where Redis keeps its
/// append-only file.
pub const DATA_DIR: &str = "/data";

/// Where the ConfigMap (start script, Sentinel's base configuration) is mounted.
pub const CONFIG_DIR: &str = "/etc/rookery-redis";

/// Sentinel's writable directory: its configuration, which it rewrites as it learns.
pub const SENTINEL_DIR: &str = "/sentinel";

/// Key of the start script in the ConfigMap.
pub const START_KEY: &str = "start.sh";

/// Key of Sentinel's base configuration in the ConfigMap.
pub const SENTINEL_CONF_KEY: &str = "sentinel.conf";

/// The environment variable holding the password in every container.
pub const PASSWORD_ENV: &str = "REDIS_PASSWORD";

/// The start script of a pod with Sentinel (POSIX sh). `start.sh redis` runs redis-server,
/// `start.sh sentinel` the Sentinel; both first find the primary: the one a Sentinel names
/// when any answers, else pod 0.
const START_SCRIPT: &str = r##"#!/bin/sh
# Starts one container of a managed Redis with Sentinel (written by rookery-operator):
#   start.sh redis      redis-server, as the primary or as a replica of the primary
#   start.sh sentinel   the Sentinel, watching the primary
# The primary is the pod a Sentinel names when any answers (after a failover it is not pod 0),
# else pod 0 (a new set of pods, or no Sentinel left running).
# Environment: POD_NAME; REDIS_HEADLESS, the DNS name of the headless Service; REDIS_NODES,
# the DNS name of every pod, pod 0 first, separated by spaces; REDIS_PASSWORD.
set -eu

self="$POD_NAME.$REDIS_HEADLESS"

log() { echo "rookery-redis: $*" >&2; }

# Prints the DNS name of the primary.
primary() {
    for node in $REDIS_NODES; do
        answer=$(timeout 3 redis-cli -h "$node" -p 26379 --raw \
            sentinel get-master-addr-by-name rookery 2>/dev/null | head -n 1) || answer=
        # Only a pod of this set counts (not an error text, not an empty reply).
        for known in $REDIS_NODES; do
            if [ "$answer" = "$known" ]; then
                log "the Sentinel on $node names $answer as the primary"
                echo "$answer"
                return 0
            fi
        done
    done
    set -- $REDIS_NODES
    log "no Sentinel names a primary: pod 0 ($1) is the primary"
    echo "$1"
}

start_redis() {
    p=$(primary)
    set -- --port 6379 --dir /data --save "" --appendonly yes --appendfsync everysec \
        --requirepass "$REDIS_PASSWORD" --masterauth "$REDIS_PASSWORD" \
        --replica-announce-ip "$self" --replica-announce-port 6379
    if [ "$p" = "$self" ]; then
        log "starting as the primary"
    else
        log "starting as a replica of $p"
        set -- "$@" --replicaof "$p" 6379
    fi
    exec redis-server "$@"
}

start_sentinel() {
    conf=/sentinel/sentinel.conf
    if [ -s "$conf" ]; then
        # The container restarted in the same pod: keep what this Sentinel learned.
        log "keeping $conf"
    else
        p=$(primary)
        # Sentinel resolves the primary's name when it reads its configuration: wait until
        # the name resolves (a pod's name appears in DNS shortly after the pod gets its IP).
        tries=0
        until getent ahosts "$p" >/dev/null 2>&1; do
            tries=$((tries + 1))
            if [ "$tries" -ge 120 ]; then
                log "$p does not resolve"
                exit 1
            fi
            sleep 1
        done
        {
            cat /etc/rookery-redis/sentinel.conf
            echo "sentinel announce-ip $self"
            echo "sentinel announce-port 26379"
            echo "sentinel monitor rookery $p 6379 2"
            echo "sentinel auth-pass rookery $REDIS_PASSWORD"
            echo "sentinel down-after-milliseconds rookery 5000"
            echo "sentinel failover-timeout rookery 60000"
            echo "sentinel parallel-syncs rookery 1"
        } > "$conf.new"
        mv "$conf.new" "$conf"
        log "watching $p"
    fi
    exec redis-server "$conf" --sentinel
}

case "${1:-}" in
    redis) start_redis ;;
    sentinel) start_sentinel ;;
    *)
        log "usage: start.sh redis|sentinel"
        exit 2
        ;;
esac
"##;

/// Sentinel's base configuration; the start script copies it into [`SENTINEL_DIR`] and adds
/// the pod's own name and the primary to watch (`resolve-hostnames` must come before the
/// `monitor` line that names a host).
const SENTINEL_CONF: &str =
    "# Sentinel of a managed Redis (written by rookery-operator). start.sh copies this file
# into /sentinel, where Sentinel may rewrite it, and adds the pod's name and the primary.
port 26379
protected-mode no
dir /sentinel
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
";

/// Readiness: Redis answers PONG (not LOADING, not an error).
const READY: &str = r#"redis-cli -a "$REDIS_PASSWORD" --no-auth-warning ping | grep -q PONG"#;

/// Liveness: Redis answers, loading its data set counts.
const ALIVE: &str =
    r#"redis-cli -a "$REDIS_PASSWORD" --no-auth-warning ping | grep -qE 'PONG|LOADING'"#;

/// The Sentinel answers.
const SENTINEL_ALIVE: &str = "redis-cli -p 26379 ping | grep -q PONG";

/// Managed Redis's objects.
#[derive(Debug, Clone, PartialEq)]
pub struct ManagedRedis {
    /// The password and the brokers' URL ([`secret`]).
    pub secret: Secret,
    /// The start script and Sentinel's base configuration (with Sentinel only).
    pub config_map: Option<ConfigMap>,
    /// With Sentinel the headless Service, then the ClusterIP one; without, the ClusterIP
    /// Service alone.
    pub services: Vec<Service>,
    /// The Redis pods.
    pub statefulset: StatefulSet,
}

fn managed(c: &MqttCluster) -> Option<&crate::crd::ManagedRedis> {
    c.spec.persistence.redis.as_ref()?.managed.as_ref()
}

/// Managed Redis runs with Sentinel (`replicas: 3`).
pub fn with_sentinel(c: &MqttCluster) -> bool {
    managed(c).is_some_and(|m| m.replicas > 1)
}

/// The headless Service that names each Redis pod (with Sentinel): `<cluster>-redis-nodes`.
pub fn nodes_service(names: &Names) -> String {
    format!("{}-nodes", names.redis())
}

/// The DNS name of Redis pod `ordinal` under the headless Service.
pub fn pod_host(names: &Names, ordinal: i32) -> String {
    format!(
        "{}-{ordinal}.{}",
        names.redis(),
        names.service_host(&nodes_service(names))
    )
}

/// The brokers' URL of managed Redis. The password goes in as it is: the operator's
/// passwords come from [`crate::pki::token`], whose characters (`A-Z a-z 0-9 - _`) need no
/// percent-encoding (and the store's `redis+sentinel://` parser does not decode any).
pub fn redis_url(c: &MqttCluster, names: &Names, password: &str) -> String {
    let host = names.service_host(&names.redis());
    if with_sentinel(c) {
        format!(
            "redis+sentinel://:{password}@{host}:{}/{MASTER_NAME}",
            ports::SENTINEL
        )
    } else {
        format!("redis://:{password}@{host}:{}/0", ports::REDIS)
    }
}

/// The Secret `<cluster>-redis`: the password (`password`, what Redis requires) and the
/// brokers' URL (`url`, which they mount).
pub fn secret(c: &MqttCluster, names: &Names, password: &str) -> Secret {
    Secret {
        metadata: object_meta(c, names, names.redis(), Component::Redis),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            (
                PASSWORD_KEY.to_owned(),
                ByteString(password.as_bytes().to_vec()),
            ),
            (
                URL_KEY.to_owned(),
                ByteString(redis_url(c, names, password).into_bytes()),
            ),
        ])),
        ..Secret::default()
    }
}

/// Every object of managed Redis, or `None` when Redis is not managed.
pub fn managed_redis(
    c: &MqttCluster,
    names: &Names,
    env: &Environment,
    password: &str,
) -> Option<ManagedRedis> {
    let m = managed(c)?;
    let secret = secret(c, names, password);
    if with_sentinel(c) {
        let config_map = config_map(c, names);
        let hash = config_hash(&format!("{START_SCRIPT}\n{SENTINEL_CONF}"));
        Some(ManagedRedis {
            secret,
            config_map: Some(config_map),
            services: vec![
                headless_service(c, names),
                cluster_ip_service(
                    c,
                    names,
                    vec![tcp("redis", ports::REDIS), tcp("sentinel", ports::SENTINEL)],
                ),
            ],
            statefulset: sentinel_statefulset(c, names, env, m, &hash),
        })
    } else {
        Some(ManagedRedis {
            secret,
            config_map: None,
            services: vec![cluster_ip_service(
                c,
                names,
                vec![tcp("redis", ports::REDIS)],
            )],
            statefulset: single_statefulset(c, names, env, m),
        })
    }
}

/// The ConfigMap of a Redis with Sentinel: the start script and Sentinel's base
/// configuration.
fn config_map(c: &MqttCluster, names: &Names) -> ConfigMap {
    ConfigMap {
        metadata: object_meta(c, names, names.redis(), Component::Redis),
        data: Some(BTreeMap::from([
            (START_KEY.to_owned(), START_SCRIPT.to_owned()),
            (SENTINEL_CONF_KEY.to_owned(), SENTINEL_CONF.to_owned()),
        ])),
        ..ConfigMap::default()
    }
}

/// A TCP Service port aimed at the container port of the same name.
pub(super) fn tcp(name: &str, port: u16) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: port.into(),
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

/// The ClusterIP Service `<cluster>-redis` with `service_ports`. With Sentinel, its 6379
/// reaches any pod (replicas refuse writes): the brokers go through the Sentinels on 26379.
fn cluster_ip_service(c: &MqttCluster, names: &Names, service_ports: Vec<ServicePort>) -> Service {
    Service {
        metadata: object_meta(c, names, names.redis(), Component::Redis),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(names, Component::Redis)),
            ports: Some(service_ports),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The headless Service naming each pod of a Redis with Sentinel, ready or not.
fn headless_service(c: &MqttCluster, names: &Names) -> Service {
    Service {
        metadata: object_meta(c, names, nodes_service(names), Component::Redis),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(names, Component::Redis)),
            ports: Some(vec![
                tcp("redis", ports::REDIS),
                tcp("sentinel", ports::SENTINEL),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// An environment variable from a key of a Secret.
pub(super) fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                key: key.into(),
                name: secret.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn plain_env(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value),
        ..EnvVar::default()
    }
}

fn pod_name_env() -> EnvVar {
    EnvVar {
        name: "POD_NAME".into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.name".into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// A probe running `script` with `sh -c`.
pub(super) fn exec_probe(script: &str, period: i32, failures: i32) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(vec!["sh".into(), "-c".into(), script.into()]),
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(5),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

pub(super) fn container_port(name: &str, port: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port.into(),
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

pub(super) fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

pub(super) fn empty_dir(name: &str, medium: Option<&str>) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: medium.map(str::to_owned),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// A container that runs as `uid`, cannot gain privileges, has no capabilities and a
/// read-only root file system.
pub(super) fn restricted(uid: i64) -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        run_as_group: Some(uid),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

/// A pod whose volumes belong to group `uid`. Ownership is fixed only when the volume's root
/// does not match already (a recursive change on every start is slow on a large volume, and
/// would loosen the modes of files that must stay private, such as PostgreSQL's).
pub(super) fn pod_security(uid: i64) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        run_as_group: Some(uid),
        fs_group: Some(uid),
        fs_group_change_policy: Some("OnRootMismatch".into()),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

/// The claim template `data` of `size` in `storage_class`.
pub(super) fn data_claim(
    names: &Names,
    component: Component,
    size: &str,
    storage_class: Option<&String>,
) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("data".into()),
            labels: Some(selector_labels(names, component)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: storage_class.cloned(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".into(),
                    Quantity(size.to_owned()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

/// Claims stay when the StatefulSet goes or shrinks: the data outlives a mistake.
pub(super) fn retain_claims() -> StatefulSetPersistentVolumeClaimRetentionPolicy {
    StatefulSetPersistentVolumeClaimRetentionPolicy {
        when_deleted: Some("Retain".into()),
        when_scaled: Some("Retain".into()),
    }
}

/// The pod template's metadata: the component's labels, and the hash of the scripts when
/// there are any (a change restarts the pods).
pub(super) fn template_meta(names: &Names, component: Component, hash: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        labels: Some(super::meta::pod_labels(names, component)),
        annotations: hash.map(|h| BTreeMap::from([(CONFIG_HASH.to_owned(), h.to_owned())])),
        ..ObjectMeta::default()
    }
}

fn image(env: &Environment, m: &crate::crd::ManagedRedis) -> String {
    m.image.clone().unwrap_or_else(|| env.redis_image.clone())
}

/// The spec's image pull policy, for every pod the operator runs.
pub(super) fn pull_policy(c: &MqttCluster) -> Option<String> {
    c.spec.image_pull_policy.map(|p| p.as_str().to_owned())
}

/// The user's image pull secrets, for every pod the operator runs.
pub(super) fn pull_secrets(
    c: &MqttCluster,
) -> Option<Vec<k8s_openapi::api::core::v1::LocalObjectReference>> {
    (!c.spec.image_pull_secrets.is_empty()).then(|| c.spec.image_pull_secrets.clone())
}

/// The pod spec shared by both shapes.
fn pod_spec(
    c: &MqttCluster,
    containers: Vec<Container>,
    volumes: Vec<Volume>,
    affinity: Option<Affinity>,
) -> PodSpec {
    PodSpec {
        containers,
        volumes: (!volumes.is_empty()).then_some(volumes),
        affinity,
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(pod_security(REDIS_UID)),
        image_pull_secrets: pull_secrets(c),
        ..PodSpec::default()
    }
}

/// A single Redis: one pod, its volume, the password from the Secret.
fn single_statefulset(
    c: &MqttCluster,
    names: &Names,
    env: &Environment,
    m: &crate::crd::ManagedRedis,
) -> StatefulSet {
    let container = Container {
        name: "redis".into(),
        image: Some(image(env, m)),
        image_pull_policy: pull_policy(c),
        command: Some(vec!["redis-server".into()]),
        // `$(REDIS_PASSWORD)` is expanded by the kubelet from the container's environment:
        // the spec holds the variable's name, never the password.
        args: Some(
            [
                "--port",
                "6379",
                "--dir",
                DATA_DIR,
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--requirepass",
                "$(REDIS_PASSWORD)",
            ]
            .into_iter()
            .map(str::to_owned)
            .collect(),
        ),
        env: Some(vec![secret_env(PASSWORD_ENV, &names.redis(), PASSWORD_KEY)]),
        ports: Some(vec![container_port("redis", ports::REDIS)]),
        readiness_probe: Some(exec_probe(READY, 5, 2)),
        liveness_probe: Some(exec_probe(ALIVE, 10, 6)),
        resources: m.resources.clone(),
        volume_mounts: Some(vec![mount("data", DATA_DIR, false)]),
        security_context: Some(restricted(REDIS_UID)),
        ..Container::default()
    };
    StatefulSet {
        metadata: object_meta(c, names, names.redis(), Component::Redis),
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(names.redis()),
            selector: selector(names, Component::Redis),
            persistent_volume_claim_retention_policy: Some(retain_claims()),
            template: PodTemplateSpec {
                metadata: Some(template_meta(names, Component::Redis, None)),
                spec: Some(pod_spec(c, vec![container], Vec::new(), None)),
            },
            volume_claim_templates: Some(vec![data_claim(
                names,
                Component::Redis,
                &m.storage_size,
                m.storage_class_name.as_ref(),
            )]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

/// Small fixed requests of the Sentinel sidecar.
fn sentinel_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("10m".into())),
            ("memory".to_owned(), Quantity("16Mi".into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity("64Mi".into()),
        )])),
        ..ResourceRequirements::default()
    }
}

/// Three pods, each redis-server and a Sentinel, started by the ConfigMap's script.
fn sentinel_statefulset(
    c: &MqttCluster,
    names: &Names,
    env: &Environment,
    m: &crate::crd::ManagedRedis,
    hash: &str,
) -> StatefulSet {
    let nodes: Vec<String> = (0..SENTINEL_PODS).map(|i| pod_host(names, i)).collect();
    let script_env = vec![
        pod_name_env(),
        plain_env("REDIS_HEADLESS", names.service_host(&nodes_service(names))),
        plain_env("REDIS_NODES", nodes.join(" ")),
        secret_env(PASSWORD_ENV, &names.redis(), PASSWORD_KEY),
    ];
    let start = format!("{CONFIG_DIR}/{START_KEY}");
    let redis = Container {
        name: "redis".into(),
        image: Some(image(env, m)),
        image_pull_policy: pull_policy(c),
        command: Some(vec!["sh".into(), start.clone(), "redis".into()]),
        env: Some(script_env.clone()),
        ports: Some(vec![container_port("redis", ports::REDIS)]),
        readiness_probe: Some(exec_probe(READY, 5, 2)),
        liveness_probe: Some(exec_probe(ALIVE, 10, 6)),
        resources: m.resources.clone(),
        volume_mounts: Some(vec![
            mount("data", DATA_DIR, false),
            mount("config", CONFIG_DIR, true),
        ]),
        security_context: Some(restricted(REDIS_UID)),
        ..Container::default()
    };
    let sentinel = Container {
        name: "sentinel".into(),
        image: Some(image(env, m)),
        image_pull_policy: pull_policy(c),
        command: Some(vec!["sh".into(), start, "sentinel".into()]),
        env: Some(script_env),
        ports: Some(vec![container_port("sentinel", ports::SENTINEL)]),
        readiness_probe: Some(exec_probe(SENTINEL_ALIVE, 5, 2)),
        liveness_probe: Some(exec_probe(SENTINEL_ALIVE, 10, 6)),
        resources: Some(sentinel_resources()),
        volume_mounts: Some(vec![
            mount("sentinel", SENTINEL_DIR, false),
            mount("config", CONFIG_DIR, true),
        ]),
        security_context: Some(restricted(REDIS_UID)),
        ..Container::default()
    };
    let volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: names.redis(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        // Memory: the Sentinel's configuration holds the password.
        empty_dir("sentinel", Some("Memory")),
    ];
    StatefulSet {
        metadata: object_meta(c, names, names.redis(), Component::Redis),
        spec: Some(StatefulSetSpec {
            replicas: Some(SENTINEL_PODS),
            service_name: Some(nodes_service(names)),
            // Pods find the primary by asking the Sentinels, not by starting in order; a pod
            // that is down must not hold back the others.
            pod_management_policy: Some("Parallel".into()),
            selector: selector(names, Component::Redis),
            persistent_volume_claim_retention_policy: Some(retain_claims()),
            template: PodTemplateSpec {
                metadata: Some(template_meta(names, Component::Redis, Some(hash))),
                spec: Some(pod_spec(
                    c,
                    vec![redis, sentinel],
                    volumes,
                    Some(super::meta::spread_affinity(names, Component::Redis)),
                )),
            },
            volume_claim_templates: Some(vec![data_claim(
                names,
                Component::Redis,
                &m.storage_size,
                m.storage_class_name.as_ref(),
            )]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::MqttClusterSpec;

    const PASSWORD: &str = "Zq8-pw_0123456789abcdefghijklmnop";

    fn cluster(spec: serde_json::Value) -> MqttCluster {
        let spec: MqttClusterSpec = serde_json::from_value(spec).unwrap();
        let mut c = MqttCluster::new("iot", spec);
        c.metadata.namespace = Some("fleet".into());
        c
    }

    fn build(replicas: i32) -> (MqttCluster, Names, ManagedRedis) {
        let c = cluster(serde_json::json!({
            "persistence": {"redis": {"managed": {
                "replicas": replicas,
                "storageSize": "2Gi",
                "storageClassName": "fast",
            }}}
        }));
        let names = Names::of(&c, "cluster.local");
        let r = managed_redis(&c, &names, &Environment::default(), PASSWORD).unwrap();
        (c, names, r)
    }

    fn pod(r: &ManagedRedis) -> &PodSpec {
        r.statefulset
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
    }

    fn env_names(container: &Container) -> Vec<String> {
        container
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| e.name.clone())
            .collect()
    }

    #[test]
    fn nothing_unless_redis_is_managed() {
        for spec in [
            serde_json::json!({}),
            serde_json::json!({"persistence": {"redis": {"external": {"urlSecretRef": {"name": "r", "key": "url"}}}}}),
        ] {
            let c = cluster(spec);
            let names = Names::of(&c, "cluster.local");
            assert!(managed_redis(&c, &names, &Environment::default(), PASSWORD).is_none());
        }
    }

    #[test]
    fn one_replica_is_one_pod_with_a_volume_behind_a_cluster_ip_service() {
        let (_, _, r) = build(1);
        assert!(r.config_map.is_none());
        assert_eq!(r.services.len(), 1);
        let svc = &r.services[0];
        assert_eq!(svc.metadata.name.as_deref(), Some("iot-redis"));
        let spec = svc.spec.as_ref().unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        let service_ports = spec.ports.as_ref().unwrap();
        assert_eq!(service_ports.len(), 1);
        assert_eq!(service_ports[0].port, 6379);

        let sts = r.statefulset.spec.as_ref().unwrap();
        assert_eq!(r.statefulset.metadata.name.as_deref(), Some("iot-redis"));
        assert_eq!(sts.replicas, Some(1));
        let pod = pod(&r);
        assert_eq!(pod.containers.len(), 1);
        let redis = &pod.containers[0];
        assert_eq!(redis.command.as_ref().unwrap(), &["redis-server"]);
        let args = redis.args.as_ref().unwrap().join(" ");
        for want in [
            "--appendonly yes",
            "--appendfsync everysec",
            "--dir /data",
            "--requirepass $(REDIS_PASSWORD)",
        ] {
            assert!(args.contains(want), "{want} in {args}");
        }
        let probe = redis.readiness_probe.as_ref().unwrap();
        let command = probe.exec.as_ref().unwrap().command.as_ref().unwrap();
        assert!(command[2].contains(r#"redis-cli -a "$REDIS_PASSWORD""#));
        assert!(command[2].contains("ping"));
        assert!(redis.liveness_probe.as_ref().unwrap().exec.is_some());
        assert_eq!(
            redis.volume_mounts.as_ref().unwrap()[0].mount_path,
            DATA_DIR
        );
    }

    #[test]
    fn the_claim_template_has_the_size_and_class_asked_for() {
        for replicas in [1, 3] {
            let (_, _, r) = build(replicas);
            let sts = r.statefulset.spec.as_ref().unwrap();
            let claims = sts.volume_claim_templates.as_ref().unwrap();
            assert_eq!(claims.len(), 1);
            assert_eq!(claims[0].metadata.name.as_deref(), Some("data"));
            let spec = claims[0].spec.as_ref().unwrap();
            assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
            assert_eq!(
                spec.access_modes.as_ref().unwrap(),
                &["ReadWriteOnce".to_owned()]
            );
            let requests = spec.resources.as_ref().unwrap().requests.as_ref().unwrap();
            assert_eq!(requests["storage"], Quantity("2Gi".into()));
            assert_eq!(
                sts.persistent_volume_claim_retention_policy
                    .as_ref()
                    .unwrap()
                    .when_deleted
                    .as_deref(),
                Some("Retain")
            );
        }
    }

    #[test]
    fn three_replicas_run_a_sentinel_beside_each_redis() {
        let (_, _, r) = build(3);
        let sts = r.statefulset.spec.as_ref().unwrap();
        assert_eq!(sts.replicas, Some(3));
        assert_eq!(sts.service_name.as_deref(), Some("iot-redis-nodes"));
        assert_eq!(sts.pod_management_policy.as_deref(), Some("Parallel"));
        let pod = pod(&r);
        let containers: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(containers, ["redis", "sentinel"]);
        for container in &pod.containers {
            assert_eq!(container.command.as_ref().unwrap()[0], "sh");
            assert_eq!(
                container.command.as_ref().unwrap()[1],
                "/etc/rookery-redis/start.sh"
            );
            let env = env_names(container);
            for want in [
                "POD_NAME",
                "REDIS_HEADLESS",
                "REDIS_NODES",
                "REDIS_PASSWORD",
            ] {
                assert!(env.contains(&want.to_owned()), "{want} in {env:?}");
            }
        }
        let nodes = pod.containers[0]
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == "REDIS_NODES")
            .and_then(|e| e.value.clone())
            .unwrap();
        assert_eq!(
            nodes.split(' ').next(),
            Some("iot-redis-0.iot-redis-nodes.fleet.svc.cluster.local")
        );
        assert_eq!(nodes.split(' ').count(), 3);
        // Sentinel's configuration is written into an emptyDir, the scripts come read-only.
        let volumes = pod.volumes.as_ref().unwrap();
        let sentinel_dir = volumes.iter().find(|v| v.name == "sentinel").unwrap();
        assert!(sentinel_dir.empty_dir.is_some());
        let config = volumes.iter().find(|v| v.name == "config").unwrap();
        assert_eq!(config.config_map.as_ref().unwrap().name, "iot-redis");
        let annotations = sts
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap();
        assert!(annotations.contains_key(CONFIG_HASH));

        // Services: headless with starting pods published, then the ClusterIP one.
        assert_eq!(r.services.len(), 2);
        let headless = r.services[0].spec.as_ref().unwrap();
        assert_eq!(
            r.services[0].metadata.name.as_deref(),
            Some("iot-redis-nodes")
        );
        assert_eq!(headless.cluster_ip.as_deref(), Some("None"));
        assert_eq!(headless.publish_not_ready_addresses, Some(true));
        let cluster_ip = r.services[1].spec.as_ref().unwrap();
        assert_eq!(r.services[1].metadata.name.as_deref(), Some("iot-redis"));
        let service_ports: Vec<i32> = cluster_ip
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| p.port)
            .collect();
        assert_eq!(service_ports, [6379, 26379]);
    }

    #[test]
    fn the_script_asks_the_sentinels_before_falling_back_to_pod_0() {
        let (_, _, r) = build(3);
        let data = r.config_map.as_ref().unwrap().data.as_ref().unwrap();
        let script = &data[START_KEY];
        assert!(script.starts_with("#!/bin/sh\n"));
        assert!(script.contains("sentinel get-master-addr-by-name rookery"));
        assert!(script.contains("--replicaof \"$p\" 6379"));
        assert!(script.contains("--masterauth \"$REDIS_PASSWORD\""));
        assert!(script.contains("sentinel monitor rookery $p 6379 2"));
        assert!(script.contains("sentinel auth-pass rookery $REDIS_PASSWORD"));
        assert!(script.contains("sentinel announce-ip $self"));
        assert!(script.contains("exec redis-server \"$conf\" --sentinel"));
        let conf = &data[SENTINEL_CONF_KEY];
        let resolve = conf.find("sentinel resolve-hostnames yes").unwrap();
        assert!(conf.contains("sentinel announce-hostnames yes"));
        assert!(resolve > 0);
        assert!(conf.contains("port 26379"));
        assert_eq!(MASTER_NAME, "rookery");
        assert_eq!(QUORUM, 2);
    }

    #[test]
    fn urls_for_one_and_three_replicas() {
        let (c, names, _) = build(1);
        assert_eq!(
            redis_url(&c, &names, "pw"),
            "redis://:pw@iot-redis.fleet.svc.cluster.local:6379/0"
        );
        let (c, names, _) = build(3);
        assert_eq!(
            redis_url(&c, &names, "pw"),
            "redis+sentinel://:pw@iot-redis.fleet.svc.cluster.local:26379/rookery"
        );
    }

    #[test]
    fn the_secret_holds_the_password_and_the_url() {
        for replicas in [1, 3] {
            let (c, names, r) = build(replicas);
            assert_eq!(r.secret.metadata.name.as_deref(), Some("iot-redis"));
            let data = r.secret.data.as_ref().unwrap();
            assert_eq!(data[PASSWORD_KEY].0, PASSWORD.as_bytes());
            assert_eq!(
                data[URL_KEY].0,
                redis_url(&c, &names, PASSWORD).into_bytes()
            );
        }
    }

    #[test]
    fn the_password_comes_from_the_secret_never_from_the_spec() {
        for replicas in [1, 3] {
            let (_, _, r) = build(replicas);
            let text = serde_json::to_string(&r.statefulset).unwrap();
            assert!(!text.contains(PASSWORD), "{text}");
            if let Some(cm) = &r.config_map {
                assert!(!serde_json::to_string(cm).unwrap().contains(PASSWORD));
            }
            for container in &pod(&r).containers {
                let password = container
                    .env
                    .as_ref()
                    .unwrap()
                    .iter()
                    .find(|e| e.name == PASSWORD_ENV)
                    .unwrap();
                assert!(password.value.is_none());
                let from = password
                    .value_from
                    .as_ref()
                    .unwrap()
                    .secret_key_ref
                    .as_ref()
                    .unwrap();
                assert_eq!(from.name, "iot-redis");
                assert_eq!(from.key, PASSWORD_KEY);
            }
        }
    }

    #[test]
    fn every_object_is_labelled_and_selects_the_redis_component() {
        for replicas in [1, 3] {
            let (_, names, r) = build(replicas);
            let want = selector_labels(&names, Component::Redis);
            assert_eq!(want["app.kubernetes.io/component"], "redis");
            let mut metas = vec![&r.secret.metadata, &r.statefulset.metadata];
            metas.extend(r.services.iter().map(|s| &s.metadata));
            metas.extend(r.config_map.iter().map(|c| &c.metadata));
            for meta in metas {
                let l = meta.labels.as_ref().unwrap();
                assert_eq!(l["app.kubernetes.io/component"], "redis");
                assert_eq!(meta.namespace.as_deref(), Some("fleet"));
            }
            let sts = r.statefulset.spec.as_ref().unwrap();
            assert_eq!(sts.selector.match_labels.as_ref(), Some(&want));
            let template = sts.template.metadata.as_ref().unwrap();
            for (k, v) in &want {
                assert_eq!(&template.labels.as_ref().unwrap()[k], v);
            }
            for s in &r.services {
                assert_eq!(s.spec.as_ref().unwrap().selector.as_ref(), Some(&want));
            }
        }
    }

    #[test]
    fn pods_run_as_the_redis_user_without_privileges() {
        for replicas in [1, 3] {
            let (_, _, r) = build(replicas);
            let pod = pod(&r);
            let ps = pod.security_context.as_ref().unwrap();
            assert_eq!(ps.run_as_user, Some(REDIS_UID));
            assert_eq!(ps.fs_group, Some(REDIS_UID));
            for container in &pod.containers {
                let sc = container.security_context.as_ref().unwrap();
                assert_eq!(sc.run_as_non_root, Some(true));
                assert_eq!(sc.read_only_root_filesystem, Some(true));
                assert_eq!(sc.allow_privilege_escalation, Some(false));
                assert_eq!(
                    sc.capabilities.as_ref().unwrap().drop.as_ref().unwrap(),
                    &["ALL".to_owned()]
                );
            }
        }
    }

    #[test]
    fn generated_passwords_need_no_percent_encoding() {
        for _ in 0..20 {
            let token = crate::pki::token();
            assert!(
                token
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_'),
                "{token}"
            );
        }
    }

    #[test]
    fn the_spec_image_replaces_the_release_image() {
        let c = cluster(serde_json::json!({
            "persistence": {"redis": {"managed": {"image": "mirror/redis:7"}}}
        }));
        let names = Names::of(&c, "cluster.local");
        let env = Environment::default();
        let r = managed_redis(&c, &names, &env, PASSWORD).unwrap();
        assert_eq!(
            pod(&r).containers[0].image.as_deref(),
            Some("mirror/redis:7")
        );
        let c = cluster(serde_json::json!({"persistence": {"redis": {"managed": {}}}}));
        let r = managed_redis(&c, &names, &env, PASSWORD).unwrap();
        assert_eq!(
            pod(&r).containers[0].image.as_deref(),
            Some(env.redis_image.as_str())
        );
    }
}
