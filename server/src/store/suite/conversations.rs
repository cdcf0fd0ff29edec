//! Conversations: direct ones found again and made once, rooms and their membership rules.

use super::*;

/// Opening a direct conversation twice, either way round, finds the first one.
pub async fn direct_conversations_are_found_again(db: &dyn TestDb) -> anyhow::Result<()> {
    let store = db.open().await?;
    let (a, b) = (user(&*store, "da").await?, user(&*store, "db").await?);
    let created_id = next_id();
    let (conv, created) = store
        .open_direct(
            a,
            b,
            Creation {
                id: created_id,
                origin: &node()?,
                at: now(),
            },
        )
        .await?;
    let created = created.context("the first open creates")?;
    assert_eq!(created.event.seq, 1);
    assert_eq!(created.event.id, created_id);
    assert_eq!(created.event.conv, conv);
    assert_eq!(
        created.event.body,
        EventBody::Member {
            action: MemberAction::Created,
            user: a
        }
    );
    assert_eq!(&*created.recipients, &sorted(vec![a, b])[..]);

    let (again, none) = store.open_direct(b, a, creation(&node()?)).await?;
    assert_eq!(again, conv);
    assert!(none.is_none(), "nothing created the second time");

    let record = store
        .conversation(conv)
        .await?
        .context("conversation row")?;
    assert_eq!(
        (record.kind, record.last_seq, record.created_by),
        (ConvKind::Direct, 1, a)
    );
    let members = store.members(conv).await?;
    assert_eq!(members.len(), 2);
    assert!(members.iter().all(|m| m.joined_seq == 1));
    assert_eq!(history(&*store, conv).await?, vec![created.event]);

    assert_err!(
        store.open_direct(a, a, creation(&node()?)).await,
        StoreError::Invalid(_)
    );
    assert_err!(
        store
            .open_direct(a, UserId(i64::MAX), creation(&node()?))
            .await,
        StoreError::NotFound
    );
    Ok(())
}

/// Many opens of the same pair at once, through two handles, make one conversation.
pub async fn concurrent_direct_opens_make_one_conversation(db: &dyn TestDb) -> anyhow::Result<()> {
    let handles = [db.open().await?, db.open().await?];
    let (a, b) = (
        user(&*handles[0], "ca").await?,
        user(&*handles[0], "cb").await?,
    );
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = handles[i % 2].clone();
        let (x, y) = if i % 3 == 0 { (a, b) } else { (b, a) };
        let origin = node()?;
        tasks.push(tokio::spawn(async move {
            store.open_direct(x, y, creation(&origin)).await
        }));
    }
    let mut convs = BTreeSet::new();
    let mut created = 0;
    for task in tasks {
        let (conv, first) = task.await??;
        convs.insert(conv);
        created += usize::from(first.is_some());
    }
    assert_eq!(convs.len(), 1, "one conversation: {convs:?}");
    assert_eq!(created, 1, "exactly one open created it");
    let conv = *convs.first().context("a conversation")?;
    assert_eq!(seqs(&history(&*handles[1], conv).await?), [1]);
    Ok(())
}

