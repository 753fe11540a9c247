//! Backups and recovery tests as the coordinator sees them: the catalog,
//! replicated in Raft, and the jobs the leader runs through agents.
//!
//! The leader picks the source (a healthy replica, the least behind; the
//! primary only when the cluster's policy allows it and no replica is
//! healthy) and a destination in another region, records the job as running,
//! and sends the agent a `backup` command; the result (manifest, sizes,
//! SHA-256) is recorded when it comes back. A recovery test restores the
//! newest completed backup on an agent in a region other than the primary's.
//! A job whose leader lost leadership is recorded as interrupted by the next
//! leader: nothing is left "running" forever.

mod archive;
mod backup;
mod error;
mod point;
mod recovery;
mod restore;
mod retention;
pub mod schedule;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drc_model::job::{JobKind, JobState};
use drc_model::time::wall_now_ms;
use tokio_util::sync::CancellationToken;

use crate::agents::{progress, Agents, EventKind};
use crate::lock::lock;
use crate::raft::{NodeHandle, Role};
use crate::state::{Command, Outcome};
use drc_proto::command;
use drc_proto::command_result::Found;

pub use error::JobError;
pub use recovery::TestOf;
pub use restore::RestoreRequest;
pub use schedule::{next, parse_cron};

/// A backup may run this long.
const JOB_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// Runs backups and recovery tests on the leader.
pub struct Jobs {
    node: NodeHandle,
    agents: Arc<Agents>,
    write_timeout: Duration,
    /// Jobs this node runs: (kind, id) -> the id of the agent command
    /// carrying it out (0 before it is sent), to follow its progress.
    running: Mutex<HashMap<(JobKind, u64), u64>>,
    /// Per WAL archive (catalog key), the horizon it was last pruned to.
    pruned: Mutex<HashMap<String, u64>>,
}

