//! Jobs on the wire and in the model: the coordinator sends its catalog's
//! records ([`drc_model::job`]) as typed messages, and drctl reads them back
//! into the same records, so both print and check one type.

use drc_model::job::{BackupRecord, JobState as State, RecoveryTest, Restore, RestorePoint as Point, Schedule, Timeline};
use drc_model::wal::Lsn;

use crate::v1::{restore_point, BackupEntry, JobState, RecoveryTestEntry, RestoreEntry, RestorePoint, ScheduleEntry};

/// A message that does not make a record.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{what} {id}: unknown state {state}")]
    State { what: &'static str, id: u64, state: i32 },
    #[error("backup {id}: its manifest is not JSON: {error}")]
    Manifest { id: u64, error: String },
    #[error("schedule of {cluster}: {error}")]
    Kind { cluster: String, error: String },
    #[error("{0}")]
    Point(String),
}

fn state_out(s: State) -> JobState {
    match s {
        State::Running => JobState::Running,
        State::Done => JobState::Done,
        State::Failed => JobState::Failed,
    }
}

fn state_in(what: &'static str, id: u64, state: i32) -> Result<State, JobError> {
    match JobState::try_from(state) {
        Ok(JobState::Running) => Ok(State::Running),
        Ok(JobState::Done) => Ok(State::Done),
        Ok(JobState::Failed) => Ok(State::Failed),
        Ok(JobState::Unspecified) | Err(_) => Err(JobError::State { what, id, state }),
    }
}

impl From<&BackupRecord> for BackupEntry {
    fn from(b: &BackupRecord) -> Self {
        BackupEntry {
            id: b.id,
            cluster: b.cluster.clone(),
            kind: b.kind.clone(),
            member: b.member.clone(),
            member_region: b.member_region.clone(),
            destination: b.destination.clone(),
            destination_region: b.destination_region.clone(),
            prefix: b.prefix.clone(),
            state: state_out(b.state).into(),
            trigger: b.trigger.clone(),
            started_at: b.started_at,
            finished_at: b.finished_at,
            error: b.error.clone(),
            data_key: b.data_key.clone(),
            manifest_key: b.manifest_key.clone(),
            sha256: b.sha256.clone(),
            raw_bytes: b.raw_bytes,
            stored_bytes: b.stored_bytes,
            manifest_json: b.manifest.to_string(),
            scheduled_at: b.scheduled_at,
            progress: None,
        }
    }
}

impl TryFrom<BackupEntry> for BackupRecord {
    type Error = JobError;
    fn try_from(b: BackupEntry) -> Result<Self, JobError> {
        let manifest = if b.manifest_json.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&b.manifest_json).map_err(|e| JobError::Manifest { id: b.id, error: e.to_string() })?
        };
        Ok(BackupRecord {
            id: b.id,
            state: state_in("backup", b.id, b.state)?,
            cluster: b.cluster,
            kind: b.kind,
            member: b.member,
            member_region: b.member_region,
            destination: b.destination,
            destination_region: b.destination_region,
            prefix: b.prefix,
            trigger: b.trigger,
            started_at: b.started_at,
            finished_at: b.finished_at,
            error: b.error,
            data_key: b.data_key,
            manifest_key: b.manifest_key,
            sha256: b.sha256,
            raw_bytes: b.raw_bytes,
            stored_bytes: b.stored_bytes,
            manifest,
            scheduled_at: b.scheduled_at,
        })
    }
}

impl From<&RecoveryTest> for RecoveryTestEntry {
    fn from(t: &RecoveryTest) -> Self {
        RecoveryTestEntry {
            id: t.id,
            cluster: t.cluster.clone(),
            backup_id: t.backup_id,
            member: t.member.clone(),
            member_region: t.member_region.clone(),
            state: state_out(t.state).into(),
            trigger: t.trigger.clone(),
            started_at: t.started_at,
            finished_at: t.finished_at,
            error: t.error.clone(),
            rto_ms: t.rto_ms,
            rpo_ms: t.rpo_ms,
            checks: t.checks.clone().into_iter().collect(),
            progress: None,
            point: Some(point_out(t.point, Timeline::Latest)),
        }
    }
}

