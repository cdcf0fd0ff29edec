//! Safety against real node processes: tokens are checked on every socket, non-members see
//! nothing of a conversation, and malformed, oversized or flooding input gets a clear error or
//! close code while the node keeps serving everyone else.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use client::{ClientError, ClientEvent, Draft, StopReason};
use futures::{SinkExt, StreamExt};
use protocol::http::{DeviceInfoState, ErrorBody};
use protocol::trace::{Trace, TraceEvent};
use protocol::ws::{ErrorCode, ServerFrame, close};
use protocol::{DeviceId, UserId};
use server::auth::{KeyRing, TokenKeys};
use server::store::DeviceRecord;
use tests::{Closed, Device, Incoming, PATIENCE, Raw, cluster, login, register};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn refused_with(
    result: Result<Raw, (u16, String)>,
    status: u16,
    code: ErrorCode,
) -> Result<String> {
    match result {
        Ok(_) => bail!("the node opened a socket it should have refused ({code:?})"),
        Err((got, body)) => {
            ensure!(got == status, "status {got}, wanted {status}: {body}");
            let parsed: ErrorBody = serde_json::from_str(&body)?;
            ensure!(
                parsed.error.code == code,
                "code {:?}, wanted {code:?}",
                parsed.error.code
            );
            Ok(parsed.error.message)
        }
    }
}

fn mint(
    ring: Option<&str>,
    user: UserId,
    device: &DeviceId,
    generation: i64,
    now_ms: i64,
    ttl_secs: i64,
) -> Result<String> {
    let ring = ring.context("the lab gave the cluster its keys")?;
    let keys = TokenKeys::new(&KeyRing::parse(ring, "test keys")?);
    let record = DeviceRecord {
        user,
        id: device.clone(),
        name: "forged".into(),
        created_at: 0,
        last_login: 0,
        state: DeviceInfoState::Active,
        generation,
    };
    Ok(keys.issue(user, "whoever", &record, now_ms, ttl_secs)?.0)
}

