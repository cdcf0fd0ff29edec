//! The TCP connections the controller and the nodes accept: small frames leave at once (no
//! Nagle delay), TLS when the process has a certificate, and a connection can be reset
//! instead of closed.
//!
//! The TLS handshake runs inside the connection's first read or write, on the connection's
//! own task: the accept loop never waits for a slow client's handshake.
//!
//! A session that gives up on a device which stopped reading cannot close its connection
//! gracefully: a graceful close queues the FIN behind everything the device has not read, and
//! the kernel keeps such a connection for minutes. [`ConnHandle::reset_on_drop`] marks the
//! connection so that dropping it resets it (`SO_LINGER` 0: an RST, and whatever the device
//! had not read is dropped with it), so that it is gone at once.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use std::future::Future;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A listener whose connections are [`Conn`]s.
pub struct Accept {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
}

impl Accept {
    /// Accepts on `listener`, with TLS when `tls` is given.
    pub fn new(listener: TcpListener, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        Accept {
            listener,
            tls: tls.map(TlsAcceptor::from),
        }
    }
}

/// A server TLS configuration from PEM files: the certificate chain (leaf first) and its
/// private key.
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use anyhow::Context as _;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading the certificate {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading the certificate {}", cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "no certificate in {}", cert.display());
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the private key {}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .context("the certificate and the key do not go together")?;
    Ok(Arc::new(config))
}

/// A client TLS configuration that trusts the certificates in the PEM file `ca` and nothing
/// else (a node's link to a controller whose certificate comes from the cluster's own
/// authority).
pub fn tls_trusting(ca: &std::path::Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use anyhow::Context as _;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("reading the authority {}", ca.display()))?
    {
        roots.add(cert.with_context(|| format!("reading the authority {}", ca.display()))?)?;
    }
    anyhow::ensure!(!roots.is_empty(), "no certificate in {}", ca.display());
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Whether a process serving on `addr` without TLS should say loudly that it should not:
/// anything beyond loopback can be read on the way.
pub fn exposed_without_tls(addr: SocketAddr, tls: bool) -> bool {
    !tls && !addr.ip().is_loopback()
}

impl Listener for Accept {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        // axum's own accept loop: it retries, and waits a little when the process is out of
        // descriptors.
        let (tcp, addr) = Listener::accept(&mut self.listener).await;
        // Chat frames are small and latency matters more than packet count.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let io = match &self.tls {
            Some(acceptor) => Io::Handshake(Box::pin(acceptor.accept(tcp))),
            None => Io::Plain(tcp),
        };
        let conn = Conn {
            io,
            reset: Arc::default(),
        };
        (conn, addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// The stream under a connection.
enum Io {
    Plain(TcpStream),
    /// The TLS handshake, run by the first read or write.
    Handshake(Pin<Box<tokio_rustls::Accept<TcpStream>>>),
    Tls(Box<TlsStream<TcpStream>>),
    /// The handshake failed; every call fails.
    Failed,
}

/// An accepted connection.
pub struct Conn {
    io: Io,
    /// Set by [`ConnHandle::reset_on_drop`].
    reset: Arc<AtomicBool>,
}

impl Conn {
    /// Finishes the TLS handshake if one is under way; then the stream is readable and
    /// writable.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Io::Handshake(accept) = &mut self.io {
            match accept.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(stream)) => self.io = Io::Tls(Box::new(stream)),
                Poll::Ready(Err(e)) => {
                    metrics::counter!("chat_tls_handshakes_failed_total").increment(1);
                    self.io = Io::Failed;
                    return Poll::Ready(Err(e));
                }
            }
        }
        match self.io {
            Io::Failed => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "TLS handshake failed",
            ))),
            _ => Poll::Ready(Ok(())),
        }
    }

    fn tcp(&self) -> Option<&TcpStream> {
        match &self.io {
            Io::Plain(tcp) => Some(tcp),
            Io::Tls(tls) => Some(tls.get_ref().0),
            Io::Handshake(_) | Io::Failed => None,
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.reset.load(Ordering::Relaxed)
            && let Some(tcp) = self.tcp()
        {
            // Linger 0: the close that follows (the stream's own drop) sends an RST.
            if let Err(e) = tcp.set_zero_linger() {
                tracing::debug!(error = %e, "could not set SO_LINGER");
            }
        }
    }
}

