//! "Order needs a key" (`004_*`): events of one room come from several nodes; with one path
//! slower than the others, showing them in arrival order mixes them up. Ordering by the
//! room's `seq` (given by the store as it persists) keeps them in order whatever the paths.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use protocol::lab::Op;
use protocol::teaching::Teaching;

use super::{Lesson, Runner, Setup, Step};
use crate::Routing;

/// The slow path: n1's bus connection, each way.
const DELAY_MS: u64 = 250;

pub(super) const LESSON: Lesson = Lesson {
    name: "order-needs-a-key",
    title: "Order needs a key",
    article: "004_*: Kafka partitioned by room id to keep each room in order",
    about: "one slow path: arrival order mixes a room up, seq order does not",
    setup: Setup {
        stack: "redis",
        nodes: 3,
        users: 8,
        devices_per_user: 1,
        routing: Routing::Routed,
    },
    steps: &[
        "One slow path, shown in arrival order",
        "Shown in the room's seq order",
    ],
    script,
};

fn script(r: &mut Runner) -> Pin<Box<dyn Future<Output = Step> + Send + '_>> {
    Box::pin(run(r))
}

async fn run(r: &mut Runner) -> Step {
    r.step(
        0,
        "Two rooms of four, members spread over three nodes, everyone talking in the rooms. \
         The lab delays n1's bus connection by 250 ms each way: what n1's users send reaches \
         the other nodes late, and what the others send reaches n1 late. Teaching mode \
         \"arrival order\": devices show events as they arrive. Watch the checker's \"out of \
         order\": a room's message shown after a later one.",
    )
    .await;
    r.op(Op::DelayBus {
        node: "n1".into(),
        ms: DELAY_MS,
    })
    .await?;
    r.op(Op::Teach {
        mode: Some(Teaching::ArrivalOrder),
    })
    .await?;
    r.reset().await?;
    r.traffic(25.0, 1.0, Duration::from_secs(5)).await?;
    let mistake = r.settle(Duration::from_secs(5)).await;
    r.expect_red(
        &mistake,
        "arrival order with one slow path: rooms out of order",
    );
    r.expect(
        mistake.out_of_order > 0,
        "the checker counts events shown out of order",
    );
    r.figure(format!(
        "arrival order, n1 +{DELAY_MS} ms: {} of {} deliveries out of order",
        mistake.out_of_order, mistake.expected
    ));
    if let Some(v) = mistake.violations.first() {
        r.figure(format!("first: {}", v.text));
    }

    r.step(
        1,
        "Why: two paths, two speeds — nothing about the network keeps a room's messages in \
         the order they were accepted. The fix needs a key: each room's messages are \
         numbered (seq) by the store as it persists them, and every node hands a device the \
         room's events in seq order, holding an early one back until the one before it \
         arrives (or reading it from the store). The article's version of the key is Kafka's \
         partition key, the room id (a Kafka bus is not part of this lesson yet). Teaching \
         mode off, the same slow path.",
    )
    .await;
    r.op(Op::Teach { mode: None }).await?;
    r.reset().await?;
    r.traffic(25.0, 1.0, Duration::from_secs(5)).await?;
    let fixed = r.settle(Duration::from_secs(20)).await;
    r.op(Op::DelayBus {
        node: "n1".into(),
        ms: 0,
    })
    .await?;
    r.expect_green(
        &fixed,
        "seq order: every room in order despite the slow path",
    );
    r.figure(format!(
        "seq order, n1 +{DELAY_MS} ms: 0 of {} out of order expected, {} seen; latency p50 \
         {:.0} ms, p99 {:.0} ms",
        fixed.expected, fixed.out_of_order, fixed.latency.p50_ms, fixed.latency.p99_ms
    ));
    Ok(())
}
