//! The peer that `bench --peer` measures this project against, side by side: a cluster of
//! Socket.IO nodes on one Redis through the Redis adapter (`bench/socketio-peer/`, Node.js),
//! the usual way to scale Socket.IO out, persisting nothing.
//!
//! The same generator drives both: the same users, paired across nodes the same way, the same
//! open-loop rates, the same latency and CPU accounting (the peer's node processes and
//! `redis-server`). It speaks Engine.IO 4 / Socket.IO 5 over a plain WebSocket (no polling
//! upgrade): `0{…}` opens, `40{auth}` joins the default namespace, `42["dm",{…}]` is an event,
//! `42<n>[…]` one that asks for an acknowledgement, and a `2` from the server is a ping that
//! wants a `3`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

use crate::generator::{self, BenchConfig, Prepared, Recorder, Target, VUser};
use crate::procs::{self, CpuGroups, Members};

/// Where the peer's sources are in this repository.
pub fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("socketio-peer")
}

/// One running peer node.
struct PeerNode {
    name: String,
    port: u16,
    pid: u32,
    child: Child,
}

/// A running Socket.IO cluster, killed when dropped.
pub struct PeerCluster {
    nodes: Vec<PeerNode>,
}

impl PeerCluster {
    /// Starts `count` nodes from `dir` on Redis at `redis_url`, each on a free loopback port,
    /// and waits until each accepts connections.
    pub async fn start(dir: &Path, count: usize, redis_url: &str) -> Result<Self> {
        let server = dir.join("server.js");
        if !dir.join("node_modules").is_dir() {
            bail!(
                "the Socket.IO peer's packages are not installed: run `npm ci --prefix {}`",
                dir.display()
            );
        }
        // A channel prefix of this run's own, so that two runs on one Redis never mix.
        let channel = format!("chat-bench-peer-{}", std::process::id());
        let mut nodes = Vec::with_capacity(count);
        for i in 1..=count {
            let mut child = Command::new("node")
                .arg(&server)
                .env("PORT", "0")
                .env("HOST", "127.0.0.1")
                .env("REDIS_URL", redis_url)
                .env("CHANNEL", &channel)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("starting the Socket.IO peer with `node` (is Node.js installed?)")?;
            let pid = child.id().context("peer node exited at once")?;
            let stdout = child.stdout.take().context("peer node's stdout")?;
            let mut lines = BufReader::new(stdout).lines();
            let port = tokio::time::timeout(Duration::from_secs(20), async {
                while let Some(line) = lines.next_line().await? {
                    if let Some(port) = line.strip_prefix("listening ") {
                        return port.trim().parse::<u16>().context("peer's port");
                    }
                }
                bail!("peer node {i} exited before listening (is Redis at {redis_url} up?)")
            })
            .await
            .with_context(|| format!("peer node {i} did not listen within 20 s"))??;
            // Whatever it prints later is read and dropped, so that it never blocks on a pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            nodes.push(PeerNode {
                name: format!("s{i}"),
                port,
                pid,
                child,
            });
        }
        Ok(PeerCluster { nodes })
    }

    /// The nodes' ports, in order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Stops every node with SIGTERM, waiting a few seconds before killing what is left.
    pub async fn shutdown(mut self) {
        let nodes = self.nodes.iter_mut().map(|n| (n.pid, &mut n.child));
        procs::stop_processes(nodes, Duration::from_secs(3)).await;
    }
}

/// The `auth` payload of a namespace connect.
#[derive(Serialize)]
struct Auth<'a> {
    user: &'a str,
}

/// A direct message as the generator sends it.
#[derive(Serialize)]
struct DmOut<'a> {
    to: &'a str,
    text: String,
}

/// A direct message as a recipient gets it.
#[derive(Deserialize)]
struct DmIn {
    from: String,
    text: String,
}

/// The frame of a direct message to `to`'s room, asking for acknowledgement `ack`.
pub(crate) fn dm_frame(ack: u64, to: &str, text: String) -> Result<String> {
    Ok(format!(
        "42{ack}{}",
        serde_json::to_string(&("dm", DmOut { to, text }))?
    ))
}

