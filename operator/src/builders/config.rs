//! The brokers' configuration: `rookery.toml` (and the inline ACL) in one ConfigMap.
//!
//! Everything a broker needs to find in its pod is at a fixed path ([`paths`]); the StatefulSet
//! builder mounts the matching Secrets and ConfigMaps there. Files the broker reloads by itself
//! (certificates, password file, ACL) change without a restart; a change of `rookery.toml`
//! changes the pods' config hash and rolls them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use toml::Value;

use super::meta::{Component, Names, object_meta, ports};
use crate::crd::{ClientAuth, MqttCluster};

/// Where the broker finds its files inside the pod.
pub mod paths {
    /// Directory of the ConfigMap.
    pub const CONFIG_DIR: &str = "/etc/rookery/config";
    /// The configuration file.
    pub const CONFIG_FILE: &str = "/etc/rookery/config/rookery.toml";
    /// Key of the configuration file in the ConfigMap.
    pub const CONFIG_KEY: &str = "rookery.toml";
    /// Key of an inline ACL in the ConfigMap.
    pub const ACL_KEY: &str = "acl";
    /// An inline ACL.
    pub const INLINE_ACL_FILE: &str = "/etc/rookery/config/acl";
    /// Directory of an ACL from the user's ConfigMap.
    pub const ACL_DIR: &str = "/etc/rookery/acl";
    /// An ACL from the user's ConfigMap.
    pub const REF_ACL_FILE: &str = "/etc/rookery/acl/acl";
    /// Directory of the password file Secret.
    pub const AUTH_DIR: &str = "/etc/rookery/auth";
    /// The password file.
    pub const PASSWORD_FILE: &str = "/etc/rookery/auth/passwd";
    /// Key of the password file in its Secret.
    pub const PASSWORD_KEY: &str = "passwd";
    /// Directory of the admin token Secret.
    pub const ADMIN_DIR: &str = "/etc/rookery/admin";
    /// The admin API's bearer token.
    pub const ADMIN_TOKEN_FILE: &str = "/etc/rookery/admin/token";
    /// Key of the admin token in its Secret.
    pub const ADMIN_TOKEN_KEY: &str = "token";
    /// Directory of the server certificate Secret (`tls.crt`, `tls.key`, `ca.crt`).
    pub const TLS_DIR: &str = "/etc/rookery/tls";
    /// Directory of a separate client CA Secret (`ca.crt`).
    pub const CLIENT_CA_DIR: &str = "/etc/rookery/client-ca";
    /// Directory of the cluster links' Secret (`ca.crt`, `tls.crt`, `tls.key`).
    pub const CLUSTER_TLS_DIR: &str = "/etc/rookery/cluster-tls";
    /// Directory of the Redis URL.
    pub const REDIS_DIR: &str = "/etc/rookery/redis";
    /// Directory of the PostgreSQL URL.
    pub const POSTGRES_DIR: &str = "/etc/rookery/postgres";
    /// The file name of a store URL in its directory.
    pub const URL_FILE: &str = "url";
    /// Directory of the CoAP gateway's pre-shared keys.
    pub const PSK_DIR: &str = "/etc/rookery/psk";
    /// The PSK file.
    pub const PSK_FILE: &str = "/etc/rookery/psk/psk";
    /// The embedded store's volume.
    pub const DATA_DIR: &str = "/var/lib/rookery";
}

/// Seconds a drain may take; the pods' termination grace period is longer.
pub const DRAIN_TIMEOUT_SECS: i64 = 60;

/// Configuration keys the operator sets itself: `spec.config` may not set them.
pub const OPERATOR_KEYS: &[&str] = &[
    "node_id",
    "listen",
    "tls_listen",
    "ws_listen",
    "wss_listen",
    "ws_path",
    "cert",
    "key",
    "ca",
    "require_client_cert",
    "cert_identity",
    "proxy_protocol",
    "password_file",
    "acl_file",
    "allow_anonymous",
    "durability",
    "data_dir",
    "redis_url",
    "redis_url_file",
    "postgres_url",
    "postgres_url_file",
    "cluster_name",
    "cluster_listen",
    "peers",
    "peers_dns",
    "cluster_ca",
    "cluster_cert",
    "cluster_key",
    "cluster_server_name",
    "metrics_listen",
    "admin_token_file",
    "drain_timeout_secs",
    "server_reference",
    "log_format",
    "coap_listen",
    "coaps_listen",
    "psk_file",
];

fn listen(port: u16) -> Value {
    Value::Array(vec![Value::String(format!("0.0.0.0:{port}"))])
}

fn s(v: &str) -> Value {
    Value::String(v.to_owned())
}

