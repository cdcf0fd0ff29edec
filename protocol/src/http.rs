//! Request and response bodies of the controller's HTTP API (JSON). Every route is listed in
//! `docs/protocol.md`; errors are always an [`ErrorBody`].

use serde::{Deserialize, Serialize};

use crate::model::{ConversationSummary, Event, MemberInfo, UserInfo};
use crate::ws::ErrorCode;
use crate::{ConvId, DeviceId, Millis, NodeId};

pub use crate::model::Attachment;

/// `POST /v1/auth/register`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// 3 to 32 of `[a-z0-9_.-]`.
    pub username: String,
    /// At least [`crate::limits::PASSWORD_MIN_CHARS`] characters.
    pub password: String,
}

/// `POST /v1/auth/login`: credentials plus the device logging in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginRequest {
    /// The user's name.
    pub username: String,
    /// The user's password.
    pub password: String,
    /// This install's stable id.
    pub device_id: DeviceId,
    /// A name for people ("laptop", "phone").
    pub device_name: String,
}

/// A token for one user on one device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginResponse {
    /// Bearer token for HTTP and for the WebSocket upgrade.
    pub token: String,
    /// Who logged in.
    pub user: UserInfo,
    /// The device it is bound to.
    pub device: DeviceInfo,
    /// When the token stops being accepted.
    pub expires_at: Millis,
}

/// One of a user's devices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// The device id.
    pub id: DeviceId,
    /// Its name.
    pub name: String,
    /// First login.
    pub created_at: Millis,
    /// Last login.
    pub last_login: Millis,
    /// Active or revoked.
    pub state: DeviceInfoState,
    /// Whether this is the device making the request.
    #[serde(default)]
    pub current: bool,
}

/// Whether a device's tokens are accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceInfoState {
    /// Its token works.
    Active,
    /// Revoked by its user: its token is refused and its sockets were closed.
    Revoked,
}

/// `GET /v1/devices`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicesResponse {
    /// Every device the user has logged in from.
    pub devices: Vec<DeviceInfo>,
}

/// `GET /v1/assign?exclude=a,b`: where to connect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignResponse {
    /// The node with the fewest connections (reservations included).
    pub node: NodeId,
    /// Its WebSocket URL.
    pub ws_url: String,
    /// A slot held for this client on that node until it connects or `expires_at`; pass it as
    /// `?reservation=` on the upgrade.
    pub reservation: String,
    /// When the slot is given back if unused.
    pub expires_at: Millis,
}

/// Whether a node takes new devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Serving and accepting new devices.
    Live,
    /// Shutting down: moving its devices away, accepting none.
    Draining,
}

/// A chat node as the registry sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node.
    pub id: NodeId,
    /// Where devices connect.
    pub ws_url: String,
    /// Its HTTP base (`/healthz`, `/metrics`, `/trace`).
    pub http_url: String,
    /// Devices connected now.
    pub connections: u64,
    /// Slots handed out and not yet used or expired.
    pub reserved: u64,
    /// When it started.
    pub started_at: Millis,
    /// Its last heartbeat.
    pub last_heartbeat: Millis,
    /// Live or draining.
    pub state: NodeState,
}

/// `GET /v1/nodes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodesResponse {
    /// Every node holding a lease.
    pub nodes: Vec<NodeStatus>,
    /// The controller's clock, to read `last_heartbeat` against.
    pub now: Millis,
}

/// `GET /v1/conversations`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationsResponse {
    /// My conversations, most recent activity first.
    pub conversations: Vec<ConversationSummary>,
}

/// `POST /v1/conversations/direct`: open (or find) the direct conversation with a user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectRequest {
    /// The other user.
    pub username: String,
}

/// `POST /v1/rooms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRoomRequest {
    /// The room's name.
    pub name: String,
    /// Whether anyone may join without an invitation.
    #[serde(default)]
    pub public: bool,
    /// Users to add right away.
    #[serde(default)]
    pub members: Vec<String>,
}

/// `POST /v1/rooms/{id}/invite`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteRequest {
    /// Who to add.
    pub username: String,
}

