//! The reconcile loop: read the `MqttCluster` and what it refers to, validate, build every
//! object (pure, [`crate::render`]), apply what differs with server-side apply under one field
//! manager, delete what is no longer wanted, read the brokers back, write the status.
//!
//! An invalid spec only sets `ConfigValid=False`: nothing running is touched. A reconcile of
//! an unchanged cluster writes nothing: an object is applied only when the live one does not
//! already hold every field the operator wants, and the status only when it changed.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::Value;
use tracing::{info, warn};

use crate::builders::Environment;
use crate::builders::meta::{Component, FIELD_MANAGER, Names, ports, selector_string};
use crate::crd::{MqttCluster, MqttClusterStatus, NodeStatus};
use crate::inputs::{self, Inputs};
use crate::status::{self, Observed};
use crate::validate::{describe, validate};

/// Errors of one reconcile; the loop retries with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API refused or failed a request.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// An object could not be encoded or decoded.
    #[error("encoding: {0}")]
    Json(#[from] serde_json::Error),
    /// A built object lacks what applying it needs (a builder bug).
    #[error("malformed object: {0}")]
    Malformed(String),
}

/// Asks one broker for its `/admin/status` (host, admin token); `None` when it does not answer.
pub type NodeProbe = Arc<dyn Fn(String, String) -> BoxFuture<'static, Option<Value>> + Send + Sync>;

/// Asks one broker to drain and stay up drained (`POST /admin/drain?stay=true`); whether it
/// accepted.
pub type NodeDrain = Arc<dyn Fn(String, String) -> BoxFuture<'static, bool> + Send + Sync>;

/// Counters the operator exports at `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Reconciles started.
    pub reconciles: AtomicU64,
    /// Reconciles that failed.
    pub errors: AtomicU64,
    /// Total reconcile time, microseconds.
    pub duration_micros: AtomicU64,
    /// Objects created, changed or deleted.
    pub writes: AtomicU64,
    /// This replica holds the leader lease (or runs without election).
    pub leader: AtomicBool,
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "# HELP rookery_operator_reconciles_total Reconciles started.\n\
             # TYPE rookery_operator_reconciles_total counter\n\
             rookery_operator_reconciles_total {}\n\
             # HELP rookery_operator_reconcile_errors_total Reconciles that failed.\n\
             # TYPE rookery_operator_reconcile_errors_total counter\n\
             rookery_operator_reconcile_errors_total {}\n\
             # HELP rookery_operator_reconcile_seconds_total Time spent reconciling.\n\
             # TYPE rookery_operator_reconcile_seconds_total counter\n\
             rookery_operator_reconcile_seconds_total {:.6}\n\
             # HELP rookery_operator_writes_total Objects created, changed or deleted.\n\
             # TYPE rookery_operator_writes_total counter\n\
             rookery_operator_writes_total {}\n\
             # HELP rookery_operator_leader Whether this replica is the leader.\n\
             # TYPE rookery_operator_leader gauge\n\
             rookery_operator_leader {}\n",
            get(&self.reconciles),
            get(&self.errors),
            get(&self.duration_micros) as f64 / 1e6,
            get(&self.writes),
            u8::from(self.leader.load(Ordering::Relaxed)),
        )
    }
}

/// What every reconcile shares.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Images and DNS domain (the optional CRDs are looked up on each reconcile).
    pub env: Environment,
    /// Reads a broker's status.
    pub probe: NodeProbe,
    /// Starts a broker's drain.
    pub drain: NodeDrain,
    /// The operator's counters.
    pub metrics: Arc<Metrics>,
    /// Who publishes events.
    pub reporter: Reporter,
    /// Consecutive failures per cluster, for the backoff.
    pub failures: parking_lot::Mutex<HashMap<String, u32>>,
    /// When each cluster's status was last written, to write live figures at most every
    /// [`LIVE_FIGURES_EVERY`].
    pub status_written: parking_lot::Mutex<HashMap<String, Instant>>,
}

/// How often the live per-node figures alone justify a status write.
pub const LIVE_FIGURES_EVERY: Duration = Duration::from_secs(30);

