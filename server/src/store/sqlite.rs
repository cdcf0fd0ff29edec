//! The embedded store: one SQLite file that every process on the machine (the controller and
//! its chat nodes) opens at the same time. The rules of appending live in [`super::common`];
//! this module is the SQL and the way processes share the file.
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
//! violations become the store's own words (see [`common::constraint_error`]).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use protocol::http::RoomListing;
use protocol::model::{Attachment, ConversationSummary, Event};
use protocol::{
    AttachmentId, ClientMsgId, ConvId, DeviceId, MessageId, Millis, NodeId, Seq, UserId,
};
use sqlx::Connection;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::common::{
    self, AttachmentRow, ConvHead, ConversationRow, DeviceRow, EventColumns, EventRow, MemberCache,
    MemberRow, MessageRef, NewConversation, RoomRow, SummaryRow, UserRow, WriteOps, event_select,
};
use super::{
    Appended, AttachmentBlob, ConversationRecord, DeviceRecord, MemberRecord, NewEvent, Page,
    Store, StoreError, StoreResult, TopUp, UserRecord,
};

/// How long a connection waits for another process's lock before giving up (then the call is
/// [`StoreError::Unavailable`]).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a call waits for a connection of this process's pools.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections for reads: WAL lets them all read while one writes.
const READERS: u32 = 8;

/// The write connection's page cache, in KiB (SQLite's default is 2 MiB).
const WRITER_CACHE_KIB: u32 = 64 * 1024;

/// Prepared statements the write connection keeps (the write path has about twenty).
const WRITER_STATEMENTS: usize = 64;

/// Each read connection's page cache, in KiB.
const READER_CACHE_KIB: u32 = 256;

/// How often each process's checkpointer copies the log back into the database file. The log
/// grows by what the writers write in between (a busy writer rewrites tens of MiB of pages a
/// second), so this bounds its length.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// A log this long (frames of a page each, 4 MiB) is copied back under the writers' lock, so
/// that it can start over.
const RESTART_FRAMES: i64 = 1000;

/// Copies and flushes before the checkpointer takes the writers' lock.
const LOCK_FREE_ROUNDS: usize = 2;

/// A log this long at a checkpoint means writers outpace the checkpointer (an overload): it
/// takes the lock at once, since then the log's length comes first.
const OVERLOAD_FRAMES: i64 = 4 * RESTART_FRAMES;

/// The size the log file is cut back to after it starts over.
const LOG_SIZE_LIMIT: u64 = 64 << 20;

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

/// The file SQLite (or this store) keeps beside the database `path`: its name with `suffix`
/// appended (`-wal`, `-shm`, `.write-lock`).
fn beside(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

/// The SQLite store. Cheap to clone: the pools and the member cache are shared.
#[derive(Clone)]
pub struct SqliteStore {
    /// Reads only.
    reader: SqlitePool,
    /// This process's writes queue here, each in a `BEGIN IMMEDIATE` transaction.
    writer: Arc<tokio::sync::Mutex<WriteConn>>,
    members: Arc<MemberCache>,
    /// `<file>.write-lock`: writers of every process take it (flock) before `BEGIN IMMEDIATE`.
    write_lock: Arc<std::path::PathBuf>,
    /// Stops the checkpointer when the last handle goes.
    _checkpointer: Arc<DropGuard>,
}

/// The process's write connection and its share of the writers' file lock.
///
/// SQLite lets one writer in at a time and makes the others wait in its busy handler, which
/// sleeps 1, 2, 5, 10… ms between tries: with several node processes writing, most of a
/// commit's latency would be those sleeps. An exclusive `flock` taken first queues writers in
/// the kernel, which wakes the next one the moment the lock is let go, so the file's write lock
/// is always free when `BEGIN IMMEDIATE` asks for it.
struct WriteConn {
    conn: rusqlite::Connection,
    lock: FileLock,
    /// `BEGIN` was sent and neither `COMMIT` nor `ROLLBACK` went through: a caller went away
    /// (or failed) in the middle of a transaction. The next writer rolls it back first; until
    /// then this process keeps the file lock, so no other process meets a half-done writer.
    open: bool,
}

thread_local! {
    /// Whether writers on this thread wait for the writers' file lock in place: see
    /// [`wait_for_the_write_lock_in_place`].
    static WAIT_IN_PLACE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Lets the writes made on the calling thread wait for the writers' file lock (held by another
/// process) by blocking this thread, instead of on a thread of the blocking pool that then
/// wakes the writer. For a thread of its own whose runtime runs nothing else (the node's
/// committer): the lock is then handed over by one wake-up of the thread that writes, instead
/// of two, and is never held by a thread that waits to be scheduled while every other
/// process's writer waits for it. Within a process writers queue on the write connection
/// first, so no task of this process can hold the file lock while the thread waits.
pub fn wait_for_the_write_lock_in_place() {
    WAIT_IN_PLACE.with(|w| w.set(true));
}

/// The writers' lock file: kept open for the life of the store, locked per transaction.
enum FileLock {
    /// Open, not locked by us.
    Free(std::fs::File),
    /// Locked by us.
    Held(nix::fcntl::Flock<std::fs::File>),
    /// Not open (a wait for the lock was cancelled, or an unlock failed): opened again next time.
    Closed,
}

impl FileLock {
    /// Takes the lock: at once if nobody holds it (no thread involved), else waiting for the
    /// kernel to hand it over, on a blocking thread (or on this one, where
    /// [`wait_for_the_write_lock_in_place`] was called).
    async fn acquire(&mut self, path: &std::path::Path) -> StoreResult<()> {
        use nix::fcntl::{Flock, FlockArg};
        let unavailable = |e: &dyn std::fmt::Display| {
            StoreError::Unavailable(format!("writer lock {}: {e}", path.display()))
        };
        let file = match std::mem::replace(self, FileLock::Closed) {
            // Kept from a transaction rolled back after its caller left.
            FileLock::Held(held) => {
                *self = FileLock::Held(held);
                return Ok(());
            }
            FileLock::Free(file) => file,
            FileLock::Closed => std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)
                .map_err(|e| unavailable(&e))?,
        };
        let held = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(held) => held,
            Err((file, nix::errno::Errno::EWOULDBLOCK)) if WAIT_IN_PLACE.with(|w| w.get()) => {
                Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| unavailable(&e))?
            }
            Err((file, nix::errno::Errno::EWOULDBLOCK)) => {
                // If this wait is cancelled, the lock (taken later on that thread) is let go
                // when its result is dropped, and the file is opened again next time.
                tokio::task::spawn_blocking(move || Flock::lock(file, FlockArg::LockExclusive))
                    .await
                    .map_err(|e| StoreError::Internal(format!("writer lock task: {e}")))?
                    .map_err(|(_, e)| unavailable(&e))?
            }
            Err((file, e)) => {
                *self = FileLock::Free(file);
                return Err(unavailable(&e));
            }
        };
        *self = FileLock::Held(held);
        Ok(())
    }

    /// Lets the lock go.
    fn release(&mut self) {
        if let FileLock::Held(held) = std::mem::replace(self, FileLock::Closed) {
            match held.unlock() {
                Ok(file) => *self = FileLock::Free(file),
                // Dropping it unlocks as well as it can; the file is opened again next time.
                Err((held, e)) => {
                    tracing::warn!(error = %e, "could not unlock the SQLite writer lock");
                    drop(held);
                }
            }
        }
    }
}

