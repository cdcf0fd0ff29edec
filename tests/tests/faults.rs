//! Faults of the real services while every member of a room is sending: Redis restarted,
//! RabbitMQ restarted, PostgreSQL restarted, ZooKeeper restarted, and one node's connection to
//! the bus cut while it keeps serving its devices. After each, every acknowledged message must reach every member
//! device exactly once, in order, within a bounded time after the service is back; nothing may
//! hang; a send during the outage either succeeds or gets an error the outbox retries.
//!
//! These tests restart services that every other test shares, so they run alone, in a phase of
//! their own (`cargo nextest run --profile faults`, see `.config/nextest.toml` and
//! `scripts/test`), once per stack: `CHAT_TEST_STACK=redis`, `rabbitmq` and `zookeeper`.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use client::{ClientEvent, Draft};
use protocol::http::CreateRoomRequest;
use tests::{
    Device, Stack, TestCluster, assert_contiguous, assert_no_duplicates, cluster, eventually,
    register,
};

/// How long the service stays down.
const OUTAGE: Duration = Duration::from_millis(2_000);
/// How long a test waits for the cluster to recover after the service is back.
const RECOVERY_LIMIT: Duration = Duration::from_secs(60);

fn sh(what: &str, script: &str) -> Result<()> {
    let status = Command::new("sh")
        .args(["-c", script])
        .status()
        .with_context(|| format!("running {what}"))?;
    ensure!(status.success(), "{what} failed ({status}): {script}");
    Ok(())
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
        .is_ok()
}

async fn wait_port(port: u16, name: &str) -> Result<()> {
    eventually(
        &format!("{name} to listen on {port}"),
        Duration::from_secs(60),
        || async move { port_open(port).then_some(()) },
    )
    .await
}

fn require_stack() -> Result<Stack> {
    let stack = Stack::current()?;
    if stack == Stack::Embedded {
        bail!(
            "fault tests need real services: run them with CHAT_TEST_STACK=redis or CHAT_TEST_STACK=rabbitmq (scripts/test does)"
        );
    }
    Ok(stack)
}

/// A service fault and how to undo it.
#[derive(Clone, Copy, Debug)]
enum Fault {
    RedisRestart,
    RabbitRestart,
    PostgresRestart,
    ZooKeeperRestart,
    /// One node's subscription to the bus is cut (the broker closes its connection).
    BusCut,
}

async fn inject(fault: Fault, cluster: &TestCluster, stack: Stack) -> Result<Instant> {
    match fault {
        Fault::RedisRestart => {
            ensure!(
                port_open(6379),
                "Redis is not running on 127.0.0.1:6379; start it with `redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\" --appendonly no`"
            );
            sh(
                "stopping Redis",
                "redis-cli -h 127.0.0.1 -p 6379 shutdown nosave || true",
            )?;
            tokio::time::sleep(OUTAGE).await;
            sh(
                "starting Redis",
                "redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no",
            )?;
            wait_port(6379, "Redis").await?;
        }
        Fault::RabbitRestart => {
            ensure!(
                port_open(5672),
                "RabbitMQ is not running on 127.0.0.1:5672; start it with `RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 ERL_EPMD_ADDRESS=127.0.0.1 rabbitmq-server -detached && rabbitmqctl await_startup`"
            );
            sh("stopping RabbitMQ", "rabbitmqctl -q stop_app")?;
            tokio::time::sleep(OUTAGE).await;
            sh(
                "starting RabbitMQ",
                "rabbitmqctl -q start_app && rabbitmqctl -q await_startup",
            )?;
            wait_port(5672, "RabbitMQ").await?;
        }
        Fault::PostgresRestart => {
            ensure!(
                port_open(5432),
                "PostgreSQL is not running on 127.0.0.1:5432; start it with `pg_ctlcluster $(ls /etc/postgresql) main start`"
            );
            let ver = "$(ls /etc/postgresql | sort -V | tail -n1)";
            sh(
                "stopping PostgreSQL",
                &format!("pg_ctlcluster {ver} main stop -m fast"),
            )?;
            tokio::time::sleep(OUTAGE).await;
            sh(
                "starting PostgreSQL",
                &format!("pg_ctlcluster {ver} main start"),
            )?;
            wait_port(5432, "PostgreSQL").await?;
        }
        Fault::ZooKeeperRestart => {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/zookeeper.sh");
            ensure!(
                port_open(2181),
                "ZooKeeper is not running on 127.0.0.1:2181; start it with `{script} start`"
            );
            sh("stopping ZooKeeper", &format!("{script} stop"))?;
            tokio::time::sleep(OUTAGE).await;
            sh("starting ZooKeeper", &format!("{script} start"))?;
            wait_port(2181, "ZooKeeper").await?;
        }
        Fault::BusCut => {
            let node = cluster.node(1)?.id;
            match stack {
                Stack::Redis => {
                    let prefix = cluster
                        .config()
                        .backends
                        .bus
                        .split("prefix=")
                        .nth(1)
                        .map(str::to_owned)
                        .unwrap_or_default();
                    let name = format!("chat-bus:{prefix}{node}");
                    sh(
                        "cutting a node's bus connection",
                        &format!("redis-cli -h 127.0.0.1 client kill name '{name}' >/dev/null"),
                    )?;
                }
                Stack::RabbitMq | Stack::ZooKeeper => {
                    let tag = format!("chat-bus:{}{node}", amqp_prefix(cluster));
                    sh(
                        "cutting a node's bus connection",
                        &format!(
                            "rabbitmqctl -q list_connections pid client_properties | grep -F '{tag}' | cut -f1 \
                             | while read pid; do rabbitmqctl -q close_connection \"$pid\" 'test: cut'; done"
                        ),
                    )?;
                }
                Stack::Embedded => bail!("no bus to cut in the embedded stack"),
            }
        }
    }
    Ok(Instant::now())
}

