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
//!
//! [tls]                               # or insecure = true (plaintext)
//! ca = "/etc/drc/ca.pem"
//! cert = "/etc/drc/agent.pem"         # names drc://<drc cluster>/agent/pg-eu-west
//! key = "/etc/drc/agent.key"
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
    /// TLS to the database (PostgreSQL verify-full, Redis rediss).
    #[serde(default)]
    pub tls: Option<crate::dbtls::DbTls>,
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
    pub postgres: Option<PostgresControl>,
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
    pub destinations: Vec<DestinationConfig>,
    #[serde(default)]
    pub backup: BackupConfig,
    #[serde(default)]
    pub archive: ArchiveConfig,
    /// The agent's CA, certificate and key; required unless `insecure`.
    #[serde(default)]
    pub tls: Option<drc_tls::TlsFiles>,
    /// Talk to the coordinators in plaintext, unauthenticated.
    #[serde(default)]
    pub insecure: bool,
    /// Where to serve HTTP: `/healthz`, `/readyz` (the stream to the
    /// leader is up) and `/metrics`, with the TLS settings above.
    #[serde(default)]
    pub http_listen: Option<String>,
    /// `text` (default) or `json`, one object per line.
    #[serde(default)]
    pub log_format: drc_ops::log::LogFormat,
    /// The agent starts its database itself and owns it: see [`SuperviseConfig`].
    #[serde(default)]
    pub supervise: Option<SuperviseConfig>,
}

/// `[supervise]`: the agent starts the database as its own child, only in
/// the role its epoch and lease allow, restarts it after a crash, and stops
/// it when the agent stops. PostgreSQL needs nothing here (`[postgres]`
/// says where and how); Redis needs its command.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuperviseConfig {
    /// Redis only: the server's command, e.g. `["redis-server",
    /// "/etc/redis/redis.conf"]`; the agent adds the port settings.
    #[serde(default)]
    pub command: Vec<String>,
    /// The server's OS user; by default `postgres.run_as` for PostgreSQL
    /// and the agent's own user for Redis.
    #[serde(default)]
    pub run_as: Option<String>,
    /// Where the server's output is appended; by default `postgres.log_file`,
    /// else the agent's own output (a container's log).
    #[serde(default)]
    pub log_file: Option<PathBuf>,
    /// How long a stop may take before the server is killed.
    #[serde(default = "default_stop_timeout", with = "humantime_serde")]
    pub stop_timeout: Duration,
    /// The member that starts as the primary of a cluster no coordinator
    /// has adopted yet; the others wait for it to claim the cluster and
    /// follow it. Needed for Redis, which starts as a master whatever it
    /// was; PostgreSQL's data says it (`standby.signal`).
    #[serde(default)]
    pub first_primary: Option<String>,
}

fn default_stop_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_vouch() -> Duration {
    Duration::from_millis(1500)
}

impl AgentConfig {
    /// The environment a libpq tool (pg_basebackup, pg_receivewal) needs
    /// for a replication connection to the cluster: the password, TLS
    /// settings, and the replication role's passfile.
    pub fn libpq_env(&self, c: &mut tokio::process::Command) {
        if let Ok(Some(p)) = self.connection.password() {
            c.env("PGPASSWORD", p);
        }
        if let Some(t) = &self.connection.tls {
            c.envs(t.libpq_env());
        }
        if let Some(f) = self.postgres.as_ref().and_then(|pg| pg.replication_passfile.as_ref()) {
            c.env("PGPASSFILE", f);
        }
    }

    /// How the agent reaches the coordinators: its certificate must name
    /// this member's agent.
    pub fn security(&self) -> anyhow::Result<drc_tls::Security> {
        let security = drc_tls::Security::new(self.tls.clone(), self.insecure).map_err(|e| anyhow::anyhow!("tls: {e}"))?;
        match security.identity() {
            None => tracing::warn!(member = %self.member_id, "{}", drc_tls::INSECURE_WARNING),
            Some(id) if id.role != drc_tls::Role::Agent || id.name != self.member_id => {
                anyhow::bail!(
                    "tls.cert names {id}, but this is the agent of member {:?}: it must name drc://<cluster>/agent/{}",
                    self.member_id,
                    self.member_id
                )
            }
            Some(_) => {}
        }
        Ok(security)
    }

