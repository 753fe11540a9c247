//! A restore to a point in time: a base backup and the archived WAL after
//! it, recovered by PostgreSQL into a new data directory on this host, up
//! to a time, a WAL position or the end of the archive; then promoted and
//! left running, apart from its cluster (no replication, no archiving, on
//! loopback). It reports where recovery actually stopped.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use drc_model::job::{RestorePoint, Timeline};
use drc_proto::{RecoveryTestJob, RestoreFound, RestoreJob};

use super::checks::{connect_restored, tail_file};
use super::restore::{free_port, unpack};
use super::target::{point_of, recovery_settings};
use super::*;
use crate::config::PostgresControl;

/// The prefetched WAL, inside the new data directory until recovery ends.
const WAL_DIR: &str = "drc_restore_wal";
/// The restored server's log, beside its data.
const LOG: &str = "drc_restore.log";

/// Restores `job` and leaves the server running; on failure, stops it and
/// removes what the restore made.
pub async fn restore(cfg: &AgentConfig, job: &RestoreJob, meter: &Meter) -> Result<RestoreFound, String> {
    let source = job.source.as_ref().ok_or("the restore names no backup")?;
    if source.kind != "postgres" {
        return Err(format!("a restore to a point is for PostgreSQL; backup of kind {:?}", source.kind));
    }
    let pg = cfg
        .postgres
        .as_ref()
        .ok_or_else(|| format!("agent {} has no [postgres] section: it cannot run a restored PostgreSQL", cfg.member_id))?;
    let (point, timeline) = point_of(job.point.as_ref())?;
    if point != RestorePoint::Latest && source.wal_key.is_empty() {
        return Err("this cluster has no WAL archive: only the newest base backup can be restored (--latest)".into());
    }
    let dir = PathBuf::from(&job.dir);
    let made = new_data_dir(cfg, pg, &dir)?;
    let result = restore_into(cfg, pg, job, source, (point, timeline), &dir, meter).await;
    if let Err(e) = &result {
        tracing::warn!(dir = %dir.display(), error = %e, "restore failed; removing what it made");
        discard(pg, &dir, made).await;
    }
    result.map_err(|e| super::restore::disk_full(e, &dir))
}

/// Checks `dir` (absolute, plain, apart from this agent's own data, archive
/// and scratch directories; missing or an empty directory) and makes it if
/// missing; whether it made it.
fn new_data_dir(cfg: &AgentConfig, pg: &PostgresControl, dir: &Path) -> Result<bool, String> {
    if !dir.is_absolute() || dir.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) {
        return Err(format!("the restore directory {:?} must be an absolute path without . or ..", dir.display().to_string()));
    }
    let real = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    // Through the nearest existing ancestor, links resolved.
    let resolved =
        dir.ancestors().find(|a| a.exists()).map_or_else(|| dir.to_path_buf(), |a| real(a).join(dir.strip_prefix(a).unwrap_or(dir)));
    for (what, own) in [("data", &pg.data_dir), ("WAL archive", &cfg.archive.dir), ("scratch", &cfg.backup.scratch_dir)] {
        let own = real(own);
        if resolved.starts_with(&own) || own.starts_with(&resolved) {
            return Err(format!("the restore directory {} overlaps this agent's {what} directory {}", dir.display(), own.display()));
        }
    }
    match std::fs::symlink_metadata(dir) {
        Ok(m) if !m.is_dir() => Err(format!("{} exists and is not a directory", dir.display())),
        Ok(_) => {
            let mut entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            if entries.next().is_some() {
                return Err(format!("{} is not empty: a restore never writes over anything", dir.display()));
            }
            Ok(false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::os::unix::fs::DirBuilderExt;
            if let Some(parent) = dir.parent() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(parent)
                    .map_err(|e| format!("creating {}: {e}", parent.display()))?;
            }
            std::fs::DirBuilder::new().mode(0o700).create(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
            Ok(true)
        }
        Err(e) => Err(format!("{}: {e}", dir.display())),
    }
}

