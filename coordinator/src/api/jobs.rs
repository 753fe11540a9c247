//! The AdminService RPCs about backups, recovery tests and their schedules:
//! forwarded to the leader, audited there, answered from the catalog.

use std::time::Duration;

use drc_model::job::JobKind;
use drc_proto::{
    job_reply, BackupEntry, BackupsReply, JobReply, JobState, ListJobsRequest, PauseReply, RecoveryTestEntry, RecoveryTestsReply,
    RestoreEntry, RestoresReply, ScheduleEntry, SchedulesReply, SetScheduleRequest, StartBackupRequest, StartRecoveryTestRequest,
    StartRestoreRequest,
};
use tonic::{Request, Response, Status};

use super::admin::{said, AdminApi};
use super::error::ApiError;
use crate::forward::on_leader;
use crate::jobs::{RestoreRequest, TestOf};
use crate::state::Command;

impl AdminApi {
    /// Records of one cluster or all, newest first, from this node's catalog.
    fn list<T>(&self, cluster: &str, pick: impl Fn(&crate::state::StateMachine) -> Vec<(String, T)>) -> Result<Vec<T>, Status> {
        self.node.store().with_state(|sm| {
            if !cluster.is_empty() && !sm.topology.clusters.contains_key(cluster) {
                return Err(Status::not_found(format!("unknown cluster {cluster:?}")));
            }
            Ok(pick(sm).into_iter().rev().filter(|(c, _)| cluster.is_empty() || c == cluster).map(|(_, r)| r).collect())
        })
    }

    pub(super) async fn run_backup(&self, req: Request<StartBackupRequest>) -> Result<Response<JobReply>, Status> {
        if let Some(answer) =
            on_leader(&self.node, &self.transport, &req, self.write_timeout, |mut c, r| async move { c.start_backup(r).await }).await?
        {
            return Ok(answer);
        }
        let ticket = self.audit.begin(&req).await?;
        let r = req.into_inner();
        let destination = (!r.destination.is_empty()).then_some(r.destination.as_str());
        let started = self.jobs.start_backup(&r.cluster, destination, 0).await.map_err(ApiError::from).map_err(Status::from);
        let started = started.map(|rec| Response::new(JobReply { job: Some(job_reply::Job::Backup(BackupEntry::from(&rec))) }));
        ticket.finish(started, |r| job_detail("backup", r)).await
    }

    pub(super) async fn backups(&self, req: Request<ListJobsRequest>) -> Result<Response<BackupsReply>, Status> {
        // The leader knows the progress of running jobs; without one, the
        // local catalog still answers.
        if let Ok(Some(answer)) =
            on_leader(&self.node, &self.transport, &req, LIST_ON_LEADER, |mut c, r| async move { c.list_backups(r).await }).await
        {
            return Ok(answer);
        }
        let mut backups =
            self.list(&req.into_inner().cluster, |sm| sm.backups.values().map(|b| (b.cluster.clone(), BackupEntry::from(b))).collect())?;
        // Running jobs of this node (the leader) carry their progress.
        for b in backups.iter_mut().filter(|b| b.state() == JobState::Running) {
            b.progress = self.jobs.progress(JobKind::Backup, b.id);
        }
        Ok(Response::new(BackupsReply { backups }))
    }

    pub(super) async fn run_recovery_test(&self, req: Request<StartRecoveryTestRequest>) -> Result<Response<JobReply>, Status> {
        if let Some(answer) =
            on_leader(&self.node, &self.transport, &req, self.write_timeout, |mut c, r| async move { c.start_recovery_test(r).await })
                .await?
        {
            return Ok(answer);
        }
        let ticket = self.audit.begin(&req).await?;
        let r = req.into_inner();
        let of = match (r.backup_id, r.random_point) {
            (0, false) => TestOf::Newest,
            (0, true) => TestOf::RandomPoint,
            (id, false) => TestOf::Backup(id),
            (_, true) => {
                return ticket.finish(Err(Status::invalid_argument("a backup or a random point, not both")), |_| String::new()).await
            }
        };
        let started = self.jobs.start_recovery_test(&r.cluster, of, "operator").await.map_err(ApiError::from).map_err(Status::from);
        let started = started.map(|rec| Response::new(JobReply { job: Some(job_reply::Job::RecoveryTest(RecoveryTestEntry::from(&rec))) }));
        ticket.finish(started, |r| job_detail("recovery test", r)).await
    }

    pub(super) async fn recovery_tests(&self, req: Request<ListJobsRequest>) -> Result<Response<RecoveryTestsReply>, Status> {
        if let Ok(Some(answer)) =
            on_leader(&self.node, &self.transport, &req, LIST_ON_LEADER, |mut c, r| async move { c.list_recovery_tests(r).await }).await
        {
            return Ok(answer);
        }
        let mut recovery_tests = self.list(&req.into_inner().cluster, |sm| {
            sm.recovery_tests.values().map(|t| (t.cluster.clone(), RecoveryTestEntry::from(t))).collect()
        })?;
        for t in recovery_tests.iter_mut().filter(|t| t.state() == JobState::Running) {
            t.progress = self.jobs.progress(JobKind::RecoveryTest, t.id);
        }
        Ok(Response::new(RecoveryTestsReply { recovery_tests }))
    }

