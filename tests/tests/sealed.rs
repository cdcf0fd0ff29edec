//! Whoever can write to the bus or the registry, without the node-admission key, can neither
//! deliver a forged event, close a device with a forged revocation, nor send clients to an
//! address of their own: frames injected straight into Redis and RabbitMQ and a node entry
//! rewritten in Redis are refused, and counted.
//!
//! Each test picks its own stack (Redis registry, with a Redis or a RabbitMQ bus) whatever
//! `CHAT_TEST_STACK` says, and runs in the default phase only.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use lab::Cluster;
use protocol::bus::{BusHeader, BusKind, Envelope};
use protocol::model::{Event, EventBody};
use protocol::ws::ServerFrame;
use protocol::{ConvId, MessageId};
use tests::{Device, Incoming, PATIENCE, Raw, Stack, cluster_with, login, metric, register};

/// Which bus the attacker writes to.
#[derive(Clone, Copy, Debug)]
enum Bus {
    Redis,
    RabbitMq,
}

fn tag() -> String {
    format!(
        "seal{}{:x}",
        std::process::id(),
        server::ids::now_ms() & 0xff_ffff
    )
}

fn redis(args: &[&str], stdin: Option<&[u8]>) -> Result<String> {
    let mut child = Command::new("redis-cli")
        .args(["-h", "127.0.0.1"])
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .spawn()
        .context("running redis-cli")?;
    if let Some(bytes) = stdin {
        child.stdin.take().context("stdin")?.write_all(bytes)?;
    }
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "redis-cli {args:?}: {}", out.status);
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Publishes `bytes` to `node`'s queue or channel as any client of the service could.
async fn inject(bus: Bus, prefix: &str, node: &str, bytes: &[u8]) -> Result<()> {
    match bus {
        Bus::Redis => {
            redis(
                &["-x", "PUBLISH", &format!("{prefix}bus:n:{node}")],
                Some(bytes),
            )?;
        }
        Bus::RabbitMq => {
            use lapin::options::BasicPublishOptions;
            use lapin::{BasicProperties, Connection, ConnectionProperties};
            let conn = Connection::connect(
                "amqp://guest:guest@127.0.0.1:5672/%2f",
                ConnectionProperties::default(),
            )
            .await?;
            let channel = conn.create_channel().await?;
            channel
                .basic_publish(
                    format!("{prefix}direct").as_str().into(),
                    node.into(),
                    BasicPublishOptions::default(),
                    bytes,
                    BasicProperties::default(),
                )
                .await?
                .await?;
            conn.close(200, "done".into()).await?;
        }
    }
    Ok(())
}

/// The next message event of `conv` on `raw` (its text and event), failing if the socket
/// closes first.
async fn next_message(raw: &mut Raw, conv: ConvId) -> Result<Event> {
    loop {
        match raw.next_incoming(PATIENCE).await? {
            Incoming::Frame(frame) => {
                if let ServerFrame::Event(e) = *frame
                    && e.conv == conv
                    && matches!(e.body, EventBody::Message(_))
                {
                    return Ok(e);
                }
            }
            Incoming::Closed(how) => bail!("the device's socket closed: {how:?}"),
        }
    }
}

fn text(e: &Event) -> &str {
    match &e.body {
        EventBody::Message(m) => &m.text,
        _ => "",
    }
}

async fn forged_frames_and_entries_are_refused(bus: Bus) -> Result<()> {
    if Stack::current()? != Stack::Embedded {
        return Ok(());
    }
    let tag = tag();
    let prefix = format!("{tag}:");
    let cluster = cluster_with(2, |c| {
        c.backends.registry = format!("redis://127.0.0.1:6379/?prefix={prefix}");
        c.backends.bus = match bus {
            Bus::Redis => format!("redis://127.0.0.1:6379/?prefix={prefix}"),
            Bus::RabbitMq => format!("amqp://guest:guest@127.0.0.1:5672/%2f?prefix={tag}."),
        };
    })
    .await?;
    let result = attack(&cluster, bus, &tag, &prefix).await;
    let _ = redis(
        &[
            "EVAL",
            "for _,k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end",
            "0",
            &format!("{prefix}*"),
        ],
        None,
    );
    result?;
    cluster.shutdown().await
}

