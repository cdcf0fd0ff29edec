//! Every command the UI may invoke. Each one finds the calling window's device (a window is a
//! device, see `device`), does one thing through the client core, and returns a typed value
//! or an [`Error`] that crosses as `{ kind, message }`. `ui/src/ipc/commands.ts` is the typed
//! mirror of this file; `build.rs` lists the names for the capability files.

use std::sync::Arc;

use client::{HistoryRange, Session};
use protocol::http::{CreateRoomRequest, DeviceInfo, RoomListing, ServerInfo};
use protocol::model::{ConversationSummary, Event, MemberInfo, UserInfo};
use protocol::{ConvId, DeviceId, MessageId, Seq, limits};
use serde::Serialize;
use tauri::ipc::{Channel, InvokeBody, Request};
use tauri::{AppHandle, Manager, State, WebviewUrl, WebviewWindow, WebviewWindowBuilder};

use crate::attachments;
use crate::backend::{ClusterView, ServerState};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::events::{AppEvent, Boot, SessionView, Snapshot, UiEvent};
use crate::state::AppState;
use crate::store::ServerChoice;

/// Events per history page.
const PAGE: u32 = 50;

fn device_of(state: &AppState, window: &WebviewWindow) -> Result<Arc<Device>> {
    state.device(window.label())
}

/// A device name to suggest: the machine's name, and the window's number for extra devices.
fn suggested_device_name(label: &str) -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "Desktop".to_owned());
    match label.strip_prefix("device-") {
        Some(n) => format!("{host} (window {n})"),
        None => host,
    }
}

/// What the window should show first.
#[tauri::command]
pub fn bootstrap(window: WebviewWindow, state: State<'_, AppState>) -> Result<Boot> {
    let device = device_of(&state, &window)?;
    let suggested_username = if window.label() == "main" {
        None
    } else {
        state.open_device("main").and_then(|d| d.username())
    };
    Ok(Boot {
        label: window.label().to_owned(),
        main: window.label() == "main",
        server: state.backend.state(),
        session: device.session_view(),
        suggested_device_name: suggested_device_name(window.label()),
        suggested_username,
    })
}

/// The first-run choice: start a local cluster, or use a server at a URL. Remembered; a
/// remote server is checked first so a typo is caught here.
#[tauri::command]
pub async fn choose_server(
    state: State<'_, AppState>,
    choice: ServerChoice,
) -> Result<ServerState> {
    let choice = match choice {
        ServerChoice::Remote { url } => {
            let api = client::Api::with_http(url.trim(), state.http.clone())?;
            api.health().await?;
            ServerChoice::Remote {
                url: api.base_url().trim_end_matches('/').to_owned(),
            }
        }
        ServerChoice::Local => ServerChoice::Local,
    };
    state.set_choice(Some(choice.clone()))?;
    // A failed start is reported in the state; the UI offers to retry.
    let _ = state.backend.start(choice).await;
    Ok(state.backend.state())
}

/// Forgets the server choice (the next launch asks again). Signs every window out.
#[tauri::command]
pub async fn forget_server(app: AppHandle, state: State<'_, AppState>) -> Result<()> {
    for device in state.all_devices() {
        device.sign_out().await?;
    }
    state.set_choice(None)?;
    state.backend.shutdown().await;
    app.restart()
}

/// Where the server stands now.
#[tauri::command]
pub fn server_state(state: State<'_, AppState>) -> ServerState {
    state.backend.state()
}

/// The server's limits (attachment size and types, text size).
#[tauri::command]
pub async fn server_info(state: State<'_, AppState>) -> Result<ServerInfo> {
    state.server_info().await
}

/// Creates an account.
#[tauri::command]
pub async fn register(
    state: State<'_, AppState>,
    username: String,
    password: String,
) -> Result<UserInfo> {
    let url = state.backend.url().await?;
    Ok(client::register(&url, username.trim(), &password).await?)
}

/// Signs this window's device in.
#[tauri::command]
pub async fn login(
    window: WebviewWindow,
    state: State<'_, AppState>,
    username: String,
    password: String,
    device_name: String,
) -> Result<SessionView> {
    let device = device_of(&state, &window)?;
    let url = state.backend.url().await?;
    let name = device_name.trim();
    let name = if name.is_empty() {
        suggested_device_name(window.label())
    } else {
        name.chars().take(limits::NAME_MAX_CHARS).collect()
    };
    let session: Session =
        client::login(&url, username.trim(), &password, &device.id, &name).await?;
    let _ = window.set_title(&format!(
        "Cluster Chat — {} · {name}",
        session.user.username
    ));
    device.sign_in(session, name)
}

