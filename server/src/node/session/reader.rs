//! The session's reader: frames from the device, rate limited, parsed, checked, and handed to
//! the committer (messages, edits, deletes) or delivered live (typing, read markers).
//!
//! The reader never writes to the socket: every answer (an error, a refusal) goes through the
//! device's queue, so frames reach the device in one order, the writer's.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::Message;
use bytes::Bytes;
use futures::StreamExt;
use protocol::limits::{MAX_FRAME_BYTES, MAX_TEXT_BYTES};
use protocol::trace::ConnChange;
use protocol::ws::{ClientFrame, ErrorCode, ServerFrame};
use protocol::{ClientMsgId, ConvId, Seq};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};

use super::rate::{Admit, RateLimit};
use super::{Stream, announce, live};
use crate::auth::Principal;
use crate::ids::now_ms;
use crate::node::NodeCtx;
use crate::node::devices::{CloseReason, DeviceSlot};
use crate::node::pipeline::{AppendJob, store_error_code, store_error_message};
use crate::store::{NewBody, NewEvent};

/// A `typing: true` is forwarded at most this often per conversation.
const TYPING_EVERY: Duration = Duration::from_secs(2);

/// Reads the device's frames until it closes, breaks a limit, or the socket fails.
pub(super) async fn read_loop(
    ctx: &Arc<NodeCtx>,
    stream: &mut Stream,
    slot: &Arc<DeviceSlot>,
    who: &Principal,
) {
    let mut rate = RateLimit::new(
        ctx.limits.rate_per_sec,
        ctx.limits.rate_burst,
        ctx.limits.strikes_before_close,
    );
    let mut typing_sent: HashMap<ConvId, Instant> = HashMap::new();
    loop {
        let msg = stream.next().await;
        // A verdict (revoked, expired, too slow, draining) may have come while this waited:
        // from then on nothing from the device is handled.
        if slot.queue.closing().is_some() {
            return;
        }
        let msg = match msg {
            Some(Ok(Message::Close(_))) | None => return,
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                if too_big(&e) {
                    metrics::counter!("chat_frames_refused_total", "reason" => "too_big")
                        .increment(1);
                    live(
                        slot,
                        ServerFrame::error(
                            ErrorCode::TooLarge,
                            format!("frame larger than {MAX_FRAME_BYTES} bytes"),
                            None,
                        ),
                    );
                    slot.queue.close(CloseReason::TooBig);
                }
                return;
            }
        };
        // Every frame the device sends counts against its rate, whatever its kind: a flood of
        // pings (each answered) or of binary frames (each refused) costs the node as much as
        // one of text frames.
        match rate.admit() {
            Admit::Pass => {}
            Admit::Refuse => {
                let reference = match &msg {
                    Message::Text(text) => ClientFrame::parse(text.as_bytes())
                        .ok()
                        .and_then(|f| f.client_id().cloned()),
                    _ => None,
                };
                live(
                    slot,
                    ServerFrame::error(ErrorCode::RateLimited, "slow down", reference),
                );
                continue;
            }
            Admit::Close => {
                ctx.tracer
                    .conn(ConnChange::RateLimited, who.user, Some(&who.device));
                live(
                    slot,
                    ServerFrame::error(ErrorCode::RateLimited, "too many frames; closing", None),
                );
                slot.queue.close(CloseReason::RateLimited);
                return;
            }
        }
        let text = match msg {
            Message::Text(t) => t,
            Message::Binary(_) => {
                metrics::counter!("chat_frames_refused_total", "reason" => "binary").increment(1);
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
            // Answered by the socket itself (a ping) or proof of life (a pong).
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) => continue,
        };
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

/// Whether a read failed because the frame was over the size limit.
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

/// One parsed frame after `hello`.
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
            if !text_fits(slot, &s.text, &s.client_id) {
                return;
            }
            let body = NewBody::Message {
                kind: s.kind,
                text: s.text,
                attachment: s.attachment,
                reply_to: s.reply_to,
            };
            (s.conv, s.client_id, body)
        }
        ClientFrame::Edit(e) => {
            if !text_fits(slot, &e.text, &e.client_id) {
                return;
            }
            let body = NewBody::Edit {
                target: e.target,
                text: e.text,
            };
            (e.conv, e.client_id, body)
        }
        ClientFrame::Delete(d) => (d.conv, d.client_id, NewBody::Delete { target: d.target }),
        ClientFrame::React(r) => {
            let body = NewBody::Reaction {
                target: r.target,
                emoji: r.emoji,
                on: r.on,
            };
            (r.conv, r.client_id, body)
        }
        ClientFrame::Typing { conv, active } => {
            return typing(ctx, slot, who, conv, active, typing_sent).await;
        }
        ClientFrame::Read { conv, seq } => return read_marker(ctx, slot, who, conv, seq).await,
    };
    commit(ctx, slot, who, conv, client_id, body).await;
}

