//! The registry kept in Redis, shared by every controller and node of a cluster that runs on
//! several machines. It follows [`super::memory::MemoryRegistry`] call for call; the suite in
//! `registry::suite` runs against both.
//!
//! Every change that touches more than one key is one Lua script (loaded once, then called by
//! `EVALSHA`), so `register`, `heartbeat`, `attach`, `detach`, `assign`, `deregister` and `reap`
//! are atomic without any lock, and any number of controllers and nodes may call them at once.
//! Reads of one key per user (`locate`, `online`) are pipelined.
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
//!   whatever the clocks of the machines calling. The `now` given to [`Registry::reap`] is not
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

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use protocol::http::{AssignResponse, NodeState, NodeStatus};
use protocol::{Millis, NodeId, UserId};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, Script, ServerErrorKind};

use super::{
    DEFAULT_LEASE_MS, DEFAULT_RESERVATION_MS, DeadNode, Lease, Load, NodeInfo, Registry,
    RegistryError, RegistryResult,
};

/// The key prefix when the URL names none.
pub const DEFAULT_PREFIX: &str = "chat:";

/// Highest worker id handed out (1023 stays the embedded controller's).
const MAX_WORKER: u16 = 1022;

/// Helpers every script starts with. `P` is the key prefix (always `ARGV[1]`).
const PRELUDE: &str = r#"
local P = ARGV[1]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function reindex(node)
  local v = redis.call('HMGET', P .. 'n:' .. node, 'state', 'conns', 'resv')
  if v[1] == 'live' then
    redis.call('ZADD', P .. 'load', tonumber(v[2]) + tonumber(v[3]), node)
  else
    redis.call('ZREM', P .. 'load', node)
  end
end
local function forget_reservation(tok, node)
  redis.call('ZREM', P .. 'res', tok)
  redis.call('HDEL', P .. 'resn', tok)
  redis.call('SREM', P .. 'nr:' .. node, tok)
end
local function release_slot(node)
  local nk = P .. 'n:' .. node
  if tonumber(redis.call('HGET', nk, 'resv') or '0') > 0 then
    redis.call('HINCRBY', nk, 'resv', -1)
    reindex(node)
  end
end
local function expire_reservations(now, limit)
  local toks = redis.call('ZRANGE', P .. 'res', '-inf', now, 'BYSCORE', 'LIMIT', 0, limit)
  for _, tok in ipairs(toks) do
    local node = redis.call('HGET', P .. 'resn', tok)
    if node then
      forget_reservation(tok, node)
      release_slot(node)
    else
      redis.call('ZREM', P .. 'res', tok)
    end
  end
end
-- The preferred id (the one the caller had before Redis forgot it) if free, else the lowest.
local function claim_worker(preferred)
  if preferred and preferred ~= '' and redis.call('GETBIT', P .. 'workers', preferred) == 0 then
    redis.call('SETBIT', P .. 'workers', preferred, 1)
    return tonumber(preferred)
  end
  local w = redis.call('BITPOS', P .. 'workers', 0)
  if w < 0 or w > tonumber(ARGV[2]) then
    return nil
  end
  redis.call('SETBIT', P .. 'workers', w, 1)
  return w
end
local function release_controller(owner)
  local w = redis.call('HGET', P .. 'ctlw', owner)
  if w then
    redis.call('SETBIT', P .. 'workers', tonumber(w), 0)
    redis.call('HDEL', P .. 'ctlw', owner)
  end
  redis.call('ZREM', P .. 'ctl', owner)
