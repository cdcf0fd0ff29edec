//! A local cluster: one controller and N chat nodes, each a supervised [`ServerProcess`],
//! sharing a private data dir, two key rings (user tokens, node admission) and an operator token (which opens the processes' `/metrics`
//! and the nodes' `/trace` to the lab: see [`Cluster::operator_token`]).
//!
//! Nodes live in *slots*: slot 0 is named `n1`, slot 1 `n2`, and so on. The first process in a
//! slot takes the slot's name as its node id; a restart gets a fresh id (`n1-r1`, `n1-r2`),
//! because a node id is unique for the life of one process.
//!
//! Code map: [`config`] is how to start a cluster and the command lines it makes; `launch`
//! starts the processes (the controller, then the nodes in parallel, each live in `/v1/nodes`
//! before it counts); this module is the running cluster and what a class or a test does to it.
//!
//! Invariants:
//! - `Cluster::start` returns only once the controller answers `/healthz` and every node is
//!   live in `/v1/nodes`; each operation that starts a node returns only once it is live.
//! - Dropping a `Cluster` SIGKILLs and reaps every process still running, nodes first, before
//!   the data dir is removed.

mod config;
mod launch;

pub use config::{
    Backends, ClusterConfig, NODE_KEYS_ENV, OPERATOR_TOKEN_ENV, OPERATOR_TOKEN_FILE, SECRET_ENV,
    TOKEN_KEYS_ENV,
};

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use protocol::NodeId;
use protocol::bus::Routing;
use protocol::http::{NodeStatus, NodesResponse};

use crate::LabError;
use crate::process::{Exit, ServerProcess};
use crate::proxy::CutProxy;
use crate::status::ControllerClient;
use launch::{
    EndedBy, Launcher, Slot, launch, new_secret, node_id, private_dir, slot_name, write_private,
};

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
                private_dir(dir)?;
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
            // Separate keys for user tokens and node admission, unless the config's env
            // brings its own (a master secret that derives both, or the rings).
            keys: (!config
                .env
                .iter()
                .any(|(k, _)| [SECRET_ENV, TOKEN_KEYS_ENV, NODE_KEYS_ENV].contains(&k.as_str())))
            .then(|| {
                (
                    format!("lab:{}", new_secret()),
                    format!("lab:{}", new_secret()),
                )
            }),
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

    /// The user-token key ring the lab gave the processes (`CHAT_TOKEN_KEYS`, `ID:KEY`), e.g.
    /// to mint tokens in tests; `None` when the config's env brought its own keys.
    pub fn token_keys(&self) -> Option<&str> {
        self.launcher
            .keys
            .as_ref()
            .map(|(tokens, _)| tokens.as_str())
    }

    /// The node-admission key ring the lab gave the processes (`CHAT_NODE_KEYS`, `ID:KEY`), e.g.
    /// to seal what a test injects on the bus; `None` when the config's env brought its own.
    pub fn node_keys(&self) -> Option<&str> {
        self.launcher.keys.as_ref().map(|(_, nodes)| nodes.as_str())
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

    /// Holds everything through a node's bus connection for `delay`, both ways (zero: no
    /// delay): one path slower than the others.
    pub fn delay_bus(&mut self, index: usize, delay: Duration) -> Result<(), LabError> {
        self.proxy_of(index)?.set_delay(delay);
        Ok(())
    }

    /// Restarts every running node in turn in teaching mode `mode` chosen at start (or none);
    /// a cluster started with `teaching` only.
    pub async fn set_teaching_at_start(
        &mut self,
        mode: Option<protocol::teaching::Teaching>,
    ) -> Result<Vec<NodeInfo>, LabError> {
        self.launcher.config.teaching_at_start = mode;
        for index in 0..self.slots.len() {
            if self.slots[index].node.process.is_running() {
                self.restart_node(index).await?;
            }
        }
        Ok(self.nodes())
    }

    fn proxy_of(&self, index: usize) -> Result<&CutProxy, LabError> {
        let slot = self.slot(index)?;
        slot.proxy.as_ref().ok_or_else(|| LabError::NotCuttable {
            name: slot.node.id.to_string(),
            why: "no proxy stands in front of its bus: the cluster was started without \
                  (ClusterConfig::cuttable_bus), or its bus is Kafka, whose clients connect to \
                  the addresses the broker advertises"
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
