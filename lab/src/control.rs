//! A running lab: the cluster (owned by one task that carries out [`Op`]s one at a time), its
//! virtual users, the observer of its trace streams, the pollers of its registry and counters,
//! and the [`World`] they all feed. [`Lab`] is the handle: the panel's server, the `lab up`
//! console, lessons and tests drive the same operations through it, headless or not.
//!
//! ```no_run
//! # async fn demo() -> Result<(), lab::LabError> {
//! use protocol::lab::Op;
//! let mut config = lab::control::LabConfig::new(lab::ClusterConfig::new(3));
//! config.users = Some(lab::users::UsersConfig::new(10, 2));
//! let lab = lab::control::Lab::start(config).await?;
//! lab.op(Op::Rate { per_sec: 20.0, room_share: None }).await;
//! lab.op(Op::Kill { node: "n2".into() }).await;
//! let verdict = lab.settle(std::time::Duration::from_secs(20)).await;
//! println!("{}", verdict.headline);
//! lab.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! Invariants: operations never overlap (one task owns the cluster); the world's lock is
//! never held across an `.await`; traces are only subscribed to while somebody watches
//! ([`Lab::watch`]), virtual users run, or the configuration asks to always observe.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use protocol::lab::{CheckerView, Level, Narration, Op, OpResult, Report, TrafficView, Update};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::checker::CheckerConfig;
use crate::cluster::resolve_target;
use crate::observe::{Observer, Target};
use crate::status::human;
use crate::users::{Observation, Traffic, UsersConfig, VirtualUsers};
use crate::world::{Cursor, NodeCounters, Setup, World};
use crate::{Cluster, ClusterConfig, LabError, NodeInfo, ProcessState, Routing, now_us, stacks};

/// How to start a lab.
#[derive(Clone, Debug)]
pub struct LabConfig {
    /// The cluster.
    pub cluster: ClusterConfig,
    /// Virtual users to start with the cluster.
    pub users: Option<UsersConfig>,
    /// Their traffic.
    pub traffic: Traffic,
    /// How the checker judges.
    pub checker: CheckerConfig,
    /// Sampled messages per second to draw: the nodes' sampling follows the traffic so that
    /// about this many are traced, whatever the rate.
    pub drawn_per_sec: f64,
    /// Subscribe to the traces even when nobody watches (measurements, headless lessons).
    pub always_observe: bool,
    /// Never subscribe to the traces, whoever watches: the baseline against which the cost of
    /// observing is measured (the panel then draws no message path).
    pub never_observe: bool,
}

impl LabConfig {
    /// A lab over this cluster, without virtual users.
    pub fn new(cluster: ClusterConfig) -> LabConfig {
        LabConfig {
            cluster,
            users: None,
            traffic: Traffic::default(),
            checker: CheckerConfig::default(),
            drawn_per_sec: 6.0,
            always_observe: false,
            never_observe: false,
        }
    }
}

type Job = (Op, oneshot::Sender<OpResult>);

struct Inner {
    world: Mutex<World>,
    ops: mpsc::Sender<Job>,
    stop: mpsc::Sender<oneshot::Sender<Result<bool, LabError>>>,
    /// Fired to kill whatever is left at once (a second Ctrl-C).
    kill: CancellationToken,
    /// Stops the background tasks.
    cancel: CancellationToken,
    tasks: TaskTracker,
    watchers: AtomicUsize,
    slots: watch::Receiver<Vec<NodeInfo>>,
    controller: watch::Receiver<String>,
    /// The cluster's operator token (it opens `/trace`, `/metrics`, `/v1/nodes`).
    operator: watch::Receiver<String>,
    users_running: watch::Receiver<bool>,
    /// The cluster's data dir and log dir (they change with the cluster).
    dirs: Mutex<(PathBuf, PathBuf)>,
    /// The controller's pid (it changes with the cluster).
    controller_pid: std::sync::atomic::AtomicU32,
}

/// A running lab. Cheap to clone. See the module docs.
#[derive(Clone)]
pub struct Lab {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("controller", &*self.inner.controller.borrow())
            .finish_non_exhaustive()
    }
}

