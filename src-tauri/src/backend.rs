//! The server the app talks to: a local cluster the app starts itself (the lab supervisor, three
//! nodes on the embedded backends, the `server` binary shipped beside the app as a sidecar), or
//! a controller URL. Its readiness is a `watch` channel, so commands wait for a cluster that is
//! still starting instead of failing.
//!
//! Invariants:
//! - A local cluster's data dir (`<data>/cluster`) and secret persist, so accounts, history and
//!   saved sessions survive restarts of the app; only the ports change.
//! - The app stops the cluster it started when it quits ([`Backend::shutdown`], also on SIGTERM
//!   and SIGINT). If the app is killed outright, `cluster.json` still names the orphaned
//!   processes, and the next start kills those that still run on this data dir before
//!   starting fresh ones.

use std::path::PathBuf;
use std::time::Duration;

use lab::{Cluster, ClusterConfig, ProcessState};
use protocol::http::{NodeState, NodeStatus};
use serde::Serialize;
use tokio::sync::{Mutex, watch};

use crate::error::{Error, Result};
use crate::store::{self, Paths, ServerChoice};

/// Nodes in the local cluster.
const LOCAL_NODES: usize = 3;
/// How long a command waits for a starting cluster before giving up.
const READY_WAIT: Duration = Duration::from_secs(90);
/// How long a graceful stop of the cluster may take when the app quits.
const STOP_WAIT: Duration = Duration::from_secs(8);
/// The file name of the sidecar beside the app binary (Tauri strips the target triple).
const SIDECAR: &str = "chat-server";

/// Where the server stands, as the UI shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum ServerState {
    /// First run: nothing chosen yet.
    Unset,
    /// The local cluster is starting.
    Starting {
        /// What was chosen.
        choice: ServerChoice,
    },
    /// The controller's URL is known.
    Ready {
        /// What was chosen.
        choice: ServerChoice,
        /// The controller's base URL.
        url: String,
    },
    /// The local cluster could not start.
    Failed {
        /// What was chosen.
        choice: ServerChoice,
        /// Why, for people.
        message: String,
    },
}

/// One node as the cluster panel shows it.
#[derive(Clone, Debug, Serialize)]
pub struct NodeView {
    /// Node id (`n2`, `n2-r1`).
    pub id: String,
    /// Slot name (`n2`), local clusters only.
    pub slot: Option<String>,
    /// `live`, `draining`, `killed`, `stopped`, `exited`, `paused`, `gone`.
    pub state: String,
    /// Devices connected, as the controller counts them.
    pub connections: u64,
    /// The process id, local clusters only.
    pub pid: Option<u32>,
    /// How the process ended (`SIGKILL`, `exit 0`), local clusters only.
    pub exit: Option<String>,
}

/// The cluster panel's view.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterView {
    /// Whether the app runs this cluster (and may kill and restart its nodes).
    pub local: bool,
    /// The controller's URL.
    pub controller: String,
    /// Its nodes.
    pub nodes: Vec<NodeView>,
}

/// What `cluster.json` says about a running local cluster.
#[derive(Serialize)]
struct ClusterFile<'a> {
    /// The app that runs the cluster (SIGTERM it to quit the app cleanly).
    app_pid: u32,
    controller: &'a str,
    controller_pid: u32,
    data_dir: PathBuf,
    nodes: Vec<ClusterFileNode>,
}

#[derive(Serialize)]
struct ClusterFileNode {
    id: String,
    slot: String,
    pid: u32,
    running: bool,
}

/// The server side of the app. Cheap to share behind an `Arc`.
pub struct Backend {
    paths: Paths,
    state: watch::Sender<ServerState>,
    /// The local cluster, when the app runs one. A tokio mutex: killing a node awaits.
    cluster: Mutex<Option<Cluster>>,
}

impl Backend {
    /// A backend with nothing started.
    pub fn new(paths: Paths) -> Self {
        Backend {
            paths,
            state: watch::Sender::new(ServerState::Unset),
            cluster: Mutex::new(None),
        }
    }

    /// The current state.
    pub fn state(&self) -> ServerState {
        self.state.borrow().clone()
    }

