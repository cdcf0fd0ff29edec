//! The SQLite store against the behavioural suite, and what only it does: processes sharing one
//! file, its log starting over under writers that never pause, transactions cut off half-way.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use protocol::{ClientMsgId, ConvId, MessageId, NodeId, Seq, UserId};
use sqlx::Connection;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use tokio_util::sync::CancellationToken;

use super::checkpoint::kept_open;
use super::errors::db_err;
use super::{MIGRATOR, SqliteStore, beside};
use crate::store::suite::{TestDb, named};
use crate::store::{Creation, NewEvent, Page, SharedStore, Store, StoreError};

/// A fresh file in a temporary directory, removed with it.
struct TempDb {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

#[async_trait]
impl TestDb for TempDb {
    async fn open(&self) -> anyhow::Result<SharedStore> {
        Ok(Arc::new(SqliteStore::open(&self.path).await?))
    }
}

async fn temp_db() -> anyhow::Result<TempDb> {
    let dir = tempfile::tempdir()?;
    // A directory that does not exist yet: open creates it.
    let path = dir.path().join("data").join("chat.db");
    Ok(TempDb { _dir: dir, path })
}

crate::store::suite::store_suite!(temp_db());

/// A conversation's first event with id `id`, at time 0.
fn at_zero(id: MessageId, origin: &NodeId) -> Creation<'_> {
    Creation { id, origin, at: 0 }
}

/// Many handles (as many processes would) open a file that does not exist yet at once: all
/// succeed, the file is in WAL mode and the schema was applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_handles_create_one_file_at_once() -> anyhow::Result<()> {
    let db = temp_db().await?;
    let opens = (0..8).map(|_| SqliteStore::open(db.path.clone()));
    let stores = futures::future::try_join_all(opens).await?;
    for store in &stores {
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&store.backend().reader)
            .await?;
        assert_eq!(mode, "wal");
        let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(&store.backend().reader)
            .await?;
        assert_eq!(fk, 1);
    }
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(&stores[0].backend().reader)
        .await?;
    assert_eq!(applied as usize, MIGRATOR.iter().count());
    Ok(())
}

