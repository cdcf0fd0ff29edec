//! The bus on Redis pub/sub: a channel per node for routed envelopes and one channel for all
//! of them (fanout), under the cluster's key prefix.
//!
//! Publishing is one `PUBLISH` per target on a multiplexed connection shared by every task of
//! the process (several targets go out as one pipeline, and concurrent publishes share the
//! socket, so the node is not the limit). Receiving uses a connection of its own, in RESP3 so
//! that it can also answer `PING` and carry a name (`CLIENT SETNAME chat-bus:…`, which makes it
//! easy to find in `CLIENT LIST`).
//!
//! Invariants:
//! - The subscription is owned by one task that reconnects with backoff and subscribes again
//!   after **every** reconnect: a connection that comes back without its subscription would
//!   look healthy and deliver nothing. A `PING` every few seconds catches a connection that is
//!   silently gone.
//! - [`Bus::is_up`] is true only while the subscription is in place (for a handle that never
//!   subscribed, such as a controller's: while publishes succeed).
//! - The task stops when the handle's last clone is dropped or the token given to
//!   [`RedisBus::connect`] fires.
//! - Redis pub/sub keeps nothing for a subscriber that is away: envelopes published while the
//!   subscription is down are lost. The node then catches its devices up from the store when
//!   the bus comes back (it watches `is_up`), so nothing acknowledged is lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use protocol::NodeId;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::{AsyncConnectionConfig, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{Bus, BusError, BusResult, Inbox, Targets};
use crate::registry::redis::is_connection_trouble;

/// Envelopes held for the node before the subscriber waits for it to take them.
const INBOX_CAPACITY: usize = 16_384;
/// How often the subscriber checks that its connection still answers.
const PING_EVERY: Duration = Duration::from_secs(3);
/// How long a check or a connection attempt may take.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);
/// Reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long `subscribe` waits for the first subscription before handing the inbox over anyway.
const FIRST_SUBSCRIPTION: Duration = Duration::from_secs(5);

fn map_err(e: redis::RedisError) -> BusError {
    if is_connection_trouble(&e) {
        BusError::Unavailable(format!("redis: {e}"))
    } else {
        BusError::Internal(format!("redis: {e}"))
    }
}

struct Inner {
    /// A RESP3 client for subscriber connections.
    client: redis::Client,
    /// Shared by every publish.
    publisher: ConnectionManager,
    prefix: String,
    /// Whether the last publish went through (what `is_up` says before a subscription).
    publish_ok: AtomicBool,
    /// Set by `subscribe`; from then on `is_up` follows the subscription.
    subscribed: AtomicBool,
    /// Whether the subscription is in place now.
    sub_up: Arc<AtomicBool>,
    /// Subscriber connections made (the first and every reconnect).
    sessions: Arc<AtomicU64>,
    /// Stops the subscriber task; fired when the last handle is dropped.
    cancel: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A process's handle on the Redis bus. Cheap to clone.
#[derive(Clone)]
pub struct RedisBus {
    inner: Arc<Inner>,
}

impl RedisBus {
    /// Connects to Redis at `url`, with channels under `prefix`. Background work stops when
    /// `cancel` fires or the last clone of the handle is dropped.
    pub async fn connect(url: &str, prefix: &str, cancel: CancellationToken) -> BusResult<Self> {
        let unreachable = |e: redis::RedisError| {
            BusError::Unavailable(format!("cannot reach the Redis bus at {url}: {e}"))
        };
        let publisher = crate::registry::redis::connect(url)
            .await
            .map_err(unreachable)?;
        let plain = redis::Client::open(url).map_err(unreachable)?;
        let info = plain.get_connection_info().clone();
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(resp3)).map_err(unreachable)?;
        Ok(RedisBus {
            inner: Arc::new(Inner {
                client,
                publisher,
                prefix: prefix.to_owned(),
                publish_ok: AtomicBool::new(true),
                subscribed: AtomicBool::new(false),
                sub_up: Arc::new(AtomicBool::new(false)),
                sessions: Arc::new(AtomicU64::new(0)),
                cancel: cancel.child_token(),
            }),
        })
    }

    fn node_channel(&self, node: &NodeId) -> String {
        format!("{}bus:n:{node}", self.inner.prefix)
    }

    fn all_channel(&self) -> String {
        format!("{}bus:all", self.inner.prefix)
    }

    /// The name the subscriber connection gives itself (`CLIENT SETNAME`).
    pub fn connection_name(&self, node: &NodeId) -> String {
        let name: String = format!("chat-bus:{}{node}", self.inner.prefix)
            .chars()
            .map(|c| if c.is_ascii_graphic() { c } else { '_' })
            .collect();
        name
    }

