//! Structured events a node streams to observers (the lab) on `GET /trace`, one JSON object per
//! WebSocket text message: each hop of a message through the node, and each change of a
//! connection. Nodes produce them only while somebody listens, and sample messages by id
//! (`?sample=N` keeps one id in N, see [`sampled`]) so that a sampled message is seen on every
//! node it crosses. The controller streams the same way on its own `GET /trace`: each
//! least-loaded answer, with the loads it was chosen over ([`Trace::Assigned`]).

use serde::{Deserialize, Serialize};

use crate::{ConvId, DeviceId, MessageId, NodeId, Seq, UserId};

/// One observation on one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEvent {
    /// Microseconds since the Unix epoch, on the node's clock.
    pub at_us: i64,
    /// The node that saw it.
    pub node: NodeId,
    /// What it saw.
    pub what: Trace,
}

/// What a node saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Trace {
    /// A message (event) went through one step here.
    Hop {
        /// Which step.
        hop: Hop,
        /// The message (event) id.
        id: MessageId,
        /// Its conversation.
        conv: ConvId,
        /// Its position.
        seq: Seq,
        /// The user concerned (sender when accepted, recipient when delivered).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<UserId>,
        /// The device concerned.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<DeviceId>,
        /// The other nodes: targets when published, origin when received.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        peers: Vec<NodeId>,
    },
    /// A device's connection changed, or a user's presence.
    Conn {
        /// What changed.
        change: ConnChange,
        /// Whose.
        user: UserId,
        /// Which device, when one is concerned.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<DeviceId>,
    },
    /// The node's own state changed.
    Node {
        /// What changed.
        change: NodeChange,
    },
    /// The controller told a client where to connect (on the controller's stream only).
    Assigned {
        /// The node chosen, with its load right after the answer (the new reservation
        /// included).
        chosen: NodeLoad,
        /// Every other node taking devices, with its load at the same moment, least loaded
        /// first. Read just after the answer: under a burst, answers given in between may
        /// show in these figures.
        others: Vec<NodeLoad>,
        /// Nodes the client asked to leave out (the ones it just failed on).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        excluded: Vec<NodeId>,
    },
}

/// One node's load as the least-loaded answer counts it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLoad {
    /// The node.
    pub node: NodeId,
    /// Devices connected, as of its last heartbeat.
    pub connections: u64,
    /// Slots handed out and not yet used or expired.
    pub reserved: u64,
}

impl NodeLoad {
    /// What the answer compares: connections plus reservations.
    pub fn total(&self) -> u64 {
        self.connections + self.reserved
    }
}

/// Steps of a message through a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hop {
    /// Persisted with its `seq` (on the node the sender is connected to).
    Persisted,
    /// The sending device got its ack.
    Acked,
    /// Handed to the bus for the nodes in `peers`.
    Published,
    /// Arrived from the bus, from the node in `peers`.
    Received,
    /// The bus brought the node its own envelope back (fanout sends to every node, the
    /// sender's included): read and dropped. Counted with `Received` as an envelope the bus
    /// carried.
    Returned,
    /// Written to a device's queue.
    Delivered,
    /// Fetched from the store to fill a gap in a device's sequence.
    GapFilled,
    /// Replayed from the store during a device's resync.
    Replayed,
    /// Published again by a node cleaning up after a dead node.
    Recovered,
}

/// Connection and presence changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnChange {
    /// A device connected and said hello.
    Connected,
    /// A device's session ended.
    Gone,
    /// The user came online (first device).
    Online,
    /// The user went offline (last device).
    Offline,
    /// The device was closed because its queue overflowed.
    TooSlow,
    /// The device was closed for flooding.
    RateLimited,
    /// The device was closed because it was revoked.
    Revoked,
}

/// Changes of a node's own state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeChange {
    /// Registered and serving.
    Started,
    /// Draining: moving devices away.
    Draining,
    /// Lost its connection to the bus.
    BusDown,
    /// Its connection to the bus is back.
    BusUp,
}

/// Whether message `id` is in a `1 in n` sample. Every node decides the same for the same id,
/// so a sampled message is traced on every hop of its way (ids are hashed first: their low
/// bits are a per-millisecond counter, often zero).
pub fn sampled(id: MessageId, n: u32) -> bool {
    n <= 1 || ((id.0 as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32).is_multiple_of(u64::from(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_keeps_about_one_in_n() {
        let kept = (0..100_000i64)
            .filter(|i| sampled(MessageId(i << 22), 10))
            .count();
        assert!((8_000..12_000).contains(&kept), "{kept}");
        assert!(sampled(MessageId(12345), 1));
    }

    #[test]
    fn an_assignment_reads_back() {
        let load = |n: &str, c, r| NodeLoad {
            node: NodeId::new(n).expect("id"),
            connections: c,
            reserved: r,
        };
        let ev = TraceEvent {
            at_us: 1,
            node: NodeId::new("controller").expect("id"),
            what: Trace::Assigned {
                chosen: load("n2", 31, 1),
                others: vec![load("n1", 33, 0), load("n3", 34, 0)],
                excluded: vec![],
            },
        };
        let json = serde_json::to_string(&ev).expect("json");
        assert!(json.contains(r#""type":"assigned""#), "{json}");
        assert!(!json.contains("excluded"), "{json}");
        assert_eq!(serde_json::from_str::<TraceEvent>(&json).ok(), Some(ev));
        assert_eq!(load("n2", 31, 1).total(), 32);
    }
}
