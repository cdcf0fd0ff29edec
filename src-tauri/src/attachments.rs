//! Attachments: the `attachment://` URI scheme that lets the UI show images inline (`<img
//! src="attachment://localhost/ID">`) while Rust fetches the bytes with the window's token,
//! a small on-disk cache per device, and saving a file to the Downloads folder.
//!
//! The webview never sees a token or a controller URL: it names an attachment id, and the
//! window's own device fetches it, so a window can show only what its user may read.

use std::path::{Path, PathBuf};

use protocol::AttachmentId;
use tauri::http::{Request, Response, StatusCode, header};
use tauri::{AppHandle, Manager, UriSchemeContext, UriSchemeResponder, Wry};

use crate::device::Device;
use crate::error::{Error, Result};
use crate::state::AppState;

/// The URI scheme's name.
pub const SCHEME: &str = "attachment";

/// Handles `attachment://localhost/<id>` for the window that asks.
pub fn protocol(
    ctx: UriSchemeContext<'_, Wry>,
    request: Request<Vec<u8>>,
    responder: UriSchemeResponder,
) {
    let app = ctx.app_handle().clone();
    let label = ctx.webview_label().to_owned();
    let id = request.uri().path().trim_start_matches('/').to_owned();
    tauri::async_runtime::spawn(async move {
        let response = match serve(&app, &label, &id).await {
            Ok((mime, bytes)) => Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, mime)
                .header("X-Content-Type-Options", "nosniff")
                .header(
                    header::CACHE_CONTROL,
                    "private, max-age=31536000, immutable",
                )
                .body(bytes),
            Err(e) => {
                tracing::debug!(error = %e, id, "attachment not served");
                let status = match e.kind().as_str() {
                    "not_found" => StatusCode::NOT_FOUND,
                    "forbidden" | "not_member" | "unauthorized" => StatusCode::FORBIDDEN,
                    _ => StatusCode::BAD_GATEWAY,
                };
                Response::builder().status(status).body(Vec::new())
            }
        };
        match response {
            Ok(r) => responder.respond(r),
            Err(e) => tracing::warn!(error = %e, "attachment response"),
        }
    });
}

async fn serve(app: &AppHandle, label: &str, id: &str) -> Result<(String, Vec<u8>)> {
    let state = app.state::<AppState>();
    let device = state.device(label)?;
    fetch(&state, &device, id).await
}

/// An attachment's type and bytes: from the device's cache, else downloaded (and cached).
pub async fn fetch(state: &AppState, device: &Device, id: &str) -> Result<(String, Vec<u8>)> {
    let id = AttachmentId::new(id).map_err(|e| Error::Invalid(e.to_string()))?;
    let dir = device_dir(state, device);
    let (data, mime) = (
        dir.join(id.as_str()),
        dir.join(format!("{}.type", id.as_str())),
    );
    if let (Ok(bytes), Ok(mime)) = (
        tokio::fs::read(&data).await,
        tokio::fs::read_to_string(&mime).await,
    ) {
        return Ok((mime, bytes));
    }
    let api = device.api().await?;
    let download = api.download(&id).await?;
    let bytes = download.bytes.to_vec();
    if let Err(e) = cache_put(&dir, id.as_str(), &download.mime, &bytes) {
        tracing::debug!(error = %e, "attachment not cached");
    }
    Ok((download.mime, bytes))
}

fn device_dir(state: &AppState, device: &Device) -> PathBuf {
    state.paths.profile(&device.label).join("attachments")
}

fn cache_put(dir: &Path, id: &str, mime: &str, bytes: &[u8]) -> std::io::Result<()> {
    crate::store::write_atomic(&dir.join(id), bytes, true)?;
    crate::store::write_atomic(&dir.join(format!("{id}.type")), mime.as_bytes(), true)
}

/// Saves an attachment into the Downloads folder under a name that does not overwrite
/// anything, and returns the path.
pub async fn save(
    app: &AppHandle,
    state: &AppState,
    device: &Device,
    id: &str,
    name: &str,
) -> Result<PathBuf> {
    let (_, bytes) = fetch(state, device, id).await?;
    let dir = app
        .path()
        .download_dir()
        .or_else(|_| app.path().home_dir())
        .map_err(|e| Error::Io(std::io::Error::other(e.to_string())))?;
    tokio::fs::create_dir_all(&dir).await?;
    let name = safe_file_name(name);
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, e)) if !s.is_empty() => (s.to_owned(), format!(".{e}")),
        _ => (name.clone(), String::new()),
    };
    for n in 0..1000 {
        let candidate = if n == 0 {
            dir.join(&name)
        } else {
            dir.join(format!("{stem} ({n}){ext}"))
        };
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&candidate)
            .await;
        match file {
            Ok(mut f) => {
                use tokio::io::AsyncWriteExt;
                f.write_all(&bytes).await?;
                f.flush().await?;
                return Ok(candidate);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Invalid(format!(
        "too many files named {name} in {}",
        dir.display()
    )))
}

/// A file name that stays inside its folder: no separators, no leading dots, not empty.
pub fn safe_file_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if matches!(c, '/' | '\\' | '\0') || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').trim();
    if cleaned.is_empty() {
        "attachment".to_owned()
    } else {
        cleaned.chars().take(120).collect()
    }
}

/// Decodes `%XX` escapes (the UI sends file names and captions `encodeURIComponent`-ed in
/// headers, which are ASCII only).
pub fn percent_decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| Error::Invalid("badly escaped header".into()))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::Invalid("header is not UTF-8".into()))
}

/// "24.0 MiB" and friends, for limits explained to people.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["bytes", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_in_their_folder() {
        assert_eq!(safe_file_name("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(safe_file_name("..."), "attachment");
        assert_eq!(safe_file_name("photo.png"), "photo.png");
    }

    #[test]
    fn headers_decode() -> Result<()> {
        assert_eq!(percent_decode("caf%C3%A9%20photo.png")?, "café photo.png");
        assert!(percent_decode("%zz").is_err());
        Ok(())
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_size(512), "512 bytes");
        assert_eq!(human_size(25 * 1024 * 1024), "25.0 MiB");
    }
}
