//! Throttles on the doors that cost a password hash: registration and login.
//!
//! - Every attempt from one address (an IPv6 address counts by its /64) takes a token of that
//!   address's bucket: a script cannot hash on the controller's CPU without limit.
//! - Every failed login takes a token of the account's bucket, checked before the next attempt
//!   is even hashed: a password cannot be guessed faster than the bucket refills, from however
//!   many addresses. A name that does not exist has a bucket too, so the answer says nothing
//!   about which names exist.
//!
//! Over a limit the answer is `429 rate_limited` with `Retry-After`. Behind a reverse proxy
//! every request comes from the proxy's address: list the proxy as trusted and the client's
//! address is taken from the last hop of its `X-Forwarded-For` instead.

use std::net::IpAddr;
use std::time::Duration;

use axum::http::HeaderMap;

use super::error::ApiError;
use crate::limit::{Keyed, Rate};

/// Most keys a throttle remembers (its memory stays under a few MiB whatever the load).
const MAX_KEYS: usize = 65_536;

/// The controller's limits on attempts that cost a password hash.
#[derive(Clone, Debug)]
pub struct AuthLimits {
    /// Login and registration attempts from one address per minute (and in a burst).
    pub per_address_per_minute: u32,
    /// Failed logins of one account per hour (and in a burst).
    pub failures_per_account_per_hour: u32,
    /// Password hashes that may run at once (each holds 19 MiB at the standard cost).
    pub hash_concurrency: usize,
    /// Reverse proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<IpAddr>,
}

impl Default for AuthLimits {
    fn default() -> Self {
        AuthLimits {
            per_address_per_minute: 30,
            failures_per_account_per_hour: 10,
            hash_concurrency: std::thread::available_parallelism().map_or(1, |n| n.get()),
            trusted_proxies: Vec::new(),
        }
    }
}

/// The throttles, shared by the handlers.
pub struct Throttle {
    by_address: Keyed<IpAddr>,
    failures_by_account: Keyed<String>,
    trusted_proxies: Vec<IpAddr>,
}

impl Throttle {
    /// Throttles with these limits.
    pub fn new(limits: &AuthLimits) -> Self {
        Throttle {
            by_address: Keyed::new(
                Rate::per(limits.per_address_per_minute, Duration::from_secs(60)),
                MAX_KEYS,
            ),
            failures_by_account: Keyed::new(
                Rate::per(
                    limits.failures_per_account_per_hour,
                    Duration::from_secs(3600),
                ),
                MAX_KEYS,
            ),
            trusted_proxies: limits.trusted_proxies.clone(),
        }
    }

    /// The client's address: the peer's, or the last hop of `X-Forwarded-For` when the peer
    /// is a trusted proxy.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusted_proxies.contains(&peer) {
            return peer;
        }
        headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|hop| hop.trim().parse::<IpAddr>().ok())
            .next_back()
            .unwrap_or(peer)
    }

    /// Counts an attempt from `client`; refuses it over the address's limit.
    pub fn attempt(&self, client: IpAddr) -> Result<(), ApiError> {
        self.by_address
            .take(address_key(client))
            .map_err(|wait| limited("too many attempts from your address", wait))
    }

    /// Refuses a login to `username` while its failures are over the limit.
    pub fn account_open(&self, username: &str) -> Result<(), ApiError> {
        self.failures_by_account
            .check(&account_key(username))
            .map_err(|wait| limited("too many failed logins for this account", wait))
    }

    /// Counts a failed login to `username`.
    pub fn failed(&self, username: &str) {
        let _ = self.failures_by_account.take(account_key(username));
    }
}

fn limited(message: &str, wait: Duration) -> ApiError {
    metrics::counter!("chat_auth_throttled_total").increment(1);
    ApiError::RateLimited {
        message: format!("{message}; retry later"),
        retry_after: wait,
    }
}

/// An IPv6 address counts by its /64: one host usually holds the whole prefix.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Names are compared as the store does (lowercase), and only so long.
fn account_key(username: &str) -> String {
    username.chars().take(64).collect::<String>().to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_address: u32, failures: u32) -> AuthLimits {
        AuthLimits {
            per_address_per_minute: per_address,
            failures_per_account_per_hour: failures,
            hash_concurrency: 1,
            trusted_proxies: vec!["10.0.0.1".parse().expect("ip")],
        }
    }

    #[test]
    fn an_address_is_limited_and_an_ipv6_host_by_its_prefix() {
        let t = Throttle::new(&limits(2, 10));
        let a: IpAddr = "2001:db8::1".parse().expect("ip");
        let b: IpAddr = "2001:db8::2".parse().expect("ip");
        assert!(t.attempt(a).is_ok());
        assert!(t.attempt(b).is_ok());
        let Err(ApiError::RateLimited { retry_after, .. }) = t.attempt(a) else {
            panic!("a third attempt from the same /64 passed");
        };
        assert!(retry_after > Duration::ZERO);
        assert!(t.attempt("2001:db9::1".parse().expect("ip")).is_ok());
    }

    #[test]
    fn failures_close_an_account_whoever_asks() {
        let t = Throttle::new(&limits(100, 2));
        assert!(t.account_open("alice").is_ok());
        t.failed("alice");
        assert!(t.account_open("Alice").is_ok());
        t.failed("ALICE");
        assert!(t.account_open("alice").is_err());
        assert!(t.account_open("bob").is_ok());
    }

    #[test]
    fn only_a_trusted_proxy_names_the_client() {
        let t = Throttle::new(&limits(100, 10));
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "6.6.6.6, 192.0.2.7".parse().expect("header"),
        );
        let proxy: IpAddr = "10.0.0.1".parse().expect("ip");
        let stranger: IpAddr = "10.0.0.2".parse().expect("ip");
        assert_eq!(
            t.client(proxy, &h),
            "192.0.2.7".parse::<IpAddr>().expect("ip")
        );
        assert_eq!(t.client(stranger, &h), stranger);
    }
}
