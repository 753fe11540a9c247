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
mod restore;
mod s3;

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};

use crate::config::{AgentConfig, DestinationConfig};

pub use pipeline::{backup, delete};
pub use restore::{clean_leftovers, recovery_test};
pub(crate) use s3::{client, s3_error};

/// The environment a libpq tool (pg_basebackup, pg_receivewal) needs for a
/// replication connection to the cluster: the password, TLS settings, and
/// the replication role's passfile.
pub(crate) fn libpq_env(cfg: &AgentConfig, c: &mut Command) {
    let conn = &cfg.connection;
    if let Ok(Some(p)) = conn.password() {
        c.env("PGPASSWORD", p);
    }
    if let Some(t) = &conn.tls {
        c.envs(t.libpq_env());
    }
    if let Some(f) = cfg.postgres.as_ref().and_then(|pg| pg.replication_passfile.as_ref()) {
        c.env("PGPASSFILE", f);
    }
}

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

pub(crate) fn destination<'a>(cfg: &'a AgentConfig, name: &str) -> Result<&'a DestinationConfig, String> {
    cfg.destinations
        .iter()
        .find(|d| d.name == name)
        .ok_or_else(|| format!("destination {name:?} is not configured on agent {} (add [[destinations]] name = {name:?})", cfg.member_id))
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
pub(crate) struct Proc {
    child: Child,
    stderr: Option<tokio::task::JoinHandle<String>>,
}

impl std::ops::Deref for Proc {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

/// The first 256 KiB of what a stage wrote to stderr, read to its end.
pub(super) async fn drain(mut e: tokio::process::ChildStderr) -> String {
    const KEEP: usize = 256 * 1024;
    let (mut kept, mut buf) = (Vec::new(), vec![0u8; 16 * 1024]);
    while let Ok(n) = e.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = KEEP.saturating_sub(kept.len()).min(n);
        kept.extend_from_slice(&buf[..room]);
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// A stage's stderr (the end of it, for an error message: last 5 lines).
pub(crate) async fn stderr_of(p: &mut Proc) -> String {
    let s = stderr_text(p).await;
    s.trim().lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join(" / ")
}

/// The whole captured stderr of a stage.
pub(super) async fn stderr_text(p: &mut Proc) -> String {
    match p.stderr.take() {
        Some(h) => h.await.unwrap_or_default(),
        None => String::new(),
    }
}

pub(crate) fn spawn(cmd: &mut Command, what: &str) -> Result<Proc, String> {
    let mut child = cmd.kill_on_drop(true).spawn().map_err(|e| format!("cannot start {what}: {e}"))?;
    let stderr = child.stderr.take().map(|e| tokio::spawn(drain(e)));
    Ok(Proc { child, stderr })
}

/// Every process must have succeeded, or the output is not a backup.
pub(super) async fn wait_all(children: &mut [(&str, &mut Proc)]) -> Result<(), String> {
    for (what, c) in children.iter_mut() {
        let s = c.wait().await.map_err(|e| e.to_string())?;
        if !s.success() {
            return Err(format!("{what} failed ({s}): {}", stderr_of(c).await));
        }
    }
    Ok(())
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
