//! The floor that `lab bench --floor` measures beside ours: the least that a cluster of nodes
//! which persists every message before acknowledging it can cost on this machine.
//!
//! A floor node is the `lab` binary again (`lab floor-node`). It accepts the WebSockets of
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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::bench::{self, BenchConfig, CpuGroups, Members, Prepared, Recorder, Target, VUser};

/// Most messages in one commit.
const MAX_BATCH: usize = 1024;
/// Messages committed between two passive checkpoints (the store checkpoints every 100 ms;
/// at the rates measured this is about as often).
const CHECKPOINT_EVERY: usize = 1000;
/// Largest frame a floor node takes, from a user or a link.
const MAX_FRAME: usize = 64 * 1024;

/// One running floor node.
struct FloorNode {
    name: String,
    port: u16,
    pid: u32,
    child: Child,
    /// Held open: a node exits when its stdin closes, so none outlives the lab.
    _stdin: tokio::process::ChildStdin,
}

/// A running floor cluster, killed when dropped; its SQLite files go with it.
pub struct FloorCluster {
    nodes: Vec<FloorNode>,
    _dir: tempfile::TempDir,
}

impl FloorCluster {
    /// Starts `count` floor nodes, each `lab_bin floor-node` on free loopback ports, links
    /// them to each other and waits until each is ready.
    pub async fn start(lab_bin: &Path, count: usize) -> Result<Self> {
        if count < 2 {
            bail!("a floor cluster needs at least two nodes");
        }
        let dir = tempfile::Builder::new().prefix("chat-floor-").tempdir()?;
        let mut started = Vec::with_capacity(count);
        for i in 0..count {
            let mut child = Command::new(lab_bin)
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
                .with_context(|| format!("starting `{} floor-node`", lab_bin.display()))?;
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
        bench::stop_processes(nodes, Duration::from_secs(1)).await;
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
        tokio_tungstenite::connect_async_with_config(url, Some(bench::socket_config()), true)
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
    let tx = bench::spawn_writer(sink);
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

/// Starts the floor's side of a run, as [`bench::prepare`] does ours: memory per idle
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
        Some(bench::measure_memory(&pids, config.idle, open).await?)
    } else {
        None
    };

    println!(
        "load: {} users on the floor, paired across nodes…",
        config.users
    );
    let open = |i: usize| {
        let n = node_of(i);
        connect(&n.name, n.port, i as u32, recorder.clone())
    };
    let (vusers, senders) =
        bench::talkers(config, open, |i| Target::Floor(target(i % count, i as u32))).await?;
    println!(
        "load: {} cross-node pairs on the floor, {} senders",
        senders.len() / 2,
        senders.len()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(Prepared {
        name: "floor".into(),
        memory,
        recorder,
        groups,
        senders,
        vusers,
    })
}

// ---- The floor node's process ----

/// A message accepted from a user, waiting for its commit.
struct Accepted {
    /// The sender's socket, for the ack.
    from: mpsc::UnboundedSender<Message>,
    sender: u32,
    node: usize,
    user: u32,
    text: String,
}

/// The local users' sockets, by user.
type Users = Arc<Mutex<HashMap<u32, mpsc::UnboundedSender<Message>>>>;

/// `lab floor-node`: serves until stdin closes or SIGTERM, on a runtime of one thread.
pub fn run_node(index: usize, db: &Path) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve_node(index, db.to_path_buf()))
}

async fn serve_node(index: usize, db: PathBuf) -> Result<()> {
    let users: Users = Arc::default();
    let ws = TcpListener::bind("127.0.0.1:0").await?;
    let link = TcpListener::bind("127.0.0.1:0").await?;
    println!(
        "listening {} {}",
        ws.local_addr()?.port(),
        link.local_addr()?.port()
    );
    tokio::spawn(accept_links(link, users.clone()));

    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let line = stdin
        .next_line()
        .await?
        .context("stdin closed before `peers`")?;
    let ports: Vec<u16> = line
        .strip_prefix("peers ")
        .context("expected `peers <port>…`")?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let mut links = Vec::with_capacity(ports.len());
    for (i, port) in ports.iter().enumerate() {
        links.push(if i == index {
            None
        } else {
            Some(open_link(*port).await?)
        });
    }

    let store = Log::open(&db)?;
    let (accepted_tx, accepted_rx) = mpsc::unbounded_channel();
    tokio::spawn(commit(store, accepted_rx, links, users.clone()));
    println!("ready");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            // The lab closes our stdin when it goes away.
            line = stdin.next_line() => if !matches!(line, Ok(Some(_))) { return Ok(()) },
            accepted = ws.accept() => {
                let (stream, _) = accepted?;
                stream.set_nodelay(true)?;
                tokio::spawn(session(stream, users.clone(), accepted_tx.clone()));
            }
        }
    }
}

