//! A backup as one stream: the dump → zstd → age → an S3 multipart
//! upload, hashed on the way, then its manifest; and the deletion of a
//! backup's objects.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use drc_proto::{BackupJob, BackupMade, DeleteBackup};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::*;
use crate::config::Kind;
use crate::s3::{abort, client, joined, s3_error};

/// Takes a backup of the local member and uploads it; see the module doc.
/// `estimate`: the member's data size, for progress (0 when unknown).
pub async fn backup(cfg: &AgentConfig, job: &BackupJob, meter: &Meter, estimate: u64) -> Result<BackupMade, String> {
    let dest = destination(cfg, required(&job.destination, "destination")?)?;
    let prefix = required(&job.prefix, "key prefix")?.trim_end_matches('/').to_string();
    let recipients: Vec<&str> = job.recipients.iter().map(String::as_str).filter(|r| !r.is_empty()).collect();
    if recipients.is_empty() {
        return Err("the job names no age recipient to encrypt to".into());
    }
    let client = client(dest)?;
    let started = now_ms();
    // pg_basebackup -X none logs no start point either: the redo point of
    // the source's last checkpoint before the backup is at or before it.
    let redo_before = match (cfg.kind, job.wal_from_archive) {
        (Kind::Postgres, true) => Some(position(cfg, "SELECT redo_lsn::text FROM pg_control_checkpoint()").await?),
        _ => None,
    };
    let conn = &cfg.connection;
    let (mut source, object, source_tool) = match cfg.kind {
        Kind::Postgres => {
            let pg = cfg.postgres.as_ref().ok_or("backup: this agent has no [postgres] section")?;
            let bin = pg.bin_dir.join("pg_basebackup");
            let mut c = Command::new(&bin);
            let wal = if job.wal_from_archive { "none" } else { "fetch" };
            c.args(["-h", &conn.host, "-p", &conn.port.to_string(), "-U", &pg.replication_user, "-D", "-", "-Ft", "-X", wal]).args([
                "--checkpoint=fast",
                "--no-password",
                "-v",
            ]);
            conn.password().map_err(|e| e.to_string())?;
            cfg.libpq_env(&mut c);
            (c, "base.tar.zst.age", version(&bin.to_string_lossy(), "--version").await)
        }
        Kind::Redis => {
            let mut c = Command::new("redis-cli");
            c.args(["-h", &conn.host, "-p", &conn.port.to_string(), "--rdb", "-"]);
            c.args(conn.tls.as_ref().map(|t| t.redis_cli_args()).unwrap_or_default());
            if let Some(p) = conn.password().map_err(|e| e.to_string())? {
                c.env("REDISCLI_AUTH", p);
            }
            (c, "dump.rdb.zst.age", version("redis-cli", "--version").await)
        }
    };
    let redis_offset = if cfg.kind == Kind::Redis { redis_offset(cfg).await.unwrap_or_default() } else { String::new() };
    let data_key = format!("{prefix}/{object}");
    let manifest_key = format!("{prefix}/manifest.json");

    source.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut source = spawn(&mut source, "the backup source")?;
    let mut zstd = spawn(
        Command::new("zstd")
            .args(["-q", "-c", "-T0", &format!("-{}", cfg.backup.zstd_level)])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        "zstd",
    )?;
    let zout: Stdio = zstd.stdout.take().ok_or("zstd: no stdout")?.try_into().map_err(|e| format!("zstd stdout: {e}"))?;
    let mut age_cmd = Command::new("age");
    for r in &recipients {
        age_cmd.args(["-r", r]);
    }
    let mut age = spawn(age_cmd.stdin(zout).stdout(Stdio::piped()).stderr(Stdio::piped()), "age")?;

    // Source → zstd, counting the raw bytes.
    let (mut src_out, mut zin) = (source.stdout.take().ok_or("no stdout")?, zstd.stdin.take().ok_or("no stdin")?);
    meter.phase("upload", estimate);
    let counted = meter.clone();
    let raw = tokio::spawn(async move {
        let mut buf = vec![0u8; 1024 * 1024];
        let mut n: u64 = 0;
        loop {
            let k = src_out.read(&mut buf).await?;
            if k == 0 {
                break;
            }
            zin.write_all(&buf[..k]).await?;
            n += k as u64;
            counted.add(k as u64);
        }
        zin.shutdown().await?;
        Ok::<u64, std::io::Error>(n)
    });

    let upload = client
        .create_multipart_upload()
        .bucket(&dest.bucket)
        .key(&data_key)
        .send()
        .await
        .map_err(|e| s3_error("starting the upload", dest, e))?;
    let upload_id = upload.upload_id().unwrap_or_default().to_string();
    let mut out = age.stdout.take().ok_or("age: no stdout")?;
    let part_size = cfg.backup.part_size_mib.max(5) * 1024 * 1024;
    let mut hash = Sha256::new();
    // Each part's own hash: a restore checks every part before any of it
    // reaches age, zstd and tar.
    let mut part_hashes: Vec<String> = Vec::new();
    let mut parts = Vec::new();
    let mut stored: u64 = 0;
    // Up to `upload_concurrency` parts in flight (as the aws CLI does): S3
    // latency per request, not bandwidth, bounds a sequential upload.
    // Memory stays bounded at (concurrency + 1) parts.
    let mut in_flight = tokio::task::JoinSet::new();
    let concurrency = cfg.backup.upload_concurrency.max(1);
    let uploaded: Result<(), String> = async {
        let mut number = 0;
        loop {
            let mut buf = vec![0u8; part_size];
            let n = fill(&mut out, &mut buf).await.map_err(|e| format!("reading the encrypted stream: {e}"))?;
            if n == 0 && number > 0 {
                break;
            }
            buf.truncate(n);
            hash.update(&buf);
            part_hashes.push(hex(&Sha256::digest(&buf)));
            stored += n as u64;
            number += 1;
            let (client, bucket, key, id) = (client.clone(), dest.bucket.clone(), data_key.clone(), upload_id.clone());
            in_flight.spawn(async move {
                let r =
                    client.upload_part().bucket(bucket).key(key).upload_id(id).part_number(number).body(ByteStream::from(buf)).send().await;
                (number, r)
            });
            while in_flight.len() >= concurrency {
                parts.push(joined(in_flight.join_next().await, dest)?);
            }
            if n < part_size {
                break;
            }
        }
        while let Some(done) = in_flight.join_next().await {
            parts.push(joined(Some(done), dest)?);
        }
        parts.sort_by_key(|p: &CompletedPart| p.part_number());
        Ok(())
    }
    .await;
    in_flight.abort_all();
    let outcome = match uploaded {
        Ok(()) => wait_all(&mut [("the backup source", &mut source), ("zstd", &mut zstd), ("age", &mut age)]).await,
        Err(e) => {
            let _ = source.kill().await;
            Err(e)
        }
    };
    let raw_bytes = match (outcome, raw.await) {
        (Ok(()), Ok(Ok(n))) => n,
        (Err(e), _) => return Err(abort(&client, dest, &data_key, &upload_id, e).await),
        (Ok(()), Ok(Err(e))) => return Err(abort(&client, dest, &data_key, &upload_id, format!("feeding zstd: {e}")).await),
        (Ok(()), Err(e)) => return Err(abort(&client, dest, &data_key, &upload_id, e.to_string()).await),
    };
    client
        .complete_multipart_upload()
        .bucket(&dest.bucket)
        .key(&data_key)
        .upload_id(&upload_id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await
        .map_err(|e| s3_error("completing the upload", dest, e))?;
    let finished = now_ms();
    let sha256 = hex(&hash.finalize());
    let log = stderr_text(&mut source).await;
    let (mut lsn_start, mut lsn_end) = (wal_point(&log, "start point"), wal_point(&log, "end point"));
    if let Some(redo) = redo_before {
        // Nor an end point: the source's position now is at or past it, and
        // is what the archive must reach.
        const NOW: &str = "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text";
        (lsn_start, lsn_end) = (redo, position(cfg, NOW).await?);
    }
    let parts_root = parts_root(&part_hashes);
    let mut manifest = serde_json::json!({
        "format": 1,
        "backup_id": job.backup_id.to_string(),
        "cluster": cfg.cluster,
        "member": cfg.member_id,
        "region": cfg.region,
        "kind": cfg.kind.as_str(),
        "started_at_ms": started,
        "finished_at_ms": finished,
        "lsn_start": lsn_start,
        "lsn_end": lsn_end,
        "replication_offset": redis_offset,
        "raw_bytes": raw_bytes,
        "stored_bytes": stored,
        "objects": [{ "key": data_key, "bytes": stored, "sha256": sha256, "part_size": part_size, "parts_root": parts_root }],
        "pipeline": match (cfg.kind, job.wal_from_archive) {
            (Kind::Postgres, false) => "pg_basebackup -Ft -X fetch | zstd | age",
            (Kind::Postgres, true) => "pg_basebackup -Ft -X none | zstd | age",
            (Kind::Redis, _) => "redis-cli --rdb | zstd | age",
        },
        // Where the WAL that makes it consistent is: in the backup, or in
        // the continuous archive.
        "wal": if job.wal_from_archive { "archive" } else { "included" },
        "tools": {
            "source": source_tool,
            "zstd": version("zstd", "--version").await,
            "age": version("age", "--version").await,
        },
        "recipients": recipients,
    });
    // The catalog (in Raft) keeps the root; the object also lists every
    // part's hash, which a restore checks against that root.
    let catalog_manifest = manifest.to_string();
    manifest["objects"][0]["parts_sha256"] = serde_json::json!(part_hashes);
    client
        .put_object()
        .bucket(&dest.bucket)
        .key(&manifest_key)
        .content_type("application/json")
        .body(ByteStream::from(serde_json::to_vec_pretty(&manifest).unwrap_or_default()))
        .send()
        .await
        .map_err(|e| s3_error("writing the manifest", dest, e))?;
    tracing::info!(key = %data_key, raw_bytes, stored, ms = finished - started, "backup uploaded");
    Ok(BackupMade {
        manifest_json: catalog_manifest,
        data_key,
        manifest_key,
        sha256,
        raw_bytes,
        stored_bytes: stored,
        finished_at_ms: finished,
    })
}

pub(super) async fn redis_offset(cfg: &AgentConfig) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", &cfg.connection.host, "-p", &cfg.connection.port.to_string()])
        .args(cfg.connection.tls.as_ref().map(|t| t.redis_cli_args()).unwrap_or_default())
        .args(["INFO", "replication"])
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .find_map(|l| l.strip_prefix("master_repl_offset:").or_else(|| l.strip_prefix("slave_repl_offset:")).map(|v| v.trim().to_string()))
}