/// A file written before conversations' heads came from their events (schema of
/// migrations 0001 and 0002, with history in it) opens, and its conversations keep their
/// last seq, last message, unread count and order; the next append takes the next seq.
#[tokio::test]
async fn a_file_of_the_schema_before_heads_from_events_is_upgraded() -> anyhow::Result<()> {
    let db = temp_db().await?;
    let old = tempfile::tempdir()?;
    for (name, sql) in [
        (
            "0001_init.sql",
            include_str!("../../../migrations/sqlite/0001_init.sql"),
        ),
        (
            "0002_append_friendly_indexes.sql",
            include_str!("../../../migrations/sqlite/0002_append_friendly_indexes.sql"),
        ),
    ] {
        std::fs::write(old.path().join(name), sql)?;
    }
    let dir = db.path.parent().context("the database's directory")?;
    std::fs::create_dir_all(dir)?;
    let options = SqliteConnectOptions::new()
        .filename(&db.path)
        .create_if_missing(true);
    let mut conn = SqliteConnection::connect_with(&options).await?;
    Migrator::new(old.path()).await?.run(&mut conn).await?;
    // Alice (1) and Bob (2); two direct conversations, each with its created event (1) and
    // messages: conversation 1 with Bob's "one" (2) and "two" (3); conversation 2, with
    // Carol (3), with Carol's "later" (2), more recent.
    for statement in [
        "INSERT INTO users (id, username, password_hash, created_at) VALUES \
           (1, 'alice', 'x', 1), (2, 'bob', 'x', 1), (3, 'carol', 'x', 1)",
        "INSERT INTO conversations (id, kind, created_by, created_at, last_seq, last_msg_seq, \
           last_activity, member_epoch, direct_lo, direct_hi) VALUES \
           (1, 'direct', 1, 10, 3, 3, 30, 1, 1, 2), (2, 'direct', 1, 10, 2, 2, 40, 1, 1, 3)",
        "INSERT INTO members (conv_id, user_id, joined_seq, read_seq) VALUES \
           (1, 1, 1, 1), (1, 2, 1, 3), (2, 1, 1, 2), (2, 3, 1, 2)",
        "INSERT INTO events (id, conv_id, seq, at, sender, origin, body_type, member_action, \
           member_user) VALUES (100, 1, 1, 10, 1, 'n1', 'member', 'created', 1), \
           (200, 2, 1, 10, 1, 'n1', 'member', 'created', 1)",
        "INSERT INTO events (id, conv_id, seq, at, sender, origin, body_type, msg_kind, text) \
           VALUES (101, 1, 2, 20, 2, 'n1', 'message', 'text', 'one'), \
           (102, 1, 3, 30, 2, 'n1', 'message', 'text', 'two'), \
           (201, 2, 2, 40, 3, 'n1', 'message', 'text', 'later')",
    ] {
        sqlx::query(statement).execute(&mut conn).await?;
    }
    conn.close().await?;

    let store = SqliteStore::open(&db.path).await?;
    let list = store.conversations_of(UserId(1)).await?;
    let seen: Vec<_> = list
        .iter()
        .map(|c| {
            (
                c.id.0,
                c.last_seq,
                c.unread,
                c.last_message.as_ref().map(|e| e.seq),
            )
        })
        .collect();
    assert_eq!(seen, vec![(2, 2, 0, Some(2)), (1, 3, 2, Some(3))]);
    let record = store
        .conversation(ConvId(1))
        .await?
        .context("conversation 1")?;
    assert_eq!(record.last_seq, 3);

    let appended = store
        .append(vec![NewEvent {
            conv: ConvId(1),
            id: MessageId(103),
            at: 50,
            sender: UserId(1),
            device: None,
            client_id: None,
            body: crate::store::NewBody::Message {
                kind: protocol::model::MessageKind::Text,
                text: "three".into(),
                attachment: None,
                reply_to: None,
            },
            origin: NodeId::new("n2")?,
        }])
        .await
        .into_iter()
        .next()
        .context("one result")??;
    assert_eq!(appended.event.seq, 4);
    let list = store.conversations_of(UserId(2)).await?;
    assert_eq!(list[0].last_seq, 4);
    assert_eq!(list[0].unread, 1);
    assert_eq!(list[0].last_message.as_ref().map(|e| e.seq), Some(4));
    Ok(())
}

