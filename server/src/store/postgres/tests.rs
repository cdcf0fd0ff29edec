//! The PostgreSQL store against the behavioural suite, each test in a schema of its own, and
//! what only it does: many pools on one conversation, sessions ended under it, held locks,
//! deferred inserts.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use async_trait::async_trait;
use bytes::Bytes;
use protocol::model::{Attachment, MessageKind};
use protocol::{
    AttachmentId, ClientMsgId, ConvId, DeviceId, MessageId, Millis, NodeId, Seq, UserId,
};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};

use super::errors::{db_err, sqlstate_error};
use super::{MIGRATOR, PostgresConfig, PostgresStore};
use crate::store::suite::{TestDb, named};
use crate::store::{
    Appended, AttachmentBlob, Creation, DeviceLogin, NewBody, NewEvent, Page, SharedStore, Store,
    StoreError, StoreResult,
};

/// The server the tests use unless [`URL_VAR`] names another.
const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// Overrides [`DEFAULT_URL`].
const URL_VAR: &str = "CHAT_TEST_POSTGRES";
/// Test schemas are named `chat_test_<unix seconds>_<random>`.
const SCHEMA_PREFIX: &str = "chat_test_";
/// A test schema older than this was left by a run that was killed: the next run drops it.
const STALE_AFTER_SECS: u64 = 3600;

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A fresh schema in the test database: one test's own tables, while other tests and other
/// people's test processes use the same server. Dropped with this value.
struct TestSchema {
    base: PgConnectOptions,
    schema: String,
    /// The `application_name` of the stores' connections, to find them on the server.
    app: String,
}

impl TestSchema {
    async fn create() -> anyhow::Result<TestSchema> {
        let url = std::env::var(URL_VAR).unwrap_or_else(|_| DEFAULT_URL.to_owned());
        let base = PgConnectOptions::from_str(&url)
            .with_context(|| format!("{URL_VAR} is not a PostgreSQL URL"))?;
        let mut admin = reach(&base).await?;
        drop_stale_schemas(&mut admin).await;
        let tag = format!("{:08x}", rand::random::<u32>());
        let schema = format!("{SCHEMA_PREFIX}{}_{tag}", unix_secs());
        sqlx::raw_sql(&format!("CREATE SCHEMA {schema}"))
            .execute(&mut admin)
            .await?;
        let _ = admin.close().await;
        Ok(TestSchema {
            base,
            schema,
            app: format!("chat-test-{tag}"),
        })
    }

    /// Options of the stores' connections: into this schema, under this test's name.
    fn options(&self) -> PgConnectOptions {
        self.base
            .clone()
            .options([("search_path", self.schema.as_str())])
            .application_name(&self.app)
    }

    async fn store(&self) -> StoreResult<PostgresStore> {
        self.store_with(PostgresConfig::default()).await
    }

    async fn store_with(&self, config: PostgresConfig) -> StoreResult<PostgresStore> {
        PostgresStore::connect_with(self.options(), config).await
    }

    /// A connection into the schema that is not one of the stores' (another name).
    async fn admin(&self) -> anyhow::Result<PgConnection> {
        let options = self
            .base
            .clone()
            .options([("search_path", self.schema.as_str())])
            .application_name("chat-test-admin");
        Ok(PgConnection::connect_with(&options).await?)
    }

    /// Ends every server session of this test's stores, as a server restart would.
    async fn terminate_sessions(&self, admin: &mut PgConnection) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = $1",
        )
        .bind(&self.app)
        .fetch_one(admin)
        .await?)
    }
}

#[async_trait]
impl TestDb for TestSchema {
    async fn open(&self) -> anyhow::Result<SharedStore> {
        Ok(Arc::new(self.store().await?))
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let (base, schema) = (self.base.clone(), self.schema.clone());
        // Drop runs on the test's runtime, which must not be blocked on: a thread with a
        // runtime of its own does the work.
        let dropped = std::thread::spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut admin = PgConnection::connect_with(&base).await?;
                sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .execute(&mut admin)
                    .await?;
                let _ = admin.close().await;
                Ok(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!(
                "test schema {} was not dropped; a later run drops it",
                self.schema
            );
        }
    }
}

