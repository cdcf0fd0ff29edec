//! Sync state: for each conversation, the cursor — the highest `seq` delivered to the
//! application with nothing missing below it — and the verdict on each incoming event.
//!
//! Invariant: the application sees each event of a conversation exactly once, in `seq` order,
//! without gaps after its first one. The node replays from the cursors the device sends in
//! `hello`, and delivers live events to every device (the sender's included), so duplicates
//! are normal (an event both replayed and live, a resend after a reconnect) and are dropped
//! here. A gap should never happen; if it does, the engine fills it from the history API
//! before delivering.

use std::collections::BTreeMap;

use protocol::ws::Cursor;
use protocol::{ConvId, Seq};

/// What to do with an incoming event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Next in line (or the first of a conversation without a cursor): deliver it.
    Deliver,
    /// Already delivered: drop it.
    Duplicate,
    /// Events between the cursor and this one are missing: fetch those after `after` first.
    Gap {
        /// The cursor: the last event delivered.
        after: Seq,
    },
}

/// The cursors of every conversation this device has seen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncState {
    cursors: BTreeMap<ConvId, Seq>,
}

impl SyncState {
    /// Sync state resuming from saved cursors (the highest one wins if a conversation is
    /// listed twice).
    pub fn new(cursors: &[Cursor]) -> Self {
        let mut s = SyncState::default();
        for c in cursors {
            s.advance(c.conv, c.seq);
        }
        s
    }

    /// The verdict on event `seq` of `conv`.
    pub fn check(&self, conv: ConvId, seq: Seq) -> Verdict {
        match self.cursors.get(&conv) {
            // No cursor: the node sends a recent window, and we start at whatever comes first.
            None => Verdict::Deliver,
            Some(&cursor) if seq <= cursor => Verdict::Duplicate,
            Some(&cursor) if seq == cursor + 1 => Verdict::Deliver,
            Some(&cursor) => Verdict::Gap { after: cursor },
        }
    }

    /// Records that event `seq` of `conv` was delivered (or, after an unfillable gap, that
    /// nothing up to `seq` will be). Cursors never move back.
    pub fn advance(&mut self, conv: ConvId, seq: Seq) {
        let cursor = self.cursors.entry(conv).or_insert(seq);
        *cursor = (*cursor).max(seq);
    }

    /// The cursor of `conv`, if the device has seen it.
    pub fn cursor(&self, conv: ConvId) -> Option<Seq> {
        self.cursors.get(&conv).copied()
    }

    /// Every cursor, by conversation, as sent in `hello`.
    pub fn cursors(&self) -> Vec<Cursor> {
        self.cursors
            .iter()
            .map(|(&conv, &seq)| Cursor { conv, seq })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: ConvId = ConvId(1);

    #[test]
    fn new_conversation_starts_where_it_starts() {
        let s = SyncState::default();
        assert_eq!(s.check(C, 51), Verdict::Deliver);
        assert_eq!(s.cursor(C), None);
    }

    #[test]
    fn duplicates_are_dropped() {
        let mut s = SyncState::new(&[Cursor { conv: C, seq: 5 }]);
        assert_eq!(s.check(C, 5), Verdict::Duplicate);
        assert_eq!(s.check(C, 1), Verdict::Duplicate);
        assert_eq!(s.check(C, 6), Verdict::Deliver);
        s.advance(C, 6);
        assert_eq!(s.check(C, 6), Verdict::Duplicate);
        assert_eq!(s.check(C, 7), Verdict::Deliver);
    }

    #[test]
    fn gaps_are_detected() {
        let s = SyncState::new(&[Cursor { conv: C, seq: 5 }]);
        assert_eq!(s.check(C, 9), Verdict::Gap { after: 5 });
        // Another conversation is unaffected.
        assert_eq!(s.check(ConvId(2), 9), Verdict::Deliver);
    }

    #[test]
    fn cursors_never_move_back() {
        let mut s = SyncState::new(&[Cursor { conv: C, seq: 5 }, Cursor { conv: C, seq: 3 }]);
        assert_eq!(s.cursor(C), Some(5));
        s.advance(C, 2);
        assert_eq!(s.cursor(C), Some(5));
        s.advance(ConvId(2), 1);
        assert_eq!(
            s.cursors(),
            vec![
                Cursor { conv: C, seq: 5 },
                Cursor {
                    conv: ConvId(2),
                    seq: 1
                }
            ]
        );
    }
}
