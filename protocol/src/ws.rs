//! Frames between a device and its chat node, one JSON object per WebSocket text message, with
//! a `type` field naming the frame.
//!
//! A session goes: upgrade (token checked) → device sends [`ClientFrame::Hello`] with its
//! cursors → node answers [`ServerFrame::Welcome`], replays every event the device missed as
//! [`ServerFrame::Event`]s, sends [`ServerFrame::Synced`] → live events follow. Sends are
//! answered by an [`ServerFrame::Ack`] (or an [`ServerFrame::Error`] with the same `ref`), and
//! the event itself reaches every device of every member, the sender's included.

use serde::{Deserialize, Serialize};

use crate::model::{ConversationSummary, Event, MessageKind, PresenceState, UserInfo};
use crate::{AttachmentId, ClientMsgId, ConvId, DeviceId, MessageId, Millis, NodeId, Seq, UserId};

/// A frame a device sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// First frame of every session.
    Hello(Hello),
    /// Send a message.
    Send(SendMessage),
    /// Change the text of one of my messages.
    Edit(EditMessage),
    /// Delete one of my messages.
    Delete(DeleteMessage),
    /// React to a message (any member's) with an emoji, or take the reaction back.
    React(ReactMessage),
    /// I am typing (or stopped) in a conversation.
    Typing {
        /// Where.
        conv: ConvId,
        /// Typing now (true) or stopped (false).
        active: bool,
    },
    /// I have read a conversation up to `seq`.
    Read {
        /// Where.
        conv: ConvId,
        /// Up to which event.
        seq: Seq,
    },
}

/// The first frame of a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// The protocol version the device speaks ([`crate::PROTOCOL_VERSION`]).
    pub v: u32,
    /// For each conversation the device knows, the highest `seq` it has. Conversations left
    /// out get their last [`crate::limits::INITIAL_SYNC_EVENTS`] events.
    #[serde(default)]
    pub cursors: Vec<Cursor>,
}

/// How far a device has got in one conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cursor {
    /// The conversation.
    pub conv: ConvId,
    /// The highest `seq` the device holds.
    pub seq: Seq,
}

/// A message to send.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    /// Where to.
    pub conv: ConvId,
    /// The client's id for it; resending with the same id never duplicates.
    pub client_id: ClientMsgId,
    /// Text, image, file, voice or video.
    #[serde(default = "text_kind")]
    pub kind: MessageKind,
    /// The text (a caption for attachments).
    #[serde(default)]
    pub text: String,
    /// An attachment uploaded to this conversation beforehand (every kind but text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<AttachmentId>,
    /// The message this one answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<MessageId>,
}

fn text_kind() -> MessageKind {
    MessageKind::Text
}

/// An edit of one of my messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditMessage {
    /// The conversation of the message.
    pub conv: ConvId,
    /// The client's id for this edit (idempotent like a send).
    pub client_id: ClientMsgId,
    /// The message to change.
    pub target: MessageId,
    /// Its new text.
    pub text: String,
}

/// The deletion of one of my messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteMessage {
    /// The conversation of the message.
    pub conv: ConvId,
    /// The client's id for this delete (idempotent like a send).
    pub client_id: ClientMsgId,
    /// The message to delete.
    pub target: MessageId,
}

/// A reaction to a message, or taking one back. Like a send, it becomes an event of the
/// conversation (so every device gets it, offline ones through resync) and is acked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReactMessage {
    /// The conversation of the message.
    pub conv: ConvId,
    /// The client's id for this reaction (idempotent like a send).
    pub client_id: ClientMsgId,
    /// The message reacted to.
    pub target: MessageId,
    /// The emoji ([`crate::limits::reaction_valid`]).
    pub emoji: String,
    /// Add it (true) or take it back (false).
    #[serde(default = "yes")]
    pub on: bool,
}

fn yes() -> bool {
    true
}