/// The status without the figures that change all the time (connections, sessions, queues).
fn settled(s: &MqttClusterStatus) -> MqttClusterStatus {
    let mut s = s.clone();
    s.connections = None;
    for n in &mut s.nodes {
        n.connections = None;
        n.sessions = None;
        n.queued_messages = None;
    }
    s
}

fn resource_of(obj: &Value) -> Result<(ApiResource, String), Error> {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    if kind.is_empty() || name.is_empty() || api_version.is_empty() {
        return Err(Error::Malformed(format!("{api_version}/{kind}/{name}")));
    }
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    Ok((ApiResource::from_gvk(&gvk), name.to_owned()))
}

/// The annotation on the brokers' StatefulSet holding the hash of the pod template the operator
/// last sent: a new one starts a pod-by-pod upgrade.
pub const TEMPLATE_HASH: &str = "rookery.dev/template-hash";

/// The annotation holding the hash of what the operator last applied to an object.
pub const APPLIED_HASH: &str = "rookery.dev/applied-hash";

/// `obj` with the hash of its content in [`APPLIED_HASH`].
pub fn with_applied_hash(obj: &Value) -> Value {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(obj.to_string().as_bytes());
    let hash: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    let mut out = obj.clone();
    if let Some(meta) = out.get_mut("metadata").and_then(Value::as_object_mut) {
        let annotations = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(a) = annotations.as_object_mut() {
            a.insert(APPLIED_HASH.into(), Value::String(hash));
        }
    }
    out
}

/// Applies `obj` unless the live object carries the hash of exactly this content (what the
/// operator applied last: the API server's normalisation of quantities and defaults does not
/// count as a change) and still holds it. A field the operator stops sending changes the hash,
/// so the apply removes it. `Ok(true)` when it wrote.
async fn apply(client: &Client, ns: &str, obj: &Value) -> Result<bool, Error> {
    let (ar, name) = resource_of(obj)?;
    let obj = with_applied_hash(obj);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    if let Some(live) = api.get_opt(&name).await? {
        let hash = |o: &Value| {
            o["metadata"]["annotations"][APPLIED_HASH]
                .as_str()
                .map(str::to_owned)
        };
        let live = serde_json::to_value(&live)?;
        if hash(&live).is_some() && hash(&live) == hash(&obj) {
            return Ok(false);
        }
    }
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&obj),
    )
    .await?;
    Ok(true)
}

/// The kinds the operator may have made, to prune what it no longer wants.
fn prunable(env: &Environment) -> Vec<(&'static str, &'static str, &'static str)> {
    let mut kinds = vec![
        ("", "v1", "ConfigMap"),
        ("", "v1", "Secret"),
        ("", "v1", "Service"),
        ("apps", "v1", "Deployment"),
        ("apps", "v1", "StatefulSet"),
        ("policy", "v1", "PodDisruptionBudget"),
        ("networking.k8s.io", "v1", "NetworkPolicy"),
    ];
    if env.service_monitor_crd {
        kinds.push(("monitoring.coreos.com", "v1", "ServiceMonitor"));
    }
    if env.cert_manager_crd {
        kinds.push(("cert-manager.io", "v1", "Certificate"));
    }
    if env.cnpg_crd {
        kinds.push(("postgresql.cnpg.io", "v1", "Cluster"));
    }
    kinds
}

