//! Rows as the SQL stores read and write them, and their conversions to the store's records:
//! an event spread over the columns of `events` and read back with its attachment, and the
//! rows of users, devices, conversations, members, rooms, attachments and summaries.

use bytes::Bytes;
use protocol::http::{DeviceInfoState, RoomListing};
use protocol::model::{
    Attachment, ConvKind, ConversationSummary, Event, EventBody, Message, UserInfo,
};
use protocol::{AttachmentId, ConvId, DeviceId, MessageId, NodeId, UserId};

use super::encoding::{
    body_type, member_action_str, message_kind_str, parse_conv_kind, parse_member_action,
    parse_message_kind, seq_from_db, size_from_db, token,
};
use super::write::{ConvHead, MessageRef};
use super::{
    AttachmentBlob, ConversationRecord, DeviceRecord, MemberRecord, StoreError, StoreResult,
    UserRecord,
};

/// `SELECT` list and `FROM` of an event with its attachment's metadata, decoded by
/// [`EventRow`]. Backends append their `WHERE`/`ORDER BY` with `concat!`, so every statement is
/// a `&'static str` that the driver prepares once and caches.
macro_rules! event_select {
    () => {
        "SELECT e.conv_id, e.seq, e.id, e.at, e.sender, e.device, e.client_id, e.body_type, \
         e.msg_kind, e.member_action, e.member_user, e.text, e.reply_to, e.target, e.edited_at, \
         e.deleted, a.id AS att_id, a.name AS att_name, a.mime AS att_mime, a.size AS att_size, \
         a.conv_id AS att_conv, e.origin \
         FROM events e LEFT JOIN attachments a ON a.id = e.attachment_id"
    };
}

pub(crate) use event_select;

/// One row of [`event_select!`].
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct EventRow {
    conv_id: i64,
    seq: i64,
    id: i64,
    at: i64,
    sender: i64,
    device: Option<String>,
    client_id: Option<String>,
    body_type: String,
    msg_kind: Option<String>,
    member_action: Option<String>,
    member_user: Option<i64>,
    text: String,
    reply_to: Option<i64>,
    target: Option<i64>,
    edited_at: Option<i64>,
    deleted: bool,
    att_id: Option<String>,
    att_name: Option<String>,
    att_mime: Option<String>,
    att_size: Option<i64>,
    att_conv: Option<i64>,
    origin: Option<String>,
}

impl EventRow {
    /// From a row of [`event_select!`] on SQLite's write connection.
    pub(crate) fn from_sqlite(r: &rusqlite::Row<'_>) -> rusqlite::Result<EventRow> {
        Ok(EventRow {
            conv_id: r.get(0)?,
            seq: r.get(1)?,
            id: r.get(2)?,
            at: r.get(3)?,
            sender: r.get(4)?,
            device: r.get(5)?,
            client_id: r.get(6)?,
            body_type: r.get(7)?,
            msg_kind: r.get(8)?,
            member_action: r.get(9)?,
            member_user: r.get(10)?,
            text: r.get(11)?,
            reply_to: r.get(12)?,
            target: r.get(13)?,
            edited_at: r.get(14)?,
            deleted: r.get(15)?,
            att_id: r.get(16)?,
            att_name: r.get(17)?,
            att_mime: r.get(18)?,
            att_size: r.get(19)?,
            att_conv: r.get(20)?,
            origin: r.get(21)?,
        })
    }

    /// The event, messages in their current state.
    pub(crate) fn into_event(self) -> StoreResult<Event> {
        let need = |v: Option<i64>, what: &str| {
            v.ok_or_else(|| {
                StoreError::Internal(format!(
                    "{} event {} has no {what}",
                    self.body_type, self.id
                ))
            })
        };
        let body = match self.body_type.as_str() {
            body_type::MESSAGE => {
                let attachment = match (
                    self.att_id,
                    self.att_name,
                    self.att_mime,
                    self.att_size,
                    self.att_conv,
                ) {
                    (Some(id), Some(name), Some(mime), Some(size), Some(conv)) => {
                        Some(Attachment {
                            id: token("attachment id", id)?,
                            name,
                            mime,
                            size: size_from_db(size)?,
                            conv: ConvId(conv),
                        })
                    }
                    _ => None,
                };
                EventBody::Message(Message {
                    kind: parse_message_kind(self.msg_kind.as_deref())?,
                    text: self.text,
                    attachment,
                    reply_to: self.reply_to.map(MessageId),
                    edited_at: self.edited_at,
                    deleted: self.deleted,
                    reactions: Vec::new(),
                })
            }
            body_type::EDIT => EventBody::Edit {
                target: MessageId(need(self.target, "target")?),
                text: self.text,
            },
            body_type::DELETE => EventBody::Delete {
                target: MessageId(need(self.target, "target")?),
            },
            body_type::REACT | body_type::UNREACT => EventBody::Reaction {
                target: MessageId(need(self.target, "target")?),
                on: self.body_type == body_type::REACT,
                emoji: self.text,
            },
            body_type::MEMBER => EventBody::Member {
                action: parse_member_action(self.member_action.as_deref())?,
                user: UserId(need(self.member_user, "member")?),
            },
            other => {
                return Err(StoreError::Internal(format!(
                    "unknown event type {other:?}"
                )));
            }
        };
        Ok(Event {
            conv: ConvId(self.conv_id),
            seq: seq_from_db(self.seq)?,
            id: MessageId(self.id),
            at: self.at,
            sender: UserId(self.sender),
            device: self.device.map(|d| token("device id", d)).transpose()?,
            client_id: self.client_id.map(|c| token("client id", c)).transpose()?,
            // Rows written before origins were shown, or by a process with an odd name, still
            // read: the origin is for people, not for the protocol's guarantees.
            origin: self.origin.and_then(|o| NodeId::new(o).ok()),
            body,
        })
    }
}

