//! The live checker: what every device got of what the cluster acknowledged, judged as it
//! happens — Maelstrom's lost / duplicate / out-of-order checks, but live, on real processes,
//! per device and conversation, the sender's other devices included.
//!
//! It is fed observations in the order a device saw them ([`Checker::sent`],
//! [`Checker::acked`], [`Checker::shown`], [`Checker::status`]) and the nodes' sampled hops
//! ([`Checker::hop`], for bus envelopes per message), and owns no task and no clock: callers pass
//! the time (microseconds on the lab's clock), so lessons and tests drive it headless.
//!
//! What it calls broken:
//! - **lost**: a committed message (acknowledged to its sender, or shown on any device) that a
//!   device which must get it — every device of every member that was registered before the
//!   message was sent — has not shown once the run settled ([`Checker::settle`]). Before
//!   that, one older than the stale bound is only **stale** (amber): a failover takes seconds.
//! - **duplicate**: a device showed the same event twice.
//! - **out of order**: a device showed a conversation's events other than 1, 2, 3…: a `seq`
//!   skipped, or one arriving after a later one.
//!
//! Invariant: every counter only grows until [`Checker::reset`]; the verdict is red from the
//! first broken guarantee on, and its headline names that first message, device and node.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use protocol::lab::{CheckRow, CheckerView, Failover, Level, Violation, ViolationKind};
use protocol::model::Event;
use protocol::trace::Hop;
use protocol::ws::Ack;
use protocol::{ClientMsgId, ConvId, DeviceId, MessageId, Seq};

/// How the checker judges.
#[derive(Clone, Debug)]
pub struct CheckerConfig {
    /// A delivery not made after this long is stale (amber); lost only once the run settles.
    pub stale_after: Duration,
    /// Violations kept in full (the counters have them all).
    pub max_violations: usize,
    /// Rows (device × conversation) reported.
    pub max_rows: usize,
    /// Failovers listed.
    pub max_failovers: usize,
    /// Sampled messages the msgs-per-op figure is over.
    pub ops_window: usize,
}

impl Default for CheckerConfig {
    fn default() -> Self {
        CheckerConfig {
            stale_after: Duration::from_secs(5),
            max_violations: 50,
            max_rows: 40,
            max_failovers: 20,
            ops_window: 200,
        }
    }
}

/// A device the checker follows.
#[derive(Debug)]
struct Device {
    user: String,
    registered_us: i64,
    /// The node slot of its current (or last) session.
    node: Option<String>,
    /// Since when it has been without a live session, and the node it lost.
    down: Option<(i64, Option<String>)>,
    live: bool,
}

/// A send handed to a client core, until it is committed.
#[derive(Debug)]
struct Send {
    device: DeviceId,
    conv: ConvId,
    at_us: i64,
}

/// A committed message some device has not shown yet.
#[derive(Debug)]
struct Pending {
    /// The device that sent it (it shows its own message at once: no delivery latency).
    sender: DeviceId,
    conv: ConvId,
    seq: Seq,
    sent_us: i64,
    /// When it was first known committed: the stale clock starts here.
    committed_us: i64,
    /// Devices that must still show it.
    missing: Vec<DeviceId>,
    /// Whether each missing device was already counted stale.
    stale: Vec<bool>,
}

/// One device's position in one conversation.
#[derive(Debug, Default)]
struct Position {
    last: Option<Seq>,
    /// Sequence numbers skipped so far (a later one came first): one arriving now is late, not
    /// a duplicate.
    skipped: BTreeSet<Seq>,
}

/// Counts for one device in one conversation.
#[derive(Clone, Debug, Default)]
struct Row {
    sender: bool,
    delivered: u64,
    expected: u64,
    stale: u64,
    lost: u64,
    duplicates: u64,
    out_of_order: u64,
}

