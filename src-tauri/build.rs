//! Build script: checks that the UI is built and the server sidecar is in place, then runs
//! tauri-build with an app manifest naming every command, so the capability files can grant
//! exactly those.

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
    println!("cargo:rerun-if-changed=../ui/dist/index.html");
    if !Path::new("../ui/dist/index.html").is_file() {
        fail("the UI is not built: run `cd ui && npm ci && npm run build` first");
    }
    if !Path::new(&sidecar).is_file() {
        let debug = std::env::var("PROFILE").is_ok_and(|p| p == "debug");
        if !(debug && write_dev_sidecar(&sidecar)) {
            fail(&format!(
                "the server sidecar is missing at src-tauri/{sidecar}: run \
                 `scripts/desktop-sidecar.sh` (it builds `server` and copies it there)"
            ));
        }
    }
    let attributes = tauri_build::Attributes::new()
        .app_manifest(tauri_build::AppManifest::new().commands(COMMANDS));
    if let Err(error) = tauri_build::try_build(attributes) {
        fail(&format!("tauri-build failed: {error:#}"));
    }
}

/// A debug build without a sidecar gets a stand-in that runs the `server` cargo builds beside
/// it, so `cargo build --workspace` works on a fresh clone. Release builds need the real one:
/// `npm run tauri build` puts it there first (its beforeBuildCommand), replacing this script.
fn write_dev_sidecar(path: &str) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let script = "#!/bin/sh\n\
            # Stand-in written by src-tauri/build.rs for debug builds; \
            scripts/desktop-sidecar.sh replaces it.\n\
            exec \"$(dirname \"$0\")/server\" \"$@\"\n";
        let written = Path::new(path)
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(path, script))
            .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)));
        if written.is_ok() {
            println!(
                "cargo:warning=no server sidecar: using a stand-in that runs the `server` built beside the app"
            );
        }
        written.is_ok()
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}

fn fail(message: &str) -> ! {
    // tauri-build would fail with a bare "path not found"; say what to do instead.
    println!("cargo:warning={message}");
    std::process::exit(1);
}
