//! What crosses from Rust to the UI: the snapshot a window gets when it connects, and the live
//! events streamed to it over a `tauri::ipc::Channel`.
//!
//! The stream carries the client core's [`ClientEvent`]s exactly as they are (tagged by `type`)
//! plus a few events of the app's own ([`AppEvent`], whose `type` names never collide with the
//! core's), so the UI reads one discriminated union. `ui/src/ipc/types.ts` mirrors these types.

use client::{ClientEvent, OutboxItem, Status};
use protocol::model::{ConversationSummary, MemberInfo, PresenceState, UserInfo};
use protocol::{ConvId, DeviceId};
use serde::Serialize;

use crate::backend::ServerState;

/// One item of a window's event stream.
// Mostly the core's conversation events, the largest variant: see `client::ClientEvent`.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum UiEvent {
    /// Straight from the client core.
    Client(ClientEvent),
    /// From the app.
    App(AppEvent),
}

/// Events the app adds to the core's.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AppEvent {
    /// The server's state changed (the local cluster became ready, or failed).
    Server {
        /// The new state.
        state: ServerState,
    },
    /// A conversation appeared or changed outside the event stream (I was added to a room,
    /// opened a direct conversation on another device).
    Conversation {
        /// Its summary.
        summary: Box<ConversationSummary>,
    },
    /// I left a conversation (possibly on another device): drop it from the list.
    Removed {
        /// Which.
        conv: ConvId,
    },
    /// A conversation's members as the controller listed them: their names, read positions
    /// and presence (a new contact's presence is known from here until it changes).
    Members {
        /// The conversation.
        conv: ConvId,
        /// Its members.
        members: Vec<MemberInfo>,
    },
    /// The session is over (revoked, or the token refused): sign in again.
    SignedOut {
        /// Why, for people.
        reason: String,
    },
}

/// Who is signed in on a window.
#[derive(Clone, Debug, Serialize)]
pub struct SessionView {
    /// The user.
    pub user: UserInfo,
    /// This device's id.
    pub device: DeviceId,
    /// This device's name, as given at sign-in.
    pub device_name: String,
}

/// What a window needs before anything else: which server, who is signed in, and what the
/// cache already knows (so the conversation list shows before the network answers).
#[derive(Clone, Debug, Serialize)]
pub struct Boot {
    /// The window's label (`main`, `device-2`...).
    pub label: String,
    /// Whether this is the main window (the first-run choice is made there).
    pub main: bool,
    /// The server's state.
    pub server: ServerState,
    /// The signed-in session, if any.
    pub session: Option<SessionView>,
    /// A device name to suggest at sign-in.
    pub suggested_device_name: String,
    /// The username signed in on the main window, to suggest on another device's window.
    pub suggested_username: Option<String>,
}

/// What a window gets when it connects (or reconnects its event stream after a reload).
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// Who is signed in.
    pub session: SessionView,
    /// The connection's status now.
    pub status: Status,
    /// Conversations, most recent first (from the cache until the node's welcome replaces it).
    pub conversations: Vec<ConversationSummary>,
    /// Every user name known.
    pub users: Vec<UserInfo>,
    /// Presence as of the last welcome (empty before the first).
    pub presence: Vec<PresenceState>,
    /// What waits in the outbox (shown as pending in its conversation).
    pub pending: Vec<OutboxItem>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_and_core_events_share_one_union() -> Result<(), serde_json::Error> {
        let core = UiEvent::Client(ClientEvent::Status(Status::Connecting));
        assert_eq!(
            serde_json::to_string(&core)?,
            r#"{"type":"status","status":"connecting"}"#
        );
        let app = UiEvent::App(AppEvent::Removed { conv: ConvId(3) });
        assert_eq!(
            serde_json::to_string(&app)?,
            r#"{"type":"removed","conv":3}"#
        );
        Ok(())
    }
}
