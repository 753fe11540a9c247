//! Backups, recovery tests and their schedules as the catalog in Raft keeps
//! them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::time::Millis;
use crate::wal::Lsn;

/// The jobs the leader runs through agents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    #[default]
    Backup,
    RecoveryTest,
    /// A restore to a point in time, on an operator's request; never scheduled.
    Restore,
}

impl JobKind {
    pub const ALL: [JobKind; 3] = [JobKind::Backup, JobKind::RecoveryTest, JobKind::Restore];

    /// The name in schedules, on the wire and in drctl.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Backup => "backup",
            JobKind::RecoveryTest => "recovery-test",
            JobKind::Restore => "restore",
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
        JobKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| format!("unknown job {s:?} (backup, recovery-test or restore)"))
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
    /// Where the replay of the archived WAL stopped: its end, or a random
    /// position on request.
    #[serde(default)]
    pub point: RestorePoint,
}

/// Where a restore's recovery stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum RestorePoint {
    /// The end of the archived WAL.
    #[default]
    Latest,
    /// The last commit at or before this time (µs since the Unix epoch).
    Time { time_us: i64 },
    /// This WAL position, inclusive.
    Lsn { lsn: Lsn },
}

impl std::fmt::Display for RestorePoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            RestorePoint::Latest => f.write_str("the end of the archive"),
            RestorePoint::Time { time_us } => f.write_str(&time_text(time_us)),
            RestorePoint::Lsn { lsn } => write!(f, "LSN {lsn}"),
        }
    }
}

/// A time in µs since the Unix epoch as RFC 3339 (UTC); outside years
/// 1970 to 9999, the number itself.
pub fn time_text(us: i64) -> String {
    const YEAR_10000_US: i64 = 253_402_300_800_000_000;
    match u64::try_from(us) {
        Ok(n) if us < YEAR_10000_US => {
            humantime::format_rfc3339_micros(std::time::UNIX_EPOCH + std::time::Duration::from_micros(n)).to_string()
        }
        _ => format!("{us} µs since the Unix epoch"),
    }
}

/// Which timeline a restore follows (PostgreSQL's `recovery_target_timeline`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Timeline {
    /// The newest one in the archive: through every failover.
    #[default]
    Latest,
    /// The base backup's.
    Current,
    Id(u32),
}

impl std::fmt::Display for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Timeline::Latest => f.write_str("latest"),
            Timeline::Current => f.write_str("current"),
            Timeline::Id(id) => write!(f, "{id}"),
        }
    }
}

impl std::str::FromStr for Timeline {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" | "latest" => Ok(Timeline::Latest),
            "current" => Ok(Timeline::Current),
            n => match n.parse::<u32>() {
                Ok(id) if id > 0 => Ok(Timeline::Id(id)),
                _ => Err(format!("timeline {s:?}: expected latest, current or a timeline id (1, 2, ...)")),
            },
        }
    }
}

impl From<Timeline> for String {
    fn from(t: Timeline) -> String {
        t.to_string()
    }
}

impl TryFrom<String> for Timeline {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_reads_as_a_time_an_lsn_or_the_end_and_no_time_makes_it_panic() {
        assert_eq!(RestorePoint::Time { time_us: 1_796_600_000_123_456 }.to_string(), "2026-12-06T23:33:20.123456Z");
        assert_eq!(RestorePoint::Lsn { lsn: Lsn(0x3_0000_0060) }.to_string(), "LSN 3/60");
        assert_eq!(RestorePoint::Latest.to_string(), "the end of the archive");
        for us in [i64::MIN, -1, i64::MAX] {
            assert!(time_text(us).ends_with("µs since the Unix epoch"));
        }
        assert_eq!("2".parse::<Timeline>(), Ok(Timeline::Id(2)));
        assert!("0".parse::<Timeline>().is_err() && "newest".parse::<Timeline>().is_err());
    }
}

/// One restore to a point: a base backup and the archived WAL after it,
/// recovered into a new data directory on an agent's host and left running.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restore {
    pub id: u64,
    pub cluster: String,
    /// The base backup restored.
    pub backup_id: u64,
    /// The agent that restores, and its region.
    pub member: String,
    pub member_region: String,
    /// The new data directory on that agent's host.
    pub dir: String,
    /// The port asked for (0: any free one) and, once done, the port it runs on.
    pub port: u16,
    pub point: RestorePoint,
    pub timeline: Timeline,
    pub state: JobState,
    pub trigger: String,
    pub started_at: Millis,
    pub finished_at: Millis,
    pub error: String,
    /// Where recovery stopped: the last WAL position replayed, the time of
    /// the last commit replayed (µs; 0: none), the timeline it then started.
    pub reached_lsn: Lsn,
    pub reached_commit_us: i64,
    pub reached_timeline: u32,
    /// Archived WAL fetched for the replay.
    pub wal_files: u64,
    pub wal_bytes: u64,
    /// The archive held no commit after the point: recovery went to its end.
    #[serde(default)]
    pub stopped_at_end: bool,
}
