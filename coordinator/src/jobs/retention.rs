//! Retention: which backups expire, and deleting them.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use drc_model::job::{BackupRecord, JobState};
use drc_model::time::wall_now_ms;
use drc_model::Millis;

use crate::agents::EventKind;
use crate::lock::lock;
use crate::state::Command;
use drc_model::wal::Lsn;
use drc_proto::command_result::Found;
use drc_proto::{command, DeleteBackup, PruneWal};

use super::Jobs;

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

impl Jobs {
    /// Applies the cluster's retention: deletes expired backups' objects
    /// through one of its agents, then drops them from the catalog.
    pub(super) async fn retain(self: &Arc<Self>, cluster: &str) {
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
        let refs: Vec<&BackupRecord> = backups.iter().collect();
        let max_age = policy.max_age.map(|d| d.as_millis() as Millis);
        let doomed = if policy.keep_last == 0 && policy.max_age.is_none() {
            Vec::new()
        } else {
            expired(&refs, &verified, policy.keep_last, max_age, wall_now_ms())
        };
        let obs = self.agents.board.observations_of(&topology, topology.members_of(cluster).map(|(id, _)| id), Instant::now());
        let agents: Vec<String> =
            topology.members_of(cluster).filter(|(id, _)| obs.get(*id).is_some_and(|o| o.fresh)).map(|(id, _)| id.clone()).collect();
        let kept: Vec<&BackupRecord> = refs.iter().copied().filter(|b| b.state == JobState::Done && !doomed.contains(&b.id)).collect();
        self.prune_wal(cluster, &kept, &agents).await;
        for id in doomed {
            let Some(b) = backups.iter().find(|b| b.id == id) else { continue };
            let keys = [&b.data_key, &b.manifest_key].into_iter().filter(|k| !k.is_empty()).cloned().collect();
            let job = DeleteBackup { destination: b.destination.clone(), keys };
            let mut deleted = false;
            for agent in &agents {
                match self.command(None, agent, cluster, command::Body::DeleteBackup(job.clone())).await {
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

    /// Deletes the archived WAL that no backup still kept can use: what lies
    /// before the oldest one's start. Without a completed backup, all WAL
    /// stays.
    async fn prune_wal(self: &Arc<Self>, cluster: &str, kept: &[&BackupRecord], agents: &[String]) {
        let Some(horizon) = wal_horizon(kept) else { return };
        let archives: Vec<(String, String)> = self.node.store().with_state(|sm| {
            sm.wal_archives
                .iter()
                .filter(|(_, a)| a.cluster == cluster && a.begins().is_some_and(|b| b < horizon))
                .filter_map(|(k, a)| Some((a.destination.clone(), k.split_once(':')?.1.to_string())))
                .collect()
        });
        for (destination, key) in archives {
            // Once per archive and horizon: the archive keeps the whole
            // segment the horizon falls in.
            let catalog_key = drc_model::archive::WalArchive::catalog_key(&destination, &key);
            if lock(&self.pruned).get(&catalog_key) == Some(&horizon.0) {
                continue;
            }
            let job = PruneWal { destination: destination.clone(), archive: key.clone(), before: horizon.0 };
            for agent in agents {
                match self.command(None, agent, cluster, command::Body::PruneWal(job.clone())).await {
                    Ok(Some(Found::WalPruned(p))) => {
                        let cmd = Command::WalPruned { destination: destination.clone(), key: key.clone(), from: p.kept_from };
                        lock(&self.pruned).insert(catalog_key.clone(), horizon.0);
                        if self.node.propose(cmd, self.write_timeout).await.is_ok() && p.objects_deleted > 0 {
                            let what = format!("retention deleted {} WAL objects of {key} before {}", p.objects_deleted, Lsn(p.kept_from));
                            self.agents.events.emit(EventKind::Backup, cluster, "", what);
                        }
                        break;
                    }
                    Ok(other) => tracing::warn!(%agent, ?other, "retention: the agent did not prune the WAL archive"),
                    Err(e) => tracing::warn!(%agent, error = %e, "retention: pruning the WAL archive failed; trying another agent"),
                }
            }
        }
    }
}

/// Where the oldest of `kept` starts its WAL: archived WAL before it serves
/// no restore. None without a completed PostgreSQL backup.
pub fn wal_horizon(kept: &[&BackupRecord]) -> Option<Lsn> {
    kept.iter().filter(|b| b.state == JobState::Done).filter_map(|b| b.manifest["lsn_start"].as_str()?.parse::<Lsn>().ok()).min()
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
}
