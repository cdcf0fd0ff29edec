//! The process's write connection (rusqlite, on the calling thread), its transactions, and the
//! write path's statements run on it.

use std::path::Path;
use std::sync::Arc;

use protocol::model::{Attachment, Event};
use protocol::{
    AttachmentId, ClientMsgId, ConvId, DeviceId, MessageId, Millis, NodeId, Seq, UserId,
};

use super::errors::write_err;
use super::lock::FileLock;
use super::{BUSY_TIMEOUT, last_seq_of};
use crate::store::StoreResult;
use crate::store::encoding;
use crate::store::rows::{
    AttachmentColumns, EventColumns, EventRow, HeadColumns, MessageColumns, attachment_meta,
    event_select,
};
use crate::store::write::{ConvHead, MessageRef, NewConversation, WriteOps};

/// The write connection's page cache, in KiB (SQLite's default is 2 MiB).
const WRITER_CACHE_KIB: u32 = 64 * 1024;

/// Prepared statements the write connection keeps (the write path has about twenty).
const WRITER_STATEMENTS: usize = 64;

/// The size the log file is cut back to after it starts over.
const LOG_SIZE_LIMIT: u64 = 64 << 20;

/// The process's write connection and its share of the writers' file lock.
///
/// SQLite lets one writer in at a time and makes the others wait in its busy handler, which
/// sleeps 1, 2, 5, 10… ms between tries: with several node processes writing, most of a
/// commit's latency would be those sleeps. An exclusive `flock` taken first queues writers in
/// the kernel, which wakes the next one the moment the lock is let go, so the file's write lock
/// is always free when `BEGIN IMMEDIATE` asks for it.
pub(super) struct WriteConn {
    pub(super) conn: rusqlite::Connection,
    pub(super) lock: FileLock,
    /// `BEGIN` was sent and neither `COMMIT` nor `ROLLBACK` went through: a caller went away
    /// (or failed) in the middle of a transaction. The next writer rolls it back first; until
    /// then this process keeps the file lock, so no other process meets a half-done writer.
    pub(super) open: bool,
}

impl WriteConn {
    /// Rolls back a transaction left open. Its error is only logged: a failed `ROLLBACK` means
    /// SQLite already ended the transaction (it does so by itself after some errors).
    pub(super) fn roll_back(&mut self) {
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
pub struct WriteTx {
    pub(super) conn: tokio::sync::OwnedMutexGuard<WriteConn>,
    /// To roll back from a task of its own when dropped half-way.
    pub(super) mutex: Arc<tokio::sync::Mutex<WriteConn>>,
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
    pub(super) fn begin(&mut self) -> StoreResult<()> {
        self.conn.open = true;
        self.conn
            .conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(write_err)
    }

    /// Commits; the transaction is over once this went through.
    pub(super) fn commit(mut self) -> StoreResult<()> {
        self.commit_here()
    }

    /// Commits, keeping the connection and the file lock until dropped.
    pub(super) fn commit_here(&mut self) -> StoreResult<()> {
        self.conn.conn.execute_batch("COMMIT").map_err(write_err)?;
        self.conn.open = false;
        Ok(())
    }

    /// Rolls back now (after a failed statement).
    pub(super) fn roll_back(mut self) {
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

/// Opens the process's write connection (the file exists and is in WAL mode by now).
///
/// Its cache holds a whole batch's pages, so that none is spilled to the log before the
/// commit. It never checkpoints: a commit that crosses the log's threshold would copy it back
/// and sync the file while every writer of every process waits, so the checkpointer task does
/// that beside them.
pub(super) fn open_writer(path: &Path) -> StoreResult<rusqlite::Connection> {
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

/// A write transaction as the shared write path drives it (see [`WriteOps`]): each statement
/// runs at once on the calling thread, so the trait's defaults (a statement per conversation
/// at a batch's start and end) cost no round trips.
pub struct SqliteWriter<'t> {
    conn: &'t mut rusqlite::Connection,
}

impl<'t> SqliteWriter<'t> {
    /// Over a transaction begun already.
    pub(super) fn new(tx: &'t mut WriteTx) -> Self {
        SqliteWriter { conn: &mut *tx }
    }

    /// Runs a cached statement that changes rows; how many it changed.
    pub(super) fn execute(
        &mut self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> StoreResult<usize> {
        self.conn
            .prepare_cached(sql)
            .and_then(|mut stmt| stmt.execute(params))
            .map_err(write_err)
    }

    /// Runs a cached query for at most one row.
    pub(super) fn query_row<T>(
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
        let row: Option<HeadColumns> = self.query_row(
            concat!(
                "SELECT kind, is_public, ",
                last_seq_of!("conversations.id"),
                ", member_epoch FROM conversations WHERE id = ?1"
            ),
            [conv.0],
            // The last message and the latest activity are not kept in the row: a list reads
            // them from the events (see the schema).
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, 0, 0, r.get(3)?)),
        )?;
        row.map(ConvHead::from_columns).transpose()
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
            |r| AttachmentColumns::try_from(r),
        )?;
        row.map(|columns| attachment_meta(id, columns)).transpose()
    }

    async fn message_ref(&mut self, id: MessageId) -> StoreResult<Option<MessageRef>> {
        let row = self.query_row(
            "SELECT conv_id, body_type, sender, deleted, attachment_id FROM events WHERE id = ?1",
            [id.0],
            |r| MessageColumns::try_from(r),
        )?;
        row.map(MessageRef::from_columns).transpose()
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
                encoding::seq_to_db(event.seq),
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
            rusqlite::params![conv.0, user.0, encoding::seq_to_db(seq)],
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
                encoding::conv_kind_str(conv.kind),
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
