//! Who may call what: the one authorisation table of every RPC a coordinator
//! serves, and the tower layer that enforces it in front of every service.
//!
//! The caller is the drc identity its TLS client certificate names
//! (`drc_tls::identity`). A coordinator that forwards a write to the leader
//! calls with its own certificate and names the original caller in
//! [`ON_BEHALF_OF`]; the leader believes that header only from a peer, and
//! authorises the original caller. Handlers read who called from the
//! request's [`Principal`] extension.

use std::sync::Arc;
use std::task::{Context, Poll};

use drc_tls::{Caller, Identity, PeerInfo, Role};
use futures::future::{ready, Either, Ready};
use tonic::codegen::http;
use tonic::Status;

/// Metadata key of the original caller of a forwarded request.
pub const ON_BEHALF_OF: &str = "x-drc-on-behalf-of";

/// Metadata key naming the node that forwarded a request; believed only
/// without TLS (with it, the forwarding peer's certificate names the node).
pub const VIA: &str = "x-drc-via";

/// Metadata key marking a forwarded request, so it is never forwarded twice.
pub const FORWARDED: &str = "x-drc-forwarded";

/// The coordinator that forwarded a request here, as the request's
/// extension; absent when the caller reached this node directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForwardedBy(pub u64);

/// What an RPC needs of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    /// Raft messages: peers only.
    Raft,
    /// An agent's session: agents only (as the member they are).
    AgentSession,
    /// Reading state: viewers, operators and peers.
    View,
    /// Changing state: operators only.
    Operate,
    /// `grpc.health.v1`: anyone of this cluster.
    Probe,
}

impl Permission {
    pub fn granted_to(self, role: Role) -> bool {
        match self {
            Permission::Raft => role == Role::Peer,
            Permission::AgentSession => role == Role::Agent,
            Permission::View => role.reads_state(),
            Permission::Operate => role == Role::Operator,
            Permission::Probe => true,
        }
    }
}

/// Every RPC and what it needs. A path that is not here is refused: a new
/// RPC cannot be reached until it has an entry (a test walks the .proto).
pub const RPCS: &[(&str, Permission)] = &[
    ("/drc.v1.RaftTransport/Send", Permission::Raft),
    ("/drc.v1.AgentService/Session", Permission::AgentSession),
    ("/drc.v1.AdminService/Status", Permission::View),
    ("/drc.v1.AdminService/NodeStatus", Permission::View),
    ("/drc.v1.AdminService/ApplyTopology", Permission::Operate),
    ("/drc.v1.AdminService/GetTopology", Permission::View),
    ("/drc.v1.AdminService/Health", Permission::View),
    ("/drc.v1.AdminService/Watch", Permission::View),
    ("/drc.v1.AdminService/ListNodes", Permission::View),
    ("/drc.v1.AdminService/AddNode", Permission::Operate),
    ("/drc.v1.AdminService/RemoveNode", Permission::Operate),
    ("/drc.v1.AdminService/TransferLeadership", Permission::Operate),
    ("/drc.v1.AdminService/Failover", Permission::Operate),
    ("/drc.v1.AdminService/Switchover", Permission::Operate),
    ("/drc.v1.AdminService/FailoverRegion", Permission::Operate),
    ("/drc.v1.AdminService/Pause", Permission::Operate),
    ("/drc.v1.AdminService/ClearBlock", Permission::Operate),
    ("/drc.v1.AdminService/History", Permission::View),
    ("/drc.v1.AdminService/WatchPrimary", Permission::View),
    ("/drc.v1.AdminService/StartBackup", Permission::Operate),
    ("/drc.v1.AdminService/ListBackups", Permission::View),
    ("/drc.v1.AdminService/StartRecoveryTest", Permission::Operate),
    ("/drc.v1.AdminService/ListRecoveryTests", Permission::View),
    ("/drc.v1.AdminService/StartRestore", Permission::Operate),
    ("/drc.v1.AdminService/ListRestores", Permission::View),
    ("/drc.v1.AdminService/SetSchedule", Permission::Operate),
    ("/drc.v1.AdminService/ListSchedules", Permission::View),
    // Entries hold no secrets (requests are redacted): whoever may read the
    // history may read who asked for it.
    ("/drc.v1.AdminService/Audit", Permission::View),
    ("/drc.v1.AdminService/RecordAudit", Permission::Raft),
];

/// The standard gRPC services every coordinator also serves: health
/// checks, and reflection (which lists the services and their messages).
pub const STANDARD_RPCS: &[(&str, Permission)] = &[
    ("/grpc.health.v1.Health/Check", Permission::Probe),
    ("/grpc.health.v1.Health/Watch", Permission::Probe),
    ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", Permission::View),
    ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", Permission::View),
];

pub fn permission_of(path: &str) -> Option<Permission> {
    RPCS.iter().chain(STANDARD_RPCS).find(|(p, _)| *p == path).map(|(_, perm)| *perm)
}

