//! The reconcile loop against kube-rs's mocked API (`tower-test`): a small in-memory API
//! server answers the requests the real client makes (get, list by label, server-side apply,
//! status patch, delete, events, leases), and records every write. Scenarios: create, a
//! second reconcile that writes nothing, update, scale-down held and then done, invalid spec,
//! a Secret it refers to deleted, pruning, and leader election between two replicas.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::{Client, ResourceExt};
use parking_lot::Mutex;
use rookery_operator::builders::Environment;
use rookery_operator::controller::{self, Context, Metrics};
use rookery_operator::crd::MqttCluster;
use serde_json::{Value, json};

const NS: &str = "fleet";
const CLUSTER_PATH: &str = "/apis/rookery.dev/v1alpha1/namespaces/fleet/mqttclusters/iot";

/// The API server's state: objects by path, and the writes in order.
#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    writes: Vec<String>,
    version: u64,
    /// Paths whose apply the server refuses (as it does a change of an immutable field).
    refuse: Vec<String>,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<State>>);

fn status_body(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "reason": reason, "code": code, "message": reason})
}

fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    b.remove(k);
                } else {
                    merge(b.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

fn labels_match(o: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        o["metadata"]["labels"][k] == v
    })
}

fn query(uri: &http::Uri, key: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| {
            v.replace("%3D", "=")
                .replace("%2C", ",")
                .replace("%2F", "/")
        })
    })
}

impl Fake {
    fn put(&self, path: &str, mut obj: Value) {
        let mut s = self.0.lock();
        s.version += 1;
        obj["metadata"]["resourceVersion"] = json!(s.version.to_string());
        s.objects.insert(path.to_owned(), obj);
    }

    fn get(&self, path: &str) -> Option<Value> {
        self.0.lock().objects.get(path).cloned()
    }

    fn take_writes(&self) -> Vec<String> {
        std::mem::take(&mut self.0.lock().writes)
    }

    fn answer(&self, method: &Method, uri: &http::Uri, body: &[u8]) -> (StatusCode, Value) {
        let path = uri.path().to_owned();
        let mut s = self.0.lock();
        if method != Method::GET {
            s.writes.push(format!("{method} {path}"));
        }
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(body).unwrap_or(Value::Null)
        };
        match *method {
            Method::GET => {
                if let Some(o) = s.objects.get(&path) {
                    return (StatusCode::OK, o.clone());
                }
                // A collection: list what is directly under it.
                let prefix = format!("{path}/");
                let selector = query(uri, "labelSelector").unwrap_or_default();
                let items: Vec<Value> = s
                    .objects
                    .iter()
                    .filter(|(k, _)| k.starts_with(&prefix) && !k[prefix.len()..].contains('/'))
                    .map(|(_, v)| v.clone())
                    .filter(|o| labels_match(o, &selector))
                    .collect();
                let is_collection = path.ends_with('s') && !items.is_empty()
                    || uri.query().is_some_and(|q| q.contains("labelSelector"));
                if is_collection {
                    return (
                        StatusCode::OK,
                        json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}),
                    );
                }
                (StatusCode::NOT_FOUND, status_body(404, "NotFound"))
            }
            Method::PATCH => {
                s.version += 1;
                let version = s.version.to_string();
                if let Some(target) = path.strip_suffix("/status") {
                    let Some(o) = s.objects.get_mut(target) else {
                        return (StatusCode::NOT_FOUND, status_body(404, "NotFound"));
                    };
                    merge(o, &json!({"status": body["status"]}));
                    o["metadata"]["resourceVersion"] = json!(version);
                    return (StatusCode::OK, o.clone());
                }
                if s.refuse.contains(&path) {
                    return (
                        StatusCode::UNPROCESSABLE_ENTITY,
                        status_body(422, "Invalid: field is immutable"),
                    );
                }
                // Server-side apply: the applied fields over what is there (status kept).
                let o = s.objects.entry(path.clone()).or_insert_with(|| json!({}));
                let status = o.get("status").cloned();
                *o = body;
                if let Some(st) = status {
                    o["status"] = st;
                }
                o["metadata"]["resourceVersion"] = json!(version);
                (StatusCode::OK, o.clone())
            }
            Method::POST => {
                let name = body["metadata"]["name"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("generated-{}", s.version));
                let key = format!("{path}/{name}");
                if s.objects.contains_key(&key) {
                    return (StatusCode::CONFLICT, status_body(409, "AlreadyExists"));
                }
                s.version += 1;
                let mut o = body;
                o["metadata"]["name"] = json!(name);
                o["metadata"]["resourceVersion"] = json!(s.version.to_string());
                s.objects.insert(key, o.clone());
                (StatusCode::CREATED, o)
            }
            Method::PUT => {
                let Some(current) = s.objects.get(&path) else {
                    return (StatusCode::NOT_FOUND, status_body(404, "NotFound"));
                };
                if current["metadata"]["resourceVersion"] != body["metadata"]["resourceVersion"] {
                    return (StatusCode::CONFLICT, status_body(409, "Conflict"));
                }
                s.version += 1;
                let mut o = body;
                o["metadata"]["resourceVersion"] = json!(s.version.to_string());
                s.objects.insert(path, o.clone());
                (StatusCode::OK, o)
            }
            Method::DELETE => match s.objects.remove(&path) {
                Some(_) => (
                    StatusCode::OK,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 200}),
                ),
                None => (StatusCode::NOT_FOUND, status_body(404, "NotFound")),
            },
            _ => (
                StatusCode::METHOD_NOT_ALLOWED,
                status_body(405, "MethodNotAllowed"),
            ),
        }
    }

    /// A client whose requests this fake answers.
    fn client(&self) -> Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let fake = self.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let (parts, body) = req.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                let (code, value) = fake.answer(&parts.method, &parts.uri, &bytes);
                let resp = Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&value).unwrap()))
                    .unwrap();
                send.send_response(resp);
            }
        });
        Client::new(service, NS)
    }
}