/// Stops a server running in `dir` and removes what the restore wrote.
async fn discard(pg: &PostgresControl, dir: &Path, made: bool) {
    if super::restore::scratch_postmaster(dir).is_some() {
        let d = dir.to_string_lossy().to_string();
        let _ = crate::process::run_as(&pg.run_as, &pg.bin_dir.join("pg_ctl"), &["-D", &d, "stop", "-m", "immediate", "-w"]).await;
    }
    let removed = if made {
        std::fs::remove_dir_all(dir)
    } else {
        std::fs::read_dir(dir).and_then(|entries| {
            entries.flatten().try_for_each(|e| {
                if e.file_type()?.is_dir() {
                    std::fs::remove_dir_all(e.path())
                } else {
                    std::fs::remove_file(e.path())
                }
            })
        })
    };
    if let Err(e) = removed {
        tracing::error!(dir = %dir.display(), error = %e, "cannot remove a failed restore");
    }
}

async fn restore_into(
    cfg: &AgentConfig,
    pg: &PostgresControl,
    job: &RestoreJob,
    source: &RecoveryTestJob,
    (point, timeline): (RestorePoint, Timeline),
    dir: &Path,
    meter: &Meter,
) -> Result<RestoreFound, String> {
    unpack(cfg, source, dir, meter).await?;
    for f in ["standby.signal", "recovery.signal"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    // A data directory without its configuration (Debian keeps it in /etc):
    // the server's defaults, and local connections only.
    if !dir.join("postgresql.conf").exists() {
        std::fs::write(dir.join("postgresql.conf"), "").map_err(|e| format!("postgresql.conf: {e}"))?;
    }
    if !dir.join("pg_hba.conf").exists() {
        let hba = "local all all peer\nhost all all 127.0.0.1/32 scram-sha-256\n";
        std::fs::write(dir.join("pg_hba.conf"), hba).map_err(|e| format!("pg_hba.conf: {e}"))?;
    }
    let wal = dir.join(WAL_DIR);
    let fetched = if source.wal_key.is_empty() {
        None
    } else {
        meter.phase("wal", 0);
        let got =
            crate::archive::replay::prefetch(cfg, &source.wal_destinations, &source.wal_key, source.wal_start, &wal, |n| meter.add(n))
                .await
                .map_err(|e| format!("fetching the archived WAL: {e}"))?;
        Some(got)
    };
    let port = match u16::try_from(job.port) {
        Ok(0) => free_port()?,
        Ok(p) if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() => p,
        _ => return Err(format!("port {} is not free on this host", job.port)),
    };
    // Its socket in its directory, unless the path is too long for one
    // (107 bytes with `/.s.PGSQL.PORT`): then TCP only.
    let sock = dir.to_string_lossy().replace('\'', "''");
    let sock = if sock.len() + 18 > 107 { String::new() } else { sock };
    let mut settings = format!(
        "\n# drc restore {}: a copy apart from its cluster\nport = {port}\nlisten_addresses = '127.0.0.1'\n\
         unix_socket_directories = '{sock}'\narchive_mode = 'off'\nprimary_conninfo = ''\nprimary_slot_name = ''\n\
         synchronous_standby_names = ''\nhot_standby = 'on'\n",
        job.restore_id
    );
    if fetched.is_some() {
        settings += &recovery_settings(&wal, point, timeline);
    }
    append_settings(dir, &settings, fetched.is_some())?;
    if !pg.run_as.is_empty() {
        let owner = Command::new("chown").arg("-R").arg(&pg.run_as).arg(dir).status().await.map_err(|e| e.to_string())?;
        if !owner.success() {
            return Err(format!("chown -R {} {}: failed", pg.run_as, dir.display()));
        }
    }
    meter.phase("replay", 0);
    let mut stopped_at_end = false;
    let recovered = match start(pg, dir).await {
        Ok(()) => promoted(cfg, dir, port, source.wal_start, meter).await,
        Err(e) => Err(e),
    };
    let client = match recovered {
        Ok(c) => c,
        // Every commit archived lies before the point: recovery ends at the
        // end of the archive, which is the point as far as it holds.
        Err(_) if point != RestorePoint::Latest && logged(dir, TARGET_NOT_REACHED) => {
            tracing::info!(dir = %dir.display(), "the point lies past the archive's last commit: recovering to its end");
            drop_target(dir)?;
            stopped_at_end = true;
            start(pg, dir).await?;
            promoted(cfg, dir, port, source.wal_start, meter).await?
        }
        Err(e) => return Err(e),
    };
    let row = client
        .query_one(
            "SELECT pg_wal_lsn_diff(coalesce(pg_last_wal_replay_lsn(), pg_current_wal_lsn()), '0/0')::bigint, \
             (extract(epoch FROM pg_last_xact_replay_timestamp()) * 1000000)::bigint, \
             ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int",
            &[],
        )
        .await
        .map_err(|e| format!("reading where recovery stopped: {e}"))?;
    let reached = RestoreFound {
        reached_lsn: row.get::<_, i64>(0).max(0) as u64,
        reached_commit_us: row.get::<_, Option<i64>>(1),
        timeline: row.get::<_, i32>(2).max(0) as u32,
        port: u32::from(port),
        wal_files: fetched.as_ref().map_or(0, |f| f.files as u64),
        wal_bytes: fetched.as_ref().map_or(0, |f| f.bytes),
        stopped_at_end,
    };
    // Recovery is over: its settings and the fetched WAL go.
    for name in ["restore_command", "recovery_target_timeline", "recovery_target_time", "recovery_target_lsn", "recovery_target_action"] {
        if let Err(e) = client.batch_execute(&format!("ALTER SYSTEM RESET {name}")).await {
            tracing::warn!(setting = name, error = %e, "cannot reset a recovery setting of a restored server");
        }
    }
    let _ = client.batch_execute("SELECT pg_reload_conf()").await;
    let _ = std::fs::remove_dir_all(&wal);
    Ok(reached)
}

/// What PostgreSQL logs when the WAL ends before the recovery target.
const TARGET_NOT_REACHED: &str = "recovery ended before configured recovery target was reached";

/// Starts the restored server; one still replaying towards consistency
/// after pg_ctl gave up waiting is no failure.
async fn start(pg: &PostgresControl, dir: &Path) -> Result<(), String> {
    let (d, log) = (dir.to_string_lossy().to_string(), dir.join(LOG));
    let started = crate::process::run_as(
        &pg.run_as,
        &pg.bin_dir.join("pg_ctl"),
        &["-D", &d, "-l", &log.to_string_lossy(), "-w", "-t", "300", "start"],
    )
    .await;
    match started {
        Err(e) if super::restore::scratch_postmaster(dir).is_none() => {
            Err(format!("the restored server did not start: {e}; log: {}", tail_file(&log)))
        }
        _ => Ok(()),
    }
}

/// Whether the restored server's log says `what`.
fn logged(dir: &Path, what: &str) -> bool {
    std::fs::read_to_string(dir.join(LOG)).is_ok_and(|log| log.contains(what))
}

/// Removes the time or position to stop at from the recovery settings.
fn drop_target(dir: &Path) -> Result<(), String> {
    let auto = dir.join("postgresql.auto.conf");
    let text = std::fs::read_to_string(&auto).map_err(|e| format!("{}: {e}", auto.display()))?;
    let kept: String = text
        .lines()
        .filter(|l| !l.starts_with("recovery_target_time") && !l.starts_with("recovery_target_lsn"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&auto, kept).map_err(|e| format!("{}: {e}", auto.display()))
}

/// Waits until the server in `dir` has finished recovery and promoted,
/// reporting how far the replay has got; fails, with its log, if the server
/// stops (PostgreSQL stops when the target lies beyond the archived WAL).
async fn promoted(cfg: &AgentConfig, dir: &Path, port: u16, start: u64, meter: &Meter) -> Result<tokio_postgres::Client, String> {
    let log = dir.join(LOG);
    let stopped = || format!("the restored server stopped during recovery; log: {}", tail_file(&log));
    let mut client = None;
    loop {
        if super::restore::scratch_postmaster(dir).is_none() {
            return Err(stopped());
        }
        if client.is_none() {
            client = connect_restored(cfg, port).await.ok();
        }
        if let Some(c) = &client {
            let row = c.query_one("SELECT pg_is_in_recovery(), pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint", &[]).await;
            match row {
                Ok(r) if !r.get::<_, bool>(0) => break,
                Ok(r) => meter.set(r.get::<_, Option<i64>>(1).map_or(0, |l| (l.max(0) as u64).saturating_sub(start))),
                Err(_) => client = None,
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client.ok_or_else(stopped)
}
