//! The trace stream for observers (`GET /trace` on a node and on the controller): hop,
//! connection and assignment events as [`protocol::trace::TraceEvent`]s on a broadcast channel.
//! Emitting costs one atomic load when nobody listens, so it stays on; listeners sample
//! messages by id. Only the operator may listen ([`upgrade`]).

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::Response;
use protocol::trace::{ConnChange, Hop, NodeChange, NodeLoad, Trace, TraceEvent};
use protocol::{ConvId, DeviceId, MessageId, NodeId, Seq, UserId};
use tokio::sync::broadcast;

use crate::auth::OperatorToken;
use crate::ids::now_us;

/// `GET /trace?sample=N`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct TraceQuery {
    /// Keep one message in this many (1, the default, keeps all).
    pub sample: Option<u32>,
}

impl TraceQuery {
    /// The sampling rate asked for, at least 1.
    pub fn sample(&self) -> u32 {
        self.sample.unwrap_or(1).max(1)
    }
}

/// The largest message an observer may send on `/trace`: it has nothing to say (the stream
/// ignores what it sends), and a bigger one ends the stream.
pub const MAX_INBOUND: usize = 128;

/// `GET /trace` on any process: for the operator only (the events say who messages whom, when,
/// from which device): `Authorization: Bearer OPERATOR_TOKEN`, else `401` and no socket.
pub fn upgrade(
    operator: &OperatorToken,
    headers: &HeaderMap,
    ws: WebSocketUpgrade,
    tracer: Tracer,
    sample: u32,
) -> Response {
    if !operator.admits(headers) {
        metrics::counter!("chat_upgrades_refused_total").increment(1);
        return crate::metrics::operator_only("the trace stream");
    }
    ws.read_buffer_size(MAX_INBOUND)
        .max_message_size(MAX_INBOUND)
        .max_frame_size(MAX_INBOUND)
        .on_upgrade(move |socket| async move { tracer.stream(sample, socket).await })
}

/// A cheap-to-clone handle on the trace stream.
#[derive(Clone)]
pub struct Tracer {
    node: NodeId,
    tx: broadcast::Sender<Arc<TraceEvent>>,
}

impl Tracer {
    /// A tracer for `node`; slow listeners lose the oldest events beyond `capacity`.
    pub fn new(node: NodeId, capacity: usize) -> Self {
        Tracer {
            node,
            tx: broadcast::channel(capacity).0,
        }
    }

    /// Whether anybody listens (check before building costly arguments).
    pub fn enabled(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// A new listener.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<TraceEvent>> {
        self.tx.subscribe()
    }

    fn emit(&self, what: Trace) {
        let _ = self.tx.send(Arc::new(TraceEvent {
            at_us: now_us(),
            node: self.node.clone(),
            what,
        }));
    }

    /// A message went through `hop` here.
    // One argument per field of `Trace::Hop`, which callers would otherwise spell out whole.
    #[allow(clippy::too_many_arguments)]
    pub fn hop(
        &self,
        hop: Hop,
        id: MessageId,
        conv: ConvId,
        seq: Seq,
        user: Option<UserId>,
        device: Option<&DeviceId>,
        peers: Vec<NodeId>,
    ) {
        if self.enabled() {
            self.emit(Trace::Hop {
                hop,
                id,
                conv,
                seq,
                user,
                device: device.cloned(),
                peers,
            });
        }
    }

    /// A connection or presence change.
    pub fn conn(&self, change: ConnChange, user: UserId, device: Option<&DeviceId>) {
        if self.enabled() {
            self.emit(Trace::Conn {
                change,
                user,
                device: device.cloned(),
            });
        }
    }

    /// A change of the node itself.
    pub fn node(&self, change: NodeChange) {
        if self.enabled() {
            self.emit(Trace::Node { change });
        }
    }

    /// A least-loaded answer (the controller's stream).
    pub fn assigned(&self, chosen: NodeLoad, others: Vec<NodeLoad>, excluded: Vec<NodeId>) {
        if self.enabled() {
            self.emit(Trace::Assigned {
                chosen,
                others,
                excluded,
            });
        }
    }

    /// Streams events to one observer's WebSocket as JSON text messages until either side
    /// ends, keeping the hops of one message in `sample` (see [`protocol::trace::sampled`]).
    /// A listener that falls behind loses the oldest events, never slows the process.
    pub async fn stream(&self, sample: u32, mut socket: WebSocket) {
        let mut rx = self.subscribe();
        loop {
            let ev = tokio::select! {
                ev = rx.recv() => ev,
                msg = socket.recv() => match msg {
                    Some(Ok(_)) => continue,
                    _ => return,
                },
            };
            let ev = match ev {
                Ok(ev) => ev,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            };
            if let Trace::Hop { id, .. } = &ev.what
                && !protocol::trace::sampled(*id, sample)
            {
                continue;
            }
            let json = serde_json::to_string(&*ev).unwrap_or_default();
            if socket.send(Message::Text(json.into())).await.is_err() {
                return;
            }
        }
    }
}
