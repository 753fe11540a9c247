//! The connecting side: TLS with this process's certificate, to a server
//! that must prove it is a coordinator of the same drc cluster.
//!
//! The server's certificate is checked against the CA and the address
//! dialled (an IP address or host name in its subject alternative names),
//! then its drc identity must be a peer of this process's own cluster: a
//! stolen agent certificate cannot pose as a coordinator, and a redirect to
//! another address is followed only to a server that passes the same checks.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::transport::Uri;

use crate::files::Tls;
use crate::identity::{Identity, Role};

/// A tonic connector (`Endpoint::connect_with_connector`) that dials TCP and
/// completes a verified TLS handshake.
#[derive(Clone)]
pub struct Connector {
    tls: Arc<Tls>,
}

impl Connector {
    pub fn new(tls: Arc<Tls>) -> Self {
        Connector { tls }
    }
}

/// The host and port `uri` names.
fn host_port(uri: &Uri) -> io::Result<(String, u16)> {
    let host = uri.host().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{uri}: no host")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = uri.port_u16().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{uri}: no port")))?;
    Ok((host, port))
}

/// A TCP connection to `host:port` ([`crate::socket::connect`]), tuned
/// ([`crate::socket::tune`]).
async fn tcp(host: &str, port: u16) -> io::Result<TcpStream> {
    let tcp = crate::socket::connect((host, port)).await?;
    crate::socket::tune(&tcp);
    Ok(tcp)
}

/// Dials `uri` and checks who answers.
async fn dial(tls: Arc<Tls>, uri: Uri) -> io::Result<TokioIo<TlsStream<TcpStream>>> {
    let (host, port) = host_port(&uri)?;
    let name = ServerName::try_from(host.clone()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{host}: {e}")))?;
    let material = tls.material();
    let tcp = tcp(&host, port).await?;
    let stream = tokio_rustls::TlsConnector::from(Arc::clone(&material.client)).connect(name, tcp).await?;
    let own = &material.identity;
    let server = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|leaf| Identity::from_certificate(leaf));
    match server {
        Some(Ok(id)) if id.role == Role::Peer && id.cluster == own.cluster => Ok(TokioIo::new(stream)),
        Some(Ok(id)) => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{host}:{port} presented the certificate of {id}, not of a coordinator of drc cluster {:?}", own.cluster),
        )),
        Some(Err(e)) => Err(io::Error::new(io::ErrorKind::PermissionDenied, format!("{host}:{port}: {e}"))),
        None => Err(io::Error::new(io::ErrorKind::PermissionDenied, format!("{host}:{port} presented no certificate"))),
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(dial(Arc::clone(&self.tls), uri))
    }
}

/// The plaintext connector (`insecure = true`): TCP alone, tuned as the TLS
/// one is.
#[derive(Clone, Copy)]
pub struct Plain;

impl tower_service::Service<Uri> for Plain {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(async move {
            let (host, port) = host_port(&uri)?;
            Ok(TokioIo::new(tcp(&host, port).await?))
        })
    }
}
