//! Every object of one cluster, as the API would get it, in apply order: configuration and
//! Secrets first, then Services, the brokers, HAProxy and the policies. `rookery-operator
//! render` prints this; the reconciler applies the same list.

use serde::Serialize;
use serde_json::Value;

use crate::builders::meta::Names;
use crate::builders::secrets::Material;
use crate::builders::{
    Environment, certificate, config, load_balancer, network_policy, pdb, postgres, redis, secrets,
    service_monitor, services, statefulset,
};
use crate::crd::MqttCluster;
use crate::validate::{FieldError, validate};

/// The objects of one cluster, and what the operator wants the user to know about them.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// The objects, each with `apiVersion` and `kind`.
    pub objects: Vec<Value>,
    /// Things worth a line in the status (an optional CRD that is missing, say).
    pub notes: Vec<String>,
}

fn typed<K: k8s_openapi::Resource + Serialize>(object: &K) -> Value {
    let mut v = serde_json::to_value(object).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut v {
        map.insert("apiVersion".into(), Value::String(K::API_VERSION.into()));
        map.insert("kind".into(), Value::String(K::KIND.into()));
    }
    v
}

/// Builds every object of `c`. `partition` is the StatefulSet's rolling-update partition
/// (the reconciler holds it during a pod-by-pod upgrade; 0 otherwise).
pub fn render(
    c: &MqttCluster,
    env: &Environment,
    material: &Material,
    partition: i32,
) -> Result<Rendered, Vec<FieldError>> {
    validate(c)?;
    let names = Names::of(c, &env.domain);
    let mut objects = Vec::new();
    let mut notes = Vec::new();

    let broker_config = config::config_map(c, &names);
    let broker_toml = config::broker_toml(c, &names);
    objects.push(typed(&broker_config));
    for s in secrets::secrets(c, &names, material) {
        objects.push(typed(&s));
    }
    if let Some(cert) = certificate::certificate(c, &names) {
        if env.cert_manager_crd {
            objects.push(cert);
        } else {
            notes.push(
                "tls.certManager: cert-manager's Certificate CRD is not installed; the server certificate Secret will not be issued"
                    .into(),
            );
        }
    }
    let managed_redis = material
        .redis_password
        .as_deref()
        .and_then(|pw| redis::managed_redis(c, &names, env, pw));
    let managed_pg = material
        .postgres_password
        .as_deref()
        .and_then(|pw| postgres::managed_postgres(c, &names, env, pw));
    if let Some(r) = &managed_redis {
        objects.push(typed(&r.secret));
        if let Some(cm) = &r.config_map {
            objects.push(typed(cm));
        }
    }
    if let Some(p) = &managed_pg {
        for s in &p.secrets {
            objects.push(typed(s));
        }
    }
    if let Some(n) = postgres::note(c, env) {
        notes.push(n);
    }
    let lb_config = load_balancer::config_map(c, &names);
    let lb_text = lb_config
        .data
        .as_ref()
        .and_then(|d| d.get(load_balancer::CONFIG_KEY))
        .cloned()
        .unwrap_or_default();
    objects.push(typed(&lb_config));

    objects.push(typed(&services::headless(c, &names)));
    objects.push(typed(&services::brokers(c, &names)));
    if let Some(svc) = services::coap(c, &names) {
        objects.push(typed(&svc));
    }
    objects.push(typed(&load_balancer::service(c, &names)));
    if let Some(r) = &managed_redis {
        for s in &r.services {
            objects.push(typed(s));
        }
    }
    if let Some(s) = managed_pg.as_ref().and_then(|p| p.service.as_ref()) {
        objects.push(typed(s));
    }
    // The stores before the brokers, which need them answering at start.
    if let Some(r) = &managed_redis {
        objects.push(typed(&r.statefulset));
    }
    if let Some(p) = &managed_pg {
        if let Some(s) = &p.statefulset {
            objects.push(typed(s));
        }
        if let Some(cluster) = &p.cnpg_cluster {
            objects.push(cluster.clone());
        }
    }
    objects.push(typed(&statefulset::statefulset(
        c,
        &names,
        env,
        &broker_toml,
        partition,
    )));
    objects.push(typed(&load_balancer::deployment(c, &names, env, &lb_text)));
    if let Some(p) = pdb::pod_disruption_budget(c, &names) {
        objects.push(typed(&p));
    }
    for p in network_policy::network_policies(c, &names) {
        objects.push(typed(&p));
    }
    if c.spec.monitoring.service_monitor {
        if env.service_monitor_crd {
            objects.push(service_monitor::service_monitor(c, &names));
        } else {
            notes.push(
                "monitoring.serviceMonitor: the Prometheus Operator's ServiceMonitor CRD is not installed; none was made"
                    .into(),
            );
        }
    }
    Ok(Rendered { objects, notes })
}