/// The brokers as the operator's probes see them: host → (ready, draining, sessions left).
#[derive(Clone, Default)]
struct Brokers(Arc<Mutex<BTreeMap<String, BrokerState>>>);

/// (ready, draining, connections and sessions left)
type BrokerState = (bool, bool, i64);

impl Brokers {
    fn set(&self, pod: &str, ready: bool, draining: bool, left: i64) {
        self.0.lock().insert(host(pod), (ready, draining, left));
    }
    fn get(&self, pod: &str) -> Option<(bool, bool, i64)> {
        self.0.lock().get(&host(pod)).copied()
    }
}

fn host(pod: &str) -> String {
    format!("{pod}.iot-nodes.{NS}.svc.cluster.local:9100")
}

fn context(fake: &Fake) -> Arc<Context> {
    context_with(fake, &Brokers::default())
}

/// A context whose probes answer from `brokers` (a broker not listed is ready with ten
/// clients), and whose drain marks a broker draining.
fn context_with(fake: &Fake, brokers: &Brokers) -> Arc<Context> {
    let (b1, b2) = (brokers.clone(), brokers.clone());
    Arc::new(Context {
        client: fake.client(),
        env: Environment::default(),
        probe: Arc::new(move |host: String, _token: String| {
            let state = b1.0.lock().get(&host).copied();
            Box::pin(async move {
                let (ready, draining, left) = state.unwrap_or((true, false, 10));
                (!host.contains("unreachable")).then(|| {
                    json!({"ready": ready, "draining": draining, "connections": left,
                           "sessions_online": left, "sessions_offline": 2 * left.signum(),
                           "queued_messages": 4 * left.signum(), "host": host})
                })
            })
        }),
        drain: Arc::new(move |host: String, _token: String| {
            let mut m = b2.0.lock();
            let e = m.entry(host).or_insert((true, false, 10));
            e.0 = false;
            e.1 = true;
            Box::pin(async move { true })
        }),
        metrics: Arc::new(Metrics::default()),
        reporter: kube::runtime::events::Reporter {
            controller: "rookery-operator".into(),
            instance: Some("test".into()),
        },
        failures: Mutex::new(Default::default()),
        status_written: Mutex::new(Default::default()),
    })
}

