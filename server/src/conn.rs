//! The TCP connections the controller and the nodes accept: small frames leave at once (no
//! Nagle delay), and a connection can be reset instead of closed.
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

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// A listener whose connections are [`Conn`]s.
pub struct Accept {
    listener: TcpListener,
}

impl Accept {
    /// Accepts on `listener`.
    pub fn new(listener: TcpListener) -> Self {
        Accept { listener }
    }
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
        let conn = Conn {
            tcp,
            reset: Arc::default(),
        };
        (conn, addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// An accepted connection.
pub struct Conn {
    tcp: TcpStream,
    /// Set by [`ConnHandle::reset_on_drop`].
    reset: Arc<AtomicBool>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.reset.load(Ordering::Relaxed) {
            // Linger 0: the close that follows (the stream's own drop) sends an RST.
            if let Err(e) = self.tcp.set_zero_linger() {
                tracing::debug!(error = %e, "could not set SO_LINGER");
            }
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
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
        let mut accept = Accept::new(TcpListener::bind("127.0.0.1:0").await?);
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
