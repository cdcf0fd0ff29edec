//! Asking the controller how the cluster is (`/healthz`, `/v1/nodes`), polling it until a
//! condition holds, and turning the answer into tables for people.
//!
//! Polling is the only way the lab waits for anything: every wait here re-asks the controller
//! every [`POLL_EVERY`] until its condition holds or its deadline passes, and a timeout error
//! says what the controller said last.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use protocol::NodeId;
use protocol::http::{Health, NodeState, NodeStatus, NodesResponse};

use crate::LabError;
use crate::cluster::{NodeInfo, ProcessState};

/// How often waits re-ask the controller.
pub const POLL_EVERY: Duration = Duration::from_millis(25);

/// How long one request may take. Loopback answers in microseconds; a server that takes
/// seconds is stuck, and the poll loop should say so rather than hang.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// A cheap-to-clone handle on a controller's HTTP API.
#[derive(Clone, Debug)]
pub struct ControllerClient {
    http: reqwest::Client,
    base: String,
    /// The operator's token, sent as a bearer token (`/v1/nodes` needs a credential).
    operator_token: Option<String>,
}

impl ControllerClient {
    /// A client for the controller at `base` (`http://127.0.0.1:PORT`).
    pub fn new(base: impl Into<String>) -> Result<Self, LabError> {
        let base = base.into().trim_end_matches('/').to_owned();
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            // The lab only ever talks to loopback servers it started; a proxy from the
            // environment would only get in the way.
            .no_proxy()
            .build()
            .map_err(|source| LabError::Http {
                url: base.clone(),
                source,
            })?;
        Ok(ControllerClient {
            http,
            base,
            operator_token: None,
        })
    }

    /// Sends `token` (the cluster's operator token) with every request.
    pub fn with_operator(mut self, token: &str) -> Self {
        self.operator_token = Some(token.to_owned());
        self
    }

    /// The controller's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, LabError> {
        let url = format!("{}{path}", self.base);
        let http_err = |source| LabError::Http {
            url: url.clone(),
            source,
        };
        let mut request = self.http.get(&url);
        if let Some(token) = &self.operator_token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(http_err)?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(LabError::HttpStatus {
                url,
                status,
                body: body.chars().take(500).collect(),
            });
        }
        response.json().await.map_err(http_err)
    }

    /// `GET /healthz`.
    pub async fn health(&self) -> Result<Health, LabError> {
        self.get("/healthz").await
    }

    /// `GET /v1/nodes`.
    pub async fn nodes(&self) -> Result<NodesResponse, LabError> {
        self.get("/v1/nodes").await
    }

    /// Polls `/healthz` until it answers `ok`.
    pub async fn wait_healthy(&self, limit: Duration) -> Result<Health, LabError> {
        poll(
            "the controller's /healthz to answer ok",
            limit,
            || self.health(),
            |h| (h.status == "ok").then(|| h.clone()),
            |h| format!("{h:?}"),
        )
        .await
    }

    /// Polls `/v1/nodes` until `id` is listed as live.
    pub async fn wait_node_live(
        &self,
        id: &NodeId,
        limit: Duration,
    ) -> Result<NodeStatus, LabError> {
        poll(
            &format!("{id} to be live in /v1/nodes"),
            limit,
            || self.nodes(),
            |r| {
                r.nodes
                    .iter()
                    .find(|n| &n.id == id && n.state == NodeState::Live)
                    .cloned()
            },
            describe_nodes,
        )
        .await
    }

    /// Polls `/v1/nodes` until `id` is no longer listed; returns how long that took.
    pub async fn wait_node_gone(&self, id: &NodeId, limit: Duration) -> Result<Duration, LabError> {
        let started = Instant::now();
        poll(
            &format!("{id} to leave /v1/nodes"),
            limit,
            || self.nodes(),
            |r| (!r.nodes.iter().any(|n| &n.id == id)).then_some(()),
            describe_nodes,
        )
        .await?;
        Ok(started.elapsed())
    }

    /// Polls `/v1/nodes` until exactly `count` nodes are live (draining ones do not count);
    /// returns the live ones.
    pub async fn wait_nodes_live(
        &self,
        count: usize,
        limit: Duration,
    ) -> Result<Vec<NodeStatus>, LabError> {
        poll(
            &format!("{count} live nodes in /v1/nodes"),
            limit,
            || self.nodes(),
            |r| {
                let live: Vec<NodeStatus> = r
                    .nodes
                    .iter()
                    .filter(|n| n.state == NodeState::Live)
                    .cloned()
                    .collect();
                (live.len() == count).then_some(live)
            },
            describe_nodes,
        )
        .await
    }
}

