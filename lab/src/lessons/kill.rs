//! "Kill a node under load": the busiest node is killed (SIGKILL) while users talk; its
//! devices fail over, resync from the store, the registry notices and recounts them —
//! and the checker finds nothing lost.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use protocol::lab::{NodeState, Op};

use super::{Lesson, Runner, Setup, Step};
use crate::Routing;

pub(super) const LESSON: Lesson = Lesson {
    name: "kill-a-node",
    title: "Kill a node under load",
    article: "000_*: nodes register, die, and are cleaned up",
    about: "the busiest node killed under traffic: failover, resync, nothing lost",
    setup: Setup {
        stack: "embedded",
        nodes: 3,
        users: 6,
        devices_per_user: 2,
        routing: Routing::Routed,
    },
    steps: &[
        "Traffic across three nodes",
        "Kill the busiest node",
        "The verdict",
    ],
    script,
};

fn script(r: &mut Runner) -> Pin<Box<dyn Future<Output = Step> + Send + '_>> {
    Box::pin(run(r))
}

async fn run(r: &mut Runner) -> Step {
    let devices = (LESSON.setup.users * LESSON.setup.devices_per_user) as u32;
    r.step(
        0,
        "Six users with two devices each (a phone and a laptop), spread over three nodes, \
         talking in direct conversations and rooms. Every message must reach every device of \
         every member — the sender's other device too.",
    )
    .await;
    r.reset().await?;
    r.op(Op::Rate {
        per_sec: 20.0,
        room_share: Some(0.4),
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = r.update();
    let victim = before
        .cluster
        .nodes
        .iter()
        .max_by_key(|n| n.devices)
        .map(|n| n.slot.clone())
        .ok_or("no node to kill")?;

    r.step(
        1,
        &format!(
            "The lab kills {victim} (SIGKILL: no goodbye) while the traffic goes on. Watch its \
             devices reconnect to the others through the controller, resync from their \
             cursors, and the registry drop {victim} when its lease runs out. A survivor \
             publishes again what {victim} had stored but maybe not published."
        ),
    )
    .await;
    r.op(Op::Kill {
        node: victim.clone(),
    })
    .await?;
    let (moved, after) = r
        .until(Duration::from_secs(30), |u| {
            let dead = u
                .cluster
                .nodes
                .iter()
                .any(|n| n.slot == victim && n.state == NodeState::Dead && n.devices == 0);
            dead && u.traffic.live >= devices
                && u.presence
                    .notices
                    .iter()
                    .any(|n| n.noticed_after_ms.is_some())
        })
        .await;
    r.expect(moved, "the victim's devices moved and the registry noticed");
    let noticed = after
        .presence
        .notices
        .iter()
        .find_map(|n| n.noticed_after_ms)
        .unwrap_or(0);
    r.figure(format!(
        "{} failovers: p50 {:.0} ms, max {:.0} ms; the registry noticed after {noticed} ms",
        after.checker.failover.count, after.checker.failover.p50_ms, after.checker.failover.max_ms
    ));

    r.step(
        2,
        "The traffic stops; the checker waits for what is on its way and judges: lost, \
         duplicated, out of order, on every device.",
    )
    .await;
    let verdict = r.settle(Duration::from_secs(20)).await;
    r.expect_green(&verdict, "a node killed under load: nothing lost");
    // The registry's counts follow the devices: every one is counted once, on a live node.
    let (counted, u) = r
        .until(Duration::from_secs(10), |u| {
            u.cluster
                .nodes
                .iter()
                .filter(|n| n.state == NodeState::Live)
                .map(|n| n.connections)
                .sum::<u64>()
                == u64::from(devices)
        })
        .await;
    r.expect(
        counted,
        "the registry counts every device once, on the survivors",
    );
    let live = u
        .cluster
        .nodes
        .iter()
        .filter(|n| n.state == NodeState::Live)
        .count();
    r.figure(format!(
        "{} of {} deliveries; the registry counts {devices} devices on {live} live nodes",
        verdict.delivered, verdict.expected
    ));
    Ok(())
}
