//! The WAL archiver: when the leader makes this agent its cluster's
//! archiver, it runs `pg_receivewal` against whichever member the latest
//! ClusterView names as primary, on the physical slot [`SLOT`], and uploads
//! what arrives every `[archive] upload_every` ([`upload`]). The slot keeps
//! the primary's WAL until pg_receivewal has it (bounded by the primary's
//! `max_slot_wal_keep_size`); what is received and not yet uploaded waits in
//! `[archive] dir` and is counted in the samples' `archive.pending_bytes`.

pub mod fetch;
pub mod layout;
pub mod prune;
mod receiver;
pub mod replay;
pub mod seal;
mod upload;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drc_proto::{ArchiveStatus, ArchiveWal, ClusterView, Sample};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, Kind};

/// The primary's physical replication slot the archiver streams from.
pub const SLOT: &str = drc_proto::ARCHIVE_SLOT;

/// Probes of the primary's position kept to tell the archive's lag in time.
const SEEN_KEPT: usize = 2400;

pub struct Archiver {
    cfg: Arc<AgentConfig>,
    assignment: watch::Sender<Option<ArchiveWal>>,
    status: Mutex<Option<ArchiveStatus>>,
    /// When the primary was seen at which position, oldest first, from the
    /// first position not yet archived.
    seen: Mutex<VecDeque<(Instant, u64)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Archiver {
    pub fn new(cfg: Arc<AgentConfig>) -> Arc<Self> {
        Arc::new(Archiver { cfg, assignment: watch::channel(None).0, status: Mutex::new(None), seen: Mutex::new(VecDeque::new()) })
    }

    /// Takes the leader's assignment; starting or stopping happens in [`Archiver::run`].
    pub fn assign(&self, a: &ArchiveWal) -> Result<(), String> {
        if a.run {
            if self.cfg.kind != Kind::Postgres {
                return Err("WAL archiving is for PostgreSQL members".into());
            }
            if self.cfg.postgres.is_none() {
                return Err("WAL archiving: this agent has no [postgres] section (bin_dir, replication_user)".into());
            }
            crate::s3::destination(&self.cfg, &a.destination)?;
            if a.prefix.is_empty() || a.recipients.iter().all(String::is_empty) {
                return Err("WAL archiving needs a key prefix and an age recipient".into());
            }
        }
        let changed = self.assignment.send_if_modified(|now| {
            let next = a.run.then(|| a.clone());
            let changed = *now != next;
            *now = next;
            changed
        });
        if changed {
            tracing::info!(run = a.run, destination = %a.destination, prefix = %a.prefix, "WAL archiver assignment");
        }
        Ok(())
    }

    /// Adds the archiver's status to a sample, with its lag in time: how
    /// long ago the primary was first seen past what the bucket holds.
    pub fn stamp(&self, sample: &mut Sample) {
        let Some(mut status) = lock(&self.status).clone() else { return };
        let primary = if sample.role == "primary" { sample.position } else { sample.primary_position };
        let now = Instant::now();
        let mut seen = lock(&self.seen);
        if primary > 0 && seen.back().is_none_or(|(_, p)| *p < primary) {
            if seen.len() == SEEN_KEPT {
                seen.pop_front();
            }
            seen.push_back((now, primary));
        }
        while seen.front().is_some_and(|(_, p)| *p <= status.end) {
            seen.pop_front();
        }
        status.lag_ms = match seen.front() {
            Some((at, _)) if status.running => now.duration_since(*at).as_millis() as u64,
            _ => 0,
        };
        sample.archive = Some(status);
    }

    fn set_status(&self, f: impl FnOnce(&mut ArchiveStatus)) {
        let mut status = lock(&self.status);
        f(status.get_or_insert_with(ArchiveStatus::default));
    }

    /// Archives while assigned, following the primary; returns on `cancel`.
    pub async fn run(
        self: Arc<Self>,
        views: watch::Receiver<Option<ClusterView>>,
        dataset: watch::Receiver<(String, String)>,
        cancel: CancellationToken,
    ) {
        let mut assignment = self.assignment.subscribe();
        let mut views = views;
        loop {
            let job = assignment.borrow_and_update().clone();
            let source = views.borrow_and_update().as_ref().and_then(|v| receiver::source(&self.cfg, v));
            let system_id = dataset.borrow().0.clone();
            match (job, source) {
                (Some(job), Some(source)) if !system_id.is_empty() => {
                    let run = receiver::Run { cfg: &self.cfg, archiver: &self, job: &job, source: &source, system_id: &system_id };
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = assignment.changed() => {}
                        _ = primary_moved(&mut views, &source) => {}
                        _ = run.archive() => {}
                    }
                }
                (job, _) => {
                    self.set_status(|s| s.running = false);
                    if job.is_none() {
                        *lock(&self.status) = None;
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = assignment.changed() => {}
                        _ = views.changed() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }
}

/// Resolves when the primary's address is no longer `source`.
async fn primary_moved(views: &mut watch::Receiver<Option<ClusterView>>, source: &receiver::Source) {
    loop {
        if views.changed().await.is_err() {
            return std::future::pending().await;
        }
        let now = views.borrow_and_update().as_ref().map(|v| v.primary_address.clone());
        if now.as_deref() != Some(source.address.as_str()) {
            return;
        }
    }
}
