//! One device's session on this node, from `hello` to close.
//!
//! The socket is split into a reader (frames from the device, rate limited, parsed, checked,
//! handed to the pipeline) and a writer (owning the sink and the device's [`Cursors`]: welcome,
//! resync, then live frames in `seq` order, gap filling). Both run in the session's one task,
//! side by side; when either ends the other is dropped. The device is attached in the registry
//! before its resync reads the store, so nothing persisted after that read can miss it.
//!
//! Memory per idle session is what the node pays for every connected device, so only the two
//! steady loops are awaited inline: the opening (hello, attach, summaries, welcome, resync) and
//! the closing are boxed, and the size of the task is about that of the two loops. A token's
//! expiry is enforced by the node's periodic sweep ([`super::devices::Devices::close_expired`]),
//! not by a timer per session.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures::future::Either;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use protocol::bus::BusKind;
use protocol::limits::{HELLO_TIMEOUT_MS, INITIAL_SYNC_EVENTS, MAX_TEXT_BYTES};
use protocol::model::{ConversationSummary, UserInfo};
use protocol::trace::{ConnChange, Hop};
use protocol::ws::{ClientFrame, ErrorCode, Hello, ServerFrame, Welcome, close};
use protocol::{ConvId, PROTOCOL_VERSION, Seq, UserId};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};

use super::NodeCtx;
use super::delivery::{Cursors, Offer};
use super::devices::{CloseReason, DeviceQueue, DeviceSlot, Outbound};
use super::pipeline::{AppendJob, PublishJob, store_error_code, store_error_message};
use crate::auth::Principal;
use crate::ids::now_ms;
use crate::recovery::presence_frame;
use crate::store::{NewBody, NewEvent, Page};

/// Events read from the store per page during a resync or a gap fill.
const REPLAY_PAGE: u32 = 500;
/// Frames written before a flush when many are ready.
const WRITE_BATCH: usize = 128;

type Sink = SplitSink<WebSocket, Message>;
type Stream = SplitStream<WebSocket>;

/// Serves a device until it leaves, the node drains, or something goes wrong.
///
/// Not an `async fn`: the arguments of one stay in its future for its whole life, and the
/// socket is large. Split here, only the two small halves go into the session's future.
pub fn run(
    ctx: Arc<NodeCtx>,
    socket: WebSocket,
    who: Principal,
    reservation: Option<String>,
) -> impl std::future::Future<Output = ()> + Send {
    let (sink, stream) = socket.split();
    serve(ctx, sink, stream, who, reservation)
}

async fn serve(
    ctx: Arc<NodeCtx>,
    sink: Sink,
    mut stream: Stream,
    who: Principal,
    reservation: Option<String>,
) {
    // Only the read loop is awaited inline: the opening (hello, attach, the store's summaries,
    // the welcome) and the closing are boxed, so that a task's memory, which is the size of its
    // largest state, is for an idle session the read loop's and little more.
    let Some(opened) = Box::pin(open(&ctx, sink, &mut stream, &who, reservation)).await else {
        return;
    };
    let (Opened { slot, contacts }, writer) = opened;
    {
        // Reader and writer run side by side in this one task: when one ends, the other is
        // dropped (a second task per device would cost its own memory and wakeups).
        let reader = read_loop(&ctx, &mut stream, &slot, &who);
        futures::pin_mut!(reader, writer);
        if let Either::Left(((), writer)) = futures::future::select(reader, writer).await {
            // The reader asked for a close with a code (too big, flood): let the writer send it.
            if slot.queue.closing().is_some() {
                let _ = Box::pin(tokio::time::timeout(Duration::from_secs(2), writer)).await;
            }
        }
    }
    Box::pin(async move {
        if slot.queue.closing().is_some() {
            linger(&mut stream).await;
        }
        leave(&ctx, &slot, &contacts).await;
    })
    .await;
}

