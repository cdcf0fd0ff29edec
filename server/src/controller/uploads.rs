//! Attachments: uploads and downloads. An upload is checked before its body is read — the
//! uploader's membership, the declared type and size, the uploader's quota, and room in the
//! controller's upload memory — then its body is read chunk by chunk up to the size limit,
//! and its bytes must be what the declared type says (see [`sniff`]). A download is served
//! with the canonical type only, inline only for the image types.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use futures::StreamExt;
use protocol::http::Attachment;
use protocol::limits;
use protocol::{AttachmentId, ConvId};
use serde::Deserialize;
use tokio::sync::Semaphore;

use super::AppState;
use super::error::{ApiError, Authed, PathOf, QueryOf};
use crate::ids::now_ms;
use crate::store::AttachmentBlob;

type Api<T> = Result<T, ApiError>;

/// Upload memory is counted in units of this many bytes (a semaphore's permits are `u32`).
const UNIT: u64 = 1024;

/// The upload limits and the memory the uploads being read may hold together.
pub struct Uploads {
    /// Largest attachment.
    pub max_bytes: u64,
    /// Most bytes of attachments one user may have stored.
    pub quota_bytes: u64,
    /// Room for the bodies being read, in [`UNIT`]s: an upload takes its declared size
    /// before its body is read, so the controller's upload memory is bounded whatever the
    /// load. Uploads that find no room get `503` with `Retry-After`.
    memory: Semaphore,
}

impl Uploads {
    /// Limits with room for `in_flight_bytes` of bodies being read at once (at least one
    /// largest attachment).
    pub fn new(max_bytes: u64, quota_bytes: u64, in_flight_bytes: u64) -> Self {
        let units = in_flight_bytes.max(max_bytes).div_ceil(UNIT);
        Uploads {
            max_bytes,
            quota_bytes,
            memory: Semaphore::new(usize::try_from(units).unwrap_or(Semaphore::MAX_PERMITS)),
        }
    }
}

#[derive(Deserialize)]
pub(super) struct UploadQuery {
    name: Option<String>,
}

/// `POST /v1/conversations/{id}/attachments?name=…`.
pub(super) async fn upload(
    State(s): State<Arc<AppState>>,
    Authed(me): Authed,
    PathOf(id): PathOf<i64>,
    QueryOf(q): QueryOf<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Api<(StatusCode, Json<Attachment>)> {
    let conv = ConvId(id);
    let limits = &s.uploads;
    // Everything that does not need the bytes is checked before a byte is read.
    if !s.store.is_member(conv, me.user).await? {
        return Err(ApiError::NotMember);
    }
    let declared = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream");
    let mime = essence(declared);
    if !limits::attachment_type_allowed(&mime) {
        return Err(ApiError::Invalid(format!(
            "attachments of type {mime:?} are not accepted (accepted: {})",
            limits::ATTACHMENT_TYPES.join(", ")
        )));
    }
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        ApiError::TooLarge(format!(
            "attachments are limited to {} bytes",
            limits.max_bytes
        ))
    };
    if length.is_some_and(|n| n > limits.max_bytes) {
        return Err(too_large());
    }
    if length == Some(0) {
        return Err(ApiError::Invalid("the upload is empty".into()));
    }
    // Without a length, the body may be as large as the limit.
    let expected = length.unwrap_or(limits.max_bytes);
    let used = s.store.attachment_bytes(me.user).await?;
    if used.saturating_add(expected) > limits.quota_bytes {
        return Err(ApiError::TooLarge(format!(
            "over your attachment quota: {used} of {} bytes used",
            limits.quota_bytes
        )));
    }
    let units = u32::try_from(expected.div_ceil(UNIT)).unwrap_or(u32::MAX);
    let _room = limits.memory.try_acquire_many(units).map_err(|_| {
        metrics::counter!("chat_uploads_refused_total", "reason" => "busy").increment(1);
        ApiError::Busy("too many uploads at once; retry shortly".into())
    })?;

    // The body, chunk by chunk, never past the limit (nor past its declared length).
    let cap = usize::try_from(expected).unwrap_or(usize::MAX);
    let mut data = BytesMut::with_capacity(cap.min(64 * 1024));
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| ApiError::Malformed(format!("reading the upload: {e}")))?;
        if data.len() + chunk.len() > cap {
            return Err(too_large());
        }
        data.extend_from_slice(&chunk);
    }
    if data.is_empty() {
        return Err(ApiError::Invalid("the upload is empty".into()));
    }
    if !sniff(&mime, &data) {
        metrics::counter!("chat_uploads_refused_total", "reason" => "type").increment(1);
        return Err(ApiError::Invalid(format!(
            "the bytes are not {mime}; send them as application/octet-stream"
        )));
    }
    let meta = Attachment {
        id: AttachmentId::new(uuid::Uuid::new_v4().simple().to_string())
            .map_err(|e| ApiError::Internal(e.to_string()))?,
        name: file_name(q.name.as_deref()),
        mime,
        size: data.len() as u64,
        conv,
    };
    s.store
        .put_attachment(AttachmentBlob {
            meta: meta.clone(),
            uploader: me.user,
            created_at: now_ms(),
            data: data.freeze(),
        })
        .await?;
    metrics::counter!("chat_attachments_uploaded_total").increment(1);
    Ok((StatusCode::CREATED, Json(meta)))
}

