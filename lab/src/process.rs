//! One supervised server process: spawned with its stderr going straight into a log file, its
//! stdout read for the `CHAT_READY` line (and drained afterwards into the same log, so the
//! child never blocks on a full pipe), signalled with SIGTERM or SIGKILL, and reaped.
//!
//! Invariant: a [`ServerProcess`] that is dropped while its child still runs kills it with
//! SIGKILL and reaps it before `drop` returns, without needing a tokio runtime. That is what
//! lets tests panic anywhere without leaving servers behind.

use std::ffi::OsString;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use protocol::http::ReadyLine;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::oneshot;

use crate::LabError;

/// How many log lines an error quotes.
pub const LOG_TAIL_LINES: usize = 40;

/// How long a SIGTERM waits for the process to install its handler (see
/// `wait_for_sigterm_handler`).
const SIGTERM_HANDLER_WAIT: Duration = Duration::from_secs(1);

/// How long `Drop` waits for a SIGKILLed child to be reaped. A killed process goes away in
/// microseconds unless it is stuck in the kernel; we would rather leak a zombie than hang.
const DROP_REAP_LIMIT: Duration = Duration::from_secs(5);

/// What to run.
#[derive(Clone, Debug)]
pub struct ProcessSpec {
    /// The process's name in the lab (`controller`, `n1`, `n1-r1`); also its log file's stem.
    pub name: String,
    /// The binary.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Variables removed from the inherited environment.
    pub env_remove: Vec<OsString>,
    /// Variables set for it.
    pub env: Vec<(OsString, OsString)>,
    /// Where its stderr (and its stdout after the ready line) goes. Truncated at spawn.
    pub log_path: PathBuf,
    /// Put the child in a process group of its own, so that a Ctrl-C in the terminal reaches
    /// only the supervisor, which then stops the cluster in order. Leave it off in tests: then
    /// a Ctrl-C on `cargo test` (which skips every `Drop`) still reaches the servers.
    pub own_process_group: bool,
}

/// How a process ended.
#[derive(Clone, Debug)]
pub struct Exit {
    /// The process's name in the lab.
    pub name: String,
    /// Its pid.
    pub pid: u32,
    /// Its exit status.
    pub status: ExitStatus,
    /// From the signal (or from the start of the wait) to the exit.
    pub took: Duration,
    /// Whether it had to be killed with SIGKILL after a SIGTERM went unanswered.
    pub forced: bool,
}

impl Exit {
    /// Exited by itself with status 0.
    pub fn is_clean(&self) -> bool {
        self.status.success() && !self.forced
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (pid {}) ended: {} after {} ms",
            self.name,
            self.pid,
            describe_status(self.status),
            self.took.as_millis()
        )?;
        if self.forced {
            f.write_str(" (SIGTERM went unanswered; killed)")?;
        }
        Ok(())
    }
}

/// `exit 0`, `exit 101`, `SIGKILL`: shorter than `ExitStatus`'s own display.
pub fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        format!("exit {code}")
    } else if let Some(sig) = status.signal() {
        match Signal::try_from(sig) {
            Ok(s) => s.as_str().to_owned(),
            Err(_) => format!("signal {sig}"),
        }
    } else {
        status.to_string()
    }
}

/// A running (or ended, not yet dropped) server process.
#[derive(Debug)]
pub struct ServerProcess {
    name: String,
    pid: u32,
    child: Child,
    log_path: PathBuf,
    started: Instant,
    /// The ready line, once it came.
    ready: Option<ReadyLine>,
    /// Where the stdout reader hands over the ready line; taken by the first wait.
    ready_rx: Option<oneshot::Receiver<ReadyLine>>,
    /// Set once the child has been reaped, so it is never waited for or signalled again.
    exit: Option<ExitStatus>,
    /// Stopped with SIGSTOP by [`ServerProcess::pause`].
    paused: bool,
}

