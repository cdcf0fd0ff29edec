//! "One consumer group for all" (`003_*`): when every node consumes one shared queue (one
//! consumer group), the broker hands each envelope to one of them, so each node sees only a
//! share; with one queue per node, each sees everything meant for it.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use protocol::lab::Op;
use protocol::teaching::Teaching;

use super::{Lesson, Runner, Setup, Step};
use crate::{ProcessState, Routing};

pub(super) const LESSON: Lesson = Lesson {
    name: "one-group-for-all",
    title: "One consumer group for all",
    article: "003_*: Kafka with one consumer group shared by every chat server",
    about: "one shared queue: each node sees a share of the fanout (10 sent, 3–4 seen)",
    setup: Setup {
        stack: "rabbitmq",
        nodes: 3,
        users: 9,
        devices_per_user: 1,
        routing: Routing::Fanout,
    },
    steps: &["One queue shared by every node", "One queue per node"],
    script,
};

fn script(r: &mut Runner) -> Pin<Box<dyn Future<Output = Step> + Send + '_>> {
    Box::pin(run(r))
}

/// Envelopes each running node published and received so far, by slot.
async fn counts(r: &Runner) -> Vec<(String, u64, u64)> {
    let token = r.lab().operator_token();
    let Ok(http) = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .no_proxy()
        .build()
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for n in r.lab().nodes() {
        if n.process != ProcessState::Running {
            continue;
        }
        let text = match http
            .get(format!("{}/metrics", n.http_url.trim_end_matches('/')))
            .bearer_auth(&token)
            .send()
            .await
        {
            Ok(resp) => resp.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        out.push((
            n.name.clone(),
            counter(&text, "chat_bus_published_total"),
            counter(&text, "chat_bus_received_total"),
        ));
    }
    out
}

/// A counter's value on a Prometheus page (0 when absent).
fn counter(page: &str, name: &str) -> u64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix(name))
        .filter_map(|rest| rest.split_whitespace().last())
        .filter_map(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Traffic for a while; then, per node, the share of the others' envelopes it received.
async fn shares(r: &mut Runner) -> Result<Vec<(String, f64)>, String> {
    let before = counts(r).await;
    r.traffic(20.0, 0.5, Duration::from_secs(4)).await?;
    // The last envelopes land.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = counts(r).await;
    let delta: Vec<(String, u64, u64)> = after
        .iter()
        .map(|(slot, p, rcv)| {
            let (p0, r0) = before
                .iter()
                .find(|(s, _, _)| s == slot)
                .map_or((0, 0), |(_, p0, r0)| (*p0, *r0));
            (slot.clone(), p - p0.min(*p), rcv - r0.min(*rcv))
        })
        .collect();
    let published: u64 = delta.iter().map(|(_, p, _)| p).sum();
    Ok(delta
        .iter()
        .map(|(slot, own, received)| {
            let meant = published.saturating_sub(*own).max(1);
            (slot.clone(), *received as f64 / meant as f64)
        })
        .collect())
}

fn describe(shares: &[(String, f64)]) -> String {
    shares
        .iter()
        .map(|(slot, s)| format!("{slot} {:.0}%", s * 100.0))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn run(r: &mut Runner) -> Step {
    r.step(
        0,
        "Fanout over RabbitMQ: every envelope must reach every node. Teaching mode \"shared \
         queue\": every node consumes one queue — one consumer group for all, as in the \
         article. RabbitMQ hands each envelope to one consumer, in turn. The lab restarts the \
         nodes in that mode; then watch, per node, how much of what the others published \
         reaches it, and the checker.",
    )
    .await;
    r.op(Op::Teach {
        mode: Some(Teaching::SharedQueue),
    })
    .await?;
    let devices = (LESSON.setup.users * LESSON.setup.devices_per_user) as u32;
    r.until(Duration::from_secs(30), |u| u.traffic.live >= devices)
        .await;
    r.reset().await?;
    let shared = shares(r).await?;
    let mistake = r.settle(Duration::from_secs(3)).await;
    r.figure(format!(
        "one shared queue: each node got {}",
        describe(&shared)
    ));
    let partial = shared.iter().all(|(_, s)| *s < 0.8);
    r.expect(partial, "each node sees only a share of the envelopes");
    r.expect_red(&mistake, "one shared queue: devices miss messages");
    r.figure(format!(
        "one shared queue: {} of {} deliveries made, {} lost",
        mistake.delivered, mistake.expected, mistake.lost
    ));

    r.step(
        1,
        "Why: a consumer group (a shared queue) is for splitting work — each message is done \
         once, by one of the consumers. A chat node is not a worker: it must see every \
         message for the devices it holds. The fix: one queue per node (in Kafka, one group \
         per node), bound to the exchange. The lab restarts the nodes so.",
    )
    .await;
    r.op(Op::Teach { mode: None }).await?;
    r.until(Duration::from_secs(30), |u| u.traffic.live >= devices)
        .await;
    r.reset().await?;
    let own = shares(r).await?;
    let fixed = r.settle(Duration::from_secs(20)).await;
    r.figure(format!(
        "one queue per node: each node got {}",
        describe(&own)
    ));
    r.expect(
        own.iter().all(|(_, s)| *s >= 0.95),
        "each node sees every envelope",
    );
    r.expect_green(
        &fixed,
        "one queue per node: every device gets every message",
    );
    Ok(())
}
