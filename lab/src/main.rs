//! The `lab` binary: turns flags into a [`lab::ClusterConfig`] and hands over to
//! [`lab::console`]. (The benchmark is a binary of its own: `bench`, in `bench/`.)

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use lab::cli::ClusterArgs;
use lab::console::{PanelAt, UpOptions};
use lab::control::LabConfig;
use lab::users::UsersConfig;

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
    /// Start a controller and N nodes, serve the lab panel, show them live, and take commands
    /// on stdin (kill N, stop N, restart N, add, status, help, quit). The first line of stdout
    /// is the controller's URL, the second the panel's, the third `LAB_READY {json}`. Ctrl-C
    /// or SIGTERM stops the cluster gracefully.
    Up(UpArgs),
    /// Run a lesson (an article's mistake on a live cluster, then its fix), headless:
    /// `--list` names them, `NAME` runs one, `--check` (alone: every lesson) exits non-zero
    /// unless each mistake showed and each fix held.
    Lesson(LessonArgs),
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
struct LessonArgs {
    /// The lesson (see --list).
    name: Option<String>,
    /// List the lessons, one a line, short name first.
    #[arg(long, conflicts_with = "name")]
    list: bool,
    /// Judge: exit 0 only if each mistake showed (checker red) and each fix held (green).
    /// Without a name, every lesson.
    #[arg(long)]
    check: bool,
}

#[derive(Args)]
struct UpArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Plain output lines even on a terminal.
    #[arg(long)]
    plain: bool,
    /// Where to serve the panel (default 127.0.0.1:7878, or any free port if it is taken).
    #[arg(long)]
    panel: Option<SocketAddr>,
    /// Serve no panel.
    #[arg(long, conflicts_with = "panel")]
    no_panel: bool,
    /// Write the run's report here at exit: `.html` for the page with plots, else JSON.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Virtual users to start (the panel can change them).
    #[arg(long, default_value_t = 0)]
    users: usize,
    /// Devices per virtual user.
    #[arg(long, default_value_t = 2)]
    devices: usize,
    /// Messages per second the virtual users send, all together.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Hash passwords at full cost (a lab's accounts are throwaway: by default it hashes at
    /// the test cost, so that a burst of logins is quick).
    #[arg(long)]
    real_hashing: bool,
}

impl UpArgs {
    fn config(&self) -> LabConfig {
        let mut cluster = self.cluster.clone().config();
        // Ctrl-C must reach the lab alone, so that it stops the nodes before the controller.
        cluster.own_process_groups = true;
        // The panel's "cut bus" needs a proxy in front of every node's bus connection.
        cluster.cuttable_bus = true;
        if !self.real_hashing {
            cluster.controller_args = vec!["--password-hash".into(), "fast".into()];
        }
        let mut config = LabConfig::new(cluster);
        if self.users > 0 {
            config.users = Some(UsersConfig::new(self.users, self.devices.max(1)));
        }
        config.traffic.rate = self.rate.max(0.0);
        config
    }

    fn options(&self) -> UpOptions {
        UpOptions {
            plain: self.plain,
            panel: match (self.no_panel, self.panel) {
                (true, _) => PanelAt::Off,
                (false, Some(addr)) => PanelAt::Addr(addr),
                (false, None) => PanelAt::Default,
            },
            report: self.report.clone(),
        }
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
        Cmd::Up(args) => lab::console::up(args.config(), args.options())
            .await
            .map_err(anyhow::Error::from),
        Cmd::Lesson(args) => lab::lessons::command(args.name.as_deref(), args.list, args.check)
            .await
            .map_err(anyhow::Error::from),
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
