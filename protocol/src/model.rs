//! The things a conversation is made of, carried both in WebSocket frames and in HTTP bodies:
//! events, messages, attachments, conversation summaries, users and presence.

use serde::{Deserialize, Serialize};

use crate::{AttachmentId, ClientMsgId, ConvId, DeviceId, MessageId, Millis, NodeId, Seq, UserId};

/// A user as others see them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    /// The user's id.
    pub id: UserId,
    /// The user's unique name.
    pub username: String,
}

/// One entry of a conversation's log. Messages, edits, deletes and membership changes are all
/// events; each has the next `seq` of its conversation, so a device that has seen up to `seq`
/// of a conversation has seen everything before it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The conversation.
    pub conv: ConvId,
    /// Position in the conversation, from 1, without gaps.
    pub seq: Seq,
    /// Snowflake id of the event (for a message, the message id).
    pub id: MessageId,
    /// Server time at which the event was persisted.
    pub at: Millis,
    /// Who caused the event.
    pub sender: UserId,
    /// The device it was sent from, when a device sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceId>,
    /// The sending client's id for it, when a device sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<ClientMsgId>,
    /// The node (or controller) that accepted and persisted it: which part of the cluster a
    /// message went in through, for people testing the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<NodeId>,
    /// What happened.
    pub body: EventBody,
}

/// What an [`Event`] says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventBody {
    /// A message. In history pages it shows its current state (edited text, or deleted).
    Message(Message),
    /// The sender changed the text of an earlier message of theirs.
    Edit {
        /// The message edited.
        target: MessageId,
        /// Its new text.
        text: String,
    },
    /// The sender deleted an earlier message of theirs.
    Delete {
        /// The message deleted.
        target: MessageId,
    },
    /// The sender reacted to a message with an emoji (`on`), or took that reaction back.
    Reaction {
        /// The message reacted to.
        target: MessageId,
        /// The reaction: a short emoji ([`crate::limits::reaction_valid`]).
        emoji: String,
        /// Added (true) or taken back (false).
        on: bool,
    },
    /// Someone joined, left, was invited, or the conversation was created.
    Member {
        /// What happened.
        action: MemberAction,
        /// Whom it happened to.
        user: UserId,
    },
}

/// A membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberAction {
    /// The conversation was created by `user`.
    Created,
    /// `user` joined a public room.
    Joined,
    /// `user` was added by the event's sender.
    Invited,
    /// `user` left.
    Left,
}

/// A chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// What kind of message it is.
    pub kind: MessageKind,
    /// The text (a caption for attachments; may be empty then).
    #[serde(default)]
    pub text: String,
    /// The attached file, for every kind but `text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<Attachment>,
    /// The message this one replies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<MessageId>,
    /// When the text was last edited (history pages only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<Millis>,
    /// Whether the message was deleted (history pages only; the text is then empty).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// The reactions it has now, in the order they were first given (history pages only; live
    /// and replayed, they come as [`EventBody::Reaction`] events).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<Reactions>,
}

/// One emoji's reactions to a message: who gave it, in the order they did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reactions {
    /// The emoji.
    pub emoji: String,
    /// Who reacted with it.
    pub users: Vec<UserId>,
}

impl Reactions {
    /// Applies one reaction event to a message's reactions: `user` adds `emoji` (once) or takes
    /// it back; an emoji nobody gives any more goes.
    pub fn apply(list: &mut Vec<Reactions>, user: UserId, emoji: &str, on: bool) {
        match list.iter_mut().position(|r| r.emoji == emoji) {
            Some(i) => {
                let users = &mut list[i].users;
                if on {
                    if !users.contains(&user) {
                        users.push(user);
                    }
                } else {
                    users.retain(|u| *u != user);
                    if users.is_empty() {
                        list.remove(i);
                    }
                }
            }
            None if on => list.push(Reactions {
                emoji: emoji.to_owned(),
                users: vec![user],
            }),
            None => {}
        }
    }
}

/// Kinds of message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// Text only.
    Text,
    /// A picture, shown inline.
    Image,
    /// Any file, offered for download.
    File,
    /// A voice recording.
    Voice,
    /// A video.
    Video,
}

impl MessageKind {
    /// The kind a message with an attachment of this MIME type has by default.
    pub fn for_mime(mime: &str) -> MessageKind {
        if mime.starts_with("image/") {
            MessageKind::Image
        } else if mime.starts_with("audio/") {
            MessageKind::Voice
        } else if mime.starts_with("video/") {
            MessageKind::Video
        } else {
            MessageKind::File
        }
    }
}

/// An uploaded file as messages refer to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// Its id; download at `GET /v1/attachments/{id}`.
    pub id: AttachmentId,
    /// The file name given at upload.
    pub name: String,
    /// Its MIME type.
    pub mime: String,
    /// Its size in bytes.
    pub size: u64,
    /// The conversation it belongs to; only members may fetch it.
    pub conv: ConvId,
}

/// Direct conversation or room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConvKind {
    /// Between exactly two users.
    Direct,
    /// A named group that members join, are invited to and leave.
    Room,
}

/// What a member sees of one conversation in their list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationSummary {
    /// The conversation.
    pub id: ConvId,
    /// Direct or room.
    pub kind: ConvKind,
    /// The room's name; for a direct conversation, the other user's name.
    pub name: String,
    /// For a direct conversation, the other user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<UserInfo>,
    /// Whether anyone may join (rooms only).
    #[serde(default)]
    pub public: bool,
    /// How many members it has.
    pub member_count: u32,
    /// The highest `seq` in the conversation.
    pub last_seq: Seq,
    /// The last message (not edit, delete or membership event), in its current state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message: Option<Event>,
    /// The highest `seq` this user has marked read.
    pub read_seq: Seq,
    /// Messages from others after `read_seq`.
    pub unread: u64,
    /// For a direct conversation, how far the other user has read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_read_seq: Option<Seq>,
    /// When it was created.
    pub created_at: Millis,
}

/// Whether a user is online: connected on at least one device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceState {
    /// The user.
    pub user: UserId,
    /// Connected on any device right now.
    pub online: bool,
}

/// A member as listed by `GET /v1/conversations/{id}/members`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// The member.
    pub user: UserInfo,
    /// Highest `seq` they have marked read.
    pub read_seq: Seq,
    /// Whether they are online.
    pub online: bool,
    /// Their `seq` of joining.
    pub joined_seq: Seq,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reactions_fold_in_order_once_per_user() {
        let (a, b) = (UserId(1), UserId(2));
        let mut list = Vec::new();
        Reactions::apply(&mut list, a, "👍", true);
        Reactions::apply(&mut list, b, "🎉", true);
        Reactions::apply(&mut list, b, "👍", true);
        Reactions::apply(&mut list, b, "👍", true);
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].emoji, "👍");
        assert_eq!(list[0].users, vec![a, b]);
        Reactions::apply(&mut list, b, "🎉", false);
        Reactions::apply(&mut list, a, "😮", false);
        assert_eq!(list.len(), 1);
        Reactions::apply(&mut list, a, "👍", false);
        assert_eq!(list[0].users, vec![b]);
    }
}
