//! `drc-proxy`: one stable TCP address for a cluster's writable primary.
//!
//! It follows `WatchPrimary` on every coordinator it is given (each node
//! answers from its own replicated state) and keeps the newest answer: the
//! newest generation of the coordinator group, then the highest epoch, and
//! within an epoch a named member over an empty one. New
//! connections go to that primary. When the primary changes — or a change is
//! under way and no member is writable — every open connection to the old one
//! is closed at once, so that no client keeps writing to a fenced primary, and
//! new connections are refused until the new primary is published.

use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder as _;
use drc_proto::admin_service_client::AdminServiceClient;
use drc_proto::{PrimaryEndpoint, WatchPrimaryRequest};
use drc_tls::Security;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

pub mod stats;
use stats::{Carrying, ProxyStats};

/// Where connections go now; `None` refuses them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub epoch: u64,
    pub member: String,
    pub address: String,
}

/// Orders answers from different coordinators: a newer generation of the
/// coordinator group wins (an older one was left out of a recovery, and its
/// epochs mean nothing any more), then newer epochs; within an epoch, a
/// named primary is newer than "change under way".
fn newer(a: &PrimaryEndpoint, than: Option<&PrimaryEndpoint>) -> bool {
    let key = |e: &PrimaryEndpoint| (e.generation, e.epoch, !e.member.is_empty());
    than.is_none_or(|t| {
        key(a) > key(t) || (key(a) == key(t) && (a.member != t.member || a.address != t.address) && a.applied_index > t.applied_index)
    })
}

/// Follows `WatchPrimary` on one coordinator forever, reconnecting with
/// jittered backoff.
async fn follow(security: Security, endpoint: String, cluster: String, updates: mpsc::Sender<PrimaryEndpoint>, cancel: CancellationToken) {
    let builder = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(3))
        .with_jitter()
        .without_max_times();
    let mut delays = builder.build();
    loop {
        let result = async {
            let endpoint = Security::endpoint(&endpoint).map_err(|e| e.to_string())?;
            let endpoint = drc_proto::keepalive::endpoint(endpoint.connect_timeout(Duration::from_secs(2)).tcp_nodelay(true));
            let channel = security.connect(endpoint).await.map_err(|e| format!("cannot connect: {}", drc_tls::root_cause(&e)))?;
            let mut stream = AdminServiceClient::new(channel)
                .watch_primary(WatchPrimaryRequest { cluster: cluster.clone() })
                .await
                .map_err(|e| e.message().to_string())?
                .into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(update)) => {
                        if updates.send(update).await.is_err() {
                            return Ok(());
                        }
                    }
                    Ok(None) => return Err("the stream ended".to_string()),
                    Err(e) => return Err(e.message().to_string()),
                }
            }
        };
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            r = result => r,
        };
        match outcome {
            Ok(()) => return,
            Err(e) => tracing::warn!(coordinator = %endpoint, "watching the primary: {e}"),
        }
        let pause = delays.next().unwrap_or(Duration::from_secs(1));
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        if pause >= Duration::from_secs(3) {
            delays = builder.build();
        }
    }
}

/// Merges the coordinators' answers into the current target.
async fn select(mut updates: mpsc::Receiver<PrimaryEndpoint>, target: watch::Sender<Option<Target>>, stats: Arc<ProxyStats>) {
    let mut best: Option<PrimaryEndpoint> = None;
    while let Some(u) = updates.recv().await {
        if !newer(&u, best.as_ref()) {
            continue;
        }
        let next = (!u.member.is_empty() && !u.address.is_empty()).then(|| Target {
            epoch: u.epoch,
            member: u.member.clone(),
            address: u.address.clone(),
        });
        match &next {
            Some(t) => {
                tracing::info!(epoch = t.epoch, member = %t.member, address = %t.address, node = u.node_id, "primary is {}", t.member)
            }
            None => tracing::info!(epoch = u.epoch, node = u.node_id, "no writable primary: connections refused"),
        }
        best = Some(u);
        if target.send_if_modified(|t| {
            let changed = *t != next;
            *t = next;
            changed
        }) {
            stats.switches.inc();
        }
    }
}

