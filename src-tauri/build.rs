//! Build script: checks that the UI is built and the server sidecar is in place, reads the
//! list of commands from `src/commands/mod.rs` (the `generate_handler!` there is the one list),
//! writes the capability that grants every window exactly those (`capabilities/chat.json`),
//! and runs tauri-build with an app manifest naming them, which makes their permissions.

use std::path::Path;

/// Where the list of commands is kept.
const COMMAND_LIST: &str = "src/commands/mod.rs";
/// The capability granting them, written from the list.
const CAPABILITY: &str = "capabilities/chat.json";

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
    println!("cargo:rerun-if-changed={COMMAND_LIST}");
    let commands = match std::fs::read_to_string(COMMAND_LIST) {
        Ok(source) => command_names(&source),
        Err(e) => fail(&format!("cannot read {COMMAND_LIST}: {e}")),
    };
    if commands.is_empty() {
        fail(&format!(
            "no generate_handler! list found in {COMMAND_LIST}"
        ));
    }
    write_capability(&commands);
    // tauri-build keeps the names for the whole build: a build script may leak them.
    let names: &'static [&'static str] = Vec::leak(
        commands
            .into_iter()
            .map(|c| &*String::leak(c))
            .collect::<Vec<_>>(),
    );
    let attributes = tauri_build::Attributes::new()
        .app_manifest(tauri_build::AppManifest::new().commands(names));
    if let Err(error) = tauri_build::try_build(attributes) {
        fail(&format!("tauri-build failed: {error:#}"));
    }
}

/// The command names in the `generate_handler![...]` list of `source`: the last segment of
/// each path (`session::login` is the command `login`).
fn command_names(source: &str) -> Vec<String> {
    let Some(start) = source.find("generate_handler![") else {
        return Vec::new();
    };
    let list = &source[start + "generate_handler![".len()..];
    let list = &list[..list.find(']').unwrap_or(list.len())];
    list.split(',')
        .map(|path| path.trim())
        .filter(|path| !path.is_empty())
        .filter_map(|path| path.rsplit("::").next().map(str::to_owned))
        .collect()
}

/// Writes the capability of the chat windows from the command list, if it changed (an
/// unchanged file keeps its timestamp, so tauri-build does not run again for nothing).
fn write_capability(commands: &[String]) {
    let permissions: Vec<String> = commands
        .iter()
        .map(|c| format!("    \"allow-{}\"", c.replace('_', "-")))
        .collect();
    let text = format!(
        r#"{{
  "$schema": "../gen/schemas/desktop-schema.json",
  "identifier": "chat-windows",
  "description": "What every chat window may do: the app's own commands, nothing else. Each window is a device (main, device-2, ...); the webview has no network, file system or shell access of its own. Written by build.rs from the list in src/commands/mod.rs: do not edit.",
  "windows": [
    "main",
    "device-*"
  ],
  "permissions": [
{}
  ]
}}
"#,
        permissions.join(",\n")
    );
    if std::fs::read_to_string(CAPABILITY).ok().as_deref() != Some(text.as_str())
        && let Err(e) = std::fs::write(CAPABILITY, text)
    {
        fail(&format!("cannot write {CAPABILITY}: {e}"));
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