/// Keeps the traces subscribed while it lives (a panel is connected).
pub struct Watching {
    lab: Lab,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.lab.inner.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

fn run_tag() -> String {
    let n: u32 = rand::random();
    format!("lab_{n:08x}")
}

impl Lab {
    /// Starts the cluster (and the virtual users, if asked) and returns once both run.
    pub async fn start(config: LabConfig) -> Result<Lab, LabError> {
        let cluster = Cluster::start(config.cluster.clone()).await?;
        let run = run_tag();
        let world = World::new(&run, config.checker.clone(), now_us());
        let (ops_tx, ops_rx) = mpsc::channel::<Job>(64);
        let (stop_tx, stop_rx) = mpsc::channel(1);
        let (slots_tx, slots_rx) = watch::channel(cluster.nodes());
        let (controller_tx, controller_rx) = watch::channel(cluster.controller_url().to_owned());
        let (operator_tx, operator_rx) = watch::channel(cluster.operator_token().to_owned());
        let (users_tx, users_rx) = watch::channel(false);
        let inner = Arc::new(Inner {
            world: Mutex::new(world),
            ops: ops_tx,
            stop: stop_tx,
            kill: CancellationToken::new(),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
            watchers: AtomicUsize::new(0),
            slots: slots_rx,
            controller: controller_rx,
            operator: operator_rx,
            users_running: users_rx,
            dirs: Mutex::new((cluster.data_dir().to_owned(), cluster.log_dir().to_owned())),
            controller_pid: std::sync::atomic::AtomicU32::new(cluster.controller_pid()),
        });
        let lab = Lab { inner };
        let (obs_tx, obs_rx) = mpsc::unbounded_channel();
        let (trace_tx, trace_rx) = mpsc::unbounded_channel();
        let observer = Arc::new(Observer::new(trace_tx, 1));
        let mut actor = Actor {
            lab: lab.clone(),
            cluster: Some(cluster),
            users: None,
            users_config: config.users.clone(),
            traffic: config.traffic,
            leftovers: None,
            observe: obs_tx,
            slots: slots_tx,
            controller: controller_tx,
            operator: operator_tx,
            users_running: users_tx,
            known: HashMap::new(),
            teaching: None,
        };
        actor.publish_setup();
        let t = &lab.inner.tasks;
        t.spawn(ingest(lab.clone(), obs_rx, trace_rx));
        t.spawn(poll_registry(lab.clone()));
        t.spawn(poll_counters(lab.clone()));
        t.spawn(keep_observing(
            lab.clone(),
            observer,
            config.drawn_per_sec,
            if config.never_observe {
                Some(false)
            } else {
                config.always_observe.then_some(true)
            },
        ));
        if config.users.is_some() {
            actor.start_users().await;
        }
        t.spawn(actor.run(ops_rx, stop_rx));
        Ok(lab)
    }

    /// Carries out an operation (after any under way) and says how it went; the same words
    /// go to the lab's log.
    pub async fn op(&self, op: Op) -> OpResult {
        let (tx, rx) = oneshot::channel();
        if self.inner.ops.send((op, tx)).await.is_err() {
            return OpResult {
                ok: false,
                message: "the lab is stopping".into(),
            };
        }
        rx.await.unwrap_or(OpResult {
            ok: false,
            message: "the lab stopped before it was done".into(),
        })
    }

    /// The next panel frame for `cursor`.
    pub fn update(&self, cursor: &mut Cursor) -> Update {
        self.inner.world.lock().update(cursor, now_us())
    }

    /// The run so far.
    pub fn report(&self) -> Report {
        self.inner.world.lock().report(now_us())
    }

    /// The checker now.
    pub fn checker(&self) -> CheckerView {
        self.inner.world.lock().checker().view()
    }

    /// Reads or changes the world (briefly: it holds the lock).
    pub fn with_world<R>(&self, f: impl FnOnce(&mut World) -> R) -> R {
        f(&mut self.inner.world.lock())
    }