/// A session past its welcome: the device is attached.
struct Opened {
    slot: Arc<DeviceSlot>,
    contacts: Arc<[UserId]>,
}

/// Hello, attach, the summaries and presence, then the writer (not started) with the welcome
/// and the resync plan. `None`: the device was refused or the store failed, and the socket is
/// closed.
async fn open(
    ctx: &Arc<NodeCtx>,
    mut sink: Sink,
    stream: &mut Stream,
    who: &Principal,
    reservation: Option<String>,
) -> Option<(Opened, impl Future<Output = ()> + Send + use<>)> {
    let hello = match read_hello(stream).await {
        Ok(h) => h,
        Err((code, message)) => {
            let _ = sink
                .send(text(
                    ServerFrame::error(code, message.clone(), None).to_json(),
                ))
                .await;
            let _ = sink.send(close_msg(close::PROTOCOL, &message)).await;
            return None;
        }
    };
    let session = ctx.sessions.fetch_add(1, Ordering::Relaxed);
    let slot = Arc::new(DeviceSlot {
        session,
        user: who.user,
        device: who.device.clone(),
        expires_at: who.expires_at,
        queue: DeviceQueue::new(ctx.limits.queue_frames),
    });
    // Attach first (so that routing finds this node), then read the store.
    ctx.devices.add(slot.clone());
    metrics::gauge!("chat_connections").set(ctx.devices.count() as f64);
    let first = match ctx
        .router
        .registry
        .attach(&ctx.id, who.user, reservation.as_deref())
        .await
    {
        Ok(first) => first,
        Err(e) => {
            tracing::warn!(error = %e, user = %who.user, "attach failed; presence not announced");
            false
        }
    };
    ctx.tracer
        .conn(ConnChange::Connected, who.user, Some(&who.device));

    let setup = async {
        let conversations = ctx.store.conversations_of(who.user).await?;
        let contacts: Arc<[UserId]> = ctx.store.contacts(who.user).await?.into();
        Ok::<_, crate::store::StoreError>((conversations, contacts))
    }
    .await;
    let (conversations, contacts) = match setup {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "session setup failed");
            let _ = sink
                .send(text(
                    ServerFrame::error(store_error_code(&e), store_error_message(&e), None)
                        .to_json(),
                ))
                .await;
            let _ = sink
                .send(close_msg(close::INTERNAL, "store unavailable"))
                .await;
            leave(ctx, &slot, &[]).await;
            return None;
        }
    };
    let presence = match ctx.router.registry.online(&contacts).await {
        Ok(online) => contacts
            .iter()
            .map(|u| protocol::model::PresenceState {
                user: *u,
                online: online.contains(u),
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    if first {
        ctx.tracer.conn(ConnChange::Online, who.user, None);
        announce(ctx, &contacts, presence_frame(who.user, true));
    }

    // Plan the resync, then let the welcome take the summaries: nothing of the hello or the
    // summaries stays allocated for the life of an idle session.
    let plan = resync_plan(&hello, &conversations);
    drop(hello);
    let welcome = ServerFrame::Welcome(Welcome {
        v: PROTOCOL_VERSION,
        node: ctx.id.clone(),
        user: UserInfo {
            id: who.user,
            username: who.username.clone(),
        },
        device: who.device.clone(),
        conversations,
        presence,
        server_time: now_ms(),
    })
    .to_json();

    let writer = write_loop(ctx.clone(), sink, slot.clone(), welcome, plan);
    Some((Opened { slot, contacts }, writer))
}

/// Removes the device from this node and the registry; announces "offline" if it was the
/// user's last device anywhere.
async fn leave(ctx: &Arc<NodeCtx>, slot: &DeviceSlot, contacts: &[UserId]) {
    ctx.devices.remove(slot.user, slot.session);
    metrics::gauge!("chat_connections").set(ctx.devices.count() as f64);
    ctx.tracer
        .conn(ConnChange::Gone, slot.user, Some(&slot.device));
    match ctx.router.registry.detach(&ctx.id, slot.user).await {
        Ok(true) => {
            ctx.tracer.conn(ConnChange::Offline, slot.user, None);
            announce(ctx, contacts, presence_frame(slot.user, false));
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, user = %slot.user, "detach failed"),
    }
}

/// Delivers a live frame to local devices of `recipients` and publishes it for the others.
fn announce(ctx: &Arc<NodeCtx>, recipients: &[UserId], frame: Bytes) {
    if recipients.is_empty() {
        return;
    }
    ctx.devices.deliver_live(recipients, &frame);
    let job = PublishJob {
        recipients: recipients.into(),
        kind: BusKind::Live,
        frame,
        at: now_ms(),
    };
    if ctx.publish.try_send(job).is_err() {
        metrics::counter!("chat_live_dropped_total").increment(1);
    }
}

/// After the node closed a socket, reads (and drops) what the device still sends until its
/// close frame, for a moment: closing the TCP connection with unread data would reset it, and
/// the device would lose the frames that say why it was closed.
async fn linger(stream: &mut Stream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(msg)) = stream.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

async fn read_hello(stream: &mut Stream) -> Result<Hello, (ErrorCode, String)> {
    let deadline = Duration::from_millis(HELLO_TIMEOUT_MS);
    let first = tokio::time::timeout(deadline, async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Text(t))) => return Some(t),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                _ => return None,
            }
        }
    })
    .await;
    let text = match first {
        Ok(Some(t)) => t,
        Ok(None) => return Err((ErrorCode::HelloRequired, "closed before hello".into())),
        Err(_) => return Err((ErrorCode::HelloRequired, "no hello in time".into())),
    };
    match ClientFrame::parse(text.as_bytes()) {
        Ok(ClientFrame::Hello(h)) if h.v == PROTOCOL_VERSION => Ok(h),
        Ok(ClientFrame::Hello(h)) => Err((
            ErrorCode::UnsupportedVersion,
            format!(
                "protocol version {} is not supported (this node speaks {PROTOCOL_VERSION})",
                h.v
            ),
        )),
        Ok(_) => Err((
            ErrorCode::HelloRequired,
            "the first frame must be hello".into(),
        )),
        Err(e) => Err((e.code(), e.to_string())),
    }
}

