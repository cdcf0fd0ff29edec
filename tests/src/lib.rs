//! Fixtures for the process-level tests in `tests/tests/`: a real cluster started through the
//! lab supervisor (a controller and nodes, each its own `server` process on loopback), users
//! and devices driven through the client core, and a raw WebSocket for the tests that must
//! misbehave on purpose. Every wait polls for a condition with a deadline; nothing sleeps and
//! hopes.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use client::{Client, ClientConfig, ClientEvent, ClientState, Draft, Session};
use futures::{SinkExt, StreamExt};
use lab::{Cluster, ClusterConfig};
use protocol::model::{Event, EventBody};
use protocol::ws::{Ack, ServerFrame};
use protocol::{ConvId, MessageId, NodeId, Seq, UserId};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The ZooKeeper of the `zookeeper` stack.
pub const ZOOKEEPER_URL: &str = "zookeeper://127.0.0.1:2181";

/// The password every test user has.
pub const PASSWORD: &str = "correct horse battery";

/// How long a test waits for something that must happen.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The backends the process-level tests run on, from `CHAT_TEST_STACK`:
/// - `embedded` (default): registry and bus in the controller, SQLite history;
/// - `redis`: Redis registry, Redis pub/sub bus, PostgreSQL history;
/// - `rabbitmq`: Redis registry, RabbitMQ bus, PostgreSQL history;
/// - `zookeeper`: ZooKeeper registry, RabbitMQ bus, PostgreSQL history.
///
/// `scripts/test` runs the tests once per stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stack {
    /// Nothing to install.
    Embedded,
    /// Redis for registry and bus, PostgreSQL for history.
    Redis,
    /// Redis for the registry, RabbitMQ for the bus, PostgreSQL for history.
    RabbitMq,
    /// ZooKeeper for the registry, RabbitMQ for the bus, PostgreSQL for history.
    ZooKeeper,
}

impl Stack {
    /// The stack named by `CHAT_TEST_STACK`.
    pub fn current() -> Result<Stack> {
        match std::env::var("CHAT_TEST_STACK").as_deref() {
            Err(_) | Ok("") | Ok("embedded") => Ok(Stack::Embedded),
            Ok("redis") => Ok(Stack::Redis),
            Ok("rabbitmq") => Ok(Stack::RabbitMq),
            Ok("zookeeper") => Ok(Stack::ZooKeeper),
            Ok(other) => {
                bail!("CHAT_TEST_STACK={other:?}: expected embedded, redis, rabbitmq or zookeeper")
            }
        }
    }
}

/// What a test cluster leaves in shared services, removed when the cluster is dropped: its
/// Redis keys, its ZooKeeper tree and its PostgreSQL schema (RabbitMQ queues expire by
/// themselves).
#[derive(Debug, Default)]
pub struct Leftovers {
    redis_prefix: Option<String>,
    zookeeper_root: Option<String>,
    pg_schema: Option<String>,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        use std::process::{Command, Stdio};
        if let Some(prefix) = &self.redis_prefix {
            let script = format!(
                "redis-cli -h 127.0.0.1 --scan --pattern '{prefix}*' | xargs -r redis-cli -h 127.0.0.1 del"
            );
            let _ = Command::new("sh")
                .args(["-c", &script])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if let Some(root) = self.zookeeper_root.clone() {
            // A thread and runtime of its own: this may run inside or outside a runtime.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(server::registry::zookeeper::remove_tree(
                    ZOOKEEPER_URL,
                    &root,
                ))
                .map_err(anyhow::Error::from)
            })
            .join();
        }
        if let Some(schema) = &self.pg_schema {
            let _ = Command::new("psql")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-d",
                    "test",
                    "-qc",
                    &format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A test cluster: the lab's [`Cluster`] plus what to clean up in shared services after it.
pub struct TestCluster {
    cluster: Option<Cluster>,
    _leftovers: Leftovers,
}

impl std::ops::Deref for TestCluster {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        self.cluster
            .as_ref()
            .unwrap_or_else(|| unreachable!("the cluster lives until shutdown"))
    }
}

