//! The task that owns a process's RabbitMQ connection: it opens the connection and its
//! channels, declares the topology, runs the consumer and acknowledges in batches, and
//! reconnects with backoff whenever any of it fails.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, Consumer, Event, ExchangeKind};
use tokio_util::sync::CancellationToken;

use super::{ACK_BATCH, ACK_DELAY, BACKOFF_MAX, BACKOFF_MIN, CHECK_EVERY, Shared, Subscription};

/// An open connection with its publish channel ready and the exchanges declared.
pub(super) struct Session {
    conn: Connection,
    publisher: Channel,
}

/// Opens a connection, a publish channel in confirm mode, and declares the exchanges.
pub(super) async fn open(shared: &Shared) -> lapin::Result<Session> {
    let props =
        ConnectionProperties::default().with_connection_name(shared.connection_name.clone().into());
    let conn = Connection::connect_uri(shared.uri.clone(), props).await?;
    let publisher = conn.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    // Auto-delete: an exchange goes when its last binding goes, i.e. when the last node queue
    // of the cluster expired, so a cluster that is gone leaves nothing behind. A publish that
    // races such a deletion fails, closes the channel, and the reconnect declares it again.
    let durable = ExchangeDeclareOptions {
        durable: true,
        auto_delete: true,
        ..ExchangeDeclareOptions::default()
    };
    publisher
        .exchange_declare(
            shared.direct.as_str().into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await?;
    publisher
        .exchange_declare(
            shared.fanout.as_str().into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await?;
    Ok(Session { conn, publisher })
}

/// Declares the node's queue and bindings and starts consuming it.
async fn start_consumer(
    shared: &Shared,
    conn: &Connection,
    sub: &Subscription,
) -> lapin::Result<(Channel, Consumer)> {
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(shared.config.prefetch, BasicQosOptions::default())
        .await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-expires".into(),
        AMQPValue::LongLongInt(shared.config.queue_expires.as_millis() as i64),
    );
    args.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(i64::from(shared.config.queue_max_length)),
    );
    let queue: ShortString = sub.queue.as_str().into();
    channel
        .queue_declare(
            queue.clone(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await?;
    channel
        .queue_bind(
            queue.clone(),
            shared.direct.as_str().into(),
            sub.node.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.clone(),
            shared.fanout.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let consumer = channel
        .basic_consume(
            queue,
            format!("chat-{}", sub.node).into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}

/// Why a session ended.
enum Ended {
    Stop,
    Lost(String),
}

/// The task that owns the connection: runs sessions, reconnecting with backoff between them.
pub(super) async fn own_connection(shared: Arc<Shared>, first: Session, cancel: CancellationToken) {
    let mut next = Some(first);
    let mut backoff = BACKOFF_MIN;
    loop {
        let session = match next.take() {
            Some(s) => Ok(s),
            None => tokio::select! {
                _ = cancel.cancelled() => break,
                s = open(&shared) => s,
            },
        };
        let ended = match session {
            Ok(s) => run_session(&shared, s, &cancel).await,
            Err(e) => Ended::Lost(e.to_string()),
        };
        let was_up = shared.connected.swap(false, Ordering::AcqRel);
        shared.consuming.store(false, Ordering::Release);
        *shared.publisher.lock() = None;
        match ended {
            Ended::Stop => break,
            Ended::Lost(why) if was_up => {
                backoff = BACKOFF_MIN;
                tracing::warn!(connection = %shared.connection_name, %why, "rabbitmq connection lost; reconnecting");
            }
            Ended::Lost(why) => {
                tracing::debug!(connection = %shared.connection_name, %why, "rabbitmq still unreachable");
            }
        }
        let jitter = Duration::from_millis(rand::random_range(0..=backoff.as_millis() as u64 / 2));
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(backoff + jitter) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    tracing::debug!(connection = %shared.connection_name, "rabbitmq bus stopped");
}

/// Serves one connection until it fails or `cancel` fires.
async fn run_session(shared: &Shared, session: Session, cancel: &CancellationToken) -> Ended {
    let Session { conn, publisher } = session;
    let mut events = conn.events_listener();
    *shared.publisher.lock() = Some(publisher.clone());
    shared.connected.store(true, Ordering::Release);
    let n = shared.sessions.fetch_add(1, Ordering::Relaxed) + 1;
    if n > 1 {
        metrics::counter!("chat_bus_reconnects_total", "bus" => "amqp").increment(1);
        tracing::info!(connection = %shared.connection_name, "rabbitmq connected again");
    }

    let mut consumer: Option<(Channel, Consumer, Subscription)> = None;
    // Deliveries taken but not yet acknowledged: the last tag and how many.
    let mut unacked: Option<u64> = None;
    let mut unacked_count = 0u64;
    let mut ack_due = Box::pin(tokio::time::sleep(ACK_DELAY));
    let mut check = tokio::time::interval(CHECK_EVERY);
    let mut want_consumer = true;

    let ended = loop {
        if want_consumer && consumer.is_none() {
            want_consumer = false;
            let sub = shared.subscription.lock().clone();
            if let Some(sub) = sub {
                match start_consumer(shared, &conn, &sub).await {
                    Ok((channel, c)) => {
                        consumer = Some((channel, c, sub));
                        shared.consuming.store(true, Ordering::Release);
                        shared.first_consume.send_replace(true);
                        tracing::info!(queue = %shared_queue(&consumer), "rabbitmq consumer started");
                    }
                    Err(e) => break Ended::Lost(format!("cannot start the consumer: {e}")),
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break Ended::Stop,
            _ = shared.subscribe_requested.notified(), if consumer.is_none() => {
                want_consumer = true;
            }
            ev = events.next() => match ev {
                Some(Event::Error(e)) => break Ended::Lost(e.to_string()),
                None => break Ended::Lost("connection events ended".into()),
                Some(_) => {}
            },
            delivery = next_delivery(&mut consumer) => match delivery {
                Some(Ok(d)) => {
                    let Some((_, _, sub)) = consumer.as_ref() else { continue };
                    let inbox = sub.inbox.clone();
                    tokio::select! {
                        _ = cancel.cancelled() => break Ended::Stop,
                        sent = inbox.send(Bytes::from(d.data)) => if sent.is_err() {
                            // Nobody reads the inbox any more.
                            break Ended::Stop;
                        },
                    }
                    if unacked.is_none() {
                        ack_due.as_mut().reset(tokio::time::Instant::now() + ACK_DELAY);
                    }
                    unacked = Some(d.delivery_tag);
                    unacked_count += 1;
                    if unacked_count >= ACK_BATCH
                        && let Err(e) = ack(&consumer, &mut unacked, &mut unacked_count).await
                    {
                        break Ended::Lost(format!("ack failed: {e}"));
                    }
                }
                Some(Err(e)) => break Ended::Lost(format!("consumer failed: {e}")),
                None => break Ended::Lost("the broker cancelled the consumer".into()),
            },
            _ = &mut ack_due, if unacked.is_some() => {
                if let Err(e) = ack(&consumer, &mut unacked, &mut unacked_count).await {
                    break Ended::Lost(format!("ack failed: {e}"));
                }
            }
            _ = check.tick() => {
                let consumer_ok = consumer.as_ref().is_none_or(|(ch, _, _)| ch.status().connected());
                if !conn.status().connected() || !publisher.status().connected() || !consumer_ok {
                    break Ended::Lost("the connection or a channel closed".into());
                }
            }
        }
    };
    // No new publish may start on this connection; `own_connection` marks the bus down.
    *shared.publisher.lock() = None;
    if matches!(ended, Ended::Stop) {
        // A clean goodbye: hand back what was taken, then close.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = ack(&consumer, &mut unacked, &mut unacked_count).await;
            let _ = conn.close(200, "bye".into()).await;
        })
        .await;
    }
    ended
}

fn shared_queue(consumer: &Option<(Channel, Consumer, Subscription)>) -> &str {
    consumer.as_ref().map_or("", |(_, _, s)| s.queue.as_str())
}

async fn next_delivery(
    consumer: &mut Option<(Channel, Consumer, Subscription)>,
) -> Option<lapin::Result<lapin::message::Delivery>> {
    match consumer.as_mut() {
        Some((_, c, _)) => c.next().await,
        None => std::future::pending().await,
    }
}

/// Acknowledges every delivery up to the last one taken, in one frame.
async fn ack(
    consumer: &Option<(Channel, Consumer, Subscription)>,
    unacked: &mut Option<u64>,
    count: &mut u64,
) -> lapin::Result<()> {
    let (Some(tag), Some((channel, _, _))) = (unacked.take(), consumer.as_ref()) else {
        return Ok(());
    };
    *count = 0;
    channel
        .basic_ack(tag, BasicAckOptions { multiple: true })
        .await
}