/// A connection to the test server, or an error that says how to start it: these tests
/// fail, never skip, when PostgreSQL is down.
async fn reach(base: &PgConnectOptions) -> anyhow::Result<PgConnection> {
    let why = match tokio::time::timeout(Duration::from_secs(10), PgConnection::connect_with(base))
        .await
    {
        Ok(Ok(conn)) => return Ok(conn),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no answer within 10 s".to_owned(),
    };
    bail!(
        "PostgreSQL is not reachable at {}:{} ({why}). These tests need it: start it with \
         `pg_ctlcluster $(ls /etc/postgresql) main start` (scripts/services.sh starts every \
         service the tests use), or set {URL_VAR} to another server's URL",
        base.get_host(),
        base.get_port()
    )
}

/// Drops the schemas of test runs that were killed before they could.
async fn drop_stale_schemas(admin: &mut PgConnection) {
    let names: Vec<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname, $1)")
            .bind(SCHEMA_PREFIX)
            .fetch_all(&mut *admin)
            .await
            .unwrap_or_default();
    let now = unix_secs();
    for name in names {
        let born = name
            .strip_prefix(SCHEMA_PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|secs| secs.parse::<u64>().ok());
        let ours = name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if ours && born.is_some_and(|born| now.saturating_sub(born) > STALE_AFTER_SECS) {
            // Another run may be dropping it too: whoever comes second finds nothing.
            let _ = sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                .execute(&mut *admin)
                .await;
        }
    }
}

crate::store::suite::store_suite!(TestSchema::create());

// -----------------------------------------------------------------------------------------
// Helpers of the tests below

/// Event ids unique in a schema: a random start, then counting.
fn next_id() -> MessageId {
    static NEXT: std::sync::OnceLock<AtomicI64> = std::sync::OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicI64::new((rand::random::<u64>() >> 2) as i64));
    MessageId(next.fetch_add(1, Ordering::Relaxed))
}

fn origin() -> anyhow::Result<NodeId> {
    Ok(NodeId::new("pg-test")?)
}

fn text(conv: ConvId, sender: UserId, text: &str) -> anyhow::Result<NewEvent> {
    Ok(NewEvent {
        conv,
        id: next_id(),
        at: now_ms(),
        sender,
        device: None,
        client_id: None,
        body: NewBody::Message {
            kind: MessageKind::Text,
            text: text.into(),
            attachment: None,
            reply_to: None,
        },
        origin: origin()?,
    })
}

async fn append_one(store: &dyn Store, ev: NewEvent) -> StoreResult<Appended> {
    store
        .append(vec![ev])
        .await
        .into_iter()
        .next()
        .unwrap_or_else(|| Err(StoreError::Internal("no result".into())))
}

async fn users<const N: usize>(store: &dyn Store) -> anyhow::Result<[UserId; N]> {
    let mut ids = [UserId(0); N];
    for (i, id) in ids.iter_mut().enumerate() {
        *id = store
            .create_user(named(&format!("u{i}-{:08x}", rand::random::<u32>())))
            .await?
            .id;
    }
    Ok(ids)
}

async fn direct(store: &dyn Store, a: UserId, b: UserId) -> anyhow::Result<ConvId> {
    let creation = Creation {
        id: next_id(),
        origin: &origin()?,
        at: 0,
    };
    Ok(store.open_direct(a, b, creation).await?.0)
}

async fn seqs(store: &dyn Store, conv: ConvId) -> anyhow::Result<Vec<Seq>> {
    let (events, more) = store.events(conv, Page::After(0), 100_000).await?;
    ensure!(!more, "history longer than expected");
    Ok(events.iter().map(|e| e.seq).collect())
}

/// Waits until one of `app`'s sessions waits for a lock.
async fn until_waiting_for_lock(admin: &mut PgConnection, app: &str) -> anyhow::Result<()> {
    for _ in 0..500 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity \
             WHERE application_name = $1 AND wait_event_type = 'Lock'",
        )
        .bind(app)
        .fetch_one(&mut *admin)
        .await?;
        if waiting > 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("the store never waited for the lock")
}

// -----------------------------------------------------------------------------------------
// PostgreSQL's own

