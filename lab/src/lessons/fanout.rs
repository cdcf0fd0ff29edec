//! "Fanout vs routed" (`000_*`): the article's fanout exchange sends every message to every
//! node, whoever holds its recipients; routed sends it only to the nodes the registry names.
//! Both deliver the same; the lesson measures what each costs as nodes are added.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use protocol::lab::{CheckerView, Op};

use super::{Lesson, Runner, Setup, Step};
use crate::Routing;

/// Nodes added after the first measurements.
const ADDED: usize = 3;

pub(super) const LESSON: Lesson = Lesson {
    name: "fanout-vs-routed",
    title: "Fanout vs routed",
    article: "000_*: a RabbitMQ fanout exchange with a queue per node",
    about: "bus envelopes per message and broker CPU, fanout against routed, 3 then 6 nodes",
    setup: Setup {
        stack: "rabbitmq",
        nodes: 3,
        users: 8,
        devices_per_user: 1,
        routing: Routing::Routed,
    },
    steps: &[
        "Routed, 3 nodes",
        "Fanout, 3 nodes",
        "Fanout, 6 nodes",
        "Routed, 6 nodes",
    ],
    script,
};

fn script(r: &mut Runner) -> Pin<Box<dyn Future<Output = Step> + Send + '_>> {
    Box::pin(run(r))
}

/// CPU time (clock ticks) of the RabbitMQ broker on this machine, if it can be read.
fn broker_ticks() -> Option<u64> {
    let mut total = None;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let path = entry.path();
        let is_broker =
            std::fs::read_to_string(path.join("comm")).is_ok_and(|c| c.trim() == "beam.smp");
        if !is_broker {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat")).ok()?;
        // Fields after the command's closing parenthesis: utime and stime are the 12th and
        // 13th of them.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        *total.get_or_insert(0) += utime + stime;
    }
    total
}

/// Sampled messages wanted before envelopes per message are compared.
const MIN_SAMPLED: u64 = 5;

/// Traffic for a while, judged; with the broker's CPU share meanwhile (percent of one core;
/// the broker is shared with whatever else runs here).
async fn measure(r: &mut Runner, label: &str) -> Result<(CheckerView, Option<f64>), String> {
    let devices = (LESSON.setup.users * LESSON.setup.devices_per_user) as u32;
    r.until(Duration::from_secs(30), |u| u.traffic.live >= devices)
        .await;
    r.reset().await?;
    let t0 = std::time::Instant::now();
    let c0 = broker_ticks();
    r.traffic(30.0, 0.3, Duration::from_secs(4)).await?;
    let cpu = match (c0, broker_ticks()) {
        // Linux counts 100 ticks a second.
        (Some(a), Some(b)) => Some((b - a.min(b)) as f64 / t0.elapsed().as_secs_f64()),
        _ => None,
    };
    let mut view = r.settle(Duration::from_secs(20)).await;
    // The envelopes are counted on sampled messages only: on six nodes a few seconds of
    // traffic may leave too few of them to say anything, so keep the traffic going (a few
    // more seconds at a time) until enough were sampled.
    for _ in 0..4 {
        if view.ops_sampled >= MIN_SAMPLED {
            break;
        }
        r.traffic(30.0, 0.3, Duration::from_secs(4)).await?;
        view = r.settle(Duration::from_secs(20)).await;
    }
    let nodes = r.lab().nodes().len();
    r.figure(format!(
        "{label}, {nodes} nodes: {} bus envelopes per message (over {} sampled), broker CPU {}",
        view.msgs_per_op
            .map_or_else(|| "?".to_owned(), |m| format!("{m:.2}")),
        view.ops_sampled,
        cpu.map_or_else(|| "not measured".to_owned(), |c| format!("{c:.0}%")),
    ));
    r.expect_green(
        &view,
        &format!("{label}, {nodes} nodes: everything delivered"),
    );
    Ok((view, cpu))
}

async fn run(r: &mut Runner) -> Step {
    r.step(
        0,
        "Eight users on three nodes, RabbitMQ between them. Routed: a node publishes a \
         message only to the nodes the registry says hold one of its recipients. Watch the \
         envelopes per message (msgs/op) and the broker's CPU.",
    )
    .await;
    let (routed3, _) = measure(r, "routed").await?;

    r.step(
        1,
        "Fanout, as in the article: each node's queue is bound to one fanout exchange, so every \
         message goes to every node — even those with nobody to deliver it to, and back to its \
         own sender's node. The lab restarts each node in turn with fanout routing.",
    )
    .await;
    r.op(Op::SetRouting {
        routing: "fanout".into(),
    })
    .await?;
    let (fanout3, _) = measure(r, "fanout").await?;

    r.step(
        2,
        "Three more nodes. With fanout, each message now costs six envelopes, whatever the \
         conversation: the cost grows with the cluster, not with the recipients.",
    )
    .await;
    for _ in 0..ADDED {
        r.op(Op::AddNode).await?;
    }
    let (fanout6, _) = measure(r, "fanout").await?;

    r.step(
        3,
        "Routed again on six nodes: a direct message still costs at most the nodes of its two \
         users. The price of routing is a registry lookup per message (cached per batch), which \
         the registry answers from memory.",
    )
    .await;
    r.op(Op::SetRouting {
        routing: "routed".into(),
    })
    .await?;
    let (routed6, _) = measure(r, "routed").await?;
    let per = |v: &CheckerView| v.msgs_per_op.unwrap_or(0.0);
    r.expect(
        per(&fanout3) > per(&routed3) && per(&fanout6) > per(&routed6),
        "fanout costs more envelopes per message than routed",
    );
    r.expect(
        per(&fanout6) > per(&fanout3),
        "fanout's cost grows with the number of nodes",
    );
    Ok(())
}
