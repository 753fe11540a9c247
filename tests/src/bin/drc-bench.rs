//! `drc-bench`: benchmarks that print numbers (never asserted in tests).
//!
//! `drc-bench raft` — on a 3-node coordinator cluster on loopback with fsync
//! on: commit latency of admin writes (p50/p99 over `--writes`) and the time
//! from SIGKILL of the leader to the first successful write on a new leader
//! (median over `--trials`).
//!
//! `drc-bench failover` — in a fresh lab per trial, a continuous writer
//! through the cluster's stable endpoint (drc-proxy); a fault; the time from
//! the fault to the first acknowledged write, and the acknowledged writes
//! missing from the new primary afterwards.
//!
//! `drc-bench backup` — in one lab, a pgbench database of `--scale` (70 is
//! about 1 GiB): drc's backup (pg_basebackup | zstd | age | S3 multipart,
//! hashed) against a plain `pg_basebackup | zstd | aws s3 cp -` to the same
//! bucket (after one warm-up round that is printed but not counted), and
//! drc's recovery test against a plain streaming restore
//! (`aws s3 cp - | age -d | zstd -d | tar -x`, start, first query).
//!
//! Build in release for meaningful numbers:
//! `cargo build --release --workspace --bins && target/release/drc-bench raft`

use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use drc_proto::admin_service_client::AdminServiceClient;
use drc_proto::ApplyTopologyRequest;
use drc_tests::{example_topology, Cluster, ClusterOpts};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Commit latency and leader-failover time of the coordinator cluster.
    Raft {
        #[arg(long, default_value_t = 1000)]
        writes: u32,
        #[arg(long, default_value_t = 5)]
        trials: u32,
    },
    /// N agent streams at one sample per second against a 3-node cluster:
    /// the leader's CPU and RSS, and sample-to-status staleness.
    Agents {
        #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000")]
        counts: Vec<usize>,
        /// Measurement window per count.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// The coordinators' Raft tick (election timeout = 10 ticks).
        #[arg(long, default_value = "100ms")]
        tick_interval: String,
        /// Agent streams per HTTP/2 connection. 1 (the default) is what
        /// real agents do; more lets one 2-core machine generate 10,000
        /// streams without starving the coordinator it measures.
        #[arg(long, default_value_t = 1)]
        streams_per_connection: usize,
    },
    /// Fault -> first acknowledged write (sent after the fault) through the
    /// lab's stable endpoint, and acknowledged writes lost.
    Failover {
        #[arg(long, default_value_t = 10)]
        trials: u32,
        /// pg-crash (postmaster SIGKILL), pg-node (server and agent),
        /// redis-node (server and agent), region (everything in region a),
        /// region-leader (the same, with the coordinator leader moved into
        /// region a first: the worst case).
        #[arg(long, value_delimiter = ',', default_value = "pg-crash,pg-node,redis-node,region,region-leader")]
        faults: Vec<String>,
        /// The PostgreSQL policy's `synchronous_replicas` (0: asynchronous,
        /// the default).
        #[arg(long, default_value_t = 0)]
        synchronous_replicas: u32,
    },
    /// Backup throughput and recovery-test time against plain pipelines.
    Backup {
        /// pgbench scale factor (about 15 MiB each).
        #[arg(long, default_value_t = 70)]
        scale: u32,
        #[arg(long, default_value_t = 2)]
        trials: u32,
    },
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

async fn write(address: &str, version: u32) -> Result<(), tonic::Status> {
    let mut c = AdminServiceClient::connect(format!("http://{address}")).await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    c.apply_topology(ApplyTopologyRequest { topology_toml: example_topology(version), dry_run: false }).await.map(|_| ())
}

