//! The connection engine: the one task behind a [`crate::Client`] that keeps a device
//! connected and in sync.
//!
//! A session goes: assign (controller) → open the socket → `hello` with the cursors →
//! `welcome` → replayed events → `synced` → live. Only once live does the engine write the
//! outbox, read markers and typing frames. When a session ends, [`crate::failover::plan`]
//! decides whether to stop or to try again, how soon, and without which node.
//!
//! The engine shares its state (cursors, outbox, pending read markers, waiters) with the
//! handle through [`Shared`]: the handle pushes into it and pokes `wake`; the engine takes
//! from it. The lock is never held across an `.await`.
//!
//! Backpressure: events go to the application through a bounded channel, and the engine
//! waits for room before reading the next frame. An application that stops reading thus
//! stops the socket being read; the node eventually drops this device (close 4009), and the
//! resync on the next session delivers what was dropped.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use protocol::limits;
use protocol::model::Event;
use protocol::teaching::Teaching;
use protocol::ws::{Ack, ClientFrame, ErrorCode, ErrorFrame, Hello, ServerFrame};
use protocol::{ClientMsgId, ConvId, DeviceId, NodeId, PROTOCOL_VERSION, Seq};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::api::{Api, ApiError, HistoryRange};
use crate::client::ClientConfig;
use crate::connection::{ConnectError, Connection, Incoming};
use crate::events::{ClientEvent, Disconnect, Refusal, Status, StopReason};
use crate::failover::{Backoff, Exclusions, Plan, plan};
use crate::outbox::{Next, Outbox, Refused};
use crate::rate::TokenBucket;
use crate::sync::{SyncState, Verdict};

/// Typing frames waiting to be written; older ones are dropped beyond this (they expire on the
/// other side within seconds anyway).
const MAX_PENDING_TYPING: usize = 16;

/// Longest a batch of writes may take before the node is considered stuck.
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What resolves a `send_and_wait_ack`.
pub(crate) type Waiter = oneshot::Sender<Result<Ack, Refusal>>;

/// State shared by the engine and the handle.
pub(crate) struct Shared {
    pub inner: Mutex<Inner>,
    /// Poked by the handle when it queued something to write.
    pub wake: Notify,
    /// Poked by the handle to end a reconnection wait early ([`crate::Client::retry_now`]).
    pub retry: Notify,
    pub status: watch::Sender<Status>,
}

/// The part of the shared state behind the lock.
pub(crate) struct Inner {
    pub sync: SyncState,
    pub outbox: Outbox,
    /// Read markers not yet written, the highest per conversation.
    pub reads: BTreeMap<ConvId, Seq>,
    /// Typing frames not yet written (only queued while live).
    pub typing: VecDeque<(ConvId, bool)>,
    /// Callers of `send_and_wait_ack`, by client id.
    pub waiters: HashMap<ClientMsgId, Vec<Waiter>>,
    /// The teaching mode the node said is on (see [`protocol::teaching`]).
    pub teaching: Option<Teaching>,
}

impl Inner {
    pub fn queue_typing(&mut self, conv: ConvId, active: bool) {
        if self.typing.len() >= MAX_PENDING_TYPING {
            self.typing.pop_front();
        }
        self.typing.push_back((conv, active));
    }

    pub fn queue_read(&mut self, conv: ConvId, seq: Seq) {
        let entry = self.reads.entry(conv).or_insert(seq);
        *entry = (*entry).max(seq);
    }

    fn resolve(&mut self, id: &ClientMsgId, result: &Result<Ack, Refusal>) {
        for waiter in self.waiters.remove(id).unwrap_or_default() {
            let _ = waiter.send(result.clone());
        }
    }
}

/// What one session has got to.
struct Progress {
    welcomed: bool,
    live: bool,
    /// When the node was last heard from (any frame, pong or ping).
    heard: Instant,
    /// When the last ping was sent, if the node has been silent since.
    pinged: Option<Instant>,
    /// When the next write may happen (a refused item's retry, or the rate limit).
    write_at: Option<Instant>,
}

/// The engine task's own state.
pub(crate) struct Engine {
    pub api: Api,
    pub token: String,
    pub device: DeviceId,
    pub config: ClientConfig,
    pub shared: Arc<Shared>,
    pub events: mpsc::Sender<ClientEvent>,
    pub cancel: CancellationToken,
}

/// Runtime state of a running engine that the constructor does not need to know about.
struct Run {
    rng: StdRng,
    bucket: Option<TokenBucket>,
}

