//! What the app keeps on disk, and where, under the app's data folder:
//!
//! ```text
//! settings.json          the remembered server choice (local cluster or a URL), and the
//!                        device windows to reopen at launch
//! cluster/               the local cluster's data dir: its SQLite store, logs, secret
//! cluster.json           the running local cluster: controller URL and node pids
//! profiles/<window>/     one per window, i.e. per device:
//!     device_id            this device's id (created once)
//!     session.json         the signed-in session (holds a token: readable by the user only)
//!     state.json           the client core's cursors and outbox, to resume without loss
//!     cache.sqlite         the history cache (see `cache`)
//! attachments/<id>       attachments already downloaded
//! ```
//!
//! Every JSON file is written to a temporary file and renamed into place, so a crash never
//! leaves half a file behind.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Which server the app talks to; chosen on first run and remembered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum ServerChoice {
    /// A cluster of three nodes on this machine, started (and stopped) by the app.
    Local,
    /// A controller somewhere else.
    Remote {
        /// Its base URL, e.g. `http://chat.example:8080`.
        url: String,
    },
}

/// The contents of `settings.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// `None` until the first-run choice is made.
    #[serde(default)]
    pub server: Option<ServerChoice>,
    /// The device windows (`device-2`...) open when the app last quit, reopened at launch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<String>,
}

/// The app's data folder and the paths inside it.
#[derive(Clone, Debug)]
pub struct Paths {
    root: PathBuf,
}

impl Paths {
    /// The layout under `root` (created on first use).
    pub fn new(root: PathBuf) -> Self {
        Paths { root }
    }

    /// The data folder itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `settings.json`.
    pub fn settings(&self) -> PathBuf {
        self.root.join("settings.json")
    }

    /// The local cluster's data dir.
    pub fn cluster_dir(&self) -> PathBuf {
        self.root.join("cluster")
    }

    /// `cluster.json`: what a test or a curious user needs to find the local cluster.
    pub fn cluster_info(&self) -> PathBuf {
        self.root.join("cluster.json")
    }

    /// The folder of one window's device.
    pub fn profile(&self, label: &str) -> PathBuf {
        self.root.join("profiles").join(label)
    }

    /// Downloaded attachments.
    pub fn attachments(&self) -> PathBuf {
        self.root.join("attachments")
    }
}

/// Reads a JSON file; a missing file is `None`, a corrupt one is an error.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> std::io::Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes a JSON file atomically. `private` makes it readable by the user only (tokens).
pub fn write_json<T: Serialize>(path: &Path, value: &T, private: bool) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    write_atomic(path, &bytes, private)
}

/// Writes a file atomically: a temporary file beside it, synced, then renamed over it.
pub fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        if private {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        #[cfg(not(unix))]
        let _ = private;
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Removes a file; a file already gone is fine.
pub fn remove_file(path: &Path) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip_and_missing_is_none() -> std::io::Result<()> {
        let dir = std::env::temp_dir().join(format!("chat-desktop-{}", uuid::Uuid::new_v4()));
        let path = dir.join("settings.json");
        assert_eq!(read_json::<Settings>(&path)?, None);
        let s = Settings {
            server: Some(ServerChoice::Remote {
                url: "http://h:1".into(),
            }),
            windows: vec!["device-2".into()],
        };
        write_json(&path, &s, true)?;
        assert_eq!(read_json::<Settings>(&path)?, Some(s));
        let text = fs::read_to_string(&path)?;
        assert!(text.contains(r#""mode": "remote""#), "{text}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
        }
        fs::remove_dir_all(dir)
    }
}
