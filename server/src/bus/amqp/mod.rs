//! The bus on RabbitMQ (AMQP 0-9-1, through lapin).
//!
//! Topology, under a name prefix (`chat.` unless the URL says `?prefix=…`):
//!
//! - `{prefix}direct`: a direct exchange; a routed envelope is published once per target node
//!   with the node id as routing key.
//! - `{prefix}fanout`: a fanout exchange; a fanout envelope is published once.
//! - Both are durable and auto-delete: they go when the last node queue bound to them expired.
//! - `{prefix}node.{id}`: one durable queue per node, bound to both. It is neither exclusive
//!   nor auto-delete but expires (`x-expires`) a few leases after its consumer went away, so a
//!   node that comes back after a broker or network blip finds its queue and what waited in
//!   it, while the queue of a dead node does not pile up. `x-max-length` bounds it meanwhile
//!   (oldest dropped first: the store covers whatever a queue drops).
//!
//! One connection per process, shared by its tasks: a channel in confirm mode for publishing
//! (publishes from any number of tasks are pipelined on it and each awaits only its own
//! confirm), and a channel for consuming with a prefetch window, acknowledged in batches
//! (`multiple`) once the envelopes are in the node's inbox.
//!
//! Invariants:
//! - One task owns the connection. When it fails (broker restart, connection closed, missing
//!   heartbeats, a channel closed by an error) the task reconnects with backoff and declares
//!   the exchanges, the queue and its bindings again, and restarts the consumer. Publishes fail
//!   fast with `Unavailable` while it is down; callers retry.
//! - [`Bus::is_up`] is true only while the connection is open, the publish channel is usable
//!   and, once subscribed, the consumer runs.
//! - The task stops, closing the connection, when the handle's last clone is dropped or the
//!   token given to [`AmqpBus::connect`] fires.
//! - Envelopes are transient messages: a broker restart loses those in flight; an envelope is
//!   acknowledged to the broker only after it reached the node's inbox. The store and each
//!   device's cursor are the guarantee, as for every bus.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use lapin::options::BasicPublishOptions;
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel};
use parking_lot::Mutex;
use protocol::NodeId;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::{CancellationToken, DropGuard};

mod session;

use super::{Bus, BusError, BusResult, Inbox, Targets};
use crate::registry::DEFAULT_LEASE_MS;
use session::{open, own_connection};

/// The name prefix when the URL names none.
pub const DEFAULT_PREFIX: &str = "chat.";

/// Envelopes held for the node before the consumer waits for it to take them.
const INBOX_CAPACITY: usize = 16_384;
/// Heartbeat asked of the broker when the URL does not set one: a silent broker is noticed
/// within about two of these.
const HEARTBEAT_SECS: u16 = 5;
/// How often the owner task checks that the connection and its channels are still usable.
const CHECK_EVERY: Duration = Duration::from_millis(500);
/// Deliveries acknowledged at once, at most; fewer when no more are waiting.
const ACK_BATCH: u64 = 128;
/// How long a partial batch of acknowledgements may wait.
const ACK_DELAY: Duration = Duration::from_millis(5);
/// Reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long `subscribe` waits for the consumer before handing the inbox over anyway.
const FIRST_SUBSCRIPTION: Duration = Duration::from_secs(5);

/// How to reach RabbitMQ and name things there.
#[derive(Clone, Debug)]
pub struct AmqpConfig {
    /// `amqp://user:pass@host:port/vhost`.
    pub url: String,
    /// Prefix of the exchanges and queues.
    pub prefix: String,
    /// How long a node's queue outlives its consumer.
    pub queue_expires: Duration,
    /// Most messages a node's queue holds while nobody consumes it.
    pub queue_max_length: u32,
    /// Deliveries in flight to the consumer before it acknowledges.
    pub prefetch: u16,
    /// Who owns the connection (a node or controller id), put in its name.
    pub label: Option<String>,
}

