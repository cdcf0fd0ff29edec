//! A local cluster: one controller and N chat nodes, each a supervised [`ServerProcess`],
//! sharing a data dir, a secret and an operator token (which opens the processes' `/metrics`
//! and the nodes' `/trace` to the lab: see [`Cluster::operator_token`]).
//!
//! Nodes live in *slots*: slot 0 is named `n1`, slot 1 `n2`, and so on. The first process in a
//! slot takes the slot's name as its node id; a restart gets a fresh id (`n1-r1`, `n1-r2`),
//! because a node id is unique for the life of one process.
//!
//! Invariants:
//! - `Cluster::start` returns only once the controller answers `/healthz` and every node is
//!   live in `/v1/nodes`; each operation that starts a node returns only once it is live.
//! - Dropping a `Cluster` SIGKILLs and reaps every process still running, nodes first, before
//!   the data dir is removed.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use protocol::NodeId;
use protocol::bus::Routing;
use protocol::http::{NodeStatus, NodesResponse};
use rand::Rng;

use crate::LabError;
use crate::process::{Exit, ProcessSpec, ServerProcess};
use crate::proxy::CutProxy;
use crate::status::ControllerClient;

/// The environment variable every server process reads its secret from.
pub const SECRET_ENV: &str = "CHAT_SECRET";

/// The environment variable every server process reads the operator's token from: it opens
/// the processes' `/metrics`, the controller's `/v1/nodes`, and each node's `/trace`.
pub const OPERATOR_TOKEN_ENV: &str = "CHAT_OPERATOR_TOKEN";

/// The file in the data dir that holds the operator's token too (readable by its owner only),
/// for whoever inspects the cluster from outside the lab (`lab status --data-dir`).
pub const OPERATOR_TOKEN_FILE: &str = "operator-token";

/// Which backends the servers use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backends {
    /// History store URL (`sqlite://…`, `postgres://…`); `None` lets the server use SQLite in
    /// the data dir.
    pub store: Option<String>,
    /// `embedded`, `redis://…` or `zookeeper://…`.
    pub registry: String,
    /// `embedded`, `redis://…` or `amqp://…`.
    pub bus: String,
    /// Routed or fanout.
    pub routing: Routing,
}

impl Default for Backends {
    fn default() -> Self {
        Backends {
            store: None,
            registry: "embedded".to_owned(),
            bus: "embedded".to_owned(),
            routing: Routing::Routed,
        }
    }
}

/// How to start a cluster. Build it with [`ClusterConfig::new`] and adjust the fields.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Nodes to start.
    pub nodes: usize,
    /// Data dir shared by every process. `None`: a fresh temp dir, removed when the cluster
    /// goes away (unless `keep_data_dir`, or a test panics). A dir given here is never removed.
    pub data_dir: Option<PathBuf>,
    /// Keep the temp data dir after the cluster goes away.
    pub keep_data_dir: bool,
    /// Where `<name>.log` files go. `None`: `<data_dir>/logs`.
    pub log_dir: Option<PathBuf>,
    /// Store, registry, bus, routing.
    pub backends: Backends,
    /// Node lease in milliseconds (`None`: the server's default, 5 s).
    pub lease_ms: Option<u64>,
    /// Extra environment for every process (set after the lab's own, so it can override them).
    pub env: Vec<(String, String)>,
    /// The server binary; `None`: found by [`crate::find::server_binary`].
    pub server_bin: Option<PathBuf>,
    /// Extra arguments for the controller (e.g. `--password-hash fast`).
    pub controller_args: Vec<String>,
    /// Extra arguments for every node.
    pub node_args: Vec<String>,
    /// How long a process may take to print its ready line, and then to be healthy / live.
    pub ready_timeout: Duration,
    /// How long a SIGTERMed process may take to exit before it is killed.
    pub stop_timeout: Duration,
    /// Start each process in a process group of its own (see
    /// [`ProcessSpec::own_process_group`]): on for the interactive CLI, off for tests.
    pub own_process_groups: bool,
    /// Put a [`CutProxy`] between each node and its bus, so that [`Cluster::cut_bus`] can cut
    /// one node's bus connection while it keeps running. With the embedded bus the proxy sits
    /// on the node's link to the controller, which carries the embedded registry too.
    pub cuttable_bus: bool,
}

