//! The floor that `bench --floor` measures beside ours: the least that a cluster of nodes
//! which persists every message before acknowledging it can cost on this machine.
//!
//! A floor node is the `bench` binary again (`bench floor-node`, in [`node`]). It accepts the WebSockets of
//! virtual users, appends each message to a SQLite file of its own (one table, one index, group
//! commit, the store's WAL settings), acknowledges it, and forwards it over a direct TCP link to
//! the node of its recipient, which writes it to the recipient's socket. Everything runs on the
//! node's one runtime thread, commits included: no thread hand-over costs a wake-up.
//!
//! Everything else the chat does is left out: no JSON, no accounts or tokens, no membership
//! check, no registry or controller, no `seq` shared between nodes (each node numbers its own
//! messages), no copy of a message to the sender's devices, no duplicate detection. So its CPU
//! per message is a lower bound for ours, and for any design that persists before it
//! acknowledges, measured with the same generator, in the same run.
//!
//! Its frames are plain text: `hello <user>`, answered with `ready`; then `<node> <user>
//! <text>`, a message for `user` on node `node` (0-based), answered with `ack`; a user gets the
//! text of each message sent to it. Between nodes, a message is `len: u32, user: u32, text`
//! (little endian; `len` counts the user and the text).

mod node;

pub use node::run_node;

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

use crate::generator::{self, BenchConfig, Prepared, Recorder, Target, VUser};
use crate::procs::{self, CpuGroups, Members};

/// One running floor node.
struct FloorNode {
    name: String,
    port: u16,
    pid: u32,
    child: Child,
    /// Held open: a node exits when its stdin closes, so none outlives the bench.
    _stdin: tokio::process::ChildStdin,
}

/// A running floor cluster, killed when dropped; its SQLite files go with it.
pub struct FloorCluster {
    nodes: Vec<FloorNode>,
    _dir: tempfile::TempDir,
}

impl FloorCluster {
    /// Starts `count` floor nodes, each `bench_bin floor-node` on free loopback ports, links
    /// them to each other and waits until each is ready.
    pub async fn start(bench_bin: &Path, count: usize) -> Result<Self> {
        if count < 2 {
            bail!("a floor cluster needs at least two nodes");
        }
        let dir = tempfile::Builder::new().prefix("chat-floor-").tempdir()?;
        let mut started = Vec::with_capacity(count);
        for i in 0..count {
            let mut child = Command::new(bench_bin)
                .arg("floor-node")
                .arg("--index")
                .arg(i.to_string())
                .arg("--db")
                .arg(dir.path().join(format!("floor-{i}.db")))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting `{} floor-node`", bench_bin.display()))?;
            let pid = child.id().context("floor node exited at once")?;
            let stdout = child.stdout.take().context("floor node's stdout")?;
            let mut lines = BufReader::new(stdout).lines();
            let line = next_line(&mut lines, "listening").await?;
            let ports =
                parse_listening(&line).with_context(|| format!("floor node {i} said {line:?}"))?;
            started.push((child, pid, lines, ports));
        }
        let links: Vec<String> = started.iter().map(|s| s.3.1.to_string()).collect();
        let peers = format!("peers {}\n", links.join(" "));
        let mut nodes = Vec::with_capacity(count);
        for (i, (mut child, pid, mut lines, (port, _))) in started.into_iter().enumerate() {
            let mut stdin = child.stdin.take().context("floor node's stdin")?;
            stdin.write_all(peers.as_bytes()).await?;
            stdin.flush().await?;
            next_line(&mut lines, "ready").await?;
            // Whatever it prints later is read and dropped, so that it never blocks on a pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            nodes.push(FloorNode {
                name: format!("f{}", i + 1),
                port,
                pid,
                child,
                _stdin: stdin,
            });
        }
        Ok(FloorCluster { nodes, _dir: dir })
    }

    /// The nodes' WebSocket ports, in order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Stops every node (SIGTERM, then SIGKILL after a second).
    pub async fn shutdown(mut self) {
        let nodes = self.nodes.iter_mut().map(|n| (n.pid, &mut n.child));
        procs::stop_processes(nodes, Duration::from_secs(1)).await;
    }
}

