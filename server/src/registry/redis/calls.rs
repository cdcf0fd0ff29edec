//! The [`Registry`] contract in Redis: each change one script call, each read one pipeline.

use async_trait::async_trait;
use protocol::http::{AssignResponse, NodeState, NodeStatus};
use protocol::{Millis, NodeId, UserId};

use super::super::{
    DEFAULT_LEASE_MS, DeadNode, Lease, Load, NodeInfo, Registry, RegistryError, RegistryResult,
};
use super::replies::{dead_node, map_err, node_id, parse};
use super::{MAX_WORKER, RedisRegistry, SCRIPTS};

impl RedisRegistry {
    /// One `cmd` (`HKEYS`, `EXISTS`) per user's key, in one round trip.
    async fn per_user<T: redis::FromRedisValue>(
        &self,
        cmd: &str,
        users: &[UserId],
    ) -> RegistryResult<Vec<T>> {
        let mut pipe = redis::pipe();
        for u in users {
            pipe.cmd(cmd).arg(self.key(&format!("u:{}", u.0)));
        }
        let mut c = self.conn.clone();
        pipe.query_async(&mut c).await.map_err(map_err)
    }
}

/// `Ok` for a script's 1, [`RegistryError::UnknownNode`] for its 0.
fn known(node: &NodeId, answer: i64) -> RegistryResult<()> {
    if answer == 1 {
        Ok(())
    } else {
        Err(RegistryError::UnknownNode(node.clone()))
    }
}

#[async_trait]
impl Registry for RedisRegistry {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn register(&self, node: &NodeInfo) -> RegistryResult<Lease> {
        let who = format!("node:{}", node.id);
        let (worker, lease_ms): (i64, i64) = self
            .run(
                self.script(&SCRIPTS.register)
                    .arg(MAX_WORKER)
                    .arg(node.id.as_str())
                    .arg(&node.ws_url)
                    .arg(&node.http_url)
                    .arg(node.started_at)
                    .arg(DEFAULT_LEASE_MS)
                    .arg(self.workers.preferred(&who)),
            )
            .await?;
        let worker_id = self.workers.remember(who, worker)?;
        Ok(Lease {
            worker_id,
            lease_ms: u64::try_from(lease_ms)
                .map_err(|_| RegistryError::Internal(format!("bad lease {lease_ms}")))?,
        })
    }

    async fn heartbeat(&self, node: &NodeId, load: Load) -> RegistryResult<()> {
        let unpublished = load
            .unpublished_since
            .map(|t| t.to_string())
            .unwrap_or_default();
        let answer = self
            .run(
                self.script(&SCRIPTS.heartbeat)
                    .arg(node.as_str())
                    .arg(load.connections)
                    .arg(unpublished),
            )
            .await?;
        known(node, answer)
    }

    async fn set_state(&self, node: &NodeId, state: NodeState) -> RegistryResult<()> {
        let state = match state {
            NodeState::Live => "live",
            NodeState::Draining => "draining",
        };
        let answer = self
            .run(
                self.script(&SCRIPTS.set_state)
                    .arg(node.as_str())
                    .arg(state),
            )
            .await?;
        known(node, answer)
    }

    async fn deregister(&self, node: &NodeId) -> RegistryResult<Vec<UserId>> {
        let fields: Vec<String> = self
            .run(self.script(&SCRIPTS.deregister).arg(node.as_str()))
            .await?;
        if fields.is_empty() {
            return Ok(Vec::new());
        }
        Ok(dead_node(fields)?.went_offline)
    }

    async fn attach(
        &self,
        node: &NodeId,
        user: UserId,
        reservation: Option<&str>,
    ) -> RegistryResult<bool> {
        let r: i64 = self
            .run(
                self.script(&SCRIPTS.attach)
                    .arg(node.as_str())
                    .arg(user.0)
                    .arg(reservation.unwrap_or("")),
            )
            .await?;
        match r {
            -1 => Err(RegistryError::UnknownNode(node.clone())),
            r => Ok(r == 1),
        }
    }

    async fn detach(&self, node: &NodeId, user: UserId) -> RegistryResult<bool> {
        let last: i64 = self
            .run(self.script(&SCRIPTS.detach).arg(node.as_str()).arg(user.0))
            .await?;
        Ok(last == 1)
    }

    async fn locate(&self, users: &[UserId]) -> RegistryResult<Vec<Vec<NodeId>>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let located: Vec<Vec<String>> = self.per_user("HKEYS", users).await?;
        located
            .into_iter()
            .map(|nodes| nodes.iter().map(|n| node_id(n)).collect())
            .collect()
    }

    async fn online(&self, users: &[UserId]) -> RegistryResult<Vec<UserId>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let exists: Vec<bool> = self.per_user("EXISTS", users).await?;
        Ok(users
            .iter()
            .zip(exists)
            .filter(|(_, on)| *on)
            .map(|(u, _)| *u)
            .collect())
    }

    async fn assign(&self, exclude: &[NodeId]) -> RegistryResult<Option<AssignResponse>> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let mut call = self.script(&SCRIPTS.assign);
        call.arg(&token).arg(self.reservation_ms);
        for n in exclude {
            call.arg(n.as_str());
        }
        let answer: Option<(String, String, Millis)> = self.run(&call).await?;
        answer
            .map(|(node, ws_url, expires_at)| {
                Ok(AssignResponse {
                    node: node_id(&node)?,
                    ws_url,
                    reservation: token.clone(),
                    expires_at,
                })
            })
            .transpose()
    }

    async fn nodes(&self) -> RegistryResult<Vec<NodeStatus>> {
        let mut c = self.conn.clone();
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(self.key("alive"))
            .arg(0)
            .arg(-1)
            .query_async(&mut c)
            .await
            .map_err(map_err)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HMGET")
                .arg(self.key(&format!("n:{id}")))
                .arg(&["ws", "http", "started", "state", "conns", "resv", "hb"]);
        }
        let rows: Vec<Vec<Option<String>>> = pipe.query_async(&mut c).await.map_err(map_err)?;
        let mut list = Vec::with_capacity(ids.len());
        for (id, row) in ids.iter().zip(rows) {
            // Removed between the two reads: not a node any more.
            if row.iter().all(Option::is_none) {
                continue;
            }
            let f = |i: usize| row.get(i).cloned().flatten();
            list.push(NodeStatus {
                id: node_id(id)?,
                ws_url: f(0).unwrap_or_default(),
                http_url: f(1).unwrap_or_default(),
                started_at: parse("start time", f(2).as_deref())?,
                state: match f(3).as_deref() {
                    Some("draining") => NodeState::Draining,
                    _ => NodeState::Live,
                },
                connections: parse("connections", f(4).as_deref())?,
                reserved: parse("reservations", f(5).as_deref())?,
                last_heartbeat: parse("last heartbeat", f(6).as_deref())?,
            });
        }
        list.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(list)
    }

    async fn reap(&self, _now: Millis) -> RegistryResult<Vec<DeadNode>> {
        let dead: Vec<Vec<String>> = self.run(&self.script(&SCRIPTS.reap)).await?;
        dead.into_iter().map(dead_node).collect()
    }
}
