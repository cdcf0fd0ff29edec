//! Rough throughput of the real buses, and a watcher for trying their reconnects by hand. Not
//! a benchmark with assertions: it prints figures.
//!
//! ```text
//! cargo run -p server --release --example bus_throughput -- redis [N]
//! cargo run -p server --release --example bus_throughput -- amqp [N]
//! cargo run -p server --release --example bus_throughput -- watch redis|amqp
//! ```
//!
//! `redis`: one publisher → one subscriber over Redis pub/sub. `amqp`: one publisher → three
//! node queues with publisher confirms, routed (a publish per target) and fanout (one publish),
//! then the chat's case of a direct message whose recipient is on one other node: routed (one
//! publish to that node) against fanout (the broker copies it to every node).
//! `watch`: subscribes one node and prints when `is_up` changes and how many envelopes arrived
//! (another terminal can publish, stop the broker, start it again).
//!
//! Needs Redis at 127.0.0.1:6379 and RabbitMQ at 127.0.0.1:5672 (guest/guest).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use protocol::NodeId;
use server::bus::amqp::{AmqpBus, AmqpConfig};
use server::bus::redis::RedisBus;
use server::bus::{SharedBus, Targets};
use tokio_util::sync::CancellationToken;

const REDIS: &str = "redis://127.0.0.1:6379";
const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Publishes in flight at once from the publisher (as a node's publisher batch would have);
/// `BUS_IN_FLIGHT` overrides it.
fn in_flight() -> usize {
    std::env::var("BUS_IN_FLIGHT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256)
}
/// About the size of an envelope carrying a short text message.
const ENVELOPE: usize = 300;

type Res<T = ()> = Result<T, Box<dyn std::error::Error>>;

fn id(s: &str) -> Res<NodeId> {
    Ok(NodeId::new(s)?)
}

async fn open(kind: &str, prefix: &str) -> Res<SharedBus> {
    Ok(match kind {
        "redis" => Arc::new(RedisBus::connect(REDIS, prefix, CancellationToken::new()).await?),
        "amqp" => Arc::new(
            AmqpBus::connect(AmqpConfig::new(AMQP, prefix), CancellationToken::new()).await?,
        ),
        other => return Err(format!("unknown bus {other}: redis or amqp").into()),
    })
}

/// Publishes `n` envelopes to `targets`, [`in_flight`] at a time, while `receivers` count what
/// arrives; returns the time until every receiver had all of them.
async fn run(
    publisher: &SharedBus,
    targets: Targets,
    inboxes: Vec<server::bus::Inbox>,
    n: usize,
) -> Res<Duration> {
    let expected = vec![n; inboxes.len()];
    run_with(publisher, |_| targets.clone(), inboxes, n, expected).await
}

/// Publishes `n` envelopes, the i-th to `targets_of(i)`, while receiver k counts until it has
/// `expected[k]`; returns the time until every receiver had all of its share.
async fn run_with(
    publisher: &SharedBus,
    targets_of: impl Fn(usize) -> Targets,
    mut inboxes: Vec<server::bus::Inbox>,
    n: usize,
    expected: Vec<usize>,
) -> Res<Duration> {
    let start = Instant::now();
    let counting: Vec<_> = inboxes
        .drain(..)
        .zip(expected)
        .map(|(mut inbox, n)| {
            tokio::spawn(async move {
                let mut got = 0usize;
                while got < n {
                    match tokio::time::timeout(Duration::from_secs(10), inbox.recv()).await {
                        Ok(Some(_)) => got += 1,
                        _ => break,
                    }
                }
                (got, n, inbox)
            })
        })
        .collect();
    let payload = Bytes::from(vec![b'x'; ENVELOPE]);
    let sent = futures::stream::iter(0..n)
        .map(|i| {
            let publisher = publisher.clone();
            let targets = targets_of(i);
            let payload = payload.clone();
            async move { publisher.publish(&targets, b"", payload).await }
        })
        .buffer_unordered(in_flight())
        .filter(|r| futures::future::ready(r.is_err()))
        .count()
        .await;
    if sent > 0 {
        return Err(format!("{sent} publishes failed").into());
    }
    let published = start.elapsed();
    for c in counting {
        let (got, want, _) = c.await?;
        if got < want {
            return Err(format!("a receiver got {got} of {want}").into());
        }
    }
    let all = start.elapsed();
    println!(
        "    published in {:.2} s ({:.0}/s), all received in {:.2} s",
        published.as_secs_f64(),
        n as f64 / published.as_secs_f64(),
        all.as_secs_f64()
    );
    Ok(all)
}

async fn redis(n: usize) -> Res {
    let prefix = format!("bench:{}:", uuid::Uuid::new_v4().simple());
    let publisher = open("redis", &prefix).await?;
    let subscriber = open("redis", &prefix).await?;
    let inbox = subscriber.subscribe(&id("s1")?).await?;
    println!("redis pub/sub, 1 publisher → 1 subscriber, {n} envelopes of {ENVELOPE} B:");
    let t = run(&publisher, Targets::Nodes(vec![id("s1")?]), vec![inbox], n).await?;
    println!("  {:.0} envelopes/s end to end", n as f64 / t.as_secs_f64());
    Ok(())
}

async fn amqp(n: usize) -> Res {
    let prefix = format!(
        "bench.{}.",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let publisher = open("amqp", &prefix).await?;
    let nodes = [id("q1")?, id("q2")?, id("q3")?];
    let mut subscribers = Vec::new();
    let mut inboxes = Vec::new();
    for node in &nodes {
        let bus = open("amqp", &prefix).await?;
        inboxes.push(bus.subscribe(node).await?);
        subscribers.push(bus);
    }
    println!(
        "rabbitmq with publisher confirms, 1 publisher → 3 node queues, {n} envelopes of {ENVELOPE} B:"
    );
    println!("  routed (3 publishes per envelope, one per target):");
    let t = run(&publisher, Targets::Nodes(nodes.to_vec()), inboxes, n).await?;
    println!(
        "  {:.0} envelopes/s, {:.0} deliveries/s",
        n as f64 / t.as_secs_f64(),
        3.0 * n as f64 / t.as_secs_f64()
    );
    // The inboxes were moved into the run; subscribe again on fresh handles for fanout.
    let mut inboxes = Vec::new();
    let mut fanout_subs = Vec::new();
    let prefix2 = format!(
        "bench.{}.",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let publisher2 = open("amqp", &prefix2).await?;
    for node in &nodes {
        let bus = open("amqp", &prefix2).await?;
        inboxes.push(bus.subscribe(node).await?);
        fanout_subs.push(bus);
    }
    println!("  fanout (1 publish per envelope, the broker copies it to 3 queues):");
    let t = run(&publisher2, Targets::All, inboxes, n).await?;
    println!(
        "  {:.0} envelopes/s, {:.0} deliveries/s",
        n as f64 / t.as_secs_f64(),
        3.0 * n as f64 / t.as_secs_f64()
    );
    drop((publisher, subscribers, publisher2, fanout_subs));

    // A chat's cross-node direct message: one other node holds the recipient. Routed, it is one
    // publish to that node's queue; fanout, the broker copies it into every node's queue.
    println!("  a direct message to one of the 3 nodes (the chat's case):");
    let mut rates = Vec::new();
    for routed in [true, false] {
        let prefix = format!(
            "bench.{}.",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let publisher = open("amqp", &prefix).await?;
        let mut subs = Vec::new();
        let mut inboxes = Vec::new();
        for node in &nodes {
            let bus = open("amqp", &prefix).await?;
            inboxes.push(bus.subscribe(node).await?);
            subs.push(bus);
        }
        let expected = if routed {
            (0..nodes.len())
                .map(|k| (0..n).filter(|i| i % nodes.len() == k).count())
                .collect()
        } else {
            vec![n; nodes.len()]
        };
        let targets_of = |i: usize| {
            if routed {
                Targets::Nodes(vec![nodes[i % nodes.len()].clone()])
            } else {
                Targets::All
            }
        };
        let t = run_with(&publisher, targets_of, inboxes, n, expected).await?;
        let rate = n as f64 / t.as_secs_f64();
        println!(
            "    {}: {rate:.0} messages/s",
            if routed { "routed" } else { "fanout" }
        );
        rates.push(rate);
        drop((publisher, subs));
        delete_topology(&prefix, &nodes).await?;
    }
    println!(
        "    routed carries {:.1}× what fanout does",
        rates[0] / rates[1]
    );
    for p in [&prefix, &prefix2] {
        delete_topology(p, &nodes).await?;
    }
    Ok(())
}

/// Removes what a run declared in RabbitMQ.
async fn delete_topology(prefix: &str, nodes: &[NodeId]) -> Res {
    let conn = lapin::Connection::connect(AMQP, lapin::ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    for n in nodes {
        ch.queue_delete(format!("{prefix}node.{n}").into(), Default::default())
            .await?;
    }
    for x in ["direct", "fanout"] {
        ch.exchange_delete(format!("{prefix}{x}").into(), Default::default())
            .await?;
    }
    conn.close(200, "done".into()).await?;
    Ok(())
}

async fn watch(kind: &str) -> Res {
    let prefix = if kind == "redis" { "watch:" } else { "watch." };
    let bus = open(kind, prefix).await?;
    let node = id("watcher")?;
    let mut inbox = bus.subscribe(&node).await?;
    println!("watching {kind} as node {node} (prefix {prefix}); Ctrl-C to stop");
    let start = Instant::now();
    let mut up = !bus.is_up();
    let mut got = 0u64;
    loop {
        tokio::select! {
            m = inbox.recv() => match m {
                Some(_) => got += 1,
                None => return Ok(()),
            },
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        if bus.is_up() != up {
            up = bus.is_up();
            println!(
                "[{:7.2} s] is_up = {up}  (received so far: {got})",
                start.elapsed().as_secs_f64()
            );
        }
    }
}

#[tokio::main]
async fn main() -> Res {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n = |i: usize, default: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    match args.first().map(String::as_str) {
        Some("redis") => redis(n(1, 200_000)).await,
        Some("amqp") => amqp(n(1, 50_000)).await,
        Some("watch") => watch(args.get(1).map_or("redis", String::as_str)).await,
        _ => Err("usage: bus_throughput redis [N] | amqp [N] | watch redis|amqp".into()),
    }
}