impl std::ops::DerefMut for TestCluster {
    fn deref_mut(&mut self) -> &mut Cluster {
        self.cluster
            .as_mut()
            .unwrap_or_else(|| unreachable!("the cluster lives until shutdown"))
    }
}

impl TestCluster {
    /// Stops every process gracefully (an unclean exit fails the test).
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(c) = self.cluster.take() {
            c.shutdown().await?;
        }
        Ok(())
    }
}

fn tag() -> String {
    format!("e2e{}{:06x}", std::process::id(), rand_u32() & 0xff_ffff)
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u32
}

/// A cluster config for tests on the current [`Stack`]: `nodes` nodes, fast password hashing
/// (tests log in hundreds of devices), its own namespace in every shared service, and
/// everything else as a user would run it.
pub async fn config(nodes: usize) -> Result<(ClusterConfig, Leftovers)> {
    let mut c = ClusterConfig::new(nodes);
    c.controller_args = vec!["--password-hash".into(), "fast".into()];
    let mut leftovers = Leftovers::default();
    // `CHAT_TEST_ROUTING=fanout` runs the same tests with every envelope sent to every node.
    match std::env::var("CHAT_TEST_ROUTING").as_deref() {
        Err(_) | Ok("") | Ok("routed") => {}
        Ok("fanout") => c.backends.routing = lab::Routing::Fanout,
        Ok(other) => bail!("CHAT_TEST_ROUTING={other:?}: expected routed or fanout"),
    }
    let stack = Stack::current()?;
    if stack != Stack::Embedded {
        let tag = tag();
        let schema = tag.clone();
        let status = std::process::Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "test",
                "-qc",
                &format!("CREATE SCHEMA {schema}"),
            ])
            .status()
            .context("running psql (is PostgreSQL installed? scripts/services.sh installs it)")?;
        if !status.success() {
            bail!(
                "could not create a schema in PostgreSQL at 127.0.0.1:5432/test; start it with `pg_ctlcluster $(ls /etc/postgresql) main start`"
            );
        }
        leftovers.pg_schema = Some(schema.clone());
        let redis_prefix = format!("{tag}:");
        leftovers.redis_prefix = Some(redis_prefix.clone());
        c.backends.store = Some(format!(
            "postgres://postgres@127.0.0.1:5432/test?options[search_path]={schema}"
        ));
        c.backends.registry = match stack {
            Stack::ZooKeeper => {
                leftovers.zookeeper_root = Some(tag.clone());
                format!("{ZOOKEEPER_URL}/?prefix={tag}")
            }
            _ => format!("redis://127.0.0.1:6379/?prefix={redis_prefix}"),
        };
        c.backends.bus = match stack {
            Stack::Redis => format!("redis://127.0.0.1:6379/?prefix={redis_prefix}"),
            _ => format!("amqp://guest:guest@127.0.0.1:5672/%2f?prefix={tag}."),
        };
    }
    Ok((c, leftovers))
}

/// Starts a cluster with a [`config`] changed by `adjust`.
pub async fn cluster_with(
    nodes: usize,
    adjust: impl FnOnce(&mut ClusterConfig),
) -> Result<TestCluster> {
    let (mut c, leftovers) = config(nodes).await?;
    adjust(&mut c);
    Ok(TestCluster {
        cluster: Some(Cluster::start(c).await?),
        _leftovers: leftovers,
    })
}

/// Starts a cluster with [`config`].
pub async fn cluster(nodes: usize) -> Result<TestCluster> {
    cluster_with(nodes, |_| {}).await
}

/// Registers `username` (with [`PASSWORD`]).
pub async fn register(cluster: &Cluster, username: &str) -> Result<UserId> {
    let user = client::register(cluster.controller_url(), username, PASSWORD)
        .await
        .with_context(|| format!("registering {username}"))?;
    Ok(user.id)
}

