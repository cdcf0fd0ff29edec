//! The link between a chat node and the controller in the embedded, one-machine setup, where
//! the controller hosts the registry and the bus. A node opens one WebSocket to
//! `GET /internal/link` (with the cluster secret as a bearer token) and multiplexes on it:
//!
//! - registry requests as text frames ([`LinkRequest`]), answered by [`LinkServerFrame::Reply`]
//!   with the same `id`;
//! - publishes as binary frames ([`encode_publish`]): a publish number, the target nodes and
//!   the bus envelope. The controller acknowledges cumulatively with
//!   [`LinkServerFrame::PubAck`], along with its next frame to the node or within 20 ms; the
//!   node keeps what is unacknowledged and publishes it again after a reconnect.
//! - deliveries to the node as binary frames holding one bus envelope each.
//!
//! The link's first request must be [`LinkOp::Register`]; closing the link (or missing
//! heartbeats for a lease) removes the node from the registry.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::http::{AssignResponse, NodeState, NodeStatus};
use crate::{Millis, NodeId, UserId};

/// Which nodes a publish goes to.
///
/// On the wire: `{"to":"all"}`, `{"to":"nodes","nodes":["n2"]}`, `{"to":"users","users":[1,2]}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "TargetsWire", from = "TargetsWire")]
pub enum Targets {
    /// Every live node (fanout routing).
    All,
    /// These nodes only (routed).
    Nodes(Vec<NodeId>),
    /// The nodes holding a device of these users, other than the publisher (routed), as the
    /// registry says when the publish is routed: only a bus that hosts the registry (the
    /// controller's, in the embedded setup) takes these, and saves the publisher a `locate`.
    Users(Vec<UserId>),
}

/// [`Targets`] as JSON.
#[derive(Clone, Serialize, Deserialize)]
#[serde(tag = "to", rename_all = "snake_case")]
enum TargetsWire {
    All,
    Nodes { nodes: Vec<NodeId> },
    Users { users: Vec<UserId> },
}

impl From<Targets> for TargetsWire {
    fn from(t: Targets) -> Self {
        match t {
            Targets::All => TargetsWire::All,
            Targets::Nodes(nodes) => TargetsWire::Nodes { nodes },
            Targets::Users(users) => TargetsWire::Users { users },
        }
    }
}

impl From<TargetsWire> for Targets {
    fn from(t: TargetsWire) -> Self {
        match t {
            TargetsWire::All => Targets::All,
            TargetsWire::Nodes { nodes } => Targets::Nodes(nodes),
            TargetsWire::Users { users } => Targets::Users(users),
        }
    }
}

/// A registry request from a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRequest {
    /// Chosen by the node; the reply carries it back.
    pub id: u64,
    /// What to do.
    pub op: LinkOp,
}

/// Registry operations, the same as the registry trait on the node's side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum LinkOp {
    /// Take a lease for this node. Answered with [`LinkReply::Registered`].
    Register {
        /// The node.
        node: NodeId,
        /// Where devices connect.
        ws_url: String,
        /// Its HTTP base.
        http_url: String,
        /// When the process started.
        started_at: Millis,
    },
    /// Renew the lease and report the true connection count.
    Heartbeat {
        /// Devices connected now.
        connections: u64,
        /// The time of the oldest message persisted but not yet published, if any.
        unpublished_since: Option<Millis>,
    },
    /// Live or draining.
    SetState {
        /// The new state.
        state: NodeState,
    },
    /// Give up the lease (graceful shutdown).
    Deregister,
    /// A device of `user` connected here. Answered with [`LinkReply::Attached`].
    Attach {
        /// Whose device.
        user: UserId,
        /// The slot it was handed, if any.
        reservation: Option<String>,
    },
    /// A device of `user` left. Answered with [`LinkReply::Detached`].
    Detach {
        /// Whose device.
        user: UserId,
    },
    /// Which nodes hold a device of these users. Answered with [`LinkReply::Located`].
    Locate {
        /// The users.
        users: Vec<UserId>,
    },
    /// Which of these users are online. Answered with [`LinkReply::Online`].
    Online {
        /// The users.
        users: Vec<UserId>,
    },
    /// The least-loaded node. Answered with [`LinkReply::Assigned`].
    Assign {
        /// Nodes not to answer with.
        exclude: Vec<NodeId>,
    },
    /// Every node. Answered with [`LinkReply::Nodes`].
    Nodes,
}

/// A text frame from the controller to a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LinkServerFrame {
    /// The answer to request `id`.
    Reply {
        /// The request's id.
        id: u64,
        /// The answer.
        reply: LinkReply,
    },
    /// Every publish numbered up to `upto` was handed to its target nodes.
    PubAck {
        /// Highest publish number acknowledged.
        upto: u64,
    },
}

