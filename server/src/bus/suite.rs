//! The behavioural suite every [`Bus`](super::Bus) implementation runs. A factory gives `n`
//! connected bus handles, one per node id, in a fresh namespace; the scenarios subscribe each
//! and check who receives what.
//!
//! Instantiate with `bus_suite!(|n| async move { … Vec<(NodeId, SharedBus)> })`.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use protocol::NodeId;

use super::{BusError, Inbox, SharedBus, Targets};

type R<T = ()> = Result<T, BusError>;

/// How long a scenario waits for an envelope that must arrive.
const ARRIVE: Duration = Duration::from_secs(5);
/// How long a scenario waits to be sure an envelope does not arrive.
const SILENCE: Duration = Duration::from_millis(300);

async fn subscribe_all(nodes: &[(NodeId, SharedBus)]) -> R<Vec<Inbox>> {
    let mut inboxes = Vec::new();
    for (id, bus) in nodes {
        inboxes.push(bus.subscribe(id).await?);
    }
    // Let subscriptions settle where the backend needs a round trip to make them effective.
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(inboxes)
}

async fn next(inbox: &mut Inbox) -> Option<Bytes> {
    tokio::time::timeout(ARRIVE, inbox.recv())
        .await
        .ok()
        .flatten()
}

async fn silent(inbox: &mut Inbox) -> bool {
    tokio::time::timeout(SILENCE, inbox.recv()).await.is_err()
}

/// A routed publish reaches its targets and nobody else.
pub async fn routed_reaches_only_targets(nodes: Vec<(NodeId, SharedBus)>) -> R {
    let mut inboxes = subscribe_all(&nodes).await?;
    let targets = Targets::Nodes(vec![nodes[1].0.clone(), nodes[2].0.clone()]);
    nodes[0]
        .1
        .publish(&targets, b"k", Bytes::from_static(b"to-1-and-2"))
        .await?;
    assert_eq!(
        next(&mut inboxes[1]).await.as_deref(),
        Some(&b"to-1-and-2"[..])
    );
    assert_eq!(
        next(&mut inboxes[2]).await.as_deref(),
        Some(&b"to-1-and-2"[..])
    );
    assert!(
        silent(&mut inboxes[0]).await,
        "the publisher was not a target"
    );
    Ok(())
}

/// A fanout publish reaches every node (the publisher too; nodes skip their own envelopes by
/// origin).
pub async fn fanout_reaches_everyone(nodes: Vec<(NodeId, SharedBus)>) -> R {
    let mut inboxes = subscribe_all(&nodes).await?;
    nodes[1]
        .1
        .publish(&Targets::All, b"k", Bytes::from_static(b"all"))
        .await?;
    for inbox in inboxes.iter_mut() {
        assert_eq!(next(inbox).await.as_deref(), Some(&b"all"[..]));
    }
    Ok(())
}

/// Many envelopes of one key from one publisher arrive complete and in order.
pub async fn many_envelopes_arrive_in_order(nodes: Vec<(NodeId, SharedBus)>) -> R {
    let mut inboxes = subscribe_all(&nodes).await?;
    let to = Targets::Nodes(vec![nodes[1].0.clone()]);
    let n = 2_000u32;
    for i in 0..n {
        nodes[0]
            .1
            .publish(&to, b"one-key", Bytes::from(i.to_be_bytes().to_vec()))
            .await?;
    }
    for i in 0..n {
        let got = next(&mut inboxes[1])
            .await
            .unwrap_or_else(|| panic!("envelope {i} lost"));
        assert_eq!(&got[..], &i.to_be_bytes()[..], "out of order at {i}");
    }
    assert!(silent(&mut inboxes[1]).await, "more than was sent");
    Ok(())
}