/// Deletes objects of this cluster that the operator made and no longer wants. Returns how
/// many it deleted.
async fn prune(
    client: &Client,
    ns: &str,
    names: &Names,
    uid: Option<String>,
    env: &Environment,
    wanted: &[Value],
) -> Result<u64, Error> {
    let keep: BTreeSet<(String, String)> = wanted
        .iter()
        .map(|o| {
            (
                o["kind"].as_str().unwrap_or_default().to_owned(),
                o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    let selector = format!(
        "app.kubernetes.io/instance={},app.kubernetes.io/managed-by=rookery-operator",
        names.cluster
    );
    let mut deleted = 0;
    for (group, version, kind) in prunable(env) {
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
        for o in api.list(&ListParams::default().labels(&selector)).await? {
            let name = o.name_any();
            // Only what this cluster owns: labels can be copied (CloudNativePG inherits them).
            let owned = o
                .metadata
                .owner_references
                .as_ref()
                .is_some_and(|refs| refs.iter().any(|r| Some(&r.uid) == uid.as_ref()));
            if owned && !keep.contains(&(kind.to_owned(), name.clone())) {
                info!(kind, name, "deleting an object the cluster no longer needs");
                api.delete(&name, &DeleteParams::background()).await?;
                deleted += 1;
            }
        }
    }
    Ok(deleted)
}

/// Which optional CRDs are installed.
async fn detect_crds(client: &Client, env: &Environment) -> Result<Environment, Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut env = env.clone();
    env.cert_manager_crd = api.get_opt("certificates.cert-manager.io").await?.is_some();
    env.service_monitor_crd = api
        .get_opt("servicemonitors.monitoring.coreos.com")
        .await?
        .is_some();
    env.cnpg_crd = api.get_opt("clusters.postgresql.cnpg.io").await?.is_some();
    Ok(env)
}

/// The Secrets the cluster refers to and those the operator made before.
async fn read_inputs(
    client: &Client,
    ns: &str,
    c: &MqttCluster,
    names: &Names,
) -> Result<Inputs, Error> {
    let spec = &c.spec;
    let mut wanted: BTreeSet<String> = [
        names.admin_secret(),
        names.cluster_tls_secret(),
        names.server_tls_secret(),
        names.auth_secret(),
        names.redis(),
        names.postgres(),
    ]
    .into_iter()
    .collect();
    if let Some(r) = &spec.auth.password_secret_ref {
        wanted.insert(r.name.clone());
    }
    wanted.extend(
        spec.auth
            .users
            .iter()
            .map(|u| u.password_secret_ref.name.clone()),
    );
    if let Some(tls) = &spec.tls {
        wanted.extend(tls.secret_name.iter().cloned());
        wanted.extend(tls.client_ca_secret_name.iter().cloned());
    }
    let p = &spec.persistence;
    if let Some(e) = p.redis.as_ref().and_then(|r| r.external.as_ref()) {
        wanted.insert(e.url_secret_ref.name.clone());
    }
    if let Some(e) = p.postgres.as_ref().and_then(|r| r.external.as_ref()) {
        wanted.insert(e.url_secret_ref.name.clone());
    }
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut found = Vec::new();
    for name in wanted {
        if let Some(s) = api.get_opt(&name).await? {
            found.push(s);
        }
    }
    Ok(Inputs::from_secrets(found))
}

/// Where clients connect: the load balancer's addresses with each listener's port.
fn endpoints(c: &MqttCluster, svc: Option<&Service>) -> Vec<String> {
    let hosts: Vec<String> = svc
        .and_then(|s| s.status.as_ref())
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|ing| {
            ing.iter()
                .filter_map(|i| i.hostname.clone().or_else(|| i.ip.clone()))
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    for host in &hosts {
        for (kind, port) in crate::builders::load_balancer::listeners(c) {
            out.push(format!("{}://{host}:{port}", kind.name()));
        }
    }
    out
}

async fn write_status(
    api: &Api<MqttCluster>,
    c: &MqttCluster,
    status: MqttClusterStatus,
) -> Result<bool, Error> {
    if c.status.as_ref() == Some(&status) {
        return Ok(false);
    }
    // A merge patch leaves out what it does not name: fields the new status no longer has are
    // sent as null, so that they are cleared.
    let mut patch = serde_json::to_value(&status)?;
    if let (Some(old), Some(new)) = (
        c.status
            .as_ref()
            .and_then(|s| serde_json::to_value(s).ok())
            .and_then(|v| v.as_object().cloned()),
        patch.as_object_mut(),
    ) {
        for key in old.keys() {
            new.entry(key.clone()).or_insert(Value::Null);
        }
    }
    api.patch_status(
        &c.name_any(),
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "status": patch })),
    )
    .await?;
    Ok(true)
}

async fn event(ctx: &Context, c: &MqttCluster, type_: EventType, reason: &str, note: String) {
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, &c.object_ref(&())).await {
        warn!(error = %e, "could not publish an event");
    }
}

/// One reconcile of one cluster.
pub async fn reconcile(c: Arc<MqttCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics.reconciles.fetch_add(1, Ordering::Relaxed);
    let result = reconcile_inner(&c, &ctx).await;
    ctx.metrics
        .duration_micros
        .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    if result.is_ok() {
        ctx.failures.lock().remove(&key(&c));
    }
    result
}

