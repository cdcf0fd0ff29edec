//! One registered node's own ZooKeeper session: the ephemerals that live and die with it (its
//! `live` znode, its worker id, one location znode per user it holds), and its record, which it
//! alone writes.
//!
//! - Writes of the record are group-committed: a change bumps a generation and wakes the one
//!   writer task, which writes the latest record and tells every caller waiting for that
//!   generation or an older one. A login storm of a thousand devices is a few writes, not a
//!   thousand; a quiet node writes once per change and once per heartbeat.
//! - Devices are counted here, per user: only a user's first device on the node creates a
//!   location (one multi: the ephemeral location and the `held` entry the reaper reads), only
//!   the last one removes it. One lock per shard of users keeps a user's attach and detach in
//!   order without making other users wait.
//! - The session lasts while the node heartbeats: ZooKeeper expires it when the process stops
//!   answering (killed, frozen), and a watchdog closes it when the process is alive but its
//!   heartbeats stopped for a lease, so a node is gone in both cases as the lease says.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use protocol::{Millis, NodeId, UserId};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use zookeeper_client as zk;

use super::index::{Index, Snapshot, token_parts};
use super::tree::{NodeRecord, Tree, is_transient, map_err, opts, parse_location};
use crate::ids::now_ms;
use crate::registry::{RegistryError, RegistryResult};

/// Shards of the per-user locks.
const USER_SHARDS: usize = 64;
/// How long a write is retried while ZooKeeper cannot be reached before the caller is told.
const RETRY_FOR: Duration = Duration::from_secs(2);
/// Pause between retries.
const RETRY_EVERY: Duration = Duration::from_millis(100);

/// A user's devices on this node and the location znode written for them.
#[derive(Default)]
struct Held {
    devices: u32,
    /// The location znode, once written.
    location: Option<String>,
}

struct Local {
    record: NodeRecord,
    /// Bumped by every change of the record.
    generation: u64,
    users: HashMap<UserId, Held>,
    /// Reservation tokens already counted, with when: a token is counted once.
    tokens: HashMap<String, Millis>,
}

/// What the writer has done.
#[derive(Clone, Copy, Debug, Default)]
struct Written {
    generation: u64,
    version: i32,
    /// The session ended or the record was taken by a reaper: the node must register again.
    gone: bool,
}

/// A registered node's session.
pub(super) struct NodeSession {
    pub id: NodeId,
    pub worker: u16,
    pub lease_ms: u64,
    tree: Tree,
    client: Mutex<Option<zk::Client>>,
    local: Mutex<Local>,
    written: watch::Sender<Written>,
    dirty: Notify,
    last_beat: Mutex<Instant>,
    gone: AtomicBool,
    user_locks: Vec<tokio::sync::Mutex<()>>,
    /// The index of the handle, when it is a controller's: own writes are applied at once.
    index: Option<Arc<Index>>,
    stop: CancellationToken,
}