fn seed(fake: &Fake, spec: Value) {
    let obj = json!({
        "apiVersion": "rookery.dev/v1alpha1", "kind": "MqttCluster",
        "metadata": {"name": "iot", "namespace": NS, "uid": "5d9c1a2e-0000-4000-8000-000000000001", "generation": 1},
        "spec": spec,
    });
    fake.put(CLUSTER_PATH, obj);
}

fn set_spec(fake: &Fake, spec: Value) {
    let mut o = fake.get(CLUSTER_PATH).unwrap();
    o["spec"] = spec;
    o["metadata"]["generation"] = json!(o["metadata"]["generation"].as_i64().unwrap() + 1);
    fake.put(CLUSTER_PATH, o);
}

fn secret(fake: &Fake, name: &str, data: &[(&str, &str)]) {
    use base64::Engine;
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| {
            (
                (*k).to_owned(),
                json!(base64::engine::general_purpose::STANDARD.encode(v)),
            )
        })
        .collect();
    fake.put(
        &format!("/api/v1/namespaces/{NS}/secrets/{name}"),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS}, "data": data}),
    );
}

async fn reconcile(fake: &Fake, ctx: &Arc<Context>) -> kube::runtime::controller::Action {
    let c: MqttCluster = serde_json::from_value(fake.get(CLUSTER_PATH).unwrap()).unwrap();
    controller::reconcile(Arc::new(c), ctx.clone())
        .await
        .unwrap()
}

fn cluster(fake: &Fake) -> MqttCluster {
    serde_json::from_value(fake.get(CLUSTER_PATH).unwrap()).unwrap()
}

fn condition(c: &MqttCluster, type_: &str) -> (String, String) {
    let st = c.status.as_ref().unwrap();
    let cond = st.conditions.iter().find(|x| x.type_ == type_).unwrap();
    (cond.status.clone(), cond.message.clone())
}

/// Object writes (not status, events or leases), as "METHOD kind-path".
fn object_writes(writes: &[String]) -> Vec<String> {
    writes
        .iter()
        .filter(|w| !w.ends_with("/status") && !w.contains("/events"))
        .cloned()
        .collect()
}

fn sts_path() -> String {
    format!("/apis/apps/v1/namespaces/{NS}/statefulsets/iot")
}

fn set_sts_status(fake: &Fake, replicas: i32, ready: i32) {
    let mut sts = fake.get(&sts_path()).unwrap();
    sts["status"] = json!({"replicas": replicas, "readyReplicas": ready, "updatedReplicas": replicas, "availableReplicas": ready});
    fake.put(&sts_path(), sts);
}

