//! The history cache: one SQLite file per device (`profiles/<window>/cache.sqlite`) holding the
//! conversation list, the events seen, and user names, so the last conversations show at once
//! on launch and stay readable offline.
//!
//! The cache is a copy, never the truth: the client core's cursors decide what the server
//! replays, and the server's history pages overwrite what is here. Edits and deletes are
//! applied to the cached message they target, so the cache holds messages in their current
//! state (text, deleted, reactions), as history pages do.

use std::path::Path;

use parking_lot::Mutex;
use protocol::model::{ConversationSummary, Event, EventBody, Reactions, UserInfo};
use protocol::{ConvId, MessageId, Millis, Seq, UserId};
use rusqlite::{Connection, OptionalExtension, params};

/// Messages kept per conversation; older ones are dropped (the server still has them).
const KEEP_PER_CONVERSATION: i64 = 2_000;

/// Marks around the matched words in a search hit's snippet (never in a message's text).
pub const MATCH_START: char = '\u{2}';
/// See [`MATCH_START`].
pub const MATCH_END: char = '\u{3}';

/// One message found by [`Cache::search`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct SearchHit {
    /// The message, in its current state.
    pub event: Event,
    /// Its text around the matches, each match between [`MATCH_START`] and [`MATCH_END`].
    pub snippet: String,
}

/// A cheap handle on one device's cache.
pub struct Cache {
    conn: Mutex<Connection>,
}

