//! Checks of an `MqttCluster` beyond what its schema (types, ranges, CEL rules) enforces, and
//! the same checks the CEL rules make, so that a resource applied before the schema knew a
//! rule still gets a clear answer. Every error names its field; an invalid spec becomes a
//! `ConfigValid=False` condition and nothing running is touched.

use std::fmt;

use crate::builders::config::{OPERATOR_KEYS, broker_toml};
use crate::builders::meta::Names;
use crate::crd::{ClientAuth, MAX_REPLICAS, MqttCluster};

/// The longest cluster name: what is left of a 63-character label after the StatefulSet's
/// `-<revision hash>` and the longest suffix the operator adds.
pub const MAX_NAME_LEN: usize = 40;

/// One problem of a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's path, e.g. `spec.tls.secretName`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// All errors of a spec, joined for a condition's message.
pub fn describe(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A Kubernetes quantity such as `10Gi`, `500M` or `1e9`.
fn is_quantity(s: &str) -> bool {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &s[digits.len()..];
    let number_ok = !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && digits.chars().filter(|&c| c == '.').count() <= 1;
    let suffix_ok = matches!(
        suffix,
        "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "k" | "M" | "G" | "T" | "P" | "E"
    );
    number_ok && suffix_ok
}

/// A CIDR such as `10.0.0.0/8` or `2001:db8::/32`.
fn is_cidr(s: &str) -> bool {
    let Some((addr, bits)) = s.split_once('/') else {
        return false;
    };
    match (addr.parse::<std::net::IpAddr>(), bits.parse::<u8>()) {
        (Ok(std::net::IpAddr::V4(_)), Ok(b)) => b <= 32,
        (Ok(std::net::IpAddr::V6(_)), Ok(b)) => b <= 128,
        _ => false,
    }
}

/// A duration Prometheus accepts, such as `30s` or `1m`.
fn is_prometheus_duration(s: &str) -> bool {
    let unit = s.trim_start_matches(|c: char| c.is_ascii_digit());
    unit.len() < s.len() && matches!(unit, "ms" | "s" | "m" | "h" | "d" | "w" | "y")
}

/// Checks `c`; `Ok` or every error found.
pub fn validate(c: &MqttCluster) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut err = |field: &str, message: String| {
        errors.push(FieldError {
            field: field.into(),
            message,
        })
    };
    let spec = &c.spec;
    // The name becomes Service and pod names (`<name>-redis-nodes`, `<name>-63`), and the
    // StatefulSet's pods carry a revision label of `<name>-<hash>`: a DNS-1035 label short
    // enough for all of them.
    let name = c.metadata.name.as_deref().unwrap_or_default();
    let dns_1035 = name.len() <= MAX_NAME_LEN
        && name.starts_with(|ch: char| ch.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-');
    if !dns_1035 {
        err(
            "metadata.name",
            format!(
                "{name:?}: must be at most {MAX_NAME_LEN} lower-case letters, digits and '-', starting with a letter and not ending with '-'"
            ),
        );
    }
    if !(1..=MAX_REPLICAS).contains(&spec.replicas) {
        err(
            "spec.replicas",
            format!(
                "must be between 1 and {MAX_REPLICAS}, not {}",
                spec.replicas
            ),
        );
    }
    if spec.image.as_deref().is_some_and(|i| i.trim().is_empty()) {
        err("spec.image", "must not be empty".into());
    }
    if spec.storage.enabled && !is_quantity(&spec.storage.size) {
        err(
            "spec.storage.size",
            format!("{:?} is not a quantity such as 10Gi", spec.storage.size),
        );
    }
    if spec.pod_disruption_budget.max_unavailable < 1 {
        err(
            "spec.podDisruptionBudget.maxUnavailable",
            "must be at least 1 (0 would block every node drain)".into(),
        );
    }

    let l = &spec.listeners;
    let all = [
        ("mqtt", &l.mqtt),
        ("mqtts", &l.mqtts),
        ("ws", &l.ws),
        ("wss", &l.wss),
    ];
    if all.iter().all(|(_, s)| !s.enabled) {
        err(
            "spec.listeners",
            "at least one listener must be enabled".into(),
        );
    }
    for (i, (name, s)) in all.iter().enumerate() {
        if !(1..=65535).contains(&s.port) {
            err(
                &format!("spec.listeners.{name}.port"),
                format!("{} is not a port", s.port),
            );
        }
        if s.enabled && all[..i].iter().any(|(_, o)| o.enabled && o.port == s.port) {
            err(
                &format!("spec.listeners.{name}.port"),
                format!("port {} is used by another listener", s.port),
            );
        }
    }
    if (l.ws.enabled || l.wss.enabled) && !l.ws_path.starts_with('/') {
        err("spec.listeners.wsPath", "must start with '/'".into());
    }
    if (l.mqtts.enabled || l.wss.enabled) && spec.tls.is_none() {
        err(
            "spec.tls",
            "the mqtts and wss listeners need a server certificate: set tls".into(),
        );
    }

    let lb = &spec.load_balancer;
    for (i, r) in lb.load_balancer_source_ranges.iter().enumerate() {
        if !is_cidr(r) {
            err(
                &format!("spec.loadBalancer.loadBalancerSourceRanges[{i}]"),
                format!("{r:?} is not a CIDR"),
            );
        }
    }

    let mut client_certs = false;
    if let Some(tls) = &spec.tls {
        let sources = [
            tls.secret_name.is_some(),
            tls.cert_manager.is_some(),
            tls.self_signed.is_some(),
        ];
        if sources.iter().filter(|&&s| s).count() != 1 {
            err(
                "spec.tls",
                "set exactly one of secretName, certManager, selfSigned".into(),
            );
        }
        if let Some(s) = &tls.self_signed
            && s.renew_before_days >= s.validity_days
        {
            err(
                "spec.tls.selfSigned.renewBeforeDays",
                "must be less than validityDays".into(),
            );
        }
        if tls.cert_identity.is_some() && tls.client_auth == ClientAuth::None {
            err(
                "spec.tls.certIdentity",
                "needs clientAuth optional or required".into(),
            );
        }
        client_certs = tls.client_auth != ClientAuth::None;
        if !l.mqtts.enabled && !l.wss.enabled {
            err(
                "spec.tls",
                "no TLS listener is enabled: enable listeners.mqtts or listeners.wss".into(),
            );
        }
    }

    let auth = &spec.auth;
    for (i, u) in auth.users.iter().enumerate() {
        if u.name.is_empty() || u.name.contains(':') || u.name.chars().any(char::is_whitespace) {
            err(
                &format!("spec.auth.users[{i}].name"),
                "must be non-empty, without ':' or spaces".into(),
            );
        }
        if auth.users[..i].iter().any(|o| o.name == u.name) {
            err(
                &format!("spec.auth.users[{i}].name"),
                format!("{:?} appears twice", u.name),
            );
        }
    }
    let passwords = auth.password_secret_ref.is_some() || !auth.users.is_empty();
    if auth.allow_anonymous == Some(false) && !passwords && !client_certs {
        err(
            "spec.auth.allowAnonymous",
            "is false, but there are no passwords and no client certificates: no client could connect"
                .into(),
        );
    }

    if !spec.coap.plain && spec.coap.dtls.is_none() {
        err(
            "spec.coap.plain",
            "is false, but spec.coap.dtls is not set: the gateway would serve nothing".into(),
        );
    }
    if spec.coap.dtls.is_some()
        && spec.coap.plain
        && spec
            .coap
            .dtls
            .as_ref()
            .is_some_and(|d| d.port == spec.coap.port)
    {
        err(
            "spec.coap.dtls.port",
            format!(
                "is spec.coap.port too ({}): coap and coaps need ports of their own",
                spec.coap.port
            ),
        );
    }
    if let Some(acl) = &spec.acl
        && acl.inline.is_some() == acl.config_map_ref.is_some()
    {
        err("spec.acl", "set exactly one of inline, configMapRef".into());
    }
    if let Some(r) = &spec.persistence.redis {
        if r.managed.is_some() == r.external.is_some() {
            err(
                "spec.persistence.redis",
                "set exactly one of managed, external".into(),
            );
        }
        if let Some(m) = &r.managed {
            if m.replicas != 1 && m.replicas != 3 {
                err(
                    "spec.persistence.redis.managed.replicas",
                    "must be 1, or 3 (a primary, two replicas and Sentinel)".into(),
                );
            }
            if !is_quantity(&m.storage_size) {
                err(
                    "spec.persistence.redis.managed.storageSize",
                    format!("{:?} is not a quantity", m.storage_size),
                );
            }
        }
    }
    if let Some(p) = &spec.persistence.postgres {
        if p.managed.is_some() == p.external.is_some() {
            err(
                "spec.persistence.postgres",
                "set exactly one of managed, external".into(),
            );
        }
        if let Some(m) = &p.managed
            && !is_quantity(&m.storage_size)
        {
            err(
                "spec.persistence.postgres.managed.storageSize",
                format!("{:?} is not a quantity", m.storage_size),
            );
        }
    }
    if let Some(i) = &spec.monitoring.interval
        && !is_prometheus_duration(i)
    {
        err(
            "spec.monitoring.interval",
            format!("{i:?} is not a duration such as 30s"),
        );
    }

    if let Some(extra) = &spec.config {
        match extra.parse::<toml::Table>() {
            Err(e) => err("spec.config", format!("is not TOML: {}", e.message())),
            Ok(table) => {
                for key in table.keys() {
                    if OPERATOR_KEYS.contains(&key.as_str()) {
                        err(
                            "spec.config",
                            format!("sets {key:?}, which the operator sets from the spec"),
                        );
                    }
                }
            }
        }
    }
    // The broker is the judge of its configuration: the file the pods would run must load.
    if errors.is_empty() {
        let text = broker_toml(c, &Names::of(c, "cluster.local"));
        let loaded = rookery_broker::config::Config::from_toml(&text)
            .map_err(|e| e.to_string())
            .and_then(|cfg| cfg.validate().map_err(|e| e.to_string()));
        if let Err(e) = loaded {
            errors.push(FieldError {
                field: "spec.config".into(),
                message: format!("the broker refuses the configuration: {e}"),
            });
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::MqttClusterSpec;

    fn check(spec: serde_json::Value) -> Result<(), Vec<FieldError>> {
        let spec: MqttClusterSpec = serde_json::from_value(spec).unwrap();
        let mut c = MqttCluster::new("iot", spec);
        c.metadata.namespace = Some("fleet".into());
        validate(&c)
    }

    fn fields(spec: serde_json::Value) -> Vec<String> {
        check(spec)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn coap_needs_something_to_serve_and_ports_of_its_own() {
        let dtls = serde_json::json!({"pskSecretRef": {"name": "psk", "key": "psk"}});
        check(serde_json::json!({"coap": {"enabled": true, "plain": false, "dtls": dtls}}))
            .unwrap();
        check(serde_json::json!({"coap": {"enabled": true, "dtls": dtls}})).unwrap();
        assert_eq!(
            fields(serde_json::json!({"coap": {"enabled": true, "plain": false}})),
            ["spec.coap.plain"]
        );
        assert_eq!(
            fields(serde_json::json!({"coap": {"enabled": true, "port": 5684, "dtls": dtls}})),
            ["spec.coap.dtls.port"]
        );
    }

    #[test]
    fn the_empty_spec_and_a_full_one_are_valid() {
        check(serde_json::json!({})).unwrap();
        check(serde_json::json!({
            "replicas": 5,
            "listeners": {"mqtts": {"enabled": true, "port": 8883}, "ws": {"enabled": true, "port": 80}, "wss": {"enabled": true, "port": 443}},
            "tls": {"selfSigned": {}, "clientAuth": "optional", "certIdentity": "san-dns"},
            "auth": {"users": [{"name": "sensor", "passwordSecretRef": {"name": "s", "key": "p"}}], "allowAnonymous": false},
            "acl": {"inline": "user sensor\ntopic write sensors/#\n"},
            "persistence": {"redis": {"external": {"urlSecretRef": {"name": "r", "key": "url"}}}, "postgres": {"external": {"urlSecretRef": {"name": "pg", "key": "url"}}}},
            "limits": {"maxConnections": 50000, "queueOverflow": "disconnect"},
            "monitoring": {"serviceMonitor": true, "interval": "30s"},
            "config": "sys_interval = 30\nflapping_max = 20\n",
        }))
        .unwrap();
    }

    #[test]
    fn errors_name_their_field() {
        assert_eq!(
            fields(serde_json::json!({"replicas": 0})),
            ["spec.replicas"]
        );
        assert_eq!(
            fields(serde_json::json!({"listeners": {"mqtts": {"enabled": true, "port": 8883}}})),
            ["spec.tls"]
        );
        assert_eq!(
            fields(serde_json::json!({"listeners": {"mqtt": {"enabled": false, "port": 1883}}})),
            ["spec.listeners"]
        );
        assert_eq!(
            fields(serde_json::json!({"listeners": {"ws": {"enabled": true, "port": 1883}}})),
            ["spec.listeners.ws.port"]
        );
        assert_eq!(
            fields(
                serde_json::json!({"tls": {"secretName": "a", "selfSigned": {}}, "listeners": {"mqtts": {"enabled": true, "port": 8883}}})
            ),
            ["spec.tls"]
        );
        assert_eq!(
            fields(serde_json::json!({"auth": {"allowAnonymous": false}})),
            ["spec.auth.allowAnonymous"]
        );
        assert_eq!(
            fields(serde_json::json!({"auth": {"users": [
                {"name": "a", "passwordSecretRef": {"name": "s", "key": "a"}},
                {"name": "a", "passwordSecretRef": {"name": "s", "key": "b"}}]}})),
            ["spec.auth.users[1].name"]
        );
        assert_eq!(fields(serde_json::json!({"acl": {}})), ["spec.acl"]);
        assert_eq!(
            fields(serde_json::json!({"persistence": {"redis": {"managed": {"replicas": 2}}}})),
            ["spec.persistence.redis.managed.replicas"]
        );
        assert_eq!(
            fields(serde_json::json!({"storage": {"size": "lots"}})),
            ["spec.storage.size"]
        );
        assert_eq!(
            fields(
                serde_json::json!({"loadBalancer": {"loadBalancerSourceRanges": ["10.0.0.0/33"]}})
            ),
            ["spec.loadBalancer.loadBalancerSourceRanges[0]"]
        );
        assert_eq!(
            fields(serde_json::json!({"monitoring": {"interval": "soon"}})),
            ["spec.monitoring.interval"]
        );
    }

    #[test]
    fn the_name_must_make_valid_dns_names() {
        let spec: MqttClusterSpec = serde_json::from_str("{}").unwrap();
        for bad in ["Iot", "9iot", "iot-", "i.ot", &"x".repeat(41)] {
            let c = MqttCluster::new(bad, spec.clone());
            let e = validate(&c).unwrap_err();
            assert_eq!(e[0].field, "metadata.name", "{bad}");
        }
        validate(&MqttCluster::new(&"x".repeat(40), spec)).unwrap();
    }

    #[test]
    fn extra_config_must_parse_set_no_operator_key_and_load_in_the_broker() {
        let e = check(serde_json::json!({"config": "listen = [\"0.0.0.0:1\"]"})).unwrap_err();
        assert_eq!(e[0].field, "spec.config");
        assert!(e[0].message.contains("\"listen\""), "{}", e[0]);
        let e = check(serde_json::json!({"config": "max_inflight = "})).unwrap_err();
        assert!(e[0].message.contains("not TOML"), "{}", e[0]);
        let e = check(serde_json::json!({"config": "max_infligt = 5"})).unwrap_err();
        assert!(e[0].message.contains("max_infligt"), "{}", e[0]);
        let e = check(serde_json::json!({"config": "max_inflight = 0"})).unwrap_err();
        assert!(e[0].message.contains("max_inflight"), "{}", e[0]);
    }

    #[test]
    fn quantities_cidrs_and_durations() {
        for q in ["1Gi", "500M", "10", "1.5Gi"] {
            assert!(is_quantity(q), "{q}");
        }
        for q in ["", "Gi", "1GB", "1..5Gi", "-1Gi"] {
            assert!(!is_quantity(q), "{q}");
        }
        assert!(is_cidr("10.0.0.0/8") && is_cidr("2001:db8::/32"));
        assert!(!is_cidr("10.0.0.0") && !is_cidr("10.0.0.0/40"));
        assert!(is_prometheus_duration("30s") && !is_prometheus_duration("s"));
    }
}
