//! Every command the UI may invoke, grouped by what it touches. Each one does one thing and
//! returns a typed value or an [`Error`] that crosses as `{ kind, message }`.
//!
//! A command that acts for the calling window's device takes a [`Caller`]: the one place
//! where "this window" becomes "this device".
//!
//! [`handler`] holds the one list of commands. `build.rs` reads it to give each command a
//! permission and to write the capability granting them (`capabilities/chat.json`);
//! `ui/src/ipc/commands.test.ts` checks that `ui/src/ipc/commands.ts`, the typed mirror the UI
//! calls, names exactly these.

pub mod cluster;
pub mod conversations;
pub mod devices;
pub mod messages;
pub mod session;

use std::sync::Arc;

use client::Api;
use tauri::ipc::{CommandArg, CommandItem, Invoke, InvokeError};
use tauri::{State, WebviewWindow, Wry};

use crate::device::Device;
use crate::error::Result;
use crate::state::AppState;

/// The invoke handler of every window. This list is the source of truth for the commands.
pub fn handler() -> impl Fn(Invoke<Wry>) -> bool + Send + Sync + 'static {
    tauri::generate_handler![
        session::bootstrap,
        session::choose_server,
        session::forget_server,
        session::server_state,
        session::server_info,
        session::register,
        session::login,
        session::logout,
        session::connect,
        session::retry_now,
        session::set_window_title,
        session::notify,
        messages::send_message,
        messages::edit_message,
        messages::delete_message,
        messages::react,
        messages::send_attachment,
        messages::save_attachment,
        messages::open_link,
        messages::typing,
        messages::mark_read,
        messages::history,
        messages::cached_events,
        messages::search_messages,
        messages::message_info,
        conversations::conversations,
        conversations::conversation,
        conversations::members,
        conversations::open_direct,
        conversations::create_room,
        conversations::public_rooms,
        conversations::join_room,
        conversations::leave_room,
        conversations::invite,
        devices::devices,
        devices::revoke_device,
        devices::open_device_window,
        cluster::cluster_status,
        cluster::kill_node,
        cluster::restart_node,
    ]
}

/// The window that invoked a command, with its device and the app's state.
pub struct Caller<'a> {
    /// The app's shared state.
    pub state: State<'a, AppState>,
    /// The calling window.
    pub window: WebviewWindow,
    /// Its device (opened on first use).
    pub device: Arc<Device>,
}

impl Caller<'_> {
    /// The window's label (`main`, `device-2`...).
    pub fn label(&self) -> &str {
        self.window.label()
    }

    /// The controller API with this device's token.
    pub async fn api(&self) -> Result<Api> {
        self.device.api().await
    }
}

impl<'de> CommandArg<'de, Wry> for Caller<'de> {
    fn from_command(command: CommandItem<'de, Wry>) -> Result<Self, InvokeError> {
        let again = || CommandItem {
            plugin: command.plugin,
            name: command.name,
            key: command.key,
            message: command.message,
            acl: command.acl,
        };
        let window = WebviewWindow::from_command(again())?;
        let state = State::<AppState>::from_command(again())?;
        let device = state.device(window.label()).map_err(InvokeError::from)?;
        Ok(Caller {
            state,
            window,
            device,
        })
    }
}
