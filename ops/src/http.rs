//! The HTTP listener every drc process may open (`http_listen`): `/healthz`
//! (the process answers), `/readyz` (it can do its job), `/metrics`
//! (Prometheus) and whatever else its [`Site`] serves (the coordinator's
//! status page).
//!
//! It takes the TLS settings of the process's gRPC listener, but a client
//! certificate is optional there: without one, only `/healthz` and
//! `/readyz` answer (a kubelet's or load balancer's probe); everything else
//! needs a certificate of this drc cluster whose role may read its state
//! (viewer, operator or peer).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use drc_tls::{Caller, Purpose, Security};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected as _;

/// An HTTP/1 request whose headers take longer is dropped.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A response body: whole, or streamed (server-sent events).
pub type Body = BoxBody<Bytes, Infallible>;

/// What one process serves on its HTTP listener.
pub trait Site: Send + Sync + 'static {
    /// Whether the process can do its job now, and if not, why.
    fn ready(&self) -> Result<(), String>;
    /// Its metrics as OpenMetrics text (see [`crate::scrape::render`]).
    fn metrics(&self) -> String;
    /// Any other GET path, for a caller who may read the state; None: 404.
    fn page(&self, _path: &str) -> Option<futures::future::BoxFuture<'_, Response<Body>>> {
        None
    }
}

/// A whole response.
pub fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r.headers_mut().insert(hyper::header::CACHE_CONTROL, hyper::header::HeaderValue::from_static("no-store"));
    r
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut body = body.into();
    body.push('\n');
    respond(status, "text/plain; charset=utf-8", body)
}

/// Whether `caller` may read what this process knows; `cluster` is the drc
/// cluster of its own certificate.
fn may_read(caller: &Caller, cluster: Option<&str>) -> Result<(), (StatusCode, String)> {
    match caller {
        Caller::Insecure => Ok(()),
        Caller::Unnamed(e) => Err((StatusCode::UNAUTHORIZED, format!("a client certificate of this drc cluster is needed: {e}"))),
        Caller::Known(id) if Some(id.cluster.as_str()) != cluster => {
            Err((StatusCode::FORBIDDEN, format!("{id} belongs to another drc cluster")))
        }
        Caller::Known(id) if !id.role.reads_state() => {
            Err((StatusCode::FORBIDDEN, format!("{id} ({}) may not read this; it needs the role viewer, operator or peer", id.role)))
        }
        Caller::Known(_) => Ok(()),
    }
}

async fn handle(site: Arc<dyn Site>, caller: Caller, cluster: Option<Arc<str>>, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD");
    }
    let path = req.uri().path().to_string();
    match path.as_str() {
        "/healthz" => text(StatusCode::OK, "ok"),
        "/readyz" => match site.ready() {
            Ok(()) => text(StatusCode::OK, "ready"),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, why),
        },
        _ => {
            if let Err((status, why)) = may_read(&caller, cluster.as_deref()) {
                return text(status, why);
            }
            if path == "/metrics" {
                // A large topology's scrape takes a moment of CPU: off the
                // runtime's workers.
                let site = Arc::clone(&site);
                match tokio::task::spawn_blocking(move || site.metrics()).await {
                    Ok(body) => respond(StatusCode::OK, crate::scrape::CONTENT_TYPE, body),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("metrics failed: {e}")),
                }
            } else {
                match site.page(&path) {
                    Some(page) => page.await,
                    None => text(StatusCode::NOT_FOUND, format!("nothing at {path}")),
                }
            }
        }
    }
}

/// Serves `site` on `listener` until `cancel`.
pub async fn serve(listener: TcpListener, security: Security, site: Arc<dyn Site>, cancel: CancellationToken) {
    let cluster: Option<Arc<str>> = security.identity().map(|id| id.cluster.into());
    let mut incoming = drc_tls::incoming_for(listener, security, Purpose::Http);
    loop {
        let conn = tokio::select! {
            _ = cancel.cancelled() => return,
            c = incoming.next() => match c {
                Some(Ok(c)) => c,
                Some(Err(e)) => {
                    tracing::debug!("http connection: {e}");
                    continue;
                }
                None => return,
            },
        };
        let caller = conn.connect_info().caller;
        let site = Arc::clone(&site);
        let cluster = cluster.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (site, caller, cluster) = (Arc::clone(&site), caller.clone(), cluster.clone());
                async move { Ok::<_, Infallible>(handle(site, caller, cluster, req).await) }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            // A client that sends its request slowly holds a connection no longer.
            builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
            let served = builder.serve_connection(TokioIo::new(conn), service);
            tokio::select! {
                _ = cancel.cancelled() => {}
                r = served => if let Err(e) = r {
                    tracing::debug!("http connection ended: {e}");
                },
            }
        });
    }
}

/// Binds `address` and serves `site` there until `cancel`; the error names
/// the address.
pub async fn listen(address: &str, security: Security, site: Arc<dyn Site>, cancel: CancellationToken) -> Result<(), String> {
    let listener = TcpListener::bind(address).await.map_err(|e| format!("cannot listen on {address} (http_listen): {e}"))?;
    tokio::spawn(serve(listener, security, site, cancel));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use drc_tls::{Identity, IdentityError, Role};

    #[test]
    fn metrics_and_pages_need_a_certificate_of_this_cluster_whose_role_reads_state() {
        let known = |cluster: &str, role| Caller::Known(Identity::new(cluster, role, "1").expect("identity"));
        let lab = Some("lab");
        assert!(may_read(&Caller::Insecure, None).is_ok(), "plaintext: nobody is known");
        for role in [Role::Viewer, Role::Operator, Role::Peer] {
            assert!(may_read(&known("lab", role), lab).is_ok(), "{role}");
        }
        assert_eq!(may_read(&Caller::Unnamed(IdentityError::Missing), lab).map_err(|e| e.0), Err(StatusCode::UNAUTHORIZED));
        assert_eq!(may_read(&known("lab", Role::Agent), lab).map_err(|e| e.0), Err(StatusCode::FORBIDDEN));
        assert_eq!(may_read(&known("other", Role::Viewer), lab).map_err(|e| e.0), Err(StatusCode::FORBIDDEN));
    }
}
