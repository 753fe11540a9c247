//! The replicated topology: regions, database clusters, their members,
//! failover groups and per-cluster failover policy.
//!
//! A topology is declared in a TOML document (see [`parse`]) and replaced as a
//! whole through Raft, so every node holds the same value at the same index.
//! The model only ever holds a topology that passed [`parse::parse_topology`]'s
//! validation: every member names a declared cluster and region, every group
//! names declared clusters, every duration is positive.

pub mod diff;
pub mod parse;
pub mod render;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The kind of database a cluster runs; it decides how agents probe and act.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterKind {
    Postgres,
    Redis,
}

impl ClusterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterKind::Postgres => "postgres",
            ClusterKind::Redis => "redis",
        }
    }
}

/// A failure domain, usually a cloud region. Lower `priority` is preferred
/// when several regions hold equally good failover candidates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Region {
    pub priority: u32,
}

/// How a cluster may fail over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// A replica further behind than this many bytes is never promoted
    /// automatically.
    pub rpo_max_lag_bytes: u64,
    /// A replica further behind than this is never promoted automatically.
    #[serde(with = "humantime_serde")]
    pub rpo_max_lag_time: Duration,
    /// How long a primary must look dead, from more than one region, before
    /// a failure is declared.
    #[serde(with = "humantime_serde")]
    pub detection_window: Duration,
    /// The shorter confirmation used when the primary's own agent sees its
    /// server process gone (PostgreSQL: `postmaster.pid` names no running
    /// server), not merely unreachable: a dead process is no network blip.
    /// Other regions must still confirm; never longer than
    /// `detection_window`.
    #[serde(default = "default_crash_window", with = "humantime_serde")]
    pub crash_detection_window: Duration,
    /// After a failover, automatic failover of the cluster is blocked this long.
    #[serde(with = "humantime_serde")]
    pub anti_flap_window: Duration,
    /// Maintenance: no automatic failover while set.
    pub paused: bool,
    /// PostgreSQL: how many replicas must have flushed a commit before the
    /// primary acknowledges it (`synchronous_standby_names = 'ANY n (...)'`,
    /// which drc keeps on the primary). 0: asynchronous replication. When
    /// fewer replicas stream, commits wait for those that do; when none
    /// does, they stop waiting (the RPO budget bounds the loss, as without).
    #[serde(default)]
    pub synchronous_replicas: u32,
}

fn default_crash_window() -> Duration {
    Duration::from_millis(200)
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            rpo_max_lag_bytes: 16 * 1024 * 1024,
            rpo_max_lag_time: Duration::from_secs(10),
            detection_window: Duration::from_secs(1),
            crash_detection_window: default_crash_window(),
            anti_flap_window: Duration::from_secs(600),
            paused: false,
            synchronous_replicas: 0,
        }
    }
}

/// A replicated database: one primary and its replicas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    pub kind: ClusterKind,
    pub policy: Policy,
    #[serde(default)]
    pub backup: BackupPolicy,
}

/// Where and how a cluster is backed up. Nothing secret lives here (the
/// topology is replicated and shown): the S3 endpoints and credentials of
/// each destination are in the agents' own configuration, under the same
/// destination names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupPolicy {
    /// Destination names, in order of preference; a backup goes to the first
    /// one in a region other than its source member's.
    pub destinations: Vec<String>,
    /// age public keys ("age1..."); any one of their identities decrypts.
    pub recipients: Vec<String>,
    /// Take the backup from the primary when no healthy replica exists.
    pub allow_primary: bool,
    /// Recovery tests count the rows of these tables (PostgreSQL,
    /// `schema.table`) and report them.
    pub check_tables: Vec<String>,
    /// The operator's own checks, run on the restored instance.
    #[serde(default)]
    pub checks: Vec<Check>,
    /// Retention, per destination: keep at most this many completed
    /// backups (0: no limit)...
    #[serde(default)]
    pub keep_last: u32,
    /// ...and none older than this. The newest verified backup (one a
    /// recovery test restored) is never deleted, nor the newest one at all.
    #[serde(default, with = "humantime_serde::option")]
    pub max_age: Option<Duration>,
    /// PostgreSQL: archive the WAL continuously to the first destination
    /// outside the primary's region (point-in-time recovery). On unless
    /// the topology says `archive_wal = false`.
    #[serde(default = "archive_by_default")]
    pub archive_wal: bool,
    /// PostgreSQL: where a base backup's own WAL comes from.
    #[serde(default)]
    pub wal: BackupWal,
}

