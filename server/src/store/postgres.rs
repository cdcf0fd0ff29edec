//! The shared store: PostgreSQL, for clusters whose nodes run on several machines. The rules of
//! appending live in [`super::common`], as for SQLite; this module is the SQL and the way many
//! writers in many processes stay out of each other's way.
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
//! [`common::constraint_error`]), values the database cannot hold [`StoreError::Invalid`].

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use protocol::http::RoomListing;
use protocol::model::{Attachment, ConversationSummary, Event};
use protocol::{
    AttachmentId, ClientMsgId, ConvId, DeviceId, MessageId, Millis, NodeId, Seq, UserId,
};
use sqlx::Connection;
use sqlx::migrate::{Migrate, Migrator};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};

use super::common::{
    self, AttachmentRow, BatchStart, ConvHead, ConversationRow, DeviceRow, EventColumns, EventRow,
    MemberCache, MemberRow, MessageRef, NewConversation, RoomRow, SummaryRow, TakenKeys, UserRow,
    WriteOps, event_select,
};
use super::{
    Appended, AttachmentBlob, ConversationRecord, DeviceRecord, MemberRecord, NewEvent, Page,
    Store, StoreError, StoreResult, UserRecord,
};

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
        let outcome = common::append_batch(&mut writer, &self.members, batch).await;
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
    let lock_err = |e| common::migrate_error(e, "PostgreSQL", db_err);
    conn.lock().await.map_err(lock_err)?;
    let applied = common::apply_migrations(conn, &MIGRATOR, "PostgreSQL", db_err).await;
    let unlocked = conn.unlock().await.map_err(lock_err);
    applied?;
    unlocked
}

/// A batch's transaction failed: with what, and whether trying it again may succeed.
struct Failed {
    error: StoreError,
    retry: bool,
}

