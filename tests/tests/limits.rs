//! Connection limits against real processes: an HTTP request head must come in time, one
//! device and one user hold a bounded number of sockets on a node, and every kind of frame a
//! device sends counts against its rate.

use anyhow::{Result, anyhow, bail, ensure};
use protocol::http::ErrorBody;
use protocol::ws::{ErrorCode, close};
use tests::{Closed, PATIENCE, Raw, cluster, cluster_with, login, register};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Sends half a request head to `http_url` and waits for the server to hang up.
async fn half_a_head(http_url: &str) -> Result<()> {
    let addr = http_url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("not an http URL: {http_url}"))?;
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await?;
    let mut buf = Vec::new();
    // The head deadline is 10 s; PATIENCE (20 s) only tells "cut off" from "kept forever".
    match tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut buf)).await {
        Ok(_) => Ok(()),
        Err(_) => bail!("{http_url} kept a connection with an unfinished head open"),
    }
}

/// Neither the controller nor a node keeps a connection whose request head never ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_heads_are_cut_off() -> Result<()> {
    let cluster = cluster(1).await?;
    let node = cluster.node(0)?;
    let (a, b) = tokio::join!(
        half_a_head(cluster.controller_url()),
        half_a_head(&node.http_url)
    );
    a?;
    b?;
    cluster.shutdown().await?;
    Ok(())
}

fn refused_for_sockets(result: Result<Raw, (u16, String)>) -> Result<()> {
    match result {
        Ok(_) => bail!("a socket over the cap was opened"),
        Err((status, body)) => {
            ensure!(status == 429, "status {status}: {body}");
            let parsed: ErrorBody = serde_json::from_str(&body)?;
            ensure!(parsed.error.code == ErrorCode::RateLimited, "{body}");
            Ok(())
        }
    }
}

/// One token opens at most 4 sockets on a node, one user's devices at most the user cap; a
/// closed socket frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_per_device_and_per_user_are_capped() -> Result<()> {
    let cluster = cluster_with(1, |c| {
        c.node_args
            .extend(["--sockets-per-user".to_owned(), "6".to_owned()])
    })
    .await?;
    register(&cluster, "alice").await?;
    let ws_url = cluster.node(0)?.ws_url;
    let laptop = login(&cluster, "alice", "laptop").await?;
    let phone = login(&cluster, "alice", "phone").await?;
    let open = |token: String| {
        let ws_url = ws_url.clone();
        async move { Raw::open(&ws_url, Some(&token)).await }
    };
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(
            open(laptop.token.clone())
                .await
                .map_err(|e| anyhow!("{e:?}"))?,
        );
    }
    refused_for_sockets(open(laptop.token.clone()).await)?;
    for _ in 0..2 {
        held.push(
            open(phone.token.clone())
                .await
                .map_err(|e| anyhow!("{e:?}"))?,
        );
    }
    refused_for_sockets(open(phone.token.clone()).await)?;
    // One of the laptop's sockets ends (no hello: the node drops it at its hello timeout, or
    // at once when closed): its place is free again.
    drop(held.remove(0));
    tests::eventually("a freed place", PATIENCE, || {
        let open = open(laptop.token.clone());
        async move { open.await.ok() }
    })
    .await?;
    cluster.shutdown().await?;
    Ok(())
}

/// Floods one socket with `msg` after `hello` and returns how it ended.
async fn flood(ws_url: &str, token: &str, msg: Message) -> Result<Closed> {
    let mut raw = Raw::open(ws_url, Some(token))
        .await
        .map_err(|e| anyhow!("{e:?}"))?;
    raw.hello().await?;
    // The burst (400) and the strikes (200) are well inside this.
    for _ in 0..1_000 {
        if raw.send_message(msg.clone()).await.is_err() {
            break;
        }
    }
    raw.closed(PATIENCE).await
}

/// Pings and binary frames count against the rate like text frames: a flood of either ends
/// with close 4008.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_frame_counts_against_the_rate() -> Result<()> {
    let cluster = cluster(1).await?;
    register(&cluster, "alice").await?;
    let ws_url = cluster.node(0)?.ws_url;
    for (what, msg) in [
        ("pings", Message::Ping(vec![1u8; 8].into())),
        ("binary frames", Message::Binary(vec![0u8; 16].into())),
    ] {
        let device = login(&cluster, "alice", what).await?;
        let ended = flood(&ws_url, &device.token, msg).await?;
        ensure!(
            ended == Closed::Code(close::RATE_LIMITED),
            "a flood of {what} ended with {ended:?}"
        );
    }
    cluster.shutdown().await?;
    Ok(())
}
