//! The handle an application holds: [`Client`] starts the connection engine, queues what the
//! application sends, and reads the engine's state. Cheap to clone; the engine stops when the
//! last clone is dropped or [`Client::shutdown`] is called.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use protocol::model::{Attachment, MessageKind};
use protocol::ws::{Ack, Cursor, DeleteMessage, EditMessage, ReactMessage, SendMessage};
use protocol::{
    AttachmentId, ClientMsgId, ConvId, DeviceId, MessageId, Millis, NodeId, Seq, limits,
};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::api::{Api, ApiError};
use crate::auth::Session;
use crate::engine::{Engine, Inner, Shared};
use crate::events::{ClientEvent, Refusal, Status, StopReason};
use crate::failover::BackoffPolicy;
use crate::outbox::{Outbox, OutboxItem, Outgoing};
use crate::rate::RateLimit;
use crate::state::ClientState;
use crate::sync::SyncState;

/// How the engine behaves. `ClientConfig::default()` suits an interactive client.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Room in the event channel. When it is full the engine stops reading the socket.
    pub event_capacity: usize,
    /// Waits between reconnection attempts.
    pub backoff: BackoffPolicy,
    /// How long a failed node stays out of the assignments asked for.
    pub exclusion_ttl: Duration,
    /// Time allowed to open the socket (TCP, TLS and upgrade).
    pub connect_timeout: Duration,
    /// Time allowed between `hello` and `welcome`.
    pub welcome_timeout: Duration,
    /// After this long without hearing from the node, ping it (and again as often while it
    /// stays silent). The node answers every ping at once.
    pub ping_interval: Duration,
    /// A node not heard from (no frame, no pong) for this long is taken for dead: frozen,
    /// unreachable or half-closed. The session ends and the engine fails over, excluding it.
    /// The default is within the registry's lease (5 s), so a device leaves a frozen node
    /// about when the cluster drops it. At least twice `ping_interval`.
    pub silence_timeout: Duration,
    /// Time allowed for the close handshake when the engine closes a socket.
    pub close_timeout: Duration,
    /// Pacing of frames written to the node; `None` writes as fast as the outbox fills.
    pub send_rate: Option<RateLimit>,
    /// Outbox items written and not yet answered, at most.
    pub max_in_flight: usize,
    /// An HTTP client to share with other clients of the process (see
    /// [`crate::api::http_client`]); `None` makes one for this client.
    pub http: Option<reqwest::Client>,
    /// Trust for `wss://` nodes (see [`crate::api::tls_trusting`]); `None`: the public roots.
    /// Give `http` a client made with the same trust ([`crate::api::http_client_with_tls`]).
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            event_capacity: 4096,
            backoff: BackoffPolicy::default(),
            exclusion_ttl: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            welcome_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(2),
            silence_timeout: Duration::from_millis(4_500),
            close_timeout: Duration::from_secs(1),
            send_rate: Some(RateLimit::default()),
            max_in_flight: 128,
            http: None,
            tls: None,
        }
    }
}

impl ClientConfig {
    /// The config with values that could make the engine spin or panic raised to sane minimums.
    fn sanitized(mut self) -> Self {
        let floor = Duration::from_millis(10);
        self.event_capacity = self.event_capacity.max(1);
        self.backoff.base = self.backoff.base.max(Duration::from_millis(1));
        self.backoff.cap = self.backoff.cap.max(self.backoff.base);
        self.connect_timeout = self.connect_timeout.max(floor);
        self.welcome_timeout = self.welcome_timeout.max(floor);
        self.ping_interval = self.ping_interval.max(floor);
        self.silence_timeout = self.silence_timeout.max(self.ping_interval * 2);
        self.max_in_flight = self.max_in_flight.max(1);
        self
    }
}

/// Why a command on the handle failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The engine has stopped for good; nothing more will be sent.
    #[error("the client has stopped: {0}")]
    Stopped(StopReason),
    /// The message is over a protocol limit and would be refused.
    #[error("{what} is {size} bytes; the limit is {max}")]
    TooLarge {
        /// What is too large.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// No answer in the time given. The item stays in the outbox and is still sent.
    #[error("no answer within {} ms (the message stays queued)", .0.as_millis())]
    Timeout(Duration),
    /// The server refused it for good.
    #[error("refused by the server: {0}")]
    Refused(Refusal),
    /// A controller request failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// [`Client::start`] was called outside a Tokio runtime.
    #[error("the client must be started within a Tokio runtime")]
    NoRuntime,
}

