//! What `docs/protocol.md` promises a client, checked against real processes where the
//! behaviour once differed from the document: who gets a device's own `typing` and `read`
//! back, and that a node a client lost is offered to nobody once the controller knows.

use anyhow::{Result, anyhow, bail, ensure};
use protocol::ws::ServerFrame;
use protocol::{ConvId, UserId};
use tests::{Device, PATIENCE, Raw, cluster, cluster_with, eventually, login, register};

/// Reads frames until `stop` matches; returns those before it.
async fn frames_until(
    raw: &mut Raw,
    stop: impl Fn(&ServerFrame) -> bool,
) -> Result<Vec<ServerFrame>> {
    let mut seen = Vec::new();
    loop {
        let f = raw
            .next_frame(PATIENCE)
            .await?
            .ok_or_else(|| anyhow!("closed while waiting; saw {seen:?}"))?;
        if stop(&f) {
            return Ok(seen);
        }
        seen.push(f);
    }
}

fn send(conv: ConvId, client_id: &str) -> String {
    format!(r#"{{"type":"send","conv":{conv},"client_id":"{client_id}","text":"{client_id}"}}"#)
}

fn is_ack(f: &ServerFrame, client_id: &str) -> bool {
    matches!(f, ServerFrame::Ack(a) if a.client_id.as_str() == client_id)
}

fn is_event(f: &ServerFrame, client_id: &str) -> bool {
    matches!(f, ServerFrame::Event(e) if e.client_id.as_ref().is_some_and(|c| c.as_str() == client_id))
}

/// The sender's devices never get its own `typing`; a `read` goes to the user's other devices
/// and the other members, not back to the device that sent it. On one node, so that what a
/// device would have got before a later message is certain to be before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_typing_and_read_are_not_echoed() -> Result<()> {
    let cluster = cluster(1).await?;
    let alice_id: UserId = register(&cluster, "alice").await?;
    register(&cluster, "bob").await?;
    let laptop_s = login(&cluster, "alice", "laptop").await?;
    let phone_s = login(&cluster, "alice", "phone").await?;
    let bob_s = login(&cluster, "bob", "phone").await?;
    let dm = laptop_s.api()?.open_direct("bob").await?;
    let ws_url = cluster.node(0)?.ws_url;
    let mut sockets = Vec::new();
    for s in [&laptop_s, &phone_s, &bob_s] {
        let mut raw = Raw::open(&ws_url, Some(&s.token))
            .await
            .map_err(|e| anyhow!("{e:?}"))?;
        raw.hello().await?;
        sockets.push(raw);
    }
    let [laptop, phone, bob] = &mut sockets[..] else {
        bail!("three sockets");
    };

    laptop
        .send_text(format!(
            r#"{{"type":"typing","conv":{},"active":true}}"#,
            dm.id
        ))
        .await?;
    laptop.send_text(send(dm.id, "after-typing")).await?;
    let typing = |f: &ServerFrame| matches!(f, ServerFrame::Typing { .. });
    let before = frames_until(laptop, |f| is_ack(f, "after-typing")).await?;
    ensure!(
        !before.iter().any(typing),
        "the laptop got its own typing: {before:?}"
    );
    let before = frames_until(phone, |f| is_event(f, "after-typing")).await?;
    ensure!(
        !before.iter().any(typing),
        "the phone got its own user's typing: {before:?}"
    );
    let before = frames_until(bob, |f| is_event(f, "after-typing")).await?;
    ensure!(
        before
            .iter()
            .any(|f| matches!(f, ServerFrame::Typing { user, .. } if *user == alice_id)),
        "bob did not see alice typing: {before:?}"
    );

    // Bob writes; alice's laptop reads it.
    bob.send_text(send(dm.id, "from-bob")).await?;
    let seq = match laptop.until(PATIENCE, |f| is_event(f, "from-bob")).await? {
        ServerFrame::Event(e) => e.seq,
        other => bail!("not an event: {other:?}"),
    };
    laptop
        .send_text(format!(r#"{{"type":"read","conv":{},"seq":{seq}}}"#, dm.id))
        .await?;
    laptop.send_text(send(dm.id, "after-read")).await?;
    let read_by_alice =
        |f: &ServerFrame| matches!(f, ServerFrame::Read { user, .. } if *user == alice_id);
    let before = frames_until(laptop, |f| is_ack(f, "after-read")).await?;
    ensure!(
        !before.iter().any(read_by_alice),
        "the laptop got its own read back: {before:?}"
    );
    let before = frames_until(phone, |f| is_event(f, "after-read")).await?;
    ensure!(
        before.iter().any(read_by_alice),
        "the phone missed the laptop's read: {before:?}"
    );
    let before = frames_until(bob, |f| is_event(f, "after-read")).await?;
    ensure!(
        before.iter().any(read_by_alice),
        "bob missed alice's read: {before:?}"
    );
    cluster.shutdown().await?;
    Ok(())
}

/// A SIGKILLed node is named in the `exclude` of the next assignment of a device it held; from
/// then on the controller offers it to nobody, though its lease (long here) still runs. (With
/// the embedded registry its link's end removes it at once anyway; with Redis or ZooKeeper
/// only this does, before the lease.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_a_client_lost_is_offered_to_nobody() -> Result<()> {
    let mut cluster = cluster_with(3, |c| c.lease_ms = Some(15_000)).await?;
    register(&cluster, "alice").await?;
    let mut laptop = Device::connect(&cluster, "alice", "laptop").await?;
    let victim = laptop.live().await?;
    let index = cluster
        .nodes()
        .iter()
        .position(|n| n.id == victim)
        .ok_or_else(|| anyhow!("{victim} not in the cluster"))?;
    cluster.kill_node(index).await?;
    // The laptop moves, asking for a node without the victim.
    eventually("the laptop to move", PATIENCE, || {
        let c = laptop.client.clone();
        let victim = victim.clone();
        async move {
            match c.status() {
                client::Status::Live { node } if node != victim => Some(()),
                _ => None,
            }
        }
    })
    .await?;
    let api = laptop.api();
    for _ in 0..20 {
        let a = api.assign(&[]).await?;
        ensure!(a.node != victim, "the dead {victim} was offered");
    }
    cluster.shutdown().await?;
    Ok(())
}