impl Cache {
    /// Opens (creating if needed) the cache at `path`.
    pub fn open(path: &Path) -> rusqlite::Result<Cache> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path)?;
        Self::init(conn)
    }

    /// A cache in memory (tests).
    pub fn in_memory() -> rusqlite::Result<Cache> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> rusqlite::Result<Cache> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS conversations (
                 id INTEGER PRIMARY KEY,
                 summary TEXT NOT NULL,
                 active_at INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS events (
                 conv INTEGER NOT NULL,
                 seq INTEGER NOT NULL,
                 id INTEGER NOT NULL,
                 event TEXT NOT NULL,
                 PRIMARY KEY (conv, seq)
             );
             CREATE INDEX IF NOT EXISTS events_by_id ON events (id);
             CREATE TABLE IF NOT EXISTS users (
                 id INTEGER PRIMARY KEY,
                 username TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS receipts (
                 id INTEGER PRIMARY KEY,
                 conv INTEGER NOT NULL,
                 at INTEGER NOT NULL,
                 node TEXT
             );",
        )?;
        init_search(&conn)?;
        Ok(Cache {
            conn: Mutex::new(conn),
        })
    }

    /// The conversation list, most recent activity first.
    pub fn conversations(&self) -> rusqlite::Result<Vec<ConversationSummary>> {
        let conn = self.conn.lock();
        let mut stmt =
            conn.prepare("SELECT summary FROM conversations ORDER BY active_at DESC, id DESC")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for row in rows {
            if let Ok(summary) = serde_json::from_str(&row?) {
                out.push(summary);
            }
        }
        Ok(out)
    }

    /// One conversation's summary.
    pub fn conversation(&self, conv: ConvId) -> rusqlite::Result<Option<ConversationSummary>> {
        let conn = self.conn.lock();
        let text: Option<String> = conn
            .query_row(
                "SELECT summary FROM conversations WHERE id = ?1",
                params![conv.0],
                |r| r.get(0),
            )
            .optional()?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// Replaces the whole list (the server's view at a welcome): conversations I left go.
    pub fn replace_conversations(&self, list: &[ConversationSummary]) -> rusqlite::Result<()> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM conversations", [])?;
        for c in list {
            put_summary(&tx, c)?;
        }
        tx.execute(
            "DELETE FROM events WHERE conv NOT IN (SELECT id FROM conversations)",
            [],
        )?;
        tx.commit()
    }

    /// Adds or updates one conversation.
    pub fn put_conversation(&self, c: &ConversationSummary) -> rusqlite::Result<()> {
        put_summary(&self.conn.lock(), c)
    }

    /// Forgets a conversation (I left it).
    pub fn remove_conversation(&self, conv: ConvId) -> rusqlite::Result<()> {
        let conn = self.conn.lock();
        conn.execute("DELETE FROM conversations WHERE id = ?1", params![conv.0])?;
        conn.execute("DELETE FROM events WHERE conv = ?1", params![conv.0])?;
        conn.execute("DELETE FROM receipts WHERE conv = ?1", params![conv.0])?;
        Ok(())
    }

    /// Stores a page of history (messages in their current state).
    pub fn put_events(&self, events: &[Event]) -> rusqlite::Result<()> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        for e in events {
            put_event(&tx, e)?;
        }
        tx.commit()
    }

    /// Applies one live or replayed event: stores it, applies an edit or delete to its target,
    /// and moves the conversation's summary (last message, unread count). `me` is the user
    /// this cache belongs to.
    pub fn apply_event(&self, e: &Event, me: UserId) -> rusqlite::Result<()> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        put_event(&tx, e)?;
        // A delete of a message from someone else that I had not read takes it out of the
        // unread count (the server's count leaves deleted messages out too).
        let mut unread_gone = None;
        match &e.body {
            EventBody::Edit { target, text } => {
                update_message(&tx, target.0, |m| {
                    m.text = text.clone();
                    m.edited_at = Some(e.at);
                })?;
            }
            EventBody::Delete { target } => {
                let before = message_event(&tx, target.0)?;
                if let Some(Event {
                    seq,
                    sender,
                    body: EventBody::Message(m),
                    ..
                }) = &before
                    && *sender != me
                    && !m.deleted
                {
                    unread_gone = Some(*seq);
                }
                update_message(&tx, target.0, |m| {
                    m.deleted = true;
                    m.text.clear();
                    m.attachment = None;
                    m.reactions.clear();
                })?;
            }
            EventBody::Reaction { target, emoji, on } => {
                update_message(&tx, target.0, |m| {
                    Reactions::apply(&mut m.reactions, e.sender, emoji, *on);
                })?;
            }
            EventBody::Message(_) | EventBody::Member { .. } => {}
        }
        let text: Option<String> = tx
            .query_row(
                "SELECT summary FROM conversations WHERE id = ?1",
                params![e.conv.0],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(mut summary) =
            text.and_then(|t| serde_json::from_str::<ConversationSummary>(&t).ok())
            && e.seq > summary.last_seq
        {
            summary.last_seq = e.seq;
            if matches!(e.body, EventBody::Message(_)) {
                summary.last_message = Some(e.clone());
                if e.sender != me && e.seq > summary.read_seq {
                    summary.unread += 1;
                }
            }
            if let Some(seq) = unread_gone
                && seq > summary.read_seq
            {
                summary.unread = summary.unread.saturating_sub(1);
            }
            if let (EventBody::Delete { target }, Some(last)) = (&e.body, &summary.last_message)
                && last.id == *target
            {
                // The list shows the message before it, when the cache has it.
                summary.last_message = last_message_before(&tx, e.conv, last.seq)?;
            }
            put_summary(&tx, &summary)?;
        }
        tx.execute(
            "DELETE FROM events WHERE conv = ?1 AND seq <= (SELECT MAX(seq) FROM events WHERE conv = ?1) - ?2",
            params![e.conv.0, KEEP_PER_CONVERSATION],
        )?;
        tx.commit()
    }

    /// Records that I read a conversation up to `seq`.
    pub fn set_read(&self, conv: ConvId, seq: Seq) -> rusqlite::Result<()> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        let text: Option<String> = tx
            .query_row(
                "SELECT summary FROM conversations WHERE id = ?1",
                params![conv.0],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(mut s) = text.and_then(|t| serde_json::from_str::<ConversationSummary>(&t).ok())
            && seq > s.read_seq
        {
            s.read_seq = seq;
            if seq >= s.last_seq {
                s.unread = 0;
            }
            put_summary(&tx, &s)?;
        }
        tx.commit()
    }

    /// Up to `limit` events of a conversation before `before` (or the latest), ascending, and
    /// whether older ones are cached.
    pub fn events(
        &self,
        conv: ConvId,
        before: Option<Seq>,
        limit: u32,
    ) -> rusqlite::Result<(Vec<Event>, bool)> {
        let conn = self.conn.lock();
        let before = before.map_or(i64::MAX, |s| i64::try_from(s).unwrap_or(i64::MAX));
        let mut stmt = conn.prepare(
            "SELECT event FROM events WHERE conv = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![conv.0, before, i64::from(limit) + 1], |r| {
            r.get::<_, String>(0)
        })?;
        let mut out: Vec<Event> = Vec::new();
        for row in rows {
            if let Ok(e) = serde_json::from_str(&row?) {
                out.push(e);
            }
        }
        let more = out.len() > limit as usize;
        out.truncate(limit as usize);
        out.reverse();
        Ok((out, more))
    }

    /// Remembers user names (from a welcome, a member list, a lookup).
    pub fn put_users(&self, users: &[UserInfo]) -> rusqlite::Result<()> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        for u in users {
            tx.execute(
                "INSERT INTO users (id, username) VALUES (?1, ?2)
                 ON CONFLICT(id) DO UPDATE SET username = excluded.username",
                params![u.id.0, u.username],
            )?;
        }
        tx.commit()
    }

    /// Every user name known.
    pub fn users(&self) -> rusqlite::Result<Vec<UserInfo>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare("SELECT id, username FROM users")?;
        let rows = stmt.query_map([], |r| {
            Ok(UserInfo {
                id: UserId(r.get(0)?),
                username: r.get(1)?,
            })
        })?;
        rows.collect()
    }

    /// The cached messages (text and attachment names) matching every word of `query` (each
    /// word also matches as a prefix, accents ignored), newest first.
    pub fn search(&self, query: &str, limit: u32) -> rusqlite::Result<Vec<SearchHit>> {
        let Some(expr) = match_expression(query) else {
            return Ok(Vec::new());
        };
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(
            "SELECT e.event, snippet(events_text, 0, ?2, ?3, '…', 16)
             FROM events_text JOIN events e ON e.rowid = events_text.rowid
             WHERE events_text MATCH ?1
             ORDER BY e.id DESC LIMIT ?4",
        )?;
        let rows = stmt.query_map(
            params![
                expr,
                MATCH_START.to_string(),
                MATCH_END.to_string(),
                i64::from(limit)
            ],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
        )?;
        let mut out = Vec::new();
        for row in rows {
            let (event, snippet) = row?;
            if let Ok(event) = serde_json::from_str(&event) {
                out.push(SearchHit { event, snippet });
            }
        }
        Ok(out)
    }

    /// Records when this device got an event and through which node; the first time counts
    /// (a replay of the same event after a reconnect does not move it).
    pub fn record_receipt(
        &self,
        e: &Event,
        at: Millis,
        node: Option<&str>,
    ) -> rusqlite::Result<()> {
        let conn = self.conn.lock();
        conn.execute(
            "INSERT OR IGNORE INTO receipts (id, conv, at, node) VALUES (?1, ?2, ?3, ?4)",
            params![e.id.0, e.conv.0, at, node],
        )?;
        // Bounded like the events: receipts of events no longer cached go.
        conn.execute(
            "DELETE FROM receipts WHERE conv = ?1 AND id < (SELECT MIN(id) FROM events WHERE conv = ?1)",
            params![e.conv.0],
        )?;
        Ok(())
    }

    /// When this device got event `id`, and through which node, if it got it live or in a
    /// replay (not from a history page).
    pub fn receipt(&self, id: MessageId) -> rusqlite::Result<Option<(Millis, Option<String>)>> {
        self.conn
            .lock()
            .query_row(
                "SELECT at, node FROM receipts WHERE id = ?1",
                params![id.0],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
    }

    /// The cached event with this id.
    pub fn event(&self, id: MessageId) -> rusqlite::Result<Option<Event>> {
        message_event(&self.conn.lock(), id.0)
    }

    /// Forgets everything (another user signed in on this device).
    pub fn clear(&self) -> rusqlite::Result<()> {
        self.conn.lock().execute_batch(
            "DELETE FROM conversations; DELETE FROM events; DELETE FROM users; DELETE FROM receipts;",
        )
    }
}

