//! The lease a primary serves under and the epochs this agent has seen
//! (kept on disk): a renewal replaces the lease, a primary whose lease
//! lapsed is fenced unless every other member vouches for it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use drc_proto::LeaseGrant;
use serde::{Deserialize, Serialize};

use super::redis::redis_cmd;
use super::vouch::HEARTBEAT_AHEAD;
use super::{lock, now_ms, Actor};
use crate::config::Kind;
use crate::process::postmaster_alive;

/// What the agent knows about its cluster's epochs; persisted, so that a
/// restarted agent still refuses old commands and still fences a primary
/// whose lease it held.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct EpochRecord {
    pub(super) epoch: u64,
    /// The primary of `epoch`.
    pub(super) primary: String,
    /// This member held a lease in `epoch`.
    pub(super) held_lease: bool,
    /// How many other members the lease said stream from this primary:
    /// kept so that a restarted agent can still be vouched for (fail-static)
    /// instead of fencing a healthy primary because it forgot the number.
    #[serde(default)]
    pub(super) replicas: usize,
    /// The agent fenced this primary because its lease lapsed (not because
    /// another member became primary): a new lease in the current epoch
    /// brings it back. Persisted, so that a restarted agent still can.
    #[serde(default)]
    pub(super) lease_fenced: bool,
    /// Where `primary` listens (host:port), as the coordinators said: a
    /// supervised Redis restarts as its replica.
    #[serde(default)]
    pub(super) primary_address: String,
    /// Redis: the replication id of the dataset this member served as the
    /// primary, under a lease (kept by a supervising agent): a server
    /// restarted from its own persistence gets a new id and continues it.
    #[serde(default)]
    pub(super) dataset: String,
    /// The newest generation of the coordinator group seen: coordinators
    /// of an older one were left out of a `drc-coordinator recover` and
    /// are not followed.
    #[serde(default)]
    pub(super) generation: u64,
}

/// How often the agent checks its lease.
const LEASE_CHECK: Duration = Duration::from_millis(50);
/// How much of a renewed lease must be left to restart a primary fenced for
/// a lapsed one: more than a start takes.
const RESTART_LEAD: Duration = Duration::from_millis(500);

/// The agent gives up its lease this long before the coordinator's end of
/// it, so that a check period plus `pg_ctl stop -m immediate` (~60-150 ms
/// here) finish before that end: the coordinator's drift margin is then left
/// for clock differences alone.
const FENCE_LEAD: Duration = Duration::from_millis(200);

/// A renewal that arrives with less than this left on the lease is logged.
const NEAR_LAPSE: Duration = Duration::from_millis(500);

/// How many samples' times are kept for renewals to name: 25 s of samples
/// at the default probe interval, far more than a lease.
pub(super) const TAKEN_KEPT: usize = 256;

