//! Real networks for the lab (`drc-lab up --netns`): every node — a
//! region's coordinator (with its S3 server), and each database member with
//! its agent — runs in a network namespace of its own, with its own address
//! on a bridge the lab creates. Faults are nftables rules inside those
//! namespaces: packets dropped silently (no RST), or rejected, in one
//! direction or both, for a whole region or one link.
//!
//! No packet may leave the machine: the lab's subnet (from 198.18.0.0/15,
//! reserved for network tests) gets an address on the lab's bridge, so the
//! kernel routes it locally, and `ip route get` must name that bridge for
//! every node's address before anything is started. Clients in the root
//! namespace (drctl, the forwarders, the tests) reach every node through
//! the bridge, so `lab.json`'s endpoints work unchanged.

use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context as _};
use serde::{Deserialize, Serialize};

use super::REGIONS;

/// One node of the lab in its namespace.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeNet {
    /// "coord-a", or a member id ("pg-a", "redis-a").
    pub node: String,
    pub region: String,
    pub namespace: String,
    pub address: String,
}

/// The lab's network in `lab.json` (netns mode only).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NetInfo {
    /// e.g. "198.18.7.0/24".
    pub subnet: String,
    pub bridge: String,
    /// The bridge's own address: where root-namespace clients come from.
    pub gateway: String,
    pub nodes: Vec<NodeNet>,
}

/// The nodes of each region, in the order their addresses are given.
pub fn node_names(region: &str) -> [String; 3] {
    [format!("coord-{region}"), format!("pg-{region}"), format!("redis-{region}")]
}

/// Namespaces and bridges are named after the lab's subnet number.
const PREFIX: &str = "drcl";

fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn namespaces() -> Vec<String> {
    ip(&["netns", "list"]).unwrap_or_default().lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect()
}

/// Whether any process still runs in namespace `ns`.
fn in_use(ns: &str) -> bool {
    ip(&["netns", "pids", ns]).map(|o| !o.trim().is_empty()).unwrap_or(true)
}

impl NetInfo {
    /// Creates the namespaces, their veths and the bridge on a subnet no
    /// other lab uses, for the lab in `owner` (its directory, recorded as
    /// the bridge's alias). Leftovers of a lab that crashed (namespaces
    /// without a process) are removed first.
    pub fn create(owner: &std::path::Path) -> anyhow::Result<NetInfo> {
        remove_abandoned();
        let taken: Vec<String> = namespaces();
        // "8: drcl1v2@if2: <...": the link names, without their peers.
        let links: Vec<String> = ip(&["-o", "link", "show"])
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .map(|name| name.trim_end_matches(':').split('@').next().unwrap_or_default().to_string())
            .collect();
        let n = (1..=250u32)
            .find(|n| {
                let (tag, bridge, veth) = (format!("{PREFIX}{n}-"), format!("{PREFIX}{n}"), format!("{PREFIX}{n}v"));
                !taken.iter().any(|ns| ns.starts_with(&tag)) && !links.iter().any(|l| *l == bridge || l.starts_with(&veth))
            })
            .ok_or_else(|| anyhow!("no free lab subnet: 250 labs' namespaces exist"))?;
        let bridge = format!("{PREFIX}{n}");
        let mut net =
            NetInfo { subnet: format!("198.18.{n}.0/24"), bridge: bridge.clone(), gateway: format!("198.18.{n}.1"), nodes: Vec::new() };
        for (r, region) in REGIONS.iter().enumerate() {
            for (k, node) in node_names(region).into_iter().enumerate() {
                let host = 10 * (r + 1) + k + 1;
                net.nodes.push(NodeNet {
                    namespace: format!("{PREFIX}{n}-{node}"),
                    node,
                    region: region.to_string(),
                    address: format!("198.18.{n}.{host}"),
                });
            }
        }
        if let Err(e) = net.build(n, owner) {
            net.destroy(owner);
            return Err(e);
        }
        Ok(net)
    }

