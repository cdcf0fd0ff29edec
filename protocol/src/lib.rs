//! The wire protocol of the chat cluster: every WebSocket frame, every controller HTTP body,
//! every envelope nodes exchange over the bus, and the node ↔ controller link of the embedded
//! setup. This crate is the only place that decides what goes on the wire; everything else
//! builds these types and lets serde write them.
//!
//! Code map:
//! - [`ids`]: identifiers (users, devices, conversations, messages, nodes) and their rules.
//! - [`model`]: events, messages, attachments, conversation summaries, presence.
//! - [`ws`]: frames between a device and its chat node, close codes, error codes.
//! - [`http`]: request and response bodies of the controller's HTTP API.
//! - [`bus`]: the envelope a node publishes for other nodes, framed as bytes.
//! - [`link`]: frames between a node and the controller when the controller hosts the registry
//!   and the bus (the embedded, one-machine setup).
//! - [`trace`]: structured hop and connection events a node streams to observers (the lab).
//! - [`lab`]: the lab panel's stream, operations and report, and `lab up`'s ready line.
//! - [`teaching`]: the switches that break a guarantee on purpose, for lessons.
//! - [`limits`]: sizes and rates both sides agree on.
//!
//! The protocol version is [`PROTOCOL_VERSION`]; a device says which one it speaks in its
//! `hello` and the node refuses a version it does not know.
#![warn(missing_docs)]

pub mod bus;
pub mod http;
pub mod ids;
pub mod lab;
pub mod limits;
pub mod link;
pub mod model;
pub mod teaching;
pub mod trace;
pub mod ws;

pub use ids::{AttachmentId, ClientMsgId, ConvId, DeviceId, MessageId, NodeId, Seq, UserId};

/// Version of the device ↔ node protocol. Bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// Milliseconds since the Unix epoch, as used for every timestamp on the wire.
pub type Millis = i64;
