//! Per-device ordering: each device gets every event of each of its conversations once, in
//! `seq` order. Events arrive from the local pipeline and from the bus, possibly out of order
//! (two senders on two nodes) or twice (a republish after a crash); this module keeps, per
//! conversation, the highest `seq` written and a small buffer of early arrivals. A gap that is
//! still open after a short wait is filled from the store by the session.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::{ConvId, Seq};

/// How long an early event waits for the ones before it before the store is asked.
pub const GAP_WAIT: Duration = Duration::from_millis(150);

/// Early events buffered per conversation before the gap is filled at once.
const MAX_PENDING: usize = 512;

#[derive(Default)]
struct Conv {
    /// Highest `seq` written to the device.
    seq: Seq,
    /// Early arrivals, by `seq`.
    pending: BTreeMap<Seq, Bytes>,
    /// When the current gap opened.
    gap_since: Option<Instant>,
}

/// What [`Cursors::offer`] did with an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// Written, with this many buffered events after it.
    Written(usize),
    /// Already written before: dropped.
    Duplicate,
    /// Early: kept until the gap before it is filled.
    Buffered,
}

/// The device's position in each of its conversations.
#[derive(Default)]
pub struct Cursors {
    convs: HashMap<ConvId, Conv>,
}

impl Cursors {
    /// Whether the device has a position in `conv`.
    pub fn knows(&self, conv: ConvId) -> bool {
        self.convs.contains_key(&conv)
    }

    /// Sets the position in `conv` (the device has everything up to `seq`).
    pub fn set(&mut self, conv: ConvId, seq: Seq) {
        let c = self.convs.entry(conv).or_default();
        c.seq = seq;
        c.pending.retain(|s, _| *s > seq);
    }

    /// The position in `conv`, if known.
    pub fn get(&self, conv: ConvId) -> Option<Seq> {
        self.convs.get(&conv).map(|c| c.seq)
    }

    /// Offers an event; frames to write now are appended to `out`, in order.
    pub fn offer(
        &mut self,
        conv: ConvId,
        seq: Seq,
        frame: Bytes,
        now: Instant,
        out: &mut Vec<Bytes>,
    ) -> Offer {
        let c = self.convs.entry(conv).or_default();
        if seq <= c.seq || c.pending.contains_key(&seq) {
            return Offer::Duplicate;
        }
        if seq == c.seq + 1 {
            out.push(frame);
            c.seq = seq;
            let before = out.len();
            Self::drain_ready(c, out);
            return Offer::Written(out.len() - before);
        }
        c.pending.insert(seq, frame);
        c.gap_since.get_or_insert(now);
        Offer::Buffered
    }

    /// Teaching modes: writes an event as it comes, without waiting for the ones before it
    /// and without asking the store for them: a later `seq` skips whatever is missing, and an
    /// earlier one is written late if `late` (arrival order) or dropped (bus only).
    pub fn pass(
        &mut self,
        conv: ConvId,
        seq: Seq,
        frame: Bytes,
        late: bool,
        out: &mut Vec<Bytes>,
    ) -> Offer {
        let c = self.convs.entry(conv).or_default();
        if seq == c.seq || (seq < c.seq && !late) {
            return Offer::Duplicate;
        }
        out.push(frame);
        c.seq = c.seq.max(seq);
        c.pending.clear();
        c.gap_since = None;
        Offer::Written(0)
    }

    fn drain_ready(c: &mut Conv, out: &mut Vec<Bytes>) {
        while let Some(entry) = c.pending.first_entry() {
            if *entry.key() != c.seq + 1 {
                break;
            }
            c.seq += 1;
            out.push(entry.remove());
        }
        c.gap_since = if c.pending.is_empty() {
            None
        } else {
            c.gap_since.or(Some(Instant::now()))
        };
    }

    /// Gaps to fill from the store now: `(conv, after, upto)` asks for the events with
    /// `after < seq < upto`.
    pub fn due_gaps(&self, now: Instant) -> Vec<(ConvId, Seq, Seq)> {
        self.due(now).collect()
    }

    /// Whether any gap is to be filled now (see [`Cursors::due_gaps`]).
    pub fn gaps_due(&self, now: Instant) -> bool {
        self.due(now).next().is_some()
    }