/// Invitations, joins and leaves, and who gets each event.
pub async fn room_membership_rules(db: &dyn TestDb) -> anyhow::Result<()> {
    let store = db.open().await?;
    let s = &*store;
    let (a, b, c, d) = (
        user(s, "ra").await?,
        user(s, "rb").await?,
        user(s, "rc").await?,
        user(s, "rd").await?,
    );

    let name = unique("room");
    let (private, created) = s.create_room(new_room(a, &name, false, &node()?)).await?;
    assert_eq!(&*created.recipients, &[a]);
    let record = s.conversation(private).await?.context("room row")?;
    assert_eq!(
        (record.kind, record.name.as_str(), record.public),
        (ConvKind::Room, name.as_str(), false)
    );
    assert_err!(
        s.create_room(new_room(a, "  ", true, &node()?)).await,
        StoreError::Invalid(_)
    );
    assert_err!(
        s.create_room(new_room(UserId(i64::MAX), "orphan", true, &node()?))
            .await,
        StoreError::NotFound
    );

    // Invitations: by members only, of existing non-members.
    let invited = append(s, member(private, a, MemberAction::Invited, b)).await?;
    assert_eq!(invited.event.seq, 2);
    assert_eq!(
        &*invited.recipients,
        &sorted(vec![a, b])[..],
        "the new member gets it"
    );
    assert_eq!(s.joined_seq(private, b).await?, Some(2));
    assert_err!(
        append(s, member(private, c, MemberAction::Invited, d)).await,
        StoreError::NotMember
    );
    assert_err!(
        append(s, member(private, a, MemberAction::Invited, b)).await,
        StoreError::Conflict(_)
    );
    assert_err!(
        append(
            s,
            member(private, a, MemberAction::Invited, UserId(i64::MAX))
        )
        .await,
        StoreError::NotFound
    );

    // Joining: public rooms only, by the user themself, once.
    assert_err!(
        append(s, member(private, c, MemberAction::Joined, c)).await,
        StoreError::Forbidden(_)
    );
    let public = room(s, a, true).await?;
    let joined = append(s, member(public, c, MemberAction::Joined, c)).await?;
    assert_eq!(&*joined.recipients, &sorted(vec![a, c])[..]);
    assert!(s.is_member(public, c).await?);
    assert_err!(
        append(s, member(public, c, MemberAction::Joined, c)).await,
        StoreError::Conflict(_)
    );
    assert_err!(
        append(s, member(public, a, MemberAction::Joined, d)).await,
        StoreError::Forbidden(_)
    );

    // Leaving: by oneself, once; the leaver gets their own Left event, later ones not.
    assert_err!(
        append(s, member(private, a, MemberAction::Left, b)).await,
        StoreError::Forbidden(_)
    );
    let left = append(s, member(private, b, MemberAction::Left, b)).await?;
    assert_eq!(
        &*left.recipients,
        &sorted(vec![a, b])[..],
        "the leaver is told"
    );
    assert!(!s.is_member(private, b).await?);
    assert_eq!(s.joined_seq(private, b).await?, None);
    assert_err!(
        append(s, member(private, b, MemberAction::Left, b)).await,
        StoreError::NotMember
    );
    assert_err!(
        append(s, text(private, b, "still here?")).await,
        StoreError::NotMember
    );
    let after = append(s, text(private, a, "bye b")).await?;
    assert_eq!(&*after.recipients, &[a]);

    // Created is never appended.
    assert_err!(
        append(s, member(private, a, MemberAction::Created, a)).await,
        StoreError::Invalid(_)
    );

    let names: Vec<UserId> = s
        .members(public)
        .await?
        .into_iter()
        .map(|m| m.user)
        .collect();
    assert_eq!(sorted(names), sorted(vec![a, c]));
    let history = history(s, private).await?;
    assert_eq!(seqs(&history), [1, 2, 3, 4]);
    assert!(matches!(
        history[2].body,
        EventBody::Member { action: MemberAction::Left, user } if user == b
    ));
    Ok(())
}

/// A direct conversation can be neither left nor joined, nor get a third member.
pub async fn direct_conversations_keep_their_members(db: &dyn TestDb) -> anyhow::Result<()> {
    let store = db.open().await?;
    let s = &*store;
    let (a, b, c) = (
        user(s, "ka").await?,
        user(s, "kb").await?,
        user(s, "kc").await?,
    );
    let conv = direct(s, a, b).await?;
    assert_err!(
        append(s, member(conv, a, MemberAction::Left, a)).await,
        StoreError::Forbidden(_)
    );
    assert_err!(
        append(s, member(conv, a, MemberAction::Invited, c)).await,
        StoreError::Forbidden(_)
    );
    assert_err!(
        append(s, member(conv, c, MemberAction::Joined, c)).await,
        StoreError::Forbidden(_)
    );
    assert_err!(
        append(s, text(conv, c, "hello?")).await,
        StoreError::NotMember
    );
    assert_eq!(
        sorted(s.members(conv).await?.into_iter().map(|m| m.user).collect()),
        sorted(vec![a, b])
    );
    assert_eq!(seqs(&history(s, conv).await?), [1]);
    Ok(())
}
