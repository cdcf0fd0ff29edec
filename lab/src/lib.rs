//! The lab's supervisor: starts, kills and watches local chat clusters (one controller and N
//! nodes, each a real `server` process), for teaching clustering in front of a class and for
//! the process-level tests in `tests/`.
//!
//! Code map:
//! - [`process`]: one supervised child: spawn, ready line, log file, signals, reaping, and
//!   the kill-on-drop that keeps tests from leaking servers.
//! - [`cluster`]: [`ClusterConfig`] and [`Cluster`]: a controller plus node slots, and the
//!   operations a class or a test performs on them (kill, stop, restart, add, shutdown).
//! - [`find`]: where the `server` binary is.
//! - `error`: [`LabError`], what went wrong, with the tail of the log of the process concerned.
//! - [`status`]: asking the controller (`/healthz`, `/v1/nodes`), polling it until a condition
//!   holds, and formatting what it says.
//! - [`proxy`]: the TCP proxy between a node and its bus, which cuts the connection for real
//!   ([`Cluster::cut_bus`]).
//! - [`users`]: virtual users, each device a real client core, talking at a rate; what each
//!   device saw.
//! - [`checker`]: the live checker: lost, duplicate and out-of-order deliveries per device and
//!   conversation, latency, msgs-per-op, failover times. No task, no clock: usable headless.
//! - [`observe`]: the merged `/trace` streams of every node and the controller.
//! - [`world`]: the lab's picture of a run, fed by all of the above; panel frames and reports.
//! - [`lessons`]: each article's mistake and its fix as a script of steps on a live lab, with
//!   the checker's verdicts; `lab lesson` runs them headless.
//! - [`control`]: [`control::Lab`], a running lab: the task that owns the cluster and carries
//!   out operations one at a time, the pollers and the observer. What the panel, the console,
//!   lessons and tests drive.
//! - [`report`]: a run's report as one self-contained HTML page with its plots.
//! - `panel` (feature `panel`, on by default): the web server of the panel — its assets
//!   (built in `lab/panel/`, embedded), its WebSocket stream, operations and report.
//! - [`teach`]: teaching modes turned on and off in a cluster started with `--teaching`.
//! - [`stacks`]: backend sets a lab can restart its cluster on, and whether they run here.
//! - `console` (feature `console`, on by default): the interactive `lab up` session and `lab
//!   status` (the binary is a thin wrapper around it).
//! - `cli` (feature `console`): the flags that describe a cluster, shared with the benchmark.
//!
//! The benchmark, which starts its clusters through this supervisor, is the `bench` crate.
//!
//! Invariant: the lab never sleeps and hopes. Every wait polls the process (its ready line, its
//! exit) or the controller, and has a deadline whose error quotes the relevant log.
//!
//! ```no_run
//! # async fn demo() -> Result<(), lab::LabError> {
//! use std::time::Duration;
//! let mut cluster = lab::Cluster::start(lab::ClusterConfig::new(3)).await?;
//! let victim = cluster.node(1)?.id;
//! cluster.kill_node(1).await?;
//! cluster.wait_node_gone(&victim, Duration::from_secs(10)).await?;
//! cluster.restart_node(1).await?;
//! cluster.shutdown().await?;
//! # Ok(()) }
//! ```

pub mod checker;
#[cfg(feature = "console")]
pub mod cli;
pub mod cluster;
#[cfg(feature = "console")]
pub mod console;
pub mod control;
mod error;
pub mod find;
pub mod lessons;
pub mod observe;
#[cfg(feature = "panel")]
pub mod panel;
pub mod process;
pub mod proxy;
pub mod report;
pub mod stacks;
pub mod status;
pub mod teach;
pub mod users;
pub mod world;

pub use cluster::{Backends, Cluster, ClusterConfig, NodeInfo, ProcessState};
pub use error::LabError;
pub use process::Exit;
pub use protocol::bus::Routing;
pub use status::ControllerClient;

/// Microseconds since the Unix epoch: the lab's clock, which the nodes on this machine share
/// (their trace events carry the same), so that steps on devices and nodes line up.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}
