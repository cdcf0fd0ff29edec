//! The registry kept in one process: the controller's, in the embedded setup (nodes reach it
//! over the link). One short critical section per call, never held across an await; the
//! least-loaded answer comes from an ordered index of `(load, node)`, so it costs O(log N).

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;
use parking_lot::Mutex;
use protocol::http::{AssignResponse, NodeState, NodeStatus};
use protocol::{Millis, NodeId, UserId};

use super::{
    DEFAULT_LEASE_MS, DEFAULT_RESERVATION_MS, DeadNode, Lease, Load, NodeInfo, Registry,
    RegistryError, RegistryResult,
};
use crate::ids::now_ms;

/// Worker ids 0..=1022 go to nodes; 1023 is the embedded controller's.
pub const CONTROLLER_WORKER_ID: u16 = 1023;

struct NodeEntry {
    info: NodeInfo,
    state: NodeState,
    worker_id: u16,
    connections: u64,
    reserved: u64,
    last_heartbeat: Millis,
    unpublished_since: Option<Millis>,
    /// Devices per user on this node: what `locate` answers and what dies with the node.
    users: HashMap<UserId, u32>,
}

impl NodeEntry {
    fn load(&self) -> u64 {
        self.connections + self.reserved
    }
}

#[derive(Default)]
struct Inner {
    nodes: HashMap<NodeId, NodeEntry>,
    /// `(connections + reserved, node)` of every live node: the least-loaded is the first.
    by_load: BTreeSet<(u64, NodeId)>,
    /// Nodes holding a device of each user, with device counts.
    users: HashMap<UserId, Vec<(NodeId, u32)>>,
    /// Outstanding reservations: token → (node, expiry).
    reservations: HashMap<String, (NodeId, Millis)>,
    /// The same, by expiry, to give slots back in order.
    reservation_expiry: BTreeSet<(Millis, String)>,
    workers_in_use: BTreeSet<u16>,
}

impl Inner {
    fn reindex(&mut self, id: &NodeId, before: Option<(u64, NodeState)>) {
        if let Some((load, NodeState::Live)) = before {
            self.by_load.remove(&(load, id.clone()));
        }
        if let Some(n) = self.nodes.get(id)
            && n.state == NodeState::Live
        {
            self.by_load.insert((n.load(), id.clone()));
        }
    }

    fn snapshot(&self, id: &NodeId) -> Option<(u64, NodeState)> {
        self.nodes.get(id).map(|n| (n.load(), n.state))
    }

    fn expire_reservations(&mut self, now: Millis) {
        while let Some((at, token)) = self.reservation_expiry.first().cloned() {
            if at > now {
                break;
            }
            self.reservation_expiry.remove(&(at, token.clone()));
            if let Some((node, _)) = self.reservations.remove(&token) {
                let before = self.snapshot(&node);
                if let Some(n) = self.nodes.get_mut(&node) {
                    n.reserved = n.reserved.saturating_sub(1);
                }
                self.reindex(&node, before);
            }
        }
    }

    /// Removes a node and its devices; returns what a survivor needs to clean up after it.
    fn remove(&mut self, id: &NodeId) -> Option<DeadNode> {
        let before = self.snapshot(id);
        let entry = self.nodes.remove(id)?;
        if let Some((load, NodeState::Live)) = before {
            self.by_load.remove(&(load, id.clone()));
        }
        self.workers_in_use.remove(&entry.worker_id);
        let mut went_offline = Vec::new();
        for user in entry.users.keys() {
            if let Some(list) = self.users.get_mut(user) {
                list.retain(|(n, _)| n != id);
                if list.is_empty() {
                    self.users.remove(user);
                    went_offline.push(*user);
                }
            }
        }
        went_offline.sort();
        let tokens: Vec<String> = self
            .reservations
            .iter()
            .filter(|(_, (n, _))| n == id)
            .map(|(t, _)| t.clone())
            .collect();
        for t in tokens {
            if let Some((_, at)) = self.reservations.remove(&t) {
                self.reservation_expiry.remove(&(at, t));
            }
        }
        Some(DeadNode {
            node: id.clone(),
            last_heartbeat: entry.last_heartbeat,
            unpublished_since: entry.unpublished_since,
            went_offline,
        })
    }

    fn status(&self, n: &NodeEntry) -> NodeStatus {
        NodeStatus {
            id: n.info.id.clone(),
            ws_url: n.info.ws_url.clone(),
            http_url: n.info.http_url.clone(),
            connections: n.connections,
            reserved: n.reserved,
            started_at: n.info.started_at,
            last_heartbeat: n.last_heartbeat,
            state: n.state,
        }
    }
}

/// The in-process registry.
pub struct MemoryRegistry {
    inner: Mutex<Inner>,
    lease_ms: u64,
    reservation_ms: u64,
    clock: fn() -> Millis,
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        Self::new(DEFAULT_LEASE_MS)
    }
}