impl ClusterConfig {
    /// A cluster of `nodes` nodes on the embedded backends, in a temp dir.
    pub fn new(nodes: usize) -> Self {
        ClusterConfig {
            nodes,
            data_dir: None,
            keep_data_dir: false,
            log_dir: None,
            backends: Backends::default(),
            lease_ms: None,
            env: Vec::new(),
            server_bin: None,
            controller_args: Vec::new(),
            node_args: Vec::new(),
            ready_timeout: Duration::from_secs(20),
            // A node drains for up to ~10 s; leave room on top.
            stop_timeout: Duration::from_secs(15),
            own_process_groups: false,
            cuttable_bus: false,
        }
    }

    /// How long the registry keeps a silent node.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms.unwrap_or(5_000))
    }

    /// Flags both roles take; `bus` is the bus URL this process connects to.
    fn common_args(&self, data_dir: &Path, bus: &str) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["--data-dir".into(), data_dir.into()];
        if let Some(store) = &self.backends.store {
            args.extend(["--store".into(), store.into()]);
        }
        args.extend([
            "--registry".into(),
            (&self.backends.registry).into(),
            "--bus".into(),
            bus.into(),
            "--routing".into(),
            self.backends.routing.as_str().into(),
        ]);
        if let Some(ms) = self.lease_ms {
            args.extend(["--lease-ms".into(), ms.to_string().into()]);
        }
        args
    }

    /// The controller's command line (after the program).
    pub fn controller_command(&self, data_dir: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["controller".into(), "--listen".into(), LISTEN.into()];
        args.extend(self.common_args(data_dir, &self.backends.bus));
        args.extend(self.controller_args.iter().map(OsString::from));
        args
    }

    /// A node's command line (after the program).
    pub fn node_command(
        &self,
        data_dir: &Path,
        controller_url: &str,
        id: &NodeId,
    ) -> Vec<OsString> {
        self.node_command_via(data_dir, controller_url, &self.backends.bus, id)
    }

    /// A node's command line reaching the controller and the bus at the addresses given (a
    /// [`CutProxy`]'s, when the bus can be cut).
    pub fn node_command_via(
        &self,
        data_dir: &Path,
        controller_url: &str,
        bus: &str,
        id: &NodeId,
    ) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "node".into(),
            "--listen".into(),
            LISTEN.into(),
            "--controller".into(),
            controller_url.into(),
        ];
        args.extend(self.common_args(data_dir, bus));
        args.extend(["--id".into(), id.as_str().into()]);
        args.extend(self.node_args.iter().map(OsString::from));
        args
    }
}

/// Loopback only, port 0: the lab never exposes anything and never guesses a port.
const LISTEN: &str = "127.0.0.1:0";

/// What the lab knows about a node's process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcessState {
    /// Running, as far as the lab last looked.
    Running,
    /// Frozen by the lab with SIGSTOP (see [`Cluster::pause_node`]).
    Paused,
    /// Killed by the lab with SIGKILL.
    Killed,
    /// Stopped by the lab with SIGTERM; how it exited.
    Stopped {
        /// Its exit status.
        status: ExitStatus,
    },
    /// Ended without the lab asking (a crash).
    Exited {
        /// Its exit status.
        status: ExitStatus,
    },
}

/// One node slot, as of the lab's last look.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// The slot's index (0-based).
    pub index: usize,
    /// The slot's name (`n1` for index 0).
    pub name: String,
    /// The node id of the slot's latest process.
    pub id: NodeId,
    /// Its WebSocket URL.
    pub ws_url: String,
    /// Its HTTP base.
    pub http_url: String,
    /// Its pid.
    pub pid: u32,
    /// Running, killed, stopped, died.
    pub process: ProcessState,
    /// Whether the lab cut its bus connection ([`Cluster::cut_bus`]).
    pub bus_cut: bool,
}

/// A node process that became ready.
#[derive(Debug)]
struct NodeProcess {
    id: NodeId,
    ws_url: String,
    http_url: String,
    process: ServerProcess,
}

/// How the lab ended a slot's process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EndedBy {
    Kill,
    Stop,
}

#[derive(Debug)]
struct Slot {
    name: String,
    /// Restarts so far: the next process is `<name>-r<restarts + 1>`.
    restarts: u32,
    node: NodeProcess,
    ended_by: Option<EndedBy>,
    /// Between the node and its bus, when the cluster's bus can be cut. It outlives restarts.
    proxy: Option<CutProxy>,
}

