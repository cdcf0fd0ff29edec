//! History and accounts: the durable half of the cluster. Every acknowledged event is here
//! before its ack leaves the node, with its conversation's next `seq`; the bus is only the fast
//! path, and a device's resync cursor against this store is the guarantee.
//!
//! [`Store`] is the contract; [`sqlite`] is the embedded implementation (one file shared by
//! every process on the machine) and `postgres` the one for many machines. The behavioural
//! suite in `suite` runs against each.
//!
//! Code map:
//! - this file: the contract, its records and its errors.
//! - `sql`: the contract implemented once for both SQL backends, with the reads they share;
//!   the backends bring their dialect and their writes.
//! - `write`: the write path over a backend's statements: a batch of appends (`batch`), one
//!   event (`append`) checked by its kind (`message`, `edit`, `member`), and the creation of
//!   conversations (`create`).
//! - `rules`: what an event's content may be; `member_cache`: member lists by membership epoch.
//! - `rows`: rows ↔ records; `encoding`: values in columns; `migrations`: schema upgrades;
//!   `errors`: constraint violations in the store's words.
//! - [`sqlite`] and `postgres`: each backend (opening, lock, writer, checkpoint, errors, tests).
//! - `suite`: the behavioural tests every backend runs.
//!
//! Invariants every implementation keeps:
//! - Per conversation, `seq` runs 1, 2, 3… without gaps or repeats, even with many writers in
//!   many processes; an event with `seq = n` is visible only once every `seq < n` is.
//! - `(sender, client_id)` is unique: appending it again returns the first event with
//!   `duplicate = true` and stores nothing.
//! - Membership changes happen in the same transaction as the member event that records them,
//!   and the recipients returned with an event are the members right after it (a leaver gets
//!   the event of their own leaving).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use protocol::http::{DeviceInfoState, RoomListing};
use protocol::model::{
    Attachment, ConvKind, ConversationSummary, Event, MemberAction, MessageKind,
};
use protocol::{
    AttachmentId, ClientMsgId, ConvId, DeviceId, MessageId, Millis, NodeId, Seq, UserId,
};

mod encoding;
mod errors;
mod member_cache;
mod migrations;
#[cfg(feature = "postgres")]
pub mod postgres;
mod rows;
mod rules;
mod sql;
pub mod sqlite;
#[cfg(test)]
pub mod suite;
mod write;

/// Why a store call failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The thing asked for does not exist (or the caller may not know it exists).
    #[error("not found")]
    NotFound,
    /// It exists already (a taken username).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The user is not a member of the conversation.
    #[error("not a member of the conversation")]
    NotMember,
    /// Nobody in the caller's position may do this (edit someone else's message).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Well-formed but unacceptable (attachment of another conversation, reply to nothing).
    #[error("invalid: {0}")]
    Invalid(String),
    /// The database cannot be reached or is busy beyond patience; retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Anything else (a bug, corrupt data).
    #[error("store failure: {0}")]
    Internal(String),
}

/// Result of a store call.
pub type StoreResult<T> = Result<T, StoreError>;

/// A user as the store keeps them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    /// The id.
    pub id: UserId,
    /// The unique name.
    pub username: String,
    /// Argon2 PHC string.
    pub password_hash: String,
    /// When registered.
    pub created_at: Millis,
}

/// A user to register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewUser<'a> {
    /// The unique name.
    pub username: &'a str,
    /// Argon2 PHC string.
    pub password_hash: &'a str,
    /// When registered.
    pub created_at: Millis,
}

/// A login from a device, as [`Store::login_device`] records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceLogin<'a> {
    /// Whose device.
    pub user: UserId,
    /// Which.
    pub device: &'a DeviceId,
    /// The name it gives itself now.
    pub name: &'a str,
    /// When.
    pub at: Millis,
}

/// A device as the store keeps it. A token is valid for a device only while the device is
/// active and the token's generation equals the device's: revoking bumps the generation, so
/// every token issued before is refused for good, even after the device logs in again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRecord {
    /// Whose.
    pub user: UserId,
    /// Which.
    pub id: DeviceId,
    /// Its name.
    pub name: String,
    /// First login.
    pub created_at: Millis,
    /// Last login.
    pub last_login: Millis,
    /// Active or revoked.
    pub state: DeviceInfoState,
    /// Token generation.
    pub generation: i64,
}

/// A conversation's own row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversationRecord {
    /// The id.
    pub id: ConvId,
    /// Direct or room.
    pub kind: ConvKind,
    /// Room name (empty for direct conversations).
    pub name: String,
    /// Whether anyone may join.
    pub public: bool,
    /// Highest `seq`.
    pub last_seq: Seq,
    /// Who created it.
    pub created_by: UserId,
    /// When.
    pub created_at: Millis,
}

/// A member's row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberRecord {
    /// The member.
    pub user: UserId,
    /// Their name.
    pub username: String,
    /// The `seq` of the event that made them a member.
    pub joined_seq: Seq,
    /// Highest `seq` they marked read.
    pub read_seq: Seq,
}