/// On whose behalf a request runs, after authorisation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// This coordinator runs with `insecure = true`: nobody is known.
    Insecure,
    Identity(Identity),
}

impl Principal {
    /// The identity, if known.
    pub fn identity(&self) -> Option<&Identity> {
        match self {
            Principal::Identity(id) => Some(id),
            Principal::Insecure => None,
        }
    }
}

/// Who called: what the authorisation layer put in the request.
pub fn principal<T>(req: &tonic::Request<T>) -> Principal {
    req.extensions().get::<Principal>().cloned().unwrap_or(Principal::Insecure)
}

/// Decides whether `caller` may call `path`; `on_behalf_of` and `forwarded`
/// are the forwarding headers, if the request has them.
#[allow(clippy::result_large_err)]
pub fn authorize(cluster: &str, path: &str, caller: &Caller, on_behalf_of: Option<&str>, forwarded: bool) -> Result<Principal, Status> {
    let permission = permission_of(path).ok_or_else(|| Status::unimplemented(format!("no such RPC: {path}")))?;
    let direct = match caller {
        Caller::Insecure => return Ok(Principal::Insecure),
        Caller::Unnamed(e) => return Err(Status::unauthenticated(format!("client certificate refused: {e}"))),
        Caller::Known(id) => id,
    };
    let foreign = |id: &Identity| Status::unauthenticated(format!("{id} belongs to another drc cluster than this coordinator's"));
    if direct.cluster != cluster {
        return Err(foreign(direct));
    }
    if (on_behalf_of.is_some() || forwarded) && direct.role != Role::Peer {
        return Err(Status::permission_denied(format!(
            "{direct} is not a coordinator: it cannot forward requests or act for another caller"
        )));
    }
    let effective = match on_behalf_of {
        Some(uri) => {
            let id = Identity::parse_uri(uri).map_err(|e| Status::invalid_argument(format!("{ON_BEHALF_OF}: {e}")))?;
            if id.cluster != cluster {
                return Err(foreign(&id));
            }
            id
        }
        None => direct.clone(),
    };
    if !permission.granted_to(effective.role) {
        let needs = Role::ALL.iter().filter(|r| permission.granted_to(**r)).map(|r| r.as_str()).collect::<Vec<_>>().join(" or ");
        return Err(Status::permission_denied(format!("{effective} ({}) may not call {path}: it needs the role {needs}", effective.role)));
    }
    Ok(Principal::Identity(effective))
}

/// The tower layer that runs [`authorize`] before any handler.
#[derive(Clone)]
pub struct Authorize {
    cluster: Arc<str>,
}

impl Authorize {
    pub fn new(cluster: &str) -> Self {
        Authorize { cluster: cluster.into() }
    }
}

impl<S> tower_layer::Layer<S> for Authorize {
    type Service = Authorized<S>;

    fn layer(&self, inner: S) -> Authorized<S> {
        Authorized { inner, cluster: Arc::clone(&self.cluster) }
    }
}

#[derive(Clone)]
pub struct Authorized<S> {
    inner: S,
    cluster: Arc<str>,
}

