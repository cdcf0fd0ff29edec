//! The checker fed by hand: lost, doubled and reordered deliveries turn it red, naming the
//! message, device and node; clean runs stay green.

use protocol::UserId;
use protocol::model::{EventBody, Message, MessageKind};

use super::*;

const C: ConvId = ConvId(7);
const MS: i64 = 1000;

fn dev(s: &str) -> DeviceId {
    DeviceId::new(s).expect("device id")
}

fn cid(s: &str) -> ClientMsgId {
    ClientMsgId::new(s).expect("client id")
}

/// Alice has a laptop and a phone, Bob one device; all three are on conversation C.
fn three_devices() -> Checker {
    let mut c = Checker::new(CheckerConfig::default());
    for (d, u) in [
        ("a-laptop", "alice"),
        ("a-phone", "alice"),
        ("b-desk", "bob"),
    ] {
        c.add_device(dev(d), u, 0);
        c.join(C, dev(d));
        c.status(&dev(d), Some("n1"), true, 0);
    }
    c.status(&dev("b-desk"), Some("n2"), true, 0);
    c
}

fn event(seq: Seq, client_id: &str) -> Event {
    Event {
        conv: C,
        seq,
        id: MessageId(1000 + seq as i64),
        at: 0,
        sender: UserId(1),
        device: Some(dev("a-laptop")),
        client_id: Some(cid(client_id)),
        origin: None,
        body: EventBody::Message(Message {
            kind: MessageKind::Text,
            text: format!("m{seq}"),
            attachment: None,
            reply_to: None,
            edited_at: None,
            deleted: false,
            reactions: Vec::new(),
        }),
    }
}

fn ack(seq: Seq, client_id: &str) -> Ack {
    Ack {
        client_id: cid(client_id),
        conv: C,
        seq,
        id: MessageId(1000 + seq as i64),
        at: 0,
        duplicate: false,
    }
}

/// The laptop sends `seq`, gets its ack, and every device in `to` shows it.
fn send(c: &mut Checker, seq: Seq, to: &[&str], at: i64) {
    let id = format!("c{seq}");
    c.sent(&dev("a-laptop"), C, cid(&id), at);
    c.acked(&ack(seq, &id), at + MS);
    for d in to {
        c.shown(&dev(d), &event(seq, &id), at + 2 * MS);
    }
}

const ALL: &[&str] = &["a-laptop", "a-phone", "b-desk"];

#[test]
fn everything_delivered_once_in_order_is_green() {
    let mut c = three_devices();
    for seq in 1..=5 {
        send(&mut c, seq, ALL, seq as i64 * 10 * MS);
    }
    c.settle(60_000 * MS);
    let v = c.view();
    assert_eq!(v.verdict, Level::Ok, "{}", v.headline);
    assert_eq!((v.acked, v.expected, v.delivered), (5, 15, 15));
    assert!(
        v.headline.starts_with("All 5 acknowledged messages"),
        "{}",
        v.headline
    );
    assert_eq!(
        v.latency.count, 10,
        "the sender's own device is not a delivery latency"
    );
}

#[test]
fn a_lost_delivery_to_the_senders_other_device_turns_red_naming_it() {
    let mut c = three_devices();
    send(&mut c, 1, ALL, 0);
    // Message 2 never reaches Alice's phone.
    send(&mut c, 2, &["a-laptop", "b-desk"], 10 * MS);
    // Before the bound it is only on its way; past it, late; once settled, lost.
    c.tick(100 * MS);
    assert_eq!(c.verdict(), Level::Ok);
    c.tick(6_000 * MS);
    assert_eq!(c.verdict(), Level::Warn);
    assert!(
        c.view().headline.contains("not yet on device a-phone"),
        "{}",
        c.view().headline
    );
    c.settle(60_000 * MS);
    let v = c.view();
    assert_eq!(v.verdict, Level::Bad);
    assert_eq!(v.lost, 1);
    assert_eq!(v.stale, 0);
    let lost = &v.violations[0];
    assert_eq!(lost.kind, ViolationKind::Lost);
    assert_eq!(lost.id, Some(MessageId(1002)));
    assert_eq!(lost.device, dev("a-phone"));
    assert_eq!(lost.user, "alice");
    assert_eq!(lost.node.as_deref(), Some("n1"));
    assert!(
        v.headline.starts_with("LOST: message 1002"),
        "{}",
        v.headline
    );
    assert!(
        v.headline.contains("device a-phone (alice) on n1"),
        "{}",
        v.headline
    );
    // The phone's row is the first one, and red.
    assert_eq!(v.rows[0].device, dev("a-phone"));
    assert_eq!(v.rows[0].level, Level::Bad);
    assert_eq!((v.duplicates, v.out_of_order), (0, 0));
}

