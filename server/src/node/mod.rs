//! The chat node: WebSocket sessions of devices, persistence through the store, and delivery
//! to every device of every member, here and on other nodes through the bus.
//!
//! Code map:
//! - [`session`]: one device's socket: its lifecycle, reader, writer and rate limit.
//! - [`delivery`]: per-device `seq` ordering, duplicate dropping and gap detection.
//! - [`devices`]: the connected devices by user, and each one's bounded queue.
//! - [`pipeline`]: group commit, acks, local fan-out and the publisher.
//!
//! [`Node::start`] registers with the registry, subscribes to the bus and serves
//! `GET /ws` (devices, with their token), `/healthz` (anyone), and `/metrics` and `/trace` (the
//! operator: `Authorization: Bearer` with the cluster's [`OperatorToken`]). An observer such as
//! the lab's panel connects to `/trace?sample=N` as a WebSocket with that header; the lab hands
//! the token to every process it starts and exposes it as `lab::Cluster::operator_token`. [`Node::shutdown`] drains: the registry stops
//! answering with this node, every device is told to move, pending events are committed and
//! published, the lease is given back.

pub mod delivery;
pub mod devices;
pub mod pipeline;
pub mod session;
pub mod sockets;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Json;
use axum::Router as HttpRouter;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use protocol::bus::{BusKind, Envelope};
use protocol::http::{ErrorBody, Health, NodeState};
use protocol::limits;
use protocol::teaching::Teaching;
use protocol::trace::{Hop, NodeChange};
use protocol::ws::{ErrorCode, ServerFrame};
use protocol::{NodeId, UserId};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{AuthError, ClusterKeys, OperatorToken, TokenKeys};
use crate::backends::{self, BusChoice, RegistryChoice};
use crate::bus::{Inbox, Routing};
use crate::conn::Peer;
use crate::ids::{Snowflakes, now_ms};
use crate::registry::{Load, NodeInfo, RegistryError};
use crate::route::Router;
use crate::store::SharedStore;
use crate::teaching::{Role, TeachingState};
use crate::trace::Tracer;
use devices::{CloseReason, Devices, SharedEvent};
use pipeline::{AckCounter, AppendJob, PublishJob, Unpublished};

/// Fault injection for tests of the guarantees (never set in production).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Abort the process right after the n-th ack reaches its device, before the event is
    /// delivered or published anywhere.
    CrashAfterAck(u64),
}

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('=') {
            Some(("crash-after-ack", n)) => n
                .parse()
                .map(Fault::CrashAfterAck)
                .map_err(|_| format!("bad count in {s:?}")),
            _ => Err(format!("unknown fault {s:?} (known: crash-after-ack=N)")),
        }
    }
}

/// Per-device limits.
#[derive(Clone, Copy, Debug)]
pub struct NodeLimits {
    /// Frames per second a device may send on average.
    pub rate_per_sec: u32,
    /// Frames a device may send in a burst.
    pub rate_burst: u32,
    /// Frames refused for the rate before the device is closed.
    pub strikes_before_close: u32,
    /// Frames queued for a device before it is closed as too slow.
    pub queue_frames: usize,
    /// How long one write may wait on a device before it is closed as too slow.
    pub write_stall: Duration,
    /// WebSocket read buffer per device, in bytes (small: most devices are idle).
    pub read_buffer: usize,
    /// WebSocket write buffer per device, in bytes.
    pub write_buffer: usize,
    /// Sockets one device may hold open on this node.
    pub sockets_per_device: u32,
    /// Sockets one user's devices may hold open on this node together.
    pub sockets_per_user: u32,
}

impl Default for NodeLimits {
    fn default() -> Self {
        NodeLimits {
            rate_per_sec: limits::RATE_PER_SEC,
            rate_burst: limits::RATE_BURST,
            strikes_before_close: limits::RATE_STRIKES_BEFORE_CLOSE,
            queue_frames: limits::DEVICE_QUEUE_FRAMES,
            write_stall: Duration::from_millis(limits::WRITE_STALL_MS),
            read_buffer: 512,
            write_buffer: 1024,
            sockets_per_device: sockets::PER_DEVICE,
            sockets_per_user: sockets::PER_USER,
        }
    }
}

