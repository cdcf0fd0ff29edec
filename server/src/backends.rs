//! Choosing backends from URLs: `embedded` (the controller hosts registry and bus; nothing to
//! install), `redis://…` for the registry and the bus, `zookeeper://…` for the registry,
//! `amqp://…` and `kafka://…` for the bus. One place turns the choice into trait objects, for nodes and for the
//! controller alike.
//!
//! The combinations that work:
//!
//! | registry | bus | for |
//! |---|---|---|
//! | `embedded` | `embedded` | one machine, nothing installed: the controller hosts both |
//! | `redis://…` | `redis://…` | many machines: Redis holds the registry and carries envelopes |
//! | `redis://…` | `amqp://…` | many machines: Redis holds the registry, RabbitMQ carries envelopes |
//! | `redis://…` | `kafka://…` | many machines: Redis holds the registry, Kafka carries envelopes |
//! | `zookeeper://…` | any real bus | many machines: ZooKeeper holds the registry (ephemeral znodes) |
//!
//! The embedded bus runs through the controller, which routes by its own (embedded) registry,
//! so it cannot be paired with a shared registry; a real bus needs a registry every node can read for
//! routed delivery, so it cannot be paired with the embedded one.
//!
//! Whatever the backends, the bus and the registry are handed out sealed
//! ([`crate::sealed`]): envelopes and node entries carry a MAC under the node-admission key.
//!
//! A URL may end in `?prefix=NAME` to keep a cluster's keys, channels, exchanges and queues
//! apart from another's on the same server (default `chat:` in Redis, `chat.` in RabbitMQ and
//! Kafka, the root znode `/chat` in ZooKeeper). A Kafka URL may also say `?partitions=N`.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::KeyRing;
use crate::bus::SharedBus;
use crate::link::LinkClient;
use crate::registry::{Lease, RegistryResult, SharedRegistry};
use crate::sealed::{SealedBus, SealedRegistry};

/// Where the registry lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryChoice {
    /// In the controller (nodes reach it over the link).
    Embedded,
    /// In Redis.
    Redis(String),
    /// In ZooKeeper.
    ZooKeeper(String),
}

/// Which bus carries envelopes between nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusChoice {
    /// Through the controller.
    Embedded,
    /// Redis pub/sub.
    Redis(String),
    /// RabbitMQ.
    Amqp(String),
    /// Kafka.
    Kafka(String),
}

/// A backend URL that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Not a URL this build understands.
    #[error("unsupported {what} {url:?}: expected {expected}")]
    Unsupported {
        /// Which backend.
        what: &'static str,
        /// What was given.
        url: String,
        /// What would have worked.
        expected: &'static str,
    },
    /// Understood, but this build lacks the feature.
    #[error("{what} {url:?} needs a server built with the `{feature}` feature")]
    NotBuilt {
        /// Which backend.
        what: &'static str,
        /// What was given.
        url: String,
        /// The cargo feature.
        feature: &'static str,
    },
    /// Embedded backends need the controller's address.
    #[error("the embedded registry and bus need --controller URL")]
    NoController,
    /// A registry and a bus that do not work together.
    #[error(
        "registry {registry} with bus {bus} is not supported: {why}. Combinations that work: \
         --registry embedded --bus embedded (one machine), or --registry redis://HOST:PORT \
         or zookeeper://HOST:PORT with --bus redis://HOST:PORT, --bus amqp://USER:PASS@HOST:PORT \
         or --bus kafka://HOST:PORT"
    )]
    Mismatch {
        /// The registry chosen.
        registry: &'static str,
        /// The bus chosen.
        bus: &'static str,
        /// Why not.
        why: &'static str,
    },
    /// Connecting failed.
    #[error("{0}")]
    Connect(String),
}

impl FromStr for RegistryChoice {
    type Err = BackendError;
    fn from_str(s: &str) -> Result<Self, BackendError> {
        if s == "embedded" {
            Ok(RegistryChoice::Embedded)
        } else if s.starts_with("redis://") || s.starts_with("rediss://") {
            Ok(RegistryChoice::Redis(s.to_owned()))
        } else if s.starts_with("zookeeper://") {
            Ok(RegistryChoice::ZooKeeper(s.to_owned()))
        } else {
            Err(BackendError::Unsupported {
                what: "registry",
                url: s.to_owned(),
                expected: "embedded, redis://HOST:PORT or zookeeper://HOST:PORT",
            })
        }
    }
}

