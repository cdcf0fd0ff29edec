//! The lab panel's wire: what the lab server (`lab up`) streams to its panel, what the panel
//! asks of it, and the line `lab up` prints once both serve.
//!
//! - `GET /api/stream` (WebSocket): one [`Update`] per text message, a few times a second. The
//!   first one of a connection, and the first after the lab started a new run, is `full`: it
//!   replaces everything the panel holds. The others carry the cluster, the checker and the
//!   traffic as they are now, plus what is new since the last one (sampled messages,
//!   assignments, log lines) and the devices only when one of them changed.
//! - `POST /api/op` with an [`Op`]: answered with an [`OpResult`] once the operation is done.
//! - `GET /api/report.json` ([`Report`]) and `GET /api/report.html`: the run so far.
//!
//! Times are microseconds since the Unix epoch on the lab's clock, which the nodes on the same
//! machine share, so that a message's steps on devices and nodes line up on one timeline.

use serde::{Deserialize, Serialize};

use crate::trace::NodeLoad;
use crate::{ConvId, DeviceId, MessageId, NodeId, Seq};

/// What `lab up` prints on a line of its own once the cluster and the panel serve, after the
/// controller's URL and the panel's: `LAB_READY {"controller":…,"panel":…,"pid":…}`. A program
/// that runs the lab as a sidecar reads this line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabReady {
    /// The controller's HTTP base.
    pub controller: String,
    /// The panel's URL (open it in a browser or a webview).
    pub panel: String,
    /// The lab's pid.
    pub pid: u32,
}

impl LabReady {
    /// What comes before the JSON on the ready line.
    pub const PREFIX: &'static str = "LAB_READY ";

    /// The whole ready line.
    pub fn line(&self) -> String {
        format!(
            "{}{}",
            Self::PREFIX,
            serde_json::to_string(self).unwrap_or_default()
        )
    }

    /// Reads a ready line; `None` for any other line.
    pub fn parse(line: &str) -> Option<LabReady> {
        serde_json::from_str(line.strip_prefix(Self::PREFIX)?).ok()
    }
}

/// One frame of the panel's stream.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Update {
    /// When the lab built it.
    pub now_us: i64,
    /// Changes when the lab starts a new run (another backend set): the panel starts over.
    pub run: String,
    /// This frame replaces everything the panel holds.
    pub full: bool,
    /// The cluster now.
    pub cluster: ClusterView,
    /// Every virtual device, when any changed (always in a full frame).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<DevicesView>,
    /// Sampled messages that are new or got new steps since the last frame.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<MessageView>,
    /// Least-loaded answers since the last frame.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub assignments: Vec<AssignmentView>,
    /// Log lines since the last frame.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log: Vec<LogEntry>,
    /// The checker now.
    pub checker: CheckerView,
    /// The virtual users' traffic now.
    pub traffic: TrafficView,
    /// Presence and the registry's view.
    pub presence: PresenceView,
    /// What a lesson says now, when one runs (sent in full frames and when it changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub narration: Option<Narration>,
    /// The operation the lab is carrying out, if any ("restarting n2…").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy: Option<String>,
    /// Messages the lab traced but did not send to this panel because it was busy
    /// drawing (it gets the newest ones; the checker counts every message either way).
    #[serde(default)]
    pub skipped_messages: u64,
}

/// The cluster: controller, backends, nodes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    /// The controller's HTTP base.
    pub controller: String,
    /// The backends this run uses.
    pub backends: BackendsView,
    /// Backend sets the lab can restart the cluster on (the services that answered).
    pub choices: Vec<BackendChoice>,
    /// Node lease, in milliseconds.
    pub lease_ms: u64,
    /// Every node slot, in slot order.
    pub nodes: Vec<NodeView>,
    /// Why the registry could not be read, when it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_error: Option<String>,
    /// Whether a node's bus connection can be cut (the lab put a proxy in front of it).
    pub cuttable: bool,
    /// The teaching mode on, if any: the panel says "teaching mode: <what is broken>".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teaching: Option<crate::teaching::Teaching>,
}

