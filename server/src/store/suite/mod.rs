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
//!
//! This file holds the harness and the helpers; the scenarios are by topic: `accounts`,
//! `conversations`, `appends`, `messages` (their rules, edits and deletes) and `reading`.

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use async_trait::async_trait;
use bytes::Bytes;
use protocol::http::DeviceInfoState;
use protocol::model::{Attachment, ConvKind, Event, EventBody, MemberAction, Message, MessageKind};
use protocol::{
    AttachmentId, ClientMsgId, ConvId, DeviceId, MessageId, Millis, NodeId, Seq, UserId,
};

use super::{
    Appended, AttachmentBlob, Creation, DeviceLogin, NewBody, NewEvent, NewRoom, NewUser, Page,
    SharedStore, Store, StoreError, StoreResult,
};

pub mod accounts;
pub mod appends;
pub mod conversations;
pub mod messages;
pub mod reading;

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
            accounts::users_register_and_are_found,
            accounts::devices_log_in_rename_and_revoke,
            conversations::direct_conversations_are_found_again,
            conversations::concurrent_direct_opens_make_one_conversation,
            conversations::room_membership_rules,
            conversations::direct_conversations_keep_their_members,
            appends::appends_get_contiguous_seqs,
            appends::topped_up_batches_take_in_what_came,
            appends::duplicates_are_recognised_within_and_across_batches,
            appends::duplicates_are_recognised_across_handles,
            appends::refusals_do_not_disturb_the_batch,
            messages::message_rules,
            messages::edits_and_deletes,
            messages::reactions_fold_into_history,
            appends::concurrent_appends_through_two_handles,
            reading::history_pages,
            reading::events_by_origin_with_recipients,
            reading::mark_read_is_monotonic_and_clamped,
            reading::conversation_summaries,
            reading::contacts_are_people_who_share_a_conversation,
            reading::public_rooms_by_name,
            reading::attachments_round_trip,
            reading::recipients_follow_membership_across_handles,
        );
    };
    (@tests $db:expr; $($topic:ident :: $name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() -> anyhow::Result<()> {
                let db = $db.await?;
                $crate::store::suite::$topic::$name(&db).await
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

/// A user named `username` to register, with a stand-in hash, at time 0.
pub(crate) fn named(username: &str) -> NewUser<'_> {
    NewUser {
        username,
        password_hash: "$argon2id$test",
        created_at: 0,
    }
}

async fn user(store: &dyn Store, prefix: &str) -> anyhow::Result<UserId> {
    let name = unique(prefix);
    let new = NewUser {
        created_at: now(),
        ..named(&name)
    };
    Ok(store.create_user(new).await?.id)
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

/// Asserts that a result is the error `$pattern`.
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
use assert_err;
