//! What the operator reads for one cluster before building it: the user's Secrets (password
//! files, plain passwords, store URLs) and the Secrets it made itself last time (so that
//! tokens, keys and hashes stay as they are), turned into the [`Material`] the builders take.
//! A missing Secret or key is an error naming the field that refers to it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;

use crate::builders::config::paths;
use crate::builders::meta::Names;
use crate::builders::secrets::{Material, link_dns_names, server_dns_names};
use crate::crd::{MqttCluster, SecretKeyRef};
use crate::passwords::password_file;
use crate::pki::{self, TlsMaterial};
use crate::validate::FieldError;

/// Days the cluster links' certificate is valid; it is renewed a third of the way before.
pub const LINK_CERT_DAYS: i64 = 365;

/// Secrets of the cluster's namespace, by name and key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    /// Secret name → key → bytes.
    pub secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
}

impl Inputs {
    /// From Secret objects (`data`, and `stringData` as a user's file may have it).
    pub fn from_secrets(list: impl IntoIterator<Item = Secret>) -> Inputs {
        let mut secrets = BTreeMap::new();
        for s in list {
            let Some(name) = s.metadata.name.clone() else {
                continue;
            };
            let mut keys: BTreeMap<String, Vec<u8>> = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            for (k, v) in s.string_data.unwrap_or_default() {
                keys.insert(k, v.into_bytes());
            }
            secrets.insert(name, keys);
        }
        Inputs { secrets }
    }

    fn get(&self, secret: &str, key: &str) -> Option<&[u8]> {
        self.secrets.get(secret)?.get(key).map(Vec::as_slice)
    }

    fn text(&self, secret: &str, key: &str) -> Option<String> {
        self.get(secret, key)
            .and_then(|b| String::from_utf8(b.to_vec()).ok())
    }

    /// The value of a user's Secret key, or an error naming `field`.
    pub fn required(&self, r: &SecretKeyRef, field: &str) -> Result<&[u8], FieldError> {
        self.get(&r.name, &r.key).ok_or_else(|| FieldError {
            field: field.into(),
            message: if self.secrets.contains_key(&r.name) {
                format!("Secret {:?} has no key {:?}", r.name, r.key)
            } else {
                format!("Secret {:?} does not exist", r.name)
            },
        })
    }

    /// TLS material the operator stored in `secret`, if it is there and valid for more than
    /// `renew_days` days.
    fn stored_tls(&self, secret: &str, renew_days: i64) -> Option<TlsMaterial> {
        let m = TlsMaterial {
            ca_pem: self.text(secret, "ca.crt")?,
            cert_pem: self.text(secret, "tls.crt")?,
            key_pem: self.text(secret, "tls.key")?,
        };
        let left = pki::seconds_left(&m.cert_pem)?;
        (left > renew_days * 86_400).then_some(m)
    }
}

