//! The write path's statements on PostgreSQL: a batch's heads locked and read at once, its
//! events' inserts deferred (see `batch`), each other statement one round trip.

use protocol::model::{Attachment, Event};
use protocol::{
    AttachmentId, ClientMsgId, ConvId, DeviceId, MessageId, Millis, NodeId, Seq, UserId,
};
use sqlx::postgres::PgConnection;

use super::batch::Deferred;
use super::errors::{db_err, is_retryable};
use crate::store::encoding;
use crate::store::rows::{
    AttachmentColumns, EventColumns, EventRow, HeadColumns, MessageColumns, attachment_meta,
    event_select,
};
use crate::store::write::{BatchStart, ConvHead, MessageRef, NewConversation, WriteOps};
use crate::store::{NewEvent, StoreError, StoreResult};

/// A write transaction as the shared write path drives it.
pub struct Writer<'c> {
    pub(super) conn: &'c mut PgConnection,
    /// Whether a statement failed in a way worth trying the whole transaction again for.
    pub(super) retry: bool,
    /// For a batch of several events: their inserts, waiting to go in one statement.
    pub(super) deferred: Option<Deferred>,
}

impl<'c> Writer<'c> {
    pub(super) fn new(conn: &'c mut PgConnection) -> Self {
        Writer {
            conn,
            retry: false,
            deferred: None,
        }
    }

    pub(super) fn err(&mut self, e: sqlx::Error) -> StoreError {
        self.retry |= is_retryable(&e);
        db_err(e)
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
        for (id, kind, public, last_seq, last_msg_seq, last_activity, epoch) in rows {
            let head = (kind, public, last_seq, last_msg_seq, last_activity, epoch);
            start
                .heads
                .push((ConvId(id), ConvHead::from_columns(head)?));
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
        if self.has_waiting() && !heads.is_empty() {
            // The events and the heads in one statement: one round trip fewer under the locks.
            return self.insert_and_save_heads(heads).await;
        }
        self.flush().await?;
        self.deferred = None;
        match heads {
            [] => {}
            [(conv, head)] => self.save_head(*conv, head).await?,
            many => self.save_heads(many).await?,
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
        let row: Option<HeadColumns> = sqlx::query_as(
            "SELECT kind, is_public, last_seq, last_msg_seq, last_activity, member_epoch \
             FROM conversations WHERE id = $1 FOR NO KEY UPDATE",
        )
        .bind(conv.0)
        .fetch_optional(&mut *self.conn)
        .await
        .map_err(|e| self.err(e))?;
        row.map(ConvHead::from_columns).transpose()
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
        let row: Option<AttachmentColumns> =
            sqlx::query_as("SELECT name, mime, size, conv_id FROM attachments WHERE id = $1")
                .bind(id.as_str())
                .fetch_optional(&mut *self.conn)
                .await
                .map_err(|e| self.err(e))?;
        row.map(|columns| attachment_meta(id, columns)).transpose()
    }

    async fn message_ref(&mut self, id: MessageId) -> StoreResult<Option<MessageRef>> {
        // Mostly an older message: the waiting events matter only if it is one of them.
        if self.waits(id) {
            self.flush().await?;
        }
        let row: Option<MessageColumns> = sqlx::query_as(
            "SELECT conv_id, body_type, sender, deleted, attachment_id FROM events WHERE id = $1",
        )
        .bind(id.0)
        .fetch_optional(&mut *self.conn)
        .await
        .map_err(|e| self.err(e))?;
        row.map(MessageRef::from_columns).transpose()
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
        .bind(encoding::seq_to_db(event.seq))
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
        .bind(encoding::seq_to_db(seq))
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
        .bind(encoding::seq_to_db(head.last_seq))
        .bind(encoding::seq_to_db(head.last_msg_seq))
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
        .bind(encoding::conv_kind_str(conv.kind))
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
