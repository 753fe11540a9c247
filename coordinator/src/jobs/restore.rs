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

use super::point::base_for;
use super::recovery::{needs_archive, source_of};
use super::{answer, JobError, Jobs};

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
        let (topology, backups, reach, dataset) = self.node.store().with_state(|sm| {
            let backups: Vec<BackupRecord> = sm.backups.values().filter(|b| b.cluster == req.cluster).cloned().collect();
            let dataset = sm.records.get(&req.cluster).map(|r| r.dataset.clone()).unwrap_or_default();
            (sm.topology.clone(), backups, sm.archive_reach(&req.cluster), dataset)
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
        if source.wal_key.is_empty() && (req.point != RestorePoint::Latest || needs_archive(&backup)) {
            return Err(JobError::NoArchive { cluster: req.cluster.clone() });
        }
        if let (RestorePoint::Lsn { lsn }, Some(reach)) = (req.point, reach) {
            if lsn > reach {
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
            let found = answer(result, JobKind::Restore, |f| match f {
                Found::Restore(found) => Ok(found),
                other => Err(other),
            });
            match found {
                Ok(found) => {
                    done.state = JobState::Done;
                    done.port = u16::try_from(found.port).unwrap_or(0);
                    done.reached_lsn = Lsn(found.reached_lsn);
                    done.reached_commit_us = found.reached_commit_us.unwrap_or(0);
                    done.reached_timeline = found.timeline;
                    done.wal_files = found.wal_files;
                    done.wal_bytes = found.wal_bytes;
                    done.stopped_at_end = found.stopped_at_end;
                }
                Err(e) => (done.state, done.error) = (JobState::Failed, e),
            }
            let what = match done.state {
                JobState::Done => format!(
                    "restore {} done: {} reached {} on timeline {}, running on port {}",
                    done.id, done.dir, done.reached_lsn, done.reached_timeline, done.port
                ),
                _ => format!("restore {} failed: {}", done.id, done.error),
            };
            let record = Command::Restore { record: Box::new(done.clone()) };
            this.end((JobKind::Restore, done.id), record, &done.cluster, &done.member, what).await;
        });
        Ok(rec)
    }
}
