//! What Redis answers, in the registry's terms: its errors as [`RegistryError`]s, and the
//! fields the scripts return as ids, numbers and dead nodes.

use protocol::{NodeId, UserId};
use redis::{ErrorKind, RedisError, ServerErrorKind};

use super::super::{DeadNode, RegistryError, RegistryResult};

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

/// The registry's word for a failed Redis call: unavailable when Redis cannot be reached now.
pub(super) fn map_err(e: RedisError) -> RegistryError {
    if is_connection_trouble(&e) {
        RegistryError::Unavailable(format!("redis: {e}"))
    } else {
        RegistryError::Internal(format!("redis: {e}"))
    }
}

/// A node id read from Redis.
pub(super) fn node_id(s: &str) -> RegistryResult<NodeId> {
    NodeId::new(s).map_err(|e| RegistryError::Internal(format!("bad node id {s:?} in redis: {e}")))
}

/// A number (or other value) read from Redis, `what` naming it in the error.
pub(super) fn parse<T: std::str::FromStr>(what: &str, s: Option<&str>) -> RegistryResult<T> {
    s.and_then(|s| s.parse().ok())
        .ok_or_else(|| RegistryError::Internal(format!("bad or missing {what} in redis: {s:?}")))
}

/// A reaped or deregistered node as the scripts return it.
pub(super) fn dead_node(fields: Vec<String>) -> RegistryResult<DeadNode> {
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