/// What a new event says, before the store gives it a `seq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NewBody {
    /// A message. The attachment must have been uploaded to the same conversation; `reply_to`
    /// must be a message of the same conversation.
    Message {
        /// Its kind.
        kind: MessageKind,
        /// Its text.
        text: String,
        /// An uploaded attachment.
        attachment: Option<AttachmentId>,
        /// The message answered.
        reply_to: Option<MessageId>,
    },
    /// Change the text of a message the sender sent (not deleted).
    Edit {
        /// The message.
        target: MessageId,
        /// Its new text.
        text: String,
    },
    /// Delete a message the sender sent. Its text and attachment are dropped from history.
    Delete {
        /// The message.
        target: MessageId,
    },
    /// React to a live message of the conversation (any member may), or take the reaction
    /// back. History pages show a message with its reactions folded in.
    Reaction {
        /// The message.
        target: MessageId,
        /// The emoji ([`protocol::limits::reaction_valid`]).
        emoji: String,
        /// Given (true) or taken back (false).
        on: bool,
    },
    /// Change membership of a room: `Joined` (sender = user, room public), `Invited` (sender a
    /// member, user not), `Left` (sender = user, a member). `Created` is not accepted here.
    Member {
        /// What.
        action: MemberAction,
        /// Whom.
        user: UserId,
    },
}

/// An event to append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    /// Where.
    pub conv: ConvId,
    /// Its Snowflake id, made by the caller.
    pub id: MessageId,
    /// Server time of acceptance.
    pub at: Millis,
    /// Who.
    pub sender: UserId,
    /// From which device, if a device sent it.
    pub device: Option<DeviceId>,
    /// The client's id, for idempotency (unique per sender).
    pub client_id: Option<ClientMsgId>,
    /// What.
    pub body: NewBody,
    /// The node (or controller) that persists it, so that a survivor can publish again what a
    /// dead node persisted but may not have published.
    pub origin: NodeId,
}

/// How a conversation the store creates comes into being: its first event (`Member { Created
/// }`), with the id the caller made for it, the node that persists it and the time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Creation<'a> {
    /// The first event's Snowflake id.
    pub id: MessageId,
    /// The node (or controller) that persists it.
    pub origin: &'a NodeId,
    /// Server time of creation.
    pub at: Millis,
}

/// A room to create, with its creator as only member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewRoom<'a> {
    /// Its creator, and first member.
    pub creator: UserId,
    /// Its name.
    pub name: &'a str,
    /// Whether anyone may join.
    pub public: bool,
    /// Its first event.
    pub creation: Creation<'a>,
}

/// A persisted event and who must get it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The event as devices get it.
    pub event: Event,
    /// The members right after the event.
    pub recipients: Arc<[UserId]>,
    /// True when `(sender, client_id)` was already stored: `event` is the first one.
    pub duplicate: bool,
}

/// Which page of history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Page {
    /// The newest events.
    Latest,
    /// Events with `seq` below this, newest first in selection, returned ascending.
    Before(Seq),
    /// Events with `seq` above this, ascending.
    After(Seq),
}

/// An uploaded file with its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachmentBlob {
    /// What messages show of it.
    pub meta: Attachment,
    /// Who uploaded it.
    pub uploader: UserId,
    /// When.
    pub created_at: Millis,
    /// The bytes.
    pub data: Bytes,
}

/// Adds to a batch what came while the store waited to write it (see
/// [`Store::append_topped_up`]).
pub type TopUp<'a> = &'a mut (dyn FnMut(&mut Vec<NewEvent>) + Send);

