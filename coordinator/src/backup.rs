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

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::failover::executor::now_ms;
use crate::failover::Millis;
use crate::health::HealthBoard;
use crate::raft::{NodeHandle, Role};
use crate::state::{Command, Outcome};
use crate::topology::Topology;

/// A backup may run this long.
const JOB_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    #[default]
    Running,
    Done,
    Failed,
}

/// One backup in the catalog.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRecord {
    pub id: u64,
    pub cluster: String,
    pub kind: String,
    /// The member it was taken from, and its region.
    pub member: String,
    pub member_region: String,
    pub destination: String,
    pub destination_region: String,
    /// Every object of the backup lives under this key prefix.
    pub prefix: String,
    pub state: JobState,
    /// "operator" or "schedule".
    pub trigger: String,
    pub started_at: Millis,
    pub finished_at: Millis,
    pub error: String,
    pub data_key: String,
    pub manifest_key: String,
    pub sha256: String,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    /// The manifest object's content.
    pub manifest: serde_json::Value,
}

/// One recovery test.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryTest {
    pub id: u64,
    pub cluster: String,
    pub backup_id: u64,
    /// The agent that restored it, and its region.
    pub member: String,
    pub member_region: String,
    pub state: JobState,
    pub trigger: String,
    pub started_at: Millis,
    pub finished_at: Millis,
    pub error: String,
    /// Start of the test to a verified instance accepting connections.
    pub rto_ms: u64,
    /// Start of the test minus the time of the newest data in the backup.
    pub rpo_ms: u64,
    /// What the checks found (row counts, key counts, amcheck, timings).
    pub checks: BTreeMap<String, String>,
}

/// Runs backups and recovery tests on the leader.
pub struct Jobs {
    node: NodeHandle,
    health: Arc<HealthBoard>,
    write_timeout: Duration,
    /// Jobs this node runs: ('b' | 't', id).
    running: Mutex<HashSet<(char, u64)>>,
}

impl Jobs {
    pub fn new(node: NodeHandle, health: Arc<HealthBoard>, write_timeout: Duration) -> Arc<Jobs> {
        Arc::new(Jobs { node, health, write_timeout, running: Mutex::new(HashSet::new()) })
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashSet<(char, u64)>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
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
    pub async fn start_backup(self: &Arc<Self>, cluster: &str, destination: Option<&str>, trigger: &str) -> Result<BackupRecord, String> {
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
        let started_at = now_ms();
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
            ..Default::default()
        };
        rec.id = self.record(Command::Backup { record: Box::new(rec.clone()) }).await?;
        self.running().insert(('b', rec.id));
        self.health.emit("backup", cluster, &member, format!("backup {} started: {member} -> {dest} ({})", rec.id, rec.prefix));
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
            let result = this.command(&job.member, &job.cluster, "backup", &args).await;
            let mut done = job.clone();
            done.finished_at = now_ms();
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
            this.health.emit("backup", &done.cluster, &done.member, what);
            this.running().remove(&('b', done.id));
        });
        Ok(rec)
    }

    /// The member to back up and the destination: a healthy replica (least
    /// lag first) with a destination outside its region, else the primary if
    /// allowed.
    fn source(&self, t: &Topology, cluster: &str, primary: &str, wanted: Option<&str>) -> Result<(String, String, String), String> {
        let policy = &t.clusters[cluster].backup;
        let obs = self.health.observations(t, Instant::now());
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
                obs.get(id).filter(|o| o.fresh && o.reachable && o.role == "replica").map(|o| (o.lag_bytes, id, &m.region))
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
        let obs = self.health.observations(&topology, Instant::now());
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
        let started_at = now_ms();
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
        rec.id = self.record(Command::RecoveryTest { record: Box::new(rec.clone()) }).await?;
        self.running().insert(('t', rec.id));
        self.health.emit("recovery_test", cluster, member, format!("recovery test {} started: backup {} on {member}", rec.id, backup.id));
        let data_time = backup.manifest.get("finished_at_ms").and_then(|v| v.as_u64()).unwrap_or(backup.finished_at);
        let args = [
            ("test_id", rec.id.to_string()),
            ("destination", backup.destination.clone()),
            ("data_key", backup.data_key.clone()),
            ("sha256", backup.sha256.clone()),
            ("kind", c.kind.as_str().to_string()),
            ("check_tables", c.backup.check_tables.join(",")),
            ("data_time_ms", data_time.to_string()),
        ];
        let this = Arc::clone(self);
        let job = rec.clone();
        tokio::spawn(async move {
            let result = this.command(&job.member, &job.cluster, "recovery_test", &args).await;
            let mut done = job.clone();
            done.finished_at = now_ms();
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
            this.health.emit("recovery_test", &done.cluster, &done.member, what);
            this.running().remove(&('t', done.id));
        });
        Ok(rec)
    }

    async fn command(
        &self,
        member: &str,
        cluster: &str,
        action: &str,
        args: &[(&str, String)],
    ) -> Result<BTreeMap<String, String>, String> {
        let cmd = drc_proto::Command {
            command_id: 0,
            cluster: cluster.to_string(),
            epoch: 0,
            action: action.to_string(),
            args: args.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        };
        match self.health.command(member, cmd, JOB_TIMEOUT).await {
            Ok(r) if r.ok => Ok(r.output.into_iter().collect()),
            Ok(r) => Err(r.error),
            Err(e) => Err(format!("agent of {member}: {e}")),
        }
    }

    /// On the leader, every few seconds: jobs recorded as running that no
    /// live job of this node owns were interrupted by a leader change.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut ticker = tokio::time::interval(Duration::from_secs(2));
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
            let why = "interrupted: the coordinator leader running it lost leadership".to_string();
            for mut b in backups {
                if !self.running().contains(&('b', b.id)) && now_ms().saturating_sub(b.started_at) > 5_000 {
                    (b.state, b.error, b.finished_at) = (JobState::Failed, why.clone(), now_ms());
                    let _ = self.record(Command::Backup { record: Box::new(b) }).await;
                }
            }
            for mut t in tests {
                if !self.running().contains(&('t', t.id)) && now_ms().saturating_sub(t.started_at) > 5_000 {
                    (t.state, t.error, t.finished_at) = (JobState::Failed, why.clone(), now_ms());
                    let _ = self.record(Command::RecoveryTest { record: Box::new(t) }).await;
                }
            }
        }
    }
}
