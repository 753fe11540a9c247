//! `drc-bench pgbackrest`: drc and pgBackRest side by side on the same
//! primary, under the same write load, at the same time.
//!
//! One lab; failover paused. pgBackRest (Debian's package) archives pg-a
//! through `archive_command` with `archive-async` and `process-max`, into an
//! HTTPS front of another s3s-fs server (pgBackRest before 2.58 speaks S3
//! only over TLS), zstd and AES-256 like drc's zstd and age. drc archives
//! the same primary as it always does. Measured:
//! 1. a full base backup of a `pgbench -i -s SCALE` database: pgBackRest
//!    (`process-max`, from the primary) and drc (`drctl backup run`, from a
//!    standby);
//! 2. per commit rate, each commit's archive lag in both, read the same way:
//!    the first reading at or past its WAL position (drc: `drctl status`;
//!    pgBackRest: the segments in its repository, a segment counting as soon
//!    as its file appears, which favours pgBackRest);
//! 3. restore to a time one second before the end of the load: `drctl
//!    restore` against `pgbackrest restore --type=time` and starting it,
//!    each until the copy has promoted.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::archive::{reach, write, Commit};
use super::stats::percentile;
use crate::lab::postgres::{psql, PG_BIN};
use crate::lab::{Lab, PG_CLUSTER};
use crate::wait_for;

const STANZA: &str = "bench";

/// An archive's reach (LSN as an integer) and when it was read.
type Readings = Vec<(Instant, u64)>;
const SEGMENT: u64 = 16 << 20;

pub struct Options {
    pub seconds: u64,
    pub rates: Vec<u32>,
    pub row_bytes: usize,
    pub scale: u32,
    pub process_max: u32,
}

fn as_postgres(program: &str) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--", program]);
    c
}

