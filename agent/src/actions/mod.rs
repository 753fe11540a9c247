//! Carries out what the coordinator asks: lease renewals, failover steps,
//! backups and recovery tests, each refused when it is older than an epoch
//! already seen or lacks what it needs.
//!
//! * [`lease`] — the lease a primary serves under, the epochs this agent
//!   has seen (kept on disk), and fencing a primary whose lease lapsed.
//! * [`promote`] — promotion and the synchronous standbys of a primary.
//! * [`postgres`] and [`redis`] — the other steps on each kind of database.
//! * [`vouch`] — which replicas vouch for a primary whose lease lapsed.

mod lease;
mod postgres;
mod promote;
mod redis;
mod supervised;
mod vouch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drc_proto::command::Body;
use drc_proto::command_result::Found;
use drc_proto::{Command, CommandResult, FailoverAction, FailoverStep, StepFound};

use crate::archive::Archiver;
use crate::config::{AgentConfig, Kind};
use lease::{EpochRecord, TAKEN_KEPT};
use tokio_postgres::Client;

use crate::probe::redis::parse_info;

pub struct Actor {
    cfg: Arc<AgentConfig>,
    /// What `/metrics` shows.
    pub stats: Arc<crate::stats::AgentStats>,
    /// Takes the leader's WAL archiving assignments.
    archiver: Arc<Archiver>,
    known: Mutex<EpochRecord>,
    lease_until: Mutex<Option<Instant>>,
    /// The next sample's sequence number.
    next_seq: std::sync::atomic::AtomicU64,
    /// When the newest samples were taken, by sequence number: a renewal
    /// counts from the sample it answers.
    taken: Mutex<std::collections::VecDeque<(u64, Instant)>>,
    /// Other members the primary expects to stream from it.
    replicas: Mutex<usize>,
    /// When this replica last had fresh evidence of its primary: its stream
    /// from it up and its own cross-probe of it answered.
    link_up_at: Mutex<Option<Instant>>,
    /// Set once the agent fenced its member for a lapsed lease.
    fenced: Mutex<bool>,
    /// A restart of a lease-fenced primary is running.
    restarting: tokio::sync::Mutex<()>,
    /// One stop or start of the local PostgreSQL at a time: a fence still
    /// waiting on `pg_ctl stop` when a renewal restarts the server would
    /// otherwise escalate to SIGKILL of the server just restarted.
    control: tokio::sync::Mutex<()>,
    /// A PostgreSQL primary's synchronous_standby_names as this agent last
    /// set or read it (None: not known yet), and one change at a time.
    sync_standbys: Mutex<Option<String>>,
    syncing: tokio::sync::Mutex<()>,
    /// When each standby was last seen streaming from this primary.
    streamed: Mutex<HashMap<String, Instant>>,
    /// A primary whose lease is running out: its heartbeats, newest last
    /// (when, and for PostgreSQL the WAL position written, for Redis how
    /// many replicas acknowledged it).
    heartbeats: Mutex<std::collections::VecDeque<(Instant, u64)>>,
    /// A Redis heartbeat is waiting for its acknowledgements.
    redis_beating: Arc<tokio::sync::Mutex<()>>,
    /// One connection to the local PostgreSQL, reused: the lease check runs
    /// every 50 ms, and a promotion should not pay for new connections.
    local_pg: tokio::sync::Mutex<Option<Arc<Client>>>,
    /// The database's supervisor, when the agent starts it (`[supervise]`).
    supervisor: Option<Arc<crate::supervise::Supervisor>>,
    /// The epoch of the newest cluster view from the coordinators (None:
    /// none yet).
    views: tokio::sync::watch::Sender<Option<u64>>,
    /// Redis: the dataset a supervised server restarted from its own
    /// persistence continues (see `lineage`).
    inherited: Mutex<Option<String>>,
}

