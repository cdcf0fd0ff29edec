//! The behavioural suite every [`Store`] implementation runs: the same scenarios, the same
//! assertions, whatever the database.
//!
//! Scenarios assume a database shared with other tests and kept between runs (PostgreSQL):
//! each makes its own users (random names), rooms and node ids, and never counts what it did
//! not create. A backend provides a [`TestDb`], whose [`TestDb::open`] gives a new handle (own
//! connections, own caches, as another process would have) onto the same database, and
//! instantiates the suite with [`store_suite!`]:
//!
//! ```ignore
//! crate::store::suite::store_suite!(my_test_db());   // an async fn -> anyhow::Result<impl TestDb>
//! ```

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use async_trait::async_trait;
use bytes::Bytes;
use protocol::http::DeviceInfoState;
use protocol::limits::MAX_TEXT_BYTES;
use protocol::model::{Attachment, ConvKind, Event, EventBody, MemberAction, Message, MessageKind};
use protocol::{
    AttachmentId, ClientMsgId, ConvId, DeviceId, MessageId, Millis, NodeId, Seq, UserId,
};

use super::{
    Appended, AttachmentBlob, Creation, NewBody, NewEvent, NewRoom, Page, SharedStore, Store,
    StoreError, StoreResult,
};

/// A database the suite can open handles onto.
#[async_trait]
pub trait TestDb: Send + Sync {
    /// A new handle onto the database, sharing nothing in memory with the others.
    async fn open(&self) -> anyhow::Result<SharedStore>;
}

/// Expands to one `#[tokio::test]` per scenario. `$db` is an expression whose `.await` gives
/// `anyhow::Result<impl TestDb>`, evaluated afresh for each test.
macro_rules! store_suite {
    ($db:expr) => {
        $crate::store::suite::store_suite!(@tests $db;
            users_register_and_are_found,
            devices_log_in_rename_and_revoke,
            direct_conversations_are_found_again,
            concurrent_direct_opens_make_one_conversation,
            room_membership_rules,
            direct_conversations_keep_their_members,
            appends_get_contiguous_seqs,
            topped_up_batches_take_in_what_came,
            duplicates_are_recognised_within_and_across_batches,
            duplicates_are_recognised_across_handles,
            refusals_do_not_disturb_the_batch,
            message_rules,
            edits_and_deletes,
            concurrent_appends_through_two_handles,
            history_pages,
            events_by_origin_with_recipients,
            mark_read_is_monotonic_and_clamped,
            conversation_summaries,
            contacts_are_people_who_share_a_conversation,
            public_rooms_by_name,
            attachments_round_trip,
            recipients_follow_membership_across_handles,
        );
    };
    (@tests $db:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() -> anyhow::Result<()> {
                let db = $db.await?;
                $crate::store::suite::$name(&db).await
            }
        )*
    };
}
pub(crate) use store_suite;

// ---------------------------------------------------------------------------------------------
// Helpers

fn now() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A name nobody else uses, valid as a username, room name and id.
fn unique(prefix: &str) -> String {
    format!("{prefix}-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// Event ids unique across tests and runs sharing a database: a random start, then counting.
fn next_id() -> MessageId {
    static NEXT: OnceLock<AtomicI64> = OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicI64::new((rand::random::<u64>() >> 2) as i64));
    MessageId(next.fetch_add(1, Ordering::Relaxed))
}

fn node() -> anyhow::Result<NodeId> {
    Ok(NodeId::new(unique("node"))?)
}

/// A conversation's first event: a fresh id, now, persisted by `origin`.
fn creation(origin: &NodeId) -> Creation<'_> {
    Creation {
        id: next_id(),
        origin,
        at: now(),
    }
}

/// A room to create, with its first event as [`creation`] makes it.
fn new_room<'a>(creator: UserId, name: &'a str, public: bool, origin: &'a NodeId) -> NewRoom<'a> {
    NewRoom {
        creator,
        name,
        public,
        creation: creation(origin),
    }
}

fn cid(s: &str) -> anyhow::Result<ClientMsgId> {
    Ok(ClientMsgId::new(s)?)
}

async fn user(store: &dyn Store, prefix: &str) -> anyhow::Result<UserId> {
    Ok(store
        .create_user(&unique(prefix), "$argon2id$test", now())
        .await?
        .id)
}

async fn room(store: &dyn Store, creator: UserId, public: bool) -> anyhow::Result<ConvId> {
    Ok(store
        .create_room(new_room(creator, &unique("room"), public, &node()?))
        .await?
        .0)
}

async fn direct(store: &dyn Store, a: UserId, b: UserId) -> anyhow::Result<ConvId> {
    Ok(store.open_direct(a, b, creation(&node()?)).await?.0)
}

/// A new event with a fresh id, now, from no device, persisted by a random node.
fn event(conv: ConvId, sender: UserId, body: NewBody) -> NewEvent {
    NewEvent {
        conv,
        id: next_id(),
        at: now(),
        sender,
        device: None,
        client_id: None,
        body,
        origin: NodeId::new("suite").unwrap_or_else(|_| unreachable!("a valid node id")),
    }
}

fn text(conv: ConvId, sender: UserId, text: &str) -> NewEvent {
    event(
        conv,
        sender,
        NewBody::Message {
            kind: MessageKind::Text,
            text: text.into(),
            attachment: None,
            reply_to: None,
        },
    )
}

fn member(conv: ConvId, sender: UserId, action: MemberAction, user: UserId) -> NewEvent {
    event(conv, sender, NewBody::Member { action, user })
}