/// Signs this window's device out (the outbox is dropped).
#[tauri::command]
pub async fn logout(window: WebviewWindow, state: State<'_, AppState>) -> Result<()> {
    device_of(&state, &window)?.sign_out().await
}

/// Attaches the window's event stream and starts its connection. Called again after a
/// reload, it just swaps the stream.
#[tauri::command]
pub fn connect(
    app: AppHandle,
    window: WebviewWindow,
    state: State<'_, AppState>,
    on_event: Channel<UiEvent>,
) -> Result<Snapshot> {
    let device = device_of(&state, &window)?;
    let snapshot = device.connect(&app, &state.backend, &state.http, on_event)?;
    let s = &snapshot.session;
    let _ = window.set_title(&format!(
        "Cluster Chat — {} · {}",
        s.user.username, s.device_name
    ));
    Ok(snapshot)
}

/// Sends a text message (optionally a reply). Returns its client id at once; the outbox
/// sends it when connected, and the events say when it is stored.
#[tauri::command]
pub fn send_message(
    window: WebviewWindow,
    state: State<'_, AppState>,
    conv: ConvId,
    text: String,
    reply_to: Option<MessageId>,
) -> Result<String> {
    let device = device_of(&state, &window)?;
    let text = text.trim_end().to_owned();
    if text.trim().is_empty() {
        return Err(Error::Invalid("an empty message cannot be sent".into()));
    }
    let client = device.client()?;
    let mut draft = client::Draft::text(conv, text);
    draft.reply_to = reply_to;
    let id = client.send(draft)?;
    device.save_state();
    Ok(id.to_string())
}

/// Changes the text of one of my messages.
#[tauri::command]
pub fn edit_message(
    window: WebviewWindow,
    state: State<'_, AppState>,
    conv: ConvId,
    target: MessageId,
    text: String,
) -> Result<String> {
    let device = device_of(&state, &window)?;
    if text.trim().is_empty() {
        return Err(Error::Invalid(
            "a message cannot be edited to nothing; delete it instead".into(),
        ));
    }
    let id = device.client()?.edit(conv, target, text.trim_end())?;
    device.save_state();
    Ok(id.to_string())
}

/// Deletes one of my messages.
#[tauri::command]
pub fn delete_message(
    window: WebviewWindow,
    state: State<'_, AppState>,
    conv: ConvId,
    target: MessageId,
) -> Result<String> {
    let device = device_of(&state, &window)?;
    let id = device.client()?.delete(conv, target)?;
    device.save_state();
    Ok(id.to_string())
}

/// Uploads a file (the raw request body) and sends it as a message. Headers: `x-conv`,
/// `x-name` and `x-caption` (URI-encoded), `x-mime`. The server's limits are checked first
/// and explained when exceeded.
#[tauri::command]
pub async fn send_attachment(
    window: WebviewWindow,
    state: State<'_, AppState>,
    request: Request<'_>,
) -> Result<String> {
    let device = device_of(&state, &window)?;
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| Error::Invalid(format!("missing {name}")))
    };
    let conv = ConvId(
        header("x-conv")?
            .parse()
            .map_err(|_| Error::Invalid("bad conversation id".into()))?,
    );
    let name = attachments::safe_file_name(&attachments::percent_decode(&header("x-name")?)?);
    let caption = attachments::percent_decode(&header("x-caption").unwrap_or_default())?;
    let mut mime = header("x-mime").unwrap_or_default();
    if mime.is_empty() || !limits::attachment_type_allowed(&mime) {
        // Any file may travel as bytes; only known types get a preview.
        mime = "application/octet-stream".into();
    }
    let InvokeBody::Raw(bytes) = request.body() else {
        return Err(Error::Invalid("the file must be sent as raw bytes".into()));
    };
    let bytes = bytes.clone();
    let info = state.server_info().await?;
    let size = bytes.len() as u64;
    if size > info.max_attachment_bytes {
        return Err(Error::TooLarge(format!(
            "{name} is {}; this server accepts attachments up to {}.",
            attachments::human_size(size),
            attachments::human_size(info.max_attachment_bytes)
        )));
    }
    if size == 0 {
        return Err(Error::Invalid(format!("{name} is empty")));
    }
    let client = device.client()?;
    let attachment = client.upload(conv, &name, &mime, bytes).await?;
    let id = client.send_attachment(&attachment, caption)?;
    device.save_state();
    Ok(id.to_string())
}

/// Saves an attachment to the Downloads folder; returns where.
#[tauri::command]
pub async fn save_attachment(
    app: AppHandle,
    window: WebviewWindow,
    state: State<'_, AppState>,
    id: String,
    name: String,
) -> Result<String> {
    let device = device_of(&state, &window)?;
    let path = attachments::save(&app, &state, &device, &id, &name).await?;
    Ok(path.display().to_string())
}

