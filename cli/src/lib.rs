//! drctl: the on-call CLI, a thin client of the AdminService.
//!
//! Output is a human table by default and JSON with `-o json`. JSON field
//! names are a contract for scripts: fields are added, never renamed or
//! removed. Every failure prints `error: …` on stderr and exits non-zero.

pub mod table;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use clap::{Parser, Subcommand, ValueEnum};
use drc_proto::admin_service_client::AdminServiceClient;
use drc_proto::{
    AddNodeRequest, ApplyTopologyRequest, ClearBlockRequest, ClusterHealth, DecisionReply, FailoverRegionRequest, FailoverRequest,
    GetTopologyRequest, HistoryRequest, ListJobsRequest, ListNodesRequest, MemberHealth, NodeStatus, PauseRequest, RemoveNodeRequest,
    SetScheduleRequest, StartBackupRequest, StartRecoveryTestRequest, StatusRequest, SwitchoverRequest, TransferLeadershipRequest,
    WatchRequest,
};
use serde_json::json;
use tonic::transport::{Channel, Endpoint};

#[derive(Parser, Debug)]
#[command(name = "drctl", version, about = "Drive drc, the multi-region disaster-recovery coordinator")]
pub struct Cli {
    /// Coordinator addresses, comma-separated (host:port or http://host:port); any reachable one is used.
    #[arg(long, env = "DRC_ENDPOINTS", value_delimiter = ',', default_value = "127.0.0.1:7400", global = true)]
    pub endpoints: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
    /// How long to wait for an answer.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration, global = true)]
    pub timeout: Duration,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Every coordinator's role and Raft indexes, member health and lag, and a topology summary.
    Status,
    /// Stream health changes (members turning healthy or not, roles, primaries) as they happen.
    Watch,
    /// Validate a topology file and make it the replicated topology.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// The replicated topology.
    Topology {
        #[command(subcommand)]
        command: TopologyCommand,
    },
    /// The coordinator nodes (Raft membership).
    Members {
        #[command(subcommand)]
        command: MembersCommand,
    },
    /// Unplanned failover: fence the primary, promote the best (or the named) replica.
    Failover {
        #[arg(long)]
        cluster: String,
        /// The member to promote; default: the best candidate.
        #[arg(long)]
        to: Option<String>,
        /// Promote even beyond the RPO budget (recorded in the history).
        #[arg(long)]
        force: bool,
    },
    /// Move every primary out of a region (switchover if healthy, failover if down); failover groups land together.
    FailoverRegion {
        #[arg(long)]
        from: String,
        /// The region to move to; default: the best one for each cluster.
        #[arg(long)]
        to: Option<String>,
        /// Promote even beyond the RPO budget (recorded in the history).
        #[arg(long)]
        force: bool,
    },
    /// Planned switchover: the candidate catches up, then takes over; no acknowledged write is lost.
    Switchover {
        #[arg(long)]
        cluster: String,
        #[arg(long)]
        to: Option<String>,
    },
    /// Stop automatic failover of a cluster (or of every cluster) for maintenance.
    Pause {
        #[arg(long)]
        cluster: Option<String>,
    },
    /// Let automatic failover happen again.
    Resume {
        #[arg(long)]
        cluster: Option<String>,
    },
    /// Lift a cluster's anti-flap block after a failover.
    ClearBlock {
        #[arg(long)]
        cluster: String,
    },
    /// Every failover decision, newest first, with its evidence and steps.
    History {
        #[arg(long)]
        cluster: Option<String>,
    },
    /// Cross-region backups: take one, list the catalog, show one.
    Backup {
        #[command(subcommand)]
        command: BackupCommand,
    },
    /// Restore a backup into a scratch instance, check it, measure RTO / RPO.
    RecoveryTest {
        #[command(subcommand)]
        command: RecoveryTestCommand,
    },
    /// Cron schedules of backups and recovery tests (UTC; 5 fields, or 6 with seconds first).
    Schedule {
        #[command(subcommand)]
        command: ScheduleCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum ScheduleCommand {
    /// Every schedule with its last and next occurrence.
    List {
        #[arg(long)]
        cluster: Option<String>,
    },
    /// Set a cluster's schedules; "off" removes one.
    Set {
        #[arg(long)]
        cluster: String,
        /// e.g. "0 3 * * *" (daily at 03:00 UTC)
        #[arg(long)]
        backup: Option<String>,
        /// e.g. "0 5 * * 0" (Sundays at 05:00 UTC)
        #[arg(long)]
        recovery_test: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum BackupCommand {
    /// Take a backup now (from a healthy replica, into a bucket in another region) and wait for it.
    Run {
        #[arg(long)]
        cluster: String,
        /// A destination by name; default: the cluster's first outside the source's region.
        #[arg(long)]
        destination: Option<String>,
        /// Answer once started instead of waiting for the end.
        #[arg(long)]
        no_wait: bool,
    },
    /// The backup catalog, newest first.
    List {
        #[arg(long)]
        cluster: Option<String>,
    },
    /// One backup with its manifest.
    Show { id: u64 },
}

#[derive(Subcommand, Debug)]
pub enum RecoveryTestCommand {
    /// Restore the newest (or the named) backup on an agent outside the primary's region, and wait for the result.
    Run {
        #[arg(long)]
        cluster: String,
        #[arg(long)]
        backup: Option<u64>,
        #[arg(long)]
        no_wait: bool,
    },
    /// Recovery tests, newest first.
    List {
        #[arg(long)]
        cluster: Option<String>,
    },
    /// One recovery test with its checks.
    Show { id: u64 },
}

#[derive(Subcommand, Debug)]
pub enum TopologyCommand {
    /// Print the topology (TOML that `drctl apply` accepts; JSON with -o json).
    Get,
}

#[derive(Subcommand, Debug)]
pub enum MembersCommand {
    /// List the coordinator nodes.
    List,
    /// Add a coordinator node (started with --join) to the Raft group.
    Add {
        #[arg(long)]
        id: u64,
        /// host:port the new node listens on.
        #[arg(long)]
        address: String,
        /// host:port of its separate Raft listener, if it has one (raft_listen).
        #[arg(long)]
        raft_address: Option<String>,
    },
    /// Remove a coordinator node from the Raft group.
    Remove {
        #[arg(long)]
        id: u64,
    },
    /// Hand Raft leadership to node ID (e.g. before maintenance of the
    /// leader's region); returns once it leads.
    Lead {
        #[arg(long)]
        id: u64,
    },
}

fn endpoint_url(e: &str) -> String {
    if e.starts_with("http://") || e.starts_with("https://") {
        e.to_string()
    } else {
        format!("http://{e}")
    }
}

/// Connects to the first reachable coordinator of `endpoints`.
pub async fn connect(endpoints: &[String], timeout: Duration) -> anyhow::Result<AdminServiceClient<Channel>> {
    let mut tried = Vec::new();
    for e in endpoints.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        let url = endpoint_url(e);
        let endpoint = match Endpoint::from_shared(url.clone()) {
            Ok(ep) => ep.connect_timeout(Duration::from_secs(2)).timeout(timeout),
            Err(err) => {
                tried.push(format!("{e}: invalid address ({err})"));
                continue;
            }
        };
        match endpoint.connect().await {
            Ok(ch) => return Ok(AdminServiceClient::new(ch)),
            Err(err) => tried.push(format!("{url}: {}", root_cause(&err))),
        }
    }
    if tried.is_empty() {
        return Err(anyhow!("no coordinator endpoints given (use --endpoints or DRC_ENDPOINTS)"));
    }
    Err(anyhow!("no coordinator reachable; tried {}", tried.join("; ")))
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn status_err(s: tonic::Status) -> anyhow::Error {
    anyhow!("{}", s.message())
}

fn node_json(n: &NodeStatus) -> serde_json::Value {
    json!({
        "id": n.id,
        "address": n.address,
        "role": n.role,
        "term": n.term,
        "commit_index": n.commit_index,
        "applied_index": n.applied_index,
        "leader_id": n.leader_id,
        "reachable": n.reachable,
        "error": n.error,
        "first_index": n.first_index,
        "last_index": n.last_index,
        "membership": n.membership,
        "renews_leases": n.renews_leases,
    })
}

fn member_json(m: &MemberHealth) -> serde_json::Value {
    json!({
        "id": m.id,
        "region": m.region,
        "role": m.role,
        "healthy": m.healthy,
        "lag_bytes": m.lag_bytes,
        "lag_ms": m.lag_ms,
        "timeline": m.timeline,
        "dataset_id": m.dataset_id,
        "sample_age_ms": m.sample_age_ms,
        "has_sample": m.has_sample,
        "agent_connected": m.agent_connected,
        "position": m.position,
        "replication_connected": m.replication_connected,
        "replication_state": m.replication_state,
        "lease_ms": m.lease_ms,
        "lease_fenced": m.lease_fenced,
        "server_gone": m.server_gone,
        "sync_standbys": m.sync_standbys,
        "primary_reachable_from": m.primary_reachable_from.iter().collect::<std::collections::BTreeMap<_, _>>(),
        "error": m.error,
    })
}

fn cluster_json(c: &ClusterHealth) -> serde_json::Value {
    json!({
        "name": c.name,
        "kind": c.kind,
        "primary": c.primary,
        "epoch": c.epoch,
        "failover_state": c.failover_state,
        "paused": c.paused,
        "blocked_until_ms": c.blocked_until_ms,
        "decision_in_progress": c.decision_in_progress,
        "members": c.members.iter().map(member_json).collect::<Vec<_>>(),
    })
}

fn clusters_text(clusters: &[ClusterHealth]) -> String {
    let mut out = String::new();
    for c in clusters {
        let primary = if c.primary.is_empty() { "none" } else { c.primary.as_str() };
        out.push_str(&format!("\ncluster {} ({}), primary: {primary}, epoch {}\n", c.name, c.kind, c.epoch));
        if c.paused {
            out.push_str("  automatic failover: PAUSED\n");
        }
        if !c.failover_state.is_empty() {
            out.push_str(&format!("  failover: {}\n", c.failover_state));
        }
        if let Some(p) = c.members.iter().find(|m| m.id == c.primary && m.has_sample && !m.sync_standbys.is_empty()) {
            out.push_str(&format!("  commits wait for: {}\n", p.sync_standbys));
        }
        let rows: Vec<Vec<String>> = c
            .members
            .iter()
            .map(|m| {
                let health = if m.healthy {
                    "healthy".to_string()
                } else if !m.agent_connected {
                    "UNHEALTHY (no agent)".to_string()
                } else if !m.error.is_empty() {
                    format!("UNHEALTHY ({})", m.error)
                } else {
                    "UNHEALTHY".to_string()
                };
                let sees: Vec<String> = {
                    let mut v: Vec<_> = m.primary_reachable_from.iter().collect();
                    v.sort();
                    v.into_iter().map(|(r, ok)| format!("{r}:{}", if *ok { "ok" } else { "NO" })).collect()
                };
                let age = if m.has_sample { format!("{}ms", m.sample_age_ms) } else { "-".into() };
                vec![
                    m.id.clone(),
                    m.region.clone(),
                    m.role.clone(),
                    health,
                    m.lag_bytes.to_string(),
                    format!("{:.1}", m.lag_ms as f64 / 1000.0),
                    if c.kind == "postgres" { m.timeline.to_string() } else { short(&m.dataset_id) },
                    age,
                    sees.join(" "),
                ]
            })
            .collect();
        let id_col = if c.kind == "postgres" { "TIMELINE" } else { "REPLID" };
        out.push_str(&table::render(
            &["MEMBER", "REGION", "ROLE", "HEALTH", "LAG_BYTES", "LAG_S", id_col, "SAMPLE_AGE", "PRIMARY_REACHABLE_FROM"],
            &rows,
        ));
    }
    out
}

fn short(id: &str) -> String {
    id.chars().take(8).collect()
}

fn nodes_table(nodes: &[NodeStatus], leader: u64) -> String {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let id = if n.id == leader { format!("{}*", n.id) } else { n.id.to_string() };
            if n.reachable {
                // Only the abnormal case is spelled out.
                let role = if n.role == "leader" && !n.renews_leases {
                    "leader (not renewing leases: no quorum confirmed it)".to_string()
                } else {
                    n.role.clone()
                };
                vec![id, n.address.clone(), role, n.term.to_string(), n.commit_index.to_string(), n.applied_index.to_string(), "yes".into()]
            } else {
                vec![id, n.address.clone(), "-".into(), "-".into(), "-".into(), "-".into(), format!("no ({})", n.error)]
            }
        })
        .collect();
    table::render(&["ID", "ADDRESS", "ROLE", "TERM", "COMMIT", "APPLIED", "REACHABLE"], &rows)
}

/// Runs one drctl command, printing its result on stdout.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut client = connect(&cli.endpoints, cli.timeout).await?;
    let json_out = cli.output == Output::Json;
    match cli.command {
        Command::Status => {
            let s = client.status(StatusRequest {}).await.map_err(status_err)?.into_inner();
            let t = s.topology.unwrap_or_default();
            if json_out {
                let v = json!({
                    "leader_id": s.leader_id,
                    "answered_by": s.answered_by,
                    "nodes": s.nodes.iter().map(node_json).collect::<Vec<_>>(),
                    "clusters": s.clusters.iter().map(cluster_json).collect::<Vec<_>>(),
                    "topology": {
                        "version": t.version,
                        "regions": t.regions,
                        "clusters": t.clusters,
                        "members": t.members,
                        "failover_groups": t.failover_groups,
                    },
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let leader = if s.leader_id == 0 { "none (no quorum?)".to_string() } else { s.leader_id.to_string() };
                println!("coordinators (leader: {leader}, answered by node {})", s.answered_by);
                print!("{}", nodes_table(&s.nodes, s.leader_id));
                print!("{}", clusters_text(&s.clusters));
                println!(
                    "\ntopology v{}: {} regions, {} clusters, {} members, {} failover groups",
                    t.version, t.regions, t.clusters, t.members, t.failover_groups
                );
            }
        }
        Command::Watch => {
            let mut stream = client.watch(WatchRequest {}).await.map_err(status_err)?.into_inner();
            while let Some(e) = stream.message().await.map_err(status_err)? {
                if json_out {
                    let v = json!({"at_ms": e.at_ms, "kind": e.kind, "cluster": e.cluster, "member": e.member, "message": e.message});
                    println!("{v}");
                } else {
                    let at = humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(e.at_ms));
                    println!("{at}  {:<13} {}", e.kind, e.message);
                }
            }
        }
        Command::Apply { file, dry_run } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let r = client.apply_topology(ApplyTopologyRequest { topology_toml: text, dry_run }).await.map_err(status_err)?.into_inner();
            if json_out {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({"applied": r.applied, "dry_run": dry_run, "diff": r.diff, "version": r.version, "raft_index": r.raft_index})
                    )?
                );
            } else {
                for line in &r.diff {
                    println!("{line}");
                }
                if r.diff.is_empty() {
                    println!("no changes (topology v{})", r.version);
                } else if dry_run {
                    println!("dry run: {} change(s) not applied", r.diff.len());
                } else {
                    println!("applied {} change(s): topology v{} at raft index {}", r.diff.len(), r.version, r.raft_index);
                }
            }
        }
        Command::Topology { command: TopologyCommand::Get } => {
            let r = client.get_topology(GetTopologyRequest {}).await.map_err(status_err)?.into_inner();
            if json_out {
                let topology: serde_json::Value = serde_json::from_str(&r.topology_json)?;
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({"version": r.version, "applied_index": r.applied_index, "topology": topology}))?
                );
            } else {
                println!("# topology v{} (raft index {})\n", r.version, r.applied_index);
                print!("{}", r.topology_toml);
            }
        }
        Command::Members { command } => match command {
            MembersCommand::List => {
                let r = client.list_nodes(ListNodesRequest {}).await.map_err(status_err)?.into_inner();
                let leader = r.nodes.iter().find(|n| n.role == "leader").map(|n| n.id).unwrap_or(0);
                if json_out {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(
                            &json!({"leader_id": leader, "nodes": r.nodes.iter().map(node_json).collect::<Vec<_>>()})
                        )?
                    );
                } else {
                    print!("{}", nodes_table(&r.nodes, leader));
                }
            }
            MembersCommand::Add { id, address, raft_address } => {
                let request = AddNodeRequest { id, address: address.clone(), raft_address: raft_address.unwrap_or_default() };
                let r = client.add_node(request).await.map_err(status_err)?.into_inner();
                if json_out {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(
                            &json!({"added": id, "address": address, "voters": r.voters, "raft_index": r.raft_index})
                        )?
                    );
                } else {
                    println!("added node {id} ({address}); voters now {:?}", r.voters);
                }
            }
            MembersCommand::Lead { id } => {
                let r = client.transfer_leadership(TransferLeadershipRequest { id }).await.map_err(status_err)?.into_inner();
                if json_out {
                    println!("{}", serde_json::to_string_pretty(&json!({"leader_id": r.leader_id, "term": r.term}))?);
                } else {
                    println!("node {} leads (term {})", r.leader_id, r.term);
                }
            }
            MembersCommand::Remove { id } => {
                let r = client.remove_node(RemoveNodeRequest { id }).await.map_err(status_err)?.into_inner();
                if json_out {
                    println!("{}", serde_json::to_string_pretty(&json!({"removed": id, "voters": r.voters, "raft_index": r.raft_index}))?);
                } else {
                    println!("removed node {id}; voters now {:?}", r.voters);
                }
            }
        },
        Command::Failover { cluster, to, force } => {
            let r = client.failover(FailoverRequest { cluster, to: to.unwrap_or_default(), force }).await.map_err(status_err)?.into_inner();
            decision_out(&r, json_out)?;
        }
        Command::FailoverRegion { from, to, force } => {
            let r = client
                .failover_region(FailoverRegionRequest { from, to: to.unwrap_or_default(), force })
                .await
                .map_err(status_err)?
                .into_inner();
            if json_out {
                let v = json!({"decisions": r.decisions.iter().map(decision_json).collect::<Vec<_>>(), "refused": r.refused});
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for d in &r.decisions {
                    println!("{}: decision {} (epoch {}): {} -> {}\n  {}", d.cluster, d.decision_id, d.epoch, d.from, d.to, d.reason);
                }
                for why in &r.refused {
                    println!("left in place: {why}");
                }
            }
            if r.decisions.is_empty() {
                anyhow::bail!("no primary was moved");
            }
        }
        Command::Switchover { cluster, to } => {
            let r = client.switchover(SwitchoverRequest { cluster, to: to.unwrap_or_default() }).await.map_err(status_err)?.into_inner();
            decision_out(&r, json_out)?;
        }
        Command::Pause { cluster } => {
            let r =
                client.pause(PauseRequest { cluster: cluster.unwrap_or_default(), paused: true }).await.map_err(status_err)?.into_inner();
            message_out(&r.message, json_out)?;
        }
        Command::Resume { cluster } => {
            let r =
                client.pause(PauseRequest { cluster: cluster.unwrap_or_default(), paused: false }).await.map_err(status_err)?.into_inner();
            message_out(&r.message, json_out)?;
        }
        Command::ClearBlock { cluster } => {
            let r = client.clear_block(ClearBlockRequest { cluster }).await.map_err(status_err)?.into_inner();
            message_out(&r.message, json_out)?;
        }
        Command::Backup { command } => match command {
            BackupCommand::Run { cluster, destination, no_wait } => {
                let r = client
                    .start_backup(StartBackupRequest { cluster, destination: destination.unwrap_or_default() })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                let job: serde_json::Value = serde_json::from_str(&r.job_json)?;
                let id = job["id"].as_u64().unwrap_or(0);
                if !json_out {
                    println!("backup {id} started: {} -> {} ({})", job["member"], job["destination"], job["prefix"]);
                }
                let job = if no_wait { job } else { wait_job(&mut client, Job::Backup, id, !json_out).await? };
                job_out(&job, json_out, backup_text, true)?;
            }
            BackupCommand::List { cluster } => {
                let jobs = list_jobs(&mut client, Job::Backup, cluster.unwrap_or_default()).await?;
                if json_out {
                    println!("{}", serde_json::to_string_pretty(&json!({ "backups": jobs }))?);
                } else {
                    print!("{}", backups_table(&jobs));
                }
            }
            BackupCommand::Show { id } => {
                let job = find_job(&mut client, Job::Backup, id).await?;
                job_out(&job, json_out, backup_text, false)?;
            }
        },
        Command::RecoveryTest { command } => match command {
            RecoveryTestCommand::Run { cluster, backup, no_wait } => {
                let r = client
                    .start_recovery_test(StartRecoveryTestRequest { cluster, backup_id: backup.unwrap_or(0) })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                let job: serde_json::Value = serde_json::from_str(&r.job_json)?;
                let id = job["id"].as_u64().unwrap_or(0);
                if !json_out {
                    println!(
                        "recovery test {id} started: backup {} on {} (region {})",
                        job["backup_id"], job["member"], job["member_region"]
                    );
                }
                let job = if no_wait { job } else { wait_job(&mut client, Job::RecoveryTest, id, !json_out).await? };
                job_out(&job, json_out, test_text, true)?;
            }
            RecoveryTestCommand::List { cluster } => {
                let jobs = list_jobs(&mut client, Job::RecoveryTest, cluster.unwrap_or_default()).await?;
                if json_out {
                    println!("{}", serde_json::to_string_pretty(&json!({ "recovery_tests": jobs }))?);
                } else {
                    for t in &jobs {
                        println!("{}", test_text(t));
                    }
                }
            }
            RecoveryTestCommand::Show { id } => {
                let job = find_job(&mut client, Job::RecoveryTest, id).await?;
                job_out(&job, json_out, test_text, false)?;
            }
        },
        Command::Schedule { command } => match command {
            ScheduleCommand::List { cluster } => {
                let r =
                    client.list_schedules(ListJobsRequest { cluster: cluster.unwrap_or_default() }).await.map_err(status_err)?.into_inner();
                let items: Vec<serde_json::Value> = serde_json::from_str(&r.jobs_json)?;
                if json_out {
                    println!("{}", serde_json::to_string_pretty(&json!({ "schedules": items }))?);
                } else {
                    let rows: Vec<Vec<String>> = items
                        .iter()
                        .map(|s| {
                            vec![
                                s["cluster"].as_str().unwrap_or("").to_string(),
                                s["job"].as_str().unwrap_or("").to_string(),
                                s["cron"].as_str().unwrap_or("").to_string(),
                                s["last_fired"].to_string(),
                                s["next_at"].to_string(),
                            ]
                        })
                        .collect();
                    print!("{}", table::render(&["CLUSTER", "JOB", "CRON (UTC)", "LAST FIRED (ms)", "NEXT (ms)"], &rows));
                }
            }
            ScheduleCommand::Set { cluster, backup, recovery_test } => {
                if backup.is_none() && recovery_test.is_none() {
                    anyhow::bail!("nothing to set: give --backup and/or --recovery-test (\"off\" removes one)");
                }
                for (job, cron) in [("backup", backup), ("recovery-test", recovery_test)] {
                    let Some(cron) = cron else { continue };
                    let cron = if cron == "off" { String::new() } else { cron };
                    let r = client
                        .set_schedule(SetScheduleRequest { cluster: cluster.clone(), job: job.into(), cron })
                        .await
                        .map_err(status_err)?
                        .into_inner();
                    message_out(&r.message, json_out)?;
                }
            }
        },
        Command::History { cluster } => {
            let r = client.history(HistoryRequest { cluster: cluster.unwrap_or_default() }).await.map_err(status_err)?.into_inner();
            let decisions: serde_json::Value = serde_json::from_str(&r.decisions_json)?;
            if json_out {
                println!("{}", serde_json::to_string_pretty(&json!({ "decisions": decisions }))?);
            } else {
                print!("{}", history_text(decisions.as_array().map(Vec::as_slice).unwrap_or_default()));
            }
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Job {
    Backup,
    RecoveryTest,
}

async fn list_jobs(client: &mut AdminServiceClient<Channel>, job: Job, cluster: String) -> anyhow::Result<Vec<serde_json::Value>> {
    let request = ListJobsRequest { cluster };
    let r = match job {
        Job::Backup => client.list_backups(request).await,
        Job::RecoveryTest => client.list_recovery_tests(request).await,
    }
    .map_err(status_err)?
    .into_inner();
    Ok(serde_json::from_str(&r.jobs_json)?)
}

async fn find_job(client: &mut AdminServiceClient<Channel>, job: Job, id: u64) -> anyhow::Result<serde_json::Value> {
    let what = match job {
        Job::Backup => "backup",
        Job::RecoveryTest => "recovery test",
    };
    list_jobs(client, job, String::new()).await?.into_iter().find(|j| j["id"] == id).ok_or_else(|| anyhow!("no {what} {id}"))
}

/// Polls until the job is no longer running; with `show`, prints its
/// progress (to stderr) every few seconds.
async fn wait_job(client: &mut AdminServiceClient<Channel>, job: Job, id: u64, show: bool) -> anyhow::Result<serde_json::Value> {
    let mut shown = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        // A leader change in between is not the job's failure: ask again.
        let Ok(j) = find_job(client, job, id).await else { continue };
        if j["state"] != "running" {
            return Ok(j);
        }
        if let Some(p) = j["progress"]["text"].as_str().filter(|_| show && shown.elapsed() >= Duration::from_secs(2)) {
            eprintln!("  {p}");
            shown = tokio::time::Instant::now();
        }
    }
}

