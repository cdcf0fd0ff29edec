//! Starting a cluster's processes: the controller, then the nodes in parallel, each one live
//! in `/v1/nodes` before it counts; and the slots that hold them.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Instant;

use protocol::NodeId;
use rand::Rng;

use super::{
    ClusterConfig, NODE_KEYS_ENV, NodeInfo, OPERATOR_TOKEN_ENV, ProcessState, TOKEN_KEYS_ENV,
};
use crate::LabError;
use crate::process::{ProcessSpec, ServerProcess};
use crate::proxy::CutProxy;
use crate::status::ControllerClient;

/// A node process that became ready.
#[derive(Debug)]
pub(super) struct NodeProcess {
    pub(super) id: NodeId,
    pub(super) ws_url: String,
    pub(super) http_url: String,
    pub(super) process: ServerProcess,
}

/// How the lab ended a slot's process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum EndedBy {
    Kill,
    Stop,
}

#[derive(Debug)]
pub(super) struct Slot {
    pub(super) name: String,
    /// Restarts so far: the next process is `<name>-r<restarts + 1>`.
    pub(super) restarts: u32,
    pub(super) node: NodeProcess,
    pub(super) ended_by: Option<EndedBy>,
    /// Between the node and its bus, when the cluster's bus can be cut. It outlives restarts.
    pub(super) proxy: Option<CutProxy>,
}

impl Slot {
    pub(super) fn info(&self, index: usize) -> NodeInfo {
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
pub(super) struct Launcher {
    pub(super) config: ClusterConfig,
    pub(super) program: PathBuf,
    pub(super) data_dir: PathBuf,
    pub(super) log_dir: PathBuf,
    /// The user-token and node-admission rings (`ID:KEY`), unless the config's env has keys.
    pub(super) keys: Option<(String, String)>,
    pub(super) operator_token: String,
    pub(super) controller: ControllerClient,
}

impl Launcher {
    fn spec(&self, name: &str, args: Vec<OsString>) -> ProcessSpec {
        // Inherited CHAT_* variables would silently change the servers' backends (they read
        // e.g. CHAT_BUS when a flag is absent): a lab cluster is configured by its config only.
        let env_remove = std::env::vars_os()
            .map(|(k, _)| k)
            .filter(|k| k.to_string_lossy().starts_with("CHAT_"))
            .collect();
        let mut env: Vec<(OsString, OsString)> = vec![(
            OPERATOR_TOKEN_ENV.into(),
            self.operator_token.clone().into(),
        )];
        if let Some((tokens, nodes)) = &self.keys {
            env.push((TOKEN_KEYS_ENV.into(), tokens.into()));
            env.push((NODE_KEYS_ENV.into(), nodes.into()));
        }
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
    pub(super) async fn proxy(&self) -> Result<Option<CutProxy>, LabError> {
        if !self.config.cuttable_bus {
            return Ok(None);
        }
        let bus = &self.config.backends.bus;
        if bus.starts_with("kafka://") {
            // A Kafka client asks its first broker where the brokers are and connects there:
            // a proxy would carry only that first question. Such a node is not cuttable.
            return Ok(None);
        }
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
    pub(super) async fn start_node(
        &self,
        id: NodeId,
        proxy: Option<&CutProxy>,
    ) -> Result<NodeProcess, LabError> {
        self.start_node_with(id, &[], proxy).await
    }

    /// Starts a node with extra arguments for it alone (after the cluster-wide ones), through
    /// `proxy` to its bus when there is one.
    pub(super) async fn start_node_with(
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
pub(super) async fn launch(
    launcher: &mut Launcher,
) -> Result<(ServerProcess, Vec<Slot>), LabError> {
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

/// `n1` for slot 0.
pub(super) fn slot_name(index: usize) -> String {
    format!("n{}", index + 1)
}

/// `n1` for the first process of slot `n1`, `n1-r2` for its second restart.
pub(super) fn node_id(name: &str, restarts: u32) -> Result<NodeId, LabError> {
    let id = if restarts == 0 {
        name.to_owned()
    } else {
        format!("{name}-r{restarts}")
    };
    NodeId::new(&id).map_err(|e| LabError::io(format!("node id {id}"), std::io::Error::other(e)))
}

/// Creates `dir` if missing and makes it its owner's alone (0700): it holds the cluster's
/// history, operator token and logs.
pub(super) fn private_dir(dir: &Path) -> Result<(), LabError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let io = |e| LabError::io(format!("creating data dir {}", dir.display()), e);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)
}

/// Writes `content` to `path`, readable and writable by its owner only.
pub(super) fn write_private(path: &Path, content: &str) -> Result<(), LabError> {
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
pub(super) fn new_secret() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_process_gets_a_share_of_the_cores_and_at_least_one_thread() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(worker_threads(0), cores);
        assert!(worker_threads(3) >= 1);
        assert!(worker_threads(3) * 4 <= cores.max(4));
        assert_eq!(worker_threads(10_000), 1);
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
}