/// Creates (or truncates) a file readable and writable by its owner only.
fn private_file(path: &std::path::Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

impl ServerProcess {
    /// Starts the process. It is not ready yet: call [`ServerProcess::wait_ready`].
    ///
    /// Must be called inside a tokio runtime (the stdout reader is a task).
    pub fn spawn(spec: ProcessSpec) -> Result<ServerProcess, LabError> {
        // Logs say who logged in from where: their owner's alone, like the data dir.
        if let Some(dir) = spec.log_path.parent() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| LabError::io(format!("creating log dir {}", dir.display()), e))?;
        }
        // Both writers (the child's stderr, our stdout drain) append: with a plain write
        // handle the child would write at its own offset, over the lines we appended.
        let open_log = || {
            OpenOptions::new()
                .append(true)
                .open(&spec.log_path)
                .map_err(|e| {
                    LabError::io(format!("opening log file {}", spec.log_path.display()), e)
                })
        };
        // A log file of an earlier run with the same name starts over.
        drop(private_file(&spec.log_path).map_err(|e| {
            LabError::io(format!("creating log file {}", spec.log_path.display()), e)
        })?);
        let stderr = open_log()?;
        let stdout_log = open_log()?;

        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            // The servers must never read the supervisor's terminal.
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // Straight into the file: logs keep flowing even if our runtime is gone.
            .stderr(Stdio::from(stderr));
        for k in &spec.env_remove {
            cmd.env_remove(k);
        }
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        if spec.own_process_group {
            cmd.process_group(0);
        }
        let mut child = cmd.spawn().map_err(|source| LabError::Spawn {
            name: spec.name.clone(),
            program: spec.program.clone(),
            source,
        })?;
        let pid = child.id().unwrap_or(0);
        let (tx, rx) = oneshot::channel();
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(drain_stdout(stdout, stdout_log, tx));
        }
        tracing::debug!(name = %spec.name, pid, "spawned");
        Ok(ServerProcess {
            name: spec.name,
            pid,
            child,
            log_path: spec.log_path,
            started: Instant::now(),
            ready: None,
            ready_rx: Some(rx),
            exit: None,
            paused: false,
        })
    }

    /// Waits for the `CHAT_READY` line, at most `limit`. Fails with the log tail if the process
    /// exits first or stays silent.
    pub async fn wait_ready(&mut self, limit: Duration) -> Result<&ReadyLine, LabError> {
        if self.ready.is_none() {
            let line = self.wait_ready_line(limit).await?;
            self.ready = Some(line);
        }
        self.ready
            .as_ref()
            .ok_or_else(|| self.not_ready("its CHAT_READY line", limit))
    }

    async fn wait_ready_line(&mut self, limit: Duration) -> Result<ReadyLine, LabError> {
        let started = Instant::now();
        let Some(rx) = self.ready_rx.take() else {
            // A previous wait gave up; the line can no longer arrive.
            return Err(self.not_ready("its CHAT_READY line (an earlier wait gave up)", limit));
        };
        let deadline = tokio::time::Instant::now() + limit;
        tokio::select! {
            line = rx => match line {
                Ok(line) => Ok(line),
                Err(_) => {
                    // Stdout closed without the line: the process is exiting, or closed its
                    // stdout on purpose. Give it a moment to exit so we can report how.
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    match tokio::time::timeout(left.min(Duration::from_secs(5)), self.child.wait())
                        .await
                    {
                        Ok(Ok(status)) => Err(self.exited_early(status)),
                        _ => Err(self.not_ready(
                            "its CHAT_READY line (it closed its stdout without printing it)",
                            started.elapsed(),
                        )),
                    }
                }
            },
            status = self.child.wait() => match status {
                Ok(status) => Err(self.exited_early(status)),
                Err(e) => Err(LabError::io(format!("waiting for {}", self.name), e)),
            },
            _ = tokio::time::sleep_until(deadline) => {
                Err(self.not_ready("its CHAT_READY line", limit))
            }
        }
    }

    fn exited_early(&mut self, status: ExitStatus) -> LabError {
        self.exit = Some(status);
        LabError::ExitedEarly {
            name: self.name.clone(),
            status,
            log: self.log_path.clone(),
            tail: self.log_tail(),
        }
    }

    /// A [`LabError::NotReady`] for this process.
    pub(crate) fn not_ready(&self, what: &str, waited: Duration) -> LabError {
        LabError::NotReady {
            name: self.name.clone(),
            what: what.to_owned(),
            waited,
            log: self.log_path.clone(),
            tail: self.log_tail(),
        }
    }

    /// The process's name in the lab.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its ready line, once [`ServerProcess::wait_ready`] succeeded.
    pub fn ready(&self) -> Option<&ReadyLine> {
        self.ready.as_ref()
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last [`LOG_TAIL_LINES`] lines of its log.
    pub fn log_tail(&self) -> String {
        read_tail(&self.log_path, LOG_TAIL_LINES)
    }

    /// Time since it was spawned.
    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }

    /// Its exit status if it has ended (reaping it if it just did).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.exit = Some(status);
        }
        self.exit
    }

    /// Its exit status if the lab has already seen it exit (without reaping: usable through
    /// `&self`).
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.exit
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Kills it with SIGKILL (a crash, as far as the cluster can tell) and reaps it.
    pub async fn kill(&mut self) -> Result<Exit, LabError> {
        let started = Instant::now();
        if self.try_status().is_none() {
            self.child
                .start_kill()
                .map_err(|e| LabError::io(format!("killing {}", self.name), e))?;
        }
        let status = self.wait().await?;
        Ok(self.exit_report(status, started, false))
    }

    /// Asks it to stop with SIGTERM and waits for it to exit, at most `limit`; past that it is
    /// killed with SIGKILL and the returned [`Exit`] says `forced`.
    pub async fn terminate(&mut self, limit: Duration) -> Result<Exit, LabError> {
        let started = Instant::now();
        if self.try_status().is_none() {
            self.wait_for_sigterm_handler().await;
            self.signal(Signal::SIGTERM)?;
            if self.paused {
                // A stopped process only handles the SIGTERM once it runs again.
                self.resume()?;
            }
        }
        match tokio::time::timeout(limit, self.wait()).await {
            Ok(status) => Ok(self.exit_report(status?, started, false)),
            Err(_) => {
                tracing::warn!(name = %self.name, "no exit after SIGTERM; killing");
                self.child
                    .start_kill()
                    .map_err(|e| LabError::io(format!("killing {}", self.name), e))?;
                let status = self.wait().await?;
                Ok(self.exit_report(status, started, true))
            }
        }
    }

    /// Freezes it with SIGSTOP: it keeps its sockets open but does nothing (no heartbeats, no
    /// reads), like a hung process or a long GC pause. SIGKILL still ends it.
    pub fn pause(&mut self) -> Result<(), LabError> {
        if self.try_status().is_none() {
            self.signal(Signal::SIGSTOP)?;
            self.paused = true;
        }
        Ok(())
    }

    /// Lets a paused process run again with SIGCONT.
    pub fn resume(&mut self) -> Result<(), LabError> {
        if self.try_status().is_none() {
            self.signal(Signal::SIGCONT)?;
        }
        self.paused = false;
        Ok(())
    }

    /// Whether the lab paused it (and has not resumed it).
    pub fn is_paused(&self) -> bool {
        self.paused && self.exit.is_none()
    }

    /// Like [`ServerProcess::terminate`], but a forced kill is an error
    /// ([`LabError::StopTimeout`], with the log tail).
    pub async fn stop(&mut self, limit: Duration) -> Result<Exit, LabError> {
        let exit = self.terminate(limit).await?;
        if exit.forced {
            return Err(LabError::StopTimeout {
                name: self.name.clone(),
                pid: self.pid,
                waited: limit,
                log: self.log_path.clone(),
                tail: self.log_tail(),
            });
        }
        Ok(exit)
    }

    /// Waits for it to exit and reaps it.
    pub async fn wait(&mut self) -> Result<ExitStatus, LabError> {
        if let Some(status) = self.exit {
            return Ok(status);
        }
        let status = self
            .child
            .wait()
            .await
            .map_err(|e| LabError::io(format!("waiting for {}", self.name), e))?;
        self.exit = Some(status);
        Ok(status)
    }

    /// Waits (briefly) until the process catches or ignores SIGTERM. A process that prints its
    /// ready line before it installs its handler would otherwise be killed outright by a
    /// SIGTERM sent right after that line (seen with `server node`: "graceful" stops ended by
    /// signal 15 when a test stopped a node it had just started). Where this cannot be read
    /// (not Linux), or past [`SIGTERM_HANDLER_WAIT`], the signal is sent anyway.
    async fn wait_for_sigterm_handler(&self) {
        if self.paused {
            // It cannot install anything while stopped.
            return;
        }
        let deadline = Instant::now() + SIGTERM_HANDLER_WAIT;
        while handles_signal(self.pid, Signal::SIGTERM) == Some(false) {
            if Instant::now() >= deadline {
                tracing::warn!(name = %self.name, "no SIGTERM handler; sending it anyway");
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn signal(&self, signal: Signal) -> Result<(), LabError> {
        let Ok(raw) = i32::try_from(self.pid) else {
            return Ok(());
        };
        // Only called while our `Child` has not been reaped, so the pid is still ours (a
        // zombie at worst) and cannot have been reused by another process.
        match kill(Pid::from_raw(raw), signal) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(source) => Err(LabError::Signal {
                name: self.name.clone(),
                pid: self.pid,
                signal: signal.as_str(),
                source,
            }),
        }
    }

    fn exit_report(&self, status: ExitStatus, started: Instant, forced: bool) -> Exit {
        Exit {
            name: self.name.clone(),
            pid: self.pid,
            status,
            took: started.elapsed(),
            forced,
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill_now();
    }
}

impl ServerProcess {
    /// Kills it with SIGKILL and reaps it, synchronously: for `Drop`, in or out of a runtime.
    pub fn kill_now(&mut self) {
        if self.try_status().is_some() {
            return;
        }
        tracing::debug!(name = %self.name, pid = self.pid, "killing on drop");
        if self.child.start_kill().is_err() {
            return;
        }
        // Reap synchronously (no runtime needed: `try_wait` is a plain `waitpid`), so that the
        // pid is really gone when the owner's `drop` returns.
        let deadline = Instant::now() + DROP_REAP_LIMIT;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.exit = Some(status);
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
                Err(_) => return,
            }
        }
    }
}