/// Which backends a run uses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendsView {
    /// `embedded` or `redis`.
    pub registry: String,
    /// `embedded`, `redis`, `amqp`, …
    pub bus: String,
    /// `routed` or `fanout`.
    pub routing: String,
    /// `sqlite` or `postgres`.
    pub store: String,
}

/// A backend set the cluster can be restarted on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendChoice {
    /// A short name (`embedded`, `redis`, `rabbitmq`).
    pub name: String,
    /// What it is, for people ("RabbitMQ bus, Redis registry, PostgreSQL store").
    pub label: String,
    /// Whether its services answered when the lab last looked.
    pub available: bool,
    /// Why not, when they did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
}

/// One node slot as the lab sees it: its process, the registry's entry, the lab's faults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    /// The slot's name (`n2`); stays across restarts.
    pub slot: String,
    /// The id of the slot's latest process (`n2-r1` after a restart).
    pub id: String,
    /// Its pid.
    pub pid: u32,
    /// What a class should see.
    pub state: NodeState,
    /// Whether the lab cut its bus connection.
    pub bus_cut: bool,
    /// Whether the registry lists it.
    pub registered: bool,
    /// Devices connected, as the registry counts them.
    pub connections: u64,
    /// Slots handed out and not yet used.
    pub reserved: u64,
    /// Time left on its lease, from its last heartbeat (milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_left_ms: Option<i64>,
    /// Messages per second it took in: from its devices (persisted) plus from the bus.
    pub in_per_sec: f64,
    /// Messages per second it sent out: to its devices plus to the bus.
    pub out_per_sec: f64,
    /// Virtual devices the lab sees connected to it.
    pub devices: u32,
}

/// A node's state, as drawn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Its process runs but the registry does not list it yet.
    #[default]
    Starting,
    /// Listed and serving.
    Live,
    /// Moving its devices away before it exits.
    Draining,
    /// Stopped with SIGSTOP.
    Frozen,
    /// Its process is gone (killed, or crashed).
    Dead,
    /// Stopped gracefully (SIGTERM) and exited.
    Stopped,
}

/// Every virtual device: who, where, how.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DevicesView {
    /// User names, indexed by [`DeviceDot::user`].
    pub users: Vec<String>,
    /// One entry per device.
    pub devices: Vec<DeviceDot>,
}

/// One device, compact (there may be thousands): `[user, node, state, id]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceDot(
    /// Its user (index into [`DevicesView::users`]): the dot's colour.
    pub u32,
    /// The node slot it is connected to (`n2`), if any.
    pub Option<String>,
    /// How it is.
    pub DeviceState,
    /// Its device id.
    pub DeviceId,
);

/// A virtual device's connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    /// Asking for a node, opening a socket.
    #[default]
    Connecting,
    /// Connected; catching up.
    Resyncing,
    /// Caught up.
    Live,
    /// Lost its node; waiting to try again.
    Reconnecting,
    /// Stopped for good.
    Stopped,
}

/// One sampled message: every step seen so far, on devices and nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MessageView {
    /// Its id.
    pub id: MessageId,
    /// Its conversation.
    pub conv: ConvId,
    /// Its position there.
    pub seq: Seq,
    /// `dm` or `room`, when the sender is a virtual user.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// The node that accepted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// Every step, in time order.
    pub steps: Vec<Step>,
}

/// One step of a message, on a node or a device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// When.
    pub at_us: i64,
    /// What happened.
    pub what: StepKind,
    /// The node slot where it happened (or that delivered to the device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The device concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceId>,
    /// Node slots at the other end: targets of a publish, origin of a receive.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
}

/// Steps: a node's hops (as traced) and what the virtual devices saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// The sending device handed it to its client core.
    Sent,
    /// Committed to the store with its `seq` (on the node that accepted it).
    Persisted,
    /// The node acknowledged it to the sending device.
    Acked,
    /// Handed to the bus.
    Published,
    /// Arrived from the bus.
    Received,
    /// The bus brought the sender's node its own envelope back (fanout).
    Returned,
    /// Written to a device's queue on a node.
    Delivered,
    /// Read from the store to fill a gap in a device's sequence.
    GapFilled,
    /// Replayed from the store when a device (re)connected.
    Replayed,
    /// Published again after its node died.
    Recovered,
    /// The sending device got the acknowledgement.
    AckSeen,
    /// A device showed it to its user.
    Shown,
}

