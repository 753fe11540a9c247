//! One run of the archiver against one primary: `pg_receivewal` streaming
//! into the local directory, restarted when it stops, and the uploader's
//! passes beside it.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use drc_proto::{ArchiveWal, ClusterView};
use tokio::process::Command;

use super::layout::Layout;
use super::upload::Uploader;
use super::{Archiver, SLOT};
use crate::config::AgentConfig;
use crate::process::{spawn, stderr_of};

/// Where the archiver streams from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// The primary's address as the view names it.
    pub address: String,
    pub host: String,
    pub port: u16,
}

/// The primary of `view`, reached at the local connection when it is this
/// agent's own member.
pub fn source(cfg: &AgentConfig, view: &ClusterView) -> Option<Source> {
    if view.primary_member.is_empty() || view.primary_address.is_empty() {
        return None;
    }
    let (host, port) = if view.primary_member == cfg.member_id {
        (cfg.connection.host.clone(), cfg.connection.port)
    } else {
        crate::probe::split_address(&view.primary_address)?
    };
    Some(Source { address: view.primary_address.clone(), host, port })
}

pub struct Run<'a> {
    pub cfg: &'a AgentConfig,
    pub archiver: &'a Archiver,
    pub job: &'a ArchiveWal,
    pub source: &'a Source,
    pub system_id: &'a str,
}

/// pg_receivewal's complaints that mean its directory cannot go on from
/// where it is: this primary forked before the directory's end (a failover
/// lost the old primary's last WAL), or no longer has the WAL it needs.
const CANNOT_RESUME: [&str; 2] = ["is not in this server's history", "has already been removed"];

impl Run<'_> {
    /// Archives until dropped.
    pub async fn archive(&self) {
        let dir = self.cfg.archive.dir.join(self.system_id);
        let layout = Layout::new(&self.job.prefix, self.system_id);
        let mut uploader = match self.uploader(layout.clone()) {
            Ok(u) => u,
            Err(e) => return self.failed(e).await,
        };
        if let Err(e) = std::fs::create_dir_all(&dir) {
            return self.failed(format!("creating {}: {e}", dir.display())).await;
        }
        tracing::info!(primary = %self.source.address, dir = %dir.display(), key = %layout.root(), "archiving WAL");
        loop {
            if let Err(e) = self.receivewal(&["--create-slot", "--if-not-exists"]).output().await.map_err(|e| e.to_string()).and_then(|o| {
                if o.status.success() {
                    Ok(())
                } else {
                    Err(String::from_utf8_lossy(&o.stderr).trim().to_string())
                }
            }) {
                self.report(&uploader, &layout, format!("creating the slot {SLOT} on {}: {e}", self.source.address));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            let mut child = match spawn(
                self.receivewal(&["-D"]).arg(&dir).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()),
                "pg_receivewal",
            ) {
                Ok(c) => c,
                Err(e) => return self.failed(e).await,
            };
            let mut ticker = tokio::time::interval(self.cfg.archive.upload_every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut error = String::new();
            let mut primary = None;
            let exited = loop {
                tokio::select! {
                    s = child.wait() => break s,
                    _ = ticker.tick() => {
                        let received = self.received(&mut primary).await;
                        error = uploader.pass(&dir, received).await.err().unwrap_or_default();
                        self.report(&uploader, &layout, error.clone());
                    }
                }
            };
            // What arrived before it stopped goes up first.
            error = uploader.pass(&dir, None).await.err().unwrap_or(error);
            let why = stderr_of(&mut child).await;
            tracing::warn!(status = ?exited.ok(), stderr = %why, "pg_receivewal stopped");
            if CANNOT_RESUME.iter().any(|c| why.contains(c)) && error.is_empty() {
                // Everything here is in the bucket: start again from the slot.
                tracing::warn!(dir = %dir.display(), "the primary cannot continue this directory's stream; starting afresh from its slot");
                clear(&dir);
            }
            self.report(&uploader, &layout, format!("pg_receivewal stopped: {why}"));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Where pg_receivewal last told the primary it had written to (the
    /// primary's view of the slot's stream); none when it cannot be read.
    async fn received(&self, client: &mut Option<tokio_postgres::Client>) -> Option<u64> {
        const ASK: &str = "SELECT pg_wal_lsn_diff(r.write_lsn, '0/0')::bigint FROM pg_replication_slots s \
                           JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name = $1";
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            let (host, port) = (&self.source.host, self.source.port);
            *client = crate::probe::postgres::connect(&self.cfg.connection, host, port, "drc-agent-archiver").await.ok();
        }
        let c = client.as_ref()?;
        let row = tokio::time::timeout(Duration::from_secs(1), c.query_opt(ASK, &[&SLOT])).await.ok()?.ok()??;
        row.try_get::<_, Option<i64>>(0).ok().flatten().map(|w| w.max(0) as u64)
    }

    fn uploader(&self, layout: Layout) -> Result<Uploader, String> {
        let dest = crate::s3::destination(self.cfg, &self.job.destination)?.clone();
        // One attempt per pass: the next pass is the retry.
        let client = crate::s3::client_with(&dest, self.cfg.archive.upload_timeout, 1)?;
        let recipients = self.job.recipients.iter().filter(|r| !r.is_empty()).cloned().collect();
        Ok(Uploader::new(dest, client, layout, recipients, self.cfg.backup.zstd_level))
    }

    /// `pg_receivewal` against the source on the slot, with `args`.
    fn receivewal(&self, args: &[&str]) -> Command {
        let pg = self.cfg.postgres.as_ref();
        let bin = pg.map(|p| p.bin_dir.join("pg_receivewal")).unwrap_or_else(|| "pg_receivewal".into());
        let user = pg.map(|p| p.replication_user.clone()).unwrap_or_else(|| "postgres".into());
        let mut c = Command::new(bin);
        c.args(["-h", &self.source.host, "-p", &self.source.port.to_string(), "-U", &user, "-S", SLOT, "--no-password", "-n", "-s", "1"]);
        c.args(args);
        self.cfg.libpq_env(&mut c);
        c.kill_on_drop(true);
        c
    }

    fn report(&self, uploader: &Uploader, layout: &Layout, error: String) {
        if !error.is_empty() {
            tracing::warn!(%error, "WAL archiving");
        }
        self.archiver.set_status(|s| {
            s.running = true;
            s.destination = self.job.destination.clone();
            s.prefix = layout.root().to_string();
            s.system_id = self.system_id.to_string();
            if let Some(r) = uploader.reach {
                (s.timeline, s.begin, s.end) = (r.timeline, r.begin, r.end);
            }
            s.pending_bytes = uploader.pending;
            s.error = error;
        });
    }

    /// A run that cannot start says why, and is tried again in a while.
    async fn failed(&self, error: String) {
        tracing::warn!(%error, "WAL archiving cannot start");
        self.archiver.set_status(|s| {
            s.running = true;
            s.error = error;
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Removes the stream's files (all of them are uploaded).
fn clear(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if super::layout::Local::of(&e.file_name().to_string_lossy()).is_some() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}
