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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drc_model::job::{BackupRecord, JobKind, JobState, RecoveryTest};
use tokio_util::sync::CancellationToken;

use crate::agents::{progress, Agents, EventKind};
use crate::lock::lock;
use crate::raft::{NodeHandle, Role};
use crate::state::{Command, Outcome};
use drc_model::time::wall_now_ms;
use drc_model::topology::Topology;
use drc_model::Millis;

/// A backup may run this long.
const JOB_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// Parses a cron expression (5 fields, or 6 with seconds first).
pub fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(expr)
        .map_err(|e| format!("cron expression {expr:?}: {e}"))
}

fn at(ms: Millis) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms as i64).unwrap_or_default()
}

/// The newest occurrence of `cron` in (after, now], if any: occurrences
/// missed while no leader ran collapse into this one.
pub fn due(cron: &croner::Cron, after: Millis, now: Millis) -> Option<Millis> {
    // Occurrences are whole seconds; croner keeps the input's milliseconds.
    let prev = cron.find_previous_occurrence(&at(now), true).ok()?.timestamp_millis() as u64 / 1000 * 1000;
    (prev > after).then_some(prev)
}

/// The next occurrence after `now`, for display.
pub fn next(cron: &croner::Cron, now: Millis) -> Option<Millis> {
    cron.find_next_occurrence(&at(now), false).ok().map(|t| t.timestamp_millis() as u64 / 1000 * 1000)
}

/// Which completed backups retention deletes: per destination, beyond the
/// newest `keep_last` or older than `max_age`, but never the newest verified
/// one (a recovery test restored it) and never the newest one.
pub fn expired(backups: &[&BackupRecord], verified: &HashSet<u64>, keep_last: u32, max_age: Option<Millis>, now: Millis) -> Vec<u64> {
    let mut by_dest: BTreeMap<&str, Vec<&BackupRecord>> = BTreeMap::new();
    for b in backups.iter().filter(|b| b.state == JobState::Done) {
        by_dest.entry(b.destination.as_str()).or_default().push(b);
    }
    let mut out = Vec::new();
    for list in by_dest.values_mut() {
        list.sort_by_key(|b| std::cmp::Reverse((b.started_at, b.id)));
        let keep_verified = list.iter().find(|b| verified.contains(&b.id)).map(|b| b.id);
        for (i, b) in list.iter().enumerate() {
            let too_many = keep_last > 0 && i >= keep_last as usize;
            let too_old = max_age.is_some_and(|age| now.saturating_sub(b.finished_at) > age);
            if i > 0 && Some(b.id) != keep_verified && (too_many || too_old) {
                out.push(b.id);
            }
        }
    }
    out
}

/// Runs backups and recovery tests on the leader.
pub struct Jobs {
    node: NodeHandle,
    agents: Arc<Agents>,
    write_timeout: Duration,
    /// Jobs this node runs: (kind, id) -> the id of the agent command
    /// carrying it out (0 before it is sent), to follow its progress.
    running: Mutex<HashMap<(JobKind, u64), u64>>,
}

