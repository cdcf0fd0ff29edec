//! The outbox: every message, edit, delete and reaction the application sent that the server has not
//! acknowledged yet, in the order it was sent.
//!
//! Invariant: an item leaves the outbox only when the server has stored it (an ack, or its
//! event seen in a replay) or refused it for good (a non-retryable error). Everything else —
//! a lost connection, a retryable error, a restart of the process with a saved
//! [`crate::ClientState`] — sends it again with the **same client id**, and the server's dedup
//! on that id makes the resend harmless.
//!
//! Items are written in order. An item refused with a retryable code (`unavailable`,
//! `rate_limited`…) waits before it is written again, and the items behind it wait too, so
//! that a conversation's messages are not reordered by a retry.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use protocol::ws::{ClientFrame, DeleteMessage, EditMessage, ErrorCode, ReactMessage, SendMessage};
use protocol::{ClientMsgId, ConvId, Millis};
use serde::{Deserialize, Serialize};

/// First wait after a retryable refusal; doubles with each refusal of the same item.
const RETRY_BASE: Duration = Duration::from_millis(250);
/// Longest wait after a retryable refusal.
const RETRY_CAP: Duration = Duration::from_secs(10);

/// Something sent that the server must acknowledge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Outgoing {
    /// A message.
    Send(SendMessage),
    /// An edit of one of my messages.
    Edit(EditMessage),
    /// A delete of one of my messages.
    Delete(DeleteMessage),
    /// A reaction to a message, or taking one back.
    React(ReactMessage),
}

impl Outgoing {
    /// The client id the server dedups on.
    pub fn client_id(&self) -> &ClientMsgId {
        match self {
            Outgoing::Send(m) => &m.client_id,
            Outgoing::Edit(m) => &m.client_id,
            Outgoing::Delete(m) => &m.client_id,
            Outgoing::React(m) => &m.client_id,
        }
    }

    /// The conversation it goes to.
    pub fn conv(&self) -> ConvId {
        match self {
            Outgoing::Send(m) => m.conv,
            Outgoing::Edit(m) => m.conv,
            Outgoing::Delete(m) => m.conv,
            Outgoing::React(m) => m.conv,
        }
    }

    /// The frame that carries it.
    pub fn to_frame(&self) -> ClientFrame {
        match self {
            Outgoing::Send(m) => ClientFrame::Send(m.clone()),
            Outgoing::Edit(m) => ClientFrame::Edit(m.clone()),
            Outgoing::Delete(m) => ClientFrame::Delete(m.clone()),
            Outgoing::React(m) => ClientFrame::React(m.clone()),
        }
    }
}

/// One waiting item, as saved in [`crate::ClientState`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxItem {
    /// What was sent.
    pub op: Outgoing,
    /// When the application sent it (milliseconds since the Unix epoch).
    pub queued_at: Millis,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EntryState {
    /// Waiting to be written, not before the given time when it was refused for now.
    Queued { not_before: Option<Instant> },
    /// Written on the current connection; waiting for its ack or error.
    InFlight,
}

#[derive(Clone, Debug)]
struct Entry {
    item: OutboxItem,
    state: EntryState,
    /// Retryable refusals so far, for the growing wait.
    refusals: u32,
    /// Whether it was ever written (on this connection or an earlier one). An event of mine
    /// with its client id settles an item that was written as stored by that write; one never
    /// written is a repeat of an id the server already has.
    written: bool,
}

/// What the engine should write next.
#[derive(Clone, Debug, PartialEq)]
pub enum Next {
    /// This frame, now (its item is now in flight).
    Write(ClientFrame),
    /// Nothing before this time: the head of the queue is waiting after a refusal.
    WaitUntil(Instant),
    /// Nothing: the queue is empty, or enough items are already in flight.
    Idle,
}

/// What a refusal did to an item.
#[derive(Clone, Debug, PartialEq)]
pub enum Refused {
    /// The item stays and is written again from this time on.
    Retry {
        /// When.
        at: Instant,
    },
    /// The item was removed for good.
    Dropped(OutboxItem),
    /// No item has that client id.
    Unknown,
}

/// The ordered queue of unacknowledged items.
#[derive(Clone, Debug, Default)]
pub struct Outbox {
    entries: VecDeque<Entry>,
}

impl Outbox {
    /// An outbox holding `items` (from a saved state), all waiting to be written.
    pub fn new(items: Vec<OutboxItem>) -> Self {
        Outbox {
            entries: items
                .into_iter()
                .map(|item| Entry {
                    item,
                    state: EntryState::Queued { not_before: None },
                    refusals: 0,
                    // Saved items may have been written before the state was saved.
                    written: true,
                })
                .collect(),
        }
    }

    /// The items, in order, for saving.
    pub fn items(&self) -> Vec<OutboxItem> {
        self.entries.iter().map(|e| e.item.clone()).collect()
    }

    /// How many items wait for an ack.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether every item has been acknowledged.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether an item with this client id waits.
    pub fn contains(&self, id: &ClientMsgId) -> bool {
        self.entries.iter().any(|e| e.item.op.client_id() == id)
    }

