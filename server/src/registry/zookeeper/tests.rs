//! The ZooKeeper registry's tests: the shared registry suite, then what only this backend
//! promises (watches from other processes, simultaneous first devices, re-registration).

use std::sync::Arc;

use self::support::{DeleteOnDrop, ZOOKEEPER_URL, fresh_prefix, require_zookeeper};
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

/// What the tests share: the server they need and a fresh root each.
pub(super) mod support {
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
                rt.block_on(crate::registry::zookeeper::remove_tree(
                    ZOOKEEPER_URL,
                    &prefix,
                ))
                .map_err(|e| e.to_string())
            })
            .join();
            if !matches!(done, Ok(Ok(()))) {
                eprintln!("could not remove the test tree /{}: {done:?}", self.0);
            }
        }
    }
}