#[tokio::test]
async fn create_then_a_second_reconcile_writes_nothing() {
    let fake = Fake::default();
    seed(&fake, json!({}));
    let ctx = context(&fake);
    reconcile(&fake, &ctx).await;
    let writes = fake.take_writes();
    let objects = object_writes(&writes);
    assert_eq!(objects.len(), 12, "{objects:#?}");
    assert!(
        objects.iter().all(|w| w.starts_with("PATCH ")),
        "server-side apply: {objects:#?}"
    );
    assert!(
        writes
            .iter()
            .any(|w| w.ends_with("/mqttclusters/iot/status"))
    );
    let sts = fake.get(&sts_path()).unwrap();
    assert_eq!(sts["spec"]["replicas"], 3);
    assert_eq!(
        sts["metadata"]["ownerReferences"][0]["uid"], "5d9c1a2e-0000-4000-8000-000000000001",
        "owned, so deleting the cluster collects it"
    );
    let c = cluster(&fake);
    assert_eq!(c.status.as_ref().unwrap().phase.as_deref(), Some("Pending"));
    assert_eq!(condition(&c, "ConfigValid").0, "True");

    // Nothing changed: nothing written, not even the status or an event.
    reconcile(&fake, &ctx).await;
    assert_eq!(fake.take_writes(), Vec::<String>::new());

    // The brokers come up: only the status changes.
    set_sts_status(&fake, 3, 3);
    fake.take_writes();
    reconcile(&fake, &ctx).await;
    let writes = fake.take_writes();
    assert_eq!(writes, [format!("PATCH {CLUSTER_PATH}/status")]);
    let c = cluster(&fake);
    let st = c.status.as_ref().unwrap();
    assert_eq!(st.phase.as_deref(), Some("Running"));
    assert_eq!(st.nodes.len(), 3);
    assert_eq!(st.connections, Some(30));
    assert_eq!(st.nodes[0].sessions, Some(12));
    assert_eq!(
        ctx.metrics
            .reconciles
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
}

#[tokio::test]
async fn an_update_applies_only_what_changed() {
    let fake = Fake::default();
    seed(&fake, json!({}));
    let ctx = context(&fake);
    reconcile(&fake, &ctx).await;
    set_spec(&fake, json!({"replicas": 5}));
    fake.take_writes();
    reconcile(&fake, &ctx).await;
    let objects = object_writes(&fake.take_writes());
    assert_eq!(objects, [format!("PATCH {}", sts_path())]);
    assert_eq!(fake.get(&sts_path()).unwrap()["spec"]["replicas"], 5);

    // A limit changes the brokers' configuration: the ConfigMap, and the pods' config hash.
    set_spec(&fake, json!({"replicas": 5, "limits": {"maxInflight": 20}}));
    reconcile(&fake, &ctx).await;
    let objects = object_writes(&fake.take_writes());
    assert!(
        objects.contains(&format!(
            "PATCH /api/v1/namespaces/{NS}/configmaps/iot-config"
        )),
        "{objects:#?}"
    );
    assert!(
        objects.contains(&format!("PATCH {}", sts_path())),
        "{objects:#?}"
    );
}

#[tokio::test]
async fn a_scale_down_drains_the_leaving_brokers_and_removes_them_once_empty() {
    let fake = Fake::default();
    let brokers = Brokers::default();
    seed(&fake, json!({"replicas": 5}));
    let ctx = context_with(&fake, &brokers);
    reconcile(&fake, &ctx).await;
    set_sts_status(&fake, 5, 5);
    set_spec(&fake, json!({"replicas": 3}));

    // A broker that stays is not ready: refused, nothing drained, Degraded says why.
    brokers.set("iot-1", false, false, 10);
    reconcile(&fake, &ctx).await;
    assert_eq!(
        fake.get(&sts_path()).unwrap()["spec"]["replicas"],
        5,
        "held"
    );
    assert_eq!(brokers.get("iot-3"), None, "nothing drained");
    let c = cluster(&fake);
    assert_eq!(
        c.status.as_ref().unwrap().phase.as_deref(),
        Some("Degraded")
    );
    let (status, message) = condition(&c, "Degraded");
    assert_eq!(status, "True");
    assert!(message.contains("iot-1 is not ready"), "{message}");
    assert!(
        fake.take_writes().iter().any(|w| w.contains("/events")),
        "an event says why"
    );

    // It is ready again: the leaving brokers (3 and 4) are drained, the StatefulSet waits.
    brokers.set("iot-1", true, false, 10);
    reconcile(&fake, &ctx).await;
    assert_eq!(brokers.get("iot-3").map(|b| b.1), Some(true));
    assert_eq!(brokers.get("iot-4").map(|b| b.1), Some(true));
    assert!(brokers.get("iot-2").is_none(), "iot-2 stays");
    assert_eq!(fake.get(&sts_path()).unwrap()["spec"]["replicas"], 5);
    let c = cluster(&fake);
    let (status, message) = condition(&c, "Progressing");
    assert_eq!(status, "True");
    assert!(
        message.contains("iot-3 draining; iot-4 draining"),
        "{message}"
    );
    assert_eq!(condition(&c, "Degraded").0, "False", "draining is progress");
    // Next look: they are draining, and say what they still hold.
    reconcile(&fake, &ctx).await;
    let c = cluster(&fake);
    let (_, message) = condition(&c, "Progressing");
    assert!(
        message.contains("iot-3 hands off 10 connections, 12 sessions, 4 queued messages"),
        "{message}"
    );

    // iot-3 is empty, iot-4 still hands off: still five.
    brokers.set("iot-3", false, true, 0);
    reconcile(&fake, &ctx).await;
    assert_eq!(fake.get(&sts_path()).unwrap()["spec"]["replicas"], 5);
    // Both empty: the StatefulSet shrinks.
    brokers.set("iot-4", false, true, 0);
    reconcile(&fake, &ctx).await;
    assert_eq!(
        fake.get(&sts_path()).unwrap()["spec"]["replicas"],
        3,
        "done"
    );
}

#[tokio::test]
async fn an_invalid_spec_touches_nothing_running() {
    let fake = Fake::default();
    seed(&fake, json!({}));
    let ctx = context(&fake);
    reconcile(&fake, &ctx).await;
    let before = fake.get(&sts_path()).unwrap();
    set_spec(
        &fake,
        json!({"listeners": {"mqtts": {"enabled": true, "port": 8883}}}),
    );
    fake.take_writes();
    reconcile(&fake, &ctx).await;
    let writes = fake.take_writes();
    assert_eq!(object_writes(&writes), Vec::<String>::new(), "{writes:#?}");
    assert_eq!(fake.get(&sts_path()).unwrap(), before);
    let c = cluster(&fake);
    assert_eq!(c.status.as_ref().unwrap().phase.as_deref(), Some("Invalid"));
    let (status, message) = condition(&c, "ConfigValid");
    assert_eq!(status, "False");
    assert!(message.starts_with("spec.tls:"), "{message}");
}

#[tokio::test]
async fn a_deleted_secret_is_reported_by_the_field_that_names_it() {
    let fake = Fake::default();
    let spec = json!({"auth": {"users": [{"name": "app", "passwordSecretRef": {"name": "users", "key": "app"}}]}});
    seed(&fake, spec.clone());
    secret(&fake, "users", &[("app", "s3cret")]);
    let ctx = context(&fake);
    reconcile(&fake, &ctx).await;
    let auth = fake
        .get(&format!("/api/v1/namespaces/{NS}/secrets/iot-auth"))
        .unwrap();
    assert!(auth["data"]["passwd"].is_string());
    fake.0
        .lock()
        .objects
        .remove(&format!("/api/v1/namespaces/{NS}/secrets/users"));
    fake.take_writes();
    let action = reconcile(&fake, &ctx).await;
    assert_eq!(object_writes(&fake.take_writes()), Vec::<String>::new());
    let (status, message) = condition(&cluster(&fake), "ConfigValid");
    assert_eq!(status, "False");
    assert_eq!(
        message,
        "spec.auth.users[0].passwordSecretRef: Secret \"users\" does not exist"
    );
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(std::time::Duration::from_secs(30))
    );
    // Back again: valid, and the password file is what it was (same hash, no write).
    secret(&fake, "users", &[("app", "s3cret")]);
    reconcile(&fake, &ctx).await;
    assert_eq!(condition(&cluster(&fake), "ConfigValid").0, "True");
    assert_eq!(object_writes(&fake.take_writes()), Vec::<String>::new());
}

