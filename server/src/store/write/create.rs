//! Creating conversations: a direct conversation found or made for two users, a room with its
//! creator as only member, each with its first event (`Member { Created }`), in a write
//! transaction of its own.

use std::sync::Arc;

use protocol::model::{ConvKind, Event, EventBody, MemberAction};
use protocol::{ConvId, UserId};

use super::{NewConversation, WriteOps, WriteTransactions};
use crate::store::rules::check_room_name;
use crate::store::{Appended, Creation, NewRoom, StoreError, StoreResult};

/// Finds or creates the direct conversation of `a` and `b`, in a transaction of its own. When
/// it is created, its first event is returned too.
pub(crate) async fn open_direct<B: WriteTransactions>(
    backend: &B,
    a: UserId,
    b: UserId,
    creation: Creation<'_>,
) -> StoreResult<(ConvId, Option<Appended>)> {
    let mut tx = backend.begin_write().await?;
    let opened = direct_in(&mut B::ops(&mut tx), a, b, &creation).await?;
    B::commit(tx).await?;
    Ok(opened)
}

/// Creates a room with its creator as only member, in a transaction of its own.
pub(crate) async fn create_room<B: WriteTransactions>(
    backend: &B,
    room: NewRoom<'_>,
) -> StoreResult<(ConvId, Appended)> {
    let mut tx = backend.begin_write().await?;
    let created = room_in(&mut B::ops(&mut tx), &room).await?;
    B::commit(tx).await?;
    Ok(created)
}

/// The first event of a conversation.
fn created_event(conv: ConvId, creation: &Creation<'_>, creator: UserId) -> Event {
    Event {
        conv,
        seq: 1,
        id: creation.id,
        at: creation.at,
        sender: creator,
        device: None,
        client_id: None,
        origin: Some(creation.origin.clone()),
        body: EventBody::Member {
            action: MemberAction::Created,
            user: creator,
        },
    }
}

/// Inserts a new conversation's first event and its members, who are its recipients.
async fn first_event<T: WriteOps>(
    tx: &mut T,
    conv: ConvId,
    creation: &Creation<'_>,
    creator: UserId,
    members: Vec<UserId>,
) -> StoreResult<Appended> {
    let event = created_event(conv, creation, creator);
    if !tx.insert_event(&event, creation.origin).await? {
        return Err(StoreError::Conflict(format!(
            "event id {} is already used",
            creation.id
        )));
    }
    for &member in &members {
        tx.add_member(conv, member, 1).await?;
    }
    Ok(Appended {
        event,
        recipients: Arc::from(members),
        duplicate: false,
    })
}

/// Finds or creates the direct conversation of `a` and `b` inside the backend's transaction.
async fn direct_in<T: WriteOps>(
    tx: &mut T,
    a: UserId,
    b: UserId,
    creation: &Creation<'_>,
) -> StoreResult<(ConvId, Option<Appended>)> {
    if a == b {
        return Err(StoreError::Invalid(
            "a direct conversation needs two different users".into(),
        ));
    }
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    if let Some(conv) = tx.direct_between(lo, hi).await? {
        return Ok((conv, None));
    }
    if !tx.user_exists(a).await? || !tx.user_exists(b).await? {
        return Err(StoreError::NotFound);
    }
    let new = NewConversation {
        kind: ConvKind::Direct,
        name: "",
        public: false,
        created_by: a,
        created_at: creation.at,
        direct: Some((lo, hi)),
    };
    let Some(conv) = tx.insert_conversation(&new).await? else {
        // Another writer created it between our look and our insert (writers that do not
        // exclude each other, as on PostgreSQL): theirs is the one.
        let conv = tx.direct_between(lo, hi).await?.ok_or_else(|| {
            StoreError::Internal("direct conversation vanished after a conflict".into())
        })?;
        return Ok((conv, None));
    };
    let created = first_event(tx, conv, creation, a, vec![lo, hi]).await?;
    Ok((conv, Some(created)))
}

/// Creates a room with its creator as only member inside the backend's transaction.
async fn room_in<T: WriteOps>(tx: &mut T, room: &NewRoom<'_>) -> StoreResult<(ConvId, Appended)> {
    check_room_name(room.name)?;
    if !tx.user_exists(room.creator).await? {
        return Err(StoreError::NotFound);
    }
    let new = NewConversation {
        kind: ConvKind::Room,
        name: room.name,
        public: room.public,
        created_by: room.creator,
        created_at: room.creation.at,
        direct: None,
    };
    let conv = tx.insert_conversation(&new).await?.ok_or_else(|| {
        StoreError::Internal("a room insert reported a direct-pair conflict".into())
    })?;
    let created = first_event(tx, conv, &room.creation, room.creator, vec![room.creator]).await?;
    Ok((conv, created))
}
