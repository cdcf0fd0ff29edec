//! The `lab` command line: `lab up` runs a cluster in front of a class (a live status that
//! refreshes every second, and commands typed on stdin: `kill 2`, `restart 2`, ...), and
//! `lab status` prints a controller's nodes once.
//!
//! Output rules: the first line of `lab up`'s stdout is the controller URL alone, so scripts
//! can read it. On a terminal the status stays pinned at the top (a scroll region below it
//! holds the event log and what you type); anywhere else the output is plain lines, and the
//! status is printed again only when something other than a clock changed.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::cluster::resolve_target;
use crate::status::{ControllerClient, cluster_signature, format_cluster, format_nodes, human};
use crate::{Cluster, ClusterConfig, LabError, NodeInfo, ProcessState};

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
}

/// The status area's lines: the URL, a summary of the setup, the nodes, the commands.
fn status_lines(
    url: &str,
    setup: &str,
    slots: &[NodeInfo],
    registry: &Result<protocol::http::NodesResponse, String>,
    tty: bool,
) -> Vec<String> {
    let table = format_cluster(slots, registry.as_ref().map_err(String::as_str));
    if !tty {
        return table;
    }
    let mut lines = vec![url.to_owned(), setup.to_owned(), String::new()];
    lines.extend(table);
    lines.push(String::new());
    lines.push(
        "commands: kill N, stop N, restart N, freeze N, thaw N, add, status, help, quit".to_owned(),
    );
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

/// `lab up`: starts the cluster, shows it, runs commands until Ctrl-C, SIGTERM or `quit`, then
/// stops it gracefully. Returns whether everything stopped cleanly.
pub async fn up(config: ClusterConfig, options: UpOptions) -> Result<bool, LabError> {
    let tty = !options.plain && std::io::stdout().is_terminal();
    let mut signals = stop_signals();
    eprintln!(
        "lab: starting a controller and {} node{}…",
        config.nodes,
        if config.nodes == 1 { "" } else { "s" }
    );
    let cluster = tokio::select! {
        c = Cluster::start(config) => c?,
        Some(sig) = signals.recv() => {
            // Dropping the half-started cluster killed whatever had started.
            eprintln!("lab: {sig} while starting; nothing left running");
            return Ok(false);
        }
    };
    let url = cluster.controller_url().to_owned();
    println!("{url}");
    let setup = setup_line(cluster.config());
    let kept = cluster.config().data_dir.is_some() || cluster.config().keep_data_dir;
    let data_note = format!(
        "data dir {} ({}) · logs {}",
        cluster.data_dir().display(),
        if kept { "kept" } else { "removed at exit" },
        cluster.log_dir().display()
    );
    if !tty {
        println!("{setup}");
        println!("{data_note}");
        println!(
            "commands on stdin: kill N, stop N, restart N, freeze N, thaw N, add, status, help, quit"
        );
    }
    let screen = Arc::new(Mutex::new(Screen::new(tty)));
    let session = Session {
        screen: screen.clone(),
        url,
        setup,
        tty,
    };
    if tty {
        // Draw the status area first: setting it up clears the screen.
        let registry = cluster.nodes_status().await.map_err(|e| e.to_string());
        session.show(&cluster.nodes(), &registry, true);
        session.event(&data_note);
        session.event("type help for the commands");
    }
    let (snapshot_tx, snapshot_rx) = watch::channel(cluster.nodes());
    let painter = tokio::spawn(paint_status(
        session.clone(),
        cluster.controller().clone(),
        snapshot_rx,
    ));

    let result = session.run(cluster, &mut signals, snapshot_tx).await;
    painter.abort();
    // Any status redraw in flight finishes before the screen is handed back.
    let _ = painter.await;
    if let Ok(mut s) = screen.lock() {
        s.finish();
    }
    result
}

/// What the command loop and the status painter share.
#[derive(Clone)]
struct Session {
    screen: Arc<Mutex<Screen>>,
    url: String,
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
        let lines = status_lines(&self.url, &self.setup, slots, registry, self.tty);
        let signature = cluster_signature(slots, registry.as_ref().map_err(String::as_str));
        if let Ok(mut s) = self.screen.lock() {
            s.status(&lines, signature, force);
        }
    }

    async fn run(
        &self,
        mut cluster: Cluster,
        signals: &mut mpsc::Receiver<&'static str>,
        snapshot: watch::Sender<Vec<NodeInfo>>,
    ) -> Result<bool, LabError> {
        let mut input = stdin_lines();
        let mut input_open = true;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut known: HashMap<String, ProcessState> = cluster
            .nodes()
            .into_iter()
            .map(|n| (n.id.to_string(), n.process))
            .collect();
        let reason = loop {
            tokio::select! {
                Some(sig) = signals.recv() => break sig.to_owned(),
                line = input.recv(), if input_open => match line {
                    None => {
                        input_open = false;
                        self.event("stdin closed: commands are off; Ctrl-C or SIGTERM stops the cluster");
                    }
                    Some(line) => match Command::parse(&line) {
                        Ok(None) => {}
                        Ok(Some(Command::Quit)) => break "quit".to_owned(),
                        Ok(Some(cmd)) => {
                            let interrupted = tokio::select! {
                                () = self.execute(&mut cluster, cmd) => None,
                                Some(sig) = signals.recv() => Some(sig),
                            };
                            let _ = snapshot.send(cluster.refresh());
                            if let Some(sig) = interrupted {
                                break sig.to_owned();
                            }
                        }
                        Err(e) => self.event(&e),
                    },
                },
                _ = tick.tick() => {
                    let nodes = cluster.refresh();
                    for n in &nodes {
                        let before = known.insert(n.id.to_string(), n.process.clone());
                        if let ProcessState::Exited { status } = &n.process
                            && before.as_ref() != Some(&n.process)
                        {
                            self.event(&format!(
                                "{} died on its own ({}); its log: {}",
                                n.id,
                                crate::process::describe_status(*status),
                                cluster.node_log(n.index).map(|p| p.display().to_string()).unwrap_or_default()
                            ));
                        }
                    }
                    let _ = snapshot.send(nodes);
                    if !cluster.controller_running() {
                        self.event(&format!(
                            "the controller died; its log: {}",
                            cluster.controller_log().display()
                        ));
                        break "the controller's death".to_owned();
                    }
                }
            }
        };
        self.shutdown(cluster, &reason, signals).await
    }

    async fn shutdown(
        &self,
        cluster: Cluster,
        reason: &str,
        signals: &mut mpsc::Receiver<&'static str>,
    ) -> Result<bool, LabError> {
        let running = cluster
            .nodes()
            .iter()
            .filter(|n| matches!(n.process, ProcessState::Running | ProcessState::Paused))
            .count();
        self.event(&format!(
            "{reason}: stopping the cluster (SIGTERM to {running} node{}, then the controller; \
             Ctrl-C again to kill at once)",
            if running == 1 { "" } else { "s" }
        ));
        let data = cluster.data_dir().to_owned();
        let kept = cluster.config().data_dir.is_some() || cluster.config().keep_data_dir;
        let clean = tokio::select! {
            r = cluster.shutdown() => match r {
                Ok(exits) => {
                    for exit in &exits {
                        self.event(&exit.to_string());
                    }
                    self.event("cluster stopped cleanly");
                    true
                }
                Err(e) => {
                    self.event(&e.to_string());
                    false
                }
            },
            Some(sig) = signals.recv() => {
                // Dropping the shutdown future dropped the cluster, which SIGKILLed the rest.
                self.event(&format!("{sig} again: killed every remaining process"));
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

    async fn execute(&self, cluster: &mut Cluster, cmd: Command) {
        if let Err(e) = self.try_execute(cluster, cmd).await {
            self.event(&format!("error: {e}"));
        }
    }

    async fn try_execute(&self, cluster: &mut Cluster, cmd: Command) -> Result<(), String> {
        let err = |e: LabError| e.to_string();
        // Long enough for any registry to notice a dead node: the lease plus slack.
        let gone_limit = cluster.config().lease() + Duration::from_secs(5);
        match cmd {
            Command::Kill(target) => {
                let index = resolve_target(&target, &cluster.nodes())?;
                let node = cluster.node(index).map_err(err)?;
                let started = Instant::now();
                cluster.kill_node(index).await.map_err(err)?;
                // The embedded registry drops a node as soon as its link breaks; a lease-based
                // one takes seconds, and then the class should know what we are waiting for.
                let quick = cluster
                    .wait_node_gone(&node.id, Duration::from_millis(300))
                    .await;
                if quick.is_err() {
                    self.event(&format!(
                        "{} killed (SIGKILL, pid {}); the registry still lists it until its \
                         lease expires…",
                        node.id, node.pid
                    ));
                    cluster
                        .wait_node_gone(&node.id, gone_limit)
                        .await
                        .map_err(err)?;
                }
                self.event(&format!(
                    "{} killed (SIGKILL, pid {}); gone from the registry after {}",
                    node.id,
                    node.pid,
                    human(started.elapsed())
                ));
            }
            Command::Stop(target) => {
                let index = resolve_target(&target, &cluster.nodes())?;
                let node = cluster.node(index).map_err(err)?;
                self.event(&format!(
                    "{}: SIGTERM sent (pid {}); it drains: moves its devices, deregisters…",
                    node.id, node.pid
                ));
                let exit = cluster.stop_node(index).await.map_err(err)?;
                let gone = cluster
                    .wait_node_gone(&node.id, gone_limit)
                    .await
                    .map_err(err)?;
                self.event(&format!(
                    "{} stopped (SIGTERM): {} after {}; {}",
                    node.id,
                    crate::process::describe_status(exit.status),
                    human(exit.took),
                    if gone < Duration::from_millis(50) {
                        "it had already left the registry".to_owned()
                    } else {
                        format!("gone from the registry {} later", human(gone))
                    }
                ));
            }
            Command::Restart(target) => {
                let index = resolve_target(&target, &cluster.nodes())?;
                let old = cluster.node(index).map_err(err)?;
                if old.process == ProcessState::Running {
                    self.event(&format!(
                        "{} still runs: stopping it first (SIGTERM)…",
                        old.id
                    ));
                }
                let started = Instant::now();
                let new = cluster.restart_node(index).await.map_err(err)?;
                self.event(&format!(
                    "{} restarted as {} (pid {}); live after {}",
                    old.id,
                    new.id,
                    new.pid,
                    human(started.elapsed())
                ));
            }
            Command::Freeze(target) => {
                let index = resolve_target(&target, &cluster.nodes())?;
                let node = cluster.node(index).map_err(err)?;
                cluster.pause_node(index).map_err(err)?;
                self.event(&format!(
                    "{} frozen (SIGSTOP, pid {}): its connections stay open but it sends no \
                     heartbeat; watch the registry drop it when its lease ({:.1} s) runs out",
                    node.id,
                    node.pid,
                    cluster.config().lease().as_secs_f64()
                ));
            }
            Command::Thaw(target) => {
                let index = resolve_target(&target, &cluster.nodes())?;
                let node = cluster.node(index).map_err(err)?;
                cluster.resume_node(index).map_err(err)?;
                self.event(&format!("{} thawed (SIGCONT, pid {})", node.id, node.pid));
            }
            Command::Add => {
                let started = Instant::now();
                let new = cluster.add_node().await.map_err(err)?;
                self.event(&format!(
                    "{} added (pid {}); live after {}",
                    new.id,
                    new.pid,
                    human(started.elapsed())
                ));
            }
            Command::Status => {
                let registry = cluster.nodes_status().await.map_err(|e| e.to_string());
                let table = format_cluster(
                    &cluster.refresh(),
                    registry.as_ref().map_err(String::as_str),
                );
                if self.tty {
                    self.event(&table.join("\n"));
                } else {
                    self.show(&cluster.nodes(), &registry, true);
                }
            }
            Command::Help => self.event(&HELP.join("\n")),
            Command::Quit => {}
        }
        Ok(())
    }
}

/// Redraws the status every second from the controller's `/v1/nodes` and the latest snapshot
/// of the lab's own slots. Runs beside the command loop, so a slow command (a node draining
/// for seconds) does not freeze the view: the class watches `draining` happen.
async fn paint_status(
    session: Session,
    controller: ControllerClient,
    slots: watch::Receiver<Vec<NodeInfo>>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let registry = controller.nodes().await.map_err(|e| e.to_string());
        let slots = slots.borrow().clone();
        session.show(&slots, &registry, false);
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
        let plain = status_lines("http://x", "setup", &nodes, &registry, false);
        assert!(plain[0].starts_with("NODE"));
        assert!(plain.iter().all(|l| !l.contains('\x1b')));
        let tty = status_lines("http://x", "setup", &nodes, &registry, true);
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
