//! The bus on Kafka (through librdkafka, the `rdkafka` crate).
//!
//! Topics, under a name prefix (`chat.` unless the URL says `?prefix=…`), each with
//! [`KafkaConfig::partitions`] partitions:
//!
//! - `{prefix}all`: fanout envelopes, published once; every node reads all of it.
//! - `{prefix}node.{id}`: routed envelopes for one node, published once per target node. A
//!   node creates its topic when it subscribes (and again after a broker lost it); a publisher
//!   that meets a missing topic creates it and tries once more.
//!
//! Every envelope is produced with its order key as the Kafka key, so one key's envelopes (one
//! conversation's events) share a partition and stay in order.
//!
//! Each node reads both of its topics as a consumer group of its own (`{prefix}node.{id}`), so
//! it gets every partition: nodes sharing a group would each get only a share of the fanout
//! topic. [`GroupChoice`] is where another choice would go.
//!
//! Where a node starts reading: at the end of each partition (the high watermark), whenever
//! its partitions are assigned and whenever its connection to the broker recovers. What was
//! published meanwhile is skipped on purpose: the bus is the fast path, and the node's devices
//! catch up from the store each time [`Bus::sessions`] grows, which it does at exactly those
//! moments. Committed offsets are never read (they are not even written): a restarted node
//! has no use for envelopes of sessions it no longer holds.
//!
//! One producer per process, shared by its tasks (librdkafka batches what many tasks produce
//! concurrently), and one owner thread per handle that probes the broker and, once the handle
//! subscribed, polls the consumer.
//!
//! Invariants:
//! - [`Bus::is_up`] is true only while the last probe of the broker succeeded and, once
//!   subscribed, the consumer holds its partitions with no transport error since it was last
//!   placed at their ends.
//! - [`Bus::sessions`] grows each time the consumer is placed at the end of its partitions
//!   (first assignment, every reassignment, every recovery of its connection): before that
//!   moment, anything missed is in the store; after it, the bus delivers.
//! - The owner thread stops, and the consumer leaves its group, when the handle's last clone is
//!   dropped or the token given to [`KafkaBus::connect`] fires.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use protocol::NodeId;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

mod context;
mod owner;

use super::{Bus, BusError, BusResult, Inbox, Targets};
use context::{ProducerContext, Signals};

/// The name prefix when the URL names none.
pub const DEFAULT_PREFIX: &str = "chat.";
/// Partitions per topic when the URL names no number (`?partitions=N`).
pub const DEFAULT_PARTITIONS: i32 = 3;

/// Envelopes held for the node before the consumer waits for it to take them.
const INBOX_CAPACITY: usize = 16_384;
/// How long the broker keeps envelopes: only long enough for a node to read them.
const RETENTION_MS: &str = "600000";
/// How long librdkafka tries to deliver one envelope before the publish fails (and the caller
/// retries): about as long as the other buses take to notice an outage.
const MESSAGE_TIMEOUT_MS: &str = "5000";
/// How long an admin request or a probe may take.
const ANSWER_WITHIN: Duration = Duration::from_secs(3);
/// How long `subscribe` waits for the first assignment before handing the inbox over anyway.
const FIRST_SUBSCRIPTION: Duration = Duration::from_secs(10);

/// Which consumer group a node reads in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum GroupChoice {
    /// A group of its own (`{prefix}node.{id}`): the node gets every partition of its topics.
    #[default]
    PerNode,
    /// A group named here, shared by whoever names it: each member gets only a share of the
    /// partitions (what a cluster must not do; kept for showing why).
    Shared(String),
}

/// How to reach Kafka and name things there.
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    /// Prefix of the topics and groups.
    pub prefix: String,
    /// Partitions of each topic the bus creates.
    pub partitions: i32,
    /// Which consumer group a node reads in.
    pub group: GroupChoice,
    /// Who owns the connections (a node or controller id), put in their client id.
    pub label: Option<String>,
}

impl KafkaConfig {
    /// Defaults for `brokers` and `prefix`.
    pub fn new(brokers: &str, prefix: &str) -> KafkaConfig {
        KafkaConfig {
            brokers: brokers.to_owned(),
            prefix: prefix.to_owned(),
            partitions: DEFAULT_PARTITIONS,
            group: GroupChoice::PerNode,
            label: None,
        }
    }