    /// Starts using `choice`: a remote URL is ready at once; a local cluster starts in the
    /// background (see [`Backend::url`] to wait for it). Does nothing if the same choice is
    /// already starting or ready.
    pub async fn start(&self, choice: ServerChoice) -> Result<()> {
        match self.state() {
            ServerState::Starting { choice: c } | ServerState::Ready { choice: c, .. }
                if c == choice =>
            {
                return Ok(());
            }
            _ => {}
        }
        match &choice {
            ServerChoice::Remote { url } => {
                // Parse only: an unreachable server is still the user's server, and the app
                // works offline from its cache until it answers.
                let api = client::Api::new(url)?;
                let url = api.base_url().trim_end_matches('/').to_owned();
                self.state.send_replace(ServerState::Ready {
                    choice: choice.clone(),
                    url,
                });
                Ok(())
            }
            ServerChoice::Local => {
                self.state.send_replace(ServerState::Starting {
                    choice: choice.clone(),
                });
                let started = self.start_local().await;
                match started {
                    Ok(url) => {
                        self.state.send_replace(ServerState::Ready { choice, url });
                        self.write_cluster_file().await;
                        Ok(())
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "local cluster failed to start");
                        self.state.send_replace(ServerState::Failed {
                            choice,
                            message: e.to_string(),
                        });
                        Err(e)
                    }
                }
            }
        }
    }

    async fn start_local(&self) -> Result<String> {
        let mut guard = self.cluster.lock().await;
        if let Some(cluster) = guard.as_ref() {
            return Ok(cluster.controller_url().to_owned());
        }
        let dir = self.paths.cluster_dir();
        std::fs::create_dir_all(&dir)?;
        reap_orphans(&self.paths.cluster_info(), &dir);
        let mut config = ClusterConfig::new(LOCAL_NODES);
        config.data_dir = Some(dir.clone());
        config.log_dir = Some(dir.join("logs"));
        config.server_bin = Some(server_binary().map_err(|e| Error::Cluster(e.to_string()))?);
        // A Ctrl-C in the terminal reaches the app alone, which then stops the nodes before
        // the controller (nodes stopped after it would find no registry). Servers of a run
        // killed outright are reaped at the next start (`cluster.json`).
        config.own_process_groups = true;
        // One secret for the life of the data dir, so saved sessions stay valid across runs.
        config
            .env
            .push((lab::cluster::SECRET_ENV.to_owned(), local_secret(&dir)?));
        if let Ok(cost) = std::env::var("CHAT_DESKTOP_PASSWORD_HASH") {
            // Test runs ask for a cheap hash; people never set this.
            config
                .controller_args
                .extend(["--password-hash".to_owned(), cost]);
        }
        let cluster = Cluster::start(config)
            .await
            .map_err(|e| Error::Cluster(e.to_string()))?;
        let url = cluster.controller_url().to_owned();
        tracing::info!(%url, "local cluster is up");
        *guard = Some(cluster);
        Ok(url)
    }

    /// The controller's URL, waiting for a starting cluster.
    pub async fn url(&self) -> Result<String> {
        let mut rx = self.state.subscribe();
        let wait = async {
            loop {
                match rx.borrow_and_update().clone() {
                    ServerState::Ready { url, .. } => return Ok(url),
                    ServerState::Failed { message, .. } => return Err(Error::NoServer(message)),
                    ServerState::Unset => {
                        return Err(Error::NoServer("no server has been chosen yet".into()));
                    }
                    ServerState::Starting { .. } => {}
                }
                if rx.changed().await.is_err() {
                    return Err(Error::NoServer("the app is shutting down".into()));
                }
            }
        };
        tokio::time::timeout(READY_WAIT, wait)
            .await
            .unwrap_or_else(|_| {
                Err(Error::NoServer(
                    "the local cluster is taking too long to start".into(),
                ))
            })
    }

    /// The URL if it is known now (no waiting).
    pub fn url_now(&self) -> Option<String> {
        match &*self.state.borrow() {
            ServerState::Ready { url, .. } => Some(url.clone()),
            _ => None,
        }
    }

    /// A receiver of state changes.
    pub fn watch(&self) -> watch::Receiver<ServerState> {
        self.state.subscribe()
    }

    /// Nodes as the controller (and, locally, the lab) sees them.
    /// `/v1/nodes` answers a token only: a local cluster's nodes are the app's own, so it asks
    /// with the cluster's operator token; a remote one with the calling window's device's.
    pub async fn cluster_view(
        &self,
        http: &reqwest::Client,
        device_api: Option<client::Api>,
    ) -> Result<ClusterView> {
        let url = self.url().await?;
        let operator = self
            .cluster
            .lock()
            .await
            .as_ref()
            .map(|c| c.operator_token().to_owned());
        let api = match (operator, device_api) {
            (Some(token), _) => client::Api::with_http(&url, http.clone())?.with_token(token),
            (None, Some(api)) => api,
            (None, None) => client::Api::with_http(&url, http.clone())?,
        };
        let registry = api.nodes().await.ok();
        let mut guard = self.cluster.lock().await;
        let Some(cluster) = guard.as_mut() else {
            let nodes = registry
                .map(|r| {
                    r.nodes
                        .iter()
                        .map(|n| registry_node(n, None, None))
                        .collect()
                })
                .unwrap_or_default();
            return Ok(ClusterView {
                local: false,
                controller: url,
                nodes,
            });
        };
        let slots = cluster.refresh();
        let nodes = slots
            .iter()
            .map(|slot| {
                let live = registry
                    .as_ref()
                    .and_then(|r| r.nodes.iter().find(|n| n.id == slot.id));
                let (process, exit) = match &slot.process {
                    ProcessState::Running => (None, None),
                    ProcessState::Paused => (Some("paused"), None),
                    ProcessState::Killed => (Some("killed"), Some("SIGKILL".to_owned())),
                    ProcessState::Stopped { status } => (
                        Some("stopped"),
                        Some(lab::process::describe_status(*status)),
                    ),
                    ProcessState::Exited { status } => {
                        (Some("exited"), Some(lab::process::describe_status(*status)))
                    }
                };
                match (live, process) {
                    (Some(n), None) => registry_node(n, Some(slot.name.clone()), Some(slot.pid)),
                    (live, process) => NodeView {
                        id: slot.id.to_string(),
                        slot: Some(slot.name.clone()),
                        state: process.unwrap_or("starting").to_owned(),
                        connections: live.map_or(0, |n| n.connections),
                        pid: Some(slot.pid),
                        exit,
                    },
                }
            })
            .collect();
        Ok(ClusterView {
            local: true,
            controller: url,
            nodes,
        })
    }

    /// SIGKILLs a node of the local cluster (as a crash would).
    pub async fn kill_node(&self, id: &str) -> Result<()> {
        {
            let mut guard = self.cluster.lock().await;
            let cluster = guard.as_mut().ok_or_else(not_local)?;
            let index = slot_of(cluster, id)?;
            cluster
                .kill_node(index)
                .await
                .map_err(|e| Error::Cluster(e.to_string()))?;
        }
        self.write_cluster_file().await;
        Ok(())
    }

    /// Starts a fresh process in a node's slot (it gets a new id, `n2-r1`).
    pub async fn restart_node(&self, id: &str) -> Result<()> {
        {
            let mut guard = self.cluster.lock().await;
            let cluster = guard.as_mut().ok_or_else(not_local)?;
            let index = slot_of(cluster, id)?;
            cluster
                .restart_node(index)
                .await
                .map_err(|e| Error::Cluster(e.to_string()))?;
        }
        self.write_cluster_file().await;
        Ok(())
    }

    /// Back to "no server chosen" (after [`Backend::shutdown`], when the user changes server).
    pub fn reset(&self) {
        self.state.send_replace(ServerState::Unset);
    }

    /// Stops the local cluster, if the app started one: gracefully within a few seconds, then
    /// by SIGKILL (dropping the cluster).
    pub async fn shutdown(&self) {
        let cluster = self.cluster.lock().await.take();
        if let Some(cluster) = cluster {
            match tokio::time::timeout(STOP_WAIT, cluster.shutdown()).await {
                Ok(Ok(_)) => tracing::info!("local cluster stopped"),
                Ok(Err(e)) => tracing::warn!(error = %e, "local cluster stopped uncleanly"),
                Err(_) => tracing::warn!("local cluster took too long to stop; killed"),
            }
            let _ = store::remove_file(&self.paths.cluster_info());
        }
    }

    /// Writes `cluster.json` (best effort: it is a convenience, not state).
    async fn write_cluster_file(&self) {
        let mut guard = self.cluster.lock().await;
        let Some(cluster) = guard.as_mut() else {
            return;
        };
        let nodes = cluster
            .refresh()
            .into_iter()
            .map(|n| ClusterFileNode {
                id: n.id.to_string(),
                slot: n.name,
                pid: n.pid,
                running: matches!(n.process, ProcessState::Running),
            })
            .collect();
        let file = ClusterFile {
            app_pid: std::process::id(),
            controller: cluster.controller_url(),
            controller_pid: cluster.controller_pid(),
            data_dir: cluster.data_dir().to_owned(),
            nodes,
        };
        if let Err(e) = store::write_json(&self.paths.cluster_info(), &file, false) {
            tracing::warn!(error = %e, "could not write cluster.json");
        }
    }
}