/// A frame a node sends to a device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Answer to `hello`: who and where you are, your conversations, your contacts' presence.
    Welcome(Welcome),
    /// An event of one of your conversations: replayed during resync, then live.
    Event(Event),
    /// Everything missed has been replayed; what follows is live.
    Synced {
        /// Events replayed in this resync.
        replayed: u64,
    },
    /// Your send (or edit, or delete) is persisted.
    Ack(Ack),
    /// Something you sent was refused; `ref` names it when it had a client id.
    Error(ErrorFrame),
    /// A contact came online or went offline.
    Presence(PresenceState),
    /// Someone is typing in a conversation (expires after [`crate::limits::TYPING_TTL_MS`]).
    Typing {
        /// Where.
        conv: ConvId,
        /// Who.
        user: UserId,
        /// Started (true) or stopped (false).
        active: bool,
    },
    /// A member (you, on another device, or someone else) has read up to `seq`.
    Read {
        /// Where.
        conv: ConvId,
        /// Who.
        user: UserId,
        /// Up to which event.
        seq: Seq,
    },
    /// This node is shutting down: reconnect through the controller (excluding this node). The
    /// socket closes with [`close::SERVICE_RESTART`] right after.
    Moving {
        /// Why, for people.
        reason: String,
    },
    /// A teaching mode is on (or, with `mode: null`, every mode is off again) in this
    /// cluster: a guarantee is broken on purpose (see [`crate::teaching`]). Sent after
    /// `welcome` while a mode is on, and whenever it changes.
    Teaching {
        /// The mode, or none.
        mode: Option<crate::teaching::Teaching>,
    },
}

/// The answer to `hello`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// Protocol version of the node.
    pub v: u32,
    /// The node serving this session.
    pub node: NodeId,
    /// You.
    pub user: UserInfo,
    /// This device.
    pub device: DeviceId,
    /// Your conversations, as they are now.
    pub conversations: Vec<ConversationSummary>,
    /// Presence of everyone you share a conversation with.
    pub presence: Vec<PresenceState>,
    /// The node's clock.
    pub server_time: Millis,
}

/// A send (or edit, or delete) is persisted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The client's id for what it sent.
    pub client_id: ClientMsgId,
    /// The conversation.
    pub conv: ConvId,
    /// The event's position.
    pub seq: Seq,
    /// The event's id.
    pub id: MessageId,
    /// When it was persisted.
    pub at: Millis,
    /// True when this client id had been seen before: nothing new was stored, and this is the
    /// first send's ack again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// A refusal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    /// What went wrong, for programs.
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub message: String,
    /// The client id of the frame refused, when it had one.
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<ClientMsgId>,
}

/// Error codes shared by WebSocket error frames and HTTP error bodies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, or not the shape of any frame or body.
    Malformed,
    /// A frame `type` this node does not know.
    UnknownType,
    /// A protocol version this node does not speak.
    UnsupportedVersion,
    /// A frame before `hello`, or a second `hello`.
    HelloRequired,
    /// No token, a bad signature, an expired token, or wrong credentials.
    Unauthorized,
    /// The device's token was revoked.
    Revoked,
    /// You are not a member of that conversation.
    NotMember,
    /// Allowed to nobody in your position (for example, editing someone else's message).
    Forbidden,
    /// No such thing.
    NotFound,
    /// Well-formed but not acceptable (empty message, attachment of another conversation…).
    Invalid,
    /// Over a size limit.
    TooLarge,
    /// Over the rate limit; slow down.
    RateLimited,
    /// Already exists (username taken…).
    Conflict,
    /// A backend is unreachable right now; retry later (the client's outbox does).
    Unavailable,
    /// No chat node is live.
    NoNode,
    /// A bug or an unexpected failure on the server; details are in its log.
    Internal,
}

