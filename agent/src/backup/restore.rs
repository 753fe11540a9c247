//! A recovery test: stream the backup back, check its SHA-256, decrypt,
//! decompress into a scratch directory, start a scratch server, check it,
//! and always remove it.

use std::path::Path;
use std::time::Instant;

use drc_proto::{RecoveryTestFound, RecoveryTestJob};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::checks::{check_postgres, check_redis, Checked};
use super::*;
use crate::s3::{client, s3_error, Ranged};

/// Restores a backup into a scratch instance, checks it, measures RTO and
/// RPO, and removes the instance whatever happened.
pub async fn recovery_test(cfg: &AgentConfig, job: &RecoveryTestJob, meter: &Meter) -> Result<RecoveryTestFound, String> {
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
pub(super) fn scratch_postmaster(data: &Path) -> Option<i32> {
    let pid = crate::process::postmaster_pid(data).filter(|p| *p > 0)?;
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
    (cwd == data.canonicalize().ok()?).then_some(pid)
}

/// Makes `scratch` afresh inside `root` and returns its empty data
/// directory. `root` must be a directory (not a link) that only its owner,
/// this agent's user or root, may write: in a directory others can write,
/// they could swap the scratch directory for a link while it is restored.
fn prepare_scratch(root: &Path, scratch: &Path) -> Result<std::path::PathBuf, String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    if !root.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(0o755).create(root).map_err(|e| format!("creating {}: {e}", root.display()))?;
    }
    let meta = std::fs::symlink_metadata(root).map_err(|e| format!("{}: {e}", root.display()))?;
    let me = rustix::process::geteuid().as_raw();
    if !meta.is_dir() {
        return Err(format!("the scratch directory {} is not a directory (a link?)", root.display()));
    }
    if meta.uid() != me && meta.uid() != 0 {
        return Err(format!(
            "the scratch directory {} belongs to uid {}, not to this agent's user (uid {me}) or root",
            root.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "the scratch directory {} may be written by other users (mode {:o}): use a directory only the agent's user may write",
            root.display(),
            meta.mode() & 0o7777
        ));
    }
    // Not following a link someone left there; then made anew, ours alone.
    match std::fs::remove_dir_all(scratch) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("removing the old {}: {e}", scratch.display())),
    }
    std::fs::DirBuilder::new().mode(0o755).create(scratch).map_err(|e| format!("creating {}: {e}", scratch.display()))?;
    let data = scratch.join("data");
    std::fs::DirBuilder::new().mode(0o700).create(&data).map_err(|e| format!("creating {}: {e}", data.display()))?;
    Ok(data)
}

