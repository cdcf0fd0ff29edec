//! The registry on ZooKeeper, as the design this project started from kept it — each node an
//! ephemeral znode that disappears with its session — with what that design lacked: an
//! ordered index of loads kept current by watches (the least-loaded answer is O(log N) in
//! memory, with no scan and no lock in ZooKeeper), reservations so that a login storm spreads,
//! and a reaper that hands each dead node to exactly one survivor. The suite in
//! `registry::suite` runs against it as against the others.
//!
//! Code map: [`tree`] lists the znodes; [`node`] is a node's own session and what it writes;
//! [`index`] the controller's ordered index of loads; `session` connects and keeps the
//! process's main session and the watch; `tests` runs the registry suite and this backend's own.
//!
//! Who writes what:
//! - A node's own session ([`node::NodeSession`]) writes its record, its `live` znode, its
//!   worker id and one location per user it holds. When the session ends (the process died or
//!   froze for a lease, or stopped heartbeating) ZooKeeper removes the ephemerals at once:
//!   `locate` and presence are right without anybody cleaning up.
//! - A controller's handle keeps an [`index::Index`] fed by one persistent recursive watch on
//!   `/R/nodes` (re-read in full after every reconnect, when events may have been missed).
//! - Reapers (controllers and nodes alike) find records whose `live` znode is gone, claim each
//!   with a versioned write (one claim succeeds), announce the users left without a device
//!   anywhere, and delete the record.
//!
//! Writes per device connection: the user's first device on a node writes one multi (its
//! location and `held` entry; plus the user's container when it was removed after the user
//! had been away), later devices write nothing; the node's record is written once per change
//! at most, group-committed (a storm shares writes), plus once per heartbeat. Reads: `locate`
//! is one `sync` and one multi-read for a whole batch of users.
//!
//! Invariants:
//! - `locate` is linearizable with `attach`: an attach returns after its location is
//!   committed, and `locate` syncs the server it reads from with the leader first.
//! - A node is answered by `assign` only while its `live` znode exists, it is live (not
//!   draining) and no reaper claimed it.
//! - A dead node's record is claimed by one versioned write; only the claimant reports it.

mod index;
mod node;
mod session;
#[cfg(test)]
mod tests;
mod tree;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use protocol::http::{AssignResponse, NodeState, NodeStatus};
use protocol::{Millis, NodeId, UserId};
use tokio_util::sync::CancellationToken;
use zookeeper_client as zk;

use self::index::{Index, Snapshot};
use self::node::{NodeSession, ignore_no_node};
use self::session::{connect, keep_main, write_config};
use self::tree::{ClusterConfig, NodeRecord, Tree, Watched, is_transient, map_err, opts};
use super::{
    DEFAULT_LEASE_MS, DEFAULT_RESERVATION_MS, DeadNode, Lease, Load, NodeInfo, Registry,
    RegistryError, RegistryResult,
};
use crate::ids::now_ms;

/// The root znode when the URL names no prefix.
pub const DEFAULT_PREFIX: &str = "chat";

/// Highest worker id handed out (1023 stays the embedded controller's).
const MAX_WORKER: u16 = 1022;

/// A claim older than this whose reaper did not finish is taken over.
const STALE_CLAIM_MS: Millis = 30_000;

/// Largest number of operations put in one multi.
const MULTI_CHUNK: usize = 500;

/// How long the process's own session may stay away before ZooKeeper expires it.
const MAIN_SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Turns `zookeeper://host:port[,host:port…][/]` into the client's connect string.
pub fn connect_string(url: &str) -> Result<String, RegistryError> {
    let hosts = url
        .strip_prefix("zookeeper://")
        .ok_or_else(|| RegistryError::Internal(format!("not a zookeeper:// URL: {url}")))?
        .trim_end_matches('/');
    if hosts.is_empty() || hosts.contains('/') {
        return Err(RegistryError::Internal(format!(
            "expected zookeeper://HOST:PORT[,HOST:PORT…], got {url}"
        )));
    }
    Ok(hosts.to_owned())
}