impl From<sqlx::Error> for Failed {
    fn from(e: sqlx::Error) -> Self {
        Failed {
            retry: is_retryable(&e),
            error: db_err(e),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// The SQLSTATE of a database error.
fn sqlstate(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// Whether the server aborted the transaction only to let another one through (deadlock,
/// serialization failure): the same transaction again may well succeed.
fn is_retryable(e: &sqlx::Error) -> bool {
    matches!(sqlstate(e).as_deref(), Some("40001" | "40P01"))
}

/// What a SQLSTATE that is not a constraint violation means to the caller, `None` when nothing
/// but "internal". `message` describes the error for logs.
fn sqlstate_error(code: &str, message: &str) -> Option<StoreError> {
    let unavailable = || Some(StoreError::Unavailable(message.to_owned()));
    match code {
        // Connection exceptions.
        c if c.starts_with("08") => unavailable(),
        // Serialization failure, deadlock (once retries are spent).
        "40001" | "40P01" => unavailable(),
        // A lock not granted within lock_timeout; a statement cancelled by statement_timeout.
        "55P03" | "57014" => unavailable(),
        // Administrator or crash shutdown, server starting up, idle transaction ended.
        "57P01" | "57P02" | "57P03" | "25P03" => unavailable(),
        // A read-only transaction: connected to a standby, as during a failover.
        "25006" => unavailable(),
        // Insufficient resources (disk full, too many connections), system errors (I/O).
        c if c.starts_with("53") || c.starts_with("58") => unavailable(),
        // Data exceptions: a value the database cannot hold (a NUL in a name, a number out of
        // range). Our words, not the server's: they may reach clients.
        c if c.starts_with("22") => Some(StoreError::Invalid(
            "a value the database cannot store".into(),
        )),
        _ => None,
    }
}

/// The store's word for a failed statement.
fn db_err(e: sqlx::Error) -> StoreError {
    if let Some(mapped) = common::constraint_error(&e) {
        return mapped;
    }
    if let Some(mapped) = sqlstate(&e).and_then(|code| sqlstate_error(&code, &e.to_string())) {
        return mapped;
    }
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
        other => StoreError::Internal(other.to_string()),
    }
}

// ---------------------------------------------------------------------------------------------
// The write path's statements

/// A write transaction as the shared write path drives it.
struct Writer<'c> {
    conn: &'c mut PgConnection,
    /// Whether a statement failed in a way worth trying the whole transaction again for.
    retry: bool,
    /// For a batch of several events: their inserts, waiting to go in one statement.
    deferred: Option<Deferred>,
}

/// The inserts of a batch, deferred: each statement is a round trip to the server, and one
/// statement for the whole batch makes a batch of 256 cost a handful of round trips instead of
/// 260. `insert_event` answers from the keys found taken when the batch began (and those of
/// the waiting events); the wait ends before any statement that reads or changes events.
#[derive(Default)]
struct Deferred {
    /// Keys taken, in the database or by a waiting event.
    keys: TakenKeys,
    /// The waiting events.
    rows: EventRows,
}

/// Events column by column, as `UNNEST` takes them.
#[derive(Default)]
struct EventRows {
    id: Vec<i64>,
    conv_id: Vec<i64>,
    seq: Vec<i64>,
    at: Vec<i64>,
    sender: Vec<i64>,
    device: Vec<Option<String>>,
    client_id: Vec<Option<String>>,
    origin: Vec<String>,
    body_type: Vec<String>,
    msg_kind: Vec<Option<String>>,
    member_action: Vec<Option<String>>,
    member_user: Vec<Option<i64>>,
    text: Vec<String>,
    attachment_id: Vec<Option<String>>,
    reply_to: Vec<Option<i64>>,
    target: Vec<Option<i64>>,
}

/// The insert of a batch's events, its columns bound by [`EventRows::bind`] as `$1`…`$16`.
macro_rules! insert_events {
    () => {
        "INSERT INTO events (id, conv_id, seq, at, sender, device, client_id, origin, body_type, \
         msg_kind, member_action, member_user, text, attachment_id, reply_to, target) \
         SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], \
           $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], \
           $12::int8[], $13::text[], $14::text[], $15::int8[], $16::int8[])"
    };
}

/// Binds the columns of an [`EventRows`], in [`insert_events!`]'s order, to a query (plain or
/// scalar) whose first parameters they are.
macro_rules! bind_rows {
    ($q:expr, $rows:expr) => {{
        let r = $rows;
        $q.bind(r.id)
            .bind(r.conv_id)
            .bind(r.seq)
            .bind(r.at)
            .bind(r.sender)
            .bind(r.device)
            .bind(r.client_id)
            .bind(r.origin)
            .bind(r.body_type)
            .bind(r.msg_kind)
            .bind(r.member_action)
            .bind(r.member_user)
            .bind(r.text)
            .bind(r.attachment_id)
            .bind(r.reply_to)
            .bind(r.target)
    }};
}

impl EventRows {
    fn push(&mut self, event: &Event, origin: &NodeId) {
        let c = EventColumns::of(&event.body);
        self.id.push(event.id.0);
        self.conv_id.push(event.conv.0);
        self.seq.push(common::seq_to_db(event.seq));
        self.at.push(event.at);
        self.sender.push(event.sender.0);
        self.device
            .push(event.device.as_ref().map(|d| d.as_str().to_owned()));
        self.client_id
            .push(event.client_id.as_ref().map(|c| c.as_str().to_owned()));
        self.origin.push(origin.as_str().to_owned());
        self.body_type.push(c.body_type.to_owned());
        self.msg_kind.push(c.msg_kind.map(str::to_owned));
        self.member_action.push(c.member_action.map(str::to_owned));
        self.member_user.push(c.member_user);
        self.text.push(c.text.to_owned());
        self.attachment_id.push(c.attachment_id.map(str::to_owned));
        self.reply_to.push(c.reply_to);
        self.target.push(c.target);
    }
}

impl<'c> Writer<'c> {
    fn new(conn: &'c mut PgConnection) -> Self {
        Writer {
            conn,
            retry: false,
            deferred: None,
        }
    }

    fn err(&mut self, e: sqlx::Error) -> StoreError {
        self.retry |= is_retryable(&e);
        db_err(e)
    }

    /// Inserts the waiting events, if any, in one statement.
    async fn flush(&mut self) -> StoreResult<()> {
        let Some(deferred) = self.deferred.as_mut() else {
            return Ok(());
        };
        if deferred.rows.id.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut deferred.rows);
        let expected = rows.id.len() as u64;
        let done = bind_rows!(
            sqlx::query(concat!(insert_events!(), " ON CONFLICT DO NOTHING")),
            rows
        )
        .execute(&mut *self.conn)
        .await
        .map_err(|e| self.err(e))?;
        if done.rows_affected() != expected {
            return Err(self.came_up_short());
        }
        Ok(())
    }

    /// A writer of another conversation took one of the keys after the batch looked (the same
    /// client id resent through two nodes at once). The numbering of the events after it is
    /// wrong now; the batch again will see the key taken.
    fn came_up_short(&mut self) -> StoreError {
        self.retry = true;
        StoreError::Unavailable("another writer took a key of this batch meanwhile".into())
    }

    /// Inserts the waiting events and writes the heads back, in one statement.
    async fn insert_and_save_heads(&mut self, heads: &[(ConvId, ConvHead)]) -> StoreResult<()> {
        let Some(mut deferred) = self.deferred.take() else {
            return Ok(());
        };
        let rows = std::mem::take(&mut deferred.rows);
        let expected = rows.id.len() as i64;
        let mut ids = Vec::with_capacity(heads.len());
        let mut last_seq = Vec::with_capacity(heads.len());
        let mut last_msg_seq = Vec::with_capacity(heads.len());
        let mut last_activity = Vec::with_capacity(heads.len());
        let mut member_epoch = Vec::with_capacity(heads.len());
        for (conv, head) in heads {
            ids.push(conv.0);
            last_seq.push(common::seq_to_db(head.last_seq));
            last_msg_seq.push(common::seq_to_db(head.last_msg_seq));
            last_activity.push(head.last_activity);
            member_epoch.push(head.member_epoch);
        }
        let inserted: i64 = bind_rows!(
            sqlx::query_scalar(concat!(
                "WITH ins AS (",
                insert_events!(),
                " ON CONFLICT DO NOTHING RETURNING 1), \
                 heads AS (UPDATE conversations c SET last_seq = h.last_seq, \
                   last_msg_seq = h.last_msg_seq, last_activity = h.last_activity, \
                   member_epoch = h.member_epoch \
                   FROM UNNEST($17::int8[], $18::int8[], $19::int8[], $20::int8[], $21::int8[]) \
                     AS h (id, last_seq, last_msg_seq, last_activity, member_epoch) \
                   WHERE c.id = h.id) \
                 SELECT count(*) FROM ins"
            )),
            rows
        )
        .bind(ids)
        .bind(last_seq)
        .bind(last_msg_seq)
        .bind(last_activity)
        .bind(member_epoch)
        .fetch_one(&mut *self.conn)
        .await
        .map_err(|e| self.err(e))?;
        if inserted != expected {
            return Err(self.came_up_short());
        }
        Ok(())
    }

    /// Whether `id` may be among the waiting events.
    fn waits(&self, id: MessageId) -> bool {
        self.deferred.as_ref().is_some_and(|d| d.keys.has_id(id))
    }

    /// Looks up which of the batch's keys are taken, and from now on defers inserts.
    async fn defer_inserts(&mut self, batch: &[NewEvent]) -> StoreResult<()> {
        let ids: Vec<i64> = batch.iter().map(|e| e.id.0).collect();
        let (senders, client_ids): (Vec<i64>, Vec<&str>) = batch
            .iter()
            .filter_map(|e| e.client_id.as_ref().map(|c| (e.sender.0, c.as_str())))
            .unzip();
        let taken: Vec<(i64, i64, Option<String>)> = sqlx::query_as(
            "SELECT id, sender, client_id FROM events WHERE id = ANY($1) \
             UNION ALL \
             SELECT e.id, e.sender, e.client_id FROM events e \
             JOIN UNNEST($2::int8[], $3::text[]) AS k (sender, client_id) \
               ON e.sender = k.sender AND e.client_id = k.client_id \
             WHERE e.client_id IS NOT NULL",
        )
        .bind(&ids)
        .bind(&senders)
        .bind(&client_ids)
        .fetch_all(&mut *self.conn)
        .await
        .map_err(|e| self.err(e))?;
        self.deferred = Some(Deferred {
            keys: TakenKeys::found(taken),
            rows: EventRows::default(),
        });
        Ok(())
    }
}

impl WriteOps for Writer<'_> {
    async fn begin_batch(
        &mut self,
        convs: &[ConvId],
        members_of: &[ConvId],
        batch: &[NewEvent],
    ) -> StoreResult<BatchStart> {
        // Which of the batch's keys are taken, before any lock: the locks are held until the
        // commit and writers of other nodes queue behind them, so only what needs them runs
        // under them. A key taken after this look-up (the same client id resent through
        // another node at that moment) makes the insert come up short, and the batch runs
        // again.
        self.defer_inserts(batch).await?;
        // The locks that order each conversation's writers, held until the commit, taken in id
        // order (the row lock is taken above the sort), so that batches cannot deadlock. Under
        // READ COMMITTED a writer that waited for one reads the row as its holder committed it.
        let ids: Vec<i64> = convs.iter().map(|c| c.0).collect();
        let rows: Vec<(i64, String, bool, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT id, kind, is_public, last_seq, last_msg_seq, last_activity, member_epoch \
             FROM conversations WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
        )
        .bind(&ids)
        .fetch_all(&mut *self.conn)
        .await
        .map_err(|e| self.err(e))?;
        let mut start = BatchStart::default();
        for (id, kind, public, last_seq, last_msg_seq, last_activity, member_epoch) in rows {
            start.heads.push((
                ConvId(id),
                ConvHead {
                    kind: common::parse_conv_kind(&kind)?,
                    public,
                    last_seq: common::seq_from_db(last_seq)?,
                    last_msg_seq: common::seq_from_db(last_msg_seq)?,
                    last_activity,
                    member_epoch,
                },
            ));
        }
        if !members_of.is_empty() {
            // After the locks: membership changes under them.
            let ids: Vec<i64> = members_of.iter().map(|c| c.0).collect();
            let rows: Vec<(i64, i64)> =
                sqlx::query_as("SELECT conv_id, user_id FROM members WHERE conv_id = ANY($1)")
                    .bind(&ids)
                    .fetch_all(&mut *self.conn)
                    .await
                    .map_err(|e| self.err(e))?;
            start.members = rows
                .into_iter()
                .map(|(c, u)| (ConvId(c), UserId(u)))
                .collect();
        }
        Ok(start)
    }