fn amqp_prefix(cluster: &TestCluster) -> String {
    cluster
        .config()
        .backends
        .bus
        .split("prefix=")
        .nth(1)
        .map(str::to_owned)
        .unwrap_or_default()
}

/// Six members on three nodes send into one room, paced; the fault strikes in the middle.
async fn traffic_through(fault: Fault) -> Result<()> {
    let stack = require_stack()?;
    let cluster = cluster(3).await?;
    let names: Vec<String> = (0..6).map(|i| format!("member{i}")).collect();
    for n in &names {
        register(&cluster, n).await?;
    }
    let mut devices = Vec::new();
    for n in &names {
        devices.push(Device::connect(&cluster, n, "dev").await?);
    }
    let room = devices[0]
        .api()
        .create_room(&CreateRoomRequest {
            name: "through the storm".into(),
            public: false,
            members: names[1..].to_vec(),
        })
        .await?;
    let per_member = 60;
    let mut senders = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        let c = d.client.clone();
        let name = names[i].clone();
        senders.push(tokio::spawn(async move {
            for k in 0..per_member {
                c.send(Draft::text(room.id, format!("{name}-{k}")))?;
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
            Ok::<_, client::ClientError>(())
        }));
    }
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let fault_started = Instant::now();
    let back = inject(fault, &cluster, stack).await?;
    println!("{fault:?}: service back after {:?}", back - fault_started);
    for s in senders {
        s.await??;
    }
    let last_send = Instant::now();
    let all: Vec<String> = names
        .iter()
        .flat_map(|n| (0..per_member).map(move |k| format!("{n}-{k}")))
        .collect();
    // Every outbox empties (sends during the outage were retried), then every device has
    // every message.
    for d in &devices {
        let c = d.client.clone();
        eventually(
            &format!("{}'s outbox to empty", d.label),
            RECOVERY_LIMIT,
            || {
                let c = c.clone();
                async move { (c.pending() == 0).then_some(()) }
            },
        )
        .await?;
    }
    for d in devices.iter_mut() {
        d.until_texts(room.id, &all, RECOVERY_LIMIT).await?;
    }
    let recovered = back.elapsed();
    let catch_up = last_send.elapsed();
    for d in &devices {
        let events = d.events(room.id);
        assert_no_duplicates(&d.label, &events)?;
        assert_contiguous(
            &d.label,
            &events,
            events.first().map(|e| e.seq).unwrap_or(1),
        )?;
        let texts = d.texts(room.id);
        ensure!(
            texts.len() == all.len(),
            "{}: {} messages, {} sent",
            d.label,
            texts.len(),
            all.len()
        );
        let refused: Vec<_> = d
            .log
            .iter()
            .filter(|e| matches!(e, ClientEvent::SendFailed { .. }))
            .collect();
        ensure!(
            refused.is_empty(),
            "{}: sends refused for good: {refused:?}",
            d.label
        );
        ensure!(
            d.client.status().is_live(),
            "{} is not live: {}",
            d.label,
            d.client.status()
        );
    }
    println!(
        "{fault:?} on the {stack:?} stack: every device had all {} messages {recovered:?} after the service was back, {catch_up:?} after the last send",
        all.len()
    );
    cluster.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_during_traffic() -> Result<()> {
    traffic_through(Fault::RedisRestart).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_during_traffic() -> Result<()> {
    traffic_through(Fault::PostgresRestart).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_connection_of_one_node_cut_during_traffic() -> Result<()> {
    traffic_through(Fault::BusCut).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_restarted_during_traffic() -> Result<()> {
    if require_stack()? != Stack::RabbitMq {
        bail!(
            "RabbitMQ is not the bus of this stack: run with CHAT_TEST_STACK=rabbitmq (the redis phase of scripts/test filters this test out)"
        );
    }
    traffic_through(Fault::RabbitRestart).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_restarted_during_traffic() -> Result<()> {
    if require_stack()? != Stack::ZooKeeper {
        bail!(
            "ZooKeeper is not the registry of this stack: run with CHAT_TEST_STACK=zookeeper (the other phases of scripts/test filter this test out)"
        );
    }
    traffic_through(Fault::ZooKeeperRestart).await
}