impl FromStr for BusChoice {
    type Err = BackendError;
    fn from_str(s: &str) -> Result<Self, BackendError> {
        if s == "embedded" {
            Ok(BusChoice::Embedded)
        } else if s.starts_with("redis://") || s.starts_with("rediss://") {
            Ok(BusChoice::Redis(s.to_owned()))
        } else if s.starts_with("amqp://") || s.starts_with("amqps://") {
            Ok(BusChoice::Amqp(s.to_owned()))
        } else if s.starts_with("kafka://") {
            Ok(BusChoice::Kafka(s.to_owned()))
        } else {
            Err(BackendError::Unsupported {
                what: "bus",
                url: s.to_owned(),
                expected: "embedded, redis://HOST:PORT, amqp://USER:PASS@HOST:PORT or kafka://HOST:PORT",
            })
        }
    }
}

impl RegistryChoice {
    /// For status pages.
    pub fn name(&self) -> &'static str {
        match self {
            RegistryChoice::Embedded => "embedded",
            RegistryChoice::Redis(_) => "redis",
            RegistryChoice::ZooKeeper(_) => "zookeeper",
        }
    }
}

impl BusChoice {
    /// For status pages.
    pub fn name(&self) -> &'static str {
        match self {
            BusChoice::Embedded => "embedded",
            BusChoice::Redis(_) => "redis",
            BusChoice::Amqp(_) => "amqp",
            BusChoice::Kafka(_) => "kafka",
        }
    }
}

/// A node's registry and bus.
pub struct NodeBackends {
    /// The registry.
    pub registry: SharedRegistry,
    /// The bus.
    pub bus: SharedBus,
    /// Leases the backend took again by itself (after a reconnect), when it does that.
    pub lease_changes: Option<watch::Receiver<Option<Lease>>>,
    /// Whether nodes reap the registry themselves (a shared registry), rather than leave it to
    /// the controller that hosts it.
    pub node_reaps: bool,
}

/// Splits `?prefix=NAME` off a backend URL: the URL to give the client library, and the
/// prefix (or `default`).
pub fn split_prefix(url: &str, default: &str) -> (String, String) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), default.to_owned());
    };
    let mut prefix = default.to_owned();
    let rest: Vec<&str> = query
        .split('&')
        .filter(|kv| match kv.strip_prefix("prefix=") {
            Some(p) => {
                prefix = p.to_owned();
                false
            }
            None => !kv.is_empty(),
        })
        .collect();
    if rest.is_empty() {
        (base.to_owned(), prefix)
    } else {
        (format!("{base}?{}", rest.join("&")), prefix)
    }
}

fn mismatch(registry: &RegistryChoice, bus: &BusChoice) -> BackendError {
    BackendError::Mismatch {
        registry: registry.name(),
        bus: bus.name(),
        why: match registry {
            RegistryChoice::Embedded => {
                "a real bus needs a registry every node can read (Redis, ZooKeeper) to route \
                 envelopes"
            }
            RegistryChoice::Redis(_) | RegistryChoice::ZooKeeper(_) => {
                "the embedded bus runs through the controller, which routes by its own embedded \
                 registry"
            }
        },
    }
}

/// Opens a shared registry (Redis or ZooKeeper). A controller passes the cluster's lease
/// (nodes take it from the registry when they register) and gets the source of its worker id;
/// nodes pass `None`.
async fn shared_registry(
    registry: &RegistryChoice,
    cluster_lease_ms: Option<u64>,
) -> Result<(SharedRegistry, Arc<dyn ControllerWorkers>), BackendError> {
    let _ = cluster_lease_ms;
    match registry {
        RegistryChoice::Embedded => Err(BackendError::Unsupported {
            what: "registry",
            url: "embedded".into(),
            expected: "redis://HOST:PORT or zookeeper://HOST:PORT",
        }),
        #[cfg(feature = "redis")]
        RegistryChoice::Redis(url) => {
            let (url, prefix) = split_prefix(url, crate::registry::redis::DEFAULT_PREFIX);
            let r = Arc::new(
                crate::registry::redis::RedisRegistry::connect(&url, &prefix, cluster_lease_ms)
                    .await
                    .map_err(|e| BackendError::Connect(e.to_string()))?,
            );
            Ok((r.clone(), r))
        }
        #[cfg(not(feature = "redis"))]
        RegistryChoice::Redis(url) => Err(BackendError::NotBuilt {
            what: "registry",
            url: url.clone(),
            feature: "redis",
        }),
        #[cfg(feature = "zookeeper")]
        RegistryChoice::ZooKeeper(url) => {
            let (url, prefix) = split_prefix(url, crate::registry::zookeeper::DEFAULT_PREFIX);
            let r = Arc::new(
                crate::registry::zookeeper::ZkRegistry::connect(&url, &prefix, cluster_lease_ms)
                    .await
                    .map_err(|e| BackendError::Connect(e.to_string()))?,
            );
            Ok((r.clone(), r))
        }
        #[cfg(not(feature = "zookeeper"))]
        RegistryChoice::ZooKeeper(url) => Err(BackendError::NotBuilt {
            what: "registry",
            url: url.clone(),
            feature: "zookeeper",
        }),
    }
}

