//! How to start a cluster ([`ClusterConfig`], [`Backends`]) and the command lines of its
//! processes.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::NodeId;
use protocol::bus::Routing;

/// The environment variable a server process derives both its keys from when their own
/// variables are not set (the desktop app's local cluster keeps one for the life of its data
/// dir).
pub const SECRET_ENV: &str = "CHAT_SECRET";

/// The environment variable of the user-token key ring (`ID:KEY[,ID:KEY…]`).
pub const TOKEN_KEYS_ENV: &str = "CHAT_TOKEN_KEYS";

/// The environment variable of the node-admission key ring (`ID:KEY[,ID:KEY…]`).
pub const NODE_KEYS_ENV: &str = "CHAT_NODE_KEYS";

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
    /// [`crate::process::ProcessSpec::own_process_group`]): on for the interactive CLI, off for tests.
    pub own_process_groups: bool,
    /// Put a [`crate::proxy::CutProxy`] between each node and its bus, so that
    /// [`crate::Cluster::cut_bus`] can cut
    /// one node's bus connection while it keeps running. With the embedded bus the proxy sits
    /// on the node's link to the controller, which carries the embedded registry too.
    pub cuttable_bus: bool,
    /// Start every process with `--teaching`, so that the lab can turn teaching modes on (see
    /// [`protocol::teaching`]); the lessons' clusters, never a test's unless it is about them.
    pub teaching: bool,
    /// The teaching mode nodes start in (`--teaching-mode`; the shared queue is chosen so).
    pub teaching_at_start: Option<protocol::teaching::Teaching>,
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
            teaching: false,
            teaching_at_start: None,
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
        if self.teaching {
            args.push("--teaching".into());
        }
        args
    }

    /// The controller's command line (after the program).
    pub fn controller_command(&self, data_dir: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["controller".into(), "--listen".into(), LISTEN.into()];
        // Every client of a lab cluster comes from this machine (the lab's virtual users, the
        // tests' hundreds of devices): the limit per address would throttle them all as one.
        // The limit on failed logins per account stays. `controller_args` may override this.
        args.extend(["--auth-per-address".into(), "1000000".into()]);
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
    /// [`crate::proxy::CutProxy`]'s, when the bus can be cut).
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
        // A lab's login storm (`Op::Burst`) is one user's devices by the hundred: the cap on
        // one user's sockets per node would turn it away. The cap per device stays.
        // `node_args` may override this.
        args.extend(["--sockets-per-user".into(), "100000".into()]);
        if let (true, Some(mode)) = (self.teaching, self.teaching_at_start) {
            args.extend(["--teaching-mode".into(), mode.as_str().into()]);
        }
        args.extend(self.node_args.iter().map(OsString::from));
        args
    }
}

/// Loopback only, port 0: the lab never exposes anything and never guesses a port.
const LISTEN: &str = "127.0.0.1:0";

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn default_controller_command() {
        let c = ClusterConfig::new(3);
        assert_eq!(
            strings(c.controller_command(Path::new("/d"))).join(" "),
            "controller --listen 127.0.0.1:0 --auth-per-address 1000000 --data-dir /d \
             --registry embedded --bus embedded --routing routed"
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
             --sockets-per-user 100000 --rate-per-sec 1000"
        );
        assert!(
            strings(c.controller_command(Path::new("/d")))
                .join(" ")
                .ends_with("--lease-ms 1500 --password-hash fast")
        );
    }
}
