//! This project's cluster as the generator drives it: users registered and logged in through
//! the controller's API, each on the node the controller assigns, paired across nodes with one
//! direct conversation per pair.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::{SinkExt, StreamExt};
use lab::Cluster;
use protocol::UserId;
use protocol::model::EventBody;
use protocol::ws::{ClientFrame, ServerFrame};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::generator::{
    BenchConfig, Prepared, Recorder, Target, VUser, measure_memory, pair_across_nodes, run_phase,
    socket_config, spawn_writer,
};
use crate::procs::{CpuGroups, Members};
use crate::report::Outcome;

/// Opens a user's socket on the node the controller assigns, says hello, and starts its reader.
async fn connect(
    api: &client::Api,
    token: &str,
    recorder: Arc<Recorder>,
    me: UserId,
) -> Result<VUser> {
    let assign = api.assign(&[]).await.context("assign")?;
    let url = format!("{}?reservation={}", assign.ws_url, assign.reservation);
    let mut req = url.into_client_request()?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let (ws, _) =
        tokio_tungstenite::connect_async_with_config(req, Some(socket_config()), true).await?;
    let (mut sink, mut stream) = ws.split();
    let hello = serde_json::to_string(&ClientFrame::Hello(protocol::ws::Hello {
        v: protocol::PROTOCOL_VERSION,
        cursors: Vec::new(),
    }))?;
    sink.send(Message::Text(hello.into())).await?;
    // Wait for `synced` before going on.
    loop {
        match stream.next().await {
            Some(Ok(Message::Text(t))) => {
                if let Ok(ServerFrame::Synced { .. }) = serde_json::from_str(t.as_str()) {
                    break;
                }
            }
            Some(Ok(_)) => {}
            _ => bail!("socket closed before synced"),
        }
    }
    let tx = spawn_writer(sink);
    tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            let Message::Text(t) = msg else { continue };
            // Only events matter; skip acks and the rest without a full parse.
            if !t.as_str().starts_with(r#"{"type":"event""#) {
                continue;
            }
            let Ok(ServerFrame::Event(ev)) = serde_json::from_str::<ServerFrame>(t.as_str()) else {
                continue;
            };
            if ev.sender == me {
                continue;
            }
            if let EventBody::Message(m) = &ev.body {
                recorder.record(&m.text);
            }
        }
    });
    Ok(VUser {
        node: assign.node.to_string(),
        tx,
    })
}

/// Registers `count` users named `<prefix><i>` and logs each in on one device; returns their
/// sessions. Fifty at a time.
async fn users(
    url: &str,
    prefix: &str,
    count: usize,
    devices_per_user: usize,
) -> Result<Vec<client::Session>> {
    let password = "bench-password";
    // A tag per run, so that a second run against the same database (PostgreSQL) does not
    // meet the users of the first.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() % 0x100_0000)
        .unwrap_or(0);
    let mut names = Vec::new();
    for i in 0..count.div_ceil(devices_per_user) {
        names.push(format!("{prefix}{run:06x}-{i}"));
    }
    for chunk in names.chunks(50) {
        let regs = chunk.iter().map(|n| client::register(url, n, password));
        for r in futures::future::join_all(regs).await {
            r.context("register")?;
        }
    }
    let mut sessions = Vec::with_capacity(count);
    let jobs: Vec<(String, usize)> = (0..count)
        .map(|i| (names[i / devices_per_user].clone(), i))
        .collect();
    for chunk in jobs.chunks(50) {
        let logins = chunk.iter().map(|(n, i)| async move {
            let device = client::new_device_id();
            client::login(url, n, password, &device, &format!("bench{i}")).await
        });
        for s in futures::future::join_all(logins).await {
            sessions.push(s.context("login")?);
        }
    }
    Ok(sessions)
}

/// Starts this project's cluster's side of a run: memory per idle connection, then the talking
/// users, paired across nodes, one direct conversation per pair.
pub async fn prepare(cluster: &Cluster, config: &BenchConfig) -> Result<Prepared> {
    let url = cluster.controller_url().to_owned();
    let node_pids: Vec<u32> = cluster.nodes().iter().map(|n| n.pid).collect();
    let groups = cpu_groups(cluster, &config.external);
    let http = client::api::http_client()?;
    let recorder = Recorder::new()?;

    let memory = if config.idle > 0 {
        let sessions = users(&url, "idle", config.idle, 50).await?;
        let open = |i: usize| {
            let s = &sessions[i];
            let api = s.api_with(http.clone());
            let recorder = recorder.clone();
            async move { connect(&api?, &s.token, recorder, s.user.id).await }
        };
        Some(measure_memory(&node_pids, sessions.len(), open).await?)
    } else {
        None
    };

    println!("load: {} users, paired across nodes…", config.users);
    let sessions = users(&url, "talker", config.users, 1).await?;
    let mut vusers = Vec::with_capacity(sessions.len());
    for chunk in sessions.chunks(100) {
        let conns = chunk.iter().map(|s| {
            let api = s.api_with(http.clone());
            let recorder = recorder.clone();
            async move { connect(&api?, &s.token, recorder, s.user.id).await }
        });
        for c in futures::future::join_all(conns).await {
            vusers.push(c?);
        }
    }
    let pairs = pair_across_nodes(&vusers);
    if pairs.is_empty() && !config.rates.is_empty() {
        bail!("could not pair users across nodes (is there more than one node?)");
    }
    // One direct conversation per pair; both sides send.
    let mut senders = Vec::new();
    for chunk in pairs.chunks(50) {
        let opens = chunk.iter().map(|(a, b)| {
            let api = sessions[*a].api_with(http.clone());
            let peer = sessions[*b].user.username.clone();
            async move { api?.open_direct(&peer).await }
        });
        for ((a, b), conv) in chunk.iter().zip(futures::future::join_all(opens).await) {
            let conv = conv.context("open direct conversation")?.id;
            senders.push((vusers[*a].tx.clone(), Target::Conv(conv)));
            senders.push((vusers[*b].tx.clone(), Target::Conv(conv)));
        }
    }
    println!(
        "load: {} cross-node conversations, {} senders",
        pairs.len(),
        senders.len()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(Prepared {
        name: "ours".into(),
        memory,
        recorder,
        groups,
        senders,
        vusers,
    })
}

/// Runs the benchmark against a started cluster and prints its figures as it goes.
pub async fn run(cluster: &Cluster, config: &BenchConfig) -> Result<Outcome> {
    let system = prepare(cluster, config).await?;
    let mut phases = Vec::new();
    for (i, &rate) in config.rates.iter().enumerate() {
        phases.push(run_phase(&system, config, i as u64 + 1, rate).await?);
    }
    Ok(Outcome {
        memory: system.memory.clone(),
        phases,
    })
}

/// The controller, each node, and each external command named.
fn cpu_groups(cluster: &Cluster, external: &[String]) -> CpuGroups {
    let mut groups = vec![(
        "controller".to_owned(),
        Members::Pids(vec![cluster.controller_pid()]),
    )];
    for n in cluster.nodes() {
        groups.push((n.id.to_string(), Members::Pids(vec![n.pid])));
    }
    for name in external {
        groups.push((name.clone(), Members::Named(name.clone())));
    }
    CpuGroups::new(groups)
}
