//! The `lab` command line: `lab up` runs a cluster in front of a class (a live status that
//! refreshes every second, and commands typed on stdin: `kill 2`, `restart 2`, ...), and
//! `lab status` prints a controller's nodes once.
//!
//! Output rules: the first line of `lab up`'s stdout is the controller URL alone, so scripts
//! can read it. On a terminal the status stays pinned at the top (a scroll region below it
//! holds the event log and what you type); anywhere else the output is plain lines, and the
//! status is printed again only when something other than a clock changed.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::lab::Op;
use tokio::sync::mpsc;

use crate::cluster::resolve_target;
use crate::control::{Lab, LabConfig};
use crate::status::{ControllerClient, cluster_signature, format_cluster, format_nodes, human};
use crate::{ClusterConfig, LabError, NodeInfo, ProcessState};

/// A command typed at `lab up`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// SIGKILL a node: `kill 2`, `kill n2`, `kill n2-r1`.
    Kill(String),
    /// SIGTERM a node and wait for it to drain.
    Stop(String),
    /// Start a fresh process in a node's slot.
    Restart(String),
    /// SIGSTOP a node: a hung node, which only its lease gives away.
    Freeze(String),
    /// SIGCONT a frozen node.
    Thaw(String),
    /// Cut a node's bus connection (the node stays up).
    Cut(String),
    /// Give a node its bus connection back.
    Restore(String),
    /// Restart every node with `routed` or `fanout` routing.
    Routing(String),
    /// Start one more node.
    Add,
    /// Print the status now.
    Status,
    /// List the commands.
    Help,
    /// Stop the cluster and leave.
    Quit,
}

/// What `help` prints.
pub const HELP: &[&str] = &[
    "kill N     SIGKILL node N (a crash: the registry drops it when its link or lease goes)",
    "stop N     SIGTERM node N (it drains: moves its devices, deregisters, exits 0)",
    "restart N  start a fresh process in slot N (it gets a new id, e.g. n2-r1)",
    "freeze N   SIGSTOP node N (a hung node: no heartbeats; the registry drops it at its lease)",
    "thaw N     SIGCONT a frozen node",
    "cut N      cut node N's bus connection (the node runs on; restore N gives it back)",
    "restore N  give node N its bus connection back (its devices catch up)",
    "routing R  restart every node with R = routed or fanout routing",
    "add        start one more node",
    "status     print the status now",
    "quit       stop the whole cluster gracefully (Ctrl-C does the same)",
    "N is a slot number (2), a slot name (n2) or a node id (n2-r1).",
];

impl Command {
    /// Reads one input line; `Ok(None)` for a blank line.
    pub fn parse(line: &str) -> Result<Option<Command>, String> {
        let mut words = line.split_whitespace();
        let Some(verb) = words.next() else {
            return Ok(None);
        };
        let target = words.next().map(str::to_owned);
        if let Some(extra) = words.next() {
            return Err(format!("unexpected {extra:?} after {verb}; type help"));
        }
        let needs_target = |make: fn(String) -> Command| match &target {
            Some(t) => Ok(Some(make(t.clone()))),
            None => Err(format!("{verb} which node? e.g. `{verb} 2`")),
        };
        let no_target = |cmd: Command| match &target {
            None => Ok(Some(cmd)),
            Some(t) => Err(format!("{verb} takes no argument (got {t:?})")),
        };
        match verb.to_ascii_lowercase().as_str() {
            "kill" | "k" => needs_target(Command::Kill),
            "stop" | "s" => needs_target(Command::Stop),
            "restart" | "r" => needs_target(Command::Restart),
            "freeze" | "f" => needs_target(Command::Freeze),
            "thaw" | "t" => needs_target(Command::Thaw),
            "cut" => needs_target(Command::Cut),
            "restore" => needs_target(Command::Restore),
            "routing" => needs_target(Command::Routing),
            "add" | "a" => no_target(Command::Add),
            "status" | "st" | "ls" => no_target(Command::Status),
            "help" | "h" | "?" => no_target(Command::Help),
            "quit" | "q" | "exit" => no_target(Command::Quit),
            other => Err(format!("unknown command {other:?}; type help")),
        }
    }
}

