//! `drc-bench archive`: how far behind the primary the WAL archive runs
//! under a steady write load, and whether it keeps up with a heavy one.
//!
//! A writer commits on the primary at a steady rate, each commit a row of
//! `row_bytes`, and notes the WAL position after it and when it was
//! acknowledged. A watcher reads the archive's reach (`drctl status`) every
//! 50 ms. A commit's archive lag is the time from its acknowledgement to
//! the first reading at or past its position. That is an upper bound of the
//! true lag: it adds the age of the archiver's newest sample (at most the
//! lab's 200 ms probe interval) and up to one watcher period.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::stats::percentile;
use crate::lab::Lab;
use crate::wait_for;

/// One acknowledged commit: its row's id, the WAL position after it, and when.
pub(super) struct Commit {
    pub id: i64,
    pub lsn: u64,
    pub at: Instant,
}

pub fn run(seconds: u64, rates: &[u32], row_bytes: usize) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("drc-bench-archive-").tempdir()?;
    let lab = Lab::up(dir.path())?;
    let pa = lab.member("pg-a").context("pg-a")?.clone();
    crate::lab::postgres::psql(pa.port, "CREATE TABLE bench_archive (id bigserial PRIMARY KEY, v text)")?;
    wait_for("the archiver to stream", Duration::from_secs(60), || reach(&lab).filter(|r| *r > 0))?;
    println!("archive benchmark: one lab, the archiver's shipped defaults (upload every 500 ms), {row_bytes}-byte rows");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    for rate in rates {
        let commits = Arc::new(Mutex::new(Vec::<Commit>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (commits, stop) = (Arc::clone(&commits), Arc::clone(&stop));
            rt.spawn(write(pa.port, *rate, row_bytes, commits, stop))
        };
        // Watch the archive's reach while the writer runs, and a little after.
        let started = Instant::now();
        let mut readings: Vec<(Instant, u64)> = Vec::new();
        while started.elapsed() < Duration::from_secs(seconds) {
            if let Some(r) = reach(&lab) {
                readings.push((Instant::now(), r));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::SeqCst);
        let written = rt.block_on(writer)??;
        let last = commits.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.last().map(|c| c.lsn).unwrap_or(0);
        let settle = Instant::now();
        while settle.elapsed() < Duration::from_secs(30) && readings.last().is_none_or(|(_, r)| *r < last) {
            if let Some(r) = reach(&lab) {
                readings.push((Instant::now(), r));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let commits = std::mem::take(&mut *commits.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
        let mut lags: Vec<Duration> = Vec::new();
        let mut never = 0;
        for c in &commits {
            match readings.iter().find(|(t, r)| *t >= c.at && *r >= c.lsn) {
                Some((t, _)) => lags.push(t.duration_since(c.at)),
                None => never += 1,
            }
        }
        let wal = commits.last().map(|c| c.lsn).unwrap_or(0).saturating_sub(commits.first().map(|c| c.lsn).unwrap_or(0));
        let secs = seconds as f64;
        println!(
            "{rate} commits/s asked, {} made ({:.1} MB/s of WAL): archive lag p50 {:.2} s  p99 {:.2} s  max {:.2} s{}",
            written,
            wal as f64 / 1e6 / secs,
            percentile(&mut lags, 0.50).as_secs_f64(),
            percentile(&mut lags, 0.99).as_secs_f64(),
            lags.iter().max().copied().unwrap_or_default().as_secs_f64(),
            if never > 0 { format!("; {never} commits not archived within 30 s of the end") } else { String::new() }
        );
    }
    lab.down()?;
    Ok(())
}

/// The archive's reach (LSN as an integer) as `drctl status` shows it.
pub(super) fn reach(lab: &Lab) -> Option<u64> {
    let s = lab.status().ok()?;
    let pg = s["clusters"].as_array()?.iter().find(|c| c["name"] == "app-pg")?.clone();
    pg["wal_archive"]["end"].as_u64()
}

/// Commits `rate` rows a second until `stop`; how many it made.
pub(super) async fn write(
    port: u16,
    rate: u32,
    row_bytes: usize,
    commits: Arc<Mutex<Vec<Commit>>>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<u64> {
    let (client, conn) =
        tokio_postgres::connect(&format!("host=127.0.0.1 port={port} user=postgres dbname=postgres"), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let insert = client.prepare("INSERT INTO bench_archive (v) VALUES ($1) RETURNING id").await?;
    let lsn = client.prepare("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint").await?;
    // Letters in no pattern pglz can shorten: every byte reaches the WAL.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let value: String = (0..row_bytes)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect();
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut next = tokio::time::Instant::now();
    let mut made = 0;
    while !stop.load(Ordering::SeqCst) {
        let id: i64 = client.query_one(&insert, &[&value]).await?.get(0);
        let at = Instant::now();
        let row = client.query_one(&lsn, &[]).await?;
        commits.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push(Commit { id, lsn: row.get::<_, i64>(0).max(0) as u64, at });
        made += 1;
        next += period;
        tokio::time::sleep_until(next).await;
    }
    Ok(made)
}
