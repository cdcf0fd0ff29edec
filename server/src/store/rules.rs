//! What an event's content may be, checked before anything is written: text sizes, NUL
//! characters, a message's kind against its attachment, room names.

use protocol::limits::{MAX_TEXT_BYTES, NAME_MAX_CHARS};
use protocol::model::MessageKind;

use super::encoding::message_kind_str;
use super::{StoreError, StoreResult};

/// Refuses text with a NUL character. PostgreSQL cannot store one in a `TEXT` column, and the
/// failed statement would abort the whole batch's transaction; refusing it here, before any
/// write, keeps it one event's refusal, and the same on every backend.
fn check_no_nul(text: &str) -> StoreResult<()> {
    if text.contains('\0') {
        return Err(StoreError::Invalid("text contains a NUL character".into()));
    }
    Ok(())
}

/// Checks a message's shape: text size, text or attachment present, kind matching attachment.
pub(crate) fn check_message(
    kind: MessageKind,
    text: &str,
    has_attachment: bool,
) -> StoreResult<()> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(StoreError::Invalid(format!(
            "text is {} bytes, more than {MAX_TEXT_BYTES}",
            text.len()
        )));
    }
    check_no_nul(text)?;
    match (kind, has_attachment) {
        (MessageKind::Text, true) => Err(StoreError::Invalid(
            "a text message has no attachment".into(),
        )),
        (MessageKind::Text, false) if text.trim().is_empty() => {
            Err(StoreError::Invalid("empty message".into()))
        }
        (MessageKind::Text, false) => Ok(()),
        (_, false) => Err(StoreError::Invalid(format!(
            "a {} message needs an attachment",
            message_kind_str(kind)
        ))),
        (_, true) => Ok(()),
    }
}

/// Checks the new text of an edit: within limits, and not blank unless the message has an
/// attachment (whose caption may be removed).
pub(crate) fn check_edit_text(text: &str, has_attachment: bool) -> StoreResult<()> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(StoreError::Invalid(format!(
            "text is {} bytes, more than {MAX_TEXT_BYTES}",
            text.len()
        )));
    }
    check_no_nul(text)?;
    if text.trim().is_empty() && !has_attachment {
        return Err(StoreError::Invalid(
            "an edit cannot empty a text message: delete it".into(),
        ));
    }
    Ok(())
}

/// Checks a room name: not blank, at most [`NAME_MAX_CHARS`] characters.
pub(crate) fn check_room_name(name: &str) -> StoreResult<()> {
    if name.trim().is_empty() {
        return Err(StoreError::Invalid("a room needs a name".into()));
    }
    check_no_nul(name)?;
    if name.chars().count() > NAME_MAX_CHARS {
        return Err(StoreError::Invalid(format!(
            "a room name has at most {NAME_MAX_CHARS} characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_shapes() {
        assert!(check_message(MessageKind::Text, "hi", false).is_ok());
        assert!(check_message(MessageKind::Text, " \n", false).is_err());
        assert!(check_message(MessageKind::Text, "hi", true).is_err());
        assert!(check_message(MessageKind::Image, "", true).is_ok());
        assert!(check_message(MessageKind::File, "caption", false).is_err());
        assert!(check_message(MessageKind::Text, &"x".repeat(MAX_TEXT_BYTES), false).is_ok());
        assert!(check_message(MessageKind::Text, &"x".repeat(MAX_TEXT_BYTES + 1), false).is_err());
        assert!(check_message(MessageKind::Text, "nul \0 inside", false).is_err());
        assert!(check_edit_text("nul \0", true).is_err());
        assert!(check_room_name("room\0").is_err());
        assert!(check_edit_text("", true).is_ok());
        assert!(check_edit_text("", false).is_err());
        assert!(check_room_name("  ").is_err());
        assert!(check_room_name(&"r".repeat(NAME_MAX_CHARS)).is_ok());
        assert!(check_room_name(&"r".repeat(NAME_MAX_CHARS + 1)).is_err());
    }
}
