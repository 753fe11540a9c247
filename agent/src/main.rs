//! `drc-agent`: one per database member. Probes its local PostgreSQL or
//! Redis every probe interval (role, position, lag in bytes and time,
//! timeline or replication id, replication link), cross-probes the cluster's
//! current primary from its own region, and streams samples to the
//! coordinator leader over one long-lived gRPC stream.
//!
//! Exit codes: 0 on SIGTERM/SIGINT; 1 the process could not start at all;
//! 2 a bad configuration (also a certificate that names another member, or
//! an HTTP address in use). Coordinators that refuse the agent (an unknown
//! member, another cluster's dataset) are no exit: it logs why and tries
//! again, after 1 s doubling up to 30 s.

mod actions;
mod archive;
mod backup;
mod config;
mod dbtls;
mod probe;
mod process;
mod s3;
mod sampler;
mod session;
mod stats;
mod supervise;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::probe::Probe;
use crate::session::SampleBuffer;

/// drc's per-member agent.
#[derive(Parser, Debug)]
#[command(name = "drc-agent", version)]
struct Args {
    /// TOML configuration file.
    #[arg(short, long, env = "DRC_AGENT_CONFIG")]
    config: PathBuf,
    /// Coordinator addresses, comma-separated (replaces the file's list).
    #[arg(long, env = "DRC_ENDPOINTS", value_delimiter = ',')]
    endpoints: Vec<String>,
    #[command(subcommand)]
    tool: Option<Tool>,
}

/// One-shot tools; without one, the agent runs.
#[derive(clap::Subcommand, Debug)]
enum Tool {
    /// Checks the configuration and exits: 0 valid, 2 not (every problem
    /// printed). With --offline, only what the file says: the passwords and
    /// certificates it names are not read (a file checked away from its host).
    Check {
        #[arg(long)]
        offline: bool,
    },
    /// PostgreSQL's restore_command: writes FILE (%f) from the WAL archive
    /// to PATH (%p). Exit 0: written; 1: not in the archive; 126: the
    /// archive cannot be read (recovery stops with the message).
    WalFetch {
        /// A destination holding the archive (a name in [[destinations]]);
        /// repeat it to look in several, in order.
        #[arg(long = "destination", required = true)]
        destinations: Vec<String>,
        /// The archive's key, `<prefix>/<system id>` (see `drctl status`).
        #[arg(long)]
        archive: String,
        file: String,
        path: PathBuf,
    },
}

fn load(args: &Args) -> anyhow::Result<AgentConfig> {
    let text = std::fs::read_to_string(&args.config).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", args.config.display()))?;
    let mut cfg = AgentConfig::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", args.config.display()))?;
    if !args.endpoints.is_empty() {
        cfg.endpoints = args.endpoints.clone();
    }
    cfg.validate()?;
    Ok(cfg)
}

const LOG_FILTER: &str = "info,h2=warn,tower=warn,hyper=warn";

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(tool) = &args.tool {
        drc_ops::log::init(LOG_FILTER, drc_ops::log::LogFormat::Text);
        return run_tool(&args, tool);
    }
    let cfg = match load(&args) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("drc-agent: {e:#}");
            return ExitCode::from(2);
        }
    };
    drc_ops::log::init(LOG_FILTER, cfg.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("drc-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cfg))
}

/// A tool needs only the destinations and keys of the configuration.
fn run_tool(args: &Args, tool: &Tool) -> ExitCode {
    let cfg = match std::fs::read_to_string(&args.config)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", args.config.display()))
        .and_then(|text| AgentConfig::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", args.config.display())))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("drc-agent: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("drc-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match tool {
        Tool::Check { offline } => match cfg.validate_with(!offline) {
            Ok(()) => {
                println!("{}: valid", args.config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("drc-agent: {}: {e:#}", args.config.display());
                ExitCode::from(2)
            }
        },
        Tool::WalFetch { destinations, archive, file, path } => {
            let fetch = archive::fetch::Fetch { cfg: &cfg, destinations, root: archive };
            match runtime.block_on(fetch.fetch(file, path)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("drc-agent wal-fetch {file}: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
    }
}

async fn run(cfg: Arc<AgentConfig>) -> ExitCode {
    let security = match cfg.security() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("drc-agent: {e:#}");
            return ExitCode::from(2);
        }
    };
    let (mut local, cross) = match Probe::new(&cfg).and_then(|l| Ok((l, Probe::new(&cfg)?))) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("drc-agent: {e:#}");
            return ExitCode::from(2);
        }
    };
    let cancel = CancellationToken::new();
    let signals = cancel.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        if let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        }
        signals.cancel();
    });

    backup::clean_leftovers(&cfg).await;
    let buffer = Arc::new(SampleBuffer::new(cfg.max_buffered_samples));
    let archiver = archive::Archiver::new(Arc::clone(&cfg));
    let actor = match actions::Actor::new(Arc::clone(&cfg), Arc::clone(&archiver)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("drc-agent: {e:#}");
            return ExitCode::from(2);
        }
    };
    tokio::spawn(Arc::clone(&actor).watch_lease(cancel.clone()));
    let supervisor = tokio::spawn(Arc::clone(&actor).supervise(cancel.clone()));
    if let Some(address) = &cfg.http_listen {
        let site = stats::AgentSite::new(Arc::clone(&actor.stats), Arc::clone(&buffer), &cfg, &security);
        if let Err(e) = drc_ops::http::listen(address, security.clone(), Arc::new(site), cancel.clone()).await {
            eprintln!("drc-agent: {e}");
            return ExitCode::from(2);
        }
    }
    let (views_tx, views_rx) = watch::channel::<Option<drc_proto::ClusterView>>(None);
    // Probe once before connecting, so that the Hello carries the dataset id.
    let first = local.local().await;
    let (dataset_tx, dataset_rx) = watch::channel((first.dataset_id.clone(), first.previous_dataset_id.clone()));
    tracing::info!(member = %cfg.member_id, kind = cfg.kind.as_str(), role = first.role, reachable = first.reachable, "agent starting");

    tokio::spawn(Arc::clone(&archiver).run(views_rx.clone(), dataset_rx.clone(), cancel.clone()));
    let probes = tokio::spawn(sampler::run(
        Arc::clone(&cfg),
        local,
        cross,
        first,
        Arc::clone(&actor),
        archiver,
        Arc::clone(&buffer),
        views_rx,
        dataset_tx,
        cancel.clone(),
    ));

    session::run(Arc::clone(&cfg), security, actor, buffer, views_tx, dataset_rx, cancel.clone()).await;
    cancel.cancel();
    let _ = probes.await;
    // A supervised server stops before the agent exits.
    let _ = supervisor.await;
    tracing::info!("agent stopped");
    ExitCode::SUCCESS
}
