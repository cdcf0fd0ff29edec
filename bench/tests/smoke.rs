//! The benchmark's generator against the systems it measures, briefly: this project's cluster
//! (embedded stack), the Socket.IO peer on the real Redis, and the floor (bare relay nodes that
//! persist each message). Every message sent in a phase must reach its recipient, on another
//! node, and the figures must say so. The peer needs its
//! packages (`npm ci --prefix bench/socketio-peer`, which `scripts/test` runs) and Redis on
//! 127.0.0.1:6379 (`scripts/services.sh`); without them these tests fail saying so.

use std::time::Duration;

use bench::floor::{self, FloorCluster};
use bench::peer::{self, PeerCluster};
use bench::{BenchConfig, PhaseReport, ours};
use lab::{Cluster, ClusterConfig};

fn config() -> BenchConfig {
    BenchConfig {
        users: 12,
        rates: vec![200],
        phase: Duration::from_secs(1),
        idle: 20,
        external: Vec::new(),
    }
}

fn check(what: &str, r: &PhaseReport) {
    assert!(
        r.sent >= 150,
        "{what}: sent only {} at 200/s over 1 s",
        r.sent
    );
    assert_eq!(r.lost, 0, "{what}: lost messages: {r:?}");
    assert!(r.holds(), "{what}: did not hold 200/s: {r:?}");
    assert!(r.latency_us[0] > 0, "{what}: no latency recorded: {r:?}");
    assert!(
        r.cpu_us_per_message > 0.0,
        "{what}: no server CPU counted: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ours_delivers_every_cross_node_message_of_a_phase() {
    let mut cfg = ClusterConfig::new(3);
    cfg.controller_args = vec!["--password-hash".into(), "fast".into()];
    let cluster = Cluster::start(cfg)
        .await
        .unwrap_or_else(|e| panic!("starting a cluster (is the server built?): {e}"));
    let result = ours::run(&cluster, &config()).await;
    cluster.shutdown().await.expect("shutdown");
    let outcome = result.expect("bench run");
    let memory = outcome.memory.expect("memory measured");
    assert_eq!(memory.connections, 20);
    assert_eq!(outcome.phases.len(), 1);
    check("ours", &outcome.phases[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socketio_peer_delivers_every_cross_node_message_of_a_phase() {
    let dir = peer::default_dir();
    let cluster = PeerCluster::start(&dir, 3, "redis://127.0.0.1:6379")
        .await
        .unwrap_or_else(|e| {
            panic!(
                "starting the Socket.IO peer (needs `npm ci --prefix {}` and Redis on \
                 127.0.0.1:6379, `scripts/services.sh`): {e:#}",
                dir.display()
            )
        });
    assert_eq!(cluster.ports().len(), 3);
    let config = config();
    let result = async {
        let system = peer::prepare(&cluster, &config).await?;
        let report = bench::run_phase(&system, &config, 1, 200).await?;
        anyhow::Ok((system.memory.clone(), report))
    }
    .await;
    cluster.shutdown().await;
    let (memory, report) = result.expect("peer bench run");
    assert_eq!(memory.expect("memory measured").connections, 20);
    check("socket.io peer", &report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_floor_delivers_every_cross_node_message_of_a_phase() {
    let bench_bin = std::path::Path::new(env!("CARGO_BIN_EXE_bench"));
    let cluster = FloorCluster::start(bench_bin, 3)
        .await
        .unwrap_or_else(|e| panic!("starting the floor: {e:#}"));
    assert_eq!(cluster.ports().len(), 3);
    let config = config();
    let result = async {
        let system = floor::prepare(&cluster, &config).await?;
        let report = bench::run_phase(&system, &config, 1, 200).await?;
        anyhow::Ok((system.memory.clone(), report))
    }
    .await;
    cluster.shutdown().await;
    let (memory, report) = result.expect("floor bench run");
    assert_eq!(memory.expect("memory measured").connections, 20);
    check("floor", &report);
}
