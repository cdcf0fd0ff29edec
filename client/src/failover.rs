//! Deciding what to do when a session ends: stop for good, or try again — how soon, and
//! avoiding which node. Pure logic, driven by the engine with the clock passed in, so every
//! rule here is unit-tested without sockets.
//!
//! The rules:
//! - Auth failures (upgrade refused with 401, close 4001, close 4003 revoked) and protocol
//!   refusals (close 4000) stop the engine: retrying cannot help, only the user can.
//! - A node that drains (`Moving`, close 1012) is left at once, without waiting, and excluded
//!   from the next assignment.
//! - A node that dies (refused, reset, end of stream, silence) is excluded for a short while
//!   and the engine backs off: exponential from `base`, doubling to `cap`, with jitter so that
//!   thousands of devices dropped by one node do not all come back in the same millisecond.
//! - Close 4009 (this device read too slowly) reconnects at once; the resync covers the rest.
//! - Backoff resets after a session that got as far as `synced`.

use std::time::{Duration, Instant};

use protocol::NodeId;
use protocol::ws::{ErrorCode, close};
use rand::Rng;

use crate::events::{Disconnect, StopReason};

/// How long to wait between attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Delay before the first retry.
    pub base: Duration,
    /// Longest delay.
    pub cap: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(5),
        }
    }
}

/// Exponential backoff with "equal jitter": the n-th delay is drawn uniformly from
/// `[d/2, d]` where `d = min(cap, base · 2ⁿ)`. Half the delay is guaranteed, so retries never
/// collapse to zero, and the other half is spread to de-synchronise clients.
#[derive(Clone, Debug)]
pub struct Backoff {
    policy: BackoffPolicy,
    /// Attempts that have failed since the last good session.
    failures: u32,
}

impl Backoff {
    /// A backoff with no failure yet.
    pub fn new(policy: BackoffPolicy) -> Self {
        Backoff {
            policy,
            failures: 0,
        }
    }

    /// Failed attempts since the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Forgets past failures (after a good session).
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// The largest delay the next call may return (before jitter).
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(30)).unwrap_or(u32::MAX);
        self.policy
            .base
            .checked_mul(factor)
            .unwrap_or(self.policy.cap)
            .min(self.policy.cap)
    }

    /// Records one more failure and returns how long to wait before the next attempt.
    /// `immediate` asks for no wait; it is honoured only for the first failure in a row, so
    /// a node that keeps sending devices away cannot make them spin.
    pub fn next_delay(&mut self, immediate: bool, rng: &mut impl Rng) -> Duration {
        if immediate && self.failures == 0 {
            self.failures = 1;
            return Duration::ZERO;
        }
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let half = ceiling / 2;
        let spread = u64::try_from((ceiling - half).as_micros()).unwrap_or(u64::MAX);
        half + Duration::from_micros(rng.random_range(0..=spread))
    }
}

/// Nodes to leave out of the next assignments, each for a limited time: a node that just died
/// is likely still listed by the controller until its lease expires, but a node that merely
/// hiccuped should get devices again soon.
#[derive(Clone, Debug)]
pub struct Exclusions {
    ttl: Duration,
    nodes: Vec<(NodeId, Instant)>,
}

impl Exclusions {
    /// An empty set whose entries last `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Exclusions {
            ttl,
            nodes: Vec::new(),
        }
    }

    /// Excludes `node` until `now + ttl` (renewing it if it was already excluded).
    pub fn add(&mut self, node: NodeId, now: Instant) {
        let until = now + self.ttl;
        match self.nodes.iter_mut().find(|(n, _)| *n == node) {
            Some(entry) => entry.1 = until,
            None => self.nodes.push((node, until)),
        }
    }

    /// The nodes excluded at `now`, forgetting the expired ones.
    pub fn current(&mut self, now: Instant) -> Vec<NodeId> {
        self.nodes.retain(|(_, until)| *until > now);
        self.nodes.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Forgets every exclusion (when excluding left no node at all).
    pub fn clear(&mut self) {
        self.nodes.clear();
    }

    /// Whether nothing is excluded (expired entries included until `current` prunes them).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// What to do after a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Stop for good and tell the application.
    Stop(StopReason),
    /// Try again.
    Retry {
        /// A node to leave out of the next assignments.
        exclude: Option<NodeId>,
        /// Reconnect without waiting (subject to [`Backoff::next_delay`]'s rule).
        immediate: bool,
    },
}

