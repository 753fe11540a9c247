//! Promotion: the new primary of an epoch, under the lease its promotion
//! grants, and what its commits wait for.

use std::time::{Duration, Instant};

use drc_proto::{FailoverStep, StepFound};

use super::lease::lease_end;
use super::postgres::quote;
use super::redis::redis_cmd;
use super::{lock, now_ms, Actor};
use crate::config::Kind;
use crate::probe::postgres::pg_err;
use crate::probe::redis::parse_info;

/// How long a standby that stopped streaming still counts as one a commit
/// may wait for: a reconnection takes well under it.
const STANDBY_GRACE: Duration = Duration::from_millis(1_500);

impl Actor {
    pub(super) async fn promote(&self, s: &FailoverStep) -> Result<StepFound, String> {
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
    /// but for no more of them than stream from it under those names
    /// (`pg_stat_replication`), or did within `STANDBY_GRACE`: a standby that
    /// crashed, or connects under another application_name, must not hold
    /// every commit, and one that merely reconnects (a repoint, a restarted
    /// walreceiver) must not make commits asynchronous for a moment.
    pub(super) async fn wait_for_standbys(&self, count: usize, names: &[String]) -> Result<(), String> {
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
            let now = Instant::now();
            let mut streamed = lock(&self.streamed);
            for r in &rows {
                streamed.insert(r.get::<_, String>(0), now);
            }
            names.iter().filter(|n| streamed.get(*n).is_some_and(|at| now.duration_since(*at) <= STANDBY_GRACE)).count()
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

    pub(super) async fn promote_member(&self, s: &FailoverStep) -> Result<StepFound, String> {
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
                    // The archiver's slot keeps the new timeline from now on,
                    // before an archiver connects.
                    let reserve = slot == drc_proto::ARCHIVE_SLOT;
                    c.execute(
                        "SELECT pg_create_physical_replication_slot($1, $2) WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
                        &[&slot, &reserve],
                    )
                    .await
                    .map_err(|e| format!("creating slot {slot}: {}", pg_err(e)))?;
                }
                Ok(StepFound::default())
            }
            Kind::Redis => {
                let mut c = self.redis_local().await?;
                redis_cmd(&mut c, ::redis::cmd("REPLICAOF").arg("NO").arg("ONE")).await?;
                let _ = redis_cmd(&mut c, ::redis::cmd("CLIENT").arg("UNPAUSE")).await;
                // The promotion started a new replication id: the coordinator
                // records it as the cluster's dataset from now on.
                let info: String = ::redis::cmd("INFO").arg("replication").query_async(&mut c).await.map_err(|e| e.to_string())?;
                let replid = parse_info(&info).get("master_replid").map(|r| r.to_string()).unwrap_or_default();
                Ok(StepFound { dataset_id: replid, ..Default::default() })
            }
        }
    }
}