struct Shared {
    hosts: String,
    tree: Tree,
    /// The process's own session: reads, reaps, the controller's worker id, the watch.
    main: RwLock<zk::Client>,
    /// Nodes registered through this handle, each on a session of its own.
    nodes: Mutex<HashMap<NodeId, Arc<NodeSession>>>,
    /// A controller's index (handles opened with the cluster's lease).
    index: Option<Arc<Index>>,
    /// This handle's reservation tag and reaper name.
    tag: String,
    /// Dead earlier incarnations found by `register`, for the next `reap` to report.
    found_dead: Mutex<Vec<DeadNode>>,
    /// The worker id this handle's controller holds.
    controller_worker: Mutex<Option<u16>>,
    cancel: CancellationToken,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.cancel.cancel();
        for (_, s) in self.nodes.lock().drain() {
            s.close();
        }
    }
}

/// The ZooKeeper registry. Cheap to clone.
#[derive(Clone)]
pub struct ZkRegistry {
    shared: Arc<Shared>,
    /// Tests: removes the test's tree when the last clone goes.
    #[cfg(test)]
    _cleanup: Option<Arc<tests::support::DeleteOnDrop>>,
}

impl ZkRegistry {
    /// Connects to the ensemble in `url` (`zookeeper://HOST:PORT`) under `/{prefix}`. A
    /// controller passes the cluster's lease (written for nodes to take) and gets the index
    /// that answers `assign`; nodes pass `None`.
    pub async fn connect(
        url: &str,
        prefix: &str,
        cluster_lease_ms: Option<u64>,
    ) -> RegistryResult<ZkRegistry> {
        let hosts = connect_string(url)?;
        let tree = Tree::new(prefix);
        let main = connect(&hosts, MAIN_SESSION_TIMEOUT).await?;
        for dir in [
            tree.root().to_owned(),
            tree.nodes(),
            tree.held_dir(),
            tree.users(),
            tree.workers(),
        ] {
            match main
                .create(&dir, &[], &opts(zk::CreateMode::Persistent))
                .await
            {
                Ok(_) | Err(zk::Error::NodeExists) => {}
                Err(e) => return Err(map_err(e)),
            }
        }
        if let Some(lease_ms) = cluster_lease_ms {
            write_config(&main, &tree, lease_ms).await?;
        }
        let tag = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let index =
            cluster_lease_ms.map(|_| Arc::new(Index::new(tag.clone(), DEFAULT_RESERVATION_MS)));
        let shared = Arc::new(Shared {
            hosts,
            tree,
            main: RwLock::new(main),
            nodes: Mutex::new(HashMap::new()),
            index,
            tag,
            found_dead: Mutex::new(Vec::new()),
            controller_worker: Mutex::new(None),
            cancel: CancellationToken::new(),
        });
        let watched = if shared.index.is_some() {
            Some(tokio::sync::oneshot::channel())
        } else {
            None
        };
        let (ready_tx, ready_rx) = match watched {
            Some((tx, rx)) => (Some(tx), Some(rx)),
            None => (None, None),
        };
        tokio::spawn(keep_main(
            Arc::downgrade(&shared),
            shared.cancel.clone(),
            ready_tx,
        ));
        if let Some(rx) = ready_rx {
            // The index is loaded before the first answer.
            let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
        }
        Ok(ZkRegistry {
            shared,
            #[cfg(test)]
            _cleanup: None,
        })
    }

    fn main(&self) -> zk::Client {
        self.shared.main.read().clone()
    }

    fn tree(&self) -> &Tree {
        &self.shared.tree
    }

    fn session(&self, node: &NodeId) -> RegistryResult<Arc<NodeSession>> {
        match self.shared.nodes.lock().get(node) {
            Some(s) if !s.is_gone() => Ok(s.clone()),
            _ => Err(RegistryError::UnknownNode(node.clone())),
        }
    }

    /// The cluster's node lease, as a controller wrote it.
    async fn cluster_lease(&self) -> RegistryResult<u64> {
        match self.main().get_data(&self.tree().config()).await {
            Ok((bytes, _)) => Ok(serde_json::from_slice::<ClusterConfig>(&bytes)
                .map(|c| c.lease_ms)
                .unwrap_or(DEFAULT_LEASE_MS)),
            Err(zk::Error::NoNode) => Ok(DEFAULT_LEASE_MS),
            Err(e) => Err(map_err(e)),
        }
    }