    /// Reads `kafka://HOST:PORT[,HOST:PORT…][/][?partitions=N]` (the prefix already split off).
    pub fn from_url(url: &str, prefix: &str) -> BusResult<KafkaConfig> {
        let bad = |why: &str| BusError::Internal(format!("bad Kafka URL {url:?}: {why}"));
        let rest = url
            .strip_prefix("kafka://")
            .ok_or_else(|| bad("expected kafka://HOST:PORT"))?;
        let (hosts, query) = rest.split_once('?').unwrap_or((rest, ""));
        let hosts = hosts.trim_end_matches('/');
        if hosts.is_empty() || hosts.contains('/') || hosts.contains('@') {
            return Err(bad("expected kafka://HOST:PORT[,HOST:PORT…]"));
        }
        let mut config = KafkaConfig::new(hosts, prefix);
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            match kv.split_once('=') {
                Some(("partitions", n)) => {
                    config.partitions = n
                        .parse()
                        .ok()
                        .filter(|n| (1..=1024).contains(n))
                        .ok_or_else(|| bad("partitions must be 1 to 1024"))?;
                }
                _ => return Err(bad(&format!("unknown option {kv:?} (partitions, prefix)"))),
            }
        }
        Ok(config)
    }
}

/// Whether a Kafka error means "not reachable now, try again" rather than a mistake.
fn is_transient(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    !matches!(
        code,
        C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::InvalidMessage
            | C::InvalidTopic
            | C::TopicAuthorizationFailed
            | C::UnsupportedVersion
            | C::Conflict
            | C::InvalidArgument
            | C::BadMessage
    )
}

fn map_err(e: KafkaError) -> BusError {
    match e.rdkafka_error_code() {
        Some(code) if !is_transient(code) => BusError::Internal(format!("kafka: {e}")),
        _ => BusError::Unavailable(format!("kafka: {e}")),
    }
}

/// What the owner thread and the handles share.
struct Shared {
    config: KafkaConfig,
    /// `{prefix}all`.
    all_topic: String,
    /// The client id the connections carry (brokers log it; `chat-bus:{prefix}{label}`).
    client_id: String,
    producer: FutureProducer<ProducerContext>,
    admin: AdminClient<DefaultClientContext>,
    /// What the clients' callbacks saw.
    signals: Arc<Signals>,
    /// Whether the last probe of the broker succeeded.
    probe_ok: AtomicBool,
    /// Set once by `subscribe`; the owner thread takes it.
    subscription: Mutex<Option<Subscription>>,
    /// Whether `subscribe` was called (from then on `is_up` needs the consumer).
    subscribed: AtomicBool,
}

struct Subscription {
    node: NodeId,
    inbox: mpsc::Sender<Bytes>,
}

impl Shared {
    fn node_topic(&self, node: &str) -> String {
        format!("{}node.{node}", self.config.prefix)
    }

    fn group_id(&self, node: &NodeId) -> String {
        match &self.config.group {
            GroupChoice::PerNode => format!("{}node.{node}", self.config.prefix),
            GroupChoice::Shared(name) => name.clone(),
        }
    }

