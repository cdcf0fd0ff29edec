//! One window is one device: its own device id, session, connection (a client core [`Client`]),
//! cache and saved state, all under `profiles/<window label>/`. This is what makes "Open another
//! device" real: a second window is a second device of the cluster, possibly on another node.
//!
//! The device's *pump* task reads the client core's events, applies them to the cache, and
//! forwards every event to the window's channel (the window decides what deserves a
//! notification). It saves the client's state (cursors and outbox) after
//! changes, so a restart resumes without losing or repeating anything.
//!
//! Invariant: events reach the cache before the state that counts them is saved, so after a
//! crash the cache holds everything up to the saved cursors.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use client::{Api, Client, ClientConfig, ClientEvent, ClientState, Session, Status, StopReason};
use parking_lot::Mutex;
use protocol::model::{ConvKind, EventBody, MemberAction, PresenceState, UserInfo};
use protocol::{ConvId, DeviceId, Millis, UserId};
use serde::{Deserialize, Serialize};
use tauri::ipc::Channel;
use tokio::sync::mpsc;

use crate::backend::{Backend, ServerState};
use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::events::{AppEvent, SessionView, Snapshot, UiEvent};
use crate::store;

/// How often the pump saves the client's state when events changed it.
const SAVE_EVERY: Duration = Duration::from_millis(750);

/// `session.json`: the session and the name given to this device.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredSession {
    session: Session,
    device_name: String,
}

/// One window's device. Shared as `Arc<Device>` between commands and its pump.
pub struct Device {
    /// The window's label.
    pub label: String,
    dir: PathBuf,
    /// This device's id, stable for the profile.
    pub id: DeviceId,
    /// Its history cache.
    pub cache: Cache,
    /// The server it talks to.
    backend: Arc<Backend>,
    /// The app's HTTP client (one connection pool for every device).
    http: reqwest::Client,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    session: Option<StoredSession>,
    client: Option<Client>,
    /// The window's event stream; replaced when the window reloads and connects again.
    sink: Option<Channel<UiEvent>>,
    /// Presence from the last welcome, for a window that connects later.
    presence: Vec<PresenceState>,
    /// A start is in progress (waiting for the server).
    starting: bool,
    /// Where the connection is, for My devices.
    link: Link,
}

