//! The RabbitMQ bus against the real broker: the bus suite, and what a broker does to a
//! connection (closing it, redelivering).

use std::sync::Arc;

use super::test_support::{AMQP_URL, DeleteOnDrop, fresh_prefix, require_rabbitmq};
use super::*;
use crate::bus::SharedBus;

/// A bus handle that deletes its test topology when the last clone goes.
#[derive(Clone)]
struct TestBus {
    bus: AmqpBus,
    _cleanup: Arc<DeleteOnDrop>,
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
}

async fn handles(prefix: &str, n: usize) -> Vec<(NodeId, AmqpBus)> {
    require_rabbitmq().await;
    let mut out = Vec::new();
    for i in 0..n {
        let id = NodeId::new(format!("n{i}")).unwrap_or_else(|e| panic!("{e}"));
        let bus = AmqpBus::connect(AmqpConfig::new(AMQP_URL, prefix), CancellationToken::new())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        out.push((id, bus));
    }
    out
}

fn cleanup(prefix: &str, n: usize) -> Arc<DeleteOnDrop> {
    Arc::new(DeleteOnDrop {
        prefix: prefix.to_owned(),
        nodes: (0..n).map(|i| format!("n{i}")).collect(),
    })
}

crate::bus_suite!(|n: usize| async move {
    let prefix = fresh_prefix("bus");
    let guard = cleanup(&prefix, n);
    handles(&prefix, n)
        .await
        .into_iter()
        .map(|(id, bus)| {
            let bus = TestBus {
                bus,
                _cleanup: guard.clone(),
            };
            (id, Arc::new(bus) as SharedBus)
        })
        .collect::<Vec<_>>()
});

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Closes one connection by its client-provided name, through `rabbitmqctl` (so no other
/// test's connection is touched).
async fn close_connection(name: &str) {
    let listed = tokio::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "pid",
            "client_properties",
            "-q",
            "--no-table-headers",
        ])
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run rabbitmqctl: {e}"));
    let text = String::from_utf8_lossy(&listed.stdout);
    // One line per connection: the pid (`<rabbit@host.1.2.3>`), a tab, its properties.
    let pid = text
        .lines()
        .find(|l| l.contains(&format!("\"{name}\"")))
        .and_then(|l| l.split('\t').next())
        .unwrap_or_else(|| panic!("no connection named {name}: {text}"))
        .to_owned();
    let closed = tokio::process::Command::new("rabbitmqctl")
        .args([
            "close_connection",
            &pid,
            "test closes this connection",
            "-q",
        ])
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run rabbitmqctl: {e}"));
    assert!(
        closed.status.success(),
        "close_connection failed: {closed:?}"
    );
}

#[test]
fn passwords_stay_out_of_logs() {
    assert_eq!(
        redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
        "amqp://guest:***@127.0.0.1:5672/%2f"
    );
    assert_eq!(redact("amqp://127.0.0.1:5672"), "amqp://127.0.0.1:5672");
}

/// The broker closes the node's connection: the bus goes down, reconnects by itself,
/// consumes its queue again, and gets what was published to it meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_and_finds_its_queue_after_the_connection_is_closed() -> BusResult<()> {
    let prefix = fresh_prefix("bus-close");
    let _cleanup = cleanup(&prefix, 2);
    let nodes = handles(&prefix, 2).await;
    let (id, bus) = &nodes[0];
    let mut inbox = bus.subscribe(id).await?;
    assert!(bus.is_up());
    let to = Targets::Nodes(vec![id.clone()]);
    nodes[1]
        .1
        .publish(&to, b"k", Bytes::from_static(b"before"))
        .await?;
    let got = tokio::time::timeout(Duration::from_secs(5), inbox.recv()).await;
    assert_eq!(got.ok().flatten().as_deref(), Some(&b"before"[..]));

    close_connection(bus.connection_name()).await;
    wait_until("the bus notices it is down", || !bus.is_up()).await;
    // Published while the node is away: it waits in the node's queue.
    nodes[1]
        .1
        .publish(&to, b"k", Bytes::from_static(b"while-away"))
        .await?;
    wait_until("the bus comes back", || bus.is_up()).await;
    assert_eq!(bus.sessions(), 2);
    let got = tokio::time::timeout(Duration::from_secs(5), inbox.recv()).await;
    assert_eq!(got.ok().flatten().as_deref(), Some(&b"while-away"[..]));
    nodes[1]
        .1
        .publish(&to, b"k", Bytes::from_static(b"after"))
        .await?;
    let got = tokio::time::timeout(Duration::from_secs(5), inbox.recv()).await;
    assert_eq!(got.ok().flatten().as_deref(), Some(&b"after"[..]));
    Ok(())
}

/// More envelopes than the prefetch window pass through, with batched acks: none stays
/// unacknowledged, so the queue ends empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_acks_drain_the_queue() -> BusResult<()> {
    let prefix = fresh_prefix("bus-ack");
    let _cleanup = cleanup(&prefix, 2);
    let nodes = handles(&prefix, 2).await;
    let (id, bus) = &nodes[0];
    let mut inbox = bus.subscribe(id).await?;
    let to = Targets::Nodes(vec![id.clone()]);
    let n = 3_000u32;
    let publisher = nodes[1].1.clone();
    let to2 = to.clone();
    let sender = tokio::spawn(async move {
        let sends = (0..n).map(|i| {
            let publisher = publisher.clone();
            let to = to2.clone();
            async move {
                publisher
                    .publish(&to, b"k", Bytes::from(i.to_be_bytes().to_vec()))
                    .await
            }
        });
        futures::future::try_join_all(sends).await
    });
    for _ in 0..n {
        let got = tokio::time::timeout(Duration::from_secs(10), inbox.recv()).await;
        assert!(got.ok().flatten().is_some(), "an envelope was lost");
    }
    sender
        .await
        .map_err(|e| BusError::Internal(e.to_string()))??;
    // The last partial batch is acknowledged after a short delay.
    let queue = bus.queue_name(id);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = tokio::process::Command::new("rabbitmqctl")
            .args([
                "list_queues",
                "name",
                "messages_unacknowledged",
                "-q",
                "--no-table-headers",
            ])
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run rabbitmqctl: {e}"));
        let text = String::from_utf8_lossy(&out.stdout);
        let unacked = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{queue}\t")))
            .map(|n| n.trim().to_owned());
        if unacked.as_deref() == Some("0") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still unacknowledged: {unacked:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
