//! Starting a recovery test: the backup and the agent that restores it.

use std::sync::Arc;
use std::time::Instant;

use std::collections::hash_map::RandomState;

use drc_model::job::{BackupRecord, JobKind, JobState, RecoveryTest, RestorePoint, Timeline};
use drc_model::time::wall_now_ms;

use crate::agents::EventKind;
use crate::state::Command;
use drc_proto::command_result::Found;
use drc_proto::{command, RecoveryTestJob, RestoreCheck};

use super::point::{base_for, random_point};
use super::{answer, JobError, Jobs};

/// Which backup a recovery test restores, and how far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestOf {
    /// The newest completed backup, to the end of the archive.
    Newest,
    Backup(u64),
    /// A random position in the window the archive and the backups cover.
    RandomPoint,
}

impl Jobs {
    /// Starts a recovery test of `cluster`: of the newest completed backup,
    /// of `backup_id`, or to a random point (from the newest backup before
    /// it); returns its record (state running).
    pub async fn start_recovery_test(self: &Arc<Self>, cluster: &str, of: TestOf, trigger: &str) -> Result<RecoveryTest, JobError> {
        let (topology, primary, backup, point) = self.node.store().with_state(|sm| {
            let (backup, point) = match of {
                TestOf::Backup(id) => (sm.backups.get(&id).cloned(), RestorePoint::Latest),
                TestOf::Newest => {
                    (sm.backups.values().rev().find(|b| b.cluster == cluster && b.state == JobState::Done).cloned(), RestorePoint::Latest)
                }
                TestOf::RandomPoint => {
                    let backups: Vec<BackupRecord> = sm.backups.values().filter(|b| b.cluster == cluster).cloned().collect();
                    let reach = sm.archive_reach(cluster);
                    let point = random_point(&backups, reach, std::hash::BuildHasher::hash_one(&RandomState::new(), cluster));
                    (base_for(&backups, cluster, point).ok().cloned(), point)
                }
            };
            (sm.topology.clone(), sm.records.get(cluster).map(|r| r.primary.clone()).unwrap_or_default(), backup, point)
        });
        let backup_id = match of {
            TestOf::Backup(id) => Some(id),
            _ => None,
        };
        let c = topology.clusters.get(cluster).ok_or_else(|| JobError::UnknownCluster(cluster.into()))?;
        let backup = backup.ok_or_else(|| match backup_id {
            Some(id) => JobError::UnknownBackup(id),
            None => JobError::NoBackupYet(cluster.into()),
        })?;
        if backup.cluster != cluster {
            return Err(JobError::OtherCluster { id: backup.id, owner: backup.cluster, cluster: cluster.into() });
        }
        if backup.state != JobState::Done {
            return Err(JobError::NotDone { id: backup.id, state: backup.state });
        }
        // Refused before anything is recorded: a replay the archive cannot feed.
        let source = source_of(&self.node, c, &backup);
        if (point != RestorePoint::Latest || needs_archive(&backup)) && source.wal_key.is_empty() {
            return Err(JobError::NoArchive { cluster: cluster.into() });
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
            return Err(JobError::NoRestorer { cluster: cluster.into(), region: primary_region });
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
            point,
            ..Default::default()
        };
        rec.id = {
            // Held also across the check, so that two starts cannot both pass it.
            let _no_move = self.node.hold_leadership().await;
            self.one_at_a_time(JobKind::RecoveryTest, cluster)?;
            self.record(Command::RecoveryTest { record: Box::new(rec.clone()) }).await?
        };
        self.running().insert((JobKind::RecoveryTest, rec.id), 0);
        self.agents.events.emit(
            EventKind::RecoveryTest,
            cluster,
            member,
            format!("recovery test {} started: backup {} on {member}", rec.id, backup.id),
        );
        let body = command::Body::RecoveryTest(RecoveryTestJob {
            test_id: rec.id,
            point: Some(drc_proto::jobs::point_out(point, Timeline::Latest)),
            ..source
        });
        let this = Arc::clone(self);
        let job = rec.clone();
        tokio::spawn(async move {
            let result = this.command(Some((JobKind::RecoveryTest, job.id)), &job.member, &job.cluster, body).await;
            let mut done = job.clone();
            done.finished_at = wall_now_ms();
            let found = answer(result, JobKind::RecoveryTest, |f| match f {
                Found::RecoveryTest(found) => Ok(found),
                other => Err(other),
            });
            match found {
                Ok(found) => {
                    done.state = JobState::Done;
                    done.rto_ms = found.rto_ms;
                    done.rpo_ms = found.rpo_ms.unwrap_or(0);
                    done.checks = found.checks.into_iter().collect();
                }
                Err(e) => (done.state, done.error) = (JobState::Failed, e),
            }
            let what = match done.state {
                JobState::Done => format!("recovery test {} passed: RTO {} ms, RPO {} ms", done.id, done.rto_ms, done.rpo_ms),
                _ => format!("recovery test {} failed: {}", done.id, done.error),
            };
            let record = Command::RecoveryTest { record: Box::new(done.clone()) };
            this.end((JobKind::RecoveryTest, done.id), record, &done.cluster, &done.member, what).await;
        });
        Ok(rec)
    }
}