    /// What a lesson says (shown by every panel), or none.
    pub fn narrate(&self, narration: Option<Narration>) {
        self.inner.world.lock().set_narration(narration);
    }

    /// Marks somebody as watching (traces are subscribed) until the guard drops.
    pub fn watch(&self) -> Watching {
        self.inner.watchers.fetch_add(1, Ordering::Relaxed);
        Watching { lab: self.clone() }
    }

    /// The controller's URL (it changes when the cluster restarts on other backends).
    pub fn controller_url(&self) -> String {
        self.inner.controller.borrow().clone()
    }

    /// The cluster's operator token: `Authorization: Bearer TOKEN` opens the processes'
    /// `/metrics`, the controller's `/v1/nodes` and every process's `/trace` (it changes with
    /// the cluster, like the controller's URL).
    pub fn operator_token(&self) -> String {
        self.inner.operator.borrow().clone()
    }

    /// The cluster's data dir (its SQLite store, its token) and where its processes log.
    pub fn dirs(&self) -> (PathBuf, PathBuf) {
        self.inner.dirs.lock().clone()
    }

    /// The controller's pid.
    pub fn controller_pid(&self) -> u32 {
        self.inner.controller_pid.load(Ordering::Relaxed)
    }

    /// The node slots as of the last look.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.inner.slots.borrow().clone()
    }

    /// Stops the traffic, waits until every delivery is made (or `limit` passes), then judges:
    /// whatever is still missing past the stale bound is lost.
    pub async fn settle(&self, limit: Duration) -> CheckerView {
        let _ = self
            .op(Op::Rate {
                per_sec: 0.0,
                room_share: None,
            })
            .await;
        let deadline = Instant::now() + limit;
        let stale = self.inner.world.lock().checker().stale_after();
        loop {
            let quiet = self.inner.world.lock().checker().quiet();
            if quiet || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut world = self.inner.world.lock();
        // Let `settle` count what is missing now, however recent: the wait is over.
        world
            .checker_mut()
            .settle(now_us() + stale.as_micros() as i64);
        world.checker().view()
    }

    /// Stops the virtual users and the cluster gracefully; an error if a process had to be
    /// killed or exited badly.
    pub async fn shutdown(&self) -> Result<bool, LabError> {
        let (tx, rx) = oneshot::channel();
        if self.inner.stop.send(tx).await.is_err() {
            return Ok(false);
        }
        let result = rx.await.unwrap_or(Ok(false));
        self.inner.cancel.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        result
    }

    /// Kills whatever is left at once (during [`Lab::shutdown`], a second Ctrl-C).
    pub fn kill_now(&self) {
        self.inner.kill.cancel();
        self.inner.cancel.cancel();
    }

    fn log(&self, level: Level, text: impl Into<String>) {
        self.inner.world.lock().log(level, text, now_us());
    }
}

/// The task that owns the cluster and the virtual users.
struct Actor {
    lab: Lab,
    cluster: Option<Cluster>,
    users: Option<VirtualUsers>,
    users_config: Option<UsersConfig>,
    traffic: Traffic,
    leftovers: Option<stacks::Leftovers>,
    observe: mpsc::UnboundedSender<Observation>,
    slots: watch::Sender<Vec<NodeInfo>>,
    controller: watch::Sender<String>,
    operator: watch::Sender<String>,
    users_running: watch::Sender<bool>,
    known: HashMap<String, ProcessState>,
    /// The teaching mode the lab turned on (given again to nodes that start meanwhile).
    teaching: Option<protocol::teaching::Teaching>,
}

impl Actor {
    async fn run(
        mut self,
        mut ops: mpsc::Receiver<Job>,
        mut stop: mpsc::Receiver<oneshot::Sender<Result<bool, LabError>>>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let reply = loop {
            tokio::select! {
                reply = stop.recv() => break reply,
                _ = self.lab.inner.kill.cancelled() => break None,
                job = ops.recv() => {
                    let Some((op, reply)) = job else { break None };
                    let what = describe(&op);
                    self.lab.inner.world.lock().set_busy(Some(what));
                    let kill = self.lab.inner.kill.clone();
                    let result = tokio::select! {
                        r = self.execute(op) => r,
                        _ = kill.cancelled() => Err("killed".into()),
                    };
                    self.lab.inner.world.lock().set_busy(None);
                    self.refresh();
                    let result = match result {
                        Ok(message) => OpResult { ok: true, message },
                        Err(message) => {
                            self.lab.log(Level::Bad, format!("error: {message}"));
                            OpResult { ok: false, message }
                        }
                    };
                    let _ = reply.send(result);
                }
                _ = tick.tick() => self.refresh(),
            }
        };
        let result = self.stop_all().await;
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }

    /// Stops the users and the cluster; a second Ctrl-C (kill) drops them at once.
    async fn stop_all(&mut self) -> Result<bool, LabError> {
        let kill = self.lab.inner.kill.clone();
        let users = self.users.take();
        let cluster = self.cluster.take();
        let graceful = async move {
            if let Some(users) = users {
                users.shutdown().await;
            }
            match cluster {
                Some(c) => c
                    .shutdown()
                    .await
                    .map(|exits| exits.iter().all(crate::process::Exit::is_clean)),
                None => Ok(true),
            }
        };
        tokio::select! {
            r = graceful => r,
            // Dropping the future dropped the cluster, which SIGKILLed every process.
            _ = kill.cancelled() => Ok(false),
        }
    }

    fn cluster(&mut self) -> Result<&mut Cluster, String> {
        self.cluster
            .as_mut()
            .ok_or_else(|| "no cluster runs (it failed to start on the last backend set)".into())
    }

    /// Notices processes that died on their own and hands the slots to the world.
    fn refresh(&mut self) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let nodes = cluster.refresh();
        for n in &nodes {
            let before = self.known.insert(n.id.to_string(), n.process.clone());
            if let ProcessState::Exited { status } = &n.process
                && before.as_ref() != Some(&n.process)
            {
                self.lab.log(
                    Level::Bad,
                    format!(
                        "{} died on its own ({})",
                        n.id,
                        crate::process::describe_status(*status)
                    ),
                );
            }
        }
        if !cluster.controller_running() {
            self.lab.log(Level::Bad, "the controller died");
        }
        self.lab.inner.world.lock().set_slots(nodes.clone());
        self.slots.send_replace(nodes);
    }

    fn publish_setup(&mut self) {
        let Some(cluster) = self.cluster.as_ref() else {
            return;
        };
        let setup = Setup {
            controller: cluster.controller_url().to_owned(),
            backends: stacks::describe(&cluster.config().backends),
            choices: stacks::choices(),
            lease_ms: cluster.config().lease().as_millis() as u64,
            cuttable: cluster.config().cuttable_bus,
        };
        self.operator
            .send_replace(cluster.operator_token().to_owned());
        self.controller.send_replace(setup.controller.clone());
        let mut world = self.lab.inner.world.lock();
        world.set_setup(setup);
        world.set_slots(cluster.nodes());
        drop(world);
        self.publish_traffic(false);
    }

    fn publish_traffic(&self, starting: bool) {
        let (users, per_user) = self
            .users_config
            .as_ref()
            .map_or((0, 0), |c| (c.users as u32, c.devices_per_user as u32));
        let view = TrafficView {
            users,
            devices_per_user: per_user,
            rate: self.traffic.rate,
            room_share: self.traffic.room_share,
            conversations: self.users.as_ref().map_or(0, |u| u.conversations() as u32),
            starting,
            ..TrafficView::default()
        };
        self.lab.inner.world.lock().set_traffic(view);
    }

    /// Starts the configured virtual users (logging what fails).
    async fn start_users(&mut self) {
        if let Err(e) = self.try_start_users().await {
            self.lab.log(Level::Bad, format!("virtual users: {e}"));
        }
    }

