//! The shared store: PostgreSQL, for clusters whose nodes run on several machines. The rules of
//! appending live in the store's `write` module, as for SQLite; this module is the SQL and the
//! way many writers in many processes stay out of each other's way.
//!
//! Many writers at once:
//! - Transactions are `READ COMMITTED`. A batch first locks the row of every conversation it
//!   touches (`SELECT … FOR NO KEY UPDATE`, in id order so that two batches cannot deadlock on
//!   them), reads `last_seq` from it, numbers its events and writes the row back before it
//!   commits. Writers of one conversation thus take turns, each one finding the `seq` the
//!   previous one committed, so `seq` has neither gaps nor repeats whatever the number of
//!   processes; writers of different conversations do not wait for each other. `NO KEY` lets
//!   foreign-key checks of other writers (an upload into the conversation) pass meanwhile.
//! - A failed statement aborts a PostgreSQL transaction, so a batch must not run one that a
//!   check could have refused: the shared rules check before they write, and unique keys are met
//!   with `ON CONFLICT DO NOTHING` (a resent `client_id` is then answered with the first event).
//!   One bad event is refused alone; its batch commits.
//! - Each statement is a round trip to the server, and the conversations' locks are held until
//!   the commit while the writers of other nodes queue behind them. So a batch first looks up
//!   at once which of its ids and client ids are taken (no lock needed), then locks and reads
//!   the heads of all its conversations with one statement, reads the member lists it has not
//!   cached with one, and inserts all its events and writes the heads back with one more
//!   (`UNNEST` of column arrays in a `WITH`): three round trips under the locks, the commit
//!   included, whatever its size and its number of conversations. Should another writer take
//!   one of its keys in between, the insert comes up short and the batch is tried again.
//! - A deadlock (possible only when a resend names an event of another conversation, locked out
//!   of order) or a serialization failure aborts the batch's transaction; it is retried a few
//!   times before the batch is [`StoreError::Unavailable`].
//! - Every connection has a `lock_timeout` (a writer stuck behind a lock gives up, and the caller
//!   is told to retry), an `idle_in_transaction_session_timeout` (a frozen process that holds a
//!   conversation's lock loses it, instead of stalling that conversation for every node) and a
//!   `statement_timeout`.
//!
//! An append is acknowledged once its commit is durable as the server is configured
//! (`synchronous_commit`, on by default: the WAL is flushed to disk), which bounds a single
//! writer's batches of one event by the disk's flush time; group commit is what amortizes it.
//! The URL may relax it (`?options=-c%20synchronous_commit%3Doff`), at the price of losing the
//! last fraction of a second of acknowledged events if the database server crashes.
//!
//! One pool per process serves reads and writes; sqlx prepares each statement once per
//! connection and caches it. Connections are checked before they are handed out, so after the
//! server restarts, only calls that were in flight fail (as [`StoreError::Unavailable`]) and the
//! next ones reconnect.
//!
//! Errors: connection losses, shutdowns, timeouts, deadlocks and exhausted resources become
//! [`StoreError::Unavailable`] (retry later), constraint violations the store's own words (see
//! the store's `errors` module), values the database cannot hold [`StoreError::Invalid`].
//!
//! Code map: this file connects and keeps the contract; `writer` is the write path's
//! statements, `batch` a batch's statements over many rows at once (its keys looked up, its
//! inserts deferred, its heads written back), `errors` what PostgreSQL's errors mean, `tests`
//! the suite and PostgreSQL's own tests.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use protocol::http::RoomListing;
use protocol::model::{ConversationSummary, Event};
use protocol::{AttachmentId, ConvId, DeviceId, Millis, NodeId, Seq, UserId};
use sqlx::Connection;
use sqlx::migrate::{Migrate, Migrator};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};

use super::errors::is_unique_violation;
use super::member_cache::MemberCache;
use super::rows::{
    AttachmentRow, ConversationRow, DeviceRow, EventRow, MemberRow, RoomRow, SummaryRow, UserRow,
    event_select,
};
use super::write::{self, WriteTransactions};
use super::{
    Appended, AttachmentBlob, ConversationRecord, Creation, DeviceRecord, MemberRecord, NewEvent,
    NewRoom, Page, Store, StoreError, StoreResult, UserRecord, encoding, migrations, reads,
};

mod batch;
mod errors;
#[cfg(test)]
mod tests;
mod writer;

