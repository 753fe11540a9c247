//! TLS from the agent to its database: PostgreSQL with `sslmode=verify-full`
//! semantics (the server's certificate must chain to the given CA and name
//! the host dialled), Redis as `rediss` with the same checks. Configured in
//! `[connection.tls]`; without it, the agent speaks plaintext to its
//! database (a local socket or loopback, usually).

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// `[connection.tls]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DbTls {
    /// The CA that signed the database servers' certificates.
    pub ca: PathBuf,
    /// A client certificate and key, when the servers ask for one.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
}

impl DbTls {
    /// Every problem with the files, for the configuration check.
    pub fn check(&self) -> Result<(), String> {
        if self.cert.is_some() != self.key.is_some() {
            return Err("connection.tls: set cert and key together".into());
        }
        self.client_config().map(|_| ())
    }

    /// A rustls client configuration trusting only `ca`.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, String> {
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(&self.ca).map_err(|e| format!("connection.tls.ca {}: {e}", self.ca.display()))?;
        for c in certs {
            let c = c.map_err(|e| format!("connection.tls.ca {}: {e}", self.ca.display()))?;
            roots.add(c).map_err(|e| format!("connection.tls.ca {}: {e}", self.ca.display()))?;
        }
        if roots.is_empty() {
            return Err(format!("connection.tls.ca {}: no certificate in it", self.ca.display()));
        }
        let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                    .and_then(|i| i.collect::<Result<_, _>>())
                    .map_err(|e| format!("connection.tls.cert {}: {e}", cert.display()))?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("connection.tls.key {}: {e}", key.display()))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| format!("connection.tls: {e}"))
            }
            _ => Ok(builder.with_no_client_auth()),
        }
    }

    /// The TLS connector of tokio-postgres.
    pub fn postgres(&self) -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(self.client_config()?))
    }

    /// libpq's connection parameters for the same checks (for
    /// `primary_conninfo` and pg_basebackup).
    pub fn libpq_params(&self) -> String {
        let mut s = format!(" sslmode=verify-full sslrootcert={}", self.ca.display());
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            s.push_str(&format!(" sslcert={} sslkey={}", cert.display(), key.display()));
        }
        s
    }

    /// The same for libpq's tools (pg_basebackup), as environment variables.
    pub fn libpq_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("PGSSLMODE", "verify-full".to_string()), ("PGSSLROOTCERT", self.ca.display().to_string())];
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            env.extend([("PGSSLCERT", cert.display().to_string()), ("PGSSLKEY", key.display().to_string())]);
        }
        env
    }

    /// The certificates of the redis crate's TLS connections.
    pub fn redis(&self) -> Result<redis::TlsCertificates, String> {
        let read = |p: &PathBuf, what: &str| std::fs::read(p).map_err(|e| format!("connection.tls.{what} {}: {e}", p.display()));
        let client_tls = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig { client_cert: read(cert, "cert")?, client_key: read(key, "key")? }),
            _ => None,
        };
        Ok(redis::TlsCertificates { client_tls, root_cert: Some(read(&self.ca, "ca")?) })
    }

    /// redis-cli's flags for the same.
    pub fn redis_cli_args(&self) -> Vec<String> {
        let mut a = vec!["--tls".to_string(), "--cacert".to_string(), self.ca.display().to_string()];
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            a.extend(["--cert".to_string(), cert.display().to_string(), "--key".to_string(), key.display().to_string()]);
        }
        a
    }
}

/// Connects tokio-postgres over TLS when `tls` is set, else in plaintext.
pub async fn pg_connect(
    cfg: &tokio_postgres::Config,
    tls: Option<&Arc<tokio_postgres_rustls::MakeRustlsConnect>>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    match tls {
        Some(tls) => {
            let mut cfg = cfg.clone();
            cfg.ssl_mode(tokio_postgres::config::SslMode::Require);
            let (client, connection) = cfg.connect(tls.as_ref().clone()).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok(client)
        }
        None => {
            let (client, connection) = cfg.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok(client)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_parameters_verify_the_server_fully() {
        let t = DbTls { ca: "/etc/drc/db-ca.pem".into(), cert: None, key: None };
        assert_eq!(t.libpq_params(), " sslmode=verify-full sslrootcert=/etc/drc/db-ca.pem");
        let t = DbTls { cert: Some("/c.pem".into()), key: Some("/c.key".into()), ..t };
        assert!(t.libpq_params().ends_with(" sslcert=/c.pem sslkey=/c.key"));
        assert_eq!(t.redis_cli_args()[..3], ["--tls", "--cacert", "/etc/drc/db-ca.pem"]);
    }

    #[test]
    fn a_missing_or_empty_ca_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = DbTls { ca: dir.path().join("nope.pem"), cert: None, key: None };
        assert!(missing.check().expect_err("missing").contains("nope.pem"));
        std::fs::write(dir.path().join("empty.pem"), "").expect("write");
        let empty = DbTls { ca: dir.path().join("empty.pem"), cert: None, key: None };
        assert!(empty.check().expect_err("empty").contains("no certificate"));
        let half = DbTls { cert: Some("/c.pem".into()), ..empty };
        assert!(half.check().expect_err("half").contains("together"));
    }
}
