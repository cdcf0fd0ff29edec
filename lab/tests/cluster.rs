//! The lab against the real `server` binary: start, kill, restart, add, stop, shutdown, and
//! cleanup on drop and on panic. Needs the binary built first (`cargo build -p server`); the
//! lab finds it through `CHAT_SERVER_BIN` or beside the test binary, and a missing binary fails
//! these tests with that instruction rather than skipping them.

use std::collections::BTreeSet;
use std::time::Duration;

use lab::status::format_nodes;
use lab::{Cluster, ClusterConfig, LabError, ProcessState};
use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use protocol::http::NodeState;

/// Unwraps with the error's `Display`, which carries the server's log tail.
fn ok<T>(what: &str, r: Result<T, LabError>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

async fn start(nodes: usize) -> Cluster {
    ok(
        "starting a cluster (is the server built? `cargo build -p server`)",
        Cluster::start(ClusterConfig::new(nodes)).await,
    )
}

/// Whether a process with this pid exists (a zombie counts: it has not been reaped).
fn exists(pid: u32) -> bool {
    let pid = Pid::from_raw(i32::try_from(pid).expect("pid fits"));
    kill(pid, None) != Err(Errno::ESRCH)
}

fn all_pids(cluster: &Cluster) -> Vec<u32> {
    let mut pids: Vec<u32> = cluster.nodes().iter().map(|n| n.pid).collect();
    pids.push(cluster.controller_pid());
    pids
}

#[tokio::test]
async fn three_live_nodes_and_drop_leaves_no_process() {
    let cluster = start(3).await;
    let status = ok("GET /v1/nodes", cluster.nodes_status().await);
    let ids: BTreeSet<String> = status.nodes.iter().map(|n| n.id.to_string()).collect();
    assert_eq!(ids, BTreeSet::from(["n1".into(), "n2".into(), "n3".into()]));
    assert!(status.nodes.iter().all(|n| n.state == NodeState::Live));
    for node in cluster.nodes() {
        assert_eq!(node.process, ProcessState::Running);
        assert!(
            node.ws_url.starts_with("ws://127.0.0.1:"),
            "{}",
            node.ws_url
        );
        assert!(
            node.http_url.starts_with("http://127.0.0.1:"),
            "{}",
            node.http_url
        );
        let log = ok("log path", cluster.node_log(node.index));
        assert!(log.is_file(), "{}", log.display());
    }
    assert!(cluster.controller_url().starts_with("http://127.0.0.1:"));
    let (tokens, nodes) = (cluster.token_keys(), cluster.node_keys());
    assert!(tokens.is_some_and(|k| k.len() == 68), "{tokens:?}");
    assert!(nodes.is_some_and(|k| k.len() == 68), "{nodes:?}");
    assert_ne!(tokens, nodes);
    assert!(cluster.controller_log().is_file());

    let table = format_nodes(&status);
    assert_eq!(table.len(), 5, "{table:#?}");
    assert!(
        table[4].starts_with("registry: 3 live, 0 draining"),
        "{table:#?}"
    );

    let pids = all_pids(&cluster);
    let data_dir = cluster.data_dir().to_owned();
    assert!(pids.iter().all(|&p| exists(p)));
    drop(cluster);
    for pid in pids {
        assert!(!exists(pid), "pid {pid} survived the cluster's drop");
    }
    assert!(
        !data_dir.exists(),
        "temp data dir {} left",
        data_dir.display()
    );
}

#[tokio::test]
async fn killed_node_leaves_the_registry_and_restart_and_add_bring_nodes_back() {
    let mut cluster = start(3).await;
    let victim = ok("node 1", cluster.node(1));
    assert_eq!(victim.id.as_str(), "n2");

    let exit = ok("kill n2", cluster.kill_node(1).await);
    assert_eq!(lab::process::describe_status(exit.status), "SIGKILL");
    assert!(!exists(victim.pid), "the killed node was not reaped");
    assert_eq!(ok("node 1", cluster.node(1)).process, ProcessState::Killed);
    let lease = cluster.config().lease();
    ok(
        "n2 leaving /v1/nodes within the lease",
        cluster.wait_node_gone(&victim.id, lease).await,
    );
    ok("2 live", cluster.wait_nodes_live(2, lease).await);
    assert!(matches!(
        cluster.kill_node(1).await,
        Err(LabError::NotRunning { .. })
    ));

    let restarted = ok("restart n2", cluster.restart_node(1).await);
    assert_eq!(restarted.id.as_str(), "n2-r1");
    assert_eq!(restarted.process, ProcessState::Running);
    assert_ne!(restarted.pid, victim.pid);
    ok("3 live", cluster.wait_nodes_live(3, lease).await);

    let added = ok("add", cluster.add_node().await);
    assert_eq!((added.index, added.id.as_str()), (3, "n4"));
    let live = ok("4 live", cluster.wait_nodes_live(4, lease).await);
    let ids: BTreeSet<String> = live.iter().map(|n| n.id.to_string()).collect();
    assert_eq!(
        ids,
        BTreeSet::from(["n1".into(), "n2-r1".into(), "n3".into(), "n4".into()])
    );

    let exits = ok("graceful shutdown", cluster.shutdown().await);
    assert_eq!(exits.len(), 5, "4 nodes and the controller: {exits:?}");
}

#[tokio::test]
async fn graceful_stop_exits_zero_and_deregisters() {
    let mut cluster = start(2).await;
    let node = ok("node 0", cluster.node(0));
    let exit = ok("stop n1", cluster.stop_node(0).await);
    assert!(exit.is_clean(), "{exit}");
    assert!(matches!(
        ok("node 0", cluster.node(0)).process,
        ProcessState::Stopped { status } if status.success()
    ));
    // A drained node deregisters itself: no lease to wait out.
    ok(
        "n1 gone right after its exit",
        cluster
            .wait_node_gone(&node.id, Duration::from_secs(2))
            .await,
    );
    ok(
        "1 live",
        cluster.wait_nodes_live(1, Duration::from_secs(2)).await,
    );
    // A stopped slot restarts like a killed one.
    let again = ok("restart n1", cluster.restart_node(0).await);
    assert_eq!(again.id.as_str(), "n1-r1");
    // Restarting a running node stops it gracefully first.
    let third = ok("restart n1-r1", cluster.restart_node(0).await);
    assert_eq!(third.id.as_str(), "n1-r2");
    assert!(!exists(again.pid));
    let exits = ok("graceful shutdown", cluster.shutdown().await);
    assert!(exits.iter().all(|e| e.is_clean()), "{exits:?}");
}

#[test]
fn a_panicking_test_leaves_no_process_and_keeps_its_logs() {
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            let cluster = start(2).await;
            let _ = tx.send((all_pids(&cluster), cluster.data_dir().to_owned()));
            panic!("a deliberate failure while the cluster runs");
        })
    })
    .join();
    assert!(outcome.is_err(), "the thread should have panicked");
    let (pids, data_dir) = rx.recv().expect("the cluster started");
    for pid in pids {
        assert!(!exists(pid), "pid {pid} survived a panic");
    }
    assert!(
        data_dir.join("logs").join("controller.log").is_file(),
        "logs of a failed test are kept"
    );
    std::fs::remove_dir_all(&data_dir).expect("clean up the kept data dir");
}

