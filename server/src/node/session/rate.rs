//! A device's inbound rate limit: a token bucket, and the strikes that close a device which
//! keeps sending over it.

use std::time::Instant;

/// What to do with a frame that just arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Admit {
    /// Within the rate: handle it.
    Pass,
    /// Over the rate: refuse it with `rate_limited`, keep the socket.
    Refuse,
    /// Over the rate once too often: refuse it and close the socket.
    Close,
}

/// One device's limit: `rate` frames per second, bursts of `burst`, closed after `strikes`
/// refused frames.
pub(super) struct RateLimit {
    bucket: Bucket,
    strikes: u32,
    strikes_before_close: u32,
}

impl RateLimit {
    pub(super) fn new(rate: u32, burst: u32, strikes_before_close: u32) -> Self {
        RateLimit {
            bucket: Bucket::new(rate, burst),
            strikes: 0,
            strikes_before_close,
        }
    }

    /// Counts one inbound frame.
    pub(super) fn admit(&mut self) -> Admit {
        if self.bucket.take() {
            return Admit::Pass;
        }
        self.strikes += 1;
        metrics::counter!("chat_frames_refused_total", "reason" => "rate").increment(1);
        if self.strikes >= self.strikes_before_close {
            Admit::Close
        } else {
            Admit::Refuse
        }
    }
}

/// A token bucket: `rate` frames per second, bursts of `burst`.
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u32, burst: u32) -> Self {
        Bucket {
            tokens: f64::from(burst),
            rate: f64::from(rate),
            burst: f64::from(burst),
            last: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_bursts_then_the_rate() {
        let mut b = Bucket::new(10, 5);
        assert!((0..5).all(|_| b.take()));
        assert!(!b.take());
    }

    #[test]
    fn refusals_close_after_the_strikes() {
        // A rate so low that no token comes back during the test.
        let mut r = RateLimit::new(1, 2, 3);
        assert_eq!(r.admit(), Admit::Pass);
        assert_eq!(r.admit(), Admit::Pass);
        assert_eq!(r.admit(), Admit::Refuse);
        assert_eq!(r.admit(), Admit::Refuse);
        assert_eq!(r.admit(), Admit::Close);
    }
}
