//! A device's inbound rate limit: a token bucket, and the strikes that close a device which
//! keeps sending over it.

use std::time::Instant;

use crate::limit::{Bucket, Rate};

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
    rate: Rate,
    bucket: Bucket,
    strikes: u32,
    strikes_before_close: u32,
}

impl RateLimit {
    pub(super) fn new(rate: u32, burst: u32, strikes_before_close: u32) -> Self {
        let rate = Rate::per_second(rate, burst);
        RateLimit {
            rate,
            bucket: Bucket::full(rate, Instant::now()),
            strikes: 0,
            strikes_before_close,
        }
    }

    /// Counts one inbound frame.
    pub(super) fn admit(&mut self) -> Admit {
        if self.bucket.take(self.rate, Instant::now()).is_ok() {
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

#[cfg(test)]
mod tests {
    use super::*;

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
