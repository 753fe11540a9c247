//! Commands from the coordinator, carried out on the local member, and the
//! lease that keeps a primary writable.
//!
//! Every command carries its cluster's epoch; a command older than the newest
//! epoch this agent has seen is refused (DESIGN.md rule 1). Every action is
//! idempotent, because a new coordinator leader repeats the step its
//! predecessor may or may not have finished.
//!
//! The lease (rule 2): while this member is the primary, the coordinator
//! renews a lease every few hundred milliseconds. When it lapses, the agent
//! asks the other members directly — a PostgreSQL primary's
//! `pg_stat_replication`, a Redis primary's connected replicas: a replica
//! still streaming from this primary has not been promoted and vouches that
//! no newer epoch exists. If every other member vouches, the primary keeps
//! serving (fail-static: losing the coordinators alone never takes a healthy
//! primary down); otherwise it is fenced at once. A replica whose stream from
//! the primary was up within the last lease period refuses an automatic
//! promotion: it is vouching for that primary.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drc_proto::command::Body;
use drc_proto::{Command, CommandResult, FailoverAction, FailoverStep, LeaseGrant};
use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, Config, NoTls};

use crate::config::{AgentConfig, Kind};
use crate::probe::redis::parse_info;

/// What the agent knows about its cluster's epochs; persisted, so that a
/// restarted agent still refuses old commands and still fences a primary
/// whose lease it held.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Known {
    epoch: u64,
    /// The primary of `epoch`.
    primary: String,
    /// This member held a lease in `epoch`.
    held_lease: bool,
    /// How many other members the lease said stream from this primary:
    /// kept so that a restarted agent can still be vouched for (fail-static)
    /// instead of fencing a healthy primary because it forgot the number.
    #[serde(default)]
    replicas: usize,
    /// The agent fenced this primary because its lease lapsed (not because
    /// another member became primary): a new lease in the current epoch
    /// brings it back. Persisted, so that a restarted agent still can.
    #[serde(default)]
    lease_fenced: bool,
}

pub struct Actor {
    cfg: Arc<AgentConfig>,
    known: Mutex<Known>,
    lease_until: Mutex<Option<Instant>>,
    /// The next sample's sequence number.
    next_seq: std::sync::atomic::AtomicU64,
    /// When the newest samples were taken, by sequence number: a renewal
    /// counts from the sample it answers.
    taken: Mutex<std::collections::VecDeque<(u64, Instant)>>,
    /// Other members the primary expects to stream from it.
    replicas: Mutex<usize>,
    /// When this replica last saw its stream from the primary up.
    link_up_at: Mutex<Option<Instant>>,
    /// Set once the agent fenced its member for a lapsed lease.
    fenced: Mutex<bool>,
    /// A restart of a lease-fenced primary is running.
    restarting: tokio::sync::Mutex<()>,
    /// A PostgreSQL primary's synchronous_standby_names as this agent last
    /// set or read it (None: not known yet), and one change at a time.
    sync_standbys: Mutex<Option<String>>,
    syncing: tokio::sync::Mutex<()>,
    /// One connection to the local PostgreSQL, reused: the lease check runs
    /// every 50 ms, and a promotion should not pay for new connections.
    local_pg: tokio::sync::Mutex<Option<Arc<Client>>>,
}

/// How often the agent checks its lease.
const LEASE_CHECK: Duration = Duration::from_millis(50);

/// The agent gives up its lease this long before the coordinator's end of
/// it, so that a check period plus `pg_ctl stop -m immediate` (~60-150 ms
/// here) finish before that end: the coordinator's drift margin is then left
/// for clock differences alone.
const FENCE_LEAD: Duration = Duration::from_millis(200);

/// A renewal that arrives with less than this left on the lease is logged.
const NEAR_LAPSE: Duration = Duration::from_millis(500);

/// How a read that timed out starts its error.
const NO_ANSWER: &str = "no answer";

/// How many samples' times are kept for renewals to name: 25 s of samples
/// at the default probe interval, far more than a lease.
const TAKEN_KEPT: usize = 256;

/// When a lease received at `received` ends on this agent, minus
/// FENCE_LEAD: the earliest of `ttl` after receipt, the coordinator's own end
/// (`expires_at_ms`, its wall clock) as read on ours, and `basis_ttl` after
/// the sample the renewal answers was taken (`basis`). The coordinator
/// received that sample after it was taken and counts its lease from no
/// earlier than that, so the last bound holds however late the renewal is
/// delivered and however far apart the wall clocks are.
fn lease_end(received: Instant, ttl_ms: u64, expires_at_ms: Option<u64>, now_ms: u64, basis: Option<(Instant, u64)>) -> Instant {
    let mut left = ttl_ms;
    if let Some(at) = expires_at_ms {
        left = left.min(at.saturating_sub(now_ms));
    }
    let mut end = received + Duration::from_millis(left);
    if let Some((taken, basis_ttl)) = basis {
        end = end.min(taken + Duration::from_millis(basis_ttl));
    }
    // Never before receipt: a lease that ends there has already lapsed.
    end.checked_sub(FENCE_LEAD).map_or(received, |e| e.max(received))
}

