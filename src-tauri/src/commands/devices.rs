//! My devices: the list, revoking one, and opening another window that is a device of its own.

use protocol::DeviceId;
use protocol::http::DeviceInfo;
use serde::Serialize;
use tauri::{AppHandle, Manager, State, WebviewUrl, WebviewWindow, WebviewWindowBuilder};

use super::Caller;
use crate::device::Link;
use crate::error::{Error, Result};
use crate::state::AppState;

/// One of my devices as the server lists it, with where its connection is when it runs in a
/// window of this app.
#[derive(Debug, Serialize)]
pub struct DeviceView {
    /// As the server lists it.
    #[serde(flatten)]
    pub info: DeviceInfo,
    /// The window of this app it runs in (`main`, `device-2`), if any.
    pub window: Option<String>,
    /// Its connection, if it runs in this app (online, node, last seen).
    pub link: Option<Link>,
}

/// My devices, and for those running in this app's windows, their node and when they were
/// last connected.
#[tauri::command]
pub async fn devices(caller: Caller<'_>) -> Result<Vec<DeviceView>> {
    let list = caller.api().await?.devices().await?;
    let me = caller.device.session_view().map(|s| s.user.id);
    let here = caller.state.all_devices();
    Ok(list
        .into_iter()
        .map(|info| {
            // A window's device id is the device only while it is signed in as me.
            let local = here
                .iter()
                .find(|d| d.id == info.id && d.session_view().map(|s| s.user.id) == me);
            DeviceView {
                window: local.map(|d| d.label.clone()),
                link: local.map(|d| d.link()),
                info,
            }
        })
        .collect())
}

/// Revokes one of my devices: its sessions close at once and its token stops working.
#[tauri::command]
pub async fn revoke_device(caller: Caller<'_>, id: DeviceId) -> Result<()> {
    Ok(caller.api().await?.revoke_device(&id).await?)
}

/// Opens another window that is a separate device (its own id, connection and cache), to
/// sign in as this user or another one and watch sync happen. Returns its label. The window
/// is reopened at the next launch unless it is closed before.
#[tauri::command]
pub async fn open_device_window(app: AppHandle, state: State<'_, AppState>) -> Result<String> {
    let n = (2..1000)
        .find(|n| app.get_webview_window(&format!("device-{n}")).is_none())
        .ok_or_else(|| Error::Invalid("too many windows".into()))?;
    let window = build_device_window(&app, n)?;
    let _ = window.set_focus();
    state.window_opened(window.label());
    Ok(window.label().to_owned())
}

/// Builds the window of device `device-{n}`, each a little down and right of the one before.
pub fn build_device_window(app: &AppHandle, n: u16) -> Result<WebviewWindow> {
    let label = format!("device-{n}");
    let offset = f64::from(n.clamp(2, 8) - 1) * 36.0;
    Ok(
        WebviewWindowBuilder::new(app, &label, WebviewUrl::App("index.html".into()))
            .title(format!("Cluster Chat — device {n}"))
            .inner_size(960.0, 680.0)
            .min_inner_size(720.0, 480.0)
            .position(80.0 + offset, 60.0 + offset)
            .build()?,
    )
}
