//! The lab driven headless, as lessons and tests drive it: a real cluster behind bus proxies,
//! virtual users on real client cores, the checker judging what every device got while the
//! lab kills a node, cuts a node's bus and switches routing. Needs the `server` binary
//! (`cargo build -p server`).

use std::time::{Duration, Instant};

use lab::control::{Lab, LabConfig};
use lab::users::UsersConfig;
use lab::world::Cursor;
use protocol::lab::{Level, NodeState, Op, StepKind, Update};

const PATIENCE: Duration = Duration::from_secs(30);

async fn lab(nodes: usize, users: usize, devices: usize) -> Lab {
    let mut cluster = lab::ClusterConfig::new(nodes);
    cluster.cuttable_bus = true;
    cluster.controller_args = vec!["--password-hash".into(), "fast".into()];
    let mut config = LabConfig::new(cluster);
    config.users = Some(UsersConfig::new(users, devices));
    config.always_observe = true;
    match Lab::start(config).await {
        Ok(lab) => lab,
        Err(e) => panic!("starting a lab (is the server built? `cargo build -p server`): {e}"),
    }
}

async fn op(lab: &Lab, op: Op) -> String {
    let what = format!("{op:?}");
    let r = lab.op(op).await;
    assert!(r.ok, "{what}: {}", r.message);
    r.message
}

/// Polls the panel's view until `cond` holds.
async fn until(lab: &Lab, what: &str, cond: impl Fn(&Update) -> bool) -> Update {
    let deadline = Instant::now() + PATIENCE;
    let mut cursor = Cursor::default();
    loop {
        let u = lab.update(&mut cursor);
        if cond(&u) {
            return u;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; checker: {}; nodes: {:?}",
            u.checker.headline,
            u.cluster
                .nodes
                .iter()
                .map(|n| (&n.id, n.state, n.devices))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn live_devices(u: &Update) -> u32 {
    u.traffic.live
}

#[tokio::test]
async fn a_killed_node_loses_nothing_and_its_devices_move() {
    let lab = lab(3, 6, 2).await;
    until(&lab, "12 live devices", |u| live_devices(u) == 12).await;
    op(
        &lab,
        Op::Rate {
            per_sec: 30.0,
            room_share: Some(0.3),
        },
    )
    .await;
    let before = until(&lab, "traffic delivered", |u| u.checker.delivered > 60).await;
    let victim = before
        .cluster
        .nodes
        .iter()
        .max_by_key(|n| n.devices)
        .map(|n| n.slot.clone())
        .expect("a node");
    op(
        &lab,
        Op::Kill {
            node: victim.clone(),
        },
    )
    .await;
    let after = until(
        &lab,
        "the victim dead, its devices moved, the registry noticing",
        |u| {
            let dead = u
                .cluster
                .nodes
                .iter()
                .any(|n| n.slot == victim && n.state == NodeState::Dead && n.devices == 0);
            dead && live_devices(u) == 12
                && u.presence
                    .notices
                    .iter()
                    .any(|n| n.noticed_after_ms.is_some())
        },
    )
    .await;
    assert!(after.checker.failover.count > 0, "failovers are timed");
    let settled = lab.settle(PATIENCE).await;
    assert_eq!(settled.verdict, Level::Ok, "{}", settled.headline);
    assert_eq!(settled.lost + settled.duplicates + settled.out_of_order, 0);
    assert!(settled.delivered > 60);
    // The panel was shown sampled messages with their path, and the assignments.
    let report = lab.report();
    assert!(
        report.messages.iter().any(|m| {
            let kinds: Vec<StepKind> = m.steps.iter().map(|s| s.what).collect();
            kinds.contains(&StepKind::Persisted) && kinds.contains(&StepKind::Shown)
        }),
        "a sampled message with its steps from node to device"
    );
    assert!(
        !report.assignments.is_empty(),
        "the controller's answers were traced"
    );
    assert!(lab.shutdown().await.unwrap_or(false), "clean shutdown");
}

#[tokio::test]
async fn a_cut_bus_delays_and_the_resync_fills_the_gap() {
    let lab = lab(3, 6, 2).await;
    until(&lab, "12 live devices", |u| live_devices(u) == 12).await;
    op(
        &lab,
        Op::Rate {
            per_sec: 30.0,
            room_share: Some(0.3),
        },
    )
    .await;
    until(&lab, "traffic delivered", |u| u.checker.delivered > 30).await;
    op(&lab, Op::CutBus { node: "n2".into() }).await;
    until(&lab, "n2 cut", |u| {
        u.cluster.nodes.iter().any(|n| n.slot == "n2" && n.bus_cut)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    op(&lab, Op::RestoreBus { node: "n2".into() }).await;
    let settled = lab.settle(PATIENCE).await;
    assert_eq!(settled.verdict, Level::Ok, "{}", settled.headline);
    // Something crossed by the store rather than the bus while the bus was cut.
    let report = lab.report();
    assert!(
        report
            .log
            .iter()
            .any(|l| l.text.contains("n2") && l.text.contains("bus back")),
        "the node said its bus came back: {:?}",
        report.log.iter().map(|l| &l.text).collect::<Vec<_>>()
    );
    assert!(lab.shutdown().await.unwrap_or(false), "clean shutdown");
}

#[tokio::test]
async fn fanout_carries_one_envelope_per_node() {
    let lab = lab(3, 6, 1).await;
    until(&lab, "6 live devices", |u| live_devices(u) == 6).await;
    op(
        &lab,
        Op::Rate {
            per_sec: 20.0,
            room_share: Some(0.0),
        },
    )
    .await;
    let routed = until(&lab, "msgs-per-op, routed", |u| u.checker.ops_sampled >= 20).await;
    let routed = routed.checker.msgs_per_op.expect("a figure");
    assert!(routed <= 2.0, "routed: {routed}");
    op(
        &lab,
        Op::SetRouting {
            routing: "fanout".into(),
        },
    )
    .await;
    op(&lab, Op::ResetChecker).await;
    let fanout = until(&lab, "msgs-per-op, fanout", |u| u.checker.ops_sampled >= 20).await;
    let fanout = fanout.checker.msgs_per_op.expect("a figure");
    assert!(fanout > 2.7 && fanout <= 3.0, "fanout on 3 nodes: {fanout}");
    let settled = lab.settle(PATIENCE).await;
    assert_eq!(settled.verdict, Level::Ok, "{}", settled.headline);
    assert!(lab.shutdown().await.unwrap_or(false), "clean shutdown");
}