/// One least-loaded answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentView {
    /// When the controller answered.
    pub at_us: i64,
    /// The node chosen, with its load (the new reservation included).
    pub chosen: NodeLoad,
    /// The other nodes it was chosen over, least loaded first.
    pub others: Vec<NodeLoad>,
    /// Nodes the client asked to leave out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<NodeId>,
}

/// A line of the lab's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// When.
    pub at_us: i64,
    /// How it should look.
    pub level: Level,
    /// What happened, for people.
    pub text: String,
}

/// How a log line or a verdict looks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// All is well.
    #[default]
    Ok,
    /// Worth a look: late, degraded, in progress.
    Warn,
    /// A guarantee broke.
    Bad,
}

/// The checker: what every virtual device got of what was acknowledged.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckerView {
    /// Green, amber (late deliveries), red (a guarantee broke).
    pub verdict: Level,
    /// One sentence: "All 1234 acknowledged messages reached all 20 devices, in order,
    /// once." or the first broken guarantee with its message, device and node.
    pub headline: String,
    /// Sends handed to the client cores.
    pub sent: u64,
    /// Sends acknowledged by a node.
    pub acked: u64,
    /// Sends refused for good.
    pub refused: u64,
    /// Deliveries expected so far (each acknowledged message × each device that must get it).
    pub expected: u64,
    /// Of those, delivered.
    pub delivered: u64,
    /// Expected, not delivered yet, and younger than the stale bound.
    pub pending: u64,
    /// Expected and not delivered after the stale bound.
    pub stale: u64,
    /// Expected and not delivered once the run settled: lost.
    pub lost: u64,
    /// A device got the same message twice.
    pub duplicates: u64,
    /// A device got a conversation's events out of `seq` order, or skipped one.
    pub out_of_order: u64,
    /// The stale bound, in milliseconds.
    pub stale_after_ms: u64,
    /// The broken guarantees (the first ones; the counts above have them all).
    pub violations: Vec<Violation>,
    /// Devices × conversations with anything not green, worst first (the first ones).
    pub rows: Vec<CheckRow>,
    /// Send → shown on another device.
    pub latency: Histogram,
    /// Bus envelopes per message, over the last sampled messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msgs_per_op: Option<f64>,
    /// How many sampled messages that figure is over.
    pub ops_sampled: u64,
    /// A device's reconnection: from losing its node to live on another.
    pub failover: Histogram,
    /// The last failovers.
    pub failovers: Vec<Failover>,
}

/// A broken guarantee, with what a class needs to find it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// Which guarantee.
    pub kind: ViolationKind,
    /// The message, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<MessageId>,
    /// Its conversation.
    pub conv: ConvId,
    /// Its `seq`, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<Seq>,
    /// The device that suffered.
    pub device: DeviceId,
    /// Its user's name.
    pub user: String,
    /// The node slot the device was on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// When it was found.
    pub at_us: i64,
    /// The sentence shown.
    pub text: String,
}

/// Which guarantee broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    /// Acknowledged, never delivered to a device that must get it.
    Lost,
    /// Delivered twice to one device.
    Duplicate,
    /// Delivered out of `seq` order, or with a `seq` skipped.
    OutOfOrder,
}

/// One device in one conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRow {
    /// The device.
    pub device: DeviceId,
    /// Its user.
    pub user: String,
    /// The conversation.
    pub conv: ConvId,
    /// Whether this device sent anything there (the sender's other devices are checked too).
    pub sender: bool,
    /// Delivered of expected.
    pub delivered: u64,
    /// Expected.
    pub expected: u64,
    /// Late.
    pub stale: u64,
    /// Lost.
    pub lost: u64,
    /// Twice.
    pub duplicates: u64,
    /// Out of order.
    pub out_of_order: u64,
    /// The worst of the above.
    pub level: Level,
}

/// A distribution in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// How many values.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// Counts per bucket: `[upper bound in ms, count]`, bounds rising.
    pub buckets: Vec<(f64, u64)>,
}

