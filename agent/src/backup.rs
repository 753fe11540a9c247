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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use drc_proto::{BackupJob, DeleteBackup, RecoveryTestJob, RestoreCheck};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::config::{AgentConfig, Kind};

/// One S3 bucket this agent may write to or read from, by the name the
/// topology uses.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    pub name: String,
    /// e.g. "https://s3.eu-west-1.amazonaws.com" or "http://127.0.0.1:9000".
    pub endpoint: String,
    pub bucket: String,
    /// The signing region of the S3 service.
    #[serde(default = "default_s3_region")]
    pub s3_region: String,
    pub access_key: String,
    #[serde(default)]
    pub secret_key_env: Option<String>,
    #[serde(default)]
    pub secret_key_file: Option<PathBuf>,
}

fn default_s3_region() -> String {
    "us-east-1".into()
}

impl DestinationConfig {
    fn secret(&self) -> Result<String, String> {
        if let Some(var) = &self.secret_key_env {
            return std::env::var(var).map_err(|_| format!("destination {}: environment variable {var} is not set", self.name));
        }
        if let Some(path) = &self.secret_key_file {
            return std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|e| format!("destination {}: secret_key_file {}: {e}", self.name, path.display()));
        }
        Err(format!("destination {}: set secret_key_env or secret_key_file", self.name))
    }

    fn client(&self) -> Result<aws_sdk_s3::Client, String> {
        use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
        use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
        let creds = Credentials::new(&self.access_key, self.secret()?, None, None, "drc-agent");
        let http = aws_smithy_http_client::Builder::new().tls_provider(tls::Provider::Rustls(CryptoMode::Ring)).build_https();
        let timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(Duration::from_secs(120))
            .build();
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(self.s3_region.clone()))
            .endpoint_url(&self.endpoint)
            .credentials_provider(creds)
            .force_path_style(true)
            .http_client(http)
            // Bounded: a destination that is down fails the backup after
            // three attempts per request, with the reason.
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(3))
            .timeout_config(timeouts)
            .build();
        Ok(aws_sdk_s3::Client::from_conf(conf))
    }
}

/// `[backup]` in the agent's configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// age identity file: only on agents that run recovery tests.
    #[serde(default)]
    pub identity_file: Option<PathBuf>,
    /// Where recovery tests restore to; emptied of leftovers at start.
    #[serde(default = "default_scratch")]
    pub scratch_dir: PathBuf,
    #[serde(default = "default_level")]
    pub zstd_level: i32,
    /// Multipart upload part size (S3 needs at least 5 MiB).
    #[serde(default = "default_part_mib")]
    pub part_size_mib: usize,
    /// Parts uploaded at once.
    #[serde(default = "default_concurrency")]
    pub upload_concurrency: usize,
    /// How often a running backup or recovery test reports its progress.
    #[serde(default = "default_progress", with = "humantime_serde")]
    pub progress_interval: Duration,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            identity_file: None,
            scratch_dir: default_scratch(),
            zstd_level: default_level(),
            part_size_mib: default_part_mib(),
            upload_concurrency: default_concurrency(),
            progress_interval: default_progress(),
        }
    }
}

fn default_scratch() -> PathBuf {
    std::env::temp_dir().join("drc-scratch")
}

fn default_level() -> i32 {
    3
}

fn default_part_mib() -> usize {
    8
}

fn default_concurrency() -> usize {
    4
}

fn default_progress() -> Duration {
    Duration::from_secs(1)
}

type Output = HashMap<String, String>;

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

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn destination<'a>(cfg: &'a AgentConfig, name: &str) -> Result<&'a DestinationConfig, String> {
    cfg.destinations
        .iter()
        .find(|d| d.name == name)
        .ok_or_else(|| format!("destination {name:?} is not configured on agent {} (add [[destinations]] name = {name:?})", cfg.member_id))
}

/// A field a job cannot do without: empty means the command is malformed.
fn required<'a>(value: &'a str, what: &str) -> Result<&'a str, String> {
    Some(value).filter(|v| !v.is_empty()).ok_or_else(|| format!("the job names no {what}"))
}

/// The version line a tool prints, for the manifest.
async fn version(program: &str, flag: &str) -> String {
    match Command::new(program).arg(flag).output().await {
        Ok(o) => {
            String::from_utf8_lossy(if o.stdout.is_empty() { &o.stderr } else { &o.stdout }).lines().next().unwrap_or("").trim().to_string()
        }
        Err(e) => format!("unknown ({e})"),
    }
}