/// Whether the postmaster named by `data_dir/postmaster.pid` still runs.
/// Unsure (unreadable file, no /proc) counts as running, so that the caller
/// stops it properly.
pub fn postmaster_alive(data_dir: &std::path::Path) -> bool {
    let Ok(text) = std::fs::read_to_string(data_dir.join("postmaster.pid")) else {
        // No pid file: not running, unless the file is merely unreadable.
        return data_dir.join("postmaster.pid").exists();
    };
    match text.lines().next().and_then(|l| l.trim().parse::<u32>().ok()) {
        Some(pid) if std::path::Path::new("/proc/self").exists() => {
            // A reused pid would have to belong to a postgres process, and a
            // killed postmaster that its parent has not reaped yet (a zombie)
            // is gone: it serves nothing, and `pg_ctl stop` only times out.
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Field 3, after the parenthesised command name.
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).unwrap_or("");
            comm.trim().starts_with("postgres") && !matches!(state, "Z" | "X")
        }
        _ => true,
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Actor {
    pub fn new(cfg: Arc<AgentConfig>) -> Arc<Actor> {
        let known =
            cfg.state_file().and_then(|p| std::fs::read(p).ok()).and_then(|b| serde_json::from_slice::<Known>(&b).ok()).unwrap_or_default();
        // A lease held before a restart is treated as lapsed at once.
        Arc::new(Actor {
            cfg,
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
            // restarted agent's back must be found and fenced again.
            fenced: Mutex::new(false),
            restarting: tokio::sync::Mutex::new(()),
            sync_standbys: Mutex::new(None),
            syncing: tokio::sync::Mutex::new(()),
            local_pg: tokio::sync::Mutex::new(None),
        })
    }

    /// Numbers a sample taken now; renewals that answer it count from now.
    pub fn stamp(&self, sample: &mut drc_proto::Sample) {
        sample.seq = self.next_seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut taken = lock(&self.taken);
        if taken.len() == TAKEN_KEPT {
            taken.pop_front();
        }
        taken.push_back((sample.seq, Instant::now()));
    }

    /// When sample `seq` was taken, if it is among the newest.
    fn taken_at(&self, seq: u64) -> Option<Instant> {
        let taken = lock(&self.taken);
        taken.iter().rev().find(|(s, _)| *s == seq).map(|(_, at)| *at)
    }

    /// Whether this agent fenced its primary for a lapsed lease and still
    /// takes itself for the primary of the newest epoch it knows.
    pub fn lease_fenced(&self) -> bool {
        let k = lock(&self.known);
        k.lease_fenced && k.primary == self.cfg.member_id
    }

    /// Milliseconds left on the primary lease this agent holds; 0 without one.
    pub fn lease_ms(&self) -> u64 {
        lock(&self.lease_until).map(|t| t.saturating_duration_since(Instant::now()).as_millis() as u64).unwrap_or(0)
    }

    pub fn progress_interval(&self) -> Duration {
        self.cfg.backup.progress_interval
    }

    pub fn epoch(&self) -> u64 {
        lock(&self.known).epoch
    }

    /// Records `epoch` with its primary; false if it is older than known.
    fn learn(&self, epoch: u64, primary: &str) -> bool {
        let mut k = lock(&self.known);
        if epoch < k.epoch {
            return false;
        }
        if epoch > k.epoch || (!primary.is_empty() && k.primary != primary) {
            k.epoch = epoch;
            if !primary.is_empty() {
                k.primary = primary.to_string();
            }
            k.held_lease = k.held_lease && k.primary == self.cfg.member_id;
            k.lease_fenced = k.lease_fenced && k.primary == self.cfg.member_id;
            if k.primary != self.cfg.member_id {
                *lock(&self.lease_until) = None;
            }
            self.save(&k);
        }
        true
    }

    fn save(&self, k: &Known) {
        if let Some(p) = self.cfg.state_file() {
            let tmp = p.with_extension("tmp");
            let ok = serde_json::to_vec(k).ok().and_then(|b| std::fs::write(&tmp, b).ok()).and_then(|_| std::fs::rename(&tmp, &p).ok());
            if ok.is_none() {
                tracing::warn!(path = %p.display(), "cannot persist the agent's epoch");
            }
        }
    }

    /// The cluster view from the coordinator: who is primary in which epoch.
    pub fn view(&self, epoch: u64, primary: &str) {
        self.learn(epoch, primary);
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

    /// From every local probe: whether this replica streams from its primary.
    pub fn observe_link(&self, replicating: bool) {
        if replicating {
            *lock(&self.link_up_at) = Some(Instant::now());
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
            Some(Body::Backup(job)) => ("backup", crate::backup::backup(&self.cfg, job, meter, self.data_size().await).await),
            Some(Body::RecoveryTest(job)) => ("recovery_test", crate::backup::recovery_test(&self.cfg, job, meter).await),
            Some(Body::DeleteBackup(job)) => ("delete_backup", crate::backup::delete(&self.cfg, job).await),
            Some(Body::Step(step)) => {
                let action = FailoverAction::try_from(step.action).unwrap_or(FailoverAction::Unspecified);
                (action.as_str_name(), self.step(cmd.epoch, action, step).await)
            }
            None => ("none", Err("a command without a body: is the coordinator of another release?".into())),
        };
        match outcome {
            Ok(output) => result.output = output,
            Err(e) => {
                result.ok = false;
                result.error = e;
            }
        }
        result.duration_ms = start.elapsed().as_millis() as u64;
        tracing::info!(action = what, epoch = cmd.epoch, ok = result.ok, error = %result.error, ms = result.duration_ms, "command");
        result
    }

    /// A lease renewal: a new lease of the epoch's primary, replacing the
    /// one it holds, and what its commits wait for.
    async fn renew(&self, epoch: u64, l: &LeaseGrant) -> Result<(), String> {
        if l.ttl_ms == 0 {
            return Err("a lease without a duration (ttl_ms 0)".into());
        }
        // The sample the renewal answers (0: none named).
        let basis = match l.basis_seq {
            0 => None,
            seq => match self.taken_at(seq) {
                Some(at) => Some((at, l.basis_ttl_ms)),
                None => {
                    // Too old to be worth anything; nothing proves when it began.
                    tracing::debug!(seq, "a renewal answers a sample this agent no longer knows: ignored");
                    return Ok(());
                }
            },
        };
        if !self.learn(epoch, &self.cfg.member_id) {
            return Ok(());
        }
        // Each renewal replaces the lease, the longer one a promotion
        // granted included: an old primary cut off from the leader must stop
        // writing soon after a failover is decided, or the RPO measured when
        // it was decided no longer holds.
        let now = Instant::now();
        let expires_at = (l.expires_at_ms > 0).then_some(l.expires_at_ms);
        let before = lock(&self.lease_until).replace(lease_end(now, l.ttl_ms, expires_at, now_ms(), basis));
        // A renewal that came close to the end of the lease it replaced: how
        // much slack a leader change or a slow link left.
        if let Some(left) = before.map(|b| b.saturating_duration_since(now)).filter(|l| *l < NEAR_LAPSE) {
            tracing::info!(left_ms = left.as_millis() as u64, "lease renewed close to its end");
        }
        let replicas = l.replicas as usize;
        *lock(&self.replicas) = replicas;
        let restart = {
            let mut k = lock(&self.known);
            if !k.held_lease || k.replicas != replicas {
                k.held_lease = true;
                k.replicas = replicas;
                self.save(&k);
            }
            k.lease_fenced
        };
        let mut result = Ok(());
        if restart {
            result = self.restart_fenced().await;
        }
        // What the primary's commits wait for rides on its lease.
        if let (Kind::Postgres, Some(sync)) = (self.cfg.kind, &l.sync) {
            if !*lock(&self.fenced) {
                if let Err(e) = self.wait_for_standbys(sync.count as usize, &sync.names).await {
                    tracing::warn!(error = %e, count = sync.count, names = ?sync.names, "cannot set the synchronous standbys");
                }
            }
        }
        result
    }

    /// A failover step, refused when its epoch is older than one already seen.
    async fn step(&self, epoch: u64, action: FailoverAction, s: &FailoverStep) -> Result<HashMap<String, String>, String> {
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

    /// Brings back the primary this agent fenced for a lapsed lease, now
    /// that the leader granted a new lease in the current epoch (it does so
    /// only for the recorded primary, and only while no decision replaced
    /// it): PostgreSQL starts again (crash recovery, then the primary it
    /// was), Redis takes writes again. Without this, a coordinator outage
    /// while a replica is down would leave the cluster with no primary until
    /// a failover, which anti-flap may block for minutes.
    async fn restart_fenced(&self) -> Result<(), String> {
        // Leases arrive every few hundred milliseconds: one restart at a time.
        let Ok(_one) = self.restarting.try_lock() else { return Ok(()) };
        if !self.lease_fenced() {
            return Ok(());
        }
        tracing::warn!("a new lease in the current epoch: bringing the fenced primary back");
        match self.cfg.kind {
            Kind::Postgres => {
                let pg = self.cfg.postgres.as_ref().ok_or("no [postgres] section")?;
                if !postmaster_alive(&pg.data_dir) {
                    self.pg_ctl(&["start", "-w", "-t", "60"]).await.map_err(|e| format!("restarting the fenced primary: {e}"))?;
                }
            }
            Kind::Redis => {
                let mut c = self.redis_local().await?;
                redis_cmd(&mut c, redis::cmd("CLIENT").arg("UNPAUSE")).await?;
            }
        }
        // Crash recovery can outlast the lease that allowed it: a server that
        // came up after its lease ended is stopped again at once, before the
        // coordinator's drift margin runs out.
        if !lock(&self.lease_until).is_some_and(|t| Instant::now() < t) {
            let _ = self.fence_local().await;
            return Err("the fenced primary came back after its new lease had ended; fenced again".into());
        }
        let mut k = lock(&self.known);
        k.lease_fenced = false;
        self.save(&k);
        *lock(&self.fenced) = false;
        tracing::info!("the fenced primary serves again under its new lease");
        Ok(())
    }

    /// Stops PostgreSQL at once, or pauses Redis writes.
    async fn fence_local(&self) -> Result<(), String> {
        match self.cfg.kind {
            Kind::Postgres => self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "30"]).await,
            Kind::Redis => match self.redis_local().await {
                Ok(mut c) => redis_cmd(&mut c, redis::cmd("CLIENT").arg("PAUSE").arg(86_400_000u64).arg("WRITE")).await,
                Err(e) => Err(e),
            },
        }
    }

    async fn promote(&self, s: &FailoverStep) -> Result<HashMap<String, String>, String> {
        let fenced = s.old_primary_fenced;
        let grant = s.lease.as_ref().filter(|l| l.ttl_ms > 0).ok_or("promote: no lease granted with the promotion")?;
        let lease = self.cfg.lease_vouch_period;
        // Already promoted in this epoch (the command is repeated by a new
        // coordinator leader that did not see the first result): finish the
        // remaining work without refusing on a vouch it already overrode.
        let already = matches!(self.vouchers().await, Ok(Some(_)));
        if let Some(at) = lock(&self.link_up_at).filter(|_| !already) {
            if !fenced && at.elapsed() < lease {
                return Err(format!(
                    "refused: this replica streamed from the old primary {} ms ago; it vouches for it for {} ms",
                    at.elapsed().as_millis(),
                    lease.as_millis()
                ));
            }
        }
        // The new primary serves under the lease its promotion grants.
        let ttl = grant.ttl_ms;
        let expires_at = (grant.expires_at_ms > 0).then_some(grant.expires_at_ms);
        *lock(&self.lease_until) = Some(lease_end(Instant::now(), ttl, expires_at, now_ms(), None));
        let result = self.promote_member(s).await;
        if result.is_ok() {
            // The lease runs from the end of the promotion, which may take
            // long (WAL to replay): the coordinator keeps extending its end
            // while the decision is in progress.
            *lock(&self.lease_until) = Some(lease_end(Instant::now(), ttl, None, 0, None));
            // From now on this member is the primary that holds the lease:
            // if renewals stop and its replicas do not vouch, it fences itself.
            let replicas = grant.replicas as usize;
            *lock(&self.replicas) = replicas;
            let mut k = lock(&self.known);
            k.held_lease = true;
            k.replicas = replicas;
            self.save(&k);
        }
        result
    }

    /// Makes the primary's commits wait for `count` of the standbys `names`,
    /// but for no more of them than stream from it now under those names
    /// (`pg_stat_replication`): a standby that crashed, or connects under
    /// another application_name, must not hold every commit.
    async fn wait_for_standbys(&self, count: usize, names: &[String]) -> Result<(), String> {
        // Leases come every few hundred milliseconds: one change at a time.
        let Ok(_one) = self.syncing.try_lock() else { return Ok(()) };
        let streaming = if count == 0 {
            0
        } else {
            let c = self.pg_local().await?;
            let rows = c
                .query("SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'", &[])
                .await
                .map_err(|e| format!("reading pg_stat_replication: {}", pg_err(e)))?;
            let connected: std::collections::HashSet<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
            names.iter().filter(|n| connected.contains(*n)).count()
        };
        let want = drc_proto::sync_setting(count.min(streaming), names);
        // Asynchronous, or no standby streams: a setting drc did not write
        // is an operator's, left alone (and said once).
        let operators = |v: &str| want.is_empty() && !v.is_empty() && !drc_proto::is_drc_sync_setting(v);
        if lock(&self.sync_standbys).as_deref().is_some_and(|known| known == want || operators(known)) {
            return Ok(());
        }
        let c = self.pg_local().await?;
        let current: String = c.query_one("SELECT current_setting('synchronous_standby_names')", &[]).await.map_err(pg_err)?.get(0);
        if operators(&current) {
            tracing::warn!(
                synchronous_standby_names = %current,
                "synchronous_standby_names was not set by drc: left alone (policy.synchronous_replicas lets drc manage it)"
            );
            *lock(&self.sync_standbys) = Some(current);
            return Ok(());
        }
        // Set with ALTER SYSTEM, then a reload, which also releases commits
        // waiting for standbys that no longer count.
        if current != want {
            // ALTER SYSTEM takes no parameters: the value is quoted here.
            for sql in [format!("ALTER SYSTEM SET synchronous_standby_names = {}", quote(&want)), "SELECT pg_reload_conf()".to_string()] {
                c.batch_execute(&sql).await.map_err(|e| format!("{sql}: {}", pg_err(e)))?;
            }
            tracing::info!(synchronous_standby_names = %want, was = %current, "synchronous standbys set");
        }
        *lock(&self.sync_standbys) = Some(want.to_string());
        Ok(())
    }

    async fn promote_member(&self, s: &FailoverStep) -> Result<HashMap<String, String>, String> {
        match self.cfg.kind {
            Kind::Postgres => {
                let c = self.pg_local().await?;
                let in_recovery: bool = c.query_one("SELECT pg_is_in_recovery()", &[]).await.map_err(pg_err)?.get(0);
                // A standby may carry synchronous standbys from the primary
                // it was rewound from; as a new primary it would hold every
                // commit until they connect. The leader sets them again once
                // this member's replicas stream.
                if let Err(e) = self.wait_for_standbys(0, &[]).await {
                    tracing::warn!(error = %e, "cannot clear the synchronous standbys before the promotion");
                }
                if in_recovery {
                    // pg_promote's own wait polls every 100 ms; this polls
                    // every 10 ms, which is most of a promotion's time here.
                    c.query_one("SELECT pg_promote(wait => false)", &[]).await.map_err(pg_err)?;
                    let deadline = Instant::now() + Duration::from_secs(30);
                    loop {
                        let r: bool = c.query_one("SELECT pg_is_in_recovery()", &[]).await.map_err(pg_err)?.get(0);
                        if !r {
                            break;
                        }
                        if Instant::now() > deadline {
                            return Err("the promotion did not finish within 30 s".into());
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                // No CHECKPOINT here: it would delay publication, and the
                // rejoin of the old primary runs one before pg_rewind.
                let mine = drc_proto::slot_name(&self.cfg.member_id);
                for slot in s.slots.iter().filter(|slot| !slot.is_empty() && **slot != mine) {
                    c.execute(
                        "SELECT pg_create_physical_replication_slot($1) WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
                        &[&slot],
                    )
                    .await
                    .map_err(|e| format!("creating slot {slot}: {}", pg_err(e)))?;
                }
                Ok(HashMap::new())
            }
            Kind::Redis => {
                let mut c = self.redis_local().await?;
                redis_cmd(&mut c, redis::cmd("REPLICAOF").arg("NO").arg("ONE")).await?;
                let _ = redis_cmd(&mut c, redis::cmd("CLIENT").arg("UNPAUSE")).await;
                // The promotion started a new replication id: the coordinator
                // records it as the cluster's dataset from now on.
                let info: String = redis::cmd("INFO").arg("replication").query_async(&mut c).await.map_err(|e| e.to_string())?;
                let replid = parse_info(&info).get("master_replid").map(|r| r.to_string()).unwrap_or_default();
                Ok(HashMap::from([("dataset_id".to_string(), replid)]))
            }
        }
    }

    async fn postgres(&self, action: FailoverAction, s: &FailoverStep) -> Result<HashMap<String, String>, String> {
        let pg = self
            .cfg
            .postgres
            .as_ref()
            .ok_or_else(|| format!("{}: this agent has no [postgres] section (data_dir, bin_dir, run_as)", action.as_str_name()))?;
        match action {
            // A postmaster that is gone is fenced already: no pg_ctl (~250 ms).
            FailoverAction::Fence if !postmaster_alive(&pg.data_dir) => {
                Ok(HashMap::from([("already".to_string(), "not running".to_string())]))
            }
            FailoverAction::Fence => self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "30"]).await.map(|_| HashMap::new()),
            FailoverAction::Demote => {
                self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "60"]).await?;
                let out = run_as(&pg.run_as, &pg.bin_dir.join("pg_controldata"), &[pg.data_dir.to_string_lossy().as_ref()]).await?;
                let lsn =
                    out.lines().find(|l| l.starts_with("Latest checkpoint location:")).and_then(|l| l.split(':').nth(1)).map(str::trim);
                let position = lsn.and_then(parse_lsn).ok_or("cannot read the final position from pg_controldata")?;
                Ok([("position".to_string(), position.to_string())].into())
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
                        return Ok([("position".to_string(), pos.to_string())].into());
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
                let conninfo = self.conninfo(s);
                // One statement each: ALTER SYSTEM cannot run in the implicit
                // transaction of a multi-statement query.
                for sql in [
                    format!("ALTER SYSTEM SET primary_conninfo = {}", quote(&conninfo)),
                    format!("ALTER SYSTEM SET primary_slot_name = {}", quote(&drc_proto::slot_name(&self.cfg.member_id))),
                    "SELECT pg_reload_conf()".to_string(),
                ] {
                    c.batch_execute(&sql).await.map_err(|e| format!("{sql}: {}", pg_err(e)))?;
                }
                Ok(HashMap::new())
            }
            FailoverAction::Rejoin => self.pg_rejoin(s).await,
            FailoverAction::Promote | FailoverAction::Unspecified => Err(format!("{} is not a PostgreSQL step", action.as_str_name())),
        }
    }

    /// Brings the old primary back as a standby of the new one: stop it,
    /// CHECKPOINT on the new primary, pg_rewind, standby settings, start.
    async fn pg_rejoin(&self, s: &FailoverStep) -> Result<HashMap<String, String>, String> {
        let pg = self.cfg.postgres.as_ref().ok_or("no [postgres] section")?;
        if let Ok(c) = self.pg_local().await {
            let in_recovery: bool = c.query_one("SELECT pg_is_in_recovery()", &[]).await.map_err(pg_err)?.get(0);
            if in_recovery {
                drop(c);
                return Box::pin(self.postgres(FailoverAction::Repoint, s)).await;
            }
        }
        let _ = self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "30"]).await;
        let (host, port) = primary_address(s)?;
        let primary = self.pg_connect(host, port).await?;
        primary.batch_execute("CHECKPOINT").await.map_err(|e| format!("CHECKPOINT on the new primary: {}", pg_err(e)))?;
        let source = format!("host={host} port={port} user={} dbname=postgres", self.cfg.connection.user.as_deref().unwrap_or("postgres"));
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
            quote(&self.conninfo(s)),
            quote(&drc_proto::slot_name(&self.cfg.member_id))
        ));
        std::fs::write(&auto, text).map_err(|e| format!("{}: {e}", auto.display()))?;
        std::fs::write(pg.data_dir.join("standby.signal"), "").map_err(|e| format!("standby.signal: {e}"))?;
        self.pg_ctl(&["start", "-w", "-t", "60"]).await?;
        *lock(&self.fenced) = false;
        Ok(HashMap::new())
    }

    fn conninfo(&self, s: &FailoverStep) -> String {
        let user = self.cfg.postgres.as_ref().map(|p| p.replication_user.clone()).unwrap_or_else(|| "postgres".into());
        format!("host={} port={} user={user} application_name={}", s.primary_host, s.primary_port, self.cfg.member_id)
    }

    async fn redis(&self, action: FailoverAction, s: &FailoverStep) -> Result<HashMap<String, String>, String> {
        let mut c = self.redis_local().await?;
        match action {
            // Fencing, repointing and rejoining a Redis member all make it a
            // replica of the new primary (its diverged writes are dropped).
            FailoverAction::Fence | FailoverAction::Repoint | FailoverAction::Rejoin => {
                let (host, port) = primary_address(s)?;
                redis_cmd(&mut c, redis::cmd("REPLICAOF").arg(host).arg(port)).await?;
                let _ = redis_cmd(&mut c, redis::cmd("CLIENT").arg("UNPAUSE")).await;
                *lock(&self.fenced) = false;
                Ok(HashMap::new())
            }
            FailoverAction::Demote => {
                redis_cmd(&mut c, redis::cmd("CLIENT").arg("PAUSE").arg(60_000).arg("WRITE")).await?;
                let info: String = redis::cmd("INFO").arg("replication").query_async(&mut c).await.map_err(|e| e.to_string())?;
                let offset = parse_info(&info)
                    .get("master_repl_offset")
                    .and_then(|o| o.parse::<u64>().ok())
                    .ok_or("demote: INFO replication has no master_repl_offset")?;
                Ok([("position".to_string(), offset.to_string())].into())
            }
            FailoverAction::CatchUp => {
                let target = catch_up_target(s)?;
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    let info: String = redis::cmd("INFO").arg("replication").query_async(&mut c).await.map_err(|e| e.to_string())?;
                    let pos: u64 = parse_info(&info).get("slave_repl_offset").and_then(|p| p.parse().ok()).unwrap_or(0);
                    if pos >= target {
                        return Ok([("position".to_string(), pos.to_string())].into());
                    }
                    if Instant::now() > deadline {
                        return Err(format!("replicated up to {pos}, the old primary ended at {target}"));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            FailoverAction::Promote | FailoverAction::Unspecified => Err(format!("{} is not a Redis step", action.as_str_name())),
        }
    }

    /// Every LEASE_CHECK: a primary without a valid lease is fenced unless every
    /// other member vouches for it; a primary of an epoch whose primary is
    /// someone else is fenced at once.
    pub async fn watch_lease(self: Arc<Self>, cancel: tokio_util::sync::CancellationToken) {
        let mut ticker = tokio::time::interval(LEASE_CHECK);
        let mut vouched_logged = false;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let known = lock(&self.known).clone();
            let lease_ok = lock(&self.lease_until).is_some_and(|t| Instant::now() < t);
            let superseded = !known.primary.is_empty() && known.primary != self.cfg.member_id;
            if lease_ok || (!known.held_lease && !superseded) || *lock(&self.fenced) {
                vouched_logged = false;
                continue;
            }
            if !superseded {
                let expected = *lock(&self.replicas);
                // One read gives the role and the vouchers together, so a
                // link that drops between two reads cannot be mistaken for
                // either. A member this agent cannot read at all may still be
                // serving others: with the lease gone, it is fenced through
                // its data directory, which needs no connection.
                match self.vouchers().await {
                    Ok(None) => continue,
                    Ok(Some(n)) if expected > 0 && n >= expected => {
                        if !vouched_logged {
                            tracing::warn!(
                                replicas = n,
                                "lease lapsed, but every other member streams from this primary: it keeps serving"
                            );
                            vouched_logged = true;
                        }
                        continue;
                    }
                    Ok(Some(n)) => {
                        tracing::error!(streaming = n, expected, "lease lapsed and not every other member vouches: fencing");
                        // A serving primary stopped by its agent alone may
                        // come back under a new lease. Recorded before the
                        // fence, so that a crash between the two does not
                        // forget it.
                        let mut k = lock(&self.known);
                        if !k.lease_fenced {
                            k.lease_fenced = true;
                            self.save(&k);
                        }
                    }
                    // Not one that crashed: that is a failover's business.
                    Err(e) => tracing::error!(error = %e, "lease lapsed and the member cannot be read: fencing"),
                }
            } else {
                // Every replica's agent passes here: only a member seen
                // writable is fenced.
                if !matches!(self.vouchers().await, Ok(Some(_))) {
                    continue;
                }
                tracing::error!(epoch = known.epoch, primary = %known.primary, "this member may be a primary, but another member is the primary of the newest epoch: fencing");
            }
            match self.fence_local().await {
                Ok(()) => *lock(&self.fenced) = true,
                Err(e) => tracing::error!(error = %e, "fencing failed; retrying"),
            }
        }
    }

    /// None if the local member is not a writable primary; otherwise how
    /// many replicas stream from it (each vouches that no newer epoch exists).
    async fn vouchers(&self) -> Result<Option<usize>, String> {
        match self.cfg.kind {
            // The reused connection may have been closed under it (a
            // restarted server, a dropped socket): one more try on a new
            // connection before the member counts as unreadable. A member
            // that did not answer in time gets no second wait.
            Kind::Postgres => match self.pg_vouchers().await {
                Err(first) if !first.starts_with(NO_ANSWER) => {
                    *self.local_pg.lock().await = None;
                    self.pg_vouchers().await.map_err(|again| format!("{first}; on a new connection: {again}"))
                }
                read => read,
            },
            Kind::Redis => {
                let mut c = self.redis_local().await?;
                let info: String = redis::cmd("INFO").arg("replication").query_async(&mut c).await.map_err(|e| e.to_string())?;
                let info = parse_info(&info);
                let online = info
                    .iter()
                    .filter(|(k, v)| k.starts_with("slave") && k[5..].parse::<u32>().is_ok() && v.contains("state=online"))
                    .count();
                Ok((info.get("role") == Some(&"master")).then_some(online))
            }
        }
    }

    /// `vouchers` of a PostgreSQL member, on the reused local connection.
    async fn pg_vouchers(&self) -> Result<Option<usize>, String> {
        let c = self.pg_local().await?;
        let query = c.query_one("SELECT pg_is_in_recovery(), (SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming')", &[]);
        // A connection that hangs is as good as none, and is replaced.
        let Ok(row) = tokio::time::timeout(self.cfg.probe_timeout, query).await else {
            *self.local_pg.lock().await = None;
            return Err(format!("{NO_ANSWER} within {} ms", self.cfg.probe_timeout.as_millis()));
        };
        let row = row.map_err(pg_err)?;
        let (in_recovery, n): (bool, i64) = (row.get(0), row.get(1));
        Ok((!in_recovery).then_some(n as usize))
    }

    async fn pg_ctl(&self, args: &[&str]) -> Result<(), String> {
        let pg = self.cfg.postgres.as_ref().ok_or("no [postgres] section")?;
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
                    let info: String = redis::cmd("INFO").arg("memory").query_async(&mut c).await.unwrap_or_default();
                    parse_info(&info).get("used_memory_dataset").and_then(|v| v.parse().ok()).unwrap_or(0)
                }
                Err(_) => 0,
            },
        }
    }

    async fn pg_connect(&self, host: &str, port: u16) -> Result<Client, String> {
        let conn = &self.cfg.connection;
        let mut cfg = Config::new();
        cfg.host(host)
            .port(port)
            .user(conn.user.as_deref().unwrap_or("postgres"))
            .dbname(conn.dbname.as_deref().unwrap_or("postgres"))
            .connect_timeout(Duration::from_secs(3))
            .application_name("drc-agent-action");
        if let Some(p) = conn.password().map_err(|e| e.to_string())? {
            cfg.password(p);
        }
        let (client, connection) = cfg.connect(NoTls).await.map_err(|e| format!("connecting to {host}:{port}: {}", pg_err(e)))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    async fn pg_local(&self) -> Result<Arc<Client>, String> {
        let mut cached = self.local_pg.lock().await;
        if let Some(c) = cached.as_ref().filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(c));
        }
        *cached = None;
        let c = Arc::new(self.pg_connect(&self.cfg.connection.host, self.cfg.connection.port).await?);
        *cached = Some(Arc::clone(&c));
        Ok(c)
    }

    async fn redis_local(&self) -> Result<redis::aio::MultiplexedConnection, String> {
        let conn = &self.cfg.connection;
        let mut url = format!("redis://{}:{}/", conn.host, conn.port);
        if let Some(p) = conn.password().map_err(|e| e.to_string())? {
            url = format!("redis://{}:{p}@{}:{}/", conn.user.as_deref().unwrap_or(""), conn.host, conn.port);
        }
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        tokio::time::timeout(Duration::from_secs(3), client.get_multiplexed_async_connection())
            .await
            .map_err(|_| "connecting to redis timed out".to_string())?
            .map_err(|e| e.to_string())
    }
}