/// Opens a real bus (Redis pub/sub, RabbitMQ or Kafka). Real buses go with a shared registry only,
/// so without one nothing calls this.
#[cfg_attr(not(any(feature = "redis", feature = "zookeeper")), allow(dead_code))]
/// The real bus named by `bus`; `me` (a node or controller id) names its broker connection, so
/// that an operator (or a fault test) can find it.
async fn real_bus(
    bus: &BusChoice,
    me: &protocol::NodeId,
    cancel: CancellationToken,
) -> Result<SharedBus, BackendError> {
    // Builds without some buses leave these unused.
    let _ = (me, &cancel);
    match bus {
        BusChoice::Embedded => Err(BackendError::Unsupported {
            what: "bus",
            url: "embedded".into(),
            expected: "redis://HOST:PORT, amqp://USER:PASS@HOST:PORT or kafka://HOST:PORT",
        }),
        #[cfg(feature = "redis")]
        BusChoice::Redis(url) => {
            let (url, prefix) = split_prefix(url, crate::registry::redis::DEFAULT_PREFIX);
            let bus = crate::bus::redis::RedisBus::connect(&url, &prefix, cancel)
                .await
                .map_err(|e| BackendError::Connect(e.to_string()))?;
            Ok(Arc::new(bus))
        }
        #[cfg(not(feature = "redis"))]
        BusChoice::Redis(url) => Err(BackendError::NotBuilt {
            what: "bus",
            url: url.clone(),
            feature: "redis",
        }),
        #[cfg(feature = "amqp")]
        BusChoice::Amqp(url) => {
            let (url, prefix) = split_prefix(url, crate::bus::amqp::DEFAULT_PREFIX);
            let mut config = crate::bus::amqp::AmqpConfig::new(&url, &prefix);
            config.label = Some(me.to_string());
            let bus = crate::bus::amqp::AmqpBus::connect(config, cancel)
                .await
                .map_err(|e| BackendError::Connect(e.to_string()))?;
            Ok(Arc::new(bus))
        }
        #[cfg(not(feature = "amqp"))]
        BusChoice::Amqp(url) => Err(BackendError::NotBuilt {
            what: "bus",
            url: url.clone(),
            feature: "amqp",
        }),
        #[cfg(feature = "kafka")]
        BusChoice::Kafka(url) => {
            let (url, prefix) = split_prefix(url, crate::bus::kafka::DEFAULT_PREFIX);
            let mut config = crate::bus::kafka::KafkaConfig::from_url(&url, &prefix)
                .map_err(|e| BackendError::Connect(e.to_string()))?;
            config.label = Some(me.to_string());
            let bus = crate::bus::kafka::KafkaBus::connect(config, cancel)
                .await
                .map_err(|e| BackendError::Connect(e.to_string()))?;
            Ok(Arc::new(bus))
        }
        #[cfg(not(feature = "kafka"))]
        BusChoice::Kafka(url) => Err(BackendError::NotBuilt {
            what: "bus",
            url: url.clone(),
            feature: "kafka",
        }),
    }
}

/// Opens a node's registry and bus, sealed with the node-admission key. Background tasks stop
/// when `cancel` fires.
pub async fn for_node(
    me: &protocol::NodeId,
    registry: &RegistryChoice,
    bus: &BusChoice,
    controller: Option<&str>,
    node_keys: &KeyRing,
    link_tls: Option<Arc<rustls::ClientConfig>>,
    cancel: CancellationToken,
) -> Result<NodeBackends, BackendError> {
    let mut b = open_for_node(me, registry, bus, controller, node_keys, link_tls, cancel).await?;
    b.registry = SealedRegistry::wrap(b.registry, node_keys.clone());
    b.bus = SealedBus::wrap(b.bus, node_keys.clone());
    Ok(b)
}

