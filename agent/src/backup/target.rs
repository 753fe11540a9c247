//! PostgreSQL's recovery settings for a point to restore to, shared by
//! restores and recovery tests.

use std::path::Path;

use drc_model::job::{RestorePoint, Timeline};

/// The point and timeline a job names (none: the end, on the newest timeline).
pub(super) fn point_of(p: Option<&drc_proto::RestorePoint>) -> Result<(RestorePoint, Timeline), String> {
    match p {
        None => Ok((RestorePoint::Latest, Timeline::Latest)),
        Some(p) => drc_proto::jobs::point_in(Some(p)).map_err(|e| e.to_string()),
    }
}

/// PostgreSQL's recovery settings for a target: replay from `wal` until
/// the point, on the timeline, then promote.
pub(super) fn recovery_settings(wal: &Path, point: RestorePoint, timeline: Timeline) -> String {
    let wal = wal.to_string_lossy().replace('\'', "''");
    let mut s = format!("restore_command = 'cp \"{wal}/%f\" \"%p\"'\nrecovery_target_timeline = '{timeline}'\n");
    match point {
        RestorePoint::Latest => {}
        RestorePoint::Time { time_us } => s += &format!("recovery_target_time = '{}'\n", pg_timestamp(time_us)),
        RestorePoint::Lsn { lsn } => s += &format!("recovery_target_lsn = '{lsn}'\n"),
    }
    s + "recovery_target_action = 'promote'\n"
}

/// `YYYY-MM-DD HH:MM:SS.ffffff+00`, as PostgreSQL reads a timestamptz.
fn pg_timestamp(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us).unwrap_or_default().format("%Y-%m-%d %H:%M:%S%.6f+00").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use drc_model::wal::Lsn;

    #[test]
    fn each_point_becomes_postgresql_recovery_settings() {
        let wal = Path::new("/r/drc_restore_wal");
        let latest = recovery_settings(wal, RestorePoint::Latest, Timeline::Latest);
        assert!(latest.contains("recovery_target_timeline = 'latest'") && !latest.contains("recovery_target_time ="), "{latest}");
        let time = recovery_settings(wal, RestorePoint::Time { time_us: 1_796_600_000_123_456 }, Timeline::Current);
        assert!(time.contains("recovery_target_time = '2026-12-06 23:33:20.123456+00'"), "{time}");
        assert!(time.contains("recovery_target_timeline = 'current'"), "{time}");
        let lsn = recovery_settings(wal, RestorePoint::Lsn { lsn: Lsn(0x3_0000_0060) }, Timeline::Id(2));
        assert!(lsn.contains("recovery_target_lsn = '3/60'") && lsn.contains("recovery_target_timeline = '2'"), "{lsn}");
        assert!(lsn.contains("restore_command = 'cp \"/r/drc_restore_wal/%f\" \"%p\"'"), "{lsn}");
    }
}