/// Where a device's connection is: the node it is on (or was last on) and when it was last
/// connected, for a tester's view of the devices.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Link {
    /// Connected to a node now (resyncing or live).
    pub online: bool,
    /// The node it is on, or was last on.
    pub node: Option<String>,
    /// When it was last connected (now, while it is).
    pub last_seen: Option<Millis>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Device {
    /// Opens the device of window `label` in `dir`, creating its id on first use.
    pub fn open(
        label: &str,
        dir: PathBuf,
        backend: Arc<Backend>,
        http: reqwest::Client,
    ) -> Result<Device> {
        std::fs::create_dir_all(&dir)?;
        let id = client::load_or_create_device_id(&dir.join("device_id"))
            .map_err(|e| Error::Io(std::io::Error::other(e.to_string())))?;
        let cache = Cache::open(&dir.join("cache.sqlite"))?;
        let session = match store::read_json::<StoredSession>(&dir.join("session.json")) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, label, "unreadable session.json; signing out");
                None
            }
        };
        Ok(Device {
            label: label.to_owned(),
            dir,
            id,
            cache,
            backend,
            http,
            inner: Mutex::new(Inner {
                session,
                ..Inner::default()
            }),
        })
    }

    /// Who is signed in here.
    pub fn session_view(&self) -> Option<SessionView> {
        self.inner.lock().session.as_ref().map(|s| SessionView {
            user: s.session.user.clone(),
            device: s.session.device.clone(),
            device_name: s.device_name.clone(),
        })
    }

    /// Where this device's connection is.
    pub fn link(&self) -> Link {
        let mut link = self.inner.lock().link.clone();
        if link.online {
            link.last_seen = Some(now_ms());
        }
        link
    }

    /// The signed-in user's name, if any.
    pub fn username(&self) -> Option<String> {
        self.inner
            .lock()
            .session
            .as_ref()
            .map(|s| s.session.user.username.clone())
    }

    /// Records a fresh session. Signing in as somebody else forgets the previous user's
    /// cache and saved state.
    pub fn sign_in(&self, session: Session, device_name: String) -> Result<SessionView> {
        // Whose cache and state these are survives a revocation (which drops the session), so
        // compare with the owner on disk, not with the session.
        let owner_path = self.dir.join("owner.json");
        let owner = store::read_json::<UserId>(&owner_path).unwrap_or(None);
        if owner != Some(session.user.id) {
            self.cache.clear()?;
            store::remove_file(&self.dir.join("state.json"))?;
            store::write_json(&owner_path, &session.user.id, false)?;
        }
        self.cache.put_users(std::slice::from_ref(&session.user))?;
        let stored = StoredSession {
            session,
            device_name,
        };
        store::write_json(&self.dir.join("session.json"), &stored, true)?;
        let view = SessionView {
            user: stored.session.user.clone(),
            device: stored.session.device.clone(),
            device_name: stored.device_name.clone(),
        };
        self.inner.lock().session = Some(stored);
        Ok(view)
    }

    /// Signs out: stops the connection and forgets the session, the saved state and the cache.
    pub async fn sign_out(&self) -> Result<()> {
        let client = {
            let mut inner = self.inner.lock();
            inner.session = None;
            inner.client.take()
        };
        if let Some(client) = client {
            client.shutdown().await;
        }
        store::remove_file(&self.dir.join("session.json"))?;
        store::remove_file(&self.dir.join("state.json"))?;
        store::remove_file(&self.dir.join("owner.json"))?;
        self.cache.clear()?;
        Ok(())
    }

    /// Attaches the window's event stream and returns what the window should show now. Starts
    /// the connection if it is not running (once the server is ready).
    pub fn connect(self: &Arc<Self>, sink: Channel<UiEvent>) -> Result<Snapshot> {
        let (session, client, start) = {
            let mut inner = self.inner.lock();
            let session = inner.session.clone().ok_or(Error::NotSignedIn)?;
            inner.sink = Some(sink);
            let start = inner.client.is_none() && !inner.starting;
            if start {
                inner.starting = true;
            }
            (session, inner.client.clone(), start)
        };
        if start {
            let device = self.clone();
            tauri::async_runtime::spawn(async move {
                let result = device.start().await;
                device.inner.lock().starting = false;
                if let Err(e) = result {
                    tracing::warn!(error = %e, label = %device.label, "could not start the connection");
                }
            });
        }
        let (status, pending) = match &client {
            Some(c) => (c.status(), c.state().outbox),
            None => (Status::Connecting, self.saved_state().outbox),
        };
        let presence = self.inner.lock().presence.clone();
        Ok(Snapshot {
            session: SessionView {
                user: session.session.user.clone(),
                device: session.session.device.clone(),
                device_name: session.device_name.clone(),
            },
            status,
            conversations: self.cache.conversations()?,
            users: self.cache.users()?,
            presence,
            pending,
        })
    }

    /// Waits for the server, then starts the client core and its pump.
    async fn start(self: &Arc<Self>) -> Result<()> {
        // Tell the window about the server while it starts (the local cluster takes seconds).
        let mut watch = self.backend.watch();
        let url = loop {
            let state = watch.borrow_and_update().clone();
            self.emit(UiEvent::App(AppEvent::Server {
                state: state.clone(),
            }));
            match state {
                ServerState::Ready { url, .. } => break url,
                ServerState::Failed { message, .. } => return Err(Error::NoServer(message)),
                ServerState::Unset => return Err(Error::NoServer("no server chosen".into())),
                ServerState::Starting { .. } => {}
            }
            if watch.changed().await.is_err() {
                return Err(Error::NoServer("the app is shutting down".into()));
            }
        };
        let mut session = {
            let inner = self.inner.lock();
            match &inner.session {
                Some(s) => s.session.clone(),
                None => return Err(Error::NotSignedIn),
            }
        };
        // A local cluster gets new ports on every launch; the token stays valid.
        session.server = url;
        let config = ClientConfig {
            http: Some(self.http.clone()),
            ..ClientConfig::default()
        };
        let (client, events) = Client::start(&session, self.saved_state(), config)?;
        let signed_out = {
            let mut inner = self.inner.lock();
            if inner.session.is_none() {
                true
            } else {
                inner.client = Some(client.clone());
                false
            }
        };
        if signed_out {
            // Signed out while we waited for the server.
            client.shutdown().await;
            return Err(Error::NotSignedIn);
        }
        tauri::async_runtime::spawn(pump(self.clone(), client, events));
        Ok(())
    }

    /// The running client, or why there is none.
    pub fn client(&self) -> Result<Client> {
        let inner = self.inner.lock();
        match (&inner.client, &inner.session) {
            (Some(c), _) => Ok(c.clone()),
            (None, Some(_)) => Err(Error::NoServer(
                "still connecting to the server; try again in a moment".into(),
            )),
            (None, None) => Err(Error::NotSignedIn),
        }
    }

    /// The controller API with this device's token (works before the engine is live).
    pub async fn api(&self) -> Result<Api> {
        let session = {
            let inner = self.inner.lock();
            if let Some(c) = &inner.client {
                return Ok(c.api().clone());
            }
            inner.session.clone().ok_or(Error::NotSignedIn)?.session
        };
        let url = self.backend.url().await?;
        Ok(Api::with_http(&url, self.http.clone())?.with_token(session.token))
    }

    /// Sends one event to the window, if it is listening.
    pub fn emit(&self, event: UiEvent) {
        let sink = self.inner.lock().sink.clone();
        if let Some(sink) = sink
            && let Err(e) = sink.send(event)
        {
            tracing::debug!(error = %e, label = %self.label, "window is not listening");
        }
    }

    /// The state saved on disk (fresh if none or unreadable).
    fn saved_state(&self) -> ClientState {
        store::read_json(&self.dir.join("state.json"))
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "unreadable state.json; starting fresh");
                None
            })
            .unwrap_or_default()
    }

    /// Saves the running client's state (cursors and outbox).
    pub fn save_state(&self) {
        let client = self.inner.lock().client.clone();
        if let Some(client) = client {
            self.write_state(&client.state());
        }
    }

    /// Saves `state` only if `user` is still the one signed in: a client stopping after a
    /// sign-out must not write its cursors back for the next user.
    fn write_state_for(&self, user: UserId, state: &ClientState) {
        if self.me() == Some(user) {
            self.write_state(state);
        }
    }

    fn write_state(&self, state: &ClientState) {
        if let Err(e) = store::write_json(&self.dir.join("state.json"), state, true) {
            tracing::warn!(error = %e, label = %self.label, "could not save the client state");
        }
    }

    /// Stops the connection (the window closed, or the app quits) and saves the final state.
    pub async fn shutdown(&self) {
        let client = {
            let mut inner = self.inner.lock();
            inner.sink = None;
            inner.link.online = false;
            inner.client.take()
        };
        if let Some(client) = client {
            let state = client.shutdown().await;
            self.write_state(&state);
        }
    }

    fn me(&self) -> Option<UserId> {
        self.inner
            .lock()
            .session
            .as_ref()
            .map(|s| s.session.user.id)
    }

    /// Follows the connection for [`Device::link`].
    fn on_status(&self, status: &Status) {
        let mut inner = self.inner.lock();
        let link = &mut inner.link;
        let was_online = link.online;
        match status.node() {
            Some(node) => {
                link.online = true;
                link.node = Some(node.to_string());
            }
            None => link.online = false,
        }
        if link.online || was_online {
            link.last_seen = Some(now_ms());
        }
    }

    fn on_stopped(&self, reason: &StopReason) {
        if matches!(reason, StopReason::Shutdown) {
            return;
        }
        {
            let mut inner = self.inner.lock();
            inner.session = None;
            inner.client = None;
        }
        let _ = store::remove_file(&self.dir.join("session.json"));
        self.emit(UiEvent::App(AppEvent::SignedOut {
            reason: reason.to_string(),
        }));
    }
}

