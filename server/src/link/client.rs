//! A node's end of the link: one WebSocket to the controller that carries registry requests,
//! publishes and deliveries, kept up by a task that reconnects with backoff.
//!
//! What survives a reconnect: the registration (sent again first), the draining state, the
//! devices attached (replayed from a mirror of every attach and detach written to the socket),
//! and every publish not yet acknowledged (sent again in order). The controller wipes a node's
//! state when its link closes, so replaying exactly what was written keeps both sides equal.
//! Attach and detach wait for the link to come back (up to a timeout); other requests fail at
//! once with `Unavailable` while it is down.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use protocol::http::{AssignResponse, NodeState, NodeStatus};
use protocol::link::{LinkOp, LinkReply, LinkRequest, LinkServerFrame, Targets, encode_publish};
use protocol::{Millis, NodeId, UserId};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

use super::hub::UNKNOWN_NODE;
use crate::auth::KeyRing;
use crate::bus::{Bus, BusError, BusResult, Inbox};
use crate::ids::now_ms;
use crate::registry::{DeadNode, Lease, Load, NodeInfo, Registry, RegistryError, RegistryResult};

/// Publishes kept while the link is down before `publish` starts refusing.
const MAX_UNACKED: usize = 200_000;
/// How long attach and detach wait for a link that is down.
const QUEUED_OP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long any request waits for its reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

type Reply = oneshot::Sender<RegistryResult<LinkReply>>;

struct Shared {
    url: String,
    /// The node-admission key: each connect proves the node holds it.
    node_keys: KeyRing,
    /// Trust for a `wss://` controller (`None`: the public roots).
    tls: Option<Arc<rustls::ClientConfig>>,
    up: AtomicBool,
    /// Links established so far.
    sessions: AtomicU64,
    next_id: AtomicU64,
    /// Requests waiting to be written (attach/detach also wait here while the link is down).
    queue: Mutex<VecDeque<(LinkOp, Option<Reply>)>>,
    queue_notify: Notify,
    /// Written requests awaiting replies.
    pending: Mutex<HashMap<u64, Reply>>,
    /// Set by `register`; replayed on every reconnect.
    info: Mutex<Option<NodeInfo>>,
    lease: watch::Sender<Option<Lease>>,
    state: Mutex<NodeState>,
    /// Devices per user as written to the controller.
    attached: Mutex<HashMap<UserId, u32>>,
    /// Publishes not yet acknowledged: (number, time, frame).
    unacked: Mutex<VecDeque<(u64, Millis, Bytes)>>,
    next_pub: AtomicU64,
    pub_notify: Notify,
    inbox: Mutex<Option<mpsc::Receiver<Bytes>>>,
    inbox_tx: mpsc::Sender<Bytes>,
}

/// The node's registry and bus in the embedded setup. Cheap to clone.
#[derive(Clone)]
pub struct LinkClient {
    shared: Arc<Shared>,
}