/// Everything a node needs to start.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Its id (unique for the life of the process).
    pub id: NodeId,
    /// The controller's HTTP base, for the embedded registry and bus.
    pub controller: Option<String>,
    /// The store URL.
    pub store: String,
    /// Registry backend.
    pub registry: RegistryChoice,
    /// Bus backend.
    pub bus: BusChoice,
    /// Routed or fanout delivery.
    pub routing: Routing,
    /// Host put in the URLs the node advertises (default: the address it is bound to).
    pub advertise_host: Option<String>,
    /// The user-token and node-admission keys.
    pub keys: ClusterKeys,
    /// Opens `/trace` and `/metrics`.
    pub operator: OperatorToken,
    /// Per-device limits.
    pub limits: NodeLimits,
    /// Fault injection.
    pub fault: Option<Fault>,
    /// How long a drain waits for devices and pending events.
    pub drain_timeout: Duration,
    /// Started with `--teaching`: teaching modes may be turned on (see [`crate::teaching`]).
    pub teaching: bool,
    /// The teaching mode to start in (only with `teaching`): the shared queue is chosen here.
    pub teaching_mode: Option<protocol::teaching::Teaching>,
    /// Serve HTTPS and WSS with this certificate (`None`: plain HTTP and WS).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Trust for the link to an HTTPS controller (`None`: the public roots).
    pub link_tls: Option<Arc<rustls::ClientConfig>>,
}

/// State shared by the node's tasks.
pub struct NodeCtx {
    /// This node.
    pub id: NodeId,
    /// History.
    pub store: SharedStore,
    /// Registry, bus and routing.
    pub router: Router,
    /// Connected devices.
    pub devices: Devices,
    /// Sockets open by device and user, and their caps.
    pub sockets: Arc<sockets::SocketCaps>,
    /// Trace stream.
    pub tracer: Tracer,
    /// Token checks.
    pub keys: TokenKeys,
    /// Opens `/trace` and `/metrics`.
    pub operator: OperatorToken,
    /// Per-device limits.
    pub limits: NodeLimits,
    /// Message ids.
    pub ids: Snowflakes,
    /// Into the committer.
    pub commit: mpsc::Sender<AppendJob>,
    /// Into the publisher.
    pub publish: mpsc::Sender<PublishJob>,
    /// Oldest event not yet published.
    pub unpublished: Unpublished,
    /// Session numbering.
    pub sessions: AtomicU64,
    /// Draining: refuse new devices.
    pub draining: AtomicBool,
    /// Fault injection.
    pub fault: Option<Fault>,
    /// Acks so far (fault injection counts them).
    pub acks: AckCounter,
    /// Tracks device sessions, to wait for them on drain.
    pub tracker: TaskTracker,
    /// The teaching mode on, if any.
    pub teaching: TeachingState,
}

/// A running node.
pub struct Node {
    ctx: Arc<NodeCtx>,
    info: NodeInfo,
    http_url: String,
    ws_url: String,
    drain_timeout: Duration,
    /// Stops the background tasks (heartbeat, inbox, link) at the very end.
    background: CancellationToken,
    /// Stops accepting HTTP connections.
    accept: CancellationToken,
    server: JoinHandle<()>,
    committer: pipeline::Committer,
    publisher: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
}