/// Prints a job; `run` (not `show`) fails when the job failed.
fn job_out(job: &serde_json::Value, json_out: bool, text: fn(&serde_json::Value) -> String, run: bool) -> anyhow::Result<()> {
    if json_out {
        println!("{}", serde_json::to_string_pretty(job)?);
    } else {
        println!("{}", text(job));
    }
    if run && job["state"] == "failed" {
        anyhow::bail!("{}", job["error"].as_str().unwrap_or("failed"));
    }
    Ok(())
}

fn mib(v: &serde_json::Value) -> String {
    format!("{:.1} MiB", v.as_u64().unwrap_or(0) as f64 / 1048576.0)
}

fn backup_text(b: &serde_json::Value) -> String {
    let took = b["finished_at"].as_u64().unwrap_or(0).saturating_sub(b["started_at"].as_u64().unwrap_or(0));
    let mut s = format!(
        "backup {} of {} ({}): {}\n  from {} (region {}) to {} (region {})\n  objects under {}",
        b["id"],
        b["cluster"].as_str().unwrap_or(""),
        b["kind"].as_str().unwrap_or(""),
        b["state"].as_str().unwrap_or(""),
        b["member"].as_str().unwrap_or(""),
        b["member_region"].as_str().unwrap_or(""),
        b["destination"].as_str().unwrap_or(""),
        b["destination_region"].as_str().unwrap_or(""),
        b["prefix"].as_str().unwrap_or(""),
    );
    if b["state"] == "done" {
        s += &format!(
            "\n  {} raw, {} stored, {:.1} s; sha256 {}",
            mib(&b["raw_bytes"]),
            mib(&b["stored_bytes"]),
            took as f64 / 1000.0,
            b["sha256"].as_str().unwrap_or("")
        );
        let m = &b["manifest"];
        if m["lsn_start"].as_str().is_some_and(|l| !l.is_empty()) {
            s += &format!("\n  WAL {} .. {}", m["lsn_start"].as_str().unwrap_or(""), m["lsn_end"].as_str().unwrap_or(""));
        }
    }
    if let Some(p) = b["progress"]["text"].as_str() {
        s += &format!("\n  progress: {p}");
    }
    if !b["error"].as_str().unwrap_or("").is_empty() {
        s += &format!("\n  error: {}", b["error"].as_str().unwrap_or(""));
    }
    s
}