impl LinkClient {
    /// Starts the link task towards `controller` (its HTTP base URL). The task stops when
    /// `cancel` fires.
    pub fn start(
        controller: &str,
        node_keys: KeyRing,
        tls: Option<Arc<rustls::ClientConfig>>,
        cancel: CancellationToken,
    ) -> LinkClient {
        let base = controller.trim_end_matches('/');
        let url = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}/internal/link")
        } else {
            format!("ws://{}/internal/link", base.trim_start_matches("http://"))
        };
        let (inbox_tx, inbox_rx) = mpsc::channel(16_384);
        let shared = Arc::new(Shared {
            url,
            node_keys,
            tls,
            up: AtomicBool::new(false),
            sessions: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            queue: Mutex::new(VecDeque::new()),
            queue_notify: Notify::new(),
            pending: Mutex::new(HashMap::new()),
            info: Mutex::new(None),
            lease: watch::channel(None).0,
            state: Mutex::new(NodeState::Live),
            attached: Mutex::new(HashMap::new()),
            unacked: Mutex::new(VecDeque::new()),
            next_pub: AtomicU64::new(1),
            pub_notify: Notify::new(),
            inbox: Mutex::new(Some(inbox_rx)),
            inbox_tx,
        });
        tokio::spawn(run(shared.clone(), cancel));
        LinkClient { shared }
    }

    /// The lease currently held (it changes if the node had to register again).
    pub fn lease(&self) -> watch::Receiver<Option<Lease>> {
        self.shared.lease.subscribe()
    }

    /// Time of the oldest publish not yet acknowledged.
    pub fn oldest_unacked(&self) -> Option<Millis> {
        self.shared.unacked.lock().front().map(|(_, at, _)| *at)
    }

    async fn request(&self, op: LinkOp, queue_while_down: bool) -> RegistryResult<LinkReply> {
        if !queue_while_down && !self.shared.up.load(Ordering::Acquire) {
            return Err(RegistryError::Unavailable(
                "link to the controller is down".into(),
            ));
        }
        let (tx, rx) = oneshot::channel();
        self.shared.queue.lock().push_back((op, Some(tx)));
        self.shared.queue_notify.notify_one();
        let wait = if queue_while_down {
            QUEUED_OP_TIMEOUT
        } else {
            REPLY_TIMEOUT
        };
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(RegistryError::Unavailable("link closed".into())),
            Err(_) => Err(RegistryError::Unavailable(
                "no answer from the controller in time".into(),
            )),
        }
    }
}

impl LinkClient {
    /// A link speaks for the one node that registered through it: a call about any other node
    /// is about a node this link does not know.
    fn own(&self, node: &NodeId) -> RegistryResult<()> {
        match self.shared.info.lock().as_ref() {
            Some(info) if info.id == *node => Ok(()),
            _ => Err(RegistryError::UnknownNode(node.clone())),
        }
    }

    /// The error a reply other than the one expected stands for.
    fn unexpected(&self, reply: LinkReply) -> RegistryError {
        match reply {
            LinkReply::Failed { message } if message == UNKNOWN_NODE => {
                match self.shared.info.lock().as_ref() {
                    Some(info) => RegistryError::UnknownNode(info.id.clone()),
                    None => RegistryError::Internal(message),
                }
            }
            LinkReply::Failed { message } => RegistryError::Internal(message),
            other => RegistryError::Internal(format!("unexpected link reply {other:?}")),
        }
    }
}

#[async_trait]
impl Registry for LinkClient {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn register(&self, node: &NodeInfo) -> RegistryResult<Lease> {
        *self.shared.info.lock() = Some(node.clone());
        self.shared.queue_notify.notify_one();
        // The link task registers on (re)connect and publishes the lease.
        let mut lease = self.shared.lease.subscribe();
        let got = tokio::time::timeout(REPLY_TIMEOUT, lease.wait_for(|l| l.is_some())).await;
        match got {
            Ok(Ok(l)) => l.ok_or_else(|| RegistryError::Internal("no lease".into())),
            _ => Err(RegistryError::Unavailable(format!(
                "could not register with the controller at {}",
                self.shared.url
            ))),
        }
    }

    async fn heartbeat(&self, node: &NodeId, load: Load) -> RegistryResult<()> {
        self.own(node)?;
        match self
            .request(
                LinkOp::Heartbeat {
                    connections: load.connections,
                    unpublished_since: load.unpublished_since.or(self.oldest_unacked()),
                },
                false,
            )
            .await?
        {
            LinkReply::Done => Ok(()),
            other => Err(self.unexpected(other)),
        }
    }

    async fn set_state(&self, node: &NodeId, state: NodeState) -> RegistryResult<()> {
        self.own(node)?;
        *self.shared.state.lock() = state;
        match self.request(LinkOp::SetState { state }, true).await? {
            LinkReply::Done => Ok(()),
            other => Err(self.unexpected(other)),
        }
    }

    async fn deregister(&self, node: &NodeId) -> RegistryResult<Vec<UserId>> {
        self.own(node)?;
        let r = self.request(LinkOp::Deregister, false).await;
        let reply = match r {
            Ok(LinkReply::Deregistered { went_offline }) => Ok(went_offline),
            Ok(other) => Err(self.unexpected(other)),
            Err(e) => Err(e),
        };
        *self.shared.info.lock() = None;
        reply
    }