impl NodeSession {
    /// Takes over a freshly created record (version `version`) on `client`'s session and
    /// starts the writer, the session watcher and the watchdog.
    pub fn start(
        id: NodeId,
        tree: Tree,
        client: zk::Client,
        record: NodeRecord,
        version: i32,
        lease_ms: u64,
        index: Option<Arc<Index>>,
    ) -> Arc<NodeSession> {
        let mut states = client.state_watcher();
        let (written, _) = watch::channel(Written {
            generation: 0,
            version,
            gone: false,
        });
        let s = Arc::new(NodeSession {
            id,
            worker: record.worker,
            lease_ms,
            tree,
            client: Mutex::new(Some(client)),
            local: Mutex::new(Local {
                record,
                generation: 0,
                users: HashMap::new(),
                tokens: HashMap::new(),
            }),
            written,
            dirty: Notify::new(),
            last_beat: Mutex::new(Instant::now()),
            gone: AtomicBool::new(false),
            user_locks: (0..USER_SHARDS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            index,
            stop: CancellationToken::new(),
        });
        let me = s.clone();
        tokio::spawn(async move { me.write_loop().await });
        let me = Arc::downgrade(&s);
        tokio::spawn(async move {
            loop {
                let state = states.changed().await;
                if state.is_terminated() {
                    if let Some(me) = me.upgrade() {
                        tracing::warn!(node = %me.id, ?state, "zookeeper session of the node ended");
                        me.end();
                    }
                    return;
                }
            }
        });
        let me = Arc::downgrade(&s);
        let period = Duration::from_millis((lease_ms / 4).max(25));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(me) = me.upgrade() else { return };
                if me.is_gone() {
                    return;
                }
                if me.last_beat.lock().elapsed() > Duration::from_millis(me.lease_ms) {
                    tracing::warn!(node = %me.id, "no heartbeat for a lease: closing the node's zookeeper session");
                    me.close();
                    return;
                }
            }
        });
        s
    }

    pub fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }

    fn end(&self) {
        self.gone.store(true, Ordering::Release);
        self.written.send_modify(|w| w.gone = true);
        self.stop.cancel();
    }

    /// Closes the session: ZooKeeper removes its ephemerals (the `live` znode, the worker id,
    /// every location) at once. Returns when the server confirmed, or after a short wait.
    pub async fn close_and_wait(&self) {
        let client = self.client.lock().take();
        let Some(client) = client else {
            self.end();
            return;
        };
        let mut states = client.state_watcher();
        drop(client);
        self.end();
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            while !states.changed().await.is_terminated() {}
        })
        .await;
    }

    /// Closes the session without waiting.
    pub fn close(&self) {
        drop(self.client.lock().take());
        self.end();
    }

    fn client(&self) -> RegistryResult<zk::Client> {
        match &*self.client.lock() {
            Some(c) if !self.is_gone() => Ok(c.clone()),
            _ => Err(RegistryError::UnknownNode(self.id.clone())),
        }
    }

    fn user_lock(&self, user: UserId) -> &tokio::sync::Mutex<()> {
        &self.user_locks[(user.0 as usize) % USER_SHARDS]
    }

    /// Changes the record and returns the generation to wait for.
    fn change(&self, f: impl FnOnce(&mut NodeRecord)) -> u64 {
        let mut g = self.local.lock();
        f(&mut g.record);
        g.generation += 1;
        let generation = g.generation;
        drop(g);
        self.dirty.notify_one();
        generation
    }

    /// Waits until the record of `generation` (or a later one) is written, for at most
    /// `within`.
    async fn written(&self, generation: u64, within: Duration) -> RegistryResult<()> {
        let mut rx = self.written.subscribe();
        let waited = tokio::time::timeout(
            within,
            rx.wait_for(|w| w.gone || w.generation >= generation),
        )
        .await;
        match waited {
            Ok(Ok(w)) if !w.gone => Ok(()),
            Ok(_) => Err(RegistryError::UnknownNode(self.id.clone())),
            Err(_) => Err(RegistryError::Unavailable(
                "zookeeper: the node's record could not be written in time".into(),
            )),
        }
    }

    /// The one writer of the record.
    async fn write_loop(self: Arc<Self>) {
        let path = self.tree.node(&self.id);
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = self.dirty.notified() => {}
            }
            loop {
                let (generation, bytes) = {
                    let g = self.local.lock();
                    (g.generation, g.record.encode())
                };
                let current = *self.written.borrow();
                if generation <= current.generation || current.gone {
                    break;
                }
                let Ok(client) = self.client() else { return };
                match client.set_data(&path, &bytes, Some(current.version)).await {
                    Ok(stat) => {
                        // The index first: whoever waits for this write reads the index next
                        // (a heartbeat, then an `assign` of the same handle).
                        if let Some(index) = &self.index
                            && let Ok(record) = NodeRecord::decode(&bytes)
                        {
                            index.apply(
                                &self.id,
                                Snapshot {
                                    record,
                                    mzxid: stat.mzxid,
                                    pzxid: stat.pzxid,
                                    czxid: stat.czxid,
                                    live: stat.num_children > 0,
                                    version: stat.version,
                                },
                            );
                        }
                        self.written.send_modify(|w| {
                            w.generation = generation;
                            w.version = stat.version;
                        });
                    }
                    Err(e) if is_transient(&e) => {
                        tokio::select! {
                            _ = self.stop.cancelled() => return,
                            _ = tokio::time::sleep(RETRY_EVERY) => {}
                        }
                    }
                    Err(e) => {
                        // BadVersion or NoNode: a reaper took the record; anything else ends
                        // the session too. The node registers again.
                        tracing::warn!(node = %self.id, error = %e, "the node's record cannot be written: registering again");
                        self.close();
                        return;
                    }
                }
            }
        }
    }

    /// Renews: the process is alive. Writes the true count and the oldest unpublished event.
    pub async fn heartbeat(&self, connections: u64, unpub: Option<Millis>) -> RegistryResult<()> {
        if self.is_gone() {
            return Err(RegistryError::UnknownNode(self.id.clone()));
        }
        *self.last_beat.lock() = Instant::now();
        let generation = self.change(|r| {
            r.conns = connections;
            r.unpub = unpub;
            r.hb = now_ms();
        });
        self.forget_old_tokens();
        self.repair_locations().await;
        self.written(generation, Duration::from_millis(self.lease_ms / 2))
            .await
    }

    /// Updates what the node says of itself (a register of a node already registered here).
    pub async fn update(&self, f: impl FnOnce(&mut NodeRecord)) -> RegistryResult<()> {
        *self.last_beat.lock() = Instant::now();
        let generation = self.change(f);
        self.written(generation, RETRY_FOR).await
    }

    fn forget_old_tokens(&self) {
        let horizon = now_ms() - 2 * crate::registry::DEFAULT_RESERVATION_MS as i64;
        self.local.lock().tokens.retain(|_, at| *at > horizon);
    }

    /// A device of `user` connected. Returns whether the user was offline everywhere before.
    pub async fn attach(&self, user: UserId, reservation: Option<&str>) -> RegistryResult<bool> {
        let _turn = self.user_lock(user).lock().await;
        if self.is_gone() {
            return Err(RegistryError::UnknownNode(self.id.clone()));
        }
        let (needs_location, generation) = {
            let mut g = self.local.lock();
            let held = g.users.entry(user).or_default();
            held.devices += 1;
            let needs_location = held.location.is_none();
            let token = reservation
                .and_then(|t| token_parts(t).map(|(tag, node)| (t, tag, node)))
                .filter(|(t, _, node)| *node == self.id.as_str() && !g.tokens.contains_key(*t));
            if let Some((t, tag, _)) = token {
                g.tokens.insert(t.to_owned(), now_ms());
                *g.record.used.entry(tag.to_owned()).or_default() += 1;
            }
            g.record.conns += 1;
            g.generation += 1;
            (needs_location, g.generation)
        };
        self.dirty.notify_one();
        let first = if needs_location {
            self.write_location(user).await?
        } else {
            false
        };
        // The count is also carried by the next heartbeat: a slow write only delays it.
        let _ = self.written(generation, RETRY_FOR).await;
        Ok(first)
    }

    /// A device of `user` left. Returns whether the user is now offline everywhere.
    pub async fn detach(&self, user: UserId) -> RegistryResult<bool> {
        let _turn = self.user_lock(user).lock().await;
        let (location, generation) = {
            let mut g = self.local.lock();
            let mut location = None;
            if let Some(held) = g.users.get_mut(&user) {
                held.devices = held.devices.saturating_sub(1);
                if held.devices == 0 {
                    location = Some(held.location.take());
                    g.users.remove(&user);
                }
            }
            g.record.conns = g.record.conns.saturating_sub(1);
            g.generation += 1;
            (location, g.generation)
        };
        self.dirty.notify_one();
        let last = match location {
            // Other devices of the user are still here.
            None => false,
            Some(location) => self.remove_location(user, location).await?,
        };
        let _ = self.written(generation, RETRY_FOR).await;
        Ok(last)
    }

    /// Creates the user's location znode and `held` entry in one multi; returns whether this
    /// location is the user's oldest (the user was offline before).
    async fn write_location(&self, user: UserId) -> RegistryResult<bool> {
        let client = self.client()?;
        let prefix = self.tree.location_prefix(user, &self.id);
        let held = self.tree.held_user(&self.id, user);
        let deadline = Instant::now() + RETRY_FOR;
        let path = loop {
            let mut multi = client.new_multi_writer();
            multi
                .add_create(&prefix, &[], &opts(zk::CreateMode::EphemeralSequential))
                .map_err(map_err)?;
            multi
                .add_create(&held, &[], &opts(zk::CreateMode::Persistent))
                .map_err(map_err)?;
            match multi.commit().await {
                Ok(results) => match results.into_iter().next() {
                    Some(zk::MultiWriteResult::Create { path, .. }) => break path,
                    other => {
                        return Err(RegistryError::Internal(format!(
                            "zookeeper: unexpected multi result {other:?}"
                        )));
                    }
                },
                Err(zk::MultiWriteError::OperationFailed {
                    index: 0,
                    source: zk::Error::NoNode,
                }) => {
                    // The user's container is gone (empty for a while): make it again.
                    match client
                        .create(&self.tree.user(user), &[], &opts(zk::CreateMode::Container))
                        .await
                    {
                        Ok(_) | Err(zk::Error::NodeExists) => {}
                        Err(e) if is_transient(&e) && Instant::now() < deadline => {
                            tokio::time::sleep(RETRY_EVERY).await;
                        }
                        Err(e) => return Err(map_err(e)),
                    }
                }
                Err(zk::MultiWriteError::OperationFailed {
                    index: 1,
                    source: zk::Error::NodeExists,
                }) => {
                    // An earlier attempt went through before its answer was lost.
                    match self.find_location(&client, user).await? {
                        Some(path) => break path,
                        None => {
                            client.delete(&held, None).await.or_else(ignore_no_node)?;
                        }
                    }
                }
                Err(e) => {
                    let e = zk::Error::from(e);
                    if is_transient(&e) && Instant::now() < deadline {
                        tokio::time::sleep(RETRY_EVERY).await;
                        continue;
                    }
                    if matches!(e, zk::Error::SessionExpired | zk::Error::ClientClosed) {
                        return Err(RegistryError::UnknownNode(self.id.clone()));
                    }
                    return Err(map_err(e));
                }
            }
        };
        let mine = path
            .rsplit('/')
            .next()
            .and_then(parse_location)
            .map(|(_, seq)| seq);
        if let Some(held) = self.local.lock().users.get_mut(&user) {
            held.location = Some(path);
        }
        let children = client
            .list_children(&self.tree.user(user))
            .await
            .map_err(map_err)?;
        let oldest = children
            .iter()
            .filter_map(|c| parse_location(c).map(|(_, seq)| seq))
            .min();
        Ok(mine.is_some() && oldest == mine)
    }

    /// This node's location znode under the user, if there is one.
    async fn find_location(
        &self,
        client: &zk::Client,
        user: UserId,
    ) -> RegistryResult<Option<String>> {
        let children = match client.list_children(&self.tree.user(user)).await {
            Ok(c) => c,
            Err(zk::Error::NoNode) => return Ok(None),
            Err(e) => return Err(map_err(e)),
        };
        Ok(children
            .iter()
            .find(|c| parse_location(c).is_some_and(|(n, _)| n == self.id))
            .map(|c| format!("{}/{c}", self.tree.user(user))))
    }

    /// Removes the user's location and `held` entry; returns whether the user has no location
    /// left anywhere.
    async fn remove_location(
        &self,
        user: UserId,
        location: Option<String>,
    ) -> RegistryResult<bool> {
        let client = self.client()?;
        let location = match location {
            Some(l) => Some(l),
            None => self.find_location(&client, user).await?,
        };
        let held = self.tree.held_user(&self.id, user);
        let deadline = Instant::now() + RETRY_FOR;
        loop {
            let mut multi = client.new_multi_writer();
            if let Some(l) = &location {
                multi.add_delete(l, None).map_err(map_err)?;
            }
            multi.add_delete(&held, None).map_err(map_err)?;
            match multi.commit().await {
                Ok(_) => break,
                Err(zk::MultiWriteError::OperationFailed {
                    source: zk::Error::NoNode,
                    ..
                }) => {
                    // Part of it is gone already: remove each on its own.
                    if let Some(l) = &location {
                        client.delete(l, None).await.or_else(ignore_no_node)?;
                    }
                    client.delete(&held, None).await.or_else(ignore_no_node)?;
                    break;
                }
                Err(e) => {
                    let e = zk::Error::from(e);
                    if is_transient(&e) && Instant::now() < deadline {
                        tokio::time::sleep(RETRY_EVERY).await;
                        continue;
                    }
                    return Err(map_err(e));
                }
            }
        }
        match client.list_children(&self.tree.user(user)).await {
            Ok(children) => Ok(children.is_empty()),
            Err(zk::Error::NoNode) => Ok(true),
            Err(e) => Err(map_err(e)),
        }
    }

    /// Writes the locations that a ZooKeeper outage kept an attach from writing, and removes
    /// those whose user left meanwhile.
    async fn repair_locations(&self) {
        let missing: Vec<UserId> = {
            let g = self.local.lock();
            g.users
                .iter()
                .filter(|(_, h)| h.location.is_none() && h.devices > 0)
                .map(|(u, _)| *u)
                .collect()
        };
        for user in missing {
            let _turn = self.user_lock(user).lock().await;
            let still = self
                .local
                .lock()
                .users
                .get(&user)
                .is_some_and(|h| h.location.is_none());
            if still && let Err(e) = self.write_location(user).await {
                tracing::debug!(node = %self.id, %user, error = %e, "location still not written");
                return;
            }
        }
    }
}

impl Drop for NodeSession {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// `Ok` for a znode that is already gone.
pub(super) fn ignore_no_node(e: zk::Error) -> RegistryResult<()> {
    match e {
        zk::Error::NoNode => Ok(()),
        e => Err(map_err(e)),
    }
}
