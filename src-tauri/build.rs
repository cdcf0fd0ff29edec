//! Build script: checks that the server sidecar is in place, then runs tauri-build with an app
//! manifest naming every command, so the capability files can grant exactly those.

use std::path::Path;

/// Every command the UI may invoke (see `src/commands.rs`); `capabilities/` grants them.
const COMMANDS: &[&str] = &[
    "bootstrap",
    "choose_server",
    "forget_server",
    "server_state",
    "server_info",
    "register",
    "login",
    "logout",
    "connect",
    "send_message",
    "edit_message",
    "delete_message",
    "send_attachment",
    "save_attachment",
    "typing",
    "mark_read",
    "history",
    "cached_events",
    "conversations",
    "conversation",
    "members",
    "open_direct",
    "create_room",
    "public_rooms",
    "join_room",
    "leave_room",
    "invite",
    "devices",
    "revoke_device",
    "open_device_window",
    "cluster_status",
    "kill_node",
    "restart_node",
];

fn main() {
    let triple = std::env::var("TARGET").unwrap_or_default();
    let sidecar = format!("binaries/chat-server-{triple}");
    println!("cargo:rerun-if-changed={sidecar}");
    if !Path::new(&sidecar).is_file() {
        // tauri-build would fail with a bare "path not found"; say what to do instead.
        println!(
            "cargo:warning=src-tauri needs its server sidecar at src-tauri/{sidecar}: \
             run `scripts/desktop-sidecar.sh` (it builds `server` and copies it there)"
        );
        std::process::exit(1);
    }
    let attributes = tauri_build::Attributes::new()
        .app_manifest(tauri_build::AppManifest::new().commands(COMMANDS));
    if let Err(error) = tauri_build::try_build(attributes) {
        println!("cargo:warning=tauri-build failed: {error:#}");
        std::process::exit(1);
    }
}