/// The operator's part of `rookery.toml` as a table (sorted keys, so the text is stable).
pub fn broker_settings(c: &MqttCluster, names: &Names) -> BTreeMap<String, Value> {
    let spec = &c.spec;
    let mut t = BTreeMap::new();
    let l = &spec.listeners;
    let mut proxied = Vec::new();
    if l.mqtt.enabled {
        t.insert("listen".into(), listen(ports::MQTT));
        proxied.push(s("mqtt"));
    } else {
        t.insert("listen".into(), Value::Array(Vec::new()));
    }
    if l.mqtts.enabled {
        t.insert("tls_listen".into(), listen(ports::MQTTS));
        proxied.push(s("mqtts"));
    }
    if l.ws.enabled {
        t.insert("ws_listen".into(), listen(ports::WS));
        proxied.push(s("ws"));
    }
    if l.wss.enabled {
        t.insert("wss_listen".into(), listen(ports::WSS));
        proxied.push(s("wss"));
    }
    if l.ws.enabled || l.wss.enabled {
        t.insert("ws_path".into(), s(&l.ws_path));
    }
    // HAProxy sends a PROXY v2 header on every listener, so the brokers see the devices'
    // addresses (limits, bans and logs work per device, not per HAProxy pod).
    t.insert("proxy_protocol".into(), Value::Array(proxied));

    if let Some(tls) = &spec.tls {
        t.insert("cert".into(), s(&format!("{}/tls.crt", paths::TLS_DIR)));
        t.insert("key".into(), s(&format!("{}/tls.key", paths::TLS_DIR)));
        if tls.client_auth != ClientAuth::None {
            let dir = if tls.client_ca_secret_name.is_some() {
                paths::CLIENT_CA_DIR
            } else {
                paths::TLS_DIR
            };
            t.insert("ca".into(), s(&format!("{dir}/ca.crt")));
            t.insert(
                "require_client_cert".into(),
                Value::Boolean(tls.client_auth == ClientAuth::Required),
            );
            if let Some(id) = tls.cert_identity {
                t.insert("cert_identity".into(), s(id.as_str()));
            }
        }
    }

    let auth = &spec.auth;
    if auth.password_secret_ref.is_some() || !auth.users.is_empty() {
        t.insert("password_file".into(), s(paths::PASSWORD_FILE));
    }
    if let Some(allow) = auth.allow_anonymous {
        t.insert("allow_anonymous".into(), Value::Boolean(allow));
    }
    if let Some(acl) = &spec.acl {
        let file = if acl.inline.is_some() {
            paths::INLINE_ACL_FILE
        } else {
            paths::REF_ACL_FILE
        };
        t.insert("acl_file".into(), s(file));
    }

    let p = &spec.persistence;
    t.insert("durability".into(), s(p.durability.as_str()));
    t.insert("data_dir".into(), s(paths::DATA_DIR));
    if p.redis.is_some() {
        t.insert(
            "redis_url_file".into(),
            s(&format!("{}/{}", paths::REDIS_DIR, paths::URL_FILE)),
        );
    }
    if p.postgres.is_some() {
        t.insert(
            "postgres_url_file".into(),
            s(&format!("{}/{}", paths::POSTGRES_DIR, paths::URL_FILE)),
        );
    }

    // Cluster links: always mutual TLS with the operator's own CA. Peers are found through
    // the headless Service, so scaling needs no restart; every link certificate names the
    // headless Service, which is what a node checks whatever address it dialed.
    t.insert("cluster_name".into(), s(&names.cluster_name()));
    t.insert(
        "cluster_listen".into(),
        s(&format!("0.0.0.0:{}", ports::CLUSTER)),
    );
    t.insert(
        "peers_dns".into(),
        s(&format!("{}:{}", names.headless_host(), ports::CLUSTER)),
    );
    t.insert(
        "cluster_ca".into(),
        s(&format!("{}/ca.crt", paths::CLUSTER_TLS_DIR)),
    );
    t.insert(
        "cluster_cert".into(),
        s(&format!("{}/tls.crt", paths::CLUSTER_TLS_DIR)),
    );
    t.insert(
        "cluster_key".into(),
        s(&format!("{}/tls.key", paths::CLUSTER_TLS_DIR)),
    );
    t.insert("cluster_server_name".into(), s(&names.link_server_name()));

    t.insert(
        "metrics_listen".into(),
        s(&format!("0.0.0.0:{}", ports::HTTP)),
    );
    if spec.coap.enabled && spec.coap.plain {
        t.insert("coap_listen".into(), s(&format!("0.0.0.0:{}", ports::COAP)));
    }
    if spec.coap.enabled && spec.coap.dtls.is_some() {
        t.insert(
            "coaps_listen".into(),
            s(&format!("0.0.0.0:{}", ports::COAPS)),
        );
        t.insert("psk_file".into(), s(paths::PSK_FILE));
    }
    t.insert("admin_token_file".into(), s(paths::ADMIN_TOKEN_FILE));
    t.insert(
        "drain_timeout_secs".into(),
        Value::Integer(DRAIN_TIMEOUT_SECS),
    );
    t.insert(
        "server_reference".into(),
        s(&names.service_host(&names.client_service())),
    );
    t.insert("log_format".into(), s("json"));

    let lim = &spec.limits;
    let mut int = |key: &str, v: Option<i64>| {
        if let Some(v) = v {
            t.insert(key.into(), Value::Integer(v));
        }
    };
    int("max_connections", lim.max_connections);
    int("max_packet_size", lim.max_packet_size);
    int("max_inflight", lim.max_inflight);
    int("max_queued_messages", lim.max_queued_messages);
    int("max_queued_bytes", lim.max_queued_bytes);
    int("publish_rate_limit", lim.publish_rate_limit);
    int("publish_byte_rate_limit", lim.publish_byte_rate_limit);
    int("max_connection_rate", lim.max_connection_rate);
    int("memory_high_watermark", lim.memory_high_watermark);
    if let Some(q) = lim.queue_overflow {
        t.insert("queue_overflow".into(), s(q.as_str()));
    }
    t
}

