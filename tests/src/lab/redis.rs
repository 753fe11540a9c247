//! Redis members of the lab: a primary in region a, replicas in b and c.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::bail;

use super::netns::NetInfo;
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
    cli_at("127.0.0.1", port, args)
}

/// [`cli`] on a member at `host`.
pub fn cli_at(host: &str, port: u16, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("redis-cli").args(["-h", host, "-p", &port.to_string()]).args(args).output()?;
    if !out.status.success() {
        bail!("redis-cli {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Starts the members, each in its node's namespace when `net` is given.
pub fn start_cluster(dir: &Path, cluster: &str, net: Option<&NetInfo>) -> anyhow::Result<Vec<MemberInfo>> {
    let mut members = Vec::new();
    let (mut primary_port, mut primary_host) = (0, String::new());
    for region in REGIONS {
        let id = format!("redis-{region}");
        let host = net.and_then(|n| n.node(&id).ok()).map_or_else(|| "127.0.0.1".to_string(), |n| n.address.clone());
        let data = dir.join(format!("{id}.data"));
        let log = dir.join(format!("{id}.log"));
        fs::create_dir_all(&data)?;
        let port = free_port();
        let mut c = Command::new("redis-server");
        c.args(["--port", &port.to_string(), "--bind", &host, "--daemonize", "no", "--save", "", "--appendonly", "no", "--dir"])
            .arg(&data)
            // Full syncs (and `redis-cli --rdb` backups) start at once
            // instead of waiting 5 s for more replicas to join.
            .args(["--repl-diskless-sync-delay", "0"])
            // No password in the lab: clients in the root namespace reach a
            // node's address, which protected mode would refuse.
            .args(["--protected-mode", "no"]);
        if region == "a" {
            (primary_port, primary_host) = (port, host.clone());
        } else {
            c.args(["--replicaof", &primary_host, &primary_port.to_string()]);
        }
        let mut c = match net {
            Some(n) => n.command(&id, &c)?,
            None => c,
        };
        let pid = spawn_detached(&mut c, &log)?;
        // Not in the lab's list yet: stopped here if it does not come up.
        let answers =
            wait_for(&format!("{id} to answer"), Duration::from_secs(20), || cli_at(&host, port, &["PING"]).ok().filter(|o| o == "PONG"));
        if let Err(e) = answers {
            super::stop_pid(pid, Duration::from_secs(2));
            return Err(e);
        }
        if region != "a" {
            wait_for(&format!("{id} to sync with the primary"), Duration::from_secs(30), || {
                cli_at(&host, port, &["INFO", "replication"]).ok().filter(|i| i.contains("master_link_status:up"))
            })?;
        }
        members.push(MemberInfo {
            id,
            cluster: cluster.to_string(),
            kind: "redis".into(),
            region: region.to_string(),
            host: host.clone(),
            port,
            pid,
            data_dir: data,
            log,
            agent_pid: 0,
            agent_config: PathBuf::new(),
            agent_log: PathBuf::new(),
            agent_tls: None,
            agent_http_endpoint: String::new(),
            supervised: false,
        });
    }
    Ok(members)
}