/// The objects as one YAML stream (`---` between documents).
///
/// `serde_yaml` writes YAML 1.2, where `yes`, `no`, `on` and `off` are strings; the YAML 1.1
/// readers of `kubectl` (and PyYAML) read them as booleans. Such values are quoted.
pub fn to_yaml(objects: &[Value]) -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for o in objects {
        out.push_str("---\n");
        out.push_str(&quote_yaml11_booleans(&serde_yaml::to_string(o)?));
    }
    Ok(out)
}

const YAML11_BOOLEANS: &[&str] = &[
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off",
    "OFF",
];

/// Quotes plain scalars that YAML 1.1 reads as booleans, outside block scalars.
fn quote_yaml11_booleans(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    // Indentation of the line that opened a block scalar (`key: |`), while inside it.
    let mut block: Option<usize> = None;
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some(opened) = block {
            if line.trim().is_empty() || indent > opened {
                out.push_str(line);
                out.push('\n');
                continue;
            }
            block = None;
        }
        let trimmed = line.trim_end();
        let value_at = if let Some(i) = trimmed.rfind(": ") {
            Some(i + 2)
        } else {
            let rest = trimmed.trim_start();
            rest.starts_with("- ")
                .then(|| indent + rest.rfind("- ").unwrap_or(0) + 2)
        };
        match value_at.map(|i| (i, &trimmed[i..])) {
            Some((i, value)) if YAML11_BOOLEANS.contains(&value) => {
                out.push_str(&trimmed[..i]);
                out.push('\'');
                out.push_str(value);
                out.push('\'');
            }
            Some((_, value)) if value.starts_with('|') || value.starts_with('>') => {
                block = Some(indent);
                out.push_str(line);
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::MqttClusterSpec;
    use crate::pki::TlsMaterial;

    fn material() -> Material {
        let t = TlsMaterial {
            ca_pem: "CA".into(),
            cert_pem: "CERT".into(),
            key_pem: "KEY".into(),
        };
        Material {
            admin_token: "x".repeat(32),
            cluster_tls: t,
            server_tls: None,
            password_file: None,
            redis_password: None,
            postgres_password: None,
        }
    }

    #[test]
    fn the_default_cluster_renders_every_object_once() {
        let c = MqttCluster::new(
            "iot",
            serde_json::from_str::<MqttClusterSpec>("{}").unwrap(),
        );
        let r = render(&c, &Environment::default(), &material(), 0).unwrap();
        let kinds: Vec<String> = r
            .objects
            .iter()
            .map(|o| {
                format!(
                    "{}/{}",
                    o["kind"].as_str().unwrap(),
                    o["metadata"]["name"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "ConfigMap/iot-config",
                "Secret/iot-admin",
                "Secret/iot-cluster-tls",
                "ConfigMap/iot-lb",
                "Service/iot-nodes",
                "Service/iot-brokers",
                "Service/iot",
                "StatefulSet/iot",
                "Deployment/iot-lb",
                "PodDisruptionBudget/iot",
                "NetworkPolicy/iot",
                "NetworkPolicy/iot-lb",
            ]
        );
        assert!(r.notes.is_empty());
        assert!(to_yaml(&r.objects).unwrap().starts_with("---\n"));
    }

    #[test]
    fn yaml_1_1_booleans_are_quoted_outside_block_scalars() {
        let objects = vec![serde_json::json!({
            "args": ["--appendonly", "yes", "no"],
            "flag": "on",
            "keep": "yesterday",
            "script": "a: yes\n- no\n",
        })];
        let text = to_yaml(&objects).unwrap();
        assert!(text.contains("- 'yes'\n"), "{text}");
        assert!(text.contains("- 'no'\n"), "{text}");
        assert!(text.contains("flag: 'on'\n"), "{text}");
        assert!(text.contains("keep: yesterday\n"), "{text}");
        assert!(
            text.contains("  a: yes\n  - no\n"),
            "block scalars are left alone: {text}"
        );
        let back: serde_json::Value =
            serde_yaml::from_str(text.trim_start_matches("---\n")).unwrap();
        assert_eq!(back, objects[0]);
    }

    #[test]
    fn an_invalid_spec_renders_nothing() {
        let c = MqttCluster::new(
            "iot",
            serde_json::from_str::<MqttClusterSpec>(r#"{"replicas": 0}"#).unwrap(),
        );
        assert!(render(&c, &Environment::default(), &material(), 0).is_err());
    }

    #[test]
    fn the_coap_gateway_gets_a_udp_port_a_service_and_its_config_key() {
        let c = MqttCluster::new(
            "iot",
            serde_json::from_str::<MqttClusterSpec>(r#"{"coap": {"enabled": true}}"#).unwrap(),
        );
        let r = render(&c, &Environment::default(), &material(), 0).unwrap();
        let svc = r
            .objects
            .iter()
            .find(|o| o["kind"] == "Service" && o["metadata"]["name"] == "iot-coap")
            .unwrap();
        assert_eq!(svc["spec"]["ports"][0]["protocol"], "UDP");
        let sts = r
            .objects
            .iter()
            .find(|o| o["kind"] == "StatefulSet")
            .unwrap();
        let ports = &sts["spec"]["template"]["spec"]["containers"][0]["ports"];
        assert!(
            ports
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "coap" && p["protocol"] == "UDP"),
            "{ports}"
        );
        let config = r
            .objects
            .iter()
            .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "iot-config")
            .unwrap();
        let toml = config["data"]["rookery.toml"].as_str().unwrap();
        assert!(toml.contains("coap_listen = \"0.0.0.0:5683\""), "{toml}");
        // The file the pods run loads in the broker.
        let parsed = rookery_broker::Config::from_toml(toml).unwrap();
        assert_eq!(parsed.coap_listen, Some("0.0.0.0:5683".parse().unwrap()));
        let policy = r
            .objects
            .iter()
            .find(|o| o["kind"] == "NetworkPolicy" && o["metadata"]["name"] == "iot")
            .unwrap();
        assert!(policy.to_string().contains("\"UDP\""), "{policy}");
    }

    #[test]
    fn coap_over_dtls_gets_its_port_its_psk_secret_and_its_config_keys() {
        let c = MqttCluster::new(
            "iot",
            serde_json::from_str::<MqttClusterSpec>(
                r#"{"coap": {"enabled": true, "plain": false,
                    "dtls": {"pskSecretRef": {"name": "devices-psk", "key": "keys"}, "port": 15684}}}"#,
            )
            .unwrap(),
        );
        let r = render(&c, &Environment::default(), &material(), 0).unwrap();
        let find = |kind: &str, name: &str| {
            r.objects
                .iter()
                .find(|o| o["kind"] == kind && (name.is_empty() || o["metadata"]["name"] == name))
                .unwrap()
                .clone()
        };
        let svc = find("Service", "iot-coap");
        let ports = svc["spec"]["ports"].as_array().unwrap();
        assert_eq!(ports.len(), 1, "DTLS only: {ports:?}");
        assert_eq!(ports[0]["name"], "coaps");
        assert_eq!(ports[0]["port"], 15684);
        assert_eq!(ports[0]["protocol"], "UDP");
        let sts = find("StatefulSet", "");
        let pod = &sts["spec"]["template"]["spec"];
        let container_ports = pod["containers"][0]["ports"].as_array().unwrap();
        assert!(
            container_ports.iter().any(|p| p["name"] == "coaps"
                && p["containerPort"] == 5684
                && p["protocol"] == "UDP")
        );
        assert!(!container_ports.iter().any(|p| p["name"] == "coap"));
        let psk = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "psk")
            .unwrap();
        assert_eq!(psk["secret"]["secretName"], "devices-psk");
        assert_eq!(psk["secret"]["items"][0]["key"], "keys");
        assert!(
            pod["containers"][0]["volumeMounts"]
                .to_string()
                .contains("/etc/rookery/psk")
        );
        let toml = find("ConfigMap", "iot-config")["data"]["rookery.toml"]
            .as_str()
            .unwrap()
            .to_owned();
        let parsed = rookery_broker::Config::from_toml(&toml).unwrap();
        assert_eq!(parsed.coap_listen, None);
        assert_eq!(parsed.coaps_listen, Some("0.0.0.0:5684".parse().unwrap()));
        assert_eq!(
            parsed.psk_file.as_deref(),
            Some(std::path::Path::new("/etc/rookery/psk/psk"))
        );
        parsed.validate().unwrap();
        let policy = find("NetworkPolicy", "iot").to_string();
        assert!(
            policy.contains("5684") && !policy.contains("5683"),
            "{policy}"
        );
    }

    #[test]
    fn a_service_monitor_needs_its_crd() {
        let c = MqttCluster::new(
            "iot",
            serde_json::from_str::<MqttClusterSpec>(r#"{"monitoring": {"serviceMonitor": true}}"#)
                .unwrap(),
        );
        let without = render(&c, &Environment::default(), &material(), 0).unwrap();
        assert_eq!(without.notes.len(), 1);
        let env = Environment {
            service_monitor_crd: true,
            ..Environment::default()
        };
        let with = render(&c, &env, &material(), 0).unwrap();
        assert!(with.objects.iter().any(|o| o["kind"] == "ServiceMonitor"));
    }
}