end
-- Removes a node with its devices and reservations; nil if it holds no lease.
-- Returns {node, last heartbeat, unpublished since or '', users now offline...}.
local function remove(node)
  local nk = P .. 'n:' .. node
  local v = redis.call('HMGET', nk, 'worker', 'hb', 'unpub')
  if not v[1] then
    return nil
  end
  local out = {node, v[2], v[3] or ''}
  local nu = P .. 'nu:' .. node
  for _, u in ipairs(redis.call('SMEMBERS', nu)) do
    local uk = P .. 'u:' .. u
    redis.call('HDEL', uk, node)
    if redis.call('EXISTS', uk) == 0 then
      out[#out + 1] = u
    end
  end
  local nr = P .. 'nr:' .. node
  for _, tok in ipairs(redis.call('SMEMBERS', nr)) do
    redis.call('ZREM', P .. 'res', tok)
    redis.call('HDEL', P .. 'resn', tok)
  end
  redis.call('DEL', nk, nu, nr)
  redis.call('ZREM', P .. 'alive', node)
  redis.call('ZREM', P .. 'load', node)
  redis.call('SETBIT', P .. 'workers', tonumber(v[1]), 0)
  return out
end
"#;

/// `ARGV`: prefix, max worker, node, ws, http, started, default lease, preferred worker or ''
/// → `{worker, lease}`.
const REGISTER: &str = r#"
local node = ARGV[3]
local nk = P .. 'n:' .. node
local now = now_ms()
local lease = tonumber(redis.call('HGET', P .. 'cfg', 'lease_ms') or ARGV[7])
local worker = redis.call('HGET', nk, 'worker')
if worker then
  redis.call('HSET', nk, 'ws', ARGV[4], 'http', ARGV[5], 'started', ARGV[6], 'hb', now,
    'lease', lease)
  redis.call('ZADD', P .. 'alive', now + lease, node)
  return {tonumber(worker), lease}
end
local w = claim_worker(ARGV[8])
if not w then
  return redis.error_reply('ERR no free worker id')
end
redis.call('HSET', nk, 'ws', ARGV[4], 'http', ARGV[5], 'started', ARGV[6], 'state', 'live',
  'worker', w, 'conns', 0, 'resv', 0, 'hb', now, 'lease', lease)
redis.call('ZADD', P .. 'alive', now + lease, node)
redis.call('ZADD', P .. 'load', 0, node)
return {w, lease}
"#;

/// `ARGV`: prefix, node, connections, unpublished since or '' → 1, or 0 for an unknown node.
const HEARTBEAT: &str = r#"
local node = ARGV[2]
local nk = P .. 'n:' .. node
local lease = redis.call('HGET', nk, 'lease')
if not lease then
  return 0
end
local now = now_ms()
redis.call('HSET', nk, 'conns', ARGV[3], 'hb', now)
if ARGV[4] == '' then
  redis.call('HDEL', nk, 'unpub')
else
  redis.call('HSET', nk, 'unpub', ARGV[4])
end
redis.call('ZADD', P .. 'alive', now + tonumber(lease), node)
reindex(node)
expire_reservations(now, 100)
return 1
"#;

/// `ARGV`: prefix, node, state → 1, or 0 for an unknown node.
const SET_STATE: &str = r#"
local nk = P .. 'n:' .. ARGV[2]
if redis.call('EXISTS', nk) == 0 then
  return 0
end
redis.call('HSET', nk, 'state', ARGV[3])
reindex(ARGV[2])
return 1
"#;

/// `ARGV`: prefix, node → `{node, hb, unpub, offline users...}` or `{}`.
const DEREGISTER: &str = r#"
return remove(ARGV[2]) or {}
"#;

/// `ARGV`: prefix, node, user, reservation or '' → 1 if the user was offline, 0 if not, -1 for
/// an unknown node.
const ATTACH: &str = r#"
local node, user, tok = ARGV[2], ARGV[3], ARGV[4]
local nk = P .. 'n:' .. node
if redis.call('EXISTS', nk) == 0 then
  return -1
end
if tok ~= '' and redis.call('HGET', P .. 'resn', tok) == node then
  forget_reservation(tok, node)
  if tonumber(redis.call('HGET', nk, 'resv')) > 0 then
    redis.call('HINCRBY', nk, 'resv', -1)
  end
end
redis.call('HINCRBY', nk, 'conns', 1)
local uk = P .. 'u:' .. user
local first = redis.call('EXISTS', uk) == 0
redis.call('HINCRBY', uk, node, 1)
redis.call('SADD', P .. 'nu:' .. node, user)
reindex(node)
if first then
  return 1
end
return 0
"#;

/// `ARGV`: prefix, node, user → 1 if the user is now offline.
const DETACH: &str = r#"
local node, user = ARGV[2], ARGV[3]
local nk = P .. 'n:' .. node
local uk = P .. 'u:' .. user
if redis.call('EXISTS', nk) == 0 then
  -- Already reaped: its devices were forgotten with it.
  if redis.call('EXISTS', uk) == 0 then
    return 1
  end
  return 0
end
if tonumber(redis.call('HGET', nk, 'conns')) > 0 then
  redis.call('HINCRBY', nk, 'conns', -1)
end
local last = 0
if redis.call('EXISTS', uk) == 1 then
  local here = redis.call('HGET', uk, node)
  if here then
    if tonumber(here) <= 1 then
      redis.call('HDEL', uk, node)
      redis.call('SREM', P .. 'nu:' .. node, user)
    else
      redis.call('HINCRBY', uk, node, -1)
    end
  end
  if redis.call('EXISTS', uk) == 0 then
    last = 1
  end
end
reindex(node)
return last
"#;

/// `ARGV`: prefix, token, reservation ms, excluded nodes... → `{node, ws, expires}` or nil.
const ASSIGN: &str = r#"
local tok, hold = ARGV[2], tonumber(ARGV[3])
local excluded = {}
for i = 4, #ARGV do
  excluded[ARGV[i]] = true
end
local now = now_ms()
expire_reservations(now, 100)
local from, step = 0, 16
while true do
  local batch = redis.call('ZRANGE', P .. 'load', from, from + step - 1)
  if #batch == 0 then
    return false
  end
  for _, node in ipairs(batch) do
    if not excluded[node] then
      local expiry = redis.call('ZSCORE', P .. 'alive', node)
      if expiry and tonumber(expiry) >= now then
        local nk = P .. 'n:' .. node
        redis.call('HINCRBY', nk, 'resv', 1)
        redis.call('ZINCRBY', P .. 'load', 1, node)
        local expires = now + hold
        redis.call('ZADD', P .. 'res', expires, tok)
        redis.call('HSET', P .. 'resn', tok, node)
        redis.call('SADD', P .. 'nr:' .. node, tok)
        return {node, redis.call('HGET', nk, 'ws'), expires}
      end
    end
  end
  from = from + step
end
"#;

/// `ARGV`: prefix → a list of removed nodes as `DEREGISTER` returns them.
const REAP: &str = r#"
local now = now_ms()
expire_reservations(now, 1000)
local out = {}
for _, node in ipairs(redis.call('ZRANGE', P .. 'alive', '-inf', now - 1, 'BYSCORE', 'LIMIT', 0, 100)) do
  local r = remove(node)
  if r then
    out[#out + 1] = r
  end
end
for _, owner in ipairs(redis.call('ZRANGE', P .. 'ctl', '-inf', now - 1, 'BYSCORE', 'LIMIT', 0, 100)) do
  release_controller(owner)
end
return out
"#;

/// `ARGV`: prefix, max worker, owner, lease ms, preferred worker or '' → the controller's
/// worker id (the one it had, or
/// a new one if its claim lapsed). The lease is also the cluster's node lease.
const CLAIM_CONTROLLER: &str = r#"
local owner = ARGV[3]
local w = redis.call('HGET', P .. 'ctlw', owner)
if w then
  w = tonumber(w)
else
  w = claim_worker(ARGV[5])
  if not w then
    return redis.error_reply('ERR no free worker id')
  end
  redis.call('HSET', P .. 'ctlw', owner, w)
end
redis.call('ZADD', P .. 'ctl', now_ms() + tonumber(ARGV[4]), owner)
-- The controller's lease is the cluster's: said again with every renewal, so that a Redis
-- that lost its data (restarted without persistence) learns it back.
redis.call('HSET', P .. 'cfg', 'lease_ms', ARGV[4])
return w
"#;

/// `ARGV`: prefix, owner.
const RELEASE_CONTROLLER: &str = r#"
release_controller(ARGV[2])
return 1
"#;

struct Scripts {
    register: Script,
    heartbeat: Script,
    set_state: Script,
    deregister: Script,
    attach: Script,
    detach: Script,
    assign: Script,
    reap: Script,
    claim_controller: Script,
    release_controller: Script,
}

/// Each script's SHA is computed once; Redis loads a script the first time it is missing
/// (`NOSCRIPT`, e.g. after a restart) and `EVALSHA` runs it after that.
static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| {
    let s = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
    Scripts {
        register: s(REGISTER),
        heartbeat: s(HEARTBEAT),
        set_state: s(SET_STATE),
        deregister: s(DEREGISTER),
        attach: s(ATTACH),
        detach: s(DETACH),
        assign: s(ASSIGN),
        reap: s(REAP),
        claim_controller: s(CLAIM_CONTROLLER),
        release_controller: s(RELEASE_CONTROLLER),
    }
});

/// Whether a Redis error means "cannot reach Redis now" rather than a bug.
pub(crate) fn is_connection_trouble(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ErrorKind::Server(ServerErrorKind::BusyLoading)
                | ErrorKind::Server(ServerErrorKind::TryAgain)
                | ErrorKind::Server(ServerErrorKind::MasterDown)
                | ErrorKind::Server(ServerErrorKind::ReadOnly)
        )
}