impl MemoryRegistry {
    /// A registry with the given node lease.
    pub fn new(lease_ms: u64) -> Self {
        MemoryRegistry {
            inner: Mutex::new(Inner::default()),
            lease_ms,
            reservation_ms: DEFAULT_RESERVATION_MS,
            clock: now_ms,
        }
    }

    /// The nodes holding a device of any of `users`, but `except`: a routed publish's targets,
    /// looked up in the same critical section as `attach` changes them.
    pub fn nodes_of(&self, users: &[UserId], except: Option<&NodeId>) -> Vec<NodeId> {
        let g = self.inner.lock();
        let mut out: Vec<NodeId> = Vec::new();
        for u in users {
            for (n, _) in g.users.get(u).map(Vec::as_slice).unwrap_or_default() {
                if Some(n) != except && !out.contains(n) {
                    out.push(n.clone());
                }
            }
        }
        out
    }

    /// Removes a node at once, as when its link to the controller dropped: a process that
    /// closed its socket is dead or will register again.
    pub fn remove_node(&self, id: &NodeId) -> Option<DeadNode> {
        self.inner.lock().remove(id)
    }

    fn now(&self) -> Millis {
        (self.clock)()
    }

    fn expired(&self, n: &NodeEntry, now: Millis) -> bool {
        now - n.last_heartbeat > self.lease_ms as i64
    }
}

#[async_trait]
impl Registry for MemoryRegistry {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn register(&self, node: &NodeInfo) -> RegistryResult<Lease> {
        let now = self.now();
        let mut g = self.inner.lock();
        let inner = &mut *g;
        if let Some(existing) = inner.nodes.get_mut(&node.id) {
            existing.info = node.clone();
            existing.last_heartbeat = now;
            return Ok(Lease {
                worker_id: existing.worker_id,
                lease_ms: self.lease_ms,
            });
        }
        let worker_id = (0..CONTROLLER_WORKER_ID)
            .find(|w| !inner.workers_in_use.contains(w))
            .ok_or_else(|| RegistryError::Internal("no free worker id".into()))?;
        inner.workers_in_use.insert(worker_id);
        inner.nodes.insert(
            node.id.clone(),
            NodeEntry {
                info: node.clone(),
                state: NodeState::Live,
                worker_id,
                connections: 0,
                reserved: 0,
                last_heartbeat: now,
                unpublished_since: None,
                users: HashMap::new(),
            },
        );
        inner.reindex(&node.id, None);
        Ok(Lease {
            worker_id,
            lease_ms: self.lease_ms,
        })
    }

    async fn heartbeat(&self, node: &NodeId, load: Load) -> RegistryResult<()> {
        let now = self.now();
        let mut g = self.inner.lock();
        let before = g.snapshot(node);
        let n = g
            .nodes
            .get_mut(node)
            .ok_or_else(|| RegistryError::UnknownNode(node.clone()))?;
        n.connections = load.connections;
        n.unpublished_since = load.unpublished_since;
        n.last_heartbeat = now;
        g.reindex(node, before);
        g.expire_reservations(now);
        Ok(())
    }

    async fn set_state(&self, node: &NodeId, state: NodeState) -> RegistryResult<()> {
        let mut g = self.inner.lock();
        let before = g.snapshot(node);
        let n = g
            .nodes
            .get_mut(node)
            .ok_or_else(|| RegistryError::UnknownNode(node.clone()))?;
        n.state = state;
        g.reindex(node, before);
        Ok(())
    }

    async fn deregister(&self, node: &NodeId) -> RegistryResult<Vec<UserId>> {
        Ok(self
            .inner
            .lock()
            .remove(node)
            .map(|d| d.went_offline)
            .unwrap_or_default())
    }

    async fn attach(
        &self,
        node: &NodeId,
        user: UserId,
        reservation: Option<&str>,
    ) -> RegistryResult<bool> {
        let mut g = self.inner.lock();
        let inner = &mut *g;
        let before = inner.snapshot(node);
        let used_reservation = match reservation {
            Some(token) => match inner.reservations.get(token) {
                Some((n, _)) if n == node => {
                    if let Some((_, at)) = inner.reservations.remove(token) {
                        inner.reservation_expiry.remove(&(at, token.to_owned()));
                    }
                    true
                }
                _ => false,
            },
            None => false,
        };
        let n = inner
            .nodes
            .get_mut(node)
            .ok_or_else(|| RegistryError::UnknownNode(node.clone()))?;
        if used_reservation {
            n.reserved = n.reserved.saturating_sub(1);
        }
        n.connections += 1;
        *n.users.entry(user).or_insert(0) += 1;
        let list = inner.users.entry(user).or_default();
        let first = list.is_empty();
        match list.iter_mut().find(|(id, _)| id == node) {
            Some((_, c)) => *c += 1,
            None => list.push((node.clone(), 1)),
        }
        inner.reindex(node, before);
        Ok(first)
    }

