//! Node deaths: a node SIGKILLed in the middle of traffic, and a node that dies right after
//! acknowledging a message and before publishing it. Nothing acknowledged may be lost or
//! doubled on any member device.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use client::{ClientEvent, Draft};
use protocol::http::CreateRoomRequest;
use protocol::ws::ServerFrame;
use protocol::{MessageId, NodeId};
use tests::{
    Device, PATIENCE, Raw, assert_contiguous, assert_no_duplicates, cluster, cluster_with,
    eventually, login, register,
};

/// SIGKILL a node while every member of a room is sending: its devices reconnect elsewhere
/// and resync; every acknowledged message ends up on every member device exactly once, in
/// order; the dead node leaves the least-loaded answer; its users' presence is corrected
/// within the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_killed_during_traffic() -> Result<()> {
    let lease = Duration::from_millis(2_000);
    let mut cluster = cluster_with(3, |c| c.lease_ms = Some(2_000)).await?;
    let names: Vec<String> = (0..6).map(|i| format!("member{i}")).collect();
    for n in &names {
        register(&cluster, n).await?;
    }
    register(&cluster, "ghost").await?;
    let mut devices = Vec::new();
    for n in &names {
        devices.push(Device::connect(&cluster, n, "dev").await?);
    }
    let room = devices[0]
        .api()
        .create_room(&CreateRoomRequest {
            name: "traffic".into(),
            public: false,
            members: names[1..]
                .iter()
                .cloned()
                .chain(["ghost".to_owned()])
                .collect(),
        })
        .await?;

    let victim: NodeId = devices[0]
        .node()
        .ok_or_else(|| anyhow!("member0 has no node"))?;
    let victim_index = cluster
        .nodes()
        .iter()
        .position(|n| n.id == victim)
        .ok_or_else(|| anyhow!("victim not in the cluster"))?;
    let on_victim: Vec<usize> = (0..devices.len())
        .filter(|i| devices[*i].node() == Some(victim.clone()))
        .collect();
    // The ghost is connected to the victim by a socket that never reconnects: when the victim
    // dies, the ghost is offline for good and the others must be told.
    let ghost = login(&cluster, "ghost", "raw").await?;
    let mut ghost_ws = Raw::open(&cluster.node(victim_index)?.ws_url, Some(&ghost.token))
        .await
        .map_err(|e| anyhow!("{e:?}"))?;
    ghost_ws.hello().await?;
    let watcher = (0..devices.len())
        .find(|i| !on_victim.contains(i))
        .ok_or_else(|| anyhow!("everyone on the victim"))?;
    let ghost_id = ghost.user.id;
    devices[watcher]
        .until("the ghost online", PATIENCE, |log| {
            log.iter()
                .any(|e| matches!(e, ClientEvent::Presence(p) if p.user == ghost_id && p.online))
        })
        .await?;

    // Traffic: every member sends 40 messages, paced, without waiting for acks.
    let per_member = 40;
    let mut senders = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        let c = d.client.clone();
        let name = names[i].clone();
        senders.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for k in 0..per_member {
                ids.push(c.send(Draft::text(room.id, format!("{name}-{k}")))?);
                tokio::time::sleep(Duration::from_millis(8)).await;
            }
            Ok::<_, client::ClientError>(ids)
        }));
    }
    // Kill the victim once traffic is well under way.
    devices[watcher]
        .until("traffic to flow", PATIENCE, |log| {
            log.iter()
                .filter(|e| matches!(e, ClientEvent::Event(ev) if ev.conv == room.id))
                .count()
                > 60
        })
        .await?;
    let killed_at = Instant::now();
    cluster.kill_node(victim_index).await?;
    for s in senders {
        s.await??;
    }

    // Every outbox empties: everything sent is acknowledged, through another node if need be.
    for d in &devices {
        let c = d.client.clone();
        eventually(&format!("{}'s outbox to empty", d.label), PATIENCE, || {
            let c = c.clone();
            async move { (c.pending() == 0).then_some(()) }
        })
        .await?;
    }
    let total = names.len() * per_member;
    let mut all_texts = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let _ = i;
        all_texts.extend((0..per_member).map(|k| format!("{n}-{k}")));
    }
    for d in devices.iter_mut() {
        d.until_texts(room.id, &all_texts, PATIENCE).await?;
    }
    // Exactly once, in order, the same log on every device.
    let mut acked: HashSet<MessageId> = HashSet::new();
    for d in &devices {
        acked.extend(
            d.acks()
                .values()
                .filter(|a| a.conv == room.id)
                .map(|a| a.id),
        );
    }
    ensure!(
        acked.len() == total,
        "{} acks for {total} messages",
        acked.len()
    );
    for d in &devices {
        let events = d.events(room.id);
        assert_no_duplicates(&d.label, &events)?;
        assert_contiguous(
            &d.label,
            &events,
            events.first().map(|e| e.seq).unwrap_or(1),
        )?;
        let have: HashSet<MessageId> = events.iter().map(|e| e.id).collect();
        let missing = acked.iter().filter(|id| !have.contains(id)).count();
        ensure!(
            missing == 0,
            "{} lacks {missing} acknowledged messages",
            d.label
        );
        let texts = d.texts(room.id);
        ensure!(
            texts.len() == total,
            "{} has {} messages, {total} were sent",
            d.label,
            texts.len()
        );
    }
    for i in &on_victim {
        let node = devices[*i].node();
        ensure!(
            node.is_some() && node != Some(victim.clone()),
            "{} is still on {victim:?}",
            devices[*i].label
        );
    }

    // The ghost is reported offline, within the lease.
    devices[watcher]
        .until("the ghost offline", lease + Duration::from_secs(1), |log| {
            log.iter()
                .any(|e| matches!(e, ClientEvent::Presence(p) if p.user == ghost_id && !p.online))
        })
        .await?;
    let presence_fixed = killed_at.elapsed();
    // The dead node is gone from the registry and never handed out again.
    let gone = cluster
        .wait_node_gone(&victim, lease + Duration::from_secs(1))
        .await?;
    let api = devices[watcher].api();
    for _ in 0..20 {
        let a = api.assign(&[]).await?;
        ensure!(a.node != victim, "the dead node was handed out");
    }
    println!(
        "victim {victim}: gone from the registry {gone:?} after the kill check, presence fixed {presence_fixed:?} after the kill"
    );
    cluster.shutdown().await?;
    Ok(())
}

