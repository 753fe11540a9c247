//! `drc-bench backup`.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::lab::postgres::{psql, PG_BIN};
use crate::lab::{Lab, PG_CLUSTER};
use crate::wait_for;
use anyhow::{bail, Context};

use super::stats::median;

/// Runs a shell pipeline with `env`; fails with its stderr.
fn sh(script: &str, env: &[(&str, String)]) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let out = Command::new("bash").arg("-c").arg(format!("set -euo pipefail\n{script}")).envs(env.iter().cloned()).output()?;
    if !out.status.success() {
        bail!("{script}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(start.elapsed())
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

/// "80 %, 106 %": one ratio per trial, as a percentage.
fn percents(a: &[f64], b: &[f64]) -> String {
    a.iter().zip(b).map(|(x, y)| format!("{:.0} %", 100.0 * x / y)).collect::<Vec<_>>().join(", ")
}

pub fn run(scale: u32, trials: u32) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("drc-bench-backup-").tempdir()?;
    let lab = Lab::up(dir.path())?;
    let pa = lab.member("pg-a").context("pg-a")?.clone();
    println!("pgbench -i -s {scale} on pg-a ...");
    let init = Command::new(format!("{PG_BIN}/pgbench"))
        .args(["-h", "127.0.0.1", "-p", &pa.port.to_string(), "-U", "postgres", "-i", "-q", "-s", &scale.to_string(), "postgres"])
        .output()?;
    if !init.status.success() {
        bail!("pgbench -i: {}", String::from_utf8_lossy(&init.stderr));
    }
    let size: u64 = psql(pa.port, "SELECT pg_database_size('postgres')")?.trim().parse()?;
    println!("database size {:.0} MiB", size as f64 / 1048576.0);
    wait_for("replicas caught up", Duration::from_secs(600), || {
        let h = lab.members_health().ok()?;
        ["pg-b", "pg-c"].iter().all(|m| h[*m]["lag_bytes"] == 0 && h[*m]["healthy"] == true).then_some(())
    })?;

    let (mut ours, mut plain, mut raws) = (Vec::new(), Vec::new(), Vec::new());
    let mut last = serde_json::Value::Null;
    // Round 0 is a warm-up, printed but not counted: right after
    // `pgbench -i` the standbys are still writing restartpoints and the
    // first backup's stream carries hundreds of MB more WAL.
    for trial in 0..=trials {
        // drc: the standby with the least lag, to another region's bucket.
        // Plain: the same source, the same bucket, no encryption, no
        // hash. The order alternates, so neither always gets a warm cache.
        let plain_first = trial % 2 == 0;
        let source = lab
            .members_health()?
            .into_iter()
            .filter(|(id, m)| id.starts_with("pg-") && m["role"] == "replica")
            .min_by_key(|(_, m)| m["lag_bytes"].as_u64().unwrap_or(u64::MAX))
            .map(|(id, _)| id)
            .context("a replica")?;
        let m = lab.member(&source).context("member")?.clone();
        let s3 = lab.info.s3.iter().find(|s| s.region != m.region).context("s3")?.clone();
        let env = [
            ("AWS_ACCESS_KEY_ID", s3.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", s3.secret_key.clone()),
            ("AWS_DEFAULT_REGION", "us-east-1".to_string()),
        ];
        let script = format!(
            "{PG_BIN}/pg_basebackup -h 127.0.0.1 -p {} -U postgres -D - -Ft -X fetch --checkpoint=fast --no-password \
             | zstd -q -c -T0 -3 | aws --endpoint-url {} s3 cp - s3://{}/plain/{trial}.tar.zst",
            m.port, s3.endpoint, s3.bucket
        );
        let mut base = Duration::ZERO;
        if plain_first {
            base = sh(&script, &env)?;
        }
        let start = Instant::now();
        let b = lab.drctl_json(&["backup", "run", "--cluster", PG_CLUSTER, "--destination", &format!("s3-{}", s3.region)])?;
        let took = start.elapsed();
        if b["state"] != "done" {
            bail!("backup failed: {b}");
        }
        let raw = b["raw_bytes"].as_u64().unwrap_or(0);
        if !plain_first {
            base = sh(&script, &env)?;
        }
        println!(
            "{}: drc {raw} B raw in {:.1} s = {:.1} MB/s (stored {} B); plain pipeline {:.1} s = {:.1} MB/s",
            if trial == 0 { "warm-up (not counted)".to_string() } else { format!("trial {trial}") },
            took.as_secs_f64(),
            mbps(raw, took),
            b["stored_bytes"],
            base.as_secs_f64(),
            mbps(raw, base)
        );
        last = b;
        if trial == 0 {
            continue;
        }
        ours.push(mbps(raw, took));
        plain.push(mbps(raw, base));
        raws.push(raw);
    }
    // Whichever pipeline goes first reads a colder cache, so the order
    // alternates and each trial's ratio is printed as well.
    println!("backup throughput, drc / plain per trial: {}", percents(&ours, &plain));
    let (o, p) = (median(ours), median(plain));
    println!("backup throughput (median): drc {o:.1} MB/s, plain {p:.1} MB/s: {:.0} % of the baseline", 100.0 * o / p);

    // Restores of the last backup.
    let (mut tests, mut plains, mut rtos) = (Vec::new(), Vec::new(), Vec::new());
    let s3 = lab.info.s3.iter().find(|s| s.region == last["destination_region"].as_str().unwrap_or("")).context("s3")?;
    let env = [
        ("AWS_ACCESS_KEY_ID", s3.access_key.clone()),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_key.clone()),
        ("AWS_DEFAULT_REGION", "us-east-1".to_string()),
    ];
    for trial in 1..=trials {
        let start = Instant::now();
        let t = lab.drctl_json(&["recovery-test", "run", "--cluster", PG_CLUSTER])?;
        let took = start.elapsed();
        if t["state"] != "done" {
            bail!("recovery test failed: {t}");
        }
        let restore = dir.path().join(format!("plain-restore-{trial}"));
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let script = format!(
            "R={r}; mkdir -p $R/data && chmod 700 $R/data\n\
             aws --endpoint-url {e} s3 cp s3://{b}/{k} - | age -d -i {i} | zstd -q -d | tar -x -C $R/data\n\
             rm -f $R/data/standby.signal && chown -R postgres $R\n\
             runuser -u postgres -- {PG_BIN}/pg_ctl -D $R/data -o \"-p {port} -k $R -c listen_addresses=127.0.0.1\" -l $R/log -w -t 600 start >/dev/null\n\
             psql -h 127.0.0.1 -p {port} -U postgres -Atc 'SELECT 1' >/dev/null",
            r = restore.display(),
            e = s3.endpoint,
            b = s3.bucket,
            k = last["data_key"].as_str().unwrap_or(""),
            i = lab.info.backup.identity_file.display(),
        );
        let plain_took = sh(&script, &env);
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--", &format!("{PG_BIN}/pg_ctl"), "-D"])
            .arg(restore.join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&restore);
        let plain_took = plain_took?;
        let rto = t["rto_ms"].as_u64().unwrap_or(0);
        println!(
            "trial {trial}: recovery test {:.1} s (RTO {:.1} s, restore {} ms, checksums {} in {} ms, amcheck {}); plain restore {:.1} s",
            took.as_secs_f64(),
            rto as f64 / 1000.0,
            t["checks"]["restore_ms"].as_str().unwrap_or("?"),
            t["checks"]["checksums"].as_str().unwrap_or("-"),
            t["checks"]["checksums_ms"].as_str().unwrap_or("-"),
            t["checks"]["amcheck"].as_str().unwrap_or("-"),
            plain_took.as_secs_f64()
        );
        tests.push(took.as_secs_f64());
        rtos.push(rto as f64 / 1000.0);
        plains.push(plain_took.as_secs_f64());
    }
    println!("recovery test / plain restore per trial: wall {}; RTO {}", percents(&tests, &plains), percents(&rtos, &plains));
    let (t, r, p) = (median(tests), median(rtos), median(plains));
    println!("recovery test (median): {t:.1} s wall, RTO {r:.1} s; plain restore {p:.1} s: {:.2} x (RTO {:.2} x)", t / p, r / p);
    let raw = raws.last().copied().unwrap_or(0);
    println!("data: {:.0} MiB database, {:.0} MiB backup stream", size as f64 / 1048576.0, raw as f64 / 1048576.0);
    Ok(())
}