/// Four pools (four processes' worth) × eight tasks append 50 events each to one
/// conversation, in batches of 1 to 4 that each also append to a second conversation, named
/// first or last: both conversations' seqs come out exactly 1..=n, and no batch deadlocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_pools_append_to_one_conversation() -> anyhow::Result<()> {
    const POOLS: usize = 4;
    const TASKS: usize = 8;
    const EACH: usize = 50;
    let db = TestSchema::create().await?;
    let mut stores = Vec::new();
    for _ in 0..POOLS {
        // Fewer connections than tasks: tasks also queue for them, as a node's would, and
        // the test leaves room on a server that other tests share.
        let config = PostgresConfig {
            max_connections: 4,
            ..PostgresConfig::default()
        };
        stores.push(Arc::new(db.store_with(config).await?));
    }
    let [hub, spoke, third] = users(&*stores[0]).await?;
    let main = direct(&*stores[0], hub, spoke).await?;
    let side = direct(&*stores[1], hub, third).await?;

    let mut tasks = Vec::new();
    for t in 0..POOLS * TASKS {
        let store = stores[t % POOLS].clone();
        tasks.push(tokio::spawn(async move {
            let (mut main_seqs, mut side_seqs) = (Vec::new(), Vec::new());
            let mut sent = 0;
            while sent < EACH {
                let size = (sent % 4 + 1).min(EACH - sent);
                let mut batch = Vec::with_capacity(size + 1);
                for k in sent..sent + size {
                    let sender = if k % 2 == 0 { hub } else { spoke };
                    let mut ev = text(main, sender, &format!("t{t} m{k}"))?;
                    ev.client_id = Some(ClientMsgId::new(format!("t{t}-m{k}"))?);
                    batch.push(ev);
                }
                let aside = text(side, hub, &format!("t{t} aside {sent}"))?;
                // Locks are taken in id order whatever the order in the batch.
                if t % 2 == 0 {
                    batch.push(aside);
                } else {
                    batch.insert(0, aside);
                }
                for result in store.append(batch).await {
                    let appended = result?;
                    ensure!(!appended.duplicate, "a new event reported as a resend");
                    if appended.event.conv == main {
                        main_seqs.push(appended.event.seq);
                    } else {
                        side_seqs.push(appended.event.seq);
                    }
                }
                sent += size;
            }
            ensure!(
                main_seqs.windows(2).all(|w| w[0] < w[1]),
                "one task's seqs go up: {main_seqs:?}"
            );
            anyhow::Ok((main_seqs, side_seqs))
        }));
    }
    let (mut main_seqs, mut side_seqs) = (Vec::new(), Vec::new());
    for task in tasks {
        let (m, s) = task.await??;
        main_seqs.extend(m);
        side_seqs.extend(s);
    }
    main_seqs.sort_unstable();
    side_seqs.sort_unstable();
    let total = (POOLS * TASKS * EACH) as Seq;
    assert_eq!(
        main_seqs,
        (2..=total + 1).collect::<Vec<_>>(),
        "no gap, no repeat"
    );
    let batches = side_seqs.len() as Seq;
    assert_eq!(side_seqs, (2..=batches + 1).collect::<Vec<_>>());

    assert_eq!(
        seqs(&*stores[3], main).await?,
        (1..=total + 1).collect::<Vec<_>>()
    );
    assert_eq!(
        stores[2].conversation(main).await?.context("row")?.last_seq,
        total + 1
    );
    assert_eq!(
        seqs(&*stores[3], side).await?,
        (1..=batches + 1).collect::<Vec<_>>()
    );
    Ok(())
}

/// A call in flight when the server ends its session (a restart, a failover) is
/// unavailable; the calls after it reconnect, also through connections that died idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_sessions_fail_calls_in_flight_then_the_pool_recovers() -> anyhow::Result<()> {
    let db = TestSchema::create().await?;
    let store = db.store().await?;
    let [a, b] = users(&store).await?;
    let conv = direct(&store, a, b).await?;

    // Another session holds the conversation's lock, so our append is surely in flight.
    let mut admin = db.admin().await?;
    let mut holder = db.admin().await?;
    let mut held = holder.begin().await?;
    sqlx::query("SELECT id FROM conversations WHERE id = $1 FOR UPDATE")
        .bind(conv.0)
        .execute(&mut *held)
        .await?;
    let in_flight = tokio::spawn({
        let store = store.clone();
        let ev = text(conv, a, "in flight")?;
        async move { append_one(&store, ev).await }
    });
    until_waiting_for_lock(&mut admin, &db.app).await?;
    ensure!(db.terminate_sessions(&mut admin).await? >= 1);
    let outcome = in_flight.await?;
    assert!(
        matches!(outcome, Err(StoreError::Unavailable(_))),
        "{outcome:?}"
    );
    held.rollback().await?;

    let next = append_one(&store, text(conv, b, "after")?).await?;
    assert_eq!(next.event.seq, 2, "the failed append stored nothing");

    // Sessions ended while idle: the pool replaces them before handing them out.
    ensure!(db.terminate_sessions(&mut admin).await? >= 1);
    assert!(store.user_by_id(a).await?.is_some());
    let again = append_one(&store, text(conv, a, "again")?).await?;
    assert_eq!(again.event.seq, 3);
    assert_eq!(seqs(&store, conv).await?, [1, 2, 3]);
    Ok(())
}

