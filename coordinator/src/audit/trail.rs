//! Follows the replicated audit trail on every node: appends each entry,
//! once its outcome is known and in id order, to the configured JSON-lines
//! file for a SIEM; on the leader, also shows it in `drctl watch` and closes
//! entries whose runner died before recording their outcome.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use drc_model::audit::{AuditEntry, AuditOutcome};
use drc_model::time::wall_now_ms;
use tokio_util::sync::CancellationToken;

use super::Auditor;
use crate::agents::{EventBus, EventKind};
use crate::raft::{NodeHandle, Role};

/// A pending entry older than this lost its runner: no request runs so long.
pub const STALE: Duration = Duration::from_secs(60);

/// How often the trail is looked at without any Raft progress.
const PERIOD: Duration = Duration::from_secs(5);

/// The JSON-lines file: one entry per line, in id order, each once.
pub struct AuditFile {
    path: PathBuf,
    /// The next id to write.
    next: u64,
}

impl AuditFile {
    /// Opens (or creates, readable by its owner only) the file and finds
    /// where it left off: after the last entry it holds.
    pub fn open(path: PathBuf) -> std::io::Result<Self> {
        let mut f = append(&path)?;
        let len = f.metadata()?.len();
        let tail_start = len.saturating_sub(64 * 1024);
        f.seek(SeekFrom::Start(tail_start))?;
        let mut tail = String::new();
        f.take(64 * 1024).read_to_string(&mut tail).map_err(|e| std::io::Error::other(format!("reading {}: {e}", path.display())))?;
        let last = tail.lines().rev().find_map(|l| serde_json::from_str::<AuditEntry>(l).ok()).map(|e| e.id).unwrap_or(0);
        Ok(AuditFile { path, next: last + 1 })
    }

    /// Appends entries in order and syncs them. The file is reopened each
    /// time, so that a log rotation that moves it is followed.
    fn write(&mut self, node: u64, entries: &[AuditEntry]) -> std::io::Result<()> {
        let ready: Vec<&AuditEntry> = ready(self.next, entries).collect();
        let Some(last) = ready.last() else { return Ok(()) };
        let mut text = String::new();
        for e in &ready {
            let mut v = serde_json::to_value(e).map_err(std::io::Error::other)?;
            v["written_by"] = node.into();
            text.push_str(&v.to_string());
            text.push('\n');
        }
        let mut f = append(&self.path)?;
        f.write_all(text.as_bytes())?;
        f.sync_data()?;
        self.next = last.id + 1;
        Ok(())
    }
}

fn append(path: &PathBuf) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().read(true).append(true).create(true).mode(0o600).open(path)
}

/// The entries from id `from` on that have their outcome, up to the first
/// still pending: the trail is shown in order.
fn ready(from: u64, entries: &[AuditEntry]) -> impl Iterator<Item = &AuditEntry> {
    entries.iter().filter(move |e| e.id >= from).take_while(|e| !e.outcome.is_pending())
}

/// One line for `drctl watch`.
fn describe(e: &AuditEntry) -> String {
    let outcome = &e.outcome;
    let via = if e.via != e.ran_on { format!(" via node {}", e.via) } else { String::new() };
    format!("#{} {} {}{via}: {outcome}", e.id, e.caller, e.action)
}

/// Runs until `cancel`.
pub async fn run(node: NodeHandle, auditor: Arc<Auditor>, events: Arc<EventBus>, mut file: Option<AuditFile>, cancel: CancellationToken) {
    let me = node.status().id;
    // Watchers see what is recorded from now on.
    let mut shown = node.store().with_state(|sm| sm.last_ids.audit) + 1;
    let mut status = node.watch_status();
    let mut tick = tokio::time::interval(PERIOD);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = status.changed() => if r.is_err() { return },
            _ = tick.tick() => {}
        }
        let from = file.as_ref().map_or(shown, |f| f.next.min(shown));
        let entries: Vec<AuditEntry> = node.store().with_state(|sm| sm.audit.range(from..).map(|(_, e)| e.clone()).collect());
        if entries.is_empty() {
            continue;
        }
        if let Some(f) = file.as_mut() {
            if let Err(e) = f.write(me, &entries) {
                tracing::error!(path = %f.path.display(), error = %e, "cannot write the audit file; retrying");
            }
        }
        let leading = node.status().role == Role::Leader;
        for e in ready(shown, &entries) {
            if leading {
                events.emit(EventKind::Audit, &e.cluster, "", describe(e));
            }
            shown = e.id + 1;
        }
        if leading {
            close_stale(&auditor, &entries).await;
        }
    }
}

/// Closes pending entries recorded more than [`STALE`] ago.
async fn close_stale(auditor: &Auditor, entries: &[AuditEntry]) {
    let now = wall_now_ms();
    for e in entries.iter().filter(|e| e.outcome.is_pending() && now.saturating_sub(e.at) > STALE.as_millis() as u64) {
        let reason = format!(
            "node {} did not record what came of it within {}; see the history and the jobs",
            e.ran_on,
            humantime::format_duration(STALE)
        );
        match auditor.close(e.id, AuditOutcome::Unknown { reason }).await {
            Ok(()) => tracing::warn!(audit = e.id, node = e.ran_on, "closed an audit entry whose runner is gone"),
            Err(err) => tracing::warn!(audit = e.id, error = %err.message(), "could not close a stale audit entry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drc_model::audit::AuditAction;

    fn entry(id: u64, outcome: AuditOutcome) -> AuditEntry {
        AuditEntry {
            id,
            at: 1,
            finished_at: 2,
            caller: "drc://lab/operator/alice".into(),
            role: "operator".into(),
            via: 1,
            ran_on: 1,
            action: AuditAction::Pause,
            cluster: "pg".into(),
            request: Default::default(),
            outcome,
        }
    }

    #[test]
    fn the_file_gets_each_finished_entry_once_in_id_order_and_resumes_after_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let done = || AuditOutcome::Done { detail: "ok".into() };
        let mut f = AuditFile::open(path.clone()).expect("opens");
        f.write(1, &[entry(1, done()), entry(2, AuditOutcome::Pending), entry(3, done())]).expect("writes");
        f.write(1, &[entry(2, done()), entry(3, done()), entry(5, done())]).expect("writes");
        let mut again = AuditFile::open(path.clone()).expect("reopens");
        assert_eq!(again.next, 6, "a restarted node goes on after the last entry written");
        again.write(1, &[entry(5, done()), entry(6, done())]).expect("writes");
        let ids: Vec<u64> = std::fs::read_to_string(&path)
            .expect("reads")
            .lines()
            .map(|l| serde_json::from_str::<AuditEntry>(l).expect("an entry per line").id)
            .collect();
        assert_eq!(ids, vec![1, 2, 3, 5, 6], "3 waits for 2; 4 was dropped by retention; none twice");
    }
}
