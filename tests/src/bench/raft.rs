//! `drc-bench raft`: commit latency of admin writes on a 3-node cluster
//! with fsync on, and the time from SIGKILL of the leader to the first
//! write a new leader commits.

use std::time::{Duration, Instant};

use drc_proto::admin_service_client::AdminServiceClient;
use drc_proto::ApplyTopologyRequest;

use super::stats::{ms, percentile};
use crate::{example_topology, Cluster, ClusterOpts};

/// A client of the coordinator at `address`, as the cluster's operator.
async fn client(security: &drc_tls::Security, address: &str) -> anyhow::Result<AdminServiceClient<tonic::transport::Channel>> {
    Ok(AdminServiceClient::new(security.connect(drc_tls::Security::endpoint(address)?).await?))
}

async fn write(security: &drc_tls::Security, address: &str, version: u32) -> Result<(), tonic::Status> {
    let mut c = client(security, address).await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    c.apply_topology(ApplyTopologyRequest { topology_toml: example_topology(version), dry_run: false }).await.map(|_| ())
}

pub async fn run(writes: u32, trials: u32, insecure: bool) -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOpts { insecure, ..Default::default() })?;
    println!("{}", if insecure { "plaintext (insecure = true)" } else { "mutual TLS" });
    let security = cluster.creds.security()?;
    let leader = cluster.wait_leader(Duration::from_secs(30))?;
    let address = cluster.nodes[&leader].address.clone();
    let mut client = client(&security, &address).await?;
    let mut ping = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        client.node_status(drc_proto::NodeStatusRequest {}).await?;
        ping.push(t.elapsed());
    }
    ping.sort();
    println!("gRPC round trip (NodeStatus): p50 {}  p99 {}", ms(percentile(&mut ping, 0.5)), ms(percentile(&mut ping, 0.99)));
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
    println!("  p50 {}  p99 {}", ms(percentile(&mut base, 0.5)), ms(percentile(&mut base, 0.99)));
    let mut lat = Vec::with_capacity(writes as usize);
    for v in 0..writes {
        let req = ApplyTopologyRequest { topology_toml: example_topology(1000 + v), dry_run: false };
        let t = Instant::now();
        client.apply_topology(req).await?;
        lat.push(t.elapsed());
    }
    lat.sort();
    println!("commit latency of admin writes (3 nodes, loopback, fsync on, {writes} sequential writes to the leader):");
    println!("  p50 {}  p99 {}  max {}", ms(percentile(&mut lat, 0.5)), ms(percentile(&mut lat, 0.99)), ms(percentile(&mut lat, 1.0)));

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
                if write(&security, a, version).await.is_ok() {
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
        ms(percentile(&mut failovers, 0.5)),
        ms(failovers[0]),
        ms(failovers[failovers.len() - 1])
    );
    Ok(())
}