/// A node acks a message and dies before publishing it: a member device that stays connected
/// elsewhere still gets it within a few seconds, once, and so do the sender's other devices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn death_between_ack_and_publish_loses_nothing() -> Result<()> {
    let mut cluster = cluster(2).await?;
    register(&cluster, "alice").await?;
    register(&cluster, "bob").await?;
    // Everyone well-behaved connects before the faulty node exists, so none lands on it.
    let mut laptop = Device::connect(&cluster, "alice", "laptop").await?;
    let mut bob = Device::connect(&cluster, "bob", "phone").await?;
    let dm = laptop.api().open_direct("bob").await?;
    laptop.say(dm.id, "warm-up").await?;
    bob.until_texts(dm.id, &["warm-up".into()], PATIENCE)
        .await?;

    let faulty = cluster
        .add_node_with_args(&["--fault".to_owned(), "crash-after-ack=1".to_owned()])
        .await?;
    let phone = login(&cluster, "alice", "phone").await?;
    let mut raw = Raw::open(&faulty.ws_url, Some(&phone.token))
        .await
        .map_err(|e| anyhow!("{e:?}"))?;
    raw.hello().await?;
    raw.send_text(format!(
        r#"{{"type":"send","conv":{},"client_id":"doomed-1","text":"acked, then the node died"}}"#,
        dm.id
    ))
    .await?;
    let ack = raw
        .until(PATIENCE, |f| {
            matches!(f, ServerFrame::Ack(_) | ServerFrame::Error(_))
        })
        .await
        .context("the faulty node should ack before dying")?;
    let ServerFrame::Ack(ack) = ack else {
        return Err(anyhow!("refused instead of acked: {ack:?}"));
    };
    let acked_at = Instant::now();

    let text = "acked, then the node died".to_owned();
    bob.until_texts(dm.id, std::slice::from_ref(&text), Duration::from_secs(10))
        .await?;
    let delay = acked_at.elapsed();
    laptop
        .until_texts(dm.id, std::slice::from_ref(&text), Duration::from_secs(10))
        .await?;
    for d in [&bob, &laptop] {
        let copies: Vec<_> = d
            .events(dm.id)
            .into_iter()
            .filter(|e| e.id == ack.id)
            .collect();
        ensure!(
            copies.len() == 1,
            "{} got it {} times",
            d.label,
            copies.len()
        );
        ensure!(
            copies[0].seq == ack.seq,
            "{}: seq {} vs ack {}",
            d.label,
            copies[0].seq,
            ack.seq
        );
        assert_no_duplicates(&d.label, &d.events(dm.id))?;
    }
    // The node really died (it did not publish and then exit politely).
    cluster
        .wait_node_gone(&faulty.id, Duration::from_secs(10))
        .await?;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let running: HashMap<NodeId, bool> = cluster
            .refresh()
            .into_iter()
            .map(|n| {
                (
                    n.id.clone(),
                    matches!(n.process, lab::ProcessState::Running),
                )
            })
            .collect();
        if running.get(&faulty.id) == Some(&false) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the faulty node still runs: {running:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("delivered {delay:?} after the ack of a node that died before publishing");
    cluster.shutdown().await.ok();
    Ok(())
}

