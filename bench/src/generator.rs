//! The load generator: virtual users that speak each measured system's protocol themselves
//! (one WebSocket each, no client-core bookkeeping, so that the generator stays cheaper than
//! what it measures), paired across nodes and sending at fixed **open-loop** rates — a message
//! is due at its time whether or not earlier ones were answered, so a slow server shows up as
//! latency instead of hiding behind a slower client.
//!
//! A system is measured in two steps, so that a caller can attach whatever it likes (an
//! observer on the cluster's trace streams, say) in between: its `prepare` (in [`crate::ours`],
//! [`crate::peer`], [`crate::floor`]) connects and pairs the users and gives a [`Prepared`];
//! [`run_phase`] then offers one rate to it and returns that phase's [`PhaseReport`].
//! [`side_by_side`] interleaves the phases of several systems rate by rate.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures::SinkExt;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use protocol::ConvId;
use protocol::model::MessageKind;
use protocol::ws::{ClientFrame, SendMessage};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::procs::{CpuGroups, TICKS_PER_SEC, cpu_ticks, load_average, rss_bytes};
use crate::report::{MemoryReport, Outcome, PhaseReport, format_cpu, format_phase};

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

impl Prepared {
    /// A system of which nothing is connected yet but the idle connections measured.
    pub(crate) fn new(
        name: &str,
        memory: Option<MemoryReport>,
        recorder: Arc<Recorder>,
        groups: CpuGroups,
    ) -> Prepared {
        Prepared {
            name: name.to_owned(),
            memory,
            recorder,
            groups,
            senders: Vec::new(),
            vusers: Vec::new(),
        }
    }

    /// Connects `config.users` talking users to a system whose users need nothing more than a
    /// connection (the peer, the floor), a hundred at a time (`open(i)` opens user `i`), pairs
    /// them across nodes, and makes each pair's two senders, each to `target(i)` of the other.
    pub(crate) async fn with_talkers<F, Fut>(
        mut self,
        config: &BenchConfig,
        open: F,
        target: impl Fn(usize) -> Target,
    ) -> Result<Prepared>
    where
        F: Fn(usize) -> Fut,
        Fut: std::future::Future<Output = Result<VUser>>,
    {
        println!(
            "load: {} users on {}, paired across nodes…",
            config.users, self.name
        );
        let (vusers, senders) = talkers(config, open, target).await?;
        println!(
            "load: {} cross-node pairs on {}, {} senders",
            senders.len() / 2,
            self.name,
            senders.len()
        );
        self.vusers = vusers;
        self.senders = senders;
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(self)
    }
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

/// The client side's WebSocket settings, for every system measured: small buffers, as a
/// generator of many sockets needs.
pub(crate) fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(16 << 20))
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
}
