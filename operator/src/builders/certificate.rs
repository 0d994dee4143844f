//! cert-manager's `Certificate` for `tls.certManager`: cert-manager issues the server
//! certificate into the Secret the brokers mount, and renews it; the brokers reload it.

use serde_json::{Value, json};

use super::meta::{Component, Names, object_meta};
use super::secrets::server_dns_names;
use crate::crd::MqttCluster;

/// The Certificate, or `None` when the spec does not ask cert-manager.
pub fn certificate(c: &MqttCluster, names: &Names) -> Option<Value> {
    let cm = c.spec.tls.as_ref()?.cert_manager.as_ref()?;
    let meta = object_meta(c, names, names.server_tls_secret(), Component::Broker);
    Some(json!({
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": meta,
        "spec": {
            "secretName": names.server_tls_secret(),
            "dnsNames": server_dns_names(c, names),
            "issuerRef": {
                "name": cm.issuer_ref.name,
                "kind": cm.issuer_ref.kind,
                "group": cm.issuer_ref.group,
            },
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
            "usages": ["server auth", "digital signature", "key encipherment"],
            "duration": "2160h",
            "renewBefore": "720h",
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::MqttClusterSpec;

    #[test]
    fn cert_manager_issues_into_the_secret_the_brokers_mount() {
        let spec: MqttClusterSpec = serde_json::from_value(serde_json::json!({
            "listeners": {"mqtts": {"enabled": true, "port": 8883}},
            "tls": {"certManager": {"issuerRef": {"name": "letsencrypt", "kind": "ClusterIssuer"}}, "dnsNames": ["mqtt.example.com"]},
        }))
        .unwrap();
        let c = MqttCluster::new("iot", spec);
        let names = Names::of(&c, "cluster.local");
        let cert = certificate(&c, &names).unwrap();
        assert_eq!(cert["spec"]["secretName"], "iot-tls");
        assert_eq!(cert["spec"]["issuerRef"]["kind"], "ClusterIssuer");
        assert_eq!(cert["spec"]["issuerRef"]["group"], "cert-manager.io");
        let dns = cert["spec"]["dnsNames"].as_array().unwrap();
        assert!(dns.iter().any(|d| d == "mqtt.example.com"));
        let plain = MqttCluster::new("x", serde_json::from_str::<MqttClusterSpec>("{}").unwrap());
        assert!(certificate(&plain, &names).is_none());
    }
}
