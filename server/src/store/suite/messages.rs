//! What messages may be, and their edits and deletes.

use protocol::limits::MAX_TEXT_BYTES;
use protocol::model::Reactions;

use super::*;

/// What a message may be: text limits, kinds and attachments, replies.
pub async fn message_rules(db: &dyn TestDb) -> anyhow::Result<()> {
    let store = db.open().await?;
    let s = &*store;
    let (a, b) = (user(s, "ma").await?, user(s, "mb").await?);
    let conv = direct(s, a, b).await?;
    let elsewhere = room(s, a, false).await?;
    let msg = |kind: MessageKind,
               text: &str,
               attachment: Option<&Attachment>,
               reply_to: Option<MessageId>| {
        event(
            conv,
            a,
            NewBody::Message {
                kind,
                text: text.into(),
                attachment: attachment.map(|x| x.id.clone()),
                reply_to,
            },
        )
    };

    let longest = "é".repeat(MAX_TEXT_BYTES / 2);
    assert!(
        append(s, msg(MessageKind::Text, &longest, None, None))
            .await
            .is_ok()
    );
    let too_long = format!("{longest}x");
    assert_err!(
        append(s, msg(MessageKind::Text, &too_long, None, None)).await,
        StoreError::Invalid(_)
    );
    assert_err!(
        append(s, msg(MessageKind::Text, "", None, None)).await,
        StoreError::Invalid(_)
    );

    let here = upload(s, conv, a, b"\x89PNG here").await?;
    let there = upload(s, elsewhere, a, b"\x89PNG there").await?;
    assert_err!(
        append(s, msg(MessageKind::Text, "hi", Some(&here), None)).await,
        StoreError::Invalid(_)
    );
    assert_err!(
        append(s, msg(MessageKind::Image, "look", None, None)).await,
        StoreError::Invalid(_)
    );
    assert_err!(
        append(s, msg(MessageKind::Image, "", Some(&there), None)).await,
        StoreError::Invalid(_)
    );
    let ghost = Attachment {
        id: AttachmentId::new(unique("ghost"))?,
        ..here.clone()
    };
    assert_err!(
        append(s, msg(MessageKind::Image, "", Some(&ghost), None)).await,
        StoreError::Invalid(_)
    );
    let image = append(s, msg(MessageKind::Image, "", Some(&here), None)).await?;
    assert_eq!(message_of(&image.event)?.attachment.as_ref(), Some(&here));

    let foreign = append(s, text(elsewhere, a, "other room")).await?;
    let event_not_message = s.events(conv, Page::After(0), 1).await?.0;
    let created_id = event_not_message.first().context("created event")?.id;
    assert_err!(
        append(
            s,
            msg(MessageKind::Text, "re", None, Some(foreign.event.id))
        )
        .await,
        StoreError::Invalid(_)
    );
    assert_err!(
        append(s, msg(MessageKind::Text, "re", None, Some(next_id()))).await,
        StoreError::Invalid(_)
    );
    assert_err!(
        append(s, msg(MessageKind::Text, "re", None, Some(created_id))).await,
        StoreError::Invalid(_)
    );
    let reply = append(
        s,
        msg(MessageKind::Text, "nice", None, Some(image.event.id)),
    )
    .await?;
    assert_eq!(message_of(&reply.event)?.reply_to, Some(image.event.id));

    let stored = history(s, conv).await?;
    assert_eq!(seqs(&stored), [1, 2, 3, 4], "refusals stored nothing");
    assert_eq!(message_of(&stored[2])?.attachment.as_ref(), Some(&here));
    assert_eq!(message_of(&stored[3])?.reply_to, Some(image.event.id));
    Ok(())
}