impl ErrorCode {
    /// The code as it is on the wire (`"not_member"`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::HelloRequired => "hello_required",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Revoked => "revoked",
            ErrorCode::NotMember => "not_member",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Invalid => "invalid",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::NoNode => "no_node",
            ErrorCode::Internal => "internal",
        }
    }

    /// Whether retrying the same request later may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::Unavailable
                | ErrorCode::RateLimited
                | ErrorCode::NoNode
                | ErrorCode::Internal
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// WebSocket close codes a node uses, beyond the standard ones.
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The node is going away without a drain.
    pub const GOING_AWAY: u16 = 1001;
    /// A frame larger than [`crate::limits::MAX_FRAME_BYTES`].
    pub const TOO_BIG: u16 = 1009;
    /// Unexpected server failure.
    pub const INTERNAL: u16 = 1011;
    /// The node is draining: reconnect elsewhere (after a [`super::ServerFrame::Moving`]).
    pub const SERVICE_RESTART: u16 = 1012;
    /// No `hello` in time, a bad `hello`, or an unsupported version.
    pub const PROTOCOL: u16 = 4000;
    /// The token expired during the session: log in again.
    pub const UNAUTHORIZED: u16 = 4001;
    /// The device was revoked: log in again.
    pub const REVOKED: u16 = 4003;
    /// Too many frames refused for the rate.
    pub const RATE_LIMITED: u16 = 4008;
    /// The device did not read fast enough and its queue overflowed; reconnect and resync.
    pub const TOO_SLOW: u16 = 4009;
}

/// Why bytes from a device are not a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Not JSON, not an object, or the wrong shape for its type.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A `type` no frame has.
    #[error("unknown frame type {0:?}")]
    UnknownType(String),
}

impl FrameError {
    /// The error code a node answers with.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::Malformed(_) => ErrorCode::Malformed,
            FrameError::UnknownType(_) => ErrorCode::UnknownType,
        }
    }
}

const CLIENT_TYPES: &[&str] = &["hello", "send", "edit", "delete", "react", "typing", "read"];

impl ClientFrame {
    /// Parses one frame from a device, telling an unknown `type` apart from a malformed frame.
    pub fn parse(bytes: &[u8]) -> Result<ClientFrame, FrameError> {
        match serde_json::from_slice::<ClientFrame>(bytes) {
            Ok(frame) => Ok(frame),
            Err(err) => {
                #[derive(Deserialize)]
                struct Typed {
                    #[serde(rename = "type")]
                    kind: String,
                }
                match serde_json::from_slice::<Typed>(bytes) {
                    Ok(t) if !CLIENT_TYPES.contains(&t.kind.as_str()) => {
                        Err(FrameError::UnknownType(t.kind.chars().take(64).collect()))
                    }
                    _ => Err(FrameError::Malformed(err.to_string())),
                }
            }
        }
    }

    /// The client id this frame carries, if any, for error frames to refer to.
    pub fn client_id(&self) -> Option<&ClientMsgId> {
        match self {
            ClientFrame::Send(s) => Some(&s.client_id),
            ClientFrame::Edit(e) => Some(&e.client_id),
            ClientFrame::Delete(d) => Some(&d.client_id),
            ClientFrame::React(r) => Some(&r.client_id),
            _ => None,
        }
    }
}

