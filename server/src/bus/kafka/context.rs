//! What librdkafka calls back into: the producer's and the consumer's contexts, and the
//! [`Signals`] they leave for the owner thread and for `is_up`.
//!
//! The consumer context takes over partition assignment: each partition it is given is placed
//! at its current end (the high watermark, asked of the broker) before it is assigned, and only
//! then does the bus count a new session. Committed offsets are never consulted.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;

/// How long asking for one partition's end may take.
const WATERMARK_WITHIN: Duration = Duration::from_secs(2);

/// What the clients' callbacks and the owner thread tell each other and the handles.
pub struct Signals {
    /// The consumer holds its partitions, placed at their ends, with no trouble since.
    pub consuming: AtomicBool,
    /// The consumer's connection failed (or its partitions could not be placed) since it was
    /// last placed: the owner thread places it again once the broker answers.
    pub trouble: AtomicBool,
    /// Times the consumer was placed at the end of its partitions.
    pub sessions: AtomicU64,
    /// Becomes true at the first placement.
    pub first_placement: watch::Sender<bool>,
}

impl Default for Signals {
    fn default() -> Self {
        Signals {
            consuming: AtomicBool::new(false),
            trouble: AtomicBool::new(false),
            sessions: AtomicU64::new(0),
            first_placement: watch::channel(false).0,
        }
    }
}

impl Signals {
    /// The consumer now reads from the end of every partition it holds.
    pub fn placed(&self) {
        self.trouble.store(false, Ordering::Release);
        self.consuming.store(true, Ordering::Release);
        let n = self.sessions.fetch_add(1, Ordering::AcqRel) + 1;
        self.first_placement.send_replace(true);
        if n > 1 {
            metrics::counter!("chat_bus_reconnects_total", "bus" => "kafka").increment(1);
            tracing::info!(
                session = n,
                "kafka consumer placed at the end of its partitions again"
            );
        } else {
            tracing::info!("kafka consumer placed at the end of its partitions");
        }
    }

    /// The consumer may have missed envelopes: it must be placed again.
    pub fn troubled(&self, why: &str) {
        let was = self.consuming.swap(false, Ordering::AcqRel);
        self.trouble.store(true, Ordering::Release);
        if was {
            tracing::warn!(%why, "kafka consumer lost its broker; it starts again from the end");
        } else {
            tracing::debug!(%why, "kafka consumer still troubled");
        }
    }
}

/// Whether an error a client reports means its connection to the broker failed.
pub fn is_connection_trouble(e: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::BrokerTransportFailure
                | C::AllBrokersDown
                | C::BrokerNotAvailable
                | C::NetworkException
                | C::RequestTimedOut
                | C::OperationTimedOut
                | C::NotCoordinator
                | C::CoordinatorNotAvailable
                | C::UnknownMemberId
                | C::UnknownTopicOrPartition
                | C::UnknownPartition
                | C::UnknownTopic
                | C::OffsetOutOfRange
                | C::AutoOffsetReset
        )
    )
}

/// The producer's context: errors only go to the log (a failed publish reports itself).
pub struct ProducerContext;

impl ClientContext for ProducerContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(%error, %reason, "kafka producer");
    }
}

/// The consumer's context: connection trouble and partition placement.
pub struct ConsumerCtx {
    /// Shared with the bus handle.
    pub signals: std::sync::Arc<Signals>,
}

impl ClientContext for ConsumerCtx {
    fn error(&self, error: KafkaError, reason: &str) {
        if is_connection_trouble(&error) {
            self.signals.troubled(&format!("{error}: {reason}"));
        } else {
            tracing::warn!(%error, %reason, "kafka consumer");
        }
    }
}

/// Sets every partition of `tpl` to its current end; false if an end could not be learned
/// (that partition is then left to librdkafka's own reset to the end).
pub fn place_at_end<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    tpl: &mut TopicPartitionList,
) -> bool {
    let mut all = true;
    let parts: Vec<(String, i32)> = tpl
        .elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect();
    for (topic, partition) in parts {
        let offset = match consumer.fetch_watermarks(&topic, partition, WATERMARK_WITHIN) {
            Ok((_, high)) => Offset::Offset(high),
            Err(e) => {
                tracing::debug!(%topic, partition, error = %e, "kafka: no end offset");
                all = false;
                Offset::End
            }
        };
        if tpl.set_partition_offset(&topic, partition, offset).is_err() {
            all = false;
        }
    }
    all
}

impl ConsumerContext for ConsumerCtx {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let placed = place_at_end(consumer, tpl);
                match consumer.assign(tpl) {
                    Ok(()) if placed => {
                        tracing::debug!(partitions = tpl.count(), "kafka consumer assigned");
                        self.signals.placed();
                    }
                    Ok(()) => self
                        .signals
                        .troubled("partition ends unknown at assignment"),
                    Err(e) => self.signals.troubled(&format!("assigning: {e}")),
                }
            }
            other => {
                if other != RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
                    tracing::warn!(error = ?other, "kafka rebalance failed");
                }
                self.signals.consuming.store(false, Ordering::Release);
                if let Err(e) = consumer.unassign() {
                    tracing::warn!(error = %e, "kafka consumer could not give its partitions back");
                }
            }
        }
    }
}