    /// Takes a worker id on `client`'s session: `preferred` if free, else the lowest free.
    async fn claim_worker(
        &self,
        client: &zk::Client,
        preferred: Option<u16>,
        owner: &str,
    ) -> RegistryResult<u16> {
        for _ in 0..64 {
            let taken: std::collections::HashSet<u16> = client
                .list_children(&self.tree().workers())
                .await
                .map_err(map_err)?
                .iter()
                .filter_map(|w| w.parse().ok())
                .collect();
            let pick = preferred
                .filter(|w| !taken.contains(w))
                .or_else(|| (0..=MAX_WORKER).find(|w| !taken.contains(w)))
                .ok_or_else(|| RegistryError::Internal("no free worker id".into()))?;
            match client
                .create(
                    &self.tree().worker(pick),
                    owner.as_bytes(),
                    &opts(zk::CreateMode::Ephemeral),
                )
                .await
            {
                Ok(_) => return Ok(pick),
                Err(zk::Error::NodeExists) => continue,
                Err(e) => return Err(map_err(e)),
            }
        }
        Err(RegistryError::Internal(
            "zookeeper: worker ids kept being taken".into(),
        ))
    }

    /// Cleans up after an earlier incarnation of `node` whose record is still there, before
    /// the node registers again; what it finds is reported by the next `reap`.
    async fn clear_previous(&self, node: &NodeId) -> RegistryResult<Option<u16>> {
        let main = self.main();
        for _ in 0..100 {
            let (bytes, stat) = match main.get_data(&self.tree().node(node)).await {
                Ok(v) => v,
                Err(zk::Error::NoNode) => return Ok(None),
                Err(e) => return Err(map_err(e)),
            };
            let record = NodeRecord::decode(&bytes)?;
            if stat.num_children > 0 {
                // The old session still lives (a process that lost its registration but not
                // its session, or another process with the same id): take its place.
                main.delete(&self.tree().live(node), None)
                    .await
                    .or_else(ignore_no_node)?;
                continue;
            }
            match self
                .reap_claimed(node, record.clone(), stat.version)
                .await?
            {
                Some(dead) => {
                    self.shared.found_dead.lock().push(dead);
                    return Ok(Some(record.worker));
                }
                // Another reaper has it: wait for it to finish.
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        Err(RegistryError::Unavailable(format!(
            "zookeeper: the previous registration of {node} is still being cleaned up"
        )))
    }

    /// Claims a dead node's record (a versioned write only one reaper wins), finds the users
    /// it leaves with no device anywhere, and removes what is left of it. `None` if another
    /// reaper holds the claim.
    async fn reap_claimed(
        &self,
        node: &NodeId,
        mut record: NodeRecord,
        version: i32,
    ) -> RegistryResult<Option<DeadNode>> {
        let main = self.main();
        let now = now_ms();
        if let Some((_, at)) = &record.reaping
            && now - at < STALE_CLAIM_MS
        {
            return Ok(None);
        }
        record.reaping = Some((self.shared.tag.clone(), now));
        match main
            .set_data(&self.tree().node(node), &record.encode(), Some(version))
            .await
        {
            Ok(_) => {}
            Err(zk::Error::BadVersion | zk::Error::NoNode) => return Ok(None),
            Err(e) => return Err(map_err(e)),
        }
        if let Some(index) = &self.shared.index {
            index.set_live(node, false);
        }
        let users: Vec<UserId> = match main.list_children(&self.tree().held(node)).await {
            Ok(names) => names
                .iter()
                .filter_map(|n| n.parse().ok().map(UserId))
                .collect(),
            Err(zk::Error::NoNode) => Vec::new(),
            Err(e) => return Err(map_err(e)),
        };
        let mut went_offline = Vec::new();
        for chunk in users.chunks(MULTI_CHUNK) {
            let located = self.read_locations(chunk).await?;
            went_offline.extend(
                chunk
                    .iter()
                    .zip(located)
                    .filter(|(_, nodes)| nodes.is_empty())
                    .map(|(u, _)| *u),
            );
        }
        went_offline.sort();
        for chunk in users.chunks(MULTI_CHUNK) {
            let mut multi = main.new_multi_writer();
            for u in chunk {
                multi
                    .add_delete(&self.tree().held_user(node, *u), None)
                    .map_err(map_err)?;
            }
            if multi.commit().await.is_err() {
                // Some were gone already: one by one.
                for u in chunk {
                    main.delete(&self.tree().held_user(node, *u), None)
                        .await
                        .or_else(ignore_no_node)?;
                }
            }
        }
        main.delete(&self.tree().held(node), None)
            .await
            .or_else(ignore_no_node)?;
        main.delete(&self.tree().node(node), None)
            .await
            .or_else(ignore_no_node)?;
        if let Some(index) = &self.shared.index {
            index.remove(node);
        }
        Ok(Some(DeadNode {
            node: node.clone(),
            last_heartbeat: record.hb,
            unpublished_since: record.unpub,
            went_offline,
        }))
    }

    /// For each user, the nodes holding a location of theirs: one sync, one multi-read.
    async fn read_locations(&self, users: &[UserId]) -> RegistryResult<Vec<Vec<NodeId>>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let main = self.main();
        main.sync(&self.tree().users()).await.map_err(map_err)?;
        let mut out = Vec::with_capacity(users.len());
        for chunk in users.chunks(MULTI_CHUNK) {
            let mut reader = main.new_multi_reader();
            for u in chunk {
                reader
                    .add_get_children(&self.tree().user(*u))
                    .map_err(map_err)?;
            }
            for result in reader.commit().await.map_err(map_err)? {
                out.push(match result {
                    zk::MultiReadResult::Children { children } => {
                        let mut nodes: Vec<NodeId> = children
                            .iter()
                            .filter_map(|c| tree::parse_location(c).map(|(n, _)| n))
                            .collect();
                        nodes.sort();
                        nodes.dedup();
                        nodes
                    }
                    zk::MultiReadResult::Error {
                        err: zk::Error::NoNode,
                    } => Vec::new(),
                    zk::MultiReadResult::Error { err } => return Err(map_err(err)),
                    other => {
                        return Err(RegistryError::Internal(format!(
                            "zookeeper: unexpected read result {other:?}"
                        )));
                    }
                });
            }
        }
        Ok(out)
    }

    /// Every node record with its stat, in one listing and one multi-read.
    async fn read_records(
        client: &zk::Client,
        tree: &Tree,
    ) -> RegistryResult<Vec<(NodeId, Snapshot)>> {
        let names = client.list_children(&tree.nodes()).await.map_err(map_err)?;
        let ids: Vec<NodeId> = names.iter().filter_map(|n| NodeId::new(n).ok()).collect();
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(MULTI_CHUNK) {
            let mut reader = client.new_multi_reader();
            for id in chunk {
                reader.add_get_data(&tree.node(id)).map_err(map_err)?;
            }
            for (id, result) in chunk.iter().zip(reader.commit().await.map_err(map_err)?) {
                if let zk::MultiReadResult::Data { data, stat } = result
                    && let Ok(record) = NodeRecord::decode(&data)
                {
                    out.push((id.clone(), snapshot(record, &stat)));
                }
            }
        }
        Ok(out)
    }

    /// A controller's worker id, held by this handle's session (taken again, possibly another
    /// one, if the session expired). Also says the cluster's lease again.
    pub async fn claim_controller_worker(&self, owner: &str, lease_ms: u64) -> RegistryResult<u16> {
        let main = self.main();
        write_config(&main, self.tree(), lease_ms).await?;
        let held = *self.shared.controller_worker.lock();
        if let Some(w) = held {
            match main.check_stat(&self.tree().worker(w)).await {
                Ok(Some(stat)) if stat.ephemeral_owner == main.session_id().0 => return Ok(w),
                Ok(_) => {}
                Err(e) => return Err(map_err(e)),
            }
        }
        let w = self
            .claim_worker(&main, held, &format!("controller {owner}"))
            .await?;
        *self.shared.controller_worker.lock() = Some(w);
        Ok(w)
    }

    /// Gives the controller's worker id back.
    pub async fn release_controller_worker(&self, _owner: &str) -> RegistryResult<()> {
        let held = self.shared.controller_worker.lock().take();
        if let Some(w) = held {
            self.main()
                .delete(&self.tree().worker(w), None)
                .await
                .or_else(ignore_no_node)?;
        }
        Ok(())
    }
}

fn snapshot(record: NodeRecord, stat: &zk::Stat) -> Snapshot {
    Snapshot {
        record,
        mzxid: stat.mzxid,
        pzxid: stat.pzxid,
        czxid: stat.czxid,
        live: stat.num_children > 0,
        version: stat.version,
    }
}

#[async_trait]
impl Registry for ZkRegistry {
    fn kind(&self) -> &'static str {
        "zookeeper"
    }