/// Edits and deletes: own, live messages of the same conversation only; history shows the
/// current state and keeps the edit and delete events.
pub async fn edits_and_deletes(db: &dyn TestDb) -> anyhow::Result<()> {
    let store = db.open().await?;
    let s = &*store;
    let (a, b) = (user(s, "ea").await?, user(s, "eb").await?);
    let conv = direct(s, a, b).await?;
    let elsewhere = room(s, a, false).await?;
    let original = append(s, text(conv, a, "helo")).await?.event;
    let theirs = append(s, text(conv, b, "hi")).await?.event;
    let foreign = append(s, text(elsewhere, a, "other")).await?.event;
    let edit = |sender: UserId, target: MessageId, text: &str| {
        event(
            conv,
            sender,
            NewBody::Edit {
                target,
                text: text.into(),
            },
        )
    };
    let delete =
        |sender: UserId, target: MessageId| event(conv, sender, NewBody::Delete { target });

    let edited = append(s, edit(a, original.id, "hello")).await?;
    assert_eq!(
        edited.event.body,
        EventBody::Edit {
            target: original.id,
            text: "hello".into()
        }
    );
    assert_err!(
        append(s, edit(b, original.id, "hacked")).await,
        StoreError::Forbidden(_)
    );
    assert_err!(
        append(s, edit(a, theirs.id, "hacked")).await,
        StoreError::Forbidden(_)
    );
    assert_err!(
        append(s, edit(a, foreign.id, "wrong room")).await,
        StoreError::Invalid(_)
    );
    assert_err!(
        append(s, edit(a, next_id(), "nothing")).await,
        StoreError::Invalid(_)
    );
    assert_err!(
        append(s, edit(a, edited.event.id, "an edit")).await,
        StoreError::Invalid(_)
    );
    assert_err!(
        append(s, edit(a, original.id, "")).await,
        StoreError::Invalid(_)
    );
    assert_err!(
        append(s, edit(a, original.id, &"x".repeat(MAX_TEXT_BYTES + 1))).await,
        StoreError::Invalid(_)
    );

    let page = history(s, conv).await?;
    let shown = message_of(&page[1])?;
    assert_eq!(shown.text, "hello");
    assert_eq!(shown.edited_at, Some(edited.event.at));
    assert!(!shown.deleted);

    // A delete drops text and attachment, also from the edits; the events stay in the log.
    let pic = upload(s, conv, a, b"GIF89a").await?;
    let image = append(
        s,
        event(
            conv,
            a,
            NewBody::Message {
                kind: MessageKind::Image,
                text: "caption".into(),
                attachment: Some(pic.id.clone()),
                reply_to: None,
            },
        ),
    )
    .await?
    .event;
    assert_err!(
        append(s, delete(b, image.id)).await,
        StoreError::Forbidden(_)
    );
    let deleted = append(s, delete(a, original.id)).await?;
    assert_eq!(
        deleted.event.body,
        EventBody::Delete {
            target: original.id
        }
    );
    append(s, delete(a, image.id)).await?;
    assert_err!(
        append(s, delete(a, original.id)).await,
        StoreError::Invalid(_)
    );
    assert_err!(
        append(s, edit(a, original.id, "undo")).await,
        StoreError::Invalid(_)
    );

    let page = history(s, conv).await?;
    assert_eq!(seqs(&page), (1..=7).collect::<Vec<_>>());
    let gone = message_of(&page[1])?;
    assert!(gone.deleted);
    assert_eq!(gone.text, "");
    assert_eq!(message_of(&page[2])?.text, "hi", "others untouched");
    assert!(
        matches!(&page[3].body, EventBody::Edit { target, text } if *target == original.id && text.is_empty()),
        "the edit stays in the log without the deleted words: {:?}",
        page[3].body
    );
    let image_now = message_of(&page[4])?;
    assert!(image_now.deleted && image_now.attachment.is_none() && image_now.text.is_empty());
    assert!(matches!(page[5].body, EventBody::Delete { target } if target == original.id));
    assert_eq!(
        s.attachment(&pic.id).await?,
        None,
        "the deleted message's file is gone"
    );
    Ok(())
}

/// Reactions: any member reacts to a live message of the conversation with an emoji, once per
/// emoji, and may take it back; history pages show each message with its reactions now, in the
/// order they were first given, and keep the reaction events in the log.
pub async fn reactions_fold_into_history(db: &dyn TestDb) -> anyhow::Result<()> {
    let store = db.open().await?;
    let s = &*store;
    let (a, b, c) = (
        user(s, "ra").await?,
        user(s, "rb").await?,
        user(s, "rc").await?,
    );
    let conv = direct(s, a, b).await?;
    let elsewhere = room(s, a, false).await?;
    let first = append(s, text(conv, a, "first")).await?.event;
    let second = append(s, text(conv, b, "second")).await?.event;
    let foreign = append(s, text(elsewhere, a, "other")).await?.event;
    let react = |sender: UserId, target: MessageId, emoji: &str, on: bool| {
        event(
            conv,
            sender,
            NewBody::Reaction {
                target,
                emoji: emoji.into(),
                on,
            },
        )
    };

    let given = append(s, react(b, first.id, "👍", true)).await?;
    assert_eq!(
        given.event.body,
        EventBody::Reaction {
            target: first.id,
            emoji: "👍".into(),
            on: true
        }
    );
    assert_eq!(sorted(given.recipients.to_vec()), sorted(vec![a, b]));
    append(s, react(a, second.id, "🎉", true)).await?;
    append(s, react(a, first.id, "👍", true)).await?;
    append(s, react(a, first.id, "👍", true)).await?;
    append(s, react(a, first.id, "😮", true)).await?;
    append(s, react(b, first.id, "👍", false)).await?;
    append(s, react(a, first.id, "😮", false)).await?;

    assert_err!(
        append(s, react(a, foreign.id, "👍", true)).await,
        StoreError::Invalid(_)
    );
    assert_err!(
        append(s, react(a, first.id, "like", true)).await,
        StoreError::Invalid(_)
    );
    assert_err!(
        append(s, react(c, first.id, "👍", true)).await,
        StoreError::NotMember
    );
    assert_err!(
        append(s, react(a, given.event.id, "👍", true)).await,
        StoreError::Invalid(_)
    );

    let page = history(s, conv).await?;
    let first_now = message_of(&page[1])?;
    assert_eq!(
        first_now.reactions,
        vec![Reactions {
            emoji: "👍".into(),
            users: vec![a]
        }]
    );
    let second_now = message_of(&page[2])?;
    assert_eq!(second_now.reactions.len(), 1);
    assert_eq!(second_now.reactions[0].emoji, "🎉");
    assert!(
        matches!(&page[3].body, EventBody::Reaction { target, on: true, .. } if *target == first.id),
        "the reactions stay in the log: {:?}",
        page[3].body
    );

    // A deleted message takes no more reactions and shows none.
    append(s, event(conv, a, NewBody::Delete { target: first.id })).await?;
    assert_err!(
        append(s, react(b, first.id, "👍", true)).await,
        StoreError::Invalid(_)
    );
    let page = history(s, conv).await?;
    assert!(message_of(&page[1])?.reactions.is_empty());
    Ok(())
}
