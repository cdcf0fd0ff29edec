//! Delivery across the cluster, with three node processes and a controller: direct messages
//! across nodes, rooms with members on every node, multi-device sync, offline resync, and
//! idempotent resend through two nodes, reactions on every device.

use std::collections::HashSet;

use anyhow::{Result, ensure};
use client::{ClientEvent, ClientState, Draft, new_client_id};
use protocol::http::CreateRoomRequest;
use protocol::model::{EventBody, Reactions};
use protocol::{ConvId, MessageId, NodeId};
use tests::{Device, PATIENCE, assert_contiguous, assert_no_duplicates, cluster, register};

/// A on node 1, B on node 2: B gets A's message once; A's ack carries id and seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_direct_message() -> Result<()> {
    let cluster = cluster(3).await?;
    register(&cluster, "alice").await?;
    register(&cluster, "bob").await?;
    let mut a = Device::connect(&cluster, "alice", "laptop").await?;
    let mut b = Device::connect(&cluster, "bob", "phone").await?;
    ensure!(
        a.node() != b.node(),
        "alice and bob landed on the same node ({:?})",
        a.node()
    );

    let dm = a.api().open_direct("bob").await?;
    let ack = a.say(dm.id, "hello bob, from another node").await?;
    ensure!(ack.conv == dm.id && ack.seq >= 2, "ack {ack:?}");
    ensure!(
        ack.id.0 > 0 && ack.id.unix_ms() > 0,
        "ack carries a Snowflake id: {ack:?}"
    );

    b.until_texts(dm.id, &["hello bob, from another node".into()], PATIENCE)
        .await?;
    let got: Vec<_> = b
        .events(dm.id)
        .into_iter()
        .filter(|e| e.id == ack.id)
        .collect();
    ensure!(got.len() == 1, "bob got the message {} times", got.len());
    ensure!(
        got[0].seq == ack.seq && got[0].sender == a.user(),
        "event {:?} vs ack {ack:?}",
        got[0]
    );

    // And back.
    let back = b.say(dm.id, "hi alice").await?;
    a.until_texts(dm.id, &["hi alice".into()], PATIENCE).await?;
    ensure!(
        back.seq == ack.seq + 1,
        "seqs are consecutive: {} then {}",
        ack.seq,
        back.seq
    );
    cluster.shutdown().await?;
    Ok(())
}

