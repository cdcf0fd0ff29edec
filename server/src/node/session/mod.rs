//! One device's session on this node, from `hello` to close.
//!
//! The socket is split into a [`reader`] (frames from the device, [`rate`] limited, parsed,
//! checked, handed to the pipeline) and a [`writer`] (owning the sink and the device's cursors:
//! welcome, resync, then live frames in `seq` order, gap filling). Both run in the session's
//! one task, side by side; when either ends the other is dropped. This module is the
//! lifecycle: `hello`, attach, the welcome and resync plan, and leaving. The device is attached in the registry
//! before its resync reads the store, so nothing persisted after that read can miss it.
//!
//! A session ends when its device leaves or when a close is decided for it: revoked, token
//! expired, too slow (its queue overflowed, or one write waited on it for
//! [`protocol::limits::WRITE_STALL_MS`]), too big, flooding, or the node drains. From the
//! verdict on, the reader handles nothing more (it checks before each frame, and is dropped as
//! soon as the session learns of it, even while the writer is stuck on a device that does not
//! read); the writer has [`CLOSE_WRITE`] to write why, the device [`CLOSE_LINGER`] to answer,
//! and then the connection is dropped, by a reset if the device did not take part: it is gone
//! within a second, whether or not the device reads, and a drain never waits on a writer.
//!
//! Memory per idle session is what the node pays for every connected device, so only the two
//! steady loops are awaited inline: the opening (hello, attach, summaries, welcome, resync) and
//! the closing are boxed, and the size of the task is about that of the two loops. A token's
//! expiry is enforced by the node's periodic sweep ([`super::devices::Devices::close_expired`]),
//! not by a timer per session.

mod rate;
mod reader;
mod writer;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use protocol::bus::BusKind;
use protocol::limits::{HELLO_TIMEOUT_MS, INITIAL_SYNC_EVENTS};
use protocol::model::{ConversationSummary, UserInfo};
use protocol::trace::ConnChange;
use protocol::ws::{ClientFrame, ErrorCode, Hello, ServerFrame, Welcome, close};
use protocol::{ConvId, PROTOCOL_VERSION, Seq, UserId};

use super::NodeCtx;
use super::devices::{DeviceQueue, DeviceSlot, Outbound};
use super::pipeline::{PublishJob, store_error_code, store_error_message};
use crate::auth::Principal;
use crate::conn::ConnHandle;
use crate::ids::now_ms;
use crate::recovery::presence_frame;
use reader::read_loop;
use writer::write_loop;

type Sink = SplitSink<WebSocket, Message>;
type Stream = SplitStream<WebSocket>;

/// Once a close is decided, how long the writer has to say why (an error frame, the close
/// frame): a device that does not read never lets it.
const CLOSE_WRITE: Duration = Duration::from_millis(500);
/// After the close frame, how long the device has to answer with its own.
const CLOSE_LINGER: Duration = Duration::from_millis(400);

/// Serves a device until it leaves, the node drains, or something goes wrong.
///
/// Not an `async fn`: the arguments of one stay in its future for its whole life, and the
/// socket is large. Split here, only the two small halves go into the session's future.
pub fn run(
    ctx: Arc<NodeCtx>,
    socket: WebSocket,
    conn: ConnHandle,
    who: Principal,
    reservation: Option<String>,
) -> impl std::future::Future<Output = ()> + Send {
    let (sink, stream) = socket.split();
    serve(ctx, sink, stream, conn, who, reservation)
}

async fn serve(
    ctx: Arc<NodeCtx>,
    sink: Sink,
    mut stream: Stream,
    conn: ConnHandle,
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
    let ended = {
        futures::pin_mut!(writer);
        // Reader and writer run side by side in this one task (a second task per device would
        // cost its own memory and wakeups), until the writer ends, a close is decided, or the
        // reader ends. The reader is dropped then: nothing more from this socket is handled.
        let writer_ended = {
            let reader = read_loop(&ctx, &mut stream, &slot, &who);
            futures::pin_mut!(reader);
            std::future::poll_fn(|cx| {
                if let Poll::Ready(ended) = writer.as_mut().poll(cx) {
                    return Poll::Ready(Some(ended));
                }
                if slot.queue.poll_decided(cx).is_ready() {
                    return Poll::Ready(None);
                }
                reader.as_mut().poll(cx).map(|()| None)
            })
            .await
        };
        match writer_ended {
            Some(ended) => ended,
            // A close was decided (or the reader decided one: too big, flood): the writer has
            // a moment to say why, not more.
            None if slot.queue.closing().is_some() => {
                Box::pin(tokio::time::timeout(CLOSE_WRITE, writer))
                    .await
                    .unwrap_or(Ended::Stuck)
            }
            // The device left.
            None => Ended::DeviceLeft,
        }
    };
    Box::pin(finish(ctx, slot, contacts, stream, conn, ended)).await;
}

