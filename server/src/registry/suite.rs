//! The behavioural suite every [`Registry`] implementation runs. Each scenario takes a fresh,
//! empty registry from a factory (given the lease to use), so an implementation backed by a
//! shared server gives each call its own namespace.
//!
//! Instantiate with `registry_suite!(|lease_ms| async move { … SharedRegistry })`.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use protocol::http::NodeState;
use protocol::{NodeId, UserId};

use super::{Load, NodeInfo, Registry, RegistryError, SharedRegistry};
use crate::ids::now_ms;

type R<T = ()> = Result<T, RegistryError>;

fn node(name: &str) -> NodeInfo {
    NodeInfo {
        id: NodeId::new(name).unwrap_or_else(|_| panic!("bad test node id {name}")),
        ws_url: format!("ws://127.0.0.1/{name}"),
        http_url: format!("http://127.0.0.1/{name}"),
        started_at: now_ms(),
    }
}

async fn nodes(r: &dyn Registry, names: &[&str]) -> R<Vec<NodeInfo>> {
    let mut out = Vec::new();
    for n in names {
        let info = node(n);
        r.register(&info).await?;
        out.push(info);
    }
    Ok(out)
}

/// Worker ids are unique among live nodes and stable across a re-register.
pub async fn worker_ids_are_unique(r: SharedRegistry) -> R {
    let ns = nodes(&*r, &["w1", "w2", "w3"]).await?;
    let mut ids = Vec::new();
    for n in &ns {
        ids.push(r.register(n).await?.worker_id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "worker ids collide: {ids:?}");
    let again = r.register(&ns[0]).await?.worker_id;
    let first = r.register(&ns[0]).await?.worker_id;
    assert_eq!(again, first);
    Ok(())
}

/// The least-loaded node is answered, and each answer counts a reserved slot.
pub async fn assign_picks_least_loaded_and_reserves(r: SharedRegistry) -> R {
    let ns = nodes(&*r, &["a1", "a2", "a3"]).await?;
    r.heartbeat(
        &ns[0].id,
        Load {
            connections: 5,
            unpublished_since: None,
        },
    )
    .await?;
    r.heartbeat(
        &ns[1].id,
        Load {
            connections: 2,
            unpublished_since: None,
        },
    )
    .await?;
    r.heartbeat(
        &ns[2].id,
        Load {
            connections: 9,
            unpublished_since: None,
        },
    )
    .await?;
    let first = r.assign(&[]).await?.expect("a node");
    assert_eq!(first.node, ns[1].id);
    assert_eq!(first.ws_url, ns[1].ws_url);
    assert!(!first.reservation.is_empty());
    // a2 is now 3 (2 + 1 reserved): still the least; then 4 vs a1's 5…
    let mut counts: HashMap<NodeId, u32> = HashMap::new();
    for _ in 0..6 {
        let a = r.assign(&[]).await?.expect("a node");
        *counts.entry(a.node).or_default() += 1;
    }
    // Loads start 5/3/9: six more slots level a1 and a2 at 7 each (a1 +2, a2 +4).
    assert_eq!(counts.get(&ns[1].id), Some(&4), "{counts:?}");
    assert_eq!(counts.get(&ns[0].id), Some(&2), "{counts:?}");
    assert_eq!(counts.get(&ns[2].id), None, "{counts:?}");
    let status = r.nodes().await?;
    let reserved: u64 = status.iter().map(|s| s.reserved).sum();
    assert_eq!(reserved, 7);
    Ok(())
}

/// Excluded and draining nodes are not answered; with none left the answer is `None`.
pub async fn assign_skips_excluded_and_draining(r: SharedRegistry) -> R {
    let ns = nodes(&*r, &["e1", "e2"]).await?;
    let a = r.assign(&[ns[0].id.clone()]).await?.expect("a node");
    assert_eq!(a.node, ns[1].id);
    r.set_state(&ns[1].id, NodeState::Draining).await?;
    let b = r.assign(&[]).await?.expect("a node");
    assert_eq!(b.node, ns[0].id);
    assert!(r.assign(&[ns[0].id.clone()]).await?.is_none());
    let listed = r.nodes().await?;
    let draining = listed.iter().find(|s| s.id == ns[1].id).expect("listed");
    assert_eq!(draining.state, NodeState::Draining);
    Ok(())
}

/// Attaching with a reservation turns the reserved slot into a connection.
pub async fn reservation_becomes_connection(r: SharedRegistry) -> R {
    let ns = nodes(&*r, &["r1"]).await?;
    let a = r.assign(&[]).await?.expect("a node");
    let before = r.nodes().await?;
    assert_eq!((before[0].connections, before[0].reserved), (0, 1));
    r.attach(&ns[0].id, UserId(1), Some(&a.reservation)).await?;
    let after = r.nodes().await?;
    assert_eq!((after[0].connections, after[0].reserved), (1, 0));
    // A reservation can be used once only.
    r.attach(&ns[0].id, UserId(2), Some(&a.reservation)).await?;
    let again = r.nodes().await?;
    assert_eq!((again[0].connections, again[0].reserved), (2, 0));
    Ok(())
}

/// Presence is "any device anywhere"; `locate` names every node holding a device.
pub async fn attach_detach_presence_and_locate(r: SharedRegistry) -> R {
    let ns = nodes(&*r, &["p1", "p2"]).await?;
    let (alice, bob) = (UserId(10), UserId(11));
    assert!(r.attach(&ns[0].id, alice, None).await?, "first device");
    assert!(!r.attach(&ns[1].id, alice, None).await?, "second device");
    assert!(!r.attach(&ns[1].id, alice, None).await?, "third device");
    let located = r.locate(&[alice, bob]).await?;
    let mut at: Vec<_> = located[0].clone();
    at.sort();
    assert_eq!(at, vec![ns[0].id.clone(), ns[1].id.clone()]);
    assert!(located[1].is_empty());
    assert_eq!(r.online(&[alice, bob]).await?, vec![alice]);

    assert!(!r.detach(&ns[1].id, alice).await?);
    assert!(!r.detach(&ns[0].id, alice).await?);
    assert_eq!(r.locate(&[alice]).await?[0], vec![ns[1].id.clone()]);
    assert!(r.detach(&ns[1].id, alice).await?, "last device");
    assert!(r.online(&[alice]).await?.is_empty());
    assert!(r.locate(&[alice]).await?[0].is_empty());
    Ok(())
}

/// Heartbeats set the true count; an unknown node is told to register.
pub async fn heartbeat_sets_count(r: SharedRegistry) -> R {
    let ns = nodes(&*r, &["h1"]).await?;
    r.attach(&ns[0].id, UserId(1), None).await?;
    r.heartbeat(
        &ns[0].id,
        Load {
            connections: 42,
            unpublished_since: Some(7),
        },
    )
    .await?;
    assert_eq!(r.nodes().await?[0].connections, 42);
    let unknown = NodeId::new("nobody").map_err(|e| RegistryError::Internal(e.to_string()))?;
    let err = r.heartbeat(&unknown, Load::default()).await;
    assert!(matches!(err, Err(RegistryError::UnknownNode(_))), "{err:?}");
    Ok(())
}

/// A node whose lease lapsed is not answered, is reaped exactly once with the users it left
/// offline, and its worker id is free again.
pub async fn lapsed_nodes_are_reaped(r: SharedRegistry, lease_ms: u64) -> R {
    let ns = nodes(&*r, &["l1", "l2"]).await?;
    let (alice, bob) = (UserId(20), UserId(21));
    r.attach(&ns[0].id, alice, None).await?;
    r.attach(&ns[0].id, bob, None).await?;
    r.attach(&ns[1].id, bob, None).await?;
    r.heartbeat(
        &ns[0].id,
        Load {
            connections: 2,
            unpublished_since: Some(123),
        },
    )
    .await?;
    // Keep l2 alive for the rest of the scenario (a pause longer than its lease on a loaded
    // machine would lapse it too), while l1's lease runs out.
    let keeper = {
        let (r, id) = (r.clone(), ns[1].id.clone());
        tokio::spawn(async move {
            loop {
                let load = Load {
                    connections: 1,
                    unpublished_since: None,
                };
                if let Err(e) = r.heartbeat(&id, load).await {
                    eprintln!("heartbeat of l2 failed: {e}");
                }
                tokio::time::sleep(Duration::from_millis(lease_ms / 4)).await;
            }
        })
    };
    let _keeper = AbortOnDrop(keeper);
    // Two leases, then until l1 is no longer answered: every round of five answers is l2,
    // though l2's load passes l1's after two of them. No fixed deadline beyond a generous
    // bound: a loaded machine may take longer to notice.
    let start = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(lease_ms * 2 + 200)).await;
    loop {
        let mut answered = Vec::new();
        for _ in 0..5 {
            answered.push(r.assign(&[]).await?.expect("l2 is live").node);
        }
        if answered.iter().all(|n| *n == ns[1].id) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_millis(lease_ms * 40),
            "a lapsed node was still answered {} ms after its last heartbeat: {answered:?}",
            start.elapsed().as_millis()
        );
        tokio::time::sleep(Duration::from_millis(lease_ms / 4)).await;
    }
    let dead = r.reap(now_ms()).await?;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].node, ns[0].id);
    assert_eq!(
        dead[0].went_offline,
        vec![alice],
        "bob still has a device on l2"
    );
    assert_eq!(dead[0].unpublished_since, Some(123));
    let again = r.reap(now_ms()).await?;
    assert!(again.is_empty(), "reaped again: {again:?}");
    assert!(r.online(&[alice]).await?.is_empty());
    assert_eq!(r.locate(&[bob]).await?[0], vec![ns[1].id.clone()]);
    let listed: Vec<NodeId> = r.nodes().await?.into_iter().map(|s| s.id).collect();
    assert_eq!(listed, vec![ns[1].id.clone()]);
    Ok(())
}