/// For each conversation, the `seq` after which to replay.
fn resync_plan(hello: &Hello, conversations: &[ConversationSummary]) -> Vec<(ConvId, Seq, Seq)> {
    let cursors: HashMap<ConvId, Seq> = hello.cursors.iter().map(|c| (c.conv, c.seq)).collect();
    conversations
        .iter()
        .map(|c| {
            let from = match cursors.get(&c.id) {
                Some(s) => (*s).min(c.last_seq),
                None => c.last_seq.saturating_sub(u64::from(INITIAL_SYNC_EVENTS)),
            };
            (c.id, from, c.last_seq)
        })
        .collect()
}

/// A token bucket: `rate` frames per second, bursts of `burst`.
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u32, burst: u32) -> Self {
        Bucket {
            tokens: f64::from(burst),
            rate: f64::from(rate),
            burst: f64::from(burst),
            last: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn live(slot: &DeviceSlot, frame: ServerFrame) {
    slot.queue
        .push(Outbound::Live(Bytes::from(frame.to_json())));
}

async fn read_loop(
    ctx: &Arc<NodeCtx>,
    stream: &mut Stream,
    slot: &Arc<DeviceSlot>,
    who: &Principal,
) {
    let mut bucket = Bucket::new(ctx.limits.rate_per_sec, ctx.limits.rate_burst);
    let mut strikes = 0u32;
    let mut typing_sent: HashMap<ConvId, Instant> = HashMap::new();
    loop {
        let msg = stream.next().await;
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Binary(_))) => {
                live(
                    slot,
                    ServerFrame::error(
                        ErrorCode::Malformed,
                        "binary frames are not accepted; send JSON text",
                        None,
                    ),
                );
                continue;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(_))) | None => return,
            Some(Err(e)) => {
                if too_big(&e) {
                    metrics::counter!("chat_frames_refused_total", "reason" => "too_big")
                        .increment(1);
                    slot.queue.push(Outbound::Live(Bytes::from(
                        ServerFrame::error(
                            ErrorCode::TooLarge,
                            format!(
                                "frame larger than {} bytes",
                                protocol::limits::MAX_FRAME_BYTES
                            ),
                            None,
                        )
                        .to_json(),
                    )));
                    ctx_close(slot, close::TOO_BIG);
                }
                return;
            }
        };
        if !bucket.take() {
            strikes += 1;
            metrics::counter!("chat_frames_refused_total", "reason" => "rate").increment(1);
            if strikes >= ctx.limits.strikes_before_close {
                ctx.tracer
                    .conn(ConnChange::RateLimited, who.user, Some(&who.device));
                live(
                    slot,
                    ServerFrame::error(ErrorCode::RateLimited, "too many frames; closing", None),
                );
                ctx_close(slot, close::RATE_LIMITED);
                return;
            }
            let reference = ClientFrame::parse(text.as_bytes())
                .ok()
                .and_then(|f| f.client_id().cloned());
            live(
                slot,
                ServerFrame::error(ErrorCode::RateLimited, "slow down", reference),
            );
            continue;
        }
        let frame = match ClientFrame::parse(text.as_bytes()) {
            Ok(f) => f,
            Err(e) => {
                metrics::counter!("chat_frames_refused_total", "reason" => "malformed")
                    .increment(1);
                live(slot, ServerFrame::error(e.code(), e.to_string(), None));
                continue;
            }
        };
        Box::pin(handle(ctx, slot, who, frame, &mut typing_sent)).await;
    }
}

