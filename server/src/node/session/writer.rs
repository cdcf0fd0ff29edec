//! The session's writer: it owns the socket's sink and the device's [`Cursors`], and writes
//! the welcome, the resync and `synced`, then the device's queue in order (events in `seq`
//! order, gaps filled from the store), and finally the close frame the session was asked for.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::{Message, Utf8Bytes};
use bytes::Bytes;
use futures::SinkExt;
use protocol::limits::INITIAL_SYNC_EVENTS;
use protocol::teaching::Teaching;
use protocol::trace::{ConnChange, Hop};
use protocol::ws::{ErrorCode, ServerFrame, close};
use protocol::{ConvId, Seq};

use super::{Ended, Sink, close_msg, text};
use crate::ids::now_ms;
use crate::node::NodeCtx;
use crate::node::delivery::{Cursors, Offer};
use crate::node::devices::{CloseReason, DeviceSlot, Outbound};
use crate::node::pipeline::{store_error_code, store_error_message};
use crate::store::Page;

/// Events read from the store per page during a resync or a gap fill.
const REPLAY_PAGE: u32 = 500;
/// Frames written before a flush when many are ready.
const WRITE_BATCH: usize = 128;

/// Writes frames to the device: welcome, resync, synced, then the queue, in order.
pub(super) async fn write_loop(
    ctx: Arc<NodeCtx>,
    mut sink: Sink,
    slot: Arc<DeviceSlot>,
    welcome: String,
    plan: Vec<(ConvId, Seq, Seq)>,
) -> Ended {
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
    match result {
        Ok(()) => Ended::CloseSent,
        Err(e) => {
            tracing::debug!(error = %e, "device socket closed");
            Ended::DeviceLeft
        }
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
    slot.queue.writing(now_ms());
    sink.feed(text(welcome)).await?;
    if let Some(mode) = ctx.teaching.get() {
        sink.feed(text(ServerFrame::Teaching { mode: Some(mode) }.to_json()))
            .await?;
    }
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
    slot.queue.writing(now_ms());
    sink.send(text(ServerFrame::Synced { replayed }.to_json()))
        .await?;
    slot.queue.written();
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
            slot.queue.writing(now_ms());
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
            slot.queue.written();
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
    slot.queue.writing(now_ms());
    feed(sink, &out).await?;
    sink.flush().await?;
    slot.queue.written();
    Ok(())
}

/// Writes the queue, in order, until the session is asked to close.
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
        // Both awaits are rare (a conversation new to this session, an event that waited too
        // long for the ones before it) and boxed: the idle session's size is this loop's.
        while let Some((conv, seq)) = unknown_conversation(&items, cursors) {
            Box::pin(start_conversation(ctx, slot, cursors, conv, seq)).await;
        }
        let after = order(ctx, slot, cursors, items.drain(..), now, &mut out);
        if cursors.gaps_due(now) {
            Box::pin(fill_gaps(ctx, slot, cursors, now, &mut out)).await;
        }
        // Written inline rather than through `feed`: a helper's future would add its
        // arguments to every idle session's size.
        for chunk in out.chunks(WRITE_BATCH) {
            // Each batch must go out within the stall limit (the node's sweep watches).
            slot.queue.writing(now_ms());
            for b in chunk {
                let t = Utf8Bytes::try_from(b.clone()).map_err(axum::Error::new)?;
                sink.feed(Message::Text(t)).await?;
            }
            sink.flush().await?;
        }
        slot.queue.written();
        out.clear();
        if after.catch_up {
            Box::pin(catch_up(ctx, sink, slot, cursors)).await?;
        }
        if after.crash {
            tracing::error!("fault injection: aborting the process after an ack");
            std::process::abort();
        }
    }
}

/// What a batch of queue items asks for once it is written.
#[derive(Default)]
struct AfterBatch {
    /// Compare the device's positions with the store (after a bus outage).
    catch_up: bool,
    /// Fault injection: abort the process.
    crash: bool,
}

/// A conversation this session did not have (the user just joined it): its position starts
/// where the user joined (or just before this event if the store cannot say).
async fn start_conversation(
    ctx: &Arc<NodeCtx>,
    slot: &DeviceSlot,
    cursors: &mut Cursors,
    conv: ConvId,
    seq: Seq,
) {
    let start = match ctx.store.joined_seq(conv, slot.user).await {
        Ok(Some(j)) => j.saturating_sub(1).min(seq - 1),
        _ => seq - 1,
    };
    cursors.set(conv, start);
}

/// The first queued event (conversation and `seq`) of a conversation `cursors` does not know.
fn unknown_conversation(items: &[Outbound], cursors: &Cursors) -> Option<(ConvId, Seq)> {
    items.iter().find_map(|item| match item {
        Outbound::Event(ev) if !cursors.knows(ev.conv) => Some((ev.conv, ev.seq)),
        _ => None,
    })
}

/// Puts queue items into `out` in the order the device must get them: live frames as they
/// come, events through the device's [`Cursors`] (in `seq` order, repeats dropped, early ones
/// held back). Every event's conversation is known to `cursors` by now.
fn order(
    ctx: &NodeCtx,
    slot: &DeviceSlot,
    cursors: &mut Cursors,
    items: impl Iterator<Item = Outbound>,
    now: Instant,
    out: &mut Vec<Bytes>,
) -> AfterBatch {
    let mut after = AfterBatch::default();
    // Teaching modes: events written as they come, without the cursors' order and gap filling.
    let teaching = ctx.teaching.get();
    let bus_only = teaching == Some(Teaching::BusOnly);
    let arrival = teaching == Some(Teaching::ArrivalOrder);
    for item in items {
        match item {
            Outbound::Resync if bus_only => {}
            Outbound::Resync => after.catch_up = true,
            Outbound::Live(b) => out.push(b),
            Outbound::AckThenCrash(b) => {
                out.push(b);
                after.crash = true;
            }
            Outbound::Event(ev) => {
                let before = out.len();
                let offer = if bus_only || arrival {
                    cursors.pass(ev.conv, ev.seq, ev.frame.clone(), arrival, out)
                } else {
                    cursors.offer(ev.conv, ev.seq, ev.frame.clone(), now, out)
                };
                match offer {
                    Offer::Duplicate => {
                        metrics::counter!("chat_duplicates_dropped_total").increment(1)
                    }
                    Offer::Buffered => metrics::counter!("chat_events_buffered_total").increment(1),
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
    after
}

/// Reads from the store the events that early ones have waited for too long, and puts them
/// (and what waited behind them) into `out`.
async fn fill_gaps(
    ctx: &Arc<NodeCtx>,
    slot: &DeviceSlot,
    cursors: &mut Cursors,
    now: Instant,
    out: &mut Vec<Bytes>,
) {
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
        cursors.fill(conv, frames, out);
    }
}

/// Feeds frames (already JSON text) to the sink, without flushing.
async fn feed(sink: &mut Sink, frames: &[Bytes]) -> Result<(), axum::Error> {
    for b in frames {
        let t = Utf8Bytes::try_from(b.clone()).map_err(axum::Error::new)?;
        sink.feed(Message::Text(t)).await?;
    }
    Ok(())
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
