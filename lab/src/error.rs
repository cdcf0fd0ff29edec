//! What can go wrong while supervising a cluster. Every variant about a process carries the
//! tail of that process's log, so a failing test says *why* the server did not come up instead
//! of only "timed out".

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Why a lab operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The `server` binary could not be located; the message says where we looked and how to
    /// build it.
    #[error("{0}")]
    BinaryNotFound(String),

    /// The operating system refused to start the process.
    #[error("cannot start {name} ({program}): {source}")]
    Spawn {
        /// The process's name in the lab (`controller`, `n1`, ...).
        name: String,
        /// The binary we tried to run.
        program: PathBuf,
        /// Why.
        source: std::io::Error,
    },

    /// The process is running but did not become ready in time.
    #[error("{name} not ready after {:.1} s: {what}{}", waited.as_secs_f64(), tail_section(log, tail))]
    NotReady {
        /// The process's name in the lab.
        name: String,
        /// What we were waiting for (its ready line, its health check, its registration).
        what: String,
        /// How long we waited.
        waited: Duration,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log.
        tail: String,
    },

    /// The process exited while we were waiting for it to become ready.
    #[error(
        "{name} exited before it was ready ({status}){}",
        tail_section(log, tail)
    )]
    ExitedEarly {
        /// The process's name in the lab.
        name: String,
        /// How it ended.
        status: ExitStatus,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log.
        tail: String,
    },

    /// A SIGTERM did not end the process in time, so it was killed with SIGKILL.
    #[error(
        "{name} (pid {pid}) did not exit within {:.1} s of SIGTERM; killed it with SIGKILL{}",
        waited.as_secs_f64(),
        tail_section(log, tail)
    )]
    StopTimeout {
        /// The process's name in the lab.
        name: String,
        /// Its pid.
        pid: u32,
        /// How long we waited after SIGTERM.
        waited: Duration,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log.
        tail: String,
    },

    /// Sending a signal failed (other than to a process that had already exited).
    #[error("cannot send {signal} to {name} (pid {pid}): {source}")]
    Signal {
        /// The process's name in the lab.
        name: String,
        /// Its pid.
        pid: u32,
        /// SIGTERM or SIGKILL.
        signal: &'static str,
        /// Why.
        source: nix::Error,
    },

    /// A request to a server could not be made or its body could not be read.
    #[error("HTTP request to {url} failed: {source}")]
    Http {
        /// The URL.
        url: String,
        /// Why.
        source: reqwest::Error,
    },

    /// A server answered with an error status.
    #[error("HTTP request to {url} answered {status}: {body}")]
    HttpStatus {
        /// The URL.
        url: String,
        /// The status.
        status: reqwest::StatusCode,
        /// The start of the body.
        body: String,
    },

    /// A condition polled on the controller did not hold in time.
    #[error("timed out after {:.1} s waiting for {what}; last seen: {seen}", waited.as_secs_f64())]
    Timeout {
        /// What we waited for.
        what: String,
        /// How long.
        waited: Duration,
        /// What the controller said last (or the last error).
        seen: String,
    },

    /// No node slot has this index.
    #[error("no node slot {index} (the cluster has {count})")]
    NoSuchSlot {
        /// The index asked for (0-based).
        index: usize,
        /// How many slots there are.
        count: usize,
    },

    /// The node in this slot is not running, so it cannot be killed or stopped.
    #[error("{name} is not running")]
    NotRunning {
        /// The slot's name (`n2`).
        name: String,
    },

    /// The cluster was started without proxies in front of its nodes' bus connections
    /// ([`crate::ClusterConfig::cuttable_bus`]), so none can be cut.
    #[error("cannot cut {name}'s bus connection: {why}")]
    NotCuttable {
        /// The node.
        name: String,
        /// Why not.
        why: String,
    },

    /// One or more processes did not stop cleanly during [`crate::Cluster::shutdown`] (every
    /// process has been ended anyway).
    #[error("unclean shutdown: {summary}")]
    UncleanShutdown {
        /// One line per process that did not exit with status 0, with its log tail.
        summary: String,
    },

    /// A local file operation failed (temp dir, log file).
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// Why.
        source: std::io::Error,
    },

    /// The panel's web server could not start.
    #[error("the lab panel: {0}")]
    Panel(String),
    /// A lesson's cluster could not be set up (its backend set, its services).
    #[error("lesson: {0}")]
    Lesson(String),
}

impl LabError {
    /// The log file of the process this error is about, if it is about one.
    pub fn log_path(&self) -> Option<&std::path::Path> {
        match self {
            LabError::NotReady { log, .. }
            | LabError::ExitedEarly { log, .. }
            | LabError::StopTimeout { log, .. } => Some(log),
            _ => None,
        }
    }

    /// An [`LabError::Io`] with a description.
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        LabError::Io {
            what: what.into(),
            source,
        }
    }
}

/// The log tail as a block under the error line, or nothing when the log is empty.
fn tail_section(log: &std::path::Path, tail: &str) -> String {
    if tail.trim().is_empty() {
        format!(" (log {} is empty)", log.display())
    } else {
        format!(
            "\n--- last lines of {} ---\n{}\n---",
            log.display(),
            tail.trim_end()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_ready_shows_the_log_tail() {
        let e = LabError::NotReady {
            name: "n1".into(),
            what: "its CHAT_READY line".into(),
            waited: Duration::from_millis(20_000),
            log: PathBuf::from("/tmp/logs/n1.log"),
            tail: "ERROR cannot reach controller\n".into(),
        };
        let text = e.to_string();
        assert!(text.starts_with("n1 not ready after 20.0 s: its CHAT_READY line\n"));
        assert!(text.contains("--- last lines of /tmp/logs/n1.log ---\nERROR cannot reach"));
    }

    #[test]
    fn empty_log_is_said_so() {
        let e = LabError::NotReady {
            name: "controller".into(),
            what: "its CHAT_READY line".into(),
            waited: Duration::from_secs(1),
            log: PathBuf::from("c.log"),
            tail: String::new(),
        };
        assert!(e.to_string().ends_with("(log c.log is empty)"));
    }
}