fn key(c: &MqttCluster) -> String {
    format!("{}/{}", c.namespace().unwrap_or_default(), c.name_any())
}

async fn reconcile_inner(c: &MqttCluster, ctx: &Context) -> Result<Action, Error> {
    let ns = c.namespace().unwrap_or_else(|| "default".into());
    let client = &ctx.client;
    let clusters: Api<MqttCluster> = Api::namespaced(client.clone(), &ns);
    let now = Timestamp::now();

    if let Err(errors) = validate(c) {
        let message = describe(&errors);
        if write_status(&clusters, c, status::invalid(c, message.clone(), now)).await? {
            warn!(cluster = %key(c), %message, "invalid spec: nothing is changed");
            event(ctx, c, EventType::Warning, "InvalidSpec", message).await;
        }
        return Ok(Action::await_change());
    }
    let mut env = detect_crds(client, &ctx.env).await?;
    let names = Names::of(c, &env.domain);
    // The PostgreSQL backend is chosen once: a cluster that has its PostgreSQL StatefulSet
    // keeps it when CloudNativePG is installed later (switching would start an empty
    // database).
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    if env.cnpg_crd && statefulsets.get_opt(&names.postgres()).await?.is_some() {
        env.cnpg_crd = false;
    }
    let inputs = read_inputs(client, &ns, c, &names).await?;
    let user_tls = c
        .spec
        .tls
        .as_ref()
        .and_then(|t| t.secret_name.as_ref())
        .and_then(|s| inputs.secrets.get(s))
        .and_then(|keys| keys.get("tls.crt"))
        .and_then(|b| String::from_utf8(b.clone()).ok());
    // Password checks (Argon2) are CPU work: off the runtime's threads.
    let computed = {
        let (c2, names2) = (c.clone(), names.clone());
        tokio::task::spawn_blocking(move || inputs::material(&c2, &names2, &inputs))
            .await
            .map_err(|e| Error::Malformed(format!("material: {e}")))?
    };
    let material = match computed {
        Ok(m) => m,
        Err(errors) => {
            // A Secret it refers to is missing: the same as an invalid spec, and looked at
            // again soon (Secrets of the user are not watched).
            let message = describe(&errors);
            if write_status(&clusters, c, status::invalid(c, message.clone(), now)).await? {
                event(ctx, c, EventType::Warning, "MissingSecret", message).await;
            }
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
    };

    // Scale-down: the leaving brokers (the highest ordinals) are drained through their admin
    // API and removed only once they hold no session and no message.
    let live = statefulsets.get_opt(&names.statefulset()).await?;
    let live_replicas = live
        .as_ref()
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.replicas);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let mut restarted = 0u64;
    // A broker drained for a scale-down that was then undone stays drained (empty, unready):
    // delete its pod, and the StatefulSet starts it afresh.
    for i in 0..c.spec.replicas.min(live_replicas.unwrap_or(0)) {
        let drained = (ctx.probe)(
            format!("{}:{}", names.pod_host(i), ports::HTTP),
            material.admin_token.clone(),
        )
        .await
        .is_some_and(|s| s["draining"] == true);
        let terminating = pods
            .get_opt(&names.pod(i))
            .await?
            .is_none_or(|p| p.metadata.deletion_timestamp.is_some());
        if drained && !terminating {
            info!(pod = %names.pod(i), "restarting a broker drained for a scale-down that was undone");
            pods.delete(&names.pod(i), &DeleteParams::default()).await?;
            restarted += 1;
        }
    }
    let mut build = c.clone();
    let mut held = None;
    let mut refused = false;
    if let Some(n) = live_replicas
        && n > c.spec.replicas
    {
        match scale_down_step(
            ctx,
            &pods,
            &names,
            c.spec.replicas,
            n,
            &material.admin_token,
        )
        .await?
        {
            Step::Done => {}
            Step::Waiting(why) => {
                held = Some(why);
                build.spec.replicas = n;
            }
            Step::Refused(why) => {
                held = Some(why);
                refused = true;
                build.spec.replicas = n;
            }
        }
    }
    let render = |partition: i32| {
        crate::render::render(&build, &env, &material, partition).map_err(|e| {
            Error::Malformed(format!("a validated spec did not render: {}", describe(&e)))
        })
    };
    // Upgrades go pod by pod through the partition (rollout.rs).
    let desired_template = render(0)?
        .objects
        .iter()
        .find(|o| {
            o["kind"] == "StatefulSet" && o["metadata"]["name"] == names.statefulset().as_str()
        })
        .map(|o| o["spec"]["template"].clone())
        .unwrap_or(Value::Null);
    let template_hash = {
        use sha2::{Digest, Sha256};
        Sha256::digest(desired_template.to_string().as_bytes())
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let live_info = match &live {
        Some(sts) => {
            let value = serde_json::to_value(sts)?;
            Some(crate::rollout::Live {
                replicas: live_replicas.unwrap_or(0),
                partition: value["spec"]["updateStrategy"]["rollingUpdate"]["partition"]
                    .as_i64()
                    .and_then(|p| i32::try_from(p).ok())
                    .unwrap_or(0),
                // By the hash of what the operator last sent, not by comparing with the live
                // template, which the API server has defaulted and normalised.
                template_changed: value["metadata"]["annotations"][TEMPLATE_HASH].as_str()
                    != Some(template_hash.as_str()),
            })
        }
        None => None,
    };
    let at_partition = match (&live_info, &live) {
        (Some(l), Some(sts)) if l.partition > 0 && !l.template_changed => {
            let update_revision = sts.status.as_ref().and_then(|s| s.update_revision.clone());
            pods.get_opt(&names.pod(l.partition)).await?.map(|p| {
                let labels = p.metadata.labels.clone().unwrap_or_default();
                let status = p.status.clone().unwrap_or_default();
                crate::rollout::PodAtPartition {
                    updated: update_revision.is_some()
                        && labels.get("controller-revision-hash") == update_revision.as_ref(),
                    ready: status
                        .conditions
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True"),
                    age_secs: status
                        .start_time
                        .map(|t| now.as_second() - t.0.as_second())
                        .unwrap_or(0),
                }
            })
        }
        _ => None,
    };
    let partition_pod = names.pod(live_info.map(|l| l.partition).unwrap_or(0));
    let rollout = crate::rollout::next(live_info, at_partition, &partition_pod);
    let mut rendered = render(rollout.partition)?;
    for o in &mut rendered.objects {
        if o["kind"] == "StatefulSet" && o["metadata"]["name"] == names.statefulset().as_str() {
            o["metadata"]["annotations"][TEMPLATE_HASH] = Value::String(template_hash.clone());
        }
    }
    let mut writes = 0u64;
    // One refused object (an immutable field changed, say) does not stop the others; it is
    // reported in the status and an event.
    let mut refused_objects = Vec::new();
    for obj in &rendered.objects {
        match apply(client, &ns, obj).await {
            Ok(true) => writes += 1,
            Ok(false) => {}
            Err(Error::Kube(kube::Error::Api(e))) if (400..500).contains(&e.code) => {
                let what = format!(
                    "{} {}: {}",
                    obj["kind"].as_str().unwrap_or_default(),
                    obj["metadata"]["name"].as_str().unwrap_or_default(),
                    e.message
                );
                warn!(cluster = %key(c), %what, "the API server refused an object");
                refused_objects.push(what);
            }
            Err(e) => return Err(e),
        }
    }
    if refused_objects.is_empty() {
        writes += prune(
            client,
            &ns,
            &names,
            c.metadata.uid.clone(),
            &env,
            &rendered.objects,
        )
        .await?;
    }
    writes += restarted;
    ctx.metrics.writes.fetch_add(writes, Ordering::Relaxed);
    if writes > 0 {
        info!(cluster = %key(c), writes, "objects applied");
        event(
            ctx,
            c,
            EventType::Normal,
            "Applied",
            format!("{writes} objects created, changed or deleted"),
        )
        .await;
    }
    let was_refused = |what: &str| {
        c.status
            .as_ref()
            .is_some_and(|s| s.notes.iter().any(|n| n.contains(what)))
    };
    if let Some(why) = held.as_ref().filter(|_| refused)
        && !was_refused(why)
    {
        event(ctx, c, EventType::Warning, "ScaleDownHeld", why.clone()).await;
    }
    for what in &refused_objects {
        if !was_refused(what) {
            event(ctx, c, EventType::Warning, "ApplyRefused", what.clone()).await;
        }
    }

    // Read back.
    let sts = statefulsets.get_opt(&names.statefulset()).await?;
    let sts_status = sts
        .as_ref()
        .and_then(|s| s.status.clone())
        .unwrap_or_default();
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let svc = services.get_opt(&names.client_service()).await?;
    let mut nodes = Vec::new();
    for i in 0..sts_status.replicas {
        let name = names.pod(i);
        let host = format!("{}:{}", names.pod_host(i), ports::HTTP);
        let report = (ctx.probe)(host, material.admin_token.clone()).await;
        let n = |k: &str| report.as_ref().and_then(|r| r[k].as_i64());
        nodes.push(NodeStatus {
            name,
            ready: report.as_ref().is_some_and(|r| r["ready"] == true),
            connections: n("connections"),
            sessions: match (n("sessions_online"), n("sessions_offline")) {
                (Some(a), Some(b)) => Some(a + b),
                _ => None,
            },
            queued_messages: n("queued_messages"),
            draining: report.as_ref().is_some_and(|r| r["draining"] == true),
        });
    }
    let mut notes = rendered.notes.clone();
    if rollout.rolling {
        notes.push(format!(
            "upgrading pod by pod: pods from {} up run the new spec",
            names.pod(rollout.partition)
        ));
    }
    if let Some(why) = &held {
        notes.push(format!("scale-down held: {why}"));
    }
    for what in &refused_objects {
        notes.push(format!("refused by the API server: {what}"));
    }
    let certificate_expiry = material
        .server_tls
        .as_ref()
        .map(|m| m.cert_pem.clone())
        .or(user_tls)
        .and_then(|pem| crate::pki::not_after(&pem))
        .map(|t| t.to_string());
    let observed = Observed {
        replicas: sts_status.replicas,
        ready_replicas: sts_status.ready_replicas.unwrap_or(0),
        updated_replicas: sts_status.updated_replicas.unwrap_or(0),
        nodes,
        endpoints: endpoints(c, svc.as_ref()),
        certificate_expiry,
        notes,
        scale_down_held: held.clone(),
        scale_down_refused: refused,
        refused_objects: refused_objects.clone(),
        rollout_stopped: rollout.stopped.clone(),
        selector: selector_string(&names, Component::Broker),
    };
    let new_status = status::status(c, &observed, now);
    let recent = ctx
        .status_written
        .lock()
        .get(&key(c))
        .is_some_and(|t| t.elapsed() < LIVE_FIGURES_EVERY);
    let only_figures = c.status.as_ref().map(settled) == Some(settled(&new_status));
    if !(recent && only_figures) && write_status(&clusters, c, new_status).await? {
        ctx.status_written.lock().insert(key(c), Instant::now());
    }
    // Node figures and readiness change without any watched object changing; a scale-down
    // under way is looked at again soon.
    Ok(Action::requeue(Duration::from_secs(if held.is_some() {
        5
    } else {
        30
    })))
}

/// Where a scale-down stands.
enum Step {
    /// Every leaving broker is drained and empty: the StatefulSet may shrink.
    Done,
    /// Leaving brokers are draining or handing off.
    Waiting(String),
    /// It cannot go on: a broker that must take the sessions is not ready, or a leaving one
    /// cannot be reached.
    Refused(String),
}

/// One step of a scale-down from `from` brokers to `to`.
async fn scale_down_step(
    ctx: &Context,
    pods: &Api<Pod>,
    names: &Names,
    to: i32,
    from: i32,
    token: &str,
) -> Result<Step, Error> {
    let host = |i: i32| format!("{}:{}", names.pod_host(i), ports::HTTP);
    for i in 0..to {
        let ready = (ctx.probe)(host(i), token.to_owned())
            .await
            .is_some_and(|s| s["ready"] == true);
        if !ready {
            return Ok(Step::Refused(format!(
                "{} is not ready, and the brokers that stay must take the leaving brokers' sessions",
                names.pod(i)
            )));
        }
    }
    let mut waiting = Vec::new();
    for i in to..from {
        let pod = names.pod(i);
        match (ctx.probe)(host(i), token.to_owned()).await {
            None => {
                // A pod that does not exist, or never started, holds nothing to hand off.
                let started = pods.get_opt(&pod).await?.is_some_and(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.phase.as_deref())
                        .is_some_and(|phase| phase != "Pending")
                });
                if started {
                    return Ok(Step::Refused(format!(
                        "{pod} does not answer on its admin port: its sessions cannot be handed off"
                    )));
                }
            }
            Some(s) if s["draining"] != true => {
                if !(ctx.drain)(host(i), token.to_owned()).await {
                    return Ok(Step::Refused(format!("{pod} refused the drain")));
                }
                info!(pod, "scale-down: draining");
                waiting.push(format!("{pod} draining"));
            }
            Some(s) => {
                let n = |k: &str| s[k].as_i64().unwrap_or(0);
                let left = n("connections")
                    + n("sessions_online")
                    + n("sessions_offline")
                    + n("queued_messages");
                if left > 0 {
                    waiting.push(format!(
                        "{pod} hands off {} connections, {} sessions, {} queued messages",
                        n("connections"),
                        n("sessions_online") + n("sessions_offline"),
                        n("queued_messages")
                    ));
                }
            }
        }
    }
    if waiting.is_empty() {
        Ok(Step::Done)
    } else {
        Ok(Step::Waiting(waiting.join("; ")))
    }
}

