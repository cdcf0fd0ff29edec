//! The controller: accounts and devices, conversations and rooms, history pages,
//! attachments, and the least-loaded answer that tells each client where to connect. In the
//! embedded setup it also hosts the registry and the bus (see [`crate::link`]); with real
//! backends it is stateless and off the path of chat messages.
//!
//! [`Controller::start`] serves the HTTP API ([`api`]) and runs the reaper: nodes whose lease
//! lapsed (or whose link dropped) are removed, and what they may not have published is
//! published again ([`crate::recovery`]).

pub mod accounts;
pub mod api;
pub mod error;
pub mod suspects;
pub mod throttle;
pub mod uploads;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use protocol::NodeId;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{ClusterKeys, HashCost, KeyRing, OperatorToken, Passwords, TokenKeys};
use crate::backends::{BusChoice, RegistryChoice, WorkerClaims};
use crate::bus::{Routing, SharedBus};
use crate::ids::Snowflakes;
use crate::link::{HubBus, LinkHub};
use crate::registry::memory::{CONTROLLER_WORKER_ID, MemoryRegistry};
use crate::registry::{DeadNode, SharedRegistry};
use crate::route::Router;
use crate::sealed::{SealedBus, SealedRegistry};
use crate::store::SharedStore;
use error::ApiError;
pub use throttle::AuthLimits;
use throttle::Throttle;

/// Largest attachments whose bodies the controller reads at once (their memory).
const UPLOADS_IN_FLIGHT: u64 = 4;

/// Everything the controller needs to start.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// Its id: the origin of the events it persists (membership changes).
    pub id: NodeId,
    /// The store URL.
    pub store: String,
    /// Registry backend.
    pub registry: RegistryChoice,
    /// Bus backend.
    pub bus: BusChoice,
    /// Routed or fanout.
    pub routing: Routing,
    /// Node lease (embedded registry).
    pub lease_ms: u64,
    /// The user-token and node-admission keys.
    pub keys: ClusterKeys,
    /// Opens `/metrics` and `/v1/nodes` to the operator.
    pub operator: OperatorToken,
    /// Password hashing cost.
    pub hash_cost: HashCost,
    /// Limits on registrations and logins.
    pub auth: AuthLimits,
    /// Largest attachment accepted.
    pub max_attachment_bytes: u64,
    /// Most bytes of attachments one user may store.
    pub attachment_quota_bytes: u64,
    /// Token lifetime.
    pub token_ttl_secs: i64,
    /// Started with `--teaching`: teaching modes may be turned on (see [`crate::teaching`]).
    pub teaching: bool,
    /// Serve HTTPS with this certificate (`None`: plain HTTP).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// State shared by the handlers.
pub struct AppState {
    /// This controller.
    pub id: NodeId,
    /// History and accounts.
    pub store: SharedStore,
    /// Registry, bus and routing.
    pub router: Router,
    /// Token issuing and checks.
    pub keys: TokenKeys,
    /// Password hashing.
    pub passwords: Passwords,
    /// Registration and login throttles.
    pub throttle: Throttle,
    /// Ids of the events the controller persists.
    pub ids: Snowflakes,
    /// The embedded hub, when the controller hosts registry and bus.
    pub hub: Option<Arc<LinkHub>>,
    /// The node-admission key: checks node links.
    pub node_keys: KeyRing,
    /// Opens `/metrics` and `/v1/nodes` to the operator.
    pub operator: OperatorToken,
    /// Attachment limits and the memory of the uploads being read.
    pub uploads: uploads::Uploads,
    /// Nodes clients reported lost, and those found dead.
    pub suspects: suspects::Suspects,
    /// Token lifetime.
    pub token_ttl_secs: i64,
    /// Backend names for `/v1/info`.
    pub backends: protocol::http::Backends,
    /// Stops background work.
    pub cancel: CancellationToken,
    /// The work handlers leave running after they answer (publishing a revocation or a
    /// membership event); shutdown waits for it.
    pub tasks: TaskTracker,
    /// The controller's trace stream (`GET /trace`): its least-loaded answers.
    pub tracer: crate::trace::Tracer,
    /// The teaching mode on, if any.
    pub teaching: crate::teaching::TeachingState,
    /// The one lock of the naive least-connections teaching mode (every answer waits for it),
    /// over the node counts it last read: they lag, as the article's did.
    pub naive_lock: tokio::sync::Mutex<api::NaiveCounts>,
}