/// The node's SQLite file: one table of messages, numbered per pair of users.
struct Log {
    conn: rusqlite::Connection,
    /// The last number of each pair's messages (this node's only: nothing is shared).
    seqs: HashMap<(u32, u32), i64>,
    next_id: i64,
    since_checkpoint: usize,
}

impl Log {
    fn open(path: &Path) -> Result<Log> {
        let conn = rusqlite::Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
             PRAGMA wal_autocheckpoint = 0; PRAGMA cache_size = -65536; \
             CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY, \
             conv INTEGER NOT NULL, seq INTEGER NOT NULL, sender INTEGER NOT NULL, \
             at INTEGER NOT NULL, text TEXT NOT NULL); \
             CREATE UNIQUE INDEX IF NOT EXISTS messages_conv_seq ON messages (conv, seq);",
        )?;
        Ok(Log {
            conn,
            seqs: HashMap::new(),
            next_id: 1,
            since_checkpoint: 0,
        })
    }

    /// Appends a batch in one transaction.
    fn append(&mut self, batch: &[Accepted]) -> rusqlite::Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO messages (id, conv, seq, sender, at, text) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            let at = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            for m in batch {
                let pair = (m.sender.min(m.user), m.sender.max(m.user));
                let seq = self.seqs.entry(pair).or_insert(0);
                *seq += 1;
                let conv = (i64::from(pair.0) << 32) | i64::from(pair.1);
                insert.execute(rusqlite::params![
                    self.next_id,
                    conv,
                    *seq,
                    m.sender,
                    at,
                    m.text
                ])?;
                self.next_id += 1;
            }
        }
        tx.commit()?;
        self.since_checkpoint += batch.len();
        if self.since_checkpoint >= CHECKPOINT_EVERY {
            self.since_checkpoint = 0;
            self.conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        }
        Ok(())
    }
}

/// Group commit: takes every message waiting, commits them, then acknowledges and forwards
/// each. What queues during a commit makes the next batch; waiting on purpose for a bigger one
/// (windows of 1, 2 and 4 ms were measured) saved a tenth at most, about the spread between
/// runs, for that much more latency.
async fn commit(
    mut log: Log,
    mut rx: mpsc::UnboundedReceiver<Accepted>,
    links: Vec<Option<mpsc::UnboundedSender<Vec<u8>>>>,
    users: Users,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        if let Err(e) = log.append(&batch) {
            eprintln!("floor node: append failed: {e}");
            return;
        }
        for m in batch.drain(..) {
            let _ = m.from.send(Message::Text("ack".into()));
            match links.get(m.node) {
                Some(Some(link)) => {
                    let _ = link.send(link_frame(m.user, &m.text));
                }
                Some(None) => deliver(&users, m.user, m.text),
                None => {}
            }
        }
    }
}

/// A message for `user` as one node forwards it to another: `len: u32, user: u32, text`.
fn link_frame(user: u32, text: &str) -> Vec<u8> {
    let len = 4 + text.len();
    let mut frame = Vec::with_capacity(4 + len);
    frame.extend_from_slice(&(len as u32).to_le_bytes());
    frame.extend_from_slice(&user.to_le_bytes());
    frame.extend_from_slice(text.as_bytes());
    frame
}

/// The user and the text of a link frame's body (what follows its length).
fn parse_link_body(mut body: Vec<u8>) -> Option<(u32, String)> {
    let user = u32::from_le_bytes(body.get(..4)?.try_into().ok()?);
    let text = String::from_utf8(body.split_off(4)).ok()?;
    Some((user, text))
}

fn deliver(users: &Users, user: u32, text: String) {
    if let Some(tx) = users.lock().get(&user) {
        let _ = tx.send(Message::Text(text.into()));
    }
}

/// Connects to another node's link port; returns the queue of its writer task, which writes
/// whatever is queued and flushes once the queue is empty.
async fn open_link(port: u16) -> Result<mpsc::UnboundedSender<Vec<u8>>> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.set_nodelay(true)?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        let mut w = BufWriter::with_capacity(16 * 1024, stream);
        while let Some(frame) = rx.recv().await {
            if w.write_all(&frame).await.is_err() {
                return;
            }
            while let Ok(frame) = rx.try_recv() {
                if w.write_all(&frame).await.is_err() {
                    return;
                }
            }
            if w.flush().await.is_err() {
                return;
            }
        }
    });
    Ok(tx)
}