/// The whole `rookery.toml`: the operator's settings, then the user's `spec.config`.
/// Call [`crate::validate`] first: it checks that the user's part parses and sets no key of
/// [`OPERATOR_KEYS`].
pub fn broker_toml(c: &MqttCluster, names: &Names) -> String {
    let settings = broker_settings(c, names);
    let mut text = String::from(
        "# Generated by rookery-operator from the MqttCluster: edit the resource, not this.\n",
    );
    // A table of plain values renders as `key = value` lines.
    text.push_str(&toml::to_string(&settings).unwrap_or_default());
    if let Some(extra) = c.spec.config.as_deref().filter(|e| !e.trim().is_empty()) {
        text.push_str("\n# spec.config\n");
        text.push_str(extra.trim_end());
        text.push('\n');
    }
    text
}

/// The brokers' ConfigMap: `rookery.toml` and, when the ACL is inline, `acl`.
pub fn config_map(c: &MqttCluster, names: &Names) -> ConfigMap {
    let mut data = BTreeMap::from([(paths::CONFIG_KEY.to_owned(), broker_toml(c, names))]);
    if let Some(acl) = c.spec.acl.as_ref().and_then(|a| a.inline.as_ref()) {
        data.insert(paths::ACL_KEY.to_owned(), acl.clone());
    }
    ConfigMap {
        metadata: object_meta(c, names, names.config(), Component::Broker),
        data: Some(data),
        ..ConfigMap::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{AclSpec, MqttClusterSpec, TlsSpec};

    fn cluster(spec: serde_json::Value) -> MqttCluster {
        let spec: MqttClusterSpec = serde_json::from_value(spec).unwrap();
        let mut c = MqttCluster::new("iot", spec);
        c.metadata.namespace = Some("fleet".into());
        c
    }

    fn settings(c: &MqttCluster) -> BTreeMap<String, Value> {
        broker_settings(c, &Names::of(c, "cluster.local"))
    }

    #[test]
    fn the_coap_gateway_listens_when_enabled() {
        assert!(!settings(&cluster(serde_json::json!({}))).contains_key("coap_listen"));
        let t = settings(&cluster(serde_json::json!({"coap": {"enabled": true}})));
        assert_eq!(t["coap_listen"], s("0.0.0.0:5683"));
    }

    #[test]
    fn the_default_cluster_is_plain_mqtt_behind_proxy_protocol_with_mtls_links() {
        let c = cluster(serde_json::json!({}));
        let t = settings(&c);
        assert_eq!(t["listen"], listen(1883));
        assert!(!t.contains_key("tls_listen"));
        assert_eq!(t["proxy_protocol"], Value::Array(vec![s("mqtt")]));
        assert_eq!(t["peers_dns"], s("iot-nodes.fleet.svc.cluster.local:4370"));
        assert_eq!(
            t["cluster_server_name"],
            s("iot-nodes.fleet.svc.cluster.local")
        );
        assert_eq!(t["cluster_name"], s("fleet.iot"));
        assert_eq!(t["durability"], s("sync"));
        assert!(!t.contains_key("password_file"));
        assert!(!t.contains_key("redis_url_file"));
        assert_eq!(t["server_reference"], s("iot.fleet.svc.cluster.local"));
    }

    #[test]
    fn tls_listeners_and_client_certificates() {
        let c = cluster(serde_json::json!({
            "listeners": {"mqtts": {"enabled": true, "port": 8883}, "wss": {"enabled": true, "port": 443}},
            "tls": {"selfSigned": {}, "clientAuth": "required", "certIdentity": "cn"},
        }));
        let t = settings(&c);
        assert_eq!(t["tls_listen"], listen(8883));
        assert_eq!(t["wss_listen"], listen(8084));
        assert_eq!(t["ca"], s("/etc/rookery/tls/ca.crt"));
        assert_eq!(t["require_client_cert"], Value::Boolean(true));
        assert_eq!(t["cert_identity"], s("cn"));
        assert_eq!(
            t["proxy_protocol"],
            Value::Array(vec![s("mqtt"), s("mqtts"), s("wss")])
        );
    }

    #[test]
    fn a_separate_client_ca_and_optional_client_certificates() {
        let mut c = cluster(serde_json::json!({}));
        c.spec.tls = Some(TlsSpec {
            secret_name: Some("mine".into()),
            client_auth: ClientAuth::Optional,
            client_ca_secret_name: Some("devices-ca".into()),
            ..TlsSpec::default()
        });
        let t = settings(&c);
        assert_eq!(t["ca"], s("/etc/rookery/client-ca/ca.crt"));
        assert_eq!(t["require_client_cert"], Value::Boolean(false));
    }

    #[test]
    fn auth_acl_stores_and_limits() {
        let c = cluster(serde_json::json!({
            "auth": {"users": [{"name": "a", "passwordSecretRef": {"name": "p", "key": "a"}}], "allowAnonymous": false},
            "acl": {"configMapRef": {"name": "acl", "key": "acl.conf"}},
            "persistence": {"redis": {"managed": {}}, "postgres": {"external": {"urlSecretRef": {"name": "pg", "key": "url"}}}, "durability": "async"},
            "limits": {"maxInflight": 50, "queueOverflow": "drop-oldest"},
        }));
        let t = settings(&c);
        assert_eq!(t["password_file"], s("/etc/rookery/auth/passwd"));
        assert_eq!(t["allow_anonymous"], Value::Boolean(false));
        assert_eq!(t["acl_file"], s("/etc/rookery/acl/acl"));
        assert_eq!(t["redis_url_file"], s("/etc/rookery/redis/url"));
        assert_eq!(t["postgres_url_file"], s("/etc/rookery/postgres/url"));
        assert_eq!(t["durability"], s("async"));
        assert_eq!(t["max_inflight"], Value::Integer(50));
        assert_eq!(t["queue_overflow"], s("drop-oldest"));
    }

    #[test]
    fn every_key_the_operator_sets_is_reserved() {
        let c = cluster(serde_json::json!({
            "listeners": {"mqtts": {"enabled": true, "port": 8883}, "ws": {"enabled": true, "port": 80}, "wss": {"enabled": true, "port": 443}},
            "tls": {"selfSigned": {}, "clientAuth": "required", "certIdentity": "cn"},
            "auth": {"allowAnonymous": true, "passwordSecretRef": {"name": "p", "key": "k"}},
            "acl": {"inline": "topic #"},
            "persistence": {"redis": {"managed": {}}, "postgres": {"managed": {}}},
        }));
        let limits = [
            "max_connections",
            "max_packet_size",
            "max_inflight",
            "max_queued_messages",
            "max_queued_bytes",
            "publish_rate_limit",
            "publish_byte_rate_limit",
            "max_connection_rate",
            "memory_high_watermark",
            "queue_overflow",
        ];
        for key in settings(&c).keys() {
            assert!(
                OPERATOR_KEYS.contains(&key.as_str()) || limits.contains(&key.as_str()),
                "{key} is set by the operator but not reserved"
            );
        }
    }

    #[test]
    fn the_config_map_holds_the_file_and_the_inline_acl() {
        let mut c = cluster(serde_json::json!({"config": "sys_interval = 30\n"}));
        c.spec.acl = Some(AclSpec {
            inline: Some("topic read #\n".into()),
            config_map_ref: None,
        });
        let cm = config_map(&c, &Names::of(&c, "cluster.local"));
        let data = cm.data.unwrap();
        assert_eq!(data["acl"], "topic read #\n");
        let text = &data["rookery.toml"];
        assert!(
            text.ends_with("# spec.config\nsys_interval = 30\n"),
            "{text}"
        );
        assert!(text.contains("acl_file = \"/etc/rookery/config/acl\""));
        assert_eq!(cm.metadata.name.as_deref(), Some("iot-config"));
    }
}
