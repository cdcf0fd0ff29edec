//! Appending: contiguous seqs, topped-up batches, resends recognised, refusals alone, many
//! writers at once.

use super::*;

/// Seqs run on without gaps, within a batch and across batches and conversations.
pub async fn appends_get_contiguous_seqs(db: &dyn TestDb) -> anyhow::Result<()> {
    let store = db.open().await?;
    let s = &*store;
    let (a, b) = (user(s, "sa").await?, user(s, "sb").await?);
    let conv = direct(s, a, b).await?;
    let other = room(s, a, false).await?;

    let batch: Vec<NewEvent> = (0..10)
        .map(|i| {
            if i % 4 == 3 {
                text(other, a, "elsewhere")
            } else {
                text(conv, if i % 2 == 0 { a } else { b }, &format!("m{i}"))
            }
        })
        .collect();
    let sent: Vec<NewEvent> = batch.clone();
    let results = s.append(batch).await;
    assert_eq!(results.len(), 10);
    let mut conv_seqs = Vec::new();
    let mut other_seqs = Vec::new();
    for (ev, result) in sent.iter().zip(results) {
        let appended = result?;
        assert!(!appended.duplicate);
        assert_eq!(appended.event.id, ev.id);
        assert_eq!(appended.event.conv, ev.conv);
        assert_eq!(appended.event.sender, ev.sender);
        if ev.conv == conv {
            assert_eq!(&*appended.recipients, &sorted(vec![a, b])[..]);
            conv_seqs.push(appended.event.seq);
        } else {
            assert_eq!(&*appended.recipients, &[a]);
            other_seqs.push(appended.event.seq);
        }
    }
    assert_eq!(
        conv_seqs,
        (2..=9).collect::<Vec<_>>(),
        "in batch order, after Created"
    );
    assert_eq!(other_seqs, [2, 3]);

    let next = append(s, text(conv, b, "later")).await?;
    assert_eq!(next.event.seq, 10);
    assert_eq!(s.conversation(conv).await?.context("row")?.last_seq, 10);
    let stored = history(s, conv).await?;
    assert_eq!(seqs(&stored), (1..=10).collect::<Vec<_>>());
    assert_eq!(message_of(&stored[1])?.text, "m0");
    assert_eq!(
        stored.last(),
        Some(&next.event),
        "history holds the event as appended"
    );
    assert!(s.append(Vec::new()).await.is_empty());
    Ok(())
}

