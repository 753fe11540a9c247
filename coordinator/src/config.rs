//! Configuration of `drc-coordinator`: a TOML file that command-line flags
//! override. [`CoordinatorConfig::validate`] reports every problem at once.
//!
//! ```toml
//! cluster_id = "prod-drc"
//! node_id = 1
//! listen = "10.0.1.5:7400"
//! data_dir = "/var/lib/drc"
//!
//! raft_listen = "10.0.1.5:7401"   # optional: Raft on its own listener and thread
//!
//! [[peers]]
//! id = 1
//! address = "10.0.1.5:7400"
//! raft_address = "10.0.1.5:7401"  # peers need it only when that node sets raft_listen
//! [[peers]]
//! id = 2
//! address = "10.1.1.5:7400"
//! [[peers]]
//! id = 3
//! address = "10.2.1.5:7400"
//!
//! [raft]
//! tick_interval = "50ms"
//! election_ticks = 8      # election timeout 400-800 ms
//! heartbeat_ticks = 2
//!
//! audit_log = "/var/log/drc/audit.jsonl"   # optional: the audit trail for a SIEM
//! http_listen = "10.0.1.5:7480"  # optional: /healthz, /readyz, /metrics
//! log_format = "json"            # optional: one JSON object per line (default "text")
//!
//! [tls]                   # or insecure = true, for plaintext on a trusted network
//! ca = "/etc/drc/ca.pem"
//! cert = "/etc/drc/node-1.pem"   # names drc://prod-drc/peer/1
//! key = "/etc/drc/node-1.key"
//!
//! [failover]
//! lease = "1500ms"        # a primary's agent fences it after this without renewal
//! drift_margin = "150ms"  # the leader waits lease + margin before replacing it
//! hook = ["/usr/local/bin/point-dns-at"]  # optional, run after each promotion
//! hook_timeout = "10s"
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::state::NodeAddress;
use drc_model::topology::parse::valid_address;

/// One coordinator of the Raft group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub id: u64,
    /// Where the node takes client requests (agents, drctl, forwarded calls).
    pub address: String,
    /// Where the node takes Raft messages, when it serves them apart.
    #[serde(default)]
    pub raft_address: Option<String>,
    /// The region the node runs in: with it, the leader keeps out of the
    /// region of the primaries (`failover.leader_placement`).
    #[serde(default)]
    pub region: Option<String>,
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
    /// A Raft message larger than this many bytes (a snapshot) is sent in
    /// pieces of this size; at most 8 MiB, the same on every node.
    pub piece_bytes: usize,
    /// A write that is not committed within this time fails with "no quorum".
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            tick_interval: Duration::from_millis(50),
            election_ticks: 8,
            heartbeat_ticks: 2,
            snapshot_entries: 1000,
            piece_bytes: crate::raft::pieces::DEFAULT_PIECE_BYTES,
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
    /// Run by the leader after every promotion, program then arguments, with
    /// the new endpoint in its environment (DRC_CLUSTER, DRC_EPOCH,
    /// DRC_PRIMARY, DRC_PRIMARY_ADDRESS, DRC_PRIMARY_HOST, DRC_PRIMARY_PORT,
    /// DRC_PRIMARY_REGION, DRC_OLD_PRIMARY, DRC_DECISION, DRC_KIND). Its
    /// result is recorded in the decision's "publish" step. A leader that
    /// dies mid-hook means the next leader runs it again: make it idempotent.
    pub hook: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub hook_timeout: Duration,
    /// A leader whose region holds a primary hands its leadership to a
    /// caught-up coordinator in a region that holds none (peers' `region`),
    /// so that losing the primaries' region never costs an election on top
    /// of the failover. Never during a decision or soon after one.
    pub leader_placement: bool,
}