/// While a batch holds a conversation's lock, another writer of that conversation gives up
/// after `lock_timeout` (unavailable), while reads and uploads into it go on: the lock is
/// `FOR NO KEY UPDATE`, which foreign-key checks do not wait for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_conversation_lock_delays_its_writers_only() -> anyhow::Result<()> {
    let db = TestSchema::create().await?;
    let store = db
        .store_with(PostgresConfig {
            lock_timeout: Duration::from_millis(200),
            ..PostgresConfig::default()
        })
        .await?;
    let [a, b] = users(&store).await?;
    let conv = direct(&store, a, b).await?;
    let other = direct(&store, a, users::<1>(&store).await?[0]).await?;

    let mut holder = db.admin().await?;
    let mut held = holder.begin().await?;
    sqlx::query("SELECT id FROM conversations WHERE id = $1 FOR NO KEY UPDATE")
        .bind(conv.0)
        .execute(&mut *held)
        .await?;
    let blocked = append_one(&store, text(conv, a, "blocked")?).await;
    assert!(
        matches!(blocked, Err(StoreError::Unavailable(_))),
        "{blocked:?}"
    );
    assert_eq!(seqs(&store, conv).await?, [1], "reads go on");
    append_one(&store, text(other, a, "elsewhere")?).await?;
    let data = Bytes::from_static(b"\x89PNG");
    store
        .put_attachment(AttachmentBlob {
            meta: Attachment {
                id: AttachmentId::new(format!("f{:08x}", rand::random::<u32>()))?,
                name: "a.png".into(),
                mime: "image/png".into(),
                size: data.len() as u64,
                conv,
            },
            uploader: a,
            created_at: 0,
            data,
        })
        .await?;
    held.rollback().await?;
    assert_eq!(
        append_one(&store, text(conv, a, "free")?).await?.event.seq,
        2
    );
    Ok(())
}

/// A NUL, which PostgreSQL cannot store in text, is refused as invalid: in a batch, alone
/// (the others commit); elsewhere, as the database's refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_in_text_is_refused_alone() -> anyhow::Result<()> {
    let db = TestSchema::create().await?;
    let store = db.store().await?;
    let [a, b] = users(&store).await?;
    let conv = direct(&store, a, b).await?;
    let results = store
        .append(vec![
            text(conv, a, "before")?,
            text(conv, a, "nul \0 inside")?,
            text(conv, b, "after")?,
        ])
        .await;
    assert_eq!(results[0].as_ref().map(|r| r.event.seq).ok(), Some(2));
    assert!(
        matches!(results[1], Err(StoreError::Invalid(_))),
        "{:?}",
        results[1]
    );
    assert_eq!(results[2].as_ref().map(|r| r.event.seq).ok(), Some(3));
    let nul_name = store.create_user(named("nul\0name")).await;
    assert!(
        matches!(nul_name, Err(StoreError::Invalid(_))),
        "{nul_name:?}"
    );
    let device = store
        .login_device(DeviceLogin {
            user: a,
            device: &DeviceId::new("d1")?,
            name: "my\0phone",
            at: 0,
        })
        .await;
    assert!(matches!(device, Err(StoreError::Invalid(_))), "{device:?}");
    Ok(())
}