fn run(c: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = c.output().with_context(|| what.to_string())?;
    if !out.status.success() {
        bail!("{what}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn pgbackrest(conf: &Path, args: &[&str]) -> anyhow::Result<String> {
    let mut c = as_postgres("pgbackrest");
    c.arg(format!("--config={}", conf.display())).arg(format!("--stanza={STANZA}")).args(args);
    run(&mut c, &format!("pgbackrest {}", args.join(" ")))
}

/// The HTTPS S3 server pgBackRest writes to; killed when dropped.
struct S3Front(Child);

impl Drop for S3Front {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run_bench(o: Options) -> anyhow::Result<()> {
    let version = run(Command::new("pgbackrest").arg("version"), "pgbackrest version (apt-get install pgbackrest)")?;
    let dir = tempfile::Builder::new().prefix("drc-bench-pgbackrest-").tempdir()?;
    let lab = Lab::up(dir.path())?;
    lab.drctl_json(&["pause"])?;
    let pa = lab.member("pg-a").context("pg-a")?.clone();
    let work = lab.info.dir.join("pgbackrest");
    for d in ["spool", "log", "lock", "s3"] {
        std::fs::create_dir_all(work.join(d))?;
    }
    let files = lab.pki()?.server(&["127.0.0.1"], "s3-pgbackrest")?;
    let port = crate::free_port();
    let (key, secret) = ("pgbackrest", "pgbackrest-secret");
    let child = Command::new(crate::bin("drc-s3-server"))
        .args(["--port", &port.to_string(), "--access-key", key, "--secret-key", secret, "--bucket", "pgbackrest"])
        .arg("--root")
        .arg(work.join("s3"))
        .arg("--tls-cert")
        .arg(&files.cert)
        .arg("--tls-key")
        .arg(&files.key)
        .stdout(Stdio::null())
        .spawn()?;
    let _front = S3Front(child);
    wait_for("the HTTPS S3 front", Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).ok())?;
    // The socket directory: line 5 of postmaster.pid.
    let pid = std::fs::read_to_string(pa.data_dir.join("postmaster.pid"))?;
    let socket = pid.lines().nth(4).context("postmaster.pid names no socket directory")?.trim().to_string();
    let conf = work.join("pgbackrest.conf");
    std::fs::write(
        &conf,
        format!(
            "[global]\nrepo1-type=s3\nrepo1-path=/repo\nrepo1-s3-bucket=pgbackrest\nrepo1-s3-endpoint=127.0.0.1\n\
             repo1-storage-port={port}\nrepo1-s3-region=us-east-1\nrepo1-s3-key={key}\nrepo1-s3-key-secret={secret}\n\
             repo1-s3-uri-style=path\nrepo1-storage-verify-tls=n\nrepo1-cipher-type=aes-256-cbc\n\
             repo1-cipher-pass=bench-only-passphrase\nrepo1-retention-full=2\ncompress-type=zst\narchive-async=y\n\
             spool-path={spool}\nprocess-max={pm}\nlog-path={log}\nlock-path={lock}\nstart-fast=y\nlog-level-console=warn\n\
             \n[{STANZA}]\npg1-path={data}\npg1-port={pgport}\npg1-socket-path={socket}\n",
            spool = work.join("spool").display(),
            pm = o.process_max,
            log = work.join("log").display(),
            lock = work.join("lock").display(),
            data = pa.data_dir.display(),
            pgport = pa.port,
        ),
    )?;
    run(Command::new("chown").args(["-R", "postgres:postgres"]).arg(&work), "chown")?;
    let command = format!("pgbackrest --config={} --stanza={STANZA} archive-push %p", conf.display());
    for (name, value) in [("archive_mode", "on"), ("archive_timeout", "60s"), ("archive_command", command.as_str())] {
        psql(pa.port, &format!("ALTER SYSTEM SET {name} = '{value}'"))?;
    }
    let mut restart = as_postgres(&format!("{PG_BIN}/pg_ctl"));
    // -l: a server writing to pg_ctl's stdout would hold the pipe open.
    restart.arg("-D").arg(&pa.data_dir).arg("-l").arg(&pa.log).args(["-m", "fast", "-w", "-t", "60", "restart"]);
    run(&mut restart, "restarting pg-a with archive_mode = on")?;
    pgbackrest(&conf, &["stanza-create"])?;
    pgbackrest(&conf, &["check"])?;
    println!(
        "pgBackRest {} (archive-async, process-max {}, zst, aes-256-cbc, archive_timeout 60 s) beside drc on pg-a",
        version.trim(),
        o.process_max
    );

    // 1. A full base backup each.
    println!("pgbench -i -s {} on pg-a ...", o.scale);
    run(
        Command::new(format!("{PG_BIN}/pgbench")).args([
            "-h",
            "127.0.0.1",
            "-p",
            &pa.port.to_string(),
            "-U",
            "postgres",
            "-i",
            "-q",
            "-s",
            &o.scale.to_string(),
            "postgres",
        ]),
        "pgbench -i",
    )?;
    let size: u64 = psql(pa.port, "SELECT sum(pg_database_size(oid))::bigint FROM pg_database")?.trim().parse()?;
    wait_for("replicas caught up", Duration::from_secs(600), || {
        let h = lab.members_health().ok()?;
        ["pg-b", "pg-c"].iter().all(|m| h[*m]["lag_bytes"] == 0).then_some(())
    })?;
    let t = Instant::now();
    pgbackrest(&conf, &["--type=full", "backup"])?;
    let theirs = t.elapsed();
    let t = Instant::now();
    let b = lab.drctl_json(&["backup", "run", "--cluster", PG_CLUSTER])?;
    let ours = t.elapsed();
    if b["state"] != "done" {
        bail!("drc's backup failed: {b}");
    }
    let mbps = |d: Duration| size as f64 / 1e6 / d.as_secs_f64();
    println!(
        "full backup of {:.0} MB: drc {:.1} s = {:.1} MB/s (from a standby, stored {:.0} MB); pgBackRest {:.1} s = {:.1} MB/s (from the primary)",
        size as f64 / 1e6,
        ours.as_secs_f64(),
        mbps(ours),
        b["stored_bytes"].as_u64().unwrap_or(0) as f64 / 1e6,
        theirs.as_secs_f64(),
        mbps(theirs)
    );

    // 2. Archive lag per rate, both at once.
    psql(pa.port, "CREATE TABLE bench_archive (id bigserial PRIMARY KEY, v text)")?;
    let repo = work.join("s3/pgbackrest/repo/archive").join(STANZA);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut last_commits = Vec::new();
    for rate in &o.rates {
        let commits = Arc::new(Mutex::new(Vec::<Commit>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = rt.spawn(write(pa.port, *rate, o.row_bytes, Arc::clone(&commits), Arc::clone(&stop)));
        let started = Instant::now();
        let (mut drc, mut pgbr): (Readings, Readings) = (Vec::new(), Vec::new());
        let read = |drc: &mut Readings, pgbr: &mut Readings| {
            if let Some(r) = reach(&lab) {
                drc.push((Instant::now(), r));
            }
            pgbr.push((Instant::now(), archived(&repo)));
            std::thread::sleep(Duration::from_millis(50));
        };
        while started.elapsed() < Duration::from_secs(o.seconds) {
            read(&mut drc, &mut pgbr);
        }
        stop.store(true, Ordering::SeqCst);
        let written = rt.block_on(writer)??;
        let commits = std::mem::take(&mut *commits.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
        let last = commits.last().map_or(0, |c| c.lsn);
        // After the load: until both hold every commit (pgBackRest waits
        // for archive_timeout on a segment the load left unfinished).
        let settle = Instant::now();
        while settle.elapsed() < Duration::from_secs(90) && [&drc, &pgbr].iter().any(|r| r.last().is_none_or(|(_, v)| *v < last)) {
            read(&mut drc, &mut pgbr);
        }
        let wal = last.saturating_sub(commits.first().map_or(0, |c| c.lsn));
        println!("{rate} commits/s asked, {written} made ({:.2} MB/s of WAL):", wal as f64 / 1e6 / o.seconds as f64);
        for (who, readings) in [("drc", &drc), ("pgBackRest", &pgbr)] {
            println!("  {who:<10} {}", lags(&commits, readings));
        }
        last_commits = commits;
    }

    // 3. Restore to a time a second before the end of the last load.
    let end = last_commits.last().context("no commits")?;
    let target_at = end.at.checked_sub(Duration::from_secs(1)).context("a short load")?;
    let target = last_commits.iter().rev().find(|c| c.at <= target_at).unwrap_or(end);
    let target_time = psql(pa.port, &format!("SELECT to_char(pg_xact_commit_timestamp(xmin) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00' FROM bench_archive WHERE id = {}", target.id))?;
    let ours_dir = lab.info.dir.join("restore-drc");
    let t = Instant::now();
    let r = lab.drctl_json(&[
        "restore",
        "--cluster",
        PG_CLUSTER,
        "--to-time",
        &target_time,
        "--on",
        "pg-b",
        "--dir",
        &ours_dir.display().to_string(),
    ])?;
    let ours = t.elapsed();
    if r["state"] != "done" {
        bail!("drc's restore failed: {r}");
    }
    let our_rows = psql(r["port"].as_u64().and_then(|p| u16::try_from(p).ok()).context("port")?, "SELECT count(*) FROM bench_archive")?;
    stop_server(&ours_dir);
    let theirs_dir = lab.info.dir.join("restore-pgbackrest");
    let t = Instant::now();
    let theirs_port = restore_pgbackrest(&conf, &theirs_dir, &target_time)?;
    let theirs = t.elapsed();
    let rows = psql(theirs_port, "SELECT count(*) FROM bench_archive")?;
    stop_server(&theirs_dir);
    println!(
        "restore to {target_time} (backup + {:.0} MB of WAL): drc {:.1} s; pgBackRest {:.1} s (restore, start, replay, promote); \
         rows {}: drc {our_rows}, pgBackRest {rows}",
        r["wal_bytes"].as_u64().unwrap_or(0) as f64 / 1e6,
        ours.as_secs_f64(),
        theirs.as_secs_f64(),
        target.id
    );
    lab.down()?;
    Ok(())
}

/// How far pgBackRest's archive reaches: the end of the newest whole
/// segment in its repository (timeline 1).
fn archived(repo: &Path) -> u64 {
    let mut newest = 0;
    let Ok(versions) = std::fs::read_dir(repo) else { return 0 };
    for v in versions.flatten() {
        let Ok(dirs) = std::fs::read_dir(v.path()) else { continue };
        for d in dirs.flatten() {
            let Ok(files) = std::fs::read_dir(d.path()) else { continue };
            for f in files.flatten() {
                let name = f.file_name().to_string_lossy().to_string();
                let (Some(log), Some(seg)) = (name.get(8..16), name.get(16..24)) else { continue };
                if let (Ok(log), Ok(seg)) = (u64::from_str_radix(log, 16), u64::from_str_radix(seg, 16)) {
                    newest = newest.max((log << 32) + (seg + 1) * SEGMENT);
                }
            }
        }
    }
    newest
}

/// p50 / p99 / max of each commit's lag: from its acknowledgement to the
/// first reading at or past its position.
fn lags(commits: &[Commit], readings: &Readings) -> String {
    let mut lags = Vec::new();
    let mut never = 0;
    for c in commits {
        match readings.iter().find(|(t, r)| *t >= c.at && *r >= c.lsn) {
            Some((t, _)) => lags.push(t.duration_since(c.at)),
            None => never += 1,
        }
    }
    format!(
        "archive lag p50 {:.2} s  p99 {:.2} s  max {:.2} s{}",
        percentile(&mut lags, 0.50).as_secs_f64(),
        percentile(&mut lags, 0.99).as_secs_f64(),
        lags.iter().max().copied().unwrap_or_default().as_secs_f64(),
        if never > 0 { format!("; {never} commits not archived 90 s after the load") } else { String::new() }
    )
}

/// `pgbackrest restore --type=time` into `dir`, started on a free port
/// apart from the cluster; returns the port once the copy has promoted.
fn restore_pgbackrest(conf: &Path, dir: &PathBuf, target: &str) -> anyhow::Result<u16> {
    std::fs::create_dir_all(dir)?;
    run(Command::new("chown").arg("postgres:postgres").arg(dir), "chown")?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    pgbackrest(
        conf,
        &[&format!("--pg1-path={}", dir.display()), "--type=time", &format!("--target={target}"), "--target-action=promote", "restore"],
    )?;
    let port = crate::free_port();
    let mut start = as_postgres(&format!("{PG_BIN}/pg_ctl"));
    start.arg("-D").arg(dir).arg("-l").arg(dir.join("restore.log")).args(["-w", "-t", "600", "-o"]).arg(format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c archive_mode=off -c synchronous_standby_names='' -c primary_conninfo=''",
        dir.display()
    ));
    run(start.arg("start"), "starting pgBackRest's restore")?;
    wait_for("pgBackRest's restore to promote", Duration::from_secs(600), || {
        (psql(port, "SELECT pg_is_in_recovery()").ok()? == "f").then_some(())
    })?;
    Ok(port)
}

fn stop_server(dir: &Path) {
    let mut c = as_postgres(&format!("{PG_BIN}/pg_ctl"));
    c.arg("-D").arg(dir).args(["-m", "immediate", "-w", "stop"]);
    let _ = c.output();
}