/// A WAL position the source server reports (`query` answers an LSN as text).
async fn position(cfg: &AgentConfig, query: &str) -> Result<String, String> {
    let c = crate::probe::postgres::connect(&cfg.connection, &cfg.connection.host, cfg.connection.port, "drc-backup").await?;
    let row = c.query_one(query, &[]).await.map_err(|e| format!("reading the source's WAL position ({query}): {e}"))?;
    Ok(row.get(0))
}

/// "pg_basebackup: write-ahead log start point: 0/2000028 on timeline 1".
pub(super) fn wal_point(log: &str, which: &str) -> String {
    log.split(" / ")
        .chain(log.lines())
        .find_map(|l| {
            l.split_once(&format!("write-ahead log {which}: ")).map(|(_, r)| r.split_whitespace().next().unwrap_or("").to_string())
        })
        .unwrap_or_default()
}

/// Deletes a backup's objects (retention); missing objects are fine.
pub async fn delete(cfg: &AgentConfig, job: &DeleteBackup) -> Result<(), String> {
    let dest = destination(cfg, required(&job.destination, "destination")?)?;
    let client = client(dest)?;
    for key in job.keys.iter().filter(|k| !k.is_empty()) {
        client.delete_object().bucket(&dest.bucket).key(key).send().await.map_err(|e| s3_error(&format!("deleting {key}"), dest, e))?;
    }
    Ok(())
}

/// The SHA-256 of the parts' SHA-256 (hex), one per line: what the catalog
/// keeps so that the manifest object's list of part hashes can be trusted.
pub(super) fn parts_root(part_hashes: &[String]) -> String {
    let mut h = Sha256::new();
    for p in part_hashes {
        h.update(p.as_bytes());
        h.update(b"\n");
    }
    hex(&h.finalize())
}