use errors::{Failed, db_err};
use writer::Writer;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// How many times a batch is tried when the database aborted it to break a deadlock.
const BATCH_ATTEMPTS: u32 = 4;

/// The `application_name` of our connections unless the URL names one: what a DBA sees in
/// `pg_stat_activity`.
const APPLICATION_NAME: &str = "chat-server";

/// Pool and session settings. [`Default`] suits a node or a controller; the server's connection
/// budget is shared by every process of the cluster (PostgreSQL allows 100 by default).
#[derive(Clone, Debug)]
pub struct PostgresConfig {
    /// Connections of this process at most. A node's writes come from one committer, in
    /// batches, so a few connections serve its writes and the rest its reads.
    pub max_connections: u32,
    /// How long a call waits for a connection (also while the server is down) before it is
    /// [`StoreError::Unavailable`].
    pub acquire_timeout: Duration,
    /// How long a statement waits for a lock another transaction holds.
    pub lock_timeout: Duration,
    /// How long the server keeps a transaction that sends nothing before it ends the session,
    /// releasing its locks: a frozen or partitioned process cannot block a conversation longer.
    /// Shorter than `lock_timeout`, so that the writers queued behind such a process get the
    /// lock rather than give up; as long as a node's registry lease, so that a frozen node
    /// loses both together. Our transactions never wait between statements for anything but
    /// their own process.
    pub idle_in_transaction_timeout: Duration,
    /// How long one statement may run.
    pub statement_timeout: Duration,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(10),
            lock_timeout: Duration::from_secs(10),
            idle_in_transaction_timeout: Duration::from_millis(crate::registry::DEFAULT_LEASE_MS),
            statement_timeout: Duration::from_secs(30),
        }
    }
}