impl WriteConn {
    /// Rolls back a transaction left open. Its error is only logged: a failed `ROLLBACK` means
    /// SQLite already ended the transaction (it does so by itself after some errors).
    fn roll_back(&mut self) {
        if !self.open {
            return;
        }
        if !self.conn.is_autocommit()
            && let Err(e) = self.conn.execute_batch("ROLLBACK")
        {
            tracing::warn!(error = %e, "SQLite rollback failed");
        }
        self.open = false;
    }
}

/// A write transaction: the process's write connection and the writers' file lock, both held
/// until it ends. Committed with [`WriteTx::commit`] (or [`SqliteWriter::commit`]); dropped
/// otherwise, it is rolled back, by the next writer of the process at the latest.
struct WriteTx {
    conn: tokio::sync::OwnedMutexGuard<WriteConn>,
    /// To roll back from a task of its own when dropped half-way.
    mutex: Arc<tokio::sync::Mutex<WriteConn>>,
}

impl std::ops::Deref for WriteTx {
    type Target = rusqlite::Connection;
    fn deref(&self) -> &rusqlite::Connection {
        &self.conn.conn
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut rusqlite::Connection {
        &mut self.conn.conn
    }
}

impl WriteTx {
    /// Begins the transaction (`BEGIN IMMEDIATE`: the file's write lock at once).
    fn begin(&mut self) -> StoreResult<()> {
        self.conn.open = true;
        self.conn
            .conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(write_err)
    }

    /// Commits; the transaction is over once this went through.
    fn commit(mut self) -> StoreResult<()> {
        self.commit_here()
    }

    /// Commits, keeping the connection and the file lock until dropped.
    fn commit_here(&mut self) -> StoreResult<()> {
        self.conn.conn.execute_batch("COMMIT").map_err(write_err)?;
        self.conn.open = false;
        Ok(())
    }

    /// Rolls back now (after a failed statement).
    fn roll_back(mut self) {
        self.conn.roll_back();
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if !self.conn.open {
            self.conn.lock.release();
            return;
        }
        // Dropped in the middle of a transaction (its caller went away): roll back as soon as
        // possible, keeping the file lock until then. Whichever comes first, this task or the
        // process's next writer, does it.
        let mutex = self.mutex.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    let mut conn = mutex.lock_owned().await;
                    conn.roll_back();
                    conn.lock.release();
                });
            }
            Err(_) => tracing::warn!(
                "SQLite transaction dropped outside a runtime; the next writer rolls it back"
            ),
        }
    }
}

impl SqliteStore {
    /// Opens (creating it and its directory if missing) the database file at `path`, switches
    /// it to WAL and brings its schema up to date. Any number of processes may do this at once.
    pub async fn open(path: impl AsRef<Path>) -> StoreResult<SqliteStore> {
        let path = path.as_ref();
        if path.as_os_str().is_empty() {
            return Err(StoreError::Invalid("empty SQLite path".into()));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await.map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
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
        Ok(SqliteStore {
            _checkpointer: Arc::new(checkpoints.drop_guard()),
            reader,
            writer,
            members: Arc::new(MemberCache::default()),
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

    async fn append_batch(
        &self,
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
            Ok(tx) => self.append_in(tx, batch).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(results) => results,
            Err(e) => (0..n).map(|_| Err(common::copy_error(&e))).collect(),
        }
    }

    async fn append_in(
        &self,
        mut tx: WriteTx,
        batch: Vec<NewEvent>,
    ) -> StoreResult<Vec<StoreResult<Appended>>> {
        if let Err(e) = tx.begin() {
            tx.roll_back();
            return Err(e);
        }
        let outcome = common::append_batch(&mut SqliteWriter::new(&mut tx), &self.members, batch)
            .await
            .and_then(|outcome| tx.commit_here().map(|()| outcome));
        match outcome {
            Ok(outcome) => {
                drop(tx);
                outcome.remember_members(&self.members);
                Ok(outcome.results)
            }
            Err(e) => {
                tx.roll_back();
                Err(e)
            }
        }
    }
}

/// Copies the log back into the database file every [`CHECKPOINT_EVERY`], beside the writers.
///
/// A passive checkpoint takes no lock that a writer or a reader waits for, so it copies most
/// of the log while every process goes on writing. But the log starts over from its beginning
/// only once a checkpoint has copied all of it, and with writers of three processes appending
/// meanwhile that never happens by itself: the file would grow without end. So once the log
/// is longer than [`RESTART_FRAMES`], the checkpointer takes the writers' lock (as a writer
/// would), copies the few frames written since, and lets it go; the next writer then starts
/// the log over. Every process runs one; when two meet, one finds the other busy and waits
/// for its next turn.
///
/// Every writer of the machine waits while the lock is held, so as little as possible happens
/// under it. What costs is a checkpoint's syncs, which take time in proportion to the pages
/// they flush (here 1000 pages take 15 ms, 10 take 0.3 ms): SQLite syncs the log before each
/// copy, and the database file only after a pass that copied all of the log — with writers
/// going on, the pass under the lock, which would then flush every page the passes before it
/// copied. So first the checkpointer makes rounds of copy-then-flush of its own, each shorter
/// than the one before; under the lock, the syncs flush only the last few frames and the
/// pages they change; writers that outpace those rounds get the lock taken at once, as the
/// log's length comes first. (At 8000 messages/s that took the time under the lock from 5 ms on
/// average, up to 25, to about 1.3 ms, and the p99 of a message from 12–17 ms to 3.4 ms.)
async fn checkpointer(
    options: SqliteConnectOptions,
    db_path: std::path::PathBuf,
    writer: std::sync::Weak<tokio::sync::Mutex<WriteConn>>,
    write_lock: Arc<std::path::PathBuf>,
    stop: CancellationToken,
) {
    let log_path = beside(&db_path, "-wal");
    let mut conn: Option<SqliteConnection> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(CHECKPOINT_EVERY) => {}
        }
        if conn.is_none() {
            match SqliteConnection::connect_with(&options).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::debug!(error = %e, "checkpointer cannot open the database");
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let log_frames = match passive_checkpoint(c).await {
            Ok(frames) => frames,
            Err(e) if is_busy(&e) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "checkpoint failed; reconnecting");
                conn = None;
                continue;
            }
        };
        if log_frames < RESTART_FRAMES {
            continue;
        }
        // Each round copies what came in during the one before and flushes it: a round
        // takes less time than the one before, so less comes in during it. Unless the
        // writers outpace the copies (an overload): then waiting only lengthens the log.
        let rounds = if log_frames < OVERLOAD_FRAMES {
            LOCK_FREE_ROUNDS
        } else {
            0
        };
        for _ in 0..rounds {
            match passive_checkpoint(c).await {
                Ok(now) if now - log_frames < RESTART_FRAMES => {}
                Ok(_) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "checkpoint failed");
                    break;
                }
            }
            if let Err(e) = sync_files(&[&log_path, &db_path]).await {
                tracing::debug!(error = %e, "checkpointer cannot sync the files");
                break;
            }
        }
        let Some(writer) = writer.upgrade() else {
            break;
        };
        let mut w = tokio::select! {
            _ = stop.cancelled() => break,
            w = writer.lock_owned() => w,
        };
        w.roll_back();
        if let Err(e) = w.lock.acquire(&write_lock).await {
            tracing::debug!(error = %e, "checkpointer cannot take the writers' lock");
            continue;
        }
        let locked = std::time::Instant::now();
        // Nobody writes now: this copies what came since the pass above, and all of it.
        if let Err(e) = passive_checkpoint(c).await
            && !is_busy(&e)
        {
            tracing::debug!(error = %e, "checkpoint under the writers' lock failed");
        }
        w.lock.release();
        metrics::histogram!("chat_store_checkpoint_locked_seconds")
            .record(locked.elapsed().as_secs_f64());
    }
    if let Some(c) = conn {
        let _ = c.close().await;
    }
}