/// No token, a bad signature, an expired token and a revoked device are refused at the upgrade;
/// a revoked device's live session is closed with 4003.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_on_every_socket() -> Result<()> {
    let cluster = cluster(3).await?;
    let alice_id = register(&cluster, "alice").await?;
    let session = login(&cluster, "alice", "laptop").await?;
    let ws_url = cluster.node(0)?.ws_url.clone();
    let now = server::ids::now_ms();

    refused_with(Raw::open(&ws_url, None).await, 401, ErrorCode::Unauthorized)?;
    refused_with(
        Raw::open(&ws_url, Some("garbage")).await,
        401,
        ErrorCode::Unauthorized,
    )?;
    let forged = mint(
        Some("lab:3e8f1a6c9d2b5e7f0a4c8d1e6b9f2a5c7d0e3b8f1a4c6e9d2b7f5a0c3e8d1b6f"),
        alice_id,
        &session.device,
        0,
        now,
        3600,
    )?;
    let m = refused_with(
        Raw::open(&ws_url, Some(&forged)).await,
        401,
        ErrorCode::Unauthorized,
    )?;
    ensure!(m.contains("invalid"), "{m}");
    // The node-admission key signs no user token, though a node holds it.
    let by_node_key = mint(cluster.node_keys(), alice_id, &session.device, 0, now, 3600)?;
    refused_with(
        Raw::open(&ws_url, Some(&by_node_key)).await,
        401,
        ErrorCode::Unauthorized,
    )?;
    let expired = mint(
        cluster.token_keys(),
        alice_id,
        &session.device,
        0,
        now - 7_200_000,
        60,
    )?;
    let m = refused_with(
        Raw::open(&ws_url, Some(&expired)).await,
        401,
        ErrorCode::Unauthorized,
    )?;
    ensure!(m.contains("expired"), "{m}");
    // The right secret, a valid time, but a device that never logged in.
    let stranger = mint(
        cluster.token_keys(),
        alice_id,
        &DeviceId::new("never-logged-in")?,
        0,
        now,
        3600,
    )?;
    refused_with(
        Raw::open(&ws_url, Some(&stranger)).await,
        401,
        ErrorCode::Unauthorized,
    )?;
    // The real token works.
    let mut ok = Raw::open(&ws_url, Some(&session.token))
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    ok.hello().await?;

    // A token that runs out during its session: the node closes the socket (4001) after an
    // error frame that says why, within a heartbeat period or so.
    let short = mint(
        cluster.token_keys(),
        alice_id,
        &session.device,
        0,
        server::ids::now_ms(),
        2,
    )?;
    let mut brief = Raw::open(&ws_url, Some(&short))
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    // Its name says "whoever": the welcome names the user as the store has them.
    let frames = brief.hello().await?;
    ensure!(
        frames
            .iter()
            .any(|f| matches!(f, ServerFrame::Welcome(w) if w.user.username == "alice")),
        "the welcome took the name from the token: {frames:?}"
    );
    let said = brief
        .until(
            PATIENCE,
            |f| matches!(f, ServerFrame::Error(e) if e.code == ErrorCode::Unauthorized),
        )
        .await?;
    ensure!(format!("{said:?}").contains("expired"), "{said:?}");
    ensure!(
        brief.closed(PATIENCE).await? == Closed::Code(close::UNAUTHORIZED),
        "expired session not closed with 4001"
    );

    // Revoke a device that is connected: its session closes with 4003 and its token is dead.
    let mut phone = Device::connect(&cluster, "alice", "phone").await?;
    let phone_token = phone.session.token.clone();
    let phone_node_url = cluster
        .nodes()
        .into_iter()
        .find(|n| Some(&n.id) == phone.node().as_ref())
        .map(|n| n.ws_url)
        .ok_or_else(|| anyhow::anyhow!("phone's node not found"))?;
    let mut raw_phone = Raw::open(&phone_node_url, Some(&phone_token))
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    raw_phone.hello().await?;
    tests::Device::connect(&cluster, "alice", "admin")
        .await?
        .api()
        .revoke_device(&phone.session.device)
        .await?;
    ensure!(
        raw_phone.closed(PATIENCE).await? == Closed::Code(close::REVOKED),
        "raw session not closed with 4003"
    );
    phone
        .until("stopped as revoked", PATIENCE, |log| {
            log.iter().any(|e| matches!(e, ClientEvent::Status(s) if matches!(s, client::Status::Stopped { reason: StopReason::Revoked })))
        })
        .await?;
    refused_with(
        Raw::open(&ws_url, Some(&phone_token)).await,
        401,
        ErrorCode::Revoked,
    )?;
    // Its HTTP calls are refused too, and logging in again gives a new token, not the old one back.
    let err = phone
        .api()
        .conversations()
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("revoked token worked over HTTP"))?;
    ensure!(err.code() == Some(ErrorCode::Revoked), "{err}");
    cluster.shutdown().await?;
    Ok(())
}

/// A user who is not a member can neither send to, read the history of, fetch attachments of,
/// nor receive live events of a conversation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_members_see_nothing() -> Result<()> {
    let cluster = cluster(3).await?;
    for n in ["alice", "bob", "mallory"] {
        register(&cluster, n).await?;
    }
    let alice = Device::connect(&cluster, "alice", "laptop").await?;
    let mut bob = Device::connect(&cluster, "bob", "phone").await?;
    let mut mallory = Device::connect(&cluster, "mallory", "evil").await?;
    let dm = alice.api().open_direct("bob").await?;
    let file = alice
        .api()
        .upload(dm.id, "secret.txt", "text/plain", b"the plans".to_vec())
        .await?;
    alice
        .client
        .send_and_wait_ack(Draft::attachment(&file, "see attached"), PATIENCE)
        .await?;

    // Send: refused, nothing stored.
    match mallory
        .client
        .send_and_wait_ack(Draft::text(dm.id, "let me in"), PATIENCE)
        .await
    {
        Err(ClientError::Refused(r)) => ensure!(r.code == ErrorCode::NotMember, "{r:?}"),
        other => bail!("mallory's send was not refused as not_member: {other:?}"),
    }
    // History, members, summary, attachment: refused.
    let m = mallory.api();
    for err in [
        m.history(dm.id, client::HistoryRange::Latest, None)
            .await
            .err(),
        m.members(dm.id).await.err(),
        m.conversation(dm.id).await.err(),
        m.download(&file.id).await.err(),
    ] {
        let err = err.ok_or_else(|| anyhow::anyhow!("a non-member read the conversation"))?;
        ensure!(
            err.status() == Some(403) && err.code() == Some(ErrorCode::NotMember),
            "{err}"
        );
    }
    // Upload into it: refused.
    let err = m
        .upload(dm.id, "x.txt", "text/plain", b"x".to_vec())
        .await
        .err();
    ensure!(
        err.is_some_and(|e| e.status() == Some(403)),
        "a non-member uploaded into the conversation"
    );
    // Typing and read markers: refused.
    mallory.client.typing(dm.id, true);
    mallory
        .until("a not_member refusal of typing", PATIENCE, |log| {
            log.iter().any(|e| {
                matches!(
                    e,
                    ClientEvent::ServerError {
                        code: ErrorCode::NotMember,
                        ..
                    }
                )
            })
        })
        .await?;

    // Live events: bob gets the next message; mallory, connected all along, gets nothing of it.
    alice.say(dm.id, "for bob only").await?;
    bob.until_texts(dm.id, &["for bob only".into()], PATIENCE)
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    mallory.pump();
    ensure!(
        mallory.events(dm.id).is_empty(),
        "mallory received events of a conversation she is not in"
    );
    // The members themselves can fetch the attachment.
    let got = bob.api().download(&file.id).await?;
    ensure!(
        &got.bytes[..] == b"the plans" && got.mime == "text/plain",
        "download {:?}",
        got.mime
    );
    cluster.shutdown().await?;
    Ok(())
}