    async fn attach(
        &self,
        node: &NodeId,
        user: UserId,
        reservation: Option<&str>,
    ) -> RegistryResult<bool> {
        self.own(node)?;
        let op = LinkOp::Attach {
            user,
            reservation: reservation.map(str::to_owned),
        };
        match self.request(op, true).await? {
            LinkReply::Attached { first } => Ok(first),
            other => Err(self.unexpected(other)),
        }
    }

    async fn detach(&self, node: &NodeId, user: UserId) -> RegistryResult<bool> {
        self.own(node)?;
        match self.request(LinkOp::Detach { user }, true).await? {
            LinkReply::Detached { last } => Ok(last),
            other => Err(self.unexpected(other)),
        }
    }

    async fn locate(&self, users: &[UserId]) -> RegistryResult<Vec<Vec<NodeId>>> {
        match self
            .request(
                LinkOp::Locate {
                    users: users.to_vec(),
                },
                false,
            )
            .await?
        {
            LinkReply::Located { nodes } if nodes.len() == users.len() => Ok(nodes),
            other => Err(self.unexpected(other)),
        }
    }

    async fn online(&self, users: &[UserId]) -> RegistryResult<Vec<UserId>> {
        match self
            .request(
                LinkOp::Online {
                    users: users.to_vec(),
                },
                false,
            )
            .await?
        {
            LinkReply::Online { users } => Ok(users),
            other => Err(self.unexpected(other)),
        }
    }

    async fn assign(&self, exclude: &[NodeId]) -> RegistryResult<Option<AssignResponse>> {
        match self
            .request(
                LinkOp::Assign {
                    exclude: exclude.to_vec(),
                },
                false,
            )
            .await?
        {
            LinkReply::Assigned { assignment } => Ok(assignment),
            other => Err(self.unexpected(other)),
        }
    }

    async fn nodes(&self) -> RegistryResult<Vec<NodeStatus>> {
        match self.request(LinkOp::Nodes, false).await? {
            LinkReply::Nodes { nodes } => Ok(nodes),
            other => Err(self.unexpected(other)),
        }
    }

    async fn reap(&self, _now: Millis) -> RegistryResult<Vec<DeadNode>> {
        // The controller reaps its own registry and cleans up after dead nodes.
        Ok(Vec::new())
    }
}

#[async_trait]
impl Bus for LinkClient {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn publish(&self, targets: &Targets, _key: &[u8], envelope: Bytes) -> BusResult<()> {
        let mut unacked = self.shared.unacked.lock();
        if unacked.len() >= MAX_UNACKED {
            return Err(BusError::Unavailable(
                "link to the controller is down and its buffer is full".into(),
            ));
        }
        let seq = self.shared.next_pub.fetch_add(1, Ordering::Relaxed);
        unacked.push_back((seq, now_ms(), encode_publish(seq, targets, &envelope)));
        drop(unacked);
        self.shared.pub_notify.notify_one();
        Ok(())
    }

    async fn subscribe(&self, _node: &NodeId) -> BusResult<Inbox> {
        self.shared
            .inbox
            .lock()
            .take()
            .ok_or_else(|| BusError::Internal("already subscribed".into()))
    }

    fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::Acquire)
    }

    fn sessions(&self) -> u64 {
        self.shared.sessions.load(Ordering::Relaxed)
    }

    fn resolves_users(&self) -> bool {
        true
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(shared: &Shared) -> Result<Ws, String> {
    let mut req = shared
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| e.to_string())?;
    let proof = crate::auth::keys::admission_proof(&shared.node_keys, now_ms() / 1000);
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {proof}")
            .parse()
            .map_err(|_| "the admission proof is not a valid header".to_owned())?,
    );
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        req,
        Some(super::socket_config()),
        true,
        shared.tls.clone().map(tokio_tungstenite::Connector::Rustls),
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(ws)
}

