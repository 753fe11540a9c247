//! A recovery test: stream the backup back, check its SHA-256, decrypt,
//! decompress into a scratch directory, start a scratch server, check it,
//! and always remove it.

use std::path::Path;
use std::time::Instant;

use drc_proto::RecoveryTestJob;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::checks::{check_postgres, check_redis};
use super::s3::{client, s3_error, Ranged};
use super::*;

/// Restores a backup into a scratch instance, checks it, measures RTO and
/// RPO, and removes the instance whatever happened.
pub async fn recovery_test(cfg: &AgentConfig, job: &RecoveryTestJob, meter: &Meter) -> Result<Output, String> {
    let scratch = cfg.backup.scratch_dir.join(format!("drc-restore-{}", job.test_id));
    let result = restore_and_check(cfg, job, &scratch, meter).await;
    remove_scratch(cfg, &scratch).await;
    if let Err(e) = &result {
        tracing::warn!(error = %e, "recovery test failed; scratch instance removed");
    }
    result
}

/// The pid of the server running on `data`, from its `postmaster.pid`, but
/// only if that process runs in `data` (a postmaster's working directory is
/// its data directory): restored data may carry a `postmaster.pid` that
/// names any process, a production server's included.
fn scratch_postmaster(data: &Path) -> Option<i32> {
    let pid = crate::process::postmaster_pid(data).filter(|p| *p > 0)?;
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
    (cwd == data.canonicalize().ok()?).then_some(pid)
}

/// Stops whatever a scratch directory runs and removes it.
pub(super) async fn remove_scratch(cfg: &AgentConfig, scratch: &Path) {
    let data = scratch.join("data");
    if scratch_postmaster(&data).is_some() {
        if let Some(pg) = &cfg.postgres {
            let d = data.to_string_lossy().to_string();
            let _ = crate::process::run_as(&pg.run_as, &pg.bin_dir.join("pg_ctl"), &["-D", &d, "stop", "-m", "immediate", "-w"]).await;
        }
    }
    if let Ok(pid) = std::fs::read_to_string(scratch.join("redis.pid")) {
        if let Ok(pid) = pid.trim().parse::<i32>() {
            if std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with("redis")) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status().await;
            }
        }
    }
    if scratch.exists() {
        if let Err(e) = tokio::fs::remove_dir_all(scratch).await {
            tracing::error!(dir = %scratch.display(), error = %e, "cannot remove a scratch directory");
        }
    }
}

/// At agent start: recovery tests interrupted by a restart leave nothing.
pub async fn clean_leftovers(cfg: &AgentConfig) {
    let Ok(mut dir) = tokio::fs::read_dir(&cfg.backup.scratch_dir).await else { return };
    while let Ok(Some(e)) = dir.next_entry().await {
        if e.file_name().to_string_lossy().starts_with("drc-restore-") {
            tracing::warn!(dir = %e.path().display(), "removing the scratch instance of an interrupted recovery test");
            remove_scratch(cfg, &e.path()).await;
        }
    }
}

pub(super) fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).map_err(|e| format!("no free port: {e}"))
}

