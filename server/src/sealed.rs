//! What nodes leave on the bus and in the registry, authenticated with the node-admission key,
//! one layer above every backend: whoever can write to Redis, RabbitMQ, ZooKeeper or Kafka
//! but does not hold the key can neither inject an envelope (a forged sender, a forged
//! revocation) nor point clients at a node entry of their own (whose `ws_url` would collect
//! their tokens).
//!
//! [`SealedBus`] wraps any [`Bus`]: it seals each envelope it publishes
//! ([`protocol::bus::Sealed`]) and drops, counts (`chat_bus_envelopes_refused_total`) and
//! logs whatever it receives that does not check. [`SealedRegistry`] wraps any [`Registry`]:
//! a node registers its URLs with a MAC over its id and each URL, carried in the URL's
//! fragment (`#chat-mac=KID.HEX`, which no client sends anywhere), and the answers that name
//! node URLs (`assign`, `nodes`) check it, strip it, and skip a node whose entry does not
//! check (`chat_registry_entries_refused_total`).
//!
//! Not covered: the counts, leases and user locations in the registry (a writer there can
//! misroute or unbalance, not impersonate or collect tokens), and replays of a genuine
//! envelope (receivers drop repeats by `seq`; a replayed revocation only closes a session the
//! device reopens at once).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use protocol::bus::{SEAL_DOMAIN, Sealed};
use protocol::http::{AssignResponse, NodeState, NodeStatus};
use protocol::{Millis, NodeId, UserId};
use tokio::sync::mpsc;

use crate::auth::KeyRing;
use crate::auth::keys::{hex, unhex};
use crate::bus::{Bus, BusResult, Inbox, SharedBus, Targets};
use crate::registry::{DeadNode, Lease, Load, NodeInfo, Registry, RegistryResult, SharedRegistry};

/// Envelopes a sealed inbox holds between the backend's inbox and the node.
const INBOX: usize = 16_384;

/// How many times `assign` asks again after an answer whose entry does not check.
const ASSIGN_RETRIES: usize = 8;

/// Logs a refusal at most once a second per kind: an attacker's flood must not flood the log.
fn warn_now(last: &AtomicI64) -> bool {
    let now = crate::ids::now_ms();
    let prev = last.load(Ordering::Relaxed);
    now - prev >= 1000
        && last
            .compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

/// Seals an encoded envelope with the ring's current key.
pub fn seal(keys: &KeyRing, envelope: &[u8]) -> Bytes {
    let key = keys.current();
    Sealed::encode(key.id(), &key.mac(&[SEAL_DOMAIN, envelope]), envelope)
}

/// The envelope inside `bytes` if its seal checks under a key of the ring.
pub fn open(keys: &KeyRing, bytes: Bytes) -> Option<Bytes> {
    let sealed = Sealed::decode(bytes).ok()?;
    keys.verify(
        &sealed.key_id,
        &[SEAL_DOMAIN, &sealed.envelope],
        &sealed.mac,
    )
    .then_some(sealed.envelope)
}

/// A bus whose envelopes are sealed on the way out and checked on the way in.
pub struct SealedBus {
    inner: SharedBus,
    keys: KeyRing,
}

impl SealedBus {
    /// Wraps `inner`.
    pub fn wrap(inner: SharedBus, keys: KeyRing) -> SharedBus {
        Arc::new(SealedBus { inner, keys })
    }
}

#[async_trait]
impl Bus for SealedBus {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn publish(&self, targets: &Targets, key: &[u8], envelope: Bytes) -> BusResult<()> {
        self.inner
            .publish(targets, key, seal(&self.keys, &envelope))
            .await
    }

    async fn subscribe(&self, node: &NodeId) -> BusResult<Inbox> {
        let mut raw = self.inner.subscribe(node).await?;
        let (tx, rx) = mpsc::channel(INBOX);
        let keys = self.keys.clone();
        let node = node.clone();
        // Ends when the backend's inbox ends (the bus was dropped) or the node drops its end.
        tokio::spawn(async move {
            let last_warn = AtomicI64::new(0);
            while let Some(bytes) = raw.recv().await {
                match open(&keys, bytes) {
                    Some(envelope) => {
                        if tx.send(envelope).await.is_err() {
                            break;
                        }
                    }
                    None => {
                        metrics::counter!("chat_bus_envelopes_refused_total").increment(1);
                        if warn_now(&last_warn) {
                            tracing::warn!(%node, "bus envelope without a valid seal refused");
                        }
                    }
                }
            }
        });
        Ok(rx)
    }

    fn is_up(&self) -> bool {
        self.inner.is_up()
    }

    fn sessions(&self) -> u64 {
        self.inner.sessions()
    }

    fn resolves_users(&self) -> bool {
        self.inner.resolves_users()
    }
}

const URL_DOMAIN: &[u8] = b"chat node url v1\0";
const URL_MARK: &str = "#chat-mac=";

fn url_mac_parts<'a>(node: &'a NodeId, which: &'a str, url: &'a str) -> [&'a [u8]; 6] {
    [
        URL_DOMAIN,
        node.as_str().as_bytes(),
        b"\0",
        which.as_bytes(),
        b"\0",
        url.as_bytes(),
    ]
}

