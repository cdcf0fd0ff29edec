//! "Pub/sub forgets" (`001_*`): Redis pub/sub drops what is published while a subscriber is
//! away. With the bus as the only path, the user loses those messages; with the store and a
//! resync behind the bus, nothing is lost.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use protocol::lab::Op;
use protocol::teaching::Teaching;

use super::{Lesson, Runner, Setup, Step};
use crate::Routing;

/// How long the subscription stays cut.
const CUT: Duration = Duration::from_secs(5);

pub(super) const LESSON: Lesson = Lesson {
    name: "pubsub-forgets",
    title: "Pub/sub forgets",
    article: "001_*: Redis pub/sub between chat servers",
    about: "one node's subscription cut for 5 s: bus only loses messages, resync loses none",
    setup: Setup {
        stack: "redis",
        nodes: 3,
        users: 9,
        devices_per_user: 1,
        routing: Routing::Routed,
    },
    steps: &[
        "The bus alone, and one subscriber blinks",
        "The store and a resync behind the bus",
    ],
    script,
};

fn script(r: &mut Runner) -> Pin<Box<dyn Future<Output = Step> + Send + '_>> {
    Box::pin(run(r))
}

/// Traffic, then n2's bus connection cut for [`CUT`] under traffic, then restored.
async fn blink(r: &mut Runner) -> Step {
    r.traffic(20.0, 0.5, Duration::from_secs(2)).await?;
    r.op(Op::CutBus { node: "n2".into() }).await?;
    tokio::time::sleep(CUT).await;
    r.op(Op::RestoreBus { node: "n2".into() }).await?;
    r.traffic(20.0, 0.5, Duration::from_secs(3)).await
}

async fn run(r: &mut Runner) -> Step {
    r.step(
        0,
        "Three nodes talk through Redis pub/sub. Teaching mode \"bus only\": what the bus \
         brings is all a device gets — no resync when the bus comes back, no gap filled from \
         the store (the client core fills none either). Under traffic, the lab cuts n2's \
         connection to Redis for 5 s. Redis does not keep what it publishes to nobody: watch \
         the devices on n2 in the checker.",
    )
    .await;
    r.op(Op::Teach {
        mode: Some(Teaching::BusOnly),
    })
    .await?;
    r.reset().await?;
    blink(r).await?;
    let mistake = r.settle(Duration::from_secs(4)).await;
    r.expect_red(&mistake, "bus only: what pub/sub dropped is lost");
    r.expect(mistake.lost > 0, "the checker counts the lost messages");
    r.figure(format!(
        "bus only, n2 cut 5 s: {} deliveries lost of {} (skipped seqs: {})",
        mistake.lost, mistake.expected, mistake.out_of_order
    ));
    if let Some(v) = mistake.violations.first() {
        r.figure(format!("first: {}", v.text));
    }

    r.step(
        1,
        "Why: pub/sub is fire-and-forget; a subscriber that blinks misses what was sent \
         meanwhile, and nothing tells it. The fix here: every message is stored before it is \
         acknowledged, each device has a cursor per conversation, and whenever the bus comes \
         back (or a seq is skipped) the node compares the cursors with the store and sends \
         what is missing. (The article moved to Kafka, a log that keeps messages.) Teaching \
         mode off; the same cut again.",
    )
    .await;
    r.op(Op::Teach { mode: None }).await?;
    r.reset().await?;
    blink(r).await?;
    let fixed = r.settle(Duration::from_secs(20)).await;
    r.expect_green(&fixed, "with resync, the same cut loses nothing");
    r.figure(format!(
        "resync, n2 cut 5 s: {} of {} deliveries made, lost {}, latency p99 {:.0} ms",
        fixed.delivered, fixed.expected, fixed.lost, fixed.latency.p99_ms
    ));
    Ok(())
}
