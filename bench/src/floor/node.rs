//! A floor node's process (`bench floor-node`): the WebSockets of its users, its SQLite log
//! with group commit, and the links to the other nodes, all on one runtime thread.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::generator;

/// Most messages in one commit.
const MAX_BATCH: usize = 1024;
/// Messages committed between two passive checkpoints (the store checkpoints every 100 ms;
/// at the rates measured this is about as often).
const CHECKPOINT_EVERY: usize = 1000;
/// Largest frame a floor node takes, from a user or a link.
const MAX_FRAME: usize = 64 * 1024;

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

/// `bench floor-node`: serves until stdin closes or SIGTERM, on a runtime of one thread.
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
            // The bench closes our stdin when it goes away.
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
/// saved little, about the spread between runs, for that much more latency (the figures:
/// docs/performance.md, "What a message costs").
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
pub(super) fn parse_message(frame: &str) -> Option<(usize, u32, &str)> {
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
        let writer = generator::write_queued(&mut sink, &mut rx);
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
