//! TLS for the `mqtts` and `wss` listeners: rustls with the `ring` provider, TLS 1.2 and 1.3,
//! PEM certificate chains, RSA, ECDSA and Ed25519 keys, and optional or required client
//! certificates checked against a CA bundle.
//!
//! The files are re-read when they change ([`ReloadingTls::reload`], called on SIGHUP and by a
//! poll): new handshakes use the new files, live connections keep theirs. Kubernetes rotates a
//! mounted Secret by swapping a symlink, which a content poll sees and an inotify watch on the
//! file can miss. A new set that does not load is refused with a log line and the old set
//! stays in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls::version::{TLS12, TLS13};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// The files a TLS configuration is built from.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates that client certificates must chain to.
    pub ca: Option<PathBuf>,
    /// Refuse clients without a valid certificate during the handshake.
    pub require_client_cert: bool,
}

/// Why TLS files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} file {path}: {source}")]
    Read {
        /// `certificate`, `key` or `CA`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file did not hold what it should.
    #[error("{what} file {path}: {message}")]
    Invalid {
        /// `certificate`, `key` or `CA`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// rustls refused the combination (for example a key that does not match the certificate).
    #[error("certificate {cert} with key {key}: {message}")]
    Config {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        message: String,
    },
}

/// The file contents a configuration was built from, to tell whether they changed.
#[derive(PartialEq, Eq)]
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Option<Vec<u8>>,
}

/// A TLS configuration that can be replaced while listeners run.
pub struct ReloadingTls {
    files: TlsFiles,
    current: RwLock<(TlsAcceptor, Contents)>,
    /// Contents that failed to load, so a bad file is reported once, not on every poll.
    refused: RwLock<Option<Contents>>,
}

impl ReloadingTls {
    /// Loads the files; errors name the file and what is wrong with it.
    pub fn load(files: TlsFiles) -> Result<ReloadingTls, TlsError> {
        let contents = read_all(&files)?;
        let acceptor = build(&files, &contents)?;
        Ok(ReloadingTls {
            files,
            current: RwLock::new((acceptor, contents)),
            refused: RwLock::new(None),
        })
    }

    /// The acceptor for the next handshake.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.current.read().0.clone()
    }

    /// Re-reads the files. `Ok(true)` when a new configuration is now in force, `Ok(false)` when
    /// nothing changed (or the same bad contents were already refused), `Err` when the new
    /// files do not load (the previous configuration stays).
    pub fn reload(&self) -> Result<bool, TlsError> {
        let contents = read_all(&self.files)?;
        if self.current.read().1 == contents {
            return Ok(false);
        }
        if self.refused.read().as_ref() == Some(&contents) {
            return Ok(false);
        }
        match build(&self.files, &contents) {
            Ok(acceptor) => {
                *self.current.write() = (acceptor, contents);
                *self.refused.write() = None;
                Ok(true)
            }
            Err(e) => {
                *self.refused.write() = Some(contents);
                Err(e)
            }
        }
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.into(),
        source,
    })
}

fn read_all(files: &TlsFiles) -> Result<Contents, TlsError> {
    Ok(Contents {
        cert: read("certificate", &files.cert)?,
        key: read("key", &files.key)?,
        ca: files.ca.as_deref().map(|p| read("CA", p)).transpose()?,
    })
}

fn certificates(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let invalid = |message: String| TlsError::Invalid {
        what,
        path: path.into(),
        message,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("no CERTIFICATE block in it".into()));
    }
    Ok(certs)
}

fn build(files: &TlsFiles, contents: &Contents) -> Result<TlsAcceptor, TlsError> {
    let chain = certificates("certificate", &files.cert, &contents.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&contents.key).map_err(|e| TlsError::Invalid {
        what: "key",
        path: files.key.clone(),
        message: format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config_error = |message: String| TlsError::Config {
        cert: files.cert.clone(),
        key: files.key.clone(),
        message,
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&TLS13, &TLS12])
        .map_err(|e| config_error(e.to_string()))?;
    let builder = match (&files.ca, &contents.ca) {
        (Some(ca_path), Some(ca_pem)) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates("CA", ca_path, ca_pem)? {
                roots.add(cert).map_err(|e| TlsError::Invalid {
                    what: "CA",
                    path: ca_path.clone(),
                    message: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if files.require_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier.build().map_err(|e| TlsError::Invalid {
                what: "CA",
                path: ca_path.clone(),
                message: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| config_error(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A private key from a PEM file.
fn private_key(key: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let key_pem = read("key", key)?;
    PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Invalid {
        what: "key",
        path: key.into(),
        message: format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
    })
}

/// The certificates of a CA bundle, as the only roots a client trusts.
fn trust_roots(ca: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certificates("CA", ca, &read("CA", ca)?)? {
        roots.add(c).map_err(|e| TlsError::Invalid {
            what: "CA",
            path: ca.into(),
            message: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// A TLS client configuration for cluster links: the node's own certificate (mutual TLS) and
/// the cluster CA as the only trust root.
pub fn client_connector(
    cert: &Path,
    key: &Path,
    ca: &Path,
) -> Result<tokio_rustls::TlsConnector, TlsError> {
    let chain = certificates("certificate", cert, &read("certificate", cert)?)?;
    let private = private_key(key)?;
    let roots = trust_roots(ca)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config_error = |message: String| TlsError::Config {
        cert: cert.into(),
        key: key.into(),
        message,
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&TLS13])
        .map_err(|e| config_error(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, private)
        .map_err(|e| config_error(e.to_string()))?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// A TLS client configuration for a bridge's upstream: `ca` as the only trust root, TLS 1.2
/// or 1.3 (the upstream may be another vendor's broker), and a client certificate when given.
pub fn upstream_connector(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<tokio_rustls::TlsConnector, TlsError> {
    let roots = trust_roots(ca)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&TLS13, &TLS12])
        .map_err(|e| TlsError::Invalid {
            what: "CA",
            path: ca.into(),
            message: e.to_string(),
        })?
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = certificates("certificate", cert, &read("certificate", cert)?)?;
            let private = private_key(key)?;
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|e| TlsError::Config {
                    cert: cert.into(),
                    key: key.into(),
                    message: e.to_string(),
                })?
        }
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}
