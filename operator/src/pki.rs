//! Key material the operator makes: a CA per cluster and certificates signed by it (cluster
//! links, and the server certificate of `tls.selfSigned`), and random secrets. This is the one
//! place with randomness; the reconciler makes material once, keeps it in Secrets, and makes
//! it again only when it nears expiry.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate, its key and the CA that signed it, as PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsMaterial {
    /// The CA certificate (`ca.crt`).
    pub ca_pem: String,
    /// The certificate (`tls.crt`).
    pub cert_pem: String,
    /// Its private key (`tls.key`).
    pub key_pem: String,
}

/// Errors of making material.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused a parameter (an invalid DNS name, say).
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time_now();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// A new CA named `name` and a certificate it signs for `dns_names`, valid for `days`, usable
/// as server and as client (cluster links are mutual TLS with one certificate both ways).
pub fn issue(ca_name: &str, dns_names: &[String], days: i64) -> Result<TlsMaterial, PkiError> {
    let mut ca = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, ca_name);
    dn.push(DnType::OrganizationName, "rookery-operator");
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    // The CA outlives its leaves: renewing a leaf keeps the CA clients trust.
    validity(&mut ca, days * 4);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut leaf = CertificateParams::new(dns_names.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        dns_names.first().map(String::as_str).unwrap_or("rookery"),
    );
    leaf.distinguished_name = dn;
    leaf.subject_alt_names = dns_names
        .iter()
        .map(|n| Ok(SanType::DnsName(n.clone().try_into()?)))
        .collect::<Result<_, rcgen::Error>>()?;
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    validity(&mut leaf, days);
    let key = KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok(TlsMaterial {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Seconds until the first certificate of `pem` expires (negative when it has), or `None`
/// when it does not parse.
pub fn seconds_left(pem: &str) -> Option<i64> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = block.parse_x509().ok()?;
    Some(cert.validity().not_after.timestamp() - time_now().unix_timestamp())
}

/// When the first certificate of `pem` expires.
pub fn not_after(pem: &str) -> Option<k8s_openapi::jiff::Timestamp> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = block.parse_x509().ok()?;
    k8s_openapi::jiff::Timestamp::from_second(cert.validity().not_after.timestamp()).ok()
}

/// A random token of 32 URL-safe characters (admin API, generated passwords).
pub fn token() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::thread_rng();
    (0..32)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_names_every_dns_name_and_chains_to_its_ca() {
        let m = issue(
            "iot links",
            &["iot-nodes.fleet.svc.cluster.local".into()],
            30,
        )
        .unwrap();
        let (_, ca) = x509_parser::pem::parse_x509_pem(m.ca_pem.as_bytes()).unwrap();
        let ca = ca.parse_x509().unwrap();
        let (_, leaf) = x509_parser::pem::parse_x509_pem(m.cert_pem.as_bytes()).unwrap();
        let leaf = leaf.parse_x509().unwrap();
        assert_eq!(leaf.issuer(), ca.subject());
        assert!(ca.is_ca() && !leaf.is_ca());
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        assert!(format!("{:?}", san.value).contains("iot-nodes.fleet.svc.cluster.local"));
        assert!(m.key_pem.contains("PRIVATE KEY"));
        let days = (leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp())
            / 86400;
        assert_eq!(days, 30);
    }

    #[test]
    fn seconds_left_reads_the_expiry() {
        let m = issue("x", &["a.test".into()], 10).unwrap();
        let left = seconds_left(&m.cert_pem).unwrap();
        assert!((9 * 86_400..=10 * 86_400).contains(&left), "{left}");
        assert_eq!(seconds_left("junk"), None);
    }

    #[test]
    fn tokens_are_long_and_differ() {
        let (a, b) = (token(), token());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
