//! "Least connections that races" (`000_*`): a login storm against the article's
//! least-connections (a scan of every node under one global lock, no reservation: every
//! answer given before the devices connect sees the same counts) and against ours (each
//! answer reserves its slot at once).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use protocol::lab::{Op, Update};
use protocol::teaching::Teaching;

use super::{Lesson, Runner, Setup, Step};
use crate::Routing;

/// Simultaneous logins.
const BURST: u32 = 500;

pub(super) const LESSON: Lesson = Lesson {
    name: "least-connections-race",
    title: "Least connections that races",
    article: "000_*: the controller's least-connections under a global lock",
    about: "500 simultaneous logins: their least-connections piles them up, ours spreads them",
    setup: Setup {
        stack: "embedded",
        nodes: 3,
        users: 3,
        devices_per_user: 1,
        routing: Routing::Routed,
    },
    steps: &[
        "Theirs: a locked scan, no reservations",
        "Ours: every answer reserves its slot",
    ],
    script,
};

fn script(r: &mut Runner) -> Pin<Box<dyn Future<Output = Step> + Send + '_>> {
    Box::pin(run(r))
}

/// Devices per node now (the lab's own view of its virtual devices).
fn spread(u: &Update) -> Vec<(String, u32)> {
    u.cluster
        .nodes
        .iter()
        .map(|n| (n.slot.clone(), n.devices))
        .collect()
}

/// Logs [`BURST`] devices in at once, waits until they are live, and returns where they went
/// (the burst alone: the devices there before are taken off).
async fn storm(r: &mut Runner) -> Result<Vec<(String, u32)>, String> {
    let before = spread(&r.update());
    let total = r.update().traffic.live;
    r.op(Op::Burst { logins: BURST }).await?;
    let (_, after) = r
        .until(Duration::from_secs(90), |u| u.traffic.live >= total + BURST)
        .await;
    let burst: Vec<(String, u32)> = spread(&after)
        .into_iter()
        .map(|(slot, n)| {
            let had = before
                .iter()
                .find(|(s, _)| *s == slot)
                .map_or(0, |(_, n)| *n);
            (slot, n.saturating_sub(had))
        })
        .collect();
    r.op(Op::EndBurst).await?;
    r.until(Duration::from_secs(30), |u| u.traffic.live <= total)
        .await;
    Ok(burst)
}

fn describe(spread: &[(String, u32)]) -> String {
    spread
        .iter()
        .map(|(slot, n)| format!("{slot} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn gap(spread: &[(String, u32)]) -> u32 {
    let max = spread.iter().map(|(_, n)| *n).max().unwrap_or(0);
    let min = spread.iter().map(|(_, n)| *n).min().unwrap_or(0);
    max - min
}

async fn run(r: &mut Runner) -> Step {
    r.step(
        0,
        "Teaching mode \"naive least connections\": the controller answers each login by \
         scanning every node under one global lock and picking the fewest connections — with \
         no reservation, so the count moves only once a device has connected. The lab logs \
         500 devices in at once. Watch where they land.",
    )
    .await;
    r.op(Op::Teach {
        mode: Some(Teaching::NaiveLeastConnections),
    })
    .await?;
    let theirs = storm(r).await?;
    r.figure(format!(
        "theirs, {BURST} logins at once: {} (gap {})",
        describe(&theirs),
        gap(&theirs)
    ));
    r.expect(
        gap(&theirs) > BURST / 3,
        "their least-connections piles the storm onto few nodes",
    );

    r.step(
        1,
        "Why: hundreds of answers are given before the first device connects, and each one \
         reads the same counts; the global lock only makes them wait in line to read the same \
         stale numbers. Ours: the registry keeps the nodes ordered by connections plus \
         reservations (O(log N), no global lock), and each answer reserves its slot at once, so \
         the next answer already counts it. Teaching mode off, the same storm.",
    )
    .await;
    r.op(Op::Teach { mode: None }).await?;
    let ours = storm(r).await?;
    r.figure(format!(
        "ours, {BURST} logins at once: {} (gap {})",
        describe(&ours),
        gap(&ours)
    ));
    r.expect(
        gap(&ours) <= BURST / 10,
        "our least-connections spreads the storm evenly",
    );
    let checker = r.update().checker;
    r.figure(format!("checker: {}", checker.headline));
    Ok(())
}
