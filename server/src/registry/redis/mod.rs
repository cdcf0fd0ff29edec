//! The registry kept in Redis, shared by every controller and node of a cluster that runs on
//! several machines. It follows [`super::memory::MemoryRegistry`] call for call; the suite in
//! `registry::suite` runs against both.
//!
//! Every change that touches more than one key is one Lua script (the `.lua` files beside this
//! module, loaded once, then called by `EVALSHA`), so `register`, `heartbeat`, `attach`,
//! `detach`, `assign`, `deregister` and `reap` are atomic without any lock, and any number of
//! controllers and nodes may call them at once. Reads of one key per user (`locate`, `online`)
//! are pipelined.
//!
//! Code map: `scripts` loads the Lua; `calls` is the [`Registry`] contract over them;
//! `workers` remembers the Snowflake worker ids this handle was given; `replies` turns what
//! Redis answers into the registry's types and errors; `test_support` is what the tests of the
//! Redis backends share.
//!
//! Keys, under a prefix (`chat:` unless the URL says `?prefix=…`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `n:{node}` | hash | `ws`, `http`, `started`, `state`, `worker`, `conns`, `resv`, `hb`, `lease`, `unpub` |
//! | `alive` | sorted set | node → lease expiry (ms); every node holding a lease, lapsed or not |
//! | `load` | sorted set | node → `conns + resv`, live (not draining) nodes only: the least-loaded is first |
//! | `u:{user}` | hash | node → devices of the user there (`locate`, presence) |
//! | `nu:{node}` | set | users with a device on the node (what dies with it) |
//! | `res` | sorted set | reservation token → expiry |
//! | `resn` | hash | reservation token → node |
//! | `nr:{node}` | set | the node's outstanding reservation tokens |
//! | `workers` | bitmap | Snowflake worker ids in use (nodes and controllers) |
//! | `ctl` / `ctlw` | sorted set / hash | controller → claim expiry / its worker id |
//! | `cfg` | hash | `lease_ms`: the cluster's node lease, set by the controller |
//!
//! Invariants:
//! - Time is Redis's (`TIME` inside the scripts): one clock decides every lease and reservation,
//!   whatever the clocks of the machines calling. The `now` given to [`super::Registry::reap`] is not
//!   used.
//! - A node is in `load` iff its hash says `live`, with score `conns + resv`; every script that
//!   changes either re-indexes it. `assign` walks `load` from the lowest score and skips only
//!   excluded and lapsed nodes: O(log N + skipped).
//! - `reap` finds lapsed nodes and removes them in the same script, so each dead node is handed
//!   to exactly one caller however many processes reap at once.
//! - Worker ids 0..=1022 are unique among nodes and controllers holding a lease; a node's id is
//!   freed when it is reaped or deregisters, a controller's when its claim lapses or it stops.
//! - The node lease is the cluster's (`cfg.lease_ms`, written by a controller from its
//!   `--lease-ms`, as the controller decides it in the embedded setup); a node takes it when it
//!   registers. Without a controller's value the default applies.
//!
//! All keys are reached by scripts from the prefix, so this is for a single Redis (or a
//! primary with replicas), not Redis Cluster.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, RedisError, Script, ScriptInvocation};

use super::{DEFAULT_RESERVATION_MS, RegistryError, RegistryResult};

mod calls;
mod replies;
mod scripts;
#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod tests;
mod workers;

pub(crate) use replies::is_connection_trouble;
use replies::map_err;
use scripts::SCRIPTS;
use workers::Workers;

/// The key prefix when the URL names none.
pub const DEFAULT_PREFIX: &str = "chat:";

/// Highest worker id handed out (1023 stays the embedded controller's).
const MAX_WORKER: u16 = 1022;

/// Opens a connection manager that reconnects by itself, failing calls fast while Redis is
/// down (they come back as `Unavailable`; callers retry).
pub(crate) async fn connect(url: &str) -> Result<ConnectionManager, RedisError> {
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(100))
        .set_max_delay(Duration::from_secs(1))
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)));
    ConnectionManager::new_with_config(client, config).await
}

/// The Redis registry. Cheap to clone: clones share one multiplexed connection.
#[derive(Clone)]
pub struct RedisRegistry {
    conn: ConnectionManager,
    prefix: String,
    /// How long an answered slot is counted before it is given back unused.
    reservation_ms: u64,
    /// The worker ids this handle was given, asked for again if Redis forgot them.
    workers: Workers,
    #[cfg(test)]
    _cleanup: Option<std::sync::Arc<test_support::DeleteOnDrop>>,
}

impl RedisRegistry {
    /// Connects to Redis at `url` and keeps its keys under `prefix`. A controller passes its
    /// `cluster_lease_ms`, which nodes registering afterwards take as their lease; nodes pass
    /// `None`.
    pub async fn connect(
        url: &str,
        prefix: &str,
        cluster_lease_ms: Option<u64>,
    ) -> RegistryResult<RedisRegistry> {
        let conn = connect(url).await.map_err(|e| {
            RegistryError::Unavailable(format!("cannot reach the Redis registry at {url}: {e}"))
        })?;
        let registry = RedisRegistry {
            conn,
            prefix: prefix.to_owned(),
            reservation_ms: DEFAULT_RESERVATION_MS,
            workers: Workers::default(),
            #[cfg(test)]
            _cleanup: None,
        };
        if let Some(lease) = cluster_lease_ms {
            let mut c = registry.conn.clone();
            redis::cmd("HSET")
                .arg(registry.key("cfg"))
                .arg("lease_ms")
                .arg(lease)
                .exec_async(&mut c)
                .await
                .map_err(map_err)?;
        }
        tracing::info!(%prefix, "redis registry connected");
        Ok(registry)
    }

    /// The key `name` under this registry's prefix.
    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// A call of `script`, with the prefix as its first argument (every script's `ARGV[1]`).
    fn script(&self, script: &'static Script) -> ScriptInvocation<'static> {
        let mut call = script.prepare_invoke();
        call.arg(&self.prefix);
        call
    }

    /// Runs a script call (loading the script first if Redis does not know it).
    async fn run<T: FromRedisValue>(&self, call: &ScriptInvocation<'_>) -> RegistryResult<T> {
        let mut c = self.conn.clone();
        call.invoke_async(&mut c).await.map_err(map_err)
    }

    /// Takes (or renews) a Snowflake worker id for a controller, unique among the nodes and
    /// controllers holding one. The claim lasts `lease_ms`; call again well within it to keep
    /// the same id. If the claim lapsed (the controller was silent too long, or Redis lost its
    /// data), a possibly different id is returned: switch to it. `lease_ms` is written as the
    /// cluster's node lease again each time.
    pub async fn claim_controller_worker(&self, owner: &str, lease_ms: u64) -> RegistryResult<u16> {
        let who = format!("controller:{owner}");
        let w: i64 = self
            .run(
                self.script(&SCRIPTS.claim_controller)
                    .arg(MAX_WORKER)
                    .arg(owner)
                    .arg(lease_ms)
                    .arg(self.workers.preferred(&who)),
            )
            .await?;
        self.workers.remember(who, w)
    }

    /// Gives a controller's worker id back.
    pub async fn release_controller_worker(&self, owner: &str) -> RegistryResult<()> {
        self.run::<i64>(self.script(&SCRIPTS.release_controller).arg(owner))
            .await?;
        Ok(())
    }
}
