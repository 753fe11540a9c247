//! Jobs on the wire and in the model: the coordinator sends its catalog's
//! records ([`drc_model::job`]) as typed messages, and drctl reads them back
//! into the same records, so both print and check one type.

use drc_model::job::{BackupRecord, JobState as State, RecoveryTest, Schedule};

use crate::v1::{BackupEntry, JobState, RecoveryTestEntry, ScheduleEntry};

/// A message that does not make a record.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{what} {id}: unknown state {state}")]
    State { what: &'static str, id: u64, state: i32 },
    #[error("backup {id}: its manifest is not JSON: {error}")]
    Manifest { id: u64, error: String },
    #[error("schedule of {cluster}: {error}")]
    Kind { cluster: String, error: String },
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
