//! The sampler: every probe interval, one sample of the local member, built
//! in one place from the local probe, the cross-probe of the primary and
//! the lease state, and queued for the coordinator.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::actions::Actor;
use crate::config::AgentConfig;
use crate::probe::Prober;
use crate::session::SampleBuffer;

/// Samples until `cancel`. The dataset id of each sample goes to
/// `dataset`, which the session sends in its Hello.
pub async fn run(
    cfg: Arc<AgentConfig>,
    mut prober: Prober,
    actor: Arc<Actor>,
    buffer: Arc<SampleBuffer>,
    views: watch::Receiver<Option<drc_proto::ClusterView>>,
    dataset: watch::Sender<(String, String)>,
    cancel: CancellationToken,
) {
    let mut ticker = tokio::time::interval(cfg.probe_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let local = prober.local().await;
        let view = views.borrow().clone();
        let primary = match &view {
            Some(v) if v.primary_member != cfg.member_id && !v.primary_address.is_empty() => Some(prober.primary(&v.primary_address).await),
            _ => None,
        };
        // What the actions need to know of the local member between commands.
        actor.observe_link(local.reachable && local.role == "replica" && local.replication_connected);
        if local.reachable && local.role == "primary" {
            actor.observe_sync(&local.sync_standbys);
        }
        let epoch = actor.epoch().max(view.as_ref().map(|v| v.epoch).unwrap_or(0));
        let mut sample = prober.sample(&cfg.member_id, &local, primary.as_ref(), epoch, drc_model::time::wall_now_ms());
        actor.stamp(&mut sample);
        sample.server_gone = !local.reachable && cfg.postgres.as_ref().is_some_and(|pg| !crate::process::postmaster_alive(&pg.data_dir));
        if !local.dataset_id.is_empty() {
            let now = (local.dataset_id.clone(), local.previous_dataset_id.clone());
            dataset.send_if_modified(|d| {
                let changed = *d != now;
                *d = now;
                changed
            });
        }
        buffer.push(sample);
    }
}
