//! `lab bench`: drives a local cluster with virtual users and reports what it costs.
//!
//! The workload is the one the project measures itself by: users spread over the nodes by the
//! controller, paired so that every direct conversation crosses nodes, each sending at a fixed
//! **open-loop** rate (a message is due at its time whether or not earlier ones were answered,
//! so a slow server shows up as latency instead of hiding behind a slower client). For each
//! rate it reports the rate achieved, delivery latency percentiles (send → the recipient's
//! device), messages lost, and the server CPU spent per message (every process of the cluster,
//! and the bus and store servers when real ones are used). Before the load it measures the
//! memory an idle connection costs the nodes.
//!
//! The load generator speaks the wire protocol directly (one WebSocket per virtual user, no
//! client-core bookkeeping), so that it stays cheaper than what it measures.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use protocol::model::EventBody;
use protocol::model::MessageKind;
use protocol::ws::{ClientFrame, SendMessage, ServerFrame};
use protocol::{ConvId, UserId};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::cluster::Cluster;

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Virtual users (each one device, one socket).
    pub users: usize,
    /// Offered rates, messages per second for the whole cluster, one phase each.
    pub rates: Vec<u32>,
    /// Length of each phase.
    pub phase: Duration,
    /// Extra idle connections opened to measure memory per connection (0: skip).
    pub idle: usize,
    /// Processes outside the cluster to count in the CPU figure (bus and store servers), by
    /// command name.
    pub external: Vec<String>,
}

/// One phase's figures.
#[derive(Clone, Debug)]
pub struct PhaseReport {
    /// Offered rate (messages/s).
    pub offered: u32,
    /// Messages sent per second, as achieved by the generator.
    pub sent_rate: f64,
    /// Messages received by their recipients per second.
    pub delivered_rate: f64,
    /// Messages sent in the phase.
    pub sent: u64,
    /// Sent but not received within the drain time.
    pub lost: u64,
    /// Latency percentiles in microseconds: p50, p90, p99, p99.9, max.
    pub latency_us: [u64; 5],
    /// Server CPU (all cluster processes, plus external ones) as a share of one core.
    pub cpu_cores: f64,
    /// Server CPU microseconds per delivered message.
    pub cpu_us_per_message: f64,
    /// The load generator's own CPU, as a share of one core (if it nears the machine's cores,
    /// the figures measure the generator, not the cluster).
    pub generator_cores: f64,
    /// The server CPU split by process group (controller, each node, each external command),
    /// as shares of one core.
    pub cpu_by_group: Vec<(String, f64)>,
}

/// Memory figures. The idle connections are opened in two halves: the first half also pays
/// for what a node allocates once as it gets busy (caches filling, allocator arenas, tables
/// growing), the second half only for the connections themselves.
#[derive(Clone, Debug)]
pub struct MemoryReport {
    /// Idle connections opened.
    pub connections: usize,
    /// Increase of the nodes' resident memory over all of them, in bytes.
    pub rss_increase: i64,
    /// Connections in the second half.
    pub marginal_connections: usize,
    /// Increase of the nodes' resident memory over the second half, in bytes.
    pub marginal_increase: i64,
}

impl MemoryReport {
    /// Bytes per idle connection, the one-time costs included.
    pub fn per_connection(&self) -> f64 {
        self.rss_increase as f64 / self.connections.max(1) as f64
    }

    /// Bytes one more idle connection costs (second half).
    pub fn marginal(&self) -> f64 {
        self.marginal_increase as f64 / self.marginal_connections.max(1) as f64
    }
}

/// A user's socket: frames to send go in, the reader task records what comes out.
pub(crate) struct VUser {
    /// The node it is connected to, as the system under test names it.
    pub(crate) node: String,
    pub(crate) tx: mpsc::UnboundedSender<Message>,
}

/// Latency and delivery counts shared by the reader tasks.
pub(crate) struct Recorder {
    hist: Mutex<Histogram<u64>>,
    delivered: AtomicU64,
    /// Only messages of the current phase count (their text carries the phase number).
    phase: AtomicU64,
}

