//! Backups, recovery tests and their schedules as the catalog in Raft keeps
//! them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::time::Millis;

/// The jobs the leader runs through agents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    #[default]
    Backup,
    RecoveryTest,
}

impl JobKind {
    pub const ALL: [JobKind; 2] = [JobKind::Backup, JobKind::RecoveryTest];

    /// The name in schedules, on the wire and in drctl.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Backup => "backup",
            JobKind::RecoveryTest => "recovery-test",
        }
    }
}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        JobKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| format!("unknown job {s:?} (backup or recovery-test)"))
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    #[default]
    Running,
    Done,
    Failed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
        }
    }
}

/// One backup in the catalog.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRecord {
    pub id: u64,
    pub cluster: String,
    pub kind: String,
    /// The member it was taken from, and its region.
    pub member: String,
    pub member_region: String,
    pub destination: String,
    pub destination_region: String,
    /// Every object of the backup lives under this key prefix.
    pub prefix: String,
    pub state: JobState,
    /// "operator" or "schedule".
    pub trigger: String,
    pub started_at: Millis,
    pub finished_at: Millis,
    pub error: String,
    pub data_key: String,
    pub manifest_key: String,
    pub sha256: String,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    /// The manifest object's content.
    pub manifest: serde_json::Value,
    /// The schedule occurrence that started it (0: an operator did).
    #[serde(default)]
    pub scheduled_at: Millis,
}

/// A cron schedule of backups or recovery tests of one cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub cluster: String,
    pub job: JobKind,
    /// Standard 5-field cron, or 6 fields with seconds first; UTC.
    pub cron: String,
    /// Set at; occurrences before it never fire.
    pub since: Millis,
    /// The newest occurrence that fired.
    pub last_fired: Millis,
}

/// One recovery test.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryTest {
    pub id: u64,
    pub cluster: String,
    pub backup_id: u64,
    /// The agent that restored it, and its region.
    pub member: String,
    pub member_region: String,
    pub state: JobState,
    pub trigger: String,
    pub started_at: Millis,
    pub finished_at: Millis,
    pub error: String,
    /// Start of the test to a verified instance accepting connections.
    pub rto_ms: u64,
    /// Start of the test minus the time of the newest data in the backup.
    pub rpo_ms: u64,
    /// What the checks found (row counts, key counts, amcheck, timings).
    pub checks: BTreeMap<String, String>,
}
