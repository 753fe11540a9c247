//! Configuration of `drc-agent`: one TOML file per member; flags override.
//! Passwords come from an environment variable or a file, never from the
//! config itself, and are never logged.
//!
//! ```toml
//! member_id = "pg-eu-west"
//! cluster = "n8n-pg"
//! region = "eu-west"
//! kind = "postgres"
//! endpoints = ["10.0.1.5:7400", "10.1.1.5:7400", "10.2.1.5:7400"]
//! probe_interval = "250ms"
//!
//! [connection]
//! host = "127.0.0.1"
//! port = 5432
//! user = "drc"
//! dbname = "postgres"
//! password_env = "DRC_PG_PASSWORD"   # or password_file = "/run/secrets/pg"
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// What the member runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Postgres,
    Redis,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Postgres => "postgres",
            Kind::Redis => "redis",
        }
    }
}

/// How to reach the local member (and, with the same credentials, the primary).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connection {
    #[serde(default = "default_host")]
    pub host: String,
    pub port: u16,
    /// PostgreSQL role; ignored for Redis unless ACL users are used.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub dbname: Option<String>,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

fn default_host() -> String {
    "127.0.0.1".into()
}

impl Connection {
    /// The password, read now from its environment variable or file.
    pub fn password(&self) -> anyhow::Result<Option<String>> {
        if let Some(var) = &self.password_env {
            return match std::env::var(var) {
                Ok(p) => Ok(Some(p)),
                Err(_) => Err(anyhow::anyhow!("connection.password_env: environment variable {var} is not set")),
            };
        }
        if let Some(path) = &self.password_file {
            let p = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("connection.password_file {}: {e}", path.display()))?;
            return Ok(Some(p.trim_end_matches(['\n', '\r']).to_string()));
        }
        Ok(None)
    }
}

fn default_probe_interval() -> Duration {
    Duration::from_millis(250)
}

fn default_probe_timeout() -> Duration {
    Duration::from_secs(1)
}

fn default_buffer() -> usize {
    64
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub member_id: String,
    pub cluster: String,
    pub region: String,
    pub kind: Kind,
    /// Coordinator addresses; any of them will do, followers redirect.
    pub endpoints: Vec<String>,
    #[serde(default = "default_probe_interval", with = "humantime_serde")]
    pub probe_interval: Duration,
    /// Timeout of each probe, local or of the primary.
    #[serde(default = "default_probe_timeout", with = "humantime_serde")]
    pub probe_timeout: Duration,
    /// Samples kept while disconnected; the oldest are dropped first.
    #[serde(default = "default_buffer")]
    pub max_buffered_samples: usize,
    pub connection: Connection,
    /// How to stop, start and rewind the local PostgreSQL (failover actions).
    #[serde(default)]
    pub postgres: Option<crate::actions::PostgresControl>,
    /// Where the agent keeps the newest epoch it has seen, across restarts.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// A replica that streamed from its primary this recently refuses an
    /// automatic promotion (it vouches for that primary); the lease period.
    #[serde(default = "default_vouch", with = "humantime_serde")]
    pub lease_vouch_period: Duration,
    /// S3 buckets this agent backs up to or restores from, by the names the
    /// topology's `[destinations]` use.
    #[serde(default)]
    pub destinations: Vec<crate::backup::DestinationConfig>,
    #[serde(default)]
    pub backup: crate::backup::BackupConfig,
}

fn default_vouch() -> Duration {
    Duration::from_millis(1500)
}

impl AgentConfig {
    pub fn state_file(&self) -> Option<PathBuf> {
        self.state_dir.as_ref().map(|d| d.join(format!("{}.state.json", self.member_id)))
    }

    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))
    }

    /// Every problem at once.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut p = Vec::new();
        for (key, v) in [("member_id", &self.member_id), ("cluster", &self.cluster), ("region", &self.region)] {
            if v.trim().is_empty() {
                p.push(format!("{key}: must not be empty"));
            }
        }
        if self.endpoints.is_empty() {
            p.push("endpoints: list at least one coordinator".into());
        }
        if self.probe_interval.is_zero() {
            p.push("probe_interval: must be greater than zero".into());
        }
        if self.probe_timeout.is_zero() {
            p.push("probe_timeout: must be greater than zero".into());
        }
        if self.max_buffered_samples == 0 {
            p.push("max_buffered_samples: must be greater than 0".into());
        }
        if self.connection.password_env.is_some() && self.connection.password_file.is_some() {
            p.push("connection: set password_env or password_file, not both".into());
        }
        if let Err(e) = self.connection.password() {
            p.push(e.to_string());
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(anyhow::anyhow!("invalid agent configuration:\n  - {}", p.join("\n  - ")))
        }
    }
}