impl Node {
    /// Opens the backends, registers, subscribes, and starts serving on `listener`.
    pub async fn start(listener: TcpListener, config: NodeConfig) -> anyhow::Result<Node> {
        let addr: SocketAddr = listener.local_addr()?;
        let host = config
            .advertise_host
            .clone()
            .unwrap_or_else(|| addr.ip().to_string());
        let (http, ws) = match config.tls {
            Some(_) => ("https", "wss"),
            None => ("http", "ws"),
        };
        let http_url = format!("{http}://{host}:{}", addr.port());
        let ws_url = format!("{ws}://{host}:{}/ws", addr.port());
        if crate::conn::exposed_without_tls(addr, config.tls.is_some()) {
            tracing::warn!(
                %addr,
                "SERVING BEYOND LOOPBACK WITHOUT TLS: tokens and messages cross the network \
                 in clear; give --tls-cert and --tls-key (docs/security.md)"
            );
        }
        let background = CancellationToken::new();

        let store = crate::store::open(&config.store).await?;
        let backends::NodeBackends {
            registry,
            bus,
            lease_changes,
            node_reaps,
        } = backends::for_node(
            &config.id,
            &config.registry,
            &config.bus,
            config.controller.as_deref(),
            &config.keys.nodes,
            config.link_tls.clone(),
            background.clone(),
        )
        .await?;
        let info = NodeInfo {
            id: config.id.clone(),
            ws_url: ws_url.clone(),
            http_url: http_url.clone(),
            started_at: now_ms(),
        };
        let lease = registry.register(&info).await?;
        let teaching = TeachingState::new(config.teaching, config.teaching_mode);
        if config.teaching_mode.is_some() && teaching.get().is_none() {
            anyhow::bail!("--teaching-mode needs --teaching");
        }
        let inbox = if teaching.is(Teaching::SharedQueue) {
            // The article's mistake: every node joins one consumer group (here, consumes
            // one queue), so the broker hands each envelope to one node of them all.
            if !matches!(bus.kind(), "amqp" | "kafka") {
                anyhow::bail!(
                    "--teaching-mode shared-queue needs a bus with competing consumers \
                     (RabbitMQ or Kafka), not {}",
                    bus.kind()
                );
            }
            tracing::warn!("teaching mode: {}", Teaching::SharedQueue.broken());
            bus.subscribe(&NodeId::new(SHARED_QUEUE)?).await?
        } else {
            bus.subscribe(&config.id).await?
        };

        let (commit_tx, commit_rx) = mpsc::channel(8192);
        let (publish_tx, publish_rx) = mpsc::channel(65_536);
        let ctx = Arc::new(NodeCtx {
            id: config.id.clone(),
            store,
            router: Router {
                me: config.id.clone(),
                registry,
                bus,
                routing: config.routing,
            },
            devices: Devices::default(),
            sockets: sockets::SocketCaps::new(
                config.limits.sockets_per_device,
                config.limits.sockets_per_user,
            ),
            tracer: Tracer::new(config.id.clone(), 4096),
            keys: TokenKeys::new(&config.keys.tokens),
            operator: config.operator.clone(),
            limits: config.limits,
            ids: Snowflakes::new(lease.worker_id),
            commit: commit_tx,
            publish: publish_tx,
            unpublished: Unpublished::default(),
            sessions: AtomicU64::new(1),
            draining: AtomicBool::new(false),
            fault: config.fault,
            acks: AckCounter::default(),
            tracker: TaskTracker::new(),
            teaching,
        });
        crate::metrics::install();
        let committer = pipeline::Committer::spawn(ctx.clone(), commit_rx)?;
        let publisher = tokio::spawn(pipeline::run_publisher(
            ctx.clone(),
            publish_rx,
            background.clone(),
        ));
        let mut tasks = vec![
            tokio::spawn(consume_inbox(ctx.clone(), inbox)),
            tokio::spawn(heartbeat(
                ctx.clone(),
                info.clone(),
                lease.lease_ms,
                background.clone(),
            )),
        ];
        if node_reaps {
            tasks.push(tokio::spawn(crate::recovery::run_reaper(
                ctx.store.clone(),
                ctx.router.clone(),
                Duration::from_millis((lease.lease_ms / 10).clamp(50, 500)),
                None,
                background.clone(),
            )));
        }
        if let Some(mut changes) = lease_changes {
            // The link registers again by itself after a reconnect, possibly with another
            // worker id: follow it so that message ids stay unique.
            let ctx = ctx.clone();
            tasks.push(tokio::spawn(async move {
                while changes.changed().await.is_ok() {
                    if let Some(lease) = *changes.borrow_and_update() {
                        ctx.ids.set_worker(lease.worker_id);
                    }
                }
            }));
        }

        let accept = CancellationToken::new();
        let app = HttpRouter::new()
            .route("/ws", get(upgrade))
            .route("/healthz", get(healthz))
            .route("/metrics", get(metrics_page))
            .route("/trace", get(trace))
            .route("/v1/teaching", put(teach))
            .with_state(ctx.clone());
        let stop_accepting = accept.clone();
        let tls = config.tls.clone();
        let server = tokio::spawn(async move {
            crate::serve::serve(
                crate::conn::Accept::new(listener, tls),
                app,
                crate::serve::HEAD_TIMEOUT,
                stop_accepting,
            )
            .await;
        });
        ctx.tracer.node(NodeChange::Started);
        tracing::info!(node = %config.id, %ws_url, worker = lease.worker_id, routing = config.routing.as_str(), "node serving");
        Ok(Node {
            ctx,
            info,
            http_url,
            ws_url,
            drain_timeout: config.drain_timeout,
            background,
            accept,
            server,
            committer,
            publisher,
            tasks,
        })
    }

