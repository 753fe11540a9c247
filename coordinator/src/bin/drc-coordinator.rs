//! `drc-coordinator`: one node of drc's Raft-replicated coordinator.
//!
//! Exit codes: 0 stopped by SIGTERM/SIGINT; 1 failed while running (the
//! Raft thread panicked, a listener died: a restart may help); 2 a bad
//! configuration; 3 the data dir cannot be used as it is (another node's,
//! in use, corrupt, or written in a newer format): a human must look.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use drc_coordinator::config::{CoordinatorConfig, PeerConfig, RaftTuning};
use tokio_util::sync::CancellationToken;

/// One node of drc's Raft-replicated coordinator. Flags override the file.
#[derive(Parser, Debug)]
#[command(name = "drc-coordinator", version)]
struct Args {
    /// TOML configuration file.
    #[arg(short, long, env = "DRC_COORDINATOR_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long)]
    cluster_id: Option<String>,
    #[arg(long)]
    node_id: Option<u64>,
    /// host:port to serve gRPC on.
    #[arg(long)]
    listen: Option<String>,
    /// host:port other nodes use to reach this one (default: --listen).
    #[arg(long)]
    advertise: Option<String>,
    /// host:port to serve Raft on, apart from clients (default: share --listen).
    #[arg(long)]
    raft_listen: Option<String>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A founding peer (or, with --join, a node of the running cluster);
    /// `@RAFT_HOST:PORT` when that node serves Raft on its own listener.
    /// Repeat for each (replaces the file's list).
    #[arg(long = "peer", value_name = "ID=HOST:PORT[@RAFT_HOST:PORT]")]
    peers: Vec<String>,
    /// Start without a configuration, to be added with `drctl members add`.
    #[arg(long)]
    join: bool,
    /// Append the audit trail to this file, one JSON object per line.
    #[arg(long)]
    audit_log: Option<PathBuf>,
    /// host:port to serve /healthz, /readyz and /metrics on.
    #[arg(long)]
    http_listen: Option<String>,
    /// How to write log lines (text or json).
    #[arg(long, value_enum)]
    log_format: Option<drc_ops::log::LogFormat>,
    #[command(subcommand)]
    tool: Option<Tool>,
}

