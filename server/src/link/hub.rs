//! The controller's end of the link: serves `GET /internal/link`, answers registry requests
//! from the in-process [`MemoryRegistry`], and forwards each publish to the links of its target
//! nodes. A node whose link closes is removed from the registry at once and handed to the
//! recovery task.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use parking_lot::RwLock;
use protocol::NodeId;
use protocol::link::{LinkOp, LinkReply, LinkRequest, LinkServerFrame, Targets, decode_publish};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, BusError, BusResult, Inbox};
use crate::registry::memory::MemoryRegistry;
use crate::registry::{DeadNode, Load, NodeInfo, Registry, RegistryError};

/// Envelopes held for a target node that has no link yet (it is reconnecting after a
/// controller restart), and for how long.
const HELD_PER_NODE: usize = 10_000;
const HELD_FOR_MS: i64 = 10_000;

/// Envelopes queued for one node before the hub starts dropping them (the store and the
/// receivers' gap filling make up for a drop; a node this far behind is in trouble anyway).
const NODE_QUEUE: usize = 65_536;

/// Longest a publish acknowledgement waits for another frame to the same node to ride on.
const PUB_ACK_DELAY: std::time::Duration = std::time::Duration::from_millis(20);

struct NodeLink {
    /// Distinguishes this connection from a later one of the same node.
    conn: u64,
    deliver: mpsc::Sender<Bytes>,
}

/// The hub: registry host and bus switch of the embedded setup.
pub struct LinkHub {
    registry: Arc<MemoryRegistry>,
    links: RwLock<HashMap<NodeId, NodeLink>>,
    next_conn: AtomicU64,
    dead: mpsc::UnboundedSender<DeadNode>,
    /// Closes every link (controller shutdown).
    closing: CancellationToken,
    /// Envelopes for nodes not linked (yet): handed over when they register, dropped after
    /// [`HELD_FOR_MS`]. After a controller restart, nodes come back one by one and replay
    /// their unacknowledged publishes; without this, those aimed at a node that is a few
    /// milliseconds slower would be lost on the fast path.
    held: parking_lot::Mutex<HashMap<NodeId, (i64, Vec<Bytes>)>>,
}

impl LinkHub {
    /// A hub over `registry`; nodes that drop their link are sent to `dead`.
    pub fn new(registry: Arc<MemoryRegistry>, dead: mpsc::UnboundedSender<DeadNode>) -> Arc<Self> {
        Arc::new(LinkHub {
            registry,
            links: RwLock::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            dead,
            closing: CancellationToken::new(),
            held: parking_lot::Mutex::new(HashMap::new()),
        })
    }

    /// Closes every link now (the nodes will reconnect to whoever serves next).
    pub fn close_all(&self) {
        self.closing.cancel();
    }

    /// Number of nodes with an open link.
    pub fn linked(&self) -> usize {
        self.links.read().len()
    }

    /// Hands an envelope published by `from` (a node, or `None` for the controller itself) to
    /// the links of its targets.
    pub fn route(&self, from: Option<&NodeId>, targets: &Targets, envelope: &Bytes) {
        // Users' nodes are looked up now, under the registry's lock: an attach that completed
        // before this is seen, as a `locate` by the publisher would have seen it.
        let resolved;
        let targets = match targets {
            Targets::Users(users) => {
                resolved = Targets::Nodes(self.registry.nodes_of(users, from));
                &resolved
            }
            other => other,
        };
        let links = self.links.read();
        let send = |id: &NodeId, link: &NodeLink| {
            if link.deliver.try_send(envelope.clone()).is_err() {
                metrics::counter!("chat_link_dropped_total").increment(1);
                tracing::warn!(node = %id, "link queue full or closed; envelope dropped");
            }
        };
        match targets {
            Targets::All => links.iter().for_each(|(id, l)| send(id, l)),
            Targets::Nodes(ids) => {
                for id in ids {
                    match links.get(id) {
                        Some(l) => send(id, l),
                        None => self.hold(id, envelope),
                    }
                }
            }
            // Resolved above.
            Targets::Users(_) => {}
        }
    }

    fn hold(&self, id: &NodeId, envelope: &Bytes) {
        let now = crate::ids::now_ms();
        let mut held = self.held.lock();
        held.retain(|_, (since, _)| now - *since < HELD_FOR_MS);
        let (_, list) = held.entry(id.clone()).or_insert((now, Vec::new()));
        if list.len() < HELD_PER_NODE {
            list.push(envelope.clone());
        }
    }