impl ServerFrame {
    /// Serializes the frame. Every frame type serializes infallibly (no maps with non-string
    /// keys, no non-finite floats), so this cannot fail.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| {
            // Unreachable by construction; keep the session alive with a well-formed frame.
            format!(
                r#"{{"type":"error","code":"internal","message":"serialize: {}"}}"#,
                e.to_string().replace('"', "'")
            )
        })
    }

    /// An error frame.
    pub fn error(
        code: ErrorCode,
        message: impl Into<String>,
        reference: Option<ClientMsgId>,
    ) -> Self {
        ServerFrame::Error(ErrorFrame {
            code,
            message: message.into(),
            reference,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EventBody, Message};

    #[test]
    fn hello_round_trips() -> Result<(), serde_json::Error> {
        let json = r#"{"type":"hello","v":1,"cursors":[{"conv":3,"seq":41}]}"#;
        let frame = ClientFrame::parse(json.as_bytes()).map_err(serde::de::Error::custom)?;
        assert_eq!(
            frame,
            ClientFrame::Hello(Hello {
                v: 1,
                cursors: vec![Cursor {
                    conv: ConvId(3),
                    seq: 41
                }]
            })
        );
        assert_eq!(serde_json::to_string(&frame)?, json);
        Ok(())
    }

    #[test]
    fn send_defaults_to_text() {
        let f = ClientFrame::parse(br#"{"type":"send","conv":1,"client_id":"c1","text":"hi"}"#);
        match f {
            Ok(ClientFrame::Send(s)) => {
                assert_eq!(s.kind, MessageKind::Text);
                assert_eq!(s.text, "hi");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unknown_type_is_told_apart_from_malformed() {
        assert!(matches!(
            ClientFrame::parse(br#"{"type":"shout","conv":1}"#),
            Err(FrameError::UnknownType(t)) if t == "shout"
        ));
        assert!(matches!(
            ClientFrame::parse(b"{not json"),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            ClientFrame::parse(br#"{"type":"send","conv":"x"}"#),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            ClientFrame::parse(br#"{"type":"read","conv":1,"seq":2,"extra":1}"#),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            ClientFrame::parse(b"[]"),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn react_round_trips_and_defaults_to_adding() -> Result<(), serde_json::Error> {
        let json = r#"{"type":"react","conv":3,"client_id":"r1","target":"90","emoji":"👍"}"#;
        let frame = ClientFrame::parse(json.as_bytes()).map_err(serde::de::Error::custom)?;
        let ClientFrame::React(r) = &frame else {
            panic!("not a react frame: {frame:?}");
        };
        assert!(r.on);
        assert_eq!(r.target, MessageId(90));
        assert_eq!(frame.client_id().map(ClientMsgId::as_str), Some("r1"));
        let off =
            r#"{"type":"react","conv":3,"client_id":"r2","target":"90","emoji":"👍","on":false}"#;
        assert!(matches!(ClientFrame::parse(off.as_bytes()), Ok(ClientFrame::React(r)) if !r.on));
        Ok(())
    }

    #[test]
    fn bad_client_id_is_malformed() {
        assert!(matches!(
            ClientFrame::parse(br#"{"type":"send","conv":1,"client_id":"a b","text":"x"}"#),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn event_frame_shape() -> Result<(), serde_json::Error> {
        let ev = ServerFrame::Event(Event {
            conv: ConvId(7),
            seq: 2,
            id: MessageId(42),
            at: 1_700_000_000_000,
            sender: UserId(1),
            device: Some(DeviceId::new("d1").map_err(serde::ser::Error::custom)?),
            client_id: None,
            origin: None,
            body: EventBody::Message(Message {
                kind: MessageKind::Text,
                text: "hi".into(),
                attachment: None,
                reply_to: None,
                edited_at: None,
                deleted: false,
                reactions: Vec::new(),
            }),
        });
        let json = ev.to_json();
        assert_eq!(
            json,
            r#"{"type":"event","conv":7,"seq":2,"id":"42","at":1700000000000,"sender":1,"device":"d1","body":{"type":"message","kind":"text","text":"hi"}}"#
        );
        assert_eq!(serde_json::from_str::<ServerFrame>(&json)?, ev);
        Ok(())
    }

    #[test]
    fn error_code_names_match_the_wire() -> Result<(), serde_json::Error> {
        for code in [
            ErrorCode::Malformed,
            ErrorCode::UnknownType,
            ErrorCode::UnsupportedVersion,
            ErrorCode::HelloRequired,
            ErrorCode::Unauthorized,
            ErrorCode::Revoked,
            ErrorCode::NotMember,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::Invalid,
            ErrorCode::TooLarge,
            ErrorCode::RateLimited,
            ErrorCode::Conflict,
            ErrorCode::Unavailable,
            ErrorCode::NoNode,
            ErrorCode::Internal,
        ] {
            assert_eq!(serde_json::to_string(&code)?, format!("\"{code}\""));
        }
        Ok(())
    }

    #[test]
    fn error_frame_uses_ref() {
        let f = ServerFrame::error(
            ErrorCode::NotMember,
            "not a member",
            ClientMsgId::new("m1").ok(),
        );
        assert_eq!(
            f.to_json(),
            r#"{"type":"error","code":"not_member","message":"not a member","ref":"m1"}"#
        );
    }
}