fn main() -> anyhow::Result<()> {
    match Args::parse().bench {
        Bench::Raft { writes, trials } => {
            tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(raft(writes, trials))
        }
        Bench::Failover { trials, faults, synchronous_replicas } => failover::run(trials, &faults, synchronous_replicas),
        Bench::Backup { scale, trials } => backup::run(scale, trials),
        Bench::Agents { counts, seconds, tick_interval, streams_per_connection } => {
            let tick: &'static str = Box::leak(tick_interval.into_boxed_str());
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(agents::run(
                counts,
                seconds,
                tick,
                streams_per_connection.max(1),
            ))
        }
    }
}

async fn raft(writes: u32, trials: u32) -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOpts::default())?;
    let leader = cluster.wait_leader(Duration::from_secs(30))?;
    let address = cluster.nodes[&leader].address.clone();
    let mut client = AdminServiceClient::connect(format!("http://{address}")).await?;
    let mut ping = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        client.node_status(drc_proto::NodeStatusRequest {}).await?;
        ping.push(t.elapsed());
    }
    ping.sort();
    println!("gRPC round trip (NodeStatus): p50 {}  p99 {}", ms(percentile(&ping, 0.5)), ms(percentile(&ping, 0.99)));
    // Baseline: the same request as a dry run (parse, validate, diff; no Raft).
    let mut base = Vec::with_capacity(writes as usize);
    for v in 0..writes.min(300) {
        let req = ApplyTopologyRequest { topology_toml: example_topology(5000 + v), dry_run: true };
        let t = Instant::now();
        client.apply_topology(req).await?;
        base.push(t.elapsed());
    }
    base.sort();
    println!("baseline: the same request as a dry run (no Raft), {} requests:", base.len());
    println!("  p50 {}  p99 {}", ms(percentile(&base, 0.5)), ms(percentile(&base, 0.99)));
    let mut lat = Vec::with_capacity(writes as usize);
    for v in 0..writes {
        let req = ApplyTopologyRequest { topology_toml: example_topology(1000 + v), dry_run: false };
        let t = Instant::now();
        client.apply_topology(req).await?;
        lat.push(t.elapsed());
    }
    lat.sort();
    println!("commit latency of admin writes (3 nodes, loopback, fsync on, {writes} sequential writes to the leader):");
    println!("  p50 {}  p99 {}  max {}", ms(percentile(&lat, 0.5)), ms(percentile(&lat, 0.99)), ms(percentile(&lat, 1.0)));

    let mut failovers = Vec::new();
    let mut version = 100_000;
    for trial in 1..=trials {
        let leader = cluster.wait_leader(Duration::from_secs(30))?;
        let survivors: Vec<String> = cluster.nodes.values().filter(|n| n.id != leader).map(|n| n.address.clone()).collect();
        let t = Instant::now();
        cluster.kill(leader);
        'outer: loop {
            for a in &survivors {
                version += 1;
                if write(a, version).await.is_ok() {
                    break 'outer;
                }
            }
            if t.elapsed() > Duration::from_secs(60) {
                anyhow::bail!("no write accepted within 60 s of killing the leader");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let took = t.elapsed();
        println!("  trial {trial}: SIGKILL of leader {leader} -> first accepted write {}", ms(took));
        failovers.push(took);
        cluster.spawn(leader)?;
        cluster.wait_leader(Duration::from_secs(30))?;
        // Let the restarted node catch up before the next trial.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    failovers.sort();
    println!(
        "leader failover, SIGKILL -> first accepted write ({trials} trials): median {}  min {}  max {}",
        ms(percentile(&failovers, 0.5)),
        ms(failovers[0]),
        ms(failovers[failovers.len() - 1])
    );
    Ok(())
}

mod agents {
    //! The agent-stream load generator.

    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use drc_proto::admin_service_client::AdminServiceClient;
    use drc_proto::agent_service_client::AgentServiceClient;
    use drc_proto::{agent_message::Body, coordinator_message, AgentHello, AgentMessage, ApplyTopologyRequest, HealthRequest, Sample};
    use drc_tests::{Cluster, ClusterOpts};
    use tonic::transport::{Channel, Endpoint};

    const PROBES: usize = 20;

    /// Set when the agents must stop.
    type Stop = Arc<AtomicBool>;

    /// HTTP/2 connections shared by `per` agents each, by (endpoint, slot);
    /// `per` = 1: every agent connects on its own, as real agents do.
    #[derive(Clone)]
    struct Pool {
        per: usize,
        channels: Arc<Mutex<HashMap<(String, usize), Channel>>>,
    }

    impl Pool {
        async fn client(&self, endpoint: &str, agent: usize) -> Result<AgentServiceClient<Channel>, String> {
            let target = Endpoint::from_shared(endpoint.to_string()).map_err(|e| format!("bad endpoint: {e}"))?;
            if self.per == 1 {
                return Ok(AgentServiceClient::new(target.connect().await.map_err(|e| format!("cannot connect: {e}"))?));
            }
            let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
            let channel = channels.entry((endpoint.to_string(), agent / self.per)).or_insert_with(|| target.connect_lazy());
            Ok(AgentServiceClient::new(channel.clone()))
        }
    }

    /// When each (probe member, position) was sent.
    type SentAt = Arc<Mutex<HashMap<(String, u64), Instant>>>;

    fn topology(n: usize) -> String {
        let mut t = String::from("[regions.a]\n[regions.b]\n[regions.c]\n[clusters.probe]\nkind = \"redis\"\n");
        for c in 0..n.div_ceil(5) {
            t.push_str(&format!("[clusters.c{c}]\nkind = \"redis\"\n"));
        }
        for i in 0..n {
            let r = ["a", "b", "c"][i % 3];
            t.push_str(&format!(
                "[[members]]\nid = \"m{i}\"\ncluster = \"c{}\"\nregion = \"{r}\"\naddress = \"10.0.0.{}:6379\"\n",
                i / 5,
                i % 250 + 1
            ));
        }
        for p in 0..PROBES {
            t.push_str(&format!("[[members]]\nid = \"p{p}\"\ncluster = \"probe\"\nregion = \"a\"\naddress = \"10.1.0.{}:6379\"\n", p + 1));
        }
        t
    }

    fn now_ms() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }

    fn cpu_ticks(pid: u32) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let f: Vec<&str> = rest.split_whitespace().collect();
        f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0) + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
    }

    fn rss_mib(pid: u32) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|k| k.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    }

    /// One agent: its own connection, a Hello, then a sample a second; like
    /// a real agent it reconnects (after a short pause) when the stream breaks.
    /// The first member of every cluster reports itself primary, so the
    /// leader adopts it and renews its lease every tick, as in production.
    async fn agent(pool: Pool, endpoint: String, member: String, cluster: String, region: String, sent: Option<SentAt>, stop: Stop) {
        let index: usize = member.trim_start_matches(['m', 'p']).parse().unwrap_or(1);
        // Probes get connections of their own, after the agents'.
        let slot = if member.starts_with('p') { usize::MAX / 2 + index * pool.per } else { index };
        let role = if (member.starts_with('m') && index.is_multiple_of(5)) || member == "p0" { "primary" } else { "replica" };
        // Spread the agents over the second.
        let jitter = member.bytes().map(u64::from).sum::<u64>() * 7919 % 1000;
        let mut seq = 0u64;
        let mut failures = 0u32;
        let mut endpoint = endpoint;
        while !stop.load(Ordering::Relaxed) {
            match stream(&pool, slot, &endpoint, &member, &cluster, &region, role, sent.as_ref(), &stop, jitter, &mut seq).await {
                Ok(None) => return,
                Ok(Some(leader)) => endpoint = format!("http://{leader}"),
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(10) {
                        eprintln!("agent {member}: {e} (attempt {failures})");
                    }
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(failures.min(10)))).await;
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn stream(
        pool: &Pool,
        slot: usize,
        endpoint: &str,
        member: &str,
        cluster: &str,
        region: &str,
        role: &str,
        sent: Option<&SentAt>,
        stop: &Stop,
        jitter: u64,
        seq: &mut u64,
    ) -> Result<Option<String>, String> {
        let mut client = pool.client(endpoint, slot).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let hello = AgentHello {
            member_id: member.into(),
            cluster: cluster.into(),
            region: region.into(),
            kind: "redis".into(),
            dataset_id: "bench".into(),
            ..Default::default()
        };
        tx.send(AgentMessage { body: Some(Body::Hello(hello)) }).await.map_err(|_| "stream closed".to_string())?;
        let resp =
            client.session(tokio_stream::wrappers::ReceiverStream::new(rx)).await.map_err(|e| format!("refused: {}", e.message()))?;
        let mut inbound = resp.into_inner();
        // The coordinator's side: views are ignored, a redirect names the leader.
        let mut drain = tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(m)) => {
                        if let Some(coordinator_message::Body::Redirect(r)) = m.body {
                            return Ok(r.leader_address);
                        }
                    }
                    Ok(None) => return Err("the coordinator closed the stream".to_string()),
                    Err(e) => return Err(format!("stream failed: {} {}", e.code(), e.message())),
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(jitter)).await;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let result = loop {
            if stop.load(Ordering::Relaxed) {
                break Ok(None);
            }
            tick.tick().await;
            if drain.is_finished() {
                break match (&mut drain).await {
                    Ok(Ok(leader)) if !leader.is_empty() => Ok(Some(leader)),
                    Ok(Ok(_)) => Err("redirected, but no leader known yet".to_string()),
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(e.to_string()),
                };
            }
            *seq += 1;
            let s = Sample {
                member_id: member.into(),
                taken_at_ms: now_ms(),
                reachable: true,
                role: role.into(),
                position: *seq,
                dataset_id: "bench".into(),
                replication_connected: true,
                primary_reachable: true,
                replication_state: "up".into(),
                ..Default::default()
            };
            if let Some(sent) = sent {
                sent.lock().unwrap_or_else(|p| p.into_inner()).insert((member.to_string(), *seq), Instant::now());
            }
            if tx.send(AgentMessage { body: Some(Body::Sample(s)) }).await.is_err() {
                break Err("stream closed".to_string());
            }
        };
        drain.abort();
        result
    }

    fn pct(v: &mut [Duration], p: f64) -> f64 {
        v.sort();
        if v.is_empty() {
            return 0.0;
        }
        v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
    }

    pub async fn run(counts: Vec<usize>, seconds: u64, tick_interval: &'static str, per: usize) -> anyhow::Result<()> {
        println!(
            "agents benchmark: 3 coordinators on loopback (raft tick {tick_interval}), one gRPC stream per agent, {per} stream(s) per HTTP/2 connection, 1 sample/s each"
        );
        let pool = Pool { per, channels: Arc::default() };
        for n in counts {
            let cluster = Cluster::start(ClusterOpts { write_timeout: "30s", tick_interval, ..Default::default() })?;
            let leader_id = cluster.wait_leader(Duration::from_secs(30))?;
            let leader = cluster.nodes[&leader_id].address.clone();
            let pid = cluster.nodes[&leader_id].pid().unwrap_or(0);
            let mut admin = AdminServiceClient::connect(format!("http://{leader}"))
                .await?
                .max_decoding_message_size(256 << 20)
                .max_encoding_message_size(256 << 20);
            admin.apply_topology(ApplyTopologyRequest { topology_toml: topology(n), dry_run: false }).await?;
            let idle_rss = rss_mib(pid);
            let sent = Arc::new(Mutex::new(HashMap::new()));
            let connect_start = Instant::now();
            // The agents run until the measurement is over, however long
            // connecting takes.
            let stop: Stop = Arc::new(AtomicBool::new(false));
            let mut tasks = Vec::new();
            for i in 0..n {
                tasks.push(tokio::spawn(agent(
                    pool.clone(),
                    format!("http://{leader}"),
                    format!("m{i}"),
                    format!("c{}", i / 5),
                    ["a", "b", "c"][i % 3].into(),
                    None,
                    Arc::clone(&stop),
                )));
                if i % 100 == 99 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            for p in 0..PROBES {
                tasks.push(tokio::spawn(agent(
                    pool.clone(),
                    format!("http://{leader}"),
                    format!("p{p}"),
                    "probe".into(),
                    "a".into(),
                    Some(Arc::clone(&sent)),
                    Arc::clone(&stop),
                )));
            }
            // Wait until the leader sees every agent connected. The health
            // answer names the leader: if leadership moved, so do the
            // agents (they follow redirects) and so does the measurement.
            let mut admin = admin;
            let mut pid = pid;
            let mut last_report = Instant::now();
            loop {
                let h = admin.health(HealthRequest { cluster: String::new() }).await?.into_inner();
                let connected = h.clusters.iter().flat_map(|c| &c.members).filter(|m| m.agent_connected).count();
                if h.leader_id != 0 && cluster.nodes.get(&h.leader_id).is_some_and(|node| node.pid().unwrap_or(0) != pid) {
                    let node = &cluster.nodes[&h.leader_id];
                    pid = node.pid().unwrap_or(0);
                    admin = AdminServiceClient::connect(format!("http://{}", node.address))
                        .await?
                        .max_decoding_message_size(256 << 20)
                        .max_encoding_message_size(256 << 20);
                    continue;
                }
                if connected >= n + PROBES || connect_start.elapsed() > Duration::from_secs(120) {
                    println!("N = {n}: {connected} streams connected in {:.1} s", connect_start.elapsed().as_secs_f64());
                    break;
                }
                if last_report.elapsed() > Duration::from_secs(10) {
                    println!("N = {n}: {connected} streams connected after {:.0} s", connect_start.elapsed().as_secs_f64());
                    last_report = Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
            // Measure: leader CPU over the window; staleness of probe samples.
            let ticks0 = cpu_ticks(pid);
            let t0 = Instant::now();
            let mut seen: HashMap<String, u64> = HashMap::new();
            let mut staleness = Vec::new();
            while t0.elapsed() < Duration::from_secs(seconds) {
                let h = admin.health(HealthRequest { cluster: "probe".into() }).await?.into_inner();
                let now = Instant::now();
                for m in h.clusters.iter().flat_map(|c| &c.members) {
                    let last = seen.entry(m.id.clone()).or_insert(m.position);
                    if m.position > *last {
                        *last = m.position;
                        if let Some(at) = sent.lock().unwrap_or_else(|p| p.into_inner()).remove(&(m.id.clone(), m.position)) {
                            staleness.push(now.saturating_duration_since(at));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let cpu = (cpu_ticks(pid) - ticks0) as f64 / 100.0 / t0.elapsed().as_secs_f64() * 100.0;
            let rss = rss_mib(pid);
            println!(
                "N = {n}: leader CPU {cpu:.0} % of one core, RSS {rss:.0} MiB (before agents {idle_rss:.0} MiB); staleness sample->status over {} samples: p50 {:.1} ms, p99 {:.1} ms",
                staleness.len(),
                pct(&mut staleness, 0.5),
                pct(&mut staleness, 0.99)
            );
            let elections: usize = cluster.nodes.values().map(|node| node.log_text().matches("became leader").count()).sum();
            println!("N = {n}: leader elections during the run: {}", elections.saturating_sub(1));
            stop.store(true, Ordering::Relaxed);
            for t in tasks {
                t.abort();
            }
            pool.channels.lock().unwrap_or_else(|p| p.into_inner()).clear();
            drop(cluster);
        }
        Ok(())
    }
}

mod failover {
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use anyhow::{anyhow, bail};
    use drc_tests::lab::{kill_tree, postgres::postmaster_pid, signal, Lab, LabOptions, PG_CLUSTER, REDIS_CLUSTER};
    use drc_tests::wait_for;

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
                        let Ok(Ok((c, conn))) = tokio::time::timeout(limit, tokio_postgres::connect(&conf, tokio_postgres::NoTls)).await
                        else {
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

    fn trial(fault: &str, synchronous_replicas: u32) -> anyhow::Result<Trial> {
        let dir = tempfile::Builder::new().prefix("drc-bench-failover-").tempdir()?;
        // The worst case is measured with leader placement off: it would
        // move the leader back out of region a.
        let lab = Lab::up_with(dir.path(), LabOptions { leader_placement: fault != "region-leader", synchronous_replicas })?;
        let redis = fault == "redis-node";
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
        match fault {
            "pg-crash" => kill_tree(postmaster_pid(&pa.data_dir)?),
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
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::SeqCst);
        let _ = writer.join();
        let first = first?;
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
        latencies.sort();
        let write_latency = super::percentile(&latencies, 0.5);
        Ok(Trial {
            to_first_write: first.duration_since(fault_at),
            acked: acked.len(),
            lost,
            oldest_lost,
            timeline,
            leader_lost,
            write_latency,
        })
    }

    pub fn run(trials: u32, faults: &[String], synchronous_replicas: u32) -> anyhow::Result<()> {
        let replication = match synchronous_replicas {
            0 => "asynchronous replication".to_string(),
            n => format!("synchronous replication (every PostgreSQL commit waits for {n} replica(s))"),
        };
        println!("failover benchmark: a fresh lab per trial, a continuous writer through drc-proxy, shipped defaults, {replication}");
        for fault in faults {
            let (mut times, mut latencies) = (Vec::new(), Vec::new());
            let (mut lost, mut oldest_lost) = (0, Duration::ZERO);
            for t in 1..=trials {
                match trial(fault, synchronous_replicas) {
                    Ok(r) => {
                        let when =
                            r.oldest_lost.map(|d| format!(" (the first acknowledged {:.1} ms before the fault)", d.as_secs_f64() * 1e3));
                        println!(
                            "{fault} trial {t}: first acknowledged write {:.2} s after the fault; {} writes acknowledged (median {:.2} ms each before the fault), {} lost{}{}\n  {}",
                            r.to_first_write.as_secs_f64(),
                            r.acked,
                            r.write_latency.as_secs_f64() * 1e3,
                            r.lost,
                            when.unwrap_or_default(),
                            if r.leader_lost { " (the coordinator leader went with the region)" } else { "" },
                            r.timeline
                        );
                        times.push(r.to_first_write);
                        latencies.push(r.write_latency);
                        lost += r.lost;
                        oldest_lost = oldest_lost.max(r.oldest_lost.unwrap_or_default());
                    }
                    Err(e) => println!("{fault} trial {t}: failed: {e:#}"),
                }
            }
            times.sort();
            latencies.sort();
            if !latencies.is_empty() {
                println!(
                    "{fault}: median write latency before the fault, median over trials: {:.2} ms",
                    super::percentile(&latencies, 0.5).as_secs_f64() * 1e3
                );
            }
            if let (Some(min), Some(max)) = (times.first(), times.last()) {
                println!(
                    "{fault}: {} trials: min {:.2} s  median {:.2} s  max {:.2} s; {lost} acknowledged writes lost in all, none acknowledged more than {:.1} ms before the fault",
                    times.len(),
                    min.as_secs_f64(),
                    super::percentile(&times, 0.5).as_secs_f64(),
                    max.as_secs_f64(),
                    oldest_lost.as_secs_f64() * 1e3
                );
            }
        }
        Ok(())
    }
}

mod backup {
    use std::process::Command;
    use std::time::{Duration, Instant};

    use anyhow::{bail, Context};
    use drc_tests::lab::postgres::{psql, PG_BIN};
    use drc_tests::lab::{Lab, PG_CLUSTER};
    use drc_tests::wait_for;

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

    /// The middle value; with an even count, the mean of the two middle ones.
    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(|a, b| a.total_cmp(b));
        match v.len() {
            0 => 0.0,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
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
}