/// Answers to [`LinkOp`]s.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LinkReply {
    /// Done, nothing to say.
    Done,
    /// The lease is taken.
    Registered {
        /// The Snowflake worker id this node uses while its lease lives.
        worker_id: u16,
        /// The lease; heartbeat well within it.
        lease_ms: u64,
    },
    /// The node is gone from the registry.
    Deregistered {
        /// The users it held the last device of, now offline.
        went_offline: Vec<UserId>,
    },
    /// Whether the user was offline before (this is their first device).
    Attached {
        /// The user just came online.
        first: bool,
    },
    /// Whether the user is now offline (that was their last device).
    Detached {
        /// The user just went offline.
        last: bool,
    },
    /// Nodes per user, in the order asked.
    Located {
        /// For each user asked, the nodes holding one of their devices.
        nodes: Vec<Vec<NodeId>>,
    },
    /// The online users among those asked.
    Online {
        /// Who is online.
        users: Vec<UserId>,
    },
    /// The least-loaded node, if any is live.
    Assigned {
        /// Where to connect.
        assignment: Option<AssignResponse>,
    },
    /// Every node.
    Nodes {
        /// The nodes.
        nodes: Vec<NodeStatus>,
    },
    /// The request failed.
    Failed {
        /// Why.
        message: String,
    },
}

/// Why a binary link frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LinkFrameError {
    /// Too short, or a length past the end.
    #[error("bad publish frame: {0}")]
    Framing(&'static str),
    /// The targets are not valid JSON.
    #[error("bad publish targets: {0}")]
    Targets(#[from] serde_json::Error),
}

/// A publish as the controller reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    /// The node's running publish number.
    pub seq: u64,
    /// Where it goes.
    pub targets: Targets,
    /// The encoded bus envelope, forwarded as it is.
    pub envelope: Bytes,
}

/// Frames a publish: publish number (u64 BE), targets length (u32 BE), targets JSON, envelope.
pub fn encode_publish(seq: u64, targets: &Targets, envelope: &[u8]) -> Bytes {
    let t = serde_json::to_vec(targets).unwrap_or_default();
    let mut out = BytesMut::with_capacity(12 + t.len() + envelope.len());
    out.put_u64(seq);
    out.put_u32(t.len() as u32);
    out.put_slice(&t);
    out.put_slice(envelope);
    out.freeze()
}

/// Reads a frame made by [`encode_publish`].
pub fn decode_publish(bytes: Bytes) -> Result<Publish, LinkFrameError> {
    if bytes.len() < 12 {
        return Err(LinkFrameError::Framing("shorter than its prefix"));
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&bytes[..8]);
    let len = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    if 12 + len > bytes.len() {
        return Err(LinkFrameError::Framing("targets length past the end"));
    }
    let targets = serde_json::from_slice(&bytes[12..12 + len])?;
    Ok(Publish {
        seq: u64::from_be_bytes(seq),
        targets,
        envelope: bytes.slice(12 + len..),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_round_trips() -> Result<(), Box<dyn std::error::Error>> {
        let targets = Targets::Nodes(vec![NodeId::new("a")?, NodeId::new("b")?]);
        let p = decode_publish(encode_publish(42, &targets, b"env"))?;
        assert_eq!(p.seq, 42);
        assert_eq!(p.targets, targets);
        assert_eq!(&p.envelope[..], b"env");
        let all = decode_publish(encode_publish(1, &Targets::All, b""))?;
        assert_eq!(all.targets, Targets::All);
        let users = Targets::Users(vec![UserId(1), UserId(2)]);
        assert_eq!(
            decode_publish(encode_publish(2, &users, b""))?.targets,
            users
        );
        assert!(decode_publish(Bytes::from_static(b"short")).is_err());
        Ok(())
    }

    #[test]
    fn targets_shape() -> Result<(), Box<dyn std::error::Error>> {
        assert_eq!(serde_json::to_string(&Targets::All)?, r#"{"to":"all"}"#);
        assert_eq!(
            serde_json::to_string(&Targets::Nodes(vec![NodeId::new("n2")?]))?,
            r#"{"to":"nodes","nodes":["n2"]}"#
        );
        assert_eq!(
            serde_json::to_string(&Targets::Users(vec![UserId(1), UserId(2)]))?,
            r#"{"to":"users","users":[1,2]}"#
        );
        Ok(())
    }

    #[test]
    fn request_shape() -> Result<(), serde_json::Error> {
        let r = LinkRequest {
            id: 3,
            op: LinkOp::Locate {
                users: vec![UserId(1)],
            },
        };
        assert_eq!(
            serde_json::to_string(&r)?,
            r#"{"id":3,"op":{"op":"locate","users":[1]}}"#
        );
        Ok(())
    }
}
