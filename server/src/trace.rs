//! The node's trace stream for observers (`GET /trace`): hop and connection events as
//! [`protocol::trace::TraceEvent`]s on a broadcast channel. Emitting costs one atomic load when
//! nobody listens, so it stays on; listeners sample messages by id.

use std::sync::Arc;

use protocol::trace::{ConnChange, Hop, NodeChange, Trace, TraceEvent};
use protocol::{ConvId, DeviceId, MessageId, NodeId, Seq, UserId};
use tokio::sync::broadcast;

use crate::ids::now_us;

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
}