fn not_local() -> Error {
    Error::Invalid("only a local cluster's nodes can be killed or restarted from the app".into())
}

fn slot_of(cluster: &mut Cluster, id: &str) -> Result<usize> {
    cluster
        .find_node(id)
        .map(|n| n.index)
        .ok_or_else(|| Error::Invalid(format!("no node {id:?} in the local cluster")))
}

fn registry_node(n: &NodeStatus, slot: Option<String>, pid: Option<u32>) -> NodeView {
    NodeView {
        id: n.id.to_string(),
        slot,
        state: match n.state {
            NodeState::Live => "live",
            NodeState::Draining => "draining",
        }
        .to_owned(),
        connections: n.connections,
        pid,
        exit: None,
    }
}

/// The server binary for the local cluster: `$CHAT_SERVER_BIN` if set, else the sidecar
/// `chat-server` beside the app (a bundle, or a dev build after `scripts/desktop-sidecar.sh`),
/// else wherever the lab finds `server` (beside the app in a cargo target dir).
fn server_binary() -> std::result::Result<PathBuf, lab::LabError> {
    if std::env::var_os(lab::find::SERVER_BIN_ENV).is_none_or(|v| v.is_empty()) {
        let sidecar = std::env::current_exe().ok().and_then(|exe| {
            exe.parent()
                .map(|dir| dir.join(format!("{SIDECAR}{}", std::env::consts::EXE_SUFFIX)))
        });
        if let Some(path) = sidecar.filter(|p| p.is_file()) {
            return Ok(path);
        }
    }
    lab::find::server_binary()
}

