//! The Secrets the operator makes for the brokers: the admin API's token, the cluster links'
//! CA and certificate, and the server certificate of `tls.selfSigned`. Their contents come in
//! as [`Material`]: made once by [`crate::pki`], then read back from the Secrets on every
//! reconcile, so that applying them again changes nothing.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

use super::config::paths;
use super::meta::{Component, Names, object_meta};
use crate::crd::MqttCluster;
use crate::pki::TlsMaterial;

/// Generated contents of the Secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Material {
    /// The admin API's bearer token.
    pub admin_token: String,
    /// The cluster links' CA, certificate and key.
    pub cluster_tls: TlsMaterial,
    /// The server certificate when `tls.selfSigned` is set.
    pub server_tls: Option<TlsMaterial>,
    /// The brokers' password file (from `auth.passwordSecretRef` and `auth.users`).
    pub password_file: Option<String>,
    /// The password of managed Redis (`persistence.redis.managed`).
    pub redis_password: Option<String>,
    /// The password of managed PostgreSQL (`persistence.postgres.managed`).
    pub postgres_password: Option<String>,
}

/// A Secret of `component` holding `data` (text values).
pub fn secret(
    c: &MqttCluster,
    names: &Names,
    name: String,
    component: Component,
    type_: &str,
    data: &[(&str, &str)],
) -> Secret {
    Secret {
        metadata: object_meta(c, names, name, component),
        type_: Some(type_.into()),
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Secret::default()
    }
}

fn tls_secret(c: &MqttCluster, names: &Names, name: String, m: &TlsMaterial) -> Secret {
    secret(
        c,
        names,
        name,
        Component::Broker,
        "kubernetes.io/tls",
        &[
            ("ca.crt", &m.ca_pem),
            ("tls.crt", &m.cert_pem),
            ("tls.key", &m.key_pem),
        ],
    )
}

/// The DNS names of the server certificate: the client Service by every name it has, and
/// what the spec adds.
pub fn server_dns_names(c: &MqttCluster, names: &Names) -> Vec<String> {
    let svc = names.client_service();
    let mut dns = vec![
        names.service_host(&svc),
        format!("{svc}.{}.svc", names.namespace),
        format!("{svc}.{}", names.namespace),
        svc,
    ];
    if let Some(tls) = &c.spec.tls {
        dns.extend(tls.dns_names.iter().cloned());
    }
    dns
}

/// The DNS names of the cluster links' certificate.
pub fn link_dns_names(names: &Names) -> Vec<String> {
    vec![names.link_server_name()]
}

/// Every Secret the operator makes for this cluster.
pub fn secrets(c: &MqttCluster, names: &Names, m: &Material) -> Vec<Secret> {
    let mut all = vec![
        secret(
            c,
            names,
            names.admin_secret(),
            Component::Broker,
            "Opaque",
            &[(paths::ADMIN_TOKEN_KEY, &m.admin_token)],
        ),
        tls_secret(c, names, names.cluster_tls_secret(), &m.cluster_tls),
    ];
    if let Some(server) = &m.server_tls {
        all.push(tls_secret(c, names, names.server_tls_secret(), server));
    }
    if let Some(file) = &m.password_file {
        all.push(secret(
            c,
            names,
            names.auth_secret(),
            Component::Broker,
            "Opaque",
            &[(paths::PASSWORD_KEY, file)],
        ));
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::MqttClusterSpec;

    fn material(server: bool) -> Material {
        let t = TlsMaterial {
            ca_pem: "CA".into(),
            cert_pem: "CERT".into(),
            key_pem: "KEY".into(),
        };
        Material {
            admin_token: "t".repeat(32),
            cluster_tls: t.clone(),
            server_tls: server.then_some(t),
            password_file: None,
            redis_password: None,
            postgres_password: None,
        }
    }

    #[test]
    fn admin_and_link_secrets_always_server_certificate_when_self_signed() {
        let c = MqttCluster::new(
            "iot",
            serde_json::from_str::<MqttClusterSpec>("{}").unwrap(),
        );
        let names = Names::of(&c, "cluster.local");
        let s = secrets(&c, &names, &material(false));
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(s[1].data.as_ref().unwrap()["tls.key"].0, b"KEY");
        assert_eq!(secrets(&c, &names, &material(true)).len(), 3);
        assert_eq!(
            server_dns_names(&c, &names)[0],
            "iot.default.svc.cluster.local"
        );
    }
}