/// Asks the writer to close the socket with `code` (used for protocol violations).
fn ctx_close(slot: &DeviceSlot, code: u16) {
    let reason = match code {
        close::TOO_BIG => CloseReason::TooBig,
        close::RATE_LIMITED => CloseReason::RateLimited,
        _ => CloseReason::TooSlow,
    };
    slot.queue.close(reason);
}

fn too_big(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(ws) = err.downcast_ref::<WsError>() {
            return matches!(ws, WsError::Capacity(CapacityError::MessageTooLong { .. }));
        }
        source = err.source();
    }
    e.to_string().contains("Message too long")
}

async fn handle(
    ctx: &Arc<NodeCtx>,
    slot: &Arc<DeviceSlot>,
    who: &Principal,
    frame: ClientFrame,
    typing_sent: &mut HashMap<ConvId, Instant>,
) {
    metrics::counter!("chat_frames_in_total").increment(1);
    let (conv, client_id, body) = match frame {
        ClientFrame::Hello(_) => {
            live(
                slot,
                ServerFrame::error(ErrorCode::HelloRequired, "hello was already said", None),
            );
            return;
        }
        ClientFrame::Send(s) => {
            if s.text.len() > MAX_TEXT_BYTES {
                live(
                    slot,
                    ServerFrame::error(
                        ErrorCode::TooLarge,
                        format!("text longer than {MAX_TEXT_BYTES} bytes"),
                        Some(s.client_id),
                    ),
                );
                return;
            }
            (
                s.conv,
                s.client_id,
                NewBody::Message {
                    kind: s.kind,
                    text: s.text,
                    attachment: s.attachment,
                    reply_to: s.reply_to,
                },
            )
        }
        ClientFrame::Edit(e) => {
            if e.text.len() > MAX_TEXT_BYTES {
                live(
                    slot,
                    ServerFrame::error(
                        ErrorCode::TooLarge,
                        format!("text longer than {MAX_TEXT_BYTES} bytes"),
                        Some(e.client_id),
                    ),
                );
                return;
            }
            (
                e.conv,
                e.client_id,
                NewBody::Edit {
                    target: e.target,
                    text: e.text,
                },
            )
        }
        ClientFrame::Delete(d) => (d.conv, d.client_id, NewBody::Delete { target: d.target }),
        ClientFrame::Typing { conv, active } => {
            // At most one "typing" per conversation every 2 s; "stopped" always goes.
            let now = Instant::now();
            if active
                && typing_sent
                    .get(&conv)
                    .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(2))
            {
                return;
            }
            typing_sent.insert(conv, now);
            ephemeral(
                ctx,
                slot,
                who,
                conv,
                ServerFrame::Typing {
                    conv,
                    user: who.user,
                    active,
                },
            )
            .await;
            return;
        }
        ClientFrame::Read { conv, seq } => {
            match ctx.store.mark_read(conv, who.user, seq).await {
                Ok(Some(seq)) => {
                    ephemeral(
                        ctx,
                        slot,
                        who,
                        conv,
                        ServerFrame::Read {
                            conv,
                            user: who.user,
                            seq,
                        },
                    )
                    .await;
                }
                Ok(None) => {}
                Err(e) => live(
                    slot,
                    ServerFrame::error(store_error_code(&e), store_error_message(&e), None),
                ),
            }
            return;
        }
    };
    let event = NewEvent {
        conv,
        id: ctx.ids.next(),
        at: now_ms(),
        sender: who.user,
        device: Some(who.device.clone()),
        client_id: Some(client_id.clone()),
        body,
        origin: ctx.id.clone(),
    };
    let job = AppendJob {
        event,
        from: slot.clone(),
        client_id,
    };
    if ctx.commit.send(job).await.is_err() {
        live(
            slot,
            ServerFrame::error(
                ErrorCode::Unavailable,
                "node is stopping; resend elsewhere",
                None,
            ),
        );
    }
}

