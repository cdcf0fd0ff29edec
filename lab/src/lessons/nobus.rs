//! "A load balancer is not a cluster" (`002_*`): nodes without a bus deliver only to the
//! devices connected to themselves; with the bus, a direct message reaches its recipient on
//! any node.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use protocol::lab::Op;
use protocol::teaching::Teaching;

use super::{Lesson, Runner, Setup, Step};
use crate::Routing;

pub(super) const LESSON: Lesson = Lesson {
    name: "lb-is-not-a-cluster",
    title: "A load balancer is not a cluster",
    article: "002_*: nginx in front of several chat servers",
    about: "without a bus, direct messages between users on different nodes never arrive",
    setup: Setup {
        stack: "embedded",
        nodes: 3,
        users: 9,
        devices_per_user: 1,
        routing: Routing::Routed,
    },
    steps: &[
        "Spread, but not connected: no bus",
        "The bus between the nodes",
    ],
    script,
};

fn script(r: &mut Runner) -> Pin<Box<dyn Future<Output = Step> + Send + '_>> {
    Box::pin(run(r))
}

async fn run(r: &mut Runner) -> Step {
    r.step(
        0,
        "Nine users, one device each, spread over three nodes by the controller — as a load \
         balancer in front would spread them. Teaching mode \"no bus\": each node delivers a \
         message only to the devices connected to itself. Watch the checker while the users \
         send direct messages: a message whose recipient sits on another node is never shown. \
         Each user's status line says \"teaching mode: no bus between nodes\".",
    )
    .await;
    r.op(Op::Teach {
        mode: Some(Teaching::NoBus),
    })
    .await?;
    let shown = r.update().cluster.teaching == Some(Teaching::NoBus);
    r.expect(shown, "the panel says which teaching mode is on");
    r.reset().await?;
    r.traffic(15.0, 0.0, Duration::from_secs(4)).await?;
    let mistake = r.settle(Duration::from_secs(3)).await;
    r.expect_red(&mistake, "no bus: messages to other nodes are lost");
    r.expect(mistake.lost > 0, "the checker counts the lost messages");
    r.figure(format!(
        "no bus: {} of {} deliveries made, {} lost",
        mistake.delivered, mistake.expected, mistake.lost
    ));
    if let Some(v) = mistake.violations.first() {
        r.figure(format!("first: {}", v.text));
    }

    r.step(
        1,
        "What went wrong: the load balancer decided only where each device connects; nothing \
         carried a message from the sender's node to the recipient's. The fix is a bus between \
         the nodes: the node that accepts a message publishes it to the nodes that hold its \
         recipients (the registry knows which). Teaching mode off: the same traffic again.",
    )
    .await;
    r.op(Op::Teach { mode: None }).await?;
    r.reset().await?;
    r.traffic(15.0, 0.0, Duration::from_secs(4)).await?;
    let fixed = r.settle(Duration::from_secs(20)).await;
    r.expect_green(&fixed, "with the bus, every message reaches every device");
    r.figure(format!(
        "with the bus: {} of {} deliveries made, latency p50 {:.0} ms",
        fixed.delivered, fixed.expected, fixed.latency.p50_ms
    ));
    Ok(())
}