    /// Serves one node's link until it closes.
    pub async fn serve(self: Arc<Self>, socket: WebSocket) {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (mut sink, mut stream) = socket.split();
        let (deliver_tx, mut deliver_rx) = mpsc::channel::<Bytes>(NODE_QUEUE);
        let (reply_tx, mut reply_rx) = mpsc::unbounded_channel::<LinkServerFrame>();
        let (ack_tx, mut ack_rx) = watch::channel(0u64);

        // Writer: replies, deliveries, and publish acknowledgements. A node only trims its
        // resend buffer with an acknowledgement, so one rides on the next frame going to the
        // node anyway, or goes alone once it has waited `PUB_ACK_DELAY`: at moderate rates
        // that saves the node a wake-up, and the hub a write, per publish.
        let writer = tokio::spawn(async move {
            // When the oldest acknowledgement not yet sent must go at the latest.
            let mut ack_due: Option<tokio::time::Instant> = None;
            loop {
                let ack_wait = async move {
                    if let Some(due) = ack_due {
                        tokio::time::sleep_until(due).await;
                    }
                };
                tokio::select! {
                    biased;
                    Some(reply) = reply_rx.recv() => {
                        if sink.feed(text(&reply)).await.is_err() {
                            break;
                        }
                    }
                    Some(env) = deliver_rx.recv() => {
                        if sink.feed(Message::Binary(env)).await.is_err() {
                            break;
                        }
                        let mut more = 0;
                        while more < 64 {
                            match deliver_rx.try_recv() {
                                Ok(env) => {
                                    if sink.feed(Message::Binary(env)).await.is_err() {
                                        return;
                                    }
                                    more += 1;
                                }
                                Err(_) => break,
                            }
                        }
                    }
                    Ok(()) = ack_rx.changed(), if ack_due.is_none() => {
                        ack_due = Some(tokio::time::Instant::now() + PUB_ACK_DELAY);
                        continue;
                    }
                    () = ack_wait, if ack_due.is_some() => {}
                    else => break,
                }
                if ack_due.take().is_some() {
                    let upto = *ack_rx.borrow_and_update();
                    if sink
                        .feed(text(&LinkServerFrame::PubAck { upto }))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                if sink.flush().await.is_err() {
                    break;
                }
            }
        });

        let mut node: Option<NodeId> = None;
        loop {
            let msg = tokio::select! {
                _ = self.closing.cancelled() => break,
                m = stream.next() => match m {
                    Some(Ok(m)) => m,
                    _ => break,
                },
            };
            match msg {
                Message::Text(t) => {
                    let req: LinkRequest = match serde_json::from_str(t.as_str()) {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::warn!(error = %e, "malformed link request; closing link");
                            break;
                        }
                    };
                    let reply = self.handle(&mut node, conn, &deliver_tx, req.op).await;
                    if reply_tx
                        .send(LinkServerFrame::Reply { id: req.id, reply })
                        .is_err()
                    {
                        break;
                    }
                }
                Message::Binary(b) => {
                    if node.is_none() {
                        tracing::warn!("publish before register; closing link");
                        break;
                    }
                    match decode_publish(b) {
                        Ok(p) => {
                            self.route(node.as_ref(), &p.targets, &p.envelope);
                            metrics::counter!("chat_link_routed_total").increment(1);
                            let _ = ack_tx.send(p.seq);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "bad publish frame; closing link");
                            break;
                        }
                    }
                }
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => {}
            }
        }
        writer.abort();
        if let Some(id) = node {
            self.drop_link(&id, conn);
        }
    }

    fn drop_link(&self, id: &NodeId, conn: u64) {
        let mut links = self.links.write();
        if links.get(id).is_some_and(|l| l.conn == conn) {
            links.remove(id);
            drop(links);
            if let Some(dead) = self.registry.remove_node(id) {
                tracing::info!(node = %id, offline = dead.went_offline.len(), "node link closed; node removed");
                let _ = self.dead.send(dead);
            }
        }
    }

    async fn handle(
        &self,
        node: &mut Option<NodeId>,
        conn: u64,
        deliver: &mpsc::Sender<Bytes>,
        op: LinkOp,
    ) -> LinkReply {
        let r = &*self.registry;
        let me = match (&op, node.as_ref()) {
            (LinkOp::Register { .. }, _) => None,
            (_, Some(id)) => Some(id.clone()),
            (_, None) => {
                return LinkReply::Failed {
                    message: "register first".into(),
                };
            }
        };
        let result: Result<LinkReply, RegistryError> = async {
            Ok(match op {
                LinkOp::Register {
                    node: id,
                    ws_url,
                    http_url,
                    started_at,
                } => {
                    let lease = r
                        .register(&NodeInfo {
                            id: id.clone(),
                            ws_url,
                            http_url,
                            started_at,
                        })
                        .await?;
                    self.links.write().insert(
                        id.clone(),
                        NodeLink {
                            conn,
                            deliver: deliver.clone(),
                        },
                    );
                    let held = self.held.lock().remove(&id);
                    if let Some((since, list)) = held
                        && crate::ids::now_ms() - since < HELD_FOR_MS
                    {
                        for env in list {
                            let _ = deliver.try_send(env);
                        }
                    }
                    *node = Some(id);
                    LinkReply::Registered {
                        worker_id: lease.worker_id,
                        lease_ms: lease.lease_ms,
                    }
                }
                LinkOp::Heartbeat {
                    connections,
                    unpublished_since,
                } => {
                    let id = me.as_ref().ok_or_else(not_registered)?;
                    r.heartbeat(
                        id,
                        Load {
                            connections,
                            unpublished_since,
                        },
                    )
                    .await?;
                    LinkReply::Done
                }
                LinkOp::SetState { state } => {
                    r.set_state(me.as_ref().ok_or_else(not_registered)?, state)
                        .await?;
                    LinkReply::Done
                }
                LinkOp::Deregister => {
                    let id = me.as_ref().ok_or_else(not_registered)?;
                    self.links.write().remove(id);
                    let went_offline = r.deregister(id).await?;
                    *node = None;
                    LinkReply::Deregistered { went_offline }
                }
                LinkOp::Attach { user, reservation } => LinkReply::Attached {
                    first: r
                        .attach(
                            me.as_ref().ok_or_else(not_registered)?,
                            user,
                            reservation.as_deref(),
                        )
                        .await?,
                },
                LinkOp::Detach { user } => LinkReply::Detached {
                    last: r
                        .detach(me.as_ref().ok_or_else(not_registered)?, user)
                        .await?,
                },
                LinkOp::Locate { users } => LinkReply::Located {
                    nodes: r.locate(&users).await?,
                },
                LinkOp::Online { users } => LinkReply::Online {
                    users: r.online(&users).await?,
                },
                LinkOp::Assign { exclude } => LinkReply::Assigned {
                    assignment: r.assign(&exclude).await?,
                },
                LinkOp::Nodes => LinkReply::Nodes {
                    nodes: r.nodes().await?,
                },
            })
        }
        .await;
        result.unwrap_or_else(|e| LinkReply::Failed {
            message: match e {
                RegistryError::UnknownNode(_) => UNKNOWN_NODE.to_owned(),
                other => other.to_string(),
            },
        })
    }
}

/// The failure message that tells a node to register again.
pub const UNKNOWN_NODE: &str = "unknown node";

fn not_registered() -> RegistryError {
    RegistryError::Internal("link not registered".into())
}

fn text(frame: &LinkServerFrame) -> Message {
    Message::Text(serde_json::to_string(frame).unwrap_or_default().into())
}

/// The controller's own handle on the hub as a bus: what it publishes (membership events,
/// revocations, recovery) goes straight to the node links.
pub struct HubBus(pub Arc<LinkHub>);

#[async_trait]
impl Bus for HubBus {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn publish(&self, targets: &Targets, _key: &[u8], envelope: Bytes) -> BusResult<()> {
        self.0.route(None, targets, &envelope);
        Ok(())
    }

    async fn subscribe(&self, _node: &NodeId) -> BusResult<Inbox> {
        Err(BusError::Internal(
            "the controller's hub publishes only; nodes subscribe over the link".into(),
        ))
    }

    fn is_up(&self) -> bool {
        true
    }

    fn resolves_users(&self) -> bool {
        true
    }
}