/// A room with members on every node: every member device gets every message, in seq order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_with_members_on_every_node() -> Result<()> {
    let cluster = cluster(3).await?;
    let names = ["ann", "ben", "cat", "dan", "eve", "fay"];
    for n in names {
        register(&cluster, n).await?;
    }
    let mut devices = Vec::new();
    for n in names {
        devices.push(Device::connect(&cluster, n, "dev").await?);
    }
    let nodes: HashSet<NodeId> = devices.iter().filter_map(|d| d.node()).collect();
    ensure!(
        nodes.len() == 3,
        "members should be spread over all 3 nodes: {nodes:?}"
    );

    let room = devices[0]
        .api()
        .create_room(&CreateRoomRequest {
            name: "everyone".into(),
            public: false,
            members: names[1..].iter().map(|s| s.to_string()).collect(),
        })
        .await?;
    // Everybody sends 15 messages, concurrently.
    let mut sent = Vec::new();
    let mut tasks = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        let client = d.client.clone();
        let texts: Vec<String> = (0..15).map(|k| format!("{}-{k}", names[i])).collect();
        sent.extend(texts.clone());
        tasks.push(tokio::spawn(async move {
            for t in texts {
                client
                    .send_and_wait_ack(Draft::text(room.id, t), PATIENCE)
                    .await?;
            }
            Ok::<(), client::ClientError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    for d in devices.iter_mut() {
        d.until_texts(room.id, &sent, PATIENCE).await?;
    }
    // Same log everywhere: contiguous seqs, no repeats, the same order.
    let reference: Vec<_> = devices[0]
        .events(room.id)
        .iter()
        .map(|e| (e.seq, e.id))
        .collect();
    for d in &devices {
        let events = d.events(room.id);
        assert_no_duplicates(&d.label, &events)?;
        let first = events.first().map(|e| e.seq).unwrap_or(1);
        assert_contiguous(&d.label, &events, first)?;
        let mine: Vec<_> = events.iter().map(|e| (e.seq, e.id)).collect();
        let common = mine.len().min(reference.len());
        ensure!(
            mine[mine.len() - common..] == reference[reference.len() - common..],
            "{} saw another order",
            d.label
        );
        ensure!(
            d.texts(room.id).len() == sent.len(),
            "{} got {} messages of {}",
            d.label,
            d.texts(room.id).len(),
            sent.len()
        );
    }
    cluster.shutdown().await?;
    Ok(())
}

/// User A on node 1 and node 2: what A sends from one device reaches the other; what B sends
/// reaches both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_device_sync_across_nodes() -> Result<()> {
    let cluster = cluster(3).await?;
    register(&cluster, "alice").await?;
    register(&cluster, "bob").await?;
    let mut laptop = Device::connect(&cluster, "alice", "laptop").await?;
    let mut phone = Device::connect(&cluster, "alice", "phone").await?;
    let mut bob = Device::connect(&cluster, "bob", "desk").await?;
    ensure!(
        laptop.node() != phone.node(),
        "alice's devices share a node"
    );

    let dm = laptop.api().open_direct("bob").await?;
    let from_laptop = laptop.say(dm.id, "sent from my laptop").await?;
    phone
        .until_texts(dm.id, &["sent from my laptop".into()], PATIENCE)
        .await?;
    let on_phone = phone
        .events(dm.id)
        .into_iter()
        .find(|e| e.id == from_laptop.id)
        .cloned();
    let on_phone = on_phone.ok_or_else(|| anyhow::anyhow!("phone lacks the laptop's message"))?;
    ensure!(
        on_phone.client_id.as_ref() == Some(&from_laptop.client_id),
        "the echo keeps the client id"
    );
    ensure!(
        on_phone.device.as_ref() == Some(&laptop.session.device),
        "the echo names the sending device"
    );

    bob.say(dm.id, "bob to both").await?;
    laptop
        .until_texts(dm.id, &["bob to both".into()], PATIENCE)
        .await?;
    phone
        .until_texts(dm.id, &["bob to both".into()], PATIENCE)
        .await?;

    // Read markers sync across my own devices.
    let last = bob.events(dm.id).last().map(|e| e.seq).unwrap_or(0);
    bob.until_texts(dm.id, &["sent from my laptop".into()], PATIENCE)
        .await?;
    laptop
        .client
        .mark_read(dm.id, last.max(from_laptop.seq + 1));
    let me = laptop.user();
    phone
        .until("alice's read marker", PATIENCE, |log| {
            log.iter().any(|e| matches!(e, ClientEvent::Read { user, conv, .. } if *user == me && *conv == dm.id))
        })
        .await?;
    bob.until("alice's read receipt", PATIENCE, |log| {
        log.iter()
            .any(|e| matches!(e, ClientEvent::Read { user, .. } if *user == me))
    })
    .await?;
    for d in [&laptop, &phone, &bob] {
        assert_no_duplicates(&d.label, &d.events(dm.id))?;
        assert_contiguous(&d.label, &d.events(dm.id), 1)?;
    }
    cluster.shutdown().await?;
    Ok(())
}

/// A device offline while 100 messages arrive gets exactly those 100, in order, when it comes
/// back with its cursor, through any node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_device_resyncs_exactly_what_it_missed() -> Result<()> {
    let cluster = cluster(3).await?;
    register(&cluster, "alice").await?;
    register(&cluster, "bob").await?;
    let alice = Device::connect(&cluster, "alice", "laptop").await?;
    let mut bob = Device::connect(&cluster, "bob", "phone").await?;
    let dm = alice.api().open_direct("bob").await?;
    alice.say(dm.id, "before").await?;
    bob.until_texts(dm.id, &["before".into()], PATIENCE).await?;

    // Bob goes offline, keeping his state (cursors) as an app would.
    let state: ClientState = bob.client.shutdown().await;
    let cursor = state
        .cursors
        .iter()
        .find(|c| c.conv == dm.id)
        .map(|c| c.seq);
    ensure!(
        cursor.is_some(),
        "bob's state has a cursor for the conversation"
    );
    let session = bob.session.clone();
    drop(bob);

    let texts: Vec<String> = (0..100).map(|i| format!("missed {i}")).collect();
    for t in &texts {
        alice.say(dm.id, t).await?;
    }

    // Come back three times from the same saved state. Each returning session stays open,
    // so the least-loaded answer sends the next one to another node: the resync is checked
    // through every node.
    let mut returned = Vec::new();
    for round in 0..3 {
        let mut back = Device::start(
            session.clone(),
            state.clone(),
            format!("bob/phone-back-{round}"),
        )
        .await?;
        back.until_texts(dm.id, &texts, PATIENCE).await?;
        let events = back.events(dm.id);
        ensure!(
            events.len() == 100,
            "{}: got {} events, wanted exactly the 100 missed",
            back.label,
            events.len()
        );
        assert_contiguous(&back.label, &events, cursor.unwrap_or(0) + 1)?;
        ensure!(back.texts(dm.id) == texts, "{}: not in order", back.label);
        returned.push(back);
    }
    let nodes: HashSet<NodeId> = returned.iter().filter_map(|d| d.node()).collect();
    ensure!(nodes.len() == 3, "the three resyncs went through {nodes:?}");
    cluster.shutdown().await?;
    Ok(())
}