impl Jobs {
    pub fn new(node: NodeHandle, agents: Arc<Agents>, write_timeout: Duration) -> Arc<Jobs> {
        Arc::new(Jobs { node, agents, write_timeout, running: Mutex::new(HashMap::new()) })
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<(JobKind, u64), u64>> {
        lock(&self.running)
    }

    /// How far a running job of this node has got: phase, bytes done and
    /// expected, rate, ETA.
    pub fn progress(&self, job: JobKind, id: u64) -> Option<serde_json::Value> {
        let command = *self.running().get(&(job, id))?;
        let p = self.agents.hub.progress_of(command)?;
        let (rate, eta) = progress::rate_and_eta(&p);
        Some(serde_json::json!({
            "phase": p.phase,
            "bytes_done": p.bytes_done,
            "bytes_total": p.bytes_total,
            "rate_bytes_per_s": rate,
            "eta_s": eta,
            "elapsed_ms": p.elapsed_ms,
            "text": progress::describe_progress(&p),
        }))
    }

    async fn record(&self, cmd: Command) -> Result<u64, String> {
        match self.node.propose(cmd, self.write_timeout).await {
            Ok(Outcome::Recorded { id }) => Ok(id),
            Ok(Outcome::Refused { reason }) => Err(reason),
            Ok(other) => Err(format!("unexpected outcome {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Starts a backup of `cluster`; returns its record (state running).
    /// `scheduled_at`: the schedule occurrence behind it, 0 for an operator.
    pub async fn start_backup(
        self: &Arc<Self>,
        cluster: &str,
        destination: Option<&str>,
        scheduled_at: Millis,
    ) -> Result<BackupRecord, String> {
        let trigger = if scheduled_at == 0 { "operator" } else { "schedule" };
        let (topology, primary) = self
            .node
            .store()
            .with_state(|sm| (sm.topology.clone(), sm.records.get(cluster).map(|r| r.primary.clone()).unwrap_or_default()));
        let c = topology.clusters.get(cluster).ok_or_else(|| format!("unknown cluster {cluster:?}"))?;
        let policy = &c.backup;
        if policy.destinations.is_empty() {
            return Err(format!("cluster {cluster} has no backup destinations ([clusters.{cluster}.backup] destinations = [...])"));
        }
        if let Some(d) = destination {
            if !topology.destinations.contains_key(d) {
                return Err(format!("unknown destination {d:?}"));
            }
        }
        let (member, region, dest) = self.source(&topology, cluster, &primary, destination)?;
        let started_at = wall_now_ms();
        let mut rec = BackupRecord {
            cluster: cluster.to_string(),
            kind: c.kind.as_str().to_string(),
            member: member.clone(),
            member_region: region,
            destination: dest.clone(),
            destination_region: topology.destinations[&dest].region.clone(),
            prefix: format!("drc/{cluster}/{started_at}-{member}"),
            state: JobState::Running,
            trigger: trigger.to_string(),
            started_at,
            scheduled_at,
            ..Default::default()
        };
        rec.id = {
            let _no_move = self.node.hold_leadership().await;
            self.record(Command::Backup { record: Box::new(rec.clone()) }).await?
        };
        self.running().insert((JobKind::Backup, rec.id), 0);
        self.agents.events.emit(
            EventKind::Backup,
            cluster,
            &member,
            format!("backup {} started: {member} -> {dest} ({})", rec.id, rec.prefix),
        );
        let this = Arc::clone(self);
        let recipients = policy.recipients.join(",");
        let job = rec.clone();
        tokio::spawn(async move {
            let args = [
                ("backup_id", job.id.to_string()),
                ("destination", job.destination.clone()),
                ("key", job.prefix.clone()),
                ("recipients", recipients),
            ];
            let result = this.command(Some((JobKind::Backup, job.id)), &job.member, &job.cluster, "backup", &args).await;
            let mut done = job.clone();
            done.finished_at = wall_now_ms();
            match result {
                Ok(out) => {
                    done.state = JobState::Done;
                    done.data_key = out.get("data_key").cloned().unwrap_or_default();
                    done.manifest_key = out.get("manifest_key").cloned().unwrap_or_default();
                    done.sha256 = out.get("sha256").cloned().unwrap_or_default();
                    done.raw_bytes = out.get("raw_bytes").and_then(|v| v.parse().ok()).unwrap_or(0);
                    done.stored_bytes = out.get("stored_bytes").and_then(|v| v.parse().ok()).unwrap_or(0);
                    done.manifest = out.get("manifest").and_then(|m| serde_json::from_str(m).ok()).unwrap_or_default();
                }
                Err(e) => {
                    done.state = JobState::Failed;
                    done.error = e;
                }
            }
            let what = match done.state {
                JobState::Done => format!("backup {} done: {} bytes raw, {} stored", done.id, done.raw_bytes, done.stored_bytes),
                _ => format!("backup {} failed: {}", done.id, done.error),
            };
            if let Err(e) = this.record(Command::Backup { record: Box::new(done.clone()) }).await {
                tracing::warn!(id = done.id, error = %e, "cannot record the end of a backup");
            }
            this.agents.events.emit(EventKind::Backup, &done.cluster, &done.member, what);
            this.running().remove(&(JobKind::Backup, done.id));
            if done.state == JobState::Done {
                this.retain(&done.cluster).await;
            }
        });
        Ok(rec)
    }

    /// The member to back up and the destination: a healthy replica (least
    /// lag first) with a destination outside its region, else the primary if
    /// allowed.
    fn source(&self, t: &Topology, cluster: &str, primary: &str, wanted: Option<&str>) -> Result<(String, String, String), String> {
        let policy = &t.clusters[cluster].backup;
        let obs = self.agents.board.observations(t, Instant::now());
        let dest_for = |region: &str| -> Option<String> {
            let ok = |d: &&String| t.destinations.get(*d).is_some_and(|x| x.region != region);
            match wanted {
                Some(w) => Some(w.to_string()).filter(|w| ok(&w)),
                None => policy.destinations.iter().find(ok).cloned(),
            }
        };
        let mut replicas: Vec<(u64, &String, &String)> = t
            .members_of(cluster)
            .filter(|(id, _)| id.as_str() != primary)
            .filter_map(|(id, m)| {
                obs.get(id).filter(|o| o.fresh && o.reachable && o.role == drc_model::Role::Replica).map(|o| (o.lag_bytes, id, &m.region))
            })
            .collect();
        replicas.sort();
        for (_, id, region) in &replicas {
            if let Some(d) = dest_for(region) {
                return Ok(((*id).clone(), (*region).clone(), d));
            }
        }
        if policy.allow_primary {
            if let Some(m) = t.members.get(primary) {
                if obs.get(primary).is_some_and(|o| o.fresh && o.reachable) {
                    if let Some(d) = dest_for(&m.region) {
                        return Ok((primary.to_string(), m.region.clone(), d));
                    }
                }
            }
        }
        let why = if replicas.is_empty() { "no healthy replica" } else { "no destination outside the healthy replicas' regions" };
        Err(format!("cannot back up {cluster}: {why}{}", if policy.allow_primary { "" } else { " (allow_primary is off)" }))
    }

    /// Starts a recovery test of `cluster` (newest completed backup unless
    /// `backup_id`); returns its record (state running).
    pub async fn start_recovery_test(
        self: &Arc<Self>,
        cluster: &str,
        backup_id: Option<u64>,
        trigger: &str,
    ) -> Result<RecoveryTest, String> {
        let (topology, primary, backup) = self.node.store().with_state(|sm| {
            let backup = match backup_id {
                Some(id) => sm.backups.get(&id).cloned(),
                None => sm.backups.values().rev().find(|b| b.cluster == cluster && b.state == JobState::Done).cloned(),
            };
            (sm.topology.clone(), sm.records.get(cluster).map(|r| r.primary.clone()).unwrap_or_default(), backup)
        });
        let c = topology.clusters.get(cluster).ok_or_else(|| format!("unknown cluster {cluster:?}"))?;
        let backup = backup.ok_or_else(|| match backup_id {
            Some(id) => format!("no backup {id}"),
            None => format!("cluster {cluster} has no completed backup yet"),
        })?;
        if backup.cluster != cluster {
            return Err(format!("backup {} belongs to cluster {}, not {cluster}", backup.id, backup.cluster));
        }
        if backup.state != JobState::Done {
            return Err(format!("backup {} is {:?}, not done", backup.id, backup.state).to_lowercase());
        }
        let primary_region = topology.members.get(&primary).map(|m| m.region.clone()).unwrap_or_default();
        let obs = self.agents.board.observations(&topology, Instant::now());
        // Prefer a replica outside the primary's region, nearest the bucket.
        let mut candidates: Vec<(bool, &String, &String)> = topology
            .members_of(cluster)
            .filter(|(id, m)| m.region != primary_region && obs.get(*id).is_some_and(|o| o.fresh))
            .map(|(id, m)| (m.region != backup.destination_region, id, &m.region))
            .collect();
        candidates.sort();
        let Some((_, member, region)) = candidates.first() else {
            return Err(format!("no agent of {cluster} outside the primary's region ({primary_region}) is connected"));
        };
        let started_at = wall_now_ms();
        let mut rec = RecoveryTest {
            cluster: cluster.to_string(),
            backup_id: backup.id,
            member: (*member).clone(),
            member_region: (*region).clone(),
            state: JobState::Running,
            trigger: trigger.to_string(),
            started_at,
            ..Default::default()
        };
        rec.id = {
            let _no_move = self.node.hold_leadership().await;
            self.record(Command::RecoveryTest { record: Box::new(rec.clone()) }).await?
        };
        self.running().insert((JobKind::RecoveryTest, rec.id), 0);
        self.agents.events.emit(
            EventKind::RecoveryTest,
            cluster,
            member,
            format!("recovery test {} started: backup {} on {member}", rec.id, backup.id),
        );
        let data_time = backup.manifest.get("finished_at_ms").and_then(|v| v.as_u64()).unwrap_or(backup.finished_at);
        let args = [
            ("test_id", rec.id.to_string()),
            ("destination", backup.destination.clone()),
            ("data_key", backup.data_key.clone()),
            ("sha256", backup.sha256.clone()),
            ("kind", c.kind.as_str().to_string()),
            ("check_tables", c.backup.check_tables.join(",")),
            ("checks", serde_json::to_string(&c.backup.checks).unwrap_or_default()),
            ("raw_bytes", backup.raw_bytes.to_string()),
            ("stored_bytes", backup.stored_bytes.to_string()),
            ("data_time_ms", data_time.to_string()),
        ];
        let this = Arc::clone(self);
        let job = rec.clone();
        tokio::spawn(async move {
            let result = this.command(Some((JobKind::RecoveryTest, job.id)), &job.member, &job.cluster, "recovery_test", &args).await;
            let mut done = job.clone();
            done.finished_at = wall_now_ms();
            match result {
                Ok(out) => {
                    done.state = JobState::Done;
                    done.rto_ms = out.get("rto_ms").and_then(|v| v.parse().ok()).unwrap_or(0);
                    done.rpo_ms = out.get("rpo_ms").and_then(|v| v.parse().ok()).unwrap_or(0);
                    done.checks = out.into_iter().filter(|(k, _)| k != "rto_ms" && k != "rpo_ms").collect();
                }
                Err(e) => {
                    done.state = JobState::Failed;
                    done.error = e;
                }
            }
            let what = match done.state {
                JobState::Done => format!("recovery test {} passed: RTO {} ms, RPO {} ms", done.id, done.rto_ms, done.rpo_ms),
                _ => format!("recovery test {} failed: {}", done.id, done.error),
            };
            if let Err(e) = this.record(Command::RecoveryTest { record: Box::new(done.clone()) }).await {
                tracing::warn!(id = done.id, error = %e, "cannot record the end of a recovery test");
            }
            this.agents.events.emit(EventKind::RecoveryTest, &done.cluster, &done.member, what);
            this.running().remove(&(JobKind::RecoveryTest, done.id));
        });
        Ok(rec)
    }

    async fn command(
        &self,
        job: Option<(JobKind, u64)>,
        member: &str,
        cluster: &str,
        action: &str,
        args: &[(&str, String)],
    ) -> Result<BTreeMap<String, String>, String> {
        let command_id = self.agents.hub.command_id();
        if let Some(job) = job {
            self.running().insert(job, command_id);
        }
        let cmd = drc_proto::Command {
            command_id,
            cluster: cluster.to_string(),
            epoch: 0,
            action: action.to_string(),
            args: args.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        };
        match self.agents.hub.command(member, cmd, JOB_TIMEOUT).await {
            Ok(r) if r.ok => Ok(r.output.into_iter().collect()),
            Ok(r) => Err(r.error),
            Err(e) => Err(format!("agent of {member}: {e}")),
        }
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
            let (backups, tests) = self.node.store().with_state(|sm| {
                (
                    sm.backups.values().filter(|b| b.state == JobState::Running).cloned().collect::<Vec<_>>(),
                    sm.recovery_tests.values().filter(|t| t.state == JobState::Running).cloned().collect::<Vec<_>>(),
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
        }
    }
}

/// The watch events of a kind of job.
fn event_kind(job: JobKind) -> EventKind {
    match job {
        JobKind::Backup => EventKind::Backup,
        JobKind::RecoveryTest => EventKind::RecoveryTest,
    }
}

impl Jobs {
    /// Starts every scheduled job that is due, once per occurrence: the
    /// occurrence is committed (compare-and-set on the last one fired) before
    /// the job starts, so a new leader never starts it again.
    async fn fire_schedules(self: &Arc<Self>) {
        let (schedules, busy) = self.node.store().with_state(|sm| {
            let busy: HashSet<(String, JobKind)> = sm
                .backups
                .values()
                .filter(|b| b.state == JobState::Running)
                .map(|b| (b.cluster.clone(), JobKind::Backup))
                .chain(
                    sm.recovery_tests.values().filter(|t| t.state == JobState::Running).map(|t| (t.cluster.clone(), JobKind::RecoveryTest)),
                )
                .collect();
            (sm.schedules.values().cloned().collect::<Vec<_>>(), busy)
        });
        let now = wall_now_ms();
        for s in schedules {
            let Ok(cron) = parse_cron(&s.cron) else { continue };
            let Some(occurrence) = due(&cron, s.last_fired.max(s.since), now) else { continue };
            let fire = Command::Fire { cluster: s.cluster.clone(), job: s.job, at: occurrence };
            match self.node.propose(fire, self.write_timeout).await {
                Ok(Outcome::Done) => {}
                Ok(other) => {
                    tracing::debug!(?other, "schedule not fired");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "schedule: cannot record the firing");
                    continue;
                }
            }
            if busy.contains(&(s.cluster.clone(), s.job)) {
                // One at a time: an occurrence that finds the previous job
                // still running is skipped, and says so.
                self.agents.events.emit(
                    event_kind(s.job),
                    &s.cluster,
                    "",
                    format!("scheduled {} at {occurrence} skipped: the previous one is still running", s.job),
                );
                continue;
            }
            let started = match s.job {
                JobKind::Backup => self.start_backup(&s.cluster, None, occurrence).await.map(|b| b.id),
                JobKind::RecoveryTest => self.start_recovery_test(&s.cluster, None, "schedule").await.map(|t| t.id),
            };
            match started {
                Ok(id) => tracing::info!(cluster = %s.cluster, job = %s.job, id, occurrence, "scheduled job started"),
                Err(e) => {
                    // Recorded, so that a schedule that cannot run is seen.
                    tracing::warn!(cluster = %s.cluster, job = %s.job, error = %e, "scheduled job could not start");
                    self.agents.events.emit(event_kind(s.job), &s.cluster, "", format!("scheduled {} could not start: {e}", s.job));
                    if s.job == JobKind::Backup {
                        let failed = BackupRecord {
                            cluster: s.cluster.clone(),
                            state: JobState::Failed,
                            trigger: "schedule".into(),
                            started_at: now,
                            finished_at: now,
                            scheduled_at: occurrence,
                            error: e,
                            ..Default::default()
                        };
                        let _ = self.record(Command::Backup { record: Box::new(failed) }).await;
                    }
                }
            }
        }
    }

    /// Applies the cluster's retention: deletes expired backups' objects
    /// through one of its agents, then drops them from the catalog.
    async fn retain(self: &Arc<Self>, cluster: &str) {
        let (policy, backups, verified, topology) = self.node.store().with_state(|sm| {
            let verified: HashSet<u64> = sm.recovery_tests.values().filter(|t| t.state == JobState::Done).map(|t| t.backup_id).collect();
            (
                sm.topology.clusters.get(cluster).map(|c| c.backup.clone()),
                sm.backups.values().filter(|b| b.cluster == cluster).cloned().collect::<Vec<_>>(),
                verified,
                sm.topology.clone(),
            )
        });
        let Some(policy) = policy else { return };
        if policy.keep_last == 0 && policy.max_age.is_none() {
            return;
        }
        let refs: Vec<&BackupRecord> = backups.iter().collect();
        let max_age = policy.max_age.map(|d| d.as_millis() as Millis);
        let doomed = expired(&refs, &verified, policy.keep_last, max_age, wall_now_ms());
        if doomed.is_empty() {
            return;
        }
        let obs = self.agents.board.observations(&topology, Instant::now());
        let agents: Vec<String> =
            topology.members_of(cluster).filter(|(id, _)| obs.get(*id).is_some_and(|o| o.fresh)).map(|(id, _)| id.clone()).collect();
        for id in doomed {
            let Some(b) = backups.iter().find(|b| b.id == id) else { continue };
            let keys =
                [b.data_key.as_str(), b.manifest_key.as_str()].iter().filter(|k| !k.is_empty()).copied().collect::<Vec<_>>().join(",");
            let args = [("destination", b.destination.clone()), ("keys", keys)];
            let mut deleted = false;
            for agent in &agents {
                match self.command(None, agent, cluster, "delete_backup", &args).await {
                    Ok(_) => {
                        deleted = true;
                        break;
                    }
                    Err(e) => tracing::warn!(backup = id, %agent, error = %e, "retention: delete failed; trying another agent"),
                }
            }
            if deleted && self.node.propose(Command::ForgetBackup { id }, self.write_timeout).await.is_ok() {
                self.agents.events.emit(EventKind::Backup, cluster, "", format!("retention deleted backup {id} ({})", b.prefix));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(id: u64, dest: &str, at: Millis) -> BackupRecord {
        BackupRecord { id, destination: dest.into(), state: JobState::Done, started_at: at, finished_at: at + 10, ..Default::default() }
    }

    #[test]
    fn retention_keeps_the_newest_n_per_destination_and_the_newest_verified_one() {
        let b: Vec<BackupRecord> = vec![done(1, "x", 100), done(2, "x", 200), done(3, "x", 300), done(4, "x", 400), done(5, "y", 150)];
        let refs: Vec<&BackupRecord> = b.iter().collect();
        let none = HashSet::new();
        assert_eq!(expired(&refs, &none, 2, None, 1_000), vec![2, 1], "keep the newest two of x; y has one");
        let verified = HashSet::from([1]);
        assert_eq!(expired(&refs, &verified, 2, None, 1_000), vec![2], "backup 1 is the newest verified one");
        // Age: everything older than 250 ms except the newest of each.
        assert_eq!(expired(&refs, &none, 0, Some(250), 560), vec![2, 1]);
        let failed = BackupRecord { state: JobState::Failed, ..done(6, "x", 500) };
        let mut with_failed = refs.clone();
        with_failed.push(&failed);
        assert_eq!(expired(&with_failed, &none, 2, None, 1_000), vec![2, 1], "failed backups are not counted");
    }

    #[test]
    fn a_missed_occurrence_fires_once_and_not_before_the_schedule_existed() {
        let every_10s = parse_cron("*/10 * * * * *").expect("cron");
        // Last fired at 20 s; now 47 s: 30 s and 40 s were missed, 40 s fires.
        assert_eq!(due(&every_10s, 20_000, 47_000), Some(40_000));
        assert_eq!(due(&every_10s, 40_000, 47_000), None, "fired already");
        assert_eq!(next(&every_10s, 47_000), Some(50_000));
        assert!(parse_cron("0 3 * * *").is_ok(), "five fields");
        assert!(parse_cron("61 * * * *").is_err());
        assert!(parse_cron("nonsense").is_err());
    }
}
