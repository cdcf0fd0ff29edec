//! One event of a batch: a resend answered with the first event, or a new event checked by the
//! rules of its kind, given the conversation's next `seq`, inserted, and its changes made.

use std::sync::Arc;

use protocol::model::{Event, EventBody};
use protocol::{AttachmentId, ConvId, NodeId, UserId};

use super::batch::{ConvState, Fail, States, load_state, refuse};
use super::{WriteOps, edit, member, message};
use crate::store::member_cache::MemberCache;
use crate::store::{Appended, NewBody, NewEvent, StoreError};

/// Who appends an event, and where: what every kind's checks start from.
pub(super) struct Author {
    /// The conversation.
    pub conv: ConvId,
    /// The sender.
    pub sender: UserId,
    /// Whether the sender is a member of it now.
    pub is_member: bool,
}

/// Appends one event, or answers a resend with the first event.
///
/// A resend must be answered with the first event whatever its checks would say now (the
/// sender may have left since). Looking the pair up first would cost every event a statement,
/// so it is looked up only when the event is refused, or when the insert finds a unique key
/// taken, which is what a resend that passes the checks runs into.
pub(super) async fn append_one<T: WriteOps>(
    tx: &mut T,
    cache: &MemberCache,
    states: &mut States,
    ev: NewEvent,
) -> Result<Appended, Fail> {
    let resend = ev.client_id.clone().map(|client_id| (ev.sender, client_id));
    let refusal = match append_new(tx, cache, states, ev).await {
        Err(Fail::Refused(refusal)) => refusal,
        other => return other,
    };
    if let Some((sender, client_id)) = resend
        && let Some(first) = tx.event_by_client_id(sender, &client_id).await?
    {
        // The first event may be of a conversation this batch has not locked yet: on
        // PostgreSQL, locking it now is out of id order, and a rare deadlock with another batch
        // is possible. The database breaks it by aborting one transaction, which the backend
        // retries.
        load_state(tx, cache, states, first.conv).await?;
        let recipients = match states.get(&first.conv) {
            Some(Some(state)) => state.members.clone(),
            _ => Arc::from(Vec::new()),
        };
        return Ok(Appended {
            event: first,
            recipients,
            duplicate: true,
        });
    }
    Err(Fail::Refused(refusal))
}

/// Checks and inserts an event that is not (as far as its checks go) a resend.
async fn append_new<T: WriteOps>(
    tx: &mut T,
    cache: &MemberCache,
    states: &mut States,
    ev: NewEvent,
) -> Result<Appended, Fail> {
    load_state(tx, cache, states, ev.conv).await?;
    let Some(Some(state)) = states.get_mut(&ev.conv) else {
        return refuse(StoreError::NotFound);
    };
    let author = Author {
        conv: ev.conv,
        sender: ev.sender,
        is_member: state.members.binary_search(&ev.sender).is_ok(),
    };
    // The attachment a delete takes away, to drop if nothing else refers to it.
    let mut dropped_attachment: Option<AttachmentId> = None;

    let body = match ev.body {
        NewBody::Message {
            kind,
            text,
            attachment,
            reply_to,
        } => message::checked(tx, &author, kind, text, attachment, reply_to).await?,
        NewBody::Edit { target, text } => edit::checked_edit(tx, &author, target, text).await?,
        NewBody::Delete { target } => {
            let (body, dropped) = edit::checked_delete(tx, &author, target).await?;
            dropped_attachment = dropped;
            body
        }
        NewBody::Reaction { target, emoji, on } => {
            edit::checked_reaction(tx, &author, target, emoji, on).await?
        }
        NewBody::Member { action, user } => {
            member::checked(tx, state, &author, action, user).await?
        }
    };

    let event = Event {
        conv: ev.conv,
        seq: state.head.last_seq + 1,
        id: ev.id,
        at: ev.at,
        sender: ev.sender,
        device: ev.device,
        client_id: ev.client_id,
        origin: Some(ev.origin.clone()),
        body,
    };
    insert(tx, &event, &ev.origin).await?;

    let leaver = match &event.body {
        EventBody::Message(_) => {
            state.head.last_msg_seq = event.seq;
            None
        }
        EventBody::Edit { target, text } => {
            tx.edit_message(*target, text, event.at).await?;
            None
        }
        EventBody::Delete { target } => {
            tx.delete_message(*target, dropped_attachment.as_ref())
                .await?;
            None
        }
        // History pages fold reactions into their messages when read.
        EventBody::Reaction { .. } => None,
        EventBody::Member { action, user } => {
            member::apply(tx, state, &event, *action, *user).await?
        }
    };
    Ok(Appended {
        recipients: advance(state, &event, leaver),
        event,
        duplicate: false,
    })
}

/// Inserts the event, telling why when a unique key is taken.
async fn insert<T: WriteOps>(tx: &mut T, event: &Event, origin: &NodeId) -> Result<(), Fail> {
    if tx.insert_event(event, origin).await? {
        return Ok(());
    }
    // A taken (sender, client_id) is answered as a resend by the caller; a taken id is the
    // caller's bug; a taken (conv, seq) would be ours: another writer without the lock.
    if event.client_id.is_none() && tx.message_ref(event.id).await?.is_none() {
        return Err(Fail::Db(StoreError::Internal(format!(
            "seq {} of conversation {} is taken: seqs assigned without the write lock?",
            event.seq, event.conv
        ))));
    }
    refuse(StoreError::Conflict(format!(
        "event id {} is already used",
        event.id
    )))
}

/// Moves the conversation's head past `event`; the event's recipients: the members right after
/// it, and the member who left by it, if one did.
fn advance(state: &mut ConvState, event: &Event, leaver: Option<UserId>) -> Arc<[UserId]> {
    state.head.last_seq = event.seq;
    state.head.last_activity = state.head.last_activity.max(event.at);
    state.dirty = true;
    match leaver {
        // The leaver gets the event of their own leaving, so their other devices learn of it.
        Some(user) => {
            let mut with_leaver = state.members.to_vec();
            with_leaver.push(user);
            with_leaver.sort_unstable();
            with_leaver.into()
        }
        None => state.members.clone(),
    }
}
