//! PostgreSQL probe (tokio-postgres).
//!
//! Lag in seconds must stay right on an idle primary: a standby that has
//! replayed everything the primary has is 0 s behind however old its last
//! replayed transaction is. Only when it is behind in bytes does the age of
//! the last replayed transaction count.

use std::time::{Duration, Instant};

use std::sync::Arc;

use tokio_postgres::{Client, Config};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{split_address, PrimaryReading, Reading};
use crate::config::Connection;

pub struct PgProber {
    local_cfg: Config,
    base: Config,
    /// TLS (verify-full) to the local server and the primary, when configured.
    tls: Option<Arc<MakeRustlsConnect>>,
    timeout: Duration,
    local: Option<Client>,
    /// Connection to the primary, with the address it was made to.
    primary: Option<(String, Client)>,
}

const LOCAL_IDENTITY: &str = "SELECT pg_is_in_recovery(), (SELECT system_identifier::text FROM pg_control_system())";
const PRIMARY_STATE: &str = "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint, \
     ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int, \
     current_setting('synchronous_standby_names')";
const STANDBY_STATE: &str = "SELECT COALESCE(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), '0/0'), 0)::bigint, \
     COALESCE(pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0'), 0)::bigint, \
     (EXTRACT(EPOCH FROM (now() - pg_last_xact_replay_timestamp())) * 1000)::float8, \
     COALESCE((SELECT received_tli FROM pg_stat_wal_receiver), (SELECT timeline_id FROM pg_control_checkpoint()))::int, \
     COALESCE((SELECT status FROM pg_stat_wal_receiver), 'stopped')";

impl PgProber {
    pub fn new(conn: &Connection, timeout: Duration) -> anyhow::Result<Self> {
        let mut base = Config::new();
        base.user(conn.user.as_deref().unwrap_or("postgres"))
            .dbname(conn.dbname.as_deref().unwrap_or("postgres"))
            .connect_timeout(timeout)
            .application_name("drc-agent");
        if let Some(p) = conn.password()? {
            base.password(p);
        }
        let mut local_cfg = base.clone();
        local_cfg.host(&conn.host).port(conn.port);
        let tls = conn.tls.as_ref().map(|t| t.postgres().map(Arc::new)).transpose().map_err(anyhow::Error::msg)?;
        Ok(PgProber { local_cfg, base, tls, timeout, local: None, primary: None })
    }

    async fn connect(&self, cfg: &Config) -> Result<Client, String> {
        tokio::time::timeout(self.timeout, crate::dbtls::pg_connect(cfg, self.tls.as_ref()))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(pg_err)
    }

    pub async fn local(&mut self) -> Reading {
        match self.try_local().await {
            Ok(r) => r,
            Err(e) => {
                self.local = None;
                Reading::unreachable(e)
            }
        }
    }

    async fn try_local(&mut self) -> Result<Reading, String> {
        if self.local.as_ref().is_none_or(|c| c.is_closed()) {
            self.local = Some(self.connect(&self.local_cfg).await?);
        }
        let client = self.local.as_ref().ok_or("no connection")?;
        let t = self.timeout;
        let q = |sql: &'static str| async move {
            tokio::time::timeout(t, client.query_one(sql, &[])).await.map_err(|_| "query timed out".to_string())?.map_err(|e| e.to_string())
        };
        let row = q(LOCAL_IDENTITY).await?;
        let in_recovery: bool = row.get(0);
        let dataset_id: String = row.get(1);
        if !in_recovery {
            let row = q(PRIMARY_STATE).await?;
            let position = row.get::<_, i64>(0) as u64;
            return Ok(Reading {
                reachable: true,
                role: "primary",
                position,
                timeline: row.get::<_, i32>(1) as u32,
                dataset_id,
                sync_standbys: row.get(2),
                replication_connected: true,
                ..Default::default()
            });
        }
        let row = q(STANDBY_STATE).await?;
        let receive = row.get::<_, i64>(0) as u64;
        let replay = row.get::<_, i64>(1) as u64;
        let age_ms: Option<f64> = row.get(2);
        let state: String = row.get(4);
        Ok(Reading {
            reachable: true,
            role: "replica",
            position: replay,
            receive,
            replay,
            timeline: row.get::<_, i32>(3) as u32,
            dataset_id,
            replication_connected: state == "streaming",
            replication_state: state,
            replay_age: age_ms.map(|ms| Duration::from_millis(ms.max(0.0) as u64)),
            ..Default::default()
        })
    }

    pub async fn primary(&mut self, address: &str) -> PrimaryReading {
        let start = Instant::now();
        match self.try_primary(address).await {
            Ok(position) => PrimaryReading { reachable: true, position, round_trip: start.elapsed(), acked: None, answered_at: None },
            Err(e) => {
                tracing::debug!(%address, error = %e, "primary not reachable");
                self.primary = None;
                PrimaryReading { reachable: false, position: 0, round_trip: start.elapsed(), acked: None, answered_at: None }
            }
        }
    }

    async fn try_primary(&mut self, address: &str) -> Result<u64, String> {
        let stale = match &self.primary {
            Some((a, c)) => a != address || c.is_closed(),
            None => true,
        };
        if stale {
            let (host, port) = split_address(address).ok_or_else(|| format!("bad primary address {address:?}"))?;
            let mut cfg = self.base.clone();
            cfg.host(&host).port(port);
            self.primary = Some((address.to_string(), self.connect(&cfg).await?));
        }
        let (_, client) = self.primary.as_ref().ok_or("no connection")?;
        let row = tokio::time::timeout(self.timeout, client.query_one("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint", &[]))
            .await
            .map_err(|_| "query timed out".to_string())?
            .map_err(|e| e.to_string())?;
        Ok(row.get::<_, i64>(0) as u64)
    }
}

/// A connection to the PostgreSQL at `host:port` with the agent's
/// credentials and TLS settings.
pub async fn connect(conn: &Connection, host: &str, port: u16, application: &str) -> Result<Client, String> {
    let mut cfg = Config::new();
    cfg.host(host)
        .port(port)
        .user(conn.user.as_deref().unwrap_or("postgres"))
        .dbname(conn.dbname.as_deref().unwrap_or("postgres"))
        .connect_timeout(Duration::from_secs(3))
        .application_name(application);
    if let Some(p) = conn.password().map_err(|e| e.to_string())? {
        cfg.password(p);
    }
    let tls = conn.tls.as_ref().map(|t| t.postgres().map(Arc::new)).transpose()?;
    crate::dbtls::pg_connect(&cfg, tls.as_ref()).await.map_err(|e| format!("connecting to {host}:{port}: {}", pg_err(e)))
}

/// A PostgreSQL error with the server's message (tokio-postgres's Display
/// says only "db error").
pub(crate) fn pg_err(e: tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        // With its causes: "error performing TLS handshake" alone does not
        // say that the server's certificate was refused.
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        }
    }
}
