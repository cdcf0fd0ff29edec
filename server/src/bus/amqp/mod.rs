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
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, Consumer, Event, ExchangeKind,
};
use parking_lot::Mutex;
use protocol::NodeId;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{Bus, BusError, BusResult, Inbox, Targets};
use crate::registry::DEFAULT_LEASE_MS;

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

    async fn publish(&self, targets: &Targets, envelope: Bytes) -> BusResult<()> {
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

/// An open connection with its publish channel ready and the exchanges declared.
struct Session {
    conn: Connection,
    publisher: Channel,
}

/// Opens a connection, a publish channel in confirm mode, and declares the exchanges.
async fn open(shared: &Shared) -> lapin::Result<Session> {
    let props =
        ConnectionProperties::default().with_connection_name(shared.connection_name.clone().into());
    let conn = Connection::connect_uri(shared.uri.clone(), props).await?;
    let publisher = conn.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    // Auto-delete: an exchange goes when its last binding goes, i.e. when the last node queue
    // of the cluster expired, so a cluster that is gone leaves nothing behind. A publish that
    // races such a deletion fails, closes the channel, and the reconnect declares it again.
    let durable = ExchangeDeclareOptions {
        durable: true,
        auto_delete: true,
        ..ExchangeDeclareOptions::default()
    };
    publisher
        .exchange_declare(
            shared.direct.as_str().into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await?;
    publisher
        .exchange_declare(
            shared.fanout.as_str().into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await?;
    Ok(Session { conn, publisher })
}

/// Declares the node's queue and bindings and starts consuming it.
async fn start_consumer(
    shared: &Shared,
    conn: &Connection,
    sub: &Subscription,
) -> lapin::Result<(Channel, Consumer)> {
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(shared.config.prefetch, BasicQosOptions::default())
        .await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-expires".into(),
        AMQPValue::LongLongInt(shared.config.queue_expires.as_millis() as i64),
    );
    args.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(i64::from(shared.config.queue_max_length)),
    );
    let queue: ShortString = sub.queue.as_str().into();
    channel
        .queue_declare(
            queue.clone(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await?;
    channel
        .queue_bind(
            queue.clone(),
            shared.direct.as_str().into(),
            sub.node.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.clone(),
            shared.fanout.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let consumer = channel
        .basic_consume(
            queue,
            format!("chat-{}", sub.node).into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}

/// Why a session ended.
enum Ended {
    Stop,
    Lost(String),
}

/// The task that owns the connection: runs sessions, reconnecting with backoff between them.
async fn own_connection(shared: Arc<Shared>, first: Session, cancel: CancellationToken) {
    let mut next = Some(first);
    let mut backoff = BACKOFF_MIN;
    loop {
        let session = match next.take() {
            Some(s) => Ok(s),
            None => tokio::select! {
                _ = cancel.cancelled() => break,
                s = open(&shared) => s,
            },
        };
        let ended = match session {
            Ok(s) => run_session(&shared, s, &cancel).await,
            Err(e) => Ended::Lost(e.to_string()),
        };
        let was_up = shared.connected.swap(false, Ordering::AcqRel);
        shared.consuming.store(false, Ordering::Release);
        *shared.publisher.lock() = None;
        match ended {
            Ended::Stop => break,
            Ended::Lost(why) if was_up => {
                backoff = BACKOFF_MIN;
                tracing::warn!(connection = %shared.connection_name, %why, "rabbitmq connection lost; reconnecting");
            }
            Ended::Lost(why) => {
                tracing::debug!(connection = %shared.connection_name, %why, "rabbitmq still unreachable");
            }
        }
        let jitter = Duration::from_millis(rand::random_range(0..=backoff.as_millis() as u64 / 2));
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(backoff + jitter) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    tracing::debug!(connection = %shared.connection_name, "rabbitmq bus stopped");
}

/// Serves one connection until it fails or `cancel` fires.
async fn run_session(shared: &Shared, session: Session, cancel: &CancellationToken) -> Ended {
    let Session { conn, publisher } = session;
    let mut events = conn.events_listener();
    *shared.publisher.lock() = Some(publisher.clone());
    shared.connected.store(true, Ordering::Release);
    let n = shared.sessions.fetch_add(1, Ordering::Relaxed) + 1;
    if n > 1 {
        metrics::counter!("chat_bus_reconnects_total", "bus" => "amqp").increment(1);
        tracing::info!(connection = %shared.connection_name, "rabbitmq connected again");
    }

    let mut consumer: Option<(Channel, Consumer, Subscription)> = None;
    // Deliveries taken but not yet acknowledged: the last tag and how many.
    let mut unacked: Option<u64> = None;
    let mut unacked_count = 0u64;
    let mut ack_due = Box::pin(tokio::time::sleep(ACK_DELAY));
    let mut check = tokio::time::interval(CHECK_EVERY);
    let mut want_consumer = true;

    let ended = loop {
        if want_consumer && consumer.is_none() {
            want_consumer = false;
            let sub = shared.subscription.lock().clone();
            if let Some(sub) = sub {
                match start_consumer(shared, &conn, &sub).await {
                    Ok((channel, c)) => {
                        consumer = Some((channel, c, sub));
                        shared.consuming.store(true, Ordering::Release);
                        shared.first_consume.send_replace(true);
                        tracing::info!(queue = %shared_queue(&consumer), "rabbitmq consumer started");
                    }
                    Err(e) => break Ended::Lost(format!("cannot start the consumer: {e}")),
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break Ended::Stop,
            _ = shared.subscribe_requested.notified(), if consumer.is_none() => {
                want_consumer = true;
            }
            ev = events.next() => match ev {
                Some(Event::Error(e)) => break Ended::Lost(e.to_string()),
                None => break Ended::Lost("connection events ended".into()),
                Some(_) => {}
            },
            delivery = next_delivery(&mut consumer) => match delivery {
                Some(Ok(d)) => {
                    let Some((_, _, sub)) = consumer.as_ref() else { continue };
                    let inbox = sub.inbox.clone();
                    tokio::select! {
                        _ = cancel.cancelled() => break Ended::Stop,
                        sent = inbox.send(Bytes::from(d.data)) => if sent.is_err() {
                            // Nobody reads the inbox any more.
                            break Ended::Stop;
                        },
                    }
                    if unacked.is_none() {
                        ack_due.as_mut().reset(tokio::time::Instant::now() + ACK_DELAY);
                    }
                    unacked = Some(d.delivery_tag);
                    unacked_count += 1;
                    if unacked_count >= ACK_BATCH
                        && let Err(e) = ack(&consumer, &mut unacked, &mut unacked_count).await
                    {
                        break Ended::Lost(format!("ack failed: {e}"));
                    }
                }
                Some(Err(e)) => break Ended::Lost(format!("consumer failed: {e}")),
                None => break Ended::Lost("the broker cancelled the consumer".into()),
            },
            _ = &mut ack_due, if unacked.is_some() => {
                if let Err(e) = ack(&consumer, &mut unacked, &mut unacked_count).await {
                    break Ended::Lost(format!("ack failed: {e}"));
                }
            }
            _ = check.tick() => {
                let consumer_ok = consumer.as_ref().is_none_or(|(ch, _, _)| ch.status().connected());
                if !conn.status().connected() || !publisher.status().connected() || !consumer_ok {
                    break Ended::Lost("the connection or a channel closed".into());
                }
            }
        }
    };
    // No new publish may start on this connection; `own_connection` marks the bus down.
    *shared.publisher.lock() = None;
    if matches!(ended, Ended::Stop) {
        // A clean goodbye: hand back what was taken, then close.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = ack(&consumer, &mut unacked, &mut unacked_count).await;
            let _ = conn.close(200, "bye".into()).await;
        })
        .await;
    }
    ended
}

fn shared_queue(consumer: &Option<(Channel, Consumer, Subscription)>) -> &str {
    consumer.as_ref().map_or("", |(_, _, s)| s.queue.as_str())
}

async fn next_delivery(
    consumer: &mut Option<(Channel, Consumer, Subscription)>,
) -> Option<lapin::Result<lapin::message::Delivery>> {
    match consumer.as_mut() {
        Some((_, c, _)) => c.next().await,
        None => std::future::pending().await,
    }
}

/// Acknowledges every delivery up to the last one taken, in one frame.
async fn ack(
    consumer: &Option<(Channel, Consumer, Subscription)>,
    unacked: &mut Option<u64>,
    count: &mut u64,
) -> lapin::Result<()> {
    let (Some(tag), Some((channel, _, _))) = (unacked.take(), consumer.as_ref()) else {
        return Ok(());
    };
    *count = 0;
    channel
        .basic_ack(tag, BasicAckOptions { multiple: true })
        .await
}

/// What the tests of the RabbitMQ bus share: the broker they need, fresh names, and removal
/// of what they declared.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// The RabbitMQ the tests use.
    pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
    /// How to start it.
    pub const START_RABBITMQ: &str = "RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 ERL_EPMD_ADDRESS=127.0.0.1 rabbitmq-server -detached && rabbitmqctl await_startup";

    /// Fails the test, naming the service and how to start it, if RabbitMQ does not answer.
    pub async fn require_rabbitmq() {
        let reachable = tokio::time::timeout(
            Duration::from_secs(5),
            Connection::connect(AMQP_URL, ConnectionProperties::default()),
        )
        .await;
        match reachable {
            Ok(Ok(conn)) => {
                let _ = conn.close(200, "ok".into()).await;
            }
            Ok(Err(e)) => panic!(
                "RabbitMQ is not reachable at {AMQP_URL} ({e}); these tests need it. Start it with: {START_RABBITMQ}"
            ),
            Err(_) => panic!(
                "RabbitMQ at {AMQP_URL} did not answer within 5 s; these tests need it. Start it with: {START_RABBITMQ}"
            ),
        }
    }

    /// A prefix no other test uses.
    pub fn fresh_prefix(what: &str) -> String {
        format!(
            "test.{what}.{}.",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        )
    }

    /// Deletes the exchanges and queues of a prefix when dropped.
    pub struct DeleteOnDrop {
        /// The prefix.
        pub prefix: String,
        /// The node ids whose queues to delete.
        pub nodes: Vec<String>,
    }

    impl Drop for DeleteOnDrop {
        fn drop(&mut self) {
            let prefix = self.prefix.clone();
            let nodes = self.nodes.clone();
            // A runtime of its own: this may run after the test's runtime is gone.
            let done = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(async move {
                    let conn = Connection::connect(AMQP_URL, ConnectionProperties::default())
                        .await
                        .map_err(|e| e.to_string())?;
                    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
                    for n in &nodes {
                        ch.queue_delete(format!("{prefix}node.{n}").into(), Default::default())
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    for x in ["direct", "fanout"] {
                        ch.exchange_delete(format!("{prefix}{x}").into(), Default::default())
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    let _ = conn.close(200, "ok".into()).await;
                    Ok::<(), String>(())
                })
            })
            .join();
            if !matches!(done, Ok(Ok(()))) {
                eprintln!(
                    "could not delete the test topology under {}: {done:?}",
                    self.prefix
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::test_support::{AMQP_URL, DeleteOnDrop, fresh_prefix, require_rabbitmq};
    use super::*;
    use crate::bus::SharedBus;

    /// A bus handle that deletes its test topology when the last clone goes.
    #[derive(Clone)]
    struct TestBus {
        bus: AmqpBus,
        _cleanup: Arc<DeleteOnDrop>,
    }

    #[async_trait]
    impl Bus for TestBus {
        fn kind(&self) -> &'static str {
            self.bus.kind()
        }
        async fn publish(&self, targets: &Targets, envelope: Bytes) -> BusResult<()> {
            self.bus.publish(targets, envelope).await
        }
        async fn subscribe(&self, node: &NodeId) -> BusResult<Inbox> {
            self.bus.subscribe(node).await
        }
        fn is_up(&self) -> bool {
            self.bus.is_up()
        }
    }

    async fn handles(prefix: &str, n: usize) -> Vec<(NodeId, AmqpBus)> {
        require_rabbitmq().await;
        let mut out = Vec::new();
        for i in 0..n {
            let id = NodeId::new(format!("n{i}")).unwrap_or_else(|e| panic!("{e}"));
            let bus = AmqpBus::connect(AmqpConfig::new(AMQP_URL, prefix), CancellationToken::new())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            out.push((id, bus));
        }
        out
    }

    fn cleanup(prefix: &str, n: usize) -> Arc<DeleteOnDrop> {
        Arc::new(DeleteOnDrop {
            prefix: prefix.to_owned(),
            nodes: (0..n).map(|i| format!("n{i}")).collect(),
        })
    }

    crate::bus_suite!(|n: usize| async move {
        let prefix = fresh_prefix("bus");
        let guard = cleanup(&prefix, n);
        handles(&prefix, n)
            .await
            .into_iter()
            .map(|(id, bus)| {
                let bus = TestBus {
                    bus,
                    _cleanup: guard.clone(),
                };
                (id, Arc::new(bus) as SharedBus)
            })
            .collect::<Vec<_>>()
    });

    async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while !f() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting: {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Closes one connection by its client-provided name, through `rabbitmqctl` (so no other
    /// test's connection is touched).
    async fn close_connection(name: &str) {
        let listed = tokio::process::Command::new("rabbitmqctl")
            .args([
                "list_connections",
                "pid",
                "client_properties",
                "-q",
                "--no-table-headers",
            ])
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run rabbitmqctl: {e}"));
        let text = String::from_utf8_lossy(&listed.stdout);
        // One line per connection: the pid (`<rabbit@host.1.2.3>`), a tab, its properties.
        let pid = text
            .lines()
            .find(|l| l.contains(&format!("\"{name}\"")))
            .and_then(|l| l.split('\t').next())
            .unwrap_or_else(|| panic!("no connection named {name}: {text}"))
            .to_owned();
        let closed = tokio::process::Command::new("rabbitmqctl")
            .args([
                "close_connection",
                &pid,
                "test closes this connection",
                "-q",
            ])
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run rabbitmqctl: {e}"));
        assert!(
            closed.status.success(),
            "close_connection failed: {closed:?}"
        );
    }

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://127.0.0.1:5672"), "amqp://127.0.0.1:5672");
    }

    /// The broker closes the node's connection: the bus goes down, reconnects by itself,
    /// consumes its queue again, and gets what was published to it meanwhile.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reconnects_and_finds_its_queue_after_the_connection_is_closed() -> BusResult<()> {
        let prefix = fresh_prefix("bus-close");
        let _cleanup = cleanup(&prefix, 2);
        let nodes = handles(&prefix, 2).await;
        let (id, bus) = &nodes[0];
        let mut inbox = bus.subscribe(id).await?;
        assert!(bus.is_up());
        let to = Targets::Nodes(vec![id.clone()]);
        nodes[1]
            .1
            .publish(&to, Bytes::from_static(b"before"))
            .await?;
        let got = tokio::time::timeout(Duration::from_secs(5), inbox.recv()).await;
        assert_eq!(got.ok().flatten().as_deref(), Some(&b"before"[..]));

        close_connection(bus.connection_name()).await;
        wait_until("the bus notices it is down", || !bus.is_up()).await;
        // Published while the node is away: it waits in the node's queue.
        nodes[1]
            .1
            .publish(&to, Bytes::from_static(b"while-away"))
            .await?;
        wait_until("the bus comes back", || bus.is_up()).await;
        assert_eq!(bus.sessions(), 2);
        let got = tokio::time::timeout(Duration::from_secs(5), inbox.recv()).await;
        assert_eq!(got.ok().flatten().as_deref(), Some(&b"while-away"[..]));
        nodes[1]
            .1
            .publish(&to, Bytes::from_static(b"after"))
            .await?;
        let got = tokio::time::timeout(Duration::from_secs(5), inbox.recv()).await;
        assert_eq!(got.ok().flatten().as_deref(), Some(&b"after"[..]));
        Ok(())
    }

    /// More envelopes than the prefetch window pass through, with batched acks: none stays
    /// unacknowledged, so the queue ends empty.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batched_acks_drain_the_queue() -> BusResult<()> {
        let prefix = fresh_prefix("bus-ack");
        let _cleanup = cleanup(&prefix, 2);
        let nodes = handles(&prefix, 2).await;
        let (id, bus) = &nodes[0];
        let mut inbox = bus.subscribe(id).await?;
        let to = Targets::Nodes(vec![id.clone()]);
        let n = 3_000u32;
        let publisher = nodes[1].1.clone();
        let to2 = to.clone();
        let sender = tokio::spawn(async move {
            let sends = (0..n).map(|i| {
                let publisher = publisher.clone();
                let to = to2.clone();
                async move {
                    publisher
                        .publish(&to, Bytes::from(i.to_be_bytes().to_vec()))
                        .await
                }
            });
            futures::future::try_join_all(sends).await
        });
        for _ in 0..n {
            let got = tokio::time::timeout(Duration::from_secs(10), inbox.recv()).await;
            assert!(got.ok().flatten().is_some(), "an envelope was lost");
        }
        sender
            .await
            .map_err(|e| BusError::Internal(e.to_string()))??;
        // The last partial batch is acknowledged after a short delay.
        let queue = bus.queue_name(id);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let out = tokio::process::Command::new("rabbitmqctl")
                .args([
                    "list_queues",
                    "name",
                    "messages_unacknowledged",
                    "-q",
                    "--no-table-headers",
                ])
                .output()
                .await
                .unwrap_or_else(|e| panic!("cannot run rabbitmqctl: {e}"));
            let text = String::from_utf8_lossy(&out.stdout);
            let unacked = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{queue}\t")))
                .map(|n| n.trim().to_owned());
            if unacked.as_deref() == Some("0") {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "still unacknowledged: {unacked:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }
}