/// Waits (up to 20 s) for a floor node's line starting with `word`.
async fn next_line(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    word: &str,
) -> Result<String> {
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await? {
            if line.starts_with(word) {
                return Ok(line);
            }
        }
        bail!("floor node exited before saying `{word}`")
    })
    .await
    .with_context(|| format!("floor node did not say `{word}` within 20 s"))?
}

/// `listening <websocket port> <link port>`.
fn parse_listening(line: &str) -> Option<(u16, u16)> {
    let mut words = line.strip_prefix("listening ")?.split_whitespace();
    let ws = words.next()?.parse().ok()?;
    let link = words.next()?.parse().ok()?;
    Some((ws, link))
}

/// A message for `user` on node `node`, as a virtual user sends it.
pub(crate) fn message_frame(to: &str, text: &str) -> String {
    format!("{to} {text}")
}

/// Where a message to user `user` of node `node` goes, in a message frame.
fn target(node: usize, user: u32) -> Arc<str> {
    format!("{node} {user}").into()
}

/// Opens `user`'s socket on the floor node at `port` and starts its reader.
async fn connect(node: &str, port: u16, user: u32, recorder: Arc<Recorder>) -> Result<VUser> {
    let url = format!("ws://127.0.0.1:{port}/");
    let (ws, _) =
        tokio_tungstenite::connect_async_with_config(url, Some(generator::socket_config()), true)
            .await
            .with_context(|| format!("connecting to the floor node on port {port}"))?;
    let (mut sink, mut stream) = ws.split();
    sink.send(Message::Text(format!("hello {user}").into()))
        .await?;
    loop {
        match stream.next().await {
            Some(Ok(Message::Text(t))) if t.as_str() == "ready" => break,
            Some(Ok(_)) => {}
            _ => bail!("floor socket closed before `ready`"),
        }
    }
    let tx = generator::spawn_writer(sink);
    tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            if let Message::Text(t) = msg {
                recorder.record(t.as_str());
            }
        }
    });
    Ok(VUser {
        node: node.to_owned(),
        tx,
    })
}

/// Starts the floor's side of a run, as [`crate::ours::prepare`] does ours: memory per idle
/// connection, then the talking users, each on the next node in turn, paired across nodes.
pub async fn prepare(floor: &FloorCluster, config: &BenchConfig) -> Result<Prepared> {
    let groups = CpuGroups::new(
        floor
            .nodes
            .iter()
            .map(|n| (n.name.clone(), Members::Pids(vec![n.pid])))
            .collect(),
    );
    let pids: Vec<u32> = floor.nodes.iter().map(|n| n.pid).collect();
    let recorder = Recorder::new()?;
    let count = floor.nodes.len();
    let node_of = |i: usize| &floor.nodes[i % count];
    // Idle users are numbered after the talking ones, so that the two never share a name.
    let idle_base = config.users;

    let memory = if config.idle > 0 {
        let open = |i: usize| {
            let n = node_of(i);
            let recorder = recorder.clone();
            let user = u32::try_from(idle_base + i).unwrap_or(u32::MAX);
            async move { connect(&n.name, n.port, user, recorder).await }
        };
        Some(generator::measure_memory(&pids, config.idle, open).await?)
    } else {
        None
    };

    let open = |i: usize| {
        let n = node_of(i);
        connect(&n.name, n.port, i as u32, recorder.clone())
    };
    Prepared::new("floor", memory, recorder.clone(), groups)
        .with_talkers(config, open, |i| Target::Floor(target(i % count, i as u32)))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_frame_names_the_node_the_user_and_the_text() {
        let frame = message_frame(&target(2, 17), "b|1|42 with spaces");
        assert_eq!(frame, "2 17 b|1|42 with spaces");
        assert_eq!(
            node::parse_message(&frame),
            Some((2, 17, "b|1|42 with spaces"))
        );
        assert_eq!(node::parse_message("2 x hi"), None);
        assert_eq!(node::parse_message("2 17"), None);
    }

    #[test]
    fn the_listening_line_gives_both_ports() {
        assert_eq!(parse_listening("listening 4100 4200"), Some((4100, 4200)));
        assert_eq!(parse_listening("listening 4100"), None);
        assert_eq!(parse_listening("ready"), None);
    }
}