    async fn register(&self, node: &NodeInfo) -> RegistryResult<Lease> {
        if let Ok(s) = self.session(&node.id) {
            let (ws, http, started) = (node.ws_url.clone(), node.http_url.clone(), node.started_at);
            s.update(|r| {
                r.ws = ws;
                r.http = http;
                r.started = started;
                r.hb = now_ms();
            })
            .await?;
            return Ok(Lease {
                worker_id: s.worker,
                lease_ms: s.lease_ms,
            });
        }
        let lease_ms = self.cluster_lease().await?;
        let preferred = self.clear_previous(&node.id).await?;
        let client = connect(&self.shared.hosts, Duration::from_millis(lease_ms)).await?;
        let worker = self
            .claim_worker(&client, preferred, node.id.as_str())
            .await?;
        let record = NodeRecord {
            ws: node.ws_url.clone(),
            http: node.http_url.clone(),
            started: node.started_at,
            state: NodeState::Live,
            worker,
            conns: 0,
            used: Default::default(),
            hb: now_ms(),
            unpub: None,
            reaping: None,
        };
        let mut multi = client.new_multi_writer();
        let tree = self.tree();
        multi
            .add_create(
                &tree.node(&node.id),
                &record.encode(),
                &opts(zk::CreateMode::Persistent),
            )
            .map_err(map_err)?;
        multi
            .add_create(&tree.live(&node.id), &[], &opts(zk::CreateMode::Ephemeral))
            .map_err(map_err)?;
        multi
            .add_create(&tree.held(&node.id), &[], &opts(zk::CreateMode::Persistent))
            .map_err(map_err)?;
        let results = multi.commit().await.map_err(|e| map_err(e.into()))?;
        let stat = match results.into_iter().next() {
            Some(zk::MultiWriteResult::Create { stat, .. }) => stat,
            other => {
                return Err(RegistryError::Internal(format!(
                    "zookeeper: unexpected multi result {other:?}"
                )));
            }
        };
        if let Some(index) = &self.shared.index {
            let mut snap = snapshot(record.clone(), &stat);
            snap.live = true;
            index.apply(&node.id, snap);
        }
        let session = NodeSession::start(
            node.id.clone(),
            tree.clone(),
            client,
            record,
            stat.version,
            lease_ms,
            self.shared.index.clone(),
        );
        if let Some(old) = self.shared.nodes.lock().insert(node.id.clone(), session) {
            old.close();
        }
        Ok(Lease {
            worker_id: worker,
            lease_ms,
        })
    }

