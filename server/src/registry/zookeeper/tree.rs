//! The znodes of one cluster under its root (`/chat` unless the URL names another prefix),
//! what each holds, and the error mapping every part of the ZooKeeper registry shares.
//!
//! | path | kind | holds |
//! |---|---|---|
//! | `/R/config` | persistent | the cluster's node lease, written by controllers |
//! | `/R/nodes/{node}` | persistent | [`NodeRecord`]: addresses, state, worker id, connections, reservations used, last heartbeat |
//! | `/R/nodes/{node}/live` | ephemeral | exists while the node's session lives: the node is alive |
//! | `/R/held/{node}/{user}` | persistent | a user with a device on the node (what the reaper announces offline) |
//! | `/R/users/{user}` | container | removed by ZooKeeper once it is empty |
//! | `/R/users/{user}/{node}-{seq}` | ephemeral, sequential | the node holds a device of the user (`locate`, presence) |
//! | `/R/workers/{id}` | ephemeral | a Snowflake worker id taken by a node's or a controller's session |

use std::collections::BTreeMap;

use protocol::http::NodeState;
use protocol::{Millis, NodeId, UserId};
use serde::{Deserialize, Serialize};
use zookeeper_client as zk;

use crate::registry::RegistryError;

/// The znode paths of one cluster.
#[derive(Clone, Debug)]
pub(super) struct Tree {
    root: String,
}

impl Tree {
    /// The tree under `/{prefix}`.
    pub fn new(prefix: &str) -> Tree {
        Tree {
            root: format!("/{}", prefix.trim_matches('/')),
        }
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    pub fn config(&self) -> String {
        format!("{}/config", self.root)
    }

    pub fn nodes(&self) -> String {
        format!("{}/nodes", self.root)
    }

    pub fn node(&self, node: &NodeId) -> String {
        format!("{}/nodes/{node}", self.root)
    }

    pub fn live(&self, node: &NodeId) -> String {
        format!("{}/nodes/{node}/live", self.root)
    }

    pub fn held_dir(&self) -> String {
        format!("{}/held", self.root)
    }

    pub fn held(&self, node: &NodeId) -> String {
        format!("{}/held/{node}", self.root)
    }

    pub fn held_user(&self, node: &NodeId, user: UserId) -> String {
        format!("{}/held/{node}/{}", self.root, user.0)
    }

    pub fn users(&self) -> String {
        format!("{}/users", self.root)
    }

    pub fn user(&self, user: UserId) -> String {
        format!("{}/users/{}", self.root, user.0)
    }

    /// The prefix of a node's sequential location znode under a user.
    pub fn location_prefix(&self, user: UserId, node: &NodeId) -> String {
        format!("{}/users/{}/{node}-", self.root, user.0)
    }

    pub fn workers(&self) -> String {
        format!("{}/workers", self.root)
    }

    pub fn worker(&self, id: u16) -> String {
        format!("{}/workers/{id}", self.root)
    }

    /// What a watched path under `/R/nodes` is about.
    pub fn classify(&self, path: &str) -> Option<Watched> {
        let rest = path.strip_prefix(&self.nodes())?.strip_prefix('/')?;
        let (node, live) = match rest.split_once('/') {
            Some((node, "live")) => (node, true),
            Some(_) => return None,
            None => (rest, false),
        };
        let node = NodeId::new(node).ok()?;
        Some(if live {
            Watched::Live(node)
        } else {
            Watched::Record(node)
        })
    }
}

/// A path under `/R/nodes` that a watch reported.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Watched {
    /// `/R/nodes/{node}`.
    Record(NodeId),
    /// `/R/nodes/{node}/live`.
    Live(NodeId),
}

/// A node's location znode name (`{node}-{seq}`) split into the node and the sequence.
pub(super) fn parse_location(name: &str) -> Option<(NodeId, i64)> {
    let (node, seq) = name.rsplit_once('-')?;
    Some((NodeId::new(node).ok()?, seq.parse().ok()?))
}

/// What `/R/nodes/{node}` holds: everything a controller indexes and a reaper needs after the
/// node is gone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct NodeRecord {
    pub ws: String,
    pub http: String,
    pub started: Millis,
    pub state: NodeState,
    pub worker: u16,
    /// Devices connected now.
    pub conns: u64,
    /// Reservations used so far, by the tag of the controller that handed them out: each
    /// controller counts its own outstanding ones down by what it sees used here.
    #[serde(default)]
    pub used: BTreeMap<String, u64>,
    /// Last heartbeat (the node's clock).
    pub hb: Millis,
    /// Oldest event persisted but not yet seen published.
    #[serde(default)]
    pub unpub: Option<Millis>,
    /// Set by the reaper that claimed the dead node: who, and when.
    #[serde(default)]
    pub reaping: Option<(String, Millis)>,
}

impl NodeRecord {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<NodeRecord, RegistryError> {
        serde_json::from_slice(bytes)
            .map_err(|e| RegistryError::Internal(format!("bad node record in zookeeper: {e}")))
    }
}

/// The cluster-wide settings in `/R/config`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(super) struct ClusterConfig {
    pub lease_ms: u64,
}

/// Whether an error means "ZooKeeper cannot be reached now" (retry) rather than a bug.
pub(super) fn is_transient(e: &zk::Error) -> bool {
    matches!(
        e,
        zk::Error::ConnectionLoss
            | zk::Error::Timeout
            | zk::Error::NoHosts
            | zk::Error::Throttled
            | zk::Error::SessionMoved
    )
}

/// Maps a client error for the [`crate::registry::Registry`] caller.
pub(super) fn map_err(e: zk::Error) -> RegistryError {
    if is_transient(&e) || matches!(e, zk::Error::SessionExpired | zk::Error::ClientClosed) {
        RegistryError::Unavailable(format!("zookeeper: {e}"))
    } else {
        RegistryError::Internal(format!("zookeeper: {e}"))
    }
}

/// Creation options: every znode is open to every client of the cluster (the ensemble is
/// reached on a private network, as Redis and RabbitMQ are).
pub(super) fn opts(mode: zk::CreateMode) -> zk::CreateOptions<'static> {
    mode.with_acls(zk::Acls::anyone_all())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watched_paths_are_classified() {
        let t = Tree::new("lab1");
        let n = NodeId::new("n-1").expect("id");
        assert_eq!(
            t.classify("/lab1/nodes/n-1"),
            Some(Watched::Record(n.clone()))
        );
        assert_eq!(t.classify("/lab1/nodes/n-1/live"), Some(Watched::Live(n)));
        assert_eq!(t.classify("/lab1/nodes"), None);
        assert_eq!(t.classify("/lab1/nodes/n-1/other"), None);
        assert_eq!(t.classify("/other/nodes/n-1"), None);
    }

    #[test]
    fn location_names_split_at_the_last_dash() {
        assert_eq!(
            parse_location("n-1-0000000012"),
            Some((NodeId::new("n-1").expect("id"), 12))
        );
        assert_eq!(parse_location("nodash"), None);
    }
}
