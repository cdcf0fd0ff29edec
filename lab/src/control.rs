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

mod actor;
mod feeds;

use self::actor::Actor;
use self::feeds::{ingest, keep_observing, poll_counters, poll_registry};

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
