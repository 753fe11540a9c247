//! `drc-proxy`: a stable TCP address for a cluster's writable primary, which
//! follows the coordinators' `WatchPrimary` (see the `drc_proxy` library).

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Forward TCP connections to the current primary of one cluster.
#[derive(Parser, Debug)]
#[command(name = "drc-proxy", version)]
struct Args {
    /// The cluster whose primary to follow.
    #[arg(long)]
    cluster: String,
    /// host:port to accept client connections on.
    #[arg(long)]
    listen: String,
    /// Coordinator addresses, comma-separated; the proxy follows all of them.
    #[arg(long, env = "DRC_ENDPOINTS", value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// The CA certificate(s), PEM, that signed the coordinators' certificates.
    #[arg(long, env = "DRC_CA")]
    ca: Option<std::path::PathBuf>,
    /// The proxy's client certificate, PEM (a viewer: drc://CLUSTER/viewer/NAME).
    #[arg(long, env = "DRC_CERT")]
    cert: Option<std::path::PathBuf>,
    /// The private key of --cert, PEM.
    #[arg(long, env = "DRC_KEY")]
    key: Option<std::path::PathBuf>,
    /// Talk plaintext, to coordinators configured with insecure = true.
    #[arg(long, env = "DRC_INSECURE")]
    insecure: bool,
    /// host:port to serve /healthz, /readyz and /metrics on (TLS with
    /// --cert and --key, unless --insecure).
    #[arg(long)]
    http_listen: Option<String>,
    /// How to write log lines.
    #[arg(long, value_enum, default_value = "text")]
    log_format: drc_ops::log::LogFormat,
}

impl Args {
    fn security(&self) -> anyhow::Result<drc_tls::Security> {
        let files = drc_tls::files_from_flags(self.ca.as_deref(), self.cert.as_deref(), self.key.as_deref())?;
        let security = drc_tls::Security::new(files, self.insecure)?;
        if security.is_insecure() {
            tracing::warn!("{}", drc_tls::INSECURE_WARNING);
        }
        Ok(security)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    drc_ops::log::init("info,h2=warn,tower=warn,hyper=warn", args.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("drc-proxy: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let security = args.security()?;
        let listener =
            tokio::net::TcpListener::bind(&args.listen).await.map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
        let http = match &args.http_listen {
            Some(a) => {
                Some(tokio::net::TcpListener::bind(a).await.map_err(|e| anyhow::anyhow!("cannot listen on {a} (--http-listen): {e}"))?)
            }
            None => None,
        };
        tracing::info!(cluster = %args.cluster, listen = %args.listen, "drc-proxy starting");
        let cancel = CancellationToken::new();
        let signals = cancel.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            signals.cancel();
        });
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let stop = cancel.clone();
        tokio::spawn(async move {
            term.recv().await;
            stop.cancel();
        });
        drc_proxy::run(listener, args.cluster, args.endpoints, security, http, cancel).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drc-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}
