//! Who is where: live nodes with their leases and loads, which nodes hold a device of which
//! user (for routed delivery and presence), and the least-loaded answer the controller gives
//! clients.
//!
//! [`Registry`] is the contract. [`memory::MemoryRegistry`] keeps it in one process (the
//! controller, in the embedded setup); [`crate::link::LinkClient`] is a node's handle on the
//! controller's memory registry over the link; [`redis::RedisRegistry`] (feature `redis`) keeps
//! it in Redis for many machines; [`zookeeper::ZkRegistry`] (feature `zookeeper`) keeps it in
//! ZooKeeper, each node an ephemeral znode.
//! The behavioural suite in [`suite`] runs against each.
//!
//! Invariants:
//! - `assign` is O(log N) in the number of nodes (plus the excluded ones) and takes no lock
//!   beyond a short in-memory critical section (or one atomic Redis script): each answer counts
//!   a reserved slot at once, so a thousand simultaneous answers spread evenly.
//! - A node whose lease lapsed is never answered and is removed by `reap`, with its devices:
//!   users left with no device elsewhere are reported offline.
//! - `locate` is linearizable with `attach`: once `attach` has returned, every `locate` that
//!   starts later sees the node. A node attaches a device before it reads the store for its
//!   resync, so an event persisted after that read is routed to the node.

use std::sync::Arc;

use async_trait::async_trait;
use protocol::http::{AssignResponse, NodeState, NodeStatus};
use protocol::{Millis, NodeId, UserId};

pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(test)]
pub mod suite;
#[cfg(feature = "zookeeper")]
pub mod zookeeper;

/// Default lease of a node: gone from answers this long after its last heartbeat.
pub const DEFAULT_LEASE_MS: u64 = 5_000;

/// Default time a handed-out slot is counted before it is given back unused.
pub const DEFAULT_RESERVATION_MS: u64 = 10_000;

/// Why a registry call failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry is unreachable; retry.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// The node has no lease (it was reaped, or never registered): register again.
    #[error("node {0} is not registered")]
    UnknownNode(NodeId),
    /// Anything else.
    #[error("registry failure: {0}")]
    Internal(String),
}

/// Result of a registry call.
pub type RegistryResult<T> = Result<T, RegistryError>;

/// What a node says of itself when it registers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// Its id.
    pub id: NodeId,
    /// Where devices connect.
    pub ws_url: String,
    /// Its HTTP base.
    pub http_url: String,
    /// When it started.
    pub started_at: Millis,
}

/// A granted lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The Snowflake worker id the node uses while the lease lives (unique among live nodes).
    pub worker_id: u16,
    /// How long the lease lasts without a heartbeat.
    pub lease_ms: u64,
}

/// A node's heartbeat: the true count corrects any drift in the registry's count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Load {
    /// Devices connected now.
    pub connections: u64,
    /// Time of the oldest event the node persisted but has not yet seen published.
    pub unpublished_since: Option<Millis>,
}

/// A node removed by [`Registry::reap`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadNode {
    /// The node.
    pub node: NodeId,
    /// Its last heartbeat.
    pub last_heartbeat: Millis,
    /// The oldest unpublished event it reported, if any.
    pub unpublished_since: Option<Millis>,
    /// Users who had a device there and none anywhere else: now offline.
    pub went_offline: Vec<UserId>,
}

/// The registry contract.
#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// "embedded" or "redis", for status pages.
    fn kind(&self) -> &'static str;

    /// Takes (or renews, for the same id) a lease. A node registering again after it was
    /// reaped starts with no devices.
    async fn register(&self, node: &NodeInfo) -> RegistryResult<Lease>;
    /// Renews the lease and sets the connection count.
    async fn heartbeat(&self, node: &NodeId, load: Load) -> RegistryResult<()>;
    /// Live or draining; a draining node is not answered by `assign`.
    async fn set_state(&self, node: &NodeId, state: NodeState) -> RegistryResult<()>;
    /// Gives the lease up and forgets the node's devices. Returns the users now offline.
    async fn deregister(&self, node: &NodeId) -> RegistryResult<Vec<UserId>>;

    /// A device of `user` connected on `node`, using `reservation` if it had one (the slot is
    /// then counted as a connection instead). Returns true if the user was offline before.
    async fn attach(
        &self,
        node: &NodeId,
        user: UserId,
        reservation: Option<&str>,
    ) -> RegistryResult<bool>;
    /// A device of `user` left `node`. Returns true if the user is now offline.
    async fn detach(&self, node: &NodeId, user: UserId) -> RegistryResult<bool>;
    /// For each user, in order, the nodes holding one of their devices.
    async fn locate(&self, users: &[UserId]) -> RegistryResult<Vec<Vec<NodeId>>>;
    /// The users among these with a device connected anywhere.
    async fn online(&self, users: &[UserId]) -> RegistryResult<Vec<UserId>>;

    /// The live node with the fewest connections plus reservations, not in `exclude`, with a
    /// slot reserved on it for [`DEFAULT_RESERVATION_MS`]. `None` when no node qualifies.
    async fn assign(&self, exclude: &[NodeId]) -> RegistryResult<Option<AssignResponse>>;
    /// Every node holding a lease.
    async fn nodes(&self) -> RegistryResult<Vec<NodeStatus>>;
    /// Removes nodes whose lease lapsed, and expired reservations. Several processes may call
    /// it; each dead node is returned to exactly one caller.
    async fn reap(&self, now: Millis) -> RegistryResult<Vec<DeadNode>>;
}

/// The registry shared by a process's tasks.
pub type SharedRegistry = Arc<dyn Registry>;