async fn redis_cmd(c: &mut redis::aio::MultiplexedConnection, cmd: &mut redis::Cmd) -> Result<(), String> {
    cmd.query_async::<redis::Value>(c).await.map(|_| ()).map_err(|e| e.to_string())
}

/// Runs a PostgreSQL tool as its OS user (the server refuses root).
pub(crate) async fn run_as(user: &str, program: &std::path::Path, args: &[&str]) -> Result<String, String> {
    let mut c = if user.is_empty() {
        tokio::process::Command::new(program)
    } else {
        let mut c = tokio::process::Command::new("runuser");
        c.args(["-u", user, "--"]).arg(program);
        c
    };
    c.args(args).kill_on_drop(true).stdin(std::process::Stdio::null());
    let out = c.output().await.map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{} failed ({}): {}", program.display(), out.status, text.trim()))
    }
}

/// A PostgreSQL error with the server's message (tokio-postgres's Display
/// says only "db error").
/// Where the new primary of a step listens; a step without it is refused.
fn primary_address(s: &FailoverStep) -> Result<(&str, u16), String> {
    let port = u16::try_from(s.primary_port).ok().filter(|p| *p > 0);
    match (s.primary_host.as_str(), port) {
        ("", _) | (_, None) => Err(format!("the step names no address of the new primary {:?}", s.primary_member)),
        (host, Some(port)) => Ok((host, port)),
    }
}