impl Engine {
    /// Runs until shut down or stopped for good.
    pub async fn run(self) {
        let mut run = Run {
            rng: StdRng::from_os_rng(),
            bucket: self
                .config
                .send_rate
                .map(|limit| TokenBucket::new(limit, Instant::now().into_std())),
        };
        let mut backoff = Backoff::new(self.config.backoff);
        let mut exclusions = Exclusions::new(self.config.exclusion_ttl);
        let reason = loop {
            let exclude = exclusions.current(Instant::now().into_std());
            let mut synced = false;
            let ended = self.attempt(&mut run, &exclude, &mut synced).await;
            {
                let mut inner = self.shared.inner.lock();
                inner.outbox.disconnected();
                inner.typing.clear();
            }
            match plan(&ended) {
                Plan::Stop(reason) => break reason,
                Plan::Retry {
                    exclude: failed,
                    immediate,
                } => {
                    if matches!(ended, Disconnect::NoNode) && !exclude.is_empty() {
                        // Excluding left nothing: the excluded nodes may be back, try them.
                        exclusions.clear();
                    }
                    if let Some(node) = failed {
                        exclusions.add(node, Instant::now().into_std());
                    }
                    if synced {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay(immediate, &mut run.rng);
                    info!(reason = %ended, delay_ms = delay.as_millis() as u64, "session ended; reconnecting");
                    let status = Status::Reconnecting {
                        attempt: backoff.failures(),
                        in_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        reason: ended,
                    };
                    // Listening for "retry now" before the status says we wait, so a request
                    // made by anyone who saw that status is never missed.
                    let retry = self.shared.retry.notified();
                    tokio::pin!(retry);
                    retry.as_mut().enable();
                    if self.set_status(status).await.is_err() {
                        break StopReason::Shutdown;
                    }
                    tokio::select! {
                        _ = self.cancel.cancelled() => break StopReason::Shutdown,
                        _ = tokio::time::sleep(delay) => {}
                        _ = retry => info!("retrying now, as asked"),
                    }
                }
            }
        };
        info!(%reason, "client engine stopped");
        // Callers still waiting for an ack learn that none will come (their receivers close).
        self.shared.inner.lock().waiters.clear();
        let stopped = Status::Stopped { reason };
        self.shared.status.send_replace(stopped.clone());
        if self.cancel.is_cancelled() {
            // Shut down by the application, which is not necessarily reading any more.
            let _ = self.events.try_send(ClientEvent::Status(stopped));
        } else {
            let _ = self.emit(ClientEvent::Status(stopped)).await;
        }
    }

    /// One attempt: ask for a node, connect, and run the session until it ends.
    async fn attempt(&self, run: &mut Run, exclude: &[NodeId], synced: &mut bool) -> Disconnect {
        if self.set_status(Status::Connecting).await.is_err() {
            return Disconnect::Shutdown;
        }
        let assigned = tokio::select! {
            _ = self.cancel.cancelled() => return Disconnect::Shutdown,
            r = self.api.assign(exclude) => r,
        };
        let assign = match assigned {
            Ok(a) => a,
            Err(e) => return assign_failure(e),
        };
        let node = assign.node.clone();
        debug!(%node, url = %assign.ws_url, "connecting");
        let opened = tokio::select! {
            _ = self.cancel.cancelled() => return Disconnect::Shutdown,
            r = Connection::open(&assign, &self.token, self.config.connect_timeout, self.config.tls.clone()) => r,
        };
        match opened {
            Ok(conn) => self.session(run, conn, node, synced).await,
            Err(e) => connect_failure(node, e),
        }
    }

    /// Runs one session on an open socket until it ends, then closes the socket if it is still
    /// open.
    async fn session(
        &self,
        run: &mut Run,
        mut conn: Connection,
        node: NodeId,
        synced: &mut bool,
    ) -> Disconnect {
        let cursors = self.shared.inner.lock().sync.cursors();
        let hello = ClientFrame::Hello(Hello {
            v: PROTOCOL_VERSION,
            cursors,
        });
        if let Err(message) = conn.send(&hello).await {
            return Disconnect::Lost { node, message };
        }
        if self
            .set_status(Status::Resyncing { node: node.clone() })
            .await
            .is_err()
        {
            conn.close_normal(self.config.close_timeout).await;
            return Disconnect::Shutdown;
        }
        let welcome_deadline = Instant::now() + self.config.welcome_timeout;
        let mut p = Progress {
            welcomed: false,
            live: false,
            heard: Instant::now(),
            pinged: None,
            write_at: None,
        };
        let ended = loop {
            let write_at = p.write_at;
            // Keepalive: ping once the node has been quiet for `ping_interval` (and as often
            // while it stays quiet); give it up once it has been silent for `silence_timeout`.
            let ping_at = p.pinged.unwrap_or(p.heard) + self.config.ping_interval;
            let dead_at = p.heard + self.config.silence_timeout;
            tokio::select! {
                // Cancellation first, then reading: incoming data is proof of life and must
                // not lose to a silence deadline that expired while the application was slow.
                biased;
                _ = self.cancel.cancelled() => break Disconnect::Shutdown,
                incoming = conn.recv() => {
                    p.heard = Instant::now();
                    p.pinged = None;
                    match incoming {
                        Incoming::Frame(frame) => {
                            if let Err(d) = self.on_frame(*frame, &node, &mut p, synced).await {
                                break d;
                            }
                            // Handing the frame over may have waited on a slow application;
                            // that time is not the node's silence.
                            p.heard = Instant::now();
                        }
                        Incoming::Unreadable(what) => warn!(%node, "ignoring a frame: {what}"),
                        Incoming::Alive => {}
                        Incoming::Closed { code, reason } => {
                            break Disconnect::Closed { node: node.clone(), code, reason };
                        }
                        Incoming::Eof => {
                            break Disconnect::Lost {
                                node: node.clone(),
                                message: "connection closed without a close frame".to_owned(),
                            };
                        }
                        Incoming::Error(message) => break Disconnect::Lost { node: node.clone(), message },
                    }
                }
                _ = self.shared.wake.notified() => {}
                _ = sleep_until(write_at.unwrap_or_else(Instant::now)), if write_at.is_some() => {}
                _ = sleep_until(welcome_deadline), if !p.welcomed => {
                    break Disconnect::Timeout { node: node.clone(), waiting_for: "welcome".to_owned() };
                }
                _ = sleep_until(dead_at) => {
                    break Disconnect::Timeout {
                        node: node.clone(),
                        waiting_for: format!(
                            "any sign of life for {} ms",
                            self.config.silence_timeout.as_millis()
                        ),
                    };
                }
                _ = sleep_until(ping_at) => {
                    // Bounded by the silence deadline: a node that stopped reading does not
                    // hold the engine past it.
                    match tokio::time::timeout_at(dead_at, conn.ping()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(message)) => break Disconnect::Lost { node: node.clone(), message },
                        Err(_) => {
                            break Disconnect::Timeout { node: node.clone(), waiting_for: "a ping to be written".to_owned() };
                        }
                    }
                    p.pinged = Some(Instant::now());
                }
            }
            if p.live {
                // Writing happens outside the select above, so it gets its own bound: a node
                // that stops reading (frozen, not dead) must not hang the engine or its
                // shutdown. A cut-off write only loses what `disconnected` requeues.
                let written = tokio::select! {
                    biased;
                    _ = self.cancel.cancelled() => break Disconnect::Shutdown,
                    r = tokio::time::timeout(WRITE_TIMEOUT, self.write_pending(run, &mut conn, &mut p)) => r,
                };
                match written {
                    Ok(Ok(())) => {}
                    Ok(Err(message)) => {
                        break Disconnect::Lost {
                            node: node.clone(),
                            message,
                        };
                    }
                    Err(_) => {
                        break Disconnect::Timeout {
                            node: node.clone(),
                            waiting_for: "the socket to accept writes".to_owned(),
                        };
                    }
                }
            }
        };
        match ended {
            // The socket is still open on our side: close it properly.
            Disconnect::Shutdown
            | Disconnect::Moving { .. }
            | Disconnect::Timeout { .. }
            | Disconnect::Gap { .. } => conn.close_normal(self.config.close_timeout).await,
            // Closed by the node (tungstenite already answered its close frame) or broken.
            _ => drop(conn),
        }
        ended
    }