impl Slot {
    fn info(&self, index: usize) -> NodeInfo {
        let process = match (self.node.process.exit_status(), self.ended_by) {
            (None, _) if self.node.process.is_paused() => ProcessState::Paused,
            (None, _) => ProcessState::Running,
            (Some(_), Some(EndedBy::Kill)) => ProcessState::Killed,
            (Some(status), Some(EndedBy::Stop)) => ProcessState::Stopped { status },
            (Some(status), None) => ProcessState::Exited { status },
        };
        NodeInfo {
            index,
            name: self.name.clone(),
            id: self.node.id.clone(),
            ws_url: self.node.ws_url.clone(),
            http_url: self.node.http_url.clone(),
            pid: self.node.process.pid(),
            process,
            bus_cut: self.proxy.as_ref().is_some_and(CutProxy::is_cut),
        }
    }
}

/// The server's variable for its runtime's worker threads.
const WORKER_THREADS_ENV: &str = "CHAT_WORKER_THREADS";

/// Runtime threads per server process when `nodes` nodes and a controller share this machine.
fn worker_threads(nodes: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / (nodes + 1)).max(1)
}

/// Everything needed to start a node, apart from the cluster's mutable state, so that several
/// nodes can start at once.
#[derive(Debug)]
struct Launcher {
    config: ClusterConfig,
    program: PathBuf,
    data_dir: PathBuf,
    log_dir: PathBuf,
    secret: String,
    operator_token: String,
    controller: ControllerClient,
}

impl Launcher {
    fn spec(&self, name: &str, args: Vec<OsString>) -> ProcessSpec {
        // Inherited CHAT_* variables would silently change the servers' backends (they read
        // e.g. CHAT_BUS when a flag is absent): a lab cluster is configured by its config only.
        let env_remove = std::env::vars_os()
            .map(|(k, _)| k)
            .filter(|k| k.to_string_lossy().starts_with("CHAT_"))
            .collect();
        let mut env: Vec<(OsString, OsString)> = vec![
            (SECRET_ENV.into(), self.secret.clone().into()),
            (
                OPERATOR_TOKEN_ENV.into(),
                self.operator_token.clone().into(),
            ),
        ];
        if std::env::var_os("NO_COLOR").is_none() {
            // Log files, not terminals: escape codes would only clutter them and the tails
            // that errors quote.
            env.push(("NO_COLOR".into(), "1".into()));
        }
        if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
            // With RUST_BACKTRACE=1 (common in test runs) a server's fatal `anyhow` error is
            // followed by dozens of backtrace lines that push the error itself out of the log
            // tail we quote. Panics keep their backtraces (RUST_BACKTRACE still applies).
            env.push(("RUST_LIB_BACKTRACE".into(), "0".into()));
        }
        // The processes of a lab cluster share one machine: each gets an equal share of its
        // cores as runtime threads (at least one), instead of each one a thread per core that
        // would wake, steal and switch against all the others. The config's env may override.
        env.push((
            WORKER_THREADS_ENV.into(),
            worker_threads(self.config.nodes).to_string().into(),
        ));
        env.extend(self.config.env.iter().map(|(k, v)| (k.into(), v.into())));
        ProcessSpec {
            name: name.to_owned(),
            program: self.program.clone(),
            args,
            env_remove,
            env,
            log_path: self.log_dir.join(format!("{name}.log")),
            own_process_group: self.config.own_process_groups,
        }
    }

    async fn start_controller(&self) -> Result<(ServerProcess, String), LabError> {
        let args = self.config.controller_command(&self.data_dir);
        let mut process = ServerProcess::spawn(self.spec("controller", args))?;
        let url = process
            .wait_ready(self.config.ready_timeout)
            .await?
            .http_url
            .clone();
        Ok((process, url))
    }

    /// A proxy for a new slot's bus connection, when the cluster's bus can be cut.
    async fn proxy(&self) -> Result<Option<CutProxy>, LabError> {
        if !self.config.cuttable_bus {
            return Ok(None);
        }
        let bus = &self.config.backends.bus;
        let url = if bus == "embedded" {
            self.controller.base()
        } else {
            bus.as_str()
        };
        let (target, _) =
            crate::proxy::split_authority(url, "").ok_or_else(|| LabError::NotCuttable {
                name: "the cluster".into(),
                why: format!("no host:port in {url:?} to put a proxy in front of"),
            })?;
        CutProxy::start(&target).await.map(Some)
    }

    /// Starts a node and returns once it is live in `/v1/nodes`.
    async fn start_node(
        &self,
        id: NodeId,
        proxy: Option<&CutProxy>,
    ) -> Result<NodeProcess, LabError> {
        self.start_node_with(id, &[], proxy).await
    }

    /// Starts a node with extra arguments for it alone (after the cluster-wide ones), through
    /// `proxy` to its bus when there is one.
    async fn start_node_with(
        &self,
        id: NodeId,
        extra: &[String],
        proxy: Option<&CutProxy>,
    ) -> Result<NodeProcess, LabError> {
        let limit = self.config.ready_timeout;
        let bus = &self.config.backends.bus;
        let (controller, bus) = match proxy {
            None => (self.controller.base().to_owned(), bus.clone()),
            Some(p) if bus == "embedded" => (format!("http://{}", p.addr()), bus.clone()),
            Some(p) => (
                self.controller.base().to_owned(),
                crate::proxy::split_authority(bus, &p.addr().to_string())
                    .map(|(_, url)| url)
                    .unwrap_or_else(|| bus.clone()),
            ),
        };
        let mut args = self
            .config
            .node_command_via(&self.data_dir, &controller, &bus, &id);
        args.extend(extra.iter().map(std::ffi::OsString::from));
        let mut process = ServerProcess::spawn(self.spec(id.as_str(), args))?;
        let ready = process.wait_ready(limit).await?.clone();
        let id = match ready.node {
            Some(reported) if reported != id => {
                tracing::warn!(asked = %id, %reported, "node took another id than asked");
                reported
            }
            _ => id,
        };
        let mut node = NodeProcess {
            ws_url: ready.ws_url.clone().unwrap_or_default(),
            http_url: ready.http_url.clone(),
            id,
            process,
        };
        // The ready line means "registered", but the lab's contract is "live in /v1/nodes":
        // check that the controller agrees, and notice a node that dies meanwhile.
        let started = Instant::now();
        tokio::select! {
            live = self.controller.wait_node_live(&node.id, limit) => match live {
                Ok(_) => Ok(node),
                Err(e) => Err(node.process.not_ready(
                    &format!("to be live in /v1/nodes ({e})"),
                    started.elapsed(),
                )),
            },
            status = node.process.wait() => Err(match status {
                Ok(status) => LabError::ExitedEarly {
                    name: node.process.name().to_owned(),
                    status,
                    log: node.process.log_path().to_owned(),
                    tail: node.process.log_tail(),
                },
                Err(e) => e,
            }),
        }
    }
}

