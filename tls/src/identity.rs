//! Who is calling: the drc identity a certificate names.
//!
//! A drc certificate carries one URI subject alternative name
//! `drc://<cluster>/<role>/<name>`, for example `drc://prod/peer/2` (the
//! coordinator with node id 2), `drc://prod/agent/pg-eu` (the agent of member
//! `pg-eu`), `drc://prod/operator/alice` or `drc://prod/viewer/grafana`. The
//! CA vouches for it as it does for a host name; drc reads nothing else of the
//! subject. SPIFFE uses the same shape with its own scheme.

use std::fmt;
use std::str::FromStr;

use x509_cert::der::Decode as _;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::Certificate;

/// What an identity may do; the coordinator's authorisation table maps each
/// RPC to the roles that may call it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A coordinator, named by its node id.
    Peer,
    /// A member's agent, named by the member id.
    Agent,
    /// An on-call engineer: every command.
    Operator,
    /// Read-only: status, watch, history and lists.
    Viewer,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Peer, Role::Agent, Role::Operator, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Peer => "peer",
            Role::Agent => "agent",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        }
    }

    /// Whether this role may read the cluster's state: status, history,
    /// lists, metrics and the status page.
    pub fn reads_state(self) -> bool {
        matches!(self, Role::Peer | Role::Operator | Role::Viewer)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| IdentityError::UnknownRole(s.to_string()))
    }
}

/// When a DER certificate expires, in seconds since the Unix epoch.
pub fn not_after(der: &[u8]) -> Result<u64, IdentityError> {
    let cert = Certificate::from_der(der).map_err(|e| IdentityError::Certificate(e.to_string()))?;
    Ok(cert.tbs_certificate.validity.not_after.to_unix_duration().as_secs())
}

/// Why a certificate or URI names no drc identity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the certificate cannot be parsed: {0}")]
    Certificate(String),
    #[error("the certificate names no drc identity (a URI subject alternative name drc://<cluster>/<role>/<name>)")]
    Missing,
    #[error("the certificate names more than one drc identity: {0:?}")]
    Several(Vec<String>),
    #[error("{0:?} is not of the form drc://<cluster>/<role>/<name>")]
    Malformed(String),
    #[error("unknown role {0:?} (one of peer, agent, operator, viewer)")]
    UnknownRole(String),
    #[error("{part} {value:?} must be 1 to 128 of A-Z a-z 0-9 . _ ~ @ -")]
    BadPart { part: &'static str, value: String },
    #[error("a peer is named by its node id, a number above 0, not {0:?}")]
    BadNodeId(String),
}

/// A drc identity: the cluster it belongs to, its role and its name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    pub cluster: String,
    pub role: Role,
    pub name: String,
}

const SCHEME: &str = "drc://";

fn check_part(part: &'static str, value: &str) -> Result<(), IdentityError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '@' | '-'));
    if ok {
        Ok(())
    } else {
        Err(IdentityError::BadPart { part, value: value.to_string() })
    }
}

impl Identity {
    pub fn new(cluster: &str, role: Role, name: &str) -> Result<Self, IdentityError> {
        check_part("cluster", cluster)?;
        check_part("name", name)?;
        if role == Role::Peer && !name.parse::<u64>().is_ok_and(|id| id > 0) {
            return Err(IdentityError::BadNodeId(name.to_string()));
        }
        Ok(Identity { cluster: cluster.to_string(), role, name: name.to_string() })
    }

    /// The coordinator with node id `id`.
    pub fn peer(cluster: &str, id: u64) -> Result<Self, IdentityError> {
        Identity::new(cluster, Role::Peer, &id.to_string())
    }

    /// `drc://<cluster>/<role>/<name>`.
    pub fn uri(&self) -> String {
        format!("{SCHEME}{}/{}/{}", self.cluster, self.role, self.name)
    }

    pub fn parse_uri(uri: &str) -> Result<Self, IdentityError> {
        let malformed = || IdentityError::Malformed(uri.to_string());
        let rest = uri.strip_prefix(SCHEME).ok_or_else(malformed)?;
        let mut parts = rest.split('/');
        let (Some(cluster), Some(role), Some(name), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(malformed());
        };
        Identity::new(cluster, role.parse()?, name)
    }

    /// The node id of a peer.
    pub fn node_id(&self) -> Option<u64> {
        (self.role == Role::Peer).then(|| self.name.parse().ok()).flatten()
    }

    /// The identity a DER certificate names in its subject alternative names.
    pub fn from_certificate(der: &[u8]) -> Result<Self, IdentityError> {
        let cert = Certificate::from_der(der).map_err(|e| IdentityError::Certificate(e.to_string()))?;
        let names = match cert.tbs_certificate.get::<SubjectAltName>() {
            Ok(Some((_, names))) => names.0,
            Ok(None) => return Err(IdentityError::Missing),
            Err(e) => return Err(IdentityError::Certificate(e.to_string())),
        };
        let uris: Vec<String> = names
            .into_iter()
            .filter_map(|n| match n {
                GeneralName::UniformResourceIdentifier(u) => Some(u.to_string()),
                _ => None,
            })
            .filter(|u| u.starts_with(SCHEME))
            .collect();
        match uris.as_slice() {
            [] => Err(IdentityError::Missing),
            [one] => Identity::parse_uri(one),
            _ => Err(IdentityError::Several(uris)),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(uris: &[&str]) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        for u in uris {
            params.subject_alt_names.push(rcgen::SanType::URI(rcgen::string::Ia5String::try_from(*u).expect("ia5")));
        }
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn an_identity_round_trips_through_its_uri_and_a_certificate() {
        for id in [
            Identity::peer("prod", 2).expect("peer"),
            Identity::new("prod-drc", Role::Agent, "pg-eu_1").expect("agent"),
            Identity::new("lab", Role::Operator, "alice@example.com").expect("operator"),
            Identity::new("lab", Role::Viewer, "grafana").expect("viewer"),
        ] {
            assert_eq!(Identity::parse_uri(&id.uri()), Ok(id.clone()));
            assert_eq!(Identity::from_certificate(&cert_with(&["https://example.com", &id.uri()])), Ok(id.clone()));
        }
        assert_eq!(Identity::peer("prod", 2).expect("peer").node_id(), Some(2));
    }

    #[test]
    fn malformed_names_several_names_and_no_name_are_refused() {
        for bad in [
            "drc://lab/agent",
            "drc://lab/agent/a/b",
            "drc:///agent/a",
            "drc://lab/agent/",
            "drc://lab/root/a",
            "drc://lab/peer/0",
            "drc://lab/peer/x",
            "drc://lab/agent/a%2Fb",
            "spiffe://lab/agent/a",
            "drc://lab/agent/ a",
        ] {
            assert!(Identity::parse_uri(bad).is_err(), "{bad}");
        }
        assert_eq!(Identity::from_certificate(&cert_with(&[])), Err(IdentityError::Missing));
        assert!(matches!(
            Identity::from_certificate(&cert_with(&["drc://lab/agent/a", "drc://lab/operator/b"])),
            Err(IdentityError::Several(_))
        ));
        assert!(matches!(Identity::from_certificate(b"not der"), Err(IdentityError::Certificate(_))));
    }
}