    async fn on_frame(
        &self,
        frame: ServerFrame,
        node: &NodeId,
        p: &mut Progress,
        synced: &mut bool,
    ) -> Result<(), Disconnect> {
        match frame {
            ServerFrame::Welcome(welcome) => {
                p.welcomed = true;
                debug!(%node, conversations = welcome.conversations.len(), "welcome");
                self.emit(ClientEvent::Welcome(Box::new(welcome))).await?;
            }
            ServerFrame::Event(event) => self.on_event(event).await?,
            ServerFrame::Synced { replayed } => {
                debug!(%node, replayed, "synced");
                p.welcomed = true;
                p.live = true;
                *synced = true;
                self.set_status(Status::Live { node: node.clone() }).await?;
            }
            ServerFrame::Ack(ack) => {
                {
                    let mut inner = self.shared.inner.lock();
                    inner.outbox.ack(&ack.client_id);
                    inner.resolve(&ack.client_id, &Ok(ack.clone()));
                }
                self.emit(ClientEvent::Acked(ack)).await?;
            }
            ServerFrame::Error(error) => self.on_error(error).await?,
            ServerFrame::Presence(presence) => self.emit(ClientEvent::Presence(presence)).await?,
            ServerFrame::Typing { conv, user, active } => {
                self.emit(ClientEvent::Typing { conv, user, active })
                    .await?;
            }
            ServerFrame::Read { conv, user, seq } => {
                self.emit(ClientEvent::Read { conv, user, seq }).await?;
            }
            ServerFrame::Teaching { mode } => {
                match mode {
                    Some(m) => warn!(%node, mode = %m, "{}", m.status_line()),
                    None => info!(%node, "teaching mode off"),
                }
                self.shared.inner.lock().teaching = mode;
                self.emit(ClientEvent::Teaching { mode }).await?;
            }
            ServerFrame::Moving { reason } => {
                info!(%node, %reason, "node is draining; moving");
                self.emit(ClientEvent::Moving {
                    node: node.clone(),
                    reason: reason.clone(),
                })
                .await?;
                return Err(Disconnect::Moving {
                    node: node.clone(),
                    reason,
                });
            }
        }
        Ok(())
    }

