//! The agent-stream load generator.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{Cluster, ClusterOpts};
use drc_proto::admin_service_client::AdminServiceClient;
use drc_proto::agent_service_client::AgentServiceClient;
use drc_proto::{agent_message::Body, coordinator_message, AgentHello, AgentMessage, ApplyTopologyRequest, HealthRequest, Sample};
use drc_tls::{Role, Security};
use tonic::transport::{Channel, Endpoint};

const PROBES: usize = 20;

/// Set when the agents must stop.
type Stop = Arc<AtomicBool>;

/// HTTP/2 connections shared by `per` agents each, by (endpoint, slot);
/// `per` = 1: every agent connects on its own, as real agents do.
/// With TLS, every agent has its own certificate (naming its member), and
/// so its own connection.
#[derive(Clone)]
struct Pool {
    per: usize,
    channels: Arc<Mutex<HashMap<(String, usize), Channel>>>,
    tls: Option<Arc<HashMap<String, Security>>>,
    /// How often each agent sends a sample.
    every: Duration,
}

impl Pool {
    async fn client(&self, endpoint: &str, agent: usize, member: &str) -> Result<AgentServiceClient<Channel>, String> {
        // Connections as real agents make them: keepalive pings, no delay.
        let real = |e: Endpoint| drc_proto::keepalive::agent_endpoint(e.tcp_nodelay(true));
        if let Some(tls) = &self.tls {
            let security = tls.get(member).ok_or_else(|| format!("no certificate for {member}"))?;
            let target = real(Security::endpoint(endpoint).map_err(|e| format!("bad endpoint: {e}"))?);
            return Ok(AgentServiceClient::new(security.connect(target).await.map_err(|e| format!("cannot connect: {e}"))?));
        }
        let target = real(Endpoint::from_shared(endpoint.to_string()).map_err(|e| format!("bad endpoint: {e}"))?);
        if self.per == 1 {
            return Ok(AgentServiceClient::new(Security::Insecure.connect(target).await.map_err(|e| format!("cannot connect: {e}"))?));
        }
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = channels.entry((endpoint.to_string(), agent / self.per)).or_insert_with(|| Security::Insecure.connect_lazy(target));
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
    let jitter = member.bytes().map(u64::from).sum::<u64>() * 7919 % (pool.every.as_millis() as u64).max(1);
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
    let mut client = pool.client(endpoint, slot, member).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let hello = AgentHello {
        member_id: member.into(),
        cluster: cluster.into(),
        region: region.into(),
        kind: "redis".into(),
        dataset_id: "bench".into(),
        command_protocol: drc_proto::COMMAND_PROTOCOL,
        ..Default::default()
    };
    tx.send(AgentMessage { body: Some(Body::Hello(hello)) }).await.map_err(|_| "stream closed".to_string())?;
    let resp = client.session(tokio_stream::wrappers::ReceiverStream::new(rx)).await.map_err(|e| format!("refused: {}", e.message()))?;
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
    let mut tick = tokio::time::interval(pool.every);
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

/// An admin client of the node at `address`, with the cluster's operator
/// certificate unless it runs in plaintext.
async fn admin_client(cluster: &Cluster, address: &str) -> anyhow::Result<AdminServiceClient<Channel>> {
    let security = cluster.creds.security()?;
    let channel = security.connect(Security::endpoint(address)?).await?;
    Ok(AdminServiceClient::new(channel).max_decoding_message_size(256 << 20).max_encoding_message_size(256 << 20))
}

/// The highest term any node reports.
async fn term(admin: &mut AdminServiceClient<Channel>) -> anyhow::Result<u64> {
    let s = admin.status(drc_proto::StatusRequest {}).await?.into_inner();
    Ok(s.nodes.iter().map(|n| n.term).max().unwrap_or(0))
}

/// What `drc-bench agents` runs (its flags).
pub struct Options {
    pub counts: Vec<usize>,
    /// Measurement window per count, in seconds.
    pub seconds: u64,
    pub tick_interval: &'static str,
    /// Agent streams per HTTP/2 connection (plaintext only).
    pub per: usize,
    pub tls: bool,
    /// How often each agent samples.
    pub every: Duration,
    /// The load generator's niceness once the coordinators run.
    pub nice: i32,
    /// The load generator on CPU 0, the coordinators on the others.
    pub pin: bool,
}

pub async fn run(o: Options) -> anyhow::Result<()> {
    let Options { counts, seconds, tick_interval, per, tls, every, nice, pin } = o;
    // A certificate names one member, so agents cannot share a connection.
    let per = if tls { 1 } else { per };
    let mode = if tls { "mutual TLS, a certificate per agent" } else { "plaintext" };
    println!(
        "agents benchmark: 3 coordinators on loopback ({mode}; raft tick {tick_interval}), one gRPC stream per agent, {per} stream(s) per HTTP/2 connection, a sample every {} each, keepalive as real agents",
        humantime::format_duration(every)
    );
    for n in counts {
        let cluster = Cluster::start(ClusterOpts { write_timeout: "30s", tick_interval, insecure: !tls, ..Default::default() })?;
        let certificates = match &cluster.pki {
            Some(pki) if tls => {
                let started = Instant::now();
                let mut map = HashMap::new();
                for member in (0..n).map(|i| format!("m{i}")).chain((0..PROBES).map(|p| format!("p{p}"))) {
                    let files = pki.client(Role::Agent, &member, &member)?;
                    map.insert(member, Security::new(Some(files), false)?);
                }
                println!("N = {n}: {} agent certificates issued in {:.1} s", map.len(), started.elapsed().as_secs_f64());
                Some(Arc::new(map))
            }
            _ => None,
        };
        let pool = Pool { per, channels: Arc::default(), tls: certificates, every };
        // After the coordinators started: they keep their own priority.
        if nice != 0 {
            renice_self(nice)?;
        }
        if pin {
            let pids: Vec<u32> = cluster.nodes.values().filter_map(|node| node.pid()).collect();
            pin_apart(&pids)?;
        }
        let leader_id = cluster.wait_leader(Duration::from_secs(30))?;
        let leader = cluster.nodes[&leader_id].address.clone();
        let pid = cluster.nodes[&leader_id].pid().unwrap_or(0);
        let mut admin = admin_client(&cluster, &leader).await?;
        // Every election moves the term: counted from here, whatever the
        // coordinators' log level.
        let term_before = term(&mut admin).await?;
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
                admin = admin_client(&cluster, &node.address).await?;
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
            super::stats::percentile_ms(&mut staleness, 0.5),
            super::stats::percentile_ms(&mut staleness, 0.99)
        );
        scrape_cost(&cluster, pid, seconds, cpu, n).await?;
        let term_after = term(&mut admin).await?;
        let elections = term_after.saturating_sub(term_before);
        println!("N = {n}: leader elections during the run: {elections} (term {term_before} -> {term_after})");
        if elections > 0 {
            // Why: what each node logged at warn and above about it.
            for node in cluster.nodes.values() {
                for line in node.log_text().lines().filter(|l| ["WARN", "ERROR", "became", "election"].iter().any(|w| l.contains(w))) {
                    println!("  node {}: {line}", node.id);
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.abort();
        }
        drop(pool);
        drop(cluster);
        if nice != 0 {
            // Back before the next count's coordinators (root only).
            renice_self(0)?;
        }
    }
    Ok(())
}

/// What scraping the leader's `/metrics` costs it at this size: one scrape
/// a second for `seconds` (Prometheus scrapes every 15 s by default), the
/// leader's CPU then against `idle_cpu` without scrapes.
async fn scrape_cost(cluster: &Cluster, pid: u32, seconds: u64, idle_cpu: f64, n: usize) -> anyhow::Result<()> {
    let Some(node) = cluster.nodes.values().find(|node| node.pid() == Some(pid)) else { return Ok(()) };
    let address = node.http_address.clone();
    let viewer = match &cluster.pki {
        Some(pki) => Some(pki.issue(Role::Viewer, "scraper", &[])?),
        None => None,
    };
    let ticks0 = cpu_ticks(pid);
    let t0 = Instant::now();
    let mut took = Vec::new();
    let mut size = (0, 0);
    while t0.elapsed() < Duration::from_secs(seconds) {
        let start = Instant::now();
        let (address, viewer) = (address.clone(), viewer.clone());
        let (code, body) = tokio::task::spawn_blocking(move || {
            let asker = match &viewer {
                Some(files) => crate::http::Asker::As(files),
                None => crate::http::Asker::Plain,
            };
            crate::http::get(&address, "/metrics", &asker)
        })
        .await??;
        anyhow::ensure!(code == 200, "/metrics answered {code}: {body}");
        took.push(start.elapsed());
        size = (body.len(), body.lines().filter(|l| !l.starts_with('#')).count());
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(start.elapsed())).await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = (cpu_ticks(pid) - ticks0) as f64 / 100.0 / elapsed * 100.0;
    let per_scrape = (cpu - idle_cpu).max(0.0) / 100.0 * elapsed / took.len().max(1) as f64;
    println!(
        "N = {n}: /metrics {} KiB, {} series; {} scrapes, p50 {:.1} ms, p99 {:.1} ms; leader CPU {cpu:.1} % scraped every second against {idle_cpu:.1} %: {:.0} ms of CPU a scrape, {:.2} % of one core at a 15 s interval ({:.1} % of the leader's own use)",
        size.0 / 1024,
        size.1,
        took.len(),
        super::stats::percentile_ms(&mut took.clone(), 0.5),
        super::stats::percentile_ms(&mut took, 0.99),
        per_scrape * 1000.0,
        per_scrape / 15.0 * 100.0,
        if idle_cpu > 0.0 { per_scrape / 15.0 * 100.0 / idle_cpu * 100.0 } else { 0.0 }
    );
    Ok(())
}

/// The load generator (every thread of this process) on CPU 0, `others`
/// (every thread of each) on the remaining CPUs.
fn pin_apart(others: &[u32]) -> anyhow::Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    anyhow::ensure!(cpus >= 2, "--pin needs at least 2 CPUs, this machine has {cpus}");
    let rest = format!("1-{}", cpus - 1);
    let me = std::process::id();
    for (pid, list) in std::iter::once((me, "0")).chain(others.iter().map(|p| (*p, rest.as_str()))) {
        let out = std::process::Command::new("taskset").args(["-a", "-p", "-c", list, &pid.to_string()]).output()?;
        anyhow::ensure!(out.status.success(), "taskset -c {list} of {pid} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Sets the niceness of every thread of this process (Linux applies it per
/// thread), so that coordinators started later are not lowered with it.
fn renice_self(nice: i32) -> anyhow::Result<()> {
    let tasks = std::fs::read_dir("/proc/self/task")?;
    let tids: Vec<String> = tasks.filter_map(|t| t.ok()).map(|t| t.file_name().to_string_lossy().into_owned()).collect();
    let out = std::process::Command::new("renice").args(["-n", &nice.to_string(), "-p"]).args(&tids).output()?;
    if !out.status.success() {
        anyhow::bail!("renice -n {nice} of the load generator failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
