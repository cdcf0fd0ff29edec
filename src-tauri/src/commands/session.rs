//! The server and the session: what a window shows first, the first-run choice of server,
//! accounts, signing a window's device in and out, and attaching its event stream.

use client::Session;
use protocol::http::ServerInfo;
use protocol::limits;
use protocol::model::UserInfo;
use tauri::ipc::Channel;
use tauri::{AppHandle, Manager, State, WebviewWindow};

use super::Caller;
use crate::backend::ServerState;
use crate::error::Result;
use crate::events::{Boot, SessionView, Snapshot, UiEvent};
use crate::state::AppState;
use crate::store::ServerChoice;

/// The longest native title the UI may set.
const TITLE_MAX_CHARS: usize = 200;

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

/// The native title of a signed-in window.
pub(crate) fn window_title(username: &str, device_name: &str) -> String {
    format!("Cluster Chat — {username} · {device_name}")
}

/// What the window should show first.
#[tauri::command]
pub fn bootstrap(caller: Caller<'_>) -> Result<Boot> {
    let label = caller.label();
    let main = label == "main";
    let suggested_username = if main {
        None
    } else {
        caller.state.open_device("main").and_then(|d| d.username())
    };
    Ok(Boot {
        label: label.to_owned(),
        main,
        server: caller.state.backend.state(),
        session: caller.device.session_view(),
        suggested_device_name: suggested_device_name(label),
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

/// Forgets the server choice and signs every window out: the local cluster stops, the other
/// device windows close, and the calling window goes back to the first-run choice (the UI
/// reloads itself). The app keeps running, in the same terminal.
#[tauri::command]
pub async fn forget_server(app: AppHandle, state: State<'_, AppState>) -> Result<()> {
    for device in state.all_devices() {
        device.sign_out().await?;
    }
    state.set_choice(None)?;
    state.backend.shutdown().await;
    state.backend.reset();
    for (label, window) in app.webview_windows() {
        if label != "main" {
            let _ = window.close();
        }
    }
    Ok(())
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
    caller: Caller<'_>,
    username: String,
    password: String,
    device_name: String,
) -> Result<SessionView> {
    let url = caller.state.backend.url().await?;
    let name = device_name.trim();
    let name = if name.is_empty() {
        suggested_device_name(caller.label())
    } else {
        name.chars().take(limits::NAME_MAX_CHARS).collect()
    };
    let device = &caller.device;
    let session: Session =
        client::login(&url, username.trim(), &password, &device.id, &name).await?;
    let _ = caller
        .window
        .set_title(&window_title(&session.user.username, &name));
    device.sign_in(session, name)
}

/// Signs this window's device out (the outbox is dropped).
#[tauri::command]
pub async fn logout(caller: Caller<'_>) -> Result<()> {
    caller.device.sign_out().await
}

/// Ends this window's wait between reconnection attempts now ("Retry now").
#[tauri::command]
pub fn retry_now(caller: Caller<'_>) -> Result<()> {
    caller.device.client()?.retry_now();
    Ok(())
}

/// Sets the window's native title, which the UI keeps in step with the unread count (so it
/// reaches the task bar and the window switcher).
#[tauri::command]
pub fn set_window_title(window: WebviewWindow, title: String) -> Result<()> {
    let title: String = title
        .chars()
        .filter(|c| !c.is_control())
        .take(TITLE_MAX_CHARS)
        .collect();
    window.set_title(&title)?;
    Ok(())
}

/// The longest native notification text the UI may ask for.
const NOTIFICATION_MAX_CHARS: usize = 240;

/// Shows a native notification (the UI decides when: a message while the window is not
/// looking at its conversation, a mention of me). Never waits on the desktop's notification
/// service, which may be slow or absent.
#[tauri::command]
pub fn notify(app: AppHandle, title: String, body: String) {
    let clean = |s: String| -> String {
        s.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(NOTIFICATION_MAX_CHARS)
            .collect()
    };
    let (title, body) = (clean(title), clean(body));
    tauri::async_runtime::spawn_blocking(move || {
        use tauri_plugin_notification::NotificationExt;
        if let Err(e) = app.notification().builder().title(title).body(body).show() {
            tracing::debug!(error = %e, "notification not shown");
        }
    });
}

/// Attaches the window's event stream and starts its connection. Called again after a
/// reload, it just swaps the stream.
#[tauri::command]
pub fn connect(caller: Caller<'_>, on_event: Channel<UiEvent>) -> Result<Snapshot> {
    let snapshot = caller.device.connect(on_event)?;
    let s = &snapshot.session;
    let _ = caller
        .window
        .set_title(&window_title(&s.user.username, &s.device_name));
    Ok(snapshot)
}