    /// The node's id.
    pub fn id(&self) -> &NodeId {
        &self.info.id
    }

    /// Its HTTP base URL.
    pub fn http_url(&self) -> &str {
        &self.http_url
    }

    /// Its WebSocket URL.
    pub fn ws_url(&self) -> &str {
        &self.ws_url
    }

    /// Drains and stops: no new devices, every device told to move elsewhere, pending events
    /// committed and published, the lease given back, every task stopped.
    pub async fn shutdown(self) {
        let ctx = &self.ctx;
        ctx.draining.store(true, Ordering::Release);
        ctx.tracer.node(NodeChange::Draining);
        if let Err(e) = ctx
            .router
            .registry
            .set_state(&ctx.id, NodeState::Draining)
            .await
        {
            tracing::warn!(error = %e, "could not mark the node draining");
        }
        self.accept.cancel();
        let devices = ctx.devices.count();
        ctx.devices.close_all(CloseReason::Moving);
        ctx.tracker.close();
        if tokio::time::timeout(self.drain_timeout, ctx.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("devices still connected after the drain timeout");
        }
        // Sessions are gone, so nothing new reaches the committer: wait until it and the
        // publisher have handed everything to the store and the bus.
        let pipeline_empty = async {
            while ctx.commit.capacity() < ctx.commit.max_capacity()
                || ctx.publish.capacity() < ctx.publish.max_capacity()
                || ctx.unpublished.get().is_some()
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        if tokio::time::timeout(self.drain_timeout, pipeline_empty)
            .await
            .is_err()
        {
            tracing::warn!(
                "events still unpublished after the drain timeout; survivors will republish them"
            );
        }
        if let Err(e) = ctx.router.registry.deregister(&self.info.id).await {
            tracing::warn!(error = %e, "deregister failed; the lease will lapse");
        }
        self.background.cancel();
        self.committer.stop().await;
        self.publisher.abort();
        for t in self.tasks {
            t.abort();
        }
        let _ = self.server.await;
        let info = self.info;
        tracing::info!(node = %info.id, devices, "node drained and stopped");
    }
}

#[derive(Deserialize)]
struct UpgradeQuery {
    token: Option<String>,
    reservation: Option<String>,
}

fn refuse(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    (status, Json(ErrorBody::new(code, message))).into_response()
}

/// `GET /ws`: checks the token before upgrading; a refused device gets an HTTP error and no
/// socket.
async fn upgrade(
    State(ctx): State<Arc<NodeCtx>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Query(q): Query<UpgradeQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if ctx.draining.load(Ordering::Acquire) {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "node is draining; ask the controller for another",
        );
    }
    let token = bearer(&headers).or(q.token);
    let Some(token) = token else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "no token",
        );
    };
    let who = match ctx.keys.verify(&*ctx.store, &token).await {
        Ok(p) => p,
        Err(e) => {
            metrics::counter!("chat_upgrades_refused_total").increment(1);
            return match e {
                AuthError::Missing => refuse(
                    StatusCode::UNAUTHORIZED,
                    ErrorCode::Unauthorized,
                    "no token",
                ),
                AuthError::Invalid => refuse(
                    StatusCode::UNAUTHORIZED,
                    ErrorCode::Unauthorized,
                    "invalid token",
                ),
                AuthError::Expired => refuse(
                    StatusCode::UNAUTHORIZED,
                    ErrorCode::Unauthorized,
                    "token expired",
                ),
                AuthError::Revoked => refuse(
                    StatusCode::UNAUTHORIZED,
                    ErrorCode::Revoked,
                    "device revoked",
                ),
                AuthError::Store(e) => {
                    tracing::warn!(error = %e, "token check failed");
                    refuse(
                        StatusCode::SERVICE_UNAVAILABLE,
                        ErrorCode::Unavailable,
                        "cannot check the token now; retry",
                    )
                }
            };
        }
    };
    let permit = match ctx.sockets.admit(who.user, &who.device) {
        Ok(p) => p,
        Err(over) => {
            metrics::counter!("chat_upgrades_refused_total").increment(1);
            metrics::counter!("chat_sockets_capped_total").increment(1);
            return refuse(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                &over.to_string(),
            );
        }
    };
    let limits = ctx.limits;
    let tracker = ctx.tracker.clone();
    ws.read_buffer_size(limits.read_buffer)
        .write_buffer_size(limits.write_buffer)
        .max_write_buffer_size(8 * 1024 * 1024)
        .max_message_size(protocol::limits::MAX_FRAME_BYTES)
        .max_frame_size(protocol::limits::MAX_FRAME_BYTES)
        .on_upgrade(move |socket| {
            let session = session::run(ctx, socket, peer.conn, who, q.reservation);
            tracker.track_future(async move {
                session.await;
                drop(permit);
            })
        })
}