impl Default for FailoverTuning {
    fn default() -> Self {
        FailoverTuning {
            lease: Duration::from_millis(1500),
            drift_margin: Duration::from_millis(150),
            hook: Vec::new(),
            hook_timeout: Duration::from_secs(10),
            leader_placement: true,
        }
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
    /// Where this node serves Raft traffic on a listener (and thread) of its
    /// own, so that thousands of agent connections never delay heartbeats.
    /// Unset: Raft shares `listen`.
    #[serde(default)]
    pub raft_listen: Option<String>,
    /// The address peers use for Raft traffic; defaults to `raft_listen`.
    #[serde(default)]
    pub raft_advertise: Option<String>,
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
    /// The node's CA, certificate and key; required unless `insecure`.
    #[serde(default)]
    pub tls: Option<drc_tls::TlsFiles>,
    /// Serve and call in plaintext, without authentication: only on a
    /// network where everyone who can connect may promote a database.
    #[serde(default)]
    pub insecure: bool,
    /// A file this node appends the audit trail to, one JSON object per
    /// line, for a SIEM to ship (every node writes the whole trail).
    #[serde(default)]
    pub audit_log: Option<PathBuf>,
    /// Where to serve HTTP: `/healthz`, `/readyz`, `/metrics` (with the
    /// TLS settings above; see `drc_ops::http`). Unset: no HTTP listener.
    #[serde(default)]
    pub http_listen: Option<String>,
    /// `text` (default) or `json`, one object per line.
    #[serde(default)]
    pub log_format: drc_ops::log::LogFormat,
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

    /// This node's own addresses, as the membership records them.
    pub fn own_address(&self) -> NodeAddress {
        NodeAddress { client: self.advertise().to_string(), raft: self.raft_advertise.clone().or_else(|| self.raft_listen.clone()) }
    }

    /// Every configured peer's addresses, by id.
    pub fn peer_addresses(&self) -> BTreeMap<u64, NodeAddress> {
        self.peers.iter().map(|p| (p.id, NodeAddress { client: p.address.clone(), raft: p.raft_address.clone() })).collect()
    }

    /// The founding membership (id → addresses), or `None` for a joining node.
    pub fn founders(&self) -> Option<BTreeMap<u64, NodeAddress>> {
        (!self.join).then(|| self.peer_addresses())
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
        if let Err(e) = drc_tls::check_choice(self.tls.as_ref(), self.insecure) {
            p.push(format!("tls: {e}"));
        }
        if !self.failover.hook.is_empty() && self.failover.hook_timeout.is_zero() {
            p.push("failover.hook_timeout: must be greater than zero".to_string());
        }
        if self.failover.hook.first().is_some_and(|c| c.trim().is_empty()) {
            p.push("failover.hook: the program must not be empty".to_string());
        }
        if self.failover.lease < Duration::from_millis(200) {
            p.push("failover.lease: must be at least 200ms (the agent renews it every 200ms)".to_string());
        }
        if !valid_address(&self.listen) {
            p.push(format!("listen: invalid address {:?}, expected host:port", self.listen));
        }
        for (key, value) in [
            ("advertise", &self.advertise),
            ("raft_listen", &self.raft_listen),
            ("raft_advertise", &self.raft_advertise),
            ("http_listen", &self.http_listen),
        ] {
            if let Some(a) = value {
                if !valid_address(a) {
                    p.push(format!("{key}: invalid address {a:?}, expected host:port"));
                }
            }
        }
        if self.raft_advertise.is_some() && self.raft_listen.is_none() {
            p.push("raft_advertise: set without raft_listen".to_string());
        }
        if self.raft_listen.is_some() && self.raft_listen == Some(self.listen.clone()) {
            p.push("raft_listen: must differ from listen (leave it unset to share the listener)".to_string());
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
            if let Some(a) = peer.raft_address.as_ref().filter(|a| !valid_address(a)) {
                p.push(format!("peers[{i}].raft_address: invalid address {a:?}, expected host:port"));
            }
        }
        if !self.join {
            match self.peers.iter().find(|peer| peer.id == self.node_id) {
                None => p.push(format!("peers: must include this node (id {}) unless join = true", self.node_id)),
                Some(me) if me.address != self.advertise() => {
                    p.push(format!("peers: this node's entry says {:?} but it advertises {:?}", me.address, self.advertise()))
                }
                Some(me) if me.raft_address != self.own_address().raft => p.push(format!(
                    "peers: this node's entry has raft_address {:?} but it serves raft at {:?}",
                    me.raft_address,
                    self.own_address().raft
                )),
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
        if !(crate::raft::pieces::MIN_PIECE_BYTES..=crate::raft::pieces::MAX_PIECE_BYTES).contains(&r.piece_bytes) {
            p.push(format!(
                "raft.piece_bytes: must be between {} and {}",
                crate::raft::pieces::MIN_PIECE_BYTES,
                crate::raft::pieces::MAX_PIECE_BYTES
            ));
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
            "cluster_id='x'\nnode_id=1\nlisten='127.0.0.1:1'\ndata_dir='/tmp/x'\ninsecure=true\n[[peers]]\nid=1\naddress='127.0.0.1:1'\n",
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

    #[test]
    fn a_separate_raft_listener_is_checked_against_this_nodes_peer_entry() {
        let base = "cluster_id='x'\nnode_id=1\nlisten='127.0.0.1:1'\ndata_dir='/tmp/x'\ninsecure=true\n";
        let ok = format!("{base}raft_listen='127.0.0.1:2'\n[[peers]]\nid=1\naddress='127.0.0.1:1'\nraft_address='127.0.0.1:2'\n");
        let c = CoordinatorConfig::from_toml(&ok).expect("parses");
        c.validate().expect("valid");
        assert_eq!(c.own_address(), NodeAddress { client: "127.0.0.1:1".into(), raft: Some("127.0.0.1:2".into()) });
        assert_eq!(c.founders().expect("founders")[&1], c.own_address());

        let missing = format!("{base}raft_listen='127.0.0.1:2'\n[[peers]]\nid=1\naddress='127.0.0.1:1'\n");
        let e = CoordinatorConfig::from_toml(&missing).expect("parses").validate().expect_err("mismatch").to_string();
        assert!(e.contains("raft_address"), "{e}");
        let same = format!("{base}raft_listen='127.0.0.1:1'\n[[peers]]\nid=1\naddress='127.0.0.1:1'\nraft_address='127.0.0.1:1'\n");
        let e = CoordinatorConfig::from_toml(&same).expect("parses").validate().expect_err("same port").to_string();
        assert!(e.contains("must differ from listen"), "{e}");
    }

    #[test]
    fn node_addresses_read_the_older_bare_form_and_round_trip_through_a_conf_change() {
        let old: BTreeMap<u64, NodeAddress> = serde_json::from_str(r#"{"1":"a:1"}"#).expect("bare");
        assert_eq!(old[&1], NodeAddress::shared("a:1"));
        let split = NodeAddress { client: "a:1".into(), raft: Some("a:2".into()) };
        assert_eq!(NodeAddress::from_context(&split.to_context()), split);
        assert_eq!(NodeAddress::from_context(b"a:1"), NodeAddress::shared("a:1"));
        assert_eq!(split.raft(), "a:2");
        assert_eq!(NodeAddress::shared("a:1").raft(), "a:1");
    }
}