/// Backoff with jitter per cluster: 5 s doubling to 5 min, each wait between half and all of
/// it.
pub fn error_policy(c: Arc<MqttCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.errors.fetch_add(1, Ordering::Relaxed);
    let n = {
        let mut failures = ctx.failures.lock();
        let n = failures.entry(key(&c)).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let base = (5u64 << n.min(6).saturating_sub(1)).min(300);
    let jitter = rand::random::<f64>() * 0.5 + 0.5;
    let wait = Duration::from_secs_f64(base as f64 * jitter);
    warn!(cluster = %key(&c), %error, retry_in = ?wait, "reconcile failed");
    Action::requeue(wait)
}

/// One request to a broker's admin port with the token: the status code and body, within
/// two seconds.
async fn admin_request(host: &str, method: &str, path: &str, token: &str) -> Option<(u16, String)> {
    let work = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(host).await.ok()?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8(buf).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        let code = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, body.to_owned()))
    };
    tokio::time::timeout(Duration::from_secs(2), work)
        .await
        .ok()
        .flatten()
}

/// The real [`NodeProbe`]: `GET /admin/status`.
pub fn http_probe() -> NodeProbe {
    Arc::new(|host: String, token: String| {
        Box::pin(async move {
            match admin_request(&host, "GET", "/admin/status", &token).await {
                Some((200, body)) => serde_json::from_str(&body).ok(),
                _ => None,
            }
        }) as BoxFuture<'static, Option<Value>>
    })
}