/// The local cluster's secret, created once in its data dir (readable by the user only).
fn local_secret(dir: &std::path::Path) -> Result<String> {
    let path = dir.join("desktop-secret");
    match std::fs::read_to_string(&path) {
        Ok(s) if s.trim().len() >= 32 => return Ok(s.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    store::write_atomic(&path, secret.as_bytes(), true)?;
    Ok(secret)
}

/// Kills the processes a previous run of the app left behind (it was killed before it could
/// stop its cluster): those `cluster.json` names that still run `server` on this data dir.
fn reap_orphans(info: &std::path::Path, data_dir: &std::path::Path) {
    #[derive(serde::Deserialize)]
    struct Node {
        pid: u32,
    }
    #[derive(serde::Deserialize)]
    struct Previous {
        controller_pid: u32,
        nodes: Vec<Node>,
    }
    let Ok(Some(previous)) = store::read_json::<Previous>(info) else {
        return;
    };
    let pids = previous
        .nodes
        .iter()
        .map(|n| n.pid)
        .chain(std::iter::once(previous.controller_pid));
    for pid in pids {
        // Only a process whose command line names our data dir: pids get reused.
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let dir = data_dir.as_os_str().as_encoded_bytes();
        if cmdline.windows(dir.len()).any(|w| w == dir) {
            #[cfg(unix)]
            if let Ok(raw) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(raw),
                    nix::sys::signal::Signal::SIGKILL,
                );
                tracing::warn!(pid, "killed a server left over from a previous run");
            }
        }
    }
    let _ = store::remove_file(info);
}