/// What a message's searchable text is: its text and its attachment's name; nothing for
/// deleted messages and other events.
const SEARCHABLE: &str = "CASE WHEN json_extract(NEW.event, '$.body.type') = 'message'
        AND coalesce(json_extract(NEW.event, '$.body.deleted'), 0) = 0
    THEN trim(coalesce(json_extract(NEW.event, '$.body.text'), '') || ' ' ||
              coalesce(json_extract(NEW.event, '$.body.attachment.name'), ''))
    ELSE '' END";

/// The full-text index of cached messages, kept by triggers on `events` (so every way a
/// message is stored, edited or deleted keeps it right), filled once from what is cached
/// when an older cache first opens.
fn init_search(conn: &Connection) -> rusqlite::Result<()> {
    let exists: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE name = 'events_text'",
        [],
        |r| r.get(0),
    )?;
    let text = SEARCHABLE;
    conn.execute_batch(&format!(
        "CREATE VIRTUAL TABLE IF NOT EXISTS events_text USING fts5(
             text, conv UNINDEXED, seq UNINDEXED, tokenize = 'unicode61 remove_diacritics 2'
         );
         CREATE TRIGGER IF NOT EXISTS events_text_insert AFTER INSERT ON events BEGIN
             INSERT INTO events_text (rowid, text, conv, seq)
             SELECT NEW.rowid, t, NEW.conv, NEW.seq FROM (SELECT {text} AS t) WHERE t <> '';
         END;
         CREATE TRIGGER IF NOT EXISTS events_text_update AFTER UPDATE ON events BEGIN
             DELETE FROM events_text WHERE rowid = OLD.rowid;
             INSERT INTO events_text (rowid, text, conv, seq)
             SELECT NEW.rowid, t, NEW.conv, NEW.seq FROM (SELECT {text} AS t) WHERE t <> '';
         END;
         CREATE TRIGGER IF NOT EXISTS events_text_delete AFTER DELETE ON events BEGIN
             DELETE FROM events_text WHERE rowid = OLD.rowid;
         END;"
    ))?;
    if !exists {
        let backfill = SEARCHABLE.replace("NEW.", "");
        conn.execute_batch(&format!(
            "INSERT INTO events_text (rowid, text, conv, seq)
             SELECT rowid, t, conv, seq FROM (SELECT rowid, conv, seq, {backfill} AS t FROM events)
             WHERE t <> '';"
        ))?;
    }
    Ok(())
}