    pub(super) async fn run_restore(&self, req: Request<StartRestoreRequest>) -> Result<Response<JobReply>, Status> {
        let (point, timeline) = match drc_proto::jobs::point_in(req.get_ref().point.as_ref()) {
            Ok(p) => p,
            Err(e) => return Err(self.audit.refused(&req, Status::invalid_argument(e.to_string())).await),
        };
        let Ok(port) = u16::try_from(req.get_ref().port) else {
            let e = format!("port {} is out of range", req.get_ref().port);
            return Err(self.audit.refused(&req, Status::invalid_argument(e)).await);
        };
        if let Some(answer) =
            on_leader(&self.node, &self.transport, &req, self.write_timeout, |mut c, r| async move { c.start_restore(r).await }).await?
        {
            return Ok(answer);
        }
        let ticket = self.audit.begin(&req).await?;
        let r = req.into_inner();
        let ask = RestoreRequest { cluster: r.cluster, point, timeline, on: r.on, dir: r.dir, port };
        let started = self.jobs.start_restore(ask, "operator").await.map_err(ApiError::from).map_err(Status::from);
        let started = started.map(|rec| Response::new(JobReply { job: Some(job_reply::Job::Restore(RestoreEntry::from(&rec))) }));
        ticket.finish(started, |r| job_detail("restore", r)).await
    }

    pub(super) async fn restores(&self, req: Request<ListJobsRequest>) -> Result<Response<RestoresReply>, Status> {
        if let Ok(Some(answer)) =
            on_leader(&self.node, &self.transport, &req, LIST_ON_LEADER, |mut c, r| async move { c.list_restores(r).await }).await
        {
            return Ok(answer);
        }
        let mut restores =
            self.list(&req.into_inner().cluster, |sm| sm.restores.values().map(|t| (t.cluster.clone(), RestoreEntry::from(t))).collect())?;
        for t in restores.iter_mut().filter(|t| t.state() == JobState::Running) {
            t.progress = self.jobs.progress(JobKind::Restore, t.id);
        }
        Ok(Response::new(RestoresReply { restores }))
    }

    pub(super) async fn schedule(&self, req: Request<SetScheduleRequest>) -> Result<Response<PauseReply>, Status> {
        let r = req.get_ref();
        let job: JobKind = match r.job.parse() {
            Ok(JobKind::Restore) => {
                let e = "job: restores are never scheduled (recovery tests are: --recovery-test)";
                return Err(self.audit.refused(&req, Status::invalid_argument(e)).await);
            }
            Ok(job) => job,
            Err(e) => return Err(self.audit.refused(&req, Status::invalid_argument(format!("job: {e}"))).await),
        };
        if let Err(e) = (!r.cron.is_empty()).then(|| crate::jobs::parse_cron(&r.cron)).transpose() {
            return Err(self.audit.refused(&req, Status::invalid_argument(e)).await);
        }
        if let Some(answer) =
            on_leader(&self.node, &self.transport, &req, self.write_timeout, |mut c, r| async move { c.set_schedule(r).await }).await?
        {
            return Ok(answer);
        }
        let ticket = self.audit.begin(&req).await?;
        let r = req.into_inner();
        let done = if r.cron.is_empty() {
            format!("{} schedule of {} removed", r.job, r.cluster)
        } else {
            format!("{} of {} scheduled: {:?} (UTC)", r.job, r.cluster, r.cron)
        };
        let at = drc_model::time::wall_now_ms();
        ticket.finish(self.propose_command(Command::SetSchedule { cluster: r.cluster, job, cron: r.cron, at }, done).await, said).await
    }

    pub(super) async fn schedules(&self, req: Request<ListJobsRequest>) -> Result<Response<SchedulesReply>, Status> {
        let now = drc_model::time::wall_now_ms();
        let schedules = self.list(&req.into_inner().cluster, |sm| {
            sm.schedules
                .values()
                .map(|s| {
                    let next_at = crate::jobs::parse_cron(&s.cron).ok().and_then(|c| crate::jobs::next(&c, now));
                    (s.cluster.clone(), ScheduleEntry { next_at, ..ScheduleEntry::from(s) })
                })
                .collect()
        })?;
        Ok(Response::new(SchedulesReply { schedules }))
    }
}

/// The audit detail of a started job: its id.
fn job_detail(what: &str, r: &Response<JobReply>) -> String {
    let id = match &r.get_ref().job {
        Some(job_reply::Job::Backup(b)) => b.id,
        Some(job_reply::Job::RecoveryTest(t)) => t.id,
        Some(job_reply::Job::Restore(t)) => t.id,
        None => 0,
    };
    format!("{what} {id} started")
}

/// How long a catalog listing tries the leader before answering locally.
const LIST_ON_LEADER: Duration = Duration::from_secs(1);
