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
use protocol::{ConvId, NodeId, UserId};
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
struct VUser {
    node: NodeId,
    tx: mpsc::UnboundedSender<Message>,
}

/// Latency and delivery counts shared by the reader tasks.
struct Recorder {
    hist: Mutex<Histogram<u64>>,
    delivered: AtomicU64,
    /// Only messages of the current phase count (their text carries the phase number).
    phase: AtomicU64,
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
struct CpuGroups(Vec<(String, Members)>);

enum Members {
    Pids(Vec<u32>),
    Named(String),
}

/// One reading: CPU ticks so far of each process of each group.
type Ticks = Vec<HashMap<u32, u64>>;

impl CpuGroups {
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
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(16 << 20));
    let (ws, _) = tokio_tungstenite::connect_async_with_config(req, Some(config), true).await?;
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
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    tokio::spawn(async move {
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
    });
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
                // Text: "b|<phase>|<sent at, µs>".
                let mut parts = m.text.split('|');
                if parts.next() != Some("b") {
                    continue;
                }
                let phase: u64 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
                let sent: u64 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
                if phase != recorder.phase.load(Ordering::Relaxed) || sent == 0 {
                    continue;
                }
                let latency = now_us().saturating_sub(sent).max(1);
                let _ = recorder.hist.lock().record(latency);
                recorder.delivered.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    Ok(VUser {
        node: assign.node,
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

/// Runs the benchmark against a started cluster and prints its figures as it goes.
pub async fn run(
    cluster: &Cluster,
    config: &BenchConfig,
) -> Result<(Option<MemoryReport>, Vec<PhaseReport>)> {
    let url = cluster.controller_url().to_owned();
    let node_pids: Vec<u32> = cluster.nodes().iter().map(|n| n.pid).collect();
    let groups = CpuGroups::of(cluster, &config.external);
    let http = client::api::http_client()?;
    let recorder = Arc::new(Recorder {
        hist: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        delivered: AtomicU64::new(0),
        phase: AtomicU64::new(0),
    });

    // Memory per idle connection: the nodes' RSS before and after `idle` connections.
    let memory = if config.idle > 0 {
        println!("memory: opening {} idle connections…", config.idle);
        let sessions = users(&url, "idle", config.idle, 50).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before: i64 = node_pids.iter().map(|p| rss_bytes(*p)).sum();
        let half = sessions.len() / 2;
        let mut middle = None;
        let mut idle = Vec::with_capacity(sessions.len());
        for chunk in sessions.chunks(100) {
            if middle.is_none() && idle.len() >= half {
                tokio::time::sleep(Duration::from_secs(2)).await;
                middle = Some((
                    idle.len(),
                    node_pids.iter().map(|p| rss_bytes(*p)).sum::<i64>(),
                ));
            }
            let conns = chunk.iter().map(|s| {
                let api = s.api_with(http.clone());
                let recorder = recorder.clone();
                async move { connect(&api?, &s.token, recorder, s.user.id).await }
            });
            for c in futures::future::join_all(conns).await {
                idle.push(c?);
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after: i64 = node_pids.iter().map(|p| rss_bytes(*p)).sum();
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
        // Close them (the load phases measure the talking users alone), and let the nodes
        // forget them before the load starts.
        for v in &idle {
            let _ = v.tx.send(Message::Close(None));
        }
        drop(idle);
        tokio::time::sleep(Duration::from_secs(1)).await;
        Some(report)
    } else {
        None
    };

    // The talking users.
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
    let mut by_node: HashMap<NodeId, Vec<usize>> = HashMap::new();
    for (i, v) in vusers.iter().enumerate() {
        by_node.entry(v.node.clone()).or_default().push(i);
    }
    let spread: Vec<String> = {
        let mut s: Vec<_> = by_node
            .iter()
            .map(|(n, l)| format!("{n}: {}", l.len()))
            .collect();
        s.sort();
        s
    };
    println!("load: users per node {}", spread.join(", "));
    // Pair users of different nodes: walk the nodes round-robin.
    let mut queues: Vec<Vec<usize>> = by_node.into_values().collect();
    queues.sort_by_key(|q| std::cmp::Reverse(q.len()));
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
    if config.rates.is_empty() {
        return Ok((memory, Vec::new()));
    }
    if pairs.is_empty() {
        bail!("could not pair users across nodes (is there more than one node?)");
    }
    // One direct conversation per pair; both sides send.
    let mut senders: Vec<(usize, ConvId)> = Vec::new();
    for chunk in pairs.chunks(50) {
        let opens = chunk.iter().map(|(a, b)| {
            let api = sessions[*a].api_with(http.clone());
            let peer = sessions[*b].user.username.clone();
            async move { api?.open_direct(&peer).await }
        });
        for ((a, b), conv) in chunk.iter().zip(futures::future::join_all(opens).await) {
            let conv = conv.context("open direct conversation")?.id;
            senders.push((*a, conv));
            senders.push((*b, conv));
        }
    }
    println!(
        "load: {} cross-node conversations, {} senders",
        pairs.len(),
        senders.len()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut reports = Vec::new();
    for (phase_no, &rate) in config.rates.iter().enumerate() {
        let phase = phase_no as u64 + 1;
        recorder.phase.store(phase, Ordering::Relaxed);
        recorder.delivered.store(0, Ordering::Relaxed);
        recorder.hist.lock().reset();
        let cpu_before = groups.ticks();
        let gen_before = cpu_ticks(std::process::id());
        let started = Instant::now();
        let mut sent = 0u64;
        let mut next_sender = 0usize;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        while started.elapsed() < config.phase {
            tick.tick().await;
            let due = (started.elapsed().as_secs_f64() * f64::from(rate)) as u64;
            while sent < due {
                let (who, conv) = senders[next_sender % senders.len()];
                next_sender += 1;
                let frame = ClientFrame::Send(SendMessage {
                    conv,
                    // Made as the client core makes them (time-ordered), so that the store
                    // sees the keys real clients send.
                    client_id: client::new_client_id(),
                    kind: MessageKind::Text,
                    text: format!("b|{phase}|{}", now_us()),
                    attachment: None,
                    reply_to: None,
                });
                let _ = vusers[who]
                    .tx
                    .send(Message::Text(serde_json::to_string(&frame)?.into()));
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
        let cpu_after = groups.ticks();
        let gen_secs = (cpu_ticks(std::process::id()) - gen_before) as f64 / TICKS_PER_SEC;
        let delivered = recorder.delivered.load(Ordering::Relaxed);
        let cpu_by_group = groups.cores(&cpu_before, &cpu_after, total_secs);
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
        println!("{}", format_phase(&report));
        println!("{}  (load average {})", format_cpu(&report), load_average());
        reports.push(report);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for v in &vusers {
        let _ = v.tx.send(Message::Close(None));
    }
    Ok((memory, reports))
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