    async fn try_start_users(&mut self) -> Result<String, String> {
        if let Some(old) = self.users.take() {
            old.shutdown().await;
        }
        self.users_running.send_replace(false);
        let Some(config) = self.users_config.clone().filter(|c| c.users > 0) else {
            self.publish_traffic(false);
            return Ok("virtual users stopped".into());
        };
        let url = self.cluster()?.controller_url().to_owned();
        self.publish_traffic(true);
        self.lab.inner.world.lock().checker_mut().reset(now_us());
        let started = Instant::now();
        let devices = config.users * config.devices_per_user;
        self.lab.log(
            Level::Ok,
            format!(
                "logging {} virtual users in on {devices} devices…",
                config.users
            ),
        );
        // Watching from the first login on: the assignments are part of the show.
        self.users_running.send_replace(true);
        let users = VirtualUsers::start(
            &url,
            config.clone(),
            self.observe.clone(),
            self.lab.inner.cancel.child_token(),
        )
        .await
        .map_err(|e| e.to_string());
        let users = match users {
            Ok(u) => u,
            Err(e) => {
                self.users_running.send_replace(false);
                self.publish_traffic(false);
                return Err(e);
            }
        };
        users.set_traffic(self.traffic);
        let message = format!(
            "{} users × {} devices started ({} conversations) in {}",
            config.users,
            config.devices_per_user,
            users.conversations(),
            human(started.elapsed())
        );
        self.users = Some(users);
        self.publish_traffic(false);
        Ok(message)
    }

    fn slot(&mut self, target: &str) -> Result<(usize, NodeInfo), String> {
        let cluster = self.cluster()?;
        let index = resolve_target(target, &cluster.nodes())?;
        let node = cluster.node(index).map_err(|e| e.to_string())?;
        Ok((index, node))
    }