/// A connection unused this long is closed: a burst of reads does not keep its connections
/// from the other processes sharing the server's budget.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The PostgreSQL store. Cheap to clone: the pool and the member cache are shared.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    members: Arc<MemberCache>,
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/database`, with
    /// libpq's query parameters) and brings its schema up to date. Any number of processes may
    /// do this at once.
    pub async fn connect(url: &str) -> StoreResult<PostgresStore> {
        // sqlx's parse errors do not repeat the URL, which may hold a password.
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Invalid(format!("bad PostgreSQL URL: {e}")))?;
        PostgresStore::connect_with(options, PostgresConfig::default()).await
    }

    /// [`PostgresStore::connect`] with options and settings of the caller's.
    pub async fn connect_with(
        options: PgConnectOptions,
        config: PostgresConfig,
    ) -> StoreResult<PostgresStore> {
        let options = if options.get_application_name().is_none() {
            options.application_name(APPLICATION_NAME)
        } else {
            options
        };
        // The schema first, on a connection without the session limits below: a migration
        // may wait for locks and run long. sqlx's advisory lock lets one process at a time in.
        let mut setup = PgConnection::connect_with(&options).await.map_err(db_err)?;
        let migrated = migrate(&mut setup).await;
        // Closing is a courtesy: the server drops the session (and its lock) either way.
        let _ = setup.close().await;
        migrated?;

        let session = options.options([
            ("lock_timeout", millis(config.lock_timeout)),
            (
                "idle_in_transaction_session_timeout",
                millis(config.idle_in_transaction_timeout),
            ),
            ("statement_timeout", millis(config.statement_timeout)),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections.max(1))
            .min_connections(0)
            .acquire_timeout(config.acquire_timeout)
            .idle_timeout(IDLE_TIMEOUT)
            // A ping before a connection is handed out (sqlx's default, stated because it
            // matters): a connection the server dropped while it was idle (a restart) is
            // replaced instead of failing the call that draws it.
            .test_before_acquire(true)
            .connect_with(session)
            .await
            .map_err(db_err)?;
        Ok(PostgresStore {
            pool,
            members: Arc::new(MemberCache::default()),
        })
    }

    /// One try at a batch, in one transaction.
    async fn append_attempt(
        &self,
        batch: Vec<NewEvent>,
    ) -> Result<Vec<StoreResult<Appended>>, Failed> {
        let mut tx = self.pool.begin().await.map_err(Failed::from)?;
        let mut writer = Writer::new(&mut tx);
        let outcome = write::append_batch(&mut writer, &self.members, batch).await;
        let retry = writer.retry;
        // On error the transaction rolls back when `tx` is dropped.
        let outcome = outcome.map_err(|error| Failed { error, retry })?;
        tx.commit().await.map_err(Failed::from)?;
        outcome.remember_members(&self.members);
        Ok(outcome.results)
    }
}

/// `d` as a PostgreSQL duration setting.
fn millis(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// Applies the migrations, one process at a time.
async fn migrate(conn: &mut PgConnection) -> StoreResult<()> {
    let lock_err = |e| migrations::migrate_error(e, "PostgreSQL", db_err);
    conn.lock().await.map_err(lock_err)?;
    let applied = migrations::apply_migrations(conn, &MIGRATOR, "PostgreSQL", db_err).await;
    let unlocked = conn.unlock().await.map_err(lock_err);
    applied?;
    unlocked
}

impl WriteTransactions for PostgresStore {
    type Tx = sqlx::Transaction<'static, sqlx::Postgres>;
    type Ops<'t> = Writer<'t>;

    async fn begin_write(&self) -> StoreResult<Self::Tx> {
        self.pool.begin().await.map_err(db_err)
    }

    fn ops(tx: &mut Self::Tx) -> Writer<'_> {
        Writer::new(tx)
    }

    async fn commit(tx: Self::Tx) -> StoreResult<()> {
        tx.commit().await.map_err(db_err)
    }
}

/// A transaction that reads several statements from one snapshot, never waits for a writer
/// and never fails to serialize.
const SNAPSHOT: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";

#[async_trait]
impl Store for PostgresStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        now: Millis,
    ) -> StoreResult<UserRecord> {
        // One statement: its own transaction.
        let row = sqlx::query_as::<_, UserRow>(
            "INSERT INTO users (username, password_hash, created_at) VALUES ($1, $2, $3) \
             RETURNING id, username, password_hash, created_at",
        )
        .bind(username)
        .bind(password_hash)
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!("username {username:?} is taken"))
            } else {
                db_err(e)
            }
        })?;
        Ok(row.into())
    }

    async fn user_by_name(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        let row = sqlx::query_as::<_, UserRow>(
            "SELECT id, username, password_hash, created_at FROM users WHERE username = $1",
        )
        .bind(username)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(row.map(Into::into))
    }

    async fn user_by_id(&self, id: UserId) -> StoreResult<Option<UserRecord>> {
        let row = sqlx::query_as::<_, UserRow>(
            "SELECT id, username, password_hash, created_at FROM users WHERE id = $1",
        )
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(row.map(Into::into))
    }

    async fn login_device(
        &self,
        user: UserId,
        device: &DeviceId,
        name: &str,
        now: Millis,
    ) -> StoreResult<DeviceRecord> {
        // A revoked device logging in again is active again, but keeps its bumped generation:
        // tokens issued before the revocation stay refused.
        sqlx::query_as::<_, DeviceRow>(
            "INSERT INTO devices (user_id, device_id, name, created_at, last_login, revoked, generation) \
             VALUES ($1, $2, $3, $4, $4, FALSE, 0) \
             ON CONFLICT (user_id, device_id) DO UPDATE \
             SET name = excluded.name, last_login = excluded.last_login, revoked = FALSE \
             RETURNING user_id, device_id, name, created_at, last_login, revoked, generation",
        )
        .bind(user.0)
        .bind(device.as_str())
        .bind(name)
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(db_err)?
        .into_record()
    }

    async fn device(&self, user: UserId, device: &DeviceId) -> StoreResult<Option<DeviceRecord>> {
        sqlx::query_as::<_, DeviceRow>(
            "SELECT user_id, device_id, name, created_at, last_login, revoked, generation \
             FROM devices WHERE user_id = $1 AND device_id = $2",
        )
        .bind(user.0)
        .bind(device.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?
        .map(DeviceRow::into_record)
        .transpose()
    }

    async fn devices(&self, user: UserId) -> StoreResult<Vec<DeviceRecord>> {
        sqlx::query_as::<_, DeviceRow>(
            "SELECT user_id, device_id, name, created_at, last_login, revoked, generation \
             FROM devices WHERE user_id = $1 ORDER BY last_login DESC, device_id",
        )
        .bind(user.0)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?
        .into_iter()
        .map(DeviceRow::into_record)
        .collect()
    }

    async fn revoke_device(&self, user: UserId, device: &DeviceId) -> StoreResult<DeviceRecord> {
        sqlx::query_as::<_, DeviceRow>(
            "UPDATE devices SET revoked = TRUE, generation = generation + 1 \
             WHERE user_id = $1 AND device_id = $2 \
             RETURNING user_id, device_id, name, created_at, last_login, revoked, generation",
        )
        .bind(user.0)
        .bind(device.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?
        .ok_or(StoreError::NotFound)?
        .into_record()
    }

    async fn open_direct(
        &self,
        a: UserId,
        b: UserId,
        creation: Creation<'_>,
    ) -> StoreResult<(ConvId, Option<Appended>)> {
        if a != b {
            // Most opens find the conversation: answer those without a transaction.
            let (lo, hi) = if a < b { (a, b) } else { (b, a) };
            let existing: Option<i64> = sqlx::query_scalar(
                "SELECT id FROM conversations WHERE direct_lo = $1 AND direct_hi = $2",
            )
            .bind(lo.0)
            .bind(hi.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
            if let Some(id) = existing {
                return Ok((ConvId(id), None));
            }
        }
        write::open_direct(self, a, b, creation).await
    }

    async fn create_room(&self, room: NewRoom<'_>) -> StoreResult<(ConvId, Appended)> {
        write::create_room(self, room).await
    }

    async fn append(&self, batch: Vec<NewEvent>) -> Vec<StoreResult<Appended>> {
        if batch.is_empty() {
            return Vec::new();
        }
        let n = batch.len();
        let mut attempt = 1;
        loop {
            // A copy per try: the write path consumes the events. Next to the round trips of a
            // transaction, copying a batch costs nothing worth saving.
            match self.append_attempt(batch.clone()).await {
                Ok(results) => return results,
                Err(Failed { error, retry: true }) if attempt < BATCH_ATTEMPTS => {
                    tracing::debug!(attempt, %error, "batch aborted by the database, retrying");
                }
                Err(Failed { error, .. }) => {
                    return (0..n).map(|_| Err(error.clone())).collect();
                }
            }
            // Apart, so that the two transactions that met do not meet again at once.
            let pause = rand::random_range(5..25) * u64::from(attempt);
            tokio::time::sleep(Duration::from_millis(pause)).await;
            attempt += 1;
        }
    }

    async fn conversation(&self, conv: ConvId) -> StoreResult<Option<ConversationRecord>> {
        sqlx::query_as::<_, ConversationRow>(
            "SELECT id, kind, name, is_public, last_seq, created_by, created_at FROM conversations WHERE id = $1",
        )
        .bind(conv.0)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?
        .map(ConversationRow::into_record)
        .transpose()
    }

    async fn joined_seq(&self, conv: ConvId, user: UserId) -> StoreResult<Option<Seq>> {
        let seq: Option<i64> = sqlx::query_scalar(
            "SELECT joined_seq FROM members WHERE conv_id = $1 AND user_id = $2",
        )
        .bind(conv.0)
        .bind(user.0)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        seq.map(encoding::seq_from_db).transpose()
    }

    async fn members(&self, conv: ConvId) -> StoreResult<Vec<MemberRecord>> {
        sqlx::query_as::<_, MemberRow>(
            "SELECT m.user_id, u.username, m.joined_seq, m.read_seq \
             FROM members m JOIN users u ON u.id = m.user_id \
             WHERE m.conv_id = $1 ORDER BY u.username",
        )
        .bind(conv.0)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?
        .into_iter()
        .map(MemberRow::into_record)
        .collect()
    }

    async fn recipients(&self, conv: ConvId) -> StoreResult<Arc<[UserId]>> {
        let epoch: Option<i64> =
            sqlx::query_scalar("SELECT member_epoch FROM conversations WHERE id = $1")
                .bind(conv.0)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err)?;
        let epoch = epoch.ok_or(StoreError::NotFound)?;
        if let Some(members) = self.members.get(conv, epoch) {
            return Ok(members);
        }
        // Epoch and list in one statement (one snapshot), so the list cached is the one of
        // that epoch.
        let rows: Vec<(i64, Option<i64>)> = sqlx::query_as(
            "SELECT c.member_epoch, m.user_id FROM conversations c \
             LEFT JOIN members m ON m.conv_id = c.id WHERE c.id = $1 ORDER BY m.user_id",
        )
        .bind(conv.0)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        let epoch = rows.first().map(|(e, _)| *e).ok_or(StoreError::NotFound)?;
        let members: Arc<[UserId]> = rows.iter().filter_map(|(_, u)| u.map(UserId)).collect();
        self.members.put(conv, epoch, members.clone());
        Ok(members)
    }

    async fn contacts(&self, user: UserId) -> StoreResult<Vec<UserId>> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT DISTINCT o.user_id FROM members m JOIN members o ON o.conv_id = m.conv_id \
             WHERE m.user_id = $1 AND o.user_id <> $1 ORDER BY o.user_id",
        )
        .bind(user.0)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(ids.into_iter().map(UserId).collect())
    }

    async fn conversations_of(&self, user: UserId) -> StoreResult<Vec<ConversationSummary>> {
        // Two statements whatever the number of conversations, from one snapshot so that the
        // summaries and their last messages are of the same moment.
        let mut tx = self.pool.begin_with(SNAPSHOT).await.map_err(db_err)?;
        let rows = sqlx::query_as::<_, SummaryRow>(
            "SELECT c.id, c.kind, c.name, c.is_public, c.last_seq, c.created_at, m.read_seq, \
               (SELECT COUNT(*) FROM members x WHERE x.conv_id = c.id) AS member_count, \
               (SELECT COUNT(*) FROM events e WHERE e.conv_id = c.id AND e.seq > m.read_seq \
                  AND e.body_type = 'message' AND e.deleted = FALSE AND e.sender <> m.user_id) AS unread, \
               p.user_id AS peer_id, u.username AS peer_name, p.read_seq AS peer_read_seq \
             FROM members m \
             JOIN conversations c ON c.id = m.conv_id \
             LEFT JOIN members p ON c.kind = 'direct' AND p.conv_id = c.id AND p.user_id <> m.user_id \
             LEFT JOIN users u ON u.id = p.user_id \
             WHERE m.user_id = $1 \
             ORDER BY c.last_activity DESC, c.id DESC",
        )
        .bind(user.0)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        let last = sqlx::query_as::<_, EventRow>(concat!(
            event_select!(),
            " JOIN conversations c ON c.id = e.conv_id AND e.seq = c.last_msg_seq \
             JOIN members m ON m.conv_id = c.id WHERE m.user_id = $1"
        ))
        .bind(user.0)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;

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

    async fn public_rooms(&self, query: &str, limit: u32) -> StoreResult<Vec<RoomListing>> {
        // strpos, not LIKE: the query is matched as typed, `%` and `_` included. The name is
        // lowered in the database's own collation (names sort in "C"), so letters beyond ASCII
        // match regardless of case where the locale knows them.
        let rows = sqlx::query_as::<_, RoomRow>(
            "SELECT c.id, c.name, (SELECT COUNT(*) FROM members x WHERE x.conv_id = c.id) AS member_count \
             FROM conversations c \
             WHERE c.kind = 'room' AND c.is_public = TRUE \
               AND strpos(lower(c.name COLLATE \"default\"), lower($1)) > 0 \
             ORDER BY c.name, c.id LIMIT $2",
        )
        .bind(query)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    async fn events(
        &self,
        conv: ConvId,
        page: Page,
        limit: u32,
    ) -> StoreResult<(Vec<Event>, bool)> {
        // One row more than asked says whether there are more.
        let fetch = i64::from(limit) + 1;
        let (query, newest_first) = match page {
            Page::Latest => (
                sqlx::query_as::<_, EventRow>(concat!(
                    event_select!(),
                    " WHERE e.conv_id = $1 ORDER BY e.seq DESC LIMIT $2"
                ))
                .bind(conv.0)
                .bind(fetch),
                true,
            ),
            Page::Before(seq) => (
                sqlx::query_as::<_, EventRow>(concat!(
                    event_select!(),
                    " WHERE e.conv_id = $1 AND e.seq < $3 ORDER BY e.seq DESC LIMIT $2"
                ))
                .bind(conv.0)
                .bind(fetch)
                .bind(encoding::seq_to_db(seq)),
                true,
            ),
            Page::After(seq) => (
                sqlx::query_as::<_, EventRow>(concat!(
                    event_select!(),
                    " WHERE e.conv_id = $1 AND e.seq > $3 ORDER BY e.seq ASC LIMIT $2"
                ))
                .bind(conv.0)
                .bind(fetch)
                .bind(encoding::seq_to_db(seq)),
                false,
            ),
        };
        let rows = query.fetch_all(&self.pool).await.map_err(db_err)?;
        let has_more = rows.len() > limit as usize;
        let mut events = rows
            .into_iter()
            .take(limit as usize)
            .map(EventRow::into_event)
            .collect::<StoreResult<Vec<_>>>()?;
        if newest_first {
            events.reverse();
        }
        Ok((events, has_more))
    }

    async fn events_by_origin(
        &self,
        origin: &NodeId,
        since: Millis,
        limit: u32,
    ) -> StoreResult<Vec<Appended>> {
        let mut tx = self.pool.begin_with(SNAPSHOT).await.map_err(db_err)?;
        let rows = sqlx::query_as::<_, EventRow>(concat!(
            event_select!(),
            " WHERE e.origin = $1 AND e.at >= $2 ORDER BY e.at, e.conv_id, e.seq LIMIT $3"
        ))
        .bind(origin.as_str())
        .bind(since)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        let events = rows
            .into_iter()
            .map(EventRow::into_event)
            .collect::<StoreResult<Vec<_>>>()?;

        // The members of every conversation involved, in one statement.
        let mut convs: Vec<i64> = events.iter().map(|e| e.conv.0).collect();
        convs.sort_unstable();
        convs.dedup();
        let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT conv_id, user_id, joined_seq FROM members WHERE conv_id = ANY($1)",
        )
        .bind(&convs)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        let mut members_of = HashMap::<ConvId, Vec<(UserId, Seq)>>::new();
        for (conv, user, joined) in rows {
            members_of
                .entry(ConvId(conv))
                .or_default()
                .push((UserId(user), encoding::seq_from_db(joined)?));
        }

        Ok(events
            .into_iter()
            .map(|event| {
                let members = members_of.get(&event.conv).map_or(&[][..], Vec::as_slice);
                Appended {
                    recipients: reads::replay_recipients(&event, members),
                    event,
                    duplicate: false,
                }
            })
            .collect())
    }

    async fn mark_read(&self, conv: ConvId, user: UserId, seq: Seq) -> StoreResult<Option<Seq>> {
        // One round trip, whether the marker moves or not: the UPDATE moves it only forward
        // (re-checked against the row as a concurrent marker left it), and `member` tells
        // "not a member" from "already there".
        let (moved, member): (Option<i64>, bool) = sqlx::query_as(
            "WITH target AS ( \
               SELECT LEAST($3, c.last_seq) AS wanted FROM members m \
               JOIN conversations c ON c.id = m.conv_id WHERE m.conv_id = $1 AND m.user_id = $2 \
             ), moved AS ( \
               UPDATE members m SET read_seq = t.wanted FROM target t \
               WHERE m.conv_id = $1 AND m.user_id = $2 AND t.wanted > m.read_seq \
               RETURNING m.read_seq \
             ) \
             SELECT (SELECT read_seq FROM moved), EXISTS (SELECT 1 FROM target)",
        )
        .bind(conv.0)
        .bind(user.0)
        .bind(encoding::seq_to_db(seq))
        .fetch_one(&self.pool)
        .await
        .map_err(db_err)?;
        if !member {
            return Err(StoreError::NotMember);
        }
        moved.map(encoding::seq_from_db).transpose()
    }

    async fn put_attachment(&self, blob: AttachmentBlob) -> StoreResult<()> {
        if blob.meta.size != blob.data.len() as u64 {
            return Err(StoreError::Invalid(format!(
                "attachment says {} bytes but has {}",
                blob.meta.size,
                blob.data.len()
            )));
        }
        sqlx::query(
            "INSERT INTO attachments (id, conv_id, uploader, name, mime, size, created_at, data) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(blob.meta.id.as_str())
        .bind(blob.meta.conv.0)
        .bind(blob.uploader.0)
        .bind(&blob.meta.name)
        .bind(&blob.meta.mime)
        .bind(i64::try_from(blob.meta.size).unwrap_or(i64::MAX))
        .bind(blob.created_at)
        .bind(&blob.data[..])
        .execute(&self.pool)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!("attachment {} exists already", blob.meta.id))
            } else {
                db_err(e)
            }
        })?;
        Ok(())
    }

    async fn attachment(&self, id: &AttachmentId) -> StoreResult<Option<AttachmentBlob>> {
        sqlx::query_as::<_, AttachmentRow>(
            "SELECT id, conv_id, uploader, name, mime, size, created_at, data FROM attachments WHERE id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?
        .map(AttachmentRow::into_blob)
        .transpose()
    }
}