fn backups_table(jobs: &[serde_json::Value]) -> String {
    let mut rows = Vec::new();
    for b in jobs {
        rows.push(vec![
            b["id"].to_string(),
            b["cluster"].as_str().unwrap_or("").to_string(),
            b["state"].as_str().unwrap_or("").to_string(),
            b["member"].as_str().unwrap_or("").to_string(),
            b["destination"].as_str().unwrap_or("").to_string(),
            mib(&b["raw_bytes"]),
            mib(&b["stored_bytes"]),
            b["started_at"].to_string(),
        ]);
    }
    table::render(&["ID", "CLUSTER", "STATE", "FROM", "TO", "RAW", "STORED", "STARTED"], &rows)
}

fn test_text(t: &serde_json::Value) -> String {
    let mut s = format!(
        "recovery test {} of {}: {} (backup {}, restored on {} in region {})",
        t["id"],
        t["cluster"].as_str().unwrap_or(""),
        t["state"].as_str().unwrap_or(""),
        t["backup_id"],
        t["member"].as_str().unwrap_or(""),
        t["member_region"].as_str().unwrap_or("")
    );
    if t["state"] == "done" {
        s += &format!("\n  RTO {} ms, RPO {} ms", t["rto_ms"], t["rpo_ms"]);
        if let Some(checks) = t["checks"].as_object() {
            for (k, v) in checks {
                s += &format!("\n  {k}: {}", v.as_str().unwrap_or(""));
            }
        }
    }
    if let Some(p) = t["progress"]["text"].as_str() {
        s += &format!("\n  progress: {p}");
    }
    if !t["error"].as_str().unwrap_or("").is_empty() {
        s += &format!("\n  error: {}", t["error"].as_str().unwrap_or(""));
    }
    s
}