/// Appends one event.
async fn append(store: &dyn Store, ev: NewEvent) -> StoreResult<Appended> {
    store
        .append(vec![ev])
        .await
        .into_iter()
        .next()
        .unwrap_or_else(|| Err(StoreError::Internal("append returned no result".into())))
}

fn message_of(event: &Event) -> anyhow::Result<&Message> {
    match &event.body {
        EventBody::Message(m) => Ok(m),
        other => bail!("expected a message, got {other:?}"),
    }
}

/// Every event of a conversation, ascending.
async fn history(store: &dyn Store, conv: ConvId) -> anyhow::Result<Vec<Event>> {
    let (events, more) = store.events(conv, Page::After(0), 10_000).await?;
    ensure!(!more, "history longer than expected");
    Ok(events)
}

fn seqs(events: &[Event]) -> Vec<Seq> {
    events.iter().map(|e| e.seq).collect()
}

fn sorted(mut users: Vec<UserId>) -> Vec<UserId> {
    users.sort();
    users
}

async fn upload(
    store: &dyn Store,
    conv: ConvId,
    uploader: UserId,
    data: &'static [u8],
) -> anyhow::Result<Attachment> {
    let meta = Attachment {
        id: AttachmentId::new(unique("att"))?,
        name: "photo.png".into(),
        mime: "image/png".into(),
        size: data.len() as u64,
        conv,
    };
    store
        .put_attachment(AttachmentBlob {
            meta: meta.clone(),
            uploader,
            created_at: now(),
            data: Bytes::from_static(data),
        })
        .await?;
    Ok(meta)
}

macro_rules! assert_err {
    ($result:expr, $pattern:pat) => {{
        let result = $result;
        assert!(
            matches!(result, Err($pattern)),
            "expected {}, got {result:?}",
            stringify!($pattern)
        );
    }};
}

// ---------------------------------------------------------------------------------------------
// Users and devices

/// A user is created once and found by name and by id.
pub async fn users_register_and_are_found(db: &dyn TestDb) -> anyhow::Result<()> {
    let store = db.open().await?;
    let name = unique("ann");
    let at = now();
    let ann = store.create_user(&name, "hash-1", at).await?;
    assert_eq!(ann.username, name);
    assert_eq!(ann.password_hash, "hash-1");
    assert_eq!(ann.created_at, at);
    assert_err!(
        store.create_user(&name, "hash-2", at).await,
        StoreError::Conflict(_)
    );

    assert_eq!(store.user_by_name(&name).await?, Some(ann.clone()));
    assert_eq!(store.user_by_id(ann.id).await?, Some(ann.clone()));
    assert_eq!(store.user_by_name(&unique("nobody")).await?, None);
    assert_eq!(store.user_by_id(UserId(i64::MAX)).await?, None);

    let bob = store.create_user(&unique("bob"), "hash-3", at).await?;
    assert_ne!(bob.id, ann.id);
    Ok(())
}

/// Logging in creates a device, logging in again renames and re-activates it, revoking bumps
/// its generation for good.
pub async fn devices_log_in_rename_and_revoke(db: &dyn TestDb) -> anyhow::Result<()> {
    let store = db.open().await?;
    let u = user(&*store, "dev").await?;
    let laptop = DeviceId::new("laptop-1")?;
    let phone = DeviceId::new("phone-1")?;

    let first = store.login_device(u, &laptop, "Laptop", 1_000).await?;
    assert_eq!(
        (first.state, first.generation),
        (DeviceInfoState::Active, 0)
    );
    assert_eq!((first.created_at, first.last_login), (1_000, 1_000));
    assert_eq!(first.name, "Laptop");

    let again = store.login_device(u, &laptop, "Work laptop", 2_000).await?;
    assert_eq!(again.name, "Work laptop");
    assert_eq!((again.created_at, again.last_login), (1_000, 2_000));
    store.login_device(u, &phone, "Phone", 3_000).await?;

    let listed = store.devices(u).await?;
    let ids: Vec<&str> = listed.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["phone-1", "laptop-1"], "most recent login first");

    let revoked = store.revoke_device(u, &laptop).await?;
    assert_eq!(
        (revoked.state, revoked.generation),
        (DeviceInfoState::Revoked, 1)
    );
    assert_eq!(store.device(u, &laptop).await?, Some(revoked));

    let back = store.login_device(u, &laptop, "Laptop", 4_000).await?;
    assert_eq!(
        (back.state, back.generation),
        (DeviceInfoState::Active, 1),
        "generation survives"
    );

    assert_err!(
        store.revoke_device(u, &DeviceId::new("ghost")?).await,
        StoreError::NotFound
    );
    assert_eq!(store.device(u, &DeviceId::new("ghost")?).await?, None);
    let other = user(&*store, "dev").await?;
    assert_eq!(
        store.device(other, &laptop).await?,
        None,
        "devices are per user"
    );
    assert_err!(
        store.revoke_device(other, &laptop).await,
        StoreError::NotFound
    );
    assert_err!(
        store.login_device(UserId(i64::MAX), &laptop, "x", 1).await,
        StoreError::NotFound
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Conversations

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

// ---------------------------------------------------------------------------------------------
// Appending

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

// ---------------------------------------------------------------------------------------------
// Reading

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
    s.put_attachment(blob.clone()).await?;
    assert_eq!(s.attachment(&blob.meta.id).await?, Some(blob.clone()));
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
