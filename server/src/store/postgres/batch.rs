//! A batch's statements over many rows at once, the rows' columns as arrays for `UNNEST`: the
//! keys taken, looked up when the batch begins, answer each insert at once; the events go in
//! together, with the heads when they can, and the heads go back together.

use protocol::model::Event;
use protocol::{ConvId, MessageId, NodeId};

use super::writer::Writer;
use std::collections::HashSet;

use crate::store::encoding;
use crate::store::rows::EventColumns;
use crate::store::write::ConvHead;
use crate::store::{NewEvent, StoreError, StoreResult};

/// The inserts of a batch, deferred: each statement is a round trip to the server, and one
/// statement for the whole batch makes a batch of 256 cost a handful of round trips instead of
/// 260. `insert_event` answers from the keys found taken when the batch began (and those of
/// the waiting events); the wait ends before any statement that reads or changes events.
#[derive(Default)]
pub(super) struct Deferred {
    /// Keys taken, in the database or by a waiting event.
    pub(super) keys: TakenKeys,
    /// The waiting events.
    pub(super) rows: EventRows,
}

/// The keys a batch's deferred inserts may not take: the event ids and `(sender, client_id)`
/// pairs found taken when the batch began, and those of the events waiting to be inserted.
#[derive(Default)]
pub(super) struct TakenKeys {
    ids: HashSet<i64>,
    client_ids: HashSet<(i64, String)>,
}

impl TakenKeys {
    /// Keys found in the database: `(id, sender, client_id)` rows.
    pub(super) fn found(rows: impl IntoIterator<Item = (i64, i64, Option<String>)>) -> Self {
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
    pub(super) fn claim(&mut self, event: &Event) -> bool {
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
    pub(super) fn has_id(&self, id: MessageId) -> bool {
        self.ids.contains(&id.0)
    }
}
/// Events column by column, as `UNNEST` takes them.
#[derive(Default)]
pub(super) struct EventRows {
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
    pub(super) fn push(&mut self, event: &Event, origin: &NodeId) {
        let c = EventColumns::of(&event.body);
        self.id.push(event.id.0);
        self.conv_id.push(event.conv.0);
        self.seq.push(encoding::seq_to_db(event.seq));
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

/// Heads column by column, as `UNNEST` takes them.
pub(super) struct HeadRows {
    id: Vec<i64>,
    last_seq: Vec<i64>,
    last_msg_seq: Vec<i64>,
    last_activity: Vec<i64>,
    member_epoch: Vec<i64>,
}

impl HeadRows {
    fn of(heads: &[(ConvId, ConvHead)]) -> Self {
        let mut rows = HeadRows {
            id: Vec::with_capacity(heads.len()),
            last_seq: Vec::with_capacity(heads.len()),
            last_msg_seq: Vec::with_capacity(heads.len()),
            last_activity: Vec::with_capacity(heads.len()),
            member_epoch: Vec::with_capacity(heads.len()),
        };
        for (conv, head) in heads {
            rows.id.push(conv.0);
            rows.last_seq.push(encoding::seq_to_db(head.last_seq));
            rows.last_msg_seq
                .push(encoding::seq_to_db(head.last_msg_seq));
            rows.last_activity.push(head.last_activity);
            rows.member_epoch.push(head.member_epoch);
        }
        rows
    }
}

/// The update that writes heads back, from the five column arrays of a [`HeadRows`] at the
/// parameters `$columns` names, bound by [`bind_heads!`].
macro_rules! update_heads {
    ($columns:literal) => {
        concat!(
            "UPDATE conversations c SET last_seq = h.last_seq, last_msg_seq = h.last_msg_seq, \
             last_activity = h.last_activity, member_epoch = h.member_epoch \
             FROM UNNEST(",
            $columns,
            ") AS h (id, last_seq, last_msg_seq, last_activity, member_epoch) WHERE c.id = h.id"
        )
    };
}

/// Binds the columns of a [`HeadRows`], in [`update_heads!`]'s order, to a query (plain or
/// scalar) whose next parameters they are.
macro_rules! bind_heads {
    ($q:expr, $heads:expr) => {{
        let h = $heads;
        $q.bind(h.id)
            .bind(h.last_seq)
            .bind(h.last_msg_seq)
            .bind(h.last_activity)
            .bind(h.member_epoch)
    }};
}

impl Writer<'_> {
    /// Inserts the waiting events, if any, in one statement.
    pub(super) async fn flush(&mut self) -> StoreResult<()> {
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
    pub(super) fn came_up_short(&mut self) -> StoreError {
        self.retry = true;
        StoreError::Unavailable("another writer took a key of this batch meanwhile".into())
    }

    /// Inserts the waiting events and writes the heads back, in one statement.
    pub(super) async fn insert_and_save_heads(
        &mut self,
        heads: &[(ConvId, ConvHead)],
    ) -> StoreResult<()> {
        let Some(mut deferred) = self.deferred.take() else {
            return Ok(());
        };
        let rows = std::mem::take(&mut deferred.rows);
        let expected = rows.id.len() as i64;
        let inserted: i64 = bind_heads!(
            bind_rows!(
                sqlx::query_scalar(concat!(
                    "WITH ins AS (",
                    insert_events!(),
                    " ON CONFLICT DO NOTHING RETURNING 1), heads AS (",
                    update_heads!(
                        "$17::int8[], $18::int8[], $19::int8[], $20::int8[], $21::int8[]"
                    ),
                    ") SELECT count(*) FROM ins"
                )),
                rows
            ),
            HeadRows::of(heads)
        )
        .fetch_one(&mut *self.conn)
        .await
        .map_err(|e| self.err(e))?;
        if inserted != expected {
            return Err(self.came_up_short());
        }
        Ok(())
    }

    /// Writes several heads back in one statement.
    pub(super) async fn save_heads(&mut self, heads: &[(ConvId, ConvHead)]) -> StoreResult<()> {
        bind_heads!(
            sqlx::query(update_heads!(
                "$1::int8[], $2::int8[], $3::int8[], $4::int8[], $5::int8[]"
            )),
            HeadRows::of(heads)
        )
        .execute(&mut *self.conn)
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Whether events wait to be inserted.
    pub(super) fn has_waiting(&self) -> bool {
        self.deferred
            .as_ref()
            .is_some_and(|d| !d.rows.id.is_empty())
    }

    /// Whether `id` may be among the waiting events.
    pub(super) fn waits(&self, id: MessageId) -> bool {
        self.deferred.as_ref().is_some_and(|d| d.keys.has_id(id))
    }

    /// Looks up which of the batch's keys are taken, and from now on defers inserts.
    pub(super) async fn defer_inserts(&mut self, batch: &[NewEvent]) -> StoreResult<()> {
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