    pub fn state_file(&self) -> Option<PathBuf> {
        self.state_dir.as_ref().map(|d| d.join(format!("{}.state.json", self.member_id)))
    }

    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))
    }

    /// Every problem at once, reading the files and variables it names
    /// (passwords, the database's CA).
    pub fn validate(&self) -> anyhow::Result<()> {
        self.validate_with(true)
    }

    /// Every problem at once; with `files` false, only what the file itself
    /// says (a configuration checked away from the host it is for).
    pub fn validate_with(&self, files: bool) -> anyhow::Result<()> {
        let mut p = Vec::new();
        for (key, v) in [("member_id", &self.member_id), ("cluster", &self.cluster), ("region", &self.region)] {
            if v.trim().is_empty() {
                p.push(format!("{key}: must not be empty"));
            }
        }
        if self.http_listen.as_deref().is_some_and(|a| !drc_model::topology::parse::valid_address(a)) {
            p.push(format!("http_listen: invalid address {:?}, expected host:port", self.http_listen.as_deref().unwrap_or_default()));
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
        if self.archive.upload_every.is_zero() || self.archive.upload_timeout.is_zero() {
            p.push("archive.upload_every and archive.upload_timeout: must be greater than zero".into());
        }
        if self.connection.password_env.is_some() && self.connection.password_file.is_some() {
            p.push("connection: set password_env or password_file, not both".into());
        }
        if let Some(Err(e)) = files.then(|| self.connection.password()) {
            p.push(e.to_string());
        }
        if let Err(e) = drc_tls::check_choice(self.tls.as_ref(), self.insecure) {
            p.push(format!("tls: {e}"));
        }
        if let Some(Err(e)) = self.connection.tls.as_ref().filter(|_| files).map(|t| t.check()) {
            p.push(e);
        }
        if let Some(f) = self.postgres.as_ref().and_then(|p| p.replication_passfile.as_ref()) {
            if !f.is_absolute() {
                p.push(format!("postgres.replication_passfile: {} must be an absolute path", f.display()));
            }
        }
        if let Some(sv) = &self.supervise {
            if self.state_dir.is_none() {
                p.push("supervise: needs state_dir, where the epoch that decides the server's role is kept".into());
            }
            match self.kind {
                Kind::Postgres if self.postgres.is_none() => p.push("supervise: PostgreSQL needs a [postgres] section".into()),
                Kind::Postgres if !sv.command.is_empty() => {
                    p.push("supervise.command: only for Redis; PostgreSQL starts from [postgres] (bin_dir, data_dir, start_options)".into())
                }
                Kind::Redis if sv.command.is_empty() => p.push("supervise.command: the Redis server's command is needed".into()),
                _ => {}
            }
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(anyhow::anyhow!("invalid agent configuration:\n  - {}", p.join("\n  - ")))
        }
    }
}

/// Where PostgreSQL lives, for the actions that stop, start and rewind it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresControl {
    pub data_dir: PathBuf,
    #[serde(default = "default_bin_dir")]
    pub bin_dir: PathBuf,
    /// OS user that owns the data dir ("" to run the tools as the agent's user).
    #[serde(default = "default_run_as")]
    pub run_as: String,
    /// Passed to `pg_ctl start -o` (port and socket dir belong here, not in
    /// postgresql.conf: pg_rewind copies the config between members).
    #[serde(default)]
    pub start_options: String,
    #[serde(default)]
    pub log_file: Option<PathBuf>,
    /// Role the standbys replicate as.
    #[serde(default = "default_run_as")]
    pub replication_user: String,
    /// A libpq password file (`host:port:db:user:password` lines, mode
    /// 0600, readable by `run_as`) that standbys read the replication
    /// password from: `primary_conninfo` names it, never the password.
    #[serde(default)]
    pub replication_passfile: Option<PathBuf>,
}

fn default_bin_dir() -> PathBuf {
    PathBuf::from("/usr/lib/postgresql/15/bin")
}

fn default_run_as() -> String {
    "postgres".into()
}

/// One S3 bucket this agent may write to or read from, by the name the
/// topology uses.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    pub name: String,
    /// e.g. "https://s3.eu-west-1.amazonaws.com" or "http://127.0.0.1:9000".
    pub endpoint: String,
    pub bucket: String,
    /// The signing region of the S3 service.
    #[serde(default = "default_s3_region")]
    pub s3_region: String,
    pub access_key: String,
    #[serde(default)]
    pub secret_key_env: Option<String>,
    #[serde(default)]
    pub secret_key_file: Option<PathBuf>,
}

fn default_s3_region() -> String {
    "us-east-1".into()
}

/// `[archive]`: where the WAL archiver keeps what it streams until it is
/// uploaded, and how often it uploads.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    #[serde(default = "default_wal_dir")]
    pub dir: PathBuf,
    #[serde(default = "default_upload_every", with = "humantime_serde")]
    pub upload_every: Duration,
    /// An upload that takes longer fails, says why in `drctl status`, and is
    /// tried again on the next pass.
    #[serde(default = "default_upload_timeout", with = "humantime_serde")]
    pub upload_timeout: Duration,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig { dir: default_wal_dir(), upload_every: default_upload_every(), upload_timeout: default_upload_timeout() }
    }
}

fn default_wal_dir() -> PathBuf {
    std::env::temp_dir().join("drc-wal")
}

fn default_upload_every() -> Duration {
    Duration::from_millis(500)
}

fn default_upload_timeout() -> Duration {
    Duration::from_secs(30)
}

/// `[backup]` in the agent's configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// age identity file: only on agents that run recovery tests.
    #[serde(default)]
    pub identity_file: Option<PathBuf>,
    /// Where recovery tests restore to; emptied of leftovers at start.
    #[serde(default = "default_scratch")]
    pub scratch_dir: PathBuf,
    #[serde(default = "default_level")]
    pub zstd_level: i32,
    /// Multipart upload part size (S3 needs at least 5 MiB).
    #[serde(default = "default_part_mib")]
    pub part_size_mib: usize,
    /// Parts uploaded at once.
    #[serde(default = "default_concurrency")]
    pub upload_concurrency: usize,
    /// How often a running backup or recovery test reports its progress.
    #[serde(default = "default_progress", with = "humantime_serde")]
    pub progress_interval: Duration,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            identity_file: None,
            scratch_dir: default_scratch(),
            zstd_level: default_level(),
            part_size_mib: default_part_mib(),
            upload_concurrency: default_concurrency(),
            progress_interval: default_progress(),
        }
    }
}

fn default_scratch() -> PathBuf {
    std::env::temp_dir().join("drc-scratch")
}

fn default_level() -> i32 {
    3
}

fn default_part_mib() -> usize {
    8
}

fn default_concurrency() -> usize {
    4
}

fn default_progress() -> Duration {
    Duration::from_secs(1)
}