/// Whether `backup` left its WAL to the archive: it restores only with it.
pub(super) fn needs_archive(backup: &drc_model::job::BackupRecord) -> bool {
    backup.manifest["wal"] == "archive"
}

/// What a restore of `backup` needs: its objects and hashes, the cluster's
/// checks, and the archived WAL after it.
pub(super) fn source_of(
    node: &crate::raft::NodeHandle,
    c: &drc_model::topology::Cluster,
    backup: &drc_model::job::BackupRecord,
) -> RecoveryTestJob {
    let data_time = backup.manifest.get("finished_at_ms").and_then(|v| v.as_u64()).unwrap_or(backup.finished_at);
    RecoveryTestJob {
        destination: backup.destination.clone(),
        data_key: backup.data_key.clone(),
        sha256: backup.sha256.clone(),
        kind: c.kind.as_str().to_string(),
        check_tables: c.backup.check_tables.clone(),
        checks: c
            .backup
            .checks
            .iter()
            .map(|k| RestoreCheck { name: k.name.clone(), query: k.query.clone(), expect: k.expect.clone() })
            .collect(),
        raw_bytes: backup.raw_bytes,
        stored_bytes: backup.stored_bytes,
        data_time_ms: data_time,
        manifest_key: backup.manifest_key.clone(),
        part_size: backup.manifest["objects"][0]["part_size"].as_u64().unwrap_or(0),
        parts_root: backup.manifest["objects"][0]["parts_root"].as_str().unwrap_or_default().to_string(),
        ..wal_replay(node, &backup.cluster, backup)
    }
}

/// The archived WAL a recovery test of `backup` replays: this database's
/// archive in every bucket holding some of it, from the backup's start on.
fn wal_replay(node: &crate::raft::NodeHandle, cluster: &str, backup: &drc_model::job::BackupRecord) -> RecoveryTestJob {
    let start = backup.manifest["lsn_start"].as_str().and_then(|l| l.parse::<drc_model::wal::Lsn>().ok());
    let (Some(start), true) = (start, backup.kind == "postgres") else { return RecoveryTestJob::default() };
    node.store().with_state(|sm| {
        let dataset = sm.records.get(cluster).map(|r| r.dataset.clone()).unwrap_or_default();
        let key = format!("{}/{dataset}", crate::core::wal_prefix(cluster));
        let mut held: Vec<&drc_model::archive::WalArchive> =
            sm.wal_archives.values().filter(|a| a.cluster == cluster && a.system_id == dataset && !dataset.is_empty()).collect();
        held.sort_by_key(|a| std::cmp::Reverse(a.updated_at));
        if held.is_empty() {
            return RecoveryTestJob::default();
        }
        RecoveryTestJob {
            wal_key: key,
            wal_destinations: held.iter().map(|a| a.destination.clone()).collect(),
            wal_start: start.0,
            ..Default::default()
        }
    })
}