fn map_err(e: RedisError) -> RegistryError {
    if is_connection_trouble(&e) {
        RegistryError::Unavailable(format!("redis: {e}"))
    } else {
        RegistryError::Internal(format!("redis: {e}"))
    }
}

fn node_id(s: &str) -> RegistryResult<NodeId> {
    NodeId::new(s).map_err(|e| RegistryError::Internal(format!("bad node id {s:?} in redis: {e}")))
}

fn parse<T: std::str::FromStr>(what: &str, s: Option<&str>) -> RegistryResult<T> {
    s.and_then(|s| s.parse().ok())
        .ok_or_else(|| RegistryError::Internal(format!("bad or missing {what} in redis: {s:?}")))
}

/// A reaped or deregistered node as the scripts return it.
fn dead_node(fields: Vec<String>) -> RegistryResult<DeadNode> {
    let mut it = fields.into_iter();
    let node = node_id(&it.next().unwrap_or_default())?;
    let last_heartbeat = parse("last heartbeat", it.next().as_deref())?;
    let unpublished_since = match it.next() {
        Some(s) if !s.is_empty() => Some(parse("unpublished time", Some(&s))?),
        _ => None,
    };
    let mut went_offline = it
        .map(|u| parse("user id", Some(&u)).map(UserId))
        .collect::<RegistryResult<Vec<UserId>>>()?;
    went_offline.sort();
    Ok(DeadNode {
        node,
        last_heartbeat,
        unpublished_since,
        went_offline,
    })
}

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
    /// The worker id each node or controller registered through this handle last had: asked
    /// for again if Redis forgot it (a restart without persistence), so that processes keep
    /// their ids instead of swapping them while some have not noticed yet.
    last_workers: Arc<Mutex<HashMap<String, u16>>>,
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
            last_workers: Arc::default(),
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

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Takes (or renews) a Snowflake worker id for a controller, unique among the nodes and
    /// controllers holding one. The claim lasts `lease_ms`; call again well within it to keep
    /// the same id. If the claim lapsed (the controller was silent too long, or Redis lost its
    /// data), a possibly different id is returned: switch to it. `lease_ms` is written as the
    /// cluster's node lease again each time.
    pub async fn claim_controller_worker(&self, owner: &str, lease_ms: u64) -> RegistryResult<u16> {
        let mut c = self.conn.clone();
        let w: i64 = SCRIPTS
            .claim_controller
            .prepare_invoke()
            .arg(&self.prefix)
            .arg(MAX_WORKER)
            .arg(owner)
            .arg(lease_ms)
            .arg(self.preferred_worker(&format!("controller:{owner}")))
            .invoke_async(&mut c)
            .await
            .map_err(map_err)?;
        let w =
            u16::try_from(w).map_err(|_| RegistryError::Internal(format!("bad worker id {w}")))?;
        self.last_workers
            .lock()
            .insert(format!("controller:{owner}"), w);
        Ok(w)
    }

    fn preferred_worker(&self, who: &str) -> String {
        self.last_workers
            .lock()
            .get(who)
            .map(u16::to_string)
            .unwrap_or_default()
    }

    /// Gives a controller's worker id back.
    pub async fn release_controller_worker(&self, owner: &str) -> RegistryResult<()> {
        let mut c = self.conn.clone();
        SCRIPTS
            .release_controller
            .prepare_invoke()
            .arg(&self.prefix)
            .arg(owner)
            .invoke_async::<i64>(&mut c)
            .await
            .map_err(map_err)?;
        Ok(())
    }
}