    async fn detach(&self, node: &NodeId, user: UserId) -> RegistryResult<bool> {
        let mut g = self.inner.lock();
        let inner = &mut *g;
        let before = inner.snapshot(node);
        let Some(n) = inner.nodes.get_mut(node) else {
            // Already reaped: its devices were forgotten with it.
            return Ok(!inner.users.contains_key(&user));
        };
        n.connections = n.connections.saturating_sub(1);
        if let Some(c) = n.users.get_mut(&user) {
            *c -= 1;
            if *c == 0 {
                n.users.remove(&user);
            }
        }
        let mut last = false;
        if let Some(list) = inner.users.get_mut(&user) {
            if let Some(pos) = list.iter().position(|(id, _)| id == node) {
                list[pos].1 -= 1;
                if list[pos].1 == 0 {
                    list.swap_remove(pos);
                }
            }
            if list.is_empty() {
                inner.users.remove(&user);
                last = true;
            }
        }
        inner.reindex(node, before);
        Ok(last)
    }

    async fn locate(&self, users: &[UserId]) -> RegistryResult<Vec<Vec<NodeId>>> {
        let g = self.inner.lock();
        Ok(users
            .iter()
            .map(|u| {
                g.users
                    .get(u)
                    .map(|l| l.iter().map(|(n, _)| n.clone()).collect())
                    .unwrap_or_default()
            })
            .collect())
    }

    async fn online(&self, users: &[UserId]) -> RegistryResult<Vec<UserId>> {
        let g = self.inner.lock();
        Ok(users
            .iter()
            .filter(|u| g.users.contains_key(u))
            .copied()
            .collect())
    }

    async fn assign(&self, exclude: &[NodeId]) -> RegistryResult<Option<AssignResponse>> {
        let now = self.now();
        let mut g = self.inner.lock();
        let inner = &mut *g;
        inner.expire_reservations(now);
        // Walk from the least loaded; only excluded or lapsed nodes are skipped, so this is
        // O(log N + skipped).
        let chosen = inner
            .by_load
            .iter()
            .map(|(_, id)| id)
            .find(|id| {
                !exclude.contains(id) && inner.nodes.get(*id).is_some_and(|n| !self.expired(n, now))
            })
            .cloned();
        let Some(id) = chosen else {
            return Ok(None);
        };
        let before = inner.snapshot(&id);
        let token = uuid::Uuid::new_v4().simple().to_string();
        let expires_at = now + self.reservation_ms as i64;
        let Some(n) = inner.nodes.get_mut(&id) else {
            return Ok(None);
        };
        n.reserved += 1;
        let ws_url = n.info.ws_url.clone();
        inner
            .reservations
            .insert(token.clone(), (id.clone(), expires_at));
        inner.reservation_expiry.insert((expires_at, token.clone()));
        inner.reindex(&id, before);
        Ok(Some(AssignResponse {
            node: id,
            ws_url,
            reservation: token,
            expires_at,
        }))
    }

    async fn nodes(&self) -> RegistryResult<Vec<NodeStatus>> {
        let g = self.inner.lock();
        let mut list: Vec<NodeStatus> = g.nodes.values().map(|n| g.status(n)).collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(list)
    }

    async fn reap(&self, now: Millis) -> RegistryResult<Vec<DeadNode>> {
        let mut g = self.inner.lock();
        g.expire_reservations(now);
        let dead: Vec<NodeId> = g
            .nodes
            .values()
            .filter(|n| self.expired(n, now))
            .map(|n| n.info.id.clone())
            .collect();
        Ok(dead.iter().filter_map(|id| g.remove(id)).collect())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    crate::registry_suite!(|lease_ms| async move {
        Arc::new(MemoryRegistry::new(lease_ms)) as crate::registry::SharedRegistry
    });

    #[tokio::test]
    async fn link_drop_removes_a_node_at_once() -> RegistryResult<()> {
        let r = MemoryRegistry::new(60_000);
        let info = NodeInfo {
            id: NodeId::new("n1").map_err(|e| RegistryError::Internal(e.to_string()))?,
            ws_url: "ws://x".into(),
            http_url: "http://x".into(),
            started_at: 0,
        };
        r.register(&info).await?;
        r.attach(&info.id, UserId(5), None).await?;
        let dead = r.remove_node(&info.id).expect("was registered");
        assert_eq!(dead.went_offline, vec![UserId(5)]);
        assert!(r.assign(&[]).await?.is_none());
        assert!(r.online(&[UserId(5)]).await?.is_empty());
        Ok(())
    }
}
