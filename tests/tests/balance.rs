//! Least connections under a login storm: a thousand clients asking for a node at the same
//! moment against three node processes end up spread evenly.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use client::{Client, ClientState};
use futures::future::join_all;
use protocol::NodeId;
use tests::{PASSWORD, client_config, cluster, eventually, register};

const CLIENTS: usize = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_simultaneous_clients_are_spread_evenly() -> Result<()> {
    let cluster = cluster(3).await?;
    let users = 20;
    for u in 0..users {
        register(&cluster, &format!("storm{u}")).await?;
    }
    let http = client::api::http_client()?;
    // Log every device in first (fifty at a time), so that the storm is only about connecting.
    let mut sessions = Vec::with_capacity(CLIENTS);
    for chunk in (0..CLIENTS).collect::<Vec<_>>().chunks(50) {
        let logins = chunk.iter().map(|i| {
            let url = cluster.controller_url().to_owned();
            async move {
                let device = client::new_device_id();
                client::login(
                    &url,
                    &format!("storm{}", i % users),
                    PASSWORD,
                    &device,
                    &format!("d{i}"),
                )
                .await
            }
        });
        for s in join_all(logins).await {
            sessions.push(s.context("login")?);
        }
    }

    // The storm: every client starts at once (each asks /v1/assign, then connects).
    let mut config = client_config();
    config.http = Some(http);
    config.ping_interval = Duration::from_secs(60);
    config.event_capacity = 64;
    let mut clients = Vec::with_capacity(CLIENTS);
    let mut receivers = Vec::with_capacity(CLIENTS);
    for s in &sessions {
        let (c, rx) = Client::start(s, ClientState::default(), config.clone())?;
        clients.push(c);
        receivers.push(rx);
    }
    // Keep draining events so that no client stalls on a full channel.
    let drain = tokio::spawn(async move {
        let mut rxs = receivers;
        loop {
            let mut any = false;
            for rx in rxs.iter_mut() {
                while rx.try_recv().is_ok() {
                    any = true;
                }
            }
            if !any {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let live = join_all(clients.iter().map(|c| c.wait_live(Duration::from_secs(60)))).await;
    let mut per_node: HashMap<NodeId, usize> = HashMap::new();
    for r in live {
        *per_node
            .entry(r.context("a client never went live")?)
            .or_default() += 1;
    }
    ensure!(
        per_node.len() == 3,
        "clients on {} nodes: {per_node:?}",
        per_node.len()
    );
    let max = per_node.values().copied().max().unwrap_or(0);
    let min = per_node.values().copied().min().unwrap_or(0);
    ensure!(
        (max - min) * 10 <= max,
        "fullest {max} vs emptiest {min}: more than 10% apart ({per_node:?})"
    );

    // The registry's own counts agree once the reservations are used up.
    let counts = eventually(
        "the registry to count every connection",
        Duration::from_secs(15),
        || async {
            let nodes = cluster.nodes_status().await.ok()?;
            let total: u64 = nodes.nodes.iter().map(|n| n.connections).sum();
            let reserved: u64 = nodes.nodes.iter().map(|n| n.reserved).sum();
            (total == CLIENTS as u64 && reserved == 0).then_some(nodes)
        },
    )
    .await?;
    for n in &counts.nodes {
        ensure!(
            n.connections as usize == per_node.get(&n.id).copied().unwrap_or(0),
            "registry says {} has {} connections, clients say {:?}",
            n.id,
            n.connections,
            per_node.get(&n.id)
        );
    }
    println!("balance: {per_node:?}");
    for c in &clients {
        c.shutdown().await;
    }
    drain.abort();
    cluster.shutdown().await?;
    Ok(())
}
