//! The benchmark (`bench`): drives a local cluster with virtual users and reports what it
//! costs — memory per idle connection, then cross-node direct messages at fixed open-loop
//! rates: rate achieved, delivery latency percentiles, messages lost, server CPU per message.
//! The same generator drives, side by side, the systems ours is compared with.
//!
//! Code map:
//! - [`generator`]: the virtual users, their pairing across nodes, the open-loop load phases,
//!   and [`Prepared`], a system ready for them.
//! - [`ours`]: this project's cluster (started by the lab's supervisor) as the generator
//!   drives it.
//! - [`peer`]: the Socket.IO + Redis-adapter cluster in `bench/socketio-peer/` (`--peer`).
//! - [`floor`]: bare relay nodes that only persist and forward (`--floor`): the least a
//!   cluster that persists each message before acknowledging it costs on this machine; its
//!   node process is this binary again.
//! - [`procs`]: what is read from `/proc`: CPU by process group, resident memory, load.
//! - [`report`]: each phase's figures and the tables that set the systems side by side.
//!
//! Invariant: every message of a phase is counted — delivered with its latency, or lost —
//! and the server CPU counted is that of every process of the system measured (and of the
//! outside servers named), so that the figures of different systems compare.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let config = bench::BenchConfig {
//!     users: 600,
//!     rates: vec![2000, 4000],
//!     phase: std::time::Duration::from_secs(10),
//!     idle: 0,
//!     external: Vec::new(),
//! };
//! let cluster = lab::Cluster::start(lab::ClusterConfig::new(3)).await?;
//! // Anything may watch the cluster from here on: the users connect only now.
//! let ours = bench::ours::prepare(&cluster, &config).await?;
//! for (i, &rate) in config.rates.iter().enumerate() {
//!     let report = bench::run_phase(&ours, &config, i as u64 + 1, rate).await?;
//!     println!("{}", bench::report::format_phase(&report));
//! }
//! drop(ours);
//! cluster.shutdown().await?;
//! # Ok(()) }
//! ```

pub mod floor;
pub mod generator;
pub mod ours;
pub mod peer;
pub mod procs;
pub mod report;

pub use generator::{BenchConfig, Prepared, run_phase, side_by_side};
pub use report::{MemoryReport, Outcome, PhaseReport};