pub(super) use drc_model::time::wall_now_ms as now_ms;

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Actor {
    /// The agent's actor, with the epoch it recorded before a restart; a
    /// record that cannot be read is an error.
    pub fn new(cfg: Arc<AgentConfig>, archiver: Arc<Archiver>) -> anyhow::Result<Arc<Actor>> {
        // A state dir on a fresh volume: made here, private to the agent,
        // so that the first epoch learnt is kept.
        if let Some(dir) = &cfg.state_dir {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| anyhow::anyhow!("state_dir {}: {e}", dir.display()))?;
        }
        let known = match cfg.state_file() {
            Some(p) => lease::load_record(&p)?,
            None => EpochRecord::default(),
        };
        // A lease held before a restart is treated as lapsed at once.
        Ok(Arc::new(Actor {
            stats: Arc::default(),
            archiver,
            known: Mutex::new(known.clone()),
            lease_until: Mutex::new(None),
            // Above every number an earlier process of this agent used.
            next_seq: std::sync::atomic::AtomicU64::new(
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(1),
            ),
            taken: Mutex::new(std::collections::VecDeque::with_capacity(TAKEN_KEPT)),
            replicas: Mutex::new(known.replicas),
            link_up_at: Mutex::new(None),
            // Not `known.lease_fenced`: a server restarted behind a
            // restarted agent's back must be found and fenced again. A
            // supervised server is held until its supervisor starts it.
            fenced: Mutex::new(cfg.supervise.is_some()),
            restarting: tokio::sync::Mutex::new(()),
            control: tokio::sync::Mutex::new(()),
            sync_standbys: Mutex::new(None),
            syncing: tokio::sync::Mutex::new(()),
            streamed: Mutex::new(HashMap::new()),
            heartbeats: Mutex::new(std::collections::VecDeque::new()),
            redis_beating: Arc::new(tokio::sync::Mutex::new(())),
            local_pg: tokio::sync::Mutex::new(None),
            supervisor: cfg.supervise.as_ref().map(|_| Arc::new(crate::supervise::Supervisor::new(Arc::clone(&cfg)))),
            views: tokio::sync::watch::channel(None).0,
            inherited: Mutex::new(None),
            cfg,
        }))
    }

    pub fn progress_interval(&self) -> Duration {
        self.cfg.backup.progress_interval
    }

    /// From every local probe of a primary: its synchronous_standby_names.
    /// A value other than the one this agent last set or read (an operator
    /// changed it) is looked at again on the next lease renewal.
    pub fn observe_sync(&self, current: &str) {
        let mut known = lock(&self.sync_standbys);
        if known.as_deref().is_some_and(|k| k != current) {
            *known = None;
        }
    }

    /// From every sample: whether this replica streams from its primary,
    /// and when its cross-probe of that primary last answered. A stream's
    /// status alone is no evidence: replication from a frozen primary, or
    /// across a link that drops packets, says `streaming` (PostgreSQL) or
    /// `up` (Redis) until its time-out, a minute by default; and an idle
    /// healthy primary sends nothing for as long. The cross-probe asks the
    /// primary itself, every probe interval.
    pub fn observe_link(&self, replicating: bool, answered_at: Option<Instant>) {
        if let (true, Some(at)) = (replicating, answered_at) {
            let mut up = lock(&self.link_up_at);
            *up = Some(up.map_or(at, |u| u.max(at)));
        }
    }

    /// Carries out one command.
    /// `meter` follows the progress of backups and recovery tests.
    pub async fn handle(&self, cmd: Command, meter: &crate::backup::Meter) -> CommandResult {
        let start = Instant::now();
        let mut result = CommandResult { command_id: cmd.command_id, ok: true, ..Default::default() };
        let (what, outcome) = match &cmd.body {
            Some(Body::Lease(l)) => {
                if let Err(e) = self.renew(cmd.epoch, l).await {
                    result.ok = false;
                    result.error = e;
                }
                return result;
            }
            // Backups and recovery tests are not failover actions: no epoch.
            Some(Body::Backup(job)) => {
                ("backup", crate::backup::backup(&self.cfg, job, meter, self.data_size().await).await.map(|b| Some(Found::Backup(b))))
            }
            Some(Body::RecoveryTest(job)) => {
                ("recovery_test", crate::backup::recovery_test(&self.cfg, job, meter).await.map(|t| Some(Found::RecoveryTest(t))))
            }
            Some(Body::Restore(job)) => {
                ("restore", crate::backup::restore_to_point(&self.cfg, job, meter).await.map(|r| Some(Found::Restore(r))))
            }
            Some(Body::DeleteBackup(job)) => ("delete_backup", crate::backup::delete(&self.cfg, job).await.map(|()| None)),
            Some(Body::Archive(a)) => ("archive", self.archiver.assign(a).map(|()| None)),
            Some(Body::PruneWal(p)) => ("prune_wal", crate::archive::prune::prune(&self.cfg, p).await.map(|w| Some(Found::WalPruned(w)))),
            Some(Body::Step(step)) => {
                let action = FailoverAction::try_from(step.action).unwrap_or(FailoverAction::Unspecified);
                (action.as_str_name(), self.step(cmd.epoch, action, step).await.map(|s| Some(Found::Step(s))))
            }
            None => ("none", Err("a command without a body: is the coordinator of another release?".into())),
        };
        match outcome {
            Ok(found) => result.found = found,
            Err(e) => {
                result.ok = false;
                result.error = e;
            }
        }
        result.duration_ms = start.elapsed().as_millis() as u64;
        self.stats.ran(what, result.ok);
        tracing::info!(action = what, epoch = cmd.epoch, ok = result.ok, error = %result.error, ms = result.duration_ms, "command");
        result
    }

    /// A failover step, refused when its epoch is older than one already seen.
    async fn step(&self, epoch: u64, action: FailoverAction, s: &FailoverStep) -> Result<StepFound, String> {
        // A malformed step teaches nothing, not even its epoch.
        if action == FailoverAction::Unspecified || s.primary_member.is_empty() {
            return Err(format!("a failover step without an action or a new primary (action {})", s.action));
        }
        let known = self.epoch();
        if !self.learn(epoch, &s.primary_member) {
            return Err(format!("refused: epoch {epoch} is older than epoch {known} already seen"));
        }
        match (self.cfg.kind, action) {
            (_, FailoverAction::Unspecified) => Err(format!("unknown failover action {}", s.action)),
            (_, FailoverAction::Promote) => self.promote(s).await,
            (Kind::Postgres, action) => self.postgres(action, s).await,
            (Kind::Redis, action) => self.redis(action, s).await,
        }
    }

    /// The size of the member's data, to estimate a backup's progress; 0
    /// when unknown.
    async fn data_size(&self) -> u64 {
        match self.cfg.kind {
            Kind::Postgres => match self.pg_local().await {
                Ok(c) => c
                    .query_one("SELECT sum(pg_database_size(oid))::bigint FROM pg_database", &[])
                    .await
                    .ok()
                    .and_then(|r| r.try_get::<_, i64>(0).ok())
                    .unwrap_or(0)
                    .max(0) as u64,
                Err(_) => 0,
            },
            Kind::Redis => match self.redis_local().await {
                Ok(mut c) => {
                    let info: String = ::redis::cmd("INFO").arg("memory").query_async(&mut c).await.unwrap_or_default();
                    parse_info(&info).get("used_memory_dataset").and_then(|v| v.parse().ok()).unwrap_or(0)
                }
                Err(_) => 0,
            },
        }
    }
}