/// Deregistering forgets the node's devices and says who went offline.
pub async fn deregister_reports_offline_users(r: SharedRegistry) -> R {
    let ns = nodes(&*r, &["d1", "d2"]).await?;
    r.attach(&ns[0].id, UserId(30), None).await?;
    r.attach(&ns[0].id, UserId(31), None).await?;
    r.attach(&ns[1].id, UserId(31), None).await?;
    let mut off = r.deregister(&ns[0].id).await?;
    off.sort();
    assert_eq!(off, vec![UserId(30)]);
    assert_eq!(r.nodes().await?.len(), 1);
    Ok(())
}

/// A thousand simultaneous answers against three nodes spread evenly.
pub async fn simultaneous_assigns_stay_balanced(r: SharedRegistry) -> R {
    let ns = nodes(&*r, &["b1", "b2", "b3"]).await?;
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let r = r.clone();
            tokio::spawn(async move { r.assign(&[]).await })
        })
        .collect();
    let mut counts: HashMap<NodeId, u64> = HashMap::new();
    for t in tasks {
        let a = t
            .await
            .map_err(|e| RegistryError::Internal(e.to_string()))??
            .expect("a node");
        *counts.entry(a.node).or_default() += 1;
    }
    let max = ns
        .iter()
        .map(|n| counts.get(&n.id).copied().unwrap_or(0))
        .max()
        .unwrap_or(0);
    let min = ns
        .iter()
        .map(|n| counts.get(&n.id).copied().unwrap_or(0))
        .min()
        .unwrap_or(0);
    assert!(max - min <= 1, "unbalanced: {counts:?}");
    Ok(())
}