/// Free bytes for an unprivileged writer in `dir`'s file system.
pub(super) fn free_space(dir: &Path) -> Result<u64, String> {
    let s = rustix::fs::statvfs(dir).map_err(|e| format!("statvfs {}: {e}", dir.display()))?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

pub(super) const NO_SPACE: &str = "No space left on device";

/// Says which disk filled up: a restore that fails for lack of space must
/// say so, not only "tar failed" or "the scratch PostgreSQL did not start".
pub(super) fn disk_full(e: String, scratch: &Path) -> String {
    let full = free_space(scratch).is_ok_and(|free| free < 1 << 20);
    if e.contains(NO_SPACE) || full {
        format!("disk full in the scratch directory {}: {e}", scratch.display())
    } else {
        e
    }
}

pub(super) async fn restore_and_check(cfg: &AgentConfig, job: &RecoveryTestJob, scratch: &Path, meter: &Meter) -> Result<Output, String> {
    restore_and_check_inner(cfg, job, scratch, meter).await.map_err(|e| disk_full(e, scratch))
}

pub(super) async fn restore_and_check_inner(
    cfg: &AgentConfig,
    job: &RecoveryTestJob,
    scratch: &Path,
    meter: &Meter,
) -> Result<Output, String> {
    let started = Instant::now();
    let started_ms = now_ms();
    let dest = destination(cfg, required(&job.destination, "destination")?)?;
    let key = required(&job.data_key, "data key")?;
    let expected = required(&job.sha256, "SHA-256")?;
    let kind = required(&job.kind, "kind")?;
    let identity = cfg
        .backup
        .identity_file
        .as_ref()
        .ok_or_else(|| format!("agent {} has no [backup] identity_file: it cannot decrypt backups", cfg.member_id))?;
    if !identity.exists() {
        return Err(format!("age identity file {} does not exist", identity.display()));
    }
    let _ = tokio::fs::remove_dir_all(scratch).await;
    let data = scratch.join("data");
    tokio::fs::create_dir_all(&data).await.map_err(|e| format!("creating {}: {e}", data.display()))?;
    // The restored data is about the backup's raw size: refuse at once when
    // it cannot fit, rather than after downloading most of it.
    let raw = job.raw_bytes;
    let free = free_space(scratch)?;
    if raw > free {
        return Err(format!(
            "disk full: the scratch directory {} has {} MiB free, the backup needs {} MiB",
            cfg.backup.scratch_dir.display(),
            free >> 20,
            raw.div_ceil(1 << 20)
        ));
    }
    meter.phase("download", job.stored_bytes);
    let client = client(dest)?;
    let head = client.head_object().bucket(&dest.bucket).key(key).send().await.map_err(|e| s3_error(&format!("reading {key}"), dest, e))?;
    let size = head.content_length().unwrap_or(0).max(0) as u64;
    let mut body = Ranged::new(client, dest, key, size, cfg.backup.part_size_mib.max(1) << 20, cfg.backup.upload_concurrency.max(1));

    let mut age = spawn(
        Command::new("age").arg("-d").arg("-i").arg(identity).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()),
        "age",
    )?;
    let aout: Stdio = age.stdout.take().ok_or("age: no stdout")?.try_into().map_err(|e| format!("age stdout: {e}"))?;
    let mut zstd = Command::new("zstd");
    zstd.args(["-q", "-d", "-c"]).stdin(aout).stderr(Stdio::piped());
    let mut sink = if kind == "postgres" {
        let mut zstd = spawn(zstd.stdout(Stdio::piped()), "zstd")?;
        let zout: Stdio = zstd.stdout.take().ok_or("zstd: no stdout")?.try_into().map_err(|e| format!("zstd stdout: {e}"))?;
        let tar = spawn(Command::new("tar").arg("-x").arg("-C").arg(&data).stdin(zout).stderr(Stdio::piped()), "tar")?;
        vec![("zstd", zstd), ("tar", tar)]
    } else {
        let file = std::fs::File::create(data.join("dump.rdb")).map_err(|e| format!("creating dump.rdb: {e}"))?;
        vec![("zstd", spawn(zstd.stdout(file), "zstd")?)]
    };

    // Object → age, hashing on the way.
    let mut hash = Sha256::new();
    let mut fed: Result<u64, String> = Ok(0);
    if let Some(mut ain) = age.stdin.take() {
        let mut n = 0u64;
        loop {
            match body.next().await {
                Ok(Some(chunk)) => {
                    hash.update(&chunk);
                    n += chunk.len() as u64;
                    meter.add(chunk.len() as u64);
                    if let Err(e) = ain.write_all(&chunk).await {
                        // age stopped reading (bad data or identity): go on
                        // hashing, the checksum says more than a broken pipe.
                        fed = Err(format!("age stopped reading: {e}"));
                        while let Ok(Some(rest)) = body.next().await {
                            hash.update(&rest);
                        }
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    fed = Err(e);
                    break;
                }
            }
        }
        drop(ain);
        if fed.is_ok() {
            fed = Ok(n);
        }
    }
    let got = hex(&hash.finalize());
    if got != expected {
        for (_, c) in sink.iter_mut() {
            let _ = c.kill().await;
        }
        return Err(format!("checksum mismatch for object s3://{}/{key}: expected sha256 {expected}, got {got}", dest.bucket));
    }
    // Every stage's failure, in pipeline order; a full disk downstream
    // breaks the pipes upstream, so it is the one to report.
    let mut errors = Vec::new();
    let a = age.wait().await.map_err(|e| e.to_string())?;
    if !a.success() {
        errors.push(format!("age -d failed ({a}): {}", stderr_of(&mut age).await));
    }
    if let Err(e) = fed {
        errors.push(e);
    }
    for (what, c) in sink.iter_mut() {
        let s = c.wait().await.map_err(|e| e.to_string())?;
        if !s.success() {
            errors.push(format!("{what} failed ({s}): {}", stderr_of(c).await));
        }
    }
    if let Some(e) = errors.iter().find(|e| e.contains(NO_SPACE)).or(errors.first()) {
        return Err(e.clone());
    }
    // pg_basebackup never includes one; a restored one names no process of
    // ours (and would stop the scratch server from starting).
    let _ = std::fs::remove_file(data.join("postmaster.pid"));
    let restored_at = started.elapsed();
    meter.phase("checks", 0);

    let port = free_port()?;
    let mut out = HashMap::from([
        ("restore_ms".to_string(), restored_at.as_millis().to_string()),
        ("scratch_port".to_string(), port.to_string()),
        ("sha256".to_string(), got),
    ]);
    let user = &job.checks;
    let checks = if kind == "postgres" {
        check_postgres(cfg, &job.check_tables, scratch, port, user, started).await?
    } else {
        check_redis(scratch, port, user).await?
    };
    // RTO ends when the instance accepts connections and passed the checks
    // an application depends on; PostgreSQL's full scan (pg_amcheck) runs
    // after it and is timed on its own.
    let rto = checks.get("rto_ms").and_then(|v| v.parse().ok()).map(Duration::from_millis).unwrap_or_else(|| started.elapsed());
    out.extend(checks);
    out.insert("rto_ms".into(), rto.as_millis().to_string());
    out.insert("total_ms".into(), started.elapsed().as_millis().to_string());
    if let Some(at) = Some(job.data_time_ms).filter(|t| *t > 0) {
        out.insert("rpo_ms".into(), started_ms.saturating_sub(at).to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::scratch_postmaster;

    #[test]
    fn a_postmaster_pid_from_restored_data_names_no_process_to_stop_unless_it_runs_there() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("data");
        // A hostile backup naming another process (this test's own).
        std::fs::write(data.join("postmaster.pid"), format!("{}\n/var/lib/postgresql/15/main\n", std::process::id())).expect("pid");
        assert_eq!(scratch_postmaster(&data), None);
        // A process that does run in the scratch data directory.
        let mut child = std::process::Command::new("sleep").arg("30").current_dir(&data).spawn().expect("sleep");
        std::fs::write(data.join("postmaster.pid"), format!("{}\n", child.id())).expect("pid");
        let found = scratch_postmaster(&data);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found, Some(child.id() as i32));
        std::fs::write(data.join("postmaster.pid"), "not a pid\n").expect("pid");
        assert_eq!(scratch_postmaster(&data), None);
    }
}