    async fn on_event(&self, event: Event) -> Result<(), Disconnect> {
        let (verdict, teaching) = {
            let inner = self.shared.inner.lock();
            (inner.sync.check(event.conv, event.seq), inner.teaching)
        };
        // Teaching modes: what the node writes is shown as it comes, late events included
        // (arrival order), and a gap is not filled from history (bus only).
        let verdict = match (verdict, teaching) {
            (Verdict::Duplicate, Some(Teaching::ArrivalOrder)) => Verdict::Deliver,
            (Verdict::Gap { .. }, Some(Teaching::ArrivalOrder | Teaching::BusOnly)) => {
                Verdict::Deliver
            }
            (v, _) => v,
        };
        match verdict {
            Verdict::Duplicate => Ok(()),
            Verdict::Deliver => self.deliver(event).await,
            Verdict::Gap { after } => {
                warn!(conv = %event.conv, after, seq = event.seq, "gap in the event stream; filling it from history");
                self.fill_gap(event.conv, after, event.seq).await?;
                let verdict = self.shared.inner.lock().sync.check(event.conv, event.seq);
                match verdict {
                    Verdict::Deliver => self.deliver(event).await,
                    _ => Ok(()),
                }
            }
        }
    }

    /// Hands one in-order event to the application, then moves the cursor past it.
    async fn deliver(&self, event: Event) -> Result<(), Disconnect> {
        // An event of mine carrying a client id still waiting in the outbox: it is stored, so
        // the item needs no (re)send and counts as acked — by its own earlier write if it had
        // one before the last connection broke, else as a repeat of an id already stored.
        let settled = match (&event.device, &event.client_id) {
            (Some(device), Some(id)) if *device == self.device => {
                let mut inner = self.shared.inner.lock();
                inner.outbox.stored(id).map(|(_, written)| {
                    let ack = Ack {
                        client_id: id.clone(),
                        conv: event.conv,
                        seq: event.seq,
                        id: event.id,
                        at: event.at,
                        duplicate: !written,
                    };
                    inner.resolve(id, &Ok(ack.clone()));
                    ack
                })
            }
            _ => None,
        };
        if let Some(ack) = settled {
            self.emit(ClientEvent::Acked(ack)).await?;
        }
        let (conv, seq) = (event.conv, event.seq);
        self.emit(ClientEvent::Event(event)).await?;
        self.shared.inner.lock().sync.advance(conv, seq);
        Ok(())
    }

    /// Delivers the events of `conv` after `after` and before `upto` from the history API.
    async fn fill_gap(&self, conv: ConvId, after: Seq, upto: Seq) -> Result<(), Disconnect> {
        let mut cursor = after;
        while cursor + 1 < upto {
            let want = (upto - cursor - 1).min(u64::from(limits::HISTORY_PAGE_MAX));
            let want = u32::try_from(want).unwrap_or(limits::HISTORY_PAGE_MAX);
            let page = tokio::select! {
                _ = self.cancel.cancelled() => return Err(Disconnect::Shutdown),
                r = self.api.history(conv, HistoryRange::After(cursor), Some(want)) => r,
            };
            let page = page.map_err(|e| Disconnect::Gap {
                conv,
                message: e.to_string(),
            })?;
            let before = cursor;
            for event in page.events {
                if event.conv != conv || event.seq <= cursor || event.seq >= upto {
                    continue;
                }
                if event.seq != cursor + 1 {
                    // A hole in history itself; handled below like an empty page.
                    break;
                }
                cursor = event.seq;
                self.deliver(event).await?;
            }
            if cursor == before {
                // The store has nothing more to give: those events do not exist any more.
                // Waiting would not bring them back; go on from here.
                warn!(%conv, from = cursor + 1, to = upto - 1, "events missing from history; skipping them");
                self.shared.inner.lock().sync.advance(conv, upto - 1);
                break;
            }
        }
        Ok(())
    }

