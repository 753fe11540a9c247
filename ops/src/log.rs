//! Log lines on stderr, as text for people or as one JSON object per line
//! for a log pipeline; `RUST_LOG` filters them.

use serde::{Deserialize, Serialize};

/// How log lines are written (`log_format` in a configuration file).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, the event's
    /// fields (`message` among them) and, in `span`, the fields of the span
    /// it happened in (a decision's `decision`, `cluster` and `member`).
    Json,
}

/// Installs the process's log output; `default` filters it unless `RUST_LOG`
/// is set. A second call changes nothing.
pub fn init(default: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(true);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init(),
    };
}
