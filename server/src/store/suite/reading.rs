//! Reading: history pages, events by origin, read markers, conversation lists, contacts,
//! public rooms, attachments, recipients.

use super::*;

/// Latest, Before and After pages, ascending, with `has_more` in the direction asked.
pub async fn history_pages(db: &dyn TestDb) -> anyhow::Result<()> {
    let store = db.open().await?;
    let s = &*store;
    let (a, b) = (user(s, "ha").await?, user(s, "hb").await?);
    let conv = direct(s, a, b).await?;
    let batch: Vec<NewEvent> = (0..25).map(|i| text(conv, a, &format!("m{i}"))).collect();
    for r in s.append(batch).await {
        r?;
    }
    // 26 events: Created, then 25 messages.
    let page = |events: &[Event]| seqs(events);
    let (latest, more) = s.events(conv, Page::Latest, 10).await?;
    assert_eq!((page(&latest), more), ((17..=26).collect(), true));
    let (before, more) = s.events(conv, Page::Before(17), 10).await?;
    assert_eq!((page(&before), more), ((7..=16).collect(), true));
    let (oldest, more) = s.events(conv, Page::Before(7), 10).await?;
    assert_eq!((page(&oldest), more), ((1..=6).collect(), false));
    let (exact, more) = s.events(conv, Page::Before(11), 10).await?;
    assert_eq!(
        (page(&exact), more),
        ((1..=10).collect(), false),
        "a full last page has no more"
    );
    let (first, more) = s.events(conv, Page::After(0), 10).await?;
    assert_eq!((page(&first), more), ((1..=10).collect(), true));
    let (tail, more) = s.events(conv, Page::After(20), 10).await?;
    assert_eq!((page(&tail), more), ((21..=26).collect(), false));
    let (none, more) = s.events(conv, Page::After(26), 10).await?;
    assert!(none.is_empty() && !more);
    let (all, more) = s.events(conv, Page::Latest, 100).await?;
    assert_eq!((all.len(), more), (26, false));
    assert_eq!(message_of(&all[25])?.text, "m24");
    let (nothing, more) = s.events(ConvId(i64::MAX), Page::Latest, 10).await?;
    assert!(nothing.is_empty() && !more);
    Ok(())
}