/// Aborts a scenario's helper task when the scenario ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs one scenario with a fresh registry.
pub async fn run<F, Fut, S, SFut>(factory: F, lease_ms: u64, scenario: S) -> R
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = SharedRegistry>,
    S: FnOnce(SharedRegistry) -> SFut,
    SFut: Future<Output = R>,
{
    scenario(factory(lease_ms).await).await
}

/// Expands to one `#[tokio::test]` per scenario for a registry factory `|lease_ms| async {…}`.
#[macro_export]
macro_rules! registry_suite {
    ($factory:expr) => {
        mod registry_suite {
            // The factory may name items of the calling module, or none of them.
            #[allow(unused_imports)]
            use super::*;
            use $crate::registry::suite;

            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() -> Result<(), $crate::registry::RegistryError> {
                        suite::run($factory, 60_000, suite::$name).await
                    }
                };
            }
            case!(worker_ids_are_unique);
            case!(assign_picks_least_loaded_and_reserves);
            case!(assign_skips_excluded_and_draining);
            case!(reservation_becomes_connection);
            case!(attach_detach_presence_and_locate);
            case!(heartbeat_sets_count);
            case!(deregister_reports_offline_users);
            case!(simultaneous_assigns_stay_balanced);

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn lapsed_nodes_are_reaped() -> Result<(), $crate::registry::RegistryError> {
                suite::run($factory, 300, |r| suite::lapsed_nodes_are_reaped(r, 300)).await
            }
        }
    };
}
