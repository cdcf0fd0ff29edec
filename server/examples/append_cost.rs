//! What an append costs the embedded SQLite store, in CPU per event: one writing process
//! against three sharing the file (as a lab cluster's nodes do), each with commits of 1, 2 and
//! 4 events, at the same total rate. Not a test: it prints figures.
//!
//! ```text
//! cargo run -p server --release --example append_cost -- [RATE] [SECONDS]
//! ```
//!
//! `RATE` (default 4000) events per second in all, `SECONDS` (default 8) per phase. Each
//! writer is a process of its own (this program started again with `--writer`), on 100 direct
//! conversations of its own, writing through the store's own append path; its CPU time
//! (user + system, from `/proc/self/stat`) covers everything it does, SQLite included.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use protocol::model::MessageKind;
use protocol::{ClientMsgId, DeviceId, NodeId};
use server::ids::{Snowflakes, now_ms};
use server::store::sqlite::SqliteStore;
use server::store::{Creation, NewBody, NewEvent, NewUser, Store};

const CONVERSATIONS: usize = 100;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--writer") {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        return runtime.block_on(writer(&args[2..]));
    }
    let rate: u64 = args.get(1).map_or(Ok(4000), |s| s.parse())?;
    let seconds: u64 = args.get(2).map_or(Ok(8), |s| s.parse())?;
    let me = std::env::current_exe()?;
    println!("append cost, {rate} events/s in all, {seconds} s per phase");
    println!("writers  batch  µs cpu/event  cores");
    for writers in [1u64, 3] {
        for batch in [1u64, 2, 4] {
            let dir = tempfile::tempdir()?;
            let db = dir.path().join("chat.db");
            let children = (0..writers)
                .map(|i| {
                    Command::new(&me)
                        .arg("--writer")
                        .arg(&db)
                        .args([i, rate / writers, seconds, batch].map(|n| n.to_string()))
                        .stdout(Stdio::piped())
                        .spawn()
                        .context("start a writer")
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let (mut cpu, mut events) = (0.0, 0.0);
            for child in children {
                let out = child.wait_with_output()?;
                let text = String::from_utf8_lossy(&out.stdout);
                let mut f = text.split_whitespace().map(str::parse::<f64>);
                match (f.next(), f.next()) {
                    (Some(Ok(c)), Some(Ok(n))) if out.status.success() => {
                        cpu += c;
                        events += n;
                    }
                    _ => bail!("a writer failed: {text}"),
                }
            }
            println!(
                "{writers:>7}  {batch:>5}  {:>12.1}  {:>5.3}",
                cpu * 1e6 / events.max(1.0),
                cpu / seconds as f64
            );
        }
    }
    Ok(())
}

/// One writer: prints its CPU seconds and the events it wrote.
async fn writer(args: &[String]) -> anyhow::Result<()> {
    let [db, index, rate, seconds, batch] = args else {
        bail!("usage: --writer DB INDEX RATE SECONDS BATCH");
    };
    let index: u16 = index.parse()?;
    let rate: u64 = rate.parse()?;
    let seconds: u64 = seconds.parse()?;
    let batch: usize = batch.parse()?;
    // Any number of processes may open (and migrate) the file at once.
    let store = SqliteStore::open(db).await?;
    let ids = Snowflakes::new(index + 1);
    let origin = NodeId::new(format!("writer-{index}"))?;
    let device = DeviceId::new("bench")?;
    let now = now_ms();
    let mut conversations = Vec::with_capacity(CONVERSATIONS);
    for i in 0..CONVERSATIONS {
        let (a, b) = (format!("w{index}a{i}"), format!("w{index}b{i}"));
        let user = |username| NewUser {
            username,
            password_hash: "-",
            created_at: now,
        };
        let a = store.create_user(user(&a)).await?;
        let b = store.create_user(user(&b)).await?;
        let creation = Creation {
            id: ids.next(),
            origin: &origin,
            at: now,
        };
        let (conv, _) = store.open_direct(a.id, b.id, creation).await?;
        conversations.push((conv, a.id));
    }
    let mut tick = tokio::time::interval(Duration::from_nanos(
        1_000_000_000 * batch as u64 / rate.max(1),
    ));
    let (started, cpu_before) = (Instant::now(), cpu_seconds()?);
    let mut written = 0usize;
    while started.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        let events = (0..batch)
            .map(|k| {
                // Scattered over the conversations, as a cluster's traffic is.
                let (conv, sender) = conversations[((written + k) * 7) % CONVERSATIONS];
                Ok(NewEvent {
                    conv,
                    id: ids.next(),
                    at: now_ms(),
                    sender,
                    device: Some(device.clone()),
                    client_id: Some(ClientMsgId::new(uuid::Uuid::now_v7().to_string())?),
                    body: NewBody::Message {
                        kind: MessageKind::Text,
                        text: "a message of about the bench's length".into(),
                        attachment: None,
                        reply_to: None,
                    },
                    origin: origin.clone(),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        for result in store.append(events).await {
            result?;
        }
        written += batch;
    }
    println!("{} {written}", cpu_seconds()? - cpu_before);
    Ok(())
}

/// This process's CPU time so far (user + system).
fn cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit(')').next().context("odd /proc/self/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields.get(i).context("short /proc/self/stat")?.parse()?)
    };
    // utime and stime, in clock ticks of 1/100 s.
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}