/// Accepts the other nodes' links and delivers what they forward.
async fn accept_links(listener: TcpListener, users: Users) {
    while let Ok((stream, _)) = listener.accept().await {
        let users = users.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let mut r = BufReader::with_capacity(16 * 1024, stream);
            loop {
                let mut len = [0u8; 4];
                if r.read_exact(&mut len).await.is_err() {
                    return;
                }
                let len = u32::from_le_bytes(len) as usize;
                if !(4..=MAX_FRAME).contains(&len) {
                    eprintln!("floor node: bad link frame of {len} bytes; closing the link");
                    return;
                }
                let mut body = vec![0u8; len];
                if r.read_exact(&mut body).await.is_err() {
                    return;
                }
                if let Some((user, text)) = parse_link_body(body) {
                    deliver(&users, user, text);
                }
            }
        });
    }
}

/// `<node> <user> <text>`.
fn parse_message(frame: &str) -> Option<(usize, u32, &str)> {
    let mut parts = frame.splitn(3, ' ');
    let node = parts.next()?.parse().ok()?;
    let user = parts.next()?.parse().ok()?;
    Some((node, user, parts.next()?))
}

/// One user's socket: `hello`, then its messages in and what is sent to it out, side by side
/// in one task.
async fn session(stream: TcpStream, users: Users, accepted: mpsc::UnboundedSender<Accepted>) {
    let config = WebSocketConfig::default()
        .read_buffer_size(512)
        .write_buffer_size(1024)
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME));
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let me = match stream.next().await {
        Some(Ok(Message::Text(t))) => t
            .as_str()
            .strip_prefix("hello ")
            .and_then(|u| u.parse().ok()),
        _ => None,
    };
    let Some(me) = me else { return };
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    users.lock().insert(me, tx.clone());
    if sink.send(Message::Text("ready".into())).await.is_ok() {
        let writer = bench::write_queued(&mut sink, &mut rx);
        let reader = async {
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(t) = msg else { continue };
                let Some((node, user, text)) = parse_message(t.as_str()) else {
                    let _ = tx.send(Message::Text(
                        "error: expected `<node> <user> <text>`".into(),
                    ));
                    continue;
                };
                let _ = accepted.send(Accepted {
                    from: tx.clone(),
                    sender: me,
                    node,
                    user,
                    text: text.to_owned(),
                });
            }
        };
        futures::pin_mut!(writer, reader);
        futures::future::select(writer, reader).await;
    }
    let mut users = users.lock();
    if users.get(&me).is_some_and(|t| t.same_channel(&tx)) {
        users.remove(&me);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_frame_names_the_node_the_user_and_the_text() {
        let frame = message_frame(&target(2, 17), "b|1|42 with spaces");
        assert_eq!(frame, "2 17 b|1|42 with spaces");
        assert_eq!(parse_message(&frame), Some((2, 17, "b|1|42 with spaces")));
        assert_eq!(parse_message("2 x hi"), None);
        assert_eq!(parse_message("2 17"), None);
    }

    #[test]
    fn a_link_frame_carries_its_length_the_user_and_the_text() {
        let frame = link_frame(17, "b|1|42");
        assert_eq!(frame[..4], 10u32.to_le_bytes());
        assert_eq!(
            parse_link_body(frame[4..].to_vec()),
            Some((17, "b|1|42".to_owned()))
        );
        assert_eq!(parse_link_body(vec![1, 2]), None);
        assert_eq!(parse_link_body(vec![1, 0, 0, 0, 0xff]), None);
    }

    #[test]
    fn the_listening_line_gives_both_ports() {
        assert_eq!(parse_listening("listening 4100 4200"), Some((4100, 4200)));
        assert_eq!(parse_listening("listening 4100"), None);
        assert_eq!(parse_listening("ready"), None);
    }

    #[test]
    fn the_log_numbers_each_pair_of_users_on_its_own() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let mut log = Log::open(&dir.path().join("floor.db"))?;
        let (tx, _rx) = mpsc::unbounded_channel();
        let m = |sender, user| Accepted {
            from: tx.clone(),
            sender,
            node: 0,
            user,
            text: "hi".into(),
        };
        log.append(&[m(1, 2), m(2, 1), m(3, 4)])?;
        log.append(&[m(1, 2)])?;
        let rows: Vec<(i64, i64)> = log
            .conn
            .prepare("SELECT conv, seq FROM messages ORDER BY id")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let pair = |a: i64, b: i64| (a << 32) | b;
        assert_eq!(
            rows,
            vec![
                (pair(1, 2), 1),
                (pair(1, 2), 2),
                (pair(3, 4), 1),
                (pair(1, 2), 3)
            ]
        );
        Ok(())
    }
}