/// Runs `$call` on the ready stream (plain or TLS) of `$self`.
macro_rules! on_stream {
    ($self:ident, $cx:ident, |$s:ident| $call:expr) => {{
        let this = $self.get_mut();
        if let Poll::Ready(Err(e)) = this.poll_ready($cx) {
            return Poll::Ready(Err(e));
        }
        match &mut this.io {
            Io::Plain($s) => {
                let $s = Pin::new($s);
                $call
            }
            Io::Tls(tls) => {
                let $s = Pin::new(tls.as_mut());
                $call
            }
            Io::Handshake(_) => Poll::Pending,
            Io::Failed => Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into())),
        }
    }};
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        on_stream!(self, cx, |s| s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        on_stream!(self, cx, |s| s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        on_stream!(self, cx, |s| s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(tcp) => tcp.is_write_vectored(),
            Io::Tls(tls) => tls.is_write_vectored(),
            Io::Handshake(_) | Io::Failed => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_stream!(self, cx, |s| s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_stream!(self, cx, |s| s.poll_shutdown(cx))
    }
}

/// What a handler knows of the connection a request came on (axum's `ConnectInfo`).
#[derive(Clone, Debug)]
pub struct Peer {
    /// The remote address.
    pub addr: SocketAddr,
    /// The connection itself.
    pub conn: ConnHandle,
}

/// A handle on an accepted connection, for whoever ends up owning it (a WebSocket session).
#[derive(Clone, Debug)]
pub struct ConnHandle {
    reset: Arc<AtomicBool>,
}

impl ConnHandle {
    /// Makes the connection's close a reset: when it is dropped, it is gone at once, whatever
    /// the peer has not read yet.
    pub fn reset_on_drop(&self) {
        self.reset.store(true, Ordering::Relaxed);
    }
}

impl Conn {
    /// A handle on this connection for its [`Peer`].
    pub fn handle(&self) -> ConnHandle {
        ConnHandle {
            reset: self.reset.clone(),
        }
    }
}

impl Connected<IncomingStream<'_, Accept>> for Peer {
    fn connect_info(stream: IncomingStream<'_, Accept>) -> Peer {
        Peer {
            addr: *stream.remote_addr(),
            conn: ConnHandle {
                reset: stream.io().reset.clone(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Accepts one connection, writes a few bytes the client has not read yet, drops it, and
    /// says how the client's reads end: the end of the stream, or an error.
    async fn how_it_ends(reset: bool) -> io::Result<Result<(), io::ErrorKind>> {
        let mut accept = Accept::new(TcpListener::bind("127.0.0.1:0").await?, None);
        let mut client = TcpStream::connect(accept.local_addr()?).await?;
        let (mut conn, _) = Listener::accept(&mut accept).await;
        if reset {
            conn.reset.store(true, Ordering::Relaxed);
        }
        conn.write_all(b"unread").await?;
        drop(conn);
        let mut buf = [0u8; 64];
        loop {
            match client.read(&mut buf).await {
                Ok(0) => return Ok(Ok(())),
                Ok(_) => continue,
                Err(e) => return Ok(Err(e.kind())),
            }
        }
    }

    #[test]
    fn only_plain_serving_beyond_loopback_is_exposed() {
        let at = |s: &str| s.parse::<SocketAddr>().expect("addr");
        assert!(exposed_without_tls(at("0.0.0.0:8080"), false));
        assert!(exposed_without_tls(at("192.168.1.2:8080"), false));
        assert!(!exposed_without_tls(at("0.0.0.0:8080"), true));
        assert!(!exposed_without_tls(at("127.0.0.1:8080"), false));
        assert!(!exposed_without_tls(at("[::1]:8080"), false));
    }

    #[tokio::test]
    async fn a_marked_connection_is_reset_and_an_unmarked_one_closed() -> io::Result<()> {
        assert_eq!(
            how_it_ends(true).await?,
            Err(io::ErrorKind::ConnectionReset)
        );
        assert_eq!(how_it_ends(false).await?, Ok(()));
        Ok(())
    }
}
