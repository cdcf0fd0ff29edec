//! Choosing backends from URLs: `embedded` (the controller hosts registry and bus; nothing to
//! install), `redis://…` for the registry and the bus, `amqp://…` for the bus. One place turns
//! the choice into trait objects, for nodes and for the controller alike.

use std::str::FromStr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::auth::Secret;
use crate::bus::SharedBus;
use crate::link::LinkClient;
use crate::registry::{Lease, SharedRegistry};

/// Where the registry lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryChoice {
    /// In the controller (nodes reach it over the link).
    Embedded,
    /// In Redis.
    Redis(String),
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
    /// The embedded bus needs the embedded registry (the controller routes envelopes by it).
    #[error("the embedded bus needs the embedded registry")]
    Mismatch,
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
        } else {
            Err(BackendError::Unsupported {
                what: "registry",
                url: s.to_owned(),
                expected: "embedded or redis://HOST:PORT",
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
        } else {
            Err(BackendError::Unsupported {
                what: "bus",
                url: s.to_owned(),
                expected: "embedded, redis://HOST:PORT or amqp://USER:PASS@HOST:PORT",
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

/// Opens a node's registry and bus. Background tasks stop when `cancel` fires.
pub async fn for_node(
    registry: &RegistryChoice,
    bus: &BusChoice,
    controller: Option<&str>,
    secret: &Secret,
    cancel: CancellationToken,
) -> Result<NodeBackends, BackendError> {
    match (registry, bus) {
        (RegistryChoice::Embedded, BusChoice::Embedded) => {
            let controller = controller.ok_or(BackendError::NoController)?;
            let link = LinkClient::start(controller, secret.clone(), cancel);
            Ok(NodeBackends {
                lease_changes: Some(link.lease()),
                node_reaps: false,
                registry: Arc::new(link.clone()),
                bus: Arc::new(link),
            })
        }
        (RegistryChoice::Redis(url), _) | (_, BusChoice::Redis(url)) => {
            Err(BackendError::NotBuilt {
                what: "backend",
                url: url.clone(),
                feature: "redis",
            })
        }
        (_, BusChoice::Amqp(url)) => Err(BackendError::NotBuilt {
            what: "bus",
            url: url.clone(),
            feature: "amqp",
        }),
    }
}