/// Malformed JSON, an unknown frame type, a frame before hello, a binary frame, an oversized
/// frame and a flood each get a clear error or close code; the node keeps serving the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_the_node_keeps_serving() -> Result<()> {
    let cluster = cluster(1).await?;
    for n in ["alice", "bob", "troll"] {
        register(&cluster, n).await?;
    }
    let alice = Device::connect(&cluster, "alice", "laptop").await?;
    let mut bob = Device::connect(&cluster, "bob", "phone").await?;
    let dm = alice.api().open_direct("bob").await?;
    let troll = login(&cluster, "troll", "script").await?;
    let ws = cluster.node(0)?.ws_url.clone();
    let open = || async {
        Raw::open(&ws, Some(&troll.token))
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))
    };

    // Before hello: refused and closed.
    let mut raw = open().await?;
    raw.send_text(r#"{"type":"send","conv":1,"client_id":"x","text":"hi"}"#)
        .await?;
    let f = raw.next_frame(PATIENCE).await?;
    ensure!(
        matches!(f, Some(ServerFrame::Error(ref e)) if e.code == ErrorCode::HelloRequired),
        "{f:?}"
    );
    ensure!(
        raw.closed(PATIENCE).await? == Closed::Code(close::PROTOCOL),
        "not closed with 4000"
    );

    // Malformed, unknown type, wrong shape, binary: an error frame each, the socket stays.
    let mut raw = open().await?;
    raw.hello().await?;
    for (input, code) in [
        ("{not json", ErrorCode::Malformed),
        (r#"{"type":"shout","loud":true}"#, ErrorCode::UnknownType),
        (r#"{"type":"send","conv":"seven"}"#, ErrorCode::Malformed),
        (r#"[1,2,3]"#, ErrorCode::Malformed),
    ] {
        raw.send_text(input).await?;
        let f = raw
            .until(PATIENCE, |f| matches!(f, ServerFrame::Error(_)))
            .await?;
        ensure!(
            matches!(&f, ServerFrame::Error(e) if e.code == code),
            "{input:?} → {f:?}"
        );
    }
    // Still serving this very socket: a proper send to a conversation it is not in is refused
    // as such (the troll is not a member), with the client id referenced.
    raw.send_text(format!(
        r#"{{"type":"send","conv":{},"client_id":"t1","text":"hi"}}"#,
        dm.id
    ))
    .await?;
    let f = raw
        .until(PATIENCE, |f| matches!(f, ServerFrame::Error(_)))
        .await?;
    ensure!(
        matches!(&f, ServerFrame::Error(e) if e.code == ErrorCode::NotMember && e.reference.as_ref().map(|r| r.as_str()) == Some("t1")),
        "{f:?}"
    );

    // Oversized: closed with 1009.
    let mut big = open().await?;
    big.hello().await?;
    let huge = format!(
        r#"{{"type":"send","conv":1,"client_id":"big","text":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    big.send_text(huge).await?;
    ensure!(
        big.closed(PATIENCE).await? == Closed::Code(close::TOO_BIG),
        "oversized frame not closed with 1009"
    );

    // Flood: rate-limited errors, then closed with 4008.
    let mut flood = open().await?;
    flood.hello().await?;
    let mut limited = 0;
    for i in 0..2_000 {
        if flood
            .send_text(format!(
                r#"{{"type":"typing","conv":{},"active":{}}}"#,
                dm.id,
                i % 2 == 0
            ))
            .await
            .is_err()
        {
            break;
        }
    }
    let mut other = Vec::new();
    let how = loop {
        match flood.next_incoming(PATIENCE).await? {
            Incoming::Frame(f) if matches!(&*f, ServerFrame::Error(e) if e.code == ErrorCode::RateLimited) => {
                limited += 1
            }
            Incoming::Frame(f) => other.push(f),
            Incoming::Closed(c) => break c,
        }
    };
    ensure!(
        limited > 0,
        "no rate_limited errors before the close ({how:?}; {} other frames, first {:?})",
        other.len(),
        other.first()
    );
    ensure!(
        how == Closed::Code(close::RATE_LIMITED),
        "flood ended with {how:?}, not 4008"
    );

    // Everyone else was served all along.
    alice.say(dm.id, "still here?").await?;
    bob.until_texts(dm.id, &["still here?".into()], PATIENCE)
        .await?;
    ensure!(
        alice.client.status().is_live() && bob.client.status().is_live(),
        "a well-behaved device lost its session"
    );
    cluster.shutdown().await?;
    Ok(())
}

/// What only the operator may see — every process's `/metrics`, each node's `/trace` — needs
/// the cluster's operator token, not a user's; `/v1/nodes` needs one or the other. The trace
/// stream takes no more than a few bytes from its reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_routes_need_the_operator_credential() -> Result<()> {
    let cluster = cluster(1).await?;
    register(&cluster, "alice").await?;
    let alice = login(&cluster, "alice", "laptop").await?;
    let node = cluster.node(0)?;
    let operator = cluster.operator_token().to_owned();
    let http = reqwest::Client::new();
    let status = |url: String, token: Option<String>| {
        let http = http.clone();
        async move {
            let mut req = http.get(url);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            Ok::<_, anyhow::Error>(req.send().await?.status().as_u16())
        }
    };
    let controller = cluster.controller_url().to_owned();
    for url in [
        format!("{controller}/metrics"),
        format!("{}/metrics", node.http_url),
    ] {
        ensure!(
            status(url.clone(), None).await? == 401,
            "{url} without a token"
        );
        ensure!(
            status(url.clone(), Some(alice.token.clone())).await? == 401,
            "{url} with a user's token"
        );
        ensure!(
            status(url.clone(), Some(operator.clone())).await? == 200,
            "{url} with the operator's token"
        );
    }
    let nodes = format!("{controller}/v1/nodes");
    ensure!(
        status(nodes.clone(), None).await? == 401,
        "/v1/nodes without a token"
    );
    ensure!(
        status(nodes.clone(), Some(alice.token.clone())).await? == 200,
        "/v1/nodes with a user's token"
    );
    ensure!(
        status(nodes, Some(operator.clone())).await? == 200,
        "/v1/nodes with the operator's token"
    );

    let trace = format!("{}/trace", node.ws_url.trim_end_matches("/ws"));
    refused_with(Raw::open(&trace, None).await, 401, ErrorCode::Unauthorized)?;
    refused_with(
        Raw::open(&trace, Some(&alice.token)).await,
        401,
        ErrorCode::Unauthorized,
    )?;
    // The operator gets the stream: a device connecting shows up on it.
    let mut req = trace.as_str().into_client_request()?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {operator}").parse()?);
    let (mut observer, _) = tokio_tungstenite::connect_async(req).await?;
    let _device =
        Device::start(alice, client::ClientState::default(), "alice/laptop".into()).await?;
    let seen = tokio::time::timeout(PATIENCE, async {
        while let Some(Ok(msg)) = observer.next().await {
            if let Message::Text(t) = msg
                && let Ok(ev) = serde_json::from_str::<TraceEvent>(t.as_str())
                && matches!(ev.what, Trace::Conn { .. })
            {
                return true;
            }
        }
        false
    })
    .await?;
    ensure!(seen, "the trace stream ended before showing the connection");
    // More than a few bytes from the observer end the stream.
    observer
        .send(Message::Text("x".repeat(1024).into()))
        .await?;
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match observer.next().await {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    ensure!(ended.is_ok(), "the trace stream took a 1 KiB frame");
    cluster.shutdown().await?;
    Ok(())
}