    async fn execute(&mut self, op: Op) -> Result<String, String> {
        let err = |e: LabError| e.to_string();
        let message = match op {
            Op::Kill { node } => {
                let (index, n) = self.slot(&node)?;
                self.cluster()?.kill_node(index).await.map_err(err)?;
                self.notice(&n, "kill");
                format!(
                    "{} killed (SIGKILL, pid {}): its devices reconnect elsewhere; watch the \
                     registry drop it",
                    n.id, n.pid
                )
            }
            Op::Stop { node } => {
                let (index, n) = self.slot(&node)?;
                self.lab.log(
                    Level::Warn,
                    format!("{}: SIGTERM sent (pid {}); it drains…", n.id, n.pid),
                );
                self.notice(&n, "stop");
                let exit = self.cluster()?.stop_node(index).await.map_err(err)?;
                format!(
                    "{} stopped (SIGTERM): {} after {}",
                    n.id,
                    crate::process::describe_status(exit.status),
                    human(exit.took)
                )
            }
            Op::Freeze { node } => {
                let (index, n) = self.slot(&node)?;
                self.cluster()?.pause_node(index).map_err(err)?;
                self.notice(&n, "freeze");
                let lease = self.cluster()?.config().lease().as_secs_f64();
                format!(
                    "{} frozen (SIGSTOP, pid {}): no heartbeats; the registry drops it when \
                     its lease ({lease:.1} s) runs out",
                    n.id, n.pid
                )
            }
            Op::Thaw { node } => {
                let (index, n) = self.slot(&node)?;
                self.cluster()?.resume_node(index).map_err(err)?;
                format!("{} thawed (SIGCONT, pid {})", n.id, n.pid)
            }
            Op::Restart { node } => {
                let (index, n) = self.slot(&node)?;
                let started = Instant::now();
                let new = self.cluster()?.restart_node(index).await.map_err(err)?;
                let mode = self.teaching;
                crate::teach::reapply(self.cluster()?, mode, &new).await?;
                format!(
                    "{} restarted as {} (pid {}); live after {}",
                    n.id,
                    new.id,
                    new.pid,
                    human(started.elapsed())
                )
            }
            Op::CutBus { node } => {
                let (index, n) = self.slot(&node)?;
                let embedded = self.cluster()?.config().backends.bus == "embedded";
                self.cluster()?.cut_bus(index).map_err(err)?;
                if embedded {
                    format!(
                        "{}'s link to the controller cut (it carries the embedded bus and \
                         registry): the node runs on, the controller drops it until it is back",
                        n.id
                    )
                } else {
                    format!(
                        "{}'s bus connection cut: the node runs on without its bus",
                        n.id
                    )
                }
            }
            Op::RestoreBus { node } => {
                let (index, n) = self.slot(&node)?;
                self.cluster()?.restore_bus(index).map_err(err)?;
                format!(
                    "{}'s bus connection restored: it reconnects, and its devices catch up",
                    n.id
                )
            }
            Op::AddNode => {
                let started = Instant::now();
                let new = self.cluster()?.add_node().await.map_err(err)?;
                let mode = self.teaching;
                crate::teach::reapply(self.cluster()?, mode, &new).await?;
                format!(
                    "{} added (pid {}); live after {}",
                    new.id,
                    new.pid,
                    human(started.elapsed())
                )
            }
            Op::SetRouting { routing } => {
                let routing: Routing = routing.parse()?;
                let started = Instant::now();
                let nodes = self.cluster()?.set_routing(routing).await.map_err(err)?;
                let mode = self.teaching;
                for n in &nodes {
                    crate::teach::reapply(self.cluster()?, mode, n).await?;
                }
                self.publish_setup();
                format!(
                    "every node restarted with {} routing in {}",
                    routing.as_str(),
                    human(started.elapsed())
                )
            }
            Op::SetBackends { name } => self.switch_stack(&name).await?,
            Op::Users {
                users,
                devices_per_user,
            } => {
                let mut config = self
                    .users_config
                    .clone()
                    .unwrap_or_else(|| UsersConfig::new(0, 1));
                config.users = users as usize;
                config.devices_per_user = devices_per_user.max(1) as usize;
                self.users_config = Some(config);
                self.try_start_users().await?
            }
            Op::Rate {
                per_sec,
                room_share,
            } => {
                self.traffic.rate = per_sec.clamp(0.0, 5000.0);
                if let Some(share) = room_share {
                    self.traffic.room_share = share.clamp(0.0, 1.0);
                }
                if let Some(users) = &self.users {
                    users.set_traffic(self.traffic);
                }
                self.publish_traffic(false);
                format!(
                    "traffic: {} messages/s, {:.0}% in rooms",
                    self.traffic.rate,
                    self.traffic.room_share * 100.0
                )
            }
            Op::Burst { logins } => {
                let users = self
                    .users
                    .as_ref()
                    .ok_or_else(|| "start virtual users first".to_owned())?;
                let started = Instant::now();
                let n = users
                    .burst(logins.min(5000) as usize)
                    .await
                    .map_err(|e| e.to_string())?;
                format!(
                    "burst: {n} devices logged in at once in {}; see where the controller sent them",
                    human(started.elapsed())
                )
            }
            Op::EndBurst => {
                let users = self
                    .users
                    .as_ref()
                    .ok_or_else(|| "no virtual users".to_owned())?;
                format!("burst over: {} devices logged out", users.end_burst().await)
            }
            Op::Settle => {
                let mut world = self.lab.inner.world.lock();
                world.checker_mut().settle(now_us());
                world.checker().view().headline
            }
            Op::ResetChecker => {
                self.lab.inner.world.lock().checker_mut().reset(now_us());
                "the checker starts counting again".into()
            }
            Op::Teach { mode } => {
                let switched = crate::teach::switch(self.cluster()?, mode).await;
                // Whatever failed half-way, the world shows the mode asked for only if it
                // is on.
                if switched.is_ok() {
                    self.teaching = mode;
                    self.lab.inner.world.lock().set_teaching(mode);
                }
                self.publish_setup();
                switched?
            }
            Op::DelayBus { node, ms } => {
                let (index, n) = self.slot(&node)?;
                let delay = Duration::from_millis(ms.min(10_000));
                self.cluster()?.delay_bus(index, delay).map_err(err)?;
                if ms == 0 {
                    format!("{}'s bus connection runs at full speed again", n.id)
                } else {
                    format!(
                        "{}'s bus connection delayed by {} ms each way: one path slower than \
                         the others",
                        n.id,
                        delay.as_millis()
                    )
                }
            }
        };
        self.lab.log(Level::Ok, message.clone());
        Ok(message)
    }