/// Reads the client core's events until the engine stops: cache, forward, save.
async fn pump(device: Arc<Device>, client: Client, mut events: mpsc::Receiver<ClientEvent>) {
    let Some(me) = device.me() else { return };
    let mut dirty = false;
    let mut tick = tokio::time::interval(SAVE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = tick.tick() => {
                if dirty {
                    device.write_state_for(me, &client.state());
                    dirty = false;
                }
                continue;
            }
        };
        let Some(event) = event else { break };
        match &event {
            ClientEvent::Status(status) => device.on_status(status),
            ClientEvent::Event(e) => {
                let node = device.inner.lock().link.node.clone();
                if let Err(err) = device.cache.record_receipt(e, now_ms(), node.as_deref()) {
                    tracing::debug!(error = %err, "cache: receipt");
                }
            }
            _ => {}
        }
        match &event {
            ClientEvent::Status(Status::Stopped { reason }) => {
                device.emit(UiEvent::Client(event.clone()));
                device.on_stopped(reason);
                continue;
            }
            ClientEvent::Welcome(welcome) => {
                if let Err(e) = device.cache.replace_conversations(&welcome.conversations) {
                    tracing::warn!(error = %e, "cache: welcome");
                }
                let mut users = vec![welcome.user.clone()];
                users.extend(welcome.conversations.iter().filter_map(|c| c.peer.clone()));
                let _ = device.cache.put_users(&users);
                device.inner.lock().presence = welcome.presence.clone();
                let rooms: Vec<ConvId> = welcome
                    .conversations
                    .iter()
                    .filter(|c| c.kind == ConvKind::Room)
                    .map(|c| c.id)
                    .collect();
                tauri::async_runtime::spawn(learn_members(
                    device.clone(),
                    client.api().clone(),
                    rooms,
                ));
            }
            ClientEvent::Event(e) => {
                if let Err(err) = device.cache.apply_event(e, me) {
                    tracing::warn!(error = %err, "cache: event");
                }
                dirty = true;
                if let EventBody::Member { action, user } = &e.body {
                    on_member(&device, &client, e.conv, *action, *user, me);
                }
            }
            ClientEvent::Read { conv, user, seq } if *user == me => {
                let _ = device.cache.set_read(*conv, *seq);
                dirty = true;
            }
            ClientEvent::Acked(_) | ClientEvent::SendFailed { .. } => dirty = true,
            _ => {}
        }
        device.emit(UiEvent::Client(event));
    }
    device.write_state_for(me, &client.state());
}