/// Where the new primary of a step listens; a step without it is refused.
/// The new primary's host (an IPv6 address without its brackets, as libpq
/// takes it) and port; a host that is not a plain host name or address is
/// refused, so that it cannot add parameters to a connection string.
pub(super) fn primary_address(s: &FailoverStep) -> Result<(&str, u16), String> {
    let port = u16::try_from(s.primary_port).ok().filter(|p| *p > 0);
    match (s.primary_host.as_str(), port) {
        ("", _) | (_, None) => Err(format!("the step names no address of the new primary {:?}", s.primary_member)),
        (host, _) if !drc_model::topology::parse::valid_host(host) => {
            Err(format!("the step names {host:?} as the new primary's host: not a host name or address"))
        }
        (host, Some(port)) => Ok((host.trim_start_matches('[').trim_end_matches(']'), port)),
    }
}

/// The position a catch-up waits for; a catch-up without one is refused,
/// never taken as 0 (which every replica has reached) unless the
/// coordinator says the demoted primary did end at 0.
pub(super) fn catch_up_target(s: &FailoverStep) -> Result<u64, String> {
    (s.catch_up_known || s.catch_up_to > 0)
        .then_some(s.catch_up_to)
        .ok_or_else(|| "catch-up: the demoted primary's final position is not known".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_whose_primary_host_is_not_a_plain_host_is_refused() {
        let step = |host: &str| FailoverStep {
            primary_member: "pg-b".into(),
            primary_host: host.into(),
            primary_port: 5432,
            ..Default::default()
        };
        assert_eq!(primary_address(&step("10.0.0.2")), Ok(("10.0.0.2", 5432)));
        assert_eq!(primary_address(&step("[fd00::2]")), Ok(("fd00::2", 5432)));
        for bad in ["h dbname=evil", "h' user=postgres", "h\nrestore_command=x"] {
            let e = primary_address(&step(bad)).expect_err(bad);
            assert!(e.contains("not a host name"), "{e}");
        }
    }

    #[tokio::test]
    async fn a_malformed_command_is_refused_and_teaches_no_epoch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = AgentConfig::from_toml(&format!(
            "member_id = \"pg-a\"\ncluster = \"pg\"\nregion = \"a\"\nkind = \"postgres\"\nendpoints = [\"127.0.0.1:1\"]\nstate_dir = {:?}\n[connection]\nport = 1\n",
            dir.path()
        ))
        .expect("config");
        let cfg = Arc::new(cfg);
        let actor = Actor::new(Arc::clone(&cfg), crate::archive::Archiver::new(cfg)).expect("actor");
        let meter = crate::backup::Meter::default();
        let command = |body| Command { command_id: 7, cluster: "pg".into(), epoch: 9, body };
        let r = actor.handle(command(None), &meter).await;
        assert!(!r.ok && r.error.contains("without a body"), "{r:?}");
        let no_action = FailoverStep { primary_member: "pg-b".into(), ..Default::default() };
        let r = actor.handle(command(Some(Body::Step(no_action))), &meter).await;
        assert!(!r.ok && r.error.contains("without an action"), "{r:?}");
        let no_primary = FailoverStep { action: FailoverAction::Fence as i32, ..Default::default() };
        assert!(!actor.handle(command(Some(Body::Step(no_primary))), &meter).await.ok);
        let no_ttl = drc_proto::LeaseGrant::default();
        assert!(!actor.handle(command(Some(Body::Lease(no_ttl))), &meter).await.ok, "a lease without a duration");
        assert_eq!(actor.epoch(), 0, "epoch 9 was never learned from malformed commands");
    }

    #[test]
    fn a_state_dir_that_does_not_exist_yet_is_made_and_keeps_the_epoch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("fresh/volume/drc");
        let cfg = Arc::new(
            AgentConfig::from_toml(&format!(
                "member_id = \"pg-a\"\ncluster = \"pg\"\nregion = \"a\"\nkind = \"postgres\"\nendpoints = [\"127.0.0.1:1\"]\nstate_dir = {state:?}\n[connection]\nport = 1\n"
            ))
            .expect("config"),
        );
        let actor = Actor::new(Arc::clone(&cfg), crate::archive::Archiver::new(Arc::clone(&cfg))).expect("actor");
        assert!(state.is_dir());
        actor.view(3, "pg-b", "10.0.0.2:5432");
        let again = Actor::new(Arc::clone(&cfg), crate::archive::Archiver::new(cfg)).expect("actor");
        assert_eq!(again.epoch(), 3, "the epoch survives the restart");
    }

    #[test]
    fn a_step_missing_what_it_needs_is_refused_not_defaulted() {
        let step = FailoverStep { primary_member: "pg-b".into(), ..Default::default() };
        assert!(catch_up_target(&step).expect_err("no target").contains("final position"), "an unknown 0 is never a target");
        let known = FailoverStep { catch_up_known: true, ..step.clone() };
        assert_eq!(catch_up_target(&known), Ok(0), "a primary that never wrote ended at 0");
        assert!(primary_address(&step).expect_err("no address").contains("pg-b"));
        let step = FailoverStep { primary_host: "10.0.0.2".into(), primary_port: 70_000, catch_up_to: 9, ..step };
        assert!(primary_address(&step).is_err(), "a port beyond 65535");
        assert_eq!(catch_up_target(&step), Ok(9));
        let step = FailoverStep { primary_port: 5433, ..step };
        assert_eq!(primary_address(&step), Ok(("10.0.0.2", 5433)));
    }
}