#[async_trait]
impl Registry for RedisRegistry {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn register(&self, node: &NodeInfo) -> RegistryResult<Lease> {
        let mut c = self.conn.clone();
        let (worker, lease_ms): (i64, i64) = SCRIPTS
            .register
            .prepare_invoke()
            .arg(&self.prefix)
            .arg(MAX_WORKER)
            .arg(node.id.as_str())
            .arg(&node.ws_url)
            .arg(&node.http_url)
            .arg(node.started_at)
            .arg(DEFAULT_LEASE_MS)
            .arg(self.preferred_worker(&format!("node:{}", node.id)))
            .invoke_async(&mut c)
            .await
            .map_err(map_err)?;
        let worker_id = u16::try_from(worker)
            .map_err(|_| RegistryError::Internal(format!("bad worker id {worker}")))?;
        self.last_workers
            .lock()
            .insert(format!("node:{}", node.id), worker_id);
        Ok(Lease {
            worker_id,
            lease_ms: u64::try_from(lease_ms)
                .map_err(|_| RegistryError::Internal(format!("bad lease {lease_ms}")))?,
        })
    }

    async fn heartbeat(&self, node: &NodeId, load: Load) -> RegistryResult<()> {
        let mut c = self.conn.clone();
        let known: i64 = SCRIPTS
            .heartbeat
            .prepare_invoke()
            .arg(&self.prefix)
            .arg(node.as_str())
            .arg(load.connections)
            .arg(
                load.unpublished_since
                    .map(|t| t.to_string())
                    .unwrap_or_default(),
            )
            .invoke_async(&mut c)
            .await
            .map_err(map_err)?;
        if known == 1 {
            Ok(())
        } else {
            Err(RegistryError::UnknownNode(node.clone()))
        }
    }

