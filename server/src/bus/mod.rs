//! How nodes hand each other envelopes: the fast path of cross-node delivery.
//!
//! [`Bus`] is the contract: `publish` an encoded [`protocol::bus::Envelope`] to some nodes (or
//! all), and `subscribe` to the stream of envelopes for this node. Implementations: the
//! controller-hosted bus of the embedded setup ([`crate::link::LinkClient`]), and, for many
//! machines, RabbitMQ, Redis pub/sub and Kafka. The behavioural suite in [`suite`] runs against each.
//!
//! The bus may lose or repeat an envelope when a broker or node fails; nothing relies on it
//! alone. Receivers drop repeats by `seq`, fill gaps from the store, and a survivor publishes
//! again what a dead node persisted (see `node::recovery`).
//!
//! Routing: in `routed` mode a node publishes an event only to the nodes that [`locate`]
//! names for its recipients; in `fanout` mode to every node, as the design we started from did.
//! Both deliver the same; the lab compares what they cost.
//!
//! Order: every publish carries an order key ([`order_key`]); envelopes published with the same
//! key reach a node in the order they were published. Buses that keep one stream per node keep
//! that order anyway and ignore the key; Kafka keeps order only within a partition, so it puts
//! one key's envelopes in one partition.
//!
//! [`locate`]: crate::registry::Registry::locate

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use protocol::NodeId;
use protocol::bus::BusKind;
pub use protocol::link::Targets;
use tokio::sync::mpsc;

#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(test)]
pub mod suite;

pub use protocol::bus::Routing;

/// Why a bus call failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Not connected right now; the caller keeps the envelope and retries.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// Anything else.
    #[error("bus failure: {0}")]
    Internal(String),
}

/// Result of a bus call.
pub type BusResult<T> = Result<T, BusError>;

/// The envelopes for one node, in the order the bus hands them over. The stream ends only
/// when the bus handle is dropped; across reconnects it simply continues.
pub type Inbox = mpsc::Receiver<Bytes>;

/// The bus contract.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// "embedded", "redis", "amqp" or "kafka", for status pages.
    fn kind(&self) -> &'static str;

    /// Hands `envelope` to the bus for `targets`. Returns once the bus has accepted it
    /// (publisher confirm where the bus has them); the envelope may still be lost if a target
    /// node dies. Envelopes with the same `key` (see [`order_key`]) reach each target in the
    /// order they were published; the bus treats the key and the envelope as opaque bytes.
    /// Safe to call from many tasks at once.
    async fn publish(&self, targets: &Targets, key: &[u8], envelope: Bytes) -> BusResult<()>;

    /// Starts receiving envelopes addressed to `node` (and fanout ones). Called once per node;
    /// the implementation re-subscribes by itself after a reconnect.
    async fn subscribe(&self, node: &NodeId) -> BusResult<Inbox>;

    /// Whether the bus is connected right now (for health, metrics and the lab).
    fn is_up(&self) -> bool;

    /// Connections made so far: 1 after the first, one more per reconnect. What a node missed
    /// while its bus was away is not on the bus (pub/sub drops it; the embedded bus routes
    /// around a node whose link closed), so a node catches its devices up with the store
    /// whenever this grows.
    fn sessions(&self) -> u64 {
        0
    }

    /// Whether the bus takes [`Targets::Users`], finding the users' nodes itself as it routes
    /// (a bus that hosts the registry); otherwise publishers `locate` them first.
    fn resolves_users(&self) -> bool {
        false
    }
}

/// The order key of an envelope of `kind`: a conversation's events share one (they must arrive in
/// `seq` order, or receivers fetch the apparent gap from the store), a user's revocations share
/// another; live frames need no order and have an empty key.
pub fn order_key(kind: &BusKind) -> Vec<u8> {
    match kind {
        BusKind::Event { conv, .. } => format!("c{}", conv.0).into_bytes(),
        BusKind::Revoke { user, .. } => format!("u{}", user.0).into_bytes(),
        BusKind::Live => Vec::new(),
    }
}

/// The bus shared by a process's tasks.
pub type SharedBus = Arc<dyn Bus>;
