//! Starting a backup: the source member and the destination.

use std::sync::Arc;
use std::time::Instant;

use drc_model::job::{BackupRecord, JobKind, JobState};
use drc_model::time::wall_now_ms;
use drc_model::topology::{BackupWal, ClusterKind, Topology};
use drc_model::wal::Lsn;
use drc_model::Millis;

use crate::agents::EventKind;
use crate::state::Command;
use drc_proto::command_result::Found;
use drc_proto::{command, BackupJob};

use super::{answer, JobError, Jobs};

/// How long a backup that left its WAL to the archive waits for it there.
const ARCHIVE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

impl Jobs {
    /// Starts a backup of `cluster`; returns its record (state running).
    /// `scheduled_at`: the schedule occurrence behind it, 0 for an operator.
    pub async fn start_backup(
        self: &Arc<Self>,
        cluster: &str,
        destination: Option<&str>,
        scheduled_at: Millis,
    ) -> Result<BackupRecord, JobError> {
        let trigger = if scheduled_at == 0 { "operator" } else { "schedule" };
        let (topology, primary) = self
            .node
            .store()
            .with_state(|sm| (sm.topology.clone(), sm.records.get(cluster).map(|r| r.primary.clone()).unwrap_or_default()));
        let c = topology.clusters.get(cluster).ok_or_else(|| JobError::UnknownCluster(cluster.into()))?;
        let policy = &c.backup;
        if policy.destinations.is_empty() {
            return Err(JobError::NoDestinations(cluster.into()));
        }
        if let Some(d) = destination {
            if !topology.destinations.contains_key(d) {
                return Err(JobError::UnknownDestination(d.into()));
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
            // Held also across the check, so that two starts cannot both pass it.
            let _no_move = self.node.hold_leadership().await;
            self.one_at_a_time(JobKind::Backup, cluster)?;
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
        let recipients = policy.recipients.clone();
        let wal_from_archive = policy.wal == BackupWal::Archive && c.kind == ClusterKind::Postgres;
        let job = rec.clone();
        tokio::spawn(async move {
            let body = command::Body::Backup(BackupJob {
                backup_id: job.id,
                destination: job.destination.clone(),
                prefix: job.prefix.clone(),
                recipients,
                wal_from_archive,
            });
            let result = this.command(Some((JobKind::Backup, job.id)), &job.member, &job.cluster, body).await;
            let mut done = job.clone();
            done.finished_at = wall_now_ms();
            let made = answer(result, JobKind::Backup, |f| match f {
                Found::Backup(made) => Ok(made),
                other => Err(other),
            });
            let made = made.and_then(|m| {
                let manifest =
                    serde_json::from_str(&m.manifest_json).map_err(|e| format!("the agent reported a manifest that is not JSON: {e}"))?;
                Ok((m, manifest))
            });
            match made {
                Ok((made, manifest)) => {
                    done.state = JobState::Done;
                    done.manifest = manifest;
                    done.data_key = made.data_key;
                    done.manifest_key = made.manifest_key;
                    done.sha256 = made.sha256;
                    done.raw_bytes = made.raw_bytes;
                    done.stored_bytes = made.stored_bytes;
                    if wal_from_archive {
                        if let Err(e) = this.archived_through(&done).await {
                            (done.state, done.error) = (JobState::Failed, e);
                        }
                    }
                }
                Err(e) => (done.state, done.error) = (JobState::Failed, e),
            }
            let what = match done.state {
                JobState::Done => format!("backup {} done: {} bytes raw, {} stored", done.id, done.raw_bytes, done.stored_bytes),
                _ => format!("backup {} failed: {}", done.id, done.error),
            };
            let record = Command::Backup { record: Box::new(done.clone()) };
            this.end((JobKind::Backup, done.id), record, &done.cluster, &done.member, what).await;
            if done.state == JobState::Done {
                this.retain(&done.cluster).await;
            }
        });
        Ok(rec)
    }

    /// A backup that left its WAL to the archive is done once the archive
    /// holds that WAL, to the backup's end.
    async fn archived_through(&self, b: &BackupRecord) -> Result<(), String> {
        let end = b.manifest["lsn_end"].as_str().and_then(|l| l.parse::<Lsn>().ok()).ok_or("the backup reported no end LSN")?;
        let deadline = Instant::now() + ARCHIVE_WAIT;
        loop {
            let reach = self.node.store().with_state(|sm| sm.archive_reach(&b.cluster));
            if reach.is_some_and(|r| r >= end) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let at = reach.map_or_else(|| "holds nothing of this dataset".to_string(), |r| format!("reaches {r}"));
                return Err(format!(
                    "the backup left its WAL to the archive (wal = \"archive\"), which did not reach its end {end} within {} s: the archive {at}",
                    ARCHIVE_WAIT.as_secs()
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }

    /// The member to back up and the destination: a healthy replica (least
    /// lag first) with a destination outside its region, else the primary if
    /// allowed.
    fn source(&self, t: &Topology, cluster: &str, primary: &str, wanted: Option<&str>) -> Result<(String, String, String), JobError> {
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
        let why = format!("{why}{}", if policy.allow_primary { "" } else { " (allow_primary is off)" });
        Err(JobError::NoSource { cluster: cluster.into(), why })
    }
}
