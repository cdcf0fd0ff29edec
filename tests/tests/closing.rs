//! A session the node decides to close — the device revoked, its token expired, the device too
//! slow — ends even when the device has stopped reading: nothing the device sends after the
//! verdict is stored, and its connection is gone (the test prints how long that took).
//!
//! The device here reads up to `synced` and never again, on a socket with a tiny receive
//! buffer, and sends messages whose echo (its own event, 16 KiB each) fills every buffer on the
//! way, so that the node's writer for it is stuck in a write.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use client::HistoryRange;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use protocol::model::{EventBody, MessageKind};
use protocol::ws::{ClientFrame, SendMessage, ServerFrame};
use protocol::{ClientMsgId, ConvId};
use tests::{PATIENCE, TestCluster, cluster_with, login, register, until_metric};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Ws = WebSocketStream<TcpStream>;

/// Messages sent to fill the buffers between the node and the deaf device: their echoes come
/// to about 6.6 MB, more than the kernel buffers both ways can hold.
const FILL: u32 = 400;

/// A device that stopped reading.
struct Deaf {
    sink: SplitSink<Ws, Message>,
    /// Never read again after `synced`, but kept: dropping it would not close the socket, yet
    /// the test keeps the connection whole on its side.
    _stream: SplitStream<Ws>,
    conv: ConvId,
    sent: u32,
}