/// Tells the conversation I am typing (or stopped).
#[tauri::command]
pub fn typing(
    window: WebviewWindow,
    state: State<'_, AppState>,
    conv: ConvId,
    active: bool,
) -> Result<()> {
    device_of(&state, &window)?.client()?.typing(conv, active);
    Ok(())
}

/// Marks a conversation read up to `seq`.
#[tauri::command]
pub fn mark_read(
    window: WebviewWindow,
    state: State<'_, AppState>,
    conv: ConvId,
    seq: Seq,
) -> Result<()> {
    let device = device_of(&state, &window)?;
    device.client()?.mark_read(conv, seq);
    device.cache.set_read(conv, seq)?;
    Ok(())
}

/// A page of history.
#[derive(Debug, Serialize)]
pub struct HistoryView {
    /// Events in ascending `seq`.
    pub events: Vec<Event>,
    /// Whether older events exist.
    pub has_more: bool,
    /// True when the server could not be reached and this came from the cache.
    pub offline: bool,
}

/// A page of a conversation's history before `before` (or the latest), from the server, or
/// from the cache when the server cannot be reached.
#[tauri::command]
pub async fn history(
    window: WebviewWindow,
    state: State<'_, AppState>,
    conv: ConvId,
    before: Option<Seq>,
) -> Result<HistoryView> {
    let device = device_of(&state, &window)?;
    let range = before.map_or(HistoryRange::Latest, HistoryRange::Before);
    let fetched = match device.api(&state.backend, &state.http).await {
        Ok(api) => api
            .history(conv, range, Some(PAGE))
            .await
            .map_err(Error::from),
        Err(e) => Err(e),
    };
    match fetched {
        Ok(page) => {
            device.cache.put_events(&page.events)?;
            Ok(HistoryView {
                events: page.events,
                has_more: page.has_more,
                offline: false,
            })
        }
        Err(e) if e.is_offline() || e.kind() == "no_server" => {
            let (events, has_more) = device.cache.events(conv, before, PAGE)?;
            Ok(HistoryView {
                events,
                has_more,
                offline: true,
            })
        }
        Err(e) => Err(e),
    }
}

/// What the cache holds of a conversation (shown at once, before `history` answers).
#[tauri::command]
pub fn cached_events(
    window: WebviewWindow,
    state: State<'_, AppState>,
    conv: ConvId,
) -> Result<Vec<Event>> {
    let device = device_of(&state, &window)?;
    Ok(device.cache.events(conv, None, PAGE)?.0)
}

/// My conversations, from the server (the cache is updated).
#[tauri::command]
pub async fn conversations(
    window: WebviewWindow,
    state: State<'_, AppState>,
) -> Result<Vec<ConversationSummary>> {
    let device = device_of(&state, &window)?;
    let list = device
        .api(&state.backend, &state.http)
        .await?
        .conversations()
        .await?;
    device.cache.replace_conversations(&list)?;
    Ok(list)
}

/// One conversation, from the server.
#[tauri::command]
pub async fn conversation(
    window: WebviewWindow,
    state: State<'_, AppState>,
    conv: ConvId,
) -> Result<ConversationSummary> {
    let device = device_of(&state, &window)?;
    let summary = device
        .api(&state.backend, &state.http)
        .await?
        .conversation(conv)
        .await?;
    device.cache.put_conversation(&summary)?;
    Ok(summary)
}

/// A conversation's members, with their read positions and presence.
#[tauri::command]
pub async fn members(
    window: WebviewWindow,
    state: State<'_, AppState>,
    conv: ConvId,
) -> Result<Vec<MemberInfo>> {
    let device = device_of(&state, &window)?;
    let members = device
        .api(&state.backend, &state.http)
        .await?
        .members(conv)
        .await?;
    let users: Vec<UserInfo> = members.iter().map(|m| m.user.clone()).collect();
    device.cache.put_users(&users)?;
    Ok(members)
}

/// Opens (or finds) the direct conversation with `username`.
#[tauri::command]
pub async fn open_direct(
    window: WebviewWindow,
    state: State<'_, AppState>,
    username: String,
) -> Result<ConversationSummary> {
    let device = device_of(&state, &window)?;
    let username = username.trim().trim_start_matches('@');
    let summary = device
        .api(&state.backend, &state.http)
        .await?
        .open_direct(username)
        .await?;
    remember(&device, &summary)?;
    Ok(summary)
}

fn remember(device: &Device, summary: &ConversationSummary) -> Result<()> {
    device.cache.put_conversation(summary)?;
    if let Some(peer) = &summary.peer {
        device.cache.put_users(std::slice::from_ref(peer))?;
    }
    Ok(())
}

