//! Starting a restore to a point: the base backup it starts from, the
//! archived WAL it replays, and the agent that runs the restored server.

use std::sync::Arc;
use std::time::Instant;

use drc_model::job::{BackupRecord, JobKind, JobState, Restore, RestorePoint, Timeline};
use drc_model::time::wall_now_ms;
use drc_model::topology::ClusterKind;
use drc_model::wal::Lsn;

use crate::agents::EventKind;
use crate::state::Command;
use drc_proto::command_result::Found;
use drc_proto::{command, RestoreJob};

use super::recovery::source_of;
use super::{JobError, Jobs};

/// What an operator asked to restore, and where.
#[derive(Clone, Debug)]
pub struct RestoreRequest {
    pub cluster: String,
    pub point: RestorePoint,
    pub timeline: Timeline,
    /// The member whose agent restores.
    pub on: String,
    pub dir: String,
    /// 0: any free port.
    pub port: u16,
}

impl Jobs {
    /// Starts a restore; returns its record (state running).
    pub async fn start_restore(self: &Arc<Self>, req: RestoreRequest, trigger: &str) -> Result<Restore, JobError> {
        if !req.dir.starts_with('/') {
            return Err(JobError::BadRestore(format!("the restore directory {:?} must be an absolute path", req.dir)));
        }
        let (topology, backups, archives, dataset) = self.node.store().with_state(|sm| {
            let archives: Vec<Lsn> =
                sm.wal_archives.values().filter(|a| a.cluster == req.cluster).filter_map(|a| Some(a.reach()?.1)).collect();
            let backups: Vec<BackupRecord> = sm.backups.values().filter(|b| b.cluster == req.cluster).cloned().collect();
            let dataset = sm.records.get(&req.cluster).map(|r| r.dataset.clone()).unwrap_or_default();
            (sm.topology.clone(), backups, archives, dataset)
        });
        let c = topology.clusters.get(&req.cluster).ok_or_else(|| JobError::UnknownCluster(req.cluster.clone()))?;
        if c.kind != ClusterKind::Postgres {
            return Err(JobError::BadRestore(format!(
                "a restore to a point is for PostgreSQL; {} is {}, whose recovery tests restore its snapshots",
                req.cluster,
                c.kind.as_str()
            )));
        }
        let m = topology.members.get(&req.on).ok_or_else(|| JobError::UnknownMember(req.on.clone()))?;
        let fresh = self.agents.board.observations(&topology, Instant::now()).get(&req.on).is_some_and(|o| o.fresh);
        if !fresh {
            return Err(JobError::AgentDown(req.on.clone()));
        }
        let backup = base_for(&backups, &req.cluster, req.point)?.clone();
        let source = source_of(&self.node, c, &backup);
        if source.wal_key.is_empty() && req.point != RestorePoint::Latest {
            return Err(JobError::NoArchive { cluster: req.cluster.clone() });
        }
        if let (RestorePoint::Lsn { lsn }, Some(reach)) = (req.point, archives.iter().max()) {
            if lsn > *reach {
                return Err(JobError::BeyondArchive { point: req.point.to_string(), reach: format!("to {reach} for dataset {dataset}") });
            }
        }
        let mut rec = Restore {
            cluster: req.cluster.clone(),
            backup_id: backup.id,
            member: req.on.clone(),
            member_region: m.region.clone(),
            dir: req.dir.clone(),
            port: req.port,
            point: req.point,
            timeline: req.timeline,
            state: JobState::Running,
            trigger: trigger.to_string(),
            started_at: wall_now_ms(),
            ..Default::default()
        };
        rec.id = {
            let _no_move = self.node.hold_leadership().await;
            self.one_at_a_time(JobKind::Restore, &req.cluster)?;
            self.record(Command::Restore { record: Box::new(rec.clone()) }).await?
        };
        self.running().insert((JobKind::Restore, rec.id), 0);
        let what = format!("restore {} started: backup {} to {} on {} in {}", rec.id, backup.id, rec.point, rec.member, rec.dir);
        self.agents.events.emit(EventKind::Restore, &rec.cluster, &rec.member, what);
        let body = command::Body::Restore(RestoreJob {
            restore_id: rec.id,
            source: Some(source),
            dir: rec.dir.clone(),
            port: u32::from(rec.port),
            point: Some(drc_proto::jobs::point_out(rec.point, rec.timeline)),
        });
        let this = Arc::clone(self);
        let job = rec.clone();
        tokio::spawn(async move {
            let result = this.command(Some((JobKind::Restore, job.id)), &job.member, &job.cluster, body).await;
            let mut done = job.clone();
            done.finished_at = wall_now_ms();
            match result {
                Ok(Some(Found::Restore(found))) => {
                    done.state = JobState::Done;
                    done.port = u16::try_from(found.port).unwrap_or(0);
                    done.reached_lsn = Lsn(found.reached_lsn);
                    done.reached_commit_us = found.reached_commit_us.unwrap_or(0);
                    done.reached_timeline = found.timeline;
                    done.wal_files = found.wal_files;
                    done.wal_bytes = found.wal_bytes;
                    done.stopped_at_end = found.stopped_at_end;
                }
                Ok(other) => {
                    done.state = JobState::Failed;
                    done.error = format!("the agent reported no restore (found {other:?}): is it of another release?");
                }
                Err(e) => {
                    done.state = JobState::Failed;
                    done.error = e;
                }
            }
            let what = match done.state {
                JobState::Done => format!(
                    "restore {} done: {} reached {} on timeline {}, running on port {}",
                    done.id, done.dir, done.reached_lsn, done.reached_timeline, done.port
                ),
                _ => format!("restore {} failed: {}", done.id, done.error),
            };
            if let Err(e) = this.record(Command::Restore { record: Box::new(done.clone()) }).await {
                tracing::warn!(id = done.id, error = %e, "cannot record the end of a restore");
            }
            this.agents.events.emit(EventKind::Restore, &done.cluster, &done.member, what);
            this.running().remove(&(JobKind::Restore, done.id));
        });
        Ok(rec)
    }
}

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
