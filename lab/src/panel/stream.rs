//! One panel's WebSocket stream: a frame every [`FRAME_EVERY`], built from the lab's world
//! for this connection's cursor, so that each carries what changed since the last one the
//! panel received. A panel that reads slowly gets fewer, fuller frames, never a backlog: the
//! next frame is only built once the last one is sent.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures::{SinkExt, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::control::Lab;
use crate::world::Cursor;

/// How often a frame is built: often enough for animation to look live, rarely enough that
/// building and drawing them costs little.
pub const FRAME_EVERY: Duration = Duration::from_millis(200);

/// A panel that takes longer than this to accept a frame is gone.
const SEND_LIMIT: Duration = Duration::from_secs(10);

/// Streams frames to one panel until it leaves or the server stops.
pub async fn run(socket: WebSocket, lab: Lab, cancel: CancellationToken) {
    // Traces are subscribed while at least one panel watches.
    let _watching = lab.watch();
    let (mut tx, mut rx) = socket.split();
    let mut cursor = Cursor::default();
    let mut tick = tokio::time::interval(FRAME_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            incoming = rx.next() => match incoming {
                // The panel says nothing on this socket (operations are POSTs): anything but a
                // close is ignored.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            _ = tick.tick() => {
                let update = lab.update(&mut cursor);
                let Ok(text) = serde_json::to_string(&update) else { continue };
                match tokio::time::timeout(SEND_LIMIT, tx.send(Message::Text(text.into()))).await {
                    Ok(Ok(())) => {}
                    _ => return,
                }
            }
        }
    }
    let _ = tx.send(Message::Close(None)).await;
}