/// One device's move after losing its node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failover {
    /// The device.
    pub device: DeviceId,
    /// The node slot it lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The node slot it is live on now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// When it lost its node.
    pub at_us: i64,
    /// How long until it was live again.
    pub ms: u64,
}

/// The virtual users' traffic.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrafficView {
    /// Users.
    pub users: u32,
    /// Devices per user.
    pub devices_per_user: u32,
    /// Devices in all (extra burst logins included).
    pub devices: u32,
    /// Devices live now.
    pub live: u32,
    /// Messages per second asked for, all devices together.
    pub rate: f64,
    /// Messages per second sent over the last second.
    pub sent_per_sec: f64,
    /// Share of messages sent in rooms rather than direct conversations (0 to 1).
    pub room_share: f64,
    /// Direct conversations and rooms.
    pub conversations: u32,
    /// Whether the users are being created or logged in.
    pub starting: bool,
}

/// Presence and the registry's view.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PresenceView {
    /// Users with at least one device online, as the nodes announced them.
    pub online: u32,
    /// Users in all.
    pub users: u32,
    /// User names online (the first ones).
    pub online_names: Vec<String>,
    /// How long the registry took to notice nodes that went away.
    pub notices: Vec<Notice>,
}

/// A node that went away and when the registry noticed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// The node.
    pub node: String,
    /// What the lab did to it (`kill`, `freeze`, `stop`, `cut`).
    pub cause: String,
    /// When.
    pub at_us: i64,
    /// When the registry stopped listing it (none yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noticed_after_ms: Option<u64>,
}

/// What a running lesson says.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Narration {
    /// The lesson's title.
    pub title: String,
    /// Its steps' titles.
    pub steps: Vec<String>,
    /// The current step (index into `steps`).
    pub current: usize,
    /// What to look at now, what just happened, why.
    pub text: String,
}

/// An operation the panel (or a script) asks the lab for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// SIGKILL a node (a crash).
    Kill {
        /// Slot name, node id or slot number.
        node: String,
    },
    /// SIGTERM a node: it drains and exits.
    Stop {
        /// Slot name, node id or slot number.
        node: String,
    },
    /// SIGSTOP a node (a hung process).
    Freeze {
        /// Slot name, node id or slot number.
        node: String,
    },
    /// SIGCONT a frozen node.
    Thaw {
        /// Slot name, node id or slot number.
        node: String,
    },
    /// Start a fresh process in a node's slot.
    Restart {
        /// Slot name, node id or slot number.
        node: String,
    },
    /// Cut a node's connection to its bus (the node stays up).
    CutBus {
        /// Slot name, node id or slot number.
        node: String,
    },
    /// Give a node its bus connection back.
    RestoreBus {
        /// Slot name, node id or slot number.
        node: String,
    },
    /// Start one more node.
    AddNode,
    /// Routed or fanout: every node is restarted in turn with it.
    SetRouting {
        /// `routed` or `fanout`.
        routing: String,
    },
    /// Restart the whole cluster on another backend set (see [`ClusterView::choices`]).
    SetBackends {
        /// A [`BackendChoice::name`].
        name: String,
    },
    /// Start (or replace) the virtual users.
    Users {
        /// Users.
        users: u32,
        /// Devices per user.
        devices_per_user: u32,
    },
    /// Set the traffic: messages per second in all, and the share sent in rooms.
    Rate {
        /// Messages per second, all devices together.
        per_sec: f64,
        /// Share of rooms (0 to 1); unchanged when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room_share: Option<f64>,
    },
    /// Log this many extra devices in at once and show where they were sent.
    Burst {
        /// How many.
        logins: u32,
    },
    /// Log the burst's devices out again.
    EndBurst,
    /// Judge now: every message still undelivered past the stale bound counts as lost.
    Settle,
    /// Forget what the checker saw so far and start counting again.
    ResetChecker,
    /// Turn a teaching mode on (or, with `mode: null`, teaching off) in a cluster the lab
    /// started with `--teaching`.
    Teach {
        /// The mode, or none.
        mode: Option<crate::teaching::Teaching>,
    },
    /// Hold everything through a node's bus connection this long, both ways (0: no delay):
    /// one uneven path, so that events of one conversation can arrive out of order.
    DelayBus {
        /// Slot name, node id or slot number.
        node: String,
        /// Milliseconds.
        ms: u64,
    },
}