/// Where the output goes: a terminal with the status pinned at the top, or plain lines.
struct Screen {
    tty: bool,
    started: Instant,
    /// Terminal rows held by the status area (the event log scrolls below them).
    reserved: usize,
    /// Plain mode prints the status only when this changes.
    last_signature: String,
}

impl Screen {
    fn new(tty: bool) -> Self {
        Screen {
            tty,
            started: Instant::now(),
            reserved: 0,
            last_signature: String::new(),
        }
    }

    fn write(&self, text: &str) {
        let mut out = std::io::stdout().lock();
        // Nowhere to report a broken stdout; the cluster keeps running either way.
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }

    fn stamp(&self) -> String {
        format!("[+{:.1}s]", self.started.elapsed().as_secs_f64())
    }

    /// An event line (several for a multi-line message), timestamped.
    fn event(&self, message: &str) {
        let mut text = String::new();
        for (i, line) in message.lines().enumerate() {
            if i == 0 {
                text.push_str(&format!("{} {line}\n", self.stamp()));
            } else {
                text.push_str(&format!("    {line}\n"));
            }
        }
        self.write(&text);
    }

    /// Shows the status. On a terminal it is redrawn in place; otherwise it is printed when its
    /// signature changed or `force` is set.
    fn status(&mut self, lines: &[String], signature: String, force: bool) {
        if !self.tty {
            if force || signature != self.last_signature {
                let mut text = format!("{} status\n", self.stamp());
                for line in lines {
                    text.push_str(&format!("  {line}\n"));
                }
                self.write(&text);
                self.last_signature = signature;
            }
            return;
        }
        let mut text = String::new();
        if lines.len() > self.reserved {
            // Room for a few more nodes before the area has to grow again. Growing clears the
            // screen: we cannot know where the cursor is, so we start over below the area.
            self.reserved = lines.len() + 3;
            text.push_str(&format!(
                "\x1b[2J\x1b[{};1H\x1b[{}r\x1b[{};1H",
                self.reserved + 1,
                self.reserved + 1,
                self.reserved + 1
            ));
        }
        // Save the cursor (it sits in the event log, maybe mid-way through a typed command),
        // turn line wrapping off (a line wider than the terminal is cut instead of spilling
        // into the next row), rewrite every row of the area, and restore both.
        text.push_str("\x1b7\x1b[?7l");
        for row in 0..self.reserved {
            let line = lines.get(row).map(String::as_str).unwrap_or("");
            text.push_str(&format!("\x1b[{};1H\x1b[2K{line}", row + 1));
        }
        text.push_str("\x1b[?7h\x1b8");
        self.write(&text);
    }

    /// Gives the terminal its whole screen back.
    fn finish(&mut self) {
        if self.tty && self.reserved > 0 {
            self.write("\x1b7\x1b[r\x1b8\n");
            self.reserved = 0;
        }
    }
}

/// Options of `lab up` that are not cluster configuration.
#[derive(Clone, Debug, Default)]
pub struct UpOptions {
    /// Plain lines even on a terminal.
    pub plain: bool,
    /// Where to serve the panel.
    pub panel: PanelAt,
    /// Where to write the run's report at exit (`.html`: the page, else JSON).
    pub report: Option<PathBuf>,
}

/// Where `lab up` serves its panel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PanelAt {
    /// Not at all.
    Off,
    /// On `127.0.0.1:7878`, or any free loopback port if that one is taken.
    #[default]
    Default,
    /// Here.
    Addr(std::net::SocketAddr),
}

/// The commands, on one line.
const COMMANDS: &str = "kill N, stop N, restart N, freeze N, thaw N, cut N, restore N, routing R, add, status, help, quit";

/// The status area's lines: the URL, a summary of the setup, the nodes, the commands.
fn status_lines(
    url: &str,
    panel: Option<&str>,
    setup: &str,
    slots: &[NodeInfo],
    registry: &Result<protocol::http::NodesResponse, String>,
    tty: bool,
) -> Vec<String> {
    let table = format_cluster(slots, registry.as_ref().map_err(String::as_str));
    if !tty {
        return table;
    }
    let mut lines = vec![url.to_owned()];
    if let Some(panel) = panel {
        lines.push(format!("panel {panel}"));
    }
    lines.extend([setup.to_owned(), String::new()]);
    lines.extend(table);
    lines.push(String::new());
    lines.push(format!("commands: {COMMANDS}"));
    lines.push("─".repeat(78));
    lines
}