    /// Creates `topics` where they do not exist yet.
    async fn ensure_topics(&self, topics: &[&str]) -> BusResult<()> {
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| {
                NewTopic::new(t, self.config.partitions, TopicReplication::Fixed(1))
                    .set("retention.ms", RETENTION_MS)
            })
            .collect();
        let opts = AdminOptions::new().request_timeout(Some(ANSWER_WITHIN));
        let results = self
            .admin
            .create_topics(&new, &opts)
            .await
            .map_err(map_err)?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    let e = KafkaError::AdminOp(code);
                    return Err(match map_err(e) {
                        BusError::Unavailable(why) => {
                            BusError::Unavailable(format!("creating topic {topic}: {why}"))
                        }
                        BusError::Internal(why) => {
                            BusError::Internal(format!("creating topic {topic}: {why}"))
                        }
                    });
                }
            }
        }
        Ok(())
    }

    /// Produces `envelope` once to each of `topics`, all before awaiting any delivery.
    async fn produce(&self, topics: &[String], key: &[u8], envelope: &Bytes) -> BusResult<()> {
        let mut deliveries = Vec::with_capacity(topics.len());
        for topic in topics {
            let record = FutureRecord::<[u8], [u8]>::to(topic).payload(&envelope[..]);
            let record = if key.is_empty() {
                record
            } else {
                record.key(key)
            };
            let delivery = self
                .producer
                .send_result(record)
                .map_err(|(e, _)| map_err(e))?;
            deliveries.push((topic, delivery));
        }
        let mut missing = Vec::new();
        for (topic, delivery) in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => match e.rdkafka_error_code() {
                    Some(
                        RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic,
                    ) => missing.push(topic.clone()),
                    _ => return Err(map_err(e)),
                },
                Err(_) => return Err(BusError::Unavailable("kafka producer closed".into())),
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        // A node that never subscribed yet, or a broker that forgot its topics: create them
        // and produce once more (the second miss is an error the caller retries).
        let names: Vec<&str> = missing.iter().map(String::as_str).collect();
        self.ensure_topics(&names).await?;
        for topic in &missing {
            let record = FutureRecord::<[u8], [u8]>::to(topic).payload(&envelope[..]);
            let record = if key.is_empty() {
                record
            } else {
                record.key(key)
            };
            let delivery = self
                .producer
                .send_result(record)
                .map_err(|(e, _)| map_err(e))?;
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(map_err(e)),
                Err(_) => return Err(BusError::Unavailable("kafka producer closed".into())),
            }
        }
        Ok(())
    }
}

/// A process's handle on the Kafka bus. Cheap to clone.
#[derive(Clone)]
pub struct KafkaBus {
    shared: Arc<Shared>,
    /// Stops the owner thread when the last clone goes.
    _stop: Arc<DropGuard>,
}

/// The librdkafka settings every client of the bus shares.
fn base_config(config: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        .set("client.id", client_id)
        .set("socket.keepalive.enable", "true")
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "1000")
        // Subscribed topics that a broker restart took away are noticed when they come back.
        .set("topic.metadata.refresh.interval.ms", "2000")
        .set("log_level", "4");
    c
}

impl KafkaBus {
    /// Connects to Kafka and creates the fanout topic; keeps probing the broker until `cancel`
    /// fires or the last clone of the handle is dropped. Fails if the broker does not answer.
    pub async fn connect(config: KafkaConfig, cancel: CancellationToken) -> BusResult<KafkaBus> {
        let short = uuid::Uuid::new_v4().simple().to_string();
        let client_id = format!(
            "chat-bus:{}{}",
            config.prefix,
            config.label.as_deref().unwrap_or(&short[..12])
        );
        let signals = Arc::new(Signals::default());
        let producer: FutureProducer<ProducerContext> = base_config(&config, &client_id)
            .set("message.timeout.ms", MESSAGE_TIMEOUT_MS)
            .set("linger.ms", "1")
            .set("acks", "all")
            .set("enable.idempotence", "false")
            // The partitioner of the Java client: a key lands where a JVM producer puts it.
            .set("partitioner", "murmur2_random")
            .create_with_context(ProducerContext)
            .map_err(|e| BusError::Internal(format!("kafka producer: {e}")))?;
        let admin: AdminClient<DefaultClientContext> = base_config(&config, &client_id)
            .create()
            .map_err(|e| BusError::Internal(format!("kafka admin client: {e}")))?;
        let shared = Arc::new(Shared {
            all_topic: format!("{}all", config.prefix),
            client_id,
            config,
            producer,
            admin,
            signals,
            probe_ok: AtomicBool::new(false),
            subscription: Mutex::new(None),
            subscribed: AtomicBool::new(false),
        });
        // The first round trip is made here, so that a wrong URL or a broker that is down fails
        // the start with a clear error instead of a silent retry loop.
        let all = shared.all_topic.clone();
        shared.ensure_topics(&[&all]).await.map_err(|e| {
            BusError::Unavailable(format!(
                "cannot reach Kafka at {}: {e}",
                shared.config.brokers
            ))
        })?;
        shared.probe_ok.store(true, Ordering::Release);
        let stop = cancel.child_token();
        owner::spawn(shared.clone(), stop.clone())?;
        Ok(KafkaBus {
            shared,
            _stop: Arc::new(stop.drop_guard()),
        })
    }

    /// The client id the bus's connections carry.
    pub fn client_id(&self) -> &str {
        &self.shared.client_id
    }