/// Where [`child_process_appends`] finds its database, when run by
/// [`processes_share_one_file`].
const CHILD_DB: &str = "CHAT_STORE_TEST_CHILD_DB";
/// When the children start appending (Unix ms), so that they all write at once.
const CHILD_START: &str = "CHAT_STORE_TEST_CHILD_START";
const CHILD_PROCESSES: usize = 4;
const CHILD_EVENTS: usize = 300;

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Real processes, not handles in one process (SQLite shares locks between a process's
/// connections, so only separate processes test the file locks): four copies of this test
/// binary start at once on a file that does not exist yet, each creates it or finds it,
/// meets the others in one direct conversation and, all at the same moment, appends to it
/// in batches of 1 to 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_share_one_file() -> anyhow::Result<()> {
    let db = temp_db().await?;
    let exe = std::env::current_exe()?;
    let test = format!(
        "{}::child_process_appends",
        module_path!().split_once("::").map_or("", |m| m.1)
    );
    let start = unix_ms() + 2_000;
    let mut children = Vec::new();
    for _ in 0..CHILD_PROCESSES {
        let child = tokio::process::Command::new(&exe)
            .args([
                "--exact",
                &test,
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DB, &db.path)
            .env(CHILD_START, start.to_string())
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        children.push(child);
    }
    for child in children {
        let out =
            tokio::time::timeout(Duration::from_secs(120), child.wait_with_output()).await??;
        anyhow::ensure!(
            out.status.success(),
            "child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let store = SqliteStore::open(&db.path).await?;
    let (hub, spoke) = child_users(&store).await?;
    let (conv, created) = store
        .open_direct(hub, spoke, at_zero(MessageId(1), &NodeId::new("parent")?))
        .await?;
    assert!(created.is_none(), "the children made it");
    let (events, _) = store.events(conv, Page::After(0), 10_000).await?;
    let total = 1 + CHILD_PROCESSES * CHILD_EVENTS;
    let seqs: Vec<Seq> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=total as Seq).collect::<Vec<_>>(),
        "one conversation, no gap, no repeat"
    );
    let client_ids: std::collections::HashSet<_> =
        events.iter().filter_map(|e| e.client_id.clone()).collect();
    assert_eq!(client_ids.len(), total - 1, "each process's events once");
    Ok(())
}

/// The two users the child processes meet as (created by whichever child comes first).
async fn child_users(store: &SqliteStore) -> anyhow::Result<(UserId, UserId)> {
    let mut ids = Vec::new();
    for name in ["hub", "spoke"] {
        match store.create_user(named(name)).await {
            Ok(user) => ids.push(user.id),
            Err(StoreError::Conflict(_)) => {
                ids.push(
                    store
                        .user_by_name(name)
                        .await?
                        .context("a user that exists")?
                        .id,
                );
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok((ids[0], ids[1]))
}

/// One child of [`processes_share_one_file`]; does nothing when run otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run in child processes by processes_share_one_file"]
async fn child_process_appends() -> anyhow::Result<()> {
    let Some(path) = std::env::var_os(CHILD_DB) else {
        return Ok(());
    };
    let store = SqliteStore::open(&path).await?;
    let (hub, spoke) = child_users(&store).await?;
    let me = std::process::id();
    let origin = NodeId::new(format!("child-{me}"))?;
    // Ids unique across processes: the pid in the high bits.
    let id = |n: usize| MessageId((i64::from(me) << 24) | n as i64);
    let (conv, _) = store
        .open_direct(hub, spoke, at_zero(id(0), &origin))
        .await?;
    let start: i64 = std::env::var(CHILD_START)?.parse()?;
    tokio::time::sleep(Duration::from_millis(
        u64::try_from(start - unix_ms()).unwrap_or(0),
    ))
    .await;
    let mut sent = 0;
    let mut last_seq = 0;
    while sent < CHILD_EVENTS {
        let size = (sent % 4 + 1).min(CHILD_EVENTS - sent);
        let batch = (sent..sent + size)
            .map(|n| {
                Ok(NewEvent {
                    conv,
                    id: id(n + 1),
                    at: n as i64,
                    sender: if n % 2 == 0 { hub } else { spoke },
                    device: None,
                    client_id: Some(ClientMsgId::new(format!("p{me}-{n}"))?),
                    body: crate::store::NewBody::Message {
                        kind: protocol::model::MessageKind::Text,
                        text: format!("from {me}: {n}"),
                        attachment: None,
                        reply_to: None,
                    },
                    origin: origin.clone(),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        for result in store.append(batch).await {
            let appended = result?;
            anyhow::ensure!(
                !appended.duplicate && appended.event.seq > last_seq,
                "seqs go up"
            );
            last_seq = appended.event.seq;
        }
        sent += size;
    }
    Ok(())
}

/// With writers that never pause (two handles, as two processes would), the log still
/// starts over, again and again, while they write. (It starts over only after a checkpoint
/// copied all of it, which needs a moment without writers.) How long the log file gets
/// depends on how fast the writers are against the checkpointer, so what is counted is
/// the restarts: the log's length in frames, from the header SQLite keeps in the `-shm`
/// file, falling back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_starts_over_while_writers_keep_writing() -> anyhow::Result<()> {
    let db = temp_db().await?;
    let first = SqliteStore::open(&db.path).await?;
    let second = SqliteStore::open(&db.path).await?;
    let origin = NodeId::new("writer")?;
    let mut convs = Vec::new();
    for i in 0..40 {
        let a = first.create_user(named(&format!("a{i}"))).await?.id;
        let b = first.create_user(named(&format!("b{i}"))).await?.id;
        let (conv, _) = first
            .open_direct(a, b, at_zero(MessageId(i + 1), &origin))
            .await?;
        convs.push((conv, a));
    }
    let convs = Arc::new(convs);
    // Each batch rewrites pages all over the file, so 16 MiB of data take the log past the
    // checkpointer's restart threshold many times over.
    const DATA: u64 = 16 << 20;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let shm = std::fs::File::open(beside(&db.path, "-shm"))?;
    let done = CancellationToken::new();
    // The wal-index header starts the `-shm` file: `mxFrame`, the frames in the log, is
    // the native-endian u32 at byte 16. A torn read can only add or hide one drop.
    let sampler = tokio::spawn({
        let done = done.clone();
        async move {
            use std::os::unix::fs::FileExt;
            let (mut restarts, mut last) = (0u32, 0u32);
            let mut frames = [0u8; 4];
            while !done.is_cancelled() {
                shm.read_exact_at(&mut frames, 16)?;
                let now = u32::from_ne_bytes(frames);
                if now < last {
                    restarts += 1;
                }
                last = now;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            std::io::Result::Ok(restarts)
        }
    });
    let mut writers = Vec::new();
    for (w, store) in [first, second].into_iter().enumerate() {
        let convs = convs.clone();
        let origin = origin.clone();
        let db_path = db.path.clone();
        writers.push(tokio::spawn(async move {
            let mut n: i64 = 0;
            while std::fs::metadata(&db_path).map_or(0, |m| m.len()) < DATA
                && std::time::Instant::now() < deadline
            {
                let batch = (0..32)
                    .map(|_| {
                        n += 1;
                        let (conv, sender) = convs[(n as usize * 7 + w) % convs.len()];
                        Ok(NewEvent {
                            conv,
                            id: MessageId(((w as i64 + 1) << 40) | n),
                            at: n,
                            sender,
                            device: None,
                            client_id: Some(ClientMsgId::new(format!("w{w}-{n}"))?),
                            body: crate::store::NewBody::Message {
                                kind: protocol::model::MessageKind::Text,
                                text: "x".repeat(200),
                                attachment: None,
                                reply_to: None,
                            },
                            origin: origin.clone(),
                        })
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                for r in store.append(batch).await {
                    r?;
                }
            }
            anyhow::Ok(())
        }));
    }
    for w in writers {
        w.await??;
    }
    done.cancel();
    let restarts = sampler.await??;
    let data = std::fs::metadata(&db.path).map_or(0, |m| m.len());
    assert!(data >= DATA, "the writers stopped early: {data} bytes");
    assert!(
        restarts >= 2,
        "the log started over {restarts} times while {data} bytes of data were written"
    );
    Ok(())
}

/// The checkpointer flushes through one descriptor per file that it never closes (closing
/// one would drop SQLite's locks); a file made again under the same name gets its own.
#[test]
fn flushed_files_keep_one_descriptor() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("f");
    std::fs::write(&path, b"one")?;
    let first = kept_open(&path)?;
    assert!(Arc::ptr_eq(&first, &kept_open(&path)?), "opened once");
    std::fs::remove_file(&path)?;
    std::fs::write(&path, b"two")?;
    let second = kept_open(&path)?;
    assert!(!Arc::ptr_eq(&first, &second), "the new file has its own");
    assert!(Arc::ptr_eq(&second, &kept_open(&path)?));
    // Both still open: the process holds more than the two handles here.
    assert!(Arc::strong_count(&first) >= 2 && Arc::strong_count(&second) >= 2);
    Ok(())
}

/// Errors that mean "not now" (pool exhausted, I/O) are unavailable; others are internal.
#[test]
fn busy_and_io_errors_are_unavailable() {
    assert!(matches!(
        db_err(sqlx::Error::PoolTimedOut),
        StoreError::Unavailable(_)
    ));
    assert!(matches!(
        db_err(sqlx::Error::Io(std::io::Error::other("disk gone"))),
        StoreError::Unavailable(_)
    ));
    assert!(matches!(
        db_err(sqlx::Error::RowNotFound),
        StoreError::Internal(_)
    ));
}

/// A write transaction whose caller goes away half-way (an HTTP client hanging up, a task
/// aborted) is rolled back, and neither this process's next writer nor another process's
/// finds the file locked for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_dropped_half_way_are_rolled_back() -> anyhow::Result<()> {
    let db = temp_db().await?;
    let store = SqliteStore::open(&db.path).await?;
    // Another handle has a lock file descriptor of its own, as another process would.
    let other = SqliteStore::open(&db.path).await?;
    {
        let tx = store.backend().write_tx().await?;
        tx.execute(
            "INSERT INTO users (username, password_hash, created_at) VALUES ('ghost', 'x', 0)",
            [],
        )?;
    }
    tokio::time::timeout(Duration::from_secs(5), other.create_user(named("alive"))).await??;
    assert_eq!(store.user_by_name("ghost").await?, None);

    // Appends cut off after every amount of progress leave contiguous seqs behind them.
    let a = store.create_user(named("a")).await?.id;
    let b = store.create_user(named("b")).await?.id;
    let origin = NodeId::new("cut")?;
    let (conv, _) = store
        .open_direct(a, b, at_zero(MessageId(1), &origin))
        .await?;
    let mut next = 2;
    for micros in (0..40).map(|i| i * 25) {
        let batch: Vec<NewEvent> = (0..3)
            .map(|_| {
                next += 1;
                Ok(NewEvent {
                    conv,
                    id: MessageId(next),
                    at: next,
                    sender: a,
                    device: None,
                    client_id: Some(ClientMsgId::new(format!("c{next}"))?),
                    body: crate::store::NewBody::Message {
                        kind: protocol::model::MessageKind::Text,
                        text: format!("m{next}"),
                        attachment: None,
                        reply_to: None,
                    },
                    origin: origin.clone(),
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let _ = tokio::time::timeout(Duration::from_micros(micros), store.append(batch)).await;
    }
    let last = NewEvent {
        conv,
        id: MessageId(next + 1),
        at: next + 1,
        sender: b,
        device: None,
        client_id: None,
        body: crate::store::NewBody::Message {
            kind: protocol::model::MessageKind::Text,
            text: "still writable".into(),
            attachment: None,
            reply_to: None,
        },
        origin: origin.clone(),
    };
    for result in tokio::time::timeout(Duration::from_secs(5), other.append(vec![last])).await? {
        result?;
    }
    let (events, _) = store.events(conv, Page::After(0), 10_000).await?;
    let seqs: Vec<Seq> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=events.len() as Seq).collect::<Vec<_>>());
    Ok(())
}

/// A write lock held elsewhere (another process) longer than the busy timeout makes a write
/// fail as unavailable; reads go on meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_write_lock_makes_writes_unavailable_not_reads() -> anyhow::Result<()> {
    let db = temp_db().await?;
    let store = SqliteStore::open(&db.path).await?;
    let options = SqliteConnectOptions::new().filename(&db.path);
    let mut other = SqliteConnection::connect_with(&options).await?;
    let held = other.begin_with("BEGIN IMMEDIATE").await?;
    // Our own short-fused connection, so the test does not wait for BUSY_TIMEOUT.
    let mut impatient =
        SqliteConnection::connect_with(&options.clone().busy_timeout(Duration::from_millis(50)))
            .await?;
    let err = match impatient.begin_with("BEGIN IMMEDIATE").await {
        Ok(_) => anyhow::bail!("the write lock was granted twice"),
        Err(e) => db_err(e),
    };
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert_eq!(store.user_by_name("nobody-here").await?, None);
    drop(held);
    Ok(())
}
