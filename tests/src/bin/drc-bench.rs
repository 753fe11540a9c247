//! `drc-bench`: benchmarks that print numbers (never asserted in tests).
//!
//! `drc-bench raft` — on a 3-node coordinator cluster on loopback with fsync
//! on: commit latency of admin writes (p50/p99 over `--writes`) and the time
//! from SIGKILL of the leader to the first successful write on a new leader
//! (median over `--trials`).
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

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let Args { bench: Bench::Raft { writes, trials } } = Args::parse();
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
