//! What the SQL stores share, so that each backend is only its SQL: the rules an appended
//! event must pass and the order they are checked in ([`append_batch`], [`open_direct`],
//! [`create_room`], written against the handful of statements a backend provides through
//! [`WriteOps`]), the cache of member lists keyed by membership epoch, the text encodings of
//! enums in columns, and the rows → records conversions.
//!
//! The SQL the backends run is written with `$n` placeholders, which SQLite (through sqlx) and
//! PostgreSQL both read, so statements can move between them unchanged where the dialects agree.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use protocol::http::{DeviceInfoState, RoomListing};
use protocol::limits::{MAX_TEXT_BYTES, NAME_MAX_CHARS};
use protocol::model::{
    Attachment, ConvKind, ConversationSummary, Event, EventBody, MemberAction, Message,
    MessageKind, UserInfo,
};
use protocol::{
    AttachmentId, ClientMsgId, ConvId, DeviceId, MessageId, Millis, NodeId, Seq, UserId,
};
use sqlx::migrate::{Migrate, MigrateError, Migrator};

use super::{
    Appended, AttachmentBlob, ConversationRecord, DeviceRecord, MemberRecord, NewBody, NewEvent,
    StoreError, StoreResult, UserRecord,
};

// ---------------------------------------------------------------------------------------------
// Errors and numbers

/// A copy of an error, for the batch whose transaction failed: every event gets the same one.
pub(crate) fn copy_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::NotFound => StoreError::NotFound,
        StoreError::Conflict(m) => StoreError::Conflict(m.clone()),
        StoreError::NotMember => StoreError::NotMember,
        StoreError::Forbidden(m) => StoreError::Forbidden(m.clone()),
        StoreError::Invalid(m) => StoreError::Invalid(m.clone()),
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::Internal(m) => StoreError::Internal(m.clone()),
    }
}

/// The store's word for a constraint the schema enforced, or `None` when `e` is not a
/// constraint violation. The messages are ours, not the database's: they may reach clients.
pub(crate) fn constraint_error(e: &sqlx::Error) -> Option<StoreError> {
    let sqlx::Error::Database(db) = e else {
        return None;
    };
    match db.kind() {
        sqlx::error::ErrorKind::UniqueViolation => {
            Some(StoreError::Conflict("already exists".into()))
        }
        // Every foreign key names something the caller referred to: a user, a conversation.
        sqlx::error::ErrorKind::ForeignKeyViolation => Some(StoreError::NotFound),
        sqlx::error::ErrorKind::NotNullViolation | sqlx::error::ErrorKind::CheckViolation => {
            Some(StoreError::Invalid("refused by the schema".into()))
        }
        _ => None,
    }
}

/// Whether `e` is a unique-constraint violation.
#[cfg(feature = "postgres")]
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

/// A `seq` read from a column (`INTEGER`/`BIGINT`, never negative in a sound database).
pub(crate) fn seq_from_db(v: i64) -> StoreResult<Seq> {
    Seq::try_from(v).map_err(|_| StoreError::Internal(format!("negative seq {v} in the database")))
}

/// A `seq` for a column or a comparison; beyond `i64::MAX` it means "after everything".
pub(crate) fn seq_to_db(s: Seq) -> i64 {
    i64::try_from(s).unwrap_or(i64::MAX)
}

fn size_from_db(v: i64) -> StoreResult<u64> {
    u64::try_from(v).map_err(|_| StoreError::Internal(format!("negative attachment size {v}")))
}

fn token<T: std::str::FromStr>(what: &str, s: String) -> StoreResult<T> {
    s.parse()
        .map_err(|_| StoreError::Internal(format!("malformed {what} {s:?} in the database")))
}

// ---------------------------------------------------------------------------------------------
// Migrations

/// The store's word for a failed migration step: the statement's error as the backend maps it,
/// or an internal error.
pub(crate) fn migrate_error(
    e: MigrateError,
    backend: &str,
    db_err: fn(sqlx::Error) -> StoreError,
) -> StoreError {
    match e {
        MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _) => db_err(e),
        other => StoreError::Internal(format!("{backend} migrations: {other}")),
    }
}

