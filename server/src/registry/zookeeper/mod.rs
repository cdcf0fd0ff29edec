//! The registry on ZooKeeper, as the design this project started from kept it — each node an
//! ephemeral znode that disappears with its session — with what that design lacked: an
//! ordered index of loads kept current by watches (the least-loaded answer is O(log N) in
//! memory, with no scan and no lock in ZooKeeper), reservations so that a login storm spreads,
//! and a reaper that hands each dead node to exactly one survivor. The suite in
//! `registry::suite` runs against it as against the others.
//!
//! The znodes are listed in [`tree`]. Who writes what:
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
    _cleanup: Option<Arc<test_support::DeleteOnDrop>>,
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

async fn connect(hosts: &str, timeout: Duration) -> RegistryResult<zk::Client> {
    zk::Client::connector()
        .with_session_timeout(timeout)
        .with_connection_timeout(Duration::from_secs(3))
        .connect(hosts)
        .await
        .map_err(|e| RegistryError::Unavailable(format!("zookeeper at {hosts}: {e}")))
}

async fn write_config(client: &zk::Client, tree: &Tree, lease_ms: u64) -> RegistryResult<()> {
    let bytes = serde_json::to_vec(&ClusterConfig { lease_ms }).unwrap_or_default();
    match client.set_data(&tree.config(), &bytes, None).await {
        Ok(_) => Ok(()),
        Err(zk::Error::NoNode) => match client
            .create(&tree.config(), &bytes, &opts(zk::CreateMode::Persistent))
            .await
        {
            Ok(_) | Err(zk::Error::NodeExists) => Ok(()),
            Err(e) => Err(map_err(e)),
        },
        Err(e) => Err(map_err(e)),
    }
}

/// Keeps the process's own session: a new one when it expires, and, for a controller, the
/// watch that feeds the index (reloaded in full after every reconnect).
async fn keep_main(
    shared: std::sync::Weak<Shared>,
    cancel: CancellationToken,
    mut ready: Option<tokio::sync::oneshot::Sender<()>>,
) {
    let mut fresh = false;
    loop {
        let Some(s) = shared.upgrade() else { return };
        let (client, tree, index, hosts) = (
            s.main.read().clone(),
            s.tree.clone(),
            s.index.clone(),
            s.hosts.clone(),
        );
        drop(s);
        if fresh {
            tracing::info!("zookeeper session renewed");
        }
        let ended = tokio::select! {
            _ = cancel.cancelled() => return,
            ended = follow(&client, &tree, index.as_deref(), &mut ready) => ended,
        };
        tracing::warn!(state = ?ended, "zookeeper session ended; opening a new one");
        let mut backoff = Duration::from_millis(100);
        let client = loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                c = connect(&hosts, MAIN_SESSION_TIMEOUT) => match c {
                    Ok(c) => break c,
                    Err(e) => tracing::warn!(error = %e, "zookeeper unreachable"),
                },
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        };
        let Some(s) = shared.upgrade() else { return };
        *s.main.write() = client;
        fresh = true;
    }
}