async fn open_for_node(
    me: &protocol::NodeId,
    registry: &RegistryChoice,
    bus: &BusChoice,
    controller: Option<&str>,
    node_keys: &KeyRing,
    link_tls: Option<Arc<rustls::ClientConfig>>,
    cancel: CancellationToken,
) -> Result<NodeBackends, BackendError> {
    match (registry, bus) {
        (RegistryChoice::Embedded, BusChoice::Embedded) => {
            let controller = controller.ok_or(BackendError::NoController)?;
            let link = LinkClient::start(controller, node_keys.clone(), link_tls, cancel);
            Ok(NodeBackends {
                lease_changes: Some(link.lease()),
                node_reaps: false,
                registry: Arc::new(link.clone()),
                bus: Arc::new(link),
            })
        }
        (RegistryChoice::Embedded, _) | (_, BusChoice::Embedded) => Err(mismatch(registry, bus)),
        (registry, bus) => {
            let (registry, _) = shared_registry(registry, None).await?;
            Ok(NodeBackends {
                registry,
                bus: real_bus(bus, me, cancel).await?,
                // The node's heartbeat registers again if the registry forgot it.
                lease_changes: None,
                // A shared registry has no single owner: every node reaps it too.
                node_reaps: true,
            })
        }
    }
}

/// The registry and bus of a controller that does not host them (real backends).
pub struct ControllerBackends {
    /// The registry.
    pub registry: SharedRegistry,
    /// The bus (the controller only publishes: membership events and revocations).
    pub bus: SharedBus,
    /// Where the controller takes its Snowflake worker id.
    pub workers: Option<WorkerClaims>,
}

/// Opens a controller's registry and bus when they are real backends, sealed with the
/// node-admission key; the embedded pair is built by the controller itself (it hosts them).
/// `lease_ms` becomes the cluster's node lease. Background tasks stop when `cancel` fires.
pub async fn for_controller(
    me: &protocol::NodeId,
    registry: &RegistryChoice,
    bus: &BusChoice,
    lease_ms: u64,
    node_keys: &KeyRing,
    cancel: CancellationToken,
) -> Result<ControllerBackends, BackendError> {
    let mut b = open_for_controller(me, registry, bus, lease_ms, cancel).await?;
    b.registry = SealedRegistry::wrap(b.registry, node_keys.clone());
    b.bus = SealedBus::wrap(b.bus, node_keys.clone());
    Ok(b)
}

async fn open_for_controller(
    me: &protocol::NodeId,
    registry: &RegistryChoice,
    bus: &BusChoice,
    lease_ms: u64,
    cancel: CancellationToken,
) -> Result<ControllerBackends, BackendError> {
    match (registry, bus) {
        (RegistryChoice::Embedded, BusChoice::Embedded) => Err(BackendError::Unsupported {
            what: "registry",
            url: "embedded".into(),
            expected: "redis://HOST:PORT or zookeeper://HOST:PORT (the controller hosts the \
                       embedded pair itself)",
        }),
        (RegistryChoice::Embedded, _) | (_, BusChoice::Embedded) => Err(mismatch(registry, bus)),
        (registry, bus) => {
            let (registry, workers) = shared_registry(registry, Some(lease_ms)).await?;
            Ok(ControllerBackends {
                registry,
                bus: real_bus(bus, me, cancel).await?,
                workers: Some(WorkerClaims {
                    source: workers,
                    lease_ms,
                }),
            })
        }
    }
}

/// Where a controller of a shared registry takes its Snowflake worker id: an id no node and no
/// other controller uses, held like a node's lease.
#[async_trait]
pub trait ControllerWorkers: Send + Sync + 'static {
    /// Takes (or renews) the id of `owner`; the lease is also the cluster's node lease.
    async fn claim_controller_worker(&self, owner: &str, lease_ms: u64) -> RegistryResult<u16>;
    /// Gives it back.
    async fn release_controller_worker(&self, owner: &str) -> RegistryResult<()>;
}

