//! The role a member plays, as its agent reports it.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Replica,
    /// Not known: no fresh sample, the database unreachable, or a role
    /// this release does not know.
    #[default]
    #[serde(other)]
    Unknown,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Primary, Role::Replica, Role::Unknown];

    /// The name on the wire and in the history.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| format!("unknown role {s:?} (primary, replica or unknown)"))
    }
}

#[cfg(test)]
mod tests {
    use super::Role;

    #[test]
    fn roles_round_trip_and_an_unknown_stored_role_reads_as_unknown() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
            assert_eq!(serde_json::to_string(&r).expect("encodes"), format!("\"{r}\""));
        }
        assert_eq!(serde_json::from_str::<Role>("\"\"").expect("decodes"), Role::Unknown);
        assert!("leader".parse::<Role>().is_err());
    }
}
