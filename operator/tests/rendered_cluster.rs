//! What `render` makes for `manifests/examples/production.yaml`, run as containers the way the
//! kubelet would run it: each broker pod as a container with the pod's name and DNS names
//! (`mqtt-N.mqtt-nodes.iot.svc.cluster.local`, and the headless name on every broker), its
//! ConfigMaps and Secrets mounted read-only where the StatefulSet mounts them, its command line,
//! user and read-only root; HAProxy with the generated configuration under the client
//! Service's name; Redis and PostgreSQL under the names of the URLs in the user's Secrets.
//!
//! Then, through HAProxy's TLS port only: devices with client certificates (their common name
//! is their user name) and applications with passwords publish and subscribe across the
//! nodes, and the ACL allows and refuses what it says.
//!
//! The images come from `e2e/images/build.sh` (`scripts/test` builds them).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Secret;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
};
use rookery_codec::{
    Ack, Connect, ConnectProperties, Packet, Protocol, Publish, QoS, Subscribe, SubscribeFilter,
    SubscriptionOptions, decode, encode,
};
use rookery_operator::builders::Environment;
use rookery_operator::builders::meta::Names;
use rookery_operator::crd::MqttCluster;
use rookery_operator::inputs::{self, Inputs};
use rookery_operator::render;
use rustls_pki_types::pem::PemObject;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const SERVER_NAME: &str = "mqtt.iot.svc.cluster.local";

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("docker is not installed")
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Containers and network of one run, removed on drop.
struct Run {
    containers: Vec<String>,
    net: String,
}

impl Drop for Run {
    fn drop(&mut self) {
        let mut args = vec!["rm", "-f"];
        args.extend(self.containers.iter().map(String::as_str));
        let _ = docker(&args);
        let _ = docker(&["network", "rm", &self.net]);
    }
}