    fn due(&self, now: Instant) -> impl Iterator<Item = (ConvId, Seq, Seq)> + '_ {
        self.convs.iter().filter_map(move |(conv, c)| {
            let since = c.gap_since?;
            let first = *c.pending.keys().next()?;
            let due = now.duration_since(since) >= GAP_WAIT || c.pending.len() >= MAX_PENDING;
            due.then_some((*conv, c.seq, first))
        })
    }

    /// When the next gap falls due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.convs
            .values()
            .filter_map(|c| c.gap_since)
            .min()
            .map(|t| t + GAP_WAIT)
    }

    /// Writes events fetched from the store for a gap of `conv` (ascending), then whatever the
    /// buffer holds after them.
    pub fn fill(&mut self, conv: ConvId, fetched: Vec<(Seq, Bytes)>, out: &mut Vec<Bytes>) {
        let c = self.convs.entry(conv).or_default();
        for (seq, frame) in fetched {
            if seq == c.seq + 1 {
                out.push(frame);
                c.seq = seq;
                c.pending.remove(&seq);
            }
        }
        Self::drain_ready(c, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(n: u64) -> Bytes {
        Bytes::from(format!("e{n}"))
    }

    fn names(out: &[Bytes]) -> Vec<String> {
        out.iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    #[test]
    fn passing_skips_gaps_and_writes_late_events_only_when_asked() {
        let mut c = Cursors::default();
        c.set(ConvId(1), 1);
        let mut out = Vec::new();
        assert_eq!(
            c.pass(ConvId(1), 3, f(3), false, &mut out),
            Offer::Written(0)
        );
        assert_eq!(
            c.pass(ConvId(1), 2, f(2), false, &mut out),
            Offer::Duplicate
        );
        assert_eq!(
            c.pass(ConvId(1), 2, f(2), true, &mut out),
            Offer::Written(0)
        );
        assert_eq!(c.pass(ConvId(1), 3, f(3), true, &mut out), Offer::Duplicate);
        assert_eq!(names(&out), vec!["e3", "e2"]);
        assert_eq!(c.get(ConvId(1)), Some(3));
        assert!(c.due_gaps(Instant::now() + GAP_WAIT * 2).is_empty());
    }

    #[test]
    fn in_order_events_are_written_and_repeats_dropped() {
        let mut c = Cursors::default();
        let conv = ConvId(1);
        c.set(conv, 4);
        let mut out = Vec::new();
        let now = Instant::now();
        assert_eq!(c.offer(conv, 5, f(5), now, &mut out), Offer::Written(0));
        assert_eq!(c.offer(conv, 5, f(5), now, &mut out), Offer::Duplicate);
        assert_eq!(c.offer(conv, 3, f(3), now, &mut out), Offer::Duplicate);
        assert_eq!(names(&out), ["e5"]);
        assert_eq!(c.get(conv), Some(5));
    }

    #[test]
    fn early_events_wait_for_the_gap() {
        let mut c = Cursors::default();
        let conv = ConvId(1);
        c.set(conv, 0);
        let mut out = Vec::new();
        let t0 = Instant::now();
        assert_eq!(c.offer(conv, 3, f(3), t0, &mut out), Offer::Buffered);
        assert_eq!(c.offer(conv, 2, f(2), t0, &mut out), Offer::Buffered);
        assert_eq!(c.offer(conv, 3, f(3), t0, &mut out), Offer::Duplicate);
        assert!(out.is_empty());
        assert!(c.due_gaps(t0).is_empty());
        assert_eq!(c.next_deadline(), Some(t0 + GAP_WAIT));
        assert_eq!(c.offer(conv, 1, f(1), t0, &mut out), Offer::Written(2));
        assert_eq!(names(&out), ["e1", "e2", "e3"]);
        assert_eq!(c.next_deadline(), None);
    }

    #[test]
    fn an_overdue_gap_is_filled_from_the_store() {
        let mut c = Cursors::default();
        let conv = ConvId(9);
        c.set(conv, 10);
        let mut out = Vec::new();
        let t0 = Instant::now();
        c.offer(conv, 13, f(13), t0, &mut out);
        c.offer(conv, 15, f(15), t0, &mut out);
        let due = c.due_gaps(t0 + GAP_WAIT);
        assert_eq!(due, vec![(conv, 10, 13)]);
        c.fill(conv, vec![(11, f(11)), (12, f(12))], &mut out);
        assert_eq!(names(&out), ["e11", "e12", "e13"]);
        // 14 is still missing: the gap before 15 stays open.
        assert_eq!(c.due_gaps(t0 + GAP_WAIT * 3), vec![(conv, 13, 15)]);
        out.clear();
        c.fill(conv, vec![(14, f(14)), (15, f(15))], &mut out);
        assert_eq!(names(&out), ["e14", "e15"]);
        assert_eq!(c.get(conv), Some(15));
        assert!(c.next_deadline().is_none());
    }

    #[test]
    fn a_full_buffer_is_due_at_once() {
        let mut c = Cursors::default();
        let conv = ConvId(2);
        c.set(conv, 0);
        let mut out = Vec::new();
        let t0 = Instant::now();
        for s in 2..(2 + MAX_PENDING as u64) {
            c.offer(conv, s, f(s), t0, &mut out);
        }
        assert_eq!(c.due_gaps(t0), vec![(conv, 0, 2)]);
    }
}
