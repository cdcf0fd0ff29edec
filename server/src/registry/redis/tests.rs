//! The Redis registry against the behavioural suite, and what only it does: scripts racing
//! one another, worker ids for controllers, a Redis that forgot everything.

use std::sync::Arc;
use std::time::Duration;

use protocol::{NodeId, UserId};

use super::RedisRegistry;
use super::replies::map_err;
use super::test_support::{DeleteOnDrop, REDIS_URL, fresh_prefix, require_redis};
use crate::ids::now_ms;
use crate::registry::{Load, NodeInfo, Registry, RegistryError, RegistryResult};

async fn fresh(lease_ms: u64) -> RedisRegistry {
    require_redis().await;
    let prefix = fresh_prefix("registry");
    let mut r = RedisRegistry::connect(REDIS_URL, &prefix, Some(lease_ms))
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

/// Several reapers racing over the same dead nodes: each node is handed out once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reapers_get_each_dead_node_once() -> RegistryResult<()> {
    let r = fresh(100).await;
    for i in 0..20 {
        r.register(&info(&format!("z{i}"))).await?;
        r.attach(&info(&format!("z{i}")).id, UserId(i), None)
            .await?;
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    let reapers: Vec<_> = (0..8)
        .map(|_| {
            let r = r.clone();
            tokio::spawn(async move { r.reap(now_ms()).await })
        })
        .collect();
    let mut seen = Vec::new();
    for t in reapers {
        let dead = t
            .await
            .map_err(|e| RegistryError::Internal(e.to_string()))??;
        seen.extend(dead.into_iter().map(|d| d.node));
    }
    seen.sort();
    let before = seen.len();
    seen.dedup();
    assert_eq!(before, seen.len(), "a dead node was handed out twice");
    assert_eq!(seen.len(), 20);
    assert!(r.nodes().await?.is_empty());
    Ok(())
}

/// Controllers' worker ids never collide with nodes', survive renewal, and come back when
/// released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_worker_ids_are_unique_with_nodes() -> RegistryResult<()> {
    let r = fresh(60_000).await;
    let n0 = r.register(&info("c0")).await?.worker_id;
    let a = r.claim_controller_worker("ctl-a", 60_000).await?;
    let b = r.claim_controller_worker("ctl-b", 60_000).await?;
    let n1 = r.register(&info("c1")).await?.worker_id;
    let mut all = vec![n0, a, b, n1];
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 4, "collision among {n0}, {a}, {b}, {n1}");
    assert_eq!(r.claim_controller_worker("ctl-a", 60_000).await?, a);
    r.release_controller_worker("ctl-a").await?;
    let n2 = r.register(&info("c2")).await?.worker_id;
    assert_eq!(n2, a, "the released id is the lowest free one");
    Ok(())
}

/// After Redis forgot everything, each process gets its old worker id back, whatever the
/// order in which they register again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_ids_survive_a_redis_that_forgot_them() -> RegistryResult<()> {
    let r = fresh(60_000).await;
    let a = r.register(&info("fa")).await?.worker_id;
    let b = r.register(&info("fb")).await?.worker_id;
    let c = r.claim_controller_worker("ctl", 60_000).await?;
    let mut conn = r.conn.clone();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", r.prefix))
        .query_async(&mut conn)
        .await
        .map_err(map_err)?;
    redis::cmd("DEL")
        .arg(keys)
        .exec_async(&mut conn)
        .await
        .map_err(map_err)?;
    assert_eq!(r.claim_controller_worker("ctl", 60_000).await?, c);
    assert_eq!(r.register(&info("fb")).await?.worker_id, b);
    assert_eq!(r.register(&info("fa")).await?.worker_id, a);
    Ok(())
}

/// A controller's claim lapses when it stops renewing it, and the id is freed by a reap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapsed_controller_claims_are_reaped() -> RegistryResult<()> {
    let r = fresh(60_000).await;
    let a = r.claim_controller_worker("ctl-a", 100).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    r.reap(now_ms()).await?;
    let n = r.register(&info("after")).await?.worker_id;
    assert_eq!(n, a);
    Ok(())
}

/// An unused reservation is given back when it expires, and cannot be used after that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_reservations_are_given_back() -> RegistryResult<()> {
    let mut r = fresh(60_000).await;
    r.reservation_ms = 100;
    let n = info("x");
    r.register(&n).await?;
    let a = r.assign(&[]).await?.expect("a node");
    r.assign(&[]).await?.expect("a node");
    assert_eq!(r.nodes().await?[0].reserved, 2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    r.heartbeat(&n.id, Load::default()).await?;
    assert_eq!(
        r.nodes().await?[0].reserved,
        0,
        "expired slots still counted"
    );
    r.attach(&n.id, UserId(1), Some(&a.reservation)).await?;
    let s = &r.nodes().await?[0];
    assert_eq!((s.connections, s.reserved), (1, 0));
    Ok(())
}

/// Nodes take the lease a controller set for the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_take_the_cluster_lease() -> RegistryResult<()> {
    let r = fresh(1_234).await;
    let node_side = RedisRegistry::connect(REDIS_URL, &r.prefix, None).await?;
    assert_eq!(node_side.register(&info("l")).await?.lease_ms, 1_234);
    Ok(())
}