#[tokio::test]
async fn a_frozen_node_is_dropped_when_its_lease_runs_out() {
    let mut config = ClusterConfig::new(2);
    config.lease_ms = Some(1_500);
    let mut cluster = ok("start", Cluster::start(config).await);
    let frozen = ok("node 0", cluster.node(0));
    let started = std::time::Instant::now();
    ok("freeze n1", cluster.pause_node(0));
    assert_eq!(ok("node 0", cluster.node(0)).process, ProcessState::Paused);
    // Its link stays open, so only the lease can give it away: not before, not much after.
    ok(
        "n1 leaving /v1/nodes at its lease",
        cluster
            .wait_node_gone(&frozen.id, Duration::from_millis(1_500 + 3_000))
            .await,
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1_000),
        "a frozen node was dropped after {waited:?}, well before its 1.5 s lease"
    );
    ok(
        "1 live",
        cluster.wait_nodes_live(1, Duration::from_secs(2)).await,
    );
    // A frozen process still dies with the cluster.
    let pids = all_pids(&cluster);
    drop(cluster);
    assert!(pids.iter().all(|&p| !exists(p)));
}

#[test]
fn a_cluster_dropped_after_its_runtime_still_dies() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let cluster = rt.block_on(start(1));
    let pids = all_pids(&cluster);
    drop(rt);
    drop(cluster);
    for pid in pids {
        assert!(!exists(pid), "pid {pid} survived");
    }
}

#[tokio::test]
async fn a_server_that_fails_to_start_is_reported_with_its_log() {
    let mut config = ClusterConfig::new(1);
    config.controller_args = vec!["--no-such-flag".into()];
    let err = match Cluster::start(config).await {
        Ok(_) => panic!("a controller with a bad flag started"),
        Err(e) => e,
    };
    // The data dir of a cluster that failed to start is kept, logs and all.
    let log = err.log_path().expect("the error names the log").to_owned();
    let data_dir = log.parent().and_then(|d| d.parent()).expect("data dir");
    assert!(log.is_file());
    std::fs::remove_dir_all(data_dir).expect("remove the kept data dir");
    let err = err.to_string();
    assert!(
        err.starts_with("controller exited before it was ready (exit status: 2)"),
        "{err}"
    );
    assert!(err.contains("--no-such-flag"), "{err}");
}
