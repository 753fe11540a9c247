//! The failover steps on PostgreSQL: fence, demote, catch-up, repoint and
//! rejoin (through pg_rewind), and the connections and tools they use.

use std::sync::Arc;
use std::time::{Duration, Instant};

use drc_proto::{FailoverAction, FailoverStep, StepFound};
use tokio_postgres::Client;

use super::{catch_up_target, lock, primary_address, Actor};
use crate::probe::postgres::pg_err;
use crate::process::{postmaster_alive, run_as};

impl Actor {
    pub(super) async fn postgres(&self, action: FailoverAction, s: &FailoverStep) -> Result<StepFound, String> {
        let pg = self
            .cfg
            .postgres
            .as_ref()
            .ok_or_else(|| format!("{}: this agent has no [postgres] section (data_dir, bin_dir, run_as)", action.as_str_name()))?;
        match action {
            // A postmaster that is gone is fenced already: no pg_ctl (~250 ms).
            FailoverAction::Fence if !postmaster_alive(&pg.data_dir) => {
                Ok(StepFound { already: "not running".into(), ..Default::default() })
            }
            FailoverAction::Fence => self.stop_now().await.map(|_| StepFound::default()),
            FailoverAction::Demote => {
                self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "60"]).await?;
                let out = run_as(&pg.run_as, &pg.bin_dir.join("pg_controldata"), &[pg.data_dir.to_string_lossy().as_ref()]).await?;
                let lsn =
                    out.lines().find(|l| l.starts_with("Latest checkpoint location:")).and_then(|l| l.split(':').nth(1)).map(str::trim);
                let position = lsn.and_then(parse_lsn).ok_or("cannot read the final position from pg_controldata")?;
                Ok(StepFound { position: Some(position), ..Default::default() })
            }
            FailoverAction::CatchUp => {
                let target = catch_up_target(s)?;
                let c = self.pg_local().await?;
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    let row = c
                        .query_one("SELECT COALESCE(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), '0/0'), 0)::bigint", &[])
                        .await
                        .map_err(pg_err)?;
                    let pos = row.get::<_, i64>(0) as u64;
                    if pos >= target {
                        return Ok(StepFound { position: Some(pos), ..Default::default() });
                    }
                    if Instant::now() > deadline {
                        return Err(format!("received up to {pos}, the old primary ended at {target}"));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            FailoverAction::Repoint => {
                let c = match self.pg_local().await {
                    Ok(c) => c,
                    // A standby whose server is down (crashed, or stopped
                    // before the failover) is brought up following the new
                    // primary, rewound first if it had gone past it: else it
                    // would stay down until someone started it by hand.
                    Err(e) if self.cfg.postgres.as_ref().is_some_and(|pg| !postmaster_alive(&pg.data_dir)) => {
                        tracing::warn!(error = %e, "the standby's server is down: starting it to follow the new primary");
                        return self.pg_rejoin(s).await;
                    }
                    Err(e) => return Err(e),
                };
                let conninfo = self.conninfo(s)?;
                // One statement each: ALTER SYSTEM cannot run in the implicit
                // transaction of a multi-statement query.
                for sql in [
                    format!("ALTER SYSTEM SET primary_conninfo = {}", quote(&conninfo)),
                    format!("ALTER SYSTEM SET primary_slot_name = {}", quote(&drc_proto::slot_name(&self.cfg.member_id))),
                    "SELECT pg_reload_conf()".to_string(),
                ] {
                    c.batch_execute(&sql).await.map_err(|e| format!("{sql}: {}", pg_err(e)))?;
                }
                Ok(StepFound::default())
            }
            FailoverAction::Rejoin => self.pg_rejoin(s).await,
            FailoverAction::Promote | FailoverAction::Unspecified => Err(format!("{} is not a PostgreSQL step", action.as_str_name())),
        }
    }

