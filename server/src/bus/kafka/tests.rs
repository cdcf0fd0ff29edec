//! The Kafka bus against the real broker (on 127.0.0.1:9092, `scripts/kafka.sh start`): the bus
//! suite, where a node starts reading, and what a cut connection does.

use std::process::Command;
use std::sync::Arc;

use super::*;
use crate::bus::SharedBus;

/// The broker the tests use.
pub const KAFKA: &str = "127.0.0.1:9092";

/// Fails the test, naming the broker and how to start it, if it does not answer.
async fn require_kafka() {
    let reachable = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect(KAFKA),
    )
    .await;
    if !matches!(reachable, Ok(Ok(_))) {
        panic!(
            "no Kafka broker answers on {KAFKA}; these tests need one. Start it with: scripts/kafka.sh start"
        );
    }
}

/// A prefix no other test uses.
fn fresh_prefix(what: &str) -> String {
    format!(
        "test.{what}.{}.",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A bus handle that deletes its test topics when the last clone goes.
#[derive(Clone)]
struct TestBus {
    bus: KafkaBus,
    _cleanup: Arc<DeleteTopics>,
}

/// Deletes the topics of a prefix (the fanout topic and the nodes') when dropped.
struct DeleteTopics {
    bus: KafkaBus,
    topics: Vec<String>,
}

impl Drop for DeleteTopics {
    fn drop(&mut self) {
        let bus = self.bus.clone();
        let topics = std::mem::take(&mut self.topics);
        // A thread of its own: this may run inside the test's runtime or after it.
        let _ = std::thread::spawn(move || {
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            futures::executor::block_on(bus.delete_topics(&names))
        })
        .join();
    }
}

#[async_trait]
impl Bus for TestBus {
    fn kind(&self) -> &'static str {
        self.bus.kind()
    }
    async fn publish(&self, targets: &Targets, key: &[u8], envelope: Bytes) -> BusResult<()> {
        self.bus.publish(targets, key, envelope).await
    }
    async fn subscribe(&self, node: &NodeId) -> BusResult<Inbox> {
        self.bus.subscribe(node).await
    }
    fn is_up(&self) -> bool {
        self.bus.is_up()
    }
    fn sessions(&self) -> u64 {
        self.bus.sessions()
    }
}

async fn handles(prefix: &str, n: usize) -> Vec<(NodeId, KafkaBus)> {
    require_kafka().await;
    let mut out = Vec::new();
    for i in 0..n {
        let id = NodeId::new(format!("n{i}")).unwrap_or_else(|e| panic!("{e}"));
        let mut config = KafkaConfig::new(KAFKA, prefix);
        config.label = Some(id.to_string());
        let bus = KafkaBus::connect(config, CancellationToken::new())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        out.push((id, bus));
    }
    out
}

fn with_cleanup(nodes: Vec<(NodeId, KafkaBus)>) -> Vec<(NodeId, SharedBus)> {
    let Some((_, first)) = nodes.first() else {
        return Vec::new();
    };
    let mut topics = vec![first.all_topic().to_owned()];
    topics.extend(nodes.iter().map(|(id, b)| b.node_topic(id)));
    let cleanup = Arc::new(DeleteTopics {
        bus: first.clone(),
        topics,
    });
    nodes
        .into_iter()
        .map(|(id, bus)| {
            let b: SharedBus = Arc::new(TestBus {
                bus,
                _cleanup: cleanup.clone(),
            });
            (id, b)
        })
        .collect()
}

crate::bus_suite!(|n: usize| async move { with_cleanup(handles(&fresh_prefix("bus"), n).await) });

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn recv(inbox: &mut Inbox) -> Option<Bytes> {
    tokio::time::timeout(Duration::from_secs(10), inbox.recv())
        .await
        .ok()
        .flatten()
}

/// The URL forms the server takes.
#[test]
fn urls_are_read() -> BusResult<()> {
    let c = KafkaConfig::from_url("kafka://127.0.0.1:9092", "chat.")?;
    assert_eq!((c.brokers.as_str(), c.partitions), ("127.0.0.1:9092", 3));
    let c = KafkaConfig::from_url("kafka://a:1,b:2/?partitions=8", "x.")?;
    assert_eq!(
        (c.brokers.as_str(), c.partitions, c.prefix.as_str()),
        ("a:1,b:2", 8, "x.")
    );
    for bad in [
        "kafka://",
        "kafka://h:1?partitions=0",
        "kafka://h:1?acks=0",
        "redis://h:1",
        "kafka://u@h:1",
    ] {
        assert!(KafkaConfig::from_url(bad, "x.").is_err(), "{bad} accepted");
    }
    Ok(())
}

/// A node reads from where its topics end when it subscribes: what was published to it before
/// is not delivered (the store has it), what is published after is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_starts_reading_at_the_end() -> BusResult<()> {
    let nodes = with_cleanup(handles(&fresh_prefix("bus-end"), 2).await);
    let (id, bus) = &nodes[0];
    let to = Targets::Nodes(vec![id.clone()]);
    nodes[1]
        .1
        .publish(&to, b"k", Bytes::from_static(b"before"))
        .await?;
    nodes[1]
        .1
        .publish(&Targets::All, b"k", Bytes::from_static(b"before-all"))
        .await?;
    let mut inbox = bus.subscribe(id).await?;
    assert!(bus.sessions() >= 1, "subscribing counts a session");
    nodes[1]
        .1
        .publish(&to, b"k", Bytes::from_static(b"after"))
        .await?;
    assert_eq!(recv(&mut inbox).await.as_deref(), Some(&b"after"[..]));
    Ok(())
}

