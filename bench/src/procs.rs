//! The processes a run measures, read from `/proc`: their CPU time by group, their resident
//! memory, the machine's load; and stopping the processes of a system measured beside ours.

use std::collections::HashMap;
use std::time::Duration;

/// Reads `/proc/<pid>/stat` CPU time (user + system) in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The command name is in parentheses and may hold spaces: split after the last ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields after ')' start at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
    let stime: u64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    utime + stime
}

/// Resident memory of a process, in bytes.
pub(crate) fn rss_bytes(pid: u32) -> i64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<i64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// The machine's load averages (1, 5, 15 minutes) as `/proc/loadavg` says: the figures of a
/// busy machine are not comparable with a quiet one's.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

/// Pids of processes whose command name is one of `names`.
fn pids_named(names: &[String]) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| names.iter().any(|n| c.trim() == n))
                .unwrap_or(false)
        })
        .collect()
}

pub(crate) const TICKS_PER_SEC: f64 = 100.0;

/// The server processes whose CPU the figures count, in named groups: for our cluster the
/// controller, each node, and each external command (all its processes together, e.g. every
/// `postgres` backend). External servers are found by name at every reading: PostgreSQL forks
/// a backend per connection, and the nodes' pools connect as the load comes.
pub struct CpuGroups(Vec<(String, Members)>);

/// The processes of one group.
pub enum Members {
    /// These processes.
    Pids(Vec<u32>),
    /// Every process of this command name, at each reading.
    Named(String),
}

/// One reading: CPU ticks so far of each process of each group.
pub(crate) type Ticks = Vec<HashMap<u32, u64>>;

impl CpuGroups {
    /// Named groups as given.
    pub fn new(groups: Vec<(String, Members)>) -> Self {
        CpuGroups(groups)
    }

    /// CPU ticks of each process of each group so far.
    pub(crate) fn ticks(&self) -> Ticks {
        self.0
            .iter()
            .map(|(_, members)| {
                let pids = match members {
                    Members::Pids(p) => p.clone(),
                    Members::Named(name) => pids_named(std::slice::from_ref(name)),
                };
                pids.into_iter().map(|p| (p, cpu_ticks(p))).collect()
            })
            .collect()
    }

    /// Each group's CPU between two readings, in cores over `secs`. A process that appeared in
    /// between spent all its CPU in between; one that went away is missed for its last stretch.
    pub(crate) fn cores(&self, before: &Ticks, after: &Ticks, secs: f64) -> Vec<(String, f64)> {
        self.0
            .iter()
            .zip(before.iter().zip(after))
            .map(|((name, _), (b, a))| {
                let spent: u64 = a
                    .iter()
                    .map(|(pid, t)| t.saturating_sub(b.get(pid).copied().unwrap_or(0)))
                    .sum();
                (name.clone(), spent as f64 / TICKS_PER_SEC / secs)
            })
            .collect()
    }
}

/// Stops the processes of a cluster measured beside ours: SIGTERM to each, then SIGKILL to what
/// is still running after `grace`.
pub(crate) async fn stop_processes(
    processes: impl Iterator<Item = (u32, &mut tokio::process::Child)>,
    grace: Duration,
) {
    let mut children = Vec::new();
    for (pid, child) in processes {
        if let Ok(pid) = i32::try_from(pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        children.push(child);
    }
    for child in children {
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
    }
}
