//! The sampler: every probe interval, one sample of the local member, built
//! in one place from the newest local reading, the newest cross-probe of the
//! primary and the lease state, and queued for the coordinator.
//!
//! The local probe and the cross-probe run in tasks of their own. A sample
//! leaves as soon as the local probe has its answer (a crash is reported
//! at once); a member or a primary that hangs makes its probe wait its whole
//! time-out, and samples then still leave every probe interval, so that the
//! coordinator keeps hearing from this agent (a silent agent counts as
//! gone) and learns of the hang before the probe gives up.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::actions::Actor;
use crate::archive::Archiver;
use crate::config::AgentConfig;
use crate::probe::{PrimaryReading, Probe, Prober, Reading};
use crate::session::SampleBuffer;

/// Samples until `cancel`. `local` probes the local member (it has taken
/// `first` already), `cross` the cluster's primary. The dataset id of each sample goes to `dataset`,
/// which the session sends in its Hello.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    cfg: Arc<AgentConfig>,
    local: Probe,
    cross: Probe,
    first: Reading,
    actor: Arc<Actor>,
    archiver: Arc<Archiver>,
    buffer: Arc<SampleBuffer>,
    views: watch::Receiver<Option<drc_proto::ClusterView>>,
    dataset: watch::Sender<(String, String)>,
    cancel: CancellationToken,
) {
    let (local_tx, mut local_rx) = watch::channel(Local { reading: first, asking_since: None });
    let (cross_tx, cross_rx) = watch::channel(None);
    tokio::spawn(probe_local(Arc::clone(&cfg), local, local_tx, cancel.clone()));
    tokio::spawn(probe_primary(Arc::clone(&cfg), cross, views.clone(), cross_tx, cancel.clone()));
    let mut prober = Prober::default();
    let mut last = tokio::time::Instant::now();
    loop {
        // A probe's answer, or half an interval more than one takes.
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = local_rx.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep_until(last + cfg.probe_interval * 3 / 2) => {}
        }
        last = tokio::time::Instant::now();
        let mut local = local_rx.borrow_and_update().current(cfg.probe_timeout / 2);
        actor.lineage(&mut local);
        let view = views.borrow().clone();
        let target = view.as_ref().filter(|v| v.primary_member != cfg.member_id && !v.primary_address.is_empty());
        let primary = target.and_then(|v| current(cross_rx.borrow().as_ref(), &v.primary_address, cfg.probe_timeout));
        // What the actions need to know of the local member between commands.
        let streaming = local.reachable && local.role == "replica" && local.replication_connected;
        actor.observe_link(streaming, primary.as_ref().and_then(|p| p.answered_at));
        if local.reachable && local.role == "primary" {
            actor.observe_sync(&local.sync_standbys);
        }
        let epoch = actor.epoch().max(view.as_ref().map(|v| v.epoch).unwrap_or(0));
        let mut sample = prober.sample(&cfg.member_id, &local, primary.as_ref(), epoch, drc_model::time::wall_now_ms());
        actor.stamp(&mut sample);
        archiver.stamp(&mut sample);
        sample.server_gone = !local.reachable && cfg.postgres.as_ref().is_some_and(|pg| !crate::process::postmaster_alive(&pg.data_dir));
        if !local.dataset_id.is_empty() {
            let now = (local.dataset_id.clone(), local.previous_dataset_id.clone());
            dataset.send_if_modified(|d| {
                let changed = *d != now;
                *d = now;
                changed
            });
        }
        actor.stats.sampled(&sample);
        buffer.push(sample);
    }
}

/// The local probe's newest reading, and since when the probe in flight
/// has been waiting for its answer.
#[derive(Clone)]
struct Local {
    reading: Reading,
    asking_since: Option<std::time::Instant>,
}