impl Deaf {
    /// Connects with `token`, says hello, reads up to `synced`, and stops reading.
    async fn open(ws_url: &str, token: &str, conv: ConvId) -> Result<Deaf> {
        let url = reqwest::Url::parse(ws_url)?;
        let addr: SocketAddr = url
            .socket_addrs(|| None)?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("no address for {ws_url}"))?;
        let socket = TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(4096)?;
        let tcp = socket.connect(addr).await?;
        let mut req = ws_url.into_client_request()?;
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        let (ws, _) = tokio_tungstenite::client_async(req, tcp).await?;
        let (mut sink, mut stream) = ws.split();
        sink.send(Message::Text(r#"{"type":"hello","v":1}"#.into()))
            .await?;
        loop {
            let msg = tokio::time::timeout(PATIENCE, stream.next())
                .await
                .context("no synced")?;
            match msg {
                Some(Ok(Message::Text(t))) => {
                    if let ServerFrame::Synced { .. } = serde_json::from_str(t.as_str())? {
                        break;
                    }
                }
                Some(Ok(_)) => {}
                other => bail!("closed before synced: {other:?}"),
            }
        }
        Ok(Deaf {
            sink,
            _stream: stream,
            conv,
            sent: 0,
        })
    }

    /// Sends a message; an error means the connection is gone.
    async fn say(&mut self, text: String) -> Result<()> {
        self.sent += 1;
        let frame = ClientFrame::Send(SendMessage {
            conv: self.conv,
            client_id: ClientMsgId::new(format!("deaf-{}", self.sent))?,
            kind: MessageKind::Text,
            text,
            attachment: None,
            reply_to: None,
        });
        let json = serde_json::to_string(&frame)?;
        tokio::time::timeout(PATIENCE, self.sink.send(Message::Text(json.into())))
            .await
            .context("a send blocked for the whole patience")??;
        Ok(())
    }

    /// Sends enough that the node's writer for this device is stuck.
    async fn fill(&mut self) -> Result<()> {
        let big = "x".repeat(protocol::limits::MAX_TEXT_BYTES);
        for _ in 0..FILL {
            self.say(big.clone()).await?;
        }
        Ok(())
    }

    /// Keeps sending small messages (`after-N`) until the connection is gone; returns how many
    /// went out. Fails if it is still there after the patience.
    async fn until_gone(&mut self) -> Result<u32> {
        let deadline = Instant::now() + PATIENCE;
        let mut n = 0;
        while Instant::now() < deadline {
            if self.say(format!("after-{n}")).await.is_err() {
                return Ok(n);
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("still connected {PATIENCE:?} after the verdict ({n} messages sent since)")
    }
}

/// A cluster of one node, alice (who goes deaf) and bob in a direct conversation; bob's API
/// reads the history. `stall_ms`: the node's write stall limit (long, so that only the verdict
/// under test closes the session).
async fn setup(stall_ms: Option<u64>) -> Result<(TestCluster, client::Api, ConvId)> {
    let cluster = cluster_with(1, |c| {
        if let Some(ms) = stall_ms {
            c.node_args = vec!["--write-stall-ms".into(), ms.to_string()];
        }
        // A drain may wait long for devices: only the close rules bound it.
        c.node_args
            .extend(["--drain-timeout-ms".into(), "600000".into()]);
    })
    .await?;
    register(&cluster, "alice").await?;
    register(&cluster, "bob").await?;
    let bob = login(&cluster, "bob", "laptop").await?.api()?;
    let conv = bob.open_direct("alice").await?.id;
    Ok((cluster, bob, conv))
}

/// How many `after-N` messages the conversation holds.
async fn stored_after(bob: &client::Api, conv: ConvId) -> Result<usize> {
    let page = bob.history(conv, HistoryRange::Latest, Some(200)).await?;
    Ok(page
        .events
        .iter()
        .filter(|e| matches!(&e.body, EventBody::Message(m) if m.text.starts_with("after-")))
        .count())
}

/// Waits until the connection is gone, then checks that nothing sent after the verdict was
/// stored, and prints how long the connection outlived the verdict.
async fn nothing_after(
    deaf: &mut Deaf,
    bob: &client::Api,
    conv: ConvId,
    verdict: &str,
    since: Instant,
) -> Result<()> {
    let gone = deaf.until_gone().await;
    let lifetime = since.elapsed();
    let stored = stored_after(bob, conv).await?;
    let sent = gone.map_err(|e| anyhow!("{e}; {stored} of them were stored"))?;
    ensure!(
        stored == 0,
        "{stored} of {sent} messages sent after the {verdict} verdict were stored"
    );
    println!(
        "{verdict}: the connection was gone {} ms after the verdict; {sent} messages sent since, none stored",
        lifetime.as_millis()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_that_stopped_reading_is_cut_off() -> Result<()> {
    let (cluster, bob, conv) = setup(Some(600_000)).await?;
    let node = cluster.node(0)?;
    let deaf_session = login(&cluster, "alice", "deaf").await?;
    let mut deaf = Deaf::open(&node.ws_url, &deaf_session.token, conv).await?;
    deaf.fill().await?;
    let admin = login(&cluster, "alice", "admin").await?.api()?;
    admin.revoke_device(&deaf_session.device).await?;
    until_metric(
        &cluster,
        &node.http_url,
        r#"chat_sessions_closed_total{reason="revoked"}"#,
        1.0,
    )
    .await?;
    nothing_after(&mut deaf, &bob, conv, "revoked", Instant::now()).await?;
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_device_that_stopped_reading_is_cut_off() -> Result<()> {
    let (cluster, bob, conv) = setup(Some(600_000)).await?;
    let node = cluster.node(0)?;
    let session = login(&cluster, "alice", "deaf").await?;
    // A token of this device that runs out in a few seconds.
    let ttl_secs = 4;
    let issued = server::ids::now_ms();
    let short = mint(&cluster, &session, issued, ttl_secs)?;
    let mut deaf = Deaf::open(&node.ws_url, &short, conv).await?;
    deaf.fill().await?;
    until_metric(
        &cluster,
        &node.http_url,
        r#"chat_sessions_closed_total{reason="expired"}"#,
        1.0,
    )
    .await?;
    nothing_after(&mut deaf, &bob, conv, "expired", Instant::now()).await?;
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_too_slow_to_read_is_cut_off() -> Result<()> {
    let (cluster, bob, conv) = setup(None).await?;
    let node = cluster.node(0)?;
    let session = login(&cluster, "alice", "deaf").await?;
    let mut deaf = Deaf::open(&node.ws_url, &session.token, conv).await?;
    deaf.fill().await?;
    // The queue overflows, or the stuck write outlasts the stall limit: too slow either way.
    let series = r#"chat_sessions_closed_total{reason="too_slow"}"#;
    let mut filler = 0;
    while tests::metric(&cluster, &node.http_url, series).await? < 1.0 {
        deaf.say(format!("more-{filler}")).await?;
        filler += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    nothing_after(&mut deaf, &bob, conv, "too slow", Instant::now()).await?;
    cluster.shutdown().await
}

/// A node told to stop drains without waiting on a writer stuck on a device that does not
/// read: it exits by itself (before the lab's stop timeout), although its drain timeout is
/// far longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_does_not_wait_for_a_device_that_stopped_reading() -> Result<()> {
    let (mut cluster, _bob, conv) = setup(Some(600_000)).await?;
    let node = cluster.node(0)?;
    let session = login(&cluster, "alice", "deaf").await?;
    let mut deaf = Deaf::open(&node.ws_url, &session.token, conv).await?;
    deaf.fill().await?;
    let exit = cluster.stop_node(0).await?;
    println!("drain with a deaf device: {exit}");
    cluster.shutdown().await
}

/// A token for `session`'s device signed with the cluster's user-token key, issued at `issued`.
fn mint(
    cluster: &TestCluster,
    session: &client::Session,
    issued: i64,
    ttl_secs: i64,
) -> Result<String> {
    use server::auth::{KeyRing, TokenKeys};
    let ring = cluster
        .token_keys()
        .context("the lab gave the cluster its keys")?;
    let keys = TokenKeys::new(&KeyRing::parse(ring, "test keys")?);
    let record = server::store::DeviceRecord {
        user: session.user.id,
        id: session.device.clone(),
        name: "deaf".into(),
        created_at: 0,
        last_login: 0,
        state: protocol::http::DeviceInfoState::Active,
        generation: 0,
    };
    Ok(keys
        .issue(
            session.user.id,
            &session.user.username,
            &record,
            issued,
            ttl_secs,
        )?
        .0)
}
