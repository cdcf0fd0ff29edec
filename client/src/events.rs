//! What the connection engine tells the application: [`ClientEvent`]s on a bounded channel, and
//! the connection [`Status`] (also readable at any time from the handle).
//!
//! Every type here is serializable, one JSON object per value with a `type` (events), `status`
//! (statuses) or `kind` (reasons) field, so a desktop UI or a script (`chat watch --json`) can
//! consume them as they are.

use std::fmt;

use protocol::model::{Event, PresenceState};
use protocol::ws::{Ack, ErrorCode, Welcome};
use protocol::{ClientMsgId, ConvId, NodeId, Seq, UserId};
use serde::{Deserialize, Serialize};

use crate::api::code_name;

/// Something the application should know, in the order it happened.
// Conversation events are nearly all of what flows, and the largest variant: boxing them would
// cost an allocation each to save the space of the few small ones.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientEvent {
    /// The connection status changed (see [`Status`]).
    Status(Status),
    /// A node accepted the session: who I am, my conversations, my contacts' presence. Comes
    /// at the start of every session, including after each reconnect.
    Welcome(Box<Welcome>),
    /// An event of one of my conversations, exactly once and in `seq` order per conversation,
    /// whether it was replayed after a reconnect or arrived live. My own messages come back
    /// this way too (match them to what I sent by `client_id`).
    Event(Event),
    /// Something I sent (a message, an edit, a delete) is stored. `duplicate` is true when the
    /// server had already stored that client id (a resend); the ack is then the first one's.
    Acked(Ack),
    /// Something I sent was refused for good (not a member, too large, invalid…) and was
    /// removed from the outbox.
    SendFailed {
        /// What I sent.
        client_id: ClientMsgId,
        /// Why it was refused, for programs.
        code: ErrorCode,
        /// Why it was refused, for people.
        message: String,
    },
    /// The node refused a frame that had no client id (a typing or read frame, say).
    ServerError {
        /// What went wrong, for programs.
        code: ErrorCode,
        /// What went wrong, for people.
        message: String,
    },
    /// A contact came online or went offline.
    Presence(PresenceState),
    /// Someone started or stopped typing.
    Typing {
        /// Where.
        conv: ConvId,
        /// Who.
        user: UserId,
        /// Started (true) or stopped (false).
        active: bool,
    },
    /// A member (possibly me, on another device) has read up to `seq`.
    Read {
        /// Where.
        conv: ConvId,
        /// Who.
        user: UserId,
        /// Up to which event.
        seq: Seq,
    },
    /// A teaching mode was turned on (or off: `None`) in the cluster: a guarantee is broken
    /// on purpose, and the status line should say "teaching mode: <what is broken>"
    /// ([`protocol::teaching::Teaching::status_line`]).
    Teaching {
        /// The mode, or none.
        mode: Option<protocol::teaching::Teaching>,
    },
    /// The node is shutting down; the engine is moving to another node (a `Reconnecting`
    /// status follows).
    Moving {
        /// The node that is leaving.
        node: NodeId,
        /// Why, for people.
        reason: String,
    },
}

/// Where the connection engine is.
///
/// The usual life: `Connecting` → `Resyncing` → `Live`, then after a failure
/// `Reconnecting` → `Connecting` → …, until `Stopped`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Status {
    /// Asking the controller for a node and opening a socket to it.
    Connecting,
    /// Connected and said hello; the node is replaying what this device missed. Sends wait
    /// in the outbox until `Live`.
    Resyncing {
        /// The node serving this session.
        node: NodeId,
    },
    /// Caught up: events arrive live and the outbox is being sent.
    Live {
        /// The node serving this session.
        node: NodeId,
    },
    /// The session ended; the engine tries again after `in_ms` milliseconds.
    Reconnecting {
        /// How many attempts in a row have failed (1 for the first retry).
        attempt: u32,
        /// How long until the next attempt, in milliseconds.
        in_ms: u64,
        /// What ended the last attempt.
        reason: Disconnect,
    },
    /// The engine has stopped for good and will not reconnect.
    Stopped {
        /// Why.
        reason: StopReason,
    },
}

impl Status {
    /// The node of the current session, when connected.
    pub fn node(&self) -> Option<&NodeId> {
        match self {
            Status::Resyncing { node } | Status::Live { node } => Some(node),
            _ => None,
        }
    }

    /// Whether events are live and the outbox is flowing.
    pub fn is_live(&self) -> bool {
        matches!(self, Status::Live { .. })
    }

    /// Whether the engine has stopped for good.
    pub fn is_stopped(&self) -> bool {
        matches!(self, Status::Stopped { .. })
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Connecting => f.write_str("connecting"),
            Status::Resyncing { node } => write!(f, "connected to {node}, resyncing"),
            Status::Live { node } => write!(f, "live on {node}"),
            Status::Reconnecting {
                attempt,
                in_ms,
                reason,
            } => write!(
                f,
                "{reason}; reconnecting in {in_ms} ms (attempt {attempt})"
            ),
            Status::Stopped { reason } => write!(f, "stopped: {reason}"),
        }
    }
}