/// A running controller.
pub struct Controller {
    http_url: String,
    hub: Option<Arc<LinkHub>>,
    cancel: CancellationToken,
    server: JoinHandle<()>,
    reaper: JoinHandle<()>,
    /// Renews the controller's worker id in a shared registry (and gives it back at the end).
    worker_keeper: Option<JoinHandle<()>>,
    /// What the handlers left running (the state's tracker).
    tasks: TaskTracker,
}

impl Controller {
    /// Opens the backends and serves on `listener`.
    pub async fn start(
        listener: TcpListener,
        config: ControllerConfig,
    ) -> anyhow::Result<Controller> {
        let addr = listener.local_addr()?;
        let http_url = format!(
            "{}://{addr}",
            if config.tls.is_some() {
                "https"
            } else {
                "http"
            }
        );
        if crate::conn::exposed_without_tls(addr, config.tls.is_some()) {
            tracing::warn!(
                %addr,
                "SERVING BEYOND LOOPBACK WITHOUT TLS: passwords and tokens cross the network \
                 in clear; give --tls-cert and --tls-key (docs/security.md)"
            );
        }
        let cancel = CancellationToken::new();
        let store = crate::store::open(&config.store).await?;
        let (dead_tx, dead_rx) = mpsc::unbounded_channel::<DeadNode>();
        let (registry, bus, hub, workers): (
            SharedRegistry,
            SharedBus,
            Option<Arc<LinkHub>>,
            Option<WorkerClaims>,
        ) = match (&config.registry, &config.bus) {
            (RegistryChoice::Embedded, BusChoice::Embedded) => {
                let memory = Arc::new(MemoryRegistry::new(config.lease_ms));
                let hub = LinkHub::new(memory.clone(), dead_tx.clone());
                // Nodes seal their entries and envelopes on their side of the link; the
                // controller checks and seals on its own.
                let nodes = &config.keys.nodes;
                (
                    SealedRegistry::wrap(memory, nodes.clone()),
                    SealedBus::wrap(Arc::new(HubBus(hub.clone())), nodes.clone()),
                    Some(hub),
                    None,
                )
            }
            // Real backends: the controller only reads the registry, publishes, and reaps.
            (registry, bus) => {
                let b = crate::backends::for_controller(
                    &config.id,
                    registry,
                    bus,
                    config.lease_ms,
                    &config.keys.nodes,
                    cancel.clone(),
                )
                .await?;
                (b.registry, b.bus, None, b.workers)
            }
        };
        // With a shared registry several controllers may run: each takes a worker id of its
        // own there, as nodes do.
        let worker_id = match &workers {
            Some(w) => w.claim(config.id.as_str()).await?,
            None => CONTROLLER_WORKER_ID,
        };
        crate::metrics::install();
        let state = Arc::new(AppState {
            id: config.id.clone(),
            backends: protocol::http::Backends {
                registry: config.registry.name().into(),
                bus: format!("{} ({})", config.bus.name(), config.routing.as_str()),
                store: store.kind().into(),
            },
            store,
            router: Router {
                me: config.id.clone(),
                registry,
                bus,
                routing: config.routing,
            },
            keys: TokenKeys::new(&config.keys.tokens),
            passwords: Passwords::new(config.hash_cost, config.auth.hash_concurrency).await?,
            throttle: Throttle::new(&config.auth),
            ids: Snowflakes::new(worker_id),
            hub,
            node_keys: config.keys.nodes.clone(),
            operator: config.operator.clone(),
            uploads: uploads::Uploads::new(
                config.max_attachment_bytes,
                config.attachment_quota_bytes,
                config
                    .max_attachment_bytes
                    .saturating_mul(UPLOADS_IN_FLIGHT),
            ),
            suspects: suspects::Suspects::new(Duration::from_millis(config.lease_ms)),
            token_ttl_secs: config.token_ttl_secs,
            cancel: cancel.clone(),
            tasks: TaskTracker::new(),
            tracer: crate::trace::Tracer::new(config.id.clone(), 4096),
            teaching: crate::teaching::TeachingState::new(config.teaching, None),
            naive_lock: tokio::sync::Mutex::new(api::NaiveCounts::default()),
        });
        let worker_keeper = workers.map(|w| {
            let state = state.clone();
            w.keep(
                config.id.as_str().to_owned(),
                move |id| state.ids.set_worker(id),
                cancel.clone(),
            )
        });
        let reaper = tokio::spawn(crate::recovery::run_reaper(
            state.store.clone(),
            state.router.clone(),
            Duration::from_millis((config.lease_ms / 10).clamp(50, 500)),
            Some(dead_rx),
            cancel.clone(),
        ));
        let app = api::router(state.clone());
        let stop = cancel.clone();
        let tls = config.tls.clone();
        let server = tokio::spawn(async move {
            crate::serve::serve(
                crate::conn::Accept::new(listener, tls),
                app,
                crate::serve::HEAD_TIMEOUT,
                stop,
            )
            .await;
        });
        tracing::info!(%http_url, registry = config.registry.name(), bus = config.bus.name(), routing = config.routing.as_str(), "controller serving");
        let hub = state.hub.clone();
        let tasks = state.tasks.clone();
        Ok(Controller {
            http_url,
            hub,
            cancel,
            server,
            reaper,
            worker_keeper,
            tasks,
        })
    }

