//! A test PKI: a CA, server certificates for 127.0.0.1, client certificates (valid, expired,
//! from another CA), in ECDSA P-256, P-384 and Ed25519, written to a temp dir as PEM; and a
//! rustls client to connect with.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SignatureAlgorithm,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub struct Ca {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
}

/// A certificate and its key, as PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

pub fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        der: cert.der().clone(),
        issuer: Issuer::new(params, key),
    }
}

impl Ca {
    pub fn server(&self, alg: &'static SignatureAlgorithm) -> Leaf {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        self.sign(params, alg)
    }

    /// A certificate for `dns` only (no address), as the operator gives cluster nodes.
    #[allow(dead_code)] // used by the broker tests, not by the security tests
    pub fn named(&self, dns: &str) -> Leaf {
        let params = CertificateParams::new(vec![dns.to_string()]).unwrap();
        self.sign(params, &rcgen::PKCS_ECDSA_P256_SHA256)
    }

    pub fn client(&self, cn: &str) -> Leaf {
        self.client_with(cn, false)
    }

    pub fn expired_client(&self, cn: &str) -> Leaf {
        self.client_with(cn, true)
    }

    fn client_with(&self, cn: &str, expired: bool) -> Leaf {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::DnsName(
            format!("{cn}.devices.test").try_into().unwrap(),
        )];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        self.sign(params, &rcgen::PKCS_ECDSA_P256_SHA256)
    }

    fn sign(&self, params: CertificateParams, alg: &'static SignatureAlgorithm) -> Leaf {
        let key = KeyPair::generate_for(alg).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A TLS client trusting `ca`, optionally presenting `leaf`.
pub fn connector(ca: &Ca, leaf: Option<&Leaf>) -> TlsConnector {
    connector_versions(
        ca,
        leaf,
        &[&rustls::version::TLS13, &rustls::version::TLS12],
    )
}

pub fn connector_versions(
    ca: &Ca,
    leaf: Option<&Leaf>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der.clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let config = match leaf {
        Some(leaf) => {
            let chain = vec![pem_cert(&leaf.cert_pem)];
            let key = PrivateKeyDer::try_from(pem_key(&leaf.key_pem)).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    TlsConnector::from(Arc::new(config))
}

fn pem_cert(pem: &str) -> CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn pem_key(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .secret_der()
        .to_vec()
}

/// Opens TCP and completes a TLS handshake; the error is the handshake's.
pub async fn tls_connect(
    connector: &TlsConnector,
    addr: SocketAddr,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    connector
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
}

/// The server certificate a TLS connection got, as DER.
pub fn server_cert(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}