/// Whether process `pid` catches or ignores `signal`, from `/proc/<pid>/status`; `None` when
/// that cannot be read.
fn handles_signal(pid: u32, signal: Signal) -> Option<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    signal_in_masks(&status, signal)
}

/// Looks `signal` up in the `SigCgt` (caught) and `SigIgn` (ignored) masks of a
/// `/proc/<pid>/status` text.
fn signal_in_masks(status: &str, signal: Signal) -> Option<bool> {
    let bit = 1u64 << (signal as i32 - 1);
    let mask = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    };
    Some((mask("SigCgt:")? | mask("SigIgn:")?) & bit != 0)
}

/// Reads the child's stdout to its end: the first ready line goes to `ready`, every line goes
/// to the log. Running to EOF (rather than stopping at the ready line) keeps the pipe from
/// filling up and blocking the child.
async fn drain_stdout(stdout: ChildStdout, mut log: File, ready: oneshot::Sender<ReadyLine>) {
    let mut ready = Some(ready);
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        // A failed log write must not stop the draining.
        let _ = writeln!(log, "[stdout] {line}");
        if ready.is_some()
            && let Some(parsed) = ReadyLine::parse(&line)
            && let Some(tx) = ready.take()
        {
            let _ = tx.send(parsed);
        }
    }
}