/// Brings the schema up to `migrator`'s on `conn`, which the backend has made the only migrating
/// connection first (SQLite: inside `BEGIN IMMEDIATE`; PostgreSQL: under sqlx's advisory lock).
///
/// These are the steps of `Migrator::run`, spelled out because its generic `Acquire` bound
/// makes the future unusable where it must be `Send` (sqlx issue "Acquire is not general
/// enough"), with three refusals added: a migration that failed half-way, one changed after it
/// was applied, and one this build does not know (the database was migrated by a newer build).
/// `backend` names the database in those messages; `db_err` maps the backend's errors.
pub(crate) async fn apply_migrations<C: Migrate + Send + ?Sized>(
    conn: &mut C,
    migrator: &Migrator,
    backend: &str,
    db_err: fn(sqlx::Error) -> StoreError,
) -> StoreResult<()> {
    let migrate_err = |e| migrate_error(e, backend, db_err);
    conn.ensure_migrations_table().await.map_err(migrate_err)?;
    if let Some(version) = conn.dirty_version().await.map_err(migrate_err)? {
        return Err(StoreError::Internal(format!(
            "{backend} migration {version} failed half-way earlier; repair the database"
        )));
    }
    let applied: HashMap<i64, _> = conn
        .list_applied_migrations()
        .await
        .map_err(migrate_err)?
        .into_iter()
        .map(|m| (m.version, m.checksum))
        .collect();
    let known: HashSet<i64> = migrator.iter().map(|m| m.version).collect();
    if let Some(newer) = applied.keys().find(|v| !known.contains(v)) {
        return Err(StoreError::Internal(format!(
            "the database has migration {newer}, unknown to this build: it was made by a newer one"
        )));
    }
    for migration in migrator.iter() {
        if migration.migration_type.is_down_migration() {
            continue;
        }
        match applied.get(&migration.version) {
            Some(checksum) if *checksum != migration.checksum => {
                return Err(StoreError::Internal(format!(
                    "{backend} migration {} was changed after it was applied",
                    migration.version
                )));
            }
            Some(_) => {}
            None => {
                conn.apply(migration).await.map_err(migrate_err)?;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Enum encodings

/// Values of `events.body_type`.
pub(crate) mod body_type {
    /// A message.
    pub const MESSAGE: &str = "message";
    /// An edit of a message.
    pub const EDIT: &str = "edit";
    /// A delete of a message.
    pub const DELETE: &str = "delete";
    /// A membership change.
    pub const MEMBER: &str = "member";
}

pub(crate) fn conv_kind_str(k: ConvKind) -> &'static str {
    match k {
        ConvKind::Direct => "direct",
        ConvKind::Room => "room",
    }
}

pub(crate) fn parse_conv_kind(s: &str) -> StoreResult<ConvKind> {
    match s {
        "direct" => Ok(ConvKind::Direct),
        "room" => Ok(ConvKind::Room),
        _ => Err(StoreError::Internal(format!(
            "unknown conversation kind {s:?}"
        ))),
    }
}

pub(crate) fn message_kind_str(k: MessageKind) -> &'static str {
    match k {
        MessageKind::Text => "text",
        MessageKind::Image => "image",
        MessageKind::File => "file",
        MessageKind::Voice => "voice",
        MessageKind::Video => "video",
    }
}

fn parse_message_kind(s: Option<&str>) -> StoreResult<MessageKind> {
    match s {
        Some("text") => Ok(MessageKind::Text),
        Some("image") => Ok(MessageKind::Image),
        Some("file") => Ok(MessageKind::File),
        Some("voice") => Ok(MessageKind::Voice),
        Some("video") => Ok(MessageKind::Video),
        _ => Err(StoreError::Internal(format!("unknown message kind {s:?}"))),
    }
}

pub(crate) fn member_action_str(a: MemberAction) -> &'static str {
    match a {
        MemberAction::Created => "created",
        MemberAction::Joined => "joined",
        MemberAction::Invited => "invited",
        MemberAction::Left => "left",
    }
}

fn parse_member_action(s: Option<&str>) -> StoreResult<MemberAction> {
    match s {
        Some("created") => Ok(MemberAction::Created),
        Some("joined") => Ok(MemberAction::Joined),
        Some("invited") => Ok(MemberAction::Invited),
        Some("left") => Ok(MemberAction::Left),
        _ => Err(StoreError::Internal(format!("unknown member action {s:?}"))),
    }
}

// ---------------------------------------------------------------------------------------------
// Events as rows

/// `SELECT` list and `FROM` of an event with its attachment's metadata, decoded by
/// [`EventRow`]. Backends append their `WHERE`/`ORDER BY` with `concat!`, so every statement is
/// a `&'static str` that the driver prepares once and caches.
macro_rules! event_select {
    () => {
        "SELECT e.conv_id, e.seq, e.id, e.at, e.sender, e.device, e.client_id, e.body_type, \
         e.msg_kind, e.member_action, e.member_user, e.text, e.reply_to, e.target, e.edited_at, \
         e.deleted, a.id AS att_id, a.name AS att_name, a.mime AS att_mime, a.size AS att_size, \
         a.conv_id AS att_conv \
         FROM events e LEFT JOIN attachments a ON a.id = e.attachment_id"
    };
}
pub(crate) use event_select;

/// One row of [`event_select!`].
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct EventRow {
    conv_id: i64,
    seq: i64,
    id: i64,
    at: i64,
    sender: i64,
    device: Option<String>,
    client_id: Option<String>,
    body_type: String,
    msg_kind: Option<String>,
    member_action: Option<String>,
    member_user: Option<i64>,
    text: String,
    reply_to: Option<i64>,
    target: Option<i64>,
    edited_at: Option<i64>,
    deleted: bool,
    att_id: Option<String>,
    att_name: Option<String>,
    att_mime: Option<String>,
    att_size: Option<i64>,
    att_conv: Option<i64>,
}

impl EventRow {
    /// From a row of [`event_select!`] on SQLite's write connection.
    pub(crate) fn from_sqlite(r: &rusqlite::Row<'_>) -> rusqlite::Result<EventRow> {
        Ok(EventRow {
            conv_id: r.get(0)?,
            seq: r.get(1)?,
            id: r.get(2)?,
            at: r.get(3)?,
            sender: r.get(4)?,
            device: r.get(5)?,
            client_id: r.get(6)?,
            body_type: r.get(7)?,
            msg_kind: r.get(8)?,
            member_action: r.get(9)?,
            member_user: r.get(10)?,
            text: r.get(11)?,
            reply_to: r.get(12)?,
            target: r.get(13)?,
            edited_at: r.get(14)?,
            deleted: r.get(15)?,
            att_id: r.get(16)?,
            att_name: r.get(17)?,
            att_mime: r.get(18)?,
            att_size: r.get(19)?,
            att_conv: r.get(20)?,
        })
    }

    /// The event, messages in their current state.
    pub(crate) fn into_event(self) -> StoreResult<Event> {
        let need = |v: Option<i64>, what: &str| {
            v.ok_or_else(|| {
                StoreError::Internal(format!(
                    "{} event {} has no {what}",
                    self.body_type, self.id
                ))
            })
        };
        let body = match self.body_type.as_str() {
            body_type::MESSAGE => {
                let attachment = match (
                    self.att_id,
                    self.att_name,
                    self.att_mime,
                    self.att_size,
                    self.att_conv,
                ) {
                    (Some(id), Some(name), Some(mime), Some(size), Some(conv)) => {
                        Some(Attachment {
                            id: token("attachment id", id)?,
                            name,
                            mime,
                            size: size_from_db(size)?,
                            conv: ConvId(conv),
                        })
                    }
                    _ => None,
                };
                EventBody::Message(Message {
                    kind: parse_message_kind(self.msg_kind.as_deref())?,
                    text: self.text,
                    attachment,
                    reply_to: self.reply_to.map(MessageId),
                    edited_at: self.edited_at,
                    deleted: self.deleted,
                })
            }
            body_type::EDIT => EventBody::Edit {
                target: MessageId(need(self.target, "target")?),
                text: self.text,
            },
            body_type::DELETE => EventBody::Delete {
                target: MessageId(need(self.target, "target")?),
            },
            body_type::MEMBER => EventBody::Member {
                action: parse_member_action(self.member_action.as_deref())?,
                user: UserId(need(self.member_user, "member")?),
            },
            other => {
                return Err(StoreError::Internal(format!(
                    "unknown event type {other:?}"
                )));
            }
        };
        Ok(Event {
            conv: ConvId(self.conv_id),
            seq: seq_from_db(self.seq)?,
            id: MessageId(self.id),
            at: self.at,
            sender: UserId(self.sender),
            device: self.device.map(|d| token("device id", d)).transpose()?,
            client_id: self.client_id.map(|c| token("client id", c)).transpose()?,
            body,
        })
    }
}

/// An event spread over the columns of `events`, for `INSERT`.
pub(crate) struct EventColumns<'a> {
    pub body_type: &'static str,
    pub msg_kind: Option<&'static str>,
    pub member_action: Option<&'static str>,
    pub member_user: Option<i64>,
    pub text: &'a str,
    pub attachment_id: Option<&'a str>,
    pub reply_to: Option<i64>,
    pub target: Option<i64>,
}