/// A public room anyone may join.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomListing {
    /// The room.
    pub id: ConvId,
    /// Its name.
    pub name: String,
    /// How many members it has.
    pub member_count: u32,
}

/// `GET /v1/rooms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomsResponse {
    /// Public rooms, by name.
    pub rooms: Vec<RoomListing>,
}

/// `GET /v1/conversations/{id}/members`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersResponse {
    /// The members.
    pub members: Vec<MemberInfo>,
}

/// `GET /v1/conversations/{id}/events?before=&after=&limit=`: one page of history, in
/// ascending `seq`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPage {
    /// The events, messages in their current state.
    pub events: Vec<Event>,
    /// Whether more exist beyond this page in the direction asked.
    pub has_more: bool,
}

/// `GET /v1/users/{username}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserLookup {
    /// The user.
    pub user: UserInfo,
    /// Whether they are online.
    pub online: bool,
}

/// `GET /v1/info`: what clients should know before they send.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Server version.
    pub version: String,
    /// [`crate::PROTOCOL_VERSION`].
    pub protocol: u32,
    /// Largest attachment accepted, in bytes.
    pub max_attachment_bytes: u64,
    /// Attachment types accepted (a trailing `/` means any subtype).
    pub attachment_types: Vec<String>,
    /// Largest message text, in bytes.
    pub max_text_bytes: usize,
    /// Largest WebSocket frame, in bytes.
    pub max_frame_bytes: usize,
    /// Which backends the cluster runs on, for people ("embedded", "redis", "amqp", ...).
    pub backends: Backends,
}

/// Which implementation serves each backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backends {
    /// Registry: "embedded" or "redis".
    pub registry: String,
    /// Bus: "embedded", "redis" or "amqp", and its routing.
    pub bus: String,
    /// Store: "sqlite" or "postgres".
    pub store: String,
}

/// `GET /healthz` of the controller and of nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// "ok", or "draining" on a node shutting down.
    pub status: String,
    /// "controller" or "node".
    pub role: String,
    /// The node id, on a node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
}

/// The body of every HTTP error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorInfo,
}

/// What went wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// For programs.
    pub code: ErrorCode,
    /// For people.
    pub message: String,
}

impl ErrorBody {
    /// An error body.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorInfo {
                code,
                message: message.into(),
            },
        }
    }
}

/// The line a server process prints on stdout once it serves, so a supervisor can find its
/// port without guessing: `CHAT_READY {"role":"node",...}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyLine {
    /// "controller" or "node".
    pub role: String,
    /// The HTTP base URL it serves on.
    pub http_url: String,
    /// For a node, its id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
    /// For a node, its WebSocket URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ws_url: Option<String>,
    /// The process id.
    pub pid: u32,
}

impl ReadyLine {
    /// The prefix of the line.
    pub const PREFIX: &'static str = "CHAT_READY ";

    /// The whole line, without the newline.
    pub fn to_line(&self) -> String {
        format!(
            "{}{}",
            Self::PREFIX,
            serde_json::to_string(self).unwrap_or_default()
        )
    }

    /// Reads a line printed by [`ReadyLine::to_line`]; `None` for any other line.
    pub fn parse(line: &str) -> Option<ReadyLine> {
        serde_json::from_str(line.trim_end().strip_prefix(Self::PREFIX)?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_round_trips() {
        let r = ReadyLine {
            role: "node".into(),
            http_url: "http://127.0.0.1:4000".into(),
            node: NodeId::new("n1").ok(),
            ws_url: Some("ws://127.0.0.1:4000/ws".into()),
            pid: 7,
        };
        assert_eq!(ReadyLine::parse(&r.to_line()), Some(r));
        assert_eq!(ReadyLine::parse("2024 INFO listening"), None);
    }

    #[test]
    fn error_body_shape() {
        let b = ErrorBody::new(ErrorCode::Unauthorized, "token expired");
        assert_eq!(
            serde_json::to_string(&b).ok().as_deref(),
            Some(r#"{"error":{"code":"unauthorized","message":"token expired"}}"#)
        );
    }
}
