//! Token buckets: one device's inbound frames on a node, and the controller's throttles keyed
//! by address or account (login and registration attempts).
//!
//! A keyed throttle holds at most a fixed number of keys, so that its memory is bounded
//! whatever the load: a bucket that has filled up again says nothing a fresh one would not, so
//! full buckets are the first to go, then any.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A token bucket: `rate` tokens per second, up to `burst`.
#[derive(Clone, Debug)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
}

/// A bucket's shape.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    /// Tokens per second.
    pub per_sec: f64,
    /// Most tokens held (a fresh bucket is full).
    pub burst: f64,
}

impl Rate {
    /// `n` per `period`, in bursts of up to `n`.
    pub fn per(n: u32, period: Duration) -> Rate {
        let n = f64::from(n.max(1));
        Rate {
            per_sec: n / period.as_secs_f64().max(f64::MIN_POSITIVE),
            burst: n,
        }
    }

    /// `rate` per second, in bursts of up to `burst`.
    pub fn per_second(rate: u32, burst: u32) -> Rate {
        Rate {
            per_sec: f64::from(rate),
            burst: f64::from(burst),
        }
    }
}

impl Bucket {
    /// A full bucket.
    pub fn full(rate: Rate, now: Instant) -> Bucket {
        Bucket {
            tokens: rate.burst,
            last: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_sec).min(rate.burst);
        self.last = now;
    }

    /// Takes a token, or says how long until there is one.
    pub fn take(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        self.check(rate, now)?;
        self.tokens -= 1.0;
        Ok(())
    }

    /// Whether a token is there, without taking it; if not, how long until there is one.
    pub fn check(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / rate.per_sec.max(f64::MIN_POSITIVE),
            ))
        }
    }

    fn is_full(&self, rate: Rate, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * rate.per_sec >= rate.burst
    }
}

/// One bucket per key, at most `cap` keys.
pub struct Keyed<K> {
    rate: Rate,
    cap: usize,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    /// Buckets of `rate`, for at most `cap` keys.
    pub fn new(rate: Rate, cap: usize) -> Self {
        Keyed {
            rate,
            cap: cap.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `key` has a token now, without taking it; if not, how long until it has.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        let now = Instant::now();
        match self.buckets.lock().get_mut(key) {
            Some(b) => b.check(self.rate, now),
            None => Ok(()),
        }
    }

    /// Takes a token of `key`; if it has none, how long until it has.
    pub fn take(&self, key: K) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        if !buckets.contains_key(&key) && buckets.len() >= self.cap {
            let rate = self.rate;
            buckets.retain(|_, b| !b.is_full(rate, now));
            if buckets.len() >= self.cap
                && let Some(any) = buckets.keys().next().cloned()
            {
                buckets.remove(&any);
            }
        }
        buckets
            .entry(key)
            .or_insert_with(|| Bucket::full(self.rate, now))
            .take(self.rate, now)
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.buckets.lock().len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_says_when() {
        let rate = Rate::per_second(10, 5);
        let now = Instant::now();
        let mut b = Bucket::full(rate, now);
        assert!((0..5).all(|_| b.take(rate, now).is_ok()));
        let wait = b.take(rate, now).expect_err("empty");
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100));
        assert!(b.take(rate, now + Duration::from_millis(100)).is_ok());
    }

    #[test]
    fn keys_are_limited_apart_and_checking_takes_nothing() {
        let k = Keyed::new(Rate::per(2, Duration::from_secs(3600)), 100);
        assert!(k.check(&"a").is_ok());
        assert!(k.take("a").is_ok());
        assert!(k.take("a").is_ok());
        assert!(k.check(&"a").is_err());
        assert!(k.take("a").is_err());
        assert!(k.check(&"b").is_ok());
        assert!(k.take("b").is_ok());
        assert!(k.check(&"b").is_ok());
    }

    #[test]
    fn the_keys_held_stay_under_the_cap() {
        let k = Keyed::new(Rate::per(1, Duration::from_secs(3600)), 3);
        for i in 0..100 {
            let _ = k.take(i);
        }
        assert!(k.len() <= 3);
        // The latest key is held, and limited.
        assert!(k.check(&99).is_err());
    }
}