impl Run {
    fn logs(&self) -> String {
        let mut out = String::new();
        for c in &self.containers {
            let o = docker(&["logs", "--tail", "20", c]);
            out.push_str(&format!(
                "--- {c}\n{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        out
    }

    fn until(&self, what: &str, wait: Duration, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + wait;
        while !f() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// A CA for devices and a certificate for `cn` signed by it (PEM: ca, cert, key).
struct DeviceCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl DeviceCa {
    fn new() -> DeviceCa {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "devices");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        DeviceCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn device(&self, cn: &str) -> (String, String) {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.into()),
            namespace: Some("iot".into()),
            ..Default::default()
        },
        string_data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// Writes each ConfigMap's and Secret's keys as files under `dir/<kind>/<name>/`, readable by
/// the containers' unprivileged users.
fn write_volumes(dir: &Path, objects: &[Value], user_secrets: &[Secret]) {
    let write = |kind: &str, name: &str, key: &str, bytes: &[u8]| {
        let d = dir.join(kind).join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(key), bytes).unwrap();
    };
    for o in objects {
        let name = o["metadata"]["name"].as_str().unwrap();
        match o["kind"].as_str().unwrap() {
            "ConfigMap" => {
                for (k, v) in o["data"].as_object().unwrap() {
                    write("configmap", name, k, v.as_str().unwrap().as_bytes());
                }
            }
            "Secret" => {
                let s: Secret = serde_json::from_value(o.clone()).unwrap();
                for (k, v) in s.data.unwrap_or_default() {
                    write("secret", name, &k, &v.0);
                }
            }
            _ => {}
        }
    }
    for s in user_secrets {
        for (k, v) in s.string_data.clone().unwrap_or_default() {
            write(
                "secret",
                s.metadata.name.as_deref().unwrap(),
                &k,
                v.as_bytes(),
            );
        }
    }
    let _ = Command::new("chmod")
        .args(["-R", "a+rX", dir.to_str().unwrap()])
        .status();
}

/// The `docker run` volume arguments for a pod's mounts: each volume's directory (with the
/// `items` renames a volume asks for) bind-mounted read-only at its mount path.
fn mounts(dir: &Path, pod: &k8s_openapi::api::core::v1::PodSpec, container: usize) -> Vec<String> {
    let mut args = Vec::new();
    let volumes: BTreeMap<String, _> = pod
        .volumes
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|v| (v.name.clone(), v))
        .collect();
    for m in pod.containers[container]
        .volume_mounts
        .clone()
        .unwrap_or_default()
    {
        let Some(v) = volumes.get(&m.name) else {
            // A claim template (the data volume): a writable tmpfs for the pod's user.
            args.push("--mount".into());
            args.push(format!(
                "type=tmpfs,destination={},tmpfs-mode=1777",
                m.mount_path
            ));
            continue;
        };
        let (source, items) = if let Some(cm) = &v.config_map {
            (dir.join("configmap").join(&cm.name), cm.items.clone())
        } else if let Some(s) = &v.secret {
            (
                dir.join("secret").join(s.secret_name.as_deref().unwrap()),
                s.items.clone(),
            )
        } else {
            args.push("--mount".into());
            args.push(format!(
                "type=tmpfs,destination={},tmpfs-mode=1777",
                m.mount_path
            ));
            continue;
        };
        let source = match items {
            Some(items) => {
                // Only the listed keys, under their new names.
                let renamed = dir.join("items").join(&m.name);
                std::fs::create_dir_all(&renamed).unwrap();
                for i in items {
                    std::fs::copy(source.join(&i.key), renamed.join(&i.path)).unwrap();
                }
                let _ = Command::new("chmod")
                    .args(["-R", "a+rX", dir.to_str().unwrap()])
                    .status();
                renamed
            }
            None => source,
        };
        args.push("-v".into());
        args.push(format!("{}:{}:ro", source.display(), m.mount_path));
    }
    args
}

fn stats_up(stats: SocketAddr, backend: &str) -> usize {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&stats, Duration::from_secs(2)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET /stats;csv HTTP/1.0\r\n\r\n").is_err() {
        return 0;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.lines()
        .filter(|l| {
            let f: Vec<&str> = l.split(',').collect();
            f.len() > 17
                && f[0] == backend
                && f[1] != "BACKEND"
                && f[1] != "FRONTEND"
                && f[17] == "UP"
        })
        .count()
}

/// A broker's `/admin/status`, from the host (container addresses are reachable on Linux).
fn admin_status(ip: &str, token: &str) -> Option<Value> {
    use std::io::{Read, Write};
    let addr: SocketAddr = format!("{ip}:9100").parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(
        format!("GET /admin/status HTTP/1.0\r\nAuthorization: Bearer {token}\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    serde_json::from_str(body.split_once("\r\n\r\n")?.1).ok()
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// An MQTT 5.0 client over TLS to HAProxy, checking the server certificate against the
/// cluster's CA under the client Service's name.
struct Client {
    s: Box<dyn Stream>,
    buf: BytesMut,
}

impl Client {
    async fn connect(
        lb: SocketAddr,
        ca: &str,
        id: &str,
        user: Option<(&str, &str)>,
        cert: Option<&(String, String)>,
    ) -> (Option<Client>, u8) {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match cert {
            Some((c, k)) => {
                let chain = rustls_pki_types::CertificateDer::pem_slice_iter(c.as_bytes())
                    .map(Result::unwrap)
                    .collect();
                let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(k.as_bytes()).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        let tcp = tokio::net::TcpStream::connect(lb).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from(SERVER_NAME).unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("TLS handshake with the cluster's certificate");
        let mut c = Client {
            s: Box::new(tls),
            buf: BytesMut::new(),
        };
        c.send(Packet::Connect(Box::new(Connect {
            protocol: Protocol::V5,
            clean_start: true,
            keep_alive: 60,
            client_id: id.into(),
            will: None,
            username: user.map(|(u, _)| u.into()),
            password: user.map(|(_, p)| bytes::Bytes::copy_from_slice(p.as_bytes())),
            properties: ConnectProperties::default(),
        })))
        .await;
        match c.recv().await {
            Some(Packet::ConnAck(a)) if a.code == 0 => (Some(c), 0),
            Some(Packet::ConnAck(a)) => (None, a.code),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Over plain TCP, with a persistent session: the client, and whether the broker had the
    /// session (`None`: refused).
    async fn plain(
        lb: SocketAddr,
        id: &str,
        user: (&str, &str),
        clean: bool,
    ) -> Option<(Client, bool)> {
        let tcp = tokio::net::TcpStream::connect(lb).await.ok()?;
        let mut c = Client {
            s: Box::new(tcp),
            buf: BytesMut::new(),
        };
        c.send(Packet::Connect(Box::new(Connect {
            protocol: Protocol::V5,
            clean_start: clean,
            keep_alive: 60,
            client_id: id.into(),
            will: None,
            username: Some(user.0.into()),
            password: Some(bytes::Bytes::copy_from_slice(user.1.as_bytes())),
            properties: ConnectProperties {
                session_expiry_interval: Some(3600),
                ..ConnectProperties::default()
            },
        })))
        .await;
        match c.recv().await {
            Some(Packet::ConnAck(a)) if a.code == 0 => Some((c, a.session_present)),
            _ => None,
        }
    }

    async fn send(&mut self, p: Packet) {
        let mut out = BytesMut::new();
        encode(&p, Protocol::V5, &mut out);
        self.s.write_all(&out).await.unwrap();
    }

    async fn recv(&mut self) -> Option<Packet> {
        loop {
            if let Some(p) = decode(&mut self.buf, Protocol::V5, usize::MAX).unwrap() {
                return Some(p);
            }
            match tokio::time::timeout(Duration::from_secs(10), self.s.read_buf(&mut self.buf))
                .await
            {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    async fn subscribe(&mut self, filter: &str) -> u8 {
        self.send(Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![SubscribeFilter {
                filter: filter.into(),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..SubscriptionOptions::default()
                },
            }],
            ..Subscribe::default()
        }))
        .await;
        match self.recv().await {
            Some(Packet::SubAck(a)) => a.reason_codes[0],
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Publishes at QoS 1: the PUBACK's reason code.
    async fn publish(&mut self, topic: &str, payload: &[u8]) -> u8 {
        self.send(Packet::Publish(Publish {
            qos: QoS::AtLeastOnce,
            topic: topic.into(),
            packet_id: 7,
            payload: bytes::Bytes::copy_from_slice(payload),
            ..Publish::default()
        }))
        .await;
        match self.recv().await {
            Some(Packet::PubAck(a)) => a.reason,
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }

    async fn expect_message(&mut self) -> (String, Vec<u8>) {
        self.message()
            .await
            .unwrap_or_else(|| panic!("expected a message, got none"))
    }

    /// The next message (acknowledged), or `None` when something else or nothing came.
    async fn message(&mut self) -> Option<(String, Vec<u8>)> {
        match self.recv().await {
            Some(Packet::Publish(p)) => {
                if p.qos == QoS::AtLeastOnce {
                    self.send(Packet::PubAck(Ack {
                        packet_id: p.packet_id,
                        ..Ack::default()
                    }))
                    .await;
                }
                Some((p.topic.to_string(), p.payload.to_vec()))
            }
            other => {
                eprintln!("expected a message, got {other:?}");
                None
            }
        }
    }
}

fn container_ip(name: &str) -> String {
    docker_ok(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        name,
    ])
}

/// Runs one pod of a rendered workload the way the kubelet would: an infrastructure container
/// holds the pod's host name, DNS `aliases` on the run's network and `extra` docker arguments
/// (published ports), and the pod's containers share its network; emptyDirs and claims are host directories shared by the pod's containers;
/// ConfigMaps and Secrets are mounted read-only from `dir` (see [`write_volumes`]); the
/// environment is resolved (`fieldRef` to the pod name, `secretKeyRef` from the Secrets, and
/// `$(VAR)` in commands and arguments); users, read-only roots and commands are the spec's.
/// Returns the containers' names, the infrastructure container first.
#[allow(clippy::too_many_arguments)] // what a pod needs, spelt out at each call
fn start_pod(
    run: &mut Run,
    dir: &Path,
    secrets: &BTreeMap<String, BTreeMap<String, String>>,
    prefix: &str,
    pod_name: &str,
    aliases: &[String],
    extra: &[&str],
    pod: &k8s_openapi::api::core::v1::PodSpec,
) -> Vec<String> {
    let pod_dir = dir.join("pods").join(pod_name);
    let psc = pod.security_context.clone().unwrap_or_default();
    // The pod's network: an infrastructure container (Kubernetes' pause) holds the host name,
    // the DNS names and the published ports; the pod's containers join it, so one can die
    // while the pod, and its name, remain.
    let infra = format!("{prefix}-{pod_name}");
    let mut infra_args: Vec<String> = vec![
        "run".into(),
        "-d".into(),
        "--name".into(),
        infra.clone(),
        "--hostname".into(),
        pod_name.to_owned(),
        "--network".into(),
        run.net.clone(),
    ];
    for a in aliases {
        infra_args.extend(["--network-alias".into(), a.clone()]);
    }
    infra_args.extend(extra.iter().map(|a| (*a).to_owned()));
    infra_args.extend([
        "--entrypoint".into(),
        "sleep".into(),
        "rookery-redis:dev".into(),
        "infinity".into(),
    ]);
    let refs: Vec<&str> = infra_args.iter().map(String::as_str).collect();
    docker_ok(&refs);
    run.containers.push(infra.clone());
    let mut names = vec![infra.clone()];
    for c in &pod.containers {
        let name = format!("{prefix}-{pod_name}-{}", c.name);
        let mut args: Vec<String> = vec!["run".into(), "-d".into(), "--name".into(), name.clone()];
        args.extend(["--network".into(), format!("container:{infra}")]);
        let sc = c.security_context.clone().unwrap_or_default();
        let uid = sc.run_as_user.or(psc.run_as_user);
        let gid = sc.run_as_group.or(psc.run_as_group);
        if let Some(uid) = uid {
            args.extend(["--user".into(), format!("{uid}:{}", gid.unwrap_or(uid))]);
        }
        if sc.read_only_root_filesystem == Some(true) {
            args.push("--read-only".into());
        }
        if let Some(g) = pod.termination_grace_period_seconds {
            args.extend(["--stop-timeout".into(), g.to_string()]);
        }
        // The environment, resolved.
        let mut env: Vec<(String, String)> = Vec::new();
        for e in c.env.clone().unwrap_or_default() {
            let value = match (&e.value, &e.value_from) {
                (Some(v), _) => v.clone(),
                (None, Some(from)) => {
                    if from.field_ref.is_some() {
                        pod_name.to_owned()
                    } else if let Some(r) = &from.secret_key_ref {
                        secrets[&r.name][&r.key].clone()
                    } else {
                        panic!("unsupported env source {from:?}")
                    }
                }
                _ => String::new(),
            };
            env.push((e.name.clone(), value));
        }
        let expand = |s: &str| {
            let mut out = s.to_owned();
            for (k, v) in &env {
                out = out.replace(&format!("$({k})"), v);
            }
            out
        };
        for (k, v) in &env {
            args.extend(["-e".into(), format!("{k}={v}")]);
        }
        // Volumes.
        let volumes: BTreeMap<String, _> = pod
            .volumes
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|v| (v.name.clone(), v))
            .collect();
        for m in c.volume_mounts.clone().unwrap_or_default() {
            let v = volumes.get(&m.name);
            let source = match v {
                Some(v) if v.config_map.is_some() || v.secret.is_some() => {
                    let (base, items) = match (&v.config_map, &v.secret) {
                        (Some(cm), _) => (dir.join("configmap").join(&cm.name), cm.items.clone()),
                        (_, Some(s)) => (
                            dir.join("secret").join(s.secret_name.as_deref().unwrap()),
                            s.items.clone(),
                        ),
                        _ => unreachable!(),
                    };
                    match items {
                        Some(items) => {
                            let renamed = pod_dir.join("items").join(&m.name);
                            std::fs::create_dir_all(&renamed).unwrap();
                            for it in items {
                                std::fs::copy(base.join(&it.key), renamed.join(&it.path)).unwrap();
                            }
                            renamed
                        }
                        None => base,
                    }
                }
                // emptyDir or a claim: a directory of the pod, writable by its user.
                _ => {
                    let d = pod_dir.join("volumes").join(&m.name);
                    std::fs::create_dir_all(&d).unwrap();
                    let _ = Command::new("chmod")
                        .args(["1777", d.to_str().unwrap()])
                        .status();
                    d
                }
            };
            let ro = if m.read_only == Some(true)
                || v.is_some_and(|v| v.config_map.is_some() || v.secret.is_some())
            {
                ":ro"
            } else {
                ""
            };
            args.extend([
                "-v".into(),
                format!("{}:{}{ro}", source.display(), m.mount_path),
            ]);
        }
        let _ = Command::new("chmod")
            .args(["-R", "a+rX", dir.to_str().unwrap()])
            .status();
        let command = c.command.clone().unwrap_or_default();
        if let Some(first) = command.first() {
            args.extend(["--entrypoint".into(), expand(first)]);
        }
        args.push(c.image.clone().unwrap());
        args.extend(command.iter().skip(1).map(|a| expand(a)));
        args.extend(c.args.clone().unwrap_or_default().iter().map(|a| expand(a)));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        docker_ok(&refs);
        run.containers.push(name.clone());
        names.push(name);
    }
    names
}

/// Every Secret's keys as text: the rendered ones and the user's.
fn secret_values(objects: &[Value], user: &[Secret]) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut all = BTreeMap::new();
    for o in objects.iter().filter(|o| o["kind"] == "Secret") {
        let s: Secret = serde_json::from_value(o.clone()).unwrap();
        let keys = s
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
            .collect();
        all.insert(s.metadata.name.unwrap(), keys);
    }
    for s in user {
        all.insert(
            s.metadata.name.clone().unwrap(),
            s.string_data
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
        );
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rendered_production_example_runs_with_tls_acls_and_crosses_nodes() {
    for image in [
        "rookery-broker:dev",
        "rookery-haproxy:dev",
        "rookery-redis:dev",
        "rookery-postgres:dev",
    ] {
        assert!(
            docker(&["image", "inspect", image]).status.success(),
            "image {image} is missing: run e2e/images/build.sh (scripts/test does)"
        );
    }
    let example =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples/production.yaml");
    let cluster: MqttCluster =
        serde_yaml::from_str(&std::fs::read_to_string(example).unwrap()).unwrap();
    let devices = DeviceCa::new();
    let user_secrets = vec![
        secret(
            "mqtt-users",
            &[("dashboard", "dashboard-pw"), ("ingest", "ingest-pw")],
        ),
        secret("mqtt-redis", &[("url", "redis://redis.data.svc:6379/0")]),
        secret(
            "mqtt-postgres",
            &[("url", "postgres://rookery:secret@pg.data.svc:5432/rookery")],
        ),
        secret("device-ca", &[("ca.crt", &devices.pem)]),
        secret(
            "mqtt-coap-psk",
            &[("psk", &format!("sensor-9:{}\n", hex(SENSOR_9_KEY)))],
        ),
    ];
    let env = Environment {
        broker_image: "rookery-broker:dev".into(),
        haproxy_image: "rookery-haproxy:dev".into(),
        service_monitor_crd: true,
        ..Environment::default()
    };
    let names = Names::of(&cluster, &env.domain);
    let material = inputs::material(
        &cluster,
        &names,
        &Inputs::from_secrets(user_secrets.clone()),
    )
    .unwrap();
    let rendered = render::render(&cluster, &env, &material, 0).unwrap();
    let find = |kind: &str| -> Vec<&Value> {
        rendered
            .objects
            .iter()
            .filter(|o| o["kind"] == kind)
            .collect()
    };
    let sts: StatefulSet = serde_json::from_value(find("StatefulSet")[0].clone()).unwrap();
    let lb: Deployment = serde_json::from_value(find("Deployment")[0].clone()).unwrap();

    let dir = tempfile::tempdir().unwrap();
    write_volumes(dir.path(), &rendered.objects, &user_secrets);

    let prefix = format!("rr{}", std::process::id());
    let net = format!("{prefix}-net");
    docker_ok(&["network", "create", &net]);
    let mut run = Run {
        containers: Vec::new(),
        net: net.clone(),
    };

    // The stores, under the names the user's Secrets give.
    let redis = format!("{prefix}-redis");
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &redis,
        "--network",
        &net,
        "--network-alias",
        "redis.data.svc",
        "rookery-redis:dev",
    ]);
    run.containers.push(redis.clone());
    let pg = format!("{prefix}-pg");
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &pg,
        "--network",
        &net,
        "--network-alias",
        "pg.data.svc",
        "-e",
        "POSTGRES_PASSWORD=secret",
        "rookery-postgres:dev",
    ]);
    run.containers.push(pg.clone());
    run.until("PostgreSQL", Duration::from_secs(120), || {
        docker(&["exec", &pg, "pg_isready", "-h", "127.0.0.1", "-q"])
            .status
            .success()
    });
    run.until("Redis", Duration::from_secs(60), || {
        docker(&["exec", &redis, "redis-cli", "ping"])
            .status
            .success()
    });

    // The broker pods, as the StatefulSet describes them.
    let spec = sts.spec.as_ref().unwrap();
    let pod = spec.template.spec.as_ref().unwrap();
    let c = &pod.containers[0];
    let user = pod.security_context.as_ref().unwrap();
    let uid = format!(
        "{}:{}",
        user.run_as_user.unwrap(),
        user.run_as_group.unwrap()
    );
    let replicas = spec.replicas.unwrap();
    assert_eq!(replicas, 3);
    let mut brokers = Vec::new();
    for i in 0..replicas {
        let pod_name = names.pod(i);
        let container = format!("{prefix}-{pod_name}");
        let mut args: Vec<String> = vec![
            "run".into(),
            "-d".into(),
            "--name".into(),
            container.clone(),
            "--hostname".into(),
            pod_name.clone(),
            "--network".into(),
            net.clone(),
            "--network-alias".into(),
            names.pod_host(i),
            "--network-alias".into(),
            names.headless_host(),
            "--user".into(),
            uid.clone(),
            "--stop-timeout".into(),
            pod.termination_grace_period_seconds.unwrap().to_string(),
            "-e".into(),
            format!("ROOKERY_NODE_ID={pod_name}"),
        ];
        if c.security_context
            .as_ref()
            .and_then(|s| s.read_only_root_filesystem)
            == Some(true)
        {
            args.push("--read-only".into());
        }
        args.extend(mounts(dir.path(), pod, 0));
        args.push(c.image.clone().unwrap());
        args.extend(c.args.clone().unwrap_or_default());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        docker_ok(&refs);
        run.containers.push(container.clone());
        brokers.push(container);
    }

    // HAProxy, as the Deployment describes it, under the client Service's name.
    let lb_pod = lb.spec.as_ref().unwrap().template.spec.clone().unwrap();
    let lbc = &lb_pod.containers[0];
    let lb_user = lb_pod.security_context.as_ref().unwrap();
    let haproxy = format!("{prefix}-lb");
    let mut args: Vec<String> = vec![
        "run".into(),
        "-d".into(),
        "--name".into(),
        haproxy.clone(),
        "--network".into(),
        net.clone(),
        "--network-alias".into(),
        names.service_host(&names.client_service()),
        "--user".into(),
        format!(
            "{}:{}",
            lb_user.run_as_user.unwrap(),
            lb_user.run_as_group.unwrap()
        ),
        "--read-only".into(),
        "-p".into(),
        "127.0.0.1::8883".into(),
        "-p".into(),
        "127.0.0.1::8404".into(),
    ];
    args.extend(mounts(dir.path(), &lb_pod, 0));
    args.push("--entrypoint".into());
    let command = lbc.args.clone().unwrap();
    args.push(command[0].clone());
    args.push(lbc.image.clone().unwrap());
    args.extend(command[1..].iter().cloned());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    docker_ok(&refs);
    run.containers.push(haproxy.clone());
    let port = |p: &str| -> SocketAddr {
        docker_ok(&["port", &haproxy, p])
            .lines()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (lb_addr, stats) = (port("8883/tcp"), port("8404/tcp"));
    run.until(
        "three brokers UP behind HAProxy",
        Duration::from_secs(120),
        || stats_up(stats, "mqtts") == 3,
    );

    // The cluster formed: every broker linked to the two others over mutual TLS.
    let token = material.admin_token.clone();
    let ips: Vec<String> = brokers.iter().map(|b| container_ip(b)).collect();
    run.until(
        "every broker linked to both others",
        Duration::from_secs(60),
        || {
            ips.iter().all(|ip| {
                admin_status(ip, &token).is_some_and(|s| {
                    s["peers"]
                        .as_array()
                        .is_some_and(|p| p.iter().filter(|x| x["up"] == true).count() == 2)
                })
            })
        },
    );
    let connections = || -> Vec<i64> {
        ips.iter()
            .map(|ip| {
                admin_status(ip, &token)
                    .and_then(|s| s["connections"].as_i64())
                    .unwrap_or(-1)
            })
            .collect()
    };
    // Connects a client and finds the broker HAProxy gave it to.
    let ca = material.server_tls.as_ref().unwrap().ca_pem.clone();
    let mut landed = Vec::new();
    let connect_at = |id: &'static str,
                      user: Option<(&'static str, &'static str)>,
                      cert: Option<(String, String)>| {
        let before = connections();
        let ca = ca.clone();
        async move {
            let (client, code) = Client::connect(lb_addr, &ca, id, user, cert.as_ref()).await;
            (client, code, before)
        }
    };

    let sensor = devices.device("sensor-1");
    let mut clients = Vec::new();
    for (id, user, cert) in [
        ("dashboard", Some(("dashboard", "dashboard-pw")), None),
        ("ingest", Some(("ingest", "ingest-pw")), None),
        ("sensor-1", None, Some(sensor.clone())),
    ] {
        let (client, code, before) = connect_at(id, user, cert).await;
        assert_eq!(code, 0, "{id} refused");
        let mut node = None;
        for _ in 0..50 {
            let after = connections();
            if let Some(n) = (0..after.len()).find(|&n| after[n] > before[n]) {
                node = Some(n);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        landed.push(node.expect("the client shows on a broker"));
        clients.push(client.unwrap());
    }
    let [mut dashboard, mut ingest, mut device]: [Client; 3] = clients.try_into().ok().unwrap();
    assert!(
        landed
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            >= 2,
        "least connections spreads TLS clients: {landed:?}"
    );
    assert!(
        landed[0] != landed[2] || landed[1] != landed[2],
        "a subscriber is on another broker than the device: {landed:?}"
    );

    assert_eq!(dashboard.subscribe("devices/#").await, 1);
    assert_eq!(ingest.subscribe("devices/#").await, 1);
    assert_eq!(device.subscribe("commands/sensor-1/#").await, 1);
    // The ACL: applications may not write telemetry.
    assert_eq!(
        ingest.subscribe("commands/#").await,
        0x87,
        "ingest may not read commands"
    );
    // Routes reach every node before the first publish.
    tokio::time::sleep(Duration::from_secs(1)).await;

    assert_eq!(
        device
            .publish("devices/sensor-1/telemetry/temp", b"21.5")
            .await,
        0
    );
    for (who, c) in [("dashboard", &mut dashboard), ("ingest", &mut ingest)] {
        assert_eq!(
            c.expect_message().await,
            (
                "devices/sensor-1/telemetry/temp".to_owned(),
                b"21.5".to_vec()
            ),
            "{who} (on broker {}) got the device's message from broker {}",
            landed[if who == "dashboard" { 0 } else { 1 }],
            landed[2]
        );
    }
    // A device writes only under its own name.
    assert_eq!(
        device
            .publish("devices/sensor-2/telemetry/temp", b"x")
            .await,
        0x87
    );
    // Commands flow back.
    assert_eq!(
        dashboard.publish("commands/sensor-1/reboot", b"now").await,
        0
    );
    assert_eq!(
        device.expect_message().await,
        ("commands/sensor-1/reboot".to_owned(), b"now".to_vec())
    );
    // Nobody gets in without a certificate or a password, or with a wrong one.
    let (none, code, _) = connect_at("anon", None, None).await;
    assert!(none.is_none());
    assert_eq!(code, 0x87, "anonymous: not authorized");
    let (none, code, _) = connect_at("intruder", Some(("dashboard", "wrong")), None).await;
    assert!(none.is_none());
    assert_eq!(code, 0x86, "bad user name or password");

    // The CoAP gateway (the example enables it): the same passwords and ACL as MQTT.
    let gateway: SocketAddr = format!("{}:5683", ips[0]).parse().unwrap();
    let post = 0x02;
    let get = 0x01;
    assert_eq!(
        coap(gateway, post, "x", &["u=dashboard", "p=wrong"]),
        0x81,
        "CoAP with a wrong password: 4.01"
    );
    assert_eq!(
        coap(gateway, post, "x", &["u=dashboard", "p=dashboard-pw"]),
        0x83,
        "the ACL does not let dashboard write devices/dashboard/x: 4.03"
    );
    assert_eq!(
        coap(gateway, get, "x", &["u=ingest", "p=ingest-pw"]),
        0x84,
        "ingest may read devices/ingest/x, which holds nothing: 4.04"
    );

    // CoAP over DTLS (the example enables it): the key from the user's Secret, mounted where
    // the configuration says; the PSK identity is the user name the ACL sees.
    let secure: SocketAddr = format!("{}:5684", ips[0]).parse().unwrap();
    assert_eq!(
        coaps(secure, "sensor-9", SENSOR_9_KEY, "telemetry/temp", b"7").await,
        Some(0x44),
        "a DTLS device writes its telemetry: 2.04"
    );
    assert_eq!(
        dashboard.expect_message().await,
        ("devices/sensor-9/telemetry/temp".to_owned(), b"7".to_vec())
    );
    assert_eq!(
        coaps(secure, "sensor-9", SENSOR_9_KEY, "config", b"x").await,
        Some(0x83),
        "and nothing else: 4.03"
    );
    assert_eq!(
        coaps(secure, "sensor-9", b"a wrong key", "telemetry/temp", b"8").await,
        None,
        "a wrong key gets no session"
    );
    drop(run);
}

const SENSOR_9_KEY: &[u8] = b"sensor nine's key";

fn hex(key: &[u8]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// A confirmable CoAP POST over DTLS with a pre-shared key: the code of the piggybacked
/// answer, or `None` when no session could be made.
async fn coaps(
    addr: SocketAddr,
    identity: &str,
    key: &[u8],
    path: &str,
    payload: &[u8],
) -> Option<u8> {
    use std::sync::Arc;
    use webrtc_dtls::cipher_suite::CipherSuiteId;
    use webrtc_dtls::config::Config;
    use webrtc_dtls::conn::DTLSConn;

    let socket = tokio::net::UdpSocket::bind("0.0.0.0:0").await.unwrap();
    socket.connect(addr).await.unwrap();
    let key = key.to_vec();
    let config = Config {
        psk: Some(Arc::new(move |_hint: &[u8]| Ok(key.clone()))),
        psk_identity_hint: Some(identity.as_bytes().to_vec()),
        cipher_suites: vec![CipherSuiteId::Tls_Psk_With_Aes_128_Ccm_8],
        ..Config::default()
    };
    let conn = match tokio::time::timeout(
        Duration::from_secs(10),
        DTLSConn::new(Arc::new(socket), config, true, None),
    )
    .await
    {
        Ok(Ok(conn)) => conn,
        _ => return None,
    };
    let id = rand_id();
    let mut msg = vec![0x40, 0x02, (id >> 8) as u8, id as u8];
    for (i, segment) in path.split('/').enumerate() {
        let delta = if i == 0 { 11 } else { 0 };
        assert!(segment.len() < 13);
        msg.push((delta << 4) | segment.len() as u8);
        msg.extend_from_slice(segment.as_bytes());
    }
    msg.push(0xff);
    msg.extend_from_slice(payload);
    conn.write(&msg, Some(Duration::from_secs(5)))
        .await
        .unwrap();
    let mut buf = vec![0u8; 1500];
    let n = conn
        .read(&mut buf, Some(Duration::from_secs(10)))
        .await
        .unwrap();
    let _ = conn.close().await;
    assert!(n >= 4 && u16::from_be_bytes([buf[2], buf[3]]) == id);
    Some(buf[1])
}

/// Sends a confirmable CoAP request (hand-encoded: Uri-Path `path`, one Uri-Query option per
/// item) and returns the response code of the piggybacked answer, retrying like a client.
fn coap(addr: SocketAddr, code: u8, path: &str, queries: &[&str]) -> u8 {
    fn option(out: &mut Vec<u8>, delta: u8, value: &[u8]) {
        assert!(delta < 13 && value.len() < 269);
        if value.len() < 13 {
            out.push((delta << 4) | value.len() as u8);
        } else {
            out.push((delta << 4) | 13);
            out.push((value.len() - 13) as u8);
        }
        out.extend_from_slice(value);
    }
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let id: u16 = rand_id();
    let mut msg = vec![0x40, code, (id >> 8) as u8, id as u8];
    option(&mut msg, 11, path.as_bytes());
    for (i, q) in queries.iter().enumerate() {
        option(&mut msg, if i == 0 { 4 } else { 0 }, q.as_bytes());
    }
    let mut buf = [0u8; 1500];
    for _ in 0..5 {
        socket.send_to(&msg, addr).unwrap();
        if let Ok((n, _)) = socket.recv_from(&mut buf)
            && n >= 4
            && u16::from_be_bytes([buf[2], buf[3]]) == id
        {
            return buf[1];
        }
    }
    panic!("no CoAP answer from {addr}");
}

fn rand_id() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    (std::process::id() as u16) ^ NEXT.fetch_add(1, Ordering::Relaxed).wrapping_mul(7919)
}

/// Runs `sh -c` in a container: its output when it succeeded.
fn exec(container: &str, script: &str) -> Option<String> {
    let out = docker(&["exec", container, "sh", "-c", script]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// What `managed-stores.yaml` renders without CloudNativePG: three Redis pods with Sentinel,
/// a PostgreSQL StatefulSet, the brokers on them and HAProxy. A persistent session and a message
/// queued for it survive the Redis primary dying: Sentinel fails over and the client resumes
/// through HAProxy with its message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_redis_with_sentinel_and_postgres_keep_a_session_through_a_failover() {
    for image in [
        "rookery-broker:dev",
        "rookery-haproxy:dev",
        "rookery-redis:dev",
        "rookery-postgres:dev",
    ] {
        assert!(
            docker(&["image", "inspect", image]).status.success(),
            "image {image} is missing: run e2e/images/build.sh (scripts/test does)"
        );
    }
    let example =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples/managed-stores.yaml");
    let cluster: MqttCluster =
        serde_yaml::from_str(&std::fs::read_to_string(example).unwrap()).unwrap();
    let passwd = rookery_operator::passwords::password_file(
        None,
        &[("app".into(), b"app-password".to_vec())],
        None,
    )
    .unwrap();
    let user_secrets = vec![secret("mqtt-passwords", &[("passwd", &passwd)])];
    let env = Environment {
        broker_image: "rookery-broker:dev".into(),
        haproxy_image: "rookery-haproxy:dev".into(),
        redis_image: "rookery-redis:dev".into(),
        postgres_image: "rookery-postgres:dev".into(),
        ..Environment::default()
    };
    let names = Names::of(&cluster, &env.domain);
    let material = inputs::material(
        &cluster,
        &names,
        &Inputs::from_secrets(user_secrets.clone()),
    )
    .unwrap();
    let rendered = render::render(&cluster, &env, &material, 0).unwrap();
    let statefulset = |name: &str| -> StatefulSet {
        let o = rendered
            .objects
            .iter()
            .find(|o| o["kind"] == "StatefulSet" && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no StatefulSet {name}"));
        serde_json::from_value(o.clone()).unwrap()
    };
    let pod_spec = |s: &StatefulSet| s.spec.as_ref().unwrap().template.spec.clone().unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_volumes(dir.path(), &rendered.objects, &user_secrets);
    let secrets = secret_values(&rendered.objects, &user_secrets);

    let prefix = format!("rs{}", std::process::id());
    let net = format!("{prefix}-net");
    docker_ok(&["network", "create", &net]);
    let mut run = Run {
        containers: Vec::new(),
        net: net.clone(),
    };
    let ns = &names.namespace;

    // Redis: three pods; the ClusterIP Service's name resolves to every pod, as its
    // endpoints would.
    let redis = statefulset(&names.redis());
    let redis_pod = pod_spec(&redis);
    let redis_nodes = format!("{}-nodes.{ns}.svc.{}", names.redis(), names.domain);
    let mut redis_pods = Vec::new();
    for i in 0..3 {
        let pod = format!("{}-{i}", names.redis());
        let aliases = [
            format!("{pod}.{redis_nodes}"),
            redis_nodes.clone(),
            names.service_host(&names.redis()),
        ];
        redis_pods.push(start_pod(
            &mut run,
            dir.path(),
            &secrets,
            &prefix,
            &pod,
            &aliases,
            &[],
            &redis_pod,
        ));
    }
    // PostgreSQL: one pod behind its Service.
    let pg = statefulset(&names.postgres());
    let pg_pod = format!("{}-0", names.postgres());
    let pg_containers = start_pod(
        &mut run,
        dir.path(),
        &secrets,
        &prefix,
        &pg_pod,
        &[names.service_host(&names.postgres())],
        &[],
        &pod_spec(&pg),
    );
    run.until("PostgreSQL", Duration::from_secs(120), || {
        exec(&pg_containers[1], "pg_isready -h 127.0.0.1 -q").is_some()
    });
    let sentinel = |i: usize| redis_pods[i][2].clone();
    let master = |i: usize| {
        exec(
            &sentinel(i),
            "redis-cli -p 26379 sentinel get-master-addr-by-name rookery | head -n 1",
        )
        .filter(|m| !m.is_empty())
    };
    run.until(
        "every Sentinel to know the primary",
        Duration::from_secs(120),
        || (0..3).all(|i| master(i).is_some()),
    );
    let primary = master(0).unwrap();
    assert_eq!(
        primary,
        format!("{}-0.{redis_nodes}", names.redis()),
        "pod 0 starts as the primary"
    );

    // The brokers and HAProxy.
    let brokers = statefulset(&names.statefulset());
    let broker_pod = pod_spec(&brokers);
    for i in 0..3 {
        start_pod(
            &mut run,
            dir.path(),
            &secrets,
            &prefix,
            &names.pod(i),
            &[names.pod_host(i), names.headless_host()],
            &[],
            &broker_pod,
        );
    }
    let lb: Deployment = serde_json::from_value(
        rendered
            .objects
            .iter()
            .find(|o| o["kind"] == "Deployment")
            .unwrap()
            .clone(),
    )
    .unwrap();
    let lb_containers = start_pod(
        &mut run,
        dir.path(),
        &secrets,
        &prefix,
        "mqtt-lb",
        &[names.service_host(&names.client_service())],
        &["-p", "127.0.0.1::1883", "-p", "127.0.0.1::8404"],
        &lb.spec.unwrap().template.spec.unwrap(),
    );
    let port = |p: &str| -> SocketAddr {
        docker_ok(&["port", &lb_containers[0], p])
            .lines()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (lb_addr, stats) = (port("1883/tcp"), port("8404/tcp"));
    run.until(
        "three brokers UP behind HAProxy",
        Duration::from_secs(120),
        || stats_up(stats, "mqtt") == 3,
    );

    // A persistent session with a subscription, then offline; a message queued for it.
    let user = ("app", "app-password");
    let (mut watcher, _) = Client::plain(lb_addr, "watcher", user, true)
        .await
        .expect("connect");
    assert_eq!(watcher.subscribe("fleet/#").await, 1);
    drop(watcher);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (mut publisher, _) = Client::plain(lb_addr, "publisher", user, true)
        .await
        .expect("connect");
    assert_eq!(publisher.publish("fleet/a", b"before").await, 0);
    drop(publisher);

    // The primary's containers die (the pod, and so its name, remain: the kubelet would
    // restart them).
    let primary_pod = (0..3)
        .find(|&i| primary.starts_with(&format!("{}-{i}.", names.redis())))
        .unwrap();
    let mut kill = vec!["rm", "-f"];
    kill.extend(redis_pods[primary_pod][1..].iter().map(String::as_str));
    docker_ok(&kill);
    let survivor = (primary_pod + 1) % 3;
    run.until(
        "Sentinel to promote a replica",
        Duration::from_secs(90),
        || master(survivor).is_some_and(|m| m != primary),
    );

    // The session is still there, with its message, through any broker.
    let mut resumed = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some((c, present)) = Client::plain(lb_addr, "watcher", user, false).await {
            assert!(present, "the session survived the failover");
            resumed = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut watcher =
        resumed.unwrap_or_else(|| panic!("no broker took the client back\n{}", run.logs()));
    assert_eq!(
        watcher.expect_message().await,
        ("fleet/a".to_owned(), b"before".to_vec())
    );
    // A message published after the failover reaches the session too: every broker's store
    // follows the new primary, whichever Sentinel address its name resolves to first (the
    // dead pod's among them). A publisher told to retry (0x97, store unavailable) retries.
    let (mut publisher, _) = Client::plain(lb_addr, "publisher", user, true)
        .await
        .expect("connect");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match publisher.publish("fleet/b", b"after").await {
            0 => break,
            code if Instant::now() < deadline => {
                eprintln!("publish after the failover: {code:#04x}, retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            code => panic!("publish after the failover: {code:#04x}\n{}", run.logs()),
        }
    }
    let got = watcher.message().await;
    assert_eq!(
        got,
        Some(("fleet/b".to_owned(), b"after".to_vec())),
        "the message published after the failover\n{}",
        run.logs()
    );
    drop(run);
}
