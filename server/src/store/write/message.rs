//! New messages: sent by a member, their shape within the rules, their attachment uploaded to
//! the same conversation, their reply aimed at a message of it.

use protocol::model::{EventBody, Message, MessageKind};
use protocol::{AttachmentId, MessageId};

use super::WriteOps;
use super::append::Author;
use super::batch::{Fail, refuse};
use crate::store::StoreError;
use crate::store::rules::check_message;

/// The body of a new message, once its checks passed.
pub(super) async fn checked<T: WriteOps>(
    tx: &mut T,
    author: &Author,
    kind: MessageKind,
    text: String,
    attachment: Option<AttachmentId>,
    reply_to: Option<MessageId>,
) -> Result<EventBody, Fail> {
    if !author.is_member {
        return refuse(StoreError::NotMember);
    }
    check_message(kind, &text, attachment.is_some()).map_err(Fail::Refused)?;
    let attachment = match attachment {
        None => None,
        Some(id) => match tx.attachment_meta(&id).await? {
            Some(meta) if meta.conv == author.conv => Some(meta),
            _ => {
                return refuse(StoreError::Invalid(format!(
                    "attachment {id} was not uploaded to this conversation"
                )));
            }
        },
    };
    if let Some(r) = reply_to {
        match tx.message_ref(r).await? {
            Some(m) if m.conv == author.conv && m.is_message => {}
            _ => {
                return refuse(StoreError::Invalid(format!(
                    "reply_to {r} is not a message of this conversation"
                )));
            }
        }
    }
    Ok(EventBody::Message(Message {
        kind,
        text,
        attachment,
        reply_to,
        edited_at: None,
        deleted: false,
        reactions: Vec::new(),
    }))
}