/// The same client message id sent twice, also through two different nodes, is stored and
/// delivered once, and both sends get the same ack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_send_through_two_nodes() -> Result<()> {
    let cluster = cluster(3).await?;
    register(&cluster, "alice").await?;
    register(&cluster, "bob").await?;
    let one = Device::connect(&cluster, "alice", "one").await?;
    let two = Device::connect(&cluster, "alice", "two").await?;
    let mut bob = Device::connect(&cluster, "bob", "phone").await?;
    ensure!(
        one.node() != two.node(),
        "alice's two connections should be on two nodes"
    );
    let dm = one.api().open_direct("bob").await?;

    let id = new_client_id();
    let first = one
        .client
        .enqueue_and_wait(
            Draft::text(dm.id, "only once").into_outgoing(id.clone()),
            PATIENCE,
        )
        .await?;
    let again_same_node = one
        .client
        .enqueue_and_wait(
            Draft::text(dm.id, "only once").into_outgoing(id.clone()),
            PATIENCE,
        )
        .await?;
    let other_node = two
        .client
        .enqueue_and_wait(
            Draft::text(dm.id, "only once").into_outgoing(id.clone()),
            PATIENCE,
        )
        .await?;
    ensure!(
        !first.duplicate && again_same_node.duplicate && other_node.duplicate,
        "{first:?} {again_same_node:?} {other_node:?}"
    );
    for a in [&again_same_node, &other_node] {
        ensure!(
            (a.conv, a.seq, a.id, a.at) == (first.conv, first.seq, first.id, first.at),
            "acks differ: {first:?} vs {a:?}"
        );
    }
    // A marker after it: once bob has the marker, he has had every chance to see repeats.
    bob.say(dm.id, "marker").await?;
    bob.until_texts(dm.id, &["only once".into(), "marker".into()], PATIENCE)
        .await?;
    let copies = bob
        .texts(dm.id)
        .iter()
        .filter(|t| *t == "only once")
        .count();
    ensure!(copies == 1, "bob got {copies} copies");
    let page = bob
        .api()
        .history(dm.id, client::HistoryRange::Latest, Some(50))
        .await?;
    let stored = page
        .events
        .iter()
        .filter(|e| matches!(&e.body, EventBody::Message(m) if m.text == "only once"))
        .count();
    ensure!(stored == 1, "stored {stored} times");
    cluster.shutdown().await?;
    Ok(())
}

