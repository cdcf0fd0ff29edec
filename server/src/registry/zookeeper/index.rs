//! A controller's ordered index of node loads, kept current by a watch on `/R/nodes` (and by
//! this process's own writes, applied as they return), so that the least-loaded answer is an
//! in-memory walk: O(log N + skipped), one short critical section, no read of ZooKeeper.
//!
//! A node's load is its connections (from its record) plus the reservations this controller
//! handed out for it and has not yet seen used or expired. The node counts the reservations it
//! was given per controller tag in its record; the controller takes as many of its own off the
//! node's queue as that count grew by. Several controllers each count only their own: another
//! controller's slots show once the devices connect.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use parking_lot::Mutex;
use protocol::http::{AssignResponse, NodeState, NodeStatus};
use protocol::{Millis, NodeId};

use super::tree::NodeRecord;

/// One snapshot of a node's record as read (or written) with its znode's stat.
#[derive(Clone, Debug)]
pub(super) struct Snapshot {
    pub record: NodeRecord,
    /// `mzxid`: orders data snapshots.
    pub mzxid: i64,
    /// `pzxid`: orders child changes (the `live` child).
    pub pzxid: i64,
    /// `czxid`: the incarnation of the record.
    pub czxid: i64,
    /// Whether `live` existed.
    pub live: bool,
    /// The record's data version (a reaper's claim is conditional on it).
    pub version: i32,
}

struct Entry {
    snap: Snapshot,
    /// This controller's outstanding reservations on the node, oldest first.
    reserved: VecDeque<(Millis, String)>,
    /// The node's count of this controller's reservations used, when last seen.
    seen_used: u64,
}

impl Entry {
    fn load(&self) -> u64 {
        self.snap.record.conns + self.reserved.len() as u64
    }

    fn answerable(&self) -> bool {
        self.snap.live
            && self.snap.record.state == NodeState::Live
            && self.snap.record.reaping.is_none()
    }
}

#[derive(Default)]
struct Inner {
    nodes: HashMap<NodeId, Entry>,
    /// `(load, node)` of every answerable node: the least loaded is the first.
    by_load: BTreeSet<(u64, NodeId)>,
    /// Every outstanding reservation by expiry, to give slots back in order.
    expiries: BTreeSet<(Millis, String, NodeId)>,
    /// Records removed, by incarnation: a snapshot read before the removal must not bring
    /// them back.
    removed: HashSet<i64>,
}

impl Inner {
    fn unindex(&mut self, id: &NodeId) {
        if let Some(e) = self.nodes.get(id)
            && e.answerable()
        {
            self.by_load.remove(&(e.load(), id.clone()));
        }
    }

    fn reindex(&mut self, id: &NodeId) {
        if let Some(e) = self.nodes.get(id)
            && e.answerable()
        {
            self.by_load.insert((e.load(), id.clone()));
        }
    }

    fn expire(&mut self, now: Millis) {
        while let Some((at, token, node)) = self.expiries.first().cloned() {
            if at > now {
                break;
            }
            self.expiries.remove(&(at, token.clone(), node.clone()));
            self.unindex(&node);
            if let Some(e) = self.nodes.get_mut(&node) {
                e.reserved.retain(|(_, t)| *t != token);
            }
            self.reindex(&node);
        }
    }
}

/// The index. Cheap calls, each one short critical section.
pub(super) struct Index {
    inner: Mutex<Inner>,
    /// This controller's reservation tag.
    tag: String,
    reservation_ms: u64,
}

impl Index {
    pub fn new(tag: String, reservation_ms: u64) -> Index {
        Index {
            inner: Mutex::new(Inner::default()),
            tag,
            reservation_ms,
        }
    }

    /// Applies a snapshot if it is newer than what the index holds (data by `mzxid`, the
    /// `live` child by `pzxid`).
    pub fn apply(&self, id: &NodeId, snap: Snapshot) {
        let mut g = self.inner.lock();
        if g.removed.contains(&snap.czxid) {
            return;
        }
        g.unindex(id);
        let tag = &self.tag;
        let used = snap.record.used.get(tag).copied().unwrap_or(0);
        let mut taken = Vec::new();
        match g.nodes.get_mut(id) {
            Some(e) if e.snap.czxid == snap.czxid => {
                if snap.mzxid > e.snap.mzxid {
                    e.snap.record = snap.record;
                    e.snap.mzxid = snap.mzxid;
                }
                if snap.pzxid > e.snap.pzxid {
                    e.snap.live = snap.live;
                    e.snap.pzxid = snap.pzxid;
                }
                let now_used = e.snap.record.used.get(tag).copied().unwrap_or(0);
                for _ in e.seen_used..now_used {
                    match e.reserved.pop_front() {
                        Some(r) => taken.push(r),
                        None => break,
                    }
                }
                e.seen_used = e.seen_used.max(now_used);
            }
            _ => {
                // A new node, or a new incarnation of one: reservations on the old one stay
                // counted until they expire.
                let reserved = g
                    .nodes
                    .remove(id)
                    .map(|old| old.reserved)
                    .unwrap_or_default();
                g.nodes.insert(
                    id.clone(),
                    Entry {
                        snap,
                        reserved,
                        seen_used: used,
                    },
                );
            }
        }
        for (at, token) in taken {
            g.expiries.remove(&(at, token, id.clone()));
        }
        g.reindex(id);
    }