impl Recorder {
    pub(crate) fn new() -> Result<Arc<Self>> {
        Ok(Arc::new(Recorder {
            hist: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
            delivered: AtomicU64::new(0),
            phase: AtomicU64::new(0),
        }))
    }

    /// Counts a received message's text (`b|<phase>|<sent at, µs>`) if it is of this phase.
    pub(crate) fn record(&self, text: &str) {
        let mut parts = text.split('|');
        if parts.next() != Some("b") {
            return;
        }
        let phase: u64 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let sent: u64 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if phase != self.phase.load(Ordering::Relaxed) || sent == 0 {
            return;
        }
        let latency = now_us().saturating_sub(sent).max(1);
        let _ = self.hist.lock().record(latency);
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }
}

/// Where a sender's messages go.
#[derive(Clone, Debug)]
pub(crate) enum Target {
    /// This project's protocol: a direct conversation.
    Conv(ConvId),
    /// The Socket.IO peer: the recipient's room.
    Room(Arc<str>),
    /// The floor: the recipient's node and user.
    Floor(Arc<str>),
}

/// A system under test with its users connected and paired, ready for load phases.
pub struct Prepared {
    /// What the figures are of ("ours", "socket.io").
    pub name: String,
    /// Memory per idle connection, if measured.
    pub memory: Option<MemoryReport>,
    pub(crate) recorder: Arc<Recorder>,
    pub(crate) groups: CpuGroups,
    /// Each sender's socket and where it sends.
    pub(crate) senders: Vec<(mpsc::UnboundedSender<Message>, Target)>,
    /// Every talking user's socket, closed when this is dropped.
    pub(crate) vusers: Vec<VUser>,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        for v in &self.vusers {
            let _ = v.tx.send(Message::Close(None));
        }
    }
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Reads `/proc/<pid>/stat` CPU time (user + system) in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The command name is in parentheses and may hold spaces: split after the last ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields after ')' start at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
    let stime: u64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    utime + stime
}

/// Resident memory of a process, in bytes.
fn rss_bytes(pid: u32) -> i64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<i64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// The machine's load averages (1, 5, 15 minutes) as `/proc/loadavg` says: the figures of a
/// busy machine are not comparable with a quiet one's.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

/// Pids of processes whose command name is one of `names`.
fn pids_named(names: &[String]) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| names.iter().any(|n| c.trim() == n))
                .unwrap_or(false)
        })
        .collect()
}

const TICKS_PER_SEC: f64 = 100.0;

/// The server processes whose CPU the figures count, in named groups: the controller, each
/// node, and each external command (all its processes together, e.g. every `postgres`
/// backend).
/// The processes whose CPU is counted, by group. External servers are found by name at every
/// reading: PostgreSQL forks a backend per connection, and the nodes' pools connect as the load
/// comes.
pub(crate) struct CpuGroups(Vec<(String, Members)>);

pub(crate) enum Members {
    Pids(Vec<u32>),
    Named(String),
}

/// One reading: CPU ticks so far of each process of each group.
type Ticks = Vec<HashMap<u32, u64>>;

impl CpuGroups {
    /// Named groups as given.
    pub(crate) fn new(groups: Vec<(String, Members)>) -> Self {
        CpuGroups(groups)
    }

    fn of(cluster: &Cluster, external: &[String]) -> Self {
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
        CpuGroups(groups)
    }

    /// CPU ticks of each process of each group so far.
    fn ticks(&self) -> Ticks {
        self.0
            .iter()
            .map(|(_, members)| {
                let pids = match members {
                    Members::Pids(p) => p.clone(),
                    Members::Named(name) => pids_named(std::slice::from_ref(name)),
                };
                pids.into_iter().map(|p| (p, cpu_ticks(p))).collect()
            })
            .collect()
    }