/// The material for `c`: what the operator stored before where it is still good, new
/// material where it is missing or near expiry, and the password file from the user's
/// Secrets.
pub fn material(
    c: &MqttCluster,
    names: &Names,
    inputs: &Inputs,
) -> Result<Material, Vec<FieldError>> {
    let mut errors = Vec::new();
    let pki_error = |what: &str, e: pki::PkiError| FieldError {
        field: what.into(),
        message: e.to_string(),
    };
    let admin_token = inputs
        .text(&names.admin_secret(), paths::ADMIN_TOKEN_KEY)
        .filter(|t| t.len() >= 16)
        .unwrap_or_else(pki::token);
    let cluster_tls = match inputs.stored_tls(&names.cluster_tls_secret(), LINK_CERT_DAYS / 3) {
        Some(m) => Some(m),
        None => pki::issue(
            &format!("{} cluster links", names.cluster_name()),
            &link_dns_names(names),
            LINK_CERT_DAYS,
        )
        .map_err(|e| errors.push(pki_error("cluster links", e)))
        .ok(),
    };
    let mut server_tls = None;
    if let Some(s) = c.spec.tls.as_ref().and_then(|t| t.self_signed.as_ref()) {
        server_tls = match inputs.stored_tls(&names.server_tls_secret(), s.renew_before_days.into())
        {
            Some(m) => Some(m),
            None => pki::issue(
                &format!("{} server CA", names.cluster_name()),
                &server_dns_names(c, names),
                s.validity_days.into(),
            )
            .map_err(|e| errors.push(pki_error("spec.tls.selfSigned", e)))
            .ok(),
        };
    }
    let auth = &c.spec.auth;
    let mut password = None;
    if auth.password_secret_ref.is_some() || !auth.users.is_empty() {
        let base = match &auth.password_secret_ref {
            Some(r) => match inputs.required(r, "spec.auth.passwordSecretRef") {
                Ok(b) => Some(String::from_utf8_lossy(b).into_owned()),
                Err(e) => {
                    errors.push(e);
                    None
                }
            },
            None => None,
        };
        let mut users = Vec::new();
        for (i, u) in auth.users.iter().enumerate() {
            match inputs.required(
                &u.password_secret_ref,
                &format!("spec.auth.users[{i}].passwordSecretRef"),
            ) {
                Ok(p) => users.push((u.name.clone(), p.to_vec())),
                Err(e) => errors.push(e),
            }
        }
        let existing = inputs.text(&names.auth_secret(), paths::PASSWORD_KEY);
        match password_file(base.as_deref(), &users, existing.as_deref()) {
            Ok(f) => password = Some(f),
            Err(e) => errors.push(FieldError {
                field: "spec.auth".into(),
                message: e.to_string(),
            }),
        }
    }
    if let Some(tls) = &c.spec.tls {
        let mut need = |secret: &String, key: &str, field: &str| {
            let r = SecretKeyRef {
                name: secret.clone(),
                key: key.into(),
            };
            if let Err(e) = inputs.required(&r, field) {
                errors.push(e);
            }
        };
        if let Some(s) = &tls.secret_name {
            need(s, "tls.crt", "spec.tls.secretName");
            need(s, "tls.key", "spec.tls.secretName");
        }
        if let Some(s) = &tls.client_ca_secret_name {
            need(s, "ca.crt", "spec.tls.clientCaSecretName");
        }
    }
    let persistence = &c.spec.persistence;
    for (store, field) in [
        (
            persistence.redis.as_ref().and_then(|r| r.external.as_ref()),
            "spec.persistence.redis.external.urlSecretRef",
        ),
        (
            persistence
                .postgres
                .as_ref()
                .and_then(|p| p.external.as_ref()),
            "spec.persistence.postgres.external.urlSecretRef",
        ),
    ] {
        if let Some(e) = store
            && let Err(e) = inputs.required(&e.url_secret_ref, field)
        {
            errors.push(e);
        }
    }
    // Kept from the Secret written before when it still looks like one of ours (the URLs
    // are not percent-encoded), else new.
    let kept = |secret: String, key: &str| {
        inputs
            .text(&secret, key)
            .filter(|p| {
                p.len() >= 16
                    && p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
            .unwrap_or_else(pki::token)
    };
    let redis_password = persistence
        .redis
        .as_ref()
        .is_some_and(|r| r.managed.is_some())
        .then(|| kept(names.redis(), crate::builders::redis::PASSWORD_KEY));
    let postgres_password = persistence
        .postgres
        .as_ref()
        .is_some_and(|p| p.managed.is_some())
        .then(|| kept(names.postgres(), crate::builders::postgres::PASSWORD_KEY));
    match cluster_tls {
        Some(cluster_tls) if errors.is_empty() => Ok(Material {
            admin_token,
            cluster_tls,
            server_tls,
            password_file: password,
            redis_password,
            postgres_password,
        }),
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::secrets::secrets;
    use crate::crd::MqttClusterSpec;

    fn cluster(spec: serde_json::Value) -> MqttCluster {
        let mut c = MqttCluster::new(
            "iot",
            serde_json::from_value::<MqttClusterSpec>(spec).unwrap(),
        );
        c.metadata.namespace = Some("fleet".into());
        c
    }

    fn user_secret(name: &str, key: &str, value: &str) -> Secret {
        Secret {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            string_data: Some(BTreeMap::from([(key.into(), value.into())])),
            ..Secret::default()
        }
    }

    #[test]
    fn material_is_made_once_and_then_read_back_unchanged() {
        let c = cluster(serde_json::json!({
            "listeners": {"mqtts": {"enabled": true, "port": 8883}},
            "tls": {"selfSigned": {}},
            "auth": {"users": [{"name": "app", "passwordSecretRef": {"name": "users", "key": "app"}}]},
        }));
        let names = Names::of(&c, "cluster.local");
        let user = user_secret("users", "app", "secret");
        let first = material(&c, &names, &Inputs::from_secrets([user.clone()])).unwrap();
        assert!(first.server_tls.is_some());
        // What the operator stored, plus the user's Secret, gives the same material again.
        let mut stored = secrets(&c, &names, &first);
        stored.push(user);
        let second = material(&c, &names, &Inputs::from_secrets(stored)).unwrap();
        assert_eq!(first, second);
    }

    #[test]
    fn a_missing_secret_or_key_names_the_field() {
        let c = cluster(serde_json::json!({
            "auth": {"passwordSecretRef": {"name": "pw", "key": "passwd"}},
            "persistence": {"postgres": {"external": {"urlSecretRef": {"name": "pg", "key": "url"}}}},
        }));
        let names = Names::of(&c, "cluster.local");
        let errors = material(
            &c,
            &names,
            &Inputs::from_secrets([user_secret("pg", "uri", "x")]),
        )
        .unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "spec.auth.passwordSecretRef: Secret \"pw\" does not exist",
                "spec.persistence.postgres.external.urlSecretRef: Secret \"pg\" has no key \"url\"",
            ]
        );
    }
}