/// The answer to an [`Op`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpResult {
    /// Whether it was done.
    pub ok: bool,
    /// What happened, for people.
    pub message: String,
}

/// A run, exported: `GET /api/report.json`, and the data of the HTML report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The run.
    pub run: String,
    /// When it started.
    pub started_us: i64,
    /// When this report was made.
    pub made_us: i64,
    /// The cluster at the end.
    pub cluster: ClusterView,
    /// The checker at the end.
    pub checker: CheckerView,
    /// The traffic at the end.
    pub traffic: TrafficView,
    /// Presence and the registry's notices.
    pub presence: PresenceView,
    /// Per second: what was sent and delivered, and each node's rates.
    pub series: Vec<SeriesPoint>,
    /// The log.
    pub log: Vec<LogEntry>,
    /// The last sampled messages with their steps.
    pub messages: Vec<MessageView>,
    /// The last least-loaded answers.
    pub assignments: Vec<AssignmentView>,
    /// What lessons recorded (their summaries).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lessons: Vec<LessonSummary>,
}

/// One second of a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SeriesPoint {
    /// When the second ended.
    pub at_us: i64,
    /// Sends in that second.
    pub sent: u64,
    /// Deliveries to devices in that second.
    pub delivered: u64,
    /// Live nodes.
    pub nodes: u32,
    /// Live devices.
    pub live_devices: u32,
    /// The verdict at the end of the second.
    pub verdict: Level,
}

/// A lesson's one-screen summary, kept in the run's report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LessonSummary {
    /// The lesson.
    pub name: String,
    /// Whether it showed what it had to (the mistake red, the fix green).
    pub passed: bool,
    /// Figures and verdicts, one line each.
    pub lines: Vec<String>,
}

/// A lesson the lab can run (`GET /api/lessons`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LessonInfo {
    /// Short kebab-case name (`pubsub-forgets`).
    pub name: String,
    /// Its title.
    pub title: String,
    /// The article it comes from.
    pub article: String,
    /// What the class sees, in one line.
    pub about: String,
    /// Its steps' titles.
    pub steps: Vec<String>,
}

/// `POST /api/lesson`: start a lesson on the panel's lab (its cluster must have been started
/// with `--teaching`); answered with an [`OpResult`] once it has started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LessonStart {
    /// The lesson.
    pub name: String,
    /// Each step waits for `POST /api/lesson/next` (else the steps follow each other).
    #[serde(default)]
    pub teacher: bool,
}

/// `GET /api/lesson`: the lesson running or last run on this lab.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LessonStatus {
    /// The lesson, if one was started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Whether it still runs.
    pub running: bool,
    /// Whether it waits for the teacher's "next".
    pub waiting: bool,
    /// Its summary, once it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<LessonSummary>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_round_trips() {
        let ready = LabReady {
            controller: "http://127.0.0.1:4000".into(),
            panel: "http://127.0.0.1:4001/".into(),
            pid: 7,
        };
        let line = ready.line();
        assert!(line.starts_with("LAB_READY {"), "{line}");
        assert_eq!(LabReady::parse(&line), Some(ready));
        assert_eq!(LabReady::parse("http://127.0.0.1:4000"), None);
    }

    #[test]
    fn ops_are_tagged() {
        let op: Op = serde_json::from_str(r#"{"op":"cut_bus","node":"n2"}"#).expect("op");
        assert_eq!(op, Op::CutBus { node: "n2".into() });
        let op: Op = serde_json::from_str(r#"{"op":"rate","per_sec":50}"#).expect("op");
        assert_eq!(
            op,
            Op::Rate {
                per_sec: 50.0,
                room_share: None
            }
        );
    }

    #[test]
    fn a_device_is_a_short_array() -> Result<(), crate::ids::IdError> {
        let dot = DeviceDot(
            3,
            Some("n2".into()),
            DeviceState::Live,
            DeviceId::new("d7")?,
        );
        assert_eq!(
            serde_json::to_string(&dot).ok().as_deref(),
            Some(r#"[3,"n2","live","d7"]"#)
        );
        Ok(())
    }
}
