//! The replicated state machine: what every coordinator holds at a given
//! Raft index.
//!
//! Invariant (DESIGN.md rule 6, idempotent apply): applying the same command
//! twice leaves the state exactly as applying it once. The Raft layer already
//! skips entries at or below the persisted applied index; commands are
//! additionally written as "set to" rather than "change by" so that a
//! re-delivered entry is harmless even without that guard.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::topology::Topology;

/// A change proposed through Raft. Serialised as JSON into the entry data;
/// variants are only ever added, so old logs stay readable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// Replace the whole topology.
    ApplyTopology { topology: Topology },
}

/// What applying a command did, returned to the proposer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The topology now has this version (unchanged if the command changed nothing).
    Topology { version: u64 },
    /// Raft membership after a configuration change.
    Membership { voters: Vec<u64> },
    /// An entry with nothing to apply (leader's empty entry).
    Nothing,
}

/// The replicated state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StateMachine {
    pub topology: Topology,
    /// Bumped each time the topology actually changes.
    pub topology_version: u64,
    /// Address of every coordinator node in the Raft configuration, by id.
    pub nodes: BTreeMap<u64, String>,
}

impl StateMachine {
    /// The state a brand-new cluster starts from: its founding nodes and
    /// nothing else. Every founding node computes the same value.
    pub fn bootstrap(nodes: &BTreeMap<u64, String>) -> Self {
        StateMachine { nodes: nodes.clone(), ..Default::default() }
    }

    pub fn apply(&mut self, cmd: Command) -> Outcome {
        match cmd {
            Command::ApplyTopology { topology } => {
                if topology != self.topology {
                    self.topology = topology;
                    self.topology_version += 1;
                }
                Outcome::Topology { version: self.topology_version }
            }
        }
    }

    /// Records a node joining (with its address) or leaving the Raft group.
    pub fn apply_membership(&mut self, id: u64, address: Option<String>) {
        match address {
            Some(a) => {
                self.nodes.insert(id, a);
            }
            None => {
                self.nodes.remove(&id);
            }
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        if bytes.is_empty() {
            return Ok(Self::default());
        }
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::parse::parse_topology;

    #[test]
    fn idempotent_apply_reapplying_a_command_changes_nothing() {
        let t = parse_topology("[regions.a]\n[clusters.c]\nkind='redis'\n").expect("valid");
        let mut sm = StateMachine::default();
        let cmd = Command::ApplyTopology { topology: t };
        assert_eq!(sm.apply(cmd.clone()), Outcome::Topology { version: 1 });
        let once = sm.clone();
        assert_eq!(sm.apply(cmd), Outcome::Topology { version: 1 });
        assert_eq!(sm, once);
        sm.apply_membership(4, Some("h:1".into()));
        let once = sm.clone();
        sm.apply_membership(4, Some("h:1".into()));
        assert_eq!(sm, once);
    }

    #[test]
    fn encodes_and_decodes() {
        let mut sm = StateMachine::bootstrap(&BTreeMap::from([(1, "a:1".to_string())]));
        sm.topology_version = 3;
        assert_eq!(StateMachine::decode(&sm.encode()).expect("decodes"), sm);
    }
}
