//! Managed PostgreSQL (`persistence.postgres.managed`).
//!
//! When CloudNativePG's `Cluster` CRD is installed ([`Environment::cnpg_crd`]), the operator
//! writes a CloudNativePG `Cluster` named `<cluster>-postgres` and lets CloudNativePG run it
//! (instances, failover, backups are its business). Its initdb creates the database `rookery`
//! owned by the role `rookery`, whose password comes from the basic-auth Secret
//! `<cluster>-postgres-app` the operator writes. The brokers connect to CloudNativePG's
//! read-write Service, `<cluster>-postgres-rw`.
//!
//! Otherwise the operator runs one PostgreSQL pod itself: a StatefulSet and a ClusterIP
//! Service `<cluster>-postgres` (no replicas, no failover: [`note`] says so in the status). The
//! image's entrypoint initialises an empty data directory (initdb as the role `rookery` with
//! the password from the Secret, the database `rookery`, password logins over TCP, stored as
//! SCRAM hashes) and then runs postgres; it does nothing more when the directory is already
//! initialised.
//!
//! Either way the Secret `<cluster>-postgres` holds the password (`password`) and the brokers'
//! URL (`url`), which they mount.

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, PodSpec, PodTemplateSpec, Probe, Secret, Service, ServiceSpec,
    TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

use super::Environment;
use super::meta::{Component, Names, object_meta, ports, selector, selector_labels};
use super::redis::{
    container_port, data_claim, empty_dir, exec_probe, mount, pod_security, pull_policy,
    pull_secrets, restricted, retain_claims, secret_env, tcp, template_meta,
};
use crate::crd::MqttCluster;

/// The uid and gid PostgreSQL runs as. The image's `postgres` user must have this uid: initdb
/// refuses to run as a uid that has no account in the image.
pub const POSTGRES_UID: i64 = 999;

/// The database the brokers use.
pub const DATABASE: &str = "rookery";

/// The role the brokers log in as; it owns [`DATABASE`].
pub const USER: &str = "rookery";

/// Key of the password in the Secrets.
pub const PASSWORD_KEY: &str = "password";

/// Key of the brokers' URL in the Secret.
pub const URL_KEY: &str = "url";

/// Where the volume is mounted in the single PostgreSQL pod.
pub const DATA_DIR: &str = "/var/lib/postgresql/data";

/// The data directory: below the mount point, because PostgreSQL wants a directory of its
/// own with mode 0700, which the root of a volume (group-owned through `fsGroup`) is not.
pub const PGDATA: &str = "/var/lib/postgresql/data/pgdata";

/// The API version of CloudNativePG's `Cluster`.
pub const CNPG_API_VERSION: &str = "postgresql.cnpg.io/v1";

/// Readiness of the single pod: the server accepts connections (pg_isready does not log in).
const READY: &str = "pg_isready -q -h 127.0.0.1 -p 5432 -U rookery -d rookery";

/// Managed PostgreSQL's objects: with CloudNativePG its `Cluster` and two Secrets; without, a
/// Secret, a Service and a StatefulSet.
#[derive(Debug, Clone, PartialEq)]
pub struct ManagedPostgres {
    /// The Secrets, in apply order: with CloudNativePG first the basic-auth
    /// `<cluster>-postgres-app` (the role and password its initdb creates); then always
    /// `<cluster>-postgres` (the password and the brokers' URL).
    pub secrets: Vec<Secret>,
    /// The ClusterIP Service `<cluster>-postgres`, port 5432 (without CloudNativePG).
    pub service: Option<Service>,
    /// The StatefulSet `<cluster>-postgres` of one pod (without CloudNativePG).
    pub statefulset: Option<StatefulSet>,
    /// The CloudNativePG `Cluster` `<cluster>-postgres`, with `apiVersion` and `kind` (with
    /// CloudNativePG).
    pub cnpg_cluster: Option<Value>,
}

fn managed(c: &MqttCluster) -> Option<&crate::crd::ManagedPostgres> {
    c.spec.persistence.postgres.as_ref()?.managed.as_ref()
}

/// The basic-auth Secret CloudNativePG's initdb takes the owner's password from.
pub fn credentials_secret_name(names: &Names) -> String {
    format!("{}-app", names.postgres())
}

/// CloudNativePG's read-write Service of the `Cluster` `<cluster>-postgres` (CloudNativePG
/// names it `<Cluster name>-rw`; it always points at the primary).
pub fn cnpg_rw_service(names: &Names) -> String {
    format!("{}-rw", names.postgres())
}