/// Typing and read markers: checked against membership, delivered live to every member device.
async fn ephemeral(
    ctx: &Arc<NodeCtx>,
    slot: &DeviceSlot,
    who: &Principal,
    conv: ConvId,
    frame: ServerFrame,
) {
    let members = match ctx.store.recipients(conv).await {
        Ok(m) => m,
        Err(e) => {
            live(
                slot,
                ServerFrame::error(store_error_code(&e), store_error_message(&e), None),
            );
            return;
        }
    };
    if !members.contains(&who.user) {
        live(
            slot,
            ServerFrame::error(
                ErrorCode::NotMember,
                "not a member of that conversation",
                None,
            ),
        );
        return;
    }
    announce(ctx, &members, Bytes::from(frame.to_json()));
}

fn text(s: String) -> Message {
    Message::Text(Utf8Bytes::from(s))
}

fn close_msg(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    }))
}

/// Writes frames to the device: welcome, resync, synced, then the queue, in order.
async fn write_loop(
    ctx: Arc<NodeCtx>,
    mut sink: Sink,
    slot: Arc<DeviceSlot>,
    welcome: String,
    plan: Vec<(ConvId, Seq, Seq)>,
) {
    let mut cursors = Cursors::default();
    // The welcome and the resync are boxed (see `serve`): the idle state is the live loop's.
    let opened = Box::pin(write_opening(
        &ctx,
        &mut sink,
        &slot,
        &mut cursors,
        welcome,
        plan,
    ))
    .await;
    let result = match opened {
        Ok(true) => live_loop(&ctx, &mut sink, &slot, &mut cursors).await,
        Ok(false) => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "device socket closed");
    }
}