/// What ended a session, or an attempt to start one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Disconnect {
    /// The controller could not be asked for a node (unreachable, or an error).
    Controller {
        /// What went wrong.
        message: String,
    },
    /// The controller knows no live node (besides the ones excluded).
    NoNode,
    /// The socket to the node could not be opened (refused, reset, timed out).
    ConnectFailed {
        /// The node.
        node: NodeId,
        /// What went wrong.
        message: String,
    },
    /// The node refused the WebSocket upgrade with an HTTP error other than 401.
    Rejected {
        /// The node.
        node: NodeId,
        /// The HTTP status.
        status: u16,
        /// The error code of its body, if it had one.
        code: Option<ErrorCode>,
        /// What went wrong.
        message: String,
    },
    /// The token was refused (expired, bad): log in again.
    Unauthorized {
        /// What the server said.
        message: String,
    },
    /// This device was revoked: log in again.
    Revoked,
    /// The node is draining and asked devices to move.
    Moving {
        /// The node.
        node: NodeId,
        /// Why, for people.
        reason: String,
    },
    /// The node closed the socket with a close frame.
    Closed {
        /// The node.
        node: NodeId,
        /// The close code (see `protocol::ws::close`).
        code: u16,
        /// The close reason, for people.
        reason: String,
    },
    /// The connection broke (reset, end of stream without a close frame, write failure).
    Lost {
        /// The node.
        node: NodeId,
        /// What went wrong.
        message: String,
    },
    /// The node did not answer in time (no welcome, or no pong to a ping).
    Timeout {
        /// The node.
        node: NodeId,
        /// What the engine was waiting for.
        waiting_for: String,
    },
    /// A gap in a conversation could not be filled from history (the controller failed);
    /// reconnecting makes the node replay it.
    Gap {
        /// The conversation.
        conv: ConvId,
        /// What went wrong.
        message: String,
    },
    /// The application asked the engine to stop.
    Shutdown,
}

impl fmt::Display for Disconnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Disconnect::Controller { message } => write!(f, "controller: {message}"),
            Disconnect::NoNode => f.write_str("no live node"),
            Disconnect::ConnectFailed { node, message } => {
                write!(f, "cannot connect to {node}: {message}")
            }
            Disconnect::Rejected {
                node,
                status,
                message,
                ..
            } => write!(
                f,
                "{node} refused the connection (HTTP {status}): {message}"
            ),
            Disconnect::Unauthorized { message } => write!(f, "unauthorized: {message}"),
            Disconnect::Revoked => f.write_str("this device was revoked"),
            Disconnect::Moving { node, reason } => write!(f, "{node} is moving us: {reason}"),
            Disconnect::Closed { node, code, reason } => {
                write!(f, "{node} closed the connection ({code}")?;
                if !reason.is_empty() {
                    write!(f, ", {reason}")?;
                }
                f.write_str(")")
            }
            Disconnect::Lost { node, message } => write!(f, "lost {node}: {message}"),
            Disconnect::Timeout { node, waiting_for } => {
                write!(f, "{node} did not answer ({waiting_for})")
            }
            Disconnect::Gap { conv, message } => {
                write!(f, "could not fill a gap in conversation {conv}: {message}")
            }
            Disconnect::Shutdown => f.write_str("shut down"),
        }
    }
}

/// Why the engine stopped for good.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StopReason {
    /// The application shut it down (or dropped its handle).
    Shutdown,
    /// The token was refused or expired: log in again.
    Unauthorized {
        /// What the server said.
        message: String,
    },
    /// This device was revoked: log in again.
    Revoked,
    /// The node refused the session at the protocol level (for example an unsupported
    /// protocol version); retrying would not help.
    Protocol {
        /// What the server said.
        message: String,
    },
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::Shutdown => f.write_str("shut down"),
            StopReason::Unauthorized { message } => {
                write!(f, "not authorized ({message}); log in again")
            }
            StopReason::Revoked => f.write_str("this device was revoked; log in again"),
            StopReason::Protocol { message } => write!(f, "protocol error: {message}"),
        }
    }
}

/// A refusal of something sent, as `send_and_wait_ack` reports it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({})", code_name(*code))]
pub struct Refusal {
    /// Why, for programs.
    pub code: ErrorCode,
    /// Why, for people.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_flat_and_tagged() -> Result<(), Box<dyn std::error::Error>> {
        let node = NodeId::new("n1")?;
        let ev = ClientEvent::Status(Status::Reconnecting {
            attempt: 2,
            in_ms: 400,
            reason: Disconnect::Moving {
                node: node.clone(),
                reason: "drain".into(),
            },
        });
        let json = serde_json::to_string(&ev)?;
        assert_eq!(
            json,
            r#"{"type":"status","status":"reconnecting","attempt":2,"in_ms":400,"reason":{"kind":"moving","node":"n1","reason":"drain"}}"#
        );
        assert_eq!(serde_json::from_str::<ClientEvent>(&json)?, ev);

        let live = ClientEvent::Status(Status::Live { node });
        assert_eq!(
            serde_json::to_string(&live)?,
            r#"{"type":"status","status":"live","node":"n1"}"#
        );
        let stopped = ClientEvent::Status(Status::Stopped {
            reason: StopReason::Revoked,
        });
        let json = serde_json::to_string(&stopped)?;
        assert_eq!(serde_json::from_str::<ClientEvent>(&json)?, stopped);
        Ok(())
    }

    #[test]
    fn statuses_read_well() -> Result<(), Box<dyn std::error::Error>> {
        let node = NodeId::new("n1")?;
        let s = Status::Reconnecting {
            attempt: 1,
            in_ms: 0,
            reason: Disconnect::Closed {
                node: node.clone(),
                code: 1012,
                reason: String::new(),
            },
        };
        assert_eq!(
            s.to_string(),
            "n1 closed the connection (1012); reconnecting in 0 ms (attempt 1)"
        );
        assert_eq!(Status::Live { node: node.clone() }.node(), Some(&node));
        assert!(
            Status::Stopped {
                reason: StopReason::Shutdown
            }
            .is_stopped()
        );
        Ok(())
    }
}
