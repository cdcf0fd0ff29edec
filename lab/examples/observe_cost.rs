//! What watching a cluster costs it: two labs side by side on this machine, each a controller
//! and N nodes with the same virtual users sending at the same rate; one observed as a panel
//! observes it (the nodes' traces subscribed and sampled, a frame built and serialised every
//! 200 ms), the other never observed. Both run at once, so a noisy stretch of the machine falls
//! on both. Prints each cluster's CPU (controller + nodes, from /proc) per acknowledged message
//! and per delivery, and the ratio.
//!
//! ```sh
//! cargo build --release -p server -p lab --examples
//! CHAT_SERVER_BIN=target/release/server target/release/examples/observe_cost [RATE] [SECONDS] [USERS] [NODES]
//! ```

use std::time::{Duration, Instant};

use lab::control::{Lab, LabConfig};
use lab::users::UsersConfig;
use lab::world::Cursor;
use protocol::lab::Op;

fn ticks(pid: u32) -> u64 {
    // Fields 14 and 15 of /proc/PID/stat (after the command in parentheses): utime, stime.
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

fn cluster_ticks(lab: &Lab) -> u64 {
    ticks(lab.controller_pid()) + lab.nodes().iter().map(|n| ticks(n.pid)).sum::<u64>()
}

async fn start(observed: bool, users: usize, nodes: usize) -> Lab {
    let mut cluster = lab::ClusterConfig::new(nodes);
    cluster.controller_args = vec!["--password-hash".into(), "fast".into()];
    let mut config = LabConfig::new(cluster);
    config.users = Some(UsersConfig::new(users, 2));
    config.always_observe = observed;
    config.never_observe = !observed;
    match Lab::start(config).await {
        Ok(lab) => lab,
        Err(e) => panic!("starting a lab (is the server built?): {e}"),
    }
}

async fn wait_live(lab: &Lab, devices: u32) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut cursor = Cursor::default();
    while lab.update(&mut cursor).traffic.live < devices {
        assert!(Instant::now() < deadline, "devices not live in time");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<f64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let rate = args.first().copied().unwrap_or(200.0);
    let seconds = args.get(1).copied().unwrap_or(30.0);
    let users = args.get(2).copied().unwrap_or(100.0) as usize;
    let nodes = args.get(3).copied().unwrap_or(3.0) as usize;
    let hz = 100.0; // USER_HZ on Linux
    let observed = start(true, users, nodes).await;
    let plain = start(false, users, nodes).await;
    for lab in [&observed, &plain] {
        wait_live(lab, (users * 2) as u32).await;
        lab.op(Op::Rate {
            per_sec: rate,
            room_share: None,
        })
        .await;
    }
    // A panel's share of the work: a frame for a cursor every 200 ms, serialised.
    let panel = {
        let lab = observed.clone();
        tokio::spawn(async move {
            let _watching = lab.watch();
            let mut cursor = Cursor::default();
            let mut bytes = 0usize;
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let frame = lab.update(&mut cursor);
                bytes += serde_json::to_string(&frame).map_or(0, |s| s.len());
                if bytes == usize::MAX {
                    break;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before: Vec<(u64, u64, u64)> = [&observed, &plain]
        .iter()
        .map(|l| {
            let c = l.checker();
            (cluster_ticks(l), c.acked, c.delivered)
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let mut per_ack = Vec::new();
    let mut per_delivery = Vec::new();
    for (i, (name, lab)) in [("observed", &observed), ("unobserved", &plain)]
        .into_iter()
        .enumerate()
    {
        let c = lab.checker();
        let cpu_s = (cluster_ticks(lab) - before[i].0) as f64 / hz;
        let acked = c.acked - before[i].1;
        let delivered = c.delivered - before[i].2;
        let us_ack = cpu_s * 1e6 / acked.max(1) as f64;
        per_ack.push(us_ack);
        per_delivery.push(cpu_s * 1e6 / delivered.max(1) as f64);
        println!(
            "{name:>10}: {acked} acknowledged, {delivered} deliveries in {seconds:.0} s; \
             cluster CPU {cpu_s:.2} s = {us_ack:.0} µs per message, {:.0} µs per delivery; \
             checker: {}",
            cpu_s * 1e6 / delivered.max(1) as f64,
            c.headline
        );
    }
    println!(
        "observed / unobserved CPU per message: {:.3}, per delivery: {:.3}",
        per_ack[0] / per_ack[1].max(1e-9),
        per_delivery[0] / per_delivery[1].max(1e-9)
    );
    panel.abort();
    let _ = observed.shutdown().await;
    let _ = plain.shutdown().await;
}