/// The brokers' URL of managed PostgreSQL. The password goes in as it is: the operator's
/// passwords come from [`crate::pki::token`], whose characters (`A-Z a-z 0-9 - _`) need no
/// percent-encoding.
pub fn postgres_url(names: &Names, env: &Environment, password: &str) -> String {
    let service = if env.cnpg_crd {
        cnpg_rw_service(names)
    } else {
        names.postgres()
    };
    format!(
        "postgres://{USER}:{password}@{}:{}/{DATABASE}",
        names.service_host(&service),
        ports::POSTGRES
    )
}

fn make_secret(
    c: &MqttCluster,
    names: &Names,
    name: String,
    type_: &str,
    data: &[(&str, &str)],
) -> Secret {
    super::secrets::secret(c, names, name, Component::Postgres, type_, data)
}

/// The Secret `<cluster>-postgres`: the password (`password`) and the brokers' URL (`url`).
pub fn secret(c: &MqttCluster, names: &Names, env: &Environment, password: &str) -> Secret {
    let url = postgres_url(names, env, password);
    make_secret(
        c,
        names,
        names.postgres(),
        "Opaque",
        &[(PASSWORD_KEY, password), (URL_KEY, &url)],
    )
}

/// What the status should say about managed PostgreSQL, if anything: without CloudNativePG
/// there is one instance and no failover.
pub fn note(c: &MqttCluster, env: &Environment) -> Option<String> {
    let m = managed(c)?;
    if env.cnpg_crd {
        return None;
    }
    let base = "persistence.postgres.managed: CloudNativePG is not installed: a single PostgreSQL StatefulSet runs (no failover)";
    Some(if m.instances > 1 {
        format!("{base}; instances: {} is ignored", m.instances)
    } else {
        base.to_owned()
    })
}

/// Every object of managed PostgreSQL, or `None` when PostgreSQL is not managed.
pub fn managed_postgres(
    c: &MqttCluster,
    names: &Names,
    env: &Environment,
    password: &str,
) -> Option<ManagedPostgres> {
    let m = managed(c)?;
    let secret = secret(c, names, env, password);
    if env.cnpg_crd {
        let credentials = make_secret(
            c,
            names,
            credentials_secret_name(names),
            "kubernetes.io/basic-auth",
            &[("username", USER), ("password", password)],
        );
        Some(ManagedPostgres {
            secrets: vec![credentials, secret],
            service: None,
            statefulset: None,
            cnpg_cluster: Some(cnpg_cluster(c, names, m)),
        })
    } else {
        Some(ManagedPostgres {
            secrets: vec![secret],
            service: Some(service(c, names)),
            statefulset: Some(statefulset(c, names, env, m)),
            cnpg_cluster: None,
        })
    }
}

/// The CloudNativePG `Cluster`. Its image is CloudNativePG's default unless the spec names
/// one (CloudNativePG needs its own operand images: the release's PostgreSQL image is for the
/// single StatefulSet). Our selector labels are not passed down to its pods: the PostgreSQL
/// NetworkPolicy would then shut out the CloudNativePG operator.
fn cnpg_cluster(c: &MqttCluster, names: &Names, m: &crate::crd::ManagedPostgres) -> Value {
    let mut spec = json!({
        "instances": m.instances,
        "storage": {"size": m.storage_size},
        "bootstrap": {
            "initdb": {
                "database": DATABASE,
                "owner": USER,
                "secret": {"name": credentials_secret_name(names)},
            },
        },
    });
    if let Some(class) = &m.storage_class_name {
        spec["storage"]["storageClass"] = json!(class);
    }
    if let Some(image) = &m.image {
        spec["imageName"] = json!(image);
    }
    if let Some(resources) = &m.resources
        && let Ok(value) = serde_json::to_value(resources)
    {
        spec["resources"] = value;
    }
    if !c.spec.image_pull_secrets.is_empty() {
        spec["imagePullSecrets"] = c
            .spec
            .image_pull_secrets
            .iter()
            .map(|s| json!({"name": s.name}))
            .collect();
    }
    json!({
        "apiVersion": CNPG_API_VERSION,
        "kind": "Cluster",
        "metadata": object_meta(c, names, names.postgres(), Component::Postgres),
        "spec": spec,
    })
}