async fn run(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut delay = Duration::from_millis(50);
    loop {
        if cancel.is_cancelled() {
            break;
        }
        // Nothing to do until the node registers.
        if shared.info.lock().is_none() {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = shared.queue_notify.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            fail_unqueueable(&shared);
            continue;
        }
        match connect(&shared).await {
            Ok(ws) => {
                tracing::info!(url = %shared.url, "link to the controller is up");
                let reason = session(&shared, ws, &cancel).await;
                shared.up.store(false, Ordering::Release);
                fail_pending(&shared);
                if cancel.is_cancelled() {
                    break;
                }
                tracing::warn!(reason = %reason, "link to the controller lost; reconnecting");
                delay = Duration::from_millis(50);
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot reach the controller");
                fail_unqueueable(&shared);
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
    shared.up.store(false, Ordering::Release);
    fail_pending(&shared);
}

/// Fails queued requests that do not wait for the link (everything but attach, detach and
/// set_state).
fn fail_unqueueable(shared: &Shared) {
    let mut q = shared.queue.lock();
    let mut keep = VecDeque::with_capacity(q.len());
    for (op, reply) in q.drain(..) {
        if matches!(
            op,
            LinkOp::Attach { .. } | LinkOp::Detach { .. } | LinkOp::SetState { .. }
        ) {
            keep.push_back((op, reply));
        } else if let Some(r) = reply {
            let _ = r.send(Err(RegistryError::Unavailable(
                "link to the controller is down".into(),
            )));
        }
    }
    *q = keep;
}

fn fail_pending(shared: &Shared) {
    for (_, r) in shared.pending.lock().drain() {
        let _ = r.send(Err(RegistryError::Unavailable("link closed".into())));
    }
}

fn request_text(id: u64, op: LinkOp) -> Message {
    Message::Text(
        serde_json::to_string(&LinkRequest { id, op })
            .unwrap_or_default()
            .into(),
    )
}

/// One connected session of the link; returns why it ended.
async fn session(shared: &Arc<Shared>, ws: Ws, cancel: &CancellationToken) -> String {
    let (mut sink, mut stream) = ws.split();
    let Some(info) = shared.info.lock().clone() else {
        return "not registered".into();
    };
    // 1. Register and wait for the lease.
    let reg_id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let register = LinkOp::Register {
        node: info.id.clone(),
        ws_url: info.ws_url.clone(),
        http_url: info.http_url.clone(),
        started_at: info.started_at,
    };
    if let Err(e) = sink.send(request_text(reg_id, register)).await {
        return e.to_string();
    }
    let lease = loop {
        let next = tokio::time::timeout(REPLY_TIMEOUT, stream.next()).await;
        match next {
            Ok(Some(Ok(Message::Text(t)))) => {
                match serde_json::from_str::<LinkServerFrame>(t.as_str()) {
                    Ok(LinkServerFrame::Reply {
                        id,
                        reply:
                            LinkReply::Registered {
                                worker_id,
                                lease_ms,
                            },
                    }) if id == reg_id => {
                        break Lease {
                            worker_id,
                            lease_ms,
                        };
                    }
                    Ok(LinkServerFrame::Reply { reply, .. }) => {
                        return format!("register refused: {reply:?}");
                    }
                    Ok(_) => continue,
                    Err(e) => return format!("bad frame from controller: {e}"),
                }
            }
            // Envelopes the controller held for this node while it was away are handed over
            // as it registers, and may come before the answer: they are deliveries like any.
            Ok(Some(Ok(Message::Binary(b)))) => {
                if shared.inbox_tx.send(b).await.is_err() {
                    // Nobody consumes deliveries any more: the node is stopping.
                }
            }
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => return e.to_string(),
            Ok(None) => return "closed during register".into(),
            Err(_) => return "no register answer in time".into(),
        }
    };
    // 2. Replay state: draining, attached devices, then unacknowledged publishes.
    let mut replay: Vec<Message> = Vec::new();
    let state = *shared.state.lock();
    if state != NodeState::Live {
        replay.push(request_text(
            shared.next_id.fetch_add(1, Ordering::Relaxed),
            LinkOp::SetState { state },
        ));
    }
    for (user, count) in shared.attached.lock().iter() {
        for _ in 0..*count {
            replay.push(request_text(
                shared.next_id.fetch_add(1, Ordering::Relaxed),
                LinkOp::Attach {
                    user: *user,
                    reservation: None,
                },
            ));
        }
    }
    for m in replay {
        if let Err(e) = sink.feed(m).await {
            return e.to_string();
        }
    }
    let mut sent_upto = 0u64;
    let resend: Vec<(u64, Bytes)> = shared
        .unacked
        .lock()
        .iter()
        .map(|(s, _, f)| (*s, f.clone()))
        .collect();
    for (s, f) in resend {
        if let Err(e) = sink.feed(Message::Binary(f)).await {
            return e.to_string();
        }
        sent_upto = s;
    }
    if let Err(e) = sink.flush().await {
        return e.to_string();
    }
    shared.up.store(true, Ordering::Release);
    shared.sessions.fetch_add(1, Ordering::Relaxed);
    shared.lease.send_replace(Some(lease));

    // 3. Steady state.
    loop {
        // Write whatever is queued: requests, then new publishes.
        let ops: Vec<(LinkOp, Option<Reply>)> = shared.queue.lock().drain(..).collect();
        for (op, reply) in ops {
            if matches!(op, LinkOp::Deregister) {
                shared.attached.lock().clear();
            }
            match &op {
                LinkOp::Attach { user, .. } => {
                    *shared.attached.lock().entry(*user).or_insert(0) += 1
                }
                LinkOp::Detach { user } => {
                    let mut a = shared.attached.lock();
                    if let Some(c) = a.get_mut(user) {
                        *c -= 1;
                        if *c == 0 {
                            a.remove(user);
                        }
                    }
                }
                _ => {}
            }
            let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
            if let Some(r) = reply {
                shared.pending.lock().insert(id, r);
            }
            if let Err(e) = sink.feed(request_text(id, op)).await {
                return e.to_string();
            }
        }
        let fresh: Vec<(u64, Bytes)> = {
            let u = shared.unacked.lock();
            let start = u.partition_point(|(s, _, _)| *s <= sent_upto);
            u.range(start..).map(|(s, _, f)| (*s, f.clone())).collect()
        };
        for (s, f) in fresh {
            if let Err(e) = sink.feed(Message::Binary(f)).await {
                return e.to_string();
            }
            sent_upto = s;
        }
        if let Err(e) = sink.flush().await {
            return e.to_string();
        }

        tokio::select! {
            _ = cancel.cancelled() => {
                let _ = sink.close().await;
                return "shutting down".into();
            }
            _ = shared.queue_notify.notified() => {}
            _ = shared.pub_notify.notified() => {}
            msg = stream.next() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    if shared.inbox_tx.send(b).await.is_err() {
                        // Nobody consumes deliveries any more: the node is stopping.
                    }
                    // Drain what else is ready before writing again.
                }
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<LinkServerFrame>(t.as_str()) {
                    Ok(LinkServerFrame::Reply { id, reply }) => {
                        if let LinkReply::Failed { message } = &reply
                            && message == UNKNOWN_NODE {
                                // We were reaped while connected: start over with a fresh
                                // registration and a full replay.
                                if let Some(r) = shared.pending.lock().remove(&id) {
                                    let _ = r.send(Ok(reply));
                                }
                                return "the controller no longer knows this node".into();
                            }
                        if let Some(r) = shared.pending.lock().remove(&id) {
                            let _ = r.send(Ok(reply));
                        }
                    }
                    Ok(LinkServerFrame::PubAck { upto }) => {
                        let mut u = shared.unacked.lock();
                        while u.front().is_some_and(|(s, _, _)| *s <= upto) {
                            u.pop_front();
                        }
                    }
                    Err(e) => return format!("bad frame from controller: {e}"),
                },
                Some(Ok(Message::Close(_))) | None => return "closed by the controller".into(),
                Some(Ok(_)) => {}
                Some(Err(e)) => return e.to_string(),
            }
        }
    }
}