    /// Brings the old primary back as a standby of the new one: stop it,
    /// CHECKPOINT on the new primary, pg_rewind, standby settings, start.
    pub(super) async fn pg_rejoin(&self, s: &FailoverStep) -> Result<StepFound, String> {
        let pg = self.cfg.postgres.as_ref().ok_or("no [postgres] section")?;
        if let Ok(c) = self.pg_local().await {
            let in_recovery: bool = c.query_one("SELECT pg_is_in_recovery()", &[]).await.map_err(pg_err)?.get(0);
            if in_recovery {
                drop(c);
                return Box::pin(self.postgres(FailoverAction::Repoint, s)).await;
            }
        }
        let _ = self.stop_now().await;
        let (host, port) = primary_address(s)?;
        let primary = self.pg_connect(host, port).await?;
        primary.batch_execute("CHECKPOINT").await.map_err(|e| format!("CHECKPOINT on the new primary: {}", pg_err(e)))?;
        let mut source =
            format!("host={host} port={port} user={} dbname=postgres", self.cfg.connection.user.as_deref().unwrap_or("postgres"));
        if let Some(t) = &self.cfg.connection.tls {
            source.push_str(&t.libpq_params());
        }
        if let Some(f) = &pg.replication_passfile {
            source.push_str(&format!(" passfile={}", f.display()));
        }
        let data = pg.data_dir.to_string_lossy().to_string();
        // pg_rewind finishes the crash recovery of a server that did not shut
        // down cleanly in single-user mode, which refuses standby mode: a
        // crashed standby recovers like a primary (its own WAL only, no new
        // timeline) and is a standby again below.
        let signal = pg.data_dir.join("standby.signal");
        if signal.exists() {
            std::fs::remove_file(&signal).map_err(|e| format!("{}: {e}", signal.display()))?;
        }
        if let Err(e) = run_as(&pg.run_as, &pg.bin_dir.join("pg_rewind"), &["--target-pgdata", &data, "--source-server", &source]).await {
            // Never leave a data directory that would start as a primary.
            let _ = std::fs::write(&signal, "");
            return Err(format!("pg_rewind: {e}"));
        }
        // pg_rewind copied the new primary's configuration: write ours after it.
        let auto = pg.data_dir.join("postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
        text.push_str(&format!(
            "\n# written by drc-agent at rejoin\nprimary_conninfo = {}\nprimary_slot_name = {}\n",
            quote(&self.conninfo(s)?),
            quote(&drc_proto::slot_name(&self.cfg.member_id))
        ));
        std::fs::write(&auto, text).map_err(|e| format!("{}: {e}", auto.display()))?;
        std::fs::write(pg.data_dir.join("standby.signal"), "").map_err(|e| format!("standby.signal: {e}"))?;
        self.start_postgres().await?;
        *lock(&self.fenced) = false;
        Ok(StepFound::default())
    }

    /// `primary_conninfo` for a standby of `s`'s primary: TLS as the
    /// agent's own connection is configured, the password from a passfile.
    pub(super) fn conninfo(&self, s: &FailoverStep) -> Result<String, String> {
        let pg = self.cfg.postgres.as_ref();
        let user = pg.map(|p| p.replication_user.clone()).unwrap_or_else(|| "postgres".into());
        let (host, port) = primary_address(s)?;
        let mut info = format!("host={host} port={port} user={user} application_name={}", self.cfg.member_id);
        if let Some(t) = &self.cfg.connection.tls {
            info.push_str(&t.libpq_params());
        }
        if let Some(f) = pg.and_then(|p| p.replication_passfile.as_ref()) {
            info.push_str(&format!(" passfile={}", f.display()));
        }
        Ok(info)
    }

    /// Stops the local server at once: an immediate stop, and if the server
    /// does not go within a second (hung: frozen, or stuck on its storage),
    /// SIGKILL of the postmaster and its children.
    pub(super) async fn stop_now(&self) -> Result<(), String> {
        let pg = self.cfg.postgres.as_ref().ok_or("no [postgres] section")?;
        let _one = self.control.lock().await;
        // A killed postmaster not yet reaped would hold pg_ctl for its wait.
        if !crate::process::postmaster_alive(&pg.data_dir) {
            return Ok(());
        }
        match self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "1"]).await {
            Ok(()) if !crate::process::postmaster_alive(&pg.data_dir) => Ok(()),
            outcome => {
                let why = outcome.err().unwrap_or_else(|| "still running".into());
                tracing::warn!(error = %why, "the server did not stop within 1 s: killing the postmaster and its children");
                crate::process::kill_postmaster(&pg.data_dir, Duration::from_secs(5)).await
            }
        }
    }

    pub(super) async fn pg_ctl(&self, args: &[&str]) -> Result<(), String> {
        let pg = self.cfg.postgres.as_ref().ok_or("no [postgres] section")?;
        if let (Some(s), Some(&"stop")) = (&self.supervisor, args.first()) {
            s.release();
        }
        let data = pg.data_dir.to_string_lossy().to_string();
        let mut all: Vec<&str> = vec!["-D", &data];
        let log = pg.log_file.as_ref().map(|p| p.to_string_lossy().to_string());
        if args.first() == Some(&"start") {
            all.extend(["-o", pg.start_options.as_str()]);
            if let Some(l) = &log {
                all.extend(["-l", l.as_str()]);
            }
        }
        all.extend(args);
        match run_as(&pg.run_as, &pg.bin_dir.join("pg_ctl"), &all).await {
            Ok(_) => Ok(()),
            // Stopping a server that is not running is what we wanted.
            Err(e)
                if args.first() == Some(&"stop")
                    && (e.contains("Is server running?") || e.contains("does not exist") || e.contains("No such process")) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    pub(super) async fn pg_connect(&self, host: &str, port: u16) -> Result<Client, String> {
        crate::probe::postgres::connect(&self.cfg.connection, host, port, "drc-agent-action").await
    }

    pub(super) async fn pg_local(&self) -> Result<Arc<Client>, String> {
        let mut cached = self.local_pg.lock().await;
        if let Some(c) = cached.as_ref().filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(c));
        }
        *cached = None;
        let c = Arc::new(self.pg_connect(&self.cfg.connection.host, self.cfg.connection.port).await?);
        *cached = Some(Arc::clone(&c));
        Ok(c)
    }
}

/// A PostgreSQL string literal.
pub(super) fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// "16/B374D848" → byte position.
pub(super) fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_and_slot_names() {
        assert_eq!(parse_lsn("0/3000028"), Some(0x3000028));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374D848));
        assert_eq!(parse_lsn("nope"), None);
        assert_eq!(drc_proto::slot_name("pg-eu-west"), "drc_pg_eu_west");
        assert_eq!(quote("it's"), "'it''s'");
    }
}