    /// Each group's CPU between two readings, in cores over `secs`. A process that appeared in
    /// between spent all its CPU in between; one that went away is missed for its last stretch.
    fn cores(&self, before: &Ticks, after: &Ticks, secs: f64) -> Vec<(String, f64)> {
        self.0
            .iter()
            .zip(before.iter().zip(after))
            .map(|((name, _), (b, a))| {
                let spent: u64 = a
                    .iter()
                    .map(|(pid, t)| t.saturating_sub(b.get(pid).copied().unwrap_or(0)))
                    .sum();
                (name.clone(), spent as f64 / TICKS_PER_SEC / secs)
            })
            .collect()
    }
}

/// Starts the task that writes what is queued for a socket, flushing once the queue is empty.
pub(crate) fn spawn_writer<S>(mut sink: S) -> mpsc::UnboundedSender<Message>
where
    S: futures::Sink<Message> + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    tokio::spawn(async move { write_queued(&mut sink, &mut rx).await });
    tx
}

/// Writes what is queued for a socket until the queue or the socket closes: everything waiting
/// at once, then one flush.
pub(crate) async fn write_queued<S>(sink: &mut S, rx: &mut mpsc::UnboundedReceiver<Message>)
where
    S: futures::Sink<Message> + Unpin,
{
    while let Some(m) = rx.recv().await {
        if sink.feed(m).await.is_err() {
            return;
        }
        while let Ok(m) = rx.try_recv() {
            if sink.feed(m).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}

/// Stops the processes of a cluster measured beside ours: SIGTERM to each, then SIGKILL to what
/// is still running after `grace`.
pub(crate) async fn stop_processes(
    processes: impl Iterator<Item = (u32, &mut tokio::process::Child)>,
    grace: Duration,
) {
    let mut children = Vec::new();
    for (pid, child) in processes {
        if let Ok(pid) = i32::try_from(pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        children.push(child);
    }
    for child in children {
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
    }
}

/// The client side's WebSocket settings, for every system measured: small buffers, as a
/// generator of many sockets needs.
pub(crate) fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(16 << 20))
}

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

/// Measures what idle connections cost: opens `count` of them in chunks of 100 with `open(i)`,
/// reading the resident memory of `pids` before, halfway and after, then closes them.
pub(crate) async fn measure_memory<F, Fut>(
    pids: &[u32],
    count: usize,
    open: F,
) -> Result<MemoryReport>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<VUser>>,
{
    println!("memory: opening {count} idle connections…");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = || pids.iter().map(|p| rss_bytes(*p)).sum::<i64>();
    let before = rss();
    let half = count / 2;
    let mut middle = None;
    let mut idle = Vec::with_capacity(count);
    let indices: Vec<usize> = (0..count).collect();
    for chunk in indices.chunks(100) {
        if middle.is_none() && idle.len() >= half {
            tokio::time::sleep(Duration::from_secs(2)).await;
            middle = Some((idle.len(), rss()));
        }
        for c in futures::future::join_all(chunk.iter().map(|i| open(*i))).await {
            idle.push(c?);
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss();
    let (at_middle, rss_middle) = middle.unwrap_or((0, before));
    let report = MemoryReport {
        connections: idle.len(),
        rss_increase: after - before,
        marginal_connections: idle.len() - at_middle,
        marginal_increase: after - rss_middle,
    };
    println!(
        "memory: {} idle connections cost the nodes {:.1} MiB: {:.2} KiB per connection; \
         the last {} cost {:.2} KiB each",
        report.connections,
        report.rss_increase as f64 / (1024.0 * 1024.0),
        report.per_connection() / 1024.0,
        report.marginal_connections,
        report.marginal() / 1024.0
    );
    // Close them (the load phases measure the talking users alone), and let the nodes forget
    // them before the load starts.
    for v in &idle {
        let _ = v.tx.send(Message::Close(None));
    }
    drop(idle);
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(report)
}

/// Connects `count` talking users, a hundred at a time (`open(i)` opens user `i`), pairs them
/// across nodes, and makes each pair's two senders: each sends to the other, at `target(i)` for
/// user `i`. For the systems whose users need nothing more than a connection (the peer, the
/// floor).
pub(crate) async fn talkers<F, Fut>(
    config: &BenchConfig,
    open: F,
    target: impl Fn(usize) -> Target,
) -> Result<(Vec<VUser>, Vec<(mpsc::UnboundedSender<Message>, Target)>)>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<VUser>>,
{
    let mut vusers = Vec::with_capacity(config.users);
    let indices: Vec<usize> = (0..config.users).collect();
    for chunk in indices.chunks(100) {
        for c in futures::future::join_all(chunk.iter().map(|i| open(*i))).await {
            vusers.push(c?);
        }
    }
    let pairs = pair_across_nodes(&vusers);
    if pairs.is_empty() && !config.rates.is_empty() {
        bail!("could not pair users across nodes (is there more than one?)");
    }
    let mut senders = Vec::with_capacity(pairs.len() * 2);
    for (a, b) in pairs {
        senders.push((vusers[a].tx.clone(), target(b)));
        senders.push((vusers[b].tx.clone(), target(a)));
    }
    Ok((vusers, senders))
}

/// Pairs users of different nodes, walking the nodes round-robin, and prints the spread.
pub(crate) fn pair_across_nodes(vusers: &[VUser]) -> Vec<(usize, usize)> {
    let mut by_node: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, v) in vusers.iter().enumerate() {
        by_node.entry(v.node.as_str()).or_default().push(i);
    }
    let mut spread: Vec<String> = by_node
        .iter()
        .map(|(n, l)| format!("{n}: {}", l.len()))
        .collect();
    spread.sort();
    println!("load: users per node {}", spread.join(", "));
    let mut queues: Vec<Vec<usize>> = by_node.into_values().collect();
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    loop {
        queues.sort_by_key(|q| std::cmp::Reverse(q.len()));
        if queues.len() < 2 || queues[1].is_empty() {
            break;
        }
        let (Some(a), Some(b)) = (queues[0].pop(), queues[1].pop()) else {
            break;
        };
        pairs.push((a, b));
    }
    pairs
}

/// Starts this project's cluster's side of a run: memory per idle connection, then the talking
/// users, paired across nodes, one direct conversation per pair.
pub async fn prepare(cluster: &Cluster, config: &BenchConfig) -> Result<Prepared> {
    let url = cluster.controller_url().to_owned();
    let node_pids: Vec<u32> = cluster.nodes().iter().map(|n| n.pid).collect();
    let groups = CpuGroups::of(cluster, &config.external);
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

/// One load phase at `rate` messages/s (`phase` numbers the phases of a run, from 1), and its
/// figures, printed as it ends.
pub async fn run_phase(
    system: &Prepared,
    config: &BenchConfig,
    phase: u64,
    rate: u32,
) -> Result<PhaseReport> {
    let recorder = &system.recorder;
    let senders = &system.senders;
    if senders.is_empty() {
        bail!("no senders");
    }
    recorder.phase.store(phase, Ordering::Relaxed);
    recorder.delivered.store(0, Ordering::Relaxed);
    recorder.hist.lock().reset();
    let cpu_before = system.groups.ticks();
    let gen_before = cpu_ticks(std::process::id());
    let started = Instant::now();
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    while started.elapsed() < config.phase {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * f64::from(rate)) as u64;
        while sent < due {
            let (tx, target) = &senders[sent as usize % senders.len()];
            let text = format!("b|{phase}|{}", now_us());
            let frame = match target {
                Target::Conv(conv) => serde_json::to_string(&ClientFrame::Send(SendMessage {
                    conv: *conv,
                    // Made as the client core makes them (time-ordered), so that the store
                    // sees the keys real clients send.
                    client_id: client::new_client_id(),
                    kind: MessageKind::Text,
                    text,
                    attachment: None,
                    reply_to: None,
                }))?,
                Target::Room(to) => crate::peer::dm_frame(sent, to, text)?,
                Target::Floor(to) => crate::floor::message_frame(to, &text),
            };
            let _ = tx.send(Message::Text(frame.into()));
            sent += 1;
        }
    }
    let send_secs = started.elapsed().as_secs_f64();
    // Drain: wait until everything arrived, or 5 s without progress.
    let mut last = recorder.delivered.load(Ordering::Relaxed);
    let mut quiet = Instant::now();
    while last < sent && quiet.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = recorder.delivered.load(Ordering::Relaxed);
        if now != last {
            last = now;
            quiet = Instant::now();
        }
    }
    let total_secs = started.elapsed().as_secs_f64();
    let cpu_after = system.groups.ticks();
    let gen_secs = (cpu_ticks(std::process::id()) - gen_before) as f64 / TICKS_PER_SEC;
    let delivered = recorder.delivered.load(Ordering::Relaxed);
    let cpu_by_group = system.groups.cores(&cpu_before, &cpu_after, total_secs);
    let cpu_secs = cpu_by_group.iter().map(|(_, c)| c).sum::<f64>() * total_secs;
    let latency_us = {
        let h = recorder.hist.lock();
        [
            h.value_at_quantile(0.50),
            h.value_at_quantile(0.90),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max(),
        ]
    };
    let report = PhaseReport {
        offered: rate,
        sent_rate: sent as f64 / send_secs,
        delivered_rate: delivered as f64 / send_secs,
        sent,
        lost: sent.saturating_sub(delivered),
        latency_us,
        cpu_cores: cpu_secs / total_secs,
        cpu_us_per_message: cpu_secs * 1e6 / delivered.max(1) as f64,
        generator_cores: gen_secs / total_secs,
        cpu_by_group,
    };
    println!("{}: {}", system.name, format_phase(&report));
    println!("{}  (load average {})", format_cpu(&report), load_average());
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(report)
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

/// Runs the systems, prepared, rate by rate: each rate's phase on each system in turn, so that
/// a slow stretch of a noisy machine falls on all of them. Returns their outcomes in order.
pub async fn side_by_side(systems: &[&Prepared], config: &BenchConfig) -> Result<Vec<Outcome>> {
    let mut outcomes: Vec<Outcome> = systems
        .iter()
        .map(|p| Outcome {
            memory: p.memory.clone(),
            phases: Vec::new(),
        })
        .collect();
    for (i, &rate) in config.rates.iter().enumerate() {
        for (system, outcome) in systems.iter().zip(&mut outcomes) {
            outcome
                .phases
                .push(run_phase(system, config, i as u64 + 1, rate).await?);
        }
    }
    Ok(outcomes)
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

/// The CPU split of a phase, on a line of its own.
pub fn format_cpu(r: &PhaseReport) -> String {
    let groups: Vec<String> = r
        .cpu_by_group
        .iter()
        .map(|(name, cores)| format!("{name} {cores:.2}"))
        .collect();
    format!("             cpu cores: {}", groups.join(" · "))
}

/// The figures of every phase as one table, for reports.
pub fn format_summary(memory: Option<&MemoryReport>, phases: &[PhaseReport]) -> String {
    let mut out = String::new();
    if let Some(m) = memory {
        out.push_str(&format!(
            "memory per idle connection: {:.2} KiB for one more ({:.2} KiB on average over {} connections)\n",
            m.marginal() / 1024.0,
            m.per_connection() / 1024.0,
            m.connections
        ));
    }
    out.push_str(
        "  rate/s  sent/s deliv/s   lost  p50 ms  p90 ms  p99 ms p99.9 ms   max ms  cores  µs/msg\n",
    );
    for r in phases {
        out.push_str(&format!(
            "{:>8} {:>7.0} {:>7.0} {:>6} {:>7} {:>7} {:>7} {:>8} {:>8} {:>6.2} {:>7.1}\n",
            r.offered,
            r.sent_rate,
            r.delivered_rate,
            r.lost,
            ms(r.latency_us[0]),
            ms(r.latency_us[1]),
            ms(r.latency_us[2]),
            ms(r.latency_us[3]),
            ms(r.latency_us[4]),
            r.cpu_cores,
            r.cpu_us_per_message,
        ));
    }
    out
}

/// What one system did over a run.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Memory per idle connection, if measured.
    pub memory: Option<MemoryReport>,
    /// One report per phase.
    pub phases: Vec<PhaseReport>,
}

impl PhaseReport {
    /// Whether the system held the rate: nothing lost, at least 98% of the offered rate
    /// delivered, p99 under 100 ms (past that, a queue is growing).
    pub fn holds(&self) -> bool {
        self.lost == 0
            && self.delivered_rate >= 0.98 * f64::from(self.offered)
            && self.latency_us[2] < 100_000
    }
}

/// The two systems' figures side by side, rate by rate, with the ratios the project is
/// judged by.
pub fn format_comparison(ours: &Outcome, peer: &Outcome) -> String {
    let mut out = String::from(
        "side by side (ours vs socket.io + redis adapter; same generator, phases interleaved):\n\
         \x20 rate/s  p99 ours  p99 peer  µs/msg ours  µs/msg peer  cpu ours/peer  held ours  held peer\n",
    );
    let yes = |b: bool| if b { "yes" } else { "no" };
    for (o, p) in ours.phases.iter().zip(&peer.phases) {
        out.push_str(&format!(
            "{:>8} {:>9} {:>9} {:>12.1} {:>12.1} {:>14.2} {:>10} {:>10}\n",
            o.offered,
            ms(o.latency_us[2]),
            ms(p.latency_us[2]),
            o.cpu_us_per_message,
            p.cpu_us_per_message,
            o.cpu_us_per_message / p.cpu_us_per_message.max(f64::MIN_POSITIVE),
            yes(o.holds()),
            yes(p.holds()),
        ));
    }
    let best = |o: &Outcome| {
        o.phases
            .iter()
            .filter(|r| r.holds())
            .map(|r| r.offered)
            .max()
            .unwrap_or(0)
    };
    out.push_str(&format!(
        "highest rate held: ours {}/s, socket.io {}/s\n",
        best(ours),
        best(peer)
    ));
    if let (Some(o), Some(p)) = (&ours.memory, &peer.memory) {
        out.push_str(&format!(
            "memory per idle connection (one more): ours {:.2} KiB, socket.io {:.2} KiB (ours/peer {:.2})\n",
            o.marginal() / 1024.0,
            p.marginal() / 1024.0,
            o.marginal() / p.marginal().max(f64::MIN_POSITIVE)
        ));
    }
    out
}

/// Ours against the floor (a bare relay that persists each message), rate by rate; with the
/// peer's figures, also the floor against a third of the peer's CPU per message, the bar the
/// project set itself. A ratio above 1 there means that even the floor spends more.
pub fn format_floor(ours: &Outcome, floor: &Outcome, peer: Option<&Outcome>) -> String {
    let mut out = String::from(
        "against the floor (a bare relay persisting each message; same generator, phases interleaved):\n\
         \x20 rate/s  µs/msg ours  µs/msg floor  ours/floor  p99 floor",
    );
    if peer.is_some() {
        out.push_str("  peer/3 µs  floor/(peer/3)");
    }
    out.push('\n');
    for (i, (o, f)) in ours.phases.iter().zip(&floor.phases).enumerate() {
        out.push_str(&format!(
            "{:>8} {:>12.1} {:>13.1} {:>11.2} {:>10}",
            o.offered,
            o.cpu_us_per_message,
            f.cpu_us_per_message,
            o.cpu_us_per_message / f.cpu_us_per_message.max(f64::MIN_POSITIVE),
            ms(f.latency_us[2]),
        ));
        if let Some(p) = peer.and_then(|p| p.phases.get(i)) {
            let allowance = p.cpu_us_per_message / 3.0;
            out.push_str(&format!(
                " {:>9.1} {:>15.2}",
                allowance,
                f.cpu_us_per_message / allowance.max(f64::MIN_POSITIVE)
            ));
        }
        out.push('\n');
    }
    if let (Some(o), Some(f)) = (&ours.memory, &floor.memory) {
        out.push_str(&format!(
            "memory per idle connection (one more): ours {:.2} KiB, floor {:.2} KiB\n",
            o.marginal() / 1024.0,
            f.marginal() / 1024.0,
        ));
    }
    out
}

/// One line per phase.
pub fn format_phase(r: &PhaseReport) -> String {
    format!(
        "rate {:>6}/s: sent {:>8.0}/s delivered {:>8.0}/s lost {:>5}  latency ms p50 {:>6} p90 {:>6} p99 {:>7} p99.9 {:>7} max {:>7}  server cpu {:>4.2} cores, {:>5.1} µs/msg  (generator {:.2} cores)",
        r.offered,
        r.sent_rate,
        r.delivered_rate,
        r.lost,
        ms(r.latency_us[0]),
        ms(r.latency_us[1]),
        ms(r.latency_us[2]),
        ms(r.latency_us[3]),
        ms(r.latency_us[4]),
        r.cpu_cores,
        r.cpu_us_per_message,
        r.generator_cores,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_messages_of_the_current_phase_count() {
        let r = Recorder::new().expect("recorder");
        r.phase.store(2, Ordering::Relaxed);
        let sent = now_us() - 1500;
        r.record(&format!("b|2|{sent}"));
        r.record(&format!("b|1|{sent}"));
        r.record("hello");
        r.record("b|2|garbage");
        assert_eq!(r.delivered.load(Ordering::Relaxed), 1);
        assert!(r.hist.lock().max() >= 1500);
    }

    fn report(offered: u32, delivered: f64, lost: u64, p99_us: u64, cpu: f64) -> PhaseReport {
        PhaseReport {
            offered,
            sent_rate: f64::from(offered),
            delivered_rate: delivered,
            sent: u64::from(offered) * 10,
            lost,
            latency_us: [1000, 2000, p99_us, p99_us, p99_us],
            cpu_cores: 1.0,
            cpu_us_per_message: cpu,
            generator_cores: 0.1,
            cpu_by_group: Vec::new(),
        }
    }

    #[test]
    fn a_rate_is_held_only_without_loss_backlog_or_a_growing_queue() {
        assert!(report(1000, 1000.0, 0, 5_000, 1.0).holds());
        assert!(!report(1000, 1000.0, 1, 5_000, 1.0).holds());
        assert!(!report(1000, 900.0, 0, 5_000, 1.0).holds());
        assert!(!report(1000, 1000.0, 0, 150_000, 1.0).holds());
    }

    #[test]
    fn the_floor_comparison_sets_the_floor_against_a_third_of_the_peer() {
        let outcome = |cpu: f64| Outcome {
            memory: None,
            phases: vec![report(1000, 1000.0, 0, 2_000, cpu)],
        };
        let (ours, floor, peer) = (outcome(120.0), outcome(60.0), outcome(150.0));
        let text = format_floor(&ours, &floor, Some(&peer));
        // ours/floor 2.00; a third of the peer 50.0; the floor spends 1.20 of it.
        assert!(text.contains("2.00"), "{text}");
        assert!(text.contains("50.0"), "{text}");
        assert!(text.contains("1.20"), "{text}");
        let without_peer = format_floor(&ours, &floor, None);
        assert!(!without_peer.contains("peer/3"), "{without_peer}");
    }

    #[test]
    fn the_comparison_gives_the_cpu_ratio_and_the_highest_rates_held() {
        let ours = Outcome {
            memory: None,
            phases: vec![
                report(1000, 1000.0, 0, 2_000, 100.0),
                report(2000, 2000.0, 0, 3_000, 80.0),
            ],
        };
        let peer = Outcome {
            memory: None,
            phases: vec![
                report(1000, 1000.0, 0, 4_000, 300.0),
                report(2000, 1500.0, 0, 500_000, 320.0),
            ],
        };
        let text = format_comparison(&ours, &peer);
        assert!(text.contains("0.33"), "{text}");
        assert!(text.contains("0.25"), "{text}");
        assert!(
            text.contains("highest rate held: ours 2000/s, socket.io 1000/s"),
            "{text}"
        );
    }
}
