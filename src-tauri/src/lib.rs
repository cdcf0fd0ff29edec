//! The desktop chat app: a thin Tauri v2 shell over the client core. Rust owns every
//! connection (reqwest to the controller, tokio-tungstenite to the node, both inside the
//! client core); the webview only invokes commands and listens to a channel.
//!
//! Code map:
//! - [`commands`]: every command the UI may invoke, and the one list of them (`build.rs` makes
//!   their permissions and the capability in `capabilities/` from it).
//! - [`error`]: the error every command returns, serialized as `{ kind, message }`.
//! - [`state`]: [`state::AppState`], shared by the commands: settings, backend, devices.
//! - [`backend`]: the server: a local cluster started through the lab supervisor (with the
//!   `server` sidecar), or a URL; readiness as a watch channel.
//! - [`device`]: one window = one device: session, client core, event pump, saved state.
//! - [`events`]: what streams to the UI over `tauri::ipc::Channel`, and the snapshots.
//! - [`cache`]: the SQLite history cache that makes launch instant and history readable offline.
//! - [`attachments`]: the `attachment://` scheme for inline images, downloads.
//! - [`store`]: the files in the app's data folder, written atomically.
//!
//! Invariants:
//! - The webview never holds a token or opens a socket; the CSP allows it no network at all.
//! - Closing the main window quits the app; quitting saves every device's state and stops the
//!   local cluster the app started. The device windows open then are reopened at the next
//!   launch.

pub mod attachments;
pub mod backend;
pub mod cache;
pub mod commands;
pub mod device;
pub mod error;
pub mod events;
pub mod state;
pub mod store;

use std::time::Duration;

use tauri::{Manager, RunEvent, WindowEvent};

use crate::state::AppState;
use crate::store::Paths;

/// How long quitting waits for the devices to close their connections and save.
const DEVICE_STOP_WAIT: Duration = Duration::from_secs(3);

/// Runs the app until its last window closes.
pub fn run() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,chat_desktop=info,client=info,lab=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    let app = tauri::Builder::default()
        .plugin(tauri_plugin_window_state::Builder::new().build())
        .plugin(tauri_plugin_notification::init())
        .register_asynchronous_uri_scheme_protocol(attachments::SCHEME, attachments::protocol)
        .setup(|app| {
            let root = match std::env::var_os("CHAT_DESKTOP_DATA_DIR") {
                Some(dir) if !dir.is_empty() => dir.into(),
                _ => app.path().app_data_dir()?,
            };
            let state = AppState::load(Paths::new(root))?;
            if let Some(choice) = state.choice() {
                // Start the remembered server at once: the cluster boots while the window
                // shows the cached conversations.
                let backend = state.backend.clone();
                tauri::async_runtime::spawn(async move {
                    let _ = backend.start(choice).await;
                });
            }
            let windows = state.saved_windows();
            app.manage(state);
            reopen_windows(app.handle(), &windows);
            quit_on_signals(app.handle().clone());
            Ok(())
        })
        .on_window_event(|window, event| match event {
            WindowEvent::CloseRequested { .. } if window.label() == "main" => {
                quit(window.app_handle());
            }
            WindowEvent::Destroyed => {
                let state = window.state::<AppState>();
                if window.label() == "main" {
                    // However the main window went (a WebDriver session closing it, say), the
                    // app goes with it.
                    quit(window.app_handle());
                } else {
                    state.window_closed(window.label());
                }
                if let Some(device) = state.close_device(window.label()) {
                    tauri::async_runtime::spawn(async move { device.shutdown().await });
                }
            }
            _ => {}
        })
        .invoke_handler(commands::handler())
        .build(tauri::generate_context!());

    let app = match app {
        Ok(app) => app,
        Err(e) => {
            eprintln!("chat-desktop: cannot start: {e}");
            std::process::exit(1);
        }
    };
    let mut stopped = false;
    app.run(move |handle, event| {
        if let RunEvent::ExitRequested { .. } = event {
            handle.state::<AppState>().quitting();
        }
        if let RunEvent::Exit = event
            && !std::mem::replace(&mut stopped, true)
        {
            tracing::info!("quitting: saving devices, stopping the local cluster");
            let state = handle.state::<AppState>();
            let devices = state.all_devices();
            let backend = state.backend.clone();
            tauri::async_runtime::block_on(async move {
                let stops = futures::future::join_all(devices.iter().map(|d| d.shutdown()));
                let _ = tokio::time::timeout(DEVICE_STOP_WAIT, stops).await;
                backend.shutdown().await;
            });
        }
    });
}

/// Quits the app; the device windows open now are reopened at the next launch.
fn quit(app: &tauri::AppHandle) {
    app.state::<AppState>().quitting();
    app.exit(0);
}

/// Reopens the device windows that were open when the app last quit.
fn reopen_windows(app: &tauri::AppHandle, labels: &[String]) {
    for label in labels {
        let Some(n) = label
            .strip_prefix("device-")
            .and_then(|n| n.parse::<u16>().ok())
        else {
            continue;
        };
        if let Err(e) = commands::devices::build_device_window(app, n) {
            tracing::warn!(error = %e, label, "could not reopen a device window");
        }
    }
}

/// SIGTERM or SIGINT quit the app the normal way, so the local cluster is stopped, not orphaned.
fn quit_on_signals(app: tauri::AppHandle) {
    #[cfg(unix)]
    tauri::async_runtime::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("signal received; quitting");
        quit(&app);
    });
    #[cfg(not(unix))]
    let _ = app;
}
