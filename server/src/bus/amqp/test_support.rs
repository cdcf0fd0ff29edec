//! What the tests of the RabbitMQ bus share: the broker they need, fresh names, and removal
//! of what they declared.

use lapin::{Connection, ConnectionProperties};

use super::*;

/// The RabbitMQ the tests use.
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// How to start it.
pub const START_RABBITMQ: &str = "RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 ERL_EPMD_ADDRESS=127.0.0.1 rabbitmq-server -detached && rabbitmqctl await_startup";

/// Fails the test, naming the service and how to start it, if RabbitMQ does not answer.
pub async fn require_rabbitmq() {
    let reachable = tokio::time::timeout(
        Duration::from_secs(5),
        Connection::connect(AMQP_URL, ConnectionProperties::default()),
    )
    .await;
    match reachable {
        Ok(Ok(conn)) => {
            let _ = conn.close(200, "ok".into()).await;
        }
        Ok(Err(e)) => panic!(
            "RabbitMQ is not reachable at {AMQP_URL} ({e}); these tests need it. Start it with: {START_RABBITMQ}"
        ),
        Err(_) => panic!(
            "RabbitMQ at {AMQP_URL} did not answer within 5 s; these tests need it. Start it with: {START_RABBITMQ}"
        ),
    }
}

/// A prefix no other test uses.
pub fn fresh_prefix(what: &str) -> String {
    format!(
        "test.{what}.{}.",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Deletes the exchanges and queues of a prefix when dropped.
pub struct DeleteOnDrop {
    /// The prefix.
    pub prefix: String,
    /// The node ids whose queues to delete.
    pub nodes: Vec<String>,
}

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        let prefix = self.prefix.clone();
        let nodes = self.nodes.clone();
        // A runtime of its own: this may run after the test's runtime is gone.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async move {
                let conn = Connection::connect(AMQP_URL, ConnectionProperties::default())
                    .await
                    .map_err(|e| e.to_string())?;
                let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
                for n in &nodes {
                    ch.queue_delete(format!("{prefix}node.{n}").into(), Default::default())
                        .await
                        .map_err(|e| e.to_string())?;
                }
                for x in ["direct", "fanout"] {
                    ch.exchange_delete(format!("{prefix}{x}").into(), Default::default())
                        .await
                        .map_err(|e| e.to_string())?;
                }
                let _ = conn.close(200, "ok".into()).await;
                Ok::<(), String>(())
            })
        })
        .join();
        if !matches!(done, Ok(Ok(()))) {
            eprintln!(
                "could not delete the test topology under {}: {done:?}",
                self.prefix
            );
        }
    }
}