impl AmqpConfig {
    /// Defaults for `url` and `prefix`: queues expire four default leases after their node went
    /// away.
    pub fn new(url: &str, prefix: &str) -> AmqpConfig {
        AmqpConfig {
            url: url.to_owned(),
            prefix: prefix.to_owned(),
            queue_expires: Duration::from_millis(4 * DEFAULT_LEASE_MS),
            queue_max_length: 200_000,
            prefetch: 512,
            label: None,
        }
    }
}

fn map_err(e: lapin::Error) -> BusError {
    use lapin::ErrorKind as K;
    match e.kind() {
        K::ParsingError(_) | K::SerialisationError(_) | K::InvalidProtocolVersion(_) => {
            BusError::Internal(format!("rabbitmq: {e}"))
        }
        // Everything else means the connection or a channel is gone or going: retry.
        _ => BusError::Unavailable(format!("rabbitmq: {e}")),
    }
}

/// What the owner task and the handles share.
struct Shared {
    config: AmqpConfig,
    uri: AMQPUri,
    direct: String,
    fanout: String,
    /// The name the connection carries (shown by `rabbitmqctl list_connections`).
    connection_name: String,
    /// The publish channel while connected.
    publisher: Mutex<Option<Channel>>,
    /// Set once by `subscribe`.
    subscription: Mutex<Option<Subscription>>,
    /// Wakes the owner task when `subscribe` was called.
    subscribe_requested: Notify,
    /// Whether the connection and publish channel are up.
    connected: AtomicBool,
    /// Whether the consumer runs.
    consuming: AtomicBool,
    /// Whether `subscribe` was called (from then on `is_up` needs the consumer).
    subscribed: AtomicBool,
    /// Becomes true when the consumer first runs.
    first_consume: watch::Sender<bool>,
    /// Connections made (the first and every reconnect).
    sessions: AtomicU64,
}

#[derive(Clone)]
struct Subscription {
    node: NodeId,
    queue: String,
    inbox: mpsc::Sender<Bytes>,
}

/// A process's handle on the RabbitMQ bus. Cheap to clone.
#[derive(Clone)]
pub struct AmqpBus {
    shared: Arc<Shared>,
    /// Stops the owner task when the last clone goes.
    _stop: Arc<DropGuard>,
}

impl AmqpBus {
    /// Connects to RabbitMQ and declares the exchanges; keeps the connection up until `cancel`
    /// fires or the last clone of the handle is dropped. Fails if the first connection fails.
    pub async fn connect(config: AmqpConfig, cancel: CancellationToken) -> BusResult<AmqpBus> {
        if config.url.starts_with("amqps://") {
            return Err(BusError::Internal(
                "amqps:// (TLS) is not built into this server; use amqp://".into(),
            ));
        }
        let mut uri: AMQPUri = config
            .url
            .parse()
            .map_err(|e| BusError::Internal(format!("bad AMQP URL {:?}: {e}", config.url)))?;
        uri.query.heartbeat.get_or_insert(HEARTBEAT_SECS);
        uri.query.connection_timeout.get_or_insert(3_000);
        let short = uuid::Uuid::new_v4().simple().to_string();
        let shared = Arc::new(Shared {
            direct: format!("{}direct", config.prefix),
            fanout: format!("{}fanout", config.prefix),
            connection_name: format!(
                "chat-bus:{}{}",
                config.prefix,
                config.label.as_deref().unwrap_or(&short[..12])
            ),
            config,
            uri,
            publisher: Mutex::new(None),
            subscription: Mutex::new(None),
            subscribe_requested: Notify::new(),
            connected: AtomicBool::new(false),
            consuming: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            first_consume: watch::channel(false).0,
            sessions: AtomicU64::new(0),
        });
        // The first connection is made here, so that a wrong URL or a broker that is down
        // fails the start with a clear error instead of a silent retry loop.
        let first = open(&shared).await.map_err(|e| {
            BusError::Unavailable(format!(
                "cannot reach RabbitMQ at {}: {e}",
                redact(&shared.config.url)
            ))
        })?;
        let stop = cancel.child_token();
        tokio::spawn(own_connection(shared.clone(), first, stop.clone()));
        Ok(AmqpBus {
            shared,
            _stop: Arc::new(stop.drop_guard()),
        })
    }