/// Whether a message's text is within the limit; refuses it (with its `client_id`) if not.
fn text_fits(slot: &DeviceSlot, text: &str, client_id: &ClientMsgId) -> bool {
    if text.len() <= MAX_TEXT_BYTES {
        return true;
    }
    live(
        slot,
        ServerFrame::error(
            ErrorCode::TooLarge,
            format!("text longer than {MAX_TEXT_BYTES} bytes"),
            Some(client_id.clone()),
        ),
    );
    false
}

/// Hands a new event to the committer, which acks it once stored.
async fn commit(
    ctx: &Arc<NodeCtx>,
    slot: &Arc<DeviceSlot>,
    who: &Principal,
    conv: ConvId,
    client_id: ClientMsgId,
    body: NewBody,
) {
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

/// `typing`: at most one "typing" per conversation every [`TYPING_EVERY`]; "stopped" always
/// goes.
async fn typing(
    ctx: &Arc<NodeCtx>,
    slot: &DeviceSlot,
    who: &Principal,
    conv: ConvId,
    active: bool,
    typing_sent: &mut HashMap<ConvId, Instant>,
) {
    let now = Instant::now();
    if active
        && typing_sent
            .get(&conv)
            .is_some_and(|t| now.duration_since(*t) < TYPING_EVERY)
    {
        return;
    }
    let frame = ServerFrame::Typing {
        conv,
        user: who.user,
        active,
    };
    // Only conversations the user is a member of enter the map: its size is bounded by
    // theirs, whatever ids the device makes up.
    if ephemeral(ctx, slot, who, conv, frame, Echo::Nobody).await {
        typing_sent.insert(conv, now);
    }
}

/// `read`: moves the user's read marker forward and tells the members.
async fn read_marker(
    ctx: &Arc<NodeCtx>,
    slot: &DeviceSlot,
    who: &Principal,
    conv: ConvId,
    seq: Seq,
) {
    match ctx.store.mark_read(conv, who.user, seq).await {
        Ok(Some(seq)) => {
            let frame = ServerFrame::Read {
                conv,
                user: who.user,
                seq,
            };
            ephemeral(ctx, slot, who, conv, frame, Echo::OtherDevices).await;
        }
        Ok(None) => {}
        Err(e) => live(
            slot,
            ServerFrame::error(store_error_code(&e), store_error_message(&e), None),
        ),
    }
}

/// Which of the sender's own devices get a typing or read frame back.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Echo {
    /// None of them (typing: only the others care).
    Nobody,
    /// The sender's other devices, not the one that sent it (a read marker).
    OtherDevices,
}

/// Typing and read markers: checked against membership, delivered live to the member
/// devices `echo` says. `false` if refused.
async fn ephemeral(
    ctx: &Arc<NodeCtx>,
    slot: &DeviceSlot,
    who: &Principal,
    conv: ConvId,
    frame: ServerFrame,
    echo: Echo,
) -> bool {
    let members = match ctx.store.recipients(conv).await {
        Ok(m) => m,
        Err(e) => {
            live(
                slot,
                ServerFrame::error(store_error_code(&e), store_error_message(&e), None),
            );
            return false;
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
        return false;
    }
    let frame = Bytes::from(frame.to_json());
    if echo == Echo::Nobody {
        let others: Vec<_> = members.iter().copied().filter(|u| *u != who.user).collect();
        announce(ctx, &others, frame, Some(slot.session));
    } else {
        announce(ctx, &members, frame, Some(slot.session));
    }
    true
}
