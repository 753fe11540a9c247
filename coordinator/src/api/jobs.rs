//! The AdminService RPCs about backups, recovery tests and their schedules:
//! forwarded to the leader, audited there, answered from the catalog.

use std::time::Duration;

use drc_model::job::JobKind;
use drc_proto::{JobReply, JobsReply, ListJobsRequest, PauseReply, SetScheduleRequest, StartBackupRequest, StartRecoveryTestRequest};
use tonic::{Request, Response, Status};

use super::admin::{said, AdminApi};
use super::error::ApiError;
use crate::forward::on_leader;
use crate::state::Command;

impl AdminApi {
    /// Records of one kind, newest first, of one cluster or all, as JSON;
    /// running jobs of this node (the leader) carry their `progress`.
    fn list<T: serde::Serialize>(
        &self,
        cluster: &str,
        job: Option<JobKind>,
        pick: impl Fn(&crate::state::StateMachine) -> Vec<(String, T)>,
    ) -> Result<Response<JobsReply>, Status> {
        let items = self.node.store().with_state(|sm| {
            if !cluster.is_empty() && !sm.topology.clusters.contains_key(cluster) {
                return Err(Status::not_found(format!("unknown cluster {cluster:?}")));
            }
            Ok(pick(sm).into_iter().rev().filter(|(c, _)| cluster.is_empty() || c == cluster).map(|(_, r)| r).collect::<Vec<_>>())
        })?;
        let mut items = serde_json::to_value(&items).map_err(|e| Status::internal(e.to_string()))?;
        if let (Some(job), Some(items)) = (job, items.as_array_mut()) {
            for item in items.iter_mut().filter(|i| i["state"] == "running") {
                if let Some(p) = item["id"].as_u64().and_then(|id| self.jobs.progress(job, id)) {
                    item["progress"] = p;
                }
            }
        }
        let jobs_json = serde_json::to_string(&items).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(JobsReply { jobs_json }))
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
        ticket.finish(started.and_then(|rec| job_reply(&rec)), |r| job_detail("backup", r)).await
    }

    pub(super) async fn backups(&self, req: Request<ListJobsRequest>) -> Result<Response<JobsReply>, Status> {
        // The leader knows the progress of running jobs; without one, the
        // local catalog still answers.
        if let Ok(Some(answer)) =
            on_leader(&self.node, &self.transport, &req, LIST_ON_LEADER, |mut c, r| async move { c.list_backups(r).await }).await
        {
            return Ok(answer);
        }
        self.list(&req.into_inner().cluster, Some(JobKind::Backup), |sm| {
            sm.backups.values().map(|b| (b.cluster.clone(), b.clone())).collect()
        })
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
        let backup = (r.backup_id != 0).then_some(r.backup_id);
        let started = self.jobs.start_recovery_test(&r.cluster, backup, "operator").await.map_err(ApiError::from).map_err(Status::from);
        ticket.finish(started.and_then(|rec| job_reply(&rec)), |r| job_detail("recovery test", r)).await
    }

    pub(super) async fn recovery_tests(&self, req: Request<ListJobsRequest>) -> Result<Response<JobsReply>, Status> {
        if let Ok(Some(answer)) =
            on_leader(&self.node, &self.transport, &req, LIST_ON_LEADER, |mut c, r| async move { c.list_recovery_tests(r).await }).await
        {
            return Ok(answer);
        }
        self.list(&req.into_inner().cluster, Some(JobKind::RecoveryTest), |sm| {
            sm.recovery_tests.values().map(|t| (t.cluster.clone(), t.clone())).collect()
        })
    }

    pub(super) async fn schedule(&self, req: Request<SetScheduleRequest>) -> Result<Response<PauseReply>, Status> {
        let r = req.get_ref();
        let job: JobKind = match r.job.parse() {
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

    pub(super) async fn schedules(&self, req: Request<ListJobsRequest>) -> Result<Response<JobsReply>, Status> {
        let now = drc_model::time::wall_now_ms();
        self.list(&req.into_inner().cluster, None, |sm| {
            sm.schedules
                .values()
                .map(|s| {
                    let next = crate::jobs::parse_cron(&s.cron).ok().and_then(|c| crate::jobs::next(&c, now));
                    let mut v = serde_json::to_value(s).unwrap_or_default();
                    v["next_at"] = serde_json::json!(next);
                    (s.cluster.clone(), v)
                })
                .collect()
        })
    }
}

#[allow(clippy::result_large_err)]
fn job_reply<T: serde::Serialize>(rec: &T) -> Result<Response<JobReply>, Status> {
    Ok(Response::new(JobReply { job_json: serde_json::to_string(rec).map_err(|e| Status::internal(e.to_string()))? }))
}

/// The audit detail of a started job: its id.
fn job_detail(what: &str, r: &Response<JobReply>) -> String {
    let id = serde_json::from_str::<serde_json::Value>(&r.get_ref().job_json).ok().and_then(|v| v["id"].as_u64()).unwrap_or(0);
    format!("{what} {id} started")
}

/// How long a catalog listing tries the leader before answering locally.
const LIST_ON_LEADER: Duration = Duration::from_secs(1);