async fn attack(cluster: &Cluster, bus: Bus, tag: &str, prefix: &str) -> Result<()> {
    let alice_id = register(cluster, "alice").await?;
    register(cluster, "bob").await?;
    let alice = login(cluster, "alice", "laptop").await?;
    let n1 = cluster.node(0)?;
    let n2 = cluster.node(1)?;
    let api = client::Api::new(cluster.controller_url())?.with_token(alice.token.clone());
    let conv = api.open_direct("bob").await?.id;
    let mut raw = Raw::open(&n1.ws_url, Some(&alice.token))
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    raw.hello().await?;
    let bob = Device::connect(cluster, "bob", "phone").await?;
    bob.say(conv, "hello").await?;
    let first = next_message(&mut raw, conv).await?;
    ensure!(text(&first) == "hello", "{first:?}");

    // A forged event from bob, as if n2 had published it, taking the next seq.
    let mut forged = first.clone();
    forged.seq += 1;
    forged.id = MessageId(first.id.0 + 1);
    if let EventBody::Message(m) = &mut forged.body {
        m.text = "forged".into();
    }
    let event = Envelope {
        header: BusHeader {
            origin: n2.id.clone(),
            sent_at: server::ids::now_ms(),
            recipients: vec![alice_id],
            kind: BusKind::Event {
                conv,
                seq: forged.seq,
                id: forged.id,
            },
        },
        frame: Bytes::from(serde_json::to_vec(&ServerFrame::Event(forged))?),
    };
    // A forged revocation of alice's laptop.
    let revoke = Envelope {
        header: BusHeader {
            origin: n2.id.clone(),
            sent_at: server::ids::now_ms(),
            recipients: vec![alice_id],
            kind: BusKind::Revoke {
                user: alice_id,
                device: alice.device.clone(),
            },
        },
        frame: Bytes::new(),
    };
    let (bus_prefix, node) = match bus {
        Bus::Redis => (prefix.to_owned(), n1.id.to_string()),
        Bus::RabbitMq => (format!("{tag}."), n1.id.to_string()),
    };
    inject(bus, &bus_prefix, &node, &event.encode()).await?;
    inject(bus, &bus_prefix, &node, &revoke.encode()).await?;
    let refused = tests::until_metric(
        cluster,
        &n1.http_url,
        "chat_bus_envelopes_refused_total",
        2.0,
    )
    .await;

    // The real next message arrives, on the same socket.
    bob.say(conv, "real").await?;
    let next = next_message(&mut raw, conv).await?;
    ensure!(
        text(&next) == "real" && next.seq == first.seq + 1,
        "after the injection alice's laptop got {next:?}"
    );
    refused?;

    // A node entry pointing elsewhere: the controller never answers it.
    let key = format!("{prefix}n:{}", n2.id);
    let honest = redis(&["HGET", &key, "ws"], None)?;
    ensure!(!honest.is_empty(), "no entry at {key}");
    redis(&["HSET", &key, "ws", "ws://evil.example:1/ws"], None)?;
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(api.assign(&[]).await?.ws_url);
    }
    redis(&["HSET", &key, "ws", &honest], None)?;
    println!("assign answers with n2's entry rewritten: {answers:?}");
    ensure!(
        answers.iter().all(|u| !u.contains("evil.example")),
        "answered {answers:?}"
    );
    ensure!(
        metric(
            cluster,
            cluster.controller_url(),
            "chat_registry_entries_refused_total"
        )
        .await?
            >= 1.0,
        "the controller did not count the entry"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_injected_into_redis_and_a_rewritten_entry_are_refused() -> Result<()> {
    forged_frames_and_entries_are_refused(Bus::Redis).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_injected_into_rabbitmq_are_refused() -> Result<()> {
    forged_frames_and_entries_are_refused(Bus::RabbitMq).await
}
