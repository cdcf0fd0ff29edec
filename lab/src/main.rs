//! The `lab` binary: turns flags into a [`lab::ClusterConfig`] and hands over to
//! [`lab::console`]. (The benchmark is a binary of its own: `bench`, in `bench/`.)

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use lab::ClusterConfig;
use lab::cli::ClusterArgs;

#[derive(Parser)]
#[command(
    name = "lab",
    version,
    about = "Spawn, kill and watch a local chat cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a controller and N nodes, show them live, and take commands on stdin (kill N,
    /// stop N, restart N, add, status, help, quit). The first line of stdout is the
    /// controller's URL. Ctrl-C or SIGTERM stops the cluster gracefully.
    Up(UpArgs),
    /// Print a controller's nodes once.
    Status {
        /// The controller's HTTP base.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        controller: String,
        /// The cluster's operator token (`/v1/nodes` needs a credential).
        #[arg(long, env = "CHAT_OPERATOR_TOKEN", hide_env_values = true)]
        operator_token: Option<String>,
        /// Or the data dir of the `lab up` that runs the cluster (it holds the token).
        #[arg(long, conflicts_with = "operator_token")]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Args)]
struct UpArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Plain output lines even on a terminal.
    #[arg(long)]
    plain: bool,
}

impl UpArgs {
    fn config(self) -> ClusterConfig {
        let mut config = self.cluster.config();
        // Ctrl-C must reach the lab alone, so that it stops the nodes before the controller.
        config.own_process_groups = true;
        config
    }
}

fn main() -> ExitCode {
    lab::cli::log_to_stderr();
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(run(Cli::parse().command)));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("lab: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Cmd) -> anyhow::Result<bool> {
    match command {
        Cmd::Up(args) => {
            let plain = args.plain;
            lab::console::up(args.config(), lab::console::UpOptions { plain })
                .await
                .map_err(anyhow::Error::from)
        }
        Cmd::Status {
            controller,
            operator_token,
            data_dir,
        } => {
            let token = match (operator_token, data_dir) {
                (Some(token), _) => token,
                (None, Some(dir)) => {
                    let path = dir.join(lab::cluster::OPERATOR_TOKEN_FILE);
                    std::fs::read_to_string(&path)
                        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?
                        .trim()
                        .to_owned()
                }
                (None, None) => anyhow::bail!(
                    "lab status needs the cluster's operator token: --operator-token (or \
                     CHAT_OPERATOR_TOKEN), or --data-dir of the `lab up` that runs it"
                ),
            };
            lab::console::status_once(&controller, &token)
                .await
                .map(|()| true)
                .map_err(anyhow::Error::from)
        }
    }
}
