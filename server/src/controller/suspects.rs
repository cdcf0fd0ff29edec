//! Nodes that clients report lost. A client that loses its node names it in the `exclude` of
//! its next `/v1/assign`; the controller then knocks on that node's HTTP port, and a node
//! whose port refuses the connection (its process is gone) is left out of every answer until
//! its lease runs out and the reaper removes it for good (with the recovery that goes with
//! that). Without this, a shared registry (Redis) keeps offering a crashed node to everyone
//! else for up to a lease, and each of them loses a connection attempt on it.
//!
//! A node that accepts the connection is not dead (a frozen one does: its kernel still
//! accepts; its lease gives it away), and one that does not answer within [`PROBE_TIMEOUT`]
//! is not judged. Each node is probed at most once per [`PROBE_EVERY`], whoever names it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use protocol::NodeId;
use protocol::http::NodeStatus;
use tokio::net::TcpStream;

/// How long a probe may take before the node is given the benefit of the doubt.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// A node is probed at most this often.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone, Copy)]
enum Verdict {
    /// Probed at this time and found listening (or not answering).
    Alive(Instant),
    /// Found dead; left out of answers until then (the end of its lease at the latest).
    Dead(Instant),
}

/// The controller's verdicts on the nodes clients reported.
pub struct Suspects {
    lease: Duration,
    verdicts: Mutex<HashMap<NodeId, Verdict>>,
}

impl Suspects {
    /// Verdicts that last at most `lease` (after which the registry has reaped a dead node).
    pub fn new(lease: Duration) -> Self {
        Suspects {
            lease,
            verdicts: Mutex::new(HashMap::new()),
        }
    }

    /// The nodes found dead and still within their lease.
    pub fn dead(&self, now: Instant) -> Vec<NodeId> {
        let mut verdicts = self.verdicts.lock();
        verdicts.retain(|_, v| match v {
            Verdict::Dead(until) => *until > now,
            Verdict::Alive(at) => now.duration_since(*at) < PROBE_EVERY,
        });
        verdicts
            .iter()
            .filter(|(_, v)| matches!(v, Verdict::Dead(_)))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Which of `reported` are due for a probe (not judged within [`PROBE_EVERY`]); marks
    /// them as being judged so that concurrent callers do not probe them again.
    pub fn due(&self, reported: &[NodeId], now: Instant) -> Vec<NodeId> {
        let mut verdicts = self.verdicts.lock();
        let mut due = Vec::new();
        // A handful per call: a client names the few nodes it lost, nothing more.
        for node in reported.iter().take(4) {
            let judged = match verdicts.get(node) {
                Some(Verdict::Dead(until)) => *until > now,
                Some(Verdict::Alive(at)) => now.duration_since(*at) < PROBE_EVERY,
                None => false,
            };
            if !judged {
                verdicts.insert(node.clone(), Verdict::Alive(now));
                due.push(node.clone());
            }
        }
        due
    }

    /// Probes the nodes `due` (from [`Suspects::due`]) at their addresses in `listed` (the
    /// registry's nodes), and records the dead.
    pub async fn probe(&self, due: Vec<NodeId>, listed: &[NodeStatus]) {
        let probes = due.into_iter().filter_map(|id| {
            let node = listed.iter().find(|n| n.id == id)?;
            let addr = host_port(&node.http_url)?;
            Some(async move { (id, refused(&addr).await) })
        });
        for (id, gone) in futures::future::join_all(probes).await {
            if gone {
                tracing::warn!(node = %id, "a client lost this node and its port refuses connections: not offered any more");
                metrics::counter!("chat_nodes_found_dead_total").increment(1);
                self.verdicts
                    .lock()
                    .insert(id, Verdict::Dead(Instant::now() + self.lease));
            }
        }
    }
}

/// `host:port` of an `http://host:port…` URL.
fn host_port(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let authority = rest.split('/').next()?;
    authority.contains(':').then(|| authority.to_owned())
}

/// Whether a connection to `addr` is refused outright (nothing listens there).
async fn refused(addr: &str) -> bool {
    match tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(id: &str, http_url: &str) -> Result<NodeStatus, Box<dyn std::error::Error>> {
        Ok(NodeStatus {
            id: NodeId::new(id)?,
            ws_url: String::new(),
            http_url: http_url.to_owned(),
            connections: 0,
            reserved: 0,
            started_at: 0,
            last_heartbeat: 0,
            state: protocol::http::NodeState::Live,
        })
    }

    #[test]
    fn urls_give_their_address() {
        assert_eq!(
            host_port("http://127.0.0.1:4000").as_deref(),
            Some("127.0.0.1:4000")
        );
        assert_eq!(
            host_port("https://[::1]:443/x").as_deref(),
            Some("[::1]:443")
        );
        assert_eq!(host_port("ws://h:1"), None);
    }

    #[tokio::test]
    async fn a_closed_port_is_dead_and_a_listening_one_is_not()
    -> Result<(), Box<dyn std::error::Error>> {
        let open = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let closed_addr = closed.local_addr()?;
        drop(closed);
        let listed = vec![
            status("up", &format!("http://{}", open.local_addr()?))?,
            status("down", &format!("http://{closed_addr}"))?,
        ];
        let s = Suspects::new(Duration::from_secs(5));
        let reported = [
            NodeId::new("up")?,
            NodeId::new("down")?,
            NodeId::new("unlisted")?,
        ];
        let due = s.due(&reported, Instant::now());
        s.probe(due, &listed).await;
        assert_eq!(s.dead(Instant::now()), vec![NodeId::new("down")?]);
        // Its verdict lasts until its lease is over.
        assert!(s.dead(Instant::now() + Duration::from_secs(6)).is_empty());
        Ok(())
    }

    #[test]
    fn a_node_is_probed_at_most_once_a_second() -> Result<(), Box<dyn std::error::Error>> {
        let s = Suspects::new(Duration::from_secs(5));
        let n = [NodeId::new("n1")?];
        let t = Instant::now();
        assert_eq!(s.due(&n, t).len(), 1);
        assert!(s.due(&n, t + Duration::from_millis(500)).is_empty());
        assert_eq!(s.due(&n, t + PROBE_EVERY).len(), 1);
        Ok(())
    }
}