    /// The connection's name as RabbitMQ lists it.
    pub fn connection_name(&self) -> &str {
        &self.shared.connection_name
    }

    /// Connections made so far (1 after connecting, +1 per reconnect).
    pub fn sessions(&self) -> u64 {
        self.shared.sessions.load(Ordering::Relaxed)
    }

    /// The queue of `node`.
    pub fn queue_name(&self, node: &NodeId) -> String {
        format!("{}node.{node}", self.shared.config.prefix)
    }
}

/// The URL without its password, for logs and errors.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].find(':') {
            Some(colon) => format!("{}:***{}", &url[..s + 3 + colon], &url[at..]),
            None => url.to_owned(),
        },
        _ => url.to_owned(),
    }
}

#[async_trait]
impl Bus for AmqpBus {
    fn kind(&self) -> &'static str {
        "amqp"
    }

    async fn publish(&self, targets: &Targets, _key: &[u8], envelope: Bytes) -> BusResult<()> {
        let Some(channel) = self.shared.publisher.lock().clone() else {
            return Err(BusError::Unavailable("not connected to RabbitMQ".into()));
        };
        let (exchange, keys): (&str, Vec<&str>) = match targets {
            Targets::All => (&self.shared.fanout, vec![""]),
            Targets::Nodes(nodes) => (
                &self.shared.direct,
                nodes.iter().map(NodeId::as_str).collect(),
            ),
            Targets::Users(_) => {
                return Err(BusError::Internal(
                    "RabbitMQ cannot find users' nodes: locate them first".into(),
                ));
            }
        };
        // Every publish is handed to the connection before any confirm is awaited: one round
        // trip in all. (Each target is a different queue, so their relative order is free;
        // polled in order, they are queued in order anyway.)
        let sends = keys.into_iter().map(|key| {
            channel.basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions::default(),
                &envelope,
                BasicProperties::default(),
            )
        });
        let confirms = futures::future::try_join_all(sends)
            .await
            .map_err(map_err)?;
        for confirmed in futures::future::join_all(confirms).await {
            match confirmed {
                Ok(c) if c.is_ack() => {}
                Ok(_) => {
                    return Err(BusError::Unavailable(
                        "RabbitMQ refused a publish (nack)".into(),
                    ));
                }
                Err(e) => return Err(map_err(e)),
            }
        }
        Ok(())
    }

    async fn subscribe(&self, node: &NodeId) -> BusResult<Inbox> {
        if self.shared.subscribed.swap(true, Ordering::AcqRel) {
            return Err(BusError::Internal(
                "this bus handle is already subscribed".into(),
            ));
        }
        let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
        *self.shared.subscription.lock() = Some(Subscription {
            node: node.clone(),
            queue: self.queue_name(node),
            inbox: tx,
        });
        self.shared.subscribe_requested.notify_one();
        let mut first = self.shared.first_consume.subscribe();
        let started = tokio::time::timeout(FIRST_SUBSCRIPTION, first.wait_for(|c| *c)).await;
        if !matches!(started, Ok(Ok(_))) {
            tracing::warn!(%node, "rabbitmq consumer not started yet; it keeps trying in the background");
        }
        Ok(rx)
    }

    fn sessions(&self) -> u64 {
        AmqpBus::sessions(self)
    }

    fn is_up(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
            && (!self.shared.subscribed.load(Ordering::Acquire)
                || self.shared.consuming.load(Ordering::Acquire))
    }
}

#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod tests;