/// Carries one client connection to the current target until either side
/// closes or the target changes.
async fn carry(mut client: TcpStream, mut target: watch::Receiver<Option<Target>>, connect_timeout: Duration, stats: Arc<ProxyStats>) {
    let Some(t) = target.borrow_and_update().clone() else {
        stats.refuse("no_primary");
        let _ = client.shutdown().await;
        return;
    };
    let mut upstream = match tokio::time::timeout(connect_timeout, drc_tls::socket::connect(&t.address)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            stats.refuse("unreachable");
            tracing::warn!(primary = %t.member, address = %t.address, "cannot reach the primary: {e}");
            return;
        }
        Err(_) => {
            stats.refuse("unreachable");
            tracing::warn!(primary = %t.member, address = %t.address, "cannot reach the primary: timed out");
            return;
        }
    };
    let _carrying = Carrying::new(Arc::clone(&stats));
    let _ = upstream.set_nodelay(true);
    let _ = client.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        _ = async {
            while target.changed().await.is_ok() {
                if target.borrow_and_update().as_ref() != Some(&t) {
                    return;
                }
            }
        } => {
            stats.cut.inc();
            tracing::info!(old = %t.member, "closing a connection to a primary that is no longer current");
        }
    }
}

/// Serves `listener` for `cluster` until `cancel` fires; with `http`, also
/// `/healthz`, `/readyz` and `/metrics` there.
pub async fn run(
    listener: TcpListener,
    cluster: String,
    endpoints: Vec<String>,
    security: Security,
    http: Option<TcpListener>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::ensure!(!endpoints.is_empty(), "no coordinator endpoints given");
    let (updates_tx, updates_rx) = mpsc::channel(64);
    for e in endpoints {
        let e = e.trim_start_matches("http://").to_string();
        tokio::spawn(follow(security.clone(), e, cluster.clone(), updates_tx.clone(), cancel.child_token()));
    }
    drop(updates_tx);
    let (target_tx, target_rx) = watch::channel(None);
    let stats = Arc::new(ProxyStats::default());
    if let Some(http) = http {
        let site = stats::ProxySite::new(&stats, target_rx.clone(), &cluster, &security);
        tokio::spawn(drc_ops::http::serve(http, security.clone(), Arc::new(site), cancel.child_token()));
    }
    tokio::spawn(select(updates_rx, target_tx, Arc::clone(&stats)));
    let target_rx = Arc::new(target_rx);
    loop {
        let (client, peer) = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = listener.accept() => r?,
        };
        tracing::debug!(%peer, "client connected");
        stats.accepted.inc();
        tokio::spawn(carry(client, (*target_rx).clone(), Duration::from_secs(2), Arc::clone(&stats)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(epoch: u64, member: &str, applied: u64) -> PrimaryEndpoint {
        PrimaryEndpoint { epoch, member: member.into(), address: format!("{member}:1"), applied_index: applied, ..Default::default() }
    }

    #[test]
    fn the_newest_answer_wins_whichever_coordinator_gives_it() {
        assert!(newer(&ep(1, "a", 5), None));
        assert!(newer(&ep(2, "", 9), Some(&ep(1, "a", 5))), "a change under way in a newer epoch wins");
        assert!(newer(&ep(2, "b", 9), Some(&ep(2, "", 9))), "then its promoted primary");
        assert!(!newer(&ep(1, "a", 20), Some(&ep(2, "", 9))), "a lagging coordinator never takes it back");
        assert!(!newer(&ep(2, "", 30), Some(&ep(2, "b", 9))), "nor a lagging answer within the epoch");
        assert!(!newer(&ep(2, "b", 10), Some(&ep(2, "b", 9))), "the same answer again changes nothing");
    }

    #[test]
    fn a_coordinator_left_out_of_a_recovery_never_wins_whatever_its_epoch() {
        let recovered = PrimaryEndpoint { generation: 1, ..ep(3, "b", 4) };
        let left_behind = ep(4, "a", 900);
        assert!(newer(&recovered, Some(&left_behind)), "the recovered group's answer replaces the old group's");
        assert!(!newer(&left_behind, Some(&recovered)), "and the old group, failing over on its own, never takes it back");
    }
}