/// Envelopes of many keys, published interleaved and several at a time, arrive complete and
/// in order per key, routed and fanout alike (a bus that orders per partition must keep one
/// key in one partition).
pub async fn each_key_stays_in_order(nodes: Vec<(NodeId, SharedBus)>) -> R {
    let mut inboxes = subscribe_all(&nodes).await?;
    let keys = 12u32;
    let per_key = 100u32;
    for targets in [Targets::Nodes(vec![nodes[1].0.clone()]), Targets::All] {
        // Up to 32 publishes in flight, each key's in the order they were started.
        let publisher = nodes[0].1.clone();
        let sends = (0..per_key).flat_map(|i| (0..keys).map(move |k| (k, i)));
        futures::stream::iter(sends)
            .map(|(k, i)| {
                let publisher = publisher.clone();
                let targets = targets.clone();
                async move {
                    let key = format!("key-{k}");
                    publisher
                        .publish(&targets, key.as_bytes(), Bytes::from(format!("{k}:{i}")))
                        .await
                }
            })
            .buffered(32)
            .try_collect::<Vec<()>>()
            .await?;
        let mut next_of = vec![0u32; keys as usize];
        for _ in 0..keys * per_key {
            let got = next(&mut inboxes[1]).await.expect("an envelope was lost");
            let text = String::from_utf8_lossy(&got).into_owned();
            let (k, i) = text
                .split_once(':')
                .and_then(|(k, i)| Some((k.parse::<usize>().ok()?, i.parse::<u32>().ok()?)))
                .unwrap_or_else(|| panic!("not an envelope of this scenario: {text}"));
            assert_eq!(i, next_of[k], "key {k} out of order");
            next_of[k] += 1;
        }
        assert!(silent(&mut inboxes[1]).await, "more than was sent");
    }
    Ok(())
}

/// Concurrent publishers are all delivered (order across publishers is not promised).
pub async fn concurrent_publishers_all_delivered(nodes: Vec<(NodeId, SharedBus)>) -> R {
    let mut inboxes = subscribe_all(&nodes).await?;
    let to = Targets::Nodes(vec![nodes[2].0.clone()]);
    let per = 300u32;
    let mut tasks = Vec::new();
    for p in 0..2u32 {
        let bus = nodes[p as usize].1.clone();
        let to = to.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                let key = format!("key-{}", i % 7);
                bus.publish(&to, key.as_bytes(), Bytes::from(format!("{p}:{i}")))
                    .await?;
            }
            Ok::<(), BusError>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| BusError::Internal(e.to_string()))??;
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..(2 * per) {
        let got = next(&mut inboxes[2]).await.expect("an envelope was lost");
        assert!(seen.insert(got), "an envelope arrived twice");
    }
    Ok(())
}

/// The bus says it is up once connected.
pub async fn reports_up(nodes: Vec<(NodeId, SharedBus)>) -> R {
    let _inboxes = subscribe_all(&nodes).await?;
    for (id, bus) in &nodes {
        let deadline = tokio::time::Instant::now() + ARRIVE;
        while !bus.is_up() {
            assert!(tokio::time::Instant::now() < deadline, "{id} never came up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// Runs one scenario on fresh handles.
pub async fn run<F, Fut, S, SFut>(factory: F, scenario: S) -> R
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Vec<(NodeId, SharedBus)>>,
    S: FnOnce(Vec<(NodeId, SharedBus)>) -> SFut,
    SFut: Future<Output = R>,
{
    scenario(factory(3).await).await
}

/// Expands to one `#[tokio::test]` per scenario for a bus factory `|n| async {…}`.
#[macro_export]
macro_rules! bus_suite {
    ($factory:expr) => {
        mod bus_suite {
            // The factory may name items of the calling module, or none of them.
            #[allow(unused_imports)]
            use super::*;
            use $crate::bus::suite;

            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() -> Result<(), $crate::bus::BusError> {
                        suite::run($factory, suite::$name).await
                    }
                };
            }
            case!(routed_reaches_only_targets);
            case!(fanout_reaches_everyone);
            case!(many_envelopes_arrive_in_order);
            case!(each_key_stays_in_order);
            case!(concurrent_publishers_all_delivered);
            case!(reports_up);
        }
    };
}
