//! Locating the `server` binary. `CARGO_BIN_EXE_server` only exists in the `server` package's
//! own tests, so the lab looks where cargo puts binaries instead: an explicit override first,
//! then beside the running executable (the `lab` binary lives in `target/<profile>/`, test
//! binaries in `target/<profile>/deps/`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::LabError;

/// The environment variable that names the server binary explicitly.
pub const SERVER_BIN_ENV: &str = "CHAT_SERVER_BIN";

/// The file name of the server binary on this platform.
fn server_file_name() -> String {
    format!("server{}", std::env::consts::EXE_SUFFIX)
}

/// Finds the server binary: `$CHAT_SERVER_BIN`, else `server` beside the current executable,
/// else `server` in the directory above it.
pub fn server_binary() -> Result<PathBuf, LabError> {
    find_server_binary(
        std::env::var_os(SERVER_BIN_ENV),
        std::env::current_exe().ok(),
        |p| p.is_file(),
    )
}

/// The lookup itself, with the environment and the file system passed in so that the order
/// can be tested.
pub(crate) fn find_server_binary(
    env_override: Option<OsString>,
    current_exe: Option<PathBuf>,
    is_file: impl Fn(&Path) -> bool,
) -> Result<PathBuf, LabError> {
    if let Some(path) = env_override.filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        // An explicit override that points nowhere is a mistake to report, not a reason to
        // quietly run some other build.
        return if is_file(&path) {
            Ok(path)
        } else {
            Err(LabError::BinaryNotFound(format!(
                "{SERVER_BIN_ENV}={} is not a file; build it with `cargo build -p server` \
                 or fix the variable",
                path.display()
            )))
        };
    }
    let mut tried = Vec::new();
    if let Some(exe) = current_exe {
        let name = server_file_name();
        for dir in exe.ancestors().skip(1).take(2) {
            let candidate = dir.join(&name);
            if is_file(&candidate) {
                return Ok(candidate);
            }
            tried.push(candidate);
        }
    }
    let tried = tried
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    Err(LabError::BinaryNotFound(format!(
        "server binary not found (looked at {}); run `cargo build -p server` first, \
         or set {SERVER_BIN_ENV} to its path",
        if tried.is_empty() {
            "nothing: the current executable is unknown".to_owned()
        } else {
            tried
        }
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exe() -> Option<PathBuf> {
        Some(PathBuf::from("/w/target/debug/deps/lab-1234"))
    }

    #[test]
    fn env_override_comes_first() {
        let found = find_server_binary(Some("/opt/server".into()), exe(), |_| true);
        assert_eq!(found.ok(), Some(PathBuf::from("/opt/server")));
    }

    #[test]
    fn env_override_that_is_missing_is_an_error() {
        let err = find_server_binary(Some("/opt/server".into()), exe(), |p| {
            p != Path::new("/opt/server")
        });
        let msg = err.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("CHAT_SERVER_BIN=/opt/server"), "{msg}");
        assert!(msg.contains("cargo build -p server"), "{msg}");
    }

    #[test]
    fn empty_env_override_is_ignored() {
        let found = find_server_binary(Some("".into()), exe(), |_| true);
        assert_eq!(
            found.ok(),
            Some(PathBuf::from("/w/target/debug/deps").join(server_file_name()))
        );
    }

    #[test]
    fn beside_the_executable_before_its_parent() {
        let found = find_server_binary(None, exe(), |_| true);
        assert_eq!(
            found.ok(),
            Some(PathBuf::from("/w/target/debug/deps").join(server_file_name()))
        );
    }

    #[test]
    fn test_binaries_find_it_one_level_up() {
        let want = PathBuf::from("/w/target/debug").join(server_file_name());
        let found = find_server_binary(None, exe(), |p| p == want);
        assert_eq!(found.ok(), Some(want));
    }

    #[test]
    fn not_found_says_how_to_build_it() {
        let err = find_server_binary(None, exe(), |_| false);
        let msg = err.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("cargo build -p server"), "{msg}");
        assert!(msg.contains("/w/target/debug/deps/server"), "{msg}");
        assert!(msg.contains("/w/target/debug/server"), "{msg}");
    }
}