    /// The topic of `node`'s routed envelopes.
    pub fn node_topic(&self, node: &NodeId) -> String {
        self.shared.node_topic(node.as_str())
    }

    /// The fanout topic.
    pub fn all_topic(&self) -> &str {
        &self.shared.all_topic
    }

    /// The consumer group `node` reads in.
    pub fn group_id(&self, node: &NodeId) -> String {
        self.shared.group_id(node)
    }

    /// Times the consumer was placed at the end of its partitions (1 after subscribing, +1 per
    /// reassignment or recovery).
    pub fn sessions(&self) -> u64 {
        self.shared.signals.sessions.load(Ordering::Relaxed)
    }

    /// Deletes `topics` (tests clean up with it).
    pub async fn delete_topics(&self, topics: &[&str]) -> BusResult<()> {
        let opts = AdminOptions::new().request_timeout(Some(ANSWER_WITHIN));
        self.shared
            .admin
            .delete_topics(topics, &opts)
            .await
            .map_err(map_err)?;
        Ok(())
    }
}

/// Deletes every topic whose name starts with `prefix` on the brokers at `brokers` (what a test
/// cluster or a lab run leaves behind). Returns how many it deleted.
pub async fn delete_topics_with_prefix(brokers: &str, prefix: &str) -> BusResult<usize> {
    if prefix.is_empty() {
        return Err(BusError::Internal("refusing to delete every topic".into()));
    }
    let admin: AdminClient<DefaultClientContext> =
        base_config(&KafkaConfig::new(brokers, prefix), "chat-bus:cleanup")
            .create()
            .map_err(|e| BusError::Internal(format!("kafka admin client: {e}")))?;
    let admin = Arc::new(admin);
    let listing = admin.clone();
    let names: Vec<String> = tokio::task::spawn_blocking(move || {
        listing
            .inner()
            .fetch_metadata(None, ANSWER_WITHIN)
            .map(|m| m.topics().iter().map(|t| t.name().to_owned()).collect())
    })
    .await
    .map_err(|e| BusError::Internal(e.to_string()))?
    .map_err(map_err)?;
    let ours: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| n.starts_with(prefix))
        .collect();
    if ours.is_empty() {
        return Ok(0);
    }
    let opts = AdminOptions::new().request_timeout(Some(ANSWER_WITHIN));
    admin.delete_topics(&ours, &opts).await.map_err(map_err)?;
    Ok(ours.len())
}

#[async_trait]
impl Bus for KafkaBus {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    async fn publish(&self, targets: &Targets, key: &[u8], envelope: Bytes) -> BusResult<()> {
        let topics: Vec<String> = match targets {
            Targets::All => vec![self.shared.all_topic.clone()],
            Targets::Nodes(nodes) => nodes
                .iter()
                .map(|n| self.shared.node_topic(n.as_str()))
                .collect(),
            Targets::Users(_) => {
                return Err(BusError::Internal(
                    "Kafka cannot find users' nodes: locate them first".into(),
                ));
            }
        };
        if topics.is_empty() {
            return Ok(());
        }
        self.shared.produce(&topics, key, &envelope).await
    }

    async fn subscribe(&self, node: &NodeId) -> BusResult<Inbox> {
        if self.shared.subscribed.swap(true, Ordering::AcqRel) {
            return Err(BusError::Internal(
                "this bus handle is already subscribed".into(),
            ));
        }
        let own = self.shared.node_topic(node.as_str());
        self.shared.ensure_topics(&[&own]).await?;
        let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
        *self.shared.subscription.lock() = Some(Subscription {
            node: node.clone(),
            inbox: tx,
        });
        let mut first = self.shared.signals.first_placement.subscribe();
        let started = tokio::time::timeout(FIRST_SUBSCRIPTION, first.wait_for(|c| *c)).await;
        if !matches!(started, Ok(Ok(_))) {
            tracing::warn!(%node, "kafka consumer holds no partitions yet; it keeps trying in the background");
        }
        Ok(rx)
    }

    fn sessions(&self) -> u64 {
        KafkaBus::sessions(self)
    }

    fn is_up(&self) -> bool {
        self.shared.probe_ok.load(Ordering::Acquire)
            && (!self.shared.subscribed.load(Ordering::Acquire)
                || self.shared.signals.consuming.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests;