    async fn set_state(&self, node: &NodeId, state: NodeState) -> RegistryResult<()> {
        let mut c = self.conn.clone();
        let known: i64 = SCRIPTS
            .set_state
            .prepare_invoke()
            .arg(&self.prefix)
            .arg(node.as_str())
            .arg(match state {
                NodeState::Live => "live",
                NodeState::Draining => "draining",
            })
            .invoke_async(&mut c)
            .await
            .map_err(map_err)?;
        if known == 1 {
            Ok(())
        } else {
            Err(RegistryError::UnknownNode(node.clone()))
        }
    }

    async fn deregister(&self, node: &NodeId) -> RegistryResult<Vec<UserId>> {
        let mut c = self.conn.clone();
        let fields: Vec<String> = SCRIPTS
            .deregister
            .prepare_invoke()
            .arg(&self.prefix)
            .arg(node.as_str())
            .invoke_async(&mut c)
            .await
            .map_err(map_err)?;
        if fields.is_empty() {
            return Ok(Vec::new());
        }
        Ok(dead_node(fields)?.went_offline)
    }

    async fn attach(
        &self,
        node: &NodeId,
        user: UserId,
        reservation: Option<&str>,
    ) -> RegistryResult<bool> {
        let mut c = self.conn.clone();
        let r: i64 = SCRIPTS
            .attach
            .prepare_invoke()
            .arg(&self.prefix)
            .arg(node.as_str())
            .arg(user.0)
            .arg(reservation.unwrap_or(""))
            .invoke_async(&mut c)
            .await
            .map_err(map_err)?;
        match r {
            -1 => Err(RegistryError::UnknownNode(node.clone())),
            r => Ok(r == 1),
        }
    }