/// The reactions heard in `log` for message `target` of `conv`, folded in order.
fn reactions_heard(log: &[ClientEvent], conv: ConvId, target: MessageId) -> Vec<Reactions> {
    let mut list = Vec::new();
    for e in log {
        if let ClientEvent::Event(ev) = e
            && ev.conv == conv
            && let EventBody::Reaction {
                target: t,
                emoji,
                on,
            } = &ev.body
            && *t == target
        {
            Reactions::apply(&mut list, ev.sender, emoji, *on);
        }
    }
    list
}

/// How many reaction events `log` holds.
fn reaction_events(log: &[ClientEvent]) -> usize {
    log.iter()
        .filter(|e| matches!(e, ClientEvent::Event(ev) if matches!(ev.body, EventBody::Reaction { .. })))
        .count()
}

/// A reaction reaches every device of every member, through whichever node each is on, with
/// the node that accepted it named; one taken back while a device was offline reaches it on
/// resync; history shows the message with its reactions as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactions_reach_every_device_offline_ones_on_resync() -> Result<()> {
    let cluster = cluster(3).await?;
    register(&cluster, "alice").await?;
    register(&cluster, "bob").await?;
    let mut laptop = Device::connect(&cluster, "alice", "laptop").await?;
    let mut phone = Device::connect(&cluster, "alice", "phone").await?;
    let mut bob = Device::connect(&cluster, "bob", "desktop").await?;
    let dm = laptop.api().open_direct("bob").await?;
    let ack = laptop.say(dm.id, "react to me").await?;
    bob.until_texts(dm.id, &["react to me".into()], PATIENCE)
        .await?;

    bob.client.react(dm.id, ack.id, "👍", true)?;
    let thumbs = vec![Reactions {
        emoji: "👍".into(),
        users: vec![bob.user()],
    }];
    let bob_node = bob.node();
    for d in [&mut laptop, &mut phone, &mut bob] {
        d.until("bob's 👍", PATIENCE, |log| {
            reactions_heard(log, dm.id, ack.id) == thumbs
        })
        .await?;
        let origin = d
            .events(dm.id)
            .iter()
            .find(|e| matches!(e.body, EventBody::Reaction { .. }))
            .and_then(|e| e.origin.clone());
        ensure!(
            origin == bob_node,
            "{}: the reaction's origin is {origin:?}, bob is on {bob_node:?}",
            d.label
        );
    }

    // The phone goes away; bob takes his 👍 back and gives a 🎉; the phone hears both on its
    // return, in order.
    let state: ClientState = phone.client.shutdown().await;
    let session = phone.session.clone();
    drop(phone);
    bob.client.react(dm.id, ack.id, "👍", false)?;
    bob.client.react(dm.id, ack.id, "🎉", true)?;
    let party = vec![Reactions {
        emoji: "🎉".into(),
        users: vec![bob.user()],
    }];
    laptop
        .until("bob's change of mind", PATIENCE, |log| {
            reactions_heard(log, dm.id, ack.id) == party
        })
        .await?;
    let mut back = Device::start(session, state, "alice/phone-back".into()).await?;
    back.until("the two reactions missed", PATIENCE, |log| {
        reaction_events(log) == 2
    })
    .await?;
    let mut replayed = Vec::new();
    for e in back.events(dm.id) {
        if let EventBody::Reaction { target, emoji, on } = &e.body
            && *target == ack.id
        {
            replayed.push((emoji.clone(), *on));
        }
    }
    ensure!(
        replayed == vec![("👍".to_owned(), false), ("🎉".to_owned(), true)],
        "replayed {replayed:?}"
    );

    let page = laptop
        .api()
        .history(dm.id, client::HistoryRange::Latest, None)
        .await?;
    let shown = page
        .events
        .iter()
        .find_map(|e| match &e.body {
            EventBody::Message(m) if e.id == ack.id => Some(m.reactions.clone()),
            _ => None,
        })
        .unwrap_or_default();
    ensure!(shown == party, "history shows {shown:?}");
    cluster.shutdown().await?;
    Ok(())
}