/// A search box's words as an FTS5 query: every word must match, each as a prefix too.
/// Quoting each word makes any character in it literal. `None` when there is no word.
fn match_expression(query: &str) -> Option<String> {
    let words: Vec<String> = query
        .split_whitespace()
        .map(|w| format!("\"{}\"*", w.replace('"', "\"\"")))
        .collect();
    (!words.is_empty()).then(|| words.join(" "))
}

fn put_summary(conn: &Connection, c: &ConversationSummary) -> rusqlite::Result<()> {
    let active_at = c.last_message.as_ref().map_or(c.created_at, |m| m.at);
    let text =
        serde_json::to_string(c).map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?;
    conn.execute(
        "INSERT INTO conversations (id, summary, active_at) VALUES (?1, ?2, ?3)
         ON CONFLICT(id) DO UPDATE SET summary = excluded.summary, active_at = excluded.active_at",
        params![c.id.0, text, active_at],
    )?;
    Ok(())
}

fn put_event(conn: &Connection, e: &Event) -> rusqlite::Result<()> {
    let text = serde_json::to_string(e)
        .map_err(|err| rusqlite::Error::ToSqlConversionFailure(err.into()))?;
    let seq = i64::try_from(e.seq).unwrap_or(i64::MAX);
    conn.execute(
        "INSERT INTO events (conv, seq, id, event) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(conv, seq) DO UPDATE SET event = excluded.event, id = excluded.id",
        params![e.conv.0, seq, e.id.0, text],
    )?;
    Ok(())
}