#[test]
fn a_doubled_delivery_turns_red_at_once_naming_message_and_device() {
    let mut c = three_devices();
    send(&mut c, 1, ALL, 0);
    send(&mut c, 2, ALL, 10 * MS);
    c.shown(&dev("b-desk"), &event(2, "c2"), 30 * MS);
    let v = c.view();
    assert_eq!(v.verdict, Level::Bad);
    assert_eq!((v.duplicates, v.out_of_order, v.lost), (1, 0, 0));
    let d = &v.violations[0];
    assert_eq!(d.kind, ViolationKind::Duplicate);
    assert_eq!((d.id, d.seq), (Some(MessageId(1002)), Some(2)));
    assert_eq!(d.device, dev("b-desk"));
    assert_eq!(d.node.as_deref(), Some("n2"));
    assert!(
        v.headline.starts_with("DUPLICATE: message 1002"),
        "{}",
        v.headline
    );
    assert!(
        v.headline.contains("device b-desk (bob) on n2"),
        "{}",
        v.headline
    );
    // Counted once as delivered: the duplicate is not a delivery.
    assert_eq!(v.delivered, 6);
}

#[test]
fn a_reordered_delivery_turns_red_at_once_naming_message_and_device() {
    let mut c = three_devices();
    send(&mut c, 1, ALL, 0);
    // Bob's device gets 3 before 2.
    for (seq, to) in [(2, &["a-laptop", "a-phone"][..]), (3, ALL)] {
        send(&mut c, seq, to, seq as i64 * 10 * MS);
    }
    c.shown(&dev("b-desk"), &event(2, "c2"), 40 * MS);
    let v = c.view();
    assert_eq!(v.verdict, Level::Bad);
    assert_eq!(
        (v.out_of_order, v.duplicates),
        (2, 0),
        "the skip, then the late one"
    );
    let first = &v.violations[0];
    assert_eq!(first.kind, ViolationKind::OutOfOrder);
    assert_eq!((first.id, first.seq), (Some(MessageId(1003)), Some(3)));
    assert_eq!(first.device, dev("b-desk"));
    assert!(
        first.text.contains("seq 3 after 1: 2 skipped"),
        "{}",
        first.text
    );
    let late = &v.violations[1];
    assert_eq!(late.id, Some(MessageId(1002)));
    assert!(late.text.contains("arrived late"), "{}", late.text);
    // Everything arrived in the end: nothing is lost.
    c.settle(60_000 * MS);
    assert_eq!(c.view().lost, 0);
}

#[test]
fn devices_added_after_a_send_are_not_owed_it_and_failovers_are_timed() {
    let mut c = three_devices();
    c.sent(&dev("a-laptop"), C, cid("early"), 5 * MS);
    c.add_device(dev("a-tablet"), "alice", 6 * MS);
    c.join(C, dev("a-tablet"));
    c.acked(&ack(1, "early"), 7 * MS);
    for d in ALL {
        c.shown(&dev(d), &event(1, "early"), 8 * MS);
    }
    assert!(c.quiet());
    c.status(&dev("b-desk"), None, false, 100 * MS);
    c.status(&dev("b-desk"), Some("n3"), true, 1_300 * MS);
    let v = c.view();
    assert_eq!(v.failover.count, 1);
    assert_eq!(v.failovers[0].from.as_deref(), Some("n2"));
    assert_eq!(v.failovers[0].to.as_deref(), Some("n3"));
    assert_eq!(v.failovers[0].ms, 1200);
}

#[test]
fn msgs_per_op_counts_envelopes_per_sampled_message() {
    let mut c = Checker::new(CheckerConfig::default());
    for i in 0..10i64 {
        let id = MessageId(i);
        c.hop(Hop::Persisted, id, i * 100 * MS);
        // Fanout on three nodes: two other nodes receive it, the bus returns one copy.
        c.hop(Hop::Received, id, i * 100 * MS + 1);
        c.hop(Hop::Received, id, i * 100 * MS + 2);
        c.hop(Hop::Returned, id, i * 100 * MS + 3);
        c.hop(Hop::Delivered, id, i * 100 * MS + 4);
    }
    let (per_op, ops) = c.msgs_per_op();
    // Persisted at 0..900 ms: those a second before the newest count.
    assert_eq!(ops, 0);
    c.hop(Hop::Persisted, MessageId(99), 2_000 * MS);
    let (per_op2, ops2) = c.msgs_per_op();
    assert_eq!(per_op, None);
    assert_eq!(ops2, 10);
    assert_eq!(per_op2, Some(3.0));
}

#[test]
fn reset_forgets_counts_but_keeps_devices() {
    let mut c = three_devices();
    send(&mut c, 1, &["a-laptop"], 0);
    c.settle(60_000 * MS);
    assert_eq!(c.verdict(), Level::Bad);
    c.reset(70_000 * MS);
    assert_eq!(c.verdict(), Level::Ok);
    send(&mut c, 2, ALL, 80_000 * MS);
    let v = c.view();
    assert_eq!((v.expected, v.delivered, v.lost), (3, 3, 0));
}
