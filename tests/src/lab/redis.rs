//! Redis members of the lab: a primary in region a, replicas in b and c.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::bail;

use super::{spawn_detached, MemberInfo, REGIONS};
use crate::{free_port, wait_for};

pub fn check_installed() -> anyhow::Result<()> {
    if Command::new("redis-server").arg("--version").output().map(|o| !o.status.success()).unwrap_or(true) {
        bail!("redis-server is not installed; run scripts/test or `apt-get install redis-server`");
    }
    Ok(())
}

/// Runs a redis-cli command against the member; returns its output.
pub fn cli(port: u16, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("redis-cli").args(["-h", "127.0.0.1", "-p", &port.to_string()]).args(args).output()?;
    if !out.status.success() {
        bail!("redis-cli {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn start_cluster(dir: &Path, cluster: &str) -> anyhow::Result<Vec<MemberInfo>> {
    let mut members = Vec::new();
    let mut primary_port = 0;
    for region in REGIONS {
        let id = format!("redis-{region}");
        let data = dir.join(format!("{id}.data"));
        let log = dir.join(format!("{id}.log"));
        fs::create_dir_all(&data)?;
        let port = free_port();
        let mut c = Command::new("redis-server");
        c.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--daemonize", "no", "--save", "", "--appendonly", "no", "--dir"])
            .arg(&data)
            // Full syncs (and `redis-cli --rdb` backups) start at once
            // instead of waiting 5 s for more replicas to join.
            .args(["--repl-diskless-sync-delay", "0"]);
        if region == "a" {
            primary_port = port;
        } else {
            c.args(["--replicaof", "127.0.0.1", &primary_port.to_string()]);
        }
        let pid = spawn_detached(&mut c, &log)?;
        wait_for(&format!("{id} to answer"), Duration::from_secs(20), || cli(port, &["PING"]).ok().filter(|o| o == "PONG"))?;
        if region != "a" {
            wait_for(&format!("{id} to sync with the primary"), Duration::from_secs(30), || {
                cli(port, &["INFO", "replication"]).ok().filter(|i| i.contains("master_link_status:up"))
            })?;
        }
        members.push(MemberInfo {
            id,
            cluster: cluster.to_string(),
            kind: "redis".into(),
            region: region.to_string(),
            host: "127.0.0.1".into(),
            port,
            pid,
            data_dir: data,
            log,
            agent_pid: 0,
            agent_config: PathBuf::new(),
            agent_log: PathBuf::new(),
        });
    }
    Ok(members)
}