/// One passive checkpoint; the log's length in frames.
async fn passive_checkpoint(conn: &mut SqliteConnection) -> Result<i64, sqlx::Error> {
    let (_busy, log, _copied) =
        sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(conn)
            .await?;
    Ok(log)
}

/// Flushes files' written pages to the disk (on a blocking thread: it takes milliseconds).
async fn sync_files(paths: &[&Path]) -> std::io::Result<()> {
    let paths: Vec<std::path::PathBuf> = paths.iter().map(|p| p.to_path_buf()).collect();
    tokio::task::spawn_blocking(move || paths.iter().try_for_each(|p| kept_open(p)?.sync_data()))
        .await
        .map_err(std::io::Error::other)?
}

/// A descriptor of `path` that stays open for the life of the process.
///
/// SQLite's locks on the database file are POSIX advisory locks, which belong to the process
/// and the file, not to a descriptor: closing *any* descriptor of the file drops every lock
/// the process's connections hold on it. Another process could then believe it is the file's
/// last user, and checkpoint and remove the log while this one's writers still append to it,
/// losing committed events (seen once in a test of four processes, when this closed what it
/// had opened to flush). So what is opened here is never closed; a file replaced under the
/// same name (a log removed and made again) gets a second descriptor, and the first is kept.
fn kept_open(path: &Path) -> std::io::Result<Arc<std::fs::File>> {
    use std::os::unix::fs::MetadataExt;
    type Files =
        std::sync::Mutex<std::collections::HashMap<std::path::PathBuf, Arc<std::fs::File>>>;
    static FILES: std::sync::OnceLock<Files> = std::sync::OnceLock::new();
    let mut files = FILES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let now = std::fs::metadata(path)?;
    if let Some(file) = files.get(path)
        && file
            .metadata()
            .is_ok_and(|m| m.ino() == now.ino() && m.dev() == now.dev())
    {
        return Ok(file.clone());
    }
    let file = Arc::new(std::fs::File::open(path)?);
    if let Some(replaced) = files.insert(path.to_owned(), file.clone()) {
        // Dropping it would close it.
        std::mem::forget(replaced);
    }
    Ok(file)
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
    common::apply_migrations(&mut *tx, &MIGRATOR, "SQLite", db_err).await?;
    tx.commit().await.map_err(db_err)
}

/// SQLite's primary result codes that mean "not now" rather than "never".
const SQLITE_BUSY: i32 = 5;
const SQLITE_LOCKED: i32 = 6;
const SQLITE_IOERR: i32 = 10;
const SQLITE_FULL: i32 = 13;
const SQLITE_CANTOPEN: i32 = 14;
const SQLITE_PROTOCOL: i32 = 15;

/// The primary result code of a database error (sqlx reports the extended one).
fn primary_code(e: &sqlx::Error) -> Option<i32> {
    let sqlx::Error::Database(db) = e else {
        return None;
    };
    db.code()?.parse::<i32>().ok().map(|code| code & 0xff)
}

fn is_busy(e: &sqlx::Error) -> bool {
    matches!(primary_code(e), Some(SQLITE_BUSY | SQLITE_LOCKED))
}

/// The store's word for a failed statement.
fn db_err(e: sqlx::Error) -> StoreError {
    if let Some(mapped) = common::constraint_error(&e) {
        return mapped;
    }
    if matches!(
        primary_code(&e),
        Some(
            SQLITE_BUSY
                | SQLITE_LOCKED
                | SQLITE_IOERR
                | SQLITE_FULL
                | SQLITE_CANTOPEN
                | SQLITE_PROTOCOL
        )
    ) {
        return StoreError::Unavailable(e.to_string());
    }
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
        other => StoreError::Internal(other.to_string()),
    }
}

// ---------------------------------------------------------------------------------------------
// The write connection

/// Opens the process's write connection (the file exists and is in WAL mode by now).
///
/// Its cache holds a whole batch's pages, so that none is spilled to the log before the
/// commit. It never checkpoints: a commit that crosses the log's threshold would copy it back
/// and sync the file while every writer of every process waits, so the checkpointer task does
/// that beside them.
fn open_writer(path: &Path) -> StoreResult<rusqlite::Connection> {
    use rusqlite::OpenFlags;
    let conn = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(write_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(write_err)?;
    conn.execute_batch(&format!(
        "PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL; PRAGMA temp_store = MEMORY; \
         PRAGMA cache_size = -{WRITER_CACHE_KIB}; PRAGMA wal_autocheckpoint = 0; \
         PRAGMA journal_size_limit = {LOG_SIZE_LIMIT};"
    ))
    .map_err(write_err)?;
    conn.set_prepared_statement_cache_capacity(WRITER_STATEMENTS);
    Ok(conn)
}

/// The store's word for a failed write statement (the write connection's counterpart of
/// [`db_err`], with the same mapping).
fn write_err(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    use rusqlite::ffi;
    if let rusqlite::Error::SqliteFailure(failure, _) = &e {
        match failure.code {
            ErrorCode::ConstraintViolation => {
                return match failure.extended_code {
                    ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                        StoreError::Conflict("already exists".into())
                    }
                    // Every foreign key names something the caller referred to.
                    ffi::SQLITE_CONSTRAINT_FOREIGNKEY => StoreError::NotFound,
                    ffi::SQLITE_CONSTRAINT_NOTNULL | ffi::SQLITE_CONSTRAINT_CHECK => {
                        StoreError::Invalid("refused by the schema".into())
                    }
                    _ => StoreError::Internal(e.to_string()),
                };
            }
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::SystemIoFailure
            | ErrorCode::DiskFull
            | ErrorCode::CannotOpen
            | ErrorCode::FileLockingProtocolFailed => {
                return StoreError::Unavailable(e.to_string());
            }
            _ => {}
        }
    }
    StoreError::Internal(e.to_string())
}

/// A write transaction as the shared write path drives it (see [`WriteOps`]): each statement
/// runs at once on the calling thread, so the trait's defaults (a statement per conversation
/// at a batch's start and end) cost no round trips.
struct SqliteWriter<'t> {
    conn: &'t mut rusqlite::Connection,
}