#[cfg(feature = "redis")]
#[async_trait]
impl ControllerWorkers for crate::registry::redis::RedisRegistry {
    async fn claim_controller_worker(&self, owner: &str, lease_ms: u64) -> RegistryResult<u16> {
        crate::registry::redis::RedisRegistry::claim_controller_worker(self, owner, lease_ms).await
    }
    async fn release_controller_worker(&self, owner: &str) -> RegistryResult<()> {
        crate::registry::redis::RedisRegistry::release_controller_worker(self, owner).await
    }
}

#[cfg(feature = "zookeeper")]
#[async_trait]
impl ControllerWorkers for crate::registry::zookeeper::ZkRegistry {
    async fn claim_controller_worker(&self, owner: &str, lease_ms: u64) -> RegistryResult<u16> {
        crate::registry::zookeeper::ZkRegistry::claim_controller_worker(self, owner, lease_ms).await
    }
    async fn release_controller_worker(&self, owner: &str) -> RegistryResult<()> {
        crate::registry::zookeeper::ZkRegistry::release_controller_worker(self, owner).await
    }
}

/// A controller's Snowflake worker id from a shared registry: several controllers may run,
/// each needs an id no node and no other controller uses. The claim is a lease like a node's,
/// kept by [`WorkerClaims::keep`].
pub struct WorkerClaims {
    source: Arc<dyn ControllerWorkers>,
    lease_ms: u64,
}

impl WorkerClaims {
    /// Takes a worker id for `owner`.
    pub async fn claim(&self, owner: &str) -> Result<u16, BackendError> {
        self.source
            .claim_controller_worker(owner, self.lease_ms)
            .await
            .map_err(|e| BackendError::Connect(e.to_string()))
    }

    /// Renews the claim every quarter lease; calls `switch` if the claim had lapsed and another
    /// id was given; gives the id back when `cancel` fires.
    pub fn keep(
        self,
        owner: String,
        switch: impl Fn(u16) + Send + 'static,
        cancel: CancellationToken,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            let period = Duration::from_millis((self.lease_ms / 4).clamp(50, 1000));
            let mut current: Option<u16> = None;
            loop {
                match self
                    .source
                    .claim_controller_worker(&owner, self.lease_ms)
                    .await
                {
                    Ok(id) => {
                        if current.is_some_and(|c| c != id) {
                            tracing::warn!(worker = id, "worker id claim had lapsed; switching");
                            switch(id);
                        }
                        current = Some(id);
                    }
                    Err(e) => tracing::warn!(error = %e, "could not renew the worker id"),
                }
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(period) => {}
                }
            }
            if let Err(e) = self.source.release_controller_worker(&owner).await {
                tracing::warn!(error = %e, "could not give the worker id back; it lapses");
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_split_off_the_url() {
        assert_eq!(
            split_prefix("redis://h:6379", "chat:"),
            ("redis://h:6379".to_owned(), "chat:".to_owned())
        );
        assert_eq!(
            split_prefix("redis://h:6379/?prefix=lab1:", "chat:"),
            ("redis://h:6379/".to_owned(), "lab1:".to_owned())
        );
        assert_eq!(
            split_prefix(
                "amqp://u:p@h/%2f?heartbeat=5&prefix=x.&frame_max=8192",
                "chat."
            ),
            (
                "amqp://u:p@h/%2f?heartbeat=5&frame_max=8192".to_owned(),
                "x.".to_owned()
            )
        );
    }

    #[tokio::test]
    async fn unsupported_combinations_say_what_works() {
        let keys =
            crate::auth::ClusterKeys::derived("9f2c4e6a8b0d1f3e5a7c9b2d4f6e8a0c").expect("keys");
        let cases = [
            ("embedded", "redis://127.0.0.1:1"),
            ("embedded", "amqp://127.0.0.1:1"),
            ("redis://127.0.0.1:1", "embedded"),
        ];
        for (r, b) in cases {
            let registry: RegistryChoice = r.parse().expect("registry");
            let bus: BusChoice = b.parse().expect("bus");
            let me = protocol::NodeId::new("n1").expect("id");
            let err = for_node(
                &me,
                &registry,
                &bus,
                None,
                &keys.nodes,
                None,
                CancellationToken::new(),
            )
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
            assert!(
                err.contains("Combinations that work") && err.contains("--registry redis://"),
                "{r} + {b}: {err}"
            );
            let err = for_controller(
                &me,
                &registry,
                &bus,
                5_000,
                &keys.nodes,
                CancellationToken::new(),
            )
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
            assert!(err.contains("Combinations that work"), "{r} + {b}: {err}");
        }
    }
}