#[tokio::test]
async fn what_the_spec_no_longer_asks_for_is_deleted() {
    let fake = Fake::default();
    seed(&fake, json!({}));
    let ctx = context(&fake);
    reconcile(&fake, &ctx).await;
    let pdb = format!("/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/iot");
    assert!(fake.get(&pdb).is_some());
    set_spec(&fake, json!({"podDisruptionBudget": {"enabled": false}}));
    fake.take_writes();
    reconcile(&fake, &ctx).await;
    assert!(fake.get(&pdb).is_none());
    assert!(fake.take_writes().contains(&format!("DELETE {pdb}")));
    let c = cluster(&fake);
    assert_eq!(c.name_any(), "iot");
}

#[tokio::test]
async fn one_replica_leads_the_other_waits_then_takes_over_an_expired_lease() {
    use k8s_openapi::api::coordination::v1::Lease;
    use rookery_operator::leader::try_hold;
    let fake = Fake::default();
    let api: kube::Api<Lease> = kube::Api::namespaced(fake.client(), "ops");
    assert!(try_hold(&api, "rookery-operator", "a").await.unwrap());
    assert!(!try_hold(&api, "rookery-operator", "b").await.unwrap());
    assert!(
        try_hold(&api, "rookery-operator", "a").await.unwrap(),
        "a renews"
    );
    // a stops renewing: its lease ages past its duration.
    let path = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/rookery-operator";
    let mut lease = fake.get(path).unwrap();
    lease["spec"]["renewTime"] = json!("2020-01-01T00:00:00.000000Z");
    fake.put(path, lease);
    assert!(try_hold(&api, "rookery-operator", "b").await.unwrap());
    let lease = fake.get(path).unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    assert!(!try_hold(&api, "rookery-operator", "a").await.unwrap());
}