/// Logs `username` in on a new device.
pub async fn login(cluster: &Cluster, username: &str, label: &str) -> Result<Session> {
    let device = client::new_device_id();
    client::login(cluster.controller_url(), username, PASSWORD, &device, label)
        .await
        .with_context(|| format!("logging {username} in on {label}"))
}

/// A connected device: the client core plus a log of everything it heard.
pub struct Device {
    /// A name for messages ("alice/laptop").
    pub label: String,
    /// Its session (token, user, device).
    pub session: Session,
    /// The client core.
    pub client: Client,
    rx: mpsc::Receiver<ClientEvent>,
    /// Every event heard so far, in order.
    pub log: Vec<ClientEvent>,
}

/// Client settings for tests: quick reconnects so failover tests are not dominated by backoff.
pub fn client_config() -> ClientConfig {
    let mut c = ClientConfig::default();
    c.backoff.base = Duration::from_millis(50);
    c.backoff.cap = Duration::from_millis(1000);
    c.ping_interval = Duration::from_secs(2);
    c
}

impl Device {
    /// Logs in and connects a new device of `username`, and waits until it is live.
    pub async fn connect(cluster: &Cluster, username: &str, label: &str) -> Result<Device> {
        let session = login(cluster, username, label).await?;
        Self::start(
            session,
            ClientState::default(),
            format!("{username}/{label}"),
        )
        .await
    }

    /// Starts the client core on `session` from `state` and waits until it is live.
    pub async fn start(session: Session, state: ClientState, label: String) -> Result<Device> {
        Self::start_with(session, state, label, client_config()).await
    }

    /// [`Device::start`] with a client configuration of the test's own.
    pub async fn start_with(
        session: Session,
        state: ClientState,
        label: String,
        config: ClientConfig,
    ) -> Result<Device> {
        let (client, rx) = Client::start(&session, state, config)?;
        let mut d = Device {
            label,
            session,
            client,
            rx,
            log: Vec::new(),
        };
        d.live().await?;
        Ok(d)
    }

    /// Waits until the device is live (connected and resynced).
    pub async fn live(&mut self) -> Result<NodeId> {
        self.until("live", PATIENCE, |_| true).await.ok();
        let node = self
            .client
            .wait_live(PATIENCE)
            .await
            .with_context(|| format!("{} never went live", self.label))?;
        Ok(node)
    }

    /// The controller API as this device.
    pub fn api(&self) -> client::Api {
        self.session
            .api()
            .unwrap_or_else(|e| panic!("{}: the session's server URL is bad: {e}", self.label))
    }

    /// The user.
    pub fn user(&self) -> UserId {
        self.session.user.id
    }

    /// The node it is connected to now.
    pub fn node(&self) -> Option<NodeId> {
        self.client.node()
    }

    /// Moves whatever has arrived into the log.
    pub fn pump(&mut self) {
        while let Ok(e) = self.rx.try_recv() {
            self.log.push(e);
        }
    }