    /// Its HTTP base URL.
    pub fn http_url(&self) -> &str {
        &self.http_url
    }

    /// Stops serving and stops the background tasks.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        if let Some(hub) = &self.hub {
            hub.close_all();
        }
        // Open WebSocket links do not end by themselves; give the server a moment, then stop.
        if tokio::time::timeout(Duration::from_secs(3), self.server)
            .await
            .is_err()
        {
            tracing::warn!("controller connections still open at shutdown");
        }
        // No handler runs any more: what they left running ends on the cancel (a retry loop)
        // or after one publish.
        self.tasks.close();
        if tokio::time::timeout(Duration::from_secs(2), self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = self.tasks.len(),
                "publishes of the controller still running at shutdown"
            );
        }
        // The reaper ends on the cancel once its recoveries have.
        let mut reaper = self.reaper;
        if tokio::time::timeout(Duration::from_secs(2), &mut reaper)
            .await
            .is_err()
        {
            reaper.abort();
        }
        if let Some(keeper) = self.worker_keeper {
            // It gives the worker id back as soon as it sees the cancel.
            let _ = tokio::time::timeout(Duration::from_secs(2), keeper).await;
        }
        tracing::info!("controller stopped");
    }
}

/// `GET /internal/link`: a node's link, admitted by its proof that it holds the node-admission
/// key (see [`crate::auth::keys::admission_proof`]).
async fn link(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let Some(hub) = state.hub.clone() else {
        return ApiError::NotFound("this controller does not host the registry".into())
            .into_response();
    };
    match crate::node::bearer(&headers) {
        Some(proof)
            if crate::auth::keys::admits(&state.node_keys, &proof, crate::ids::now_ms() / 1000) => {
        }
        _ => {
            metrics::counter!("chat_link_refused_total").increment(1);
            return ApiError::Unauthorized("bad node admission proof".into()).into_response();
        }
    }
    ws.max_message_size(16 * 1024 * 1024)
        .max_frame_size(16 * 1024 * 1024)
        .read_buffer_size(crate::link::READ_BUFFER)
        .on_upgrade(move |socket| hub.serve(socket))
}
