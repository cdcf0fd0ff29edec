//! The checkpointer: each process's task that copies SQLite's log back into the database file
//! beside the writers, so that the log starts over instead of growing without end.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use tokio_util::sync::CancellationToken;

use super::beside;
use super::errors::is_busy;
use super::writer::WriteConn;

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
pub(super) async fn checkpointer(
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
pub(super) async fn passive_checkpoint(conn: &mut SqliteConnection) -> Result<i64, sqlx::Error> {
    let (_busy, log, _copied) =
        sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(conn)
            .await?;
    Ok(log)
}

/// Flushes files' written pages to the disk (on a blocking thread: it takes milliseconds).
pub(super) async fn sync_files(paths: &[&Path]) -> std::io::Result<()> {
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
pub(super) fn kept_open(path: &Path) -> std::io::Result<Arc<std::fs::File>> {
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
