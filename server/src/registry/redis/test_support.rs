//! What the tests of the Redis backends share: the server they need, a fresh prefix each, and
//! removal of what they wrote.

/// The Redis the tests use.
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
/// How to start it.
pub const START_REDIS: &str =
    r#"redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no"#;

/// Fails the test, naming the service and how to start it, if Redis does not answer.
pub async fn require_redis() {
    let reachable = async {
        let client = redis::Client::open(REDIS_URL)?;
        let mut c = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut c).await
    };
    match tokio::time::timeout(std::time::Duration::from_secs(3), reachable).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!(
            "Redis is not reachable at {REDIS_URL} ({e}); these tests need it. Start it with: {START_REDIS}"
        ),
        Err(_) => panic!(
            "Redis at {REDIS_URL} did not answer within 3 s; these tests need it. Start it with: {START_REDIS}"
        ),
    }
}

/// A prefix no other test uses.
pub fn fresh_prefix(what: &str) -> String {
    format!("test:{what}:{}:", uuid::Uuid::new_v4().simple())
}

/// Deletes every key under a prefix when dropped (with its own blocking connection, so it
/// works from any context, even after the test's runtime is gone).
pub struct DeleteOnDrop(pub String);

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        let prefix = self.0.clone();
        // A thread of its own: blocking I/O must not run on a runtime worker.
        let done = std::thread::spawn(move || -> redis::RedisResult<()> {
            let client = redis::Client::open(REDIS_URL)?;
            let mut c = client.get_connection_with_timeout(std::time::Duration::from_secs(2))?;
            let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query(&mut c)?;
            if !keys.is_empty() {
                redis::cmd("DEL").arg(keys).exec(&mut c)?;
            }
            Ok(())
        })
        .join();
        if !matches!(done, Ok(Ok(()))) {
            eprintln!("could not delete the test keys under {}", self.0);
        }
    }
}