    fn notice(&mut self, n: &NodeInfo, cause: &str) {
        self.lab
            .inner
            .world
            .lock()
            .expect_notice(n.id.as_str(), &n.name, cause, now_us());
    }

    /// Restarts the whole cluster on another backend set, and the virtual users with it.
    async fn switch_stack(&mut self, name: &str) -> Result<String, String> {
        let stack = stacks::find(name).ok_or_else(|| format!("no backend set {name:?}"))?;
        if let Some(missing) = stack.missing() {
            return Err(format!("{name} cannot run here: {missing} not found"));
        }
        let Some(old) = self.cluster.take() else {
            return Err("no cluster to restart".into());
        };
        let mut config = old.config().clone();
        let nodes = old.nodes().len().max(1);
        if let Some(users) = self.users.take() {
            users.shutdown().await;
        }
        self.users_running.send_replace(false);
        self.lab.log(
            Level::Warn,
            format!("stopping the cluster to restart it on {name}…"),
        );
        if let Err(e) = old.shutdown().await {
            self.lab.log(Level::Warn, e.to_string());
        }
        let tag = run_tag();
        let (backends, leftovers) = stack.backends(&tag, config.backends.routing)?;
        config.backends = backends;
        config.nodes = nodes;
        config.teaching_at_start = None;
        config.data_dir = None;
        let started = Instant::now();
        let cluster = Cluster::start(config).await.map_err(|e| e.to_string())?;
        self.leftovers = Some(leftovers);
        *self.lab.inner.dirs.lock() = (cluster.data_dir().to_owned(), cluster.log_dir().to_owned());
        self.cluster = Some(cluster);
        self.known.clear();
        self.lab.inner.world.lock().new_run(&tag, now_us());
        self.teaching = None;
        self.publish_setup();
        self.refresh();
        let mut message = format!(
            "the cluster runs on {} ({}), started in {}",
            stack.name,
            stack.label,
            human(started.elapsed())
        );
        if self.users_config.as_ref().is_some_and(|c| c.users > 0) {
            let users = self.try_start_users().await?;
            message.push_str(&format!("; {users}"));
        }
        Ok(message)
    }
}

/// What the panel shows while an operation runs.
fn describe(op: &Op) -> String {
    match op {
        Op::Kill { node } => format!("killing {node}…"),
        Op::Stop { node } => format!("stopping {node} (it drains)…"),
        Op::Freeze { node } => format!("freezing {node}…"),
        Op::Thaw { node } => format!("thawing {node}…"),
        Op::Restart { node } => format!("restarting {node}…"),
        Op::CutBus { node } => format!("cutting {node}'s bus…"),
        Op::RestoreBus { node } => format!("restoring {node}'s bus…"),
        Op::AddNode => "adding a node…".into(),
        Op::SetRouting { routing } => format!("restarting every node with {routing} routing…"),
        Op::SetBackends { name } => format!("restarting the cluster on {name}…"),
        Op::Users {
            users,
            devices_per_user,
        } => {
            format!("logging {users} users × {devices_per_user} devices in…")
        }
        Op::Rate { .. } => "setting the traffic…".into(),
        Op::Burst { logins } => format!("logging {logins} devices in at once…"),
        Op::EndBurst => "logging the burst out…".into(),
        Op::Settle => "judging…".into(),
        Op::ResetChecker => "resetting the checker…".into(),
        Op::Teach { mode: Some(mode) } => format!("turning teaching mode {mode} on…"),
        Op::Teach { mode: None } => "turning teaching mode off…".into(),
        Op::DelayBus { node, ms } => format!("delaying {node}'s bus by {ms} ms…"),
    }
}

