//! A TCP proxy the lab puts between one node and its bus, so that the node's bus connection
//! can be cut for real while the node keeps running: [`CutProxy::cut`] closes every connection
//! through it and refuses new ones (each is accepted and closed at once, as a broker that went
//! away would), [`CutProxy::restore`] lets the node connect again. [`CutProxy::set_delay`]
//! holds every byte through it for a while, both ways: one uneven path, for the lessons that
//! need messages to overtake each other.
//!
//! What goes through it depends on the bus: with Redis or RabbitMQ, the node's connections to
//! the broker (its registry connection stays direct); with the embedded bus, the node's link
//! to the controller, which carries the embedded registry as well as the bus.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::LabError;

/// A proxy on a loopback port of its own towards one address. Dropping it stops it and closes
/// every connection through it.
#[derive(Debug)]
pub struct CutProxy {
    addr: SocketAddr,
    target: String,
    cut: Arc<watch::Sender<bool>>,
    delay: Arc<watch::Sender<Duration>>,
    stop: CancellationToken,
}

impl CutProxy {
    /// Listens on 127.0.0.1, port 0, and forwards to `target` (`host:port`).
    pub async fn start(target: &str) -> Result<CutProxy, LabError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| LabError::io("binding a bus proxy on 127.0.0.1", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| LabError::io("reading a bus proxy's address", e))?;
        let cut = Arc::new(watch::channel(false).0);
        let delay = Arc::new(watch::channel(Duration::ZERO).0);
        let stop = CancellationToken::new();
        tokio::spawn(accept(
            listener,
            target.to_owned(),
            cut.clone(),
            delay.clone(),
            stop.clone(),
        ));
        Ok(CutProxy {
            addr,
            target: target.to_owned(),
            cut,
            delay,
            stop,
        })
    }

    /// Where the node connects instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What it forwards to.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Closes every connection through the proxy and refuses new ones until
    /// [`CutProxy::restore`].
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Lets connections through again (the node reconnects by itself).
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }

    /// Whether it is cut.
    pub fn is_cut(&self) -> bool {
        *self.cut.borrow()
    }

    /// Holds every byte through the proxy this long before passing it on, both ways, from now
    /// on (zero: none). Bytes keep their order.
    pub fn set_delay(&self, delay: Duration) {
        self.delay.send_replace(delay);
    }

    /// The delay now.
    pub fn delay(&self) -> Duration {
        *self.delay.borrow()
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept(
    listener: TcpListener,
    target: String,
    cut: Arc<watch::Sender<bool>>,
    delay: Arc<watch::Sender<Duration>>,
    stop: CancellationToken,
) {
    loop {
        let inbound = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        let Ok((inbound, _)) = inbound else {
            continue;
        };
        if *cut.borrow() {
            // Accepted and closed at once: the node sees its broker hang up.
            drop(inbound);
            continue;
        }
        tokio::spawn(forward(
            inbound,
            target.clone(),
            cut.subscribe(),
            delay.subscribe(),
            stop.clone(),
        ));
    }
}

/// Copies both ways (each byte held for the delay) until both sides closed, the proxy is cut
/// or it stops.
async fn forward(
    inbound: TcpStream,
    target: String,
    mut cut: watch::Receiver<bool>,
    delay: watch::Receiver<Duration>,
    stop: CancellationToken,
) {
    let Ok(outbound) = TcpStream::connect(&target).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = cut.wait_for(|cut| *cut) => {}
        _ = async {
            tokio::join!(
                pump(in_read, out_write, delay.clone()),
                pump(out_read, in_write, delay),
            )
        } => {}
    }
}

/// Copies one way: each chunk read is written once the delay (as it was when the chunk was
/// read) has passed, in order.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: watch::Receiver<Duration>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let due = Instant::now() + *delay.borrow();
                    if tx.send((due, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    };
    let write = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

/// `host:port` of a URL such as `redis://127.0.0.1:6379/?prefix=x`,
/// `amqp://guest:guest@127.0.0.1:5672/%2f` or `http://127.0.0.1:4000`, and the URL with that
/// part replaced by `with`.
pub fn split_authority(url: &str, with: &str) -> Option<(String, String)> {
    let (scheme, rest) = url.split_once("://")?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    if hostport.is_empty() {
        return None;
    }
    let default_port = match scheme {
        "redis" => Some(6379),
        "amqp" => Some(5672),
        "http" => Some(80),
        _ => None,
    };
    let hostport = if hostport
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        hostport.to_owned()
    } else {
        format!("{hostport}:{}", default_port?)
    };
    let replaced = match userinfo {
        Some(u) => format!("{scheme}://{u}@{with}{tail}"),
        None => format!("{scheme}://{with}{tail}"),
    };
    Some((hostport, replaced))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn urls_are_split_and_rewritten() {
        assert_eq!(
            split_authority("redis://127.0.0.1:6379/?prefix=t:", "127.0.0.1:9"),
            Some((
                "127.0.0.1:6379".into(),
                "redis://127.0.0.1:9/?prefix=t:".into()
            ))
        );
        assert_eq!(
            split_authority(
                "amqp://guest:guest@127.0.0.1:5672/%2f?prefix=x.",
                "127.0.0.1:9"
            ),
            Some((
                "127.0.0.1:5672".into(),
                "amqp://guest:guest@127.0.0.1:9/%2f?prefix=x.".into()
            ))
        );
        assert_eq!(
            split_authority("http://127.0.0.1:4000", "127.0.0.1:9"),
            Some(("127.0.0.1:4000".into(), "http://127.0.0.1:9".into()))
        );
        assert_eq!(
            split_authority("redis://localhost", "h:1").map(|s| s.0),
            Some("localhost:6379".into())
        );
        assert_eq!(split_authority("embedded", "h:1"), None);
    }

    /// An echo server behind the proxy: bytes flow, a cut closes the connection and refuses
    /// new ones, a restore lets them through again.
    #[tokio::test]
    async fn a_cut_closes_and_refuses_until_restored() -> Result<(), Box<dyn std::error::Error>> {
        let echo = TcpListener::bind("127.0.0.1:0").await?;
        let echo_addr = echo.local_addr()?;
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let proxy = CutProxy::start(&echo_addr.to_string()).await?;
        let mut conn = TcpStream::connect(proxy.addr()).await?;
        conn.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"ping");

        proxy.cut();
        assert!(proxy.is_cut());
        let mut rest = Vec::new();
        // The proxy closes its side: the read ends (EOF or reset), it does not hang.
        let _ = conn.read_to_end(&mut rest).await;
        let mut again = TcpStream::connect(proxy.addr()).await?;
        let n = again.read(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0, "a connection while cut is closed at once");

        proxy.restore();
        let mut back = TcpStream::connect(proxy.addr()).await?;
        back.write_all(b"pong").await?;
        back.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"pong");

        // A delay holds the bytes each way, and keeps them in order.
        proxy.set_delay(Duration::from_millis(150));
        let started = std::time::Instant::now();
        back.write_all(b"ab").await?;
        back.write_all(b"cd").await?;
        back.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"abcd");
        assert!(started.elapsed() >= Duration::from_millis(300));
        Ok(())
    }
}