/// The store contract. Implementations are cheap-to-clone handles shared across tasks.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// "sqlite" or "postgres", for status pages.
    fn kind(&self) -> &'static str;

    /// Registers a user. [`StoreError::Conflict`] if the name is taken.
    async fn create_user(&self, user: NewUser<'_>) -> StoreResult<UserRecord>;
    /// Looks a user up by name.
    async fn user_by_name(&self, username: &str) -> StoreResult<Option<UserRecord>>;
    /// Looks a user up by id.
    async fn user_by_id(&self, id: UserId) -> StoreResult<Option<UserRecord>>;

    /// Records a login from a device: creates it, or renames and re-activates it (a revoked
    /// device that logs in again is active again, with the generation it has now).
    async fn login_device(&self, login: DeviceLogin<'_>) -> StoreResult<DeviceRecord>;
    /// One device.
    async fn device(&self, user: UserId, device: &DeviceId) -> StoreResult<Option<DeviceRecord>>;
    /// All of a user's devices, most recent login first.
    async fn devices(&self, user: UserId) -> StoreResult<Vec<DeviceRecord>>;
    /// Revokes a device: state revoked, generation + 1. [`StoreError::NotFound`] if the user
    /// has no such device.
    async fn revoke_device(&self, user: UserId, device: &DeviceId) -> StoreResult<DeviceRecord>;

    /// Finds or creates the direct conversation of `a` and `b` (a ≠ b). When it is created, its
    /// first event (`Member { Created, user: a }`) is returned too.
    async fn open_direct(
        &self,
        a: UserId,
        b: UserId,
        creation: Creation<'_>,
    ) -> StoreResult<(ConvId, Option<Appended>)>;
    /// Creates a room with its creator as only member, and its first event
    /// (`Member { Created, user: creator }`). Invite others with [`Store::append`].
    async fn create_room(&self, room: NewRoom<'_>) -> StoreResult<(ConvId, Appended)>;

    /// Appends events in one transaction (group commit), in order. Each gets its own result;
    /// a refusal of one (not a member, bad target…) does not affect the others. If the
    /// transaction itself fails, every result is that error.
    async fn append(&self, batch: Vec<NewEvent>) -> Vec<StoreResult<Appended>>;

    /// [`Store::append`] for a batch that may grow while the store waits to write it: `top_up`
    /// is called once, as the store starts writing (on SQLite, once this process holds the
    /// writers' lock), and adds what came meanwhile. The results cover the whole batch, in
    /// order. A group commit that waits for a lock thus takes in everything that queued during
    /// the wait, instead of leaving it for another turn at the lock.
    async fn append_topped_up(
        &self,
        mut batch: Vec<NewEvent>,
        top_up: TopUp<'_>,
    ) -> Vec<StoreResult<Appended>> {
        top_up(&mut batch);
        self.append(batch).await
    }

    /// The conversation's row.
    async fn conversation(&self, conv: ConvId) -> StoreResult<Option<ConversationRecord>>;
    /// Whether `user` is a member of `conv` now.
    async fn is_member(&self, conv: ConvId, user: UserId) -> StoreResult<bool> {
        Ok(self.joined_seq(conv, user).await?.is_some())
    }
    /// `user`'s membership: the `seq` that made them a member, if they are one.
    async fn joined_seq(&self, conv: ConvId, user: UserId) -> StoreResult<Option<Seq>>;
    /// The members, by name.
    async fn members(&self, conv: ConvId) -> StoreResult<Vec<MemberRecord>>;
    /// The members' ids, for routing live frames (typing, read markers). Implementations
    /// cache this by membership epoch; the default asks [`Store::members`].
    async fn recipients(&self, conv: ConvId) -> StoreResult<Arc<[UserId]>> {
        Ok(self
            .members(conv)
            .await?
            .into_iter()
            .map(|m| m.user)
            .collect())
    }
    /// Everyone who shares at least one conversation with `user` (not `user`).
    async fn contacts(&self, user: UserId) -> StoreResult<Vec<UserId>>;
    /// `user`'s conversations with last message, unread count and read markers, most recent
    /// activity first.
    async fn conversations_of(&self, user: UserId) -> StoreResult<Vec<ConversationSummary>>;
    /// Public rooms whose name contains `query` (all when empty), by name, at most `limit`.
    async fn public_rooms(&self, query: &str, limit: u32) -> StoreResult<Vec<RoomListing>>;

    /// A page of events, ascending, with messages in their current state, and whether more
    /// exist beyond it in the direction asked. Does not check membership.
    async fn events(&self, conv: ConvId, page: Page, limit: u32)
    -> StoreResult<(Vec<Event>, bool)>;
    /// Events a node persisted at or after `since`, with their recipients, ascending by time:
    /// what a survivor publishes again when that node died.
    async fn events_by_origin(
        &self,
        origin: &NodeId,
        since: Millis,
        limit: u32,
    ) -> StoreResult<Vec<Appended>>;

    /// Moves `user`'s read marker in `conv` forward to `seq` (clamped to the last `seq`).
    /// Returns the new marker if it moved, `None` if it was already there or beyond.
    /// [`StoreError::NotMember`] if the user is not a member.
    async fn mark_read(&self, conv: ConvId, user: UserId, seq: Seq) -> StoreResult<Option<Seq>>;

    /// Stores an uploaded file. The caller has checked membership, size and type.
    async fn put_attachment(&self, blob: AttachmentBlob) -> StoreResult<()>;
    /// A file, bytes included.
    async fn attachment(&self, id: &AttachmentId) -> StoreResult<Option<AttachmentBlob>>;
    /// The bytes of every attachment `uploader` has stored (their quota's use).
    async fn attachment_bytes(&self, uploader: UserId) -> StoreResult<u64>;
}

/// The store shared by a process's tasks.
pub type SharedStore = Arc<dyn Store>;

/// Opens the store named by `url`: `sqlite://PATH` (created if missing) or
/// `postgres://…` / `postgresql://…` (schema brought up to date).
pub async fn open(url: &str) -> StoreResult<SharedStore> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        return Ok(Arc::new(sqlite::SqliteStore::open(path).await?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        #[cfg(feature = "postgres")]
        return Ok(Arc::new(postgres::PostgresStore::connect(url).await?));
        #[cfg(not(feature = "postgres"))]
        return Err(StoreError::Invalid(
            "this server was built without PostgreSQL support (feature `postgres`)".into(),
        ));
    }
    // Only the scheme of a URL: the rest may carry a password.
    let named = match url.split_once("://") {
        Some((scheme, _)) => format!("scheme {scheme:?}"),
        None => format!("{url:?}"),
    };
    Err(StoreError::Invalid(format!(
        "unsupported store URL {named} (expected sqlite://PATH or postgres://…)"
    )))
}