    async fn end_batch(&mut self, heads: &[(ConvId, ConvHead)]) -> StoreResult<()> {
        let waiting = self
            .deferred
            .as_ref()
            .is_some_and(|d| !d.rows.id.is_empty());
        if waiting && !heads.is_empty() {
            // The events and the heads in one statement: one round trip fewer under the locks.
            return self.insert_and_save_heads(heads).await;
        }
        self.flush().await?;
        self.deferred = None;
        match heads {
            [] => {}
            [(conv, head)] => self.save_head(*conv, head).await?,
            many => {
                let mut ids = Vec::with_capacity(many.len());
                let mut last_seq = Vec::with_capacity(many.len());
                let mut last_msg_seq = Vec::with_capacity(many.len());
                let mut last_activity = Vec::with_capacity(many.len());
                let mut member_epoch = Vec::with_capacity(many.len());
                for (conv, head) in many {
                    ids.push(conv.0);
                    last_seq.push(common::seq_to_db(head.last_seq));
                    last_msg_seq.push(common::seq_to_db(head.last_msg_seq));
                    last_activity.push(head.last_activity);
                    member_epoch.push(head.member_epoch);
                }
                sqlx::query(
                    "UPDATE conversations c SET last_seq = h.last_seq, \
                     last_msg_seq = h.last_msg_seq, last_activity = h.last_activity, \
                     member_epoch = h.member_epoch \
                     FROM UNNEST($1::int8[], $2::int8[], $3::int8[], $4::int8[], $5::int8[]) \
                       AS h (id, last_seq, last_msg_seq, last_activity, member_epoch) \
                     WHERE c.id = h.id",
                )
                .bind(ids)
                .bind(last_seq)
                .bind(last_msg_seq)
                .bind(last_activity)
                .bind(member_epoch)
                .execute(&mut *self.conn)
                .await
                .map_err(|e| self.err(e))?;
            }
        }
        Ok(())
    }

    async fn event_by_client_id(
        &mut self,
        sender: UserId,
        client_id: &ClientMsgId,
    ) -> StoreResult<Option<Event>> {
        self.flush().await?;
        sqlx::query_as::<_, EventRow>(concat!(
            event_select!(),
            " WHERE e.sender = $1 AND e.client_id = $2"
        ))
        .bind(sender.0)
        .bind(client_id.as_str())
        .fetch_optional(&mut *self.conn)
        .await
        .map_err(|e| self.err(e))?
        .map(EventRow::into_event)
        .transpose()
    }

    async fn conv_head(&mut self, conv: ConvId) -> StoreResult<Option<ConvHead>> {
        // The lock that orders the conversation's writers, held until the commit. Under READ
        // COMMITTED a writer that waited for it reads the row as its holder committed it.
        let row: Option<(String, bool, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT kind, is_public, last_seq, last_msg_seq, last_activity, member_epoch \
             FROM conversations WHERE id = $1 FOR NO KEY UPDATE",
        )
        .bind(conv.0)
        .fetch_optional(&mut *self.conn)
        .await
        .map_err(|e| self.err(e))?;
        let Some((kind, public, last_seq, last_msg_seq, last_activity, member_epoch)) = row else {
            return Ok(None);
        };
        Ok(Some(ConvHead {
            kind: common::parse_conv_kind(&kind)?,
            public,
            last_seq: common::seq_from_db(last_seq)?,
            last_msg_seq: common::seq_from_db(last_msg_seq)?,
            last_activity,
            member_epoch,
        }))
    }

    async fn member_ids(&mut self, conv: ConvId) -> StoreResult<Vec<UserId>> {
        let ids: Vec<i64> =
            sqlx::query_scalar("SELECT user_id FROM members WHERE conv_id = $1 ORDER BY user_id")
                .bind(conv.0)
                .fetch_all(&mut *self.conn)
                .await
                .map_err(|e| self.err(e))?;
        Ok(ids.into_iter().map(UserId).collect())
    }

