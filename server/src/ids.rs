//! Clocks and Snowflake ids. Every process that persists events (nodes, controllers) makes
//! message ids with the worker id its registry lease gave it, so ids are unique cluster-wide
//! without coordination per id.

use std::sync::atomic::{AtomicI64, AtomicU16, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use protocol::{MessageId, Millis};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Makes Snowflake ids for one worker, lock-free: the last id is kept in an atomic and each
/// new id is the larger of "last + 1" and "now with sequence 0", so ids never repeat and never
/// go backwards even if the wall clock does (they run ahead of it for a while instead).
#[derive(Debug)]
pub struct Snowflakes {
    worker: AtomicU16,
    last: AtomicI64,
}

impl Snowflakes {
    /// A generator for `worker` (0..1024).
    pub fn new(worker: u16) -> Self {
        Snowflakes {
            worker: AtomicU16::new(worker & 0x3ff),
            last: AtomicI64::new(0),
        }
    }

    /// The worker id.
    pub fn worker(&self) -> u16 {
        self.worker.load(Ordering::Relaxed)
    }

    /// Switches to another worker id (after a new lease). Ids keep increasing.
    pub fn set_worker(&self, worker: u16) {
        self.worker.store(worker & 0x3ff, Ordering::Relaxed);
    }

    /// The next id.
    pub fn next(&self) -> MessageId {
        let worker = self.worker();
        let floor = MessageId::from_parts(now_ms(), worker, 0).0;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let mut candidate = floor.max(last + 1);
            // The sequence field may carry into the worker bits; skip to the next millisecond.
            if MessageId(candidate).worker() != worker {
                let ms = MessageId(candidate).unix_ms() + 1;
                candidate = MessageId::from_parts(ms, worker, 0).0;
            }
            match self.last.compare_exchange_weak(
                last,
                candidate,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return MessageId(candidate),
                Err(actual) => last = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    #[test]
    fn ids_are_unique_increasing_and_carry_the_worker() {
        let g = Snowflakes::new(77);
        let mut prev = MessageId(0);
        for _ in 0..20_000 {
            let id = g.next();
            assert!(id > prev);
            assert_eq!(id.worker(), 77);
            prev = id;
        }
    }

    #[test]
    fn ids_are_unique_across_threads() {
        let g = Arc::new(Snowflakes::new(3));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || (0..10_000).map(|_| g.next()).collect::<Vec<_>>())
            })
            .collect();
        let mut all = HashSet::new();
        for h in handles {
            for id in h.join().unwrap_or_default() {
                assert!(all.insert(id), "duplicate id {id}");
            }
        }
        assert_eq!(all.len(), 40_000);
    }
}