/// In one batch (inserts deferred to one statement), later events see the earlier ones: a
/// reply, an edit and a delete of a message of the same batch, a resend of it, its id used
/// again, an attachment dropped with its message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_events_of_a_batch_see_the_earlier_ones() -> anyhow::Result<()> {
    let db = TestSchema::create().await?;
    let store = db.store().await?;
    let [a, b] = users(&store).await?;
    let conv = direct(&store, a, b).await?;
    let data = Bytes::from_static(b"GIF89a");
    let file = Attachment {
        id: AttachmentId::new(format!("f{:08x}", rand::random::<u32>()))?,
        name: "a.gif".into(),
        mime: "image/gif".into(),
        size: data.len() as u64,
        conv,
    };
    store
        .put_attachment(AttachmentBlob {
            meta: file.clone(),
            uploader: a,
            created_at: 0,
            data,
        })
        .await?;

    let mut first = text(conv, a, "helo")?;
    first.client_id = Some(ClientMsgId::new("c-first")?);
    let mut reply = text(conv, b, "hi")?;
    if let NewBody::Message { reply_to, .. } = &mut reply.body {
        *reply_to = Some(first.id);
    }
    let mut edit = text(conv, a, "")?;
    edit.body = NewBody::Edit {
        target: first.id,
        text: "hello".into(),
    };
    let mut image = text(conv, a, "")?;
    image.body = NewBody::Message {
        kind: MessageKind::Image,
        text: String::new(),
        attachment: Some(file.id.clone()),
        reply_to: None,
    };
    let mut delete = text(conv, a, "")?;
    delete.body = NewBody::Delete { target: image.id };
    let mut resend = first.clone();
    resend.id = next_id();
    let mut same_id = text(conv, b, "same id")?;
    same_id.id = first.id;
    let last = text(conv, b, "last")?;

    let results = store
        .append(vec![
            first.clone(),
            reply,
            edit,
            image,
            delete,
            resend,
            same_id,
            last,
        ])
        .await;
    let seq = |i: usize| results[i].as_ref().map(|r| r.event.seq).ok();
    assert_eq!(
        (0..5).map(seq).collect::<Vec<_>>(),
        [Some(2), Some(3), Some(4), Some(5), Some(6)],
        "{results:?}"
    );
    let again = results[5].as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
    assert!(again.duplicate && again.event.id == first.id);
    assert!(
        matches!(results[6], Err(StoreError::Conflict(_))),
        "{:?}",
        results[6]
    );
    assert_eq!(seq(7), Some(7));

    let (events, _) = store.events(conv, Page::After(0), 100).await?;
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>()
    );
    let shown = |i: usize| match &events[i].body {
        protocol::model::EventBody::Message(m) => Ok(m.clone()),
        other => Err(anyhow::anyhow!("not a message: {other:?}")),
    };
    assert_eq!(shown(1)?.text, "hello", "edited in the same batch");
    assert_eq!(shown(2)?.reply_to, Some(first.id));
    assert!(shown(4)?.deleted && shown(4)?.attachment.is_none());
    assert_eq!(store.attachment(&file.id).await?, None, "dropped with it");
    Ok(())
}

/// A key that another writer takes after the batch looked (the same client id racing in
/// through another conversation) makes the batch try again, and then its event is a
/// resend of the other writer's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_taken_meanwhile_makes_the_batch_try_again() -> anyhow::Result<()> {
    let db = TestSchema::create().await?;
    let store = db.store().await?;
    let [a, b, c] = users(&store).await?;
    let conv = direct(&store, a, b).await?;
    let elsewhere = direct(&store, a, c).await?;

    // Another writer inserts a's "race" into the other conversation and has not committed.
    let mut admin = db.admin().await?;
    let mut writer = db.admin().await?;
    let mut other = writer.begin().await?;
    let theirs = next_id();
    sqlx::query(
        "INSERT INTO events (id, conv_id, seq, at, sender, client_id, origin, body_type, \
         msg_kind, text) VALUES ($1, $2, 2, 0, $3, 'race', 'other', 'message', 'text', 'theirs')",
    )
    .bind(theirs.0)
    .bind(elsewhere.0)
    .bind(a.0)
    .execute(&mut *other)
    .await?;
    sqlx::query("UPDATE conversations SET last_seq = 2 WHERE id = $1")
        .bind(elsewhere.0)
        .execute(&mut *other)
        .await?;

    let mut racing = text(conv, a, "mine")?;
    racing.client_id = Some(ClientMsgId::new("race")?);
    let batch = vec![text(conv, b, "before")?, racing, text(conv, b, "after")?];
    let appending = tokio::spawn({
        let store = store.clone();
        async move { store.append(batch).await }
    });
    // Our insert waits for theirs to decide; then theirs commits.
    until_waiting_for_lock(&mut admin, &db.app).await?;
    other.commit().await?;

    let results = appending.await?;
    let seqs_got: Vec<Option<Seq>> = results
        .iter()
        .map(|r| r.as_ref().map(|x| x.event.seq).ok())
        .collect();
    assert_eq!(seqs_got, [Some(2), Some(2), Some(3)], "{results:?}");
    let resend = results[1].as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
    assert!(resend.duplicate);
    assert_eq!(
        (resend.event.id, resend.event.conv),
        (theirs, elsewhere),
        "the first event, wherever it is"
    );
    assert_eq!(seqs(&store, conv).await?, [1, 2, 3]);
    Ok(())
}

