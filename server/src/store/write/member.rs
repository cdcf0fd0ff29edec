//! Membership changes of a room: who may join (the user themself, into a public room), invite
//! (a member, someone not yet in) and leave (a member, by themself), and the member list and
//! epoch they change. Direct conversations keep their two members; `Created` is never appended.

use protocol::UserId;
use protocol::model::{ConvKind, Event, EventBody, MemberAction};

use super::WriteOps;
use super::append::Author;
use super::batch::{ConvState, Fail, refuse};
use crate::store::StoreError;

/// The body of a membership change of `user`, once its checks passed.
pub(super) async fn checked<T: WriteOps>(
    tx: &mut T,
    state: &ConvState,
    author: &Author,
    action: MemberAction,
    user: UserId,
) -> Result<EventBody, Fail> {
    let user_is_member = state.members.binary_search(&user).is_ok();
    let is_room = state.head.kind == ConvKind::Room;
    match action {
        MemberAction::Created => {
            return refuse(StoreError::Invalid(
                "a conversation is created by open_direct or create_room, not appended".into(),
            ));
        }
        MemberAction::Joined => {
            if author.sender != user {
                return refuse(StoreError::Forbidden(
                    "only users themselves can join".into(),
                ));
            }
            if !is_room || !state.head.public {
                return refuse(StoreError::Forbidden(
                    "only public rooms can be joined without an invitation".into(),
                ));
            }
            newcomer(tx, user, user_is_member).await?;
        }
        MemberAction::Invited => {
            if !author.is_member {
                return refuse(StoreError::NotMember);
            }
            if !is_room {
                return refuse(StoreError::Forbidden(
                    "a direct conversation keeps its two members".into(),
                ));
            }
            newcomer(tx, user, user_is_member).await?;
        }
        MemberAction::Left => {
            if !author.is_member {
                return refuse(StoreError::NotMember);
            }
            if author.sender != user {
                return refuse(StoreError::Forbidden("members leave by themselves".into()));
            }
            if !is_room {
                return refuse(StoreError::Forbidden(
                    "a direct conversation cannot be left".into(),
                ));
            }
        }
    }
    Ok(EventBody::Member { action, user })
}

/// Checks that `user`, about to join, exists and is not a member yet.
async fn newcomer<T: WriteOps>(tx: &mut T, user: UserId, is_member: bool) -> Result<(), Fail> {
    if is_member {
        return refuse(StoreError::Conflict("already a member".into()));
    }
    if !tx.user_exists(user).await? {
        return refuse(StoreError::NotFound);
    }
    Ok(())
}

/// Adds or removes the member as `event` says, in the database and in the conversation's
/// state, and bumps its membership epoch. Returns the user who left, if one did.
pub(super) async fn apply<T: WriteOps>(
    tx: &mut T,
    state: &mut ConvState,
    event: &Event,
    action: MemberAction,
    user: UserId,
) -> Result<Option<UserId>, Fail> {
    let mut members = state.members.to_vec();
    let mut leaver = None;
    if action == MemberAction::Left {
        tx.remove_member(event.conv, user).await?;
        members.retain(|m| *m != user);
        leaver = Some(user);
    } else {
        tx.add_member(event.conv, user, event.seq).await?;
        members.push(user);
        members.sort_unstable();
    }
    state.members = members.into();
    state.head.member_epoch += 1;
    state.members_changed = true;
    Ok(leaver)
}