fn setup_line(config: &ClusterConfig) -> String {
    let b = &config.backends;
    format!(
        "registry {} · bus {} · routing {} · store {} · lease {:.1} s",
        b.registry,
        b.bus,
        b.routing.as_str(),
        b.store.as_deref().unwrap_or("sqlite"),
        config.lease().as_secs_f64()
    )
}

/// Signals that stop `lab up`: Ctrl-C and SIGTERM (so it can run in the background and be
/// stopped with `kill`). Each one is one message, so a second Ctrl-C can be told apart.
fn stop_signals() -> mpsc::Receiver<&'static str> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        loop {
            let which = tokio::select! {
                r = tokio::signal::ctrl_c() => match r {
                    Ok(()) => "Ctrl-C",
                    Err(_) => return,
                },
                Some(()) = async {
                    match term.as_mut() {
                        Some(t) => t.recv().await,
                        None => std::future::pending().await,
                    }
                } => "SIGTERM",
            };
            if tx.send(which).await.is_err() {
                return;
            }
        }
    });
    rx
}

/// Lines typed on stdin. A plain thread does the blocking reads: tokio's stdin would keep the
/// runtime from shutting down while a read is pending. EOF closes the channel, nothing more.
fn stdin_lines() -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut line = String::new();
        loop {
            line.clear();
            match stdin.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if tx.send(line.trim().to_owned()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// `lab up`: starts the lab (its cluster, and its virtual users if asked), serves the panel,
/// shows the cluster, runs commands until Ctrl-C, SIGTERM or `quit`, writes the report if
/// asked, then stops everything gracefully. Returns whether everything stopped cleanly.
pub async fn up(config: LabConfig, options: UpOptions) -> Result<bool, LabError> {
    let tty = !options.plain && std::io::stdout().is_terminal();
    let mut signals = stop_signals();
    let nodes = config.cluster.nodes;
    eprintln!(
        "lab: starting a controller and {nodes} node{}…",
        if nodes == 1 { "" } else { "s" }
    );
    let setup = setup_line(&config.cluster);
    let kept = config.cluster.data_dir.is_some() || config.cluster.keep_data_dir;
    let lab = tokio::select! {
        l = Lab::start(config) => l?,
        Some(sig) = signals.recv() => {
            // Dropping the half-started cluster killed whatever had started.
            eprintln!("lab: {sig} while starting; nothing left running");
            return Ok(false);
        }
    };
    let url = lab.controller_url();
    println!("{url}");
    let panel = match serve_panel(&lab, &options).await {
        Ok(panel) => panel,
        Err(e) => {
            eprintln!("lab: {e}");
            let _ = lab.shutdown().await;
            return Err(e);
        }
    };
    let panel_url = panel.as_ref().map(|p| p.url().to_owned());
    if let Some(panel_url) = &panel_url {
        println!("{panel_url}");
        let ready = protocol::lab::LabReady {
            controller: url.clone(),
            panel: panel_url.clone(),
            pid: std::process::id(),
        };
        println!("{}", ready.line());
    }
    let (data_dir, log_dir) = lab.dirs();
    let data_note = format!(
        "data dir {} ({}) · logs {}",
        data_dir.display(),
        if kept { "kept" } else { "removed at exit" },
        log_dir.display()
    );
    if !tty {
        println!("{setup}");
        println!("{data_note}");
        println!("commands on stdin: {COMMANDS}");
    }
    let screen = Arc::new(Mutex::new(Screen::new(tty)));
    let session = Session {
        screen: screen.clone(),
        url,
        panel: panel_url,
        setup,
        tty,
    };
    if tty {
        // Draw the status area first: setting it up clears the screen.
        let registry = registry_now(&lab).await;
        session.show(&lab.nodes(), &registry, true);
        session.event(&data_note);
        session.event("type help for the commands");
    }
    let painter = tokio::spawn(paint_status(session.clone(), lab.clone()));
    let follower = tokio::spawn(follow_log(session.clone(), lab.clone()));

    let reason = session.run(&lab, &mut signals).await;
    if let Some(path) = &options.report {
        session.event(&write_report(&lab, path));
    }
    let result = session.shutdown(&lab, &reason, &mut signals, kept).await;
    if let Some(panel) = panel {
        panel.shutdown().await;
    }
    follower.abort();
    painter.abort();
    // Any status redraw in flight finishes before the screen is handed back.
    let _ = painter.await;
    let _ = follower.await;
    if let Ok(mut s) = screen.lock() {
        s.finish();
    }
    result
}

#[cfg(feature = "panel")]
type Panel = crate::panel::PanelServer;
#[cfg(not(feature = "panel"))]
type Panel = NoPanel;

/// Stands in for the panel's server when the lab is built without it.
#[cfg(not(feature = "panel"))]
struct NoPanel;

#[cfg(not(feature = "panel"))]
impl NoPanel {
    fn url(&self) -> &str {
        ""
    }
    async fn shutdown(self) {}
}

#[cfg(feature = "panel")]
async fn serve_panel(lab: &Lab, options: &UpOptions) -> Result<Option<Panel>, LabError> {
    match options.panel {
        PanelAt::Off => Ok(None),
        PanelAt::Default => crate::panel::serve_default(lab.clone()).await.map(Some),
        PanelAt::Addr(addr) => crate::panel::serve(lab.clone(), addr).await.map(Some),
    }
}

#[cfg(not(feature = "panel"))]
async fn serve_panel(_lab: &Lab, _options: &UpOptions) -> Result<Option<Panel>, LabError> {
    Ok(None)
}

/// Writes the run's report (HTML when the path ends in `.html`, JSON otherwise); says how it
/// went.
fn write_report(lab: &Lab, path: &std::path::Path) -> String {
    let report = lab.report();
    let html = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("html") || e.eq_ignore_ascii_case("htm"));
    let text = if html {
        crate::report::html(&report)
    } else {
        match serde_json::to_string_pretty(&report) {
            Ok(t) => t,
            Err(e) => return format!("error: the report: {e}"),
        }
    };
    match std::fs::write(path, text) {
        Ok(()) => format!(
            "report written to {} ({})",
            path.display(),
            report.checker.headline
        ),
        Err(e) => format!("error: writing the report to {}: {e}", path.display()),
    }
}

async fn registry_now(lab: &Lab) -> Result<protocol::http::NodesResponse, String> {
    let client = ControllerClient::new(lab.controller_url())
        .map_err(|e| e.to_string())?
        .with_operator(&lab.operator_token());
    client.nodes().await.map_err(|e| e.to_string())
}

/// What the command loop, the status painter and the log follower share.
#[derive(Clone)]
struct Session {
    screen: Arc<Mutex<Screen>>,
    url: String,
    panel: Option<String>,
    setup: String,
    tty: bool,
}

impl Session {
    fn event(&self, message: &str) {
        if let Ok(s) = self.screen.lock() {
            s.event(message);
        }
    }

    fn show(
        &self,
        slots: &[NodeInfo],
        registry: &Result<protocol::http::NodesResponse, String>,
        force: bool,
    ) {
        let lines = status_lines(
            &self.url,
            self.panel.as_deref(),
            &self.setup,
            slots,
            registry,
            self.tty,
        );
        let signature = cluster_signature(slots, registry.as_ref().map_err(String::as_str));
        if let Ok(mut s) = self.screen.lock() {
            s.status(&lines, signature, force);
        }
    }

    /// Runs commands until a signal or `quit`; returns why it stopped.
    async fn run(&self, lab: &Lab, signals: &mut mpsc::Receiver<&'static str>) -> String {
        let mut input = stdin_lines();
        let mut input_open = true;
        loop {
            tokio::select! {
                Some(sig) = signals.recv() => return sig.to_owned(),
                line = input.recv(), if input_open => match line {
                    None => {
                        input_open = false;
                        self.event("stdin closed: commands are off; Ctrl-C or SIGTERM stops the cluster");
                    }
                    Some(line) => match Command::parse(&line) {
                        Ok(None) => {}
                        Ok(Some(Command::Quit)) => return "quit".to_owned(),
                        Ok(Some(cmd)) => {
                            let interrupted = tokio::select! {
                                () = self.execute(lab, cmd) => None,
                                Some(sig) = signals.recv() => Some(sig),
                            };
                            if let Some(sig) = interrupted {
                                return sig.to_owned();
                            }
                        }
                        Err(e) => self.event(&e),
                    },
                },
            }
        }
    }

    async fn shutdown(
        &self,
        lab: &Lab,
        reason: &str,
        signals: &mut mpsc::Receiver<&'static str>,
        kept: bool,
    ) -> Result<bool, LabError> {
        let running = lab
            .nodes()
            .iter()
            .filter(|n| matches!(n.process, ProcessState::Running | ProcessState::Paused))
            .count();
        self.event(&format!(
            "{reason}: stopping the cluster (SIGTERM to {running} node{}, then the controller; \
             Ctrl-C again to kill at once)",
            if running == 1 { "" } else { "s" }
        ));
        let (data, _) = lab.dirs();
        let stopping = lab.shutdown();
        tokio::pin!(stopping);
        let result = tokio::select! {
            r = &mut stopping => r,
            Some(sig) = signals.recv() => {
                lab.kill_now();
                self.event(&format!("{sig} again: killed every remaining process"));
                stopping.await.map(|_| false)
            }
        };
        let clean = match result {
            Ok(true) => {
                self.event("cluster stopped cleanly");
                true
            }
            Ok(false) => false,
            Err(e) => {
                self.event(&e.to_string());
                false
            }
        };
        self.event(&if kept {
            format!("data dir kept: {}", data.display())
        } else {
            format!("data dir {} removed", data.display())
        });
        Ok(clean)
    }

    async fn execute(&self, lab: &Lab, cmd: Command) {
        if let Err(e) = self.try_execute(lab, cmd).await {
            self.event(&format!("error: {e}"));
        }
    }

    /// Carries a command out through the lab (whose log the follower prints), plus what the
    /// console adds: how long the registry took to notice a killed node.
    async fn try_execute(&self, lab: &Lab, cmd: Command) -> Result<(), String> {
        let node = |target: &str| -> Result<NodeInfo, String> {
            let nodes = lab.nodes();
            let index = resolve_target(target, &nodes)?;
            nodes
                .into_iter()
                .find(|n| n.index == index)
                .ok_or_else(|| format!("no node {target}"))
        };
        let op = match cmd {
            Command::Kill(target) => {
                let n = node(&target)?;
                let started = Instant::now();
                let done = lab.op(Op::Kill { node: target }).await;
                if !done.ok {
                    return Ok(());
                }
                let lease = Duration::from_millis(lab.with_world(|w| w.cluster_view().lease_ms));
                let client = ControllerClient::new(lab.controller_url())
                    .map_err(|e| e.to_string())?
                    .with_operator(&lab.operator_token());
                client
                    .wait_node_gone(&n.id, lease + Duration::from_secs(5))
                    .await
                    .map_err(|e| e.to_string())?;
                self.event(&format!(
                    "{} killed (SIGKILL, pid {}); gone from the registry after {}",
                    n.id,
                    n.pid,
                    human(started.elapsed())
                ));
                return Ok(());
            }
            Command::Stop(node) => Op::Stop { node },
            Command::Restart(node) => Op::Restart { node },
            Command::Freeze(node) => Op::Freeze { node },
            Command::Thaw(node) => Op::Thaw { node },
            Command::Cut(node) => Op::CutBus { node },
            Command::Restore(node) => Op::RestoreBus { node },
            Command::Routing(routing) => Op::SetRouting { routing },
            Command::Add => Op::AddNode,
            Command::Status => {
                let registry = registry_now(lab).await;
                let table = format_cluster(&lab.nodes(), registry.as_ref().map_err(String::as_str));
                if self.tty {
                    self.event(&table.join("\n"));
                } else {
                    self.show(&lab.nodes(), &registry, true);
                }
                return Ok(());
            }
            Command::Help => {
                self.event(&HELP.join("\n"));
                return Ok(());
            }
            Command::Quit => return Ok(()),
        };
        // The lab logs the outcome, success or error; the follower prints it.
        lab.op(op).await;
        Ok(())
    }
}

/// Redraws the status every second from the controller's `/v1/nodes` and the lab's own
/// slots. Runs beside the command loop, so a slow command (a node draining for seconds) does
/// not freeze the view: the class watches `draining` happen.
async fn paint_status(session: Session, lab: Lab) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let registry = registry_now(&lab).await;
        session.show(&lab.nodes(), &registry, false);
    }
}