/// Starts the controller, waits until it is healthy, then starts the nodes in parallel. On
/// failure, whatever had started is killed (dropped) before this returns.
async fn launch(launcher: &mut Launcher) -> Result<(ServerProcess, Vec<Slot>), LabError> {
    let (controller, url) = launcher.start_controller().await?;
    launcher.controller = ControllerClient::new(url)?.with_operator(&launcher.operator_token);
    let limit = launcher.config.ready_timeout;
    if let Err(e) = launcher.controller.wait_healthy(limit).await {
        return Err(controller.not_ready(&format!("to be healthy ({e})"), limit));
    }
    let launcher = &*launcher;
    let names = (0..launcher.config.nodes).map(slot_name);
    let nodes = futures::future::try_join_all(names.map(|name| async move {
        let proxy = launcher.proxy().await?;
        let node = launcher
            .start_node(node_id(&name, 0)?, proxy.as_ref())
            .await?;
        Ok::<_, LabError>((name, node, proxy))
    }))
    .await?;
    let slots = nodes
        .into_iter()
        .map(|(name, node, proxy)| Slot {
            name,
            restarts: 0,
            node,
            ended_by: None,
            proxy,
        })
        .collect();
    Ok((controller, slots))
}

/// Where the data lives, and whether it is ours to delete.
#[derive(Debug)]
enum DataDir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl DataDir {
    fn path(&self) -> &Path {
        match self {
            DataDir::Temp(t) => t.path(),
            DataDir::Kept(p) => p,
        }
    }
}

/// A running local cluster. See the module docs for its invariants.
#[derive(Debug)]
pub struct Cluster {
    // Field order is drop order: node processes, then the controller, then the data dir.
    slots: Vec<Slot>,
    controller: ServerProcess,
    launcher: Launcher,
    data_dir: Option<DataDir>,
}