fn decision_json(r: &DecisionReply) -> serde_json::Value {
    json!({"decision_id": r.decision_id, "epoch": r.epoch, "from": r.from, "to": r.to, "reason": r.reason, "cluster": r.cluster})
}

fn decision_out(r: &DecisionReply, json_out: bool) -> anyhow::Result<()> {
    if json_out {
        println!("{}", serde_json::to_string_pretty(&decision_json(r))?);
    } else {
        println!("decision {} (epoch {}): {} -> {}\n{}", r.decision_id, r.epoch, r.from, r.to, r.reason);
        println!("follow it with: drctl history --cluster ... or drctl watch");
    }
    Ok(())
}

fn message_out(message: &str, json_out: bool) -> anyhow::Result<()> {
    if json_out {
        println!("{}", serde_json::to_string_pretty(&json!({ "message": message }))?);
    } else {
        println!("{message}");
    }
    Ok(())
}

fn history_text(decisions: &[serde_json::Value]) -> String {
    let ms = |v: &serde_json::Value| {
        v.as_u64().map(|t| humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(t)).to_string())
    };
    let mut out = String::new();
    if decisions.is_empty() {
        out.push_str("no decisions yet\n");
    }
    for d in decisions {
        out.push_str(&format!(
            "decision {} {} {} epoch {}: {} -> {} ({}) at {}\n  why: {}\n",
            d["id"],
            d["cluster"].as_str().unwrap_or_default(),
            d["kind"].as_str().unwrap_or_default(),
            d["epoch"],
            d["from"].as_str().unwrap_or_default(),
            d["to"].as_str().unwrap_or_default(),
            d["trigger"]["by"].as_str().unwrap_or_default(),
            ms(&d["decided_at"]).unwrap_or_default(),
            d["reason"].as_str().unwrap_or_default(),
        ));
        for s in d["steps"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let took = s["finished"].as_u64().unwrap_or(0).saturating_sub(s["started"].as_u64().unwrap_or(0));
            let err = s["error"].as_str().filter(|e| !e.is_empty()).map(|e| format!(" ({e})")).unwrap_or_default();
            out.push_str(&format!(
                "  - {:<9} {:<12} {:<8} {took} ms{err}\n",
                s["action"].as_str().unwrap_or_default(),
                s["member"].as_str().unwrap_or_default(),
                s["state"].as_str().unwrap_or_default()
            ));
        }
        if let Some(o) = d["outcome"].as_str().filter(|o| !o.is_empty()) {
            out.push_str(&format!("  outcome: {o}\n"));
        }
    }
    out
}