/// The ClusterIP Service of the single PostgreSQL pod.
fn service(c: &MqttCluster, names: &Names) -> Service {
    Service {
        metadata: object_meta(c, names, names.postgres(), Component::Postgres),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(names, Component::Postgres)),
            ports: Some(vec![tcp("postgres", ports::POSTGRES)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn tcp_probe(period: i32, failures: i32) -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction {
            host: None,
            port: IntOrString::String("postgres".into()),
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(3),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

fn plain_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

/// The single PostgreSQL pod. The image's entrypoint, started as the `postgres` user,
/// initialises [`PGDATA`] when it is empty (`POSTGRES_PASSWORD`, `POSTGRES_USER`,
/// `POSTGRES_DB`), then runs postgres on 0.0.0.0:5432 with its socket in `/run/postgresql`.
/// With a read-only root file system, `/run/postgresql`, `/tmp` (the entrypoint's password
/// file for initdb) and `/dev/shm` (shared memory) are emptyDirs.
fn statefulset(
    c: &MqttCluster,
    names: &Names,
    env: &Environment,
    m: &crate::crd::ManagedPostgres,
) -> StatefulSet {
    let container = Container {
        name: "postgres".into(),
        image: Some(
            m.image
                .clone()
                .unwrap_or_else(|| env.postgres_image.clone()),
        ),
        image_pull_policy: pull_policy(c),
        env: Some(vec![
            plain_env("PGDATA", PGDATA),
            plain_env("POSTGRES_USER", USER),
            plain_env("POSTGRES_DB", DATABASE),
            secret_env("POSTGRES_PASSWORD", &names.postgres(), PASSWORD_KEY),
        ]),
        ports: Some(vec![container_port("postgres", ports::POSTGRES)]),
        // initdb, or crash recovery after an unclean stop, before liveness applies: up to ten
        // minutes.
        startup_probe: Some(tcp_probe(5, 120)),
        liveness_probe: Some(tcp_probe(10, 6)),
        readiness_probe: Some(exec_probe(READY, 5, 2)),
        resources: m.resources.clone(),
        volume_mounts: Some(vec![
            mount("data", DATA_DIR, false),
            mount("run", "/run/postgresql", false),
            mount("tmp", "/tmp", false),
            mount("shm", "/dev/shm", false),
        ]),
        security_context: Some(restricted(POSTGRES_UID)),
        ..Container::default()
    };
    let pod = PodSpec {
        containers: vec![container],
        volumes: Some(vec![
            empty_dir("run", None),
            empty_dir("tmp", None),
            empty_dir("shm", Some("Memory")),
        ]),
        // The image stops postgres with SIGINT (fast shutdown); this is the time it has.
        termination_grace_period_seconds: Some(60),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(pod_security(POSTGRES_UID)),
        image_pull_secrets: pull_secrets(c),
        ..PodSpec::default()
    };
    StatefulSet {
        metadata: object_meta(c, names, names.postgres(), Component::Postgres),
        spec: Some(StatefulSetSpec {
            // One instance whatever `instances` says: without CloudNativePG there is no
            // replication.
            replicas: Some(1),
            service_name: Some(names.postgres()),
            selector: selector(names, Component::Postgres),
            persistent_volume_claim_retention_policy: Some(retain_claims()),
            template: PodTemplateSpec {
                metadata: Some(template_meta(names, Component::Postgres, None)),
                spec: Some(pod),
            },
            volume_claim_templates: Some(vec![data_claim(
                names,
                Component::Postgres,
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

    const PASSWORD: &str = "Pg8-pw_0123456789abcdefghijklmnop";

    fn cluster(managed: serde_json::Value) -> MqttCluster {
        let spec: MqttClusterSpec = serde_json::from_value(serde_json::json!({
            "persistence": {"postgres": {"managed": managed}}
        }))
        .unwrap();
        let mut c = MqttCluster::new("iot", spec);
        c.metadata.namespace = Some("fleet".into());
        c
    }

    fn env(cnpg: bool) -> Environment {
        Environment {
            cnpg_crd: cnpg,
            ..Environment::default()
        }
    }

    fn build(managed: serde_json::Value, cnpg: bool) -> (Names, ManagedPostgres) {
        let c = cluster(managed);
        let names = Names::of(&c, "cluster.local");
        let pg = managed_postgres(&c, &names, &env(cnpg), PASSWORD).unwrap();
        (names, pg)
    }

    fn text(secret: &Secret, key: &str) -> String {
        String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
    }

    #[test]
    fn nothing_unless_postgres_is_managed() {
        for spec in [
            serde_json::json!({}),
            serde_json::json!({"persistence": {"postgres": {"external": {"urlSecretRef": {"name": "pg", "key": "url"}}}}}),
        ] {
            let spec: MqttClusterSpec = serde_json::from_value(spec).unwrap();
            let c = MqttCluster::new("iot", spec);
            let names = Names::of(&c, "cluster.local");
            for cnpg in [false, true] {
                assert!(managed_postgres(&c, &names, &env(cnpg), PASSWORD).is_none());
                assert!(note(&c, &env(cnpg)).is_none());
            }
        }
    }

    /// CloudNativePG's credentials, the URL Secret and the Cluster (and nothing else).
    fn cnpg(pg: &ManagedPostgres) -> (&Secret, &Secret, &Value) {
        assert!(pg.service.is_none() && pg.statefulset.is_none());
        assert_eq!(pg.secrets.len(), 2);
        (
            &pg.secrets[0],
            &pg.secrets[1],
            pg.cnpg_cluster.as_ref().unwrap(),
        )
    }

    #[test]
    fn with_cloudnativepg_a_cluster_bootstraps_the_database_from_the_credentials() {
        let (_, pg) = build(
            serde_json::json!({
                "instances": 3,
                "storageSize": "20Gi",
                "storageClassName": "fast",
                "resources": {"requests": {"memory": "1Gi"}},
            }),
            true,
        );
        let (credentials, secret, cluster) = cnpg(&pg);
        assert_eq!(cluster["apiVersion"], "postgresql.cnpg.io/v1");
        assert_eq!(cluster["kind"], "Cluster");
        assert_eq!(cluster["metadata"]["name"], "iot-postgres");
        assert_eq!(cluster["metadata"]["namespace"], "fleet");
        assert_eq!(
            cluster["metadata"]["labels"]["app.kubernetes.io/component"],
            "postgres"
        );
        let spec = &cluster["spec"];
        assert_eq!(spec["instances"], 3);
        assert_eq!(spec["storage"]["size"], "20Gi");
        assert_eq!(spec["storage"]["storageClass"], "fast");
        assert_eq!(spec["resources"]["requests"]["memory"], "1Gi");
        assert!(
            spec.get("imageName").is_none(),
            "CloudNativePG's default image"
        );
        let initdb = &spec["bootstrap"]["initdb"];
        assert_eq!(initdb["database"], "rookery");
        assert_eq!(initdb["owner"], "rookery");
        assert_eq!(initdb["secret"]["name"], "iot-postgres-app");

        assert_eq!(
            credentials.metadata.name.as_deref(),
            Some("iot-postgres-app")
        );
        assert_eq!(
            credentials.type_.as_deref(),
            Some("kubernetes.io/basic-auth")
        );
        assert_eq!(text(credentials, "username"), "rookery");
        assert_eq!(text(credentials, "password"), PASSWORD);

        assert_eq!(secret.metadata.name.as_deref(), Some("iot-postgres"));
        assert_eq!(text(secret, PASSWORD_KEY), PASSWORD);
        assert_eq!(
            text(secret, URL_KEY),
            format!(
                "postgres://rookery:{PASSWORD}@iot-postgres-rw.fleet.svc.cluster.local:5432/rookery"
            )
        );
    }

    #[test]
    fn with_cloudnativepg_the_spec_image_is_passed_on() {
        let (_, pg) = build(
            serde_json::json!({"image": "mirror/cnpg-postgresql:16"}),
            true,
        );
        let (_, _, cluster) = cnpg(&pg);
        assert_eq!(cluster["spec"]["imageName"], "mirror/cnpg-postgresql:16");
        assert!(cluster["spec"]["storage"].get("storageClass").is_none());
        assert_eq!(cluster["spec"]["storage"]["size"], "10Gi");
    }

    /// The single StatefulSet's Secret, Service and StatefulSet (and nothing else).
    fn single(pg: &ManagedPostgres) -> (&Secret, &Service, &StatefulSet) {
        assert!(pg.cnpg_cluster.is_none());
        assert_eq!(pg.secrets.len(), 1);
        (
            &pg.secrets[0],
            pg.service.as_ref().unwrap(),
            pg.statefulset.as_ref().unwrap(),
        )
    }

    #[test]
    fn without_cloudnativepg_one_pod_behind_a_cluster_ip_service() {
        let (_, pg) = build(
            serde_json::json!({"instances": 3, "storageSize": "5Gi", "storageClassName": "fast"}),
            false,
        );
        let (secret, service, sts) = single(&pg);

        assert_eq!(secret.metadata.name.as_deref(), Some("iot-postgres"));
        assert_eq!(text(secret, PASSWORD_KEY), PASSWORD);
        assert_eq!(
            text(secret, URL_KEY),
            format!(
                "postgres://rookery:{PASSWORD}@iot-postgres.fleet.svc.cluster.local:5432/rookery"
            )
        );

        assert_eq!(service.metadata.name.as_deref(), Some("iot-postgres"));
        let svc = service.spec.as_ref().unwrap();
        assert_eq!(svc.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(svc.ports.as_ref().unwrap()[0].port, 5432);

        assert_eq!(sts.metadata.name.as_deref(), Some("iot-postgres"));
        let spec = sts.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(1), "instances is ignored");
        let claims = spec.volume_claim_templates.as_ref().unwrap();
        let claim = claims[0].spec.as_ref().unwrap();
        assert_eq!(claims[0].metadata.name.as_deref(), Some("data"));
        assert_eq!(claim.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            claim.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0,
            "5Gi"
        );

        let pod = spec.template.spec.as_ref().unwrap();
        let container = &pod.containers[0];
        assert_eq!(
            container.image.as_deref(),
            Some(Environment::default().postgres_image.as_str())
        );
        let env = container.env.as_ref().unwrap();
        let pgdata = env.iter().find(|e| e.name == "PGDATA").unwrap();
        assert_eq!(pgdata.value.as_deref(), Some(PGDATA));
        assert!(PGDATA.starts_with(&format!("{DATA_DIR}/")));
        let mounts: Vec<&str> = container
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.mount_path.as_str())
            .collect();
        for want in [DATA_DIR, "/run/postgresql", "/tmp", "/dev/shm"] {
            assert!(mounts.contains(&want), "{want} in {mounts:?}");
        }
        let sc = container.security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_user, Some(POSTGRES_UID));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        let ps = pod.security_context.as_ref().unwrap();
        assert_eq!(ps.fs_group, Some(POSTGRES_UID));
        assert_eq!(ps.fs_group_change_policy.as_deref(), Some("OnRootMismatch"));
        assert!(container.readiness_probe.as_ref().unwrap().exec.is_some());
        assert!(
            container
                .liveness_probe
                .as_ref()
                .unwrap()
                .tcp_socket
                .is_some()
        );
    }

    #[test]
    fn the_password_comes_from_the_secret_never_from_the_spec() {
        let (_, pg) = build(serde_json::json!({}), false);
        let (_, _, sts) = single(&pg);
        assert!(!serde_json::to_string(sts).unwrap().contains(PASSWORD));
        let pod = sts.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let password = pod.containers[0]
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == "POSTGRES_PASSWORD")
            .unwrap();
        assert!(password.value.is_none());
        let from = password
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(from.name, "iot-postgres");
        assert_eq!(from.key, PASSWORD_KEY);

        let (_, pg) = build(serde_json::json!({}), true);
        let (_, _, cluster) = cnpg(&pg);
        assert!(!cluster.to_string().contains(PASSWORD));
    }

    #[test]
    fn labels_and_selectors_are_the_postgres_component() {
        let (names, pg) = build(serde_json::json!({}), false);
        let (secret, service, sts) = single(&pg);
        let want = selector_labels(&names, Component::Postgres);
        assert_eq!(want["app.kubernetes.io/component"], "postgres");
        for meta in [&secret.metadata, &service.metadata, &sts.metadata] {
            assert_eq!(
                meta.labels.as_ref().unwrap()["app.kubernetes.io/component"],
                "postgres"
            );
        }
        assert_eq!(
            service.spec.as_ref().unwrap().selector.as_ref(),
            Some(&want)
        );
        let spec = sts.spec.as_ref().unwrap();
        assert_eq!(spec.selector.match_labels.as_ref(), Some(&want));
        let template = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        for (k, v) in &want {
            assert_eq!(&template[k], v);
        }
    }

    #[test]
    fn the_status_notes_a_single_instance_without_cloudnativepg() {
        let c = cluster(serde_json::json!({}));
        assert!(note(&c, &env(true)).is_none());
        let text = note(&c, &env(false)).unwrap();
        assert!(text.starts_with("persistence.postgres.managed: CloudNativePG is not installed"));
        assert!(!text.contains("ignored"));
        let c = cluster(serde_json::json!({"instances": 3}));
        assert!(
            note(&c, &env(false))
                .unwrap()
                .ends_with("instances: 3 is ignored")
        );
    }
}
