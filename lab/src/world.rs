//! The lab's picture of a run, built from everything it observes: the supervisor's slots, the
//! registry's answers, each node's counters, the nodes' and the controller's sampled traces,
//! and what the virtual devices saw (which also feeds the [`Checker`]). It owns no task and
//! reads no clock: [`crate::control`] feeds it and asks it for panel frames
//! ([`World::update`]) and reports ([`World::report`]).
//!
//! Sampling and coalescing: a frame carries the state as it is now plus what changed since the
//! panel's [`Cursor`]; sampled messages and log lines live in bounded rings, so a panel that
//! was away or slow gets the newest ones and a count of what it missed, never a backlog.

use std::collections::{HashMap, HashSet, VecDeque};

use protocol::http::{NodeState as RegistryState, NodeStatus, NodesResponse};
use protocol::lab::{
    AssignmentView, BackendChoice, BackendsView, ClusterView, DeviceDot, DeviceState, DevicesView,
    Level, LogEntry, MessageView, Narration, NodeState, NodeView, Notice, PresenceView, Report,
    SeriesPoint, Step, StepKind, TrafficView, Update,
};
use protocol::trace::{ConnChange, Hop, Trace, TraceEvent};
use protocol::{ClientMsgId, ConvId, DeviceId, MessageId, UserId};

use crate::checker::{Checker, CheckerConfig};
use crate::cluster::{NodeInfo, ProcessState};
use crate::users::Observation;

mod frames;

/// Sampled messages kept.
const MESSAGES_KEPT: usize = 300;
/// Sampled messages in a frame, at most (the newest).
const MESSAGES_PER_FRAME: usize = 60;
/// Messages in a panel's first frame.
const MESSAGES_FULL: usize = 80;
/// Log lines kept.
const LOG_KEPT: usize = 400;
/// Assignments kept.
const ASSIGNMENTS_KEPT: usize = 200;
/// Seconds of series kept (an hour).
const SERIES_KEPT: usize = 3600;
/// Sends remembered to put the sending device on a sampled message's timeline.
const SENDS_KEPT: usize = 20_000;
/// Online user names listed.
const ONLINE_LISTED: usize = 200;

/// Where one panel connection is: what it has already been sent.
#[derive(Clone, Debug, Default)]
pub struct Cursor {
    run: String,
    counter: u64,
    devices: u64,
    narration: u64,
}

/// A node's counters, from its `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NodeCounters {
    /// `chat_events_persisted_total`.
    pub persisted: f64,
    /// `chat_bus_received_total`.
    pub bus_received: f64,
    /// `chat_deliveries_total`.
    pub deliveries: f64,
    /// `chat_bus_published_total`.
    pub bus_published: f64,
}