    async fn user_exists(&mut self, user: UserId) -> StoreResult<bool> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)")
            .bind(user.0)
            .fetch_one(&mut *self.conn)
            .await
            .map_err(|e| self.err(e))
    }

    async fn attachment_meta(&mut self, id: &AttachmentId) -> StoreResult<Option<Attachment>> {
        let row: Option<(String, String, i64, i64)> =
            sqlx::query_as("SELECT name, mime, size, conv_id FROM attachments WHERE id = $1")
                .bind(id.as_str())
                .fetch_optional(&mut *self.conn)
                .await
                .map_err(|e| self.err(e))?;
        let Some((name, mime, size, conv)) = row else {
            return Ok(None);
        };
        Ok(Some(Attachment {
            id: id.clone(),
            name,
            mime,
            size: u64::try_from(size)
                .map_err(|_| StoreError::Internal(format!("negative size of {id}")))?,
            conv: ConvId(conv),
        }))
    }

    async fn message_ref(&mut self, id: MessageId) -> StoreResult<Option<MessageRef>> {
        // Mostly an older message: the waiting events matter only if it is one of them.
        if self.waits(id) {
            self.flush().await?;
        }
        let row: Option<(i64, String, i64, bool, Option<String>)> = sqlx::query_as(
            "SELECT conv_id, body_type, sender, deleted, attachment_id FROM events WHERE id = $1",
        )
        .bind(id.0)
        .fetch_optional(&mut *self.conn)
        .await
        .map_err(|e| self.err(e))?;
        let Some((conv, body_type, sender, deleted, attachment)) = row else {
            return Ok(None);
        };
        Ok(Some(MessageRef {
            conv: ConvId(conv),
            is_message: body_type == common::body_type::MESSAGE,
            sender: UserId(sender),
            deleted,
            attachment: attachment
                .map(|a| {
                    a.parse()
                        .map_err(|_| StoreError::Internal(format!("malformed attachment id {a:?}")))
                })
                .transpose()?,
        }))
    }

    async fn insert_event(&mut self, event: &Event, origin: &NodeId) -> StoreResult<bool> {
        if let Some(deferred) = &mut self.deferred {
            if !deferred.keys.claim(event) {
                return Ok(false);
            }
            deferred.rows.push(event, origin);
            return Ok(true);
        }
        let c = EventColumns::of(&event.body);
        // Without a conflict target, DO NOTHING covers every unique index (the id, the partial
        // one of `(sender, client_id)`, `(conv_id, seq)`), and waits for a concurrent
        // transaction that inserted the same key to finish before it decides.
        let done = sqlx::query(
            "INSERT INTO events (id, conv_id, seq, at, sender, device, client_id, origin, body_type, \
             msg_kind, member_action, member_user, text, attachment_id, reply_to, target) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
             ON CONFLICT DO NOTHING",
        )
        .bind(event.id.0)
        .bind(event.conv.0)
        .bind(common::seq_to_db(event.seq))
        .bind(event.at)
        .bind(event.sender.0)
        .bind(event.device.as_ref().map(DeviceId::as_str))
        .bind(event.client_id.as_ref().map(ClientMsgId::as_str))
        .bind(origin.as_str())
        .bind(c.body_type)
        .bind(c.msg_kind)
        .bind(c.member_action)
        .bind(c.member_user)
        .bind(c.text)
        .bind(c.attachment_id)
        .bind(c.reply_to)
        .bind(c.target)
        .execute(&mut *self.conn)
        .await
        .map_err(|e| self.err(e))?;
        Ok(done.rows_affected() == 1)
    }

    async fn edit_message(&mut self, id: MessageId, text: &str, at: Millis) -> StoreResult<()> {
        // The message may be waiting.
        self.flush().await?;
        sqlx::query("UPDATE events SET text = $2, edited_at = $3 WHERE id = $1")
            .bind(id.0)
            .bind(text)
            .bind(at)
            .execute(&mut *self.conn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn delete_message(
        &mut self,
        id: MessageId,
        attachment: Option<&AttachmentId>,
    ) -> StoreResult<()> {
        // The message, edits of it and events that show its attachment may be waiting.
        self.flush().await?;
        sqlx::query(
            "UPDATE events SET text = '', attachment_id = NULL, deleted = TRUE WHERE id = $1",
        )
        .bind(id.0)
        .execute(&mut *self.conn)
        .await
        .map_err(|e| self.err(e))?;
        sqlx::query("UPDATE events SET text = '' WHERE target = $1 AND body_type = 'edit'")
            .bind(id.0)
            .execute(&mut *self.conn)
            .await
            .map_err(|e| self.err(e))?;
        if let Some(attachment) = attachment {
            // Only events of this conversation can refer to its attachment, and they are
            // written under the conversation's lock, which we hold: nobody refers to it anew
            // between the check and the delete.
            sqlx::query(
                "DELETE FROM attachments WHERE id = $1 \
                 AND NOT EXISTS (SELECT 1 FROM events WHERE attachment_id = $1)",
            )
            .bind(attachment.as_str())
            .execute(&mut *self.conn)
            .await
            .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    async fn add_member(&mut self, conv: ConvId, user: UserId, seq: Seq) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO members (conv_id, user_id, joined_seq, read_seq) VALUES ($1, $2, $3, $3)",
        )
        .bind(conv.0)
        .bind(user.0)
        .bind(common::seq_to_db(seq))
        .execute(&mut *self.conn)
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn remove_member(&mut self, conv: ConvId, user: UserId) -> StoreResult<()> {
        sqlx::query("DELETE FROM members WHERE conv_id = $1 AND user_id = $2")
            .bind(conv.0)
            .bind(user.0)
            .execute(&mut *self.conn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn save_head(&mut self, conv: ConvId, head: &ConvHead) -> StoreResult<()> {
        sqlx::query(
            "UPDATE conversations SET last_seq = $2, last_msg_seq = $3, last_activity = $4, member_epoch = $5 \
             WHERE id = $1",
        )
        .bind(conv.0)
        .bind(common::seq_to_db(head.last_seq))
        .bind(common::seq_to_db(head.last_msg_seq))
        .bind(head.last_activity)
        .bind(head.member_epoch)
        .execute(&mut *self.conn)
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn direct_between(&mut self, lo: UserId, hi: UserId) -> StoreResult<Option<ConvId>> {
        let id: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM conversations WHERE direct_lo = $1 AND direct_hi = $2",
        )
        .bind(lo.0)
        .bind(hi.0)
        .fetch_optional(&mut *self.conn)
        .await
        .map_err(|e| self.err(e))?;
        Ok(id.map(ConvId))
    }

    async fn insert_conversation(
        &mut self,
        conv: &NewConversation<'_>,
    ) -> StoreResult<Option<ConvId>> {
        // A concurrent open of the same pair waits here for the other transaction; if that one
        // commits, nothing is inserted and the caller finds theirs.
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO conversations (kind, name, is_public, created_by, created_at, last_seq, \
             last_msg_seq, last_activity, member_epoch, direct_lo, direct_hi) \
             VALUES ($1, $2, $3, $4, $5, 1, 0, $5, 1, $6, $7) \
             ON CONFLICT (direct_lo, direct_hi) DO NOTHING RETURNING id",
        )
        .bind(common::conv_kind_str(conv.kind))
        .bind(conv.name)
        .bind(conv.public)
        .bind(conv.created_by.0)
        .bind(conv.created_at)
        .bind(conv.direct.map(|(lo, _)| lo.0))
        .bind(conv.direct.map(|(_, hi)| hi.0))
        .fetch_optional(&mut *self.conn)
        .await
        .map_err(|e| self.err(e))?;
        Ok(id.map(ConvId))
    }
}

/// A transaction that reads several statements from one snapshot, never waits for a writer
/// and never fails to serialize.
const SNAPSHOT: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";

// ---------------------------------------------------------------------------------------------
// The contract

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
            if common::is_unique_violation(&e) {
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
        created_id: MessageId,
        origin: &NodeId,
        now: Millis,
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
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let mut writer = Writer::new(&mut tx);
        let opened = common::open_direct(&mut writer, a, b, created_id, origin, now).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(opened)
    }

    async fn create_room(
        &self,
        creator: UserId,
        name: &str,
        public: bool,
        created_id: MessageId,
        origin: &NodeId,
        now: Millis,
    ) -> StoreResult<(ConvId, Appended)> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let mut writer = Writer::new(&mut tx);
        let created =
            common::create_room(&mut writer, creator, name, public, created_id, origin, now)
                .await?;
        tx.commit().await.map_err(db_err)?;
        Ok(created)
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
                    return (0..n).map(|_| Err(common::copy_error(&error))).collect();
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

    async fn is_member(&self, conv: ConvId, user: UserId) -> StoreResult<bool> {
        Ok(self.joined_seq(conv, user).await?.is_some())
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
        seq.map(common::seq_from_db).transpose()
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
                .bind(common::seq_to_db(seq)),
                true,
            ),
            Page::After(seq) => (
                sqlx::query_as::<_, EventRow>(concat!(
                    event_select!(),
                    " WHERE e.conv_id = $1 AND e.seq > $3 ORDER BY e.seq ASC LIMIT $2"
                ))
                .bind(conv.0)
                .bind(fetch)
                .bind(common::seq_to_db(seq)),
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
                .push((UserId(user), common::seq_from_db(joined)?));
        }

        Ok(events
            .into_iter()
            .map(|event| {
                let members = members_of.get(&event.conv).map_or(&[][..], Vec::as_slice);
                Appended {
                    recipients: common::replay_recipients(&event, members),
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
        .bind(common::seq_to_db(seq))
        .fetch_one(&self.pool)
        .await
        .map_err(db_err)?;
        if !member {
            return Err(StoreError::NotMember);
        }
        moved.map(common::seq_from_db).transpose()
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
            if common::is_unique_violation(&e) {
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};

    use anyhow::{Context, bail, ensure};
    use bytes::Bytes;
    use protocol::model::MessageKind;

    use super::*;
    use crate::store::suite::TestDb;
    use crate::store::{NewBody, SharedStore};

    /// The server the tests use unless [`URL_VAR`] names another.
    const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
    /// Overrides [`DEFAULT_URL`].
    const URL_VAR: &str = "CHAT_TEST_POSTGRES";
    /// Test schemas are named `chat_test_<unix seconds>_<random>`.
    const SCHEMA_PREFIX: &str = "chat_test_";
    /// A test schema older than this was left by a run that was killed: the next run drops it.
    const STALE_AFTER_SECS: u64 = 3600;

    fn unix_secs() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    fn now_ms() -> Millis {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }

    /// A fresh schema in the test database: one test's own tables, while other tests and other
    /// people's test processes use the same server. Dropped with this value.
    struct TestSchema {
        base: PgConnectOptions,
        schema: String,
        /// The `application_name` of the stores' connections, to find them on the server.
        app: String,
    }

    impl TestSchema {
        async fn create() -> anyhow::Result<TestSchema> {
            let url = std::env::var(URL_VAR).unwrap_or_else(|_| DEFAULT_URL.to_owned());
            let base = PgConnectOptions::from_str(&url)
                .with_context(|| format!("{URL_VAR} is not a PostgreSQL URL"))?;
            let mut admin = reach(&base).await?;
            drop_stale_schemas(&mut admin).await;
            let tag = format!("{:08x}", rand::random::<u32>());
            let schema = format!("{SCHEMA_PREFIX}{}_{tag}", unix_secs());
            sqlx::raw_sql(&format!("CREATE SCHEMA {schema}"))
                .execute(&mut admin)
                .await?;
            let _ = admin.close().await;
            Ok(TestSchema {
                base,
                schema,
                app: format!("chat-test-{tag}"),
            })
        }

        /// Options of the stores' connections: into this schema, under this test's name.
        fn options(&self) -> PgConnectOptions {
            self.base
                .clone()
                .options([("search_path", self.schema.as_str())])
                .application_name(&self.app)
        }

        async fn store(&self) -> StoreResult<PostgresStore> {
            self.store_with(PostgresConfig::default()).await
        }

        async fn store_with(&self, config: PostgresConfig) -> StoreResult<PostgresStore> {
            PostgresStore::connect_with(self.options(), config).await
        }

        /// A connection into the schema that is not one of the stores' (another name).
        async fn admin(&self) -> anyhow::Result<PgConnection> {
            let options = self
                .base
                .clone()
                .options([("search_path", self.schema.as_str())])
                .application_name("chat-test-admin");
            Ok(PgConnection::connect_with(&options).await?)
        }

        /// Ends every server session of this test's stores, as a server restart would.
        async fn terminate_sessions(&self, admin: &mut PgConnection) -> anyhow::Result<i64> {
            Ok(sqlx::query_scalar(
                "SELECT COUNT(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE application_name = $1",
            )
            .bind(&self.app)
            .fetch_one(admin)
            .await?)
        }
    }

    #[async_trait]
    impl TestDb for TestSchema {
        async fn open(&self) -> anyhow::Result<SharedStore> {
            Ok(Arc::new(self.store().await?))
        }
    }

    impl Drop for TestSchema {
        fn drop(&mut self) {
            let (base, schema) = (self.base.clone(), self.schema.clone());
            // Drop runs on the test's runtime, which must not be blocked on: a thread with a
            // runtime of its own does the work.
            let dropped = std::thread::spawn(move || -> anyhow::Result<()> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async {
                    let mut admin = PgConnection::connect_with(&base).await?;
                    sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                        .execute(&mut admin)
                        .await?;
                    let _ = admin.close().await;
                    Ok(())
                })
            })
            .join();
            if !matches!(dropped, Ok(Ok(()))) {
                eprintln!(
                    "test schema {} was not dropped; a later run drops it",
                    self.schema
                );
            }
        }
    }

    /// A connection to the test server, or an error that says how to start it: these tests
    /// fail, never skip, when PostgreSQL is down.
    async fn reach(base: &PgConnectOptions) -> anyhow::Result<PgConnection> {
        let why =
            match tokio::time::timeout(Duration::from_secs(10), PgConnection::connect_with(base))
                .await
            {
                Ok(Ok(conn)) => return Ok(conn),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "no answer within 10 s".to_owned(),
            };
        bail!(
            "PostgreSQL is not reachable at {}:{} ({why}). These tests need it: start it with \
             `pg_ctlcluster $(ls /etc/postgresql) main start` (scripts/services.sh starts every \
             service the tests use), or set {URL_VAR} to another server's URL",
            base.get_host(),
            base.get_port()
        )
    }

    /// Drops the schemas of test runs that were killed before they could.
    async fn drop_stale_schemas(admin: &mut PgConnection) {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname, $1)",
        )
        .bind(SCHEMA_PREFIX)
        .fetch_all(&mut *admin)
        .await
        .unwrap_or_default();
        let now = unix_secs();
        for name in names {
            let born = name
                .strip_prefix(SCHEMA_PREFIX)
                .and_then(|rest| rest.split('_').next())
                .and_then(|secs| secs.parse::<u64>().ok());
            let ours = name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if ours && born.is_some_and(|born| now.saturating_sub(born) > STALE_AFTER_SECS) {
                // Another run may be dropping it too: whoever comes second finds nothing.
                let _ = sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                    .execute(&mut *admin)
                    .await;
            }
        }
    }

    crate::store::suite::store_suite!(TestSchema::create());

    // -----------------------------------------------------------------------------------------
    // Helpers of the tests below

    /// Event ids unique in a schema: a random start, then counting.
    fn next_id() -> MessageId {
        static NEXT: std::sync::OnceLock<AtomicI64> = std::sync::OnceLock::new();
        let next = NEXT.get_or_init(|| AtomicI64::new((rand::random::<u64>() >> 2) as i64));
        MessageId(next.fetch_add(1, Ordering::Relaxed))
    }

    fn origin() -> anyhow::Result<NodeId> {
        Ok(NodeId::new("pg-test")?)
    }

    fn text(conv: ConvId, sender: UserId, text: &str) -> anyhow::Result<NewEvent> {
        Ok(NewEvent {
            conv,
            id: next_id(),
            at: now_ms(),
            sender,
            device: None,
            client_id: None,
            body: NewBody::Message {
                kind: MessageKind::Text,
                text: text.into(),
                attachment: None,
                reply_to: None,
            },
            origin: origin()?,
        })
    }

    async fn append_one(store: &dyn Store, ev: NewEvent) -> StoreResult<Appended> {
        store
            .append(vec![ev])
            .await
            .into_iter()
            .next()
            .unwrap_or_else(|| Err(StoreError::Internal("no result".into())))
    }

    async fn users<const N: usize>(store: &dyn Store) -> anyhow::Result<[UserId; N]> {
        let mut ids = [UserId(0); N];
        for (i, id) in ids.iter_mut().enumerate() {
            *id = store
                .create_user(&format!("u{i}-{:08x}", rand::random::<u32>()), "x", 0)
                .await?
                .id;
        }
        Ok(ids)
    }

    async fn direct(store: &dyn Store, a: UserId, b: UserId) -> anyhow::Result<ConvId> {
        Ok(store.open_direct(a, b, next_id(), &origin()?, 0).await?.0)
    }

    async fn seqs(store: &dyn Store, conv: ConvId) -> anyhow::Result<Vec<Seq>> {
        let (events, more) = store.events(conv, Page::After(0), 100_000).await?;
        ensure!(!more, "history longer than expected");
        Ok(events.iter().map(|e| e.seq).collect())
    }

    /// Waits until one of `app`'s sessions waits for a lock.
    async fn until_waiting_for_lock(admin: &mut PgConnection, app: &str) -> anyhow::Result<()> {
        for _ in 0..500 {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pg_stat_activity \
                 WHERE application_name = $1 AND wait_event_type = 'Lock'",
            )
            .bind(app)
            .fetch_one(&mut *admin)
            .await?;
            if waiting > 0 {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        bail!("the store never waited for the lock")
    }

    // -----------------------------------------------------------------------------------------
    // PostgreSQL's own

    /// Four pools (four processes' worth) × eight tasks append 50 events each to one
    /// conversation, in batches of 1 to 4 that each also append to a second conversation, named
    /// first or last: both conversations' seqs come out exactly 1..=n, and no batch deadlocks.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn many_pools_append_to_one_conversation() -> anyhow::Result<()> {
        const POOLS: usize = 4;
        const TASKS: usize = 8;
        const EACH: usize = 50;
        let db = TestSchema::create().await?;
        let mut stores = Vec::new();
        for _ in 0..POOLS {
            // Fewer connections than tasks: tasks also queue for them, as a node's would, and
            // the test leaves room on a server that other tests share.
            let config = PostgresConfig {
                max_connections: 4,
                ..PostgresConfig::default()
            };
            stores.push(Arc::new(db.store_with(config).await?));
        }
        let [hub, spoke, third] = users(&*stores[0]).await?;
        let main = direct(&*stores[0], hub, spoke).await?;
        let side = direct(&*stores[1], hub, third).await?;

        let mut tasks = Vec::new();
        for t in 0..POOLS * TASKS {
            let store = stores[t % POOLS].clone();
            tasks.push(tokio::spawn(async move {
                let (mut main_seqs, mut side_seqs) = (Vec::new(), Vec::new());
                let mut sent = 0;
                while sent < EACH {
                    let size = (sent % 4 + 1).min(EACH - sent);
                    let mut batch = Vec::with_capacity(size + 1);
                    for k in sent..sent + size {
                        let sender = if k % 2 == 0 { hub } else { spoke };
                        let mut ev = text(main, sender, &format!("t{t} m{k}"))?;
                        ev.client_id = Some(ClientMsgId::new(format!("t{t}-m{k}"))?);
                        batch.push(ev);
                    }
                    let aside = text(side, hub, &format!("t{t} aside {sent}"))?;
                    // Locks are taken in id order whatever the order in the batch.
                    if t % 2 == 0 {
                        batch.push(aside);
                    } else {
                        batch.insert(0, aside);
                    }
                    for result in store.append(batch).await {
                        let appended = result?;
                        ensure!(!appended.duplicate, "a new event reported as a resend");
                        if appended.event.conv == main {
                            main_seqs.push(appended.event.seq);
                        } else {
                            side_seqs.push(appended.event.seq);
                        }
                    }
                    sent += size;
                }
                ensure!(
                    main_seqs.windows(2).all(|w| w[0] < w[1]),
                    "one task's seqs go up: {main_seqs:?}"
                );
                anyhow::Ok((main_seqs, side_seqs))
            }));
        }
        let (mut main_seqs, mut side_seqs) = (Vec::new(), Vec::new());
        for task in tasks {
            let (m, s) = task.await??;
            main_seqs.extend(m);
            side_seqs.extend(s);
        }
        main_seqs.sort_unstable();
        side_seqs.sort_unstable();
        let total = (POOLS * TASKS * EACH) as Seq;
        assert_eq!(
            main_seqs,
            (2..=total + 1).collect::<Vec<_>>(),
            "no gap, no repeat"
        );
        let batches = side_seqs.len() as Seq;
        assert_eq!(side_seqs, (2..=batches + 1).collect::<Vec<_>>());

        assert_eq!(
            seqs(&*stores[3], main).await?,
            (1..=total + 1).collect::<Vec<_>>()
        );
        assert_eq!(
            stores[2].conversation(main).await?.context("row")?.last_seq,
            total + 1
        );
        assert_eq!(
            seqs(&*stores[3], side).await?,
            (1..=batches + 1).collect::<Vec<_>>()
        );
        Ok(())
    }

    /// A call in flight when the server ends its session (a restart, a failover) is
    /// unavailable; the calls after it reconnect, also through connections that died idle.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ended_sessions_fail_calls_in_flight_then_the_pool_recovers() -> anyhow::Result<()> {
        let db = TestSchema::create().await?;
        let store = db.store().await?;
        let [a, b] = users(&store).await?;
        let conv = direct(&store, a, b).await?;

        // Another session holds the conversation's lock, so our append is surely in flight.
        let mut admin = db.admin().await?;
        let mut holder = db.admin().await?;
        let mut held = holder.begin().await?;
        sqlx::query("SELECT id FROM conversations WHERE id = $1 FOR UPDATE")
            .bind(conv.0)
            .execute(&mut *held)
            .await?;
        let in_flight = tokio::spawn({
            let store = store.clone();
            let ev = text(conv, a, "in flight")?;
            async move { append_one(&store, ev).await }
        });
        until_waiting_for_lock(&mut admin, &db.app).await?;
        ensure!(db.terminate_sessions(&mut admin).await? >= 1);
        let outcome = in_flight.await?;
        assert!(
            matches!(outcome, Err(StoreError::Unavailable(_))),
            "{outcome:?}"
        );
        held.rollback().await?;

        let next = append_one(&store, text(conv, b, "after")?).await?;
        assert_eq!(next.event.seq, 2, "the failed append stored nothing");

        // Sessions ended while idle: the pool replaces them before handing them out.
        ensure!(db.terminate_sessions(&mut admin).await? >= 1);
        assert!(store.user_by_id(a).await?.is_some());
        let again = append_one(&store, text(conv, a, "again")?).await?;
        assert_eq!(again.event.seq, 3);
        assert_eq!(seqs(&store, conv).await?, [1, 2, 3]);
        Ok(())
    }

    /// While a batch holds a conversation's lock, another writer of that conversation gives up
    /// after `lock_timeout` (unavailable), while reads and uploads into it go on: the lock is
    /// `FOR NO KEY UPDATE`, which foreign-key checks do not wait for.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_held_conversation_lock_delays_its_writers_only() -> anyhow::Result<()> {
        let db = TestSchema::create().await?;
        let store = db
            .store_with(PostgresConfig {
                lock_timeout: Duration::from_millis(200),
                ..PostgresConfig::default()
            })
            .await?;
        let [a, b] = users(&store).await?;
        let conv = direct(&store, a, b).await?;
        let other = direct(&store, a, users::<1>(&store).await?[0]).await?;

        let mut holder = db.admin().await?;
        let mut held = holder.begin().await?;
        sqlx::query("SELECT id FROM conversations WHERE id = $1 FOR NO KEY UPDATE")
            .bind(conv.0)
            .execute(&mut *held)
            .await?;
        let blocked = append_one(&store, text(conv, a, "blocked")?).await;
        assert!(
            matches!(blocked, Err(StoreError::Unavailable(_))),
            "{blocked:?}"
        );
        assert_eq!(seqs(&store, conv).await?, [1], "reads go on");
        append_one(&store, text(other, a, "elsewhere")?).await?;
        let data = Bytes::from_static(b"\x89PNG");
        store
            .put_attachment(AttachmentBlob {
                meta: Attachment {
                    id: AttachmentId::new(format!("f{:08x}", rand::random::<u32>()))?,
                    name: "a.png".into(),
                    mime: "image/png".into(),
                    size: data.len() as u64,
                    conv,
                },
                uploader: a,
                created_at: 0,
                data,
            })
            .await?;
        held.rollback().await?;
        assert_eq!(
            append_one(&store, text(conv, a, "free")?).await?.event.seq,
            2
        );
        Ok(())
    }

    /// A NUL, which PostgreSQL cannot store in text, is refused as invalid: in a batch, alone
    /// (the others commit); elsewhere, as the database's refusal.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_nul_in_text_is_refused_alone() -> anyhow::Result<()> {
        let db = TestSchema::create().await?;
        let store = db.store().await?;
        let [a, b] = users(&store).await?;
        let conv = direct(&store, a, b).await?;
        let results = store
            .append(vec![
                text(conv, a, "before")?,
                text(conv, a, "nul \0 inside")?,
                text(conv, b, "after")?,
            ])
            .await;
        assert_eq!(results[0].as_ref().map(|r| r.event.seq).ok(), Some(2));
        assert!(
            matches!(results[1], Err(StoreError::Invalid(_))),
            "{:?}",
            results[1]
        );
        assert_eq!(results[2].as_ref().map(|r| r.event.seq).ok(), Some(3));
        let named = store.create_user("nul\0name", "x", 0).await;
        assert!(matches!(named, Err(StoreError::Invalid(_))), "{named:?}");
        let device = store
            .login_device(a, &DeviceId::new("d1")?, "my\0phone", 0)
            .await;
        assert!(matches!(device, Err(StoreError::Invalid(_))), "{device:?}");
        Ok(())
    }

    /// In one batch (inserts deferred to one statement), later events see the earlier ones: a
    /// reply, an edit and a delete of a message of the same batch, a resend of it, its id used
    /// again, an attachment dropped with its message.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn later_events_of_a_batch_see_the_earlier_ones() -> anyhow::Result<()> {
        let db = TestSchema::create().await?;
        let store = db.store().await?;
        let [a, b] = users(&store).await?;
        let conv = direct(&store, a, b).await?;
        let data = Bytes::from_static(b"GIF89a");
        let file = Attachment {
            id: AttachmentId::new(format!("f{:08x}", rand::random::<u32>()))?,
            name: "a.gif".into(),
            mime: "image/gif".into(),
            size: data.len() as u64,
            conv,
        };
        store
            .put_attachment(AttachmentBlob {
                meta: file.clone(),
                uploader: a,
                created_at: 0,
                data,
            })
            .await?;

        let mut first = text(conv, a, "helo")?;
        first.client_id = Some(ClientMsgId::new("c-first")?);
        let mut reply = text(conv, b, "hi")?;
        if let NewBody::Message { reply_to, .. } = &mut reply.body {
            *reply_to = Some(first.id);
        }
        let mut edit = text(conv, a, "")?;
        edit.body = NewBody::Edit {
            target: first.id,
            text: "hello".into(),
        };
        let mut image = text(conv, a, "")?;
        image.body = NewBody::Message {
            kind: MessageKind::Image,
            text: String::new(),
            attachment: Some(file.id.clone()),
            reply_to: None,
        };
        let mut delete = text(conv, a, "")?;
        delete.body = NewBody::Delete { target: image.id };
        let mut resend = first.clone();
        resend.id = next_id();
        let mut same_id = text(conv, b, "same id")?;
        same_id.id = first.id;
        let last = text(conv, b, "last")?;

        let results = store
            .append(vec![
                first.clone(),
                reply,
                edit,
                image,
                delete,
                resend,
                same_id,
                last,
            ])
            .await;
        let seq = |i: usize| results[i].as_ref().map(|r| r.event.seq).ok();
        assert_eq!(
            (0..5).map(seq).collect::<Vec<_>>(),
            [Some(2), Some(3), Some(4), Some(5), Some(6)],
            "{results:?}"
        );
        let again = results[5].as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
        assert!(again.duplicate && again.event.id == first.id);
        assert!(
            matches!(results[6], Err(StoreError::Conflict(_))),
            "{:?}",
            results[6]
        );
        assert_eq!(seq(7), Some(7));

        let (events, _) = store.events(conv, Page::After(0), 100).await?;
        assert_eq!(
            events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (1..=7).collect::<Vec<_>>()
        );
        let shown = |i: usize| match &events[i].body {
            protocol::model::EventBody::Message(m) => Ok(m.clone()),
            other => Err(anyhow::anyhow!("not a message: {other:?}")),
        };
        assert_eq!(shown(1)?.text, "hello", "edited in the same batch");
        assert_eq!(shown(2)?.reply_to, Some(first.id));
        assert!(shown(4)?.deleted && shown(4)?.attachment.is_none());
        assert_eq!(store.attachment(&file.id).await?, None, "dropped with it");
        Ok(())
    }

    /// A key that another writer takes after the batch looked (the same client id racing in
    /// through another conversation) makes the batch try again, and then its event is a
    /// resend of the other writer's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_taken_meanwhile_makes_the_batch_try_again() -> anyhow::Result<()> {
        let db = TestSchema::create().await?;
        let store = db.store().await?;
        let [a, b, c] = users(&store).await?;
        let conv = direct(&store, a, b).await?;
        let elsewhere = direct(&store, a, c).await?;

        // Another writer inserts a's "race" into the other conversation and has not committed.
        let mut admin = db.admin().await?;
        let mut writer = db.admin().await?;
        let mut other = writer.begin().await?;
        let theirs = next_id();
        sqlx::query(
            "INSERT INTO events (id, conv_id, seq, at, sender, client_id, origin, body_type, \
             msg_kind, text) VALUES ($1, $2, 2, 0, $3, 'race', 'other', 'message', 'text', 'theirs')",
        )
        .bind(theirs.0)
        .bind(elsewhere.0)
        .bind(a.0)
        .execute(&mut *other)
        .await?;
        sqlx::query("UPDATE conversations SET last_seq = 2 WHERE id = $1")
            .bind(elsewhere.0)
            .execute(&mut *other)
            .await?;

        let mut racing = text(conv, a, "mine")?;
        racing.client_id = Some(ClientMsgId::new("race")?);
        let batch = vec![text(conv, b, "before")?, racing, text(conv, b, "after")?];
        let appending = tokio::spawn({
            let store = store.clone();
            async move { store.append(batch).await }
        });
        // Our insert waits for theirs to decide; then theirs commits.
        until_waiting_for_lock(&mut admin, &db.app).await?;
        other.commit().await?;

        let results = appending.await?;
        let seqs_got: Vec<Option<Seq>> = results
            .iter()
            .map(|r| r.as_ref().map(|x| x.event.seq).ok())
            .collect();
        assert_eq!(seqs_got, [Some(2), Some(2), Some(3)], "{results:?}");
        let resend = results[1].as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
        assert!(resend.duplicate);
        assert_eq!(
            (resend.event.id, resend.event.conv),
            (theirs, elsewhere),
            "the first event, wherever it is"
        );
        assert_eq!(seqs(&store, conv).await?, [1, 2, 3]);
        Ok(())
    }

    /// Many handles connect to a fresh schema at once: the migrations run once, in that schema.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn many_handles_migrate_one_schema_at_once() -> anyhow::Result<()> {
        let db = TestSchema::create().await?;
        let stores = futures::future::try_join_all((0..6).map(|_| db.store())).await?;
        let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
            .fetch_one(&stores[0].pool)
            .await?;
        assert_eq!(applied as usize, MIGRATOR.iter().count());
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = $1 ORDER BY table_name",
        )
        .bind(&db.schema)
        .fetch_all(&stores[5].pool)
        .await?;
        assert_eq!(
            tables,
            [
                "_sqlx_migrations",
                "attachments",
                "conversations",
                "devices",
                "events",
                "members",
                "users"
            ]
        );
        Ok(())
    }

    /// Every connection of the pool carries the configured timeouts, in this test's schema.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sessions_carry_their_timeouts() -> anyhow::Result<()> {
        let db = TestSchema::create().await?;
        let store = db
            .store_with(PostgresConfig {
                lock_timeout: Duration::from_millis(1500),
                idle_in_transaction_timeout: Duration::from_millis(700),
                statement_timeout: Duration::from_secs(20),
                ..PostgresConfig::default()
            })
            .await?;
        let (lock, idle, statement, schema): (String, String, String, String) = sqlx::query_as(
            "SELECT current_setting('lock_timeout'), \
               current_setting('idle_in_transaction_session_timeout'), \
               current_setting('statement_timeout'), current_schema()::text",
        )
        .fetch_one(&store.pool)
        .await?;
        assert_eq!(
            (lock.as_str(), idle.as_str(), statement.as_str()),
            ("1500ms", "700ms", "20s")
        );
        assert_eq!(schema, db.schema);
        Ok(())
    }

    /// Nothing listening: unavailable at once, through `store::open` too; a malformed URL is
    /// invalid.
    #[tokio::test]
    async fn an_unreachable_server_is_unavailable() {
        let nowhere = "postgres://postgres@127.0.0.1:1/test";
        let direct = PostgresStore::connect(nowhere).await;
        assert!(
            matches!(direct, Err(StoreError::Unavailable(_))),
            "{:?}",
            direct.err()
        );
        for url in [nowhere, "postgresql://postgres@127.0.0.1:1/test"] {
            let opened = crate::store::open(url).await;
            assert!(
                matches!(opened, Err(StoreError::Unavailable(_))),
                "{url}: {:?}",
                opened.err()
            );
        }
        let malformed = PostgresStore::connect("postgres://host:port/db").await;
        assert!(
            matches!(malformed, Err(StoreError::Invalid(_))),
            "{:?}",
            malformed.err()
        );
    }

    /// SQLSTATEs that mean "not now" are unavailable, data exceptions invalid, others internal.
    #[test]
    fn sqlstates_are_mapped() {
        for code in [
            "08006", "40001", "40P01", "55P03", "57014", "57P01", "57P03", "25006", "25P03",
            "53300", "53100", "58030",
        ] {
            assert!(
                matches!(sqlstate_error(code, ""), Some(StoreError::Unavailable(_))),
                "{code}"
            );
        }
        assert!(matches!(
            sqlstate_error("22021", "invalid byte sequence"),
            Some(StoreError::Invalid(m)) if !m.contains("byte")
        ));
        assert!(sqlstate_error("42P01", "").is_none());
        assert!(matches!(
            db_err(sqlx::Error::PoolTimedOut),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            db_err(sqlx::Error::Io(std::io::Error::other("reset"))),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            db_err(sqlx::Error::RowNotFound),
            StoreError::Internal(_)
        ));
    }
}
