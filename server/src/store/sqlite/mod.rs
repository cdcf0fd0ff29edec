//! The embedded store: one SQLite file that every process on the machine (the controller and
//! its chat nodes) opens at the same time. The rules of appending live in the store's `write`
//! module; this module is the SQL and the way processes share the file.
//!
//! Sharing one file between processes:
//! - WAL journal: readers never wait for the writer nor it for them. `synchronous = NORMAL`:
//!   a commit is durable against a process crash at once and against power loss from the next
//!   checkpoint on, which is what WAL mode is designed for.
//! - Every write transaction starts with `BEGIN IMMEDIATE`, which takes the file's write lock
//!   first, waiting up to [`BUSY_TIMEOUT`] for it. A deferred transaction that read first and
//!   writes later can instead fail at once with `SQLITE_BUSY` when another process wrote in
//!   between, without waiting.
//! - Within a process, writes queue on one connection (behind a FIFO async mutex); between
//!   processes, on a kernel file lock (`flock` of `<file>.write-lock`) taken before `BEGIN
//!   IMMEDIATE`, rather than on SQLite's busy handler, which sleeps and polls. Reads use a pool
//!   of their own.
//! - Writes run on the calling thread, through rusqlite (on the same bundled SQLite as sqlx),
//!   with prepared statements kept per connection. sqlx would run each statement on a thread of
//!   its own and wake the caller with its answer: two thread switches per statement, with the
//!   file's write lock held meanwhile. A node's committer (every append) has a thread of its
//!   own for this. The other writes — accounts, devices and uploads on the controller, read
//!   markers that move on a node — each hold a runtime thread while their statements run
//!   (well under a millisecond; an upload's blob is written on a blocking thread), never while
//!   waiting on another process: the kernel lock below is taken first, off the runtime when it
//!   is contended, so `BEGIN IMMEDIATE` finds SQLite's lock free. Reads stay on sqlx's pool.
//! - sqlx takes no lock to run SQLite migrations, so they run inside a `BEGIN IMMEDIATE` too:
//!   processes opening a new file at once apply them one after the other.
//!
//! Busy, locked and I/O errors become [`StoreError::Unavailable`] (retry later); constraint
//! violations become the store's own words (see the store's `errors` module).
//!
//! Code map: this file opens the store, gives its dialect and does its writes (the reads are
//! the store's `sql` module's, shared with PostgreSQL); `lock` is the writers' file lock,
//! `writer` the write connection with its transactions and the write path's statements,
//! `checkpoint` the task that keeps the log short, `errors` what SQLite's errors mean, `tests`
//! the suite and SQLite's own tests.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use protocol::{ConvId, DeviceId, Seq, UserId};
use sqlx::Connection;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Pool, Sqlite};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::member_cache::MemberCache;
use super::rows::{DeviceRow, event_select};
use super::sql::{Dialect, SqlBackend, SqlStore};
use super::write::{self, WriteTransactions};
use super::{
    Appended, AttachmentBlob, DeviceLogin, DeviceRecord, NewEvent, NewUser, StoreError,
    StoreResult, TopUp, UserRecord, encoding, migrations,
};

mod checkpoint;
mod errors;
mod lock;
#[cfg(test)]
mod tests;
mod writer;

use checkpoint::checkpointer;
use errors::{db_err, is_busy};
use lock::FileLock;
pub use lock::wait_for_the_write_lock_in_place;
use writer::{SqliteWriter, WriteConn, WriteTx, open_writer};

/// How long a connection waits for another process's lock before giving up (then the call is
/// [`StoreError::Unavailable`]).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a call waits for a connection of this process's pools.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections for reads: WAL lets them all read while one writes.
const READERS: u32 = 8;

/// Each read connection's page cache, in KiB.
const READER_CACHE_KIB: u32 = 256;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// The `seq` of the last event of the conversation whose id is the SQL expression `$conv`: the
/// right end of its range in `events_conv_seq`, one index seek (every conversation has its
/// first event from the transaction that made it). A conversation's head is not kept in its row
/// (see migration 0003).
macro_rules! last_seq_of {
    ($conv:literal) => {
        concat!(
            "(SELECT coalesce(max(h.seq), 0) FROM events h WHERE h.conv_id = ",
            $conv,
            ")"
        )
    };
}
pub(crate) use last_seq_of;

