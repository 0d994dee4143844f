//! The identity a client certificate gives its client: the common name, the first DNS or URI
//! subject alternative name, or the whole subject, like Mosquitto's `use_identity_as_username`
//! and EMQX's `peer_cert_as_username`.

use serde::{Deserialize, Serialize};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Which part of the certificate names the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum CertIdentity {
    /// The subject's common name.
    Cn,
    /// The first DNS name in the subject alternative names.
    SanDns,
    /// The first URI in the subject alternative names.
    SanUri,
    /// The whole subject as x509-parser prints it: attributes in certificate order joined by
    /// `", "` (`CN=dev1, O=Acme`), values unescaped. Use it for ACL names only with CAs whose
    /// subjects cannot contain `, ` inside a value.
    Subject,
}

/// The identity in a DER certificate, `None` when it has no such field or does not parse.
pub fn extract(der: &[u8], which: CertIdentity) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    match which {
        CertIdentity::Cn => cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned),
        CertIdentity::Subject => Some(cert.subject().to_string()),
        CertIdentity::SanDns | CertIdentity::SanUri => {
            let san = cert.subject_alternative_name().ok()??;
            san.value
                .general_names
                .iter()
                .find_map(|name| match (which, name) {
                    (CertIdentity::SanDns, GeneralName::DNSName(s))
                    | (CertIdentity::SanUri, GeneralName::URI(s)) => Some((*s).to_owned()),
                    _ => None,
                })
        }
    }
    .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

    fn cert() -> Vec<u8> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "sensor-42");
        dn.push(DnType::OrganizationName, "Acme");
        params.distinguished_name = dn;
        params.subject_alt_names = vec![
            SanType::DnsName("sensor-42.devices.example".try_into().unwrap()),
            SanType::URI("spiffe://acme/sensor-42".try_into().unwrap()),
        ];
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn each_identity_kind() {
        let der = cert();
        assert_eq!(
            extract(&der, CertIdentity::Cn).as_deref(),
            Some("sensor-42")
        );
        assert_eq!(
            extract(&der, CertIdentity::SanDns).as_deref(),
            Some("sensor-42.devices.example")
        );
        assert_eq!(
            extract(&der, CertIdentity::SanUri).as_deref(),
            Some("spiffe://acme/sensor-42")
        );
        let subject = extract(&der, CertIdentity::Subject).unwrap();
        assert!(subject.contains("CN=sensor-42"), "{subject}");
        assert!(subject.contains("O=Acme"), "{subject}");
    }

    #[test]
    fn garbage_gives_none() {
        assert_eq!(extract(b"not a certificate", CertIdentity::Cn), None);
    }
}
