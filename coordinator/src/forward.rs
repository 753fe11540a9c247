//! Routing of writes to the leader, so that a caller never needs to know who
//! leads: a write that reaches a follower is forwarded once to the leader;
//! without a leader it fails with "no quorum" within the write timeout.

use std::time::Duration;

use drc_proto::admin_service_client::AdminServiceClient;
use drc_tls::Security;
use tonic::transport::Channel;
use tonic::Status;

use crate::auth::{principal, Principal, FORWARDED, ON_BEHALF_OF, VIA};
use crate::raft::transport::Transport;
use crate::raft::{NodeHandle, Role};

/// Where a write must run.
pub enum Route {
    Local,
    Leader(AdminServiceClient<Channel>),
}

/// A client for another coordinator's AdminService.
pub fn admin_client(security: &Security, address: &str, timeout: Duration) -> Result<AdminServiceClient<Channel>, Status> {
    let endpoint = Security::endpoint(address)
        .map_err(|e| Status::internal(format!("bad coordinator address {address:?}: {e}")))?
        .connect_timeout(Duration::from_millis(500))
        .timeout(timeout);
    let endpoint = drc_proto::keepalive::endpoint(endpoint);
    Ok(AdminServiceClient::new(security.connect_lazy(endpoint)))
}

/// Decides where a write runs, waiting up to `deadline` for a leader.
pub async fn route(node: &NodeHandle, transport: &Transport, forwarded: bool, deadline: Duration) -> Result<Route, Status> {
    let start = tokio::time::Instant::now();
    let mut status = node.watch_status();
    loop {
        let s = status.borrow_and_update().clone();
        if s.role == Role::Leader {
            return Ok(Route::Local);
        }
        if s.leader_id != 0 {
            if forwarded {
                return Err(Status::unavailable(format!(
                    "leadership moved while the request was forwarded (leader is now node {}); retry",
                    s.leader_id
                )));
            }
            if let Some(address) = transport.address_of(s.leader_id) {
                return Ok(Route::Leader(admin_client(transport.security(), &address, deadline + Duration::from_secs(1))?));
            }
        }
        let left = deadline.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(Status::unavailable(format!(
                "no quorum: no coordinator leader could be elected within {} (voters {:?}; fewer than a majority are reachable from node {})",
                humantime::format_duration(deadline),
                s.voters,
                s.id
            )));
        }
        let _ = tokio::time::timeout(left, status.changed()).await;
    }
}

/// Runs a write on the leader: `Ok(None)` when this node leads (the caller
/// goes on locally), or the leader's answer. A leader that cannot be reached
/// (dead, or leadership moving) is retried until `deadline`, after which the
/// write fails with "no quorum"; answers from a reachable leader, including
/// its own "no quorum", are returned as they are.
pub async fn on_leader<Req, Resp, F, Fut>(
    node: &NodeHandle,
    transport: &Transport,
    req: &tonic::Request<Req>,
    deadline: Duration,
    call: F,
) -> Result<Option<tonic::Response<Resp>>, Status>
where
    Req: Clone,
    F: Fn(AdminServiceClient<Channel>, tonic::Request<Req>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let start = tokio::time::Instant::now();
    let forwarded = is_forwarded(req);
    loop {
        let left = deadline.saturating_sub(start.elapsed());
        let client = match route(node, transport, forwarded, left).await? {
            Route::Local => return Ok(None),
            Route::Leader(client) => client,
        };
        let leader = node.status().leader_id;
        match call(client, forwarded_copy(req, node.status().id)).await {
            // UNAVAILABLE: nothing was done (the leader went away): retry.
            Err(e) if e.code() == tonic::Code::Unavailable && !forwarded => {
                if start.elapsed() >= deadline {
                    return Err(Status::unavailable(format!(
                        "no quorum: the leader (node {leader}) is unreachable ({}) and no other leader was elected within {}",
                        e.message(),
                        humantime::format_duration(deadline)
                    )));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other.map(Some),
        }
    }
}

/// Marks a request as forwarded.
pub fn mark_forwarded<T>(mut req: tonic::Request<T>) -> tonic::Request<T> {
    req.metadata_mut().insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    req
}

/// The request to send to the leader: the same message, marked forwarded
/// by node `me`, naming the original caller (the leader authorises that
/// caller).
pub fn forwarded_copy<T: Clone>(original: &tonic::Request<T>, me: u64) -> tonic::Request<T> {
    let mut req = mark_forwarded(tonic::Request::new(original.get_ref().clone()));
    req.metadata_mut().insert(VIA, me.into());
    if let Principal::Identity(id) = principal(original) {
        // An identity URI is plain ASCII (checked when it was parsed).
        if let Ok(value) = id.uri().parse() {
            req.metadata_mut().insert(ON_BEHALF_OF, value);
        }
    }
    req
}

pub fn is_forwarded<T>(req: &tonic::Request<T>) -> bool {
    req.metadata().contains_key(FORWARDED)
}
