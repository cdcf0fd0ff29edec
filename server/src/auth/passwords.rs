//! Password hashes (Argon2id), computed off the async threads, a few at a time.
//!
//! Each hash holds its cost's memory (19 MiB at the standard cost) for the whole of its run, on
//! a blocking thread of its own: unbounded, a burst of logins took the controller from 60 to
//! 511 MiB with 24 at once. So at most [`Passwords::concurrency`] run at once; the others wait
//! for a turn, for a while, and are then refused as busy. A login that names no user checks
//! its password against a decoy hash, so that it takes as long as one that names a user and
//! its timing says nothing about which names exist.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

/// How hard password hashing works.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum HashCost {
    /// Argon2id with the recommended parameters (19 MiB, 2 passes).
    #[default]
    Standard,
    /// Argon2id with 1 MiB and 1 pass: for test clusters that log in thousands of devices.
    /// Never for real accounts.
    Fast,
}

/// How long a hash waits for its turn before the attempt is refused as busy.
pub const HASH_WAIT: Duration = Duration::from_secs(10);

/// Hashes and checks passwords. Cheap to clone.
#[derive(Clone)]
pub struct Passwords {
    cost: HashCost,
    /// One permit per hash that may run at once.
    turns: Arc<Semaphore>,
    concurrency: usize,
    /// Hashes running now, and the most that ever ran at once (a metric).
    running: Arc<(AtomicUsize, AtomicUsize)>,
    /// A hash of a password nobody has, checked for logins that name no user.
    decoy: Arc<str>,
}

impl std::fmt::Debug for Passwords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passwords")
            .field("cost", &self.cost)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

/// Why hashing failed (never for a wrong password: that is `Ok(false)`).
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Every turn was taken for [`HASH_WAIT`]: too many attempts at once.
    #[error("too many password checks at once")]
    Busy,
    /// The hasher failed.
    #[error("password hashing failed: {0}")]
    Failed(String),
}

fn failed(e: impl std::fmt::Display) -> HashError {
    HashError::Failed(e.to_string())
}

impl Passwords {
    /// A hasher with the given cost, running at most `concurrency` hashes at once (at least
    /// one). Makes the decoy hash first.
    pub async fn new(cost: HashCost, concurrency: usize) -> Result<Self, HashError> {
        let concurrency = concurrency.max(1);
        let mut p = Passwords {
            cost,
            turns: Arc::new(Semaphore::new(concurrency)),
            concurrency,
            running: Arc::default(),
            decoy: Arc::from(""),
        };
        let nobody: String = {
            use rand::Rng;
            let mut rng = rand::rng();
            (0..32)
                .map(|_| char::from(rng.sample(rand::distr::Alphanumeric)))
                .collect()
        };
        p.decoy = Arc::from(p.hash(nobody).await?);
        Ok(p)
    }

    /// Hashes that may run at once.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    fn argon2(&self) -> Result<Argon2<'static>, HashError> {
        let params = match self.cost {
            HashCost::Standard => Params::new(19 * 1024, 2, 1, None),
            HashCost::Fast => Params::new(1024, 1, 1, None),
        }
        .map_err(failed)?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }

    /// Runs `work` on a blocking thread once it has a turn.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(Argon2<'static>) -> Result<T, HashError> + Send + 'static,
    ) -> Result<T, HashError> {
        let argon = self.argon2()?;
        let _turn = match tokio::time::timeout(HASH_WAIT, self.turns.acquire()).await {
            Ok(Ok(turn)) => turn,
            Ok(Err(_)) | Err(_) => {
                metrics::counter!("chat_password_checks_refused_total").increment(1);
                return Err(HashError::Busy);
            }
        };
        let running = self.running.clone();
        let now = running.0.fetch_add(1, Ordering::Relaxed) + 1;
        let peak = running.1.fetch_max(now, Ordering::Relaxed).max(now);
        metrics::gauge!("chat_password_hashes_running").set(now as f64);
        metrics::gauge!("chat_password_hashes_peak").set(peak as f64);
        let result = tokio::task::spawn_blocking(move || {
            let result = work(argon);
            let left = running.0.fetch_sub(1, Ordering::Relaxed) - 1;
            metrics::gauge!("chat_password_hashes_running").set(left as f64);
            result
        })
        .await
        .map_err(failed)?;
        metrics::counter!("chat_password_hashes_total").increment(1);
        result
    }

    /// Hashes a new password (PHC string).
    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        self.run(move |argon| {
            let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
            argon
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(failed)
        })
        .await
    }

    /// Checks a password against a stored hash (whatever cost it was made with).
    pub async fn verify(&self, password: String, hash: String) -> Result<bool, HashError> {
        self.run(move |argon| {
            let parsed = PasswordHash::new(&hash).map_err(failed)?;
            Ok(argon.verify_password(password.as_bytes(), &parsed).is_ok())
        })
        .await
    }

    /// Checks a password for a login that names no user: as long as [`Passwords::verify`]
    /// takes, and always `false`.
    pub async fn verify_nobody(&self, password: String) -> Result<bool, HashError> {
        self.verify(password, self.decoy.to_string()).await?;
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passwords_hash_and_verify_and_nobody_never_matches() {
        let p = Passwords::new(HashCost::Fast, 2).await.expect("hasher");
        let h = p.hash("correct horse".into()).await.expect("hash");
        assert!(
            p.verify("correct horse".into(), h.clone())
                .await
                .expect("verify")
        );
        assert!(!p.verify("wrong horse".into(), h).await.expect("verify"));
        assert!(!p.verify_nobody("".into()).await.expect("decoy"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn no_more_hashes_run_at_once_than_allowed() {
        let p = Passwords::new(HashCost::Fast, 2).await.expect("hasher");
        let all = (0..16).map(|i| {
            let p = p.clone();
            tokio::spawn(async move { p.hash(format!("password {i}")).await })
        });
        for h in futures::future::join_all(all).await {
            h.expect("joined").expect("hashed");
        }
        let peak = p.running.1.load(Ordering::Relaxed);
        assert!((1..=2).contains(&peak), "{peak} hashes ran at once");
    }
}