impl TryFrom<RecoveryTestEntry> for RecoveryTest {
    type Error = JobError;
    fn try_from(t: RecoveryTestEntry) -> Result<Self, JobError> {
        Ok(RecoveryTest {
            id: t.id,
            state: state_in("recovery test", t.id, t.state)?,
            cluster: t.cluster,
            backup_id: t.backup_id,
            member: t.member,
            member_region: t.member_region,
            trigger: t.trigger,
            started_at: t.started_at,
            finished_at: t.finished_at,
            error: t.error,
            rto_ms: t.rto_ms,
            rpo_ms: t.rpo_ms,
            checks: t.checks.into_iter().collect(),
            point: match t.point.as_ref() {
                None => Point::Latest,
                Some(p) => point_in(Some(p)).map_err(|e| JobError::Point(format!("recovery test {}: {e}", t.id)))?.0,
            },
        })
    }
}

/// A restore's point and timeline on the wire.
pub fn point_out(point: Point, timeline: Timeline) -> RestorePoint {
    let point = match point {
        Point::Latest => restore_point::Point::Latest(true),
        Point::Time { time_us } => restore_point::Point::TimeUs(time_us),
        Point::Lsn { lsn } => restore_point::Point::Lsn(lsn.0),
    };
    RestorePoint { point: Some(point), timeline: timeline.to_string() }
}

/// A restore's point and timeline from the wire: one of them named, a
/// timeline drc can name to PostgreSQL.
pub fn point_in(p: Option<&RestorePoint>) -> Result<(Point, Timeline), JobError> {
    let p = p.ok_or_else(|| JobError::Point("no point to restore to: latest, a time or an LSN".into()))?;
    let point = match p.point {
        Some(restore_point::Point::Latest(true)) => Point::Latest,
        Some(restore_point::Point::TimeUs(time_us)) => Point::Time { time_us },
        Some(restore_point::Point::Lsn(lsn)) => Point::Lsn { lsn: Lsn(lsn) },
        Some(restore_point::Point::Latest(false)) | None => {
            return Err(JobError::Point("no point to restore to: latest, a time or an LSN".into()))
        }
    };
    Ok((point, p.timeline.parse().map_err(JobError::Point)?))
}

impl From<&Restore> for RestoreEntry {
    fn from(r: &Restore) -> Self {
        RestoreEntry {
            id: r.id,
            cluster: r.cluster.clone(),
            backup_id: r.backup_id,
            member: r.member.clone(),
            member_region: r.member_region.clone(),
            dir: r.dir.clone(),
            port: u32::from(r.port),
            point: Some(point_out(r.point, r.timeline)),
            state: state_out(r.state).into(),
            trigger: r.trigger.clone(),
            started_at: r.started_at,
            finished_at: r.finished_at,
            error: r.error.clone(),
            reached_lsn: r.reached_lsn.0,
            reached_commit_us: r.reached_commit_us,
            reached_timeline: r.reached_timeline,
            wal_files: r.wal_files,
            wal_bytes: r.wal_bytes,
            progress: None,
            stopped_at_end: r.stopped_at_end,
        }
    }
}

impl TryFrom<RestoreEntry> for Restore {
    type Error = JobError;
    fn try_from(r: RestoreEntry) -> Result<Self, JobError> {
        let (point, timeline) = point_in(r.point.as_ref()).map_err(|e| JobError::Point(format!("restore {}: {e}", r.id)))?;
        Ok(Restore {
            id: r.id,
            state: state_in("restore", r.id, r.state)?,
            cluster: r.cluster,
            backup_id: r.backup_id,
            member: r.member,
            member_region: r.member_region,
            dir: r.dir,
            port: u16::try_from(r.port).map_err(|_| JobError::Point(format!("restore {}: port {} is out of range", r.id, r.port)))?,
            point,
            timeline,
            trigger: r.trigger,
            started_at: r.started_at,
            finished_at: r.finished_at,
            error: r.error,
            reached_lsn: Lsn(r.reached_lsn),
            reached_commit_us: r.reached_commit_us,
            reached_timeline: r.reached_timeline,
            wal_files: r.wal_files,
            wal_bytes: r.wal_bytes,
            stopped_at_end: r.stopped_at_end,
        })
    }
}