impl<'t> SqliteWriter<'t> {
    /// Over a transaction begun already.
    fn new(tx: &'t mut WriteTx) -> Self {
        SqliteWriter { conn: &mut *tx }
    }

    /// Runs a cached statement that changes rows; how many it changed.
    fn execute(&mut self, sql: &str, params: impl rusqlite::Params) -> StoreResult<usize> {
        self.conn
            .prepare_cached(sql)
            .and_then(|mut stmt| stmt.execute(params))
            .map_err(write_err)
    }

    /// Runs a cached query for at most one row.
    fn query_row<T>(
        &mut self,
        sql: &str,
        params: impl rusqlite::Params,
        row: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> StoreResult<Option<T>> {
        use rusqlite::OptionalExtension;
        self.conn
            .prepare_cached(sql)
            .and_then(|mut stmt| stmt.query_row(params, row).optional())
            .map_err(write_err)
    }
}

impl WriteOps for SqliteWriter<'_> {
    // Read from the events (see migration 0003): only a membership change writes the row.
    const HEADS_IN_ROW: bool = false;

    async fn event_by_client_id(
        &mut self,
        sender: UserId,
        client_id: &ClientMsgId,
    ) -> StoreResult<Option<Event>> {
        self.query_row(
            concat!(event_select!(), " WHERE e.sender = ?1 AND e.client_id = ?2"),
            rusqlite::params![sender.0, client_id.as_str()],
            EventRow::from_sqlite,
        )?
        .map(EventRow::into_event)
        .transpose()
    }

    async fn conv_head(&mut self, conv: ConvId) -> StoreResult<Option<ConvHead>> {
        let row = self.query_row(
            concat!(
                "SELECT kind, is_public, ",
                last_seq_of!("conversations.id"),
                ", member_epoch FROM conversations WHERE id = ?1"
            ),
            [conv.0],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, bool>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            },
        )?;
        let Some((kind, public, last_seq, member_epoch)) = row else {
            return Ok(None);
        };
        Ok(Some(ConvHead {
            kind: common::parse_conv_kind(&kind)?,
            public,
            last_seq: common::seq_from_db(last_seq)?,
            // Not kept here: read from the events when a list is made (see the schema).
            last_msg_seq: 0,
            last_activity: 0,
            member_epoch,
        }))
    }

    async fn member_ids(&mut self, conv: ConvId) -> StoreResult<Vec<UserId>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT user_id FROM members WHERE conv_id = ?1 ORDER BY user_id")
            .map_err(write_err)?;
        let ids = stmt
            .query_map([conv.0], |r| r.get::<_, i64>(0).map(UserId))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<UserId>>>())
            .map_err(write_err)?;
        Ok(ids)
    }

    async fn user_exists(&mut self, user: UserId) -> StoreResult<bool> {
        let found = self.query_row("SELECT 1 FROM users WHERE id = ?1", [user.0], |_| Ok(()))?;
        Ok(found.is_some())
    }

    async fn attachment_meta(&mut self, id: &AttachmentId) -> StoreResult<Option<Attachment>> {
        let row = self.query_row(
            "SELECT name, mime, size, conv_id FROM attachments WHERE id = ?1",
            [id.as_str()],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            },
        )?;
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
        let row = self.query_row(
            "SELECT conv_id, body_type, sender, deleted, attachment_id FROM events WHERE id = ?1",
            [id.0],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, bool>(3)?,
                    r.get::<_, Option<String>>(4)?,
                ))
            },
        )?;
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
        let c = EventColumns::of(&event.body);
        let inserted = self.execute(
            "INSERT INTO events (id, conv_id, seq, at, sender, device, client_id, origin, body_type, \
             msg_kind, member_action, member_user, text, attachment_id, reply_to, target) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16) \
             ON CONFLICT DO NOTHING",
            rusqlite::params![
                event.id.0,
                event.conv.0,
                common::seq_to_db(event.seq),
                event.at,
                event.sender.0,
                event.device.as_ref().map(DeviceId::as_str),
                event.client_id.as_ref().map(ClientMsgId::as_str),
                origin.as_str(),
                c.body_type,
                c.msg_kind,
                c.member_action,
                c.member_user,
                c.text,
                c.attachment_id,
                c.reply_to,
                c.target,
            ],
        )?;
        Ok(inserted == 1)
    }

    async fn edit_message(&mut self, id: MessageId, text: &str, at: Millis) -> StoreResult<()> {
        self.execute(
            "UPDATE events SET text = ?2, edited_at = ?3 WHERE id = ?1",
            rusqlite::params![id.0, text, at],
        )?;
        Ok(())
    }

    async fn delete_message(
        &mut self,
        id: MessageId,
        attachment: Option<&AttachmentId>,
    ) -> StoreResult<()> {
        self.execute(
            "UPDATE events SET text = '', attachment_id = NULL, deleted = TRUE WHERE id = ?1",
            [id.0],
        )?;
        self.execute(
            "UPDATE events SET text = '' WHERE target = ?1 AND body_type = 'edit'",
            [id.0],
        )?;
        if let Some(attachment) = attachment {
            self.execute(
                "DELETE FROM attachments WHERE id = ?1 \
                 AND NOT EXISTS (SELECT 1 FROM events WHERE attachment_id = ?1)",
                [attachment.as_str()],
            )?;
        }
        Ok(())
    }

    async fn add_member(&mut self, conv: ConvId, user: UserId, seq: Seq) -> StoreResult<()> {
        self.execute(
            "INSERT INTO members (conv_id, user_id, joined_seq, read_seq) VALUES (?1, ?2, ?3, ?3)",
            rusqlite::params![conv.0, user.0, common::seq_to_db(seq)],
        )?;
        Ok(())
    }

    async fn remove_member(&mut self, conv: ConvId, user: UserId) -> StoreResult<()> {
        self.execute(
            "DELETE FROM members WHERE conv_id = ?1 AND user_id = ?2",
            [conv.0, user.0],
        )?;
        Ok(())
    }

    async fn save_head(&mut self, conv: ConvId, head: &ConvHead) -> StoreResult<()> {
        // Only the epoch is kept in the row; the rest of the head is the events themselves.
        self.execute(
            "UPDATE conversations SET member_epoch = ?2 WHERE id = ?1",
            [conv.0, head.member_epoch],
        )?;
        Ok(())
    }

    async fn direct_between(&mut self, lo: UserId, hi: UserId) -> StoreResult<Option<ConvId>> {
        let id = self.query_row(
            "SELECT id FROM conversations WHERE direct_lo = ?1 AND direct_hi = ?2",
            [lo.0, hi.0],
            |r| r.get::<_, i64>(0),
        )?;
        Ok(id.map(ConvId))
    }

    async fn insert_conversation(
        &mut self,
        conv: &NewConversation<'_>,
    ) -> StoreResult<Option<ConvId>> {
        let id = self.query_row(
            "INSERT INTO conversations (kind, name, is_public, created_by, created_at, \
             member_epoch, direct_lo, direct_hi) \
             VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6, ?7) \
             ON CONFLICT (direct_lo, direct_hi) DO NOTHING RETURNING id",
            rusqlite::params![
                common::conv_kind_str(conv.kind),
                conv.name,
                conv.public,
                conv.created_by.0,
                conv.created_at,
                conv.direct.map(|(lo, _)| lo.0),
                conv.direct.map(|(_, hi)| hi.0),
            ],
            |r| r.get::<_, i64>(0),
        )?;
        Ok(id.map(ConvId))
    }
}