/// Feeds what the devices and the traces report into the world, in batches.
async fn ingest(
    lab: Lab,
    mut observations: mpsc::UnboundedReceiver<Observation>,
    mut traces: mpsc::UnboundedReceiver<crate::observe::Observed>,
) {
    let cancel = lab.inner.cancel.clone();
    let mut obs_buf = Vec::with_capacity(256);
    let mut trace_buf = Vec::with_capacity(256);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            n = observations.recv_many(&mut obs_buf, 256) => {
                if n == 0 { return; }
                let mut world = lab.inner.world.lock();
                for obs in obs_buf.drain(..) {
                    world.observe(obs);
                }
            }
            n = traces.recv_many(&mut trace_buf, 256) => {
                if n == 0 { return; }
                let mut world = lab.inner.world.lock();
                for (slot, ev) in trace_buf.drain(..) {
                    world.trace(&slot, ev);
                }
            }
        }
    }
}

/// Asks the registry for its nodes ten times a second: how long it takes to notice a node
/// that went away is measured to that precision.
async fn poll_registry(lab: Lab) {
    let cancel = lab.inner.cancel.clone();
    let mut controller = lab.inner.controller.clone();
    let connect = |url: String| {
        crate::ControllerClient::new(url)
            .ok()
            .map(|c| c.with_operator(&lab.operator_token()))
    };
    let mut client = connect(controller.borrow_and_update().clone());
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if controller.has_changed().unwrap_or(false) {
            client = connect(controller.borrow_and_update().clone());
        }
        let Some(c) = &client else { continue };
        let answer = c.nodes().await.map_err(|e| e.to_string());
        let mut world = lab.inner.world.lock();
        world.registry(answer, now_us());
        world.tick(now_us());
    }
}

/// Reads every running node's counters once a second (messages per second in and out).
async fn poll_counters(lab: Lab) {
    let cancel = lab.inner.cancel.clone();
    let Ok(http) = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
    else {
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let nodes: Vec<NodeInfo> = lab
            .nodes()
            .into_iter()
            .filter(|n| n.process == ProcessState::Running)
            .collect();
        let operator = lab.operator_token();
        let reads = nodes.iter().map(|n| {
            let http = http.clone();
            let operator = &operator;
            async move {
                let text = http
                    .get(format!("{}/metrics", n.http_url.trim_end_matches('/')))
                    .bearer_auth(operator)
                    .send()
                    .await
                    .ok()?
                    .text()
                    .await
                    .ok()?;
                Some((n.id.to_string(), NodeCounters::parse(&text)))
            }
        });
        let read = futures::future::join_all(reads).await;
        let mut world = lab.inner.world.lock();
        for (id, counters) in read.into_iter().flatten() {
            world.counters(&id, counters, now_us());
        }
    }
}

/// Keeps the observer on the cluster's current processes while somebody watches, and its
/// sampling in step with the traffic.
/// `forced`: always (`Some(true)`) or never (`Some(false)`) observe, whoever watches.
async fn keep_observing(
    lab: Lab,
    observer: Arc<Observer>,
    drawn_per_sec: f64,
    forced: Option<bool>,
) {
    let cancel = lab.inner.cancel.clone();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let watching = forced.unwrap_or_else(|| {
            lab.inner.watchers.load(Ordering::Relaxed) > 0 || *lab.inner.users_running.borrow()
        });
        if !watching {
            observer.set_targets(&[]);
            continue;
        }
        let operator_token = lab.operator_token();
        let mut targets = vec![Target {
            name: "controller".into(),
            http_url: lab.controller_url(),
            operator_token: operator_token.clone(),
        }];
        targets.extend(
            lab.nodes()
                .into_iter()
                .filter(|n| matches!(n.process, ProcessState::Running | ProcessState::Paused))
                .map(|n| Target {
                    name: n.name,
                    http_url: n.http_url,
                    operator_token: operator_token.clone(),
                }),
        );
        observer.set_targets(&targets);
        // Resubscribe only when the sampling should change by more than half: each change
        // costs the nodes a reconnect.
        let want = lab.inner.world.lock().wanted_sample(drawn_per_sec);
        let have = observer.sample();
        if want > have * 2 || want * 2 < have {
            observer.set_sample(want);
        }
        lab.inner.world.lock().set_sample(observer.sample());
    }
}
