//! `drc-bench failover`.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::lab::netns::Fault;
use crate::lab::{kill_tree, postgres::postmaster_pid, signal, signal_tree, Lab, LabOptions, PG_CLUSTER, REDIS_CLUSTER};
use crate::wait_for;
use anyhow::{anyhow, bail};

/// Runs `program args` with a time limit; its stdout when it succeeds.
fn run_limited(program: &str, args: &[&str], limit: Duration) -> Option<String> {
    let mut child = Command::new(program).args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().ok()?;
    // Read while it runs: a child whose output outgrows the pipe (64 KiB;
    // the ids of ~11,000 acknowledged writes) blocks until it is read.
    let mut stdout = child.stdout.take()?;
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut out).ok().map(|_| out)
    });
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let out = reader.join().ok()??;
                return status.success().then(|| out.trim().to_string());
            }
            Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// One write of `id` through the endpoint; true when acknowledged.
fn write(redis: bool, port: u16, id: u64) -> bool {
    let port = port.to_string();
    let limit = Duration::from_secs(2);
    if redis {
        run_limited("redis-cli", &["-h", "127.0.0.1", "-p", &port, "SADD", "acked", &id.to_string()], limit).is_some_and(|o| o == "1")
    } else {
        let sql = format!("INSERT INTO acked VALUES ({id})");
        run_limited("psql", &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-At", "-v", "ON_ERROR_STOP=1", "-c", &sql], limit)
            .is_some()
    }
}

/// An application's view of PostgreSQL: one persistent connection through
/// the endpoint, re-established when the proxy cuts it at a failover.
struct PgWriter {
    runtime: tokio::runtime::Runtime,
    port: u16,
    client: Option<tokio_postgres::Client>,
}

impl PgWriter {
    fn new(port: u16) -> PgWriter {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        PgWriter { runtime, port, client: None }
    }

    fn insert(&mut self, id: u64) -> bool {
        let limit = Duration::from_secs(2);
        let port = self.port;
        let client = self.client.take();
        let (ok, client) = self.runtime.block_on(async move {
            let client = match client {
                Some(c) if !c.is_closed() => c,
                _ => {
                    let conf = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=2");
                    let Ok(Ok((c, conn))) = tokio::time::timeout(limit, tokio_postgres::connect(&conf, tokio_postgres::NoTls)).await else {
                        return (false, None);
                    };
                    tokio::spawn(conn);
                    c
                }
            };
            let sql = format!("INSERT INTO acked VALUES ({id})");
            match tokio::time::timeout(limit, client.batch_execute(&sql)).await {
                Ok(Ok(())) => (true, Some(client)),
                _ => (false, None),
            }
        });
        self.client = client;
        ok
    }
}

/// Every acknowledged id the current primary holds, read through the endpoint.
fn present(redis: bool, port: u16) -> Option<std::collections::BTreeSet<u64>> {
    let port = port.to_string();
    let out = if redis {
        run_limited("redis-cli", &["-h", "127.0.0.1", "-p", &port, "SMEMBERS", "acked"], Duration::from_secs(5))?
    } else {
        run_limited(
            "psql",
            &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-At", "-c", "SELECT id FROM acked"],
            Duration::from_secs(5),
        )?
    };
    Some(out.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

fn epoch(lab: &Lab, cluster: &str) -> Option<u64> {
    lab.status().ok()?["clusters"].as_array()?.iter().find(|c| c["name"] == cluster)?["epoch"].as_u64()
}

struct Trial {
    to_first_write: Duration,
    /// The longest time without an acknowledged write after the fault (a
    /// fault the old primary survives for a while, as a one-way partition,
    /// shows here, not in the first write).
    longest_gap: Duration,
    acked: usize,
    lost: usize,
    /// How long before the fault the earliest lost write was
    /// acknowledged: with asynchronous replication, only writes still
    /// in flight to the replicas may be lost.
    oldest_lost: Option<Duration>,
    /// Where the time went, from the decision's history.
    timeline: String,
    /// Median time from sending a write to its acknowledgement, over
    /// the writes acknowledged before the fault (what a commit costs).
    write_latency: Duration,
    /// The fault took the coordinator leader with it.
    leader_lost: bool,
}

/// "detected +0.52 decided +0.83 promote +0.90..+1.31 ..." in seconds
/// after the fault (wall clock, ms since the Unix epoch).
fn timeline(lab: &Lab, cluster: &str, fault_ms: u64) -> String {
    let Ok(h) = lab.drctl_json(&["history", "--cluster", cluster]) else { return "no history".into() };
    let Some(d) = h["decisions"].as_array().and_then(|a| a.iter().find(|d| d["epoch"] == 2)) else {
        return "no decision".into();
    };
    let at = |v: &serde_json::Value| {
        v.as_u64().filter(|t| *t > 0).map(|t| format!("{:+.2}", (t as f64 - fault_ms as f64) / 1000.0)).unwrap_or("-".into())
    };
    let mut out = format!("detected {} decided {}", at(&d["detected_at"]), at(&d["decided_at"]));
    for s in d["steps"].as_array().into_iter().flatten() {
        out.push_str(&format!(" {} {}..{}", s["action"].as_str().unwrap_or("?"), at(&s["started"]), at(&s["finished"])));
    }
    out
}

fn trial(fault: &str, synchronous_replicas: u32, insecure: bool) -> anyhow::Result<Trial> {
    let dir = tempfile::Builder::new().prefix("drc-bench-failover-").tempdir()?;
    // The worst case is measured with leader placement off: it would
    // move the leader back out of region a.
    let lab = Lab::up_with(
        dir.path(),
        LabOptions {
            leader_placement: fault != "region-leader",
            synchronous_replicas,
            // Partitions need every node in a network namespace of its own.
            netns: fault == "region-blackhole" || fault == "region-one-way",
            insecure,
            ..Default::default()
        },
    )?;
    let redis = fault.starts_with("redis-");
    let cluster = if redis { REDIS_CLUSTER } else { PG_CLUSTER };
    wait_for("both clusters adopted", Duration::from_secs(60), || {
        (epoch(&lab, PG_CLUSTER)? >= 1 && epoch(&lab, REDIS_CLUSTER)? >= 1).then_some(())
    })?;
    if synchronous_replicas > 0 {
        wait_for("pg-a's commits to wait for its standbys", Duration::from_secs(60), || {
            let h = lab.members_health().ok()?;
            h.get("pg-a")?["sync_standbys"].as_str().filter(|s| !s.is_empty()).map(|_| ())
        })?;
    }
    if fault == "region-leader" {
        // The worst region loss: the coordinator leader goes with it.
        let a = lab.info.coordinators.iter().find(|c| c.region == "a").ok_or_else(|| anyhow!("no coordinator in region a"))?;
        lab.drctl_json(&["members", "lead", "--id", &a.id.to_string()])?;
    }
    let port: u16 = lab.forwarder(cluster)?.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).ok_or_else(|| anyhow!("port"))?;
    if !redis
        && run_limited(
            "psql",
            &["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "-c", "CREATE TABLE acked (id bigint PRIMARY KEY)"],
            Duration::from_secs(10),
        )
        .is_none()
    {
        bail!("cannot create the table through the forwarder");
    }
    // (id, sent, acknowledged)
    let acks: Arc<Mutex<Vec<(u64, Instant, Instant)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acks, stop) = (Arc::clone(&acks), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut pg = PgWriter::new(port);
            let mut id = 0;
            while !stop.load(Ordering::SeqCst) {
                id += 1;
                // A write counts from when it was sent: one in flight at
                // the fault may still be acknowledged by the old primary.
                let sent = Instant::now();
                let ok = if redis { write(redis, port, id) } else { pg.insert(id) };
                if ok {
                    acks.lock().unwrap_or_else(|p| p.into_inner()).push((id, sent, Instant::now()));
                } else {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        })
    };
    std::thread::sleep(Duration::from_secs(3));
    let member = |id: &str| lab.member(id).cloned();
    let (pa, ra) = (member("pg-a")?, member("redis-a")?);
    let leader = lab.status().ok().and_then(|s| s["leader_id"].as_u64()).unwrap_or(0);
    let region = fault == "region" || fault == "region-leader";
    let leader_lost = region && lab.info.coordinators.iter().any(|c| c.region == "a" && c.id == leader);
    if fault == "region-leader" && !leader_lost {
        bail!("the coordinator leader is node {leader}, not region a's");
    }
    // Processes frozen by the fault, woken once the trial is measured.
    let mut frozen = Vec::new();
    match fault {
        "pg-crash" => kill_tree(postmaster_pid(&pa.data_dir)?),
        // A hung machine: every process of the member's node stops, and
        // every connection to it stays open and silent.
        "pg-freeze" => {
            signal(pa.agent_pid, libc::SIGSTOP);
            frozen.push(pa.agent_pid);
            frozen.extend(signal_tree(postmaster_pid(&pa.data_dir)?, libc::SIGSTOP));
        }
        // Every packet into and out of region a dropped, silently.
        "region-blackhole" => lab.fault(&Fault::Isolate { region: "a".into(), reject: false })?,
        // Region a's packets to region b (the coordinator leader's, with
        // leader placement) dropped; b's to a delivered.
        "region-one-way" => lab.fault(&Fault::OneWay { from: "a".into(), to: "b".into() })?,
        // A storage hang: the server tree frozen, its agent alive.
        "pg-hang" => frozen.extend(signal_tree(postmaster_pid(&pa.data_dir)?, libc::SIGSTOP)),
        "redis-freeze" => {
            for pid in [ra.agent_pid, ra.pid] {
                signal(pid, libc::SIGSTOP);
                frozen.push(pid);
            }
        }
        "pg-node" => {
            signal(pa.agent_pid, libc::SIGKILL);
            kill_tree(postmaster_pid(&pa.data_dir)?);
        }
        "redis-node" => {
            signal(ra.agent_pid, libc::SIGKILL);
            signal(ra.pid, libc::SIGKILL);
        }
        "region" | "region-leader" => {
            for c in lab.info.coordinators.iter().filter(|c| c.region == "a") {
                signal(c.pid, libc::SIGKILL);
            }
            signal(pa.agent_pid, libc::SIGKILL);
            signal(ra.agent_pid, libc::SIGKILL);
            signal(ra.pid, libc::SIGKILL);
            kill_tree(postmaster_pid(&pa.data_dir)?);
        }
        other => bail!("unknown fault {other:?}"),
    }
    // The fault has happened once every signal is sent (finding a
    // postmaster's children takes a few milliseconds, during which the
    // old primary still acknowledges writes).
    let fault_at = Instant::now();
    let fault_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let first = wait_for("the first acknowledged write after the fault", Duration::from_secs(120), || {
        acks.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|(_, at, _)| *at > fault_at).map(|(_, at, _)| *at)
    });
    // A one-way partition leaves the old primary serving until its lease
    // and its vouchers run out: watched long enough to see that.
    std::thread::sleep(Duration::from_secs(if fault == "region-one-way" { 8 } else { 1 }));
    stop.store(true, Ordering::SeqCst);
    let _ = writer.join();
    for pid in frozen {
        signal(pid, libc::SIGCONT);
    }
    let first = first?;
    let longest_gap = {
        let acks = acks.lock().unwrap_or_else(|p| p.into_inner());
        let mut last = fault_at;
        let mut gap = Duration::ZERO;
        for (_, _, acked) in acks.iter().filter(|(_, _, acked)| *acked > fault_at) {
            gap = gap.max(acked.duration_since(last));
            last = *acked;
        }
        gap
    };
    let acked: Vec<u64> = acks.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(id, _, _)| *id).collect();
    let held = wait_for("the acknowledged ids read back", Duration::from_secs(30), || present(redis, port))?;
    let missing: Vec<u64> = acked.iter().copied().filter(|id| !held.contains(id)).collect();
    let lost = missing.len();
    let oldest_lost = missing.first().and_then(|first| {
        let acks = acks.lock().unwrap_or_else(|p| p.into_inner());
        acks.iter().find(|(id, _, _)| id == first).map(|(_, _, acked)| fault_at.saturating_duration_since(*acked))
    });
    let mut timeline = timeline(&lab, cluster, fault_ms);
    if let (Some(lo), Some(hi)) = (missing.first(), missing.last()) {
        // Which writes: the last ones before the fault (not yet streamed)
        // or ones after it (a wrong primary)?
        let after = acks.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|(_, at, _)| *at > fault_at).map(|(id, _, _)| *id);
        timeline.push_str(&format!("\n  lost ids {lo}..{hi}; first id acknowledged after the fault: {after:?}"));
        if let Ok(h) = lab.drctl_json(&["history", "--cluster", cluster]) {
            timeline.push_str(&format!("\n  decisions: {h}"));
        }
    }
    let mut latencies: Vec<Duration> = acks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|(_, _, acked)| *acked < fault_at)
        .map(|(_, sent, acked)| acked.duration_since(*sent))
        .collect();
    let write_latency = super::stats::percentile(&mut latencies, 0.5);
    Ok(Trial {
        to_first_write: first.duration_since(fault_at),
        longest_gap,
        acked: acked.len(),
        lost,
        oldest_lost,
        timeline,
        leader_lost,
        write_latency,
    })
}

