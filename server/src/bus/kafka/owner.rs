//! The owner thread of a Kafka bus handle: it probes the broker, and once the handle is
//! subscribed it runs the consumer, hands envelopes to the node's inbox, and places the consumer
//! at the end of its partitions again after any trouble.
//!
//! A thread rather than a task: librdkafka's consumer calls are blocking (polls, and the
//! watermark queries made while partitions are assigned), and a thread of its own keeps them
//! off the runtime's workers.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;

use super::context::{ConsumerCtx, is_connection_trouble, place_at_end};
use super::{ANSWER_WITHIN, Shared, Subscription, base_config};
use crate::bus::{BusError, BusResult};

/// How often the broker is probed.
const PROBE_EVERY: Duration = Duration::from_millis(500);
/// How long one poll of the consumer (or one idle wait) blocks.
const POLL: Duration = Duration::from_millis(100);
/// How long the thread waits before offering an envelope to a full inbox again.
const INBOX_FULL_WAIT: Duration = Duration::from_millis(5);

/// Starts the owner thread of `shared`; it stops when `stop` fires.
pub fn spawn(shared: Arc<Shared>, stop: CancellationToken) -> BusResult<()> {
    std::thread::Builder::new()
        .name("kafka-bus".into())
        .spawn(move || Owner::new(shared, stop).run())
        .map(|_| ())
        .map_err(|e| BusError::Internal(format!("starting the kafka bus thread: {e}")))
}

struct Owner {
    shared: Arc<Shared>,
    stop: CancellationToken,
    consumer: Option<(BaseConsumer<ConsumerCtx>, mpsc::Sender<Bytes>)>,
    /// Whether the broker answered the last probe (to log changes only).
    reachable: bool,
}

impl Owner {
    fn new(shared: Arc<Shared>, stop: CancellationToken) -> Owner {
        Owner {
            shared,
            stop,
            consumer: None,
            reachable: true,
        }
    }

    fn run(mut self) {
        let mut next_probe = Instant::now() + PROBE_EVERY;
        while !self.stop.is_cancelled() {
            if self.consumer.is_none() {
                let sub = self.shared.subscription.lock().take();
                if let Some(sub) = sub {
                    self.start_consumer(sub);
                }
            }
            if Instant::now() >= next_probe {
                self.probe();
                next_probe = Instant::now() + PROBE_EVERY;
            }
            if !self.poll_once() {
                break;
            }
        }
        self.shared.probe_ok.store(false, Ordering::Release);
        self.shared
            .signals
            .consuming
            .store(false, Ordering::Release);
        // Dropping the consumer leaves its group.
        drop(self.consumer.take());
        tracing::debug!(client = %self.shared.client_id, "kafka bus thread stopped");
    }

    fn start_consumer(&mut self, sub: Subscription) {
        let config = &self.shared.config;
        let own = self.shared.node_topic(sub.node.as_str());
        let made: Result<BaseConsumer<ConsumerCtx>, KafkaError> =
            base_config(config, &self.shared.client_id)
                .set("group.id", self.shared.group_id(&sub.node))
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "latest")
                .set("session.timeout.ms", "6000")
                .set("heartbeat.interval.ms", "1000")
                .set("fetch.wait.max.ms", "100")
                .create_with_context(ConsumerCtx {
                    signals: self.shared.signals.clone(),
                });
        let consumer = match made {
            Ok(c) => c,
            Err(e) => {
                // Only a bad setting gets here; nothing to retry.
                tracing::error!(error = %e, "kafka consumer could not be made");
                return;
            }
        };
        if let Err(e) = consumer.subscribe(&[&own, &self.shared.all_topic]) {
            tracing::error!(error = %e, "kafka consumer could not subscribe");
            return;
        }
        tracing::info!(node = %sub.node, topic = %own, "kafka consumer subscribed");
        self.consumer = Some((consumer, sub.inbox));
    }

    /// Asks the broker for the fanout topic's metadata; after trouble, creates the topics again
    /// if the broker lost them and places the consumer at the end of its partitions.
    fn probe(&mut self) {
        let all = self.shared.all_topic.clone();
        let answer = self
            .shared
            .producer
            .client()
            .fetch_metadata(Some(&all), ANSWER_WITHIN);
        let topic_ok = match &answer {
            Ok(m) => m
                .topics()
                .iter()
                .any(|t| t.name() == all && t.error().is_none() && !t.partitions().is_empty()),
            Err(_) => false,
        };
        if let Err(e) = &answer {
            if self.reachable {
                tracing::warn!(error = %e, brokers = %self.shared.config.brokers, "kafka broker does not answer");
            }
            self.reachable = false;
            self.shared.probe_ok.store(false, Ordering::Release);
            if self.consumer.is_some() {
                self.shared.signals.troubled("the broker does not answer");
            }
            return;
        }
        if !self.reachable {
            tracing::info!(brokers = %self.shared.config.brokers, "kafka broker answers again");
            self.reachable = true;
        }
        let signals = self.shared.signals.clone();
        let needs_topics = !topic_ok;
        if needs_topics || signals.trouble.load(Ordering::Acquire) {
            let mut topics = vec![all.clone()];
            if let Some((c, _)) = &self.consumer
                && let Ok(sub) = c.subscription()
            {
                topics = sub
                    .elements()
                    .iter()
                    .map(|e| e.topic().to_owned())
                    .collect();
            }
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            if let Err(e) = futures::executor::block_on(self.shared.ensure_topics(&names)) {
                tracing::warn!(error = %e, "kafka: could not create the bus topics");
                self.shared.probe_ok.store(false, Ordering::Release);
                return;
            }
        }
        self.shared.probe_ok.store(true, Ordering::Release);
        if signals.trouble.load(Ordering::Acquire)
            && let Some((c, _)) = &self.consumer
        {
            // Placed again only while it holds partitions; otherwise the next assignment does it.
            let Ok(mut held) = c.assignment() else {
                return;
            };
            if held.count() == 0 {
                return;
            }
            if place_at_end(c, &mut held) && c.seek_partitions(held, ANSWER_WITHIN).is_ok() {
                signals.placed();
            }
        }
    }

    /// One poll of the consumer (or an idle wait); false when the thread should stop.
    fn poll_once(&mut self) -> bool {
        let Some((consumer, inbox)) = &self.consumer else {
            std::thread::sleep(POLL);
            return true;
        };
        match consumer.poll(POLL) {
            None => true,
            Some(Ok(msg)) => {
                let Some(payload) = msg.payload() else {
                    return true;
                };
                let mut envelope = Bytes::copy_from_slice(payload);
                loop {
                    match inbox.try_send(envelope) {
                        Ok(()) => return true,
                        // Nobody reads the inbox any more.
                        Err(TrySendError::Closed(_)) => return false,
                        Err(TrySendError::Full(back)) => {
                            if self.stop.is_cancelled() {
                                return false;
                            }
                            envelope = back;
                            std::thread::sleep(INBOX_FULL_WAIT);
                        }
                    }
                }
            }
            Some(Err(e)) => {
                if is_connection_trouble(&e) {
                    self.shared.signals.troubled(&e.to_string());
                } else {
                    tracing::warn!(error = %e, "kafka consumer");
                }
                true
            }
        }
    }
}