/// A message to send, before it has a client id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Draft {
    /// Where to.
    pub conv: ConvId,
    /// Text, or the kind of attachment.
    pub kind: MessageKind,
    /// The text, or the caption of an attachment.
    pub text: String,
    /// An attachment uploaded to `conv` beforehand.
    pub attachment: Option<AttachmentId>,
    /// The message this one answers.
    pub reply_to: Option<MessageId>,
}

impl Draft {
    /// A text message.
    pub fn text(conv: ConvId, text: impl Into<String>) -> Draft {
        Draft {
            conv,
            kind: MessageKind::Text,
            text: text.into(),
            attachment: None,
            reply_to: None,
        }
    }

    /// A message carrying an uploaded attachment, its kind chosen from the attachment's type.
    pub fn attachment(attachment: &Attachment, caption: impl Into<String>) -> Draft {
        Draft {
            conv: attachment.conv,
            kind: MessageKind::for_mime(&attachment.mime),
            text: caption.into(),
            attachment: Some(attachment.id.clone()),
            reply_to: None,
        }
    }

    /// The same message as a reply to `message`.
    pub fn reply_to(mut self, message: MessageId) -> Draft {
        self.reply_to = Some(message);
        self
    }

    /// The outbox item for this message under `client_id`, for [`Client::enqueue`] and
    /// [`Client::enqueue_and_wait`].
    pub fn into_outgoing(self, client_id: ClientMsgId) -> Outgoing {
        Outgoing::Send(self.into_send(client_id))
    }

    fn into_send(self, client_id: ClientMsgId) -> SendMessage {
        SendMessage {
            conv: self.conv,
            client_id,
            kind: self.kind,
            text: self.text,
            attachment: self.attachment,
            reply_to: self.reply_to,
        }
    }
}

/// A fresh client message id (a time-ordered UUID, which sorts by send time in logs).
pub fn new_client_id() -> ClientMsgId {
    ClientMsgId::new(uuid::Uuid::now_v7().simple().to_string())
        .expect("32 hex digits are a valid client message id")
}

/// A connected (or connecting) device: the handle on its connection engine.
///
/// Create one with [`Client::start`] inside a Tokio runtime. Commands that send return at
/// once with the client id; the engine writes them when it is live and keeps them until the
/// server acknowledges them.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
    api: Api,
    session: Session,
    status: watch::Receiver<Status>,
    cancel: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
    /// Cancels the engine when the last clone of the handle goes.
    _stop_on_drop: DropGuard,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("user", &self.inner.session.user.username)
            .field("device", &self.inner.session.device)
            .field("status", &*self.inner.status.borrow())
            .finish()
    }
}

