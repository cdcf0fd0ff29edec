//! The write path, written once over the handful of statements a backend provides
//! ([`WriteOps`]): the rules an appended event must pass and the order they are checked in, the
//! `seq` it gets, the member lists and heads it changes, and the creation of conversations.
//!
//! Code map: `batch` runs a batch of appends in one transaction; `append` one event of it,
//! checked by the module of its kind (`message`, `edit` for edits and deletes, `member`);
//! `create` makes conversations.
//!
//! The traits and types the backends implement are `pub` in this private module: the public
//! store types name them through [`SqlBackend`](super::sql::SqlBackend), and nothing outside
//! the store can reach them.

use std::future::Future;

use protocol::model::{Attachment, ConvKind, Event};
use protocol::{AttachmentId, ClientMsgId, ConvId, MessageId, Millis, NodeId, Seq, UserId};

use super::{NewEvent, StoreResult};

mod append;
mod batch;
mod create;
mod edit;
mod member;
mod message;

pub(crate) use batch::append_batch;
pub(crate) use create::{create_room, open_direct};

/// What the write path needs to know of a conversation, read (and on backends with row locks,
/// locked) once per transaction and written back once at its end.
#[derive(Clone, Debug)]
pub struct ConvHead {
    pub kind: ConvKind,
    pub public: bool,
    pub last_seq: Seq,
    /// `seq` of the last `message` event, for conversation lists. Only for a backend that keeps
    /// it in the conversation's row (PostgreSQL); SQLite reads it from the events, and its
    /// heads carry 0 here.
    pub last_msg_seq: Seq,
    /// Time of the latest event, to order conversation lists; kept as `last_msg_seq` is.
    pub last_activity: Millis,
    /// Bumped with every membership change: see [`MemberCache`](crate::store::member_cache::MemberCache).
    pub member_epoch: i64,
}

/// An earlier event, as the target of an edit, a delete or a reply.
#[derive(Clone, Debug)]
pub struct MessageRef {
    pub conv: ConvId,
    pub is_message: bool,
    pub sender: UserId,
    pub deleted: bool,
    pub attachment: Option<AttachmentId>,
}

/// A conversation to insert, with its first event already counted: `last_seq` 1, its first
/// members in, `member_epoch` 1.
pub struct NewConversation<'a> {
    pub kind: ConvKind,
    pub name: &'a str,
    pub public: bool,
    pub created_by: UserId,
    pub created_at: Millis,
    /// For a direct conversation, its two users, smaller id first.
    pub direct: Option<(UserId, UserId)>,
}

/// The statements of a write transaction, as a backend runs them. All run inside one
/// transaction that the backend opened (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: `READ
/// COMMITTED`, ordered by row locks) and commits when the function given it returns `Ok`; any
/// `Err` returned here means the transaction is to be rolled back.
///
/// No statement may fail for a reason a check of the rules could have found first: on
/// PostgreSQL a failed statement aborts the whole transaction, so one bad event would take its
/// batch down. Unique keys are met with `ON CONFLICT DO NOTHING` (reported as `false`/`None`).
pub trait WriteOps: Send {
    /// Whether the backend keeps `last_seq`, `last_msg_seq` and `last_activity` in the
    /// conversation's row. A backend that reads them from the events instead (SQLite) is asked
    /// to save only the heads whose `member_epoch` changed.
    const HEADS_IN_ROW: bool = true;

