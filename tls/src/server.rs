//! The accepting side: a listener's connections, TLS-terminated, each with
//! the identity its client certificate names.
//!
//! Handshakes run concurrently (a slow or silent client holds up no other)
//! and are bounded in time and number. A client without a certificate the
//! CA signed never gets past the handshake; a certificate that names no drc
//! identity gets through it and is refused per request, with a message that
//! says why, by whoever authorises requests.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::identity::{Identity, IdentityError};
use crate::Security;

/// A TLS handshake that takes longer is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; further connections wait to be accepted.
const HANDSHAKES: usize = 1024;

/// Who is at the other end of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A plaintext connection (`insecure = true`): nobody is known.
    Insecure,
    /// A certificate the CA signed that names no usable drc identity.
    Unnamed(IdentityError),
    Known(Identity),
}

/// What a server knows of a connection; tonic puts it in every request's
/// extensions.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    pub caller: Caller,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// One accepted connection.
pub struct Conn {
    io: Io,
    info: PeerInfo,
}

impl Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Whom a verified TLS session's client certificate names.
fn caller_of(stream: &TlsStream<TcpStream>) -> Caller {
    let (_, session) = stream.get_ref();
    match session.peer_certificates().and_then(|c| c.first()) {
        Some(leaf) => match Identity::from_certificate(leaf) {
            Ok(id) => Caller::Known(id),
            Err(e) => Caller::Unnamed(e),
        },
        // The gRPC verifier demands a certificate; the HTTP one does not.
        None => Caller::Unnamed(IdentityError::Missing),
    }
}

/// What a listener serves, which decides whether a client certificate is
/// demanded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// gRPC: every caller shows a certificate the CA signed.
    Grpc,
    /// Health, metrics and the status page: a certificate is checked when
    /// given; without one only the health endpoints answer.
    Http,
}

async fn accept_one(stream: TcpStream, remote: SocketAddr, security: &Security, purpose: Purpose) -> io::Result<Conn> {
    crate::socket::tune(&stream);
    match security {
        Security::Insecure => Ok(Conn { io: Io::Plain(stream), info: PeerInfo { remote: Some(remote), caller: Caller::Insecure } }),
        Security::Tls(tls) => {
            let material = tls.material();
            let config = match purpose {
                Purpose::Grpc => &material.server,
                Purpose::Http => &material.http,
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(config));
            let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
            let caller = caller_of(&stream);
            Ok(Conn { io: Io::Tls(Box::new(stream)), info: PeerInfo { remote: Some(remote), caller } })
        }
    }
}

/// The connections `listener` accepts, ready for tonic's
/// `serve_with_incoming`. Failed handshakes are logged and skipped; the
/// stream ends when its receiver is dropped.
pub fn incoming(listener: TcpListener, security: Security) -> ReceiverStream<io::Result<Conn>> {
    incoming_for(listener, security, Purpose::Grpc)
}

/// [`incoming`] for a listener that serves `purpose`.
pub fn incoming_for(listener: TcpListener, security: Security, purpose: Purpose) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(64);
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = Arc::clone(&handshakes).acquire_owned().await else { return };
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                a = listener.accept() => a,
            };
            let (stream, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pause, don't spin.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let tx = tx.clone();
            let security = security.clone();
            tokio::spawn(async move {
                let conn = accept_one(stream, remote, &security, purpose).await;
                drop(permit);
                match conn {
                    Ok(conn) => {
                        let _ = tx.send(Ok(conn)).await;
                    }
                    // A bare TCP check (a readiness probe) is no news.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => tracing::debug!(%remote, "TLS handshake: {e}"),
                    Err(e) => tracing::warn!(%remote, "TLS handshake refused or failed: {e}"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