/// The plan for a session that ended with `d`.
pub fn plan(d: &Disconnect) -> Plan {
    let retry = |exclude: Option<&NodeId>, immediate| Plan::Retry {
        exclude: exclude.cloned(),
        immediate,
    };
    match d {
        Disconnect::Shutdown => Plan::Stop(StopReason::Shutdown),
        Disconnect::Unauthorized { message } => Plan::Stop(StopReason::Unauthorized {
            message: message.clone(),
        }),
        Disconnect::Revoked => Plan::Stop(StopReason::Revoked),
        Disconnect::Controller { .. } | Disconnect::NoNode | Disconnect::Gap { .. } => {
            retry(None, false)
        }
        Disconnect::Rejected {
            node,
            code,
            message,
            ..
        } => match code {
            Some(ErrorCode::Revoked) => Plan::Stop(StopReason::Revoked),
            Some(ErrorCode::Unauthorized) => Plan::Stop(StopReason::Unauthorized {
                message: message.clone(),
            }),
            Some(ErrorCode::UnsupportedVersion) => Plan::Stop(StopReason::Protocol {
                message: message.clone(),
            }),
            _ => retry(Some(node), false),
        },
        Disconnect::ConnectFailed { node, .. }
        | Disconnect::Lost { node, .. }
        | Disconnect::Timeout { node, .. } => retry(Some(node), false),
        Disconnect::Moving { node, .. } => retry(Some(node), true),
        Disconnect::Closed { node, code, reason } => match *code {
            close::UNAUTHORIZED => Plan::Stop(StopReason::Unauthorized {
                message: if reason.is_empty() {
                    "the token expired".to_owned()
                } else {
                    reason.clone()
                },
            }),
            close::REVOKED => Plan::Stop(StopReason::Revoked),
            close::PROTOCOL => Plan::Stop(StopReason::Protocol {
                message: if reason.is_empty() {
                    "the node refused the session".to_owned()
                } else {
                    reason.clone()
                },
            }),
            // Our queue on the node overflowed; the node is fine, and the resync on the next
            // session delivers what was dropped.
            close::TOO_SLOW => retry(None, true),
            close::SERVICE_RESTART => retry(Some(node), true),
            // The node is fine but wants fewer frames from us; come back after a pause.
            close::RATE_LIMITED | close::NORMAL => retry(None, false),
            _ => retry(Some(node), false),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn node(s: &str) -> NodeId {
        NodeId::new(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut b = Backoff::new(BackoffPolicy::default());
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            let ceiling = b.ceiling();
            let d = b.next_delay(false, &mut rng);
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "{d:?} outside [{ceiling:?}/2, {ceiling:?}]"
            );
            ceilings.push(ceiling.as_millis());
        }
        assert_eq!(
            ceilings,
            [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000]
        );
        assert_eq!(b.failures(), 10);
    }

    #[test]
    fn backoff_survives_huge_failure_counts() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut b = Backoff::new(BackoffPolicy {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
        });
        for _ in 0..200 {
            assert!(b.next_delay(false, &mut rng) <= Duration::from_secs(60));
        }
    }

    #[test]
    fn immediate_only_for_the_first_failure_and_reset_restarts() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut b = Backoff::new(BackoffPolicy::default());
        assert_eq!(b.next_delay(true, &mut rng), Duration::ZERO);
        // A second "immediate" in a row backs off: the next node may be draining too.
        let d = b.next_delay(true, &mut rng);
        assert!(d >= Duration::from_millis(100) && d <= Duration::from_millis(200));
        b.reset();
        assert_eq!(b.failures(), 0);
        assert_eq!(b.next_delay(true, &mut rng), Duration::ZERO);
        b.reset();
        let d = b.next_delay(false, &mut rng);
        assert!(d >= Duration::from_millis(50) && d <= Duration::from_millis(100));
    }

    #[test]
    fn exclusions_expire_and_renew() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        let mut ex = Exclusions::new(ttl);
        ex.add(node("a"), t0);
        ex.add(node("b"), t0 + Duration::from_secs(5));
        assert_eq!(ex.current(t0), vec![node("a"), node("b")]);
        assert_eq!(ex.current(t0 + Duration::from_secs(10)), vec![node("b")]);
        // Renewing pushes the expiry out instead of adding a second entry.
        ex.add(node("b"), t0 + Duration::from_secs(12));
        assert_eq!(ex.current(t0 + Duration::from_secs(20)), vec![node("b")]);
        assert!(ex.current(t0 + Duration::from_secs(22)).is_empty());
        assert!(ex.is_empty());
        ex.add(node("c"), t0);
        ex.clear();
        assert!(ex.current(t0).is_empty());
    }

    #[test]
    fn terminal_failures_stop() {
        let n = node("n1");
        let closed = |code| Disconnect::Closed {
            node: n.clone(),
            code,
            reason: String::new(),
        };
        assert!(matches!(
            plan(&closed(close::UNAUTHORIZED)),
            Plan::Stop(StopReason::Unauthorized { .. })
        ));
        assert_eq!(
            plan(&closed(close::REVOKED)),
            Plan::Stop(StopReason::Revoked)
        );
        assert!(matches!(
            plan(&closed(close::PROTOCOL)),
            Plan::Stop(StopReason::Protocol { .. })
        ));
        assert!(matches!(
            plan(&Disconnect::Unauthorized {
                message: "expired".into()
            }),
            Plan::Stop(StopReason::Unauthorized { .. })
        ));
        assert_eq!(plan(&Disconnect::Revoked), Plan::Stop(StopReason::Revoked));
        assert_eq!(
            plan(&Disconnect::Shutdown),
            Plan::Stop(StopReason::Shutdown)
        );
        assert_eq!(
            plan(&Disconnect::Rejected {
                node: n.clone(),
                status: 403,
                code: Some(ErrorCode::Revoked),
                message: "revoked".into()
            }),
            Plan::Stop(StopReason::Revoked)
        );
    }

    #[test]
    fn failures_retry_with_the_right_exclusion_and_urgency() {
        let n = node("n1");
        let some = Some(n.clone());
        let closed = |code| Disconnect::Closed {
            node: n.clone(),
            code,
            reason: String::new(),
        };
        let r = |exclude: Option<NodeId>, immediate| Plan::Retry { exclude, immediate };
        assert_eq!(
            plan(&Disconnect::Moving {
                node: n.clone(),
                reason: "drain".into()
            }),
            r(some.clone(), true)
        );
        assert_eq!(plan(&closed(close::SERVICE_RESTART)), r(some.clone(), true));
        assert_eq!(plan(&closed(close::TOO_SLOW)), r(None, true));
        assert_eq!(plan(&closed(close::RATE_LIMITED)), r(None, false));
        assert_eq!(plan(&closed(close::GOING_AWAY)), r(some.clone(), false));
        assert_eq!(plan(&closed(close::INTERNAL)), r(some.clone(), false));
        assert_eq!(
            plan(&Disconnect::Lost {
                node: n.clone(),
                message: "eof".into()
            }),
            r(some.clone(), false)
        );
        assert_eq!(
            plan(&Disconnect::ConnectFailed {
                node: n.clone(),
                message: "refused".into()
            }),
            r(some.clone(), false)
        );
        assert_eq!(
            plan(&Disconnect::Timeout {
                node: n.clone(),
                waiting_for: "pong".into()
            }),
            r(some.clone(), false)
        );
        assert_eq!(plan(&Disconnect::NoNode), r(None, false));
        assert_eq!(
            plan(&Disconnect::Controller {
                message: "refused".into()
            }),
            r(None, false)
        );
        assert_eq!(
            plan(&Disconnect::Rejected {
                node: n.clone(),
                status: 503,
                code: Some(ErrorCode::Unavailable),
                message: "draining".into()
            }),
            r(some, false)
        );
    }
}