    async fn detach(&self, node: &NodeId, user: UserId) -> RegistryResult<bool> {
        let mut c = self.conn.clone();
        let last: i64 = SCRIPTS
            .detach
            .prepare_invoke()
            .arg(&self.prefix)
            .arg(node.as_str())
            .arg(user.0)
            .invoke_async(&mut c)
            .await
            .map_err(map_err)?;
        Ok(last == 1)
    }

    async fn locate(&self, users: &[UserId]) -> RegistryResult<Vec<Vec<NodeId>>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for u in users {
            pipe.cmd("HKEYS").arg(self.key(&format!("u:{}", u.0)));
        }
        let mut c = self.conn.clone();
        let located: Vec<Vec<String>> = pipe.query_async(&mut c).await.map_err(map_err)?;
        located
            .into_iter()
            .map(|nodes| nodes.iter().map(|n| node_id(n)).collect())
            .collect()
    }

    async fn online(&self, users: &[UserId]) -> RegistryResult<Vec<UserId>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for u in users {
            pipe.cmd("EXISTS").arg(self.key(&format!("u:{}", u.0)));
        }
        let mut c = self.conn.clone();
        let exists: Vec<bool> = pipe.query_async(&mut c).await.map_err(map_err)?;
        Ok(users
            .iter()
            .zip(exists)
            .filter(|(_, on)| *on)
            .map(|(u, _)| *u)
            .collect())
    }

    async fn assign(&self, exclude: &[NodeId]) -> RegistryResult<Option<AssignResponse>> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let mut inv = SCRIPTS.assign.prepare_invoke();
        inv.arg(&self.prefix).arg(&token).arg(self.reservation_ms);
        for n in exclude {
            inv.arg(n.as_str());
        }
        let mut c = self.conn.clone();
        let answer: Option<(String, String, Millis)> =
            inv.invoke_async(&mut c).await.map_err(map_err)?;
        answer
            .map(|(node, ws_url, expires_at)| {
                Ok(AssignResponse {
                    node: node_id(&node)?,
                    ws_url,
                    reservation: token.clone(),
                    expires_at,
                })
            })
            .transpose()
    }

    async fn nodes(&self) -> RegistryResult<Vec<NodeStatus>> {
        let mut c = self.conn.clone();
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(self.key("alive"))
            .arg(0)
            .arg(-1)
            .query_async(&mut c)
            .await
            .map_err(map_err)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HMGET")
                .arg(self.key(&format!("n:{id}")))
                .arg(&["ws", "http", "started", "state", "conns", "resv", "hb"]);
        }
        let rows: Vec<Vec<Option<String>>> = pipe.query_async(&mut c).await.map_err(map_err)?;
        let mut list = Vec::with_capacity(ids.len());
        for (id, row) in ids.iter().zip(rows) {
            // Removed between the two reads: not a node any more.
            if row.iter().all(Option::is_none) {
                continue;
            }
            let f = |i: usize| row.get(i).cloned().flatten();
            list.push(NodeStatus {
                id: node_id(id)?,
                ws_url: f(0).unwrap_or_default(),
                http_url: f(1).unwrap_or_default(),
                started_at: parse("start time", f(2).as_deref())?,
                state: match f(3).as_deref() {
                    Some("draining") => NodeState::Draining,
                    _ => NodeState::Live,
                },
                connections: parse("connections", f(4).as_deref())?,
                reserved: parse("reservations", f(5).as_deref())?,
                last_heartbeat: parse("last heartbeat", f(6).as_deref())?,
            });
        }
        list.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(list)
    }

    async fn reap(&self, _now: Millis) -> RegistryResult<Vec<DeadNode>> {
        let mut c = self.conn.clone();
        let dead: Vec<Vec<String>> = SCRIPTS
            .reap
            .prepare_invoke()
            .arg(&self.prefix)
            .invoke_async(&mut c)
            .await
            .map_err(map_err)?;
        dead.into_iter().map(dead_node).collect()
    }
}