/// A node frozen with SIGSTOP keeps its sockets open but answers nothing: a device on it,
/// with the client core's default keepalive, notices the silence and is live on another node
/// while the frozen one is still listed (within about one registry lease), and what it sends
/// then is stored. The frozen node is thawed only after that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_node_is_left_within_the_lease() -> Result<()> {
    let mut cluster = cluster(2).await?;
    let lease = cluster.config().lease();
    register(&cluster, "alice").await?;
    let defaults = client::ClientConfig::default();
    let mut config = tests::client_config();
    config.ping_interval = defaults.ping_interval;
    config.silence_timeout = defaults.silence_timeout;
    let session = login(&cluster, "alice", "laptop").await?;
    let mut laptop = Device::start_with(
        session,
        client::ClientState::default(),
        "alice/laptop".into(),
        config,
    )
    .await?;
    let victim = laptop.live().await?;
    let victim_index = cluster
        .nodes()
        .iter()
        .position(|n| n.id == victim)
        .ok_or_else(|| anyhow!("{victim} not in the cluster"))?;
    let room = laptop
        .api()
        .create_room(&CreateRoomRequest {
            name: "frozen".into(),
            public: false,
            members: vec![],
        })
        .await?;

    cluster.pause_node(victim_index)?;
    let frozen_at = Instant::now();
    // Two leases and a margin: the old keepalive (a ping every 15 s, dead at the next
    // unanswered one) took 15 to 30 s here.
    let moved = eventually(
        "the laptop to leave the frozen node",
        lease * 2 + Duration::from_secs(2),
        || {
            let c = laptop.client.clone();
            let victim = victim.clone();
            async move {
                match c.status() {
                    client::Status::Live { node } if node != victim => Some(node),
                    _ => None,
                }
            }
        },
    )
    .await;
    let failover = frozen_at.elapsed();
    let thawed = cluster.resume_node(victim_index);
    let moved = moved?;
    thawed?;
    let ack = laptop.say(room.id, "after the freeze").await?;
    ensure!(ack.seq > 0, "not stored: {ack:?}");
    println!(
        "frozen {victim}: the laptop was live on {moved} {:.1} s after the freeze (lease {:.1} s)",
        failover.as_secs_f64(),
        lease.as_secs_f64()
    );
    cluster.shutdown().await.ok();
    Ok(())
}