/// The welcome, the resync and `synced`. `Ok(false)`: the store failed during the resync and
/// the socket was closed.
async fn write_opening(
    ctx: &Arc<NodeCtx>,
    sink: &mut Sink,
    slot: &DeviceSlot,
    cursors: &mut Cursors,
    welcome: String,
    plan: Vec<(ConvId, Seq, Seq)>,
) -> Result<bool, axum::Error> {
    sink.feed(text(welcome)).await?;
    let replayed = match replay(ctx, sink, slot, cursors, plan).await? {
        Ok(n) => n,
        Err(e) => {
            sink.feed(text(
                ServerFrame::error(store_error_code(&e), store_error_message(&e), None).to_json(),
            ))
            .await?;
            sink.send(close_msg(
                close::INTERNAL,
                "store unavailable during resync",
            ))
            .await?;
            return Ok(false);
        }
    };
    metrics::counter!("chat_replayed_events_total").increment(replayed);
    sink.send(text(ServerFrame::Synced { replayed }.to_json()))
        .await?;
    Ok(true)
}

/// Writes, for each `(conv, after, upto)`, the events `after < seq <= upto` from the store, and
/// moves the device's positions. The outer error is the socket's, the inner the store's.
async fn replay(
    ctx: &Arc<NodeCtx>,
    sink: &mut Sink,
    slot: &DeviceSlot,
    cursors: &mut Cursors,
    plan: Vec<(ConvId, Seq, Seq)>,
) -> Result<Result<u64, crate::store::StoreError>, axum::Error> {
    let mut replayed = 0u64;
    for (conv, from, upto) in plan {
        if cursors.get(conv).is_none_or(|c| c < from) {
            cursors.set(conv, from);
        }
        let mut after = cursors.get(conv).unwrap_or(from);
        while after < upto {
            let events = match ctx
                .store
                .events(conv, Page::After(after), REPLAY_PAGE)
                .await
            {
                Ok((events, _)) => events,
                Err(e) => return Ok(Err(e)),
            };
            if events.is_empty() {
                break;
            }
            for ev in events {
                after = ev.seq;
                if ev.seq > upto {
                    break;
                }
                ctx.tracer.hop(
                    Hop::Replayed,
                    ev.id,
                    conv,
                    ev.seq,
                    Some(slot.user),
                    Some(&slot.device),
                    vec![],
                );
                cursors.set(conv, ev.seq);
                sink.feed(text(ServerFrame::Event(ev).to_json())).await?;
                replayed += 1;
            }
            sink.flush().await?;
        }
    }
    Ok(Ok(replayed))
}

/// After the bus was down: compares the device's positions with the store's heads and writes
/// what it lacks, then whatever was buffered behind it.
async fn catch_up(
    ctx: &Arc<NodeCtx>,
    sink: &mut Sink,
    slot: &DeviceSlot,
    cursors: &mut Cursors,
) -> Result<(), axum::Error> {
    let conversations = match ctx.store.conversations_of(slot.user).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "catch-up after a bus outage failed; the next gap or resync covers it");
            return Ok(());
        }
    };
    let plan: Vec<(ConvId, Seq, Seq)> = conversations
        .iter()
        .filter_map(|c| {
            let from = cursors
                .get(c.id)
                .unwrap_or_else(|| c.last_seq.saturating_sub(u64::from(INITIAL_SYNC_EVENTS)));
            (from < c.last_seq).then_some((c.id, from, c.last_seq))
        })
        .collect();
    let convs: Vec<ConvId> = plan.iter().map(|p| p.0).collect();
    if let Ok(n) = replay(ctx, sink, slot, cursors, plan).await? {
        metrics::counter!("chat_caught_up_events_total").increment(n);
    }
    let mut out = Vec::new();
    for conv in convs {
        cursors.fill(conv, Vec::new(), &mut out);
    }
    for b in out {
        let t = Utf8Bytes::try_from(b).map_err(axum::Error::new)?;
        sink.feed(Message::Text(t)).await?;
    }
    sink.flush().await
}

