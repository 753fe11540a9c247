//! The actor's side of supervision (`[supervise]`): in which role the
//! server starts, when the agent starts and after a crash, by
//! [`crate::supervise::rule`]; and starting PostgreSQL through the
//! supervisor for the failover actions that restart it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::redis::redis_cmd;
use super::{lock, Actor};
use crate::config::Kind;
use crate::supervise::redis as sredis;
use crate::supervise::rule::{self, Boot, Data, Known};

/// Restarts after crashes are at least this far apart, doubling up to
/// [`MAX_BACKOFF`] while the server keeps crashing within a minute.
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Actor {
    /// Starts PostgreSQL for a failover action (a rejoin, a lease that
    /// brings a fenced primary back): as the supervisor's child when there
    /// is one, else with `pg_ctl start`.
    pub(super) async fn start_postgres(&self) -> Result<(), String> {
        match &self.supervisor {
            Some(s) => s.start(&[]).await,
            None => self.pg_ctl(&["start", "-w", "-t", "60"]).await,
        }
    }

    /// Redis: keeps on disk the replication id of the dataset this member
    /// serves as the primary under a lease, and reports a supervised server
    /// restarted from its own persistence (a new id) as that dataset's
    /// continuation, as Redis itself does after a promotion.
    pub fn lineage(&self, r: &mut crate::probe::Reading) {
        if self.cfg.kind != Kind::Redis || r.role != "primary" || r.dataset_id.is_empty() {
            return;
        }
        if let Some(old) = lock(&self.inherited).as_ref().filter(|old| **old != r.dataset_id) {
            if r.previous_dataset_id.is_empty() {
                r.previous_dataset_id = old.clone();
            }
        }
        if self.lease_ms() > 0 {
            let mut k = lock(&self.known);
            if k.dataset != r.dataset_id {
                k.dataset = r.dataset_id.clone();
                self.save(&k);
            }
        }
    }

    /// A new lease for a Redis primary held off the network since it
    /// restarted: it comes back, continuing its recorded dataset, if it
    /// loaded data from its persistence. One that holds nothing (no
    /// persistence) does not: it would wipe its replicas, so it stays held
    /// until the coordinator replaces it and it follows the new primary.
    pub(super) async fn reopen_held_redis(&self) -> Result<(), String> {
        let Some(sup) = &self.supervisor else { return Ok(()) };
        let mut c = self.redis_local().await?;
        if !sredis::holds_data(&mut c).await? {
            return Err("the restarted Redis server loaded no data from disk: it does not come back as the primary (it would empty its replicas); it waits to be replaced and to follow the new primary".into());
        }
        let recorded = lock(&self.known).dataset.clone();
        if !recorded.is_empty() {
            *lock(&self.inherited) = Some(recorded);
        }
        sup.open_port(&mut c).await
    }

    /// What the data says the server would start as.
    fn data(&self) -> Data {
        match (self.cfg.kind, &self.cfg.postgres) {
            (Kind::Postgres, Some(pg)) if pg.data_dir.join("standby.signal").exists() => Data::Standby,
            _ => Data::Writable,
        }
    }

    /// How to start now, by the record on disk.
    fn boot_rule(&self, asked: bool) -> Boot {
        let k = lock(&self.known).clone();
        let first_primary = self.cfg.supervise.as_ref().and_then(|s| s.first_primary.as_deref());
        let known =
            Known { me: &self.cfg.member_id, epoch: k.epoch, primary: &k.primary, primary_address: &k.primary_address, first_primary };
        if asked {
            rule::after_asking(self.data(), &known)
        } else {
            rule::boot(self.data(), &known)
        }
    }

    /// Starts the supervised server by the rule; with nothing recorded,
    /// first waits for the coordinators' view of the cluster.
    async fn boot(&self, cancel: &tokio_util::sync::CancellationToken) -> Result<(), String> {
        let Some(sup) = &self.supervisor else { return Ok(()) };
        // A server this agent did not start (an unsupervised start, a
        // leftover) would escape the rule: stopped first.
        if let (Kind::Postgres, Some(pg)) = (self.cfg.kind, &self.cfg.postgres) {
            if !sup.is_running() && crate::process::postmaster_alive(&pg.data_dir) {
                tracing::warn!(data_dir = %pg.data_dir.display(), "a PostgreSQL server this agent did not start runs on its data: stopping it");
                self.stop_now().await?;
            }
        }
        // A Redis server starts at once, off the network, whatever its role.
        if self.cfg.kind == Kind::Redis {
            sup.start(&sredis::closed_args(&self.cfg.connection)).await?;
        }
        let mut boot = self.boot_rule(false);
        if boot == Boot::AskFirst {
            tracing::info!("no epoch recorded yet: the server starts once the coordinators say which epoch the cluster is in");
            let mut views = self.views.subscribe();
            let mut seen = false;
            while boot == Boot::AskFirst {
                let next = async {
                    if seen {
                        views.changed().await
                    } else {
                        views.wait_for(Option::is_some).await.map(|_| ())
                    }
                };
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    r = next => if r.is_err() { return Ok(()) },
                }
                seen = true;
                boot = self.boot_rule(true);
                if boot == Boot::AskFirst {
                    tracing::info!("the cluster has no primary yet: waiting for its first primary to claim it");
                }
            }
        }
        tracing::info!(?boot, epoch = self.epoch(), "supervised start");
        match (self.cfg.kind, boot) {
            (_, Boot::AskFirst) => Ok(()),
            (Kind::Postgres, Boot::AsConfigured) => {
                sup.start(&[]).await?;
                *lock(&self.fenced) = false;
                Ok(())
            }
            (Kind::Postgres, Boot::HoldForLease) => {
                self.hold_for_lease();
                tracing::warn!("this member may be the cluster's primary but holds no lease: PostgreSQL stays down until a lease arrives");
                Ok(())
            }
            (Kind::Postgres, Boot::Follow { .. }) => {
                *lock(&self.fenced) = true;
                tracing::warn!(primary = %lock(&self.known).primary, "another member is the primary: PostgreSQL stays down until the coordinator rejoins it as a standby");
                Ok(())
            }
            (Kind::Redis, boot) => self.boot_redis(boot).await,
        }
    }

    /// Settles the role of a Redis server started off the network, and
    /// opens its port unless it is held.
    async fn boot_redis(&self, boot: Boot) -> Result<(), String> {
        let Some(sup) = &self.supervisor else { return Ok(()) };
        let mut c = self.redis_local().await?;
        match boot {
            Boot::AsConfigured | Boot::AskFirst => *lock(&self.fenced) = false,
            Boot::HoldForLease => {
                self.hold_for_lease();
                tracing::warn!(
                    "this member may be the cluster's primary but holds no lease: Redis stays off the network until a lease arrives"
                );
                return Ok(());
            }
            Boot::Follow { address } => match address.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() => {
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    redis_cmd(&mut c, ::redis::cmd("REPLICAOF").arg(host).arg(port)).await?;
                    *lock(&self.fenced) = false;
                    tracing::info!(primary = %address, "Redis starts as a replica of the cluster's primary");
                }
                _ => {
                    *lock(&self.fenced) = true;
                    tracing::warn!("another member is the primary, at an address not known yet: Redis stays off the network until the coordinator repoints it");
                    return Ok(());
                }
            },
        }
        sup.open_port(&mut c).await
    }

    /// A Redis server held off the network because it may have been the
    /// primary follows the primary of a newer epoch as soon as a cluster
    /// view names it, without waiting for the coordinator's rejoin.
    /// (PostgreSQL needs a rewind first: that is the rejoin's work.)
    async fn follow_when_superseded(&self) {
        let Some(sup) = self.supervisor.clone() else { return };
        if self.cfg.kind != Kind::Redis {
            return;
        }
        let mut views = self.views.subscribe();
        loop {
            if sup.closed() {
                if let Boot::Follow { address } = self.boot_rule(true) {
                    if !address.is_empty() {
                        match self.boot_redis(Boot::Follow { address }).await {
                            Ok(()) => return,
                            Err(e) => tracing::warn!(error = %e, "cannot make the held Redis server follow the new primary yet"),
                        }
                    }
                }
            }
            if views.changed().await.is_err() {
                return;
            }
        }
    }

    /// Marks the member as fenced for want of a lease, on disk first: the
    /// next lease of the current epoch brings it back (`restart_fenced`).
    fn hold_for_lease(&self) {
        let mut k = lock(&self.known);
        if !k.lease_fenced {
            k.lease_fenced = true;
            self.save(&k);
        }
        drop(k);
        *lock(&self.fenced) = true;
    }

    /// The supervisor's life: starts the server by the rule, starts it again
    /// by the same rule whenever it exits without being asked to, and stops
    /// it when the agent stops.
    pub async fn supervise(self: Arc<Self>, cancel: tokio_util::sync::CancellationToken) {
        let Some(sup) = self.supervisor.clone() else { return };
        let mut exits = sup.exits();
        let mut backoff = MIN_BACKOFF;
        loop {
            let started = Instant::now();
            if let Err(e) = self.boot(&cancel).await {
                tracing::error!(error = %e, "cannot start the supervised server; trying again in {backoff:?}");
            } else {
                exits.borrow_and_update();
                // An exit the agent did not ask for.
                let crashed = async {
                    loop {
                        if exits.changed().await.is_err() {
                            return;
                        }
                        if sup.wanted() && !sup.is_running() {
                            return;
                        }
                    }
                };
                let follow = async {
                    self.follow_when_superseded().await;
                    std::future::pending::<()>().await
                };
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = crashed => {}
                    _ = follow => {}
                }
                tracing::error!("the supervised server exited unexpectedly; starting it again in {backoff:?} by the same rule");
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = MIN_BACKOFF;
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        sup.stop().await;
    }
}
