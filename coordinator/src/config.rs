//! Configuration of `drc-coordinator`: a TOML file that command-line flags
//! override. [`CoordinatorConfig::validate`] reports every problem at once.
//!
//! ```toml
//! cluster_id = "prod-drc"
//! node_id = 1
//! listen = "10.0.1.5:7400"
//! data_dir = "/var/lib/drc"
//!
//! [[peers]]
//! id = 1
//! address = "10.0.1.5:7400"
//! [[peers]]
//! id = 2
//! address = "10.1.1.5:7400"
//! [[peers]]
//! id = 3
//! address = "10.2.1.5:7400"
//!
//! [raft]
//! tick_interval = "100ms"
//! election_ticks = 10
//! heartbeat_ticks = 2
//!
//! [failover]
//! lease = "2s"            # a primary's agent fences it after this without renewal
//! drift_margin = "500ms"  # the leader waits lease + margin before replacing it
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::topology::parse::valid_address;

/// One coordinator of the Raft group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub id: u64,
    pub address: String,
}

/// Raft timing and log management.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTuning {
    #[serde(with = "humantime_serde")]
    pub tick_interval: Duration,
    /// Election timeout = election_ticks × tick_interval (randomised up to 2×).
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Compact the log (keeping a snapshot) once this many applied entries accumulate.
    pub snapshot_entries: u64,
    /// A write that is not committed within this time fails with "no quorum".
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            tick_interval: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 2,
            snapshot_entries: 1000,
            write_timeout: Duration::from_secs(5),
        }
    }
}

/// Lease timing of automated failover (DESIGN.md rule 2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverTuning {
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    #[serde(with = "humantime_serde")]
    pub drift_margin: Duration,
}

impl Default for FailoverTuning {
    fn default() -> Self {
        FailoverTuning { lease: Duration::from_secs(2), drift_margin: Duration::from_millis(500) }
    }
}

/// The whole configuration of one coordinator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Name of the drc cluster; a data dir and raft traffic of another cluster are refused.
    pub cluster_id: String,
    pub node_id: u64,
    /// Where this node serves gRPC (Raft, agents and admin), host:port.
    pub listen: String,
    /// The address other nodes and clients use to reach this node; defaults to `listen`.
    #[serde(default)]
    pub advertise: Option<String>,
    pub data_dir: PathBuf,
    /// True for a node that will be added to a running cluster with
    /// `drctl members add`: it starts without a configuration of its own.
    #[serde(default)]
    pub join: bool,
    /// The founding nodes (including this one unless `join`), or for a joining
    /// node, where to find the running cluster.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    #[serde(default)]
    pub raft: RaftTuning,
    #[serde(default)]
    pub failover: FailoverTuning,
}

/// A configuration that cannot be used, with every problem found.
#[derive(Debug, thiserror::Error)]
#[error("invalid coordinator configuration:\n  - {}", .0.join("\n  - "))]
pub struct InvalidConfig(pub Vec<String>);

impl CoordinatorConfig {
    /// Parses a TOML document. Syntax errors and unknown keys are reported
    /// with their location.
    pub fn from_toml(text: &str) -> Result<Self, InvalidConfig> {
        toml::from_str(text).map_err(|e| InvalidConfig(vec![e.to_string().trim_end().to_string()]))
    }

    pub fn advertise(&self) -> &str {
        self.advertise.as_deref().unwrap_or(&self.listen)
    }

    /// The founding membership (id → address), or `None` for a joining node.
    pub fn founders(&self) -> Option<BTreeMap<u64, String>> {
        (!self.join).then(|| self.peers.iter().map(|p| (p.id, p.address.clone())).collect())
    }

    /// Checks everything that can be checked without touching the network.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let mut p = Vec::new();
        if self.cluster_id.trim().is_empty() {
            p.push("cluster_id: must not be empty".to_string());
        }
        if self.node_id == 0 {
            p.push("node_id: must be greater than 0".to_string());
        }
        if self.failover.lease < Duration::from_millis(200) {
            p.push("failover.lease: must be at least 200ms (the agent renews it every 200ms)".to_string());
        }
        if !valid_address(&self.listen) {
            p.push(format!("listen: invalid address {:?}, expected host:port", self.listen));
        }
        if let Some(a) = &self.advertise {
            if !valid_address(a) {
                p.push(format!("advertise: invalid address {a:?}, expected host:port"));
            }
        }
        if self.data_dir.as_os_str().is_empty() {
            p.push("data_dir: must not be empty".to_string());
        }
        let mut ids = BTreeSet::new();
        for (i, peer) in self.peers.iter().enumerate() {
            if peer.id == 0 {
                p.push(format!("peers[{i}].id: must be greater than 0"));
            }
            if !ids.insert(peer.id) {
                p.push(format!("peers[{i}].id: duplicate peer id {}", peer.id));
            }
            if !valid_address(&peer.address) {
                p.push(format!("peers[{i}].address: invalid address {:?}, expected host:port", peer.address));
            }
        }
        if !self.join {
            match self.peers.iter().find(|peer| peer.id == self.node_id) {
                None => p.push(format!("peers: must include this node (id {}) unless join = true", self.node_id)),
                Some(me) if me.address != self.advertise() => {
                    p.push(format!("peers: this node's entry says {:?} but it advertises {:?}", me.address, self.advertise()))
                }
                Some(_) => {}
            }
        }
        let r = &self.raft;
        if r.tick_interval.is_zero() {
            p.push("raft.tick_interval: must be greater than zero".to_string());
        }
        if r.heartbeat_ticks == 0 {
            p.push("raft.heartbeat_ticks: must be greater than 0".to_string());
        }
        if r.election_ticks <= r.heartbeat_ticks {
            p.push(format!("raft.election_ticks: must be greater than heartbeat_ticks ({})", r.heartbeat_ticks));
        }
        if r.snapshot_entries == 0 {
            p.push("raft.snapshot_entries: must be greater than 0".to_string());
        }
        if r.write_timeout.is_zero() {
            p.push("raft.write_timeout: must be greater than zero".to_string());
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(InvalidConfig(p))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_config_is_valid() {
        let c = CoordinatorConfig::from_toml(
            "cluster_id='x'\nnode_id=1\nlisten='127.0.0.1:1'\ndata_dir='/tmp/x'\n[[peers]]\nid=1\naddress='127.0.0.1:1'\n",
        )
        .expect("parses");
        c.validate().expect("valid");
        assert_eq!(c.raft, RaftTuning::default());
    }

    #[test]
    fn unknown_keys_and_every_semantic_problem_are_reported() {
        let e = CoordinatorConfig::from_toml("cluster_id='x'\nnode_id=1\nlisten='a:1'\ndata_dir='d'\nbogus=1\n").expect_err("unknown key");
        assert!(e.to_string().contains("bogus"), "{e}");
        let c = CoordinatorConfig::from_toml(
            "cluster_id=''\nnode_id=0\nlisten='nope'\ndata_dir='d'\n[raft]\nelection_ticks=1\nheartbeat_ticks=2\ntick_interval='0s'\n",
        )
        .expect("parses");
        let e = c.validate().expect_err("invalid").0;
        assert!(e.len() >= 5, "{e:?}");
    }
}