/// Each node reads in a consumer group of its own, and gets every partition of its topics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_node_has_a_group_of_its_own() -> BusResult<()> {
    let raw = handles(&fresh_prefix("bus-groups"), 2).await;
    let groups: Vec<String> = raw.iter().map(|(id, b)| b.group_id(id)).collect();
    assert_ne!(groups[0], groups[1]);
    let nodes = with_cleanup(raw);
    let mut inboxes = Vec::new();
    for (id, bus) in &nodes {
        inboxes.push(bus.subscribe(id).await?);
    }
    // Keys spread over every partition of the fanout topic; both nodes get all of them.
    let n = 30u32;
    for i in 0..n {
        let key = format!("k{i}");
        nodes[0]
            .1
            .publish(&Targets::All, key.as_bytes(), Bytes::from(format!("{i}")))
            .await?;
    }
    for inbox in inboxes.iter_mut() {
        for _ in 0..n {
            assert!(recv(inbox).await.is_some(), "a node got only a share");
        }
    }
    Ok(())
}

/// Kills every TCP connection this process has to the broker (as a network fault would),
/// with `ss -K`; the test process is this node alone.
fn cut_own_connections() {
    let pid = std::process::id();
    let port = KAFKA.rsplit(':').next().unwrap_or("9092");
    let script = format!(
        "ports=$(ss -Htnp state established \"dport = :{port}\" | grep -F 'pid={pid},' \
         | awk '{{print $3}}' | sed 's/.*://'); [ -n \"$ports\" ] || exit 1; \
         for p in $ports; do ss -K -tn \"sport = :$p and dport = :{port}\" >/dev/null; done"
    );
    let status = Command::new("sh").args(["-c", &script]).status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "could not cut connections with ss -K"
    );
}

/// A cut connection: the consumer notices, is placed at the end again once the broker
/// answers (a new session, so the node resyncs from the store), and delivers what comes after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_after_its_connections_are_cut() -> BusResult<()> {
    let nodes = with_cleanup(handles(&fresh_prefix("bus-cut"), 2).await);
    let (id, bus) = &nodes[0];
    let mut inbox = bus.subscribe(id).await?;
    assert!(bus.is_up());
    let to = Targets::Nodes(vec![id.clone()]);
    for round in 1..=2u64 {
        let before = bus.sessions();
        cut_own_connections();
        wait_until("a new session after the cut", || bus.sessions() > before).await;
        wait_until("the bus comes back", || bus.is_up()).await;
        let msg = Bytes::from(format!("after-cut-{round}"));
        let mut got = None;
        // Publishes from this process were cut too: the caller retries, as a node does.
        for _ in 0..20 {
            match nodes[1].1.publish(&to, b"k", msg.clone()).await {
                Ok(()) => {
                    got = recv(&mut inbox).await;
                    break;
                }
                Err(BusError::Unavailable(_)) => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(e) => return Err(e),
            }
        }
        assert_eq!(got, Some(msg), "nothing delivered after cut {round}");
    }
    Ok(())
}

/// Dropping the handle stops its thread: the consumer leaves its group and the inbox ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_handle_ends_the_inbox() -> BusResult<()> {
    let mut raw = handles(&fresh_prefix("bus-drop"), 2).await;
    let (id, bus) = raw.remove(0);
    let (_, keeper) = raw.remove(0);
    let _cleanup = DeleteTopics {
        topics: vec![bus.all_topic().to_owned(), bus.node_topic(&id)],
        bus: keeper,
    };
    let mut inbox = bus.subscribe(&id).await?;
    drop(bus);
    assert!(
        tokio::time::timeout(Duration::from_secs(15), inbox.recv())
            .await
            .is_ok_and(|m| m.is_none()),
        "the inbox ends when the owner thread stops"
    );
    Ok(())
}