    /// The node's `live` child came or went (a watch event, before the record is read again).
    pub fn set_live(&self, id: &NodeId, live: bool) {
        let mut g = self.inner.lock();
        g.unindex(id);
        if let Some(e) = g.nodes.get_mut(id) {
            e.snap.live = live;
        }
        g.reindex(id);
    }

    /// The record is gone (reaped or deregistered).
    pub fn remove(&self, id: &NodeId) {
        let mut g = self.inner.lock();
        g.unindex(id);
        if let Some(e) = g.nodes.remove(id) {
            g.removed.insert(e.snap.czxid);
            for (at, token) in e.reserved {
                g.expiries.remove(&(at, token, id.clone()));
            }
        }
    }

    /// Replaces everything with a full read (after a reconnect, when watch events may have
    /// been missed); reservations of nodes still present are kept.
    pub fn reload(&self, all: Vec<(NodeId, Snapshot)>) {
        let present: HashSet<NodeId> = all.iter().map(|(id, _)| id.clone()).collect();
        let gone: Vec<NodeId> = {
            let g = self.inner.lock();
            g.nodes
                .keys()
                .filter(|id| !present.contains(*id))
                .cloned()
                .collect()
        };
        for id in gone {
            self.remove(&id);
        }
        for (id, snap) in all {
            self.apply(&id, snap);
        }
    }

    /// The least-loaded answerable node not in `exclude`, with a slot reserved on it.
    pub fn assign(&self, exclude: &[NodeId], now: Millis) -> Option<AssignResponse> {
        let mut g = self.inner.lock();
        g.expire(now);
        let id = g
            .by_load
            .iter()
            .map(|(_, id)| id)
            .find(|id| !exclude.contains(id))
            .cloned()?;
        let token = format!("{}:{id}:{}", self.tag, uuid::Uuid::new_v4().simple());
        let expires_at = now + self.reservation_ms as i64;
        g.unindex(&id);
        let ws_url = {
            let e = g.nodes.get_mut(&id)?;
            e.reserved.push_back((expires_at, token.clone()));
            e.snap.record.ws.clone()
        };
        g.expiries.insert((expires_at, token.clone(), id.clone()));
        g.reindex(&id);
        Some(AssignResponse {
            node: id,
            ws_url,
            reservation: token,
            expires_at,
        })
    }

    /// Every live node, by id.
    pub fn statuses(&self, now: Millis) -> Vec<NodeStatus> {
        let mut g = self.inner.lock();
        g.expire(now);
        let mut list: Vec<NodeStatus> = g
            .nodes
            .iter()
            .filter(|(_, e)| e.snap.live)
            .map(|(id, e)| NodeStatus {
                id: id.clone(),
                ws_url: e.snap.record.ws.clone(),
                http_url: e.snap.record.http.clone(),
                connections: e.snap.record.conns,
                reserved: e.reserved.len() as u64,
                started_at: e.snap.record.started,
                last_heartbeat: e.snap.record.hb,
                state: e.snap.record.state,
            })
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }
}

/// The controller tag and node a reservation token names (`{tag}:{node}:{uuid}`).
pub(super) fn token_parts(token: &str) -> Option<(&str, &str)> {
    let (tag, rest) = token.split_once(':')?;
    let (node, _) = rest.rsplit_once(':')?;
    Some((tag, node))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn snap(conns: u64, used: u64, mzxid: i64, live: bool) -> Snapshot {
        Snapshot {
            record: NodeRecord {
                ws: "ws://x".into(),
                http: "http://x".into(),
                started: 0,
                state: NodeState::Live,
                worker: 0,
                conns,
                used: BTreeMap::from([("t".to_owned(), used)]),
                hb: 0,
                unpub: None,
                reaping: None,
            },
            mzxid,
            pzxid: mzxid,
            czxid: 1,
            live,
            version: 0,
        }
    }

    #[test]
    fn used_reservations_become_connections_and_stale_snapshots_are_ignored() {
        let ix = Index::new("t".into(), 10_000);
        let n = NodeId::new("n").expect("id");
        ix.apply(&n, snap(0, 0, 1, true));
        let a = ix.assign(&[], 0).expect("answer");
        assert_eq!(token_parts(&a.reservation), Some(("t", "n")));
        ix.assign(&[], 0).expect("answer");
        assert_eq!(ix.statuses(0)[0].reserved, 2);
        ix.apply(&n, snap(1, 1, 3, true));
        let s = &ix.statuses(0)[0];
        assert_eq!((s.connections, s.reserved), (1, 1));
        // An older read arriving late changes nothing.
        ix.apply(&n, snap(0, 0, 2, true));
        let s = &ix.statuses(0)[0];
        assert_eq!((s.connections, s.reserved), (1, 1));
        // Reservations expire.
        assert_eq!(ix.statuses(20_000)[0].reserved, 0);
    }

    #[test]
    fn dead_and_removed_nodes_are_not_answered() {
        let ix = Index::new("t".into(), 10_000);
        let n = NodeId::new("n").expect("id");
        ix.apply(&n, snap(0, 0, 1, true));
        ix.set_live(&n, false);
        assert!(ix.assign(&[], 0).is_none());
        ix.set_live(&n, true);
        assert!(ix.assign(&[], 0).is_some());
        ix.remove(&n);
        ix.apply(&n, snap(0, 0, 5, true));
        assert!(ix.assign(&[], 0).is_none(), "a removed record came back");
    }
}