    /// Items written on this connection and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.state == EntryState::InFlight)
            .count()
    }

    /// Adds an item at the end.
    pub fn push(&mut self, item: OutboxItem) {
        self.entries.push_back(Entry {
            item,
            state: EntryState::Queued { not_before: None },
            refusals: 0,
            written: false,
        });
    }

    /// The next frame to write at `now`, with at most `max_in_flight` items unanswered.
    ///
    /// The scan stops at the first queued item: items are written in order, and an item
    /// waiting after a refusal holds back the ones behind it.
    pub fn next(&mut self, now: Instant, max_in_flight: usize) -> Next {
        let mut in_flight = 0;
        for entry in &mut self.entries {
            match entry.state {
                EntryState::InFlight => in_flight += 1,
                EntryState::Queued { not_before } => {
                    if let Some(at) = not_before.filter(|at| *at > now) {
                        return Next::WaitUntil(at);
                    }
                    if in_flight >= max_in_flight {
                        return Next::Idle;
                    }
                    entry.state = EntryState::InFlight;
                    entry.written = true;
                    return Next::Write(entry.item.op.to_frame());
                }
            }
        }
        Next::Idle
    }

    /// The server stored the item with this client id: removes it (the one in flight first,
    /// when the same id was sent twice).
    pub fn ack(&mut self, id: &ClientMsgId) -> Option<OutboxItem> {
        let pos = self
            .position(id, |s| s == EntryState::InFlight)
            .or_else(|| self.position(id, |_| true))?;
        self.entries.remove(pos).map(|e| e.item)
    }

    /// An event of mine shows that the item with this client id is stored: removes it if it
    /// is waiting to be written (not if it is in flight, whose ack is on its way).
    ///
    /// The flag says whether the item had been written before: then that earlier write stored
    /// it (its connection broke before the ack came). An item never written is a repeat of a
    /// client id the server already holds, so it is settled as a duplicate.
    pub fn stored(&mut self, id: &ClientMsgId) -> Option<(OutboxItem, bool)> {
        let pos = self.position(id, |s| matches!(s, EntryState::Queued { .. }))?;
        self.entries.remove(pos).map(|e| (e.item, e.written))
    }

    /// The server refused the item with this client id with `code` at `now`.
    pub fn refused(&mut self, id: &ClientMsgId, code: ErrorCode, now: Instant) -> Refused {
        let Some(pos) = self
            .position(id, |s| s == EntryState::InFlight)
            .or_else(|| self.position(id, |_| true))
        else {
            return Refused::Unknown;
        };
        if code.is_retryable() {
            let Some(entry) = self.entries.get_mut(pos) else {
                return Refused::Unknown;
            };
            entry.refusals = entry.refusals.saturating_add(1);
            let at = now + retry_delay(entry.refusals);
            entry.state = EntryState::Queued {
                not_before: Some(at),
            };
            Refused::Retry { at }
        } else {
            match self.entries.remove(pos) {
                Some(e) => Refused::Dropped(e.item),
                None => Refused::Unknown,
            }
        }
    }

    /// The connection is gone: what was in flight will be written again, with the same ids.
    pub fn disconnected(&mut self) {
        for entry in &mut self.entries {
            if entry.state == EntryState::InFlight {
                entry.state = EntryState::Queued { not_before: None };
            }
        }
    }

    fn position(&self, id: &ClientMsgId, state: impl Fn(EntryState) -> bool) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| e.item.op.client_id() == id && state(e.state))
    }
}

