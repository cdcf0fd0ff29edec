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
//! Code map: this file connects, gives PostgreSQL's dialect and does its writes (the reads are
//! the store's `sql` module's, shared with SQLite); `writer` is the write path's statements,
//! `batch` a batch's statements over many rows at once (its keys looked up, its inserts
//! deferred, its heads written back), `errors` what PostgreSQL's errors mean, `tests` the suite
//! and PostgreSQL's own tests.

use std::str::FromStr;
use std::time::Duration;

use protocol::{ConvId, DeviceId, Seq, UserId};
use sqlx::Connection;
use sqlx::migrate::{Migrate, Migrator};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Pool, Postgres};

use super::member_cache::MemberCache;
use super::rows::{DeviceRow, UserRow, event_select};
use super::sql::{Dialect, SqlBackend, SqlStore};
use super::write::{self, WriteTransactions};
use super::{
    Appended, AttachmentBlob, DeviceLogin, DeviceRecord, NewEvent, NewUser, StoreError,
    StoreResult, TopUp, UserRecord, encoding, migrations,
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

/// The PostgreSQL store: the shared contract over [`PostgresBackend`].
pub type PostgresStore = SqlStore<PostgresBackend>;

/// PostgreSQL's pool, for reads and writes. Cheap to clone: the pool and the member cache are
/// shared.
#[derive(Clone)]
pub struct PostgresBackend {
    pool: PgPool,
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
        Ok(SqlStore::new(PostgresBackend { pool }))
    }
}

impl PostgresBackend {
    /// One try at a batch, in one transaction.
    async fn append_attempt(
        &self,
        members: &MemberCache,
        batch: Vec<NewEvent>,
    ) -> Result<Vec<StoreResult<Appended>>, Failed> {
        let mut tx = self.pool.begin().await.map_err(Failed::from)?;
        let mut writer = Writer::new(&mut tx);
        let outcome = write::append_batch(&mut writer, members, batch).await;
        let retry = writer.retry;
        // On error the transaction rolls back when `tx` is dropped.
        let outcome = outcome.map_err(|error| Failed { error, retry })?;
        tx.commit().await.map_err(Failed::from)?;
        outcome.remember_members(members);
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

impl WriteTransactions for PostgresBackend {
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

/// The reads where PostgreSQL's statements are its own: a conversation's head is kept in its
/// row, a room name is matched with `strpos` in the database's collation, and lists are read
/// from one snapshot.
const DIALECT: Dialect = Dialect {
    conversation: "SELECT id, kind, name, is_public, last_seq, created_by, created_at \
         FROM conversations WHERE id = $1",
    summaries: "SELECT c.id, c.kind, c.name, c.is_public, c.last_seq, c.created_at, m.read_seq, \
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
    last_messages: concat!(
        event_select!(),
        " JOIN conversations c ON c.id = e.conv_id AND e.seq = c.last_msg_seq \
         JOIN members m ON m.conv_id = c.id WHERE m.user_id = $1"
    ),
    // strpos, not LIKE: the query is matched as typed, `%` and `_` included. The name is
    // lowered in the database's own collation (names sort in "C"), so letters beyond ASCII
    // match regardless of case where the locale knows them.
    public_rooms: "SELECT c.id, c.name, \
           (SELECT COUNT(*) FROM members x WHERE x.conv_id = c.id) AS member_count \
         FROM conversations c \
         WHERE c.kind = 'room' AND c.is_public = TRUE \
           AND strpos(lower(c.name COLLATE \"default\"), lower($1)) > 0 \
         ORDER BY c.name, c.id LIMIT $2",
    // Several statements from one snapshot, never waiting for a writer and never failing to
    // serialize.
    snapshot: Some("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"),
};

impl SqlBackend for PostgresBackend {
    type Db = Postgres;
    const KIND: &'static str = "postgres";
    const DIALECT: Dialect = DIALECT;
    const DB_ERR: fn(sqlx::Error) -> StoreError = db_err;

    fn read_pool(&self) -> &Pool<Postgres> {
        &self.pool
    }

    async fn create_user(&self, user: NewUser<'_>) -> StoreResult<UserRecord> {
        // One statement: its own transaction.
        let row = sqlx::query_as::<_, UserRow>(
            "INSERT INTO users (username, password_hash, created_at) VALUES ($1, $2, $3) \
             RETURNING id, username, password_hash, created_at",
        )
        .bind(user.username)
        .bind(user.password_hash)
        .bind(user.created_at)
        .fetch_one(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(row.into())
    }

    async fn login_device(&self, login: DeviceLogin<'_>) -> StoreResult<DeviceRecord> {
        // A revoked device logging in again is active again, but keeps its bumped generation:
        // tokens issued before the revocation stay refused.
        sqlx::query_as::<_, DeviceRow>(
            "INSERT INTO devices (user_id, device_id, name, created_at, last_login, revoked, generation) \
             VALUES ($1, $2, $3, $4, $4, FALSE, 0) \
             ON CONFLICT (user_id, device_id) DO UPDATE \
             SET name = excluded.name, last_login = excluded.last_login, revoked = FALSE \
             RETURNING user_id, device_id, name, created_at, last_login, revoked, generation",
        )
        .bind(login.user.0)
        .bind(login.device.as_str())
        .bind(login.name)
        .bind(login.at)
        .fetch_one(&self.pool)
        .await
        .map_err(db_err)?
        .into_record()
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

    async fn append(
        &self,
        members: &MemberCache,
        mut batch: Vec<NewEvent>,
        top_up: TopUp<'_>,
    ) -> Vec<StoreResult<Appended>> {
        top_up(&mut batch);
        if batch.is_empty() {
            return Vec::new();
        }
        let n = batch.len();
        let mut attempt = 1;
        loop {
            // A copy per try: the write path consumes the events. Next to the round trips of a
            // transaction, copying a batch costs nothing worth saving.
            match self.append_attempt(members, batch.clone()).await {
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
        .map_err(db_err)?;
        Ok(())
    }
}
