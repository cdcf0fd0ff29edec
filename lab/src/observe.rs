//! The lab's observer: one subscription to `GET /trace` per process of the cluster (every node
//! and the controller), merged into one channel of [`TraceEvent`]s tagged with the process's
//! slot name. It follows the cluster as it changes ([`Observer::set_targets`]: a restarted
//! node has a new address) and resubscribes when the sampling changes, so that the nodes only
//! ever serialize the messages the lab will draw.
//!
//! Invariant: a subscription that fails (a node killed, frozen, restarting) retries with a
//! backoff until its target is removed; nothing here ever blocks a node — the nodes drop
//! events for a listener that lags.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use parking_lot::Mutex;
use protocol::trace::TraceEvent;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::{Message, http};

/// A process to observe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Its slot name (`n2`) or `controller`.
    pub name: String,
    /// Its HTTP base.
    pub http_url: String,
    /// The cluster's operator token: `/trace` answers no one else.
    pub operator_token: String,
}

/// An event and the slot name of the process that streamed it.
pub type Observed = (String, TraceEvent);

struct Subscription {
    target: Target,
    sample: u32,
    task: JoinHandle<()>,
}

/// The cluster's trace streams, merged. Dropping it ends every subscription.
pub struct Observer {
    tx: mpsc::UnboundedSender<Observed>,
    subs: Mutex<HashMap<String, Subscription>>,
    sample: Mutex<u32>,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer")
            .field("subscriptions", &self.subs.lock().len())
            .field("sample", &*self.sample.lock())
            .finish()
    }
}

impl Observer {
    /// An observer sending what it sees to `tx`, keeping one message in `sample`.
    pub fn new(tx: mpsc::UnboundedSender<Observed>, sample: u32) -> Observer {
        Observer {
            tx,
            subs: Mutex::new(HashMap::new()),
            sample: Mutex::new(sample.max(1)),
        }
    }

    /// Observes exactly these processes: new ones are subscribed, gone ones dropped.
    pub fn set_targets(&self, targets: &[Target]) {
        let sample = *self.sample.lock();
        let mut subs = self.subs.lock();
        subs.retain(|url, sub| {
            let keep = targets
                .iter()
                .any(|t| &t.http_url == url && *t == sub.target);
            if !keep {
                sub.task.abort();
            }
            keep
        });
        for t in targets {
            subs.entry(t.http_url.clone())
                .or_insert_with(|| self.subscribe(t.clone(), sample));
        }
    }

    /// Keeps one message in `n` from now on (every node decides alike for a given message).
    pub fn set_sample(&self, n: u32) {
        let n = n.max(1);
        let mut sample = self.sample.lock();
        if *sample == n {
            return;
        }
        *sample = n;
        let mut subs = self.subs.lock();
        for sub in subs.values_mut() {
            if sub.sample != n {
                sub.task.abort();
                *sub = self.subscribe(sub.target.clone(), n);
            }
        }
    }

    /// The sampling in force.
    pub fn sample(&self) -> u32 {
        *self.sample.lock()
    }

    fn subscribe(&self, target: Target, sample: u32) -> Subscription {
        let task = tokio::spawn(follow(target.clone(), sample, self.tx.clone()));
        Subscription {
            target,
            sample,
            task,
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        for sub in self.subs.lock().values() {
            sub.task.abort();
        }
    }
}

/// The `/trace` WebSocket URL of an HTTP base.
pub fn trace_url(http_url: &str, sample: u32) -> String {
    let base = http_url.trim_end_matches('/');
    let ws = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        format!("ws://{}", base.trim_start_matches("http://"))
    };
    format!("{ws}/trace?sample={sample}")
}

/// The upgrade request of a `/trace` URL, with the operator's token.
fn trace_request(
    url: &str,
    operator_token: &str,
) -> Result<Request, tokio_tungstenite::tungstenite::Error> {
    let mut req = url.into_client_request()?;
    let value = format!("Bearer {operator_token}")
        .parse()
        .map_err(|e| tokio_tungstenite::tungstenite::Error::HttpFormat(http::Error::from(e)))?;
    req.headers_mut().insert("authorization", value);
    Ok(req)
}

/// One subscription, reconnecting with a backoff until aborted or the receiver is gone.
async fn follow(target: Target, sample: u32, tx: mpsc::UnboundedSender<Observed>) {
    let url = trace_url(&target.http_url, sample);
    let mut backoff = Duration::from_millis(100);
    loop {
        let req = match trace_request(&url, &target.operator_token) {
            Ok(req) => req,
            Err(e) => {
                tracing::warn!(error = %e, node = %target.name, "cannot ask for a trace stream");
                return;
            }
        };
        if let Ok((mut socket, _)) = tokio_tungstenite::connect_async(req).await {
            backoff = Duration::from_millis(100);
            while let Some(Ok(msg)) = socket.next().await {
                let Message::Text(text) = msg else {
                    continue;
                };
                match serde_json::from_str::<TraceEvent>(text.as_str()) {
                    Ok(ev) => {
                        if tx.send((target.name.clone(), ev)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, node = %target.name, "unreadable trace event")
                    }
                }
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_urls() {
        assert_eq!(
            trace_url("http://127.0.0.1:4000/", 5),
            "ws://127.0.0.1:4000/trace?sample=5"
        );
        assert_eq!(trace_url("https://h", 1), "wss://h/trace?sample=1");
    }
}