    /// Subscriber connections made so far (1 after the first subscription, +1 per reconnect).
    pub fn sessions(&self) -> u64 {
        self.inner.sessions.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl Bus for RedisBus {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn publish(&self, targets: &Targets, _key: &[u8], envelope: Bytes) -> BusResult<()> {
        if matches!(targets, Targets::Nodes(nodes) if nodes.is_empty()) {
            return Ok(());
        }
        let mut c = self.inner.publisher.clone();
        let sent = match targets {
            Targets::All => {
                redis::cmd("PUBLISH")
                    .arg(self.all_channel())
                    .arg(&envelope[..])
                    .exec_async(&mut c)
                    .await
            }
            Targets::Nodes(nodes) if nodes.len() == 1 => {
                redis::cmd("PUBLISH")
                    .arg(self.node_channel(&nodes[0]))
                    .arg(&envelope[..])
                    .exec_async(&mut c)
                    .await
            }
            Targets::Nodes(nodes) => {
                let mut pipe = redis::pipe();
                for n in nodes {
                    pipe.cmd("PUBLISH")
                        .arg(self.node_channel(n))
                        .arg(&envelope[..])
                        .ignore();
                }
                pipe.exec_async(&mut c).await
            }
            Targets::Users(_) => {
                return Err(BusError::Internal(
                    "Redis pub/sub cannot find users' nodes: locate them first".into(),
                ));
            }
        };
        match sent {
            Ok(()) => {
                self.inner.publish_ok.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                let e = map_err(e);
                if matches!(e, BusError::Unavailable(_)) {
                    self.inner.publish_ok.store(false, Ordering::Relaxed);
                }
                Err(e)
            }
        }
    }

    async fn subscribe(&self, node: &NodeId) -> BusResult<Inbox> {
        if self.inner.subscribed.swap(true, Ordering::AcqRel) {
            return Err(BusError::Internal(
                "this bus handle is already subscribed".into(),
            ));
        }
        let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
        let (first_tx, mut first_rx) = watch::channel(false);
        let sub = Subscriber {
            client: self.inner.client.clone(),
            channels: vec![self.node_channel(node), self.all_channel()],
            name: self.connection_name(node),
            inbox: tx,
            up: self.inner.sub_up.clone(),
            sessions: self.inner.sessions.clone(),
            first: first_tx,
            cancel: self.inner.cancel.clone(),
        };
        tokio::spawn(sub.run());
        let first = tokio::time::timeout(FIRST_SUBSCRIPTION, first_rx.wait_for(|up| *up)).await;
        if !matches!(first, Ok(Ok(_))) {
            tracing::warn!(%node, "redis bus not subscribed yet; it keeps trying in the background");
        }
        Ok(rx)
    }

    fn sessions(&self) -> u64 {
        RedisBus::sessions(self)
    }

    fn is_up(&self) -> bool {
        if self.inner.subscribed.load(Ordering::Acquire) {
            self.inner.sub_up.load(Ordering::Acquire)
        } else {
            self.inner.publish_ok.load(Ordering::Relaxed)
        }
    }
}

/// Why a subscriber session ended.
enum Ended {
    /// Stop for good.
    Stop,
    /// The connection or the subscription was lost: connect again.
    Lost(String),
}

/// The task that owns the subscription.
struct Subscriber {
    client: redis::Client,
    channels: Vec<String>,
    name: String,
    inbox: mpsc::Sender<Bytes>,
    up: Arc<AtomicBool>,
    sessions: Arc<AtomicU64>,
    first: watch::Sender<bool>,
    cancel: CancellationToken,
}

impl Subscriber {
    async fn run(self) {
        let mut backoff = BACKOFF_MIN;
        loop {
            match self.session().await {
                Ended::Stop => break,
                Ended::Lost(why) => {
                    let was_up = self.up.swap(false, Ordering::AcqRel);
                    if was_up {
                        // It had been working: the outage just began, retry quickly.
                        backoff = BACKOFF_MIN;
                        tracing::warn!(channel = %self.channels[0], %why, "redis bus subscription lost; reconnecting");
                    } else {
                        tracing::debug!(channel = %self.channels[0], %why, "redis bus still down");
                    }
                }
            }
            let jitter =
                Duration::from_millis(rand::random_range(0..=backoff.as_millis() as u64 / 2));
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                _ = tokio::time::sleep(backoff + jitter) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        self.up.store(false, Ordering::Release);
        tracing::debug!(channel = %self.channels[0], "redis bus subscriber stopped");
    }

    /// One connection: connect, name it, subscribe, then hand messages over until it fails.
    async fn session(&self) -> Ended {
        let (push_tx, mut push_rx) = mpsc::unbounded_channel::<PushInfo>();
        let config = AsyncConnectionConfig::new()
            .set_push_sender(push_tx)
            .set_connection_timeout(Some(ANSWER_WITHIN))
            .set_response_timeout(Some(ANSWER_WITHIN));
        let setup = async {
            let mut con = self
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            redis::cmd("CLIENT")
                .arg("SETNAME")
                .arg(&self.name)
                .exec_async(&mut con)
                .await?;
            con.subscribe(&self.channels).await?;
            Ok::<MultiplexedConnection, redis::RedisError>(con)
        };
        let mut con = tokio::select! {
            _ = self.cancel.cancelled() => return Ended::Stop,
            con = setup => match con {
                Ok(con) => con,
                Err(e) => return Ended::Lost(e.to_string()),
            },
        };
        let n = self.sessions.fetch_add(1, Ordering::Relaxed) + 1;
        self.up.store(true, Ordering::Release);
        self.first.send_replace(true);
        if n > 1 {
            metrics::counter!("chat_bus_reconnects_total", "bus" => "redis").increment(1);
            tracing::info!(channel = %self.channels[0], "redis bus subscribed again");
        } else {
            tracing::info!(channel = %self.channels[0], "redis bus subscribed");
        }
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return Ended::Stop,
                push = push_rx.recv() => {
                    let Some(push) = push else {
                        return Ended::Lost("connection closed".into());
                    };
                    match push.kind {
                        PushKind::Message => {
                            let Some(Value::BulkString(payload)) = push.data.into_iter().nth(1) else {
                                continue;
                            };
                            tokio::select! {
                                _ = self.cancel.cancelled() => return Ended::Stop,
                                sent = self.inbox.send(Bytes::from(payload)) => if sent.is_err() {
                                    // Nobody reads the inbox any more.
                                    return Ended::Stop;
                                },
                            }
                        }
                        PushKind::Disconnection => return Ended::Lost("disconnected".into()),
                        PushKind::Unsubscribe => {
                            return Ended::Lost("the server dropped the subscription".into());
                        }
                        _ => {}
                    }
                }
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(
                        ANSWER_WITHIN,
                        redis::cmd("PING").query_async::<Value>(&mut con),
                    )
                    .await;
                    match pong {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Ended::Lost(format!("ping failed: {e}")),
                        Err(_) => return Ended::Lost("no answer to ping".into()),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::bus::SharedBus;
    use crate::registry::redis::test_support::{REDIS_URL, fresh_prefix, require_redis};

    async fn handles(prefix: &str, n: usize) -> Vec<(NodeId, RedisBus)> {
        require_redis().await;
        let mut out = Vec::new();
        for i in 0..n {
            let id = NodeId::new(format!("n{i}")).unwrap_or_else(|e| panic!("{e}"));
            let bus = RedisBus::connect(REDIS_URL, prefix, CancellationToken::new())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            out.push((id, bus));
        }
        out
    }

    crate::bus_suite!(|n: usize| async move {
        handles(&fresh_prefix("bus"), n)
            .await
            .into_iter()
            .map(|(id, bus)| (id, Arc::new(bus) as SharedBus))
            .collect::<Vec<_>>()
    });

    async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting: {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Kills the subscriber's own connection (found by its name, so no other test is
    /// disturbed): the bus goes down, comes back by itself, subscribes again and delivers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn resubscribes_after_its_connection_is_killed() -> BusResult<()> {
        let prefix = fresh_prefix("bus-kill");
        let nodes = handles(&prefix, 2).await;
        let (id, bus) = &nodes[0];
        let mut inbox = bus.subscribe(id).await?;
        assert!(bus.is_up());
        let admin = redis::Client::open(REDIS_URL).map_err(map_err)?;
        let mut admin = admin
            .get_multiplexed_async_connection()
            .await
            .map_err(map_err)?;
        let name = bus.connection_name(id);
        for round in 1..=2u64 {
            let list: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query_async(&mut admin)
                .await
                .map_err(map_err)?;
            let client_id = list
                .lines()
                .find(|l| l.split(' ').any(|f| f == format!("name={name}")))
                .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
                .unwrap_or_else(|| panic!("no connection named {name} in CLIENT LIST"))
                .to_owned();
            redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(&client_id)
                .exec_async(&mut admin)
                .await
                .map_err(map_err)?;
            wait_until("the bus notices it is down", || !bus.is_up()).await;
            wait_until("the bus comes back", || bus.is_up()).await;
            assert_eq!(bus.sessions(), round + 1);
            let msg = Bytes::from(format!("after-kill-{round}"));
            nodes[1]
                .1
                .publish(&Targets::Nodes(vec![id.clone()]), b"k", msg.clone())
                .await?;
            let got = tokio::time::timeout(Duration::from_secs(5), inbox.recv())
                .await
                .ok()
                .flatten();
            assert_eq!(
                got,
                Some(msg),
                "not subscribed again after reconnect {round}"
            );
        }
        Ok(())
    }

    /// Dropping the handle stops the subscriber: its connection leaves Redis.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_the_handle_stops_the_subscriber() -> BusResult<()> {
        let prefix = fresh_prefix("bus-drop");
        let mut nodes = handles(&prefix, 1).await;
        let (id, bus) = nodes.remove(0);
        let mut inbox = bus.subscribe(&id).await?;
        let name = bus.connection_name(&id);
        drop(bus);
        assert!(
            tokio::time::timeout(Duration::from_secs(5), inbox.recv())
                .await
                .is_ok_and(|m| m.is_none()),
            "the inbox ends when the subscriber stops"
        );
        let admin = redis::Client::open(REDIS_URL).map_err(map_err)?;
        let mut admin = admin
            .get_multiplexed_async_connection()
            .await
            .map_err(map_err)?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let list: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query_async(&mut admin)
                .await
                .map_err(map_err)?;
            if !list.contains(&format!("name={name} ")) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "subscriber connection still open"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}