/// The live checker. See the module docs.
#[derive(Debug)]
pub struct Checker {
    config: CheckerConfig,
    devices: HashMap<DeviceId, Device>,
    /// Devices that must get each conversation's messages.
    members: HashMap<ConvId, Vec<DeviceId>>,
    sends: HashMap<ClientMsgId, Send>,
    /// Messages already settled into `pending` (or fully delivered), by id, with their send
    /// time; entries go once every device showed them.
    pending: HashMap<MessageId, Pending>,
    /// Messages every device showed: a later showing is a duplicate (kept bounded).
    done: HashMap<MessageId, (ConvId, Seq)>,
    done_order: VecDeque<MessageId>,
    positions: HashMap<(DeviceId, ConvId), Position>,
    rows: HashMap<(DeviceId, ConvId), Row>,
    sent: u64,
    acked: u64,
    refused: u64,
    expected: u64,
    delivered: u64,
    stale: u64,
    lost: u64,
    duplicates: u64,
    out_of_order: u64,
    violations: Vec<Violation>,
    latency: hdrhistogram::Histogram<u64>,
    failover: hdrhistogram::Histogram<u64>,
    failovers: VecDeque<Failover>,
    /// Sampled messages: when persisted, and the bus envelopes seen for them.
    ops: HashMap<MessageId, (Option<i64>, u32)>,
    ops_order: VecDeque<MessageId>,
}

/// How many fully delivered messages are remembered to recognise duplicates of.
const DONE_KEPT: usize = 100_000;
impl Checker {
    /// A checker with nothing seen yet.
    pub fn new(config: CheckerConfig) -> Self {
        Checker {
            config,
            devices: HashMap::new(),
            members: HashMap::new(),
            sends: HashMap::new(),
            pending: HashMap::new(),
            done: HashMap::new(),
            done_order: VecDeque::new(),
            positions: HashMap::new(),
            rows: HashMap::new(),
            sent: 0,
            acked: 0,
            refused: 0,
            expected: 0,
            delivered: 0,
            stale: 0,
            lost: 0,
            duplicates: 0,
            out_of_order: 0,
            violations: Vec::new(),
            latency: histogram(),
            failover: histogram(),
            failovers: VecDeque::new(),
            ops: HashMap::new(),
            ops_order: VecDeque::new(),
        }
    }

    /// Forgets every count and violation; keeps the devices and conversations, which from now
    /// on must get only what is sent from now on.
    pub fn reset(&mut self, now_us: i64) {
        let devices = std::mem::take(&mut self.devices);
        let members = std::mem::take(&mut self.members);
        *self = Checker::new(self.config.clone());
        self.members = members;
        self.devices = devices
            .into_iter()
            .map(|(id, mut d)| {
                d.registered_us = now_us;
                (id, d)
            })
            .collect();
    }

    /// The stale bound.
    pub fn stale_after(&self) -> Duration {
        self.config.stale_after
    }

    /// A device to follow, of user `user`: it must get every message sent from `at_us` on in
    /// the conversations it is [`Checker::join`]ed to.
    pub fn add_device(&mut self, device: DeviceId, user: &str, at_us: i64) {
        self.devices.insert(
            device,
            Device {
                user: user.to_owned(),
                registered_us: at_us,
                node: None,
                down: None,
                live: false,
            },
        );
    }

    /// `device` must get the messages of `conv`.
    pub fn join(&mut self, conv: ConvId, device: DeviceId) {
        let members = self.members.entry(conv).or_default();
        if !members.contains(&device) {
            members.push(device);
        }
    }

    /// `device` handed a message for `conv` to its client core.
    pub fn sent(&mut self, device: &DeviceId, conv: ConvId, client_id: ClientMsgId, at_us: i64) {
        self.sent += 1;
        self.rows.entry((device.clone(), conv)).or_default().sender = true;
        self.sends.insert(
            client_id,
            Send {
                device: device.clone(),
                conv,
                at_us,
            },
        );
    }

    /// A send was refused for good.
    pub fn refused(&mut self, client_id: &ClientMsgId) {
        if self.sends.remove(client_id).is_some() {
            self.refused += 1;
        }
    }