/// The bearer token of an `Authorization` header.
pub fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(|t| t.trim().to_owned())
}

async fn healthz(State(ctx): State<Arc<NodeCtx>>) -> Json<Health> {
    let draining = ctx.draining.load(Ordering::Acquire);
    Json(Health {
        status: if draining { "draining" } else { "ok" }.into(),
        role: "node".into(),
        node: Some(ctx.id.clone()),
    })
}

async fn metrics_page(State(ctx): State<Arc<NodeCtx>>, headers: HeaderMap) -> Response {
    crate::metrics::page(&ctx.operator, &headers)
}

/// `GET /trace?sample=N`: streams trace events as JSON text messages, to the operator only (they
/// say who messages whom, when, from which device): `Authorization: Bearer OPERATOR_TOKEN`.
async fn trace(
    State(ctx): State<Arc<NodeCtx>>,
    Query(q): Query<crate::trace::TraceQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    crate::trace::upgrade(&ctx.operator, &headers, ws, ctx.tracer.clone(), q.sample())
}

/// The name every node consumes under in the shared-queue teaching mode.
const SHARED_QUEUE: &str = "shared";

/// `PUT /v1/teaching`: turns a node teaching mode on or off (the operator only, and only in a
/// node started with `--teaching`), and tells every device connected here.
async fn teach(
    State(ctx): State<Arc<NodeCtx>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    match crate::teaching::put(&ctx.teaching, Role::Node, &ctx.operator, &headers, &body) {
        Ok(mode) => {
            let frame = bytes::Bytes::from(ServerFrame::Teaching { mode }.to_json());
            ctx.devices.deliver_all(&frame);
            crate::teaching::answer(mode)
        }
        Err(refusal) => refusal.into_response(),
    }
}

