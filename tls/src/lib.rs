//! Mutual TLS for every drc connection.
//!
//! Every coordinator, agent, proxy and `drctl` holds a certificate from the
//! cluster's CA that names its drc identity ([`identity`]). Servers demand a
//! client certificate and hand the caller's identity to the authorisation
//! check with every request ([`server`]); clients check that they talk to a
//! coordinator of their own cluster ([`client`]). The files are read again
//! when they change ([`files`]). Plaintext is possible only when a process's
//! configuration says `insecure = true`, and then it warns at every start.

pub mod client;
pub mod files;
pub mod identity;
pub mod server;
pub mod socket;

use std::sync::Arc;

use tonic::transport::{Channel, Endpoint};

pub use files::{Tls, TlsError, TlsFiles};
pub use identity::{Identity, IdentityError, Role};
pub use server::{incoming, incoming_for, Caller, Conn, PeerInfo, Purpose};

/// How a process makes and takes its connections.
#[derive(Clone)]
pub enum Security {
    Tls(Arc<Tls>),
    /// Plaintext and unauthenticated (`insecure = true`).
    Insecure,
}

/// Why a process cannot secure its connections.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error(
        "no TLS material: set tls.ca, tls.cert and tls.key (README, \"Security\"), or insecure = true to run in plaintext on a trusted network"
    )]
    Unconfigured,
    #[error("both TLS files and insecure = true are given: choose one")]
    Both,
    #[error("--ca, --cert and --key (DRC_CA, DRC_CERT, DRC_KEY) go together: give all three")]
    PartialFlags,
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// The TLS files a command line names with `--ca --cert --key`: all three
/// or none.
pub fn files_from_flags(
    ca: Option<&std::path::Path>,
    cert: Option<&std::path::Path>,
    key: Option<&std::path::Path>,
) -> Result<Option<TlsFiles>, SecurityError> {
    match (ca, cert, key) {
        (Some(ca), Some(cert), Some(key)) => Ok(Some(TlsFiles { ca: ca.into(), cert: cert.into(), key: key.into() })),
        (None, None, None) => Ok(None),
        _ => Err(SecurityError::PartialFlags),
    }
}

/// Whether a configuration chose exactly one of TLS files and `insecure`;
/// checked when a configuration is validated, before any file is read.
pub fn check_choice(files: Option<&TlsFiles>, insecure: bool) -> Result<(), SecurityError> {
    match (files, insecure) {
        (Some(_), true) => Err(SecurityError::Both),
        (None, false) => Err(SecurityError::Unconfigured),
        _ => Ok(()),
    }
}

/// The innermost cause of an error: for a failed connection, the TLS
/// refusal or the refused TCP connect, which tonic reports only as
/// "transport error".
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Logged at every start of a process that runs without TLS.
pub const INSECURE_WARNING: &str =
    "insecure = true: connections are plaintext and unauthenticated; anyone who reaches this process can read its traffic and act as any role";

impl Security {
    /// TLS from `files`, or plaintext when the configuration says so.
    pub fn new(files: Option<TlsFiles>, insecure: bool) -> Result<Self, SecurityError> {
        check_choice(files.as_ref(), insecure)?;
        match files {
            Some(f) => Ok(Security::Tls(Tls::load(f)?)),
            None => Ok(Security::Insecure),
        }
    }

    pub fn is_insecure(&self) -> bool {
        matches!(self, Security::Insecure)
    }

    /// Who this process is, from its certificate.
    pub fn identity(&self) -> Option<Identity> {
        match self {
            Security::Tls(t) => Some(t.identity()),
            Security::Insecure => None,
        }
    }

    /// An endpoint for `address` (`host:port`; an `http://` or `https://`
    /// prefix is ignored: this process's configuration decides).
    pub fn endpoint(address: &str) -> Result<Endpoint, tonic::transport::Error> {
        let bare = address.trim().trim_start_matches("http://").trim_start_matches("https://");
        Endpoint::from_shared(format!("http://{bare}"))
    }

    /// Connects now.
    pub async fn connect(&self, endpoint: Endpoint) -> Result<Channel, tonic::transport::Error> {
        match self {
            Security::Tls(t) => endpoint.connect_with_connector(client::Connector::new(Arc::clone(t))).await,
            Security::Insecure => endpoint.connect_with_connector(client::Plain).await,
        }
    }

    /// A channel that connects on first use, and again after a failure.
    pub fn connect_lazy(&self, endpoint: Endpoint) -> Channel {
        match self {
            Security::Tls(t) => endpoint.connect_with_connector_lazy(client::Connector::new(Arc::clone(t))),
            Security::Insecure => endpoint.connect_with_connector_lazy(client::Plain),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn a_configuration_chooses_exactly_one_of_tls_files_and_insecure() {
        let files = TlsFiles { ca: "ca.pem".into(), cert: "c.pem".into(), key: "c.key".into() };
        assert!(check_choice(Some(&files), false).is_ok());
        assert!(check_choice(None, true).is_ok());
        assert!(matches!(check_choice(Some(&files), true), Err(SecurityError::Both)));
        assert!(matches!(check_choice(None, false), Err(SecurityError::Unconfigured)));
        assert!(matches!(Security::new(None, false), Err(SecurityError::Unconfigured)));
    }

    #[test]
    fn the_three_certificate_flags_go_together() {
        let (a, b, c) = (Some(Path::new("a")), Some(Path::new("b")), Some(Path::new("c")));
        assert_eq!(files_from_flags(a, b, c).expect("all three").map(|f| f.key), Some("c".into()));
        assert!(files_from_flags(None, None, None).expect("none").is_none());
        assert!(matches!(files_from_flags(a, None, c), Err(SecurityError::PartialFlags)));
    }
}