    /// The sending device got its acknowledgement.
    pub fn acked(&mut self, ack: &Ack, at_us: i64) {
        if self.sends.contains_key(&ack.client_id) {
            self.acked += 1;
        }
        self.committed(&ack.client_id, ack.id, ack.conv, ack.seq, at_us);
    }

    /// A message is known committed (acked, or shown somewhere): from now on every device
    /// that must get it is waited for.
    fn committed(
        &mut self,
        client_id: &ClientMsgId,
        id: MessageId,
        conv: ConvId,
        seq: Seq,
        at_us: i64,
    ) {
        let Some(send) = self.sends.remove(client_id) else {
            return;
        };
        if self.pending.contains_key(&id) || self.done.contains_key(&id) {
            return;
        }
        let missing: Vec<DeviceId> = self
            .members
            .get(&send.conv)
            .map(|m| {
                m.iter()
                    .filter(|d| {
                        self.devices
                            .get(*d)
                            .is_some_and(|d| d.registered_us <= send.at_us)
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        self.expected += missing.len() as u64;
        for d in &missing {
            self.rows.entry((d.clone(), conv)).or_default().expected += 1;
        }
        let stale = vec![false; missing.len()];
        self.pending.insert(
            id,
            Pending {
                sender: send.device,
                conv,
                seq,
                sent_us: send.at_us,
                committed_us: at_us,
                missing,
                stale,
            },
        );
    }

    /// `device` showed `event` to its user.
    pub fn shown(&mut self, device: &DeviceId, event: &Event, at_us: i64) {
        let key = (device.clone(), event.conv);
        let node = self.devices.get(device).and_then(|d| d.node.clone());
        // Order first: it tells a duplicate from a late arrival.
        let position = self.positions.entry(key.clone()).or_default();
        let order = match position.last {
            None => Ok(()),
            Some(last) if event.seq == last + 1 => Ok(()),
            Some(last) if event.seq > last + 1 => {
                position.skipped.extend(last + 1..event.seq);
                Err((
                    ViolationKind::OutOfOrder,
                    format!(
                        "seq {} after {last}: {} skipped",
                        event.seq,
                        if event.seq == last + 2 {
                            format!("{}", last + 1)
                        } else {
                            format!("{}–{}", last + 1, event.seq - 1)
                        }
                    ),
                ))
            }
            Some(last) if position.skipped.remove(&event.seq) => Err((
                ViolationKind::OutOfOrder,
                format!("seq {} after {last}: arrived late", event.seq),
            )),
            Some(_) => Err((
                ViolationKind::Duplicate,
                format!("seq {} a second time", event.seq),
            )),
        };
        if position.last.is_none_or(|l| event.seq > l) {
            position.last = Some(event.seq);
        }
        if let Some(client_id) = &event.client_id {
            self.committed(client_id, event.id, event.conv, event.seq, at_us);
        }
        if let Err((kind, detail)) = order {
            let row = self.rows.entry(key).or_default();
            if kind == ViolationKind::Duplicate {
                self.duplicates += 1;
                row.duplicates += 1;
            } else {
                self.out_of_order += 1;
                row.out_of_order += 1;
            }
            self.violate(
                kind,
                Some(event.id),
                event.conv,
                Some(event.seq),
                device,
                node,
                at_us,
                &detail,
            );
            if kind == ViolationKind::Duplicate {
                return;
            }
        }
        self.delivered_to(device, event.id, at_us);
    }

    /// Marks `id` shown on `device`, if it was waited for there.
    fn delivered_to(&mut self, device: &DeviceId, id: MessageId, at_us: i64) {
        let Some(p) = self.pending.get_mut(&id) else {
            return;
        };
        let Some(i) = p.missing.iter().position(|d| d == device) else {
            return;
        };
        p.missing.swap_remove(i);
        let was_stale = p.stale.swap_remove(i);
        self.delivered += 1;
        if was_stale {
            self.stale = self.stale.saturating_sub(1);
        }
        let row = self.rows.entry((device.clone(), p.conv)).or_default();
        row.delivered += 1;
        if was_stale {
            row.stale = row.stale.saturating_sub(1);
        }
        // The sender's own device sees its message at once: only other devices measure the
        // cluster's delivery.
        if *device != p.sender {
            let latency = (at_us - p.sent_us).max(1) as u64;
            let _ = self.latency.record(latency.min(HIST_MAX_US));
        }
        if p.missing.is_empty()
            && let Some(p) = self.pending.remove(&id)
        {
            self.remember_done(id, p.conv, p.seq);
        }
    }

    fn remember_done(&mut self, id: MessageId, conv: ConvId, seq: Seq) {
        self.done.insert(id, (conv, seq));
        self.done_order.push_back(id);
        while self.done_order.len() > DONE_KEPT {
            if let Some(old) = self.done_order.pop_front() {
                self.done.remove(&old);
            }
        }
    }

    /// A device's session changed: live on `node`, or not live (`node` is then the node it
    /// was on, if known). A loss of the node followed by a live session is a failover.
    pub fn status(&mut self, device: &DeviceId, node: Option<&str>, live: bool, at_us: i64) {
        let Some(d) = self.devices.get_mut(device) else {
            return;
        };
        if live {
            if let Some((since, from)) = d.down.take() {
                let ms = ((at_us - since).max(0) / 1000) as u64;
                let _ = self
                    .failover
                    .record(((at_us - since).max(1) as u64).min(HIST_MAX_US));
                self.failovers.push_back(Failover {
                    device: device.clone(),
                    from,
                    to: node.map(str::to_owned),
                    at_us: since,
                    ms,
                });
                while self.failovers.len() > self.config.max_failovers {
                    self.failovers.pop_front();
                }
            }
            d.live = true;
            d.node = node.map(str::to_owned);
        } else {
            if d.live {
                d.down = Some((at_us, d.node.clone()));
            }
            d.live = false;
            if node.is_some() {
                d.node = node.map(str::to_owned);
            }
        }
    }

    /// A sampled hop seen on a node: persists count messages, received and returned
    /// envelopes count bus traffic (msgs-per-op).
    pub fn hop(&mut self, hop: Hop, id: MessageId, at_us: i64) {
        let counts = matches!(hop, Hop::Persisted | Hop::Received | Hop::Returned);
        if !counts {
            return;
        }
        let entry = self.ops.entry(id).or_insert_with(|| {
            self.ops_order.push_back(id);
            (None, 0)
        });
        match hop {
            Hop::Persisted => entry.0 = Some(at_us),
            _ => entry.1 += 1,
        }
        while self.ops_order.len() > self.config.ops_window * 4 {
            if let Some(old) = self.ops_order.pop_front() {
                self.ops.remove(&old);
            }
        }
    }

    /// Counts deliveries older than the stale bound as stale. Call it a few times a second.
    pub fn tick(&mut self, now_us: i64) {
        let bound = self.config.stale_after.as_micros() as i64;
        for p in self.pending.values_mut() {
            if now_us - p.committed_us < bound {
                continue;
            }
            for (i, d) in p.missing.iter().enumerate() {
                if !p.stale[i] {
                    p.stale[i] = true;
                    self.stale += 1;
                    self.rows.entry((d.clone(), p.conv)).or_default().stale += 1;
                }
            }
        }
    }

    /// The run has settled (traffic stopped and the cluster had time): every delivery still
    /// missing past the stale bound is lost.
    pub fn settle(&mut self, now_us: i64) {
        self.tick(now_us);
        let bound = self.config.stale_after.as_micros() as i64;
        let due: Vec<MessageId> = self
            .pending
            .iter()
            .filter(|(_, p)| now_us - p.committed_us >= bound)
            .map(|(id, _)| *id)
            .collect();
        let mut gone: Vec<(MessageId, Pending)> = due
            .into_iter()
            .filter_map(|id| self.pending.remove(&id).map(|p| (id, p)))
            .collect();
        gone.sort_by_key(|(_, p)| (p.committed_us, p.seq));
        for (id, p) in gone {
            for d in &p.missing {
                self.lost += 1;
                self.stale = self.stale.saturating_sub(1);
                let row = self.rows.entry((d.clone(), p.conv)).or_default();
                row.lost += 1;
                row.stale = row.stale.saturating_sub(1);
                let node = self.devices.get(d).and_then(|d| d.node.clone());
                let detail = format!(
                    "never arrived ({} s after it was committed)",
                    (now_us - p.committed_us) / 1_000_000
                );
                self.violate(
                    ViolationKind::Lost,
                    Some(id),
                    p.conv,
                    Some(p.seq),
                    d,
                    node,
                    now_us,
                    &detail,
                );
            }
            self.remember_done(id, p.conv, p.seq);
        }
    }

    /// Whether no delivery is waited for (everything committed was shown everywhere).
    pub fn quiet(&self) -> bool {
        self.pending.is_empty()
    }

    /// Deliveries waited for.
    pub fn waiting(&self) -> usize {
        self.pending.values().map(|p| p.missing.len()).sum()
    }

    #[allow(clippy::too_many_arguments)]
    fn violate(
        &mut self,
        kind: ViolationKind,
        id: Option<MessageId>,
        conv: ConvId,
        seq: Option<Seq>,
        device: &DeviceId,
        node: Option<String>,
        at_us: i64,
        detail: &str,
    ) {
        if self.violations.len() >= self.config.max_violations {
            return;
        }
        let user = self
            .devices
            .get(device)
            .map(|d| d.user.clone())
            .unwrap_or_default();
        let what = match kind {
            ViolationKind::Lost => "LOST",
            ViolationKind::Duplicate => "DUPLICATE",
            ViolationKind::OutOfOrder => "OUT OF ORDER",
        };
        let message = id
            .map(|id| format!("message {id}"))
            .unwrap_or_else(|| "an event".into());
        let text = format!(
            "{what}: {message} of conversation {} to device {device} ({user}){}: {detail}",
            conv.0,
            node.as_deref()
                .map(|n| format!(" on {n}"))
                .unwrap_or_default(),
        );
        self.violations.push(Violation {
            kind,
            id,
            conv,
            seq,
            device: device.clone(),
            user,
            node,
            at_us,
            text,
        });
    }

    /// Green, amber or red.
    pub fn verdict(&self) -> Level {
        if self.lost + self.duplicates + self.out_of_order > 0 {
            Level::Bad
        } else if self.stale > 0 {
            Level::Warn
        } else {
            Level::Ok
        }
    }

    /// The first broken guarantees, in the order they were found.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// Everything the panel shows.
    pub fn view(&self) -> CheckerView {
        let verdict = self.verdict();
        let devices = self.devices.len();
        let waiting = self.waiting() as u64;
        let headline = match verdict {
            Level::Bad => self
                .violations
                .first()
                .map(|v| v.text.clone())
                .unwrap_or_else(|| "a guarantee broke".into()),
            Level::Warn => format!(
                "{} deliver{} late (more than {:.0} s): {}",
                self.stale,
                if self.stale == 1 { "y" } else { "ies" },
                self.config.stale_after.as_secs_f64(),
                self.oldest_stale().unwrap_or_default()
            ),
            Level::Ok if self.acked == 0 && self.delivered == 0 => format!(
                "Waiting for traffic: {devices} device{} followed",
                if devices == 1 { "" } else { "s" }
            ),
            Level::Ok => format!(
                "All {} acknowledged messages reached every device that must get them, once, in \
                 order ({} deliveries{})",
                self.acked,
                self.delivered,
                if waiting > 0 {
                    format!(", {waiting} on their way")
                } else {
                    String::new()
                }
            ),
        };
        let (msgs_per_op, ops_sampled) = self.msgs_per_op();
        CheckerView {
            verdict,
            headline,
            sent: self.sent,
            acked: self.acked,
            refused: self.refused,
            expected: self.expected,
            delivered: self.delivered,
            pending: waiting.saturating_sub(self.stale),
            stale: self.stale,
            lost: self.lost,
            duplicates: self.duplicates,
            out_of_order: self.out_of_order,
            stale_after_ms: self.config.stale_after.as_millis() as u64,
            violations: self.violations.clone(),
            rows: self.rows(),
            latency: summarize(&self.latency),
            msgs_per_op,
            ops_sampled,
            failover: summarize(&self.failover),
            failovers: self.failovers.iter().rev().cloned().collect(),
        }
    }

    /// "message X to device Y on n2" for the oldest stale delivery.
    fn oldest_stale(&self) -> Option<String> {
        let (id, p) = self
            .pending
            .iter()
            .filter(|(_, p)| p.stale.iter().any(|s| *s))
            .min_by_key(|(_, p)| p.committed_us)?;
        let i = p.stale.iter().position(|s| *s)?;
        let device = &p.missing[i];
        let d = self.devices.get(device);
        Some(format!(
            "message {id} of conversation {} not yet on device {device} ({}){}",
            p.conv.0,
            d.map(|d| d.user.as_str()).unwrap_or(""),
            d.and_then(|d| d.node.as_deref())
                .map(|n| format!(", last on {n}"))
                .unwrap_or_default()
        ))
    }

    /// Envelopes per message over the last sampled messages whose envelopes have all had time
    /// to arrive (persisted at least a second before the newest one).
    fn msgs_per_op(&self) -> (Option<f64>, u64) {
        let newest = self.ops.values().filter_map(|(p, _)| *p).max();
        let Some(newest) = newest else {
            return (None, 0);
        };
        let settled = self
            .ops_order
            .iter()
            .rev()
            .filter_map(|id| self.ops.get(id))
            .filter_map(|(p, n)| p.map(|p| (p, *n)))
            .filter(|(p, _)| newest - p >= 1_000_000)
            .take(self.config.ops_window);
        let (mut ops, mut envelopes) = (0u64, 0u64);
        for (_, n) in settled {
            ops += 1;
            envelopes += u64::from(n);
        }
        if ops == 0 {
            (None, 0)
        } else {
            (Some(envelopes as f64 / ops as f64), ops)
        }
    }

    fn rows(&self) -> Vec<CheckRow> {
        let mut rows: Vec<CheckRow> = self
            .rows
            .iter()
            .filter(|(_, r)| r.expected > 0 || r.duplicates + r.out_of_order > 0)
            .map(|((device, conv), r)| {
                let level = if r.lost + r.duplicates + r.out_of_order > 0 {
                    Level::Bad
                } else if r.stale > 0 {
                    Level::Warn
                } else {
                    Level::Ok
                };
                CheckRow {
                    device: device.clone(),
                    user: self
                        .devices
                        .get(device)
                        .map(|d| d.user.clone())
                        .unwrap_or_default(),
                    conv: *conv,
                    sender: r.sender,
                    delivered: r.delivered,
                    expected: r.expected,
                    stale: r.stale,
                    lost: r.lost,
                    duplicates: r.duplicates,
                    out_of_order: r.out_of_order,
                    level,
                }
            })
            .collect();
        let rank = |l: Level| match l {
            Level::Bad => 0,
            Level::Warn => 1,
            Level::Ok => 2,
        };
        rows.sort_by(|a, b| {
            rank(a.level)
                .cmp(&rank(b.level))
                .then((b.expected - b.delivered).cmp(&(a.expected - a.delivered)))
                .then(a.user.cmp(&b.user))
                .then(a.device.cmp(&b.device))
                .then(a.conv.cmp(&b.conv))
        });
        rows.truncate(self.config.max_rows);
        rows
    }
}

mod latency;

pub use self::latency::summarize;
use self::latency::{HIST_MAX_US, histogram};

#[cfg(test)]
mod tests;
