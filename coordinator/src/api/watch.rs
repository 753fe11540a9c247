//! `Watch` and `WatchPrimary`: the AdminService's streams.

use std::pin::Pin;

use drc_proto::{PrimaryEndpoint, WatchEvent, WatchPrimaryRequest, WatchRequest};
use futures::Stream;
use tonic::{Request, Response, Status};

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::agents::{EventBus, EventKind};
use crate::forward::on_leader;
use crate::raft::transport::Transport;
use crate::raft::{NodeHandle, Role};

/// Watches one coordinator serves at once; each holds a task and a
/// subscription for as long as its client likes.
pub const MAX_WATCHES: usize = 1024;

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send>>;
pub type WatchPrimaryStream = Pin<Box<dyn Stream<Item = Result<PrimaryEndpoint, Status>> + Send>>;

/// Serves the watch streams, at most [`MAX_WATCHES`] at once.
pub struct Watches {
    node: NodeHandle,
    transport: Arc<Transport>,
    events: Arc<EventBus>,
    write_timeout: Duration,
    slots: Arc<Semaphore>,
}

impl Watches {
    pub fn new(node: NodeHandle, transport: Arc<Transport>, events: Arc<EventBus>, write_timeout: Duration) -> Self {
        Watches { node, transport, events, write_timeout, slots: Arc::new(Semaphore::new(MAX_WATCHES)) }
    }

    /// A slot for one more watch, held until its stream ends.
    #[allow(clippy::result_large_err)]
    fn slot(&self) -> Result<OwnedSemaphorePermit, Status> {
        Arc::clone(&self.slots).try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!("this coordinator already serves {MAX_WATCHES} watches; try another, or later"))
        })
    }

    pub(super) async fn watch_events(&self, req: Request<WatchRequest>) -> Result<Response<WatchStream>, Status> {
        let slot = self.slot()?;
        let forwarded =
            on_leader(&self.node, &self.transport, &req, self.write_timeout, |mut c, r| async move { c.watch(r).await }).await?;
        if let Some(remote) = forwarded {
            // Relay the leader's stream; it ends when leadership moves.
            use tokio_stream::StreamExt as _;
            return Ok(Response::new(Box::pin(remote.into_inner().map(move |e| {
                let _held = &slot;
                e
            }))));
        }
        let mut events = self.events.subscribe();
        let mut status = self.node.watch_status();
        let me = status.borrow().clone();
        let first = WatchEvent {
            at_ms: drc_model::time::wall_now_ms(),
            kind: EventKind::Watching.as_str().into(),
            message: format!("watching node {} (leader, term {}): every event from now on", me.id, me.term),
            ..Default::default()
        };
        let stream = async_stream(move |tx: tokio::sync::mpsc::Sender<Result<WatchEvent, Status>>| async move {
            let _held = slot;
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            loop {
                tokio::select! {
                    e = events.recv() => match e {
                        Ok(e) => if tx.send(Ok(e)).await.is_err() { return },
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            let lost = WatchEvent { kind: EventKind::Lagged.as_str().into(), message: format!("{n} events dropped: this watcher is too slow"), ..Default::default() };
                            if tx.send(Ok(lost)).await.is_err() { return }
                        }
                        Err(_) => return,
                    },
                    // A client gone frees its slot now, not at the next event.
                    _ = tx.closed() => return,
                    r = status.changed() => {
                        if r.is_err() || status.borrow_and_update().role != Role::Leader {
                            let _ = tx.send(Err(Status::unavailable("this coordinator is no longer the leader; watch again"))).await;
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(stream))
    }

    pub(super) async fn watch_primary_endpoint(&self, req: Request<WatchPrimaryRequest>) -> Result<Response<WatchPrimaryStream>, Status> {
        let slot = self.slot()?;
        let cluster = req.into_inner().cluster;
        let node = self.node.clone();
        let first = published(&node, &cluster).ok_or_else(|| Status::not_found(format!("unknown cluster {cluster:?}")))?;
        let mut status = node.watch_status();
        let stream = async_stream(move |tx: tokio::sync::mpsc::Sender<Result<PrimaryEndpoint, Status>>| async move {
            let _held = slot;
            let mut last = first;
            if tx.send(Ok(last.clone())).await.is_err() {
                return;
            }
            // Every applied entry may change it; most do not.
            loop {
                tokio::select! {
                    r = status.changed() => if r.is_err() { return },
                    _ = tx.closed() => return,
                }
                let Some(now) = published(&node, &cluster) else {
                    let _ = tx.send(Err(Status::not_found(format!("cluster {cluster:?} was removed from the topology")))).await;
                    return;
                };
                if (now.epoch, &now.member, &now.address) != (last.epoch, &last.member, &last.address) {
                    last = now;
                    if tx.send(Ok(last.clone())).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(stream))
    }
}

/// A cluster's published primary on this node; `None` for an unknown cluster.
fn published(node: &NodeHandle, cluster: &str) -> Option<PrimaryEndpoint> {
    let status = node.status();
    node.store().with_state(|sm| {
        let (epoch, member) = sm.published_primary(cluster)?;
        let decl = member.as_ref().and_then(|m| sm.topology.members.get(m));
        Some(PrimaryEndpoint {
            cluster: cluster.to_string(),
            epoch,
            member: member.clone().unwrap_or_default(),
            address: decl.map(|m| m.address.clone()).unwrap_or_default(),
            region: decl.map(|m| m.region.clone()).unwrap_or_default(),
            node_id: status.id,
            applied_index: status.applied_index,
            generation: sm.generation,
        })
    })
}

fn async_stream<T, F, Fut>(f: F) -> Pin<Box<dyn Stream<Item = T> + Send>>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