impl Jobs {
    pub fn new(node: NodeHandle, agents: Arc<Agents>, write_timeout: Duration) -> Arc<Jobs> {
        Arc::new(Jobs { node, agents, write_timeout, running: Mutex::new(HashMap::new()), pruned: Mutex::new(HashMap::new()) })
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<(JobKind, u64), u64>> {
        lock(&self.running)
    }

    /// One backup and one recovery test per cluster at a time: a second
    /// would compete for the same source, bucket and scratch disk.
    fn one_at_a_time(&self, job: JobKind, cluster: &str) -> Result<(), JobError> {
        let running = self.node.store().with_state(|sm| match job {
            JobKind::Backup => sm.backups.values().find(|b| b.cluster == cluster && b.state == JobState::Running).map(|b| b.id),
            JobKind::RecoveryTest => {
                sm.recovery_tests.values().find(|t| t.cluster == cluster && t.state == JobState::Running).map(|t| t.id)
            }
            JobKind::Restore => sm.restores.values().find(|t| t.cluster == cluster && t.state == JobState::Running).map(|t| t.id),
        });
        match (running, job) {
            (None, _) => Ok(()),
            (Some(id), JobKind::Backup) => Err(JobError::Busy { what: "backup", command: "backup", id, cluster: cluster.into() }),
            (Some(id), JobKind::RecoveryTest) => {
                Err(JobError::Busy { what: "recovery test", command: "recovery-test", id, cluster: cluster.into() })
            }
            (Some(id), JobKind::Restore) => Err(JobError::Busy { what: "restore", command: "restore", id, cluster: cluster.into() }),
        }
    }

    /// How far a running job of this node has got: phase, bytes done and
    /// expected, rate, ETA.
    pub fn progress(&self, job: JobKind, id: u64) -> Option<drc_proto::JobProgress> {
        let command = *self.running().get(&(job, id))?;
        let p = self.agents.hub.progress_of(command)?;
        let (rate, eta) = progress::rate_and_eta(&p);
        Some(drc_proto::JobProgress {
            text: progress::describe_progress(&p),
            phase: p.phase,
            bytes_done: p.bytes_done,
            bytes_total: p.bytes_total,
            rate_bytes_per_s: rate,
            eta_s: eta,
            elapsed_ms: p.elapsed_ms,
        })
    }

    async fn record(&self, cmd: Command) -> Result<u64, JobError> {
        match self.node.propose(cmd, self.write_timeout).await? {
            Outcome::Recorded { id } => Ok(id),
            Outcome::Refused { reason } => Err(JobError::Refused(reason)),
            other => Err(JobError::Refused(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn command(
        &self,
        job: Option<(JobKind, u64)>,
        member: &str,
        cluster: &str,
        body: command::Body,
    ) -> Result<Option<Found>, String> {
        let command_id = self.agents.hub.command_id();
        if let Some(job) = job {
            self.running().insert(job, command_id);
        }
        let cmd = drc_proto::Command { command_id, cluster: cluster.to_string(), epoch: 0, body: Some(body) };
        match self.agents.hub.command(member, cmd, JOB_TIMEOUT).await {
            Ok(r) if r.ok => Ok(r.found),
            Ok(r) => Err(r.error),
            Err(e) => Err(format!("agent of {member}: {e}")),
        }
    }

    /// Records a job's end, says so to watchers and forgets it.
    async fn end(&self, job: (JobKind, u64), cmd: Command, cluster: &str, member: &str, what: String) {
        if let Err(e) = self.record(cmd).await {
            tracing::warn!(job = %job.0, id = job.1, error = %e, "cannot record the end of a job");
        }
        self.agents.events.emit(event_kind(job.0), cluster, member, what);
        self.running().remove(&job);
    }

    /// On the leader, every few seconds: jobs recorded as running that no
    /// live job of this node owns were interrupted by a leader change.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        let mut leading_since: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = ticker.tick() => {}
            }
            if self.node.status().role != Role::Leader {
                leading_since = None;
                continue;
            }
            // A job started by this node is registered right after its record
            // commits: give that a moment.
            let since = *leading_since.get_or_insert_with(Instant::now);
            if since.elapsed() < Duration::from_secs(2) {
                continue;
            }
            let (backups, tests, restores) = self.node.store().with_state(|sm| {
                (
                    sm.backups.values().filter(|b| b.state == JobState::Running).cloned().collect::<Vec<_>>(),
                    sm.recovery_tests.values().filter(|t| t.state == JobState::Running).cloned().collect::<Vec<_>>(),
                    sm.restores.values().filter(|t| t.state == JobState::Running).cloned().collect::<Vec<_>>(),
                )
            });
            self.fire_schedules().await;
            let clusters: Vec<String> = self.node.store().with_state(|sm| sm.topology.clusters.keys().cloned().collect());
            for c in clusters {
                self.retain(&c).await;
            }
            let why = "interrupted: the coordinator leader running it lost leadership".to_string();
            for mut b in backups {
                if !self.running().contains_key(&(JobKind::Backup, b.id)) && wall_now_ms().saturating_sub(b.started_at) > 5_000 {
                    (b.state, b.error, b.finished_at) = (JobState::Failed, why.clone(), wall_now_ms());
                    let _ = self.record(Command::Backup { record: Box::new(b) }).await;
                }
            }
            for mut t in tests {
                if !self.running().contains_key(&(JobKind::RecoveryTest, t.id)) && wall_now_ms().saturating_sub(t.started_at) > 5_000 {
                    (t.state, t.error, t.finished_at) = (JobState::Failed, why.clone(), wall_now_ms());
                    let _ = self.record(Command::RecoveryTest { record: Box::new(t) }).await;
                }
            }
            for mut r in restores {
                if !self.running().contains_key(&(JobKind::Restore, r.id)) && wall_now_ms().saturating_sub(r.started_at) > 5_000 {
                    (r.state, r.finished_at) = (JobState::Failed, wall_now_ms());
                    r.error = format!("{why}; the agent may still finish it: look in {} on {}", r.dir, r.member);
                    let _ = self.record(Command::Restore { record: Box::new(r) }).await;
                }
            }
        }
    }
}

/// What a job's command found, as the kind `pick` takes, or why not: the
/// agent's error, or a result of another kind (an agent of another release).
fn answer<T>(result: Result<Option<Found>, String>, job: JobKind, pick: impl FnOnce(Found) -> Result<T, Found>) -> Result<T, String> {
    match result?.map(pick) {
        Some(Ok(found)) => Ok(found),
        Some(Err(other)) => Err(format!("the agent reported no {job} but {other:?}: is it of another release?")),
        None => Err(format!("the agent reported no {job}: is it of another release?")),
    }
}

/// The watch events of a kind of job.
fn event_kind(job: JobKind) -> EventKind {
    match job {
        JobKind::Backup => EventKind::Backup,
        JobKind::RecoveryTest => EventKind::RecoveryTest,
        JobKind::Restore => EventKind::Restore,
    }
}