    async fn heartbeat(&self, node: &NodeId, load: Load) -> RegistryResult<()> {
        self.session(node)?
            .heartbeat(load.connections, load.unpublished_since)
            .await
    }

    async fn set_state(&self, node: &NodeId, state: NodeState) -> RegistryResult<()> {
        self.session(node)?.update(|r| r.state = state).await
    }

    async fn deregister(&self, node: &NodeId) -> RegistryResult<Vec<UserId>> {
        let session = self.shared.nodes.lock().remove(node);
        match session {
            Some(s) => s.close_and_wait().await,
            None => {
                self.main()
                    .delete(&self.tree().live(node), None)
                    .await
                    .or_else(ignore_no_node)?;
            }
        }
        for _ in 0..100 {
            let (bytes, stat) = match self.main().get_data(&self.tree().node(node)).await {
                Ok(v) => v,
                Err(zk::Error::NoNode) => return Ok(Vec::new()),
                Err(e) => return Err(map_err(e)),
            };
            if let Some(dead) = self
                .reap_claimed(node, NodeRecord::decode(&bytes)?, stat.version)
                .await?
            {
                return Ok(dead.went_offline);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Vec::new())
    }

    async fn attach(
        &self,
        node: &NodeId,
        user: UserId,
        reservation: Option<&str>,
    ) -> RegistryResult<bool> {
        self.session(node)?.attach(user, reservation).await
    }

    async fn detach(&self, node: &NodeId, user: UserId) -> RegistryResult<bool> {
        match self.session(node) {
            Ok(s) => s.detach(user).await,
            // Gone with its session: its locations went with it.
            Err(_) => Ok(self.read_locations(&[user]).await?[0].is_empty()),
        }
    }

    async fn locate(&self, users: &[UserId]) -> RegistryResult<Vec<Vec<NodeId>>> {
        self.read_locations(users).await
    }

    async fn online(&self, users: &[UserId]) -> RegistryResult<Vec<UserId>> {
        let located = self.read_locations(users).await?;
        Ok(users
            .iter()
            .zip(located)
            .filter(|(_, nodes)| !nodes.is_empty())
            .map(|(u, _)| *u)
            .collect())
    }

    async fn assign(&self, exclude: &[NodeId]) -> RegistryResult<Option<AssignResponse>> {
        let index = self.shared.index.as_ref().ok_or_else(|| {
            RegistryError::Internal("only a controller's zookeeper registry answers assign".into())
        })?;
        Ok(index.assign(exclude, now_ms()))
    }

    async fn nodes(&self) -> RegistryResult<Vec<NodeStatus>> {
        if let Some(index) = &self.shared.index {
            return Ok(index.statuses(now_ms()));
        }
        let mut list: Vec<NodeStatus> = Self::read_records(&self.main(), self.tree())
            .await?
            .into_iter()
            .filter(|(_, s)| s.live)
            .map(|(id, s)| NodeStatus {
                id,
                ws_url: s.record.ws,
                http_url: s.record.http,
                connections: s.record.conns,
                reserved: 0,
                started_at: s.record.started,
                last_heartbeat: s.record.hb,
                state: s.record.state,
            })
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(list)
    }

    async fn reap(&self, _now: Millis) -> RegistryResult<Vec<DeadNode>> {
        let mut dead: Vec<DeadNode> = std::mem::take(&mut *self.shared.found_dead.lock());
        let records = Self::read_records(&self.main(), self.tree()).await?;
        for (id, snap) in records {
            if snap.live {
                continue;
            }
            if let Some(d) = self.reap_claimed(&id, snap.record, snap.version).await? {
                dead.push(d);
            }
        }
        Ok(dead)
    }
}

/// Removes a cluster's whole tree (`/{prefix}` and everything under it), for test clusters
/// and lab runs that leave nothing behind. Ephemerals of sessions still open are removed too.
pub async fn remove_tree(url: &str, prefix: &str) -> RegistryResult<()> {
    let client = connect(&connect_string(url)?, Duration::from_secs(5)).await?;
    let root = Tree::new(prefix).root().to_owned();
    // Depth first; a znode that gained a child meanwhile (a session still writing) is tried
    // again a few times.
    for _ in 0..5 {
        let mut stack = vec![(root.clone(), false)];
        let mut clean = true;
        while let Some((path, expanded)) = stack.pop() {
            if !expanded {
                match client.list_children(&path).await {
                    Ok(children) => {
                        stack.push((path.clone(), true));
                        stack.extend(children.into_iter().map(|c| (format!("{path}/{c}"), false)));
                    }
                    Err(zk::Error::NoNode) => {}
                    Err(e) => return Err(map_err(e)),
                }
                continue;
            }
            match client.delete(&path, None).await {
                Ok(()) | Err(zk::Error::NoNode) => {}
                Err(zk::Error::NotEmpty) => clean = false,
                Err(e) => return Err(map_err(e)),
            }
        }
        if clean {
            return Ok(());
        }
    }
    Err(RegistryError::Internal(format!(
        "zookeeper: {root} kept changing while removed"
    )))
}