impl Cluster {
    /// Starts a controller and `config.nodes` nodes and waits until the controller is healthy
    /// and every node is live in `/v1/nodes`. On failure everything started is killed.
    pub async fn start(config: ClusterConfig) -> Result<Cluster, LabError> {
        let program = match &config.server_bin {
            Some(p) => p.clone(),
            None => crate::find::server_binary()?,
        };
        let data_dir = match &config.data_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| LabError::io(format!("creating data dir {}", dir.display()), e))?;
                DataDir::Kept(dir.clone())
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("chat-lab-")
                    .tempdir()
                    .map_err(|e| LabError::io("creating a temp data dir", e))?;
                if config.keep_data_dir {
                    DataDir::Kept(temp.keep())
                } else {
                    DataDir::Temp(temp)
                }
            }
        };
        let log_dir = config
            .log_dir
            .clone()
            .unwrap_or_else(|| data_dir.path().join("logs"));
        let operator_token = new_secret();
        write_private(&data_dir.path().join(OPERATOR_TOKEN_FILE), &operator_token)?;
        let mut launcher = Launcher {
            program,
            data_dir: data_dir.path().to_owned(),
            log_dir,
            secret: new_secret(),
            operator_token,
            // Replaced once the controller tells us its port.
            controller: ControllerClient::new("http://127.0.0.1:0")?,
            config,
        };

        match launch(&mut launcher).await {
            Ok((controller, slots)) => Ok(Cluster {
                slots,
                controller,
                launcher,
                data_dir: Some(data_dir),
            }),
            Err(e) => {
                // Every process is dead by now. The error quotes the end of one log; the
                // whole of every log is what the developer will want next.
                if let (DataDir::Temp(temp), Some(_)) = (data_dir, e.log_path()) {
                    let kept = temp.keep();
                    eprintln!(
                        "lab: the cluster did not start; its data dir and logs are kept in {}",
                        kept.display()
                    );
                }
                Err(e)
            }
        }
    }

    /// The controller's HTTP base URL.
    pub fn controller_url(&self) -> &str {
        self.launcher.controller.base()
    }

    /// A handle on the controller's API (nodes, health, waits).
    pub fn controller(&self) -> &ControllerClient {
        &self.launcher.controller
    }

    /// The controller's pid.
    pub fn controller_pid(&self) -> u32 {
        self.controller.pid()
    }

    /// The cluster's secret (`CHAT_SECRET`), e.g. to mint tokens in tests.
    pub fn secret(&self) -> &str {
        &self.launcher.secret
    }

    /// The operator's token (`CHAT_OPERATOR_TOKEN`) of this cluster's processes: send it as
    /// `Authorization: Bearer TOKEN` to read a process's `/metrics`, the controller's
    /// `/v1/nodes`, or a node's trace stream (`ws://…/trace?sample=N`, a WebSocket).
    pub fn operator_token(&self) -> &str {
        &self.launcher.operator_token
    }

    /// The data dir shared by every process.
    pub fn data_dir(&self) -> &Path {
        &self.launcher.data_dir
    }

    /// Where the processes' logs are.
    pub fn log_dir(&self) -> &Path {
        &self.launcher.log_dir
    }

    /// The configuration the cluster was started with.
    pub fn config(&self) -> &ClusterConfig {
        &self.launcher.config
    }

    /// Every node slot, as of the lab's last look (call [`Cluster::refresh`] to notice
    /// processes that died on their own).
    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.slots
            .iter()
            .enumerate()
            .map(|(i, s)| s.info(i))
            .collect()
    }

    /// One node slot.
    pub fn node(&self, index: usize) -> Result<NodeInfo, LabError> {
        Ok(self.slot(index)?.info(index))
    }

    /// The slot whose name (`n2`) or current node id (`n2-r1`) this is.
    pub fn find_node(&self, name_or_id: &str) -> Option<NodeInfo> {
        self.nodes()
            .into_iter()
            .find(|n| n.name == name_or_id || n.id.as_str() == name_or_id)
    }

    /// The log file of a slot's latest process.
    pub fn node_log(&self, index: usize) -> Result<PathBuf, LabError> {
        Ok(self.slot(index)?.node.process.log_path().to_owned())
    }

    /// The controller's log file.
    pub fn controller_log(&self) -> &Path {
        self.controller.log_path()
    }

    /// Reaps processes that ended on their own and returns the slots, up to date.
    pub fn refresh(&mut self) -> Vec<NodeInfo> {
        for slot in &mut self.slots {
            slot.node.process.try_status();
        }
        self.controller.try_status();
        self.nodes()
    }

    /// Whether the controller process still runs.
    pub fn controller_running(&mut self) -> bool {
        self.controller.is_running()
    }

    fn slot(&self, index: usize) -> Result<&Slot, LabError> {
        self.slots.get(index).ok_or(LabError::NoSuchSlot {
            index,
            count: self.slots.len(),
        })
    }

    fn running_slot(&mut self, index: usize) -> Result<&mut Slot, LabError> {
        let count = self.slots.len();
        let slot = self
            .slots
            .get_mut(index)
            .ok_or(LabError::NoSuchSlot { index, count })?;
        if !slot.node.process.is_running() {
            return Err(LabError::NotRunning {
                name: slot.node.id.to_string(),
            });
        }
        Ok(slot)
    }

    /// Kills a node with SIGKILL (a crash) and reaps it. The registry notices on its own; use
    /// [`Cluster::wait_node_gone`] to wait for that.
    pub async fn kill_node(&mut self, index: usize) -> Result<Exit, LabError> {
        let slot = self.running_slot(index)?;
        let exit = slot.node.process.kill().await?;
        slot.ended_by = Some(EndedBy::Kill);
        Ok(exit)
    }

    /// Freezes a node with SIGSTOP: its process and sockets stay, but it sends no heartbeat
    /// and serves nobody, so the registry drops it when its lease runs out (a hung node, as
    /// opposed to a crashed one). [`Cluster::resume_node`] lets it run again.
    pub fn pause_node(&mut self, index: usize) -> Result<(), LabError> {
        self.running_slot(index)?.node.process.pause()
    }

    /// Lets a paused node run again (SIGCONT). What it does then (re-register, or notice it
    /// lost its lease and exit) is up to the server.
    pub fn resume_node(&mut self, index: usize) -> Result<(), LabError> {
        self.running_slot(index)?.node.process.resume()
    }

    /// Stops a node with SIGTERM (it drains and deregisters) and waits for it to exit, at most
    /// `config.stop_timeout`; past that it is killed and this fails with
    /// [`LabError::StopTimeout`].
    pub async fn stop_node(&mut self, index: usize) -> Result<Exit, LabError> {
        let limit = self.launcher.config.stop_timeout;
        let slot = self.running_slot(index)?;
        slot.ended_by = Some(EndedBy::Stop);
        slot.node.process.stop(limit).await
    }

    /// Starts a fresh process in a slot, with a fresh node id (`n2-r1`), and waits until it is
    /// live. A process still running in the slot is stopped gracefully first.
    pub async fn restart_node(&mut self, index: usize) -> Result<NodeInfo, LabError> {
        let count = self.slots.len();
        let slot = self
            .slots
            .get_mut(index)
            .ok_or(LabError::NoSuchSlot { index, count })?;
        if slot.node.process.is_running() {
            self.stop_node(index).await?;
        }
        let (name, restarts) = {
            let slot = self.slot(index)?;
            (slot.name.clone(), slot.restarts + 1)
        };
        // A node starting behind a cut proxy could not register: restarting gives the slot
        // its bus back.
        let slot = self.slot(index)?;
        if let Some(p) = &slot.proxy {
            p.restore();
        }
        let node = self
            .launcher
            .start_node(node_id(&name, restarts)?, slot.proxy.as_ref())
            .await?;
        let slot = self
            .slots
            .get_mut(index)
            .ok_or(LabError::NoSuchSlot { index, count: 0 })?;
        slot.restarts = restarts;
        slot.node = node;
        slot.ended_by = None;
        Ok(slot.info(index))
    }

    /// Starts a node in a new slot and waits until it is live.
    pub async fn add_node(&mut self) -> Result<NodeInfo, LabError> {
        self.add_node_with_args(&[]).await
    }

    /// Starts a node in a new slot with extra arguments for it alone (a test's fault
    /// injection, a different rate limit…) and waits until it is live. A restart of that slot
    /// starts a plain node.
    pub async fn add_node_with_args(&mut self, extra: &[String]) -> Result<NodeInfo, LabError> {
        let index = self.slots.len();
        let name = slot_name(index);
        let proxy = self.launcher.proxy().await?;
        let node = self
            .launcher
            .start_node_with(node_id(&name, 0)?, extra, proxy.as_ref())
            .await?;
        self.slots.push(Slot {
            name,
            restarts: 0,
            node,
            ended_by: None,
            proxy,
        });
        self.node(index)
    }

    /// Cuts a node's connection to its bus: the [`CutProxy`] in front of it closes every
    /// connection and refuses new ones. The node keeps running and serving its devices; what
    /// it does about its bus (retry, catch up afterwards) is the server's own behaviour. With
    /// the embedded bus this is the node's link to the controller, registry included, so the
    /// controller drops the node until the link is back.
    pub fn cut_bus(&mut self, index: usize) -> Result<(), LabError> {
        self.proxy_of(index)?.cut();
        Ok(())
    }

    /// Gives a node its bus connection back (it reconnects by itself).
    pub fn restore_bus(&mut self, index: usize) -> Result<(), LabError> {
        self.proxy_of(index)?.restore();
        Ok(())
    }

    fn proxy_of(&self, index: usize) -> Result<&CutProxy, LabError> {
        let slot = self.slot(index)?;
        slot.proxy.as_ref().ok_or_else(|| LabError::NotCuttable {
            name: slot.node.id.to_string(),
            why: "the cluster was started without proxies in front of the bus \
                  (ClusterConfig::cuttable_bus)"
                .into(),
        })
    }

    /// Switches the cluster to `routing`: every running node is restarted in turn with it
    /// (each drains first, so its devices move to the others). The controller keeps the
    /// routing it started with for its own publishes (membership changes, revocations).
    pub async fn set_routing(&mut self, routing: Routing) -> Result<Vec<NodeInfo>, LabError> {
        self.launcher.config.backends.routing = routing;
        for index in 0..self.slots.len() {
            if self.slots[index].node.process.is_running() {
                self.restart_node(index).await?;
            }
        }
        Ok(self.nodes())
    }

    /// `GET /v1/nodes`.
    pub async fn nodes_status(&self) -> Result<NodesResponse, LabError> {
        self.launcher.controller.nodes().await
    }

    /// Polls `/v1/nodes` until `id` is gone; returns how long that took.
    pub async fn wait_node_gone(&self, id: &NodeId, limit: Duration) -> Result<Duration, LabError> {
        self.launcher.controller.wait_node_gone(id, limit).await
    }

    /// Polls `/v1/nodes` until exactly `count` nodes are live.
    pub async fn wait_nodes_live(
        &self,
        count: usize,
        limit: Duration,
    ) -> Result<Vec<NodeStatus>, LabError> {
        self.launcher.controller.wait_nodes_live(count, limit).await
    }

    /// Stops the cluster gracefully: SIGTERM to every running node at once, wait for them, then
    /// the controller. Everything is ended either way; the result is an error if any process
    /// had to be killed or exited with a failure status.
    pub async fn shutdown(mut self) -> Result<Vec<Exit>, LabError> {
        let limit = self.launcher.config.stop_timeout;
        let mut running = Vec::new();
        for slot in &mut self.slots {
            if slot.node.process.is_running() {
                slot.ended_by = Some(EndedBy::Stop);
                running.push(&mut slot.node.process);
            }
        }
        let results =
            futures::future::join_all(running.into_iter().map(|p| p.terminate(limit))).await;
        let mut exits = Vec::new();
        let mut failures = Vec::new();
        for r in results {
            match r {
                Ok(exit) => exits.push(exit),
                Err(e) => failures.push(e.to_string()),
            }
        }
        match self.controller.terminate(limit).await {
            Ok(exit) => exits.push(exit),
            Err(e) => failures.push(e.to_string()),
        }
        for exit in exits.iter().filter(|e| !e.is_clean()) {
            let log = self.launcher.log_dir.join(format!("{}.log", exit.name));
            failures.push(format!(
                "{exit}\n--- last lines of {} ---\n{}\n---",
                log.display(),
                crate::process::read_tail(&log, crate::process::LOG_TAIL_LINES)
            ));
        }
        if failures.is_empty() {
            Ok(exits)
        } else {
            Err(LabError::UncleanShutdown {
                summary: failures.join("\n"),
            })
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Nodes first, so that none of them sees the controller vanish and starts reconnecting;
        // each `ServerProcess` drop SIGKILLs and reaps.
        self.slots.clear();
        self.controller.kill_now();
        // The temp dir (if any) is removed when `self.data_dir` drops, right after this; a
        // failing test is easier to understand with its servers' logs, so then it stays.
        if std::thread::panicking()
            && let Some(DataDir::Temp(temp)) = self.data_dir.take()
        {
            let kept = temp.keep();
            eprintln!(
                "lab: keeping the cluster's data dir and logs for the failed test: {}",
                kept.display()
            );
        }
    }
}