    fn build(&self, n: u32, owner: &std::path::Path) -> anyhow::Result<()> {
        ip(&["link", "add", &self.bridge, "type", "bridge"])?;
        ip(&["link", "set", "dev", &self.bridge, "alias", &owner.display().to_string()])?;
        ip(&["addr", "add", &format!("{}/24", self.gateway), "dev", &self.bridge])?;
        ip(&["link", "set", &self.bridge, "up"])?;
        for (i, node) in self.nodes.iter().enumerate() {
            let ns = &node.namespace;
            let host_end = format!("{PREFIX}{n}v{i}");
            ip(&["netns", "add", ns])?;
            ip(&["link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", ns])?;
            ip(&["link", "set", &host_end, "master", &self.bridge, "up"])?;
            ip(&["-n", ns, "addr", "add", &format!("{}/24", node.address), "dev", "eth0"])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        // Nothing is sent before every address provably stays on the bridge.
        for node in &self.nodes {
            let route = ip(&["route", "get", &node.address])?;
            if !route.split_whitespace().collect::<Vec<_>>().windows(2).any(|w| w == ["dev", self.bridge.as_str()]) {
                bail!("{} is not routed to the lab's bridge {} ({}): refusing to send anything", node.address, self.bridge, route.trim());
            }
        }
        Ok(())
    }

    /// Removes the namespaces and the bridge (the veths go with them),
    /// unless the bridge now belongs to another lab (this one went down
    /// before, and a new lab took its subnet).
    pub fn destroy(&self, owner: &std::path::Path) {
        let alias = std::fs::read_to_string(format!("/sys/class/net/{}/ifalias", self.bridge)).unwrap_or_default();
        if !alias.trim().is_empty() && alias.trim() != owner.display().to_string() {
            return;
        }
        for node in &self.nodes {
            let _ = ip(&["netns", "del", &node.namespace]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }

    pub fn node(&self, node: &str) -> anyhow::Result<&NodeNet> {
        self.nodes.iter().find(|n| n.node == node).ok_or_else(|| anyhow!("no node {node} in the lab's network"))
    }

    /// `cmd`, run inside `node`'s namespace (`ip netns exec` execs it: the
    /// pid is the program's).
    pub fn command(&self, node: &str, cmd: &Command) -> anyhow::Result<Command> {
        let ns = &self.node(node)?.namespace;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(cmd.get_program()).args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        if let Some(d) = cmd.get_current_dir() {
            c.current_dir(d);
        }
        Ok(c)
    }

    fn addresses(&self, region: &str) -> Vec<&str> {
        self.nodes.iter().filter(|n| n.region == region).map(|n| n.address.as_str()).collect()
    }

    /// Applies `fault` (on top of any other): nftables rules in the
    /// namespaces concerned.
    pub fn apply(&self, fault: &Fault) -> anyhow::Result<()> {
        let set = |addrs: &[&str]| format!("{{ {} }}", addrs.join(", "));
        // (namespace, rules for the input chain, rules for the output chain)
        let mut rules: Vec<(&NodeNet, Vec<String>, Vec<String>)> = Vec::new();
        match fault {
            Fault::Isolate { region, reject } => {
                let inside = set(&self.addresses(region));
                let (tcp, other) = verdicts(*reject);
                for node in self.nodes.iter().filter(|n| &n.region == region) {
                    rules.push((
                        node,
                        vec![
                            format!("iifname \"eth0\" ip saddr != {inside} meta l4proto tcp {tcp}"),
                            format!("iifname \"eth0\" ip saddr != {inside} {other}"),
                        ],
                        vec![
                            format!("oifname \"eth0\" ip daddr != {inside} meta l4proto tcp {tcp}"),
                            format!("oifname \"eth0\" ip daddr != {inside} {other}"),
                        ],
                    ));
                }
            }
            Fault::OneWay { from, to } => {
                let dest = set(&self.addresses(to));
                for node in self.nodes.iter().filter(|n| &n.region == from) {
                    rules.push((node, Vec::new(), vec![format!("ip daddr {dest} drop")]));
                }
            }
            Fault::Replication { primary, port } => {
                let p = self.node(primary)?;
                let replicas: Vec<&str> = self
                    .nodes
                    .iter()
                    .filter(|n| n.region != p.region && n.node.split('-').next() == p.node.split('-').next())
                    .map(|n| n.address.as_str())
                    .collect();
                let replicas = set(&replicas);
                rules.push((
                    p,
                    vec![format!("ip saddr {replicas} tcp dport {port} drop")],
                    vec![format!("ip daddr {replicas} tcp sport {port} drop")],
                ));
            }
            Fault::AgentLink { member, ports } => {
                let node = self.node(member)?;
                let coords: Vec<&str> = self.nodes.iter().filter(|n| n.node.starts_with("coord-")).map(|n| n.address.as_str()).collect();
                let (coords, ports) = (set(&coords), format!("{{ {} }}", ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")));
                rules.push((
                    node,
                    vec![format!("ip saddr {coords} tcp sport {ports} drop")],
                    vec![format!("ip daddr {coords} tcp dport {ports} drop")],
                ));
            }
        }
        for (node, input, output) in rules {
            let mut script = String::from("table inet drcfault {\n");
            script.push_str("  chain input { type filter hook input priority 0; policy accept;\n");
            for r in input {
                script.push_str(&format!("    {r}\n"));
            }
            script.push_str("  }\n  chain output { type filter hook output priority 0; policy accept;\n");
            for r in output {
                script.push_str(&format!("    {r}\n"));
            }
            script.push_str("  }\n}\n");
            nft(&node.namespace, &script)?;
        }
        Ok(())
    }

    /// Removes every fault.
    pub fn heal(&self) -> anyhow::Result<()> {
        for node in &self.nodes {
            nft(&node.namespace, "flush ruleset\n")?;
        }
        Ok(())
    }
}

/// What a dropped or rejected packet gets: TCP a reset when rejected, the
/// rest is dropped either way.
fn verdicts(reject: bool) -> (&'static str, &'static str) {
    if reject {
        ("reject with tcp reset", "drop")
    } else {
        ("drop", "drop")
    }
}

pub(super) fn nft(namespace: &str, script: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut child = Command::new("ip")
        .args(["netns", "exec", namespace, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft (nftables)")?;
    child.stdin.take().ok_or_else(|| anyhow!("nft stdin"))?.write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("nft in {namespace}: {}\n{script}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Removes the namespaces of labs that crashed: every namespace of a lab
/// subnet in which no process runs any more, and then its bridge.
fn remove_abandoned() {
    let all = namespaces();
    let mut labs: Vec<String> =
        all.iter().filter(|ns| ns.starts_with(PREFIX)).filter_map(|ns| ns.split_once('-').map(|(lab, _)| lab.to_string())).collect();
    labs.sort();
    labs.dedup();
    for lab in labs {
        let mine: Vec<&String> = all.iter().filter(|ns| ns.starts_with(&format!("{lab}-"))).collect();
        if mine.iter().all(|ns| !in_use(ns)) {
            for ns in mine {
                let _ = ip(&["netns", "del", ns]);
            }
            let _ = ip(&["link", "del", &lab]);
        }
    }
}

/// A network fault of the lab.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Everything into and out of a region's nodes, from and to anywhere
    /// outside the region (the root namespace included).
    Isolate { region: String, reject: bool },
    /// Packets from region `from` to region `to` are dropped; the other
    /// way they are delivered.
    OneWay { from: String, to: String },
    /// The primary member's database port, between it and the replicas in
    /// other regions (their agents' cross-probes included); every agent
    /// still reaches the coordinators.
    Replication { primary: String, port: u16 },
    /// One member's node cannot reach the coordinators' client ports (its
    /// agent's stream); everything else flows.
    AgentLink { member: String, ports: Vec<u16> },
}