/// Where a PostgreSQL base backup gets the WAL that makes it consistent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupWal {
    /// Fetched into the backup (`pg_basebackup -X fetch`): it restores on
    /// its own, by hand with standard tools alone.
    #[default]
    Included,
    /// Left to the continuous archive (`-X none`): a smaller backup that
    /// is done only once the archive holds its WAL; restoring it needs the
    /// archive.
    Archive,
}

impl BackupWal {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupWal::Included => "included",
            BackupWal::Archive => "archive",
        }
    }
}

fn archive_by_default() -> bool {
    true
}

/// A check of a recovery test: `query` (SQL for PostgreSQL, a command such as
/// `GET app:version` for Redis) must answer `expect` (the first column of the
/// first row, as text) on the restored instance.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub query: String,
    pub expect: String,
}

/// An S3 bucket, by name; `region` is the drc region it lives in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    pub region: String,
}

/// One database server of a cluster. Higher `priority` is preferred among
/// equally advanced candidates; 0 means "never promote automatically".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub cluster: String,
    pub region: String,
    pub address: String,
    pub priority: u32,
}

/// Clusters that must always have their primaries in the same region (for
/// example the PostgreSQL and Redis of one application).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverGroup {
    pub clusters: Vec<String>,
}

/// How much of its own records drc keeps in the replicated state (and so in
/// every snapshot): the newest `decisions` finished decisions, `audit` audit
/// entries and `jobs` finished recovery tests and failed backups, each none
/// older than `max_age`. A decision or job still running is always kept;
/// completed backups follow their cluster's backup retention instead.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    pub decisions: u32,
    pub audit: u32,
    pub jobs: u32,
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        // A year as humantime counts it (365.25 days), so that it reads "1year".
        Retention { decisions: 1000, audit: 10_000, jobs: 1000, max_age: Duration::from_secs(31_557_600) }
    }
}

/// The whole declared topology. Maps are ordered so that serialisation, the
/// diff and every node's copy are deterministic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    pub regions: BTreeMap<String, Region>,
    pub clusters: BTreeMap<String, Cluster>,
    pub members: BTreeMap<String, Member>,
    pub failover_groups: BTreeMap<String, FailoverGroup>,
    #[serde(default)]
    pub destinations: BTreeMap<String, Destination>,
    #[serde(default)]
    pub retention: Retention,
    #[serde(skip)]
    index: ClusterIndex,
}

/// The member ids of every cluster, computed on first use. A topology is
/// built by [`parse`] (or decoded) and never changed afterwards, and the
/// replicated one is shared behind an `Arc`, so this runs once per topology
/// version instead of on every tick over thousands of members.
#[derive(Clone, Default)]
struct ClusterIndex(std::sync::OnceLock<BTreeMap<String, Vec<String>>>);

impl PartialEq for ClusterIndex {
    /// Derived data: two topologies are equal by their declarations.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for ClusterIndex {}

impl std::fmt::Debug for ClusterIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterIndex")
    }
}

impl Topology {
    /// Every declared cluster with its member ids, in id order.
    pub fn by_cluster(&self) -> &BTreeMap<String, Vec<String>> {
        self.index.0.get_or_init(|| {
            let mut index: BTreeMap<String, Vec<String>> = self.clusters.keys().map(|c| (c.clone(), Vec::new())).collect();
            for (id, m) in &self.members {
                index.entry(m.cluster.clone()).or_default().push(id.clone());
            }
            index
        })
    }

    /// Members of one cluster, in id order.
    pub fn members_of<'a>(&'a self, cluster: &'a str) -> impl Iterator<Item = (&'a String, &'a Member)> {
        self.by_cluster().get(cluster).into_iter().flatten().filter_map(|id| self.members.get_key_value(id))
    }
}
