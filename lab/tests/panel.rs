//! The lab's web server end to end, on a real `lab up` (a real cluster, virtual users on real
//! client cores): the ready lines, the panel page, a full frame on `/api/state`, the WebSocket
//! stream (a full frame first, then frames that follow an operation), an operation posted as
//! the panel posts it, the reports, a foreign origin refused, and `--report` written at exit.
//! Needs the server binary (`cargo build -p server`).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use protocol::lab::{LabReady, NodeState, OpResult, Report, Update};
use tokio_tungstenite::tungstenite::Message;

const PATIENCE: Duration = Duration::from_secs(40);

/// A `lab up`, stopped (SIGTERM, then SIGKILL) when the test ends.
struct LabUp {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl LabUp {
    fn start(args: &[&str]) -> LabUp {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lab"))
            .args(["up", "--plain", "--panel", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn lab");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        LabUp {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    fn line(&mut self) -> String {
        match self.lines.recv_timeout(PATIENCE) {
            Ok(line) => {
                self.seen.push(line.clone());
                line
            }
            Err(e) => panic!(
                "no line from lab up ({e}); so far:\n{}",
                self.seen.join("\n")
            ),
        }
    }

    fn until(&mut self, want: impl Fn(&str) -> bool) -> String {
        loop {
            let line = self.line();
            if want(&line) {
                return line;
            }
        }
    }

    fn stop(&mut self) -> bool {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.seen.extend(self.lines.try_iter());
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for LabUp {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn next_update(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Update {
    loop {
        let msg = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("a frame in time")
            .expect("the stream open")
            .expect("a frame");
        if let Message::Text(text) = msg {
            return serde_json::from_str(&text).expect("an Update");
        }
    }
}

#[tokio::test]
async fn lab_up_serves_the_panel_its_stream_its_operations_and_reports() {
    let dir = tempfile::tempdir().expect("temp dir");
    let report_path = dir.path().join("run.html");
    let report_arg = report_path.to_string_lossy().into_owned();
    let mut lab = LabUp::start(&[
        "--nodes",
        "3",
        "--users",
        "3",
        "--devices",
        "2",
        "--rate",
        "10",
        "--report",
        &report_arg,
    ]);
    let controller = lab.line();
    assert!(controller.starts_with("http://127.0.0.1:"), "{controller}");
    let panel = lab.line();
    assert!(panel.starts_with("http://127.0.0.1:"), "{panel}");
    let ready = LabReady::parse(&lab.line()).expect("the LAB_READY line third");
    assert_eq!(
        (ready.controller.as_str(), ready.panel.as_str()),
        (controller.as_str(), panel.as_str())
    );
    assert_eq!(ready.pid, lab.child.id());

    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let page = http.get(&panel).send().await.expect("GET /");
    assert!(page.status().is_success());
    let page = page.text().await.expect("page");
    assert!(page.contains("<title>"), "{page}");

    // One full frame over HTTP: the cluster as the lab sees it.
    let state: Update = http
        .get(format!("{panel}api/state"))
        .send()
        .await
        .expect("GET /api/state")
        .json()
        .await
        .expect("an Update");
    assert!(state.full);
    assert_eq!(state.cluster.nodes.len(), 3);
    assert_eq!(state.cluster.controller, controller);

    // A page from elsewhere cannot drive the lab.
    let foreign = http
        .post(format!("{panel}api/op"))
        .header("origin", "http://evil.example")
        .json(&serde_json::json!({"op": "kill", "node": "n1"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(foreign.status().as_u16(), 403);

    // The stream: a full frame first, with every device.
    let ws_url = format!("{}api/stream", panel.replacen("http://", "ws://", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url)
        .await
        .expect("the stream");
    let first = next_update(&mut ws).await;
    assert!(first.full, "the first frame replaces everything");
    assert!(first.devices.is_some(), "a full frame carries the devices");
    let mut u = first;
    let deadline = Instant::now() + PATIENCE;
    while u.traffic.live < 6 || u.checker.delivered == 0 {
        assert!(
            Instant::now() < deadline,
            "devices live and traffic flowing: {:?}",
            u.traffic
        );
        u = next_update(&mut ws).await;
        assert!(!u.full, "later frames are increments");
    }

    // An operation, as the panel posts it, answered once done; the stream follows.
    let result: OpResult = http
        .post(format!("{panel}api/op"))
        .json(&serde_json::json!({"op": "kill", "node": "n2"}))
        .send()
        .await
        .expect("POST /api/op")
        .json()
        .await
        .expect("an OpResult");
    assert!(result.ok, "{}", result.message);
    assert!(result.message.contains("n2"), "{}", result.message);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let u = next_update(&mut ws).await;
        let n2 = u.cluster.nodes.iter().find(|n| n.slot == "n2").expect("n2");
        if n2.state == NodeState::Dead && n2.devices == 0 && u.traffic.live == 6 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "n2 dead and its devices moved: {n2:?}, {:?}",
            u.traffic
        );
    }
    let refused: OpResult = http
        .post(format!("{panel}api/op"))
        .json(&serde_json::json!({"op": "kill", "node": "n9"}))
        .send()
        .await
        .expect("POST /api/op")
        .json()
        .await
        .expect("an OpResult");
    assert!(!refused.ok, "no node n9: {}", refused.message);
    let _ = ws.send(Message::Close(None)).await;

    // The reports.
    let report: Report = http
        .get(format!("{panel}api/report.json"))
        .send()
        .await
        .expect("GET report.json")
        .json()
        .await
        .expect("a Report");
    assert_eq!(report.run, state.run);
    assert!(report.checker.sent > 0);
    assert!(report.log.iter().any(|l| l.text.contains("n2 killed")));
    let html = http
        .get(format!("{panel}api/report.html"))
        .send()
        .await
        .expect("GET report.html")
        .text()
        .await
        .expect("html");
    assert!(
        html.contains("<svg") && html.contains("n2 killed"),
        "the page has plots and the log"
    );

    // The console printed what the panel did, and --report is written at exit.
    lab.until(|l| l.contains("n2 killed (SIGKILL"));
    assert!(
        lab.stop(),
        "lab up exits cleanly on SIGTERM: {}",
        lab.seen.join("\n")
    );
    let written = std::fs::read_to_string(&report_path).expect("the --report file");
    assert!(written.contains("id=\"verdict\"") && written.contains("n2 killed"));
}