/// `url` with a MAC over the node, which URL it is (`ws`, `http`) and the URL.
pub fn seal_url(keys: &KeyRing, node: &NodeId, which: &str, url: &str) -> String {
    let key = keys.current();
    let mac = key.mac(&url_mac_parts(node, which, url));
    format!("{url}{URL_MARK}{}.{}", key.id(), hex(&mac))
}

/// The URL without its MAC, if the MAC checks.
pub fn open_url(keys: &KeyRing, node: &NodeId, which: &str, sealed: &str) -> Option<String> {
    let (url, mark) = sealed.rsplit_once(URL_MARK)?;
    let (id, mac) = mark.split_once('.')?;
    let tag = unhex(mac)?;
    keys.verify(id, &url_mac_parts(node, which, url), &tag)
        .then(|| url.to_owned())
}

/// A registry whose node entries carry MACs that its answers check.
pub struct SealedRegistry {
    inner: SharedRegistry,
    keys: KeyRing,
    last_warn: AtomicI64,
}

impl SealedRegistry {
    /// Wraps `inner`.
    pub fn wrap(inner: SharedRegistry, keys: KeyRing) -> SharedRegistry {
        Arc::new(SealedRegistry {
            inner,
            keys,
            last_warn: AtomicI64::new(0),
        })
    }

    fn refused(&self, node: &NodeId) {
        metrics::counter!("chat_registry_entries_refused_total").increment(1);
        if warn_now(&self.last_warn) {
            tracing::warn!(%node, "registry entry without a valid MAC skipped");
        }
    }
}

#[async_trait]
impl Registry for SealedRegistry {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn register(&self, node: &NodeInfo) -> RegistryResult<Lease> {
        let sealed = NodeInfo {
            id: node.id.clone(),
            ws_url: seal_url(&self.keys, &node.id, "ws", &node.ws_url),
            http_url: seal_url(&self.keys, &node.id, "http", &node.http_url),
            started_at: node.started_at,
        };
        self.inner.register(&sealed).await
    }

    async fn heartbeat(&self, node: &NodeId, load: Load) -> RegistryResult<()> {
        self.inner.heartbeat(node, load).await
    }

    async fn set_state(&self, node: &NodeId, state: NodeState) -> RegistryResult<()> {
        self.inner.set_state(node, state).await
    }

    async fn deregister(&self, node: &NodeId) -> RegistryResult<Vec<UserId>> {
        self.inner.deregister(node).await
    }

    async fn attach(
        &self,
        node: &NodeId,
        user: UserId,
        reservation: Option<&str>,
    ) -> RegistryResult<bool> {
        self.inner.attach(node, user, reservation).await
    }

    async fn detach(&self, node: &NodeId, user: UserId) -> RegistryResult<bool> {
        self.inner.detach(node, user).await
    }

    async fn locate(&self, users: &[UserId]) -> RegistryResult<Vec<Vec<NodeId>>> {
        self.inner.locate(users).await
    }