impl Local {
    /// The reading as evidence now: a member that has not answered the
    /// probe in flight for `hung` (a healthy one answers in milliseconds)
    /// counts as unreachable before the probe times out.
    fn current(&self, hung: Duration) -> Reading {
        match self.asking_since.map(|at| at.elapsed()).filter(|waited| *waited > hung) {
            Some(waited) => Reading::unreachable(format!("no answer for {} ms", waited.as_millis())),
            None => self.reading.clone(),
        }
    }
}

/// The newest cross-probe of the primary at `address`, as evidence now: an
/// answer older than the probe time-out (the next probe is still waiting)
/// no longer shows that the primary is reachable.
fn current(cross: Option<&(String, PrimaryReading)>, address: &str, timeout: Duration) -> Option<PrimaryReading> {
    let (probed, reading) = cross?;
    if probed != address {
        return None;
    }
    let mut r = reading.clone();
    if r.answered_at.is_none_or(|at| at.elapsed() > timeout) {
        r.reachable = false;
    }
    Some(r)
}

async fn probe_local(cfg: Arc<AgentConfig>, mut probe: Probe, out: watch::Sender<Local>, cancel: CancellationToken) {
    let mut ticker = tokio::time::interval(cfg.probe_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        // Marked without waking the sampler: only an answer does.
        out.send_if_modified(|l| {
            l.asking_since = Some(std::time::Instant::now());
            false
        });
        let reading = tokio::select! {
            _ = cancel.cancelled() => return,
            r = probe.local() => r,
        };
        out.send_replace(Local { reading, asking_since: None });
    }
}

async fn probe_primary(
    cfg: Arc<AgentConfig>,
    mut probe: Probe,
    views: watch::Receiver<Option<drc_proto::ClusterView>>,
    out: watch::Sender<Option<(String, PrimaryReading)>>,
    cancel: CancellationToken,
) {
    let mut ticker = tokio::time::interval(cfg.probe_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let address = views
            .borrow()
            .as_ref()
            .filter(|v| v.primary_member != cfg.member_id && !v.primary_address.is_empty())
            .map(|v| v.primary_address.clone());
        let Some(address) = address else {
            out.send_replace(None);
            continue;
        };
        let reading = tokio::select! {
            _ = cancel.cancelled() => return,
            r = probe.primary(&address) => r,
        };
        out.send_replace(Some((address, reading)));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn a_member_that_does_not_answer_the_probe_in_flight_counts_as_unreachable_before_it_times_out() {
        let ok = Reading { reachable: true, role: "primary", ..Default::default() };
        let idle = Local { reading: ok.clone(), asking_since: None };
        assert!(idle.current(Duration::from_millis(500)).reachable);
        let asking = Local { reading: ok.clone(), asking_since: Some(Instant::now()) };
        assert!(asking.current(Duration::from_millis(500)).reachable, "an answer takes a moment");
        let hung = Local { reading: ok, asking_since: Some(Instant::now() - Duration::from_millis(600)) };
        let r = hung.current(Duration::from_millis(500));
        assert!(!r.reachable && r.error.contains("no answer"), "{r:?}");
    }

    #[test]
    fn a_cross_probe_answer_counts_only_for_its_address_and_within_the_probe_timeout() {
        let answered = |ago: Duration| PrimaryReading { reachable: true, answered_at: Some(Instant::now() - ago), ..Default::default() };
        let t = Duration::from_secs(1);
        let fresh = ("a:1".to_string(), answered(Duration::from_millis(100)));
        assert!(current(Some(&fresh), "a:1", t).is_some_and(|r| r.reachable));
        assert!(current(Some(&fresh), "b:1", t).is_none(), "another primary's answer says nothing");
        let old = ("a:1".to_string(), answered(Duration::from_millis(1_500)));
        assert!(current(Some(&old), "a:1", t).is_some_and(|r| !r.reachable), "an answer older than the time-out");
        let none = ("a:1".to_string(), PrimaryReading::default());
        assert!(current(Some(&none), "a:1", t).is_some_and(|r| !r.reachable));
        assert!(current(None, "a:1", t).is_none());
    }
}