/// The reads where SQLite's statements are its own: a conversation's last `seq`, last message
/// and latest activity come from its events (see [`last_seq_of!`]), and a room name is matched
/// with `instr`.
const DIALECT: Dialect = Dialect {
    conversation: concat!(
        "SELECT id, kind, name, is_public, ",
        last_seq_of!("conversations.id"),
        " AS last_seq, created_by, created_at FROM conversations WHERE id = $1"
    ),
    summaries: concat!(
        "SELECT c.id, c.kind, c.name, c.is_public, ",
        last_seq_of!("c.id"),
        " AS last_seq, c.created_at, m.read_seq, \
           (SELECT COUNT(*) FROM members x WHERE x.conv_id = c.id) AS member_count, \
           (SELECT COUNT(*) FROM events e WHERE e.conv_id = c.id AND e.seq > m.read_seq \
              AND e.body_type = 'message' AND e.deleted = FALSE AND e.sender <> m.user_id) AS unread, \
           p.user_id AS peer_id, u.username AS peer_name, p.read_seq AS peer_read_seq \
         FROM members m \
         JOIN conversations c ON c.id = m.conv_id \
         LEFT JOIN members p ON c.kind = 'direct' AND p.conv_id = c.id AND p.user_id <> m.user_id \
         LEFT JOIN users u ON u.id = p.user_id \
         WHERE m.user_id = $1 \
         ORDER BY (SELECT l.at FROM events l WHERE l.conv_id = c.id ORDER BY l.seq DESC LIMIT 1) DESC, \
           c.id DESC",
    ),
    last_messages: concat!(
        event_select!(),
        " JOIN members m ON m.conv_id = e.conv_id WHERE m.user_id = $1 AND e.seq = \
           (SELECT l.seq FROM events l WHERE l.conv_id = m.conv_id AND l.body_type = 'message' \
            ORDER BY l.seq DESC LIMIT 1)"
    ),
    // instr, not LIKE: the query is matched as typed, `%` and `_` included.
    public_rooms: "SELECT c.id, c.name, \
           (SELECT COUNT(*) FROM members x WHERE x.conv_id = c.id) AS member_count \
         FROM conversations c \
         WHERE c.kind = 'room' AND c.is_public = TRUE AND instr(lower(c.name), lower($1)) > 0 \
         ORDER BY c.name, c.id LIMIT $2",
    snapshot: None,
};

