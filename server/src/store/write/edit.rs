//! Edits, deletes and reactions: changes a member makes to a live message of the same
//! conversation (edits and deletes to one they sent, reactions to anyone's). A delete drops
//! the message's text and attachment from history.

use protocol::model::EventBody;
use protocol::{AttachmentId, MessageId};

use super::append::Author;
use super::batch::{Fail, refuse};
use super::{MessageRef, WriteOps};
use crate::store::StoreError;
use crate::store::rules::check_edit_text;

/// The body of an edit, once its checks passed.
pub(super) async fn checked_edit<T: WriteOps>(
    tx: &mut T,
    author: &Author,
    target: MessageId,
    text: String,
) -> Result<EventBody, Fail> {
    if !author.is_member {
        return refuse(StoreError::NotMember);
    }
    let m = own_message(tx, author, target).await?;
    check_edit_text(&text, m.attachment.is_some()).map_err(Fail::Refused)?;
    Ok(EventBody::Edit { target, text })
}

/// The body of a delete, once its checks passed, and the attachment it takes away.
pub(super) async fn checked_delete<T: WriteOps>(
    tx: &mut T,
    author: &Author,
    target: MessageId,
) -> Result<(EventBody, Option<AttachmentId>), Fail> {
    if !author.is_member {
        return refuse(StoreError::NotMember);
    }
    let dropped = own_message(tx, author, target).await?.attachment;
    Ok((EventBody::Delete { target }, dropped))
}

/// The body of a reaction given or taken back, once its checks passed: any member may react
/// to a live message of the conversation with an emoji.
pub(super) async fn checked_reaction<T: WriteOps>(
    tx: &mut T,
    author: &Author,
    target: MessageId,
    emoji: String,
    on: bool,
) -> Result<EventBody, Fail> {
    if !author.is_member {
        return refuse(StoreError::NotMember);
    }
    if !protocol::limits::reaction_valid(&emoji) {
        return refuse(StoreError::Invalid(format!(
            "{emoji:?} is not a reaction: one emoji, at most {} bytes",
            protocol::limits::REACTION_MAX_BYTES
        )));
    }
    match tx.message_ref(target).await? {
        Some(m) if m.conv == author.conv && m.is_message && !m.deleted => {
            Ok(EventBody::Reaction { target, emoji, on })
        }
        Some(m) if m.conv == author.conv && m.is_message => {
            refuse(StoreError::Invalid(format!("message {target} was deleted")))
        }
        _ => refuse(StoreError::Invalid(format!(
            "{target} is not a message of this conversation"
        ))),
    }
}

/// The message `target` if the author may edit or delete it.
async fn own_message<T: WriteOps>(
    tx: &mut T,
    author: &Author,
    target: MessageId,
) -> Result<MessageRef, Fail> {
    match tx.message_ref(target).await? {
        Some(m) if m.conv == author.conv && m.is_message => {
            if m.sender != author.sender {
                return refuse(StoreError::Forbidden(
                    "only its sender can change a message".into(),
                ));
            }
            if m.deleted {
                return refuse(StoreError::Invalid(format!("message {target} was deleted")));
            }
            Ok(m)
        }
        _ => refuse(StoreError::Invalid(format!(
            "{target} is not a message of this conversation"
        ))),
    }
}
