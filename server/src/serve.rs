//! The HTTP server loop of the controller and the nodes: accepts connections
//! ([`crate::conn::Accept`]) and serves each with hyper, with the deadline axum's own `serve`
//! does not set: a request's head (HTTP/1) must be complete within [`HEAD_TIMEOUT`] of its
//! first byte, and a kept-alive connection that sends no new request for as long is closed.
//! Without it, a client that never finishes its header holds a connection and its task for
//! as long as it likes.
//!
//! Stopping: once `stop` is cancelled nothing more is accepted, every connection still
//! serving HTTP is asked to finish its request and close, and [`serve`] returns when they
//! have. Upgraded connections (WebSockets) belong to their sessions by then.

use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::conn::{Accept, Peer};

/// Time a client has to send a whole request head, and that a kept-alive connection may sit
/// idle between requests.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` on `accept` until `stop` is cancelled and the connections have closed; a
/// request head must come within `head_timeout` ([`HEAD_TIMEOUT`] but in tests).
pub async fn serve(
    mut accept: Accept,
    app: Router,
    head_timeout: Duration,
    stop: CancellationToken,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout);
    // WebSockets over HTTP/2 (RFC 8441), as axum's own server allows.
    builder.http2().enable_connect_protocol();
    let graceful = GracefulShutdown::new();
    loop {
        let (conn, addr) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = Listener::accept(&mut accept) => accepted,
        };
        let peer = Peer {
            addr,
            conn: conn.handle(),
        };
        let app = app.clone();
        // What axum's `into_make_service_with_connect_info` does: each request carries the
        // connection's `Peer`.
        let service = tower::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer.clone()));
            app.clone().oneshot(req.map(axum::body::Body::new))
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(conn), TowerToHyperService::new(service))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::trace!(error = %e, %addr, "connection ended with an error");
            }
        });
    }
    drop(accept);
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// A connection that sends half a header is closed at the deadline.
    #[tokio::test]
    async fn an_unfinished_head_is_cut_off() -> std::io::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let app = Router::new().route("/", get(|| async { "ok" }));
        let limit = Duration::from_millis(300);
        let server = tokio::spawn(serve(Accept::new(listener, None), app, limit, stop.clone()));
        let mut tcp = TcpStream::connect(addr).await?;
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await?;
        let mut buf = Vec::new();
        // Generous: only "closed at some point" versus "never closed" matters.
        let read = tokio::time::timeout(limit * 50, tcp.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "the connection outlived the head deadline");
        // A whole request is served as before.
        let mut tcp = TcpStream::connect(addr).await?;
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        tcp.read_to_end(&mut buf).await?;
        assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
        stop.cancel();
        server.await?;
        Ok(())
    }
}