/// Hands envelopes from the bus to local devices.
async fn consume_inbox(ctx: Arc<NodeCtx>, mut inbox: Inbox) {
    while let Some(bytes) = inbox.recv().await {
        let env = match Envelope::decode(bytes) {
            Ok(env) => env,
            Err(e) => {
                metrics::counter!("chat_bus_bad_envelopes_total").increment(1);
                tracing::warn!(error = %e, "dropping a bad envelope");
                continue;
            }
        };
        if env.header.origin == ctx.id {
            // Fanout brings every node its own envelopes back: a copy the bus carried for
            // nothing, which observers count.
            if let BusKind::Event { conv, seq, id } = env.header.kind
                && ctx.tracer.enabled()
            {
                ctx.tracer
                    .hop(Hop::Returned, id, conv, seq, None, None, vec![]);
            }
            continue;
        }
        metrics::counter!("chat_bus_received_total").increment(1);
        let recipients: &[UserId] = &env.header.recipients;
        match env.header.kind {
            BusKind::Event { conv, seq, id } => {
                metrics::histogram!("chat_bus_latency_seconds")
                    .record((now_ms() - env.header.sent_at).max(0) as f64 / 1000.0);
                if ctx.tracer.enabled() {
                    ctx.tracer.hop(
                        Hop::Received,
                        id,
                        conv,
                        seq,
                        None,
                        None,
                        vec![env.header.origin.clone()],
                    );
                }
                let ev = Arc::new(SharedEvent {
                    conv,
                    seq,
                    id,
                    frame: env.frame,
                });
                let n = ctx.devices.deliver_event(recipients, &ev);
                metrics::counter!("chat_deliveries_total").increment(n as u64);
            }
            BusKind::Live => {
                ctx.devices.deliver_live(recipients, &env.frame, None);
            }
            BusKind::Revoke { user, device } => {
                ctx.devices
                    .close_device(user, &device, CloseReason::Revoked);
            }
        }
    }
}

/// Renews the lease with the true connection count; registers again (and re-attaches every
/// device) if the registry forgot this node.
async fn heartbeat(ctx: Arc<NodeCtx>, info: NodeInfo, lease_ms: u64, cancel: CancellationToken) {
    let period = Duration::from_millis((lease_ms / 5).clamp(100, 1000));
    let mut bus_up = true;
    let mut bus_sessions = ctx.router.bus.sessions();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let sessions = ctx.router.bus.sessions();
        if sessions > bus_sessions && bus_sessions > 0 && ctx.teaching.is(Teaching::BusOnly) {
            tracing::warn!("the bus connected again; teaching mode: no resync");
        } else if sessions > bus_sessions && bus_sessions > 0 {
            // However short the outage, what was published meanwhile may have gone elsewhere
            // or nowhere: every local device compares itself with the store.
            let n = ctx.devices.resync_all();
            tracing::info!(
                devices = n,
                "the bus connected again; devices catch up with the store"
            );
        }
        bus_sessions = bus_sessions.max(sessions);
        let up = ctx.router.bus.is_up();
        if up != bus_up {
            ctx.tracer.node(if up {
                NodeChange::BusUp
            } else {
                NodeChange::BusDown
            });
            bus_up = up;
        }
        metrics::gauge!("chat_bus_up").set(if up { 1.0 } else { 0.0 });
        // Tokens that ran out, and devices that accept nothing, close their sessions here
        // (within a period), not by a timer each.
        let swept = ctx.devices.sweep(now_ms(), ctx.limits.write_stall);
        if swept.expired > 0 {
            tracing::info!(
                sessions = swept.expired,
                "closed sessions whose token expired"
            );
        }
        if swept.stalled > 0 {
            tracing::info!(
                sessions = swept.stalled,
                "closed sessions whose device reads nothing"
            );
        }
        let load = Load {
            connections: ctx.devices.count(),
            unpublished_since: ctx.unpublished.get(),
        };
        match ctx.router.registry.heartbeat(&ctx.id, load).await {
            Ok(()) => {}
            Err(RegistryError::UnknownNode(_)) => {
                tracing::warn!("the registry forgot this node; registering again");
                match ctx.router.registry.register(&info).await {
                    Ok(lease) => {
                        ctx.ids.set_worker(lease.worker_id);
                        for (user, n) in ctx.devices.user_counts() {
                            for _ in 0..n {
                                let _ = ctx.router.registry.attach(&ctx.id, user, None).await;
                            }
                        }
                        if ctx.draining.load(Ordering::Acquire) {
                            let _ = ctx
                                .router
                                .registry
                                .set_state(&ctx.id, NodeState::Draining)
                                .await;
                        }
                        // While the registry did not know this node, nobody routed events to
                        // it: every local device compares itself with the store.
                        let n = ctx.devices.resync_all();
                        tracing::info!(
                            devices = n,
                            "registered again; devices catch up with the store"
                        );
                    }
                    Err(e) => tracing::warn!(error = %e, "register again failed"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
    }
}
