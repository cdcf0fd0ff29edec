//! The history cache: one SQLite file per device (`profiles/<window>/cache.sqlite`) holding the
//! conversation list, the events seen, and user names, so the last conversations show at once
//! on launch and stay readable offline.
//!
//! The cache is a copy, never the truth: the client core's cursors decide what the server
//! replays, and the server's history pages overwrite what is here. Edits and deletes are
//! applied to the cached message they target, so the cache holds messages in their current
//! state, as history pages do.

use std::path::Path;

use parking_lot::Mutex;
use protocol::model::{ConversationSummary, Event, EventBody, UserInfo};
use protocol::{ConvId, Seq, UserId};
use rusqlite::{Connection, OptionalExtension, params};

/// Messages kept per conversation; older ones are dropped (the server still has them).
const KEEP_PER_CONVERSATION: i64 = 2_000;

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
             );",
        )?;
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
        match &e.body {
            EventBody::Edit { target, text } => {
                update_message(&tx, target.0, |m| {
                    m.text = text.clone();
                    m.edited_at = Some(e.at);
                })?;
            }
            EventBody::Delete { target } => {
                update_message(&tx, target.0, |m| {
                    m.deleted = true;
                    m.text.clear();
                    m.attachment = None;
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

    /// Forgets everything (another user signed in on this device).
    pub fn clear(&self) -> rusqlite::Result<()> {
        self.conn
            .lock()
            .execute_batch("DELETE FROM conversations; DELETE FROM events; DELETE FROM users;")
    }
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
            body: EventBody::Message(Message {
                kind: MessageKind::Text,
                text: text.into(),
                attachment: None,
                reply_to: None,
                edited_at: None,
                deleted: false,
            }),
        }
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
