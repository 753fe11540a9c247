//! The TLS material of one process: a CA bundle, a certificate chain and its
//! key, read from PEM files, and read again when one of them changes, so that
//! a rotated certificate takes effect without a restart. Every new connection
//! asks for the current material (three `stat` calls); connections already
//! open carry on with what they were made with.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};

use crate::identity::{Identity, IdentityError};

/// Where a process finds its TLS material (`[tls]` in a config file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The CA certificates (PEM) that sign every drc certificate of the cluster.
    pub ca: PathBuf,
    /// This process's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// The private key of `cert` (PEM, PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
}

/// Why TLS material cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Identity { path: PathBuf, source: IdentityError },
    #[error("the TLS material does not fit together: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("the CA bundle cannot verify client certificates: {0}")]
    Verifier(String),
    #[error("{path} now names {now}, not {was}: a new identity needs a restart")]
    IdentityChanged { path: PathBuf, was: Box<Identity>, now: Box<Identity> },
}

/// What a process makes its connections with.
pub struct Material {
    pub server: Arc<ServerConfig>,
    /// The HTTP listener's (health, metrics, status page): a client
    /// certificate is checked when one is given, but not demanded, so that
    /// a load balancer's or kubelet's probe can ask whether the process is
    /// alive; what else it may read is decided per request.
    pub http: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
    /// Who this process is, from its own certificate.
    pub identity: Identity,
    /// When its certificate expires, in seconds since the Unix epoch.
    pub not_after: u64,
}

/// When the files last changed, as far as `stat` tells.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp(Vec<(i64, i64, u64, u64)>);

fn stamp(files: &TlsFiles) -> Stamp {
    let of = |p: &Path| std::fs::metadata(p).map(|m| (m.mtime(), m.mtime_nsec(), m.size(), m.ino())).unwrap_or_default();
    Stamp(vec![of(&files.ca), of(&files.cert), of(&files.key)])
}

fn file_error(path: &Path, message: impl ToString) -> TlsError {
    TlsError::File { path: path.to_path_buf(), message: message.to_string() }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "holds no PEM certificate"));
    }
    Ok(certs)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads and checks the files and builds both sides' configurations.
fn build(files: &TlsFiles) -> Result<Material, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in certificates(&files.ca)? {
        roots.add(ca).map_err(|e| file_error(&files.ca, format!("not a usable CA certificate: {e}")))?;
    }
    let roots = Arc::new(roots);
    let chain = certificates(&files.cert)?;
    let identity = Identity::from_certificate(&chain[0]).map_err(|source| TlsError::Identity { path: files.cert.clone(), source })?;
    let not_after = crate::identity::not_after(&chain[0]).map_err(|source| TlsError::Identity { path: files.cert.clone(), source })?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| file_error(&files.key, e))?;
    let provider = provider();
    let versions = [&rustls::version::TLS13];

    // gRPC demands a client certificate; the HTTP listener checks one when
    // given (see `Material::http`).
    let server_config = |demand: bool, alpn: &[&[u8]]| -> Result<ServerConfig, TlsError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider));
        let verifier = if demand { verifier } else { verifier.allow_unauthenticated() };
        let verifier = verifier.build().map_err(|e| TlsError::Verifier(e.to_string()))?;
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&versions)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    };
    let server = server_config(true, &[b"h2"])?;
    let http = server_config(false, &[b"h2", b"http/1.1"])?;

    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Material { server: Arc::new(server), http: Arc::new(http), client: Arc::new(client), identity, not_after })
}

/// A process's TLS material, reloaded when its files change.
pub struct Tls {
    files: TlsFiles,
    current: Mutex<(Stamp, Arc<Material>)>,
}

impl Tls {
    /// Reads the files now; an error names the file and what is wrong.
    pub fn load(files: TlsFiles) -> Result<Arc<Tls>, TlsError> {
        let stamp = stamp(&files);
        let material = build(&files)?;
        Ok(Arc::new(Tls { files, current: Mutex::new((stamp, Arc::new(material))) }))
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Who this process is.
    pub fn identity(&self) -> Identity {
        self.lock().1.identity.clone()
    }

    /// When the certificate in use expires (seconds since the Unix epoch);
    /// after a rotation, the new one's.
    pub fn not_after(&self) -> u64 {
        self.material().not_after
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Stamp, Arc<Material>)> {
        self.current.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The material for a new connection: read again if a file changed
    /// since. Files that do not fit together (a certificate written before
    /// its key, say) leave the previous material in use, with a warning; the
    /// next connection tries again.
    pub fn material(&self) -> Arc<Material> {
        let now = stamp(&self.files);
        let mut current = self.lock();
        if current.0 != now {
            match self.rebuild(&current.1) {
                Ok(m) => {
                    tracing::info!(cert = %self.files.cert.display(), "TLS certificate files changed; new connections use them");
                    *current = (now, Arc::new(m));
                }
                Err(e) => {
                    tracing::warn!("TLS certificate files changed but cannot be used, keeping the previous ones: {e}");
                    // Not tried again until the files change once more.
                    current.0 = now;
                }
            }
        }
        Arc::clone(&current.1)
    }

    fn rebuild(&self, old: &Material) -> Result<Material, TlsError> {
        let m = build(&self.files)?;
        if m.identity != old.identity {
            return Err(TlsError::IdentityChanged {
                path: self.files.cert.clone(),
                was: Box::new(old.identity.clone()),
                now: Box::new(m.identity),
            });
        }
        Ok(m)
    }
}