fn s3_error<E, R>(what: &str, d: &DestinationConfig, e: aws_sdk_s3::error::SdkError<E, R>) -> String
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use std::error::Error;
    // The SDK's Display is terse ("service error"); the source says why.
    let mut why = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        why = format!("{why}: {s}");
        src = s.source();
    }
    if ["SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied"].iter().any(|c| why.contains(c)) {
        why = format!("the destination refused the credentials ({why}); check access_key and the secret");
    }
    format!("{what} at destination {} ({}/{}): {why}", d.name, d.endpoint, d.bucket)
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
async fn fill(r: &mut (impl AsyncRead + Unpin), buf: &mut [u8]) -> std::io::Result<usize> {
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
struct Proc {
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
async fn drain(mut e: tokio::process::ChildStderr) -> String {
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
async fn stderr_of(p: &mut Proc) -> String {
    let s = stderr_text(p).await;
    s.trim().lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join(" / ")
}

/// The whole captured stderr of a stage.
async fn stderr_text(p: &mut Proc) -> String {
    match p.stderr.take() {
        Some(h) => h.await.unwrap_or_default(),
        None => String::new(),
    }
}

fn spawn(cmd: &mut Command, what: &str) -> Result<Proc, String> {
    let mut child = cmd.kill_on_drop(true).spawn().map_err(|e| format!("cannot start {what}: {e}"))?;
    let stderr = child.stderr.take().map(|e| tokio::spawn(drain(e)));
    Ok(Proc { child, stderr })
}

/// Takes a backup of the local member and uploads it; see the module doc.
/// `estimate`: the member's data size, for progress (0 when unknown).
pub async fn backup(cfg: &AgentConfig, job: &BackupJob, meter: &Meter, estimate: u64) -> Result<Output, String> {
    let dest = destination(cfg, required(&job.destination, "destination")?)?;
    let prefix = required(&job.prefix, "key prefix")?.trim_end_matches('/').to_string();
    let recipients: Vec<&str> = job.recipients.iter().map(String::as_str).filter(|r| !r.is_empty()).collect();
    if recipients.is_empty() {
        return Err("the job names no age recipient to encrypt to".into());
    }
    let client = dest.client()?;
    let started = now_ms();
    let conn = &cfg.connection;
    let (mut source, object, source_tool) =
        match cfg.kind {
            Kind::Postgres => {
                let pg = cfg.postgres.as_ref().ok_or("backup: this agent has no [postgres] section")?;
                let bin = pg.bin_dir.join("pg_basebackup");
                let mut c = Command::new(&bin);
                c.args(["-h", &conn.host, "-p", &conn.port.to_string(), "-U", &pg.replication_user, "-D", "-", "-Ft", "-X", "fetch"])
                    .args(["--checkpoint=fast", "--no-password", "-v"]);
                if let Some(p) = conn.password().map_err(|e| e.to_string())? {
                    c.env("PGPASSWORD", p);
                }
                (c, "base.tar.zst.age", version(&bin.to_string_lossy(), "--version").await)
            }
            Kind::Redis => {
                let mut c = Command::new("redis-cli");
                c.args(["-h", &conn.host, "-p", &conn.port.to_string(), "--rdb", "-"]);
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
    let (lsn_start, lsn_end) = (wal_point(&log, "start point"), wal_point(&log, "end point"));
    let manifest = serde_json::json!({
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
        "objects": [{ "key": data_key, "bytes": stored, "sha256": sha256 }],
        "pipeline": match cfg.kind { Kind::Postgres => "pg_basebackup -Ft -X fetch | zstd | age", Kind::Redis => "redis-cli --rdb | zstd | age" },
        "tools": {
            "source": source_tool,
            "zstd": version("zstd", "--version").await,
            "age": version("age", "--version").await,
        },
        "recipients": recipients,
    });
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
    Ok(HashMap::from([
        ("manifest".to_string(), manifest.to_string()),
        ("data_key".to_string(), data_key),
        ("manifest_key".to_string(), manifest_key),
        ("sha256".to_string(), sha256),
        ("raw_bytes".to_string(), raw_bytes.to_string()),
        ("stored_bytes".to_string(), stored.to_string()),
        ("finished_at_ms".to_string(), finished.to_string()),
    ]))
}

type PartUpload = (
    i32,
    Result<
        aws_sdk_s3::operation::upload_part::UploadPartOutput,
        aws_sdk_s3::error::SdkError<aws_sdk_s3::operation::upload_part::UploadPartError, aws_sdk_s3::config::http::HttpResponse>,
    >,
);

/// The completed part of a finished part upload.
fn joined(done: Option<Result<PartUpload, tokio::task::JoinError>>, dest: &DestinationConfig) -> Result<CompletedPart, String> {
    match done {
        Some(Ok((number, Ok(part)))) => Ok(CompletedPart::builder().e_tag(part.e_tag().unwrap_or_default()).part_number(number).build()),
        Some(Ok((number, Err(e)))) => Err(s3_error(&format!("uploading part {number}"), dest, e)),
        Some(Err(e)) => Err(format!("a part upload task failed: {e}")),
        None => Err("no part upload in flight".into()),
    }
}

/// Every process must have succeeded, or the output is not a backup.
async fn wait_all(children: &mut [(&str, &mut Proc)]) -> Result<(), String> {
    for (what, c) in children.iter_mut() {
        let s = c.wait().await.map_err(|e| e.to_string())?;
        if !s.success() {
            return Err(format!("{what} failed ({s}): {}", stderr_of(c).await));
        }
    }
    Ok(())
}

async fn abort(client: &aws_sdk_s3::Client, dest: &DestinationConfig, key: &str, upload_id: &str, why: String) -> String {
    let _ = client.abort_multipart_upload().bucket(&dest.bucket).key(key).upload_id(upload_id).send().await;
    why
}

async fn redis_offset(cfg: &AgentConfig) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", &cfg.connection.host, "-p", &cfg.connection.port.to_string(), "INFO", "replication"])
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .find_map(|l| l.strip_prefix("master_repl_offset:").or_else(|| l.strip_prefix("slave_repl_offset:")).map(|v| v.trim().to_string()))
}

/// "pg_basebackup: write-ahead log start point: 0/2000028 on timeline 1".
fn wal_point(log: &str, which: &str) -> String {
    log.split(" / ")
        .chain(log.lines())
        .find_map(|l| {
            l.split_once(&format!("write-ahead log {which}: ")).map(|(_, r)| r.split_whitespace().next().unwrap_or("").to_string())
        })
        .unwrap_or_default()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Deletes a backup's objects (retention); missing objects are fine.
pub async fn delete(cfg: &AgentConfig, job: &DeleteBackup) -> Result<Output, String> {
    let dest = destination(cfg, required(&job.destination, "destination")?)?;
    let client = dest.client()?;
    for key in job.keys.iter().filter(|k| !k.is_empty()) {
        client.delete_object().bucket(&dest.bucket).key(key).send().await.map_err(|e| s3_error(&format!("deleting {key}"), dest, e))?;
    }
    Ok(HashMap::new())
}

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

/// Stops whatever a scratch directory runs and removes it.
async fn remove_scratch(cfg: &AgentConfig, scratch: &Path) {
    let data = scratch.join("data");
    if data.join("postmaster.pid").exists() {
        if let Some(pg) = &cfg.postgres {
            let d = data.to_string_lossy().to_string();
            let _ = crate::actions::run_as(&pg.run_as, &pg.bin_dir.join("pg_ctl"), &["-D", &d, "stop", "-m", "immediate", "-w"]).await;
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

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).map_err(|e| format!("no free port: {e}"))
}

/// Free bytes for an unprivileged writer in `dir`'s file system.
fn free_space(dir: &Path) -> Result<u64, String> {
    let s = rustix::fs::statvfs(dir).map_err(|e| format!("statvfs {}: {e}", dir.display()))?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

const NO_SPACE: &str = "No space left on device";

/// Says which disk filled up: a restore that fails for lack of space must
/// say so, not only "tar failed" or "the scratch PostgreSQL did not start".
fn disk_full(e: String, scratch: &Path) -> String {
    let full = free_space(scratch).is_ok_and(|free| free < 1 << 20);
    if e.contains(NO_SPACE) || full {
        format!("disk full in the scratch directory {}: {e}", scratch.display())
    } else {
        e
    }
}

async fn restore_and_check(cfg: &AgentConfig, job: &RecoveryTestJob, scratch: &Path, meter: &Meter) -> Result<Output, String> {
    restore_and_check_inner(cfg, job, scratch, meter).await.map_err(|e| disk_full(e, scratch))
}

async fn restore_and_check_inner(cfg: &AgentConfig, job: &RecoveryTestJob, scratch: &Path, meter: &Meter) -> Result<Output, String> {
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
    let client = dest.client()?;
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

/// An object read in order as `part`-sized ranges, with up to `concurrency`
/// range requests in flight: one S3 stream is bound by request latency, so
/// S3 clients fetch large objects this way (the aws CLI does). Memory stays
/// bounded at `concurrency` parts.
struct Ranged {
    client: aws_sdk_s3::Client,
    dest: DestinationConfig,
    key: String,
    size: u64,
    part: u64,
    concurrency: usize,
    next_start: u64,
    pending: std::collections::VecDeque<tokio::task::JoinHandle<Result<bytes::Bytes, String>>>,
}

impl Ranged {
    fn new(client: aws_sdk_s3::Client, dest: &DestinationConfig, key: &str, size: u64, part: usize, concurrency: usize) -> Self {
        let (dest, key) = (dest.clone(), key.to_string());
        Ranged { client, dest, key, size, part: part as u64, concurrency, next_start: 0, pending: Default::default() }
    }

    /// The next part in order; `Ok(None)` at the end.
    async fn next(&mut self) -> Result<Option<bytes::Bytes>, String> {
        while self.pending.len() < self.concurrency && self.next_start < self.size {
            let (start, end) = (self.next_start, (self.next_start + self.part).min(self.size) - 1);
            self.next_start = end + 1;
            let (client, dest, key) = (self.client.clone(), self.dest.clone(), self.key.clone());
            self.pending.push_back(tokio::spawn(async move {
                let what = format!("reading {key} (bytes {start}-{end})");
                let got = client
                    .get_object()
                    .bucket(&dest.bucket)
                    .key(&key)
                    .range(format!("bytes={start}-{end}"))
                    .send()
                    .await
                    .map_err(|e| s3_error(&what, &dest, e))?;
                let body = got.body.collect().await.map_err(|e| s3_error_plain(&what, &dest, e))?;
                Ok(body.into_bytes())
            }));
        }
        match self.pending.pop_front() {
            Some(h) => h.await.map_err(|e| format!("reading {}: {e}", self.key))?.map(Some),
            None => Ok(None),
        }
    }
}

impl Drop for Ranged {
    fn drop(&mut self) {
        for h in &self.pending {
            h.abort();
        }
    }
}

fn s3_error_plain(what: &str, d: &DestinationConfig, e: impl std::fmt::Display) -> String {
    format!("{what} at destination {} ({}/{}): {e}", d.name, d.endpoint, d.bucket)
}

/// A table name safe to put in SQL: `schema.table` of plain identifiers.
fn table_ident(t: &str) -> Option<String> {
    let ok = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    let parts: Vec<&str> = t.split('.').collect();
    (parts.len() <= 2 && parts.iter().all(|p| ok(p))).then(|| parts.iter().map(|p| format!("\"{p}\"")).collect::<Vec<_>>().join("."))
}

fn judge(out: &mut Output, c: &RestoreCheck, got: Result<String, String>) -> Result<(), String> {
    match got {
        Ok(got) if got == c.expect => {
            out.insert(format!("check:{}", c.name), "ok".into());
            Ok(())
        }
        Ok(got) => Err(format!("check {:?} failed: {:?} answered {got:?}, expected {:?}", c.name, c.query, c.expect)),
        Err(e) => Err(format!("check {:?} failed: {:?}: {e}", c.name, c.query)),
    }
}

async fn check_postgres(
    cfg: &AgentConfig,
    check_tables: &[String],
    scratch: &Path,
    port: u16,
    user_checks: &[RestoreCheck],
    started: Instant,
) -> Result<Output, String> {
    let pg = cfg.postgres.as_ref().ok_or("recovery test: this agent has no [postgres] section")?;
    let data = scratch.join("data");
    let sock = scratch.join("sock");
    std::fs::create_dir_all(&sock).map_err(|e| e.to_string())?;
    // A copy of a standby must start as a primary of its own.
    for f in ["standby.signal", "recovery.signal", "postmaster.pid"] {
        let _ = std::fs::remove_file(data.join(f));
    }
    if !pg.run_as.is_empty() {
        let owner = Command::new("chown").arg("-R").arg(&pg.run_as).arg(scratch).status().await.map_err(|e| e.to_string())?;
        if !owner.success() {
            return Err(format!("chown -R {} {}: failed", pg.run_as, scratch.display()));
        }
    }
    let _ = Command::new("chmod").arg("700").arg(&data).status().await;
    let (d, log) = (data.to_string_lossy().to_string(), scratch.join("postgres.log").to_string_lossy().to_string());
    let opts = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c archive_mode=off -c hot_standby=on -c shared_buffers=32MB",
        sock.display()
    );
    crate::actions::run_as(&pg.run_as, &pg.bin_dir.join("pg_ctl"), &["-D", &d, "-o", &opts, "-l", &log, "-w", "-t", "300", "start"])
        .await
        .map_err(|e| format!("the scratch PostgreSQL did not start: {e}; log: {}", tail_file(&scratch.join("postgres.log"))))?;
    let user = cfg.connection.user.clone().unwrap_or_else(|| "postgres".into());
    let mut c = tokio_postgres::Config::new();
    c.host("127.0.0.1").port(port).user(&user).dbname(cfg.connection.dbname.as_deref().unwrap_or("postgres"));
    if let Some(p) = cfg.connection.password().map_err(|e| e.to_string())? {
        c.password(p);
    }
    c.connect_timeout(Duration::from_secs(10));
    let (client, connection) = c.connect(tokio_postgres::NoTls).await.map_err(|e| format!("connecting to the scratch PostgreSQL: {e}"))?;
    tokio::spawn(connection);
    let mut out = Output::new();
    client.simple_query("SELECT 1").await.map_err(|e| format!("SELECT 1 on the scratch PostgreSQL: {e}"))?;
    let mut counts = serde_json::Map::new();
    for t in check_tables.iter().filter(|t| !t.is_empty()) {
        let ident = table_ident(t).ok_or_else(|| format!("check table {t:?}: expected schema.table of plain identifiers"))?;
        let row =
            client.query_one(&format!("SELECT count(*) FROM {ident}"), &[]).await.map_err(|e| format!("counting rows of {t}: {e}"))?;
        counts.insert(t.to_string(), serde_json::json!(row.get::<_, i64>(0)));
    }
    out.insert("row_counts".into(), serde_json::Value::Object(counts).to_string());
    for c in user_checks {
        let got = client.simple_query(&c.query).await.map_err(|e| e.to_string()).map(|msgs| {
            msgs.iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_string()),
                    _ => None,
                })
                .unwrap_or_else(|| "(no rows)".into())
        });
        judge(&mut out, c, got)?;
    }
    out.insert("rto_ms".into(), started.elapsed().as_millis().to_string());
    // Every page, after the RTO point. Where the data carries checksums, a
    // clean stop writes out every page recovery repaired (a base backup
    // copies pages mid-write; the WAL's full-page images mend them), and
    // `pg_checksums --check` then reads all of them: seconds per GiB.
    // Without checksums, pg_amcheck checks heap and B-tree indexes through
    // the server: tens of seconds per GiB.
    let checksums = client.query_one("SHOW data_checksums", &[]).await.is_ok_and(|r| r.get::<_, String>(0) == "on");
    let pg_checksums = pg.bin_dir.join("pg_checksums");
    let amcheck = pg.bin_dir.join("pg_amcheck");
    if checksums && pg_checksums.exists() {
        drop(client);
        let t = Instant::now();
        crate::actions::run_as(&pg.run_as, &pg.bin_dir.join("pg_ctl"), &["-D", &d, "stop", "-m", "fast", "-w", "-t", "300"])
            .await
            .map_err(|e| format!("stopping the scratch PostgreSQL to verify its checksums: {e}"))?;
        match crate::actions::run_as(&pg.run_as, &pg_checksums, &["--check", "-D", &d]).await {
            Ok(_) => {
                out.insert("checksums".into(), "ok".into());
                out.insert("checksums_ms".into(), t.elapsed().as_millis().to_string());
            }
            Err(e) => return Err(format!("pg_checksums found damaged pages: {e}")),
        }
    } else if amcheck.exists() {
        let p = port.to_string();
        let t = Instant::now();
        match crate::actions::run_as(
            &pg.run_as,
            &amcheck,
            &["-h", "127.0.0.1", "-p", &p, "-U", &user, "--install-missing", "--all", "--no-password", "--jobs", "2"],
        )
        .await
        {
            Ok(_) => {
                out.insert("amcheck".into(), "ok".into());
                out.insert("amcheck_ms".into(), t.elapsed().as_millis().to_string());
            }
            Err(e) => return Err(format!("pg_amcheck found problems: {e}")),
        }
    } else {
        out.insert("amcheck".into(), "not available".into());
    }
    Ok(out)
}

fn tail_file(p: &Path) -> String {
    std::fs::read_to_string(p)
        .map(|s| s.lines().rev().take(3).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join(" / "))
        .unwrap_or_default()
}

/// A Redis reply as redis-cli would print it, roughly.
fn reply_text(v: redis::Value) -> String {
    match v {
        redis::Value::Nil => "(nil)".into(),
        redis::Value::Int(i) => i.to_string(),
        redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        redis::Value::SimpleString(s) => s,
        redis::Value::Okay => "OK".into(),
        redis::Value::Array(items) => items.into_iter().map(reply_text).collect::<Vec<_>>().join("\n"),
        other => format!("{other:?}"),
    }
}

async fn check_redis(scratch: &Path, port: u16, user_checks: &[RestoreCheck]) -> Result<Output, String> {
    let data = scratch.join("data");
    let pidfile = scratch.join("redis.pid");
    let mut server = spawn(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dbfilename", "dump.rdb"])
            .arg("--dir")
            .arg(&data)
            .arg("--pidfile")
            .arg(&pidfile)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        "redis-server",
    )?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).map_err(|e| e.to_string())?;
    let keys: i64 = loop {
        if let Ok(Some(s)) = server.try_wait() {
            return Err(format!("the scratch redis-server exited ({s}) while loading the snapshot"));
        }
        if let Ok(mut c) = client.get_multiplexed_async_connection().await {
            // LOADING errors until the snapshot is in memory.
            if let Ok(n) = redis::cmd("DBSIZE").query_async::<i64>(&mut c).await {
                break n;
            }
        }
        if Instant::now() > deadline {
            return Err("the scratch redis-server did not load the snapshot within 120 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut out = HashMap::from([("key_count".to_string(), keys.to_string())]);
    let checked = async {
        let mut conn = client.get_multiplexed_async_connection().await.map_err(|e| e.to_string())?;
        for c in user_checks {
            let mut words = c.query.split_whitespace();
            let mut cmd = redis::cmd(words.next().unwrap_or("PING"));
            for w in words {
                cmd.arg(w);
            }
            let got = cmd.query_async::<redis::Value>(&mut conn).await.map(reply_text).map_err(|e| e.to_string());
            judge(&mut out, c, got)?;
        }
        Ok::<(), String>(())
    }
    .await;
    let _ = server.kill().await;
    checked.map(|()| out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_passes_only_on_the_expected_answer() {
        let c = RestoreCheck { name: "orders".into(), query: "SELECT count(*) FROM t".into(), expect: "3".into() };
        let mut out = Output::new();
        judge(&mut out, &c, Ok("3".into())).expect("pass");
        assert_eq!(out["check:orders"], "ok");
        let e = judge(&mut out, &c, Ok("2".into())).expect_err("wrong answer");
        assert_eq!(e, r#"check "orders" failed: "SELECT count(*) FROM t" answered "2", expected "3""#);
        let e = judge(&mut out, &c, Err("relation \"t\" does not exist".into())).expect_err("error");
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn wal_points_and_table_names() {
        let log = "pg_basebackup: initiating base backup, waiting for checkpoint to complete / pg_basebackup: write-ahead log start point: 0/2000028 on timeline 1 / pg_basebackup: write-ahead log end point: 0/2000100";
        assert_eq!(wal_point(log, "start point"), "0/2000028");
        assert_eq!(wal_point(log, "end point"), "0/2000100");
        assert_eq!(table_ident("public.orders"), Some("\"public\".\"orders\"".into()));
        assert_eq!(table_ident("orders"), Some("\"orders\"".into()));
        assert_eq!(table_ident("x; DROP TABLE y"), None);
        assert_eq!(table_ident("a.b.c"), None);
    }
}
