//! Backups to S3-compatible object storage and recovery tests, carried out
//! by the agent on the coordinator's command.
//!
//! A backup is one stream, never a full copy on local disk:
//! `pg_basebackup -Ft -D -` (or `redis-cli --rdb -`) → `zstd` → `age`
//! (to the cluster's recipients) → an S3 multipart upload, hashed (SHA-256)
//! on the way; then a manifest object beside it. The tools are the standard
//! ones on purpose: with drc down, a human restores with `aws s3 cp`,
//! `age -d`, `zstd -d` and `tar -x` alone (runbooks/restore-by-hand.md).
//!
//! A recovery test streams the object back, checks its SHA-256, decrypts with
//! the identity that lives only on restoring agents, decompresses into a
//! scratch directory, starts a scratch server on a free loopback port, runs
//! the checks and always removes the scratch instance, also on failure and
//! after an agent restart.

mod checks;
mod pipeline;
mod point;
mod restore;
mod target;

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use crate::config::{AgentConfig, DestinationConfig};

use crate::process::{spawn, stderr_of, stderr_text, wait_all};
use crate::s3::destination;
pub use pipeline::{backup, delete};
pub use point::restore as restore_to_point;
pub use restore::{clean_leftovers, recovery_test};

pub(super) type Output = HashMap<String, String>;

/// How far a running backup or recovery test has got, read by the session
/// about once a second and sent up as `Progress`.
#[derive(Clone)]
pub struct Meter(Arc<MeterInner>);

struct MeterInner {
    started: Instant,
    done: AtomicU64,
    total: AtomicU64,
    phase: std::sync::Mutex<&'static str>,
}

impl Default for Meter {
    fn default() -> Self {
        Meter(Arc::new(MeterInner {
            started: Instant::now(),
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            phase: std::sync::Mutex::new(""),
        }))
    }
}

impl Meter {
    fn phase(&self, phase: &'static str, total: u64) {
        *self.0.phase.lock().unwrap_or_else(|p| p.into_inner()) = phase;
        self.0.total.store(total, Ordering::Relaxed);
        self.0.done.store(0, Ordering::Relaxed);
    }

    fn set(&self, n: u64) {
        self.0.done.store(n, Ordering::Relaxed);
    }

    fn add(&self, n: u64) {
        self.0.done.fetch_add(n, Ordering::Relaxed);
    }

    /// None until a phase has started.
    pub fn report(&self, command_id: u64) -> Option<drc_proto::Progress> {
        let phase = *self.0.phase.lock().unwrap_or_else(|p| p.into_inner());
        (!phase.is_empty()).then(|| drc_proto::Progress {
            command_id,
            phase: phase.to_string(),
            bytes_done: self.0.done.load(Ordering::Relaxed),
            bytes_total: self.0.total.load(Ordering::Relaxed),
            elapsed_ms: self.0.started.elapsed().as_millis() as u64,
        })
    }
}

pub(super) use drc_model::time::wall_now_ms as now_ms;

/// Appends `settings` to a restored data directory's `postgresql.auto.conf`
/// (the last value of a setting wins) and, for archive recovery, makes
/// `recovery.signal`.
pub(super) fn append_settings(data: &std::path::Path, settings: &str, recovery: bool) -> Result<(), String> {
    let auto = data.join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
    text.push_str(settings);
    std::fs::write(&auto, text).map_err(|e| format!("{}: {e}", auto.display()))?;
    if recovery {
        std::fs::write(data.join("recovery.signal"), "").map_err(|e| format!("recovery.signal: {e}"))?;
    }
    Ok(())
}

/// A field a job cannot do without: empty means the command is malformed.
pub(super) fn required<'a>(value: &'a str, what: &str) -> Result<&'a str, String> {
    Some(value).filter(|v| !v.is_empty()).ok_or_else(|| format!("the job names no {what}"))
}

/// The version line a tool prints, for the manifest.
pub(super) async fn version(program: &str, flag: &str) -> String {
    match Command::new(program).arg(flag).output().await {
        Ok(o) => {
            String::from_utf8_lossy(if o.stdout.is_empty() { &o.stderr } else { &o.stdout }).lines().next().unwrap_or("").trim().to_string()
        }
        Err(e) => format!("unknown ({e})"),
    }
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
pub(super) async fn fill(r: &mut (impl AsyncRead + Unpin), buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let k = r.read(&mut buf[n..]).await?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(n)
}

/// A pipeline stage: the process and its stderr, drained as it is written
/// (a stage that writes more than a pipe holds, such as tar reporting every
/// file it cannot write to a full disk, would otherwise block forever).
pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