/// The cached event with this id, if any.
fn message_event(conn: &Connection, id: i64) -> rusqlite::Result<Option<Event>> {
    let text: Option<String> = conn
        .query_row("SELECT event FROM events WHERE id = ?1", params![id], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
}

/// The latest message of `conv` before `seq` that is not deleted, if the cache has one.
fn last_message_before(
    conn: &Connection,
    conv: ConvId,
    seq: Seq,
) -> rusqlite::Result<Option<Event>> {
    let seq = i64::try_from(seq).unwrap_or(i64::MAX);
    let mut stmt =
        conn.prepare("SELECT event FROM events WHERE conv = ?1 AND seq < ?2 ORDER BY seq DESC")?;
    let rows = stmt.query_map(params![conv.0, seq], |r| r.get::<_, String>(0))?;
    for row in rows {
        if let Ok(e) = serde_json::from_str::<Event>(&row?)
            && let EventBody::Message(m) = &e.body
            && !m.deleted
        {
            return Ok(Some(e));
        }
    }
    Ok(None)
}

fn update_message(
    conn: &Connection,
    id: i64,
    change: impl FnOnce(&mut protocol::model::Message),
) -> rusqlite::Result<()> {
    let found: Option<(i64, i64, String)> = conn
        .query_row(
            "SELECT conv, seq, event FROM events WHERE id = ?1",
            params![id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((conv, seq, text)) = found else {
        return Ok(());
    };
    let Ok(mut event) = serde_json::from_str::<Event>(&text) else {
        return Ok(());
    };
    if let EventBody::Message(m) = &mut event.body {
        change(m);
        let text = serde_json::to_string(&event)
            .map_err(|err| rusqlite::Error::ToSqlConversionFailure(err.into()))?;
        conn.execute(
            "UPDATE events SET event = ?3 WHERE conv = ?1 AND seq = ?2",
            params![conv, seq, text],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::MessageId;
    use protocol::model::{ConvKind, Message, MessageKind};

    fn summary(id: i64) -> ConversationSummary {
        ConversationSummary {
            id: ConvId(id),
            kind: ConvKind::Direct,
            name: "bob".into(),
            peer: None,
            public: false,
            member_count: 2,
            last_seq: 0,
            last_message: None,
            read_seq: 0,
            unread: 0,
            peer_read_seq: None,
            created_at: 1,
        }
    }

    fn message(conv: i64, seq: Seq, sender: i64, text: &str) -> Event {
        Event {
            conv: ConvId(conv),
            seq,
            id: MessageId(1000 + i64::try_from(seq).unwrap_or(0)),
            at: 10 + i64::try_from(seq).unwrap_or(0),
            sender: UserId(sender),
            device: None,
            client_id: None,
            origin: None,
            body: EventBody::Message(Message {
                kind: MessageKind::Text,
                text: text.into(),
                attachment: None,
                reply_to: None,
                edited_at: None,
                deleted: false,
                reactions: Vec::new(),
            }),
        }
    }

    #[test]
    fn reactions_apply_to_their_message_and_receipts_keep_the_first_arrival() -> rusqlite::Result<()>
    {
        let cache = Cache::in_memory()?;
        cache.replace_conversations(&[summary(1)])?;
        let hi = message(1, 1, 2, "hi");
        cache.apply_event(&hi, UserId(1))?;
        let react = |seq: Seq, sender: i64, on: bool| Event {
            body: EventBody::Reaction {
                target: hi.id,
                emoji: "👍".into(),
                on,
            },
            ..message(1, seq, sender, "")
        };
        cache.apply_event(&react(2, 1, true), UserId(1))?;
        cache.apply_event(&react(3, 2, true), UserId(1))?;
        cache.apply_event(&react(4, 1, false), UserId(1))?;
        let Some(Event {
            body: EventBody::Message(m),
            ..
        }) = cache.event(hi.id)?
        else {
            panic!("the message is cached")
        };
        assert_eq!(m.reactions.len(), 1);
        assert_eq!(m.reactions[0].users, vec![UserId(2)]);
        // Reactions are not news: the unread count is the message's alone.
        let s = cache
            .conversation(ConvId(1))?
            .ok_or(rusqlite::Error::QueryReturnedNoRows)?;
        assert_eq!(s.unread, 1);

        cache.record_receipt(&hi, 50, Some("n1"))?;
        cache.record_receipt(&hi, 90, Some("n2"))?;
        assert_eq!(cache.receipt(hi.id)?, Some((50, Some("n1".to_owned()))));
        cache.clear()?;
        assert_eq!(cache.receipt(hi.id)?, None);
        Ok(())
    }

    #[test]
    fn events_move_the_summary_and_edits_apply() -> rusqlite::Result<()> {
        let cache = Cache::in_memory()?;
        cache.replace_conversations(&[summary(1)])?;
        cache.apply_event(&message(1, 1, 2, "hi"), UserId(1))?;
        cache.apply_event(&message(1, 2, 1, "hello"), UserId(1))?;
        let s = cache
            .conversation(ConvId(1))?
            .ok_or(rusqlite::Error::QueryReturnedNoRows)?;
        assert_eq!((s.last_seq, s.unread), (2, 1));
        // A replay of the same event changes nothing.
        cache.apply_event(&message(1, 2, 1, "hello"), UserId(1))?;
        let edit = Event {
            body: EventBody::Edit {
                target: MessageId(1001),
                text: "hi there".into(),
            },
            ..message(1, 3, 2, "")
        };
        cache.apply_event(&edit, UserId(1))?;
        let (events, more) = cache.events(ConvId(1), None, 10)?;
        assert!(!more);
        assert_eq!(events.len(), 3);
        let EventBody::Message(m) = &events[0].body else {
            panic!("not a message")
        };
        assert_eq!(m.text, "hi there");
        assert!(m.edited_at.is_some());
        cache.set_read(ConvId(1), 3)?;
        let s = cache
            .conversation(ConvId(1))?
            .ok_or(rusqlite::Error::QueryReturnedNoRows)?;
        assert_eq!(s.unread, 0);
        Ok(())
    }

    #[test]
    fn deleting_an_unread_message_takes_it_off_the_count_and_the_list() -> rusqlite::Result<()> {
        let cache = Cache::in_memory()?;
        cache.replace_conversations(&[summary(1)])?;
        cache.apply_event(&message(1, 1, 2, "first"), UserId(1))?;
        cache.apply_event(&message(1, 2, 2, "oops"), UserId(1))?;
        let delete = Event {
            body: EventBody::Delete {
                target: MessageId(1002),
            },
            ..message(1, 3, 2, "")
        };
        cache.apply_event(&delete, UserId(1))?;
        let s = cache
            .conversation(ConvId(1))?
            .ok_or(rusqlite::Error::QueryReturnedNoRows)?;
        assert_eq!(s.unread, 1);
        let last = s.last_message.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
        assert_eq!(last.seq, 1);
        Ok(())
    }

    #[test]
    fn search_finds_words_across_conversations_and_follows_edits() -> rusqlite::Result<()> {
        let cache = Cache::in_memory()?;
        cache.apply_event(&message(1, 1, 2, "Lunch at the café?"), UserId(1))?;
        let elsewhere = |seq, text| Event {
            id: MessageId(2000 + i64::try_from(seq).unwrap_or(0)),
            ..message(2, seq, 3, text)
        };
        cache.apply_event(&elsewhere(1, "the cafeteria is closed"), UserId(1))?;
        cache.apply_event(&elsewhere(2, "nothing here"), UserId(1))?;
        let hits = cache.search("cafe", 10)?;
        let mut found: Vec<(i64, Seq)> =
            hits.iter().map(|h| (h.event.conv.0, h.event.seq)).collect();
        found.sort();
        assert_eq!(found, vec![(1, 1), (2, 1)]);
        assert!(hits.iter().any(|h| h.snippet.contains(MATCH_START)));
        // Words are literal, whatever they contain.
        assert!(cache.search("\"(* NEAR", 10)?.is_empty());
        // An edit changes what is found; a delete removes it.
        let edit = Event {
            body: EventBody::Edit {
                target: MessageId(1001),
                text: "dinner instead".into(),
            },
            ..message(1, 2, 2, "")
        };
        cache.apply_event(&edit, UserId(1))?;
        assert_eq!(cache.search("lunch", 10)?.len(), 0);
        assert_eq!(cache.search("dinner", 10)?.len(), 1);
        let delete = Event {
            body: EventBody::Delete {
                target: MessageId(1001),
            },
            ..message(1, 3, 2, "")
        };
        cache.apply_event(&delete, UserId(1))?;
        assert_eq!(cache.search("dinner", 10)?.len(), 0);
        Ok(())
    }

    #[test]
    fn pages_go_backwards() -> rusqlite::Result<()> {
        let cache = Cache::in_memory()?;
        let events: Vec<Event> = (1..=5).map(|s| message(7, s, 2, "x")).collect();
        cache.put_events(&events)?;
        let (page, more) = cache.events(ConvId(7), None, 2)?;
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4, 5]);
        assert!(more);
        let (page, more) = cache.events(ConvId(7), Some(4), 10)?;
        assert_eq!(
            page.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert!(!more);
        Ok(())
    }
}