impl From<&Schedule> for ScheduleEntry {
    fn from(s: &Schedule) -> Self {
        ScheduleEntry {
            cluster: s.cluster.clone(),
            job: s.job.as_str().to_string(),
            cron: s.cron.clone(),
            since: s.since,
            last_fired: s.last_fired,
            next_at: None,
        }
    }
}

impl TryFrom<ScheduleEntry> for Schedule {
    type Error = JobError;
    fn try_from(s: ScheduleEntry) -> Result<Self, JobError> {
        let job = s.job.parse().map_err(|error| JobError::Kind { cluster: s.cluster.clone(), error })?;
        Ok(Schedule { cluster: s.cluster, job, cron: s.cron, since: s.since, last_fired: s.last_fired })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_makes_the_round_trip_through_its_message_unchanged() {
        let backup = BackupRecord {
            id: 3,
            cluster: "app-pg".into(),
            state: State::Done,
            manifest: serde_json::json!({"lsn_start": "0/2000028"}),
            raw_bytes: 10,
            ..Default::default()
        };
        assert_eq!(BackupRecord::try_from(BackupEntry::from(&backup)).ok(), Some(backup));
        let mut test = RecoveryTest { id: 4, state: State::Failed, error: "no space".into(), ..Default::default() };
        test.checks.insert("rows".into(), "12".into());
        assert_eq!(RecoveryTest::try_from(RecoveryTestEntry::from(&test)).ok(), Some(test));
        let schedule = Schedule {
            cluster: "cache".into(),
            job: drc_model::job::JobKind::RecoveryTest,
            cron: "0 3 * * *".into(),
            ..Default::default()
        };
        assert_eq!(Schedule::try_from(ScheduleEntry::from(&schedule)).ok(), Some(schedule));
        for (point, timeline) in [
            (Point::Latest, Timeline::Latest),
            (Point::Time { time_us: 1_796_600_000_123_456 }, Timeline::Current),
            (Point::Lsn { lsn: Lsn(0x3_0000_0060) }, Timeline::Id(2)),
        ] {
            let restore = Restore { id: 5, point, timeline, port: 5433, reached_commit_us: 7, ..Default::default() };
            assert_eq!(Restore::try_from(RestoreEntry::from(&restore)).ok(), Some(restore));
        }
    }

    #[test]
    fn a_restore_without_a_point_or_with_a_bad_timeline_is_refused() {
        assert!(point_in(None).is_err());
        assert!(point_in(Some(&RestorePoint { point: Some(restore_point::Point::Latest(false)), timeline: String::new() })).is_err());
        let bad = RestorePoint { point: Some(restore_point::Point::Latest(true)), timeline: "newest".into() };
        assert!(point_in(Some(&bad)).is_err_and(|e| e.to_string().contains("latest, current or a timeline id")));
    }

    #[test]
    fn a_message_with_an_unknown_state_or_a_broken_manifest_is_refused_with_its_id() {
        let bad_state = BackupEntry { id: 7, state: 42, ..Default::default() };
        assert_eq!(BackupRecord::try_from(bad_state).err().map(|e| e.to_string()).as_deref(), Some("backup 7: unknown state 42"));
        let bad_manifest = BackupEntry { id: 8, state: JobState::Done.into(), manifest_json: "{".into(), ..Default::default() };
        assert!(BackupRecord::try_from(bad_manifest).is_err_and(|e| e.to_string().starts_with("backup 8: its manifest is not JSON")));
        let bad_kind = ScheduleEntry { cluster: "c".into(), job: "vacuum".into(), ..Default::default() };
        assert!(Schedule::try_from(bad_kind).is_err());
    }
}