impl<S, B, R> tower_service::Service<http::Request<B>> for Authorized<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    R: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let header = |name: &str| req.headers().get(name);
        let on_behalf_of = header(ON_BEHALF_OF).map(|v| v.to_str().unwrap_or("(not text)"));
        let forwarded = header(FORWARDED).is_some();
        let via_header = header(VIA).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        let (decided, via) = match req.extensions().get::<PeerInfo>() {
            Some(info) => {
                let via = match &info.caller {
                    Caller::Known(id) if forwarded => id.node_id(),
                    Caller::Insecure if forwarded => via_header,
                    _ => None,
                };
                (authorize(&self.cluster, req.uri().path(), &info.caller, on_behalf_of, forwarded), via)
            }
            None => (Err(Status::unauthenticated("the connection carries no peer information")), None),
        };
        match decided {
            Ok(principal) => {
                req.extensions_mut().insert(principal);
                if let Some(node) = via {
                    req.extensions_mut().insert(ForwardedBy(node));
                }
                Either::Right(self.inner.call(req))
            }
            Err(status) => {
                tracing::warn!(path = %req.uri().path(), "refused: {}", status.message());
                Either::Left(ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn known(role: Role, name: &str) -> Caller {
        Caller::Known(Identity::new("lab", role, name).expect("identity"))
    }

    /// Every RPC the .proto declares, as gRPC paths.
    fn declared_rpcs() -> Vec<String> {
        let proto = include_str!("../../proto/proto/drc.proto");
        let package = proto.lines().find_map(|l| l.trim().strip_prefix("package ")).expect("package").trim_end_matches(';').trim();
        let mut service = None;
        let mut paths = Vec::new();
        for line in proto.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("service ") {
                service = rest.split_whitespace().next().map(str::to_string);
            } else if let Some(rest) = line.strip_prefix("rpc ") {
                let name = rest.split('(').next().expect("rpc name").trim();
                paths.push(format!("/{package}.{}/{name}", service.as_deref().expect("rpc inside a service")));
            }
        }
        paths
    }

    #[test]
    fn every_rpc_in_the_proto_has_exactly_one_entry_in_the_table_and_no_entry_is_stale() {
        let declared = declared_rpcs();
        assert!(declared.len() >= 25, "the .proto was not read: {declared:?}");
        for path in &declared {
            assert_eq!(RPCS.iter().filter(|(p, _)| p == path).count(), 1, "{path} needs one entry in RPCS");
        }
        for (path, _) in RPCS {
            assert!(declared.iter().any(|d| d == path), "{path} is in RPCS but not in the .proto");
        }
    }

    #[test]
    fn every_state_changing_rpc_has_an_audit_action_and_every_action_an_rpc() {
        use drc_model::audit::AuditAction;
        let snake = |name: &str| {
            name.chars().enumerate().fold(String::new(), |mut s, (i, c)| {
                if c.is_ascii_uppercase() && i > 0 {
                    s.push('_');
                }
                s.push(c.to_ascii_lowercase());
                s
            })
        };
        let operated: Vec<String> =
            RPCS.iter().filter(|(_, p)| *p == Permission::Operate).map(|(path, _)| snake(path.rsplit('/').next().expect("name"))).collect();
        let actions: Vec<&str> = AuditAction::ALL.iter().map(|a| a.as_str()).collect();
        for rpc in &operated {
            assert!(actions.contains(&rpc.as_str()), "{rpc} changes state but has no AuditAction");
        }
        assert_eq!(operated.len(), actions.len(), "every AuditAction names a state-changing RPC: {operated:?} vs {actions:?}");
    }

    #[test]
    fn each_role_reaches_exactly_the_rpcs_of_its_permissions() {
        for (path, permission) in RPCS {
            for role in Role::ALL {
                let name = if role == Role::Peer { "1" } else { "x" };
                let outcome = authorize("lab", path, &known(role, name), None, false);
                assert_eq!(outcome.is_ok(), permission.granted_to(role), "{role} on {path}");
                if let Err(e) = outcome {
                    assert_eq!(e.code(), Code::PermissionDenied, "{role} on {path}");
                }
            }
        }
        // Spot checks of the table itself.
        assert!(!Permission::Operate.granted_to(Role::Viewer) && !Permission::Operate.granted_to(Role::Agent));
        assert!(!Permission::Raft.granted_to(Role::Operator) && !Permission::AgentSession.granted_to(Role::Operator));
    }

    #[test]
    fn strangers_other_clusters_and_unknown_paths_are_refused() {
        let failover = "/drc.v1.AdminService/Failover";
        let unnamed = Caller::Unnamed(drc_tls::IdentityError::Missing);
        assert_eq!(authorize("lab", failover, &unnamed, None, false).expect_err("unnamed").code(), Code::Unauthenticated);
        let other = Caller::Known(Identity::new("prod", Role::Operator, "eve").expect("id"));
        assert_eq!(authorize("lab", failover, &other, None, false).expect_err("other cluster").code(), Code::Unauthenticated);
        assert_eq!(
            authorize("lab", "/drc.v1.AdminService/Nope", &known(Role::Operator, "a"), None, false).expect_err("").code(),
            Code::Unimplemented
        );
        assert_eq!(authorize("lab", failover, &Caller::Insecure, None, false).ok(), Some(Principal::Insecure));
    }

    #[test]
    fn only_a_peer_may_forward_and_then_the_original_caller_is_authorised() {
        let failover = "/drc.v1.AdminService/Failover";
        let alice = Identity::new("lab", Role::Operator, "alice").expect("id");
        let viewer = Identity::new("lab", Role::Viewer, "v").expect("id");
        let peer = known(Role::Peer, "2");
        assert_eq!(authorize("lab", failover, &peer, Some(&alice.uri()), true).ok(), Some(Principal::Identity(alice.clone())));
        assert_eq!(authorize("lab", failover, &peer, Some(&viewer.uri()), true).expect_err("viewer").code(), Code::PermissionDenied);
        assert_eq!(authorize("lab", failover, &peer, None, false).expect_err("a peer is no operator").code(), Code::PermissionDenied);
        let operator = known(Role::Operator, "mallory");
        assert_eq!(authorize("lab", failover, &operator, Some(&alice.uri()), true).expect_err("").code(), Code::PermissionDenied);
        assert_eq!(authorize("lab", failover, &operator, None, true).expect_err("forwarded flag").code(), Code::PermissionDenied);
        let foreign = Identity::new("prod", Role::Operator, "alice").expect("id");
        assert_eq!(authorize("lab", failover, &peer, Some(&foreign.uri()), true).expect_err("").code(), Code::Unauthenticated);
        assert_eq!(authorize("lab", failover, &peer, Some("drc://lab/nope"), true).expect_err("").code(), Code::InvalidArgument);
    }
}