/// When a lease received at `received` ends on this agent, minus
/// FENCE_LEAD: the earliest of `ttl` after receipt, the coordinator's own end
/// (`expires_at_ms`, its wall clock) as read on ours, and `basis_ttl` after
/// the sample the renewal answers was taken (`basis`). The coordinator
/// received that sample after it was taken and counts its lease from no
/// earlier than that, so the last bound holds however late the renewal is
/// delivered and however far apart the wall clocks are.
pub(super) fn lease_end(received: Instant, ttl_ms: u64, expires_at_ms: Option<u64>, now_ms: u64, basis: Option<(Instant, u64)>) -> Instant {
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

/// The record in `path`: none yet is epoch 0; one that cannot be read or
/// parsed is an error, never a silent epoch 0 (which would let the agent
/// obey commands of an epoch it has already seen superseded).
pub(super) fn load_record(path: &std::path::Path) -> anyhow::Result<EpochRecord> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            anyhow::anyhow!(
                "{}: the agent's epoch record is corrupt ({e}); it holds the newest epoch this agent has seen, so the agent does not start without it: restore it, or remove it if this member's data was rebuilt",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(EpochRecord::default()),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
}

/// Writes the record durably: a temporary file, synced, renamed over the
/// old one, and the directory synced.
fn persist(path: &std::path::Path, k: &EpochRecord) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec(k)?;
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl Actor {
    /// Numbers a sample taken now; renewals that answer it count from now.
    /// Also writes what the sample says of the lease: how long it has left
    /// and whether this agent fenced its primary when it lapsed.
    pub fn stamp(&self, sample: &mut drc_proto::Sample) {
        sample.lease_ms = self.lease_ms();
        sample.lease_fenced = self.lease_fenced();
        sample.seq = self.next_seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut taken = lock(&self.taken);
        if taken.len() == TAKEN_KEPT {
            taken.pop_front();
        }
        taken.push_back((sample.seq, Instant::now()));
    }

    /// When sample `seq` was taken, if it is among the newest.
    pub(super) fn taken_at(&self, seq: u64) -> Option<Instant> {
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

    pub fn epoch(&self) -> u64 {
        lock(&self.known).epoch
    }

    /// Records `epoch` with its primary; false if it is older than known.
    pub(super) fn learn(&self, epoch: u64, primary: &str) -> bool {
        let mut k = lock(&self.known);
        if epoch < k.epoch {
            return false;
        }
        if epoch > k.epoch || (!primary.is_empty() && k.primary != primary) {
            k.epoch = epoch;
            if !primary.is_empty() {
                if k.primary != primary {
                    k.primary_address.clear();
                }
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

    pub(super) fn save(&self, k: &EpochRecord) {
        if let Some(p) = self.cfg.state_file() {
            if let Err(e) = persist(&p, k) {
                tracing::warn!(path = %p.display(), "cannot persist the agent's epoch: {e}");
            }
        }
    }

    /// The newest generation of the coordinator group this agent has seen.
    pub fn generation(&self) -> u64 {
        lock(&self.known).generation
    }

    /// A view came from a coordinator of generation `g`: a newer one is
    /// kept (and persisted), an older one is refused, with why.
    pub fn see_generation(&self, g: u64) -> Result<(), String> {
        let mut k = lock(&self.known);
        if g < k.generation {
            return Err(format!(
                "this coordinator belongs to generation {g} of the group, older than generation {} seen: it was left behind by `drc-coordinator recover`",
                k.generation
            ));
        }
        if g > k.generation {
            k.generation = g;
            self.save(&k);
        }
        Ok(())
    }

    /// The cluster view from the coordinator: who is primary in which
    /// epoch, and where it listens.
    pub fn view(&self, epoch: u64, primary: &str, address: &str) {
        if self.learn(epoch, primary) {
            let mut k = lock(&self.known);
            if k.epoch == epoch && k.primary == primary && k.primary_address != address {
                k.primary_address = address.to_string();
                self.save(&k);
            }
        }
        self.views.send_replace(Some(epoch));
    }

    /// A lease renewal: a new lease of the epoch's primary, replacing the
    /// one it holds, and what its commits wait for.
    pub(super) async fn renew(&self, epoch: u64, l: &LeaseGrant) -> Result<(), String> {
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
        // Only a lease with time left brings the server back: a renewal that
        // waited in a frozen agent's socket arrives already lapsed (it counts
        // from the sample it answers), and a server started on it would take
        // writes until the next check while another may have been promoted.
        let left = lock(&self.lease_until).map(|t| t.saturating_duration_since(Instant::now())).unwrap_or_default();
        let mut result = Ok(());
        if restart && left >= RESTART_LEAD {
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

    /// Brings back the primary this agent fenced for a lapsed lease, now
    /// that the leader granted a new lease in the current epoch (it does so
    /// only for the recorded primary, and only while no decision replaced
    /// it): PostgreSQL starts again (crash recovery, then the primary it
    /// was), Redis takes writes again. Without this, a coordinator outage
    /// while a replica is down would leave the cluster with no primary until
    /// a failover, which anti-flap may block for minutes.
    pub(super) async fn restart_fenced(&self) -> Result<(), String> {
        // Leases arrive every few hundred milliseconds: one restart at a time.
        let Ok(_one) = self.restarting.try_lock() else { return Ok(()) };
        if !self.lease_fenced() {
            return Ok(());
        }
        tracing::warn!("a new lease in the current epoch: bringing the fenced primary back");
        match self.cfg.kind {
            Kind::Postgres => {
                let pg = self.cfg.postgres.as_ref().ok_or("no [postgres] section")?;
                // After the fence that may still be stopping it.
                let _one = self.control.lock().await;
                if !postmaster_alive(&pg.data_dir) {
                    self.start_postgres().await.map_err(|e| format!("restarting the fenced primary: {e}"))?;
                }
            }
            Kind::Redis if self.supervisor.as_ref().is_some_and(|s| s.closed()) => self.reopen_held_redis().await?,
            Kind::Redis => {
                let mut c = self.redis_local().await?;
                redis_cmd(&mut c, ::redis::cmd("CLIENT").arg("UNPAUSE")).await?;
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
    pub(super) async fn fence_local(&self) -> Result<(), String> {
        match self.cfg.kind {
            Kind::Postgres => self.stop_now().await,
            Kind::Redis => match self.redis_local().await {
                Ok(mut c) => redis_cmd(&mut c, ::redis::cmd("CLIENT").arg("PAUSE").arg(86_400_000u64).arg("WRITE")).await,
                Err(e) => Err(e),
            },
        }
    }

    /// Whether the newest epoch this agent knows of has another primary.
    pub(super) fn superseded(&self) -> bool {
        let k = lock(&self.known);
        !k.primary.is_empty() && k.primary != self.cfg.member_id
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
            let superseded = self.superseded();
            let ending = lock(&self.lease_until).is_none_or(|t| t.saturating_duration_since(Instant::now()) < HEARTBEAT_AHEAD);
            if known.held_lease && !superseded && ending && !*lock(&self.fenced) {
                if let Err(e) = self.heartbeat().await {
                    tracing::debug!(error = %e, "no heartbeat written");
                }
            }
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
                if !matches!(self.writable().await, Ok(true)) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_epoch_record_survives_a_restart_and_a_corrupt_one_is_an_error_not_epoch_zero() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.state.json");
        assert_eq!(load_record(&path).expect("none yet").epoch, 0);
        let k = EpochRecord { epoch: 7, primary: "pg-b".into(), ..Default::default() };
        persist(&path, &k).expect("persist");
        assert_eq!(load_record(&path).expect("read back").epoch, 7);
        std::fs::write(&path, b"{\"epoch\": 7, \"prim").expect("truncate");
        let e = load_record(&path).expect_err("corrupt").to_string();
        assert!(e.contains("corrupt") && e.contains("newest epoch"), "{e}");
    }

    /// A PostgreSQL agent's configuration whose state dir is `dir`.
    fn config_in(dir: &std::path::Path) -> Arc<crate::config::AgentConfig> {
        let cfg = crate::config::AgentConfig::from_toml(&format!(
            "member_id = \"pg-a\"\ncluster = \"pg\"\nregion = \"a\"\nkind = \"postgres\"\nendpoints = [\"127.0.0.1:1\"]\nstate_dir = {dir:?}\n[connection]\nport = 1\n"
        ))
        .expect("config");
        Arc::new(cfg)
    }

    #[test]
    fn renewals_find_the_samples_they_answer_and_only_the_newest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = config_in(dir.path());
        let actor = Actor::new(Arc::clone(&cfg), crate::archive::Archiver::new(Arc::clone(&cfg))).expect("actor");
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
        let again = Actor::new(Arc::clone(&cfg), crate::archive::Archiver::new(cfg)).expect("actor");
        let mut next = drc_proto::Sample::default();
        again.stamp(&mut next);
        assert!(next.seq > last.seq);
    }

    #[test]
    fn a_newer_generation_of_the_coordinators_is_kept_across_a_restart_and_an_older_one_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = config_in(dir.path());
        let actor = Actor::new(Arc::clone(&cfg), crate::archive::Archiver::new(Arc::clone(&cfg))).expect("actor");
        assert_eq!(actor.generation(), 0);
        actor.see_generation(0).expect("a founded group");
        actor.see_generation(1).expect("a recovered group");
        let again = Actor::new(Arc::clone(&cfg), crate::archive::Archiver::new(cfg)).expect("actor");
        assert_eq!(again.generation(), 1, "persisted with the epoch record");
        let e = again.see_generation(0).expect_err("a node left out of the recovery");
        assert!(e.contains("generation 0") && e.contains("left behind"), "{e}");
    }
}