async fn live_loop(
    ctx: &Arc<NodeCtx>,
    sink: &mut Sink,
    slot: &Arc<DeviceSlot>,
    cursors: &mut Cursors,
) -> Result<(), axum::Error> {
    let mut items: Vec<Outbound> = Vec::new();
    let mut out: Vec<Bytes> = Vec::new();
    // Armed only while an early event waits for the ones before it (rare): boxed, so that an
    // idle session does not carry a timer.
    let mut gap_timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        match cursors.next_deadline().map(tokio::time::Instant::from_std) {
            Some(at) => match gap_timer.as_mut() {
                Some(t) => t.as_mut().reset(at),
                None => gap_timer = Some(Box::pin(tokio::time::sleep_until(at))),
            },
            None => gap_timer = None,
        }
        tokio::select! {
            _ = slot.queue.ready() => {}
            _ = async { match gap_timer.as_mut() {
                Some(t) => t.as_mut().await,
                None => std::future::pending().await,
            } } => {}
        }
        if let Some(reason) = slot.queue.closing() {
            return Box::pin(close_for(ctx, sink, slot, reason)).await;
        }
        slot.queue.take_all(&mut items);
        let now = Instant::now();
        let mut crash_after = false;
        let mut catch_up_now = false;
        for item in items.drain(..) {
            match item {
                Outbound::Resync => catch_up_now = true,
                Outbound::Live(b) => out.push(b),
                Outbound::AckThenCrash(b) => {
                    out.push(b);
                    crash_after = true;
                }
                Outbound::Event(ev) => {
                    if !cursors.knows(ev.conv) {
                        // A conversation this session did not have: start where the user joined
                        // (or just before this event if the store cannot say).
                        let start = match ctx.store.joined_seq(ev.conv, slot.user).await {
                            Ok(Some(j)) => j.saturating_sub(1).min(ev.seq - 1),
                            _ => ev.seq - 1,
                        };
                        cursors.set(ev.conv, start);
                    }
                    let before = out.len();
                    match cursors.offer(ev.conv, ev.seq, ev.frame.clone(), now, &mut out) {
                        Offer::Duplicate => {
                            metrics::counter!("chat_duplicates_dropped_total").increment(1)
                        }
                        Offer::Buffered => {
                            metrics::counter!("chat_events_buffered_total").increment(1)
                        }
                        Offer::Written(_) => {
                            if ctx.tracer.enabled() {
                                ctx.tracer.hop(
                                    Hop::Delivered,
                                    ev.id,
                                    ev.conv,
                                    ev.seq,
                                    Some(slot.user),
                                    Some(&slot.device),
                                    vec![],
                                );
                            }
                            metrics::counter!("chat_events_written_total")
                                .increment((out.len() - before) as u64);
                        }
                    }
                }
            }
        }
        for (conv, after, upto) in cursors.due_gaps(now) {
            let fetched = match ctx
                .store
                .events(
                    conv,
                    Page::After(after),
                    (upto - after - 1).min(u64::from(REPLAY_PAGE)) as u32,
                )
                .await
            {
                Ok((events, _)) => events,
                Err(e) => {
                    tracing::warn!(error = %e, "gap fill failed; retrying later");
                    continue;
                }
            };
            metrics::counter!("chat_gap_fills_total").increment(1);
            let frames = fetched
                .into_iter()
                .filter(|e| e.seq < upto)
                .map(|e| {
                    ctx.tracer.hop(
                        Hop::GapFilled,
                        e.id,
                        conv,
                        e.seq,
                        Some(slot.user),
                        Some(&slot.device),
                        vec![],
                    );
                    (e.seq, Bytes::from(ServerFrame::Event(e).to_json()))
                })
                .collect();
            cursors.fill(conv, frames, &mut out);
        }
        for chunk in out.chunks(WRITE_BATCH) {
            for b in chunk {
                let t = Utf8Bytes::try_from(b.clone()).map_err(axum::Error::new)?;
                sink.feed(Message::Text(t)).await?;
            }
            sink.flush().await?;
        }
        out.clear();
        if catch_up_now {
            Box::pin(catch_up(ctx, sink, slot, cursors)).await?;
        }
        if crash_after {
            tracing::error!("fault injection: aborting the process after an ack");
            std::process::abort();
        }
    }
}

