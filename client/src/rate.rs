//! Pacing of frames sent to the node. Nodes refuse frames beyond a per-device rate and close a
//! device that keeps going (`rate_limited`, close 4008); a device that comes back after a day
//! offline with a full outbox must not trip that, so the engine spends tokens from a bucket a
//! little below the node's limits before writing each frame.

use std::time::{Duration, Instant};

use protocol::limits;

/// A frame rate: a sustained rate plus a burst.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Frames per second, on average.
    pub per_sec: f64,
    /// Frames that may go at once after a quiet period.
    pub burst: f64,
}

impl Default for RateLimit {
    /// 90% of the node's default rate and half its burst: margin for clock drift between the
    /// two buckets and for frames the node counts that the outbox does not see.
    fn default() -> Self {
        RateLimit {
            per_sec: f64::from(limits::RATE_PER_SEC) * 0.9,
            burst: f64::from(limits::RATE_BURST) / 2.0,
        }
    }
}

/// A token bucket. It starts full.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    limit: RateLimit,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(limit: RateLimit, now: Instant) -> Self {
        let limit = RateLimit {
            per_sec: limit.per_sec.max(0.001),
            burst: limit.burst.max(1.0),
        };
        TokenBucket {
            tokens: limit.burst,
            limit,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.limit.per_sec).min(self.limit.burst);
        self.last = now;
    }

    /// Takes a token if one is there; otherwise says when one will be.
    pub fn take(&mut self, now: Instant) -> Result<(), Instant> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / self.limit.per_sec;
            Err(now + Duration::from_secs_f64(wait))
        }
    }
}

impl TokenBucket {
    /// Gives back a token taken for a frame that was not sent after all.
    pub fn refund(&mut self) {
        self.tokens = (self.tokens + 1.0).min(self.limit.burst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_steady_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(
            RateLimit {
                per_sec: 10.0,
                burst: 3.0,
            },
            t0,
        );
        assert!(b.take(t0).is_ok());
        assert!(b.take(t0).is_ok());
        assert!(b.take(t0).is_ok());
        let ready = match b.take(t0) {
            Err(at) => at,
            Ok(()) => panic!("the bucket should be empty"),
        };
        assert_eq!(ready.duration_since(t0).as_millis(), 100);
        assert!(b.take(ready).is_ok());
        assert!(b.take(ready).is_err());
        // A long pause refills only up to the burst.
        let later = ready + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(b.take(later).is_ok());
        }
        assert!(b.take(later).is_err());
    }
}