    /// The event `sender` sent with `client_id`, in its current state.
    fn event_by_client_id(
        &mut self,
        sender: UserId,
        client_id: &ClientMsgId,
    ) -> impl Future<Output = StoreResult<Option<Event>>> + Send;
    /// The conversation's head. A backend whose writers run concurrently (PostgreSQL) locks the
    /// row here until the commit (`FOR NO KEY UPDATE`); the batch asks for its conversations in
    /// id order.
    fn conv_head(
        &mut self,
        conv: ConvId,
    ) -> impl Future<Output = StoreResult<Option<ConvHead>>> + Send;
    /// The members' ids, ascending.
    fn member_ids(&mut self, conv: ConvId)
    -> impl Future<Output = StoreResult<Vec<UserId>>> + Send;
    /// Whether the user exists.
    fn user_exists(&mut self, user: UserId) -> impl Future<Output = StoreResult<bool>> + Send;
    /// An uploaded attachment's metadata.
    fn attachment_meta(
        &mut self,
        id: &AttachmentId,
    ) -> impl Future<Output = StoreResult<Option<Attachment>>> + Send;
    /// What an edit, delete or reply needs to know of the event with this id.
    fn message_ref(
        &mut self,
        id: MessageId,
    ) -> impl Future<Output = StoreResult<Option<MessageRef>>> + Send;
    /// Inserts the event; `false` (and nothing written) if a unique key is taken: its id, its
    /// `(sender, client_id)` or its `(conv, seq)`.
    fn insert_event(
        &mut self,
        event: &Event,
        origin: &NodeId,
    ) -> impl Future<Output = StoreResult<bool>> + Send;
    /// Sets a message's text and `edited_at`.
    fn edit_message(
        &mut self,
        id: MessageId,
        text: &str,
        at: Millis,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Marks a message deleted: empty text, no attachment, `deleted`; blanks the text of the
    /// edit events aimed at it (they would show the deleted words); and removes `attachment`
    /// when no other event refers to it any more.
    fn delete_message(
        &mut self,
        id: MessageId,
        attachment: Option<&AttachmentId>,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Adds a member who joined at `seq` (and has read up to it).
    fn add_member(
        &mut self,
        conv: ConvId,
        user: UserId,
        seq: Seq,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Removes a member.
    fn remove_member(
        &mut self,
        conv: ConvId,
        user: UserId,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Writes back `last_seq`, `last_msg_seq`, `last_activity` and `member_epoch` (those of
    /// them the backend keeps in the conversation's row).
    fn save_head(
        &mut self,
        conv: ConvId,
        head: &ConvHead,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// The direct conversation of `lo` and `hi` (`lo < hi`).
    fn direct_between(
        &mut self,
        lo: UserId,
        hi: UserId,
    ) -> impl Future<Output = StoreResult<Option<ConvId>>> + Send;
    /// Inserts a conversation; `None` if a direct one for the same pair exists already.
    fn insert_conversation(
        &mut self,
        conv: &NewConversation<'_>,
    ) -> impl Future<Output = StoreResult<Option<ConvId>>> + Send;

    /// Called by [`append_batch`] before its first event: reads the heads of `convs` (ascending;
    /// on backends whose writers run concurrently, locking each row until the commit, in that
    /// order, so that two batches cannot deadlock) and the member ids of the conversations in
    /// `members_of` (those whose list the process has not cached). The default takes one
    /// statement per conversation; a backend whose statements each cost a round trip reads them
    /// all at once.
    ///
    /// A backend may also look up here which of the batch's ids and `(sender, client_id)` pairs
    /// are taken (after the locks, so that a key taken by a writer that committed meanwhile is
    /// seen), then answer [`WriteOps::insert_event`] from that and defer the inserts to one
    /// statement. It must then write them before any statement that reads or changes events,
    /// and in [`WriteOps::end_batch`].
    fn begin_batch(
        &mut self,
        convs: &[ConvId],
        members_of: &[ConvId],
        batch: &[NewEvent],
    ) -> impl Future<Output = StoreResult<BatchStart>> + Send {
        let _ = batch;
        async move {
            let mut start = BatchStart::default();
            for &conv in convs {
                if let Some(head) = self.conv_head(conv).await? {
                    start.heads.push((conv, head));
                }
            }
            for &conv in members_of {
                if start.heads.iter().any(|(c, _)| *c == conv) {
                    let ids = self.member_ids(conv).await?;
                    start.members.extend(ids.into_iter().map(|u| (conv, u)));
                }
            }
            Ok(start)
        }
    }

    /// Called by [`append_batch`] after the batch's last event: writes whatever was deferred,
    /// then the heads the batch changed. By default, one [`WriteOps::save_head`] each.
    fn end_batch(
        &mut self,
        heads: &[(ConvId, ConvHead)],
    ) -> impl Future<Output = StoreResult<()>> + Send {
        async move {
            for (conv, head) in heads {
                self.save_head(*conv, head).await?;
            }
            Ok(())
        }
    }
}

/// What [`WriteOps::begin_batch`] read.
#[derive(Default)]
pub struct BatchStart {
    /// The heads of the conversations that exist.
    pub heads: Vec<(ConvId, ConvHead)>,
    /// `(conversation, member)` for the conversations whose members were asked for.
    pub members: Vec<(ConvId, UserId)>,
}

/// A backend's write transactions, for the writes that run alone in one (creating a
/// conversation); batches of appends each backend drives itself, with [`append_batch`].
pub trait WriteTransactions: Sync {
    /// A transaction begun, rolled back if dropped before [`WriteTransactions::commit`].
    type Tx: Send;
    /// The statements of the write path, run in a transaction.
    type Ops<'t>: WriteOps
    where
        Self::Tx: 't;

    /// Begins a write transaction (on SQLite, with the writers' lock held).
    fn begin_write(&self) -> impl Future<Output = StoreResult<Self::Tx>> + Send;
    /// The write path's statements in `tx`.
    fn ops(tx: &mut Self::Tx) -> Self::Ops<'_>;
    /// Commits `tx`.
    fn commit(tx: Self::Tx) -> impl Future<Output = StoreResult<()>> + Send;
}
