//! How the SQL stores write values in columns and read them back: enums as text, `seq` as
//! `BIGINT`, ids and tokens as text.

use protocol::Seq;
use protocol::model::{ConvKind, MemberAction, MessageKind};

use super::{StoreError, StoreResult};

/// A `seq` read from a column (`INTEGER`/`BIGINT`, never negative in a sound database).
pub(crate) fn seq_from_db(v: i64) -> StoreResult<Seq> {
    Seq::try_from(v).map_err(|_| StoreError::Internal(format!("negative seq {v} in the database")))
}

/// A `seq` for a column or a comparison; beyond `i64::MAX` it means "after everything".
pub(crate) fn seq_to_db(s: Seq) -> i64 {
    i64::try_from(s).unwrap_or(i64::MAX)
}

/// An attachment's size read from a column.
pub(crate) fn size_from_db(v: i64) -> StoreResult<u64> {
    u64::try_from(v).map_err(|_| StoreError::Internal(format!("negative attachment size {v}")))
}

/// An id or token read from a column, `what` naming it in the error.
pub(crate) fn token<T: std::str::FromStr>(what: &str, s: String) -> StoreResult<T> {
    s.parse()
        .map_err(|_| StoreError::Internal(format!("malformed {what} {s:?} in the database")))
}

/// Values of `events.body_type`.
pub(crate) mod body_type {
    /// A message.
    pub const MESSAGE: &str = "message";
    /// An edit of a message.
    pub const EDIT: &str = "edit";
    /// A delete of a message.
    pub const DELETE: &str = "delete";
    /// A membership change.
    pub const MEMBER: &str = "member";
    /// A reaction given to a message.
    pub const REACT: &str = "react";
    /// A reaction taken back.
    pub const UNREACT: &str = "unreact";
}

/// A conversation kind as `conversations.kind` holds it.
pub(crate) fn conv_kind_str(k: ConvKind) -> &'static str {
    match k {
        ConvKind::Direct => "direct",
        ConvKind::Room => "room",
    }
}

/// A conversation kind read from `conversations.kind`.
pub(crate) fn parse_conv_kind(s: &str) -> StoreResult<ConvKind> {
    match s {
        "direct" => Ok(ConvKind::Direct),
        "room" => Ok(ConvKind::Room),
        _ => Err(StoreError::Internal(format!(
            "unknown conversation kind {s:?}"
        ))),
    }
}

/// A message kind as `events.msg_kind` holds it.
pub(crate) fn message_kind_str(k: MessageKind) -> &'static str {
    match k {
        MessageKind::Text => "text",
        MessageKind::Image => "image",
        MessageKind::File => "file",
        MessageKind::Voice => "voice",
        MessageKind::Video => "video",
    }
}

/// A message kind read from `events.msg_kind`.
pub(crate) fn parse_message_kind(s: Option<&str>) -> StoreResult<MessageKind> {
    match s {
        Some("text") => Ok(MessageKind::Text),
        Some("image") => Ok(MessageKind::Image),
        Some("file") => Ok(MessageKind::File),
        Some("voice") => Ok(MessageKind::Voice),
        Some("video") => Ok(MessageKind::Video),
        _ => Err(StoreError::Internal(format!("unknown message kind {s:?}"))),
    }
}

/// A membership change as `events.member_action` holds it.
pub(crate) fn member_action_str(a: MemberAction) -> &'static str {
    match a {
        MemberAction::Created => "created",
        MemberAction::Joined => "joined",
        MemberAction::Invited => "invited",
        MemberAction::Left => "left",
    }
}

/// A membership change read from `events.member_action`.
pub(crate) fn parse_member_action(s: Option<&str>) -> StoreResult<MemberAction> {
    match s {
        Some("created") => Ok(MemberAction::Created),
        Some("joined") => Ok(MemberAction::Joined),
        Some("invited") => Ok(MemberAction::Invited),
        Some("left") => Ok(MemberAction::Left),
        _ => Err(StoreError::Internal(format!("unknown member action {s:?}"))),
    }
}