/// Prints the lab's log as it grows: what every operation did, whoever asked (this console
/// or a panel), and what happened on its own (a node that died).
async fn follow_log(session: Session, lab: Lab) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // From the start: what the lab logged while it started (the virtual users) too.
    let mut seen = 0;
    loop {
        tick.tick().await;
        let (lines, counter) = lab.with_world(|w| w.log_since(seen));
        seen = counter;
        for line in lines {
            session.event(&line.text);
        }
    }
}

/// `lab status`: the controller's nodes, once, asked with the cluster's operator token.
pub async fn status_once(controller: &str, operator_token: &str) -> Result<(), LabError> {
    let client = ControllerClient::new(controller)?.with_operator(operator_token);
    let nodes = client.nodes().await?;
    for line in format_nodes(&nodes) {
        println!("{line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::NodeId;

    #[test]
    fn commands_parse() {
        assert_eq!(Command::parse("  "), Ok(None));
        assert_eq!(
            Command::parse("kill 2"),
            Ok(Some(Command::Kill("2".into())))
        );
        assert_eq!(
            Command::parse("STOP n3-r1"),
            Ok(Some(Command::Stop("n3-r1".into())))
        );
        assert_eq!(
            Command::parse("r 1"),
            Ok(Some(Command::Restart("1".into())))
        );
        assert_eq!(Command::parse("add"), Ok(Some(Command::Add)));
        assert_eq!(
            Command::parse("freeze 3"),
            Ok(Some(Command::Freeze("3".into())))
        );
        assert_eq!(
            Command::parse("thaw n3"),
            Ok(Some(Command::Thaw("n3".into())))
        );
        assert_eq!(Command::parse("cut 2"), Ok(Some(Command::Cut("2".into()))));
        assert_eq!(
            Command::parse("routing fanout"),
            Ok(Some(Command::Routing("fanout".into())))
        );
        assert_eq!(Command::parse("q"), Ok(Some(Command::Quit)));
        assert_eq!(Command::parse("help"), Ok(Some(Command::Help)));
        assert!(Command::parse("kill").is_err_and(|e| e.contains("which node")));
        assert!(Command::parse("add 3").is_err());
        assert!(Command::parse("kill 1 2").is_err());
        assert!(Command::parse("reboot").is_err_and(|e| e.contains("type help")));
    }

    fn info(index: usize, id: &str) -> NodeInfo {
        NodeInfo {
            index,
            name: format!("n{}", index + 1),
            id: NodeId::new(id).expect("id"),
            ws_url: String::new(),
            http_url: String::new(),
            pid: 1,
            process: ProcessState::Running,
            bus_cut: false,
        }
    }

    #[test]
    fn targets_resolve_by_number_name_or_id() {
        let nodes = [info(0, "n1"), info(1, "n2-r1"), info(2, "n3")];
        assert_eq!(resolve_target("2", &nodes), Ok(1));
        assert_eq!(resolve_target("n2", &nodes), Ok(1));
        assert_eq!(resolve_target("n2-r1", &nodes), Ok(1));
        assert_eq!(resolve_target("n3", &nodes), Ok(2));
        assert!(resolve_target("0", &nodes).is_err());
        assert!(resolve_target("4", &nodes).is_err_and(|e| e.contains("1 to 3")));
        assert!(resolve_target("n9", &nodes).is_err());
    }

    #[test]
    fn plain_status_lines_are_just_the_table() {
        let nodes = [info(0, "n1")];
        let registry = Err("connection refused".to_owned());
        let plain = status_lines("http://x", None, "setup", &nodes, &registry, false);
        assert!(plain[0].starts_with("NODE"));
        assert!(plain.iter().all(|l| !l.contains('\x1b')));
        let tty = status_lines(
            "http://x",
            Some("http://p/"),
            "setup",
            &nodes,
            &registry,
            true,
        );
        assert_eq!(tty[0], "http://x");
        assert!(tty.iter().any(|l| l.starts_with("commands:")));
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human(Duration::from_millis(38)), "38 ms");
        assert_eq!(human(Duration::from_millis(1340)), "1.3 s");
    }

    #[test]
    fn setup_line_names_the_backends() {
        let mut c = ClusterConfig::new(3);
        c.lease_ms = Some(2500);
        assert_eq!(
            setup_line(&c),
            "registry embedded · bus embedded · routing routed · store sqlite · lease 2.5 s"
        );
    }
}