/// A survivor finds what a node persisted since a time, ascending, with recipients.
pub async fn events_by_origin_with_recipients(db: &dyn TestDb) -> anyhow::Result<()> {
    let store = db.open().await?;
    let s = &*store;
    let (a, b, c) = (
        user(s, "oa").await?,
        user(s, "ob").await?,
        user(s, "oc").await?,
    );
    let conv = room(s, a, true).await?;
    append(s, member(conv, a, MemberAction::Invited, b)).await?;
    let (dead, alive) = (node()?, node()?);
    let from = |origin: &NodeId, at: Millis, mut ev: NewEvent| {
        ev.origin = origin.clone();
        ev.at = at;
        ev
    };
    let t = now();
    let results = s
        .append(vec![
            from(&dead, t, text(conv, a, "old")),
            from(&dead, t + 10, text(conv, b, "one")),
            from(&alive, t + 11, text(conv, a, "not theirs")),
            from(&dead, t + 12, text(conv, a, "two")),
            from(&dead, t + 13, member(conv, b, MemberAction::Left, b)),
        ])
        .await;
    for r in results {
        r?;
    }
    // c joins afterwards: not a recipient of what happened before.
    append(s, member(conv, c, MemberAction::Joined, c)).await?;

    let found = s.events_by_origin(&dead, t + 5, 100).await?;
    let texts: Vec<String> = found
        .iter()
        .map(|x| match &x.event.body {
            EventBody::Message(m) => m.text.clone(),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(texts.len(), 3, "{texts:?}");
    assert_eq!(&texts[..2], ["one", "two"]);
    assert!(found.iter().all(|x| !x.duplicate));
    assert!(found.windows(2).all(|w| w[0].event.at <= w[1].event.at));
    assert_eq!(
        &*found[0].recipients,
        &[a],
        "b has left since, c joined later"
    );
    assert_eq!(
        &*found[2].recipients,
        &sorted(vec![a, b])[..],
        "the leaver gets their Left"
    );

    let limited = s.events_by_origin(&dead, t, 2).await?;
    assert_eq!(limited.len(), 2);
    assert_eq!(message_of(&limited[0].event)?.text, "old");
    assert!(s.events_by_origin(&dead, t + 14, 100).await?.is_empty());
    Ok(())
}

/// Read markers only move forward, stop at the last seq, and need membership.
pub async fn mark_read_is_monotonic_and_clamped(db: &dyn TestDb) -> anyhow::Result<()> {
    let store = db.open().await?;
    let s = &*store;
    let (a, b, outsider) = (
        user(s, "ka").await?,
        user(s, "kb").await?,
        user(s, "ko").await?,
    );
    let conv = direct(s, a, b).await?;
    for r in s
        .append((0..5).map(|i| text(conv, b, &format!("m{i}"))).collect())
        .await
    {
        r?;
    }
    // Seqs 1..=6.
    assert_eq!(s.mark_read(conv, a, 3).await?, Some(3));
    assert_eq!(s.mark_read(conv, a, 2).await?, None);
    assert_eq!(s.mark_read(conv, a, 3).await?, None);
    assert_eq!(
        s.mark_read(conv, a, 1_000).await?,
        Some(6),
        "clamped to the last seq"
    );
    assert_eq!(s.mark_read(conv, a, 7).await?, None);
    assert_eq!(s.mark_read(conv, a, u64::MAX).await?, None);
    assert_err!(s.mark_read(conv, outsider, 2).await, StoreError::NotMember);
    assert_err!(
        s.mark_read(ConvId(i64::MAX), a, 2).await,
        StoreError::NotMember
    );
    let markers: Vec<(UserId, Seq)> = s
        .members(conv)
        .await?
        .into_iter()
        .map(|m| (m.user, m.read_seq))
        .collect();
    assert!(markers.contains(&(a, 6)), "{markers:?}");
    assert!(markers.contains(&(b, 1)), "{markers:?}");
    Ok(())
}

/// Conversation lists: names, peers, counts, last message, unread, order.
pub async fn conversation_summaries(db: &dyn TestDb) -> anyhow::Result<()> {
    let store = db.open().await?;
    let s = &*store;
    let (a, b, c) = (
        user(s, "la").await?,
        user(s, "lb").await?,
        user(s, "lc").await?,
    );
    let b_name = s.user_by_id(b).await?.context("b")?.username;
    let dm = direct(s, a, b).await?;
    let room_name = unique("room");
    let (group, _) = s
        .create_room(new_room(a, &room_name, true, &node()?))
        .await?;
    append(s, member(group, c, MemberAction::Joined, c)).await?;
    assert!(s.conversations_of(user(s, "lz").await?).await?.is_empty());

    let t = now();
    let at = |mut ev: NewEvent, at: Millis| {
        ev.at = at;
        ev
    };
    let results = s
        .append(vec![
            at(text(dm, b, "one"), t + 1),
            at(text(dm, b, "two"), t + 2),
            at(text(dm, b, "three"), t + 3),
            at(text(dm, a, "mine"), t + 4),
            at(text(group, c, "hello room"), t + 5),
        ])
        .await;
    let seq_of = |i: usize| {
        results[i]
            .as_ref()
            .map(|r| r.event.seq)
            .map_err(|e| anyhow::anyhow!("{e}"))
    };
    let two_seq = seq_of(1)?;
    let three = results[2]
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .event
        .clone();
    let mine = results[3]
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .event
        .clone();
    // b marked the dm read up to "two".
    s.mark_read(dm, b, two_seq).await?;
    // A refused event is no activity: the room stays first.
    assert_err!(
        append(s, at(text(dm, c, "not a member"), t + 6)).await,
        StoreError::NotMember
    );

    let list = s.conversations_of(a).await?;
    let order: Vec<ConvId> = list.iter().map(|x| x.id).collect();
    assert_eq!(order, [group, dm], "most recent activity first");
    let (g, d) = (&list[0], &list[1]);
    assert_eq!(
        (g.kind, g.name.as_str(), g.public, g.member_count),
        (ConvKind::Room, room_name.as_str(), true, 2)
    );
    assert!(g.peer.is_none() && g.peer_read_seq.is_none());
    assert_eq!(g.unread, 1);
    assert_eq!(g.last_message.as_ref().map(|e| e.sender), Some(c));

    assert_eq!(d.kind, ConvKind::Direct);
    assert_eq!(
        d.name, b_name,
        "a direct conversation is named after the peer"
    );
    assert_eq!(
        d.peer.as_ref().map(|p| (p.id, p.username.as_str())),
        Some((b, b_name.as_str()))
    );
    assert_eq!(d.member_count, 2);
    assert_eq!(d.last_seq, 5);
    assert_eq!(d.read_seq, 1);
    assert_eq!(d.unread, 3, "b's three messages, not a's own");
    assert_eq!(d.peer_read_seq, Some(two_seq));
    assert_eq!(d.last_message.as_ref(), Some(&mine));

    // Reading, editing and deleting show in the list.
    s.mark_read(dm, a, three.seq).await?;
    append(
        s,
        at(
            event(
                dm,
                a,
                NewBody::Edit {
                    target: mine.id,
                    text: "mine!".into(),
                },
            ),
            t + 7,
        ),
    )
    .await?;
    append(
        s,
        at(event(dm, b, NewBody::Delete { target: three.id }), t + 8),
    )
    .await?;
    let list = s.conversations_of(a).await?;
    let d = list.iter().find(|x| x.id == dm).context("dm listed")?;
    assert_eq!(d.read_seq, three.seq);
    assert_eq!(d.unread, 0);
    let last = d.last_message.as_ref().context("last message")?;
    assert_eq!(last.id, mine.id, "edits and deletes are not messages");
    assert_eq!(message_of(last)?.text, "mine!");
    assert_eq!(
        list.first().map(|x| x.id),
        Some(dm),
        "the dm is active again"
    );
    assert_eq!(d.last_seq, 7);

    let for_b = s.conversations_of(b).await?;
    let d = for_b
        .iter()
        .find(|x| x.id == dm)
        .context("dm listed for b")?;
    assert_eq!(d.peer.as_ref().map(|p| p.id), Some(a));
    assert_eq!(
        (d.read_seq, d.unread, d.peer_read_seq),
        (two_seq, 1, Some(three.seq))
    );
    assert!(!for_b.iter().any(|x| x.id == group), "b is not in the room");
    Ok(())
}

/// Contacts: everyone who shares a conversation, once, not oneself, not former members.
pub async fn contacts_are_people_who_share_a_conversation(db: &dyn TestDb) -> anyhow::Result<()> {
    let store = db.open().await?;
    let s = &*store;
    let (a, b, c, d, e) = (
        user(s, "na").await?,
        user(s, "nb").await?,
        user(s, "nc").await?,
        user(s, "nd").await?,
        user(s, "ne").await?,
    );
    direct(s, a, b).await?;
    let r = room(s, a, false).await?;
    for u in [b, c, d] {
        append(s, member(r, a, MemberAction::Invited, u)).await?;
    }
    append(s, member(r, d, MemberAction::Left, d)).await?;
    direct(s, d, e).await?;
    assert_eq!(s.contacts(a).await?, sorted(vec![b, c]));
    assert_eq!(s.contacts(c).await?, sorted(vec![a, b]));
    assert_eq!(s.contacts(d).await?, vec![e]);
    assert!(s.contacts(user(s, "nf").await?).await?.is_empty());
    Ok(())
}

/// Public rooms by name, matched anywhere and regardless of case; private ones never.
pub async fn public_rooms_by_name(db: &dyn TestDb) -> anyhow::Result<()> {
    let store = db.open().await?;
    let s = &*store;
    let (a, b) = (user(s, "pa").await?, user(s, "pb").await?);
    let tag = unique("tag");
    let make = |name: String, public: bool| async move {
        s.create_room(new_room(a, &name, public, &node()?))
            .await
            .map(|x| x.0)
            .map_err(anyhow::Error::from)
    };
    let beta = make(format!("beta {tag}"), true).await?;
    let alpha = make(format!("Alpha {}", tag.to_uppercase()), true).await?;
    let _hidden = make(format!("gamma {tag}"), false).await?;
    append(s, member(beta, b, MemberAction::Joined, b)).await?;

    let found = s.public_rooms(&tag, 10).await?;
    let got: Vec<(ConvId, u32)> = found.iter().map(|r| (r.id, r.member_count)).collect();
    assert_eq!(got, [(alpha, 1), (beta, 2)], "by name, private left out");
    assert_eq!(found[1].name, format!("beta {tag}"));
    assert_eq!(s.public_rooms(&tag, 1).await?.len(), 1);
    assert_eq!(
        s.public_rooms(&format!("ta {tag}"), 10)
            .await?
            .first()
            .map(|r| r.id),
        Some(beta)
    );
    assert!(s.public_rooms(&unique("none"), 10).await?.is_empty());
    assert!(s.public_rooms("", 3).await?.len() <= 3);
    assert!(!s.public_rooms("", 3).await?.is_empty());
    Ok(())
}

/// Attachments come back as stored, once per id; missing ones are `None`.
pub async fn attachments_round_trip(db: &dyn TestDb) -> anyhow::Result<()> {
    let store = db.open().await?;
    let s = &*store;
    let a = user(s, "fa").await?;
    let conv = room(s, a, false).await?;
    let data: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let blob = AttachmentBlob {
        meta: Attachment {
            id: AttachmentId::new(unique("file"))?,
            name: "notes.pdf".into(),
            mime: "application/pdf".into(),
            size: data.len() as u64,
            conv,
        },
        uploader: a,
        created_at: 1_234,
        data: Bytes::from(data),
    };
    assert_eq!(s.attachment_bytes(a).await?, 0);
    s.put_attachment(blob.clone()).await?;
    assert_eq!(s.attachment(&blob.meta.id).await?, Some(blob.clone()));
    let mut second = blob.clone();
    second.meta.id = AttachmentId::new(unique("file"))?;
    s.put_attachment(second).await?;
    assert_eq!(
        s.attachment_bytes(a).await?,
        200_000,
        "a quota counts every upload"
    );
    assert_err!(
        s.put_attachment(blob.clone()).await,
        StoreError::Conflict(_)
    );
    let mut lying = blob.clone();
    lying.meta.id = AttachmentId::new(unique("file"))?;
    lying.meta.size += 1;
    assert_err!(
        s.put_attachment(lying.clone()).await,
        StoreError::Invalid(_)
    );
    assert_eq!(s.attachment(&lying.meta.id).await?, None);
    let mut nowhere = blob.clone();
    nowhere.meta.id = AttachmentId::new(unique("file"))?;
    nowhere.meta.conv = ConvId(i64::MAX);
    assert_err!(s.put_attachment(nowhere).await, StoreError::NotFound);
    Ok(())
}

/// `recipients` answers the current members, also after another handle changed them.
pub async fn recipients_follow_membership_across_handles(db: &dyn TestDb) -> anyhow::Result<()> {
    let (one, two) = (db.open().await?, db.open().await?);
    let (a, b, c) = (
        user(&*one, "ya").await?,
        user(&*one, "yb").await?,
        user(&*one, "yc").await?,
    );
    let conv = room(&*one, a, true).await?;
    assert_eq!(&*one.recipients(conv).await?, &[a]);
    assert_eq!(&*two.recipients(conv).await?, &[a]);
    append(&*two, member(conv, b, MemberAction::Joined, b)).await?;
    assert_eq!(
        &*one.recipients(conv).await?,
        &sorted(vec![a, b])[..],
        "seen through the other handle"
    );
    // An append through the first handle must see b as a member, and c's join from the second.
    append(&*one, text(conv, b, "hi")).await?;
    append(&*two, member(conv, c, MemberAction::Joined, c)).await?;
    let hello = append(&*one, text(conv, c, "hello")).await?;
    assert_eq!(&*hello.recipients, &sorted(vec![a, b, c])[..]);
    append(&*two, member(conv, b, MemberAction::Left, b)).await?;
    assert_err!(
        append(&*one, text(conv, b, "gone")).await,
        StoreError::NotMember
    );
    assert_eq!(&*one.recipients(conv).await?, &sorted(vec![a, c])[..]);
    assert_err!(one.recipients(ConvId(i64::MAX)).await, StoreError::NotFound);
    Ok(())
}