#[tokio::test]
async fn a_field_removed_from_the_spec_is_removed_from_the_object() {
    let fake = Fake::default();
    seed(&fake, json!({"nodeSelector": {"pool": "mqtt"}}));
    let ctx = context(&fake);
    reconcile(&fake, &ctx).await;
    let pod = |f: &Fake| f.get(&sts_path()).unwrap()["spec"]["template"]["spec"].clone();
    assert_eq!(pod(&fake)["nodeSelector"]["pool"], "mqtt");
    set_spec(&fake, json!({}));
    fake.take_writes();
    reconcile(&fake, &ctx).await;
    assert!(pod(&fake).get("nodeSelector").is_none(), "{}", pod(&fake));
    assert_eq!(
        object_writes(&fake.take_writes()),
        [format!("PATCH {}", sts_path())]
    );
}

#[tokio::test]
async fn status_notes_are_cleared_once_a_scale_down_is_done() {
    let fake = Fake::default();
    let brokers = Brokers::default();
    seed(&fake, json!({"replicas": 4}));
    let ctx = context_with(&fake, &brokers);
    reconcile(&fake, &ctx).await;
    set_sts_status(&fake, 4, 4);
    set_spec(&fake, json!({"replicas": 3}));
    reconcile(&fake, &ctx).await;
    assert!(!cluster(&fake).status.unwrap().notes.is_empty());
    brokers.set("iot-3", false, true, 0);
    reconcile(&fake, &ctx).await;
    assert_eq!(fake.get(&sts_path()).unwrap()["spec"]["replicas"], 3);
    set_sts_status(&fake, 3, 3);
    reconcile(&fake, &ctx).await;
    let st = cluster(&fake).status.unwrap();
    assert!(st.notes.is_empty(), "{:?}", st.notes);
    assert_eq!(st.phase.as_deref(), Some("Running"));
}

#[tokio::test]
async fn a_scale_down_undone_restarts_the_drained_brokers() {
    let fake = Fake::default();
    let brokers = Brokers::default();
    seed(&fake, json!({"replicas": 4}));
    let ctx = context_with(&fake, &brokers);
    reconcile(&fake, &ctx).await;
    set_sts_status(&fake, 4, 4);
    for i in 0..4 {
        fake.put(
            &format!("/api/v1/namespaces/{NS}/pods/iot-{i}"),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("iot-{i}"), "namespace": NS}, "status": {"phase": "Running"}}),
        );
    }
    set_spec(&fake, json!({"replicas": 3}));
    reconcile(&fake, &ctx).await;
    assert_eq!(
        brokers.get("iot-3").map(|b| b.1),
        Some(true),
        "iot-3 drains"
    );
    // The user changes their mind: iot-3 stays, and is started afresh.
    set_spec(&fake, json!({"replicas": 4}));
    fake.take_writes();
    reconcile(&fake, &ctx).await;
    let writes = fake.take_writes();
    assert!(
        writes.contains(&format!("DELETE /api/v1/namespaces/{NS}/pods/iot-3")),
        "{writes:#?}"
    );
    assert!(
        !writes.iter().any(|w| w.contains("/pods/iot-0")),
        "{writes:#?}"
    );
}

