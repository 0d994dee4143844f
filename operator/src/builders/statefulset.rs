//! The brokers' StatefulSet: one pod per node, stable names under the headless Service, a
//! volume each for the embedded store, and every file of [`super::config::paths`] mounted.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    RollingUpdateStatefulSetStrategy, StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy,
    StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile,
    SecretVolumeSource, SecurityContext, TopologySpreadConstraint, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha2::{Digest, Sha256};

use super::Environment;
use super::config::{DRAIN_TIMEOUT_SECS, paths};
use super::meta::{Component, Names, object_meta, ports, selector, selector_labels};
use crate::crd::MqttCluster;

/// The pod annotation holding the hash of the brokers' configuration: a change rolls them.
pub const CONFIG_HASH: &str = "rookery.dev/config-hash";

/// The user (and group) the broker runs as, as in its image.
pub const BROKER_UID: i64 = 65532;

/// The hash of the configuration text the pods run with.
pub fn config_hash(config: &str) -> String {
    let digest = Sha256::digest(config.as_bytes());
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

fn secret_volume(name: &str, secret: &str, items: Option<Vec<KeyToPath>>) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            items,
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

fn key_to(key: &str, path: &str) -> Option<Vec<KeyToPath>> {
    Some(vec![KeyToPath {
        key: key.into(),
        path: path.into(),
        ..KeyToPath::default()
    }])
}

/// The volumes and their mounts, in a fixed order.
fn volumes(c: &MqttCluster, names: &Names) -> (Vec<Volume>, Vec<VolumeMount>) {
    let spec = &c.spec;
    let mut v = vec![Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: names.config(),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }];
    let mut m = vec![mount("config", paths::CONFIG_DIR)];
    if let Some(r) = spec.acl.as_ref().and_then(|a| a.config_map_ref.as_ref()) {
        v.push(Volume {
            name: "acl".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: r.name.clone(),
                items: key_to(&r.key, "acl"),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
        m.push(mount("acl", paths::ACL_DIR));
    }
    if spec.auth.password_secret_ref.is_some() || !spec.auth.users.is_empty() {
        v.push(secret_volume("auth", &names.auth_secret(), None));
        m.push(mount("auth", paths::AUTH_DIR));
    }
    if let Some(dtls) = spec.coap.dtls.as_ref().filter(|_| spec.coap.enabled) {
        let r = &dtls.psk_secret_ref;
        v.push(secret_volume("psk", &r.name, key_to(&r.key, "psk")));
        m.push(mount("psk", paths::PSK_DIR));
    }
    v.push(secret_volume("admin", &names.admin_secret(), None));
    m.push(mount("admin", paths::ADMIN_DIR));
    v.push(secret_volume(
        "cluster-tls",
        &names.cluster_tls_secret(),
        None,
    ));
    m.push(mount("cluster-tls", paths::CLUSTER_TLS_DIR));
    if let Some(tls) = &spec.tls {
        let secret = tls
            .secret_name
            .clone()
            .unwrap_or_else(|| names.server_tls_secret());
        v.push(secret_volume("tls", &secret, None));
        m.push(mount("tls", paths::TLS_DIR));
        if let Some(ca) = &tls.client_ca_secret_name {
            v.push(secret_volume("client-ca", ca, key_to("ca.crt", "ca.crt")));
            m.push(mount("client-ca", paths::CLIENT_CA_DIR));
        }
    }
    if let Some(redis) = &spec.persistence.redis {
        let (secret, key) = match &redis.external {
            Some(e) => (e.url_secret_ref.name.clone(), e.url_secret_ref.key.clone()),
            None => (names.redis(), "url".to_owned()),
        };
        v.push(secret_volume(
            "redis-url",
            &secret,
            key_to(&key, paths::URL_FILE),
        ));
        m.push(mount("redis-url", paths::REDIS_DIR));
    }
    if let Some(pg) = &spec.persistence.postgres {
        let (secret, key) = match &pg.external {
            Some(e) => (e.url_secret_ref.name.clone(), e.url_secret_ref.key.clone()),
            None => (names.postgres(), "url".to_owned()),
        };
        v.push(secret_volume(
            "postgres-url",
            &secret,
            key_to(&key, paths::URL_FILE),
        ));
        m.push(mount("postgres-url", paths::POSTGRES_DIR));
    }
    if !spec.storage.enabled {
        v.push(Volume {
            name: "data".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        });
    }
    m.push(VolumeMount {
        name: "data".into(),
        mount_path: paths::DATA_DIR.into(),
        ..VolumeMount::default()
    });
    (v, m)
}

fn port(name: &str, port: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port.into(),
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(3),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

/// The broker container's ports: every listener (the load balancer reaches them), the
/// cluster links and the HTTP port.
fn container_ports(c: &MqttCluster) -> Vec<ContainerPort> {
    let l = &c.spec.listeners;
    let mut p = Vec::new();
    for (on, name, number) in [
        (l.mqtt.enabled, "mqtt", ports::MQTT),
        (l.mqtts.enabled, "mqtts", ports::MQTTS),
        (l.ws.enabled, "ws", ports::WS),
        (l.wss.enabled, "wss", ports::WSS),
    ] {
        if on {
            p.push(port(name, number));
        }
    }
    p.push(port("cluster", ports::CLUSTER));
    p.push(port("http", ports::HTTP));
    let coap = &c.spec.coap;
    for (on, name, number) in [
        (coap.enabled && coap.plain, "coap", ports::COAP),
        (coap.enabled && coap.dtls.is_some(), "coaps", ports::COAPS),
    ] {
        if on {
            p.push(ContainerPort {
                name: Some(name.into()),
                container_port: number.into(),
                protocol: Some("UDP".into()),
                ..ContainerPort::default()
            });
        }
    }
    p
}

/// Brokers spread across zones and nodes where they can, unless the user gives constraints.
fn default_spread(names: &Names) -> Vec<TopologySpreadConstraint> {
    ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
        .into_iter()
        .map(|key| TopologySpreadConstraint {
            max_skew: 1,
            topology_key: key.into(),
            when_unsatisfiable: "ScheduleAnyway".into(),
            label_selector: Some(selector(names, Component::Broker)),
            ..TopologySpreadConstraint::default()
        })
        .collect()
}

/// The StatefulSet. `config_text` is the `rookery.toml` the pods will run (its hash goes in
/// the pod template); `partition` holds back pods below that ordinal during a pod-by-pod
/// upgrade (0: all pods run the template).
pub fn statefulset(
    c: &MqttCluster,
    names: &Names,
    env: &Environment,
    config_text: &str,
    partition: i32,
) -> StatefulSet {
    let spec = &c.spec;
    let (volumes, mounts) = volumes(c, names);
    let container = Container {
        name: "broker".into(),
        image: Some(
            spec.image
                .clone()
                .unwrap_or_else(|| env.broker_image.clone()),
        ),
        image_pull_policy: spec.image_pull_policy.map(|p| p.as_str().to_owned()),
        args: Some(vec!["--config".into(), paths::CONFIG_FILE.into()]),
        env: Some(vec![EnvVar {
            name: "ROOKERY_NODE_ID".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }]),
        ports: Some(container_ports(c)),
        // Restoring a large embedded store takes a while: the startup probe gives it ten
        // minutes before liveness applies.
        startup_probe: Some(http_probe("/healthz", 5, 120)),
        liveness_probe: Some(http_probe("/healthz", 10, 6)),
        readiness_probe: Some(http_probe("/readyz", 5, 2)),
        resources: spec.resources.clone(),
        volume_mounts: Some(mounts),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(BROKER_UID),
            run_as_group: Some(BROKER_UID),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(k8s_openapi::api::core::v1::Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    let pod_labels = super::meta::pod_labels(names, Component::Broker);
    let pod = PodSpec {
        containers: vec![container],
        volumes: Some(volumes),
        // SIGTERM drains the broker within DRAIN_TIMEOUT_SECS; the rest is for the store's
        // last commit and the hand-off of parked sessions.
        termination_grace_period_seconds: Some(DRAIN_TIMEOUT_SECS + 30),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(BROKER_UID),
            run_as_group: Some(BROKER_UID),
            fs_group: Some(BROKER_UID),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        node_selector: (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone()),
        affinity: Some(
            spec.affinity
                .clone()
                .unwrap_or_else(|| super::meta::spread_affinity(names, Component::Broker)),
        ),
        tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
        topology_spread_constraints: Some(if spec.topology_spread_constraints.is_empty() {
            default_spread(names)
        } else {
            spec.topology_spread_constraints.clone()
        }),
        image_pull_secrets: (!spec.image_pull_secrets.is_empty())
            .then(|| spec.image_pull_secrets.clone()),
        ..PodSpec::default()
    };
    let claims = spec.storage.enabled.then(|| {
        vec![PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".into()),
                labels: Some(selector_labels(names, Component::Broker)),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: spec.storage.storage_class_name.clone(),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".into(),
                        Quantity(spec.storage.size.clone()),
                    )])),
                    ..VolumeResourceRequirements::default()
                }),
                ..PersistentVolumeClaimSpec::default()
            }),
            ..PersistentVolumeClaim::default()
        }]
    });
    StatefulSet {
        metadata: object_meta(c, names, names.statefulset(), Component::Broker),
        spec: Some(StatefulSetSpec {
            replicas: Some(spec.replicas),
            service_name: Some(names.headless()),
            // Nodes find each other through DNS and hand sessions over: they need not start
            // one by one. Upgrades are still pod by pod (the partition).
            pod_management_policy: Some("Parallel".into()),
            selector: selector(names, Component::Broker),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateStatefulSetStrategy {
                    partition: Some(partition),
                    max_unavailable: None,
                }),
            }),
            min_ready_seconds: Some(5),
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Retain".into()),
                    when_scaled: Some("Retain".into()),
                },
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH.into(),
                        config_hash(config_text),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            volume_claim_templates: claims,
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::MqttClusterSpec;
    use k8s_openapi::api::core::v1::Affinity;

    fn build(spec: serde_json::Value) -> StatefulSet {
        let spec: MqttClusterSpec = serde_json::from_value(spec).unwrap();
        let mut c = MqttCluster::new("iot", spec);
        c.metadata.namespace = Some("fleet".into());
        let names = Names::of(&c, "cluster.local");
        statefulset(&c, &names, &Environment::default(), "x = 1", 0)
    }

    fn mounts(s: &StatefulSet) -> Vec<String> {
        let pod = s.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        pod.containers[0]
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.mount_path.clone())
            .collect()
    }

    #[test]
    fn defaults_three_pods_with_a_claim_each_and_mtls_links() {
        let s = build(serde_json::json!({}));
        let spec = s.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.service_name.as_deref(), Some("iot-nodes"));
        assert_eq!(spec.volume_claim_templates.as_ref().unwrap().len(), 1);
        let m = mounts(&s);
        assert!(m.contains(&"/etc/rookery/cluster-tls".to_owned()));
        assert!(m.contains(&"/var/lib/rookery".to_owned()));
        assert!(!m.contains(&"/etc/rookery/tls".to_owned()));
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.termination_grace_period_seconds, Some(90));
        assert!(pod.affinity.is_some());
        assert_eq!(pod.topology_spread_constraints.as_ref().unwrap().len(), 2);
    }

    #[test]
    fn every_referenced_secret_is_mounted() {
        let s = build(serde_json::json!({
            "tls": {"secretName": "server", "clientAuth": "required", "clientCaSecretName": "devices"},
            "auth": {"passwordSecretRef": {"name": "p", "key": "k"}},
            "acl": {"configMapRef": {"name": "acl", "key": "acl.conf"}},
            "persistence": {"redis": {"external": {"urlSecretRef": {"name": "r", "key": "u"}}}, "postgres": {"managed": {}}},
            "storage": {"enabled": false},
        }));
        let m = mounts(&s);
        for p in [
            "/etc/rookery/tls",
            "/etc/rookery/client-ca",
            "/etc/rookery/auth",
            "/etc/rookery/acl",
            "/etc/rookery/redis",
            "/etc/rookery/postgres",
        ] {
            assert!(m.contains(&p.to_owned()), "{p} in {m:?}");
        }
        let spec = s.spec.as_ref().unwrap();
        assert!(spec.volume_claim_templates.is_none());
        let vols = spec
            .template
            .spec
            .as_ref()
            .unwrap()
            .volumes
            .as_ref()
            .unwrap();
        let redis = vols.iter().find(|v| v.name == "redis-url").unwrap();
        let secret = redis.secret.as_ref().unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("r"));
        assert_eq!(secret.items.as_ref().unwrap()[0].key, "u");
        let pg = vols.iter().find(|v| v.name == "postgres-url").unwrap();
        assert_eq!(
            pg.secret.as_ref().unwrap().secret_name.as_deref(),
            Some("iot-postgres")
        );
        assert!(
            vols.iter()
                .any(|v| v.name == "data" && v.empty_dir.is_some())
        );
    }

    #[test]
    fn the_config_hash_follows_the_config() {
        assert_eq!(config_hash("a"), config_hash("a"));
        assert_ne!(config_hash("a"), config_hash("b"));
        let s = build(serde_json::json!({}));
        let ann = s
            .spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap();
        assert_eq!(ann[CONFIG_HASH], config_hash("x = 1"));
    }

    #[test]
    fn user_scheduling_replaces_the_defaults() {
        let s = build(serde_json::json!({
            "affinity": {},
            "topologySpreadConstraints": [{"maxSkew": 2, "topologyKey": "rack", "whenUnsatisfiable": "DoNotSchedule"}],
            "nodeSelector": {"pool": "mqtt"},
        }));
        let pod = s.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.affinity, Some(Affinity::default()));
        assert_eq!(
            pod.topology_spread_constraints.unwrap()[0].topology_key,
            "rack"
        );
        assert_eq!(pod.node_selector.unwrap()["pool"], "mqtt");
    }
}
