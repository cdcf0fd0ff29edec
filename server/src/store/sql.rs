//! The [`Store`] contract for the SQL backends, implemented once: [`SqlStore`] over a
//! [`SqlBackend`] (SQLite, PostgreSQL). The reads are written here; the writes are each
//! backend's own.
//!
//! Why generic over sqlx's `Database` rather than a query module each backend calls: the reads
//! are the same statements in both dialects (`$n` placeholders, which SQLite through sqlx and
//! PostgreSQL both read), and so is the code that runs them: binding, fetching, decoding rows
//! into records, caching member lists. Written once over `Pool<DB>`, with the bounds said once
//! on the impl, they are compiled for each backend as if written for it (no `Any` driver, no
//! dynamic dispatch). Where the dialects differ (SQLite reads a conversation's head from its
//! events, PostgreSQL keeps it in the row; each matches a room name its own way; PostgreSQL
//! reads a list from a snapshot), the statements are data: a [`Dialect`] per backend.
//!
//! The writes differ in more than their SQL: SQLite writes through rusqlite on one connection
//! per process under a file lock shared by the machine's processes, PostgreSQL through sqlx
//! under row locks with deferred inserts and retries. So [`SqlBackend`] is the backend's
//! writes, its pool and its dialect, and the write path's rules are shared one level down, in
//! the store's `write` module.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;

use protocol::http::RoomListing;
use protocol::model::{ConversationSummary, Event, EventBody, MemberAction};
use protocol::{AttachmentId, ConvId, DeviceId, Millis, NodeId, Seq, UserId};
use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Pool, Type};

use super::encoding::{seq_from_db, seq_to_db};
use super::member_cache::MemberCache;
use super::rows::{
    AttachmentRow, ConversationRow, DeviceRow, EventRow, MemberRow, REACTIONS_SELECT, ReactionRow,
    RoomRow, SummaryRow, UserRow, event_select, fold_reactions, message_id_range,
};
use super::write::{self, WriteTransactions};
use super::{
    Appended, AttachmentBlob, ConversationRecord, Creation, DeviceLogin, DeviceRecord,
    MemberRecord, NewEvent, NewRoom, NewUser, Page, Store, StoreError, StoreResult, TopUp,
    UserRecord,
};

/// The statements where the dialects differ, one set per backend.
pub struct Dialect {
    /// One conversation's row as [`ConversationRow`] reads it; `$1` the conversation.
    pub conversation: &'static str,
    /// A member's conversations as [`SummaryRow`]s, most recent activity first; `$1` the member.
    pub summaries: &'static str,
    /// The last message of each of a member's conversations, as [`EventRow`]s; `$1` the member.
    pub last_messages: &'static str,
    /// Public rooms whose name contains `$1` as typed (`%` and `_` included) regardless of case,
    /// as [`RoomRow`]s, by name, at most `$2`.
    pub public_rooms: &'static str,
    /// The statement that begins a read transaction of several statements, so that they see one
    /// moment; `None` for the backend's plain `BEGIN`.
    pub snapshot: Option<&'static str>,
}

/// What a SQL backend brings to [`SqlStore`]: its database, its pool and its dialect for the
/// shared reads, and its writes.
pub trait SqlBackend: WriteTransactions + Send + Sync + 'static {
    /// Its sqlx database.
    type Db: Database;
    /// "sqlite" or "postgres", for status pages.
    const KIND: &'static str;
    /// Its statements where the dialects differ.
    const DIALECT: Dialect;

    /// Its word for a failed statement.
    const DB_ERR: fn(sqlx::Error) -> StoreError;

    /// The pool the shared reads run on.
    fn read_pool(&self) -> &Pool<Self::Db>;

    /// [`Store::create_user`].
    fn create_user(
        &self,
        user: NewUser<'_>,
    ) -> impl Future<Output = StoreResult<UserRecord>> + Send;
    /// [`Store::login_device`].
    fn login_device(
        &self,
        login: DeviceLogin<'_>,
    ) -> impl Future<Output = StoreResult<DeviceRecord>> + Send;
    /// [`Store::revoke_device`].
    fn revoke_device(
        &self,
        user: UserId,
        device: &DeviceId,
    ) -> impl Future<Output = StoreResult<DeviceRecord>> + Send;
    /// [`Store::append_topped_up`]: a batch (never empty when `top_up` adds nothing) and what
    /// came while the store waited to write it, with the process's member lists, which the
    /// write path reads and keeps current.
    fn append(
        &self,
        members: &MemberCache,
        batch: Vec<NewEvent>,
        top_up: TopUp<'_>,
    ) -> impl Future<Output = Vec<StoreResult<Appended>>> + Send;
    /// [`Store::mark_read`].
    fn mark_read(
        &self,
        conv: ConvId,
        user: UserId,
        seq: Seq,
    ) -> impl Future<Output = StoreResult<Option<Seq>>> + Send;
    /// [`Store::put_attachment`], once the blob's size was checked.
    fn put_attachment(&self, blob: AttachmentBlob) -> impl Future<Output = StoreResult<()>> + Send;
}

