//! The WAL archivers, driven by the leader. Every second it plans each
//! PostgreSQL cluster's archiving ([`archive_plan`]), tells the chosen agent
//! to archive and any other agent that still does to stop, and records in
//! the catalog how far each archive reaches. Telling is repeated every few
//! seconds: an assignment is idempotent, and an agent that reconnected or a
//! new leader needs no other hand-over.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drc_model::time::wall_now_ms;
use drc_model::topology::ClusterKind;
use drc_proto::{command, ArchiveStatus, ArchiveWal};
use tokio_util::sync::CancellationToken;

use super::Jobs;
use crate::core::{archive_plan, wal_prefix, Current};
use crate::raft::Role;
use crate::state::Command;

/// How often an assignment is repeated.
const TELL_EVERY: Duration = Duration::from_secs(5);
/// How often an archive's growth is recorded in Raft (a new timeline at once).
const RECORD_EVERY: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Memory {
    /// When each member was last told, and what.
    told: HashMap<String, (Instant, bool)>,
    /// Per catalog key: the timeline and end last recorded, and when.
    recorded: HashMap<String, (u32, u64, Instant)>,
}

impl Jobs {
    /// Drives the archivers while this node leads.
    pub async fn drive_archivers(self: Arc<Self>, cancel: CancellationToken) {
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        let mut memory = Memory::default();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = ticker.tick() => {}
            }
            if self.node.status().role != Role::Leader {
                memory = Memory::default();
                continue;
            }
            self.archive_pass(&mut memory).await;
        }
    }

    async fn archive_pass(&self, memory: &mut Memory) {
        let (topology, records) = self.node.store().with_state(|sm| (Arc::clone(&sm.topology), Arc::clone(&sm.records)));
        let now = Instant::now();
        let observations = self.agents.board.observations(&topology, now);
        for (cluster, c) in topology.clusters.iter().filter(|(_, c)| c.kind == ClusterKind::Postgres) {
            let reports: Vec<(String, ArchiveStatus)> = self.agents.board.read(now, |m| {
                topology
                    .members
                    .iter()
                    .filter(|(_, d)| &d.cluster == cluster)
                    .filter_map(|(id, _)| Some((id.clone(), m.get(id).sample?.archive.clone()?)))
                    .collect()
            });
            let current = reports.iter().find(|(_, s)| s.running).map(|(id, s)| Current { member: id, destination: &s.destination });
            let plan = archive_plan(&topology, &records, &observations, cluster, current);
            // Only what names this cluster's database and one of its
            // destinations reaches the catalog, whatever an agent reports.
            let dataset = records.get(cluster).map(|r| r.dataset.as_str()).unwrap_or_default();
            let key = format!("{}/{dataset}", wal_prefix(cluster));
            for (member, status) in &reports {
                let chosen = plan.as_ref().is_some_and(|p| &p.member == member);
                if status.running && !chosen {
                    self.tell(memory, cluster, member, ArchiveWal { run: false, ..Default::default() });
                }
                if !dataset.is_empty() && status.prefix == key && c.backup.destinations.contains(&status.destination) {
                    self.record_reach(memory, cluster, status).await;
                }
            }
            if let Some(p) = plan {
                let job = ArchiveWal { run: true, destination: p.destination, prefix: p.prefix, recipients: c.backup.recipients.clone() };
                self.tell(memory, cluster, &p.member, job);
            }
        }
    }

    /// Sends an assignment unless the same was sent within [`TELL_EVERY`].
    fn tell(&self, memory: &mut Memory, cluster: &str, member: &str, job: ArchiveWal) {
        let recent = memory.told.get(member).is_some_and(|(at, run)| *run == job.run && at.elapsed() < TELL_EVERY);
        if recent {
            return;
        }
        let run = job.run;
        let cmd = drc_proto::Command { command_id: 0, cluster: cluster.into(), epoch: 0, body: Some(command::Body::Archive(job)) };
        if self.agents.hub.notify(member, cmd) {
            memory.told.insert(member.to_string(), (Instant::now(), run));
        }
    }

    /// Records how far an archive reaches, at most every [`RECORD_EVERY`].
    async fn record_reach(&self, memory: &mut Memory, cluster: &str, s: &ArchiveStatus) {
        if s.timeline == 0 || s.end <= s.begin {
            return;
        }
        let catalog_key = drc_model::archive::WalArchive::catalog_key(&s.destination, &s.prefix);
        let due = match memory.recorded.get(&catalog_key) {
            Some((tl, end, at)) => *tl != s.timeline || (*end != s.end && at.elapsed() >= RECORD_EVERY),
            None => true,
        };
        if !due {
            return;
        }
        let cmd = Command::WalArchived {
            cluster: cluster.to_string(),
            destination: s.destination.clone(),
            key: s.prefix.clone(),
            system_id: s.system_id.clone(),
            timeline: s.timeline,
            begin: s.begin,
            end: s.end,
            at: wall_now_ms(),
        };
        match self.node.propose(cmd, self.write_timeout).await {
            Ok(_) => {
                memory.recorded.insert(catalog_key, (s.timeline, s.end, Instant::now()));
            }
            Err(e) => tracing::warn!(%cluster, error = %e, "cannot record the WAL archive's reach"),
        }
    }
}