// ---------------------------------------------------------------------------------------------
// The contract

#[async_trait]
impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        now: Millis,
    ) -> StoreResult<UserRecord> {
        let mut tx = self.write_tx().await?;
        let id = SqliteWriter::new(&mut tx)
            .query_row(
                "INSERT INTO users (username, password_hash, created_at) VALUES (?1, ?2, ?3) \
                 RETURNING id",
                rusqlite::params![username, password_hash, now],
                |r| r.get::<_, i64>(0),
            )
            .map_err(|e| match e {
                StoreError::Conflict(_) => {
                    StoreError::Conflict(format!("username {username:?} is taken"))
                }
                e => e,
            })?
            .ok_or_else(|| StoreError::Internal("the new user's id did not come back".into()))?;
        tx.commit()?;
        Ok(UserRecord {
            id: UserId(id),
            username: username.to_owned(),
            password_hash: password_hash.to_owned(),
            created_at: now,
        })
    }

    async fn user_by_name(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        let row = sqlx::query_as::<_, UserRow>(
            "SELECT id, username, password_hash, created_at FROM users WHERE username = $1",
        )
        .bind(username)
        .fetch_optional(&self.reader)
        .await
        .map_err(db_err)?;
        Ok(row.map(Into::into))
    }

    async fn user_by_id(&self, id: UserId) -> StoreResult<Option<UserRecord>> {
        let row = sqlx::query_as::<_, UserRow>(
            "SELECT id, username, password_hash, created_at FROM users WHERE id = $1",
        )
        .bind(id.0)
        .fetch_optional(&self.reader)
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
                rusqlite::params![user.0, device.as_str(), name, now],
                DeviceRow::from_sqlite,
            )?
            .ok_or_else(|| StoreError::Internal("the logged-in device did not come back".into()))?;
        tx.commit()?;
        row.into_record()
    }

    async fn device(&self, user: UserId, device: &DeviceId) -> StoreResult<Option<DeviceRecord>> {
        sqlx::query_as::<_, DeviceRow>(
            "SELECT user_id, device_id, name, created_at, last_login, revoked, generation \
             FROM devices WHERE user_id = $1 AND device_id = $2",
        )
        .bind(user.0)
        .bind(device.as_str())
        .fetch_optional(&self.reader)
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
        .fetch_all(&self.reader)
        .await
        .map_err(db_err)?
        .into_iter()
        .map(DeviceRow::into_record)
        .collect()
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

    async fn open_direct(
        &self,
        a: UserId,
        b: UserId,
        created_id: MessageId,
        origin: &NodeId,
        now: Millis,
    ) -> StoreResult<(ConvId, Option<Appended>)> {
        if a != b {
            // Most opens find the conversation: answer those without queueing for the write lock.
            let (lo, hi) = if a < b { (a, b) } else { (b, a) };
            let existing: Option<i64> = sqlx::query_scalar(
                "SELECT id FROM conversations WHERE direct_lo = $1 AND direct_hi = $2",
            )
            .bind(lo.0)
            .bind(hi.0)
            .fetch_optional(&self.reader)
            .await
            .map_err(db_err)?;
            if let Some(id) = existing {
                return Ok((ConvId(id), None));
            }
        }
        let mut tx = self.write_tx().await?;
        let opened = common::open_direct(
            &mut SqliteWriter::new(&mut tx),
            a,
            b,
            created_id,
            origin,
            now,
        )
        .await?;
        tx.commit()?;
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
        let mut tx = self.write_tx().await?;
        let created = common::create_room(
            &mut SqliteWriter::new(&mut tx),
            creator,
            name,
            public,
            created_id,
            origin,
            now,
        )
        .await?;
        tx.commit()?;
        Ok(created)
    }

    async fn append(&self, batch: Vec<NewEvent>) -> Vec<StoreResult<Appended>> {
        if batch.is_empty() {
            return Vec::new();
        }
        self.append_batch(batch, &mut |_| {}).await
    }

    async fn append_topped_up(
        &self,
        batch: Vec<NewEvent>,
        top_up: TopUp<'_>,
    ) -> Vec<StoreResult<Appended>> {
        self.append_batch(batch, top_up).await
    }

    async fn conversation(&self, conv: ConvId) -> StoreResult<Option<ConversationRecord>> {
        sqlx::query_as::<_, ConversationRow>(concat!(
            "SELECT id, kind, name, is_public, ",
            last_seq_of!("conversations.id"),
            " AS last_seq, created_by, created_at FROM conversations WHERE id = $1"
        ))
        .bind(conv.0)
        .fetch_optional(&self.reader)
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
        .fetch_optional(&self.reader)
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
        .fetch_all(&self.reader)
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
                .fetch_optional(&self.reader)
                .await
                .map_err(db_err)?;
        let epoch = epoch.ok_or(StoreError::NotFound)?;
        if let Some(members) = self.members.get(conv, epoch) {
            return Ok(members);
        }
        // Epoch and list in one statement, so the list cached is the one of that epoch.
        let rows: Vec<(i64, Option<i64>)> = sqlx::query_as(
            "SELECT c.member_epoch, m.user_id FROM conversations c \
             LEFT JOIN members m ON m.conv_id = c.id WHERE c.id = $1 ORDER BY m.user_id",
        )
        .bind(conv.0)
        .fetch_all(&self.reader)
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
        .fetch_all(&self.reader)
        .await
        .map_err(db_err)?;
        Ok(ids.into_iter().map(UserId).collect())
    }

    async fn conversations_of(&self, user: UserId) -> StoreResult<Vec<ConversationSummary>> {
        // Two statements whatever the number of conversations, in one read transaction so that
        // the summaries and their last messages are of the same moment.
        let mut tx = self.reader.begin().await.map_err(db_err)?;
        let rows = sqlx::query_as::<_, SummaryRow>(concat!(
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
        ))
        .bind(user.0)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        let last = sqlx::query_as::<_, EventRow>(concat!(
            event_select!(),
            " JOIN members m ON m.conv_id = e.conv_id WHERE m.user_id = $1 AND e.seq = \
               (SELECT l.seq FROM events l WHERE l.conv_id = m.conv_id AND l.body_type = 'message' \
                ORDER BY l.seq DESC LIMIT 1)"
        ))
        .bind(user.0)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;

        let mut last_by_conv = std::collections::HashMap::with_capacity(last.len());
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
        // instr, not LIKE: the query is matched as typed, `%` and `_` included.
        let rows = sqlx::query_as::<_, RoomRow>(
            "SELECT c.id, c.name, (SELECT COUNT(*) FROM members x WHERE x.conv_id = c.id) AS member_count \
             FROM conversations c \
             WHERE c.kind = 'room' AND c.is_public = TRUE AND instr(lower(c.name), lower($1)) > 0 \
             ORDER BY c.name, c.id LIMIT $2",
        )
        .bind(query)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
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
        let rows = query.fetch_all(&self.reader).await.map_err(db_err)?;
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
        let mut tx = self.reader.begin().await.map_err(db_err)?;
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

        // One member query per conversation involved (a recovery path, not a hot one).
        let mut members_of = std::collections::HashMap::<ConvId, Vec<(UserId, Seq)>>::new();
        for event in &events {
            if members_of.contains_key(&event.conv) {
                continue;
            }
            let rows: Vec<(i64, i64)> =
                sqlx::query_as("SELECT user_id, joined_seq FROM members WHERE conv_id = $1")
                    .bind(event.conv.0)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db_err)?;
            let members = rows
                .into_iter()
                .map(|(u, j)| Ok((UserId(u), common::seq_from_db(j)?)))
                .collect::<StoreResult<Vec<_>>>()?;
            members_of.insert(event.conv, members);
        }
        tx.commit().await.map_err(db_err)?;

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
        const MARKERS: &str = concat!(
            "SELECT m.read_seq, ",
            last_seq_of!("m.conv_id"),
            " FROM members m WHERE m.conv_id = $1 AND m.user_id = $2"
        );
        let wanted = common::seq_to_db(seq);
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
        common::seq_from_db(target).map(Some)
    }

    async fn put_attachment(&self, blob: AttachmentBlob) -> StoreResult<()> {
        if blob.meta.size != blob.data.len() as u64 {
            return Err(StoreError::Invalid(format!(
                "attachment says {} bytes but has {}",
                blob.meta.size,
                blob.data.len()
            )));
        }
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
                )
                .map_err(|e| match e {
                    StoreError::Conflict(_) => StoreError::Conflict(format!(
                        "attachment {} exists already",
                        blob.meta.id
                    )),
                    e => e,
                })?;
            tx.commit()
        };
        tokio::task::spawn_blocking(write)
            .await
            .map_err(|e| StoreError::Internal(format!("attachment write task: {e}")))?
    }

    async fn attachment(&self, id: &AttachmentId) -> StoreResult<Option<AttachmentBlob>> {
        sqlx::query_as::<_, AttachmentRow>(
            "SELECT id, conv_id, uploader, name, mime, size, created_at, data FROM attachments WHERE id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(&self.reader)
        .await
        .map_err(db_err)?
        .map(AttachmentRow::into_blob)
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    use super::*;
    use crate::store::SharedStore;
    use crate::store::suite::TestDb;

    /// A fresh file in a temporary directory, removed with it.
    struct TempDb {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
    }

    #[async_trait]
    impl TestDb for TempDb {
        async fn open(&self) -> anyhow::Result<SharedStore> {
            Ok(Arc::new(SqliteStore::open(&self.path).await?))
        }
    }

    async fn temp_db() -> anyhow::Result<TempDb> {
        let dir = tempfile::tempdir()?;
        // A directory that does not exist yet: open creates it.
        let path = dir.path().join("data").join("chat.db");
        Ok(TempDb { _dir: dir, path })
    }

    crate::store::suite::store_suite!(temp_db());

    /// Many handles (as many processes would) open a file that does not exist yet at once: all
    /// succeed, the file is in WAL mode and the schema was applied once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn many_handles_create_one_file_at_once() -> anyhow::Result<()> {
        let db = temp_db().await?;
        let opens = (0..8).map(|_| SqliteStore::open(db.path.clone()));
        let stores = futures::future::try_join_all(opens).await?;
        for store in &stores {
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
                .fetch_one(&store.reader)
                .await?;
            assert_eq!(mode, "wal");
            let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
                .fetch_one(&store.reader)
                .await?;
            assert_eq!(fk, 1);
        }
        let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
            .fetch_one(&stores[0].reader)
            .await?;
        assert_eq!(applied as usize, MIGRATOR.iter().count());
        Ok(())
    }

    /// A file written before conversations' heads came from their events (schema of
    /// migrations 0001 and 0002, with history in it) opens, and its conversations keep their
    /// last seq, last message, unread count and order; the next append takes the next seq.
    #[tokio::test]
    async fn a_file_of_the_schema_before_heads_from_events_is_upgraded() -> anyhow::Result<()> {
        let db = temp_db().await?;
        let old = tempfile::tempdir()?;
        for (name, sql) in [
            (
                "0001_init.sql",
                include_str!("../../migrations/sqlite/0001_init.sql"),
            ),
            (
                "0002_append_friendly_indexes.sql",
                include_str!("../../migrations/sqlite/0002_append_friendly_indexes.sql"),
            ),
        ] {
            std::fs::write(old.path().join(name), sql)?;
        }
        let dir = db.path.parent().context("the database's directory")?;
        std::fs::create_dir_all(dir)?;
        let options = SqliteConnectOptions::new()
            .filename(&db.path)
            .create_if_missing(true);
        let mut conn = SqliteConnection::connect_with(&options).await?;
        Migrator::new(old.path()).await?.run(&mut conn).await?;
        // Alice (1) and Bob (2); two direct conversations, each with its created event (1) and
        // messages: conversation 1 with Bob's "one" (2) and "two" (3); conversation 2, with
        // Carol (3), with Carol's "later" (2), more recent.
        for statement in [
            "INSERT INTO users (id, username, password_hash, created_at) VALUES \
               (1, 'alice', 'x', 1), (2, 'bob', 'x', 1), (3, 'carol', 'x', 1)",
            "INSERT INTO conversations (id, kind, created_by, created_at, last_seq, last_msg_seq, \
               last_activity, member_epoch, direct_lo, direct_hi) VALUES \
               (1, 'direct', 1, 10, 3, 3, 30, 1, 1, 2), (2, 'direct', 1, 10, 2, 2, 40, 1, 1, 3)",
            "INSERT INTO members (conv_id, user_id, joined_seq, read_seq) VALUES \
               (1, 1, 1, 1), (1, 2, 1, 3), (2, 1, 1, 2), (2, 3, 1, 2)",
            "INSERT INTO events (id, conv_id, seq, at, sender, origin, body_type, member_action, \
               member_user) VALUES (100, 1, 1, 10, 1, 'n1', 'member', 'created', 1), \
               (200, 2, 1, 10, 1, 'n1', 'member', 'created', 1)",
            "INSERT INTO events (id, conv_id, seq, at, sender, origin, body_type, msg_kind, text) \
               VALUES (101, 1, 2, 20, 2, 'n1', 'message', 'text', 'one'), \
               (102, 1, 3, 30, 2, 'n1', 'message', 'text', 'two'), \
               (201, 2, 2, 40, 3, 'n1', 'message', 'text', 'later')",
        ] {
            sqlx::query(statement).execute(&mut conn).await?;
        }
        conn.close().await?;

        let store = SqliteStore::open(&db.path).await?;
        let list = store.conversations_of(UserId(1)).await?;
        let seen: Vec<_> = list
            .iter()
            .map(|c| {
                (
                    c.id.0,
                    c.last_seq,
                    c.unread,
                    c.last_message.as_ref().map(|e| e.seq),
                )
            })
            .collect();
        assert_eq!(seen, vec![(2, 2, 0, Some(2)), (1, 3, 2, Some(3))]);
        let record = store
            .conversation(ConvId(1))
            .await?
            .context("conversation 1")?;
        assert_eq!(record.last_seq, 3);

        let appended = store
            .append(vec![NewEvent {
                conv: ConvId(1),
                id: MessageId(103),
                at: 50,
                sender: UserId(1),
                device: None,
                client_id: None,
                body: crate::store::NewBody::Message {
                    kind: protocol::model::MessageKind::Text,
                    text: "three".into(),
                    attachment: None,
                    reply_to: None,
                },
                origin: NodeId::new("n2")?,
            }])
            .await
            .into_iter()
            .next()
            .context("one result")??;
        assert_eq!(appended.event.seq, 4);
        let list = store.conversations_of(UserId(2)).await?;
        assert_eq!(list[0].last_seq, 4);
        assert_eq!(list[0].unread, 1);
        assert_eq!(list[0].last_message.as_ref().map(|e| e.seq), Some(4));
        Ok(())
    }

    /// Where [`child_process_appends`] finds its database, when run by
    /// [`processes_share_one_file`].
    const CHILD_DB: &str = "CHAT_STORE_TEST_CHILD_DB";
    /// When the children start appending (Unix ms), so that they all write at once.
    const CHILD_START: &str = "CHAT_STORE_TEST_CHILD_START";
    const CHILD_PROCESSES: usize = 4;
    const CHILD_EVENTS: usize = 300;

    fn unix_ms() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }

    /// Real processes, not handles in one process (SQLite shares locks between a process's
    /// connections, so only separate processes test the file locks): four copies of this test
    /// binary start at once on a file that does not exist yet, each creates it or finds it,
    /// meets the others in one direct conversation and, all at the same moment, appends to it
    /// in batches of 1 to 4.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn processes_share_one_file() -> anyhow::Result<()> {
        let db = temp_db().await?;
        let exe = std::env::current_exe()?;
        let test = format!(
            "{}::child_process_appends",
            module_path!().split_once("::").map_or("", |m| m.1)
        );
        let start = unix_ms() + 2_000;
        let mut children = Vec::new();
        for _ in 0..CHILD_PROCESSES {
            let child = tokio::process::Command::new(&exe)
                .args([
                    "--exact",
                    &test,
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_DB, &db.path)
                .env(CHILD_START, start.to_string())
                .kill_on_drop(true)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()?;
            children.push(child);
        }
        for child in children {
            let out =
                tokio::time::timeout(Duration::from_secs(120), child.wait_with_output()).await??;
            anyhow::ensure!(
                out.status.success(),
                "child failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }

        let store = SqliteStore::open(&db.path).await?;
        let (hub, spoke) = child_users(&store).await?;
        let (conv, created) = store
            .open_direct(hub, spoke, MessageId(1), &NodeId::new("parent")?, 0)
            .await?;
        assert!(created.is_none(), "the children made it");
        let (events, _) = store.events(conv, Page::After(0), 10_000).await?;
        let total = 1 + CHILD_PROCESSES * CHILD_EVENTS;
        let seqs: Vec<Seq> = events.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (1..=total as Seq).collect::<Vec<_>>(),
            "one conversation, no gap, no repeat"
        );
        let client_ids: std::collections::HashSet<_> =
            events.iter().filter_map(|e| e.client_id.clone()).collect();
        assert_eq!(client_ids.len(), total - 1, "each process's events once");
        Ok(())
    }

    /// The two users the child processes meet as (created by whichever child comes first).
    async fn child_users(store: &SqliteStore) -> anyhow::Result<(UserId, UserId)> {
        let mut ids = Vec::new();
        for name in ["hub", "spoke"] {
            match store.create_user(name, "x", 0).await {
                Ok(user) => ids.push(user.id),
                Err(StoreError::Conflict(_)) => {
                    ids.push(
                        store
                            .user_by_name(name)
                            .await?
                            .context("a user that exists")?
                            .id,
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok((ids[0], ids[1]))
    }

    /// One child of [`processes_share_one_file`]; does nothing when run otherwise.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "run in child processes by processes_share_one_file"]
    async fn child_process_appends() -> anyhow::Result<()> {
        let Some(path) = std::env::var_os(CHILD_DB) else {
            return Ok(());
        };
        let store = SqliteStore::open(&path).await?;
        let (hub, spoke) = child_users(&store).await?;
        let me = std::process::id();
        let origin = NodeId::new(format!("child-{me}"))?;
        // Ids unique across processes: the pid in the high bits.
        let id = |n: usize| MessageId((i64::from(me) << 24) | n as i64);
        let (conv, _) = store.open_direct(hub, spoke, id(0), &origin, 0).await?;
        let start: i64 = std::env::var(CHILD_START)?.parse()?;
        tokio::time::sleep(Duration::from_millis(
            u64::try_from(start - unix_ms()).unwrap_or(0),
        ))
        .await;
        let mut sent = 0;
        let mut last_seq = 0;
        while sent < CHILD_EVENTS {
            let size = (sent % 4 + 1).min(CHILD_EVENTS - sent);
            let batch = (sent..sent + size)
                .map(|n| {
                    Ok(NewEvent {
                        conv,
                        id: id(n + 1),
                        at: n as i64,
                        sender: if n % 2 == 0 { hub } else { spoke },
                        device: None,
                        client_id: Some(ClientMsgId::new(format!("p{me}-{n}"))?),
                        body: crate::store::NewBody::Message {
                            kind: protocol::model::MessageKind::Text,
                            text: format!("from {me}: {n}"),
                            attachment: None,
                            reply_to: None,
                        },
                        origin: origin.clone(),
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            for result in store.append(batch).await {
                let appended = result?;
                anyhow::ensure!(
                    !appended.duplicate && appended.event.seq > last_seq,
                    "seqs go up"
                );
                last_seq = appended.event.seq;
            }
            sent += size;
        }
        Ok(())
    }

    /// With writers that never pause (two handles, as two processes would), the log still
    /// starts over, again and again, while they write. (It starts over only after a checkpoint
    /// copied all of it, which needs a moment without writers.) How long the log file gets
    /// depends on how fast the writers are against the checkpointer, so what is counted is
    /// the restarts: the log's length in frames, from the header SQLite keeps in the `-shm`
    /// file, falling back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_starts_over_while_writers_keep_writing() -> anyhow::Result<()> {
        let db = temp_db().await?;
        let first = SqliteStore::open(&db.path).await?;
        let second = SqliteStore::open(&db.path).await?;
        let origin = NodeId::new("writer")?;
        let mut convs = Vec::new();
        for i in 0..40 {
            let a = first.create_user(&format!("a{i}"), "x", 0).await?.id;
            let b = first.create_user(&format!("b{i}"), "x", 0).await?.id;
            let (conv, _) = first
                .open_direct(a, b, MessageId(i + 1), &origin, 0)
                .await?;
            convs.push((conv, a));
        }
        let convs = Arc::new(convs);
        // Each batch rewrites pages all over the file, so 16 MiB of data take the log past the
        // checkpointer's restart threshold many times over.
        const DATA: u64 = 16 << 20;
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        let shm = std::fs::File::open(beside(&db.path, "-shm"))?;
        let done = CancellationToken::new();
        // The wal-index header starts the `-shm` file: `mxFrame`, the frames in the log, is
        // the native-endian u32 at byte 16. A torn read can only add or hide one drop.
        let sampler = tokio::spawn({
            let done = done.clone();
            async move {
                use std::os::unix::fs::FileExt;
                let (mut restarts, mut last) = (0u32, 0u32);
                let mut frames = [0u8; 4];
                while !done.is_cancelled() {
                    shm.read_exact_at(&mut frames, 16)?;
                    let now = u32::from_ne_bytes(frames);
                    if now < last {
                        restarts += 1;
                    }
                    last = now;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                std::io::Result::Ok(restarts)
            }
        });
        let mut writers = Vec::new();
        for (w, store) in [first, second].into_iter().enumerate() {
            let convs = convs.clone();
            let origin = origin.clone();
            let db_path = db.path.clone();
            writers.push(tokio::spawn(async move {
                let mut n: i64 = 0;
                while std::fs::metadata(&db_path).map_or(0, |m| m.len()) < DATA
                    && std::time::Instant::now() < deadline
                {
                    let batch = (0..32)
                        .map(|_| {
                            n += 1;
                            let (conv, sender) = convs[(n as usize * 7 + w) % convs.len()];
                            Ok(NewEvent {
                                conv,
                                id: MessageId(((w as i64 + 1) << 40) | n),
                                at: n,
                                sender,
                                device: None,
                                client_id: Some(ClientMsgId::new(format!("w{w}-{n}"))?),
                                body: crate::store::NewBody::Message {
                                    kind: protocol::model::MessageKind::Text,
                                    text: "x".repeat(200),
                                    attachment: None,
                                    reply_to: None,
                                },
                                origin: origin.clone(),
                            })
                        })
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    for r in store.append(batch).await {
                        r?;
                    }
                }
                anyhow::Ok(())
            }));
        }
        for w in writers {
            w.await??;
        }
        done.cancel();
        let restarts = sampler.await??;
        let data = std::fs::metadata(&db.path).map_or(0, |m| m.len());
        assert!(data >= DATA, "the writers stopped early: {data} bytes");
        assert!(
            restarts >= 2,
            "the log started over {restarts} times while {data} bytes of data were written"
        );
        Ok(())
    }

    /// The checkpointer flushes through one descriptor per file that it never closes (closing
    /// one would drop SQLite's locks); a file made again under the same name gets its own.
    #[test]
    fn flushed_files_keep_one_descriptor() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("f");
        std::fs::write(&path, b"one")?;
        let first = kept_open(&path)?;
        assert!(Arc::ptr_eq(&first, &kept_open(&path)?), "opened once");
        std::fs::remove_file(&path)?;
        std::fs::write(&path, b"two")?;
        let second = kept_open(&path)?;
        assert!(!Arc::ptr_eq(&first, &second), "the new file has its own");
        assert!(Arc::ptr_eq(&second, &kept_open(&path)?));
        // Both still open: the process holds more than the two handles here.
        assert!(Arc::strong_count(&first) >= 2 && Arc::strong_count(&second) >= 2);
        Ok(())
    }

    /// Errors that mean "not now" (pool exhausted, I/O) are unavailable; others are internal.
    #[test]
    fn busy_and_io_errors_are_unavailable() {
        assert!(matches!(
            db_err(sqlx::Error::PoolTimedOut),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            db_err(sqlx::Error::Io(std::io::Error::other("disk gone"))),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            db_err(sqlx::Error::RowNotFound),
            StoreError::Internal(_)
        ));
    }

    /// A write transaction whose caller goes away half-way (an HTTP client hanging up, a task
    /// aborted) is rolled back, and neither this process's next writer nor another process's
    /// finds the file locked for good.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn transactions_dropped_half_way_are_rolled_back() -> anyhow::Result<()> {
        let db = temp_db().await?;
        let store = SqliteStore::open(&db.path).await?;
        // Another handle has a lock file descriptor of its own, as another process would.
        let other = SqliteStore::open(&db.path).await?;
        {
            let tx = store.write_tx().await?;
            tx.execute(
                "INSERT INTO users (username, password_hash, created_at) VALUES ('ghost', 'x', 0)",
                [],
            )?;
        }
        tokio::time::timeout(Duration::from_secs(5), other.create_user("alive", "x", 0)).await??;
        assert_eq!(store.user_by_name("ghost").await?, None);

        // Appends cut off after every amount of progress leave contiguous seqs behind them.
        let a = store.create_user("a", "x", 0).await?.id;
        let b = store.create_user("b", "x", 0).await?.id;
        let origin = NodeId::new("cut")?;
        let (conv, _) = store.open_direct(a, b, MessageId(1), &origin, 0).await?;
        let mut next = 2;
        for micros in (0..40).map(|i| i * 25) {
            let batch: Vec<NewEvent> = (0..3)
                .map(|_| {
                    next += 1;
                    Ok(NewEvent {
                        conv,
                        id: MessageId(next),
                        at: next,
                        sender: a,
                        device: None,
                        client_id: Some(ClientMsgId::new(format!("c{next}"))?),
                        body: crate::store::NewBody::Message {
                            kind: protocol::model::MessageKind::Text,
                            text: format!("m{next}"),
                            attachment: None,
                            reply_to: None,
                        },
                        origin: origin.clone(),
                    })
                })
                .collect::<anyhow::Result<_>>()?;
            let _ = tokio::time::timeout(Duration::from_micros(micros), store.append(batch)).await;
        }
        let last = NewEvent {
            conv,
            id: MessageId(next + 1),
            at: next + 1,
            sender: b,
            device: None,
            client_id: None,
            body: crate::store::NewBody::Message {
                kind: protocol::model::MessageKind::Text,
                text: "still writable".into(),
                attachment: None,
                reply_to: None,
            },
            origin: origin.clone(),
        };
        for result in tokio::time::timeout(Duration::from_secs(5), other.append(vec![last])).await?
        {
            result?;
        }
        let (events, _) = store.events(conv, Page::After(0), 10_000).await?;
        let seqs: Vec<Seq> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=events.len() as Seq).collect::<Vec<_>>());
        Ok(())
    }

    /// A write lock held elsewhere (another process) longer than the busy timeout makes a write
    /// fail as unavailable; reads go on meanwhile.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_held_write_lock_makes_writes_unavailable_not_reads() -> anyhow::Result<()> {
        let db = temp_db().await?;
        let store = SqliteStore::open(&db.path).await?;
        let options = SqliteConnectOptions::new().filename(&db.path);
        let mut other = SqliteConnection::connect_with(&options).await?;
        let held = other.begin_with("BEGIN IMMEDIATE").await?;
        // Our own short-fused connection, so the test does not wait for BUSY_TIMEOUT.
        let mut impatient = SqliteConnection::connect_with(
            &options.clone().busy_timeout(Duration::from_millis(50)),
        )
        .await?;
        let err = match impatient.begin_with("BEGIN IMMEDIATE").await {
            Ok(_) => anyhow::bail!("the write lock was granted twice"),
            Err(e) => db_err(e),
        };
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert_eq!(store.user_by_name("nobody-here").await?, None);
        drop(held);
        Ok(())
    }
}