/// `GET /v1/attachments/{id}`.
pub(super) async fn download(
    State(s): State<Arc<AppState>>,
    Authed(me): Authed,
    PathOf(id): PathOf<String>,
) -> Api<Response> {
    let id = AttachmentId::new(id).map_err(|_| ApiError::NotFound("no such attachment".into()))?;
    let blob = s
        .store
        .attachment(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such attachment".into()))?;
    if !s.store.is_member(blob.meta.conv, me.user).await? {
        return Err(ApiError::NotMember);
    }
    // What older versions stored as it came is served by its canonical type, and as an
    // opaque download unless it is one of the accepted types.
    let mut mime = essence(&blob.meta.mime);
    if !limits::attachment_type_allowed(&mime) {
        mime = "application/octet-stream".to_owned();
    }
    let inline = INLINE_IMAGES.contains(&mime.as_str()) && sniff(&mime, &blob.data);
    let disposition = if inline { "inline" } else { "attachment" };
    Ok((
        [
            (header::CONTENT_TYPE, mime),
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "{disposition}; filename=\"{}\"",
                    file_name(Some(&blob.meta.name))
                ),
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
            (header::CACHE_CONTROL, "private, max-age=86400".to_owned()),
        ],
        blob.data,
    )
        .into_response())
}

/// The image types a browser may show inline.
const INLINE_IMAGES: &[&str] = &["image/png", "image/jpeg", "image/gif", "image/webp"];

/// A declared type reduced to its essence, `type/subtype` in lower case: parameters (and
/// whatever else follows a `;`) are dropped, so `image/png;,text/html` is `image/png`.
pub fn essence(declared: &str) -> String {
    declared
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Whether `data` is what the (accepted, essential) type `mime` says: the image types, PDF
/// and ZIP by their signatures, `audio/*` and `video/*` by their containers, `text/plain` as
/// UTF-8 text without NUL bytes; `application/octet-stream` claims nothing and takes anything.
pub fn sniff(mime: &str, data: &[u8]) -> bool {
    use infer::MatcherType;
    let found = infer::get(data);
    match mime {
        "application/octet-stream" => true,
        "text/plain" => std::str::from_utf8(data).is_ok() && !data.contains(&0),
        "application/zip" => {
            data.starts_with(b"PK\x03\x04")
                || data.starts_with(b"PK\x05\x06")
                || data.starts_with(b"PK\x07\x08")
        }
        "image/png" | "image/jpeg" | "image/gif" | "image/webp" | "application/pdf" => {
            found.is_some_and(|t| t.mime_type() == mime)
        }
        m if m.starts_with("audio/") => found.is_some_and(|t| {
            // Voice notes are often WebM or MP4 containers, which are also video's.
            matches!(t.matcher_type(), MatcherType::Audio | MatcherType::Video)
        }),
        m if m.starts_with("video/") => {
            found.is_some_and(|t| t.matcher_type() == MatcherType::Video)
        }
        _ => false,
    }
}

/// The file name to store and to offer: no control characters, quotes, slashes or
/// backslashes, at most 128 characters, `file` when nothing is left.
fn file_name(given: Option<&str>) -> String {
    let name: String = given
        .unwrap_or("file")
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '/' | '\\' | '"'))
        .take(128)
        .collect();
    if name.trim().is_empty() {
        "file".to_owned()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0";

    #[test]
    fn the_essence_drops_parameters_and_smuggled_types() {
        assert_eq!(essence("image/png;,text/html"), "image/png");
        assert_eq!(essence(" Text/Plain; charset=utf-8"), "text/plain");
        assert_eq!(essence(""), "");
    }

    #[test]
    fn bytes_must_be_what_the_type_says() {
        assert!(sniff("image/png", PNG));
        assert!(!sniff(
            "image/png",
            b"<html><script>alert(1)</script></html>"
        ));
        assert!(!sniff("image/jpeg", PNG));
        assert!(sniff("application/octet-stream", b"<html>"));
        assert!(sniff("text/plain", "héllo".as_bytes()));
        assert!(!sniff("text/plain", b"\0\x01\x02"));
        assert!(!sniff("text/plain", b"\xff\xfe"));
        assert!(sniff("application/pdf", b"%PDF-1.7\n"));
        assert!(!sniff("application/pdf", b"%PD"));
        assert!(sniff("application/zip", b"PK\x03\x04rest"));
        assert!(!sniff("audio/ogg", b"not audio at all"));
        assert!(sniff("audio/ogg", b"OggS\0\x02\0\0\0\0\0\0\0\0"));
        assert!(!sniff("image/svg+xml", b"<svg/>"));
    }

    #[test]
    fn file_names_are_tamed() {
        assert_eq!(file_name(Some("a\"b/c\\d\r\n.png")), "abcd.png");
        assert_eq!(file_name(Some("  ")), "file");
        assert_eq!(file_name(None), "file");
        assert_eq!(file_name(Some(&"x".repeat(300))).len(), 128);
    }

    #[test]
    fn upload_memory_holds_at_least_one_largest_attachment() {
        let u = Uploads::new(10 * 1024 * 1024, 1 << 30, 0);
        assert_eq!(u.memory.available_permits(), 10 * 1024);
    }
}