/// The real [`NodeDrain`]: `POST /admin/drain?stay=true`.
pub fn http_drain() -> NodeDrain {
    Arc::new(|host: String, token: String| {
        Box::pin(async move {
            matches!(
                admin_request(&host, "POST", "/admin/drain?stay=true", &token).await,
                Some((202, _))
            )
        }) as BoxFuture<'static, bool>
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resources_come_from_api_version_and_kind() {
        let (ar, name) = resource_of(
            &json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "x"}}),
        )
        .unwrap();
        assert_eq!(
            (ar.group.as_str(), ar.plural.as_str(), name.as_str()),
            ("apps", "statefulsets", "x")
        );
        let (ar, _) =
            resource_of(&json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}}))
                .unwrap();
        assert_eq!(
            (ar.group.as_str(), ar.version.as_str(), ar.plural.as_str()),
            ("", "v1", "secrets")
        );
        let (ar, _) = resource_of(&json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "x"}})).unwrap();
        assert_eq!(ar.plural, "poddisruptionbudgets");
        assert!(resource_of(&json!({"kind": "Secret"})).is_err());
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let m = Metrics::default();
        m.reconciles.fetch_add(3, Ordering::Relaxed);
        let text = m.render();
        assert!(text.contains("rookery_operator_reconciles_total 3\n"));
        assert!(text.contains("rookery_operator_leader 0\n"));
    }
}
