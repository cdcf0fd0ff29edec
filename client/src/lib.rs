//! The chat client core: log in, find a node, connect, resync, send through an outbox, fail
//! over. The desktop app, the lab's virtual users, the `chat` CLI and the process-level tests
//! all talk to the cluster through this crate.
//!
//! Typical use:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use client::{Client, ClientConfig, ClientEvent, ClientState};
//! use protocol::ConvId;
//!
//! let device = client::load_or_create_device_id("device_id".as_ref())?;
//! let session = client::login("http://127.0.0.1:8080", "alice", "secret-pw", &device, "laptop").await?;
//! let (chat, mut events) = Client::start(&session, ClientState::default(), ClientConfig::default())?;
//! let id = chat.send_text(ConvId(1), "hello")?; // returns at once; the outbox does the rest
//! while let Some(event) = events.recv().await {
//!     if let ClientEvent::Acked(ack) = &event {
//!         if ack.client_id == id { break; }
//!     }
//! }
//! let state = chat.shutdown().await; // save it to resume where this left off
//! # let _ = state; Ok(()) }
//! ```
//!
//! Code map:
//! - [`api`]: the controller's HTTP API, one typed method per route; [`ApiError`].
//! - [`auth`]: [`register`], [`login`] and the [`Session`] they produce.
//! - [`device`]: the per-install device id, kept in a file.
//! - [`client`]: the [`Client`] handle and its [`ClientConfig`]; commands, state, status.
//! - `engine` (private): the task behind the handle — assign, connect, hello, replay,
//!   live, fail over.
//! - [`connection`]: the WebSocket to one node (transport only).
//! - [`outbox`]: unacknowledged sends, in order, resent with the same client ids.
//! - [`sync`]: per-conversation cursors, duplicate and gap detection.
//! - [`failover`]: backoff, node exclusion, and the stop-or-retry decision per failure.
//! - [`rate`]: pacing of frames under the node's rate limit.
//! - [`events`]: what the application hears — [`ClientEvent`], [`Status`] and reasons.
//! - [`state`]: [`ClientState`], the serializable cursors + outbox to resume from.
//!
//! Invariants:
//! - The application gets each event of a conversation once, in `seq` order (see [`sync`]).
//! - A send leaves the outbox only when stored or refused for good (see [`outbox`]).
//! - The engine never spins: every retry waits on a backoff, except a single immediate one
//!   after a node asks devices to move or drops this one for being slow (see [`failover`]).

#![warn(missing_docs)]

pub mod api;
pub mod auth;
pub mod client;
pub mod connection;
pub mod device;
mod engine;
pub mod events;
pub mod failover;
pub mod outbox;
pub mod rate;
pub mod state;
pub mod sync;

pub use api::{Api, ApiError, Download, HistoryRange};
pub use auth::{Session, login, register};
pub use client::{Client, ClientConfig, ClientError, Draft, new_client_id};
pub use device::{DeviceIdError, load_or_create_device_id, new_device_id};
pub use events::{ClientEvent, Disconnect, Refusal, Status, StopReason};
pub use outbox::{OutboxItem, Outgoing};
pub use state::ClientState;
