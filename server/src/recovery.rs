//! Cleaning up after a dead node. A node acks an event once it is persisted and publishes it
//! right after; if it dies in between, the event is in the store but on no bus. The survivor
//! that reaps the node publishes again every event the dead node persisted since shortly before
//! its oldest unpublished one (or its last heartbeat), and tells the contacts of users who went
//! offline with it. Receivers drop what they already had, by `seq`.

use std::time::Duration;

use bytes::Bytes;
use protocol::bus::BusKind;
use protocol::model::PresenceState;
use protocol::ws::ServerFrame;
use protocol::{Millis, NodeId, UserId};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::order_key;
use crate::ids::now_ms;
use crate::registry::DeadNode;
use crate::route::Router;
use crate::store::SharedStore;
use tokio::sync::mpsc;

/// How far before the last sign of life to look: covers events accepted between the node's
/// last heartbeat and its death, and heartbeats that were late.
pub const MARGIN_MS: Millis = 5_000;

/// Events published again per store page.
const PAGE: u32 = 1_000;

/// Corrects presence, then republishes what `dead` may not have published. Retries the store
/// and the bus until `cancel` fires.
pub async fn recover(
    dead: DeadNode,
    store: SharedStore,
    router: Router,
    cancel: CancellationToken,
) {
    let started = now_ms();
    // Presence first: it is what people see, and it costs one publish per user.
    for user in &dead.went_offline {
        let Some(contacts) = retry(&cancel, || store.contacts(*user)).await else {
            return;
        };
        let frame = presence_frame(*user, false);
        let _ = retry(&cancel, || {
            router.publish(&contacts, BusKind::Live, frame.clone())
        })
        .await;
    }
    let since = dead
        .unpublished_since
        .map_or(dead.last_heartbeat, |u| u.min(dead.last_heartbeat))
        - MARGIN_MS;
    let mut cursor = since;
    let mut republished = 0u64;
    loop {
        let Some(page) = retry(&cancel, || store.events_by_origin(&dead.node, cursor, PAGE)).await
        else {
            return;
        };
        let full = page.len() as u32 == PAGE;
        // One registry call for the page, then every publish of the page at once.
        let lists: Vec<&[UserId]> = page.iter().map(|a| &a.recipients[..]).collect();
        let Some(targets) = retry(&cancel, || router.targets(&lists)).await else {
            return;
        };
        let publishes = page.iter().zip(targets).filter_map(|(appended, targets)| {
            let targets = targets?;
            let ev = &appended.event;
            let kind = BusKind::Event {
                conv: ev.conv,
                seq: ev.seq,
                id: ev.id,
            };
            let key = order_key(&kind);
            let env = router.envelope(
                appended.recipients.to_vec(),
                kind,
                Bytes::from(ServerFrame::Event(ev.clone()).to_json()),
            );
            let router = &router;
            let cancel = &cancel;
            Some(async move {
                retry(cancel, || router.bus.publish(&targets, &key, env.clone()))
                    .await
                    .is_some()
            })
        });
        republished += futures::future::join_all(publishes)
            .await
            .into_iter()
            .filter(|ok| *ok)
            .count() as u64;
        let last = page.iter().map(|a| a.event.at).max().unwrap_or(cursor);
        if !full {
            break;
        }
        // The next page starts at the last time seen (events sharing it are read again, which
        // receivers drop); a full page all within one millisecond must still move on.
        cursor = if last > cursor { last } else { cursor + 1 };
    }
    metrics::counter!("chat_recovered_events_total").increment(republished);
    tracing::info!(
        node = %dead.node,
        republished,
        went_offline = dead.went_offline.len(),
        took_ms = now_ms() - started,
        "cleaned up after a dead node"
    );
}

/// Reaps the registry every `period` (and takes nodes reported dead by other means from
/// `reported`), cleaning up after each dead node, until `cancel` fires. The controller runs it;
/// with a shared registry (Redis) every node runs it too — each dead node is reaped by exactly
/// one of them.
pub async fn run_reaper(
    store: SharedStore,
    router: Router,
    period: Duration,
    mut reported: Option<mpsc::UnboundedReceiver<DeadNode>>,
    cancel: CancellationToken,
) {
    // Recovery publishes under an origin of its own: a node that reaps a peer is itself one of
    // the targets (its devices need what the dead node did not publish), and nodes skip
    // envelopes whose origin is themselves.
    let recovery = Router {
        me: NodeId::new(format!("{}.recovery", router.me))
            .or_else(|_| NodeId::new("recovery"))
            .unwrap_or_else(|_| router.me.clone()),
        ..router.clone()
    };
    // The recoveries under way, each stopped by the cancel; waited for before returning.
    let recoveries = TaskTracker::new();
    loop {
        let dead: Vec<DeadNode> = tokio::select! {
            _ = cancel.cancelled() => {
                recoveries.close();
                recoveries.wait().await;
                return;
            }
            Some(d) = async {
                match reported.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => vec![d],
            _ = tokio::time::sleep(period) => match router.registry.reap(now_ms()).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "reap failed");
                    continue;
                }
            },
        };
        for d in dead {
            metrics::counter!("chat_nodes_reaped_total").increment(1);
            tracing::warn!(node = %d.node, offline = d.went_offline.len(), "node gone; recovering");
            recoveries.spawn(recover(d, store.clone(), recovery.clone(), cancel.clone()));
        }
    }
}

/// Presence frame recipients never include the user themself; this helper is shared by nodes.
pub fn presence_frame(user: UserId, online: bool) -> Bytes {
    Bytes::from(ServerFrame::Presence(PresenceState { user, online }).to_json())
}

async fn retry<T, E, F, Fut>(cancel: &CancellationToken, mut f: F) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut delay = Duration::from_millis(100);
    loop {
        match f().await {
            Ok(v) => return Some(v),
            Err(e) => {
                tracing::warn!(error = %e, "recovery step failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}