/// Many handles connect to a fresh schema at once: the migrations run once, in that schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_handles_migrate_one_schema_at_once() -> anyhow::Result<()> {
    let db = TestSchema::create().await?;
    let stores = futures::future::try_join_all((0..6).map(|_| db.store())).await?;
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(&stores[0].backend().pool)
        .await?;
    assert_eq!(applied as usize, MIGRATOR.iter().count());
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = $1 ORDER BY table_name",
    )
    .bind(&db.schema)
    .fetch_all(&stores[5].backend().pool)
    .await?;
    assert_eq!(
        tables,
        [
            "_sqlx_migrations",
            "attachments",
            "conversations",
            "devices",
            "events",
            "members",
            "users"
        ]
    );
    Ok(())
}

/// Every connection of the pool carries the configured timeouts, in this test's schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_carry_their_timeouts() -> anyhow::Result<()> {
    let db = TestSchema::create().await?;
    let store = db
        .store_with(PostgresConfig {
            lock_timeout: Duration::from_millis(1500),
            idle_in_transaction_timeout: Duration::from_millis(700),
            statement_timeout: Duration::from_secs(20),
            ..PostgresConfig::default()
        })
        .await?;
    let (lock, idle, statement, schema): (String, String, String, String) = sqlx::query_as(
        "SELECT current_setting('lock_timeout'), \
           current_setting('idle_in_transaction_session_timeout'), \
           current_setting('statement_timeout'), current_schema()::text",
    )
    .fetch_one(&store.backend().pool)
    .await?;
    assert_eq!(
        (lock.as_str(), idle.as_str(), statement.as_str()),
        ("1500ms", "700ms", "20s")
    );
    assert_eq!(schema, db.schema);
    Ok(())
}

/// Nothing listening: unavailable at once, through `store::open` too; a malformed URL is
/// invalid.
#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    let nowhere = "postgres://postgres@127.0.0.1:1/test";
    let direct = PostgresStore::connect(nowhere).await;
    assert!(
        matches!(direct, Err(StoreError::Unavailable(_))),
        "{:?}",
        direct.err()
    );
    for url in [nowhere, "postgresql://postgres@127.0.0.1:1/test"] {
        let opened = crate::store::open(url).await;
        assert!(
            matches!(opened, Err(StoreError::Unavailable(_))),
            "{url}: {:?}",
            opened.err()
        );
    }
    let malformed = PostgresStore::connect("postgres://host:port/db").await;
    assert!(
        matches!(malformed, Err(StoreError::Invalid(_))),
        "{:?}",
        malformed.err()
    );
}

/// SQLSTATEs that mean "not now" are unavailable, data exceptions invalid, others internal.
#[test]
fn sqlstates_are_mapped() {
    for code in [
        "08006", "40001", "40P01", "55P03", "57014", "57P01", "57P03", "25006", "25P03", "53300",
        "53100", "58030",
    ] {
        assert!(
            matches!(sqlstate_error(code, ""), Some(StoreError::Unavailable(_))),
            "{code}"
        );
    }
    assert!(matches!(
        sqlstate_error("22021", "invalid byte sequence"),
        Some(StoreError::Invalid(m)) if !m.contains("byte")
    ));
    assert!(sqlstate_error("42P01", "").is_none());
    assert!(matches!(
        db_err(sqlx::Error::PoolTimedOut),
        StoreError::Unavailable(_)
    ));
    assert!(matches!(
        db_err(sqlx::Error::Io(std::io::Error::other("reset"))),
        StoreError::Unavailable(_)
    ));
    assert!(matches!(
        db_err(sqlx::Error::RowNotFound),
        StoreError::Internal(_)
    ));
}