    /// Reads events into the log until `done(log)` holds, or fails after `limit` saying
    /// what it was waiting for.
    pub async fn until(
        &mut self,
        what: &str,
        limit: Duration,
        done: impl Fn(&[ClientEvent]) -> bool,
    ) -> Result<()> {
        self.pump();
        let deadline = tokio::time::Instant::now() + limit;
        while !done(&self.log) {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(e)) => self.log.push(e),
                Ok(None) => bail!(
                    "{}: event stream ended while waiting for {what}",
                    self.label
                ),
                Err(_) => bail!(
                    "{}: timed out after {limit:?} waiting for {what}; status {}",
                    self.label,
                    self.client.status()
                ),
            }
        }
        Ok(())
    }

    /// Events of `conv` heard so far, in the order heard.
    pub fn events(&self, conv: ConvId) -> Vec<&Event> {
        self.log
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Event(ev) if ev.conv == conv => Some(ev),
                _ => None,
            })
            .collect()
    }

    /// Texts of the messages of `conv` heard so far, in order.
    pub fn texts(&self, conv: ConvId) -> Vec<String> {
        self.events(conv)
            .into_iter()
            .filter_map(|ev| match &ev.body {
                EventBody::Message(m) => Some(m.text.clone()),
                _ => None,
            })
            .collect()
    }

    /// Waits until messages with all of `texts` have arrived in `conv`.
    pub async fn until_texts(
        &mut self,
        conv: ConvId,
        texts: &[String],
        limit: Duration,
    ) -> Result<()> {
        let want: HashSet<String> = texts.iter().cloned().collect();
        let what = format!("{} messages in conversation {conv}", want.len());
        self.until(&what, limit, |log| {
            let have: HashSet<&String> = log
                .iter()
                .filter_map(|e| match e {
                    ClientEvent::Event(ev) if ev.conv == conv => match &ev.body {
                        EventBody::Message(m) => Some(&m.text),
                        _ => None,
                    },
                    _ => None,
                })
                .collect();
            want.iter().all(|t| have.contains(t))
        })
        .await
    }

    /// Sends a text and waits for its ack.
    pub async fn say(&self, conv: ConvId, text: &str) -> Result<Ack> {
        self.client
            .send_and_wait_ack(Draft::text(conv, text), PATIENCE)
            .await
            .with_context(|| format!("{} sending {text:?}", self.label))
    }

    /// Acks heard so far, by client id.
    pub fn acks(&self) -> HashMap<String, Ack> {
        self.log
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Acked(a) => Some((a.client_id.to_string(), a.clone())),
                _ => None,
            })
            .collect()
    }

    /// Presence changes heard for `user`, in order.
    pub fn presence_of(&self, user: UserId) -> Vec<bool> {
        self.log
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Presence(p) if p.user == user => Some(p.online),
                _ => None,
            })
            .collect()
    }
}

/// Checks that `events` of one conversation are exactly `seq` 1.., no gaps, no repeats, from
/// `first` on.
pub fn assert_contiguous(label: &str, events: &[&Event], first: Seq) -> Result<()> {
    for (i, ev) in events.iter().enumerate() {
        let want = first + i as u64;
        if ev.seq != want {
            bail!(
                "{label}: event #{i} has seq {} where {want} was due (seqs: {:?})",
                ev.seq,
                events.iter().map(|e| e.seq).collect::<Vec<_>>()
            );
        }
    }
    Ok(())
}

/// Each message id at most once.
pub fn assert_no_duplicates(label: &str, events: &[&Event]) -> Result<()> {
    let mut seen: HashSet<MessageId> = HashSet::new();
    for ev in events {
        if !seen.insert(ev.id) {
            bail!("{label}: event {} (seq {}) arrived twice", ev.id, ev.seq);
        }
    }
    Ok(())
}

/// A raw WebSocket to a node, for tests that speak the protocol by hand.
pub struct Raw {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

/// A frame, or the end of the socket.
#[derive(Debug)]
pub enum Incoming {
    /// A frame.
    Frame(Box<ServerFrame>),
    /// The socket closed.
    Closed(Closed),
}

/// How a raw session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    /// A close frame with this code.
    Code(u16),
    /// The connection dropped without a close frame.
    Dropped,
}