/// The recorded SHA-256 of every part of the data object, from its
/// manifest object, checked against the catalog's `parts_root`; `None` for
/// a backup taken before parts were hashed.
async fn part_hashes(
    client: &aws_sdk_s3::Client,
    dest: &DestinationConfig,
    job: &RecoveryTestJob,
    size: u64,
) -> Result<Option<Vec<String>>, String> {
    if job.parts_root.is_empty() {
        return Ok(None);
    }
    let key = required(&job.manifest_key, "manifest key")?;
    if job.part_size == 0 {
        return Err("the catalog records part hashes but no part size".to_string());
    }
    let got = client.get_object().bucket(&dest.bucket).key(key).send().await.map_err(|e| s3_error(&format!("reading {key}"), dest, e))?;
    if got.content_length().unwrap_or(0) > MAX_MANIFEST_BYTES {
        return Err(format!("the manifest s3://{}/{key} is over {} MiB", dest.bucket, MAX_MANIFEST_BYTES >> 20));
    }
    let body = got.body.collect().await.map_err(|e| crate::s3::s3_error_plain(&format!("reading {key}"), dest, e))?.into_bytes();
    let manifest: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("the manifest s3://{}/{key} is not JSON: {e}", dest.bucket))?;
    let parts: Vec<String> = manifest["objects"][0]["parts_sha256"]
        .as_array()
        .map(|a| a.iter().filter_map(|h| h.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    if super::pipeline::parts_root(&parts) != job.parts_root {
        return Err(format!(
            "the part hashes in s3://{}/{key} are not those the catalog recorded: the manifest changed after the backup",
            dest.bucket
        ));
    }
    let expected = size.div_ceil(job.part_size).max(1);
    if parts.len() as u64 != expected {
        return Err(format!(
            "s3://{}/{} is {size} bytes, {expected} part(s), but the backup recorded {} part(s)",
            dest.bucket,
            job.data_key,
            parts.len()
        ));
    }
    Ok(Some(parts))
}

/// A manifest lists 64 characters per part: 16 MiB is over 250,000 parts.
const MAX_MANIFEST_BYTES: i64 = 16 << 20;

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

pub(super) async fn restore_and_check(
    cfg: &AgentConfig,
    job: &RecoveryTestJob,
    scratch: &Path,
    meter: &Meter,
) -> Result<RecoveryTestFound, String> {
    restore_and_check_inner(cfg, job, scratch, meter).await.map_err(|e| disk_full(e, scratch))
}

pub(super) async fn restore_and_check_inner(
    cfg: &AgentConfig,
    job: &RecoveryTestJob,
    scratch: &Path,
    meter: &Meter,
) -> Result<RecoveryTestFound, String> {
    let started = Instant::now();
    let started_ms = now_ms();
    let data = prepare_scratch(&cfg.backup.scratch_dir, scratch)?;
    let got = unpack(cfg, job, &data, meter).await?;
    let kind = job.kind.as_str();
    // PostgreSQL: the archived WAL after the backup, replayed to the end of
    // the archive (or to the job's point); the copy then promotes itself.
    let (point, timeline) = super::target::point_of(job.point.as_ref())?;
    let replay = if kind == "postgres" && !job.wal_key.is_empty() {
        meter.phase("wal", 0);
        let wal = scratch.join("wal");
        let got = crate::archive::replay::prefetch(cfg, &job.wal_destinations, &job.wal_key, job.wal_start, &wal, |n| meter.add(n))
            .await
            .map_err(|e| format!("fetching the archived WAL: {e}"))?;
        let settings = format!(
            "\n# drc recovery test: replay the archived WAL\nprimary_conninfo = ''\n{}",
            super::target::recovery_settings(&wal, point, timeline)
        );
        append_settings(&data, &settings, true)?;
        Some(got)
    } else {
        None
    };
    let restored_at = started.elapsed();
    meter.phase("checks", 0);

    let port = free_port()?;
    let mut out = HashMap::from([
        ("restore_ms".to_string(), restored_at.as_millis().to_string()),
        ("scratch_port".to_string(), port.to_string()),
        ("sha256".to_string(), got),
    ]);
    let user = &job.checks;
    // RTO ends when the instance accepts connections and passed the checks
    // an application depends on; PostgreSQL's full scan (pg_amcheck) runs
    // after it and is timed on its own.
    let checked = if kind == "postgres" {
        check_postgres(cfg, &job.check_tables, scratch, port, user, started, replay.is_some()).await?
    } else {
        Checked { found: check_redis(scratch, port, user).await?, rto: started.elapsed(), newest_commit_ms: None, reached_lsn: None }
    };
    out.extend(checked.found);
    out.insert("total_ms".into(), started.elapsed().as_millis().to_string());
    if let Some(r) = &replay {
        out.insert("wal_replayed".into(), format!("{} files, {:.1} MiB", r.files, r.bytes as f64 / 1048576.0));
        out.insert("target".into(), point.to_string());
    }
    if let Some(lsn) = checked.reached_lsn {
        out.insert("reached_lsn".into(), drc_model::wal::Lsn(lsn).to_string());
    }
    // The RPO: how old the newest commit the copy holds was when the test
    // started; without replay, the backup's end stands for it.
    let newest = checked.newest_commit_ms.or(Some(job.data_time_ms).filter(|t| *t > 0));
    Ok(RecoveryTestFound {
        rto_ms: checked.rto.as_millis() as u64,
        rpo_ms: newest.map(|at| started_ms.saturating_sub(at)),
        checks: out.into_iter().collect(),
    })
}

/// Streams a backup's data object back into the empty directory `data`:
/// every part checked against its recorded hash before any of it is passed
/// on, decrypted, decompressed and (PostgreSQL) unpacked as the server's OS
/// user. Returns the object's SHA-256.
pub(super) async fn unpack(cfg: &AgentConfig, job: &RecoveryTestJob, data: &Path, meter: &Meter) -> Result<String, String> {
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
    let run_as = cfg.postgres.as_ref().map(|p| p.run_as.clone()).filter(|u| !u.is_empty() && kind == "postgres");
    if let Some(user) = &run_as {
        // tar runs as the PostgreSQL OS user, not as the agent's (often root).
        let owner = Command::new("chown").arg(user).arg(data).status().await.map_err(|e| format!("chown {user}: {e}"))?;
        if !owner.success() {
            return Err(format!("chown {user} {}: failed", data.display()));
        }
    }
    // The restored data is about the backup's raw size: refuse at once when
    // it cannot fit, rather than after downloading most of it.
    let raw = job.raw_bytes;
    let free = free_space(data)?;
    if raw > free {
        return Err(format!("disk full: {} has {} MiB free, the backup needs {} MiB", data.display(), free >> 20, raw.div_ceil(1 << 20)));
    }
    meter.phase("download", job.stored_bytes);
    let client = client(dest)?;
    let head = client.head_object().bucket(&dest.bucket).key(key).send().await.map_err(|e| s3_error(&format!("reading {key}"), dest, e))?;
    let size = head.content_length().unwrap_or(0).max(0) as u64;
    let parts = part_hashes(&client, dest, job, size).await?;
    let part_size = if parts.is_some() { job.part_size as usize } else { cfg.backup.part_size_mib.max(1) << 20 };
    let mut body = Ranged::new(client, dest, key, size, part_size, cfg.backup.upload_concurrency.max(1));

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
        let mut tar = match &run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--", "tar"]);
                c
            }
            None => Command::new("tar"),
        };
        // GNU tar already refuses absolute and `..` member names and
        // defers links that point outside; owners and modes are not taken.
        tar.args(["-x", "--no-same-owner", "--no-same-permissions", "-C"]).arg(data);
        let tar = spawn(tar.stdin(zout).stderr(Stdio::piped()), "tar")?;
        vec![("zstd", zstd), ("tar", tar)]
    } else {
        let file = std::fs::File::create(data.join("dump.rdb")).map_err(|e| format!("creating dump.rdb: {e}"))?;
        vec![("zstd", spawn(zstd.stdout(file), "zstd")?)]
    };

    // Object → age. Each part is checked against its recorded hash before
    // any of it is passed on; then (the list of part hashes being the
    // catalog's, and their number the object's size) the whole object is
    // checked too. A backup without part hashes is hashed whole on the way.
    let whole = parts.is_none();
    let mut hash = Sha256::new();
    let mut fed: Result<u64, String> = Ok(0);
    let mut tampered = None;
    if let Some(mut ain) = age.stdin.take() {
        let mut n = 0u64;
        let mut index = 0;
        loop {
            match body.next().await {
                Ok(Some(chunk)) => {
                    if let Some(expected) = parts.as_ref().map(|p| p.get(index).cloned().unwrap_or_default()) {
                        let got = hex(&Sha256::digest(&chunk));
                        if got != expected {
                            tampered = Some(format!(
                                "part {} of s3://{}/{key} has sha256 {got}, the backup recorded {expected}: the object changed after the backup; nothing of that part was restored",
                                index + 1,
                                dest.bucket
                            ));
                            break;
                        }
                    }
                    index += 1;
                    if whole {
                        hash.update(&chunk);
                    }
                    n += chunk.len() as u64;
                    meter.add(chunk.len() as u64);
                    if let Err(e) = ain.write_all(&chunk).await {
                        // age stopped reading (bad data or identity): go on
                        // hashing, the checksum says more than a broken pipe.
                        fed = Err(format!("age stopped reading: {e}"));
                        while let Some(rest) = if whole { body.next().await.ok().flatten() } else { None } {
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
    let got = if whole { hex(&hash.finalize()) } else { expected.to_string() };
    let mismatch = || format!("checksum mismatch for object s3://{}/{key}: expected sha256 {expected}, got {got}", dest.bucket);
    if let Some(e) = tampered.or_else(|| (got != expected).then(mismatch)) {
        let _ = age.kill().await;
        for (_, c) in sink.iter_mut() {
            let _ = c.kill().await;
        }
        return Err(e);
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
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::{prepare_scratch, scratch_postmaster};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_scratch_directory_others_may_write_or_a_link_is_refused_and_a_leftover_link_is_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("scratch");
        let victim = dir.path().join("victim");
        std::fs::create_dir_all(&victim).expect("victim");
        std::fs::write(victim.join("keep"), "x").expect("file");
        // Made when missing; a leftover link in the test's place is removed,
        // not followed.
        std::os::unix::fs::symlink(&victim, root.join("drc-restore-1")).expect_err("no root yet");
        let data = prepare_scratch(&root, &root.join("drc-restore-1")).expect("a fresh scratch");
        assert_eq!(std::fs::metadata(&data).expect("data").permissions().mode() & 0o777, 0o700);
        std::fs::remove_dir_all(root.join("drc-restore-1")).expect("clean");
        std::os::unix::fs::symlink(&victim, root.join("drc-restore-2")).expect("a planted link");
        prepare_scratch(&root, &root.join("drc-restore-2")).expect("the link is replaced");
        assert!(victim.join("keep").exists() && !victim.join("data").exists(), "nothing happened through the link");
        // Others may write it: refused.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        let e = prepare_scratch(&root, &root.join("drc-restore-3")).expect_err("world-writable");
        assert!(e.contains("may be written by other users"), "{e}");
        // A link as the root: refused.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&victim, &link).expect("link");
        assert!(prepare_scratch(&link, &link.join("drc-restore-4")).expect_err("a link").contains("not a directory"));
    }

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