impl Client {
    /// Starts the engine for `session`, resuming from `state` (cursors and outbox; use
    /// `ClientState::default()` for a fresh device). Returns the handle and the event
    /// channel, which the application should read continuously.
    ///
    /// Must be called within a Tokio runtime ([`ClientError::NoRuntime`] otherwise).
    pub fn start(
        session: &Session,
        state: ClientState,
        config: ClientConfig,
    ) -> Result<(Client, mpsc::Receiver<ClientEvent>), ClientError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ClientError::NoRuntime)?;
        let config = config.sanitized();
        let api = match &config.http {
            Some(http) => session.api_with(http.clone())?,
            None => session.api()?,
        };
        let (events_tx, events_rx) = mpsc::channel(config.event_capacity);
        let (status_tx, status_rx) = watch::channel(Status::Connecting);
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                sync: SyncState::new(&state.cursors),
                outbox: Outbox::new(state.outbox),
                reads: Default::default(),
                typing: Default::default(),
                waiters: Default::default(),
                teaching: None,
            }),
            wake: Notify::new(),
            retry: Notify::new(),
            status: status_tx,
        });
        let cancel = CancellationToken::new();
        let engine = Engine {
            api: api.clone(),
            token: session.token.clone(),
            device: session.device.clone(),
            config,
            shared: shared.clone(),
            events: events_tx,
            cancel: cancel.clone(),
        };
        let task = runtime.spawn(engine.run());
        let handle = Handle {
            shared,
            api,
            session: session.clone(),
            status: status_rx,
            _stop_on_drop: cancel.clone().drop_guard(),
            cancel,
            task: Mutex::new(Some(task)),
        };
        Ok((
            Client {
                inner: Arc::new(handle),
            },
            events_rx,
        ))
    }

    /// The authenticated controller API of this session.
    pub fn api(&self) -> &Api {
        &self.inner.api
    }

    /// The session the client runs with.
    pub fn session(&self) -> &Session {
        &self.inner.session
    }

    /// This device.
    pub fn device(&self) -> &DeviceId {
        &self.inner.session.device
    }

    /// Sends a text message. Returns its client id at once.
    pub fn send_text(
        &self,
        conv: ConvId,
        text: impl Into<String>,
    ) -> Result<ClientMsgId, ClientError> {
        self.send(Draft::text(conv, text))
    }

    /// Sends a text message replying to `reply_to`.
    pub fn reply(
        &self,
        conv: ConvId,
        reply_to: MessageId,
        text: impl Into<String>,
    ) -> Result<ClientMsgId, ClientError> {
        self.send(Draft::text(conv, text).reply_to(reply_to))
    }

    /// Sends a message carrying an attachment uploaded beforehand (see [`Client::upload`]).
    pub fn send_attachment(
        &self,
        attachment: &Attachment,
        caption: impl Into<String>,
    ) -> Result<ClientMsgId, ClientError> {
        self.send(Draft::attachment(attachment, caption))
    }

    /// Sends a message with a fresh client id. Returns the id at once.
    pub fn send(&self, draft: Draft) -> Result<ClientMsgId, ClientError> {
        self.send_with_id(new_client_id(), draft)
    }

    /// Sends a message with a client id chosen by the caller. Sending the same id again (from
    /// this or another connection of the device) is answered with the first send's ack,
    /// marked `duplicate`.
    pub fn send_with_id(
        &self,
        client_id: ClientMsgId,
        draft: Draft,
    ) -> Result<ClientMsgId, ClientError> {
        self.enqueue(Outgoing::Send(draft.into_send(client_id)))
    }

    /// Changes the text of one of my messages.
    pub fn edit(
        &self,
        conv: ConvId,
        target: MessageId,
        text: impl Into<String>,
    ) -> Result<ClientMsgId, ClientError> {
        self.enqueue(Outgoing::Edit(EditMessage {
            conv,
            client_id: new_client_id(),
            target,
            text: text.into(),
        }))
    }

    /// Deletes one of my messages.
    pub fn delete(&self, conv: ConvId, target: MessageId) -> Result<ClientMsgId, ClientError> {
        self.enqueue(Outgoing::Delete(DeleteMessage {
            conv,
            client_id: new_client_id(),
            target,
        }))
    }

    /// Reacts to a message (anyone's) with an emoji, or takes that reaction back (`on` false).
    /// The server refuses what [`limits::reaction_valid`] refuses.
    pub fn react(
        &self,
        conv: ConvId,
        target: MessageId,
        emoji: impl Into<String>,
        on: bool,
    ) -> Result<ClientMsgId, ClientError> {
        self.enqueue(Outgoing::React(ReactMessage {
            conv,
            client_id: new_client_id(),
            target,
            emoji: emoji.into(),
            on,
        }))
    }

    /// Puts anything that needs an ack in the outbox. Returns its client id at once.
    pub fn enqueue(&self, op: Outgoing) -> Result<ClientMsgId, ClientError> {
        let item = self.prepare(op)?;
        let id = item.op.client_id().clone();
        self.inner.shared.inner.lock().outbox.push(item);
        self.inner.shared.wake.notify_one();
        Ok(id)
    }

    /// Sends a message and waits for its ack. On [`ClientError::Timeout`] the message stays
    /// in the outbox and is still sent; the ack then arrives as an event.
    pub async fn send_and_wait_ack(
        &self,
        draft: Draft,
        timeout: Duration,
    ) -> Result<Ack, ClientError> {
        self.enqueue_and_wait(Outgoing::Send(draft.into_send(new_client_id())), timeout)
            .await
    }

    /// [`Client::enqueue`], then waits for the ack (or the refusal).
    pub async fn enqueue_and_wait(
        &self,
        op: Outgoing,
        timeout: Duration,
    ) -> Result<Ack, ClientError> {
        let item = self.prepare(op)?;
        let id = item.op.client_id().clone();
        let (tx, rx) = oneshot::channel();
        {
            // Waiter first, under the same lock: the ack cannot slip in between.
            let mut inner = self.inner.shared.inner.lock();
            inner.waiters.entry(id.clone()).or_default().push(tx);
            inner.outbox.push(item);
        }
        self.inner.shared.wake.notify_one();
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(ack))) => Ok(ack),
            Ok(Ok(Err(refusal))) => Err(ClientError::Refused(refusal)),
            Ok(Err(_)) => Err(ClientError::Stopped(self.stop_reason())),
            Err(_) => {
                let mut inner = self.inner.shared.inner.lock();
                if let Some(waiters) = inner.waiters.get_mut(&id) {
                    waiters.retain(|w| !w.is_closed());
                    if waiters.is_empty() {
                        inner.waiters.remove(&id);
                    }
                }
                Err(ClientError::Timeout(timeout))
            }
        }
    }

    /// Uploads a file to a conversation, ready for [`Client::send_attachment`].
    pub async fn upload(
        &self,
        conv: ConvId,
        name: &str,
        mime: &str,
        bytes: impl Into<bytes::Bytes>,
    ) -> Result<Attachment, ClientError> {
        let bytes: bytes::Bytes = bytes.into();
        Ok(self.inner.api.upload(conv, name, mime, bytes).await?)
    }

    /// Tells the conversation I am typing (or stopped). Dropped when not live: a stale
    /// typing indicator is worse than none.
    pub fn typing(&self, conv: ConvId, active: bool) {
        if self.status().is_live() {
            self.inner.shared.inner.lock().queue_typing(conv, active);
            self.inner.shared.wake.notify_one();
        }
    }

    /// Marks a conversation read up to `seq`. Kept until written (the highest per
    /// conversation), so it survives reconnects.
    pub fn mark_read(&self, conv: ConvId, seq: Seq) {
        self.inner.shared.inner.lock().queue_read(conv, seq);
        self.inner.shared.wake.notify_one();
    }

    /// The cursors: the highest `seq` delivered per conversation.
    pub fn cursors(&self) -> Vec<Cursor> {
        self.inner.shared.inner.lock().sync.cursors()
    }

    /// The cursor of one conversation.
    pub fn cursor(&self, conv: ConvId) -> Option<Seq> {
        self.inner.shared.inner.lock().sync.cursor(conv)
    }

    /// How many sends wait for an ack.
    pub fn pending(&self) -> usize {
        self.inner.shared.inner.lock().outbox.len()
    }

    /// A snapshot of cursors and outbox, to save and resume from later.
    pub fn state(&self) -> ClientState {
        let inner = self.inner.shared.inner.lock();
        ClientState {
            cursors: inner.sync.cursors(),
            outbox: inner.outbox.items(),
        }
    }

    /// The current status.
    pub fn status(&self) -> Status {
        self.inner.status.borrow().clone()
    }

    /// The teaching mode the node said is on, if any: a guarantee is broken on purpose (show
    /// [`protocol::teaching::Teaching::status_line`] beside the status).
    pub fn teaching(&self) -> Option<protocol::teaching::Teaching> {
        self.inner.shared.inner.lock().teaching
    }

    /// Ends a wait between reconnection attempts now (a person pressed "Retry now"). Does
    /// nothing while connected or connecting: only a wait that is under way is cut short.
    pub fn retry_now(&self) {
        self.inner.shared.retry.notify_waiters();
    }

    /// The node of the current session, if connected.
    pub fn node(&self) -> Option<NodeId> {
        self.inner.status.borrow().node().cloned()
    }

    /// A receiver that sees every status change (a `tokio::sync::watch`).
    pub fn watch_status(&self) -> watch::Receiver<Status> {
        self.inner.status.clone()
    }

    /// Waits until the engine is live, and returns the node. Fails if the engine stops first
    /// or `timeout` passes.
    pub async fn wait_live(&self, timeout: Duration) -> Result<NodeId, ClientError> {
        let mut rx = self.watch_status();
        let wait = async {
            loop {
                {
                    let status = rx.borrow_and_update();
                    match &*status {
                        Status::Live { node } => return Ok(node.clone()),
                        Status::Stopped { reason } => {
                            return Err(ClientError::Stopped(reason.clone()));
                        }
                        _ => {}
                    }
                }
                if rx.changed().await.is_err() {
                    return Err(ClientError::Stopped(StopReason::Shutdown));
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or(Err(ClientError::Timeout(timeout)))
    }

    /// Stops the engine: closes the socket cleanly and waits for the task to end. Returns the
    /// final state, to save. Other clones of the handle see `Stopped`.
    pub async fn shutdown(&self) -> ClientState {
        self.inner.cancel.cancel();
        let task = self.inner.task.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
        self.state()
    }

    fn stop_reason(&self) -> StopReason {
        match &*self.inner.status.borrow() {
            Status::Stopped { reason } => reason.clone(),
            _ => StopReason::Shutdown,
        }
    }

    /// Checks an item against the limits and wraps it for the outbox.
    fn prepare(&self, op: Outgoing) -> Result<OutboxItem, ClientError> {
        if let Status::Stopped { reason } = &*self.inner.status.borrow() {
            return Err(ClientError::Stopped(reason.clone()));
        }
        let text_len = match &op {
            Outgoing::Send(m) => m.text.len(),
            Outgoing::Edit(m) => m.text.len(),
            Outgoing::Delete(_) | Outgoing::React(_) => 0,
        };
        if text_len > limits::MAX_TEXT_BYTES {
            return Err(ClientError::TooLarge {
                what: "the text",
                size: text_len,
                max: limits::MAX_TEXT_BYTES,
            });
        }
        // A frame over the node's limit would get the whole socket closed (1009).
        let frame_len = serde_json::to_vec(&op.to_frame()).map_or(usize::MAX, |v| v.len());
        if frame_len > limits::MAX_FRAME_BYTES {
            return Err(ClientError::TooLarge {
                what: "the frame",
                size: frame_len,
                max: limits::MAX_FRAME_BYTES,
            });
        }
        Ok(OutboxItem {
            op,
            queued_at: now_ms(),
        })
    }
}

fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_valid_and_distinct() {
        let a = new_client_id();
        let b = new_client_id();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
    }

    #[test]
    fn drafts() -> Result<(), protocol::ids::IdError> {
        let att = Attachment {
            id: AttachmentId::new("a1")?,
            name: "cat.png".into(),
            mime: "image/png".into(),
            size: 3,
            conv: ConvId(4),
        };
        let d = Draft::attachment(&att, "look").reply_to(MessageId(9));
        assert_eq!(d.conv, ConvId(4));
        assert_eq!(d.kind, MessageKind::Image);
        assert_eq!(d.reply_to, Some(MessageId(9)));
        let m = d.into_send(ClientMsgId::new("c")?);
        assert_eq!(m.attachment, Some(att.id));
        Ok(())
    }

    #[test]
    fn start_needs_a_runtime() -> Result<(), protocol::ids::IdError> {
        let session = Session {
            server: "http://127.0.0.1:9".into(),
            token: "t".into(),
            user: protocol::model::UserInfo {
                id: protocol::UserId(1),
                username: "alice".into(),
            },
            device: DeviceId::new("d1")?,
            expires_at: 0,
        };
        assert!(matches!(
            Client::start(&session, ClientState::default(), ClientConfig::default()),
            Err(ClientError::NoRuntime)
        ));
        Ok(())
    }

    #[test]
    fn zero_durations_are_raised() {
        let c = ClientConfig {
            ping_interval: Duration::ZERO,
            event_capacity: 0,
            max_in_flight: 0,
            ..ClientConfig::default()
        }
        .sanitized();
        assert!(c.ping_interval > Duration::ZERO);
        assert_eq!(c.event_capacity, 1);
        assert_eq!(c.max_in_flight, 1);
    }
}