    async fn online(&self, users: &[UserId]) -> RegistryResult<Vec<UserId>> {
        self.inner.online(users).await
    }

    async fn assign(&self, exclude: &[NodeId]) -> RegistryResult<Option<AssignResponse>> {
        let mut exclude = exclude.to_vec();
        for _ in 0..ASSIGN_RETRIES {
            let Some(mut answer) = self.inner.assign(&exclude).await? else {
                return Ok(None);
            };
            match open_url(&self.keys, &answer.node, "ws", &answer.ws_url) {
                Some(url) => {
                    answer.ws_url = url;
                    return Ok(Some(answer));
                }
                // Its slot lapses by itself; ask for another node.
                None => {
                    self.refused(&answer.node);
                    exclude.push(answer.node);
                }
            }
        }
        Ok(None)
    }

    async fn nodes(&self) -> RegistryResult<Vec<NodeStatus>> {
        let mut out = Vec::new();
        for mut n in self.inner.nodes().await? {
            match (
                open_url(&self.keys, &n.id, "ws", &n.ws_url),
                open_url(&self.keys, &n.id, "http", &n.http_url),
            ) {
                (Some(ws), Some(http)) => {
                    n.ws_url = ws;
                    n.http_url = http;
                    out.push(n);
                }
                _ => self.refused(&n.id),
            }
        }
        Ok(out)
    }

    async fn reap(&self, now: Millis) -> RegistryResult<Vec<DeadNode>> {
        self.inner.reap(now).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::memory::MemoryRegistry;

    fn keys(master: &str) -> KeyRing {
        KeyRing::derive(master.as_bytes(), "node admission")
    }

    #[test]
    fn seals_check_under_the_ring_and_nothing_else() {
        let k = keys("a");
        let env = Bytes::from_static(b"\xCB\x01\0\0\0\x02{}");
        let sealed = seal(&k, &env);
        assert_eq!(open(&k, sealed.clone()), Some(env.clone()));
        assert_eq!(open(&keys("b"), sealed.clone()), None);
        assert_eq!(open(&k, env), None, "a plain envelope");
        let mut forged = sealed.to_vec();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert_eq!(open(&k, Bytes::from(forged)), None, "a changed envelope");

        let n = NodeId::new("n1").expect("id");
        let url = seal_url(&k, &n, "ws", "ws://127.0.0.1:9/ws");
        assert_eq!(
            open_url(&k, &n, "ws", &url).as_deref(),
            Some("ws://127.0.0.1:9/ws")
        );
        assert_eq!(open_url(&k, &n, "http", &url), None, "another field");
        let other = NodeId::new("n2").expect("id");
        assert_eq!(open_url(&k, &other, "ws", &url), None, "another node");
        let moved = url.replace("127.0.0.1:9", "evil.example:9");
        assert_eq!(open_url(&k, &n, "ws", &moved), None, "another address");
        assert_eq!(open_url(&k, &n, "ws", "ws://127.0.0.1:9/ws"), None);
    }

    #[tokio::test]
    async fn answers_skip_entries_registered_without_the_key() -> RegistryResult<()> {
        let memory: SharedRegistry = Arc::new(MemoryRegistry::new(60_000));
        let honest = SealedRegistry::wrap(memory.clone(), keys("a"));
        let info = |id: &str| NodeInfo {
            id: NodeId::new(id).expect("id"),
            ws_url: format!("ws://{id}/ws"),
            http_url: format!("http://{id}"),
            started_at: 0,
        };
        honest.register(&info("good")).await?;
        // Straight into the backend, as a writer without the key would.
        memory.register(&info("evil")).await?;
        SealedRegistry::wrap(memory.clone(), keys("b"))
            .register(&info("other-key"))
            .await?;
        let nodes = honest.nodes().await?;
        let urls: Vec<_> = nodes.iter().map(|n| n.ws_url.as_str()).collect();
        assert_eq!(urls, ["ws://good/ws"]);
        for _ in 0..4 {
            let a = honest.assign(&[]).await?.expect("an answer");
            assert_eq!(a.ws_url, "ws://good/ws");
        }
        Ok(())
    }
}
