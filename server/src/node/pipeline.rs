//! The path of an accepted frame after its session: group commit into the store, then the ack,
//! local delivery and publication.
//!
//! One committer per node, on a thread of its own, takes every append waiting (up to a batch),
//! adds what queued while the store waited for its write lock, and writes them in one
//! transaction: a lone message goes at once, a busy node writes hundreds per commit. After the
//! commit, each event is serialized once; its ack goes to the sender's queue, its frame to
//! every local recipient device, and a publish job to the publisher. The publisher resolves
//! the targets of a whole batch with one registry call and publishes concurrently; it retries
//! until the bus takes each envelope, and reports the oldest event it still holds so that a
//! survivor knows where to start if this node dies.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::bus::BusKind;
use protocol::trace::Hop;
use protocol::ws::{Ack, ErrorCode, ServerFrame};
use protocol::{ClientMsgId, Millis, UserId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::devices::{DeviceSlot, Outbound, SharedEvent};
use super::{Fault, NodeCtx};
use crate::bus::order_key;
use crate::store::{Appended, NewEvent, StoreError};

/// Most events in one commit.
const MAX_BATCH: usize = 256;
/// Most envelopes resolved and published together.
const MAX_PUBLISH_BATCH: usize = 512;

/// An event to persist for a device.
pub struct AppendJob {
    /// The event.
    pub event: NewEvent,
    /// The device that sent it (gets the ack or the error).
    pub from: Arc<DeviceSlot>,
    /// Its client id (for the error frame).
    pub client_id: ClientMsgId,
}

/// A frame to publish to other nodes.
pub struct PublishJob {
    /// Who gets it.
    pub recipients: Arc<[UserId]>,
    /// What it is.
    pub kind: BusKind,
    /// The frame.
    pub frame: Bytes,
    /// When it was accepted (for the oldest-unpublished report).
    pub at: Millis,
}

/// The error code a device sees for a store failure.
pub fn store_error_code(e: &StoreError) -> ErrorCode {
    match e {
        StoreError::NotFound => ErrorCode::NotFound,
        StoreError::Conflict(_) => ErrorCode::Conflict,
        StoreError::NotMember => ErrorCode::NotMember,
        StoreError::Forbidden(_) => ErrorCode::Forbidden,
        StoreError::Invalid(_) => ErrorCode::Invalid,
        StoreError::Unavailable(_) => ErrorCode::Unavailable,
        StoreError::Internal(_) => ErrorCode::Internal,
    }
}

/// What a device is told for a store failure (internals stay in the log).
pub fn store_error_message(e: &StoreError) -> String {
    match e {
        StoreError::Internal(_) => "internal error".into(),
        StoreError::Unavailable(_) => "history store unavailable; retry".into(),
        other => other.to_string(),
    }
}

/// The committer, on a thread of its own.
///
/// A commit holds the store's write lock (on SQLite, the lock every process of the machine
/// queues on) across several statements. SQLite's run right here, on this thread; PostgreSQL's
/// are each a round trip to the server. On the node's runtime, the commit would wait for its
/// turn behind the sessions' work at every step, and every writer of every process would wait
/// with it. On its own thread, with a runtime that runs nothing else, it goes on at once.
pub struct Committer {
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Committer {
    /// Starts the committer's thread.
    pub fn spawn(ctx: Arc<NodeCtx>, rx: mpsc::Receiver<AppendJob>) -> std::io::Result<Committer> {
        let stop = CancellationToken::new();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("committer".into())
            .spawn(move || {
                // Nothing else runs on this thread: waiting here for another process's commit
                // costs no thread switch.
                crate::store::sqlite::wait_for_the_write_lock_in_place();
                runtime.block_on(run_committer(ctx, rx, stopped))
            })?;
        Ok(Committer {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops it after the batch it is writing, and waits for its thread.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(thread) = self.thread.take() {
            let joined = tokio::task::spawn_blocking(move || thread.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::error!("the committer's thread panicked");
            }
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        // Without this, its thread would hold the node (and its store) for ever.
        self.stop.cancel();
    }
}

/// Runs the committer until its input closes or `stop` fires; then returns (after the batch
/// in hand).
pub async fn run_committer(
    ctx: Arc<NodeCtx>,
    mut rx: mpsc::Receiver<AppendJob>,
    stop: CancellationToken,
) {
    let mut jobs: Vec<AppendJob> = Vec::with_capacity(MAX_BATCH);
    // Each event goes to the store as it is; its sender stays here for the answer.
    let mut senders: Vec<Sender> = Vec::with_capacity(MAX_BATCH);
    loop {
        let got = tokio::select! {
            biased;
            _ = stop.cancelled() => 0,
            n = rx.recv_many(&mut jobs, MAX_BATCH) => n,
        };
        if got == 0 {
            break;
        }
        let events: Vec<NewEvent> = jobs.drain(..).map(|job| job.split(&mut senders)).collect();
        let started = Instant::now();
        // What queued while the store waited for its lock goes in this commit too.
        let mut top_up = |events: &mut Vec<NewEvent>| {
            while senders.len() < MAX_BATCH {
                let Ok(job) = rx.try_recv() else { break };
                events.push(job.split(&mut senders));
            }
        };
        let results = ctx.store.append_topped_up(events, &mut top_up).await;
        let n = senders.len();
        metrics::histogram!("chat_store_commit_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("chat_store_batch_size").record(n as f64);
        for (sender, result) in senders.drain(..).zip(results) {
            match result {
                Ok(appended) => committed(&ctx, sender, appended).await,
                Err(e) => {
                    if matches!(e, StoreError::Internal(_)) {
                        tracing::error!(error = %e, "append failed");
                    }
                    metrics::counter!("chat_sends_refused_total").increment(1);
                    let frame = ServerFrame::error(
                        store_error_code(&e),
                        store_error_message(&e),
                        Some(sender.client_id),
                    );
                    sender
                        .from
                        .queue
                        .push(Outbound::Live(Bytes::from(frame.to_json())));
                }
            }
        }
    }
}

/// Who is answered once an event is committed.
struct Sender {
    from: Arc<DeviceSlot>,
    client_id: ClientMsgId,
}

impl AppendJob {
    /// The event, for the store; its sender goes on `senders`, in the same order.
    fn split(self, senders: &mut Vec<Sender>) -> NewEvent {
        senders.push(Sender {
            from: self.from,
            client_id: self.client_id,
        });
        self.event
    }
}

async fn committed(ctx: &Arc<NodeCtx>, job: Sender, appended: Appended) {
    let ev = &appended.event;
    let ack = Bytes::from(
        ServerFrame::Ack(Ack {
            client_id: job.client_id,
            conv: ev.conv,
            seq: ev.seq,
            id: ev.id,
            at: ev.at,
            duplicate: appended.duplicate,
        })
        .to_json(),
    );
    if !appended.duplicate {
        metrics::counter!("chat_events_persisted_total").increment(1);
        ctx.tracer.hop(
            Hop::Persisted,
            ev.id,
            ev.conv,
            ev.seq,
            Some(ev.sender),
            ev.device.as_ref(),
            vec![],
        );
    }
    if let Some(Fault::CrashAfterAck(n)) = ctx.fault
        && ctx.acks.fetch_add(1, Ordering::Relaxed) + 1 == n
    {
        tracing::warn!(id = %ev.id, "fault injection: crashing after this ack, before publishing");
        job.from.queue.push(Outbound::AckThenCrash(ack));
        return;
    }
    job.from.queue.push(Outbound::Live(ack));
    ctx.tracer.hop(
        Hop::Acked,
        ev.id,
        ev.conv,
        ev.seq,
        Some(ev.sender),
        ev.device.as_ref(),
        vec![],
    );
    // A duplicate is delivered and published again too: the first attempt may have died
    // between its ack and its publish. Receivers drop what they already have.
    let shared = Arc::new(SharedEvent {
        conv: ev.conv,
        seq: ev.seq,
        id: ev.id,
        frame: Bytes::from(ServerFrame::Event(ev.clone()).to_json()),
    });
    let local = ctx.devices.deliver_event(&appended.recipients, &shared);
    metrics::counter!("chat_deliveries_total").increment(local as u64);
    if ctx.teaching.is(protocol::teaching::Teaching::NoBus) {
        // Teaching mode: a load balancer alone, no bus; devices elsewhere never hear of it.
        return;
    }
    let job = PublishJob {
        recipients: appended.recipients.clone(),
        kind: BusKind::Event {
            conv: ev.conv,
            seq: ev.seq,
            id: ev.id,
        },
        frame: shared.frame.clone(),
        at: ev.at,
    };
    if ctx.publish.send(job).await.is_err() {
        tracing::warn!(id = %ev.id, "publisher gone; event stays for resync");
    }
}

/// Oldest accepted-but-unpublished time, 0 for none.
#[derive(Default)]
pub struct Unpublished(AtomicI64);

impl Unpublished {
    /// The time, if any.
    pub fn get(&self) -> Option<Millis> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }
}

/// Runs the publisher until its input closes and everything taken is published (or `cancel`
/// fires while the bus is down).
pub async fn run_publisher(
    ctx: Arc<NodeCtx>,
    mut rx: mpsc::Receiver<PublishJob>,
    cancel: CancellationToken,
) {
    let mut jobs: Vec<PublishJob> = Vec::with_capacity(MAX_PUBLISH_BATCH);
    while rx.recv_many(&mut jobs, MAX_PUBLISH_BATCH).await > 0 {
        let oldest = jobs.iter().map(|j| j.at).min().unwrap_or(0);
        ctx.unpublished.0.store(oldest, Ordering::Relaxed);
        let mut delay = Duration::from_millis(50);
        while !jobs.is_empty() {
            match publish_batch(&ctx, &jobs).await {
                Ok(()) => jobs.clear(),
                Err((done, e)) => {
                    // Keep only what failed; retry after a pause.
                    let mut i = 0;
                    jobs.retain(|_| {
                        let keep = !done.get(i).copied().unwrap_or(false);
                        i += 1;
                        keep
                    });
                    metrics::counter!("chat_publish_retries_total").increment(1);
                    tracing::warn!(error = %e, pending = jobs.len(), "publish failed; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => {
                            tracing::warn!(lost = jobs.len(), "stopping with unpublished events; survivors' resync covers them");
                            return;
                        }
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
        ctx.unpublished.0.store(0, Ordering::Relaxed);
    }
}

/// Publishes a batch; on failure says which jobs went out.
async fn publish_batch(ctx: &NodeCtx, jobs: &[PublishJob]) -> Result<(), (Vec<bool>, String)> {
    let lists: Vec<&[UserId]> = jobs.iter().map(|j| &j.recipients[..]).collect();
    let targets = ctx
        .router
        .targets(&lists)
        .await
        .map_err(|e| (vec![false; jobs.len()], e.to_string()))?;
    let sends = jobs.iter().zip(targets).map(|(job, targets)| async move {
        let Some(targets) = targets else {
            return Ok(());
        };
        let env = ctx
            .router
            .envelope(job.recipients.to_vec(), job.kind.clone(), job.frame.clone());
        ctx.router
            .bus
            .publish(&targets, &order_key(&job.kind), env)
            .await?;
        metrics::counter!("chat_bus_published_total").increment(1);
        if let BusKind::Event { conv, seq, id } = &job.kind
            && ctx.tracer.enabled()
        {
            // Empty when every node is, or when the bus finds the nodes itself.
            let peers = match &targets {
                protocol::link::Targets::Nodes(n) => n.clone(),
                protocol::link::Targets::All | protocol::link::Targets::Users(_) => Vec::new(),
            };
            ctx.tracer
                .hop(Hop::Published, *id, *conv, *seq, None, None, peers);
        }
        Ok::<(), crate::bus::BusError>(())
    });
    let results = futures::future::join_all(sends).await;
    if results.iter().all(Result::is_ok) {
        return Ok(());
    }
    let first = results
        .iter()
        .find_map(|r| r.as_ref().err().map(ToString::to_string))
        .unwrap_or_default();
    Err((results.iter().map(Result::is_ok).collect(), first))
}

/// Counts acks for fault injection.
#[derive(Default)]
pub struct AckCounter(AtomicU64);

impl std::ops::Deref for AckCounter {
    type Target = AtomicU64;
    fn deref(&self) -> &AtomicU64 {
        &self.0
    }
}