/// The last `max_lines` lines of a file (reading at most its last 64 KiB); empty if it cannot
/// be read.
pub fn read_tail(path: &Path, max_lines: usize) -> String {
    const WINDOW: u64 = 64 * 1024;
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(WINDOW);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        // The first line was cut by the window.
        lines.remove(0);
    }
    let from = lines.len().saturating_sub(max_lines);
    lines[from..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(name: &str, dir: &Path, script: &str) -> ProcessSpec {
        ProcessSpec {
            name: name.into(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env_remove: vec![],
            env: vec![("LAB_TEST_VAR".into(), "from-lab".into())],
            log_path: dir.join(format!("{name}.log")),
            own_process_group: false,
        }
    }

    /// A shell command printing a ready line with the shell's own pid.
    fn echo_ready() -> &'static str {
        r#"echo "CHAT_READY {\"role\":\"controller\",\"http_url\":\"http://127.0.0.1:1\",\"pid\":$$}""#
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("a.log");
        let text: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).expect("write");
        assert_eq!(read_tail(&path, 3), "line 98\nline 99\nline 100");
        assert_eq!(read_tail(&dir.path().join("missing.log"), 3), "");
    }

    #[test]
    fn tail_of_a_big_file_drops_the_cut_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("big.log");
        let text: String = (0..20_000).map(|i| format!("entry {i:06}\n")).collect();
        std::fs::write(&path, text).expect("write");
        let tail = read_tail(&path, 100_000);
        assert!(
            tail.lines()
                .all(|l| l.starts_with("entry ") && l.len() == 12)
        );
        assert!(tail.ends_with("entry 019999"));
    }

    #[test]
    fn signal_masks_are_read() {
        let status = "Name:\tserver\nSigBlk:\t0000000000000000\n\
                      SigIgn:\t0000000000001000\nSigCgt:\t0000000000004002\n";
        // SIGTERM is 15: bit 14 (0x4000) of SigCgt.
        assert_eq!(signal_in_masks(status, Signal::SIGTERM), Some(true));
        // SIGPIPE is 13: bit 12 (0x1000) of SigIgn.
        assert_eq!(signal_in_masks(status, Signal::SIGPIPE), Some(true));
        assert_eq!(signal_in_masks(status, Signal::SIGHUP), Some(false));
        assert_eq!(signal_in_masks("Name:\tx\n", Signal::SIGTERM), None);
    }

    #[tokio::test]
    async fn sigterm_waits_for_a_late_handler() {
        // The handler comes 200 ms after the ready line: a SIGTERM right away must still end
        // in a clean exit.
        let dir = tempfile::tempdir().expect("temp dir");
        let script = format!(
            "{}; sleep 0.2; trap 'exit 0' TERM; while :; do sleep 0.05; done",
            echo_ready()
        );
        let mut p = ServerProcess::spawn(sh("late", dir.path(), &script)).expect("spawn");
        p.wait_ready(Duration::from_secs(10)).await.expect("ready");
        let exit = p.stop(Duration::from_secs(10)).await.expect("stop");
        assert!(exit.is_clean(), "{exit}");
    }

    #[tokio::test]
    async fn ready_line_is_found_among_other_output_and_stdout_keeps_draining() {
        let dir = tempfile::tempdir().expect("temp dir");
        let script = format!(
            "echo starting; echo 'to stderr' >&2; {}; \
             i=0; while [ $i -lt 2000 ]; do echo \"after $i $LAB_TEST_VAR\"; i=$((i+1)); done; \
             exec sleep 30",
            echo_ready()
        );
        let mut p = ServerProcess::spawn(sh("c", dir.path(), &script)).expect("spawn");
        let ready = p
            .wait_ready(Duration::from_secs(10))
            .await
            .expect("ready")
            .clone();
        assert_eq!(ready.role, "controller");
        assert_eq!(ready.pid, p.pid());
        // Everything after the ready line still lands in the log.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !read_tail(p.log_path(), 1).contains("after 1999 from-lab") {
            assert!(Instant::now() < deadline, "log: {}", p.log_tail());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let log = std::fs::read_to_string(p.log_path()).expect("log");
        assert!(log.contains("to stderr"));
        assert!(log.contains("[stdout] starting"));
        let exit = p.kill().await.expect("kill");
        assert_eq!(describe_status(exit.status), "SIGKILL");
        assert!(!exit.is_clean());
    }

    #[tokio::test]
    async fn early_exit_reports_status_and_log() {
        let dir = tempfile::tempdir().expect("temp dir");
        let spec = sh("n1", dir.path(), "echo 'error: cannot bind' >&2; exit 3");
        let mut p = ServerProcess::spawn(spec).expect("spawn");
        let err = p.wait_ready(Duration::from_secs(10)).await.err();
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains("n1 exited before it was ready (exit status: 3)"),
            "{msg}"
        );
        assert!(msg.contains("error: cannot bind"), "{msg}");
    }

    #[tokio::test]
    async fn silence_times_out_with_the_log_tail() {
        let dir = tempfile::tempdir().expect("temp dir");
        let spec = sh(
            "n2",
            dir.path(),
            "echo 'waiting for controller' >&2; exec sleep 30",
        );
        let mut p = ServerProcess::spawn(spec).expect("spawn");
        let err = p.wait_ready(Duration::from_millis(300)).await.err();
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.starts_with("n2 not ready after 0.3 s"), "{msg}");
        assert!(msg.contains("waiting for controller"), "{msg}");
    }

    #[tokio::test]
    async fn terminate_reports_a_clean_exit() {
        let dir = tempfile::tempdir().expect("temp dir");
        let script = format!(
            "trap 'exit 0' TERM; {}; while :; do sleep 0.05; done",
            echo_ready()
        );
        let mut p = ServerProcess::spawn(sh("n3", dir.path(), &script)).expect("spawn");
        p.wait_ready(Duration::from_secs(10)).await.expect("ready");
        let exit = p.stop(Duration::from_secs(10)).await.expect("stop");
        assert!(exit.is_clean(), "{exit}");
        assert!(!p.is_running());
    }

    #[tokio::test]
    async fn terminate_that_is_ignored_ends_in_sigkill() {
        let dir = tempfile::tempdir().expect("temp dir");
        let script = format!(
            "trap '' TERM; {}; while :; do sleep 0.05; done",
            echo_ready()
        );
        let mut p = ServerProcess::spawn(sh("n4", dir.path(), &script)).expect("spawn");
        p.wait_ready(Duration::from_secs(10)).await.expect("ready");
        let err = p.stop(Duration::from_millis(300)).await.err();
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains("did not exit within 0.3 s of SIGTERM"),
            "{msg}"
        );
        assert_eq!(
            p.try_status().map(describe_status).as_deref(),
            Some("SIGKILL")
        );
    }

    #[tokio::test]
    async fn a_paused_process_still_stops_gracefully() {
        let dir = tempfile::tempdir().expect("temp dir");
        let script = format!(
            "trap 'exit 0' TERM; {}; while :; do sleep 0.05; done",
            echo_ready()
        );
        let mut p = ServerProcess::spawn(sh("frozen", dir.path(), &script)).expect("spawn");
        p.wait_ready(Duration::from_secs(10)).await.expect("ready");
        p.pause().expect("pause");
        assert!(p.is_paused());
        let exit = p.stop(Duration::from_secs(10)).await.expect("stop");
        assert!(exit.is_clean(), "{exit}");
        assert!(!p.is_paused());
    }

    #[test]
    fn drop_kills_and_reaps_outside_a_runtime() {
        let dir = tempfile::tempdir().expect("temp dir");
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let p = rt.block_on(async {
            let script = format!("{}; exec sleep 30", echo_ready());
            let mut p = ServerProcess::spawn(sh("n5", dir.path(), &script)).expect("spawn");
            p.wait_ready(Duration::from_secs(10)).await.expect("ready");
            p
        });
        drop(rt);
        let pid = Pid::from_raw(i32::try_from(p.pid()).expect("pid"));
        assert_eq!(kill(pid, None), Ok(()));
        drop(p);
        assert_eq!(kill(pid, None), Err(Errno::ESRCH));
    }
}