/// How a session's socket ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    /// The node wrote its close frame.
    CloseSent,
    /// The device closed the socket, or it broke.
    DeviceLeft,
    /// The writer could not write the close frame in time: the device does not read.
    Stuck,
}

/// Ends the connection (gracefully if the device takes part, by a reset if not), then removes
/// the device from this node and the registry.
async fn finish(
    ctx: Arc<NodeCtx>,
    slot: Arc<DeviceSlot>,
    contacts: Arc<[UserId]>,
    mut stream: Stream,
    conn: ConnHandle,
    ended: Ended,
) {
    let graceful = match ended {
        Ended::CloseSent => linger(&mut stream).await,
        Ended::DeviceLeft => true,
        Ended::Stuck => false,
    };
    if !graceful {
        conn.reset_on_drop();
    }
    // The writer, and the sink with it, are gone: this closes the connection, before the
    // registry is told (which may take a while).
    drop(stream);
    leave(&ctx, &slot, &contacts).await;
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
) -> Option<(Opened, impl Future<Output = Ended> + Send + use<>)> {
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
        // The name as the store has it, not as the token says.
        let me = ctx
            .store
            .user_by_id(who.user)
            .await?
            .ok_or(crate::store::StoreError::NotFound)?;
        let conversations = ctx.store.conversations_of(who.user).await?;
        let contacts: Arc<[UserId]> = ctx.store.contacts(who.user).await?.into();
        Ok::<_, crate::store::StoreError>((me.username, conversations, contacts))
    }
    .await;
    let (username, conversations, contacts) = match setup {
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
        announce(ctx, &contacts, presence_frame(who.user, true), None);
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
            username,
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
            announce(ctx, contacts, presence_frame(slot.user, false), None);
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, user = %slot.user, "detach failed"),
    }
}

/// Delivers a live frame to local devices of `recipients` and publishes it for the others.
fn announce(ctx: &Arc<NodeCtx>, recipients: &[UserId], frame: Bytes, except: Option<u64>) {
    if recipients.is_empty() {
        return;
    }
    ctx.devices.deliver_live(recipients, &frame, except);
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

/// After the node sent its close frame, reads (and drops) what the device still sends until
/// its close frame, for [`CLOSE_LINGER`]: closing the TCP connection with unread data would
/// reset it, and the device would lose the frames that say why it was closed. `false`: the
/// device did not answer in time.
async fn linger(stream: &mut Stream) -> bool {
    tokio::time::timeout(CLOSE_LINGER, async {
        while let Some(Ok(msg)) = stream.next().await {
            if matches!(msg, Message::Close(_)) {
                return true;
            }
        }
        // The connection ended: nothing left to reset.
        true
    })
    .await
    .unwrap_or(false)
}

/// Pings and pongs a device may send before its `hello`.
const PINGS_BEFORE_HELLO: u32 = 16;

async fn read_hello(stream: &mut Stream) -> Result<Hello, (ErrorCode, String)> {
    let deadline = Duration::from_millis(HELLO_TIMEOUT_MS);
    let first = tokio::time::timeout(deadline, async {
        // Control frames before `hello` are answered but bounded: a device has nothing to
        // say before it, so a flood of pings ends the socket.
        let mut control = 0;
        loop {
            match stream.next().await {
                Some(Ok(Message::Text(t))) => return Some(t),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) if control < PINGS_BEFORE_HELLO => {
                    control += 1;
                }
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

/// Queues a frame the writer sends as it is (an error, an answer).
fn live(slot: &DeviceSlot, frame: ServerFrame) {
    slot.queue
        .push(Outbound::Live(Bytes::from(frame.to_json())));
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
}