/// The wait after the n-th retryable refusal of one item (n ≥ 1).
fn retry_delay(refusals: u32) -> Duration {
    let factor = 1u32
        .checked_shl(refusals.saturating_sub(1).min(16))
        .unwrap_or(u32::MAX);
    RETRY_BASE
        .checked_mul(factor)
        .unwrap_or(RETRY_CAP)
        .min(RETRY_CAP)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::model::MessageKind;

    fn id(s: &str) -> ClientMsgId {
        ClientMsgId::new(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn item(cid: &str) -> OutboxItem {
        OutboxItem {
            op: Outgoing::Send(SendMessage {
                conv: ConvId(1),
                client_id: id(cid),
                kind: MessageKind::Text,
                text: format!("text of {cid}"),
                attachment: None,
                reply_to: None,
            }),
            queued_at: 0,
        }
    }

    fn written(next: Next) -> ClientMsgId {
        match next {
            Next::Write(f) => match f.client_id() {
                Some(id) => id.clone(),
                None => panic!("frame without client id: {f:?}"),
            },
            other => panic!("expected a write, got {other:?}"),
        }
    }

    fn drain(ob: &mut Outbox, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        while let Next::Write(f) = ob.next(now, usize::MAX) {
            if let Some(id) = f.client_id() {
                out.push(id.to_string());
            }
        }
        out
    }

    #[test]
    fn writes_in_order_and_ack_removes() {
        let now = Instant::now();
        let mut ob = Outbox::default();
        for c in ["a", "b", "c"] {
            ob.push(item(c));
        }
        assert_eq!(drain(&mut ob, now), ["a", "b", "c"]);
        assert_eq!(ob.next(now, usize::MAX), Next::Idle);
        assert_eq!(ob.in_flight(), 3);
        assert!(ob.ack(&id("b")).is_some());
        assert!(ob.ack(&id("b")).is_none());
        assert_eq!(ob.len(), 2);
        assert!(ob.contains(&id("a")) && !ob.contains(&id("b")));
    }

    #[test]
    fn resend_after_reconnect_keeps_ids_and_order() {
        let now = Instant::now();
        let mut ob = Outbox::default();
        for c in ["a", "b", "c", "d"] {
            ob.push(item(c));
        }
        assert_eq!(written(ob.next(now, usize::MAX)), id("a"));
        assert_eq!(written(ob.next(now, usize::MAX)), id("b"));
        ob.ack(&id("a"));
        ob.disconnected();
        assert_eq!(ob.in_flight(), 0);
        assert_eq!(drain(&mut ob, now), ["b", "c", "d"]);
    }

    #[test]
    fn window_limits_what_is_in_flight() {
        let now = Instant::now();
        let mut ob = Outbox::default();
        for c in ["a", "b", "c"] {
            ob.push(item(c));
        }
        assert_eq!(written(ob.next(now, 2)), id("a"));
        assert_eq!(written(ob.next(now, 2)), id("b"));
        assert_eq!(ob.next(now, 2), Next::Idle);
        ob.ack(&id("a"));
        assert_eq!(written(ob.next(now, 2)), id("c"));
    }

    #[test]
    fn retryable_refusal_keeps_the_item_and_holds_the_queue() {
        let now = Instant::now();
        let mut ob = Outbox::default();
        for c in ["a", "b"] {
            ob.push(item(c));
        }
        assert_eq!(written(ob.next(now, 1)), id("a"));
        let at = match ob.refused(&id("a"), ErrorCode::Unavailable, now) {
            Refused::Retry { at } => at,
            other => panic!("{other:?}"),
        };
        assert_eq!(at - now, Duration::from_millis(250));
        // "b" stays behind "a": order is kept.
        assert_eq!(ob.next(now, 10), Next::WaitUntil(at));
        assert_eq!(drain(&mut ob, at), ["a", "b"]);
        // A second refusal waits twice as long.
        match ob.refused(&id("a"), ErrorCode::RateLimited, at) {
            Refused::Retry { at: again } => assert_eq!(again - at, Duration::from_millis(500)),
            other => panic!("{other:?}"),
        }
        assert_eq!(ob.len(), 2);
    }

    #[test]
    fn fatal_refusal_drops_the_item() {
        let now = Instant::now();
        let mut ob = Outbox::default();
        ob.push(item("a"));
        ob.push(item("b"));
        drain(&mut ob, now);
        match ob.refused(&id("a"), ErrorCode::NotMember, now) {
            Refused::Dropped(it) => assert_eq!(it.op.client_id(), &id("a")),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            ob.refused(&id("zzz"), ErrorCode::Invalid, now),
            Refused::Unknown
        );
        assert_eq!(ob.items().len(), 1);
    }

    #[test]
    fn replayed_event_removes_only_waiting_items() {
        let now = Instant::now();
        let mut ob = Outbox::default();
        ob.push(item("a"));
        ob.push(item("b"));
        assert_eq!(written(ob.next(now, usize::MAX)), id("a"));
        // "a" is in flight: its ack will come, so the event does not remove it.
        assert!(ob.stored(&id("a")).is_none());
        // "b" was never written: the server has it from an earlier send of the same id.
        assert_eq!(ob.stored(&id("b")).map(|(_, written)| written), Some(false));
        assert_eq!(ob.len(), 1);
    }

    #[test]
    fn replayed_event_settles_an_item_written_before_the_break() {
        let now = Instant::now();
        let mut ob = Outbox::default();
        ob.push(item("a"));
        assert_eq!(written(ob.next(now, usize::MAX)), id("a"));
        ob.disconnected();
        assert_eq!(ob.stored(&id("a")).map(|(_, written)| written), Some(true));
        assert!(ob.is_empty());
    }

    #[test]
    fn same_id_twice_is_two_items() {
        let now = Instant::now();
        let mut ob = Outbox::default();
        ob.push(item("a"));
        ob.push(item("a"));
        assert_eq!(drain(&mut ob, now), ["a", "a"]);
        assert!(ob.ack(&id("a")).is_some());
        assert!(ob.ack(&id("a")).is_some());
        assert!(ob.is_empty());
    }

    #[test]
    fn retry_delay_is_capped() {
        assert_eq!(retry_delay(1), Duration::from_millis(250));
        assert_eq!(retry_delay(3), Duration::from_secs(1));
        assert_eq!(retry_delay(50), RETRY_CAP);
        assert_eq!(retry_delay(u32::MAX), RETRY_CAP);
    }
}