/// Re-runs `fetch` every [`POLL_EVERY`] until `check` accepts its answer or `limit` passes.
/// Failed requests count as "not yet" (a server that is starting refuses connections), and the
/// last answer or error goes into the timeout error.
async fn poll<T, R, F, Fut>(
    what: &str,
    limit: Duration,
    mut fetch: F,
    check: impl Fn(&T) -> Option<R>,
    describe: impl Fn(&T) -> String,
) -> Result<R, LabError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, LabError>>,
{
    let started = Instant::now();
    loop {
        let seen = match fetch().await {
            Ok(answer) => {
                if let Some(done) = check(&answer) {
                    return Ok(done);
                }
                describe(&answer)
            }
            Err(e) => e.to_string(),
        };
        if started.elapsed() >= limit {
            return Err(LabError::Timeout {
                what: what.to_owned(),
                waited: started.elapsed(),
                seen,
            });
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// `n1 live, n2 draining` (or `no nodes`), for timeout messages.
pub fn describe_nodes(r: &NodesResponse) -> String {
    if r.nodes.is_empty() {
        return "no nodes".to_owned();
    }
    r.nodes
        .iter()
        .map(|n| format!("{} {}", n.id, state_name(n.state)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `live` or `draining`.
pub fn state_name(state: NodeState) -> &'static str {
    match state {
        NodeState::Live => "live",
        NodeState::Draining => "draining",
    }
}

/// A duration for people: `0.4 s`, `12 s`, `3m05s`, `2h10m`.
pub fn format_age(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 10_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else if ms < 60_000 {
        format!("{} s", ms / 1000)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

/// Lays out rows under headers, each column as wide as its widest cell. Columns after the first
/// are right-aligned when `numeric[i]` says so.
fn render_table(headers: &[&str], numeric: &[bool], rows: &[Vec<String>]) -> Vec<String> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, cell) in cells.enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            if i > 0 {
                out.push_str("  ");
            }
            if numeric.get(i).copied().unwrap_or(false) {
                let _ = write!(out, "{cell:>w$}");
            } else {
                let _ = write!(out, "{cell:<w$}");
            }
        }
        out.trim_end().to_owned()
    };
    let mut out = vec![line(&mut headers.iter().copied())];
    for row in rows {
        out.push(line(&mut row.iter().map(String::as_str)));
    }
    out
}

fn registry_cells(n: &NodeStatus, now: i64) -> [String; 5] {
    [
        state_name(n.state).to_owned(),
        n.connections.to_string(),
        n.reserved.to_string(),
        format!("{} ago", format_age(now - n.last_heartbeat)),
        format_age(now - n.started_at),
    ]
}

fn totals(r: &NodesResponse) -> String {
    let live = r
        .nodes
        .iter()
        .filter(|n| n.state == NodeState::Live)
        .count();
    let draining = r.nodes.len() - live;
    let conns: u64 = r.nodes.iter().map(|n| n.connections).sum();
    let reserved: u64 = r.nodes.iter().map(|n| n.reserved).sum();
    format!("registry: {live} live, {draining} draining · {conns} connections, {reserved} reserved")
}

/// The nodes table of `lab status`: one line per node the controller knows, then totals.
pub fn format_nodes(r: &NodesResponse) -> Vec<String> {
    let rows: Vec<Vec<String>> = r
        .nodes
        .iter()
        .map(|n| {
            let mut row = vec![n.id.to_string()];
            row.extend(registry_cells(n, r.now));
            row.push(n.ws_url.clone());
            row
        })
        .collect();
    let mut out = render_table(
        &[
            "NODE",
            "STATE",
            "CONNS",
            "RESERVED",
            "HEARTBEAT",
            "UPTIME",
            "WS",
        ],
        &[false, false, true, true, true, true, false],
        &rows,
    );
    out.push(totals(r));
    out
}

/// How the lab sees a node's process: `pid 4242`, `killed (SIGKILL)`, `stopped (exit 0)`.
pub fn process_cell(state: &ProcessState, pid: u32) -> String {
    match state {
        ProcessState::Running => format!("pid {pid}"),
        ProcessState::Paused => format!("pid {pid} frozen"),
        ProcessState::Killed => "killed (SIGKILL)".to_owned(),
        ProcessState::Stopped { status } => {
            format!("stopped ({})", crate::process::describe_status(*status))
        }
        ProcessState::Exited { status } => {
            format!("died ({})", crate::process::describe_status(*status))
        }
    }
}

/// The live view of `lab up`: the lab's node slots (their processes) side by side with what
/// the registry says about them, then registry entries that belong to no slot (an old id of a
/// restarted node still within its lease, a node started by someone else), then totals.
/// `registry` is `Err` when the controller could not be asked.
pub fn format_cluster(slots: &[NodeInfo], registry: Result<&NodesResponse, &str>) -> Vec<String> {
    let empty = NodesResponse {
        nodes: Vec::new(),
        now: 0,
    };
    let r = registry.unwrap_or(&empty);
    let mut rows = Vec::new();
    for slot in slots {
        let mut row = vec![slot.id.to_string(), process_cell(&slot.process, slot.pid)];
        match r.nodes.iter().find(|n| n.id == slot.id) {
            Some(n) => row.extend(registry_cells(n, r.now)),
            None => row.extend(
                ["absent", "-", "-", "-", "-"]
                    .iter()
                    .map(|s| (*s).to_owned()),
            ),
        }
        rows.push(row);
    }
    for n in r
        .nodes
        .iter()
        .filter(|n| !slots.iter().any(|s| s.id == n.id))
    {
        let mut row = vec![n.id.to_string(), "(not a slot)".to_owned()];
        row.extend(registry_cells(n, r.now));
        rows.push(row);
    }
    let mut out = render_table(
        &[
            "NODE",
            "PROCESS",
            "REGISTRY",
            "CONNS",
            "RESERVED",
            "HEARTBEAT",
            "UPTIME",
        ],
        &[false, false, false, true, true, true, true],
        &rows,
    );
    let running = slots
        .iter()
        .filter(|s| s.process == ProcessState::Running)
        .count();
    match registry {
        Ok(r) => out.push(format!("{running} running · {}", totals(r))),
        Err(e) => out.push(format!("{running} running · controller unreachable: {e}")),
    }
    out
}

/// What changed in the cluster, ignoring clocks: plain (non-terminal) output prints the view
/// again only when this changes, so a log of `lab up` grows with events, not with seconds.
pub fn cluster_signature(slots: &[NodeInfo], registry: Result<&NodesResponse, &str>) -> String {
    let mut sig = String::new();
    for s in slots {
        let _ = write!(sig, "{}:{}:{:?};", s.id, s.pid, s.process);
    }
    match registry {
        Ok(r) => {
            for n in &r.nodes {
                let _ = write!(
                    sig,
                    "{}:{:?}:{}:{};",
                    n.id, n.state, n.connections, n.reserved
                );
            }
        }
        Err(e) => sig.push_str(e),
    }
    sig
}

/// `38 ms` under a second, `1.3 s` above: what people read in event lines.
pub fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, state: NodeState, conns: u64, started: i64, beat: i64) -> NodeStatus {
        NodeStatus {
            id: NodeId::new(id).expect("id"),
            ws_url: format!("ws://127.0.0.1:1/{id}"),
            http_url: "http://127.0.0.1:1".into(),
            connections: conns,
            reserved: 1,
            started_at: started,
            last_heartbeat: beat,
            state,
        }
    }

    fn slot(id: &str, pid: u32, process: ProcessState) -> NodeInfo {
        NodeInfo {
            index: 0,
            name: id.split('-').next().unwrap_or(id).to_owned(),
            id: NodeId::new(id).expect("id"),
            ws_url: String::new(),
            http_url: String::new(),
            pid,
            process,
            bus_cut: false,
        }
    }

    #[test]
    fn ages_read_well() {
        assert_eq!(format_age(-5), "0.0 s");
        assert_eq!(format_age(420), "0.4 s");
        assert_eq!(format_age(12_345), "12 s");
        assert_eq!(format_age(185_000), "3m05s");
        assert_eq!(format_age(7_800_000), "2h10m");
    }

    #[test]
    fn nodes_table_has_a_line_per_node_and_totals() {
        let r = NodesResponse {
            nodes: vec![
                node("n1", NodeState::Live, 12, 0, 99_600),
                node("n2", NodeState::Draining, 3, 40_000, 99_900),
            ],
            now: 100_000,
        };
        let lines = format_nodes(&r);
        assert_eq!(
            lines,
            vec![
                "NODE  STATE     CONNS  RESERVED  HEARTBEAT  UPTIME  WS",
                "n1    live         12         1  0.4 s ago   1m40s  ws://127.0.0.1:1/n1",
                "n2    draining      3         1  0.1 s ago   1m00s  ws://127.0.0.1:1/n2",
                "registry: 1 live, 1 draining · 15 connections, 2 reserved",
            ]
        );
    }

    #[test]
    fn cluster_view_joins_slots_with_the_registry() {
        let r = NodesResponse {
            nodes: vec![
                node("n1", NodeState::Live, 2, 90_000, 99_800),
                node("n2", NodeState::Live, 0, 90_000, 96_000),
                node("n3-r1", NodeState::Live, 1, 99_000, 99_900),
            ],
            now: 100_000,
        };
        let slots = [
            slot("n1", 11, ProcessState::Running),
            slot("n2", 12, ProcessState::Killed),
            slot("n3-r1", 13, ProcessState::Running),
            slot(
                "n4",
                14,
                ProcessState::Stopped {
                    status: exit_status(0),
                },
            ),
        ];
        let lines = format_cluster(&slots, Ok(&r));
        assert_eq!(
            lines[0],
            "NODE   PROCESS           REGISTRY  CONNS  RESERVED  HEARTBEAT  UPTIME"
        );
        assert_eq!(
            lines[1],
            "n1     pid 11            live          2         1  0.2 s ago    10 s"
        );
        assert_eq!(
            lines[2],
            "n2     killed (SIGKILL)  live          0         1  4.0 s ago    10 s"
        );
        assert_eq!(
            lines[4],
            "n4     stopped (exit 0)  absent        -         -          -       -"
        );
        assert_eq!(
            lines[5],
            "2 running · registry: 3 live, 0 draining · 3 connections, 3 reserved"
        );
    }

    #[test]
    fn cluster_view_lists_registry_entries_of_no_slot_and_survives_errors() {
        let r = NodesResponse {
            nodes: vec![node("n1", NodeState::Live, 0, 0, 0)],
            now: 0,
        };
        let lines = format_cluster(&[slot("n1-r1", 5, ProcessState::Running)], Ok(&r));
        assert!(
            lines[2].starts_with("n1     (not a slot)  live"),
            "{lines:?}"
        );
        let lines = format_cluster(&[slot("n1", 5, ProcessState::Running)], Err("refused"));
        assert!(lines[1].contains("absent"), "{lines:?}");
        assert_eq!(lines[2], "1 running · controller unreachable: refused");
    }

    #[test]
    fn signature_ignores_clocks() {
        let a = NodesResponse {
            nodes: vec![node("n1", NodeState::Live, 1, 0, 100)],
            now: 200,
        };
        let mut b = a.clone();
        b.now = 5_000;
        b.nodes[0].last_heartbeat = 4_900;
        let slots = [slot("n1", 1, ProcessState::Running)];
        assert_eq!(
            cluster_signature(&slots, Ok(&a)),
            cluster_signature(&slots, Ok(&b))
        );
        b.nodes[0].connections = 2;
        assert_ne!(
            cluster_signature(&slots, Ok(&a)),
            cluster_signature(&slots, Ok(&b))
        );
    }

    fn exit_status(code: i32) -> std::process::ExitStatus {
        use std::os::unix::process::ExitStatusExt;
        std::process::ExitStatus::from_raw(code << 8)
    }
}