/// A SQL store: the [`Store`] contract over a backend. Cheap to clone when the backend is.
#[derive(Clone)]
pub struct SqlStore<B> {
    backend: B,
    /// Member lists by membership epoch, read by `recipients` and kept by the write path.
    members: Arc<MemberCache>,
}

impl<B: SqlBackend> SqlStore<B> {
    /// The store over `backend`.
    pub(crate) fn new(backend: B) -> Self {
        SqlStore {
            backend,
            members: Arc::default(),
        }
    }

    /// Its backend, for tests of the backend's own.
    #[cfg(test)]
    pub(crate) fn backend(&self) -> &B {
        &self.backend
    }
}

// The bounds say what the reads need of the database (the executors, the values they bind and
// the rows they decode); SQLite's and PostgreSQL's sqlx drivers provide all of it.
#[async_trait]
impl<B> Store for SqlStore<B>
where
    B: SqlBackend,
    for<'c> &'c mut <B::Db as Database>::Connection: Executor<'c, Database = B::Db>,
    for<'q> <B::Db as Database>::Arguments<'q>: IntoArguments<'q, B::Db>,
    for<'q> i64: Encode<'q, B::Db> + Type<B::Db>,
    for<'q> &'q str: Encode<'q, B::Db> + Type<B::Db>,
    for<'r> (i64,): FromRow<'r, <B::Db as Database>::Row>,
    for<'r> (i64, Option<i64>): FromRow<'r, <B::Db as Database>::Row>,
    for<'r> (i64, i64, i64): FromRow<'r, <B::Db as Database>::Row>,
    for<'r> UserRow: FromRow<'r, <B::Db as Database>::Row>,
    for<'r> DeviceRow: FromRow<'r, <B::Db as Database>::Row>,
    for<'r> ConversationRow: FromRow<'r, <B::Db as Database>::Row>,
    for<'r> MemberRow: FromRow<'r, <B::Db as Database>::Row>,
    for<'r> RoomRow: FromRow<'r, <B::Db as Database>::Row>,
    for<'r> AttachmentRow: FromRow<'r, <B::Db as Database>::Row>,
    for<'r> SummaryRow: FromRow<'r, <B::Db as Database>::Row>,
    for<'r> EventRow: FromRow<'r, <B::Db as Database>::Row>,
    for<'r> ReactionRow: FromRow<'r, <B::Db as Database>::Row>,
{
    fn kind(&self) -> &'static str {
        B::KIND
    }

    async fn create_user(&self, user: NewUser<'_>) -> StoreResult<UserRecord> {
        self.backend.create_user(user).await.map_err(|e| match e {
            StoreError::Conflict(_) => {
                StoreError::Conflict(format!("username {:?} is taken", user.username))
            }
            e => e,
        })
    }

    /// A user by name.
    async fn user_by_name(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        let row = sqlx::query_as::<B::Db, UserRow>(
            "SELECT id, username, password_hash, created_at FROM users WHERE username = $1",
        )
        .bind(username)
        .fetch_optional(self.backend.read_pool())
        .await
        .map_err(B::DB_ERR)?;
        Ok(row.map(Into::into))
    }

    /// A user by id.
    async fn user_by_id(&self, id: UserId) -> StoreResult<Option<UserRecord>> {
        let row = sqlx::query_as::<B::Db, UserRow>(
            "SELECT id, username, password_hash, created_at FROM users WHERE id = $1",
        )
        .bind(id.0)
        .fetch_optional(self.backend.read_pool())
        .await
        .map_err(B::DB_ERR)?;
        Ok(row.map(Into::into))
    }

    async fn login_device(&self, login: DeviceLogin<'_>) -> StoreResult<DeviceRecord> {
        self.backend.login_device(login).await
    }

    /// One device of a user.
    async fn device(&self, user: UserId, device: &DeviceId) -> StoreResult<Option<DeviceRecord>> {
        sqlx::query_as::<B::Db, DeviceRow>(
            "SELECT user_id, device_id, name, created_at, last_login, revoked, generation \
             FROM devices WHERE user_id = $1 AND device_id = $2",
        )
        .bind(user.0)
        .bind(device.as_str())
        .fetch_optional(self.backend.read_pool())
        .await
        .map_err(B::DB_ERR)?
        .map(DeviceRow::into_record)
        .transpose()
    }

    /// A user's devices, most recent login first.
    async fn devices(&self, user: UserId) -> StoreResult<Vec<DeviceRecord>> {
        sqlx::query_as::<B::Db, DeviceRow>(
            "SELECT user_id, device_id, name, created_at, last_login, revoked, generation \
             FROM devices WHERE user_id = $1 ORDER BY last_login DESC, device_id",
        )
        .bind(user.0)
        .fetch_all(self.backend.read_pool())
        .await
        .map_err(B::DB_ERR)?
        .into_iter()
        .map(DeviceRow::into_record)
        .collect()
    }

    async fn revoke_device(&self, user: UserId, device: &DeviceId) -> StoreResult<DeviceRecord> {
        self.backend.revoke_device(user, device).await
    }

    async fn open_direct(
        &self,
        a: UserId,
        b: UserId,
        creation: Creation<'_>,
    ) -> StoreResult<(ConvId, Option<Appended>)> {
        if a != b {
            // Most opens find the conversation: answer those without a write transaction.
            let (lo, hi) = if a < b { (a, b) } else { (b, a) };
            let existing: Option<i64> = sqlx::query_scalar::<B::Db, i64>(
                "SELECT id FROM conversations WHERE direct_lo = $1 AND direct_hi = $2",
            )
            .bind(lo.0)
            .bind(hi.0)
            .fetch_optional(self.backend.read_pool())
            .await
            .map_err(B::DB_ERR)?;
            if let Some(id) = existing {
                return Ok((ConvId(id), None));
            }
        }
        write::open_direct(&self.backend, a, b, creation).await
    }

    async fn create_room(&self, room: NewRoom<'_>) -> StoreResult<(ConvId, Appended)> {
        write::create_room(&self.backend, room).await
    }

    async fn append(&self, batch: Vec<NewEvent>) -> Vec<StoreResult<Appended>> {
        if batch.is_empty() {
            return Vec::new();
        }
        self.backend.append(&self.members, batch, &mut |_| {}).await
    }

    async fn append_topped_up(
        &self,
        batch: Vec<NewEvent>,
        top_up: TopUp<'_>,
    ) -> Vec<StoreResult<Appended>> {
        self.backend.append(&self.members, batch, top_up).await
    }

    /// The conversation's row.
    async fn conversation(&self, conv: ConvId) -> StoreResult<Option<ConversationRecord>> {
        sqlx::query_as::<B::Db, ConversationRow>(B::DIALECT.conversation)
            .bind(conv.0)
            .fetch_optional(self.backend.read_pool())
            .await
            .map_err(B::DB_ERR)?
            .map(ConversationRow::into_record)
            .transpose()
    }

    /// The `seq` that made `user` a member of `conv`, if they are one.
    async fn joined_seq(&self, conv: ConvId, user: UserId) -> StoreResult<Option<Seq>> {
        let seq: Option<i64> = sqlx::query_scalar::<B::Db, i64>(
            "SELECT joined_seq FROM members WHERE conv_id = $1 AND user_id = $2",
        )
        .bind(conv.0)
        .bind(user.0)
        .fetch_optional(self.backend.read_pool())
        .await
        .map_err(B::DB_ERR)?;
        seq.map(seq_from_db).transpose()
    }

    /// The members, by name.
    async fn members(&self, conv: ConvId) -> StoreResult<Vec<MemberRecord>> {
        sqlx::query_as::<B::Db, MemberRow>(
            "SELECT m.user_id, u.username, m.joined_seq, m.read_seq \
             FROM members m JOIN users u ON u.id = m.user_id \
             WHERE m.conv_id = $1 ORDER BY u.username",
        )
        .bind(conv.0)
        .fetch_all(self.backend.read_pool())
        .await
        .map_err(B::DB_ERR)?
        .into_iter()
        .map(MemberRow::into_record)
        .collect()
    }

    /// The members' ids, ascending: from the member cache when it holds the conversation's
    /// current epoch.
    async fn recipients(&self, conv: ConvId) -> StoreResult<Arc<[UserId]>> {
        let epoch: Option<i64> = sqlx::query_scalar::<B::Db, i64>(
            "SELECT member_epoch FROM conversations WHERE id = $1",
        )
        .bind(conv.0)
        .fetch_optional(self.backend.read_pool())
        .await
        .map_err(B::DB_ERR)?;
        let epoch = epoch.ok_or(StoreError::NotFound)?;
        if let Some(members) = self.members.get(conv, epoch) {
            return Ok(members);
        }
        // Epoch and list in one statement (one snapshot), so the list cached is the one of
        // that epoch.
        let rows: Vec<(i64, Option<i64>)> = sqlx::query_as::<B::Db, (i64, Option<i64>)>(
            "SELECT c.member_epoch, m.user_id FROM conversations c \
             LEFT JOIN members m ON m.conv_id = c.id WHERE c.id = $1 ORDER BY m.user_id",
        )
        .bind(conv.0)
        .fetch_all(self.backend.read_pool())
        .await
        .map_err(B::DB_ERR)?;
        let epoch = rows.first().map(|(e, _)| *e).ok_or(StoreError::NotFound)?;
        let members: Arc<[UserId]> = rows.iter().filter_map(|(_, u)| u.map(UserId)).collect();
        self.members.put(conv, epoch, members.clone());
        Ok(members)
    }

    /// Everyone who shares a conversation with `user`, ascending.
    async fn contacts(&self, user: UserId) -> StoreResult<Vec<UserId>> {
        let ids: Vec<i64> = sqlx::query_scalar::<B::Db, i64>(
            "SELECT DISTINCT o.user_id FROM members m JOIN members o ON o.conv_id = m.conv_id \
             WHERE m.user_id = $1 AND o.user_id <> $1 ORDER BY o.user_id",
        )
        .bind(user.0)
        .fetch_all(self.backend.read_pool())
        .await
        .map_err(B::DB_ERR)?;
        Ok(ids.into_iter().map(UserId).collect())
    }

    /// `user`'s conversations with their last messages: two statements whatever their number,
    /// in one read transaction so that the summaries and their last messages are of the same
    /// moment.
    async fn conversations_of(&self, user: UserId) -> StoreResult<Vec<ConversationSummary>> {
        let mut tx = read_transaction(&self.backend).await?;
        let rows = sqlx::query_as::<B::Db, SummaryRow>(B::DIALECT.summaries)
            .bind(user.0)
            .fetch_all(&mut *tx)
            .await
            .map_err(B::DB_ERR)?;
        let last = sqlx::query_as::<B::Db, EventRow>(B::DIALECT.last_messages)
            .bind(user.0)
            .fetch_all(&mut *tx)
            .await
            .map_err(B::DB_ERR)?;
        tx.commit().await.map_err(B::DB_ERR)?;

        let mut last_by_conv = HashMap::with_capacity(last.len());
        for row in last {
            let event = row.into_event()?;
            last_by_conv.insert(event.conv, event);
        }
        rows.into_iter()
            .map(|row| {
                let last_message = last_by_conv.remove(&row.conv());
                row.into_summary(last_message)
            })
            .collect()
    }

    /// Public rooms whose name contains `query`, by name, at most `limit`.
    async fn public_rooms(&self, query: &str, limit: u32) -> StoreResult<Vec<RoomListing>> {
        let rows = sqlx::query_as::<B::Db, RoomRow>(B::DIALECT.public_rooms)
            .bind(query)
            .bind(i64::from(limit))
            .fetch_all(self.backend.read_pool())
            .await
            .map_err(B::DB_ERR)?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// A page of events, ascending, and whether more exist beyond it in the direction asked.
    async fn events(
        &self,
        conv: ConvId,
        page: Page,
        limit: u32,
    ) -> StoreResult<(Vec<Event>, bool)> {
        // One row more than asked says whether there are more.
        let fetch = i64::from(limit) + 1;
        let (sql, from, newest_first) = match page {
            Page::Latest => (
                concat!(
                    event_select!(),
                    " WHERE e.conv_id = $1 ORDER BY e.seq DESC LIMIT $2"
                ),
                None,
                true,
            ),
            Page::Before(seq) => (
                concat!(
                    event_select!(),
                    " WHERE e.conv_id = $1 AND e.seq < $3 ORDER BY e.seq DESC LIMIT $2"
                ),
                Some(seq),
                true,
            ),
            Page::After(seq) => (
                concat!(
                    event_select!(),
                    " WHERE e.conv_id = $1 AND e.seq > $3 ORDER BY e.seq ASC LIMIT $2"
                ),
                Some(seq),
                false,
            ),
        };
        let mut query = sqlx::query_as::<B::Db, EventRow>(sql)
            .bind(conv.0)
            .bind(fetch);
        if let Some(seq) = from {
            query = query.bind(seq_to_db(seq));
        }
        let rows = query
            .fetch_all(self.backend.read_pool())
            .await
            .map_err(B::DB_ERR)?;
        let has_more = rows.len() > limit as usize;
        let mut events = rows
            .into_iter()
            .take(limit as usize)
            .map(EventRow::into_event)
            .collect::<StoreResult<Vec<_>>>()?;
        if newest_first {
            events.reverse();
        }
        if let Some((lo, hi)) = message_id_range(&events) {
            let reactions = sqlx::query_as::<B::Db, ReactionRow>(REACTIONS_SELECT)
                .bind(lo)
                .bind(hi)
                .bind(conv.0)
                .fetch_all(self.backend.read_pool())
                .await
                .map_err(B::DB_ERR)?;
            fold_reactions(&mut events, reactions);
        }
        Ok((events, has_more))
    }

    /// Events `origin` persisted at or after `since`, ascending by time, with their recipients
    /// as [`replay_recipients`] finds them: the events and the members of their conversations
    /// in one read transaction, two statements.
    async fn events_by_origin(
        &self,
        origin: &NodeId,
        since: Millis,
        limit: u32,
    ) -> StoreResult<Vec<Appended>> {
        let mut tx = read_transaction(&self.backend).await?;
        let rows = sqlx::query_as::<B::Db, EventRow>(concat!(
            event_select!(),
            " WHERE e.origin = $1 AND e.at >= $2 ORDER BY e.at, e.conv_id, e.seq LIMIT $3"
        ))
        .bind(origin.as_str())
        .bind(since)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(B::DB_ERR)?;
        // The members of every conversation of those events: the same selection of events.
        let members = sqlx::query_as::<B::Db, (i64, i64, i64)>(
            "SELECT conv_id, user_id, joined_seq FROM members WHERE conv_id IN ( \
               SELECT conv_id FROM (SELECT e.conv_id FROM events e \
                 WHERE e.origin = $1 AND e.at >= $2 ORDER BY e.at, e.conv_id, e.seq LIMIT $3) \
               AS chosen)",
        )
        .bind(origin.as_str())
        .bind(since)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(B::DB_ERR)?;
        tx.commit().await.map_err(B::DB_ERR)?;

        let mut members_of = HashMap::<ConvId, Vec<(UserId, Seq)>>::new();
        for (conv, user, joined) in members {
            members_of
                .entry(ConvId(conv))
                .or_default()
                .push((UserId(user), seq_from_db(joined)?));
        }
        rows.into_iter()
            .map(|row| {
                let event = row.into_event()?;
                let members = members_of.get(&event.conv).map_or(&[][..], Vec::as_slice);
                Ok(Appended {
                    recipients: replay_recipients(&event, members),
                    event,
                    duplicate: false,
                })
            })
            .collect()
    }

    async fn mark_read(&self, conv: ConvId, user: UserId, seq: Seq) -> StoreResult<Option<Seq>> {
        self.backend.mark_read(conv, user, seq).await
    }

    async fn put_attachment(&self, blob: AttachmentBlob) -> StoreResult<()> {
        if blob.meta.size != blob.data.len() as u64 {
            return Err(StoreError::Invalid(format!(
                "attachment says {} bytes but has {}",
                blob.meta.size,
                blob.data.len()
            )));
        }
        let id = blob.meta.id.clone();
        self.backend
            .put_attachment(blob)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => {
                    StoreError::Conflict(format!("attachment {id} exists already"))
                }
                e => e,
            })
    }

    async fn attachment_bytes(&self, uploader: UserId) -> StoreResult<u64> {
        let total: i64 = sqlx::query_scalar::<B::Db, i64>(
            "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM attachments WHERE uploader = $1",
        )
        .bind(uploader.0)
        .fetch_one(self.backend.read_pool())
        .await
        .map_err(B::DB_ERR)?;
        Ok(u64::try_from(total).unwrap_or(0))
    }

    /// An uploaded file, bytes included.
    async fn attachment(&self, id: &AttachmentId) -> StoreResult<Option<AttachmentBlob>> {
        sqlx::query_as::<B::Db, AttachmentRow>(
            "SELECT id, conv_id, uploader, name, mime, size, created_at, data FROM attachments \
             WHERE id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(self.backend.read_pool())
        .await
        .map_err(B::DB_ERR)?
        .map(AttachmentRow::into_blob)
        .transpose()
    }
}

/// A read transaction whose statements see one moment.
async fn read_transaction<B: SqlBackend>(
    backend: &B,
) -> StoreResult<sqlx::Transaction<'static, B::Db>> {
    match B::DIALECT.snapshot {
        Some(begin) => backend.read_pool().begin_with(begin).await,
        None => backend.read_pool().begin().await,
    }
    .map_err(B::DB_ERR)
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
    use protocol::{ConvId, MessageId};

    use super::*;

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
            origin: None,
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