pub fn run(trials: u32, faults: &[String], synchronous_replicas: u32, insecure: bool) -> anyhow::Result<()> {
    let replication = match synchronous_replicas {
        0 => "asynchronous replication".to_string(),
        n => format!("synchronous replication (every PostgreSQL commit waits for {n} replica(s))"),
    };
    let mode = if insecure { "plaintext (insecure)" } else { "mutual TLS" };
    println!("failover benchmark: a fresh lab per trial ({mode}), a continuous writer through drc-proxy, shipped defaults, {replication}");
    for fault in faults {
        let (mut times, mut latencies, mut gaps) = (Vec::new(), Vec::new(), Vec::new());
        let (mut lost, mut oldest_lost) = (0, Duration::ZERO);
        for t in 1..=trials {
            match trial(fault, synchronous_replicas, insecure) {
                Ok(r) => {
                    let when = r.oldest_lost.map(|d| format!(" (the first acknowledged {:.1} ms before the fault)", d.as_secs_f64() * 1e3));
                    println!(
                        "{fault} trial {t}: first acknowledged write {:.2} s after the fault, longest gap after it {:.2} s; {} writes acknowledged (median {:.2} ms each before the fault), {} lost{}{}\n  {}",
                        r.to_first_write.as_secs_f64(),
                        r.longest_gap.as_secs_f64(),
                        r.acked,
                        r.write_latency.as_secs_f64() * 1e3,
                        r.lost,
                        when.unwrap_or_default(),
                        if r.leader_lost { " (the coordinator leader went with the region)" } else { "" },
                        r.timeline
                    );
                    times.push(r.to_first_write);
                    gaps.push(r.longest_gap);
                    latencies.push(r.write_latency);
                    lost += r.lost;
                    oldest_lost = oldest_lost.max(r.oldest_lost.unwrap_or_default());
                }
                Err(e) => println!("{fault} trial {t}: failed: {e:#}"),
            }
        }
        let median = super::stats::percentile(&mut times, 0.5);
        let gap_median = super::stats::percentile(&mut gaps, 0.5);
        if !latencies.is_empty() {
            println!(
                "{fault}: median write latency before the fault, median over trials: {:.2} ms",
                super::stats::percentile(&mut latencies, 0.5).as_secs_f64() * 1e3
            );
        }
        if let (Some(min), Some(max)) = (times.first(), times.last()) {
            println!(
                "{fault}: {} trials: min {:.2} s  median {:.2} s  max {:.2} s; longest gap after the fault: median {:.2} s, max {:.2} s; {lost} acknowledged writes lost in all, none acknowledged more than {:.1} ms before the fault",
                times.len(),
                min.as_secs_f64(),
                median.as_secs_f64(),
                max.as_secs_f64(),
                gap_median.as_secs_f64(),
                gaps.last().copied().unwrap_or_default().as_secs_f64(),
                oldest_lost.as_secs_f64() * 1e3
            );
        }
    }
    Ok(())
}