impl<'a> EventColumns<'a> {
    pub(crate) fn of(body: &'a EventBody) -> Self {
        let empty = EventColumns {
            body_type: body_type::MESSAGE,
            msg_kind: None,
            member_action: None,
            member_user: None,
            text: "",
            attachment_id: None,
            reply_to: None,
            target: None,
        };
        match body {
            EventBody::Message(m) => EventColumns {
                msg_kind: Some(message_kind_str(m.kind)),
                text: &m.text,
                attachment_id: m.attachment.as_ref().map(|a| a.id.as_str()),
                reply_to: m.reply_to.map(|r| r.0),
                ..empty
            },
            EventBody::Edit { target, text } => EventColumns {
                body_type: body_type::EDIT,
                text,
                target: Some(target.0),
                ..empty
            },
            EventBody::Delete { target } => EventColumns {
                body_type: body_type::DELETE,
                target: Some(target.0),
                ..empty
            },
            EventBody::Member { action, user } => EventColumns {
                body_type: body_type::MEMBER,
                member_action: Some(member_action_str(*action)),
                member_user: Some(user.0),
                ..empty
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Other rows

/// `SELECT id, username, password_hash, created_at FROM users`.
#[derive(sqlx::FromRow)]
pub(crate) struct UserRow {
    id: i64,
    username: String,
    password_hash: String,
    created_at: i64,
}

impl From<UserRow> for UserRecord {
    fn from(r: UserRow) -> Self {
        UserRecord {
            id: UserId(r.id),
            username: r.username,
            password_hash: r.password_hash,
            created_at: r.created_at,
        }
    }
}

/// `SELECT user_id, device_id, name, created_at, last_login, revoked, generation FROM devices`.
#[derive(sqlx::FromRow)]
pub(crate) struct DeviceRow {
    user_id: i64,
    device_id: String,
    name: String,
    created_at: i64,
    last_login: i64,
    revoked: bool,
    generation: i64,
}

impl DeviceRow {
    /// From a row of SQLite's write connection, its columns in the struct's order.
    pub(crate) fn from_sqlite(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceRow> {
        Ok(DeviceRow {
            user_id: r.get(0)?,
            device_id: r.get(1)?,
            name: r.get(2)?,
            created_at: r.get(3)?,
            last_login: r.get(4)?,
            revoked: r.get(5)?,
            generation: r.get(6)?,
        })
    }

    pub(crate) fn into_record(self) -> StoreResult<DeviceRecord> {
        Ok(DeviceRecord {
            user: UserId(self.user_id),
            id: token::<DeviceId>("device id", self.device_id)?,
            name: self.name,
            created_at: self.created_at,
            last_login: self.last_login,
            state: if self.revoked {
                DeviceInfoState::Revoked
            } else {
                DeviceInfoState::Active
            },
            generation: self.generation,
        })
    }
}

/// `SELECT id, kind, name, is_public, last_seq, created_by, created_at FROM conversations`.
#[derive(sqlx::FromRow)]
pub(crate) struct ConversationRow {
    id: i64,
    kind: String,
    name: String,
    is_public: bool,
    last_seq: i64,
    created_by: i64,
    created_at: i64,
}

impl ConversationRow {
    pub(crate) fn into_record(self) -> StoreResult<ConversationRecord> {
        Ok(ConversationRecord {
            id: ConvId(self.id),
            kind: parse_conv_kind(&self.kind)?,
            name: self.name,
            public: self.is_public,
            last_seq: seq_from_db(self.last_seq)?,
            created_by: UserId(self.created_by),
            created_at: self.created_at,
        })
    }
}

/// `SELECT m.user_id, u.username, m.joined_seq, m.read_seq FROM members m JOIN users u`.
#[derive(sqlx::FromRow)]
pub(crate) struct MemberRow {
    user_id: i64,
    username: String,
    joined_seq: i64,
    read_seq: i64,
}

impl MemberRow {
    pub(crate) fn into_record(self) -> StoreResult<MemberRecord> {
        Ok(MemberRecord {
            user: UserId(self.user_id),
            username: self.username,
            joined_seq: seq_from_db(self.joined_seq)?,
            read_seq: seq_from_db(self.read_seq)?,
        })
    }
}

/// A public room: `id, name, member_count`.
#[derive(sqlx::FromRow)]
pub(crate) struct RoomRow {
    id: i64,
    name: String,
    member_count: i64,
}

impl From<RoomRow> for RoomListing {
    fn from(r: RoomRow) -> Self {
        RoomListing {
            id: ConvId(r.id),
            name: r.name,
            member_count: u32::try_from(r.member_count).unwrap_or(u32::MAX),
        }
    }
}

/// `SELECT id, conv_id, uploader, name, mime, size, created_at, data FROM attachments`.
#[derive(sqlx::FromRow)]
pub(crate) struct AttachmentRow {
    id: String,
    conv_id: i64,
    uploader: i64,
    name: String,
    mime: String,
    size: i64,
    created_at: i64,
    data: Vec<u8>,
}

impl AttachmentRow {
    pub(crate) fn into_blob(self) -> StoreResult<AttachmentBlob> {
        Ok(AttachmentBlob {
            meta: Attachment {
                id: token("attachment id", self.id)?,
                name: self.name,
                mime: self.mime,
                size: size_from_db(self.size)?,
                conv: ConvId(self.conv_id),
            },
            uploader: UserId(self.uploader),
            created_at: self.created_at,
            data: Bytes::from(self.data),
        })
    }
}

/// A member's view of one conversation, without its last message (fetched for all of the
/// member's conversations at once, beside).
#[derive(sqlx::FromRow)]
pub(crate) struct SummaryRow {
    id: i64,
    kind: String,
    name: String,
    is_public: bool,
    last_seq: i64,
    created_at: i64,
    read_seq: i64,
    member_count: i64,
    unread: i64,
    peer_id: Option<i64>,
    peer_name: Option<String>,
    peer_read_seq: Option<i64>,
}

impl SummaryRow {
    /// The conversation this row is about.
    pub(crate) fn conv(&self) -> ConvId {
        ConvId(self.id)
    }

    pub(crate) fn into_summary(
        self,
        last_message: Option<Event>,
    ) -> StoreResult<ConversationSummary> {
        let kind = parse_conv_kind(&self.kind)?;
        let peer = match (kind, self.peer_id, self.peer_name) {
            (ConvKind::Direct, Some(id), Some(username)) => Some(UserInfo {
                id: UserId(id),
                username,
            }),
            _ => None,
        };
        Ok(ConversationSummary {
            id: ConvId(self.id),
            kind,
            // A direct conversation is called by the other user's name.
            name: peer.as_ref().map_or(self.name, |p| p.username.clone()),
            peer,
            public: self.is_public,
            member_count: u32::try_from(self.member_count).unwrap_or(u32::MAX),
            last_seq: seq_from_db(self.last_seq)?,
            last_message,
            read_seq: seq_from_db(self.read_seq)?,
            unread: u64::try_from(self.unread).unwrap_or(0),
            peer_read_seq: match kind {
                ConvKind::Direct => self.peer_read_seq.map(seq_from_db).transpose()?,
                ConvKind::Room => None,
            },
            created_at: self.created_at,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Member cache

/// How many conversations' member lists a process keeps before it starts over. A list is one
/// `Arc` per conversation; starting over costs one query per conversation touched next.
const MEMBER_CACHE_CONVERSATIONS: usize = 50_000;

/// Member lists by conversation, each tagged with the membership epoch it was read at.
///
/// `conversations.member_epoch` is bumped in the same transaction as every membership change
/// (and lists are cached only once that transaction committed), so one `(conversation, epoch)`
/// always names the same list, in every process: a cached list is current exactly when its
/// epoch equals the row's, which the store reads anyway. Appends to busy conversations thus
/// cost no member query, while a join made by another process is seen on the next event.
#[derive(Default)]
pub(crate) struct MemberCache {
    // A plain mutex: held for a map lookup or insert, never across an await.
    lists: Mutex<HashMap<ConvId, EpochMembers>>,
}

/// A member list and the membership epoch it is of.
type EpochMembers = (i64, Arc<[UserId]>);

impl MemberCache {
    /// The members of `conv` at `epoch`, if known.
    pub(crate) fn get(&self, conv: ConvId, epoch: i64) -> Option<Arc<[UserId]>> {
        match self.lists.lock().get(&conv) {
            Some((e, list)) if *e == epoch => Some(list.clone()),
            _ => None,
        }
    }

    /// Whether some list of `conv` is cached (perhaps of an older epoch).
    pub(crate) fn knows(&self, conv: ConvId) -> bool {
        self.lists.lock().contains_key(&conv)
    }

    /// Remembers the members of `conv` at `epoch` (sorted), unless a later epoch is known.
    pub(crate) fn put(&self, conv: ConvId, epoch: i64, members: Arc<[UserId]>) {
        let mut lists = self.lists.lock();
        if let Some((known, _)) = lists.get(&conv) {
            if *known > epoch {
                return;
            }
        } else if lists.len() >= MEMBER_CACHE_CONVERSATIONS {
            lists.clear();
        }
        lists.insert(conv, (epoch, members));
    }
}

// ---------------------------------------------------------------------------------------------
// Rules

/// Refuses text with a NUL character. PostgreSQL cannot store one in a `TEXT` column, and the
/// failed statement would abort the whole batch's transaction; refusing it here, before any
/// write, keeps it one event's refusal, and the same on every backend.
fn check_no_nul(text: &str) -> StoreResult<()> {
    if text.contains('\0') {
        return Err(StoreError::Invalid("text contains a NUL character".into()));
    }
    Ok(())
}

/// Checks a message's shape: text size, text or attachment present, kind matching attachment.
pub(crate) fn check_message(
    kind: MessageKind,
    text: &str,
    has_attachment: bool,
) -> StoreResult<()> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(StoreError::Invalid(format!(
            "text is {} bytes, more than {MAX_TEXT_BYTES}",
            text.len()
        )));
    }
    check_no_nul(text)?;
    match (kind, has_attachment) {
        (MessageKind::Text, true) => Err(StoreError::Invalid(
            "a text message has no attachment".into(),
        )),
        (MessageKind::Text, false) if text.trim().is_empty() => {
            Err(StoreError::Invalid("empty message".into()))
        }
        (MessageKind::Text, false) => Ok(()),
        (_, false) => Err(StoreError::Invalid(format!(
            "a {} message needs an attachment",
            message_kind_str(kind)
        ))),
        (_, true) => Ok(()),
    }
}

/// Checks the new text of an edit: within limits, and not blank unless the message has an
/// attachment (whose caption may be removed).
pub(crate) fn check_edit_text(text: &str, has_attachment: bool) -> StoreResult<()> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(StoreError::Invalid(format!(
            "text is {} bytes, more than {MAX_TEXT_BYTES}",
            text.len()
        )));
    }
    check_no_nul(text)?;
    if text.trim().is_empty() && !has_attachment {
        return Err(StoreError::Invalid(
            "an edit cannot empty a text message: delete it".into(),
        ));
    }
    Ok(())
}

/// Checks a room name: not blank, at most [`NAME_MAX_CHARS`] characters.
pub(crate) fn check_room_name(name: &str) -> StoreResult<()> {
    if name.trim().is_empty() {
        return Err(StoreError::Invalid("a room needs a name".into()));
    }
    check_no_nul(name)?;
    if name.chars().count() > NAME_MAX_CHARS {
        return Err(StoreError::Invalid(format!(
            "a room name has at most {NAME_MAX_CHARS} characters"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The write path, over a backend's statements

/// What the write path needs to know of a conversation, read (and on backends with row locks,
/// locked) once per transaction and written back once at its end.
#[derive(Clone, Debug)]
pub(crate) struct ConvHead {
    pub kind: ConvKind,
    pub public: bool,
    pub last_seq: Seq,
    /// `seq` of the last `message` event, for conversation lists. Only for a backend that keeps
    /// it in the conversation's row (PostgreSQL); SQLite reads it from the events, and its
    /// heads carry 0 here.
    pub last_msg_seq: Seq,
    /// Time of the latest event, to order conversation lists; kept as `last_msg_seq` is.
    pub last_activity: Millis,
    /// Bumped with every membership change: see [`MemberCache`].
    pub member_epoch: i64,
}

/// An earlier event, as the target of an edit, a delete or a reply.
#[derive(Clone, Debug)]
pub(crate) struct MessageRef {
    pub conv: ConvId,
    pub is_message: bool,
    pub sender: UserId,
    pub deleted: bool,
    pub attachment: Option<AttachmentId>,
}

/// A conversation to insert, with its first event already counted: `last_seq` 1, its first
/// members in, `member_epoch` 1.
pub(crate) struct NewConversation<'a> {
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
pub(crate) trait WriteOps: Send {
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
pub(crate) struct BatchStart {
    /// The heads of the conversations that exist.
    pub heads: Vec<(ConvId, ConvHead)>,
    /// `(conversation, member)` for the conversations whose members were asked for.
    pub members: Vec<(ConvId, UserId)>,
}

/// The keys a batch's deferred inserts may not take: the event ids and `(sender, client_id)`
/// pairs found taken when the batch began, and those of the events waiting to be inserted.
#[cfg(feature = "postgres")]
#[derive(Default)]
pub(crate) struct TakenKeys {
    ids: HashSet<i64>,
    client_ids: HashSet<(i64, String)>,
}

#[cfg(feature = "postgres")]
impl TakenKeys {
    /// Keys found in the database: `(id, sender, client_id)` rows.
    pub(crate) fn found(rows: impl IntoIterator<Item = (i64, i64, Option<String>)>) -> Self {
        let mut keys = TakenKeys::default();
        for (id, sender, client_id) in rows {
            keys.ids.insert(id);
            if let Some(client_id) = client_id {
                keys.client_ids.insert((sender, client_id));
            }
        }
        keys
    }

    /// Takes the keys of `event` for it; `false` (and nothing taken) if one is taken already.
    pub(crate) fn claim(&mut self, event: &Event) -> bool {
        let pair = event
            .client_id
            .as_ref()
            .map(|c| (event.sender.0, c.as_str().to_owned()));
        if self.ids.contains(&event.id.0)
            || pair.as_ref().is_some_and(|p| self.client_ids.contains(p))
        {
            return false;
        }
        self.ids.insert(event.id.0);
        if let Some(pair) = pair {
            self.client_ids.insert(pair);
        }
        true
    }

    /// Whether `id` is taken (by a stored event or a waiting one).
    pub(crate) fn has_id(&self, id: MessageId) -> bool {
        self.ids.contains(&id.0)
    }
}

/// Why one event of a batch was not appended.
enum Fail {
    /// The event is refused; the batch goes on.
    Refused(StoreError),
    /// A statement failed; the whole transaction is rolled back.
    Db(StoreError),
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Db(e)
    }
}

fn refuse<T>(e: StoreError) -> Result<T, Fail> {
    Err(Fail::Refused(e))
}

/// A conversation as a batch sees it: its head and members as of the batch's last event.
struct ConvState {
    head: ConvHead,
    members: Arc<[UserId]>,
    dirty: bool,
    members_changed: bool,
}

/// Conversations a batch touched; `None` for ids that do not exist. Ordered, so that heads are
/// read (and locked) in id order.
type States = BTreeMap<ConvId, Option<ConvState>>;

/// The results of a batch, and the member lists it changed, to cache once it committed.
pub(crate) struct BatchOutcome {
    pub results: Vec<StoreResult<Appended>>,
    changed: Vec<(ConvId, i64, Arc<[UserId]>)>,
}

impl BatchOutcome {
    /// Caches the member lists the batch changed. Call only after the commit: until then the
    /// new epochs are not the database's.
    pub(crate) fn remember_members(&self, cache: &MemberCache) {
        for (conv, epoch, members) in &self.changed {
            cache.put(*conv, *epoch, members.clone());
        }
    }
}

/// The members of `conv` at `epoch`: from the cache, else read (under the write lock).
async fn members_at<T: WriteOps>(
    tx: &mut T,
    cache: &MemberCache,
    conv: ConvId,
    epoch: i64,
) -> StoreResult<Arc<[UserId]>> {
    if let Some(m) = cache.get(conv, epoch) {
        return Ok(m);
    }
    let mut ids = tx.member_ids(conv).await?;
    ids.sort_unstable();
    let ids: Arc<[UserId]> = ids.into();
    // Read under the write lock before any change of ours: the committed list at this epoch,
    // safe to share now.
    cache.put(conv, epoch, ids.clone());
    Ok(ids)
}

/// Loads a conversation's state into `states` if it is not there yet (a conversation outside
/// the batch's: the one of a resend's first event).
async fn load_state<T: WriteOps>(
    tx: &mut T,
    cache: &MemberCache,
    states: &mut States,
    conv: ConvId,
) -> StoreResult<()> {
    if states.contains_key(&conv) {
        return Ok(());
    }
    let state = match tx.conv_head(conv).await? {
        None => None,
        Some(head) => Some(ConvState {
            members: members_at(tx, cache, conv, head.member_epoch).await?,
            head,
            dirty: false,
            members_changed: false,
        }),
    };
    states.insert(conv, state);
    Ok(())
}

/// Appends a batch inside the backend's transaction: each event in order, each with its own
/// result. Returns `Err` only when a statement failed, and then the transaction must be rolled
/// back; the caller commits otherwise, then calls [`BatchOutcome::remember_members`].
pub(crate) async fn append_batch<T: WriteOps>(
    tx: &mut T,
    cache: &MemberCache,
    batch: Vec<NewEvent>,
) -> StoreResult<BatchOutcome> {
    // Every head first, in id order, with the member lists the cache lacks, in one go where
    // the backend can.
    let mut convs: Vec<ConvId> = batch.iter().map(|e| e.conv).collect();
    convs.sort_unstable();
    convs.dedup();
    let members_of: Vec<ConvId> = convs.iter().copied().filter(|c| !cache.knows(*c)).collect();
    let start = tx.begin_batch(&convs, &members_of, &batch).await?;
    let mut read: HashMap<ConvId, Vec<UserId>> = HashMap::new();
    for (conv, user) in start.members {
        read.entry(conv).or_default().push(user);
    }
    let mut states = States::new();
    for conv in &convs {
        states.insert(*conv, None);
    }
    for (conv, head) in start.heads {
        let members = if members_of.binary_search(&conv).is_ok() {
            let mut ids = read.remove(&conv).unwrap_or_default();
            ids.sort_unstable();
            let ids: Arc<[UserId]> = ids.into();
            // Read under the write lock before any change of ours: the committed list at this
            // epoch, safe to share now.
            cache.put(conv, head.member_epoch, ids.clone());
            ids
        } else {
            members_at(tx, cache, conv, head.member_epoch).await?
        };
        states.insert(
            conv,
            Some(ConvState {
                head,
                members,
                dirty: false,
                members_changed: false,
            }),
        );
    }

    let mut results = Vec::with_capacity(batch.len());
    for ev in batch {
        match append_one(tx, cache, &mut states, ev).await {
            Ok(appended) => results.push(Ok(appended)),
            Err(Fail::Refused(e)) => results.push(Err(e)),
            Err(Fail::Db(e)) => return Err(e),
        }
    }

    let mut dirty = Vec::new();
    let mut changed = Vec::new();
    for (conv, state) in states {
        let Some(state) = state else { continue };
        if state.members_changed {
            changed.push((conv, state.head.member_epoch, state.members));
        }
        if state.dirty && (T::HEADS_IN_ROW || state.members_changed) {
            dirty.push((conv, state.head));
        }
    }
    tx.end_batch(&dirty).await?;
    Ok(BatchOutcome { results, changed })
}

/// Appends one event, or answers a resend with the first event.
///
/// A resend must be answered with the first event whatever its checks would say now (the
/// sender may have left since). Looking the pair up first would cost every event a statement,
/// so it is looked up only when the event is refused, or when the insert finds a unique key
/// taken, which is what a resend that passes the checks runs into.
async fn append_one<T: WriteOps>(
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
    let sender_is_member = state.members.binary_search(&ev.sender).is_ok();
    // The attachment a delete takes away, to drop if nothing else refers to it.
    let mut dropped_attachment = None;

    let body = match ev.body {
        NewBody::Message {
            kind,
            text,
            attachment,
            reply_to,
        } => {
            if !sender_is_member {
                return refuse(StoreError::NotMember);
            }
            check_message(kind, &text, attachment.is_some()).map_err(Fail::Refused)?;
            let attachment = match attachment {
                None => None,
                Some(id) => match tx.attachment_meta(&id).await? {
                    Some(meta) if meta.conv == ev.conv => Some(meta),
                    _ => {
                        return refuse(StoreError::Invalid(format!(
                            "attachment {id} was not uploaded to this conversation"
                        )));
                    }
                },
            };
            if let Some(r) = reply_to {
                match tx.message_ref(r).await? {
                    Some(m) if m.conv == ev.conv && m.is_message => {}
                    _ => {
                        return refuse(StoreError::Invalid(format!(
                            "reply_to {r} is not a message of this conversation"
                        )));
                    }
                }
            }
            EventBody::Message(Message {
                kind,
                text,
                attachment,
                reply_to,
                edited_at: None,
                deleted: false,
            })
        }
        NewBody::Edit { target, text } => {
            if !sender_is_member {
                return refuse(StoreError::NotMember);
            }
            let m = own_message(tx, ev.conv, ev.sender, target).await?;
            check_edit_text(&text, m.attachment.is_some()).map_err(Fail::Refused)?;
            EventBody::Edit { target, text }
        }
        NewBody::Delete { target } => {
            if !sender_is_member {
                return refuse(StoreError::NotMember);
            }
            dropped_attachment = own_message(tx, ev.conv, ev.sender, target)
                .await?
                .attachment;
            EventBody::Delete { target }
        }
        NewBody::Member { action, user } => {
            let user_is_member = state.members.binary_search(&user).is_ok();
            let is_room = state.head.kind == ConvKind::Room;
            match action {
                MemberAction::Created => {
                    return refuse(StoreError::Invalid(
                        "a conversation is created by open_direct or create_room, not appended"
                            .into(),
                    ));
                }
                MemberAction::Joined => {
                    if ev.sender != user {
                        return refuse(StoreError::Forbidden(
                            "only users themselves can join".into(),
                        ));
                    }
                    if !is_room || !state.head.public {
                        return refuse(StoreError::Forbidden(
                            "only public rooms can be joined without an invitation".into(),
                        ));
                    }
                    if user_is_member {
                        return refuse(StoreError::Conflict("already a member".into()));
                    }
                    if !tx.user_exists(user).await? {
                        return refuse(StoreError::NotFound);
                    }
                }
                MemberAction::Invited => {
                    if !sender_is_member {
                        return refuse(StoreError::NotMember);
                    }
                    if !is_room {
                        return refuse(StoreError::Forbidden(
                            "a direct conversation keeps its two members".into(),
                        ));
                    }
                    if user_is_member {
                        return refuse(StoreError::Conflict("already a member".into()));
                    }
                    if !tx.user_exists(user).await? {
                        return refuse(StoreError::NotFound);
                    }
                }
                MemberAction::Left => {
                    if !sender_is_member {
                        return refuse(StoreError::NotMember);
                    }
                    if ev.sender != user {
                        return refuse(StoreError::Forbidden("members leave by themselves".into()));
                    }
                    if !is_room {
                        return refuse(StoreError::Forbidden(
                            "a direct conversation cannot be left".into(),
                        ));
                    }
                }
            }
            EventBody::Member { action, user }
        }
    };

    let seq = state.head.last_seq + 1;
    let event = Event {
        conv: ev.conv,
        seq,
        id: ev.id,
        at: ev.at,
        sender: ev.sender,
        device: ev.device,
        client_id: ev.client_id,
        body,
    };
    if !tx.insert_event(&event, &ev.origin).await? {
        // A taken (sender, client_id) is answered as a resend by the caller; a taken id is the
        // caller's bug; a taken (conv, seq) would be ours: another writer without the lock.
        if event.client_id.is_none() && tx.message_ref(event.id).await?.is_none() {
            return Err(Fail::Db(StoreError::Internal(format!(
                "seq {} of conversation {} is taken: seqs assigned without the write lock?",
                event.seq, event.conv
            ))));
        }
        return refuse(StoreError::Conflict(format!(
            "event id {} is already used",
            event.id
        )));
    }

    let mut leaver = None;
    match &event.body {
        EventBody::Message(_) => state.head.last_msg_seq = seq,
        EventBody::Edit { target, text } => tx.edit_message(*target, text, event.at).await?,
        EventBody::Delete { target } => {
            tx.delete_message(*target, dropped_attachment.as_ref())
                .await?
        }
        EventBody::Member { action, user } => {
            let mut members = state.members.to_vec();
            if *action == MemberAction::Left {
                tx.remove_member(event.conv, *user).await?;
                members.retain(|m| m != user);
                leaver = Some(*user);
            } else {
                tx.add_member(event.conv, *user, seq).await?;
                members.push(*user);
                members.sort_unstable();
            }
            state.members = members.into();
            state.head.member_epoch += 1;
            state.members_changed = true;
        }
    }
    state.head.last_seq = seq;
    state.head.last_activity = state.head.last_activity.max(event.at);
    state.dirty = true;

    let recipients = match leaver {
        // The leaver gets the event of their own leaving, so their other devices learn of it.
        Some(user) => {
            let mut with_leaver = state.members.to_vec();
            with_leaver.push(user);
            with_leaver.sort_unstable();
            with_leaver.into()
        }
        None => state.members.clone(),
    };
    Ok(Appended {
        event,
        recipients,
        duplicate: false,
    })
}

/// The message `target` if `sender` may edit or delete it in `conv`.
async fn own_message<T: WriteOps>(
    tx: &mut T,
    conv: ConvId,
    sender: UserId,
    target: MessageId,
) -> Result<MessageRef, Fail> {
    match tx.message_ref(target).await? {
        Some(m) if m.conv == conv && m.is_message => {
            if m.sender != sender {
                return refuse(StoreError::Forbidden(
                    "only its sender can change a message".into(),
                ));
            }
            if m.deleted {
                return refuse(StoreError::Invalid(format!("message {target} was deleted")));
            }
            Ok(m)
        }
        _ => refuse(StoreError::Invalid(format!(
            "{target} is not a message of this conversation"
        ))),
    }
}

/// The first event of a conversation.
fn created_event(conv: ConvId, id: MessageId, at: Millis, creator: UserId) -> Event {
    Event {
        conv,
        seq: 1,
        id,
        at,
        sender: creator,
        device: None,
        client_id: None,
        body: EventBody::Member {
            action: MemberAction::Created,
            user: creator,
        },
    }
}

/// Finds or creates the direct conversation of `a` and `b` inside the backend's transaction.
pub(crate) async fn open_direct<T: WriteOps>(
    tx: &mut T,
    a: UserId,
    b: UserId,
    created_id: MessageId,
    origin: &NodeId,
    now: Millis,
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
        created_at: now,
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
    let event = created_event(conv, created_id, now, a);
    if !tx.insert_event(&event, origin).await? {
        return Err(StoreError::Conflict(format!(
            "event id {created_id} is already used"
        )));
    }
    tx.add_member(conv, lo, 1).await?;
    tx.add_member(conv, hi, 1).await?;
    let recipients: Arc<[UserId]> = Arc::from(vec![lo, hi]);
    Ok((
        conv,
        Some(Appended {
            event,
            recipients,
            duplicate: false,
        }),
    ))
}

/// Creates a room with its creator as only member inside the backend's transaction.
pub(crate) async fn create_room<T: WriteOps>(
    tx: &mut T,
    creator: UserId,
    name: &str,
    public: bool,
    created_id: MessageId,
    origin: &NodeId,
    now: Millis,
) -> StoreResult<(ConvId, Appended)> {
    check_room_name(name)?;
    if !tx.user_exists(creator).await? {
        return Err(StoreError::NotFound);
    }
    let new = NewConversation {
        kind: ConvKind::Room,
        name,
        public,
        created_by: creator,
        created_at: now,
        direct: None,
    };
    let conv = tx.insert_conversation(&new).await?.ok_or_else(|| {
        StoreError::Internal("a room insert reported a direct-pair conflict".into())
    })?;
    let event = created_event(conv, created_id, now, creator);
    if !tx.insert_event(&event, origin).await? {
        return Err(StoreError::Conflict(format!(
            "event id {created_id} is already used"
        )));
    }
    tx.add_member(conv, creator, 1).await?;
    let recipients: Arc<[UserId]> = Arc::from(vec![creator]);
    Ok((
        conv,
        Appended {
            event,
            recipients,
            duplicate: false,
        },
    ))
}

/// Who gets an event again when a survivor republishes it: today's members who had joined by
/// then, plus, for a `Left` event, the leaver. (Exactly "the members right after the event"
/// unless membership changed since, which the log of member events tells receivers anyway.)
pub(crate) fn replay_recipients(event: &Event, members: &[(UserId, Seq)]) -> Arc<[UserId]> {
    let mut out: Vec<UserId> = members
        .iter()
        .filter(|(_, joined)| *joined <= event.seq)
        .map(|(u, _)| *u)
        .collect();
    if let EventBody::Member {
        action: MemberAction::Left,
        user,
    } = &event.body
    {
        out.push(*user);
    }
    out.sort_unstable();
    out.dedup();
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[i64]) -> Arc<[UserId]> {
        v.iter().copied().map(UserId).collect()
    }

    #[test]
    fn member_cache_answers_only_for_the_epoch_it_holds() {
        let cache = MemberCache::default();
        cache.put(ConvId(1), 3, ids(&[1, 2]));
        assert_eq!(cache.get(ConvId(1), 3).as_deref(), Some(&ids(&[1, 2])[..]));
        assert!(cache.get(ConvId(1), 4).is_none(), "a newer epoch must miss");
        assert!(cache.get(ConvId(2), 3).is_none());
        // An older list read late (another task) never replaces a newer one.
        cache.put(ConvId(1), 5, ids(&[1, 2, 3]));
        cache.put(ConvId(1), 4, ids(&[1]));
        assert_eq!(
            cache.get(ConvId(1), 5).as_deref(),
            Some(&ids(&[1, 2, 3])[..])
        );
        assert!(cache.get(ConvId(1), 4).is_none());
    }

    #[test]
    fn message_shapes() {
        assert!(check_message(MessageKind::Text, "hi", false).is_ok());
        assert!(check_message(MessageKind::Text, " \n", false).is_err());
        assert!(check_message(MessageKind::Text, "hi", true).is_err());
        assert!(check_message(MessageKind::Image, "", true).is_ok());
        assert!(check_message(MessageKind::File, "caption", false).is_err());
        assert!(check_message(MessageKind::Text, &"x".repeat(MAX_TEXT_BYTES), false).is_ok());
        assert!(check_message(MessageKind::Text, &"x".repeat(MAX_TEXT_BYTES + 1), false).is_err());
        assert!(check_message(MessageKind::Text, "nul \0 inside", false).is_err());
        assert!(check_edit_text("nul \0", true).is_err());
        assert!(check_room_name("room\0").is_err());
        assert!(check_edit_text("", true).is_ok());
        assert!(check_edit_text("", false).is_err());
        assert!(check_room_name("  ").is_err());
        assert!(check_room_name(&"r".repeat(NAME_MAX_CHARS)).is_ok());
        assert!(check_room_name(&"r".repeat(NAME_MAX_CHARS + 1)).is_err());
    }

    #[test]
    fn event_columns_round_trip_through_a_row() -> StoreResult<()> {
        let body = EventBody::Member {
            action: MemberAction::Invited,
            user: UserId(9),
        };
        let cols = EventColumns::of(&body);
        let row = EventRow {
            conv_id: 4,
            seq: 7,
            id: 123,
            at: 1000,
            sender: 2,
            device: Some("laptop".into()),
            client_id: None,
            body_type: cols.body_type.into(),
            msg_kind: cols.msg_kind.map(Into::into),
            member_action: cols.member_action.map(Into::into),
            member_user: cols.member_user,
            text: cols.text.into(),
            reply_to: cols.reply_to,
            target: cols.target,
            edited_at: None,
            deleted: false,
            att_id: None,
            att_name: None,
            att_mime: None,
            att_size: None,
            att_conv: None,
        };
        let event = row.into_event()?;
        assert_eq!(event.body, body);
        assert_eq!(event.seq, 7);
        assert_eq!(event.device.as_ref().map(DeviceId::as_str), Some("laptop"));
        Ok(())
    }

    #[test]
    fn replayed_left_event_reaches_the_leaver_but_not_later_joiners() {
        let event = Event {
            conv: ConvId(1),
            seq: 5,
            id: MessageId(1),
            at: 0,
            sender: UserId(3),
            device: None,
            client_id: None,
            body: EventBody::Member {
                action: MemberAction::Left,
                user: UserId(3),
            },
        };
        let members = [(UserId(1), 1), (UserId(2), 4), (UserId(4), 6)];
        assert_eq!(
            &*replay_recipients(&event, &members),
            &[UserId(1), UserId(2), UserId(3)]
        );
    }
}