/// A membership change: a conversation I was just added to needs its summary; one I left goes.
fn on_member(
    device: &Arc<Device>,
    client: &Client,
    conv: ConvId,
    action: MemberAction,
    user: UserId,
    me: UserId,
) {
    if action == MemberAction::Left && user == me {
        let _ = device.cache.remove_conversation(conv);
        device.emit(UiEvent::App(AppEvent::Removed { conv }));
        return;
    }
    let known = device.cache.conversation(conv).ok().flatten().is_some();
    let device = device.clone();
    let api = client.api().clone();
    tauri::async_runtime::spawn(async move {
        if !known {
            match api.conversation(conv).await {
                Ok(summary) => {
                    let _ = device.cache.put_conversation(&summary);
                    if let Some(peer) = &summary.peer {
                        let _ = device.cache.put_users(std::slice::from_ref(peer));
                    }
                    device.emit(UiEvent::App(AppEvent::Conversation {
                        summary: Box::new(summary),
                    }));
                }
                Err(e) => tracing::debug!(error = %e, "new conversation not readable yet"),
            }
        }
        if user != me {
            learn_members(device, api, vec![conv]).await;
        }
    });
}

/// Fetches the members of conversations and tells the window: their names (to name the
/// senders of room messages), read positions, and presence (of contacts new since the welcome).
async fn learn_members(device: Arc<Device>, api: Api, convs: Vec<ConvId>) {
    let mut users: Vec<UserInfo> = Vec::new();
    for conv in convs {
        if let Ok(members) = api.members(conv).await {
            users.extend(members.iter().map(|m| m.user.clone()));
            device.emit(UiEvent::App(AppEvent::Members { conv, members }));
        }
    }
    if !users.is_empty() {
        let _ = device.cache.put_users(&users);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::model::ConversationSummary;

    fn session(user: i64, device: &DeviceId) -> Session {
        Session {
            server: "http://127.0.0.1:9".into(),
            token: "t".into(),
            user: UserInfo {
                id: UserId(user),
                username: format!("user{user}"),
            },
            device: device.clone(),
            expires_at: i64::MAX,
        }
    }

    fn conversation() -> ConversationSummary {
        ConversationSummary {
            id: ConvId(1),
            kind: ConvKind::Direct,
            name: "x".into(),
            peer: None,
            public: false,
            member_count: 2,
            last_seq: 0,
            last_message: None,
            read_seq: 0,
            unread: 0,
            peer_read_seq: None,
            created_at: 0,
        }
    }

    #[tokio::test]
    async fn one_users_history_never_reaches_the_next() -> Result<()> {
        let dir =
            std::env::temp_dir().join(format!("chat-desktop-device-{}", uuid::Uuid::new_v4()));
        let open = |dir: PathBuf| {
            let backend = Arc::new(Backend::new(crate::store::Paths::new(dir.clone())));
            Device::open("main", dir, backend, reqwest::Client::new())
        };
        let device = open(dir.clone())?;
        device.sign_in(session(1, &device.id), "laptop".into())?;
        device.cache.put_conversation(&conversation())?;
        store::write_json(&dir.join("state.json"), &ClientState::default(), true)?;

        // Revoked: the session goes, the cache stays for the same user signing in again.
        device.inner.lock().session = None;
        device.sign_in(session(1, &device.id), "laptop".into())?;
        assert_eq!(device.cache.conversations()?.len(), 1);

        // Somebody else on this device starts from nothing.
        device.inner.lock().session = None;
        device.sign_in(session(2, &device.id), "laptop".into())?;
        assert!(device.cache.conversations()?.is_empty());
        assert!(!dir.join("state.json").exists());

        // Signing out forgets everything, and the device keeps its id.
        let id = device.id.clone();
        device.sign_out().await?;
        assert!(device.session_view().is_none());
        assert!(!dir.join("session.json").exists());
        assert_eq!(open(dir.clone())?.id, id);
        std::fs::remove_dir_all(dir)?;
        Ok(())
    }
}
