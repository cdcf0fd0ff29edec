//! The `bench` binary: starts a fresh local cluster (and, asked, the Socket.IO peer and the
//! floor), runs the generator against them, and prints their figures. Build it with
//! `--release` for meaningful figures.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use lab::cli::ClusterArgs;

/// Benchmark a fresh local cluster: memory per idle connection, then cross-node direct messages
/// at fixed open-loop rates (latency percentiles, loss, server CPU per message).
#[derive(Parser)]
#[command(name = "bench", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    internal: Option<Internal>,
    #[command(flatten)]
    args: BenchArgs,
}

/// What the bench starts of itself.
#[derive(Subcommand)]
enum Internal {
    /// One node of the floor that `--floor` measures (started by the bench itself).
    #[command(hide = true)]
    FloorNode {
        /// Its place among the floor's nodes, from 0.
        #[arg(long)]
        index: usize,
        /// Its SQLite file.
        #[arg(long)]
        db: PathBuf,
    },
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Virtual users, each with one socket, paired across nodes.
    #[arg(long, default_value_t = 600)]
    users: usize,
    /// Offered rates (messages/s for the whole cluster), one phase each.
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "1000,2000,4000,6000,8000,10000")]
    rates: Vec<u32>,
    /// Seconds per phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Idle connections opened first, to measure memory per connection (0 to skip).
    #[arg(long, default_value_t = 6000)]
    idle: usize,
    /// Command names of outside servers to count in the CPU figure (e.g.
    /// redis-server,beam.smp,postgres when the cluster uses them).
    #[arg(long, value_delimiter = ',')]
    external: Vec<String>,
    /// Environment for every server process, KEY=VALUE, repeatable (the lab passes no CHAT_*
    /// variable of its own environment on): e.g. CHAT_WORKER_THREADS=0 to compare runtimes.
    #[arg(long = "server-env", value_parser = parse_env)]
    server_env: Vec<(String, String)>,
    /// Also measure the Socket.IO + Redis-adapter peer (`bench/socketio-peer/`, installed with
    /// `npm ci --prefix bench/socketio-peer`) with the same generator and workload, phases of
    /// the two interleaved, and print the two side by side.
    #[arg(long)]
    peer: bool,
    /// Where the peer's sources are.
    #[arg(long, default_value_os_t = bench::peer::default_dir())]
    peer_dir: std::path::PathBuf,
    /// The Redis the peer's adapter uses.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    peer_redis: String,
    /// Also measure the floor: as many bare relay nodes (this binary again) that persist each
    /// message in a SQLite file of their own, acknowledge it and forward it to the recipient's
    /// node, and nothing else: the least any cluster that persists before it acknowledges can
    /// cost here. Phases interleaved with the others'; printed against ours and, with
    /// `--peer`, against a third of the peer's CPU per message.
    #[arg(long)]
    floor: bool,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

async fn run(args: BenchArgs) -> anyhow::Result<bool> {
    let nodes = args.cluster.nodes;
    let mut config = args.cluster.config();
    config.controller_args = vec!["--password-hash".into(), "fast".into()];
    config.env = args.server_env;
    let cluster = lab::Cluster::start(config).await?;
    println!(
        "cluster: {} · {} nodes · load average {}",
        cluster.controller_url(),
        cluster.nodes().len(),
        bench::procs::load_average()
    );
    let config = bench::BenchConfig {
        users: args.users,
        rates: args.rates,
        phase: std::time::Duration::from_secs(args.seconds),
        idle: args.idle,
        external: args.external,
    };
    if !args.peer && !args.floor {
        let result = bench::ours::run(&cluster, &config).await;
        cluster.shutdown().await?;
        let outcome = result?;
        println!(
            "\nsummary:\n{}",
            bench::report::format_summary(outcome.memory.as_ref(), &outcome.phases)
        );
        return Ok(true);
    }
    let others = Others::start(
        &args.peer_dir,
        &args.peer_redis,
        args.peer,
        args.floor,
        nodes,
    )
    .await;
    let others = match others {
        Ok(others) => others,
        Err(e) => {
            cluster.shutdown().await?;
            return Err(e);
        }
    };
    let result = async {
        let mut systems = vec![bench::ours::prepare(&cluster, &config).await?];
        if let Some(peer) = &others.peer {
            systems.push(bench::peer::prepare(peer, &config).await?);
        }
        if let Some(floor) = &others.floor {
            systems.push(bench::floor::prepare(floor, &config).await?);
        }
        let refs: Vec<&bench::Prepared> = systems.iter().collect();
        bench::side_by_side(&refs, &config).await
    }
    .await;
    others.shutdown().await;
    cluster.shutdown().await?;
    let outcomes = result?;
    let mut outcomes = outcomes.iter();
    let ours = outcomes.next().context("no outcome of ours")?;
    let peer = if args.peer { outcomes.next() } else { None };
    let floor = if args.floor { outcomes.next() } else { None };
    println!(
        "\nsummary, ours:\n{}",
        bench::report::format_summary(ours.memory.as_ref(), &ours.phases)
    );
    if let Some(peer) = peer {
        println!(
            "summary, socket.io + redis adapter:\n{}",
            bench::report::format_summary(peer.memory.as_ref(), &peer.phases)
        );
        println!("{}", bench::report::format_comparison(ours, peer));
    }
    if let Some(floor) = floor {
        println!(
            "summary, floor:\n{}",
            bench::report::format_summary(floor.memory.as_ref(), &floor.phases)
        );
        println!("{}", bench::report::format_floor(ours, floor, peer));
    }
    Ok(true)
}

/// The systems measured beside ours: the Socket.IO peer and the floor, as asked.
struct Others {
    peer: Option<bench::peer::PeerCluster>,
    floor: Option<bench::floor::FloorCluster>,
}

impl Others {
    async fn start(
        peer_dir: &std::path::Path,
        peer_redis: &str,
        peer: bool,
        floor: bool,
        nodes: usize,
    ) -> anyhow::Result<Others> {
        let mut others = Others {
            peer: None,
            floor: None,
        };
        if peer {
            let started = bench::peer::PeerCluster::start(peer_dir, nodes, peer_redis).await?;
            println!(
                "peer: socket.io nodes on ports {:?}, redis adapter on {}",
                started.ports(),
                peer_redis
            );
            others.peer = Some(started);
        }
        if floor {
            let started = match std::env::current_exe() {
                Ok(me) => bench::floor::FloorCluster::start(&me, nodes).await,
                Err(e) => Err(anyhow::Error::from(e).context("the bench's own path")),
            };
            match started {
                Ok(started) => {
                    println!("floor: bare relay nodes on ports {:?}", started.ports());
                    others.floor = Some(started);
                }
                Err(e) => {
                    others.shutdown().await;
                    return Err(e);
                }
            }
        }
        Ok(others)
    }

    async fn shutdown(self) {
        if let Some(peer) = self.peer {
            peer.shutdown().await;
        }
        if let Some(floor) = self.floor {
            floor.shutdown().await;
        }
    }
}

fn main() -> ExitCode {
    lab::cli::log_to_stderr();
    let cli = Cli::parse();
    let result = match cli.internal {
        // A floor node runs on a runtime of one thread of its own (see `bench::floor`).
        Some(Internal::FloorNode { index, db }) => {
            bench::floor::run_node(index, &db).map(|()| true)
        }
        None => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|runtime| runtime.block_on(run(cli.args))),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}