/// Opens `user`'s socket on the node at `port` and starts its reader.
async fn connect(node: &str, port: u16, user: Arc<str>, recorder: Arc<Recorder>) -> Result<VUser> {
    let url = format!("ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket");
    let (ws, _) =
        tokio_tungstenite::connect_async_with_config(url, Some(generator::socket_config()), true)
            .await
            .with_context(|| format!("connecting to the peer on port {port}"))?;
    let (mut sink, mut stream) = ws.split();
    let mut opened = false;
    loop {
        let t = match stream.next().await {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(_)) => continue,
            _ => bail!("peer socket closed during the handshake"),
        };
        let t = t.as_str();
        if !opened && t.starts_with('0') {
            opened = true;
            let auth = serde_json::to_string(&Auth { user: &user })?;
            sink.send(Message::Text(format!("40{auth}").into())).await?;
        } else if t.starts_with("40") {
            break;
        } else if t.starts_with("44") {
            bail!("the peer refused the connect: {t}");
        } else if t == "2" {
            sink.send(Message::Text("3".into())).await?;
        }
    }
    let tx = generator::spawn_writer(sink);
    let pong = tx.clone();
    tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            let Message::Text(t) = msg else { continue };
            let t = t.as_str();
            if t == "2" {
                let _ = pong.send(Message::Text("3".into()));
                continue;
            }
            let Some(body) = t.strip_prefix("42") else {
                continue;
            };
            let Ok((_, dm)) = serde_json::from_str::<(String, DmIn)>(body) else {
                continue;
            };
            if *dm.from != *user {
                recorder.record(&dm.text);
            }
        }
    });
    Ok(VUser {
        node: node.to_owned(),
        tx,
    })
}

/// Starts the peer's side of a run, as [`crate::ours::prepare`] does ours: memory per idle
/// connection, then the talking users, each on the next node in turn, paired across nodes.
pub async fn prepare(peer: &PeerCluster, config: &BenchConfig) -> Result<Prepared> {
    let mut groups: Vec<(String, Members)> = peer
        .nodes
        .iter()
        .map(|n| (n.name.clone(), Members::Pids(vec![n.pid])))
        .collect();
    let mut external = config.external.clone();
    if !external.iter().any(|e| e == "redis-server") {
        external.push("redis-server".into());
    }
    for name in external {
        groups.push((name.clone(), Members::Named(name)));
    }
    let groups = CpuGroups::new(groups);
    let pids: Vec<u32> = peer.nodes.iter().map(|n| n.pid).collect();
    let recorder = Recorder::new()?;
    let node_of = |i: usize| &peer.nodes[i % peer.nodes.len()];

    let memory = if config.idle > 0 {
        let open = |i: usize| {
            let n = node_of(i);
            let recorder = recorder.clone();
            let user: Arc<str> = format!("idle-{i}").into();
            async move { connect(&n.name, n.port, user, recorder).await }
        };
        Some(generator::measure_memory(&pids, config.idle, open).await?)
    } else {
        None
    };

    let names: Vec<Arc<str>> = (0..config.users)
        .map(|i| Arc::from(format!("talker-{i}")))
        .collect();
    let open = |i: usize| {
        let n = node_of(i);
        connect(&n.name, n.port, names[i].clone(), recorder.clone())
    };
    Prepared::new("socket.io", memory, recorder.clone(), groups)
        .with_talkers(config, open, |i| Target::Room(names[i].clone()))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_direct_message_is_an_event_asking_for_an_ack() {
        let frame = dm_frame(7, "talker-3", "b|1|42".into()).expect("frame");
        assert_eq!(frame, r#"427["dm",{"to":"talker-3","text":"b|1|42"}]"#);
    }

    #[test]
    fn a_received_event_parses_after_its_packet_type() {
        let (name, dm) =
            serde_json::from_str::<(String, DmIn)>(r#"["dm",{"from":"a","text":"b|2|9"}]"#)
                .expect("parse");
        assert_eq!(
            (name.as_str(), dm.from.as_str(), dm.text.as_str()),
            ("dm", "a", "b|2|9")
        );
    }
}