/// The position a catch-up waits for; a catch-up without one is refused,
/// never taken as 0 (which every replica has reached).
fn catch_up_target(s: &FailoverStep) -> Result<u64, String> {
    (s.catch_up_to > 0).then_some(s.catch_up_to).ok_or_else(|| "catch-up: the demoted primary's final position is not known".to_string())
}

fn pg_err(e: tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    }
}

/// A PostgreSQL string literal.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// "16/B374D848" → byte position.
fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
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
}

fn default_bin_dir() -> PathBuf {
    PathBuf::from("/usr/lib/postgresql/15/bin")
}

fn default_run_as() -> String {
    "postgres".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_missing_what_it_needs_is_refused_not_defaulted() {
        let step = FailoverStep { primary_member: "pg-b".into(), ..Default::default() };
        assert!(catch_up_target(&step).expect_err("no target").contains("final position"), "0 is never a target");
        assert!(primary_address(&step).expect_err("no address").contains("pg-b"));
        let step = FailoverStep { primary_host: "10.0.0.2".into(), primary_port: 70_000, catch_up_to: 9, ..step };
        assert!(primary_address(&step).is_err(), "a port beyond 65535");
        assert_eq!(catch_up_target(&step), Ok(9));
        let step = FailoverStep { primary_port: 5433, ..step };
        assert_eq!(primary_address(&step), Ok(("10.0.0.2", 5433)));
    }

    #[test]
    fn lsn_and_slot_names() {
        assert_eq!(parse_lsn("0/3000028"), Some(0x3000028));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374D848));
        assert_eq!(parse_lsn("nope"), None);
        assert_eq!(drc_proto::slot_name("pg-eu-west"), "drc_pg_eu_west");
        assert_eq!(quote("it's"), "'it''s'");
    }

    #[test]
    fn a_killed_postmaster_not_yet_reaped_counts_as_gone() {
        // A process whose name starts with "postgres", as a postmaster's does.
        let dir = tempfile::tempdir().expect("tempdir");
        // A link, not a copy: a copy may still be open for writing in a
        // child another test forks meanwhile, and then exec fails with
        // "Text file busy". The process is named after the link.
        let exe = dir.path().join("postgres");
        std::os::unix::fs::symlink("/bin/sleep", &exe).expect("link sleep");
        let mut child = std::process::Command::new(&exe).arg("30").spawn().expect("spawn");
        std::fs::write(dir.path().join("postmaster.pid"), format!("{}\n{}\n", child.id(), dir.path().display())).expect("pid file");
        assert!(postmaster_alive(dir.path()), "running");
        child.kill().expect("kill");
        // Not reaped: a zombie until wait().
        let deadline = Instant::now() + Duration::from_secs(5);
        while postmaster_alive(dir.path()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!postmaster_alive(dir.path()), "a zombie is gone");
        child.wait().expect("reap");
        assert!(!postmaster_alive(dir.path()), "reaped");
        std::fs::remove_file(dir.path().join("postmaster.pid")).expect("rm");
        assert!(!postmaster_alive(dir.path()), "no pid file: not running");
    }

    #[test]
    fn a_lease_ends_before_the_coordinators_end_even_when_delivered_late() {
        let t = Instant::now();
        // Delivered at once: ttl minus the fence lead.
        assert_eq!(lease_end(t, 1_000, Some(10_000 + 1_000), 10_000, None), t + Duration::from_millis(800));
        // Delivered 700 ms late: only what is left of the coordinator's lease.
        assert_eq!(lease_end(t, 1_000, Some(10_000 + 1_000), 10_700, None), t + Duration::from_millis(100));
        // Arrived after its end, or with less left than the lead: lapsed.
        assert_eq!(lease_end(t, 1_000, Some(11_000), 12_000, None), t);
        assert_eq!(lease_end(t, 1_000, Some(11_000), 10_900, None), t);
        // An older coordinator without expires_at: ttl alone.
        assert_eq!(lease_end(t, 1_000, None, 0, None), t + Duration::from_millis(800));
    }

    #[test]
    fn a_lease_counts_from_the_sample_it_answers() {
        let taken = Instant::now();
        let t = taken + Duration::from_millis(300);
        // The leader granted 1 s from 50 ms after it received the sample,
        // which took 100 ms to reach it: 1,150 ms from the sample's taking.
        // Delivered 300 ms after the sample was taken, wall clocks agreeing:
        // the sample bound is the earlier one.
        assert_eq!(lease_end(t, 1_000, Some(11_000), 10_000, Some((taken, 1_150))), taken + Duration::from_millis(950));
        // Wall clocks 5 s apart (the agent's behind) and delivered late: the
        // sample bound still holds.
        assert_eq!(lease_end(t, 1_000, Some(11_000), 5_000, Some((taken, 1_150))), taken + Duration::from_millis(950));
        // A renewal that answers a sample older than its own lease: lapsed.
        assert_eq!(lease_end(t, 1_000, None, 0, Some((taken, 250))), t);
    }

    #[test]
    fn renewals_find_the_samples_they_answer_and_only_the_newest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = crate::config::AgentConfig::from_toml(&format!(
            "member_id = \"pg-a\"\ncluster = \"pg\"\nregion = \"a\"\nkind = \"postgres\"\nendpoints = [\"127.0.0.1:1\"]\nstate_dir = {:?}\n[connection]\nport = 1\n",
            dir.path()
        ))
        .expect("config");
        let cfg = Arc::new(cfg);
        let actor = Actor::new(Arc::clone(&cfg));
        let mut first = drc_proto::Sample::default();
        actor.stamp(&mut first);
        assert!(actor.taken_at(first.seq).is_some());
        let mut last = drc_proto::Sample::default();
        for _ in 0..TAKEN_KEPT {
            actor.stamp(&mut last);
        }
        assert!(last.seq > first.seq);
        assert!(actor.taken_at(last.seq).is_some());
        assert_eq!(actor.taken_at(first.seq), None, "forgotten once {TAKEN_KEPT} newer ones were taken");
        // A restarted agent numbers above its predecessor.
        std::thread::sleep(Duration::from_millis(2));
        let again = Actor::new(cfg);
        let mut next = drc_proto::Sample::default();
        again.stamp(&mut next);
        assert!(next.seq > last.seq);
    }

    #[test]
    fn a_postmaster_pid_file_naming_no_postgres_process_is_not_alive() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(!postmaster_alive(dir.path()), "no pid file");
        // This test's own pid: alive, but not a postgres process.
        std::fs::write(dir.path().join("postmaster.pid"), format!("{}\n/data\n", std::process::id())).expect("write");
        assert!(!postmaster_alive(dir.path()));
        std::fs::write(dir.path().join("postmaster.pid"), "garbage\n").expect("write");
        assert!(postmaster_alive(dir.path()), "unsure counts as running");
    }
}