#[tokio::test]
async fn an_object_the_server_refuses_does_not_stop_the_others_and_is_reported() {
    let fake = Fake::default();
    seed(&fake, json!({}));
    let ctx = context(&fake);
    reconcile(&fake, &ctx).await;
    fake.0.lock().refuse.push(sts_path());
    set_spec(
        &fake,
        json!({"storage": {"size": "5Gi"}, "limits": {"maxInflight": 7}}),
    );
    fake.take_writes();
    reconcile(&fake, &ctx).await;
    let writes = fake.take_writes();
    assert!(
        writes.contains(&format!(
            "PATCH /api/v1/namespaces/{NS}/configmaps/iot-config"
        )),
        "{writes:#?}"
    );
    let c = cluster(&fake);
    assert_eq!(
        c.status.as_ref().unwrap().phase.as_deref(),
        Some("Degraded")
    );
    let (status, message) = condition(&c, "Degraded");
    assert_eq!(status, "True");
    assert!(
        message.contains("StatefulSet iot") && message.contains("immutable"),
        "{message}"
    );
    assert!(
        writes.iter().any(|w| w.contains("/events")),
        "a Warning event"
    );
    // Reported once, not on every reconcile.
    reconcile(&fake, &ctx).await;
    assert!(!fake.take_writes().iter().any(|w| w.contains("/events")));
}

fn partition(fake: &Fake) -> i64 {
    fake.get(&sts_path()).unwrap()["spec"]["updateStrategy"]["rollingUpdate"]["partition"]
        .as_i64()
        .unwrap()
}

fn set_pod(fake: &Fake, i: i32, revision: &str, ready: bool, started_secs_ago: i64) {
    let started = k8s_openapi::jiff::Timestamp::now()
        .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(
            started_secs_ago,
        ))
        .unwrap();
    fake.put(
        &format!("/api/v1/namespaces/{NS}/pods/iot-{i}"),
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": format!("iot-{i}"), "namespace": NS,
                            "labels": {"controller-revision-hash": revision}},
               "status": {"phase": "Running", "startTime": started.to_string(),
                          "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}}),
    );
}

#[tokio::test]
async fn an_upgrade_goes_pod_by_pod_and_stops_at_a_pod_that_does_not_become_ready() {
    let fake = Fake::default();
    seed(&fake, json!({}));
    let ctx = context(&fake);
    reconcile(&fake, &ctx).await;
    assert_eq!(
        partition(&fake),
        0,
        "a new cluster starts every pod at once"
    );
    set_sts_status(&fake, 3, 3);
    // A new image: only the highest pod first.
    set_spec(&fake, json!({"image": "rookery/broker:2"}));
    reconcile(&fake, &ctx).await;
    assert_eq!(partition(&fake), 2);
    let mut sts = fake.get(&sts_path()).unwrap();
    sts["status"]["updateRevision"] = json!("r2");
    sts["status"]["currentRevision"] = json!("r1");
    fake.put(&sts_path(), sts);
    // iot-2 not replaced yet: wait. Replaced and ready: the next one.
    set_pod(&fake, 2, "r1", true, 600);
    reconcile(&fake, &ctx).await;
    assert_eq!(partition(&fake), 2);
    set_pod(&fake, 2, "r2", true, 20);
    reconcile(&fake, &ctx).await;
    assert_eq!(partition(&fake), 1);
    let c = cluster(&fake);
    assert!(
        c.status
            .as_ref()
            .unwrap()
            .notes
            .iter()
            .any(|n| n.contains("pod by pod")),
        "{:?}",
        c.status
    );
    // iot-1 runs the new spec but never becomes ready: the rollout stops there, Degraded.
    set_pod(&fake, 1, "r2", false, 900);
    reconcile(&fake, &ctx).await;
    assert_eq!(partition(&fake), 1);
    let c = cluster(&fake);
    assert_eq!(
        c.status.as_ref().unwrap().phase.as_deref(),
        Some("Degraded")
    );
    let (status, message) = condition(&c, "Degraded");
    assert_eq!(status, "True");
    assert!(message.contains("iot-1 runs the new spec"), "{message}");
    // Fixed: ready at last, and the rollout finishes.
    set_pod(&fake, 1, "r2", true, 900);
    reconcile(&fake, &ctx).await;
    assert_eq!(partition(&fake), 0);
}