/// Tools on a stopped node's data dir; without one, the node runs.
#[derive(clap::Subcommand, Debug)]
enum Tool {
    /// After a majority of the coordinators is lost for good: makes this
    /// stopped node's data a one-node cluster, keeping everything it knew
    /// committed (as etcd's --force-new-cluster). Start the node as usual
    /// afterwards, then add members back with `drctl members add`, each
    /// with an empty data dir; never start a lost node on its old data.
    Recover {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// What a stopped node's data dir holds: identity, term, commit and
    /// applied index, voters, and the formats of its log and snapshot.
    Inspect {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

/// Runs a tool; exit 0 on success, 1 when the data dir cannot be used.
fn run_tool(tool: Tool) -> ExitCode {
    use drc_coordinator::raft::RaftStore;
    let (dir, output) = match &tool {
        Tool::Recover { data_dir, output } | Tool::Inspect { data_dir, output } => (data_dir, *output),
    };
    let result = RaftStore::open_existing(dir).and_then(|store| match tool {
        Tool::Recover { .. } => store.force_new_cluster().map(|r| {
            let text = format!(
                "node {} of this data dir is now the only voter, with everything it knew committed (index {}, term {}); dropped {} uncommitted entries; removed nodes {:?} (voters were {:?}); the group is now generation {}, and agents and proxies that see it leave any coordinator of an older one.\nNext: start this coordinator as usual, then add members back with `drctl members add --id ID --address HOST:PORT`, each started with `join = true` and an empty data dir. Never start a removed node on its old data.",
                r.node_id, r.applied_index, r.term, r.dropped_entries, r.removed, r.voters_before, r.generation
            );
            (serde_json::to_value(&r), text)
        }),
        Tool::Inspect { .. } => store.describe().map(|d| {
            let text = format!(
                "cluster {:?} node {}, generation {}\nterm {} (voted for {}), commit {}, applied {}, log {}..{}\nvoters {:?}, learners {:?}\nmembers {:?}\nsnapshot format {}, entries by format {:?}; this release reads formats up to {}",
                d.cluster_id,
                d.node_id,
                d.generation,
                d.term,
                d.vote,
                d.commit_index,
                d.applied_index,
                d.first_index,
                d.last_index,
                d.voters,
                d.learners,
                d.members,
                d.snapshot_format.map_or("none".to_string(), |f| f.to_string()),
                d.entry_formats,
                d.supported_format
            );
            (serde_json::to_value(&d), text)
        }),
    });
    match result {
        Ok((json, text)) => {
            match (output, json) {
                (Output::Json, Ok(v)) => println!("{v:#}"),
                _ => println!("{text}"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("drc-coordinator: {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}

fn load(args: Args) -> anyhow::Result<CoordinatorConfig> {
    let mut cfg = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
            CoordinatorConfig::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => CoordinatorConfig {
            cluster_id: String::new(),
            node_id: 0,
            listen: String::new(),
            advertise: None,
            raft_listen: None,
            raft_advertise: None,
            data_dir: PathBuf::new(),
            join: false,
            peers: Vec::new(),
            raft: RaftTuning::default(),
            failover: Default::default(),
            tls: None,
            insecure: false,
            audit_log: None,
            http_listen: None,
            log_format: Default::default(),
        },
    };
    if let Some(v) = args.cluster_id {
        cfg.cluster_id = v;
    }
    if let Some(v) = args.node_id {
        cfg.node_id = v;
    }
    if let Some(v) = args.listen {
        cfg.listen = v;
    }
    if let Some(v) = args.advertise {
        cfg.advertise = Some(v);
    }
    if let Some(v) = args.raft_listen {
        cfg.raft_listen = Some(v);
    }
    if let Some(v) = args.data_dir {
        cfg.data_dir = v;
    }
    if args.join {
        cfg.join = true;
    }
    if let Some(v) = args.audit_log {
        cfg.audit_log = Some(v);
    }
    if let Some(v) = args.http_listen {
        cfg.http_listen = Some(v);
    }
    if let Some(v) = args.log_format {
        cfg.log_format = v;
    }
    if !args.peers.is_empty() {
        cfg.peers = args
            .peers
            .iter()
            .map(|p| {
                let (id, address) = p.split_once('=').ok_or_else(|| anyhow::anyhow!("--peer {p:?}: expected ID=HOST:PORT"))?;
                let id = id.parse().map_err(|_| anyhow::anyhow!("--peer {p:?}: {id:?} is not a node id"))?;
                let (address, raft_address) = match address.split_once('@') {
                    Some((client, raft)) => (client, Some(raft.to_string())),
                    None => (address, None),
                };
                Ok(PeerConfig { id, address: address.to_string(), raft_address, region: None })
            })
            .collect::<anyhow::Result<_>>()?;
    }
    cfg.validate()?;
    // Certificates that cannot be read, or name another node, are a
    // configuration error too (exit 2), found before anything starts.
    drc_coordinator::server::security(&cfg)?;
    Ok(cfg)
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    if let Some(tool) = args.tool.take() {
        return run_tool(tool);
    }
    let cfg = match load(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("drc-coordinator: {e:#}");
            return ExitCode::from(2);
        }
    };
    drc_ops::log::init("info,raft=info,h2=warn,tower=warn,hyper=warn", cfg.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("drc-coordinator: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let cancel = CancellationToken::new();
        let signals = cancel.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown requested");
            signals.cancel();
        });
        drc_coordinator::server::run(cfg, cancel).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("drc-coordinator: {e:#}");
            let data_dir = e.chain().any(|c| c.downcast_ref::<drc_coordinator::raft::StorageError>().is_some_and(|s| s.needs_operator()));
            ExitCode::from(if data_dir { 3 } else { 1 })
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