impl Raw {
    /// Opens a socket to `ws_url` with `token` (none: no token at all). An HTTP refusal comes
    /// back as `Err` with its status and body.
    pub async fn open(ws_url: &str, token: Option<&str>) -> Result<Raw, (u16, String)> {
        let mut req = ws_url
            .into_client_request()
            .map_err(|e| (0, e.to_string()))?;
        if let Some(t) = token {
            let v = format!("Bearer {t}")
                .parse()
                .map_err(|_| (0, "bad token".to_owned()))?;
            req.headers_mut().insert("authorization", v);
        }
        match tokio_tungstenite::connect_async_with_config(req, None, true).await {
            Ok((ws, _)) => Ok(Raw { ws }),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let status = resp.status().as_u16();
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                Err((status, body))
            }
            Err(e) => Err((0, e.to_string())),
        }
    }

    /// Sends a text message.
    pub async fn send_text(&mut self, text: impl Into<String>) -> Result<()> {
        self.ws.send(Message::Text(text.into().into())).await?;
        Ok(())
    }

    /// Sends any WebSocket message (a ping, a binary frame).
    pub async fn send_message(&mut self, msg: Message) -> Result<()> {
        self.ws.send(msg).await?;
        Ok(())
    }

    /// Sends `hello` with no cursors and reads up to `synced`.
    pub async fn hello(&mut self) -> Result<Vec<ServerFrame>> {
        self.send_text(r#"{"type":"hello","v":1}"#).await?;
        let mut frames = Vec::new();
        loop {
            let f = self
                .next_frame(PATIENCE)
                .await?
                .ok_or_else(|| anyhow!("closed before synced"))?;
            let done = matches!(f, ServerFrame::Synced { .. });
            frames.push(f);
            if done {
                return Ok(frames);
            }
        }
    }

    /// The next frame, `None` once closed.
    pub async fn next_frame(&mut self, limit: Duration) -> Result<Option<ServerFrame>> {
        loop {
            let msg = tokio::time::timeout(limit, self.ws.next())
                .await
                .map_err(|_| anyhow!("no frame within {limit:?}"))?;
            match msg {
                Some(Ok(Message::Text(t))) => return Ok(Some(serde_json::from_str(t.as_str())?)),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(None),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Reads frames until one matches, failing after `limit`.
    pub async fn until(
        &mut self,
        limit: Duration,
        want: impl Fn(&ServerFrame) -> bool,
    ) -> Result<ServerFrame> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame(left).await? {
                Some(f) if want(&f) => return Ok(f),
                Some(_) => continue,
                None => bail!("closed before the awaited frame"),
            }
        }
    }

    /// The next frame, or how the socket closed.
    pub async fn next_incoming(&mut self, limit: Duration) -> Result<Incoming> {
        loop {
            let msg = tokio::time::timeout(limit, self.ws.next())
                .await
                .map_err(|_| anyhow!("nothing within {limit:?}"))?;
            return Ok(match msg {
                Some(Ok(Message::Text(t))) => {
                    Incoming::Frame(Box::new(serde_json::from_str(t.as_str())?))
                }
                Some(Ok(Message::Close(Some(f)))) => {
                    Incoming::Closed(Closed::Code(u16::from(f.code)))
                }
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => {
                    Incoming::Closed(Closed::Dropped)
                }
                Some(Ok(_)) => continue,
            });
        }
    }

    /// Reads until the socket closes; returns how.
    pub async fn closed(&mut self, limit: Duration) -> Result<Closed> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| anyhow!("still open after {limit:?}"))?;
            match msg {
                Some(Ok(Message::Close(Some(f)))) => return Ok(Closed::Code(u16::from(f.code))),
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return Ok(Closed::Dropped),
                Some(Ok(_)) => continue,
            }
        }
    }
}

/// Polls `check` until it returns `Some`, failing after `limit` with `what`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The value of one series of a server process's `/metrics` (0 when it has none yet), e.g.
/// `chat_sessions_closed_total{reason="revoked"}`, asked with the cluster's operator token.
pub async fn metric(cluster: &Cluster, http_url: &str, series: &str) -> Result<f64> {
    let body = reqwest::Client::new()
        .get(format!("{http_url}/metrics"))
        .bearer_auth(cluster.operator_token())
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(body
        .lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0))
}

/// Polls a server's `/metrics` until `series` reaches `at_least`.
pub async fn until_metric(
    cluster: &Cluster,
    http_url: &str,
    series: &str,
    at_least: f64,
) -> Result<f64> {
    eventually(&format!("{series} >= {at_least}"), PATIENCE, || async {
        metric(cluster, http_url, series)
            .await
            .ok()
            .filter(|v| *v >= at_least)
    })
    .await
}