/// An event spread over the columns of `events`, for `INSERT`.
pub(crate) struct EventColumns<'a> {
    pub body_type: &'static str,
    pub msg_kind: Option<&'static str>,
    pub member_action: Option<&'static str>,
    pub member_user: Option<i64>,
    pub text: &'a str,
    pub attachment_id: Option<&'a str>,
    pub reply_to: Option<i64>,
    pub target: Option<i64>,
}

impl<'a> EventColumns<'a> {
    pub(crate) fn of(body: &'a EventBody) -> Self {
        let empty = EventColumns {
            body_type: body_type::MESSAGE,
            msg_kind: None,
            member_action: None,
            member_user: None,
            text: "",
            attachment_id: None,
            reply_to: None,
            target: None,
        };
        match body {
            EventBody::Message(m) => EventColumns {
                msg_kind: Some(message_kind_str(m.kind)),
                text: &m.text,
                attachment_id: m.attachment.as_ref().map(|a| a.id.as_str()),
                reply_to: m.reply_to.map(|r| r.0),
                ..empty
            },
            EventBody::Edit { target, text } => EventColumns {
                body_type: body_type::EDIT,
                text,
                target: Some(target.0),
                ..empty
            },
            EventBody::Delete { target } => EventColumns {
                body_type: body_type::DELETE,
                target: Some(target.0),
                ..empty
            },
            EventBody::Reaction { target, emoji, on } => EventColumns {
                body_type: if *on {
                    body_type::REACT
                } else {
                    body_type::UNREACT
                },
                text: emoji,
                target: Some(target.0),
                ..empty
            },
            EventBody::Member { action, user } => EventColumns {
                body_type: body_type::MEMBER,
                member_action: Some(member_action_str(*action)),
                member_user: Some(user.0),
                ..empty
            },
        }
    }
}

/// `SELECT` of the reactions given and taken back to messages with ids in `$1..=$2` of
/// conversation `$3`, in the order they happened, read by [`ReactionRow`]. The target index
/// finds them without reading the conversation's other events.
pub(crate) const REACTIONS_SELECT: &str = "SELECT target, sender, body_type, text FROM events \
     WHERE target BETWEEN $1 AND $2 AND conv_id = $3 AND body_type IN ('react', 'unreact') \
     ORDER BY seq";

/// One row of [`REACTIONS_SELECT`].
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ReactionRow {
    target: i64,
    sender: i64,
    body_type: String,
    text: String,
}

/// Folds reaction rows (in the order they happened) into the messages of a page, so each shows
/// its reactions as they are now.
pub(crate) fn fold_reactions(events: &mut [Event], rows: Vec<ReactionRow>) {
    let mut at: std::collections::HashMap<i64, usize> = std::collections::HashMap::new();
    for (i, e) in events.iter().enumerate() {
        if matches!(e.body, EventBody::Message(_)) {
            at.insert(e.id.0, i);
        }
    }
    for r in rows {
        let Some(&i) = at.get(&r.target) else {
            continue;
        };
        if let EventBody::Message(m) = &mut events[i].body {
            let on = r.body_type == body_type::REACT;
            protocol::model::Reactions::apply(&mut m.reactions, UserId(r.sender), &r.text, on);
        }
    }
}

/// The lowest and highest ids of the live messages of a page: the range whose reactions
/// [`fold_reactions`] needs.
pub(crate) fn message_id_range(events: &[Event]) -> Option<(i64, i64)> {
    let ids = events.iter().filter_map(|e| match &e.body {
        EventBody::Message(m) if !m.deleted => Some(e.id.0),
        _ => None,
    });
    ids.fold(None, |range, id| match range {
        None => Some((id, id)),
        Some((lo, hi)) => Some((lo.min(id), hi.max(id))),
    })
}