    async fn on_error(&self, error: ErrorFrame) -> Result<(), Disconnect> {
        let ErrorFrame {
            code,
            message,
            reference,
        } = error;
        let Some(id) = reference else {
            info!(?code, %message, "the node refused a frame");
            return self.emit(ClientEvent::ServerError { code, message }).await;
        };
        let failed = {
            let mut inner = self.shared.inner.lock();
            match inner.outbox.refused(&id, code, Instant::now().into_std()) {
                Refused::Retry { .. } => {
                    debug!(client_id = %id, ?code, "refused for now; will retry");
                    false
                }
                Refused::Dropped(_) => true,
                Refused::Unknown => !code.is_retryable(),
            }
        };
        if failed {
            info!(client_id = %id, ?code, %message, "send refused");
            let refusal = Refusal {
                code,
                message: message.clone(),
            };
            self.shared.inner.lock().resolve(&id, &Err(refusal));
            self.emit(ClientEvent::SendFailed {
                client_id: id,
                code,
                message,
            })
            .await
        } else {
            Ok(())
        }
    }

    /// Writes typing frames, read markers and outbox items, as far as the rate limit, the
    /// in-flight window and retry waits allow.
    async fn write_pending(
        &self,
        run: &mut Run,
        conn: &mut Connection,
        p: &mut Progress,
    ) -> Result<(), String> {
        p.write_at = None;
        let mut wrote = false;
        loop {
            let now = Instant::now();
            if let Some(bucket) = &mut run.bucket
                && let Err(at) = bucket.take(now.into_std())
            {
                p.write_at = Some(Instant::from_std(at));
                break;
            }
            let frame = {
                let mut inner = self.shared.inner.lock();
                if let Some((conv, active)) = inner.typing.pop_front() {
                    Some(ClientFrame::Typing { conv, active })
                } else if let Some((conv, seq)) = inner.reads.pop_first() {
                    Some(ClientFrame::Read { conv, seq })
                } else {
                    match inner.outbox.next(now.into_std(), self.config.max_in_flight) {
                        Next::Write(frame) => Some(frame),
                        Next::WaitUntil(at) => {
                            p.write_at = Some(Instant::from_std(at));
                            None
                        }
                        Next::Idle => None,
                    }
                }
            };
            let Some(frame) = frame else {
                if let Some(bucket) = &mut run.bucket {
                    bucket.refund();
                }
                break;
            };
            conn.feed(&frame).await?;
            wrote = true;
        }
        if wrote {
            conn.flush().await?;
        }
        Ok(())
    }

    /// Publishes a new status and tells the application.
    async fn set_status(&self, status: Status) -> Result<(), Disconnect> {
        self.shared.status.send_replace(status.clone());
        self.emit(ClientEvent::Status(status)).await
    }

    /// Hands an event to the application, waiting for room in the channel (backpressure).
    /// Fails only when the engine is being shut down.
    async fn emit(&self, event: ClientEvent) -> Result<(), Disconnect> {
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Err(Disconnect::Shutdown),
            // A closed channel means the application does not want events; carry on.
            _ = self.events.send(event) => Ok(()),
        }
    }
}

fn assign_failure(e: ApiError) -> Disconnect {
    match e.code() {
        Some(ErrorCode::NoNode) => Disconnect::NoNode,
        Some(ErrorCode::Revoked) => Disconnect::Revoked,
        Some(ErrorCode::Unauthorized) => Disconnect::Unauthorized {
            message: e.to_string(),
        },
        _ => Disconnect::Controller {
            message: e.to_string(),
        },
    }
}

fn connect_failure(node: NodeId, e: ConnectError) -> Disconnect {
    match e {
        ConnectError::Unauthorized {
            code: ErrorCode::Revoked,
            ..
        } => Disconnect::Revoked,
        ConnectError::Unauthorized { message, .. } => Disconnect::Unauthorized { message },
        ConnectError::Rejected {
            status,
            code,
            message,
        } => Disconnect::Rejected {
            node,
            status,
            code,
            message,
        },
        e @ (ConnectError::Failed(_) | ConnectError::BadUrl { .. }) => Disconnect::ConnectFailed {
            node,
            message: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests;