/// `n1` for slot 0.
fn slot_name(index: usize) -> String {
    format!("n{}", index + 1)
}

/// `n1` for the first process of slot `n1`, `n1-r2` for its second restart.
fn node_id(name: &str, restarts: u32) -> Result<NodeId, LabError> {
    let id = if restarts == 0 {
        name.to_owned()
    } else {
        format!("{name}-r{restarts}")
    };
    NodeId::new(&id).map_err(|e| LabError::io(format!("node id {id}"), std::io::Error::other(e)))
}

/// Writes `content` to `path`, readable and writable by its owner only.
fn write_private(path: &Path, content: &str) -> Result<(), LabError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e| LabError::io(format!("writing {}", path.display()), e);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(content.as_bytes()).map_err(io)
}

/// 32 random bytes as hex: a fresh secret per cluster, so tokens of one cluster mean nothing to
/// another.
fn new_secret() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Which slot a command's `N` names: a 1-based slot number, a slot name or a node id.
pub fn resolve_target(target: &str, nodes: &[NodeInfo]) -> Result<usize, String> {
    if let Ok(n) = target.parse::<usize>() {
        return if (1..=nodes.len()).contains(&n) {
            Ok(n - 1)
        } else {
            Err(format!("no node {n}: slots are 1 to {}", nodes.len()))
        };
    }
    nodes
        .iter()
        .find(|n| n.name == target || n.id.as_str() == target)
        .map(|n| n.index)
        .ok_or_else(|| format!("no node {target:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn every_process_gets_a_share_of_the_cores_and_at_least_one_thread() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(worker_threads(0), cores);
        assert!(worker_threads(3) >= 1);
        assert!(worker_threads(3) * 4 <= cores.max(4));
        assert_eq!(worker_threads(10_000), 1);
    }

    #[test]
    fn default_controller_command() {
        let c = ClusterConfig::new(3);
        assert_eq!(
            strings(c.controller_command(Path::new("/d"))).join(" "),
            "controller --listen 127.0.0.1:0 --data-dir /d --registry embedded --bus embedded \
             --routing routed"
        );
    }

    #[test]
    fn node_command_with_every_option() {
        let mut c = ClusterConfig::new(3);
        c.backends = Backends {
            store: Some("postgres://127.0.0.1/chat".into()),
            registry: "redis://127.0.0.1:6379".into(),
            bus: "amqp://127.0.0.1:5672".into(),
            routing: Routing::Fanout,
        };
        c.lease_ms = Some(1500);
        c.node_args = vec!["--rate-per-sec".into(), "1000".into()];
        c.controller_args = vec!["--password-hash".into(), "fast".into()];
        let id = NodeId::new("n2-r1").expect("id");
        assert_eq!(
            strings(c.node_command(Path::new("/d"), "http://127.0.0.1:9", &id)).join(" "),
            "node --listen 127.0.0.1:0 --controller http://127.0.0.1:9 --data-dir /d \
             --store postgres://127.0.0.1/chat --registry redis://127.0.0.1:6379 \
             --bus amqp://127.0.0.1:5672 --routing fanout --lease-ms 1500 --id n2-r1 \
             --rate-per-sec 1000"
        );
        assert!(
            strings(c.controller_command(Path::new("/d")))
                .join(" ")
                .ends_with("--lease-ms 1500 --password-hash fast")
        );
    }

    #[test]
    fn node_ids_are_predictable() {
        assert_eq!(slot_name(0), "n1");
        assert_eq!(
            node_id("n1", 0).map(|i| i.to_string()).ok().as_deref(),
            Some("n1")
        );
        assert_eq!(
            node_id("n3", 2).map(|i| i.to_string()).ok().as_deref(),
            Some("n3-r2")
        );
    }

    #[test]
    fn secrets_are_fresh() {
        let (a, b) = (new_secret(), new_secret());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }

    #[tokio::test]
    async fn missing_binary_fails_clearly() {
        let mut c = ClusterConfig::new(1);
        c.server_bin = Some("/nonexistent/server".into());
        let err = Cluster::start(c).await.err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.starts_with("cannot start controller (/nonexistent/server)")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_fake_server_that_never_registers_is_reported() {
        // A stand-in for the server: the controller part answers nothing over HTTP, so the
        // health check must time out and quote the log.
        let dir = tempfile::tempdir().expect("temp dir");
        let fake = dir.path().join("fake-server");
        std::fs::write(
            &fake,
            "#!/bin/sh\necho \"fake $1 starting\" >&2\n\
             echo 'CHAT_READY {\"role\":\"controller\",\"http_url\":\"http://127.0.0.1:9\",\"pid\":1}'\n\
             exec sleep 30\n",
        )
        .expect("write fake");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let mut c = ClusterConfig::new(1);
        c.server_bin = Some(fake);
        c.ready_timeout = Duration::from_millis(400);
        let err = match Cluster::start(c).await {
            Ok(_) => panic!("a server that never answers was taken as healthy"),
            Err(e) => e,
        };
        let log = err.log_path().map(Path::to_owned);
        let err = err.to_string();
        assert!(err.starts_with("controller not ready after"), "{err}");
        assert!(err.contains("fake controller starting"), "{err}");
        // The failed cluster's data dir was kept for reading; this test has read enough.
        let data_dir = log.as_deref().and_then(Path::parent).and_then(Path::parent);
        assert!(data_dir.is_some_and(|d| d.join("logs/controller.log").is_file()));
        if let Some(d) = data_dir {
            std::fs::remove_dir_all(d).expect("remove the kept data dir");
        }
    }
}
