//! The world fed by hand: frames first whole then by difference, a slow panel's bounded
//! catch-up, the registry's notice timed from the fault, counters parsed.

use protocol::NodeId;
use protocol::trace::NodeLoad;

use super::*;

fn node_ev(node: &str, at_us: i64, what: Trace) -> TraceEvent {
    TraceEvent {
        at_us,
        node: NodeId::new(node).expect("id"),
        what,
    }
}

fn hop(hop: Hop, id: i64, peers: &[&str]) -> Trace {
    Trace::Hop {
        hop,
        id: MessageId(id),
        conv: ConvId(1),
        seq: 1,
        user: None,
        device: None,
        peers: peers.iter().map(|p| NodeId::new(*p).expect("id")).collect(),
    }
}

#[test]
fn counters_parse_from_prometheus_text() {
    let c = NodeCounters::parse(
        "# TYPE chat_deliveries_total counter\nchat_deliveries_total 12\n\
         chat_events_persisted_total 3\nchat_bus_received_total{x=\"y\"} 9\n",
    );
    assert_eq!(c.deliveries, 12.0);
    assert_eq!(c.persisted, 3.0);
    // Labelled series are not the plain counter.
    assert_eq!(c.bus_received, 0.0);
}

#[test]
fn a_panel_gets_everything_first_then_only_what_changed() {
    let mut w = World::new("r1", CheckerConfig::default(), 0);
    w.trace("n1", node_ev("n1", 10, hop(Hop::Persisted, 5, &[])));
    w.trace("n1", node_ev("n1", 30, hop(Hop::Published, 5, &["n2"])));
    w.trace("n2", node_ev("n2", 20, hop(Hop::Received, 5, &["n1"])));
    w.log(Level::Ok, "hello", 1);
    let mut cursor = Cursor::default();
    let first = w.update(&mut cursor, 100);
    assert!(first.full);
    assert_eq!(first.messages.len(), 1);
    let steps: Vec<StepKind> = first.messages[0].steps.iter().map(|s| s.what).collect();
    assert_eq!(
        steps,
        [StepKind::Persisted, StepKind::Received, StepKind::Published],
        "steps in time order whatever stream they came from"
    );
    assert_eq!(first.messages[0].origin.as_deref(), Some("n1"));
    assert_eq!(first.log.len(), 1);
    assert!(first.devices.is_some());
    let quiet = w.update(&mut cursor, 200);
    assert!(!quiet.full);
    assert!(quiet.messages.is_empty() && quiet.log.is_empty() && quiet.devices.is_none());
    w.trace(
        "controller",
        node_ev(
            "controller-1",
            300,
            Trace::Assigned {
                chosen: NodeLoad {
                    node: NodeId::new("n2").expect("id"),
                    connections: 1,
                    reserved: 1,
                },
                others: vec![],
                excluded: vec![],
            },
        ),
    );
    let next = w.update(&mut cursor, 400);
    assert_eq!(next.assignments.len(), 1);
    assert!(next.messages.is_empty());
}

#[test]
fn a_slow_panel_gets_the_newest_messages_and_a_count_of_the_rest() {
    let mut w = World::new("r1", CheckerConfig::default(), 0);
    let mut cursor = Cursor::default();
    let _ = w.update(&mut cursor, 0);
    for id in 0..(MESSAGES_PER_FRAME as i64 + 15) {
        w.trace("n1", node_ev("n1", id, hop(Hop::Persisted, id, &[])));
    }
    let u = w.update(&mut cursor, 1);
    assert_eq!(u.messages.len(), MESSAGES_PER_FRAME);
    assert_eq!(u.skipped_messages, 15);
    assert_eq!(
        u.messages.last().map(|m| m.id),
        Some(MessageId(MESSAGES_PER_FRAME as i64 + 14))
    );
    // A new run starts every panel over.
    w.new_run("r2", 2);
    assert!(w.update(&mut cursor, 3).full);
}

#[test]
fn the_registry_notice_is_timed_from_the_fault() {
    let mut w = World::new("r1", CheckerConfig::default(), 0);
    w.expect_notice("n2", "n2", "kill", 1_000_000);
    let listed = |ids: &[&str]| NodesResponse {
        nodes: ids
            .iter()
            .map(|id| NodeStatus {
                id: NodeId::new(*id).expect("id"),
                ws_url: String::new(),
                http_url: String::new(),
                connections: 0,
                reserved: 0,
                started_at: 0,
                last_heartbeat: 0,
                state: RegistryState::Live,
            })
            .collect(),
        now: 0,
    };
    w.registry(Ok(listed(&["n1", "n2"])), 1_500_000);
    assert_eq!(w.presence_view().notices[0].noticed_after_ms, None);
    w.registry(Ok(listed(&["n1"])), 3_250_000);
    assert_eq!(w.presence_view().notices[0].noticed_after_ms, Some(2250));
}
