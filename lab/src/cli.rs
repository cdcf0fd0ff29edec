//! The command-line flags that describe a local cluster, shared by `lab up` and the benchmark
//! (`bench`), which starts its clusters through the same supervisor.

use std::path::PathBuf;

use clap::Args;

use crate::{Backends, ClusterConfig, Routing};

/// Logs to stderr, at `warn` unless `RUST_LOG` says otherwise: what the lab's and the
/// benchmark's binaries do first.
pub fn log_to_stderr() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// `--nodes`, `--store`, `--registry`, `--bus`, `--routing`, ...: a [`ClusterConfig`].
#[derive(Args, Clone, Debug)]
pub struct ClusterArgs {
    /// Nodes to start.
    #[arg(long, short = 'n', default_value_t = 3)]
    pub nodes: usize,
    /// Data dir shared by the processes (kept afterwards). Default: a temp dir, removed at exit.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Keep the temp data dir (and the logs in it) at exit.
    #[arg(long)]
    pub keep: bool,
    /// Where the processes' logs go. Default: <data dir>/logs.
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// History store: sqlite://PATH or postgres://… (default: SQLite in the data dir).
    #[arg(long)]
    pub store: Option<String>,
    /// Registry: embedded, redis://HOST:PORT or zookeeper://HOST:PORT.
    #[arg(long, default_value = "embedded")]
    pub registry: String,
    /// Bus between nodes: embedded, redis://… or amqp://….
    #[arg(long, default_value = "embedded")]
    pub bus: String,
    /// routed (only nodes holding a recipient) or fanout (every node).
    #[arg(long, default_value_t = Routing::Routed)]
    pub routing: Routing,
    /// Node lease in milliseconds (server default: 5000).
    #[arg(long)]
    pub lease_ms: Option<u64>,
    /// The server binary (default: $CHAT_SERVER_BIN, else beside this binary).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Start every process with --teaching, so that teaching modes (which break a guarantee
    /// on purpose, for a class) can be turned on. Never for a cluster people chat on.
    #[arg(long)]
    pub teaching: bool,
}

impl ClusterArgs {
    /// The cluster these flags describe.
    pub fn config(self) -> ClusterConfig {
        let mut config = ClusterConfig::new(self.nodes);
        config.data_dir = self.data_dir;
        config.keep_data_dir = self.keep;
        config.log_dir = self.log_dir;
        config.backends = Backends {
            store: self.store,
            registry: self.registry,
            bus: self.bus,
            routing: self.routing,
        };
        config.lease_ms = self.lease_ms;
        config.server_bin = self.server_bin;
        config.teaching = self.teaching;
        config
    }
}
