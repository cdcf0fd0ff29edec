//! The `lab` binary end to end: `lab up` prints the controller URL first, obeys commands on
//! stdin, keeps running when stdin closes, and stops the cluster cleanly on `quit` or SIGTERM;
//! `lab status` prints the nodes. Needs the server binary (`cargo build -p server`).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A running `lab up`, stopped with SIGTERM (then SIGKILL) if the test ends early, so that it
/// takes its cluster down with it.
struct Lab {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    transcript: Vec<String>,
}

impl Lab {
    fn up(args: &[&str], stdin: bool) -> Lab {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lab"))
            .arg("up")
            .args(args)
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn lab");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stdin = child.stdin.take();
        Lab {
            child,
            stdin,
            lines,
            transcript: Vec::new(),
        }
    }

    /// Waits for a line that satisfies `want` and returns it.
    fn expect(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.transcript.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no {what} within 30 s; output:\n{}",
                        self.transcript.join("\n")
                    )
                }
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "lab's output ended before {what}; output:\n{}",
                    self.transcript.join("\n")
                ),
            }
        }
    }

    fn send(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is piped");
        writeln!(stdin, "{command}").expect("write a command");
        stdin.flush().expect("flush");
    }

    fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        let _ = kill(pid, signal);
    }

    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "lab did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The rest of the output, once the process has exited.
    fn rest(&mut self) -> Vec<String> {
        self.transcript.extend(self.lines.try_iter());
        self.transcript.clone()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn lab_status(url: &str, data_dir: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_lab"))
        .args(["status", "--controller", url, "--data-dir", data_dir])
        .output()
        .expect("run lab status");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn lab_up_prints_the_url_first_and_obeys_commands() {
    let mut lab = Lab::up(&["--nodes", "2"], true);
    let first = lab.expect("the URL line", |_| true);
    assert!(
        first.starts_with("http://127.0.0.1:"),
        "first line: {first:?}"
    );
    assert!(
        !first.contains(' '),
        "the URL line holds the URL alone: {first:?}"
    );
    let note = lab.expect("the data dir", |l| l.starts_with("data dir "));
    let data_dir = note
        .strip_prefix("data dir ")
        .and_then(|rest| rest.split(" (").next())
        .unwrap_or_default()
        .to_owned();
    lab.expect("the first status", |l| {
        l.contains("2 running · registry: 2 live")
    });

    let table = lab_status(&first, &data_dir);
    assert!(table.starts_with("NODE"), "{table}");
    assert!(table.contains("registry: 2 live, 0 draining"), "{table}");

    lab.send("kill 2");
    lab.expect("the kill report", |l| {
        l.contains("n2 killed (SIGKILL") && l.contains("gone from the registry after")
    });
    lab.send("restart n2");
    lab.expect("the restart report", |l| {
        l.contains("n2 restarted as n2-r1")
    });
    lab.send("stop 1");
    lab.expect("the stop report", |l| {
        l.contains("n1 stopped (SIGTERM): exit 0")
    });
    lab.send("bogus");
    lab.expect("the complaint", |l| l.contains("unknown command \"bogus\""));
    lab.send("quit");
    lab.expect("the shutdown", |l| l.contains("quit: stopping the cluster"));
    let status = lab.wait(Duration::from_secs(30));
    let out = lab.rest();
    assert!(status.success(), "{status}; output:\n{}", out.join("\n"));
    assert!(
        out.iter().any(|l| l.contains("cluster stopped cleanly")),
        "{out:#?}"
    );
    // The output is plain lines when stdout is not a terminal.
    assert!(out.iter().all(|l| !l.contains('\x1b')), "{out:#?}");
}

#[test]
fn lab_up_outlives_its_stdin_and_stops_on_sigterm() {
    let mut lab = Lab::up(&["--nodes", "1"], false);
    lab.expect("the URL line", |l| l.starts_with("http://127.0.0.1:"));
    lab.expect("the stdin notice", |l| l.contains("stdin closed"));
    assert!(
        lab.child.try_wait().expect("try_wait").is_none(),
        "EOF stopped lab"
    );
    lab.signal(Signal::SIGTERM);
    lab.expect("the shutdown", |l| {
        l.contains("SIGTERM: stopping the cluster")
    });
    let status = lab.wait(Duration::from_secs(30));
    let out = lab.rest();
    assert!(status.success(), "{status}; output:\n{}", out.join("\n"));
    assert!(
        out.iter().any(|l| l.contains("cluster stopped cleanly")),
        "{out:#?}"
    );
}