async fn close_for(
    ctx: &Arc<NodeCtx>,
    sink: &mut Sink,
    slot: &DeviceSlot,
    reason: CloseReason,
) -> Result<(), axum::Error> {
    let (code, why, change) = match reason {
        CloseReason::Moving => {
            sink.feed(text(
                ServerFrame::Moving {
                    reason: "node is shutting down".into(),
                }
                .to_json(),
            ))
            .await?;
            (close::SERVICE_RESTART, "node draining", None)
        }
        CloseReason::Revoked => {
            sink.feed(text(
                ServerFrame::error(ErrorCode::Revoked, "this device was revoked", None).to_json(),
            ))
            .await?;
            (close::REVOKED, "device revoked", Some(ConnChange::Revoked))
        }
        CloseReason::Expired => {
            sink.feed(text(
                ServerFrame::error(ErrorCode::Unauthorized, "token expired; log in again", None)
                    .to_json(),
            ))
            .await?;
            (close::UNAUTHORIZED, "token expired", None)
        }
        CloseReason::TooSlow => (
            close::TOO_SLOW,
            "too slow: reconnect and resync",
            Some(ConnChange::TooSlow),
        ),
        CloseReason::TooBig => {
            flush_live(sink, slot).await?;
            (close::TOO_BIG, "frame too big", None)
        }
        CloseReason::RateLimited => {
            flush_live(sink, slot).await?;
            (
                close::RATE_LIMITED,
                "rate limited",
                Some(ConnChange::RateLimited),
            )
        }
    };
    if let Some(change) = change {
        ctx.tracer.conn(change, slot.user, Some(&slot.device));
    }
    sink.send(close_msg(code, why)).await
}

/// Writes the error frames queued before a protocol close, so the device learns why.
async fn flush_live(sink: &mut Sink, slot: &DeviceSlot) -> Result<(), axum::Error> {
    let mut items = Vec::new();
    slot.queue.take_all(&mut items);
    for item in items {
        if let Outbound::Live(b) = item {
            let t = Utf8Bytes::try_from(b).map_err(axum::Error::new)?;
            sink.feed(Message::Text(t)).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::model::ConvKind;
    use protocol::ws::Cursor;

    fn summary(id: i64, last_seq: Seq) -> ConversationSummary {
        ConversationSummary {
            id: ConvId(id),
            kind: ConvKind::Room,
            name: "r".into(),
            peer: None,
            public: false,
            member_count: 2,
            last_seq,
            last_message: None,
            read_seq: 0,
            unread: 0,
            peer_read_seq: None,
            created_at: 0,
        }
    }

    #[test]
    fn resync_starts_at_the_cursor_or_the_recent_window() {
        let hello = Hello {
            v: 1,
            cursors: vec![
                Cursor {
                    conv: ConvId(1),
                    seq: 40,
                },
                Cursor {
                    conv: ConvId(2),
                    seq: 900,
                },
            ],
        };
        let plan = resync_plan(
            &hello,
            &[
                summary(1, 100),
                summary(2, 80),
                summary(3, 500),
                summary(4, 10),
            ],
        );
        assert_eq!(
            plan,
            vec![
                (ConvId(1), 40, 100),
                (ConvId(2), 80, 80),
                (ConvId(3), 500 - u64::from(INITIAL_SYNC_EVENTS), 500),
                (ConvId(4), 0, 10),
            ]
        );
    }

    #[test]
    fn bucket_allows_bursts_then_the_rate() {
        let mut b = Bucket::new(10, 5);
        assert!((0..5).all(|_| b.take()));
        assert!(!b.take());
    }
}