/// What the tests of the Redis backends share: the server they need, a fresh prefix each, and
/// removal of what they wrote.
#[cfg(test)]
pub(crate) mod test_support {
    /// The Redis the tests use.
    pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
    /// How to start it.
    pub const START_REDIS: &str =
        r#"redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no"#;

    /// Fails the test, naming the service and how to start it, if Redis does not answer.
    pub async fn require_redis() {
        let reachable = async {
            let client = redis::Client::open(REDIS_URL)?;
            let mut c = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut c).await
        };
        match tokio::time::timeout(std::time::Duration::from_secs(3), reachable).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!(
                "Redis is not reachable at {REDIS_URL} ({e}); these tests need it. Start it with: {START_REDIS}"
            ),
            Err(_) => panic!(
                "Redis at {REDIS_URL} did not answer within 3 s; these tests need it. Start it with: {START_REDIS}"
            ),
        }
    }

    /// A prefix no other test uses.
    pub fn fresh_prefix(what: &str) -> String {
        format!("test:{what}:{}:", uuid::Uuid::new_v4().simple())
    }

    /// Deletes every key under a prefix when dropped (with its own blocking connection, so it
    /// works from any context, even after the test's runtime is gone).
    pub struct DeleteOnDrop(pub String);

    impl Drop for DeleteOnDrop {
        fn drop(&mut self) {
            let prefix = self.0.clone();
            // A thread of its own: blocking I/O must not run on a runtime worker.
            let done = std::thread::spawn(move || -> redis::RedisResult<()> {
                let client = redis::Client::open(REDIS_URL)?;
                let mut c =
                    client.get_connection_with_timeout(std::time::Duration::from_secs(2))?;
                let keys: Vec<String> =
                    redis::cmd("KEYS").arg(format!("{prefix}*")).query(&mut c)?;
                if !keys.is_empty() {
                    redis::cmd("DEL").arg(keys).exec(&mut c)?;
                }
                Ok(())
            })
            .join();
            if !matches!(done, Ok(Ok(()))) {
                eprintln!("could not delete the test keys under {}", self.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::test_support::{DeleteOnDrop, REDIS_URL, fresh_prefix, require_redis};
    use super::*;
    use crate::ids::now_ms;

    async fn fresh(lease_ms: u64) -> RedisRegistry {
        require_redis().await;
        let prefix = fresh_prefix("registry");
        let mut r = RedisRegistry::connect(REDIS_URL, &prefix, Some(lease_ms))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        r._cleanup = Some(Arc::new(DeleteOnDrop(prefix)));
        r
    }

    crate::registry_suite!(|lease_ms| async move {
        Arc::new(fresh(lease_ms).await) as crate::registry::SharedRegistry
    });

    fn info(name: &str) -> NodeInfo {
        NodeInfo {
            id: NodeId::new(name).unwrap_or_else(|e| panic!("{e}")),
            ws_url: format!("ws://{name}"),
            http_url: format!("http://{name}"),
            started_at: now_ms(),
        }
    }

    /// Several reapers racing over the same dead nodes: each node is handed out once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_reapers_get_each_dead_node_once() -> RegistryResult<()> {
        let r = fresh(100).await;
        for i in 0..20 {
            r.register(&info(&format!("z{i}"))).await?;
            r.attach(&info(&format!("z{i}")).id, UserId(i), None)
                .await?;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        let reapers: Vec<_> = (0..8)
            .map(|_| {
                let r = r.clone();
                tokio::spawn(async move { r.reap(now_ms()).await })
            })
            .collect();
        let mut seen = Vec::new();
        for t in reapers {
            let dead = t
                .await
                .map_err(|e| RegistryError::Internal(e.to_string()))??;
            seen.extend(dead.into_iter().map(|d| d.node));
        }
        seen.sort();
        let before = seen.len();
        seen.dedup();
        assert_eq!(before, seen.len(), "a dead node was handed out twice");
        assert_eq!(seen.len(), 20);
        assert!(r.nodes().await?.is_empty());
        Ok(())
    }

    /// Controllers' worker ids never collide with nodes', survive renewal, and come back when
    /// released.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn controller_worker_ids_are_unique_with_nodes() -> RegistryResult<()> {
        let r = fresh(60_000).await;
        let n0 = r.register(&info("c0")).await?.worker_id;
        let a = r.claim_controller_worker("ctl-a", 60_000).await?;
        let b = r.claim_controller_worker("ctl-b", 60_000).await?;
        let n1 = r.register(&info("c1")).await?.worker_id;
        let mut all = vec![n0, a, b, n1];
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 4, "collision among {n0}, {a}, {b}, {n1}");
        assert_eq!(r.claim_controller_worker("ctl-a", 60_000).await?, a);
        r.release_controller_worker("ctl-a").await?;
        let n2 = r.register(&info("c2")).await?.worker_id;
        assert_eq!(n2, a, "the released id is the lowest free one");
        Ok(())
    }

    /// After Redis forgot everything, each process gets its old worker id back, whatever the
    /// order in which they register again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn worker_ids_survive_a_redis_that_forgot_them() -> RegistryResult<()> {
        let r = fresh(60_000).await;
        let a = r.register(&info("fa")).await?.worker_id;
        let b = r.register(&info("fb")).await?.worker_id;
        let c = r.claim_controller_worker("ctl", 60_000).await?;
        let mut conn = r.conn.clone();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", r.prefix))
            .query_async(&mut conn)
            .await
            .map_err(map_err)?;
        redis::cmd("DEL")
            .arg(keys)
            .exec_async(&mut conn)
            .await
            .map_err(map_err)?;
        assert_eq!(r.claim_controller_worker("ctl", 60_000).await?, c);
        assert_eq!(r.register(&info("fb")).await?.worker_id, b);
        assert_eq!(r.register(&info("fa")).await?.worker_id, a);
        Ok(())
    }

    /// A controller's claim lapses when it stops renewing it, and the id is freed by a reap.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lapsed_controller_claims_are_reaped() -> RegistryResult<()> {
        let r = fresh(60_000).await;
        let a = r.claim_controller_worker("ctl-a", 100).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        r.reap(now_ms()).await?;
        let n = r.register(&info("after")).await?.worker_id;
        assert_eq!(n, a);
        Ok(())
    }

    /// An unused reservation is given back when it expires, and cannot be used after that.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn expired_reservations_are_given_back() -> RegistryResult<()> {
        let mut r = fresh(60_000).await;
        r.reservation_ms = 100;
        let n = info("x");
        r.register(&n).await?;
        let a = r.assign(&[]).await?.expect("a node");
        r.assign(&[]).await?.expect("a node");
        assert_eq!(r.nodes().await?[0].reserved, 2);
        tokio::time::sleep(Duration::from_millis(200)).await;
        r.heartbeat(&n.id, Load::default()).await?;
        assert_eq!(
            r.nodes().await?[0].reserved,
            0,
            "expired slots still counted"
        );
        r.attach(&n.id, UserId(1), Some(&a.reservation)).await?;
        let s = &r.nodes().await?[0];
        assert_eq!((s.connections, s.reserved), (1, 0));
        Ok(())
    }

    /// Nodes take the lease a controller set for the cluster.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nodes_take_the_cluster_lease() -> RegistryResult<()> {
        let r = fresh(1_234).await;
        let node_side = RedisRegistry::connect(REDIS_URL, &r.prefix, None).await?;
        assert_eq!(node_side.register(&info("l")).await?.lease_ms, 1_234);
        Ok(())
    }
}