/// The file SQLite (or this store) keeps beside the database `path`: its name with `suffix`
/// appended (`-wal`, `-shm`, `.write-lock`).
fn beside(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

/// The SQLite store: the shared contract over [`SqliteBackend`].
pub type SqliteStore = SqlStore<SqliteBackend>;

/// SQLite's pools, write connection and checkpointer. Cheap to clone: all are shared.
#[derive(Clone)]
pub struct SqliteBackend {
    /// Reads only.
    reader: SqlitePool,
    /// This process's writes queue here, each in a `BEGIN IMMEDIATE` transaction.
    writer: Arc<tokio::sync::Mutex<WriteConn>>,
    /// `<file>.write-lock`: writers of every process take it (flock) before `BEGIN IMMEDIATE`.
    write_lock: Arc<std::path::PathBuf>,
    /// Stops the checkpointer when the last handle goes.
    _checkpointer: Arc<DropGuard>,
}

impl SqliteStore {
    /// Opens (creating it and its directory if missing) the database file at `path`, switches
    /// it to WAL and brings its schema up to date. Any number of processes may do this at once.
    pub async fn open(path: impl AsRef<Path>) -> StoreResult<SqliteStore> {
        SqliteBackend::open(path.as_ref()).await.map(SqlStore::new)
    }
}

impl SqliteBackend {
    /// See [`SqliteStore::open`].
    async fn open(path: &Path) -> StoreResult<SqliteBackend> {
        if path.as_os_str().is_empty() {
            return Err(StoreError::Invalid("empty SQLite path".into()));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await.map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        // History is private: the file is created 0600 before SQLite opens it (its log and
        // shared-memory files take the file's mode).
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .map_err(|e| {
                    StoreError::Unavailable(format!("cannot create {}: {e}", path.display()))
                })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .foreign_keys(true)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            // Statement journals (a multi-row INSERT keeps one, to undo itself alone) and temp
            // tables in memory: on disk they cost a write per page an append touches.
            .pragma("temp_store", "MEMORY");

        // The journal mode is a property of the file: set once here, the pools' connections
        // find it. Then the schema, before any pool serves.
        let mut setup = SqliteConnection::connect_with(&options)
            .await
            .map_err(db_err)?;
        enable_wal(&mut setup).await?;
        migrate(&mut setup).await?;
        setup.close().await.map_err(db_err)?;

        let writer = open_writer(path)?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // A small cache each: it starts over whenever another process writes, which under
            // load is all the time, so a big one only holds memory (the OS caches the file).
            .connect_with(
                options
                    .clone()
                    .pragma("cache_size", format!("-{READER_CACHE_KIB}")),
            )
            .await
            .map_err(db_err)?;
        let write_lock = Arc::new(beside(path, ".write-lock"));
        let writer = Arc::new(tokio::sync::Mutex::new(WriteConn {
            conn: writer,
            lock: FileLock::Closed,
            open: false,
        }));
        let checkpoints = CancellationToken::new();
        tokio::spawn(checkpointer(
            options.clone(),
            path.to_owned(),
            Arc::downgrade(&writer),
            write_lock.clone(),
            checkpoints.clone(),
        ));
        Ok(SqliteBackend {
            _checkpointer: Arc::new(checkpoints.drop_guard()),
            reader,
            writer,
            write_lock,
        })
    }

    /// The write connection with the writers' lock, no transaction begun yet.
    async fn write_conn(&self) -> StoreResult<WriteTx> {
        let mutex = self.writer.clone();
        let mut conn = tokio::time::timeout(ACQUIRE_TIMEOUT, mutex.clone().lock_owned())
            .await
            .map_err(|_| StoreError::Unavailable("the SQLite writer stayed busy".into()))?;
        conn.roll_back();
        conn.lock.acquire(&self.write_lock).await?;
        Ok(WriteTx { conn, mutex })
    }

    /// A write transaction, holding the writers' lock and the file's write lock.
    async fn write_tx(&self) -> StoreResult<WriteTx> {
        let mut tx = self.write_conn().await?;
        tx.begin()?;
        Ok(tx)
    }

    /// Appends a batch in `tx` (its writers' lock held), and commits.
    async fn append_in(
        &self,
        members: &MemberCache,
        mut tx: WriteTx,
        batch: Vec<NewEvent>,
    ) -> StoreResult<Vec<StoreResult<Appended>>> {
        if let Err(e) = tx.begin() {
            tx.roll_back();
            return Err(e);
        }
        let outcome = write::append_batch(&mut SqliteWriter::new(&mut tx), members, batch)
            .await
            .and_then(|outcome| tx.commit_here().map(|()| outcome));
        match outcome {
            Ok(outcome) => {
                drop(tx);
                outcome.remember_members(members);
                Ok(outcome.results)
            }
            Err(e) => {
                tx.roll_back();
                Err(e)
            }
        }
    }
}

impl WriteTransactions for SqliteBackend {
    type Tx = WriteTx;
    type Ops<'t> = SqliteWriter<'t>;

    async fn begin_write(&self) -> StoreResult<WriteTx> {
        self.write_tx().await
    }

    fn ops(tx: &mut WriteTx) -> SqliteWriter<'_> {
        SqliteWriter::new(tx)
    }

    async fn commit(tx: WriteTx) -> StoreResult<()> {
        tx.commit()
    }
}

/// Switches the file to WAL. Unlike other locks, the one this needs is not waited for by the
/// busy handler, so several processes creating the file at once retry here.
async fn enable_wal(conn: &mut SqliteConnection) -> StoreResult<()> {
    let deadline = tokio::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        let outcome = sqlx::query_scalar::<_, String>("PRAGMA journal_mode = WAL")
            .fetch_one(&mut *conn)
            .await;
        let retry = match outcome {
            Ok(mode) if mode.eq_ignore_ascii_case("wal") => return Ok(()),
            Ok(mode) => format!("journal mode stayed {mode}"),
            Err(e) if is_busy(&e) => e.to_string(),
            Err(e) => return Err(db_err(e)),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(StoreError::Unavailable(format!(
                "cannot switch SQLite to WAL: {retry}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Applies the migrations under the write lock (see the module docs).
async fn migrate(conn: &mut SqliteConnection) -> StoreResult<()> {
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(db_err)?;
    // Nested in our transaction: sqlx makes its own a savepoint.
    migrations::apply_migrations(&mut *tx, &MIGRATOR, "SQLite", db_err).await?;
    tx.commit().await.map_err(db_err)
}

impl SqlBackend for SqliteBackend {
    type Db = Sqlite;
    const KIND: &'static str = "sqlite";
    const DIALECT: Dialect = DIALECT;
    const DB_ERR: fn(sqlx::Error) -> StoreError = db_err;

    fn read_pool(&self) -> &Pool<Sqlite> {
        &self.reader
    }

    async fn create_user(&self, user: NewUser<'_>) -> StoreResult<UserRecord> {
        let mut tx = self.write_tx().await?;
        let id = SqliteWriter::new(&mut tx)
            .query_row(
                "INSERT INTO users (username, password_hash, created_at) VALUES (?1, ?2, ?3) \
                 RETURNING id",
                rusqlite::params![user.username, user.password_hash, user.created_at],
                |r| r.get::<_, i64>(0),
            )?
            .ok_or_else(|| StoreError::Internal("the new user's id did not come back".into()))?;
        tx.commit()?;
        Ok(UserRecord {
            id: UserId(id),
            username: user.username.to_owned(),
            password_hash: user.password_hash.to_owned(),
            created_at: user.created_at,
        })
    }

    async fn login_device(&self, login: DeviceLogin<'_>) -> StoreResult<DeviceRecord> {
        let mut tx = self.write_tx().await?;
        // A revoked device logging in again is active again, but keeps its bumped generation:
        // tokens issued before the revocation stay refused.
        let row = SqliteWriter::new(&mut tx)
            .query_row(
                "INSERT INTO devices (user_id, device_id, name, created_at, last_login, revoked, generation) \
                 VALUES (?1, ?2, ?3, ?4, ?4, FALSE, 0) \
                 ON CONFLICT (user_id, device_id) DO UPDATE \
                 SET name = excluded.name, last_login = excluded.last_login, revoked = FALSE \
                 RETURNING user_id, device_id, name, created_at, last_login, revoked, generation",
                rusqlite::params![login.user.0, login.device.as_str(), login.name, login.at],
                DeviceRow::from_sqlite,
            )?
            .ok_or_else(|| StoreError::Internal("the logged-in device did not come back".into()))?;
        tx.commit()?;
        row.into_record()
    }

    async fn revoke_device(&self, user: UserId, device: &DeviceId) -> StoreResult<DeviceRecord> {
        let mut tx = self.write_tx().await?;
        let row = SqliteWriter::new(&mut tx)
            .query_row(
                "UPDATE devices SET revoked = TRUE, generation = generation + 1 \
                 WHERE user_id = ?1 AND device_id = ?2 \
                 RETURNING user_id, device_id, name, created_at, last_login, revoked, generation",
                rusqlite::params![user.0, device.as_str()],
                DeviceRow::from_sqlite,
            )?
            .ok_or(StoreError::NotFound)?;
        tx.commit()?;
        row.into_record()
    }

    async fn append(
        &self,
        members: &MemberCache,
        mut batch: Vec<NewEvent>,
        top_up: TopUp<'_>,
    ) -> Vec<StoreResult<Appended>> {
        let tx = self.write_conn().await;
        top_up(&mut batch);
        if batch.is_empty() {
            return Vec::new();
        }
        let n = batch.len();
        let outcome = match tx {
            Ok(tx) => self.append_in(members, tx, batch).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(results) => results,
            Err(e) => (0..n).map(|_| Err(e.clone())).collect(),
        }
    }

    async fn mark_read(&self, conv: ConvId, user: UserId, seq: Seq) -> StoreResult<Option<Seq>> {
        const MARKERS: &str = concat!(
            "SELECT m.read_seq, ",
            last_seq_of!("m.conv_id"),
            " FROM members m WHERE m.conv_id = $1 AND m.user_id = $2"
        );
        let wanted = encoding::seq_to_db(seq);
        // Devices mark read often and mostly again: answer a marker that would not move without
        // taking the write lock.
        let now: Option<(i64, i64)> = sqlx::query_as(MARKERS)
            .bind(conv.0)
            .bind(user.0)
            .fetch_optional(&self.reader)
            .await
            .map_err(db_err)?;
        let (read, last) = now.ok_or(StoreError::NotMember)?;
        if wanted.min(last) <= read {
            return Ok(None);
        }
        let mut tx = self.write_tx().await?;
        let mut writer = SqliteWriter::new(&mut tx);
        let now = writer.query_row(MARKERS, [conv.0, user.0], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        })?;
        let (read, last) = now.ok_or(StoreError::NotMember)?;
        let target = wanted.min(last);
        if target <= read {
            return Ok(None);
        }
        writer.execute(
            "UPDATE members SET read_seq = ?3 WHERE conv_id = ?1 AND user_id = ?2",
            [conv.0, user.0, target],
        )?;
        tx.commit()?;
        encoding::seq_from_db(target).map(Some)
    }

    async fn put_attachment(&self, blob: AttachmentBlob) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        // A blob of megabytes takes milliseconds to write: not on a runtime thread.
        let write = move || {
            SqliteWriter::new(&mut tx)
                .execute(
                    "INSERT INTO attachments (id, conv_id, uploader, name, mime, size, created_at, data) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    rusqlite::params![
                        blob.meta.id.as_str(),
                        blob.meta.conv.0,
                        blob.uploader.0,
                        &blob.meta.name,
                        &blob.meta.mime,
                        i64::try_from(blob.meta.size).unwrap_or(i64::MAX),
                        blob.created_at,
                        &blob.data[..],
                    ],
                )?;
            tx.commit()
        };
        tokio::task::spawn_blocking(write)
            .await
            .map_err(|e| StoreError::Internal(format!("attachment write task: {e}")))?
    }
}