/// Follows one session until it ends: for a controller, applies watch events to the index and
/// reloads it after every reconnect. Returns the terminal state.
async fn follow(
    client: &zk::Client,
    tree: &Tree,
    index: Option<&Index>,
    ready: &mut Option<tokio::sync::oneshot::Sender<()>>,
) -> zk::SessionState {
    let Some(index) = index else {
        let mut states = client.state_watcher();
        loop {
            let s = states.changed().await;
            if s.is_terminated() {
                return s;
            }
        }
    };
    let mut watcher = loop {
        match client
            .watch(&tree.nodes(), zk::AddWatchMode::PersistentRecursive)
            .await
        {
            Ok(w) => break w,
            Err(e) if is_transient(&e) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the nodes");
                return client.state();
            }
        }
    };
    let mut reload = true;
    loop {
        if reload {
            match ZkRegistry::read_records(client, tree).await {
                Ok(all) => {
                    index.reload(all);
                    reload = false;
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading the nodes failed; retrying"),
            }
        }
        let event = if reload {
            match tokio::time::timeout(Duration::from_millis(200), watcher.changed()).await {
                Ok(e) => e,
                Err(_) => continue,
            }
        } else {
            watcher.changed().await
        };
        match event.event_type {
            zk::EventType::Session => match event.session_state {
                s if s.is_terminated() => return s,
                zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                    reload = true
                }
                _ => {}
            },
            kind => {
                let Some(what) = tree.classify(&event.path) else {
                    continue;
                };
                let id = match &what {
                    Watched::Record(id) | Watched::Live(id) => id.clone(),
                };
                match (what, kind) {
                    (Watched::Record(_), zk::EventType::NodeDeleted) => {
                        index.remove(&id);
                        continue;
                    }
                    (Watched::Live(_), zk::EventType::NodeDeleted) => index.set_live(&id, false),
                    _ => {}
                }
                match client.get_data(&tree.node(&id)).await {
                    Ok((bytes, stat)) => {
                        if let Ok(record) = NodeRecord::decode(&bytes) {
                            index.apply(&id, snapshot(record, &stat));
                        }
                    }
                    Err(zk::Error::NoNode) => index.remove(&id),
                    Err(e) => {
                        tracing::debug!(error = %e, "reading a node record failed; reloading");
                        reload = true;
                    }
                }
            }
        }
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

/// What the tests of the ZooKeeper registry share: the server they need and a fresh root each.
#[cfg(test)]
pub(crate) mod test_support {
    /// The ZooKeeper the tests use.
    pub const ZOOKEEPER_URL: &str = "zookeeper://127.0.0.1:2181";

    /// Fails the test, naming the service and how to start it, if ZooKeeper does not answer.
    pub async fn require_zookeeper() {
        let up = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            zookeeper_client::Client::connect("127.0.0.1:2181"),
        )
        .await;
        if !matches!(up, Ok(Ok(_))) {
            panic!(
                "ZooKeeper is not reachable at 127.0.0.1:2181; these tests need it. Start it with scripts/services.sh"
            );
        }
    }

    /// A root no other test uses.
    pub fn fresh_prefix(what: &str) -> String {
        format!("test-{what}-{}", uuid::Uuid::new_v4().simple())
    }

    /// Removes a test's tree when dropped (on a thread and runtime of its own, so it works
    /// from any context, even after the test's runtime is gone).
    pub struct DeleteOnDrop(pub String);

    impl Drop for DeleteOnDrop {
        fn drop(&mut self) {
            let prefix = self.0.clone();
            let done = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(super::remove_tree(ZOOKEEPER_URL, &prefix))
                    .map_err(|e| e.to_string())
            })
            .join();
            if !matches!(done, Ok(Ok(()))) {
                eprintln!("could not remove the test tree /{}: {done:?}", self.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::test_support::{DeleteOnDrop, ZOOKEEPER_URL, fresh_prefix, require_zookeeper};
    use super::*;

    async fn fresh(lease_ms: u64) -> ZkRegistry {
        require_zookeeper().await;
        let prefix = fresh_prefix("registry");
        let mut r = ZkRegistry::connect(ZOOKEEPER_URL, &prefix, Some(lease_ms))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        r._cleanup = Some(Arc::new(DeleteOnDrop(prefix)));
        r
    }

    crate::registry_suite!(|lease_ms| async move {
        Arc::new(fresh(lease_ms).await) as crate::registry::SharedRegistry
    });

    fn info(name: &str) -> NodeInfo {
        NodeInfo {
            id: NodeId::new(name).unwrap_or_else(|e| panic!("{e}")),
            ws_url: format!("ws://{name}"),
            http_url: format!("http://{name}"),
            started_at: now_ms(),
        }
    }

    #[test]
    fn urls_become_connect_strings() {
        assert_eq!(
            connect_string("zookeeper://127.0.0.1:2181/")
                .ok()
                .as_deref(),
            Some("127.0.0.1:2181")
        );
        assert_eq!(
            connect_string("zookeeper://a:1,b:2").ok().as_deref(),
            Some("a:1,b:2")
        );
        assert!(connect_string("zookeeper://a:1/chroot").is_err());
        assert!(connect_string("redis://a:1").is_err());
    }

    /// A node registered by one process (its own handle, no index) is answered, located and
    /// reaped by a controller's handle, which learns of it only through its watch.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_controller_follows_nodes_of_other_processes() -> RegistryResult<()> {
        require_zookeeper().await;
        let prefix = fresh_prefix("watch");
        let _cleanup = DeleteOnDrop(prefix.clone());
        let controller = ZkRegistry::connect(ZOOKEEPER_URL, &prefix, Some(1_000)).await?;
        let node_side = ZkRegistry::connect(ZOOKEEPER_URL, &prefix, None).await?;
        let n = info("far");
        let lease = node_side.register(&n).await?;
        assert_eq!(lease.lease_ms, 1_000, "the node takes the cluster's lease");
        let a = eventually(|| async { controller.assign(&[]).await.ok().flatten() }).await;
        assert_eq!(a.node, n.id);
        assert!(
            node_side
                .attach(&n.id, UserId(7), Some(&a.reservation))
                .await?
        );
        eventually(|| async {
            let s = controller.nodes().await.ok()?;
            (s.first().map(|s| (s.connections, s.reserved)) == Some((1, 0))).then_some(())
        })
        .await;
        assert_eq!(
            controller.locate(&[UserId(7)]).await?,
            vec![vec![n.id.clone()]]
        );
        // The node process dies: its session is gone, then its node and user with it.
        drop(node_side);
        eventually(|| async { controller.nodes().await.ok()?.is_empty().then_some(()) }).await;
        assert!(controller.online(&[UserId(7)]).await?.is_empty());
        let dead = eventually(|| async {
            let d = controller.reap(now_ms()).await.ok()?;
            (!d.is_empty()).then_some(d)
        })
        .await;
        assert_eq!(dead[0].node, n.id);
        assert_eq!(dead[0].went_offline, vec![UserId(7)]);
        Ok(())
    }

    /// Two nodes attaching the same user at once: exactly one says the user came online.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_of_two_simultaneous_first_devices_announces() -> RegistryResult<()> {
        let r = fresh(60_000).await;
        let (a, b) = (info("sa"), info("sb"));
        r.register(&a).await?;
        r.register(&b).await?;
        for user in 100..120 {
            let (x, y) = tokio::join!(
                r.attach(&a.id, UserId(user), None),
                r.attach(&b.id, UserId(user), None)
            );
            assert!(x? ^ y?, "user {user}: both or neither announced");
        }
        Ok(())
    }

    /// A node that registers again after its session ended is cleaned up after first, and the
    /// dead incarnation is reported once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn registering_again_reports_the_dead_incarnation() -> RegistryResult<()> {
        let r = fresh(60_000).await;
        let n = info("again");
        let w = r.register(&n).await?.worker_id;
        r.attach(&n.id, UserId(3), None).await?;
        r.session(&n.id)?.close_and_wait().await;
        assert!(matches!(
            r.heartbeat(&n.id, Load::default()).await,
            Err(RegistryError::UnknownNode(_))
        ));
        assert_eq!(
            r.register(&n).await?.worker_id,
            w,
            "the old worker id comes back"
        );
        let dead = r.reap(now_ms()).await?;
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].went_offline, vec![UserId(3)]);
        assert!(r.reap(now_ms()).await?.is_empty());
        assert!(r.attach(&n.id, UserId(3), None).await?);
        Ok(())
    }

    async fn eventually<T, F, Fut>(mut f: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(v) = f().await {
                return v;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
