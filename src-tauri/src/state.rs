//! The state every command shares ([`AppState`], managed by Tauri): the data folder, the
//! server backend, one HTTP client, the remembered settings, and the device of each window.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use protocol::http::ServerInfo;

use crate::backend::Backend;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::store::{self, Paths, ServerChoice, Settings};

/// Shared by every command. Fields are cheap handles; no lock is held across an `.await`.
pub struct AppState {
    /// Where the app keeps its files.
    pub paths: Paths,
    /// The server (local cluster or remote).
    pub backend: Arc<Backend>,
    /// One connection pool for every device and request of the app.
    pub http: reqwest::Client,
    settings: Mutex<Settings>,
    devices: Mutex<HashMap<String, Arc<Device>>>,
    /// The server's limits, fetched once per controller URL.
    info: Mutex<Option<(String, ServerInfo)>>,
    /// Set once the app is quitting: windows closing then stay in the list to reopen.
    quitting: AtomicBool,
}

impl AppState {
    /// Loads the settings under `paths` (a corrupt file counts as a first run, and says so).
    pub fn load(paths: Paths) -> Result<AppState> {
        std::fs::create_dir_all(paths.root())?;
        let settings = match store::read_json::<Settings>(&paths.settings()) {
            Ok(s) => s.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %e, "unreadable settings.json; asking again");
                Settings::default()
            }
        };
        let http = client::api::http_client()?;
        Ok(AppState {
            backend: Arc::new(Backend::new(paths.clone())),
            paths,
            http,
            settings: Mutex::new(settings),
            devices: Mutex::new(HashMap::new()),
            info: Mutex::new(None),
            quitting: AtomicBool::new(false),
        })
    }

    /// The remembered server choice.
    pub fn choice(&self) -> Option<ServerChoice> {
        self.settings.lock().server.clone()
    }

    /// Remembers (or forgets) the server choice.
    pub fn set_choice(&self, choice: Option<ServerChoice>) -> Result<()> {
        self.change_settings(|s| s.server = choice)
    }

    fn change_settings(&self, change: impl FnOnce(&mut Settings)) -> Result<()> {
        let settings = {
            let mut s = self.settings.lock();
            change(&mut s);
            s.clone()
        };
        store::write_json(&self.paths.settings(), &settings, false)?;
        Ok(())
    }

    /// The device windows to reopen at launch.
    pub fn saved_windows(&self) -> Vec<String> {
        let mut labels = self.settings.lock().windows.clone();
        labels.retain(|l| l != "main" && valid_label(l));
        labels
    }

    /// A device window opened: reopen it at the next launch.
    pub fn window_opened(&self, label: &str) {
        if label == "main" || self.settings.lock().windows.iter().any(|l| l == label) {
            return;
        }
        if let Err(e) = self.change_settings(|s| s.windows.push(label.to_owned())) {
            tracing::warn!(error = %e, "could not save the open windows");
        }
    }

    /// A device window closed while the app runs on: do not reopen it. (Windows closing
    /// because the app quits stay listed.)
    pub fn window_closed(&self, label: &str) {
        if self.quitting.load(Ordering::SeqCst) {
            return;
        }
        if let Err(e) = self.change_settings(|s| s.windows.retain(|l| l != label)) {
            tracing::warn!(error = %e, "could not save the open windows");
        }
    }

    /// The app is quitting: from now on windows close with it.
    pub fn quitting(&self) {
        self.quitting.store(true, Ordering::SeqCst);
    }

    /// The device of window `label`, opened on first use.
    pub fn device(&self, label: &str) -> Result<Arc<Device>> {
        if !valid_label(label) {
            return Err(Error::Invalid(format!("unexpected window {label:?}")));
        }
        let mut devices = self.devices.lock();
        if let Some(d) = devices.get(label) {
            return Ok(d.clone());
        }
        let device = Arc::new(Device::open(
            label,
            self.paths.profile(label),
            self.backend.clone(),
            self.http.clone(),
        )?);
        devices.insert(label.to_owned(), device.clone());
        Ok(device)
    }

    /// The device of `label` if it is open.
    pub fn open_device(&self, label: &str) -> Option<Arc<Device>> {
        self.devices.lock().get(label).cloned()
    }

    /// Forgets the device of a closed window (its files stay for next time).
    pub fn close_device(&self, label: &str) -> Option<Arc<Device>> {
        self.devices.lock().remove(label)
    }

    /// Every open device.
    pub fn all_devices(&self) -> Vec<Arc<Device>> {
        self.devices.lock().values().cloned().collect()
    }

    /// The server's limits (size, types), cached per controller.
    pub async fn server_info(&self) -> Result<ServerInfo> {
        let url = self.backend.url().await?;
        if let Some((u, info)) = &*self.info.lock()
            && *u == url
        {
            return Ok(info.clone());
        }
        let info = client::Api::with_http(&url, self.http.clone())?
            .info()
            .await?;
        *self.info.lock() = Some((url, info.clone()));
        Ok(info)
    }
}

/// Window labels the app creates: `main` and `device-<n>`. Labels name folders, so nothing
/// else is accepted.
pub fn valid_label(label: &str) -> bool {
    label == "main"
        || label
            .strip_prefix("device-")
            .is_some_and(|n| !n.is_empty() && n.len() <= 4 && n.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_checked() {
        assert!(valid_label("main"));
        assert!(valid_label("device-2"));
        assert!(!valid_label("device-"));
        assert!(!valid_label("device-../../x"));
        assert!(!valid_label("other"));
    }
}
