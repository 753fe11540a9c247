//! Where a restore or a recovery test starts and stops: the base backup
//! for a point, and a random point in the window the catalog covers. Pure:
//! the catalog's records in, a choice out.

use drc_model::job::{BackupRecord, JobState, RestorePoint};
use drc_model::wal::Lsn;

use super::JobError;

/// The base backup a restore to `point` starts from: the newest completed
/// backup of `cluster` whose data is consistent at or before the point (it
/// ended before that time, or its WAL ends before that position).
pub fn base_for<'a>(backups: &'a [BackupRecord], cluster: &str, point: RestorePoint) -> Result<&'a BackupRecord, JobError> {
    let ended_by = |b: &BackupRecord| match point {
        RestorePoint::Latest => true,
        RestorePoint::Time { time_us } => {
            let end_ms = b.manifest["finished_at_ms"].as_u64().unwrap_or(b.finished_at);
            i64::try_from(end_ms).is_ok_and(|ms| ms.saturating_mul(1000) <= time_us)
        }
        RestorePoint::Lsn { lsn } => b.manifest["lsn_end"].as_str().and_then(|l| l.parse::<Lsn>().ok()).is_some_and(|end| end <= lsn),
    };
    backups
        .iter()
        .filter(|b| b.cluster == cluster && b.state == JobState::Done && b.kind == "postgres")
        .filter(|b| ended_by(b))
        .max_by_key(|b| b.id)
        .ok_or_else(|| match point {
            RestorePoint::Latest => JobError::NoBackupYet(cluster.into()),
            _ => JobError::NoBaseBefore { cluster: cluster.into(), point: point.to_string() },
        })
}

/// A random WAL position in the window a restore can reach, from the end of
/// the oldest completed backup to the end of the archive, less the last MiB
/// (a position recovery must find a record at or after); the end of the
/// archive when the window is narrower than that. `random` picks it.
pub fn random_point(backups: &[BackupRecord], reach: Option<Lsn>, random: u64) -> RestorePoint {
    const MARGIN: u64 = 1 << 20;
    let start = backups
        .iter()
        .filter(|b| b.state == JobState::Done && b.kind == "postgres")
        .filter_map(|b| b.manifest["lsn_end"].as_str()?.parse::<Lsn>().ok())
        .min();
    match (start, reach) {
        (Some(start), Some(end)) if end.0 > start.0 + MARGIN => {
            RestorePoint::Lsn { lsn: Lsn(start.0 + random % (end.0 - MARGIN - start.0 + 1)) }
        }
        _ => RestorePoint::Latest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(id: u64, state: JobState, finished_ms: u64, lsn_end: &str) -> BackupRecord {
        BackupRecord {
            id,
            cluster: "app-pg".into(),
            kind: "postgres".into(),
            state,
            manifest: serde_json::json!({ "finished_at_ms": finished_ms, "lsn_end": lsn_end }),
            ..Default::default()
        }
    }

    #[test]
    fn a_restore_starts_from_the_newest_completed_backup_consistent_before_its_point() {
        let backups = [
            backup(1, JobState::Done, 1_000, "0/3000000"),
            backup(2, JobState::Done, 2_000, "0/5000000"),
            backup(3, JobState::Failed, 2_500, "0/6000000"),
            backup(4, JobState::Done, 3_000, "0/7000000"),
        ];
        let id = |p| base_for(&backups, "app-pg", p).map(|b| b.id).ok();
        assert_eq!(id(RestorePoint::Latest), Some(4));
        assert_eq!(id(RestorePoint::Time { time_us: 2_999_999 }), Some(2), "backup 4 ended after the point");
        assert_eq!(id(RestorePoint::Time { time_us: 3_000_000 }), Some(4));
        assert_eq!(id(RestorePoint::Time { time_us: 2_700_000 }), Some(2), "a failed backup is never a base");
        assert_eq!(id(RestorePoint::Lsn { lsn: "0/5000000".parse().unwrap_or_default() }), Some(2));
        assert_eq!(id(RestorePoint::Lsn { lsn: "0/4FFFFFF".parse().unwrap_or_default() }), Some(1));
        let none = base_for(&backups, "app-pg", RestorePoint::Time { time_us: 999_999 }).err().map(|e| e.to_string());
        assert_eq!(none.as_deref(), Some("cluster app-pg has no completed backup consistent before 1970-01-01T00:00:00.999999Z"));
        assert!(matches!(base_for(&backups, "other", RestorePoint::Latest), Err(JobError::NoBackupYet(_))));
    }

    #[test]
    fn a_random_point_lies_between_the_oldest_backup_and_the_end_of_the_archive_and_has_a_base() {
        let backups = [backup(1, JobState::Done, 1_000, "0/3000000"), backup(2, JobState::Done, 2_000, "0/5000000")];
        let end = Lsn(0x700_0000);
        for random in [0, 1, 0x1234_5678, u64::MAX] {
            let p = random_point(&backups, Some(end), random);
            let RestorePoint::Lsn { lsn } = p else { panic!("{p:?}") };
            assert!(Lsn(0x300_0000) <= lsn && lsn.0 <= end.0 - (1 << 20), "{lsn}");
            assert!(base_for(&backups, "app-pg", p).is_ok(), "{lsn} has a base backup");
        }
        assert_eq!(random_point(&backups, Some(Lsn(0x300_0000 + 1000)), 7), RestorePoint::Latest, "a window under a MiB");
        assert_eq!(random_point(&backups, None, 7), RestorePoint::Latest, "no archive");
        assert_eq!(random_point(&[], Some(end), 7), RestorePoint::Latest, "no backup");
    }
}