/// A batch topped up as the store starts writing holds what the top-up added, after what it
/// had, in one run of seqs; a batch that only the top-up fills is written too.
pub async fn topped_up_batches_take_in_what_came(db: &dyn TestDb) -> anyhow::Result<()> {
    let store = db.open().await?;
    let s = &*store;
    let (a, b) = (user(s, "ta").await?, user(s, "tb").await?);
    let conv = direct(s, a, b).await?;

    let mut calls = 0;
    let mut top_up = |batch: &mut Vec<NewEvent>| {
        calls += 1;
        batch.push(text(conv, b, "came while waiting"));
        batch.push(text(conv, a, "and this"));
    };
    let results = s
        .append_topped_up(vec![text(conv, a, "first")], &mut top_up)
        .await;
    assert_eq!(calls, 1, "the top-up is asked once");
    let seqs_got = results
        .into_iter()
        .map(|r| r.map(|a| a.event.seq))
        .collect::<Result<Vec<_>, _>>()?;
    assert_eq!(seqs_got, [2, 3, 4]);

    let mut fill = |batch: &mut Vec<NewEvent>| batch.push(text(conv, b, "only from the top-up"));
    let results = s.append_topped_up(Vec::new(), &mut fill).await;
    assert_eq!(results.len(), 1);
    let mut nothing = |_: &mut Vec<NewEvent>| {};
    assert!(
        s.append_topped_up(Vec::new(), &mut nothing)
            .await
            .is_empty()
    );

    let stored = history(s, conv).await?;
    assert_eq!(seqs(&stored), [1, 2, 3, 4, 5]);
    let texts = stored[1..]
        .iter()
        .map(|e| message_of(e).map(|m| m.text.clone()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    assert_eq!(
        texts,
        [
            "first",
            "came while waiting",
            "and this",
            "only from the top-up"
        ]
    );
    Ok(())
}

/// A resent `(sender, client_id)` gets the first event back, in the same batch or a later one,
/// and nothing is stored twice; another sender may use the same client id.
pub async fn duplicates_are_recognised_within_and_across_batches(
    db: &dyn TestDb,
) -> anyhow::Result<()> {
    let store = db.open().await?;
    let s = &*store;
    let (a, b) = (user(s, "pa").await?, user(s, "pb").await?);
    let conv = direct(s, a, b).await?;
    let with_id = |sender: UserId, body: &str, id: &str| -> anyhow::Result<NewEvent> {
        let mut ev = text(conv, sender, body);
        ev.client_id = Some(cid(id)?);
        ev.device = Some(DeviceId::new("phone")?);
        Ok(ev)
    };

    let results = s
        .append(vec![
            with_id(a, "first", "c1")?,
            with_id(a, "again", "c1")?,
            with_id(b, "mine", "c1")?,
        ])
        .await;
    let [first, again, theirs] =
        <[_; 3]>::try_from(results).map_err(|_| anyhow::anyhow!("three results"))?;
    let (first, again, theirs) = (first?, again?, theirs?);
    assert!(!first.duplicate);
    assert!(again.duplicate, "same batch");
    assert_eq!(again.event, first.event);
    assert_eq!(&*again.recipients, &sorted(vec![a, b])[..]);
    assert!(!theirs.duplicate, "client ids are per sender");
    assert_eq!(theirs.event.seq, first.event.seq + 1);
    assert_eq!(first.event.client_id, Some(cid("c1")?));
    assert_eq!(first.event.device, Some(DeviceId::new("phone")?));

    let later = append(s, with_id(a, "once more", "c1")?).await?;
    assert!(later.duplicate, "later batch");
    assert_eq!(later.event, first.event);
    assert_eq!(message_of(&later.event)?.text, "first");
    assert_eq!(
        seqs(&history(s, conv).await?),
        [1, 2, 3],
        "nothing stored twice"
    );
    assert_eq!(s.conversation(conv).await?.context("row")?.last_seq, 3);
    Ok(())
}

/// Duplicates are recognised through another handle (another process) too, even when both
/// send at once.
pub async fn duplicates_are_recognised_across_handles(db: &dyn TestDb) -> anyhow::Result<()> {
    let handles = [db.open().await?, db.open().await?];
    let (a, b) = (
        user(&*handles[0], "xa").await?,
        user(&*handles[0], "xb").await?,
    );
    let conv = direct(&*handles[0], a, b).await?;
    let mut sent = text(conv, a, "hello");
    sent.client_id = Some(cid("resend-me")?);
    let first = append(&*handles[0], sent.clone()).await?;
    let mut resent = sent.clone();
    resent.id = next_id();
    let second = append(&*handles[1], resent).await?;
    assert!(second.duplicate);
    assert_eq!(second.event, first.event);

    // Twelve racing sends of one new client id through both handles: one stored.
    let mut tasks = Vec::new();
    for i in 0..12 {
        let store = handles[i % 2].clone();
        let mut ev = text(conv, a, "race");
        ev.client_id = Some(cid("racing")?);
        tasks.push(tokio::spawn(async move { append(&*store, ev).await }));
    }
    let mut originals = Vec::new();
    let mut events = BTreeSet::new();
    for task in tasks {
        let appended = task.await??;
        if !appended.duplicate {
            originals.push(appended.event.seq);
        }
        events.insert((appended.event.seq, appended.event.id));
    }
    assert_eq!(originals.len(), 1, "exactly one original");
    assert_eq!(events.len(), 1, "everyone got the same event: {events:?}");
    assert_eq!(seqs(&history(&*handles[1], conv).await?), [1, 2, 3]);
    Ok(())
}

/// Refused events write nothing and leave the rest of their batch alone.
pub async fn refusals_do_not_disturb_the_batch(db: &dyn TestDb) -> anyhow::Result<()> {
    let store = db.open().await?;
    let s = &*store;
    let (a, b, outsider) = (
        user(s, "ba").await?,
        user(s, "bb").await?,
        user(s, "bo").await?,
    );
    let conv = direct(s, a, b).await?;
    let taken = text(conv, a, "one");
    let mut reused_id = text(conv, b, "same id");
    reused_id.id = taken.id;
    let batch = vec![
        taken,
        text(conv, outsider, "let me in"),
        text(conv, b, "two"),
        text(ConvId(i64::MAX), a, "nowhere"),
        text(conv, a, "   "),
        reused_id,
        member(conv, a, MemberAction::Created, a),
        text(conv, a, "three"),
    ];
    let results = s.append(batch).await;
    assert_eq!(results.len(), 8);
    assert_eq!(results[0].as_ref().map(|r| r.event.seq).ok(), Some(2));
    assert_err!(&results[1], StoreError::NotMember);
    assert_eq!(results[2].as_ref().map(|r| r.event.seq).ok(), Some(3));
    assert_err!(&results[3], StoreError::NotFound);
    assert_err!(&results[4], StoreError::Invalid(_));
    assert_err!(&results[5], StoreError::Conflict(_));
    assert_err!(&results[6], StoreError::Invalid(_));
    assert_eq!(results[7].as_ref().map(|r| r.event.seq).ok(), Some(4));

    let texts: Vec<String> = history(s, conv)
        .await?
        .iter()
        .skip(1)
        .map(|e| message_of(e).map(|m| m.text.clone()))
        .collect::<anyhow::Result<_>>()?;
    assert_eq!(texts, ["one", "two", "three"]);
    Ok(())
}

/// 8 tasks × 50 appends to one conversation through two handles: seqs exactly 2..=401 (after
/// Created), each once, history without a hole.
pub async fn concurrent_appends_through_two_handles(db: &dyn TestDb) -> anyhow::Result<()> {
    const TASKS: usize = 8;
    const EACH: usize = 50;
    let handles = [db.open().await?, db.open().await?];
    let owner = user(&*handles[0], "co").await?;
    let conv = room(&*handles[0], owner, true).await?;
    let mut writers = Vec::new();
    for _ in 0..TASKS {
        let u = user(&*handles[0], "cw").await?;
        append(&*handles[0], member(conv, u, MemberAction::Joined, u)).await?;
        writers.push(u);
    }
    let base = handles[0]
        .conversation(conv)
        .await?
        .context("row")?
        .last_seq;

    let mut tasks = Vec::new();
    for (t, writer) in writers.into_iter().enumerate() {
        let store = handles[t % 2].clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::with_capacity(EACH);
            for i in 0..EACH {
                let mut ev = text(conv, writer, &format!("t{t} m{i}"));
                ev.client_id = Some(cid(&format!("m{i}"))?);
                let appended = append(&*store, ev).await?;
                ensure!(!appended.duplicate, "a new client id reported duplicate");
                got.push(appended.event.seq);
            }
            ensure!(
                got.windows(2).all(|w| w[0] < w[1]),
                "one task's seqs go up: {got:?}"
            );
            Ok(got)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    all.sort_unstable();
    let expected: Vec<Seq> = (base + 1..=base + (TASKS * EACH) as u64).collect();
    assert_eq!(all, expected, "no gap, no repeat");

    let stored = history(&*handles[1], conv).await?;
    assert_eq!(
        seqs(&stored),
        (1..=base + (TASKS * EACH) as u64).collect::<Vec<_>>()
    );
    let ids: BTreeSet<MessageId> = stored.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), stored.len(), "ids unique");
    assert_eq!(
        handles[1]
            .conversation(conv)
            .await?
            .context("row")?
            .last_seq,
        base + (TASKS * EACH) as u64
    );
    Ok(())
}