/// A conversation's head as the write path reads it: `kind, is_public, last_seq, last_msg_seq,
/// last_activity, member_epoch`.
pub(crate) type HeadColumns = (String, bool, i64, i64, i64, i64);

impl ConvHead {
    /// The head of [`HeadColumns`].
    pub(crate) fn from_columns(columns: HeadColumns) -> StoreResult<ConvHead> {
        let (kind, public, last_seq, last_msg_seq, last_activity, member_epoch) = columns;
        Ok(ConvHead {
            kind: parse_conv_kind(&kind)?,
            public,
            last_seq: seq_from_db(last_seq)?,
            last_msg_seq: seq_from_db(last_msg_seq)?,
            last_activity,
            member_epoch,
        })
    }
}

/// What a change needs of an earlier event: `conv_id, body_type, sender, deleted,
/// attachment_id`.
pub(crate) type MessageColumns = (i64, String, i64, bool, Option<String>);

impl MessageRef {
    /// The reference of [`MessageColumns`].
    pub(crate) fn from_columns(columns: MessageColumns) -> StoreResult<MessageRef> {
        let (conv, body_type, sender, deleted, attachment) = columns;
        Ok(MessageRef {
            conv: ConvId(conv),
            is_message: body_type == body_type::MESSAGE,
            sender: UserId(sender),
            deleted,
            attachment: attachment.map(|a| token("attachment id", a)).transpose()?,
        })
    }
}

/// An attachment's metadata: `name, mime, size, conv_id`.
pub(crate) type AttachmentColumns = (String, String, i64, i64);

/// The metadata of attachment `id` from [`AttachmentColumns`].
pub(crate) fn attachment_meta(
    id: &AttachmentId,
    columns: AttachmentColumns,
) -> StoreResult<Attachment> {
    let (name, mime, size, conv) = columns;
    Ok(Attachment {
        id: id.clone(),
        name,
        mime,
        size: size_from_db(size)?,
        conv: ConvId(conv),
    })
}

/// `SELECT id, username, password_hash, created_at FROM users`.
#[derive(sqlx::FromRow)]
pub(crate) struct UserRow {
    id: i64,
    username: String,
    password_hash: String,
    created_at: i64,
}

impl From<UserRow> for UserRecord {
    fn from(r: UserRow) -> Self {
        UserRecord {
            id: UserId(r.id),
            username: r.username,
            password_hash: r.password_hash,
            created_at: r.created_at,
        }
    }
}

/// `SELECT user_id, device_id, name, created_at, last_login, revoked, generation FROM devices`.
#[derive(sqlx::FromRow)]
pub(crate) struct DeviceRow {
    user_id: i64,
    device_id: String,
    name: String,
    created_at: i64,
    last_login: i64,
    revoked: bool,
    generation: i64,
}