/// Creates a room; `members` are usernames to add.
#[tauri::command]
pub async fn create_room(
    window: WebviewWindow,
    state: State<'_, AppState>,
    name: String,
    public: bool,
    members: Vec<String>,
) -> Result<ConversationSummary> {
    let device = device_of(&state, &window)?;
    let request = CreateRoomRequest {
        name: name.trim().to_owned(),
        public,
        members: members
            .iter()
            .map(|m| m.trim().trim_start_matches('@').to_owned())
            .filter(|m| !m.is_empty())
            .collect(),
    };
    let summary = device
        .api(&state.backend, &state.http)
        .await?
        .create_room(&request)
        .await?;
    remember(&device, &summary)?;
    Ok(summary)
}

/// Public rooms, optionally filtered by name.
#[tauri::command]
pub async fn public_rooms(
    window: WebviewWindow,
    state: State<'_, AppState>,
    query: Option<String>,
) -> Result<Vec<RoomListing>> {
    let device = device_of(&state, &window)?;
    let query = query.as_deref().map(str::trim).filter(|q| !q.is_empty());
    Ok(device
        .api(&state.backend, &state.http)
        .await?
        .rooms(query)
        .await?)
}

/// Joins a public room.
#[tauri::command]
pub async fn join_room(
    window: WebviewWindow,
    state: State<'_, AppState>,
    conv: ConvId,
) -> Result<ConversationSummary> {
    let device = device_of(&state, &window)?;
    let summary = device
        .api(&state.backend, &state.http)
        .await?
        .join_room(conv)
        .await?;
    remember(&device, &summary)?;
    Ok(summary)
}

/// Leaves a room.
#[tauri::command]
pub async fn leave_room(
    window: WebviewWindow,
    state: State<'_, AppState>,
    conv: ConvId,
) -> Result<()> {
    let device = device_of(&state, &window)?;
    device
        .api(&state.backend, &state.http)
        .await?
        .leave_room(conv)
        .await?;
    device.cache.remove_conversation(conv)?;
    device.emit(UiEvent::App(AppEvent::Removed { conv }));
    Ok(())
}

/// Adds a user to a room I am in.
#[tauri::command]
pub async fn invite(
    window: WebviewWindow,
    state: State<'_, AppState>,
    conv: ConvId,
    username: String,
) -> Result<()> {
    let device = device_of(&state, &window)?;
    let username = username.trim().trim_start_matches('@');
    Ok(device
        .api(&state.backend, &state.http)
        .await?
        .invite(conv, username)
        .await?)
}

/// My devices.
#[tauri::command]
pub async fn devices(window: WebviewWindow, state: State<'_, AppState>) -> Result<Vec<DeviceInfo>> {
    let device = device_of(&state, &window)?;
    Ok(device
        .api(&state.backend, &state.http)
        .await?
        .devices()
        .await?)
}

/// Revokes one of my devices: its sessions close at once and its token stops working.
#[tauri::command]
pub async fn revoke_device(
    window: WebviewWindow,
    state: State<'_, AppState>,
    id: DeviceId,
) -> Result<()> {
    let device = device_of(&state, &window)?;
    Ok(device
        .api(&state.backend, &state.http)
        .await?
        .revoke_device(&id)
        .await?)
}

/// Opens another window that is a separate device (its own id, connection and cache), to
/// sign in as this user or another one and watch sync happen. Returns its label.
#[tauri::command]
pub async fn open_device_window(app: AppHandle) -> Result<String> {
    let n = (2..1000)
        .find(|n| app.get_webview_window(&format!("device-{n}")).is_none())
        .ok_or_else(|| Error::Invalid("too many windows".into()))?;
    let label = format!("device-{n}");
    let offset = f64::from(n.min(8) - 1) * 36.0;
    let window = WebviewWindowBuilder::new(&app, &label, WebviewUrl::App("index.html".into()))
        .title(format!("Cluster Chat — device {n}"))
        .inner_size(960.0, 680.0)
        .min_inner_size(720.0, 480.0)
        .position(80.0 + offset, 60.0 + offset)
        .build()?;
    let _ = window.set_focus();
    Ok(label)
}

/// The nodes of the cluster, for the cluster panel.
#[tauri::command]
pub async fn cluster_status(state: State<'_, AppState>) -> Result<ClusterView> {
    state.backend.cluster_view(&state.http).await
}

/// Kills a node of the local cluster (SIGKILL), as a crash would.
#[tauri::command]
pub async fn kill_node(state: State<'_, AppState>, id: String) -> Result<()> {
    state.backend.kill_node(&id).await
}

/// Starts a fresh process in a killed node's slot.
#[tauri::command]
pub async fn restart_node(state: State<'_, AppState>, id: String) -> Result<()> {
    state.backend.restart_node(&id).await
}