impl NodeCounters {
    /// Reads the counters out of a Prometheus text page.
    pub fn parse(text: &str) -> NodeCounters {
        let mut c = NodeCounters::default();
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            let (Some(name), Some(value)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            match name {
                "chat_events_persisted_total" => c.persisted = value,
                "chat_bus_received_total" => c.bus_received = value,
                "chat_deliveries_total" => c.deliveries = value,
                "chat_bus_published_total" => c.bus_published = value,
                _ => {}
            }
        }
        c
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Rates {
    last: Option<(i64, NodeCounters)>,
    in_per_sec: f64,
    out_per_sec: f64,
    persisted_per_sec: f64,
}

#[derive(Clone, Debug)]
struct DeviceRec {
    id: DeviceId,
    user: u32,
    node: Option<String>,
    state: DeviceState,
}

#[derive(Clone, Debug)]
struct Tracked {
    view: MessageView,
    changed: u64,
}

/// Everything the cluster is made of that the control sets, not observes.
#[derive(Clone, Debug, Default)]
pub struct Setup {
    /// The controller's URL.
    pub controller: String,
    /// The backends.
    pub backends: BackendsView,
    /// Backend sets to switch to.
    pub choices: Vec<BackendChoice>,
    /// Node lease.
    pub lease_ms: u64,
    /// Whether buses can be cut.
    pub cuttable: bool,
}

/// The lab's picture of a run. See the module docs.
#[derive(Debug)]
pub struct World {
    run: String,
    started_us: i64,
    counter: u64,
    checker: Checker,
    setup: Setup,
    slots: Vec<NodeInfo>,
    registry: Option<NodesResponse>,
    registry_error: Option<String>,
    rates: HashMap<String, Rates>,
    users: Vec<String>,
    user_ids: HashMap<UserId, String>,
    devices: Vec<DeviceRec>,
    device_index: HashMap<DeviceId, usize>,
    devices_version: u64,
    conv_direct: HashMap<ConvId, bool>,
    sends: HashMap<ClientMsgId, (DeviceId, i64)>,
    sends_order: VecDeque<ClientMsgId>,
    messages: HashMap<MessageId, Tracked>,
    message_order: VecDeque<MessageId>,
    assignments: VecDeque<(u64, AssignmentView)>,
    log: VecDeque<(u64, LogEntry)>,
    online: HashMap<UserId, HashSet<String>>,
    notices: Vec<Notice>,
    /// Node id → index into `notices` of the ones the registry has not noticed yet.
    pending_notices: HashMap<String, usize>,
    series: VecDeque<SeriesPoint>,
    last_second: (i64, u64, u64),
    traffic: TrafficView,
    narration: Option<Narration>,
    narration_version: u64,
    busy: Option<String>,
    sample: u32,
    lessons: Vec<protocol::lab::LessonSummary>,
    teaching: Option<protocol::teaching::Teaching>,
}

impl World {
    /// An empty picture of run `run`.
    pub fn new(run: &str, checker: CheckerConfig, now_us: i64) -> World {
        World {
            run: run.to_owned(),
            started_us: now_us,
            counter: 1,
            checker: Checker::new(checker),
            setup: Setup::default(),
            slots: Vec::new(),
            registry: None,
            registry_error: None,
            rates: HashMap::new(),
            users: Vec::new(),
            user_ids: HashMap::new(),
            devices: Vec::new(),
            device_index: HashMap::new(),
            devices_version: 1,
            conv_direct: HashMap::new(),
            sends: HashMap::new(),
            sends_order: VecDeque::new(),
            messages: HashMap::new(),
            message_order: VecDeque::new(),
            assignments: VecDeque::new(),
            log: VecDeque::new(),
            online: HashMap::new(),
            notices: Vec::new(),
            pending_notices: HashMap::new(),
            series: VecDeque::new(),
            last_second: (now_us, 0, 0),
            traffic: TrafficView::default(),
            narration: None,
            narration_version: 0,
            busy: None,
            sample: 1,
            lessons: Vec::new(),
            teaching: None,
        }
    }

    /// Starts a new run: forgets everything observed, keeps the log and the narration.
    pub fn new_run(&mut self, run: &str, now_us: i64) {
        let mut fresh = World::new(run, self.checker_config(), now_us);
        fresh.log = std::mem::take(&mut self.log);
        fresh.counter = self.counter + 1;
        fresh.narration = self.narration.take();
        fresh.narration_version = self.narration_version + 1;
        fresh.lessons = std::mem::take(&mut self.lessons);
        fresh.sample = self.sample;
        *self = fresh;
    }

    fn checker_config(&self) -> CheckerConfig {
        CheckerConfig {
            stale_after: self.checker.stale_after(),
            ..CheckerConfig::default()
        }
    }

    /// The run's name.
    pub fn run(&self) -> &str {
        &self.run
    }

    /// The checker.
    pub fn checker(&self) -> &Checker {
        &self.checker
    }

    /// The checker, to settle or reset it.
    pub fn checker_mut(&mut self) -> &mut Checker {
        &mut self.checker
    }

    /// Sets what the control decides about the cluster.
    pub fn set_setup(&mut self, setup: Setup) {
        self.setup = setup;
    }

    /// The supervisor's slots, after any change.
    pub fn set_slots(&mut self, slots: Vec<NodeInfo>) {
        self.slots = slots;
    }

    /// The slots as last set.
    pub fn slots(&self) -> &[NodeInfo] {
        &self.slots
    }

    /// The traffic's settings (the live figures are the world's own).
    pub fn set_traffic(&mut self, traffic: TrafficView) {
        self.traffic = traffic;
    }

    /// What a lesson says now.
    pub fn set_narration(&mut self, narration: Option<Narration>) {
        self.narration = narration;
        self.narration_version += 1;
    }

    /// The teaching mode the cluster is in now (every panel says so).
    pub fn set_teaching(&mut self, teaching: Option<protocol::teaching::Teaching>) {
        self.teaching = teaching;
    }

    /// The operation under way.
    pub fn set_busy(&mut self, busy: Option<String>) {
        self.busy = busy;
    }

    /// A lesson's summary, for the report.
    pub fn add_lesson(&mut self, summary: protocol::lab::LessonSummary) {
        self.lessons.push(summary);
    }

    /// The sampling the nodes were asked for (one message in `n`).
    pub fn set_sample(&mut self, n: u32) {
        self.sample = n.max(1);
    }

    /// The sampling that would show about `per_sec` messages a second at the current rate.
    pub fn wanted_sample(&self, per_sec: f64) -> u32 {
        let rate: f64 = self.rates.values().map(|r| r.persisted_per_sec).sum();
        let wanted = (rate / per_sec.max(0.1)).ceil();
        if wanted.is_finite() && wanted >= 1.0 {
            (wanted as u32).min(100_000)
        } else {
            1
        }
    }

    /// A line in the lab's log.
    pub fn log(&mut self, level: Level, text: impl Into<String>, now_us: i64) {
        self.counter += 1;
        self.log.push_back((
            self.counter,
            LogEntry {
                at_us: now_us,
                level,
                text: text.into(),
            },
        ));
        while self.log.len() > LOG_KEPT {
            self.log.pop_front();
        }
    }

    /// Where the log is now: pass it to [`World::log_since`] later.
    pub fn log_counter(&self) -> u64 {
        self.counter
    }

    /// Log lines written after `after` (a [`World::log_counter`]), and the counter now.
    pub fn log_since(&self, after: u64) -> (Vec<LogEntry>, u64) {
        let lines = self
            .log
            .iter()
            .filter(|(c, _)| *c > after)
            .map(|(_, l)| l.clone())
            .collect();
        (lines, self.counter)
    }

    /// The lab did something to node `id` that the registry should notice.
    pub fn expect_notice(&mut self, id: &str, slot: &str, cause: &str, now_us: i64) {
        self.pending_notices
            .insert(id.to_owned(), self.notices.len());
        self.notices.push(Notice {
            node: slot.to_owned(),
            cause: cause.to_owned(),
            at_us: now_us,
            noticed_after_ms: None,
        });
    }

    /// The registry's answer (or why there was none).
    pub fn registry(&mut self, answer: Result<NodesResponse, String>, now_us: i64) {
        match answer {
            Ok(r) => {
                let listed: HashSet<&str> = r.nodes.iter().map(|n| n.id.as_str()).collect();
                let noticed: Vec<String> = self
                    .pending_notices
                    .keys()
                    .filter(|id| !listed.contains(id.as_str()))
                    .cloned()
                    .collect();
                for id in noticed {
                    if let Some(i) = self.pending_notices.remove(&id)
                        && let Some(n) = self.notices.get_mut(i)
                    {
                        let ms = ((now_us - n.at_us).max(0) / 1000) as u64;
                        n.noticed_after_ms = Some(ms);
                        let text = format!(
                            "the registry dropped {} ({}) {} ms after the {}",
                            n.node, id, ms, n.cause
                        );
                        self.log(Level::Ok, text, now_us);
                    }
                }
                // A node the registry no longer lists announces nobody.
                for nodes in self.online.values_mut() {
                    nodes.retain(|n| listed.contains(n.as_str()));
                }
                self.online.retain(|_, nodes| !nodes.is_empty());
                self.registry = Some(r);
                self.registry_error = None;
            }
            Err(e) => self.registry_error = Some(e),
        }
    }

    /// A node's counters, read at `now_us`.
    pub fn counters(&mut self, node: &str, c: NodeCounters, now_us: i64) {
        let r = self.rates.entry(node.to_owned()).or_default();
        if let Some((at, last)) = r.last {
            let dt = (now_us - at) as f64 / 1e6;
            if dt > 0.05 {
                let d = |a: f64, b: f64| ((a - b).max(0.0)) / dt;
                r.in_per_sec = d(
                    c.persisted + c.bus_received,
                    last.persisted + last.bus_received,
                );
                r.out_per_sec = d(
                    c.deliveries + c.bus_published,
                    last.deliveries + last.bus_published,
                );
                r.persisted_per_sec = d(c.persisted, last.persisted);
            }
        }
        r.last = Some((now_us, c));
    }

    /// The slot name of node id `id` (`n2` for `n2-r1`).
    fn slot_of(&self, id: &str) -> String {
        self.slots
            .iter()
            .find(|s| s.id.as_str() == id)
            .map(|s| s.name.clone())
            .unwrap_or_else(|| id.split("-r").next().unwrap_or(id).to_owned())
    }

    /// What a virtual device did or saw.
    pub fn observe(&mut self, obs: Observation) {
        match obs {
            Observation::Device {
                device,
                user_index,
                user,
                user_id,
                at_us,
            } => {
                let i = user_index as usize;
                if self.users.len() <= i {
                    self.users.resize(i + 1, String::new());
                }
                self.users[i] = user.clone();
                self.user_ids.insert(user_id, user.clone());
                self.checker.add_device(device.clone(), &user, at_us);
                self.device_index.insert(device.clone(), self.devices.len());
                self.devices.push(DeviceRec {
                    id: device,
                    user: user_index,
                    node: None,
                    state: DeviceState::Connecting,
                });
                self.devices_version += 1;
            }
            Observation::Joined {
                conv,
                direct,
                device,
            } => {
                self.conv_direct.insert(conv, direct);
                self.checker.join(conv, device);
            }
            Observation::Status {
                device,
                state,
                node,
                at_us,
            } => {
                let slot = node.as_ref().map(|n| self.slot_of(n.as_str()));
                self.checker
                    .status(&device, slot.as_deref(), state == DeviceState::Live, at_us);
                if let Some(&i) = self.device_index.get(&device)
                    && let Some(d) = self.devices.get_mut(i)
                {
                    d.state = state;
                    if slot.is_some() || state != DeviceState::Reconnecting {
                        d.node = slot;
                    }
                    self.devices_version += 1;
                }
            }
            Observation::Sent {
                device,
                conv,
                client_id,
                at_us,
            } => {
                self.checker.sent(&device, conv, client_id.clone(), at_us);
                self.sends.insert(client_id.clone(), (device, at_us));
                self.sends_order.push_back(client_id);
                while self.sends_order.len() > SENDS_KEPT {
                    if let Some(old) = self.sends_order.pop_front() {
                        self.sends.remove(&old);
                    }
                }
            }
            Observation::Acked { device, ack, at_us } => {
                self.checker.acked(&ack, at_us);
                if protocol::trace::sampled(ack.id, self.sample) {
                    let sent = self.sends.get(&ack.client_id).map(|(_, at)| *at);
                    let node = self.device_node(&device);
                    let msg = self.message(ack.id, ack.conv, ack.seq);
                    if let Some(at) = sent {
                        push_step(
                            msg,
                            Step {
                                at_us: at,
                                what: StepKind::Sent,
                                node: node.clone(),
                                device: Some(device.clone()),
                                peers: Vec::new(),
                            },
                        );
                    }
                    push_step(
                        msg,
                        Step {
                            at_us,
                            what: StepKind::AckSeen,
                            node,
                            device: Some(device),
                            peers: Vec::new(),
                        },
                    );
                    self.touch(ack.id);
                }
            }
            Observation::Refused { client_id, .. } => self.checker.refused(&client_id),
            Observation::Shown {
                device,
                event,
                at_us,
            } => {
                self.checker.shown(&device, &event, at_us);
                if protocol::trace::sampled(event.id, self.sample) && event.client_id.is_some() {
                    let node = self.device_node(&device);
                    let msg = self.message(event.id, event.conv, event.seq);
                    push_step(
                        msg,
                        Step {
                            at_us,
                            what: StepKind::Shown,
                            node,
                            device: Some(device),
                            peers: Vec::new(),
                        },
                    );
                    self.touch(event.id);
                }
            }
            Observation::Gone { device } => {
                if self.device_index.remove(&device).is_some() {
                    self.devices.retain(|d| d.id != device);
                    self.device_index = self
                        .devices
                        .iter()
                        .enumerate()
                        .map(|(i, d)| (d.id.clone(), i))
                        .collect();
                    self.devices_version += 1;
                }
            }
        }
    }

    fn device_node(&self, device: &DeviceId) -> Option<String> {
        self.device_index
            .get(device)
            .and_then(|&i| self.devices.get(i))
            .and_then(|d| d.node.clone())
    }

    /// The sampled message `id`, made if new.
    fn message(&mut self, id: MessageId, conv: ConvId, seq: u64) -> &mut MessageView {
        if !self.messages.contains_key(&id) {
            self.message_order.push_back(id);
            while self.message_order.len() > MESSAGES_KEPT {
                if let Some(old) = self.message_order.pop_front() {
                    self.messages.remove(&old);
                }
            }
        }
        let kind = match self.conv_direct.get(&conv) {
            Some(true) => "dm",
            Some(false) => "room",
            None => "",
        };
        &mut self
            .messages
            .entry(id)
            .or_insert_with(|| Tracked {
                view: MessageView {
                    id,
                    conv,
                    seq,
                    kind: kind.to_owned(),
                    origin: None,
                    steps: Vec::new(),
                },
                changed: 0,
            })
            .view
    }

    fn touch(&mut self, id: MessageId) {
        self.counter += 1;
        if let Some(t) = self.messages.get_mut(&id) {
            t.changed = self.counter;
        }
    }

    /// An event from a process's trace stream (`slot` is its slot name, or `controller`).
    pub fn trace(&mut self, slot: &str, ev: TraceEvent) {
        match ev.what {
            Trace::Hop {
                hop,
                id,
                conv,
                seq,
                device,
                peers,
                ..
            } => {
                self.checker.hop(hop, id, ev.at_us);
                let peers: Vec<String> = peers.iter().map(|p| self.slot_of(p.as_str())).collect();
                let msg = self.message(id, conv, seq);
                if hop == Hop::Persisted {
                    msg.origin = Some(slot.to_owned());
                }
                push_step(
                    msg,
                    Step {
                        at_us: ev.at_us,
                        what: step_kind(hop),
                        node: Some(slot.to_owned()),
                        device,
                        peers,
                    },
                );
                self.touch(id);
            }
            Trace::Conn { change, user, .. } => {
                let node = ev.node.to_string();
                match change {
                    ConnChange::Online => {
                        self.online.entry(user).or_default().insert(node);
                    }
                    ConnChange::Offline => {
                        if let Some(nodes) = self.online.get_mut(&user) {
                            nodes.remove(&node);
                            if nodes.is_empty() {
                                self.online.remove(&user);
                            }
                        }
                    }
                    _ => {}
                }
            }
            Trace::Node { change } => {
                use protocol::trace::NodeChange;
                let (level, what) = match change {
                    NodeChange::Started => (Level::Ok, "started and registered"),
                    NodeChange::Draining => (Level::Warn, "draining: telling its devices to move"),
                    NodeChange::BusDown => (Level::Bad, "lost its bus connection"),
                    NodeChange::BusUp => (
                        Level::Ok,
                        "has its bus back: its devices catch up from the store",
                    ),
                };
                self.log(level, format!("{slot} ({}) {what}", ev.node), ev.at_us);
            }
            Trace::Assigned {
                chosen,
                others,
                excluded,
            } => {
                self.counter += 1;
                self.assignments.push_back((
                    self.counter,
                    AssignmentView {
                        at_us: ev.at_us,
                        chosen,
                        others,
                        excluded,
                    },
                ));
                while self.assignments.len() > ASSIGNMENTS_KEPT {
                    self.assignments.pop_front();
                }
            }
        }
    }

    /// Time passes: stale deliveries, the per-second series.
    pub fn tick(&mut self, now_us: i64) {
        self.checker.tick(now_us);
        let (at, sent, delivered) = self.last_second;
        if now_us - at >= 1_000_000 {
            let view = self.checker.view();
            let dt = (now_us - at) as f64 / 1e6;
            // A checker reset starts its counts again from zero.
            let (sent, delivered) = if view.sent < sent || view.delivered < delivered {
                (0, 0)
            } else {
                (sent, delivered)
            };
            self.traffic.sent_per_sec = (view.sent - sent) as f64 / dt;
            self.series.push_back(SeriesPoint {
                at_us: now_us,
                sent: view.sent - sent,
                delivered: view.delivered - delivered,
                nodes: self.live_nodes() as u32,
                live_devices: self.live_devices(),
                verdict: view.verdict,
            });
            while self.series.len() > SERIES_KEPT {
                self.series.pop_front();
            }
            self.last_second = (now_us, view.sent, view.delivered);
        }
    }
}

fn step_kind(hop: Hop) -> StepKind {
    match hop {
        Hop::Persisted => StepKind::Persisted,
        Hop::Acked => StepKind::Acked,
        Hop::Published => StepKind::Published,
        Hop::Received => StepKind::Received,
        Hop::Returned => StepKind::Returned,
        Hop::Delivered => StepKind::Delivered,
        Hop::GapFilled => StepKind::GapFilled,
        Hop::Replayed => StepKind::Replayed,
        Hop::Recovered => StepKind::Recovered,
    }
}

/// Adds a step, keeping steps in time order (they arrive from several streams).
fn push_step(msg: &mut MessageView, step: Step) {
    let at = msg.steps.partition_point(|s| s.at_us <= step.at_us);
    msg.steps.insert(at, step);
}

#[cfg(test)]
mod tests;