impl DeviceRow {
    /// From a row of SQLite's write connection, its columns in the struct's order.
    pub(crate) fn from_sqlite(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceRow> {
        Ok(DeviceRow {
            user_id: r.get(0)?,
            device_id: r.get(1)?,
            name: r.get(2)?,
            created_at: r.get(3)?,
            last_login: r.get(4)?,
            revoked: r.get(5)?,
            generation: r.get(6)?,
        })
    }

    pub(crate) fn into_record(self) -> StoreResult<DeviceRecord> {
        Ok(DeviceRecord {
            user: UserId(self.user_id),
            id: token::<DeviceId>("device id", self.device_id)?,
            name: self.name,
            created_at: self.created_at,
            last_login: self.last_login,
            state: if self.revoked {
                DeviceInfoState::Revoked
            } else {
                DeviceInfoState::Active
            },
            generation: self.generation,
        })
    }
}

/// `SELECT id, kind, name, is_public, last_seq, created_by, created_at FROM conversations`.
#[derive(sqlx::FromRow)]
pub(crate) struct ConversationRow {
    id: i64,
    kind: String,
    name: String,
    is_public: bool,
    last_seq: i64,
    created_by: i64,
    created_at: i64,
}

impl ConversationRow {
    pub(crate) fn into_record(self) -> StoreResult<ConversationRecord> {
        Ok(ConversationRecord {
            id: ConvId(self.id),
            kind: parse_conv_kind(&self.kind)?,
            name: self.name,
            public: self.is_public,
            last_seq: seq_from_db(self.last_seq)?,
            created_by: UserId(self.created_by),
            created_at: self.created_at,
        })
    }
}

/// `SELECT m.user_id, u.username, m.joined_seq, m.read_seq FROM members m JOIN users u`.
#[derive(sqlx::FromRow)]
pub(crate) struct MemberRow {
    user_id: i64,
    username: String,
    joined_seq: i64,
    read_seq: i64,
}

impl MemberRow {
    pub(crate) fn into_record(self) -> StoreResult<MemberRecord> {
        Ok(MemberRecord {
            user: UserId(self.user_id),
            username: self.username,
            joined_seq: seq_from_db(self.joined_seq)?,
            read_seq: seq_from_db(self.read_seq)?,
        })
    }
}

/// A public room: `id, name, member_count`.
#[derive(sqlx::FromRow)]
pub(crate) struct RoomRow {
    id: i64,
    name: String,
    member_count: i64,
}

impl From<RoomRow> for RoomListing {
    fn from(r: RoomRow) -> Self {
        RoomListing {
            id: ConvId(r.id),
            name: r.name,
            member_count: u32::try_from(r.member_count).unwrap_or(u32::MAX),
        }
    }
}

/// `SELECT id, conv_id, uploader, name, mime, size, created_at, data FROM attachments`.
#[derive(sqlx::FromRow)]
pub(crate) struct AttachmentRow {
    id: String,
    conv_id: i64,
    uploader: i64,
    name: String,
    mime: String,
    size: i64,
    created_at: i64,
    data: Vec<u8>,
}

impl AttachmentRow {
    pub(crate) fn into_blob(self) -> StoreResult<AttachmentBlob> {
        Ok(AttachmentBlob {
            meta: Attachment {
                id: token("attachment id", self.id)?,
                name: self.name,
                mime: self.mime,
                size: size_from_db(self.size)?,
                conv: ConvId(self.conv_id),
            },
            uploader: UserId(self.uploader),
            created_at: self.created_at,
            data: Bytes::from(self.data),
        })
    }
}

/// A member's view of one conversation, without its last message (fetched for all of the
/// member's conversations at once, beside).
#[derive(sqlx::FromRow)]
pub(crate) struct SummaryRow {
    id: i64,
    kind: String,
    name: String,
    is_public: bool,
    last_seq: i64,
    created_at: i64,
    read_seq: i64,
    member_count: i64,
    unread: i64,
    peer_id: Option<i64>,
    peer_name: Option<String>,
    peer_read_seq: Option<i64>,
}

impl SummaryRow {
    /// The conversation this row is about.
    pub(crate) fn conv(&self) -> ConvId {
        ConvId(self.id)
    }

    pub(crate) fn into_summary(
        self,
        last_message: Option<Event>,
    ) -> StoreResult<ConversationSummary> {
        let kind = parse_conv_kind(&self.kind)?;
        let peer = match (kind, self.peer_id, self.peer_name) {
            (ConvKind::Direct, Some(id), Some(username)) => Some(UserInfo {
                id: UserId(id),
                username,
            }),
            _ => None,
        };
        Ok(ConversationSummary {
            id: ConvId(self.id),
            kind,
            // A direct conversation is called by the other user's name.
            name: peer.as_ref().map_or(self.name, |p| p.username.clone()),
            peer,
            public: self.is_public,
            member_count: u32::try_from(self.member_count).unwrap_or(u32::MAX),
            last_seq: seq_from_db(self.last_seq)?,
            last_message,
            read_seq: seq_from_db(self.read_seq)?,
            unread: u64::try_from(self.unread).unwrap_or(0),
            peer_read_seq: match kind {
                ConvKind::Direct => self.peer_read_seq.map(seq_from_db).transpose()?,
                ConvKind::Room => None,
            },
            created_at: self.created_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use protocol::model::MemberAction;

    use super::*;

    #[test]
    fn event_columns_round_trip_through_a_row() -> StoreResult<()> {
        let body = EventBody::Member {
            action: MemberAction::Invited,
            user: UserId(9),
        };
        let cols = EventColumns::of(&body);
        let row = EventRow {
            conv_id: 4,
            seq: 7,
            id: 123,
            at: 1000,
            sender: 2,
            device: Some("laptop".into()),
            client_id: None,
            body_type: cols.body_type.into(),
            msg_kind: cols.msg_kind.map(Into::into),
            member_action: cols.member_action.map(Into::into),
            member_user: cols.member_user,
            text: cols.text.into(),
            reply_to: cols.reply_to,
            target: cols.target,
            edited_at: None,
            deleted: false,
            att_id: None,
            att_name: None,
            att_mime: None,
            att_size: None,
            att_conv: None,
            origin: Some("n1".into()),
        };
        let event = row.into_event()?;
        assert_eq!(event.body, body);
        assert_eq!(event.seq, 7);
        assert_eq!(event.device.as_ref().map(DeviceId::as_str), Some("laptop"));
        Ok(())
    }
}
