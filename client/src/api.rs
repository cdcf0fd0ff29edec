//! Typed access to the controller's HTTP API: one async method per route, request and response
//! bodies from [`protocol::http`], every failure an [`ApiError`].
//!
//! [`Api`] is a cheap-to-clone handle (the underlying `reqwest::Client` pools connections), so
//! the connection engine, the application and a CLI command can share one.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use protocol::http::{
    AssignResponse, ConversationsResponse, CreateRoomRequest, DeviceInfo, DevicesResponse,
    DirectRequest, ErrorBody, Health, HistoryPage, InviteRequest, LoginRequest, LoginResponse,
    MembersResponse, NodesResponse, RegisterRequest, RoomListing, RoomsResponse, ServerInfo,
    UserLookup,
};
use protocol::model::{Attachment, ConversationSummary, MemberInfo, UserInfo};
use protocol::ws::ErrorCode;
use protocol::{AttachmentId, ConvId, DeviceId, NodeId, Seq};
use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use serde::de::DeserializeOwned;

/// Time allowed to open a TCP (and TLS) connection to the controller.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for an ordinary request, body included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Uploads and downloads carry up to tens of megabytes, so they get longer.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(300);
/// How much of an error body is read: a real `ErrorBody` is tiny, and a misbehaving proxy could
/// answer with megabytes of HTML.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Why a controller request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The controller answered with an error status. `code` comes from its [`ErrorBody`]; when
    /// the body was not one (a proxy in between, say) it is derived from the status.
    #[error("{message} (HTTP {status}, {})", code_name(*code))]
    Server {
        /// The HTTP status.
        status: u16,
        /// What went wrong, for programs.
        code: ErrorCode,
        /// What went wrong, for people.
        message: String,
    },
    /// The request did not get an answer: connection refused, reset, timed out.
    #[error("cannot reach the server: {0}")]
    Transport(#[source] reqwest::Error),
    /// A success status whose body is not what the route returns.
    #[error("unexpected answer from the server (HTTP {status}): {detail}")]
    Unexpected {
        /// The HTTP status.
        status: u16,
        /// What did not fit.
        detail: String,
    },
    /// The base URL given is not an `http://` or `https://` URL.
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl ApiError {
    /// The error code, when the controller answered with an error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ApiError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The HTTP status, when the controller answered at all.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Server { status, .. } | ApiError::Unexpected { status, .. } => Some(*status),
            ApiError::Transport(e) => e.status().map(|s| s.as_u16()),
            ApiError::InvalidUrl { .. } => None,
        }
    }

    /// Whether the same request may succeed later: the server was unreachable, overloaded or
    /// temporarily without a backend. Invalid requests, refusals and auth failures are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            ApiError::Server { status, code, .. } => {
                code.is_retryable() || matches!(*status, 502..=504)
            }
            ApiError::Transport(e) => !e.is_builder(),
            ApiError::Unexpected { status, .. } => *status >= 500,
            ApiError::InvalidUrl { .. } => false,
        }
    }

    /// Whether the token is no good any more (expired, bad, or its device revoked): the user
    /// has to log in again.
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            ApiError::Server {
                code: ErrorCode::Unauthorized | ErrorCode::Revoked,
                ..
            }
        )
    }
}

/// An HTTP client set up the way [`Api`] needs (connect timeout, user agent). Cheap to clone;
/// clones share the connection pool.
pub fn http_client() -> Result<reqwest::Client, ApiError> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("chat-client/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(ApiError::Transport)
}

/// A TLS configuration that trusts the certificates in `ca_pem` (PEM) and nothing else: for a
/// cluster whose certificates come from its own authority rather than a public one.
pub fn tls_trusting(ca_pem: &[u8]) -> Result<std::sync::Arc<rustls::ClientConfig>, std::io::Error> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(cert.map_err(|e| invalid(e.to_string()))?)
            .map_err(|e| invalid(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(invalid("no certificate in the PEM".into()));
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| invalid(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

/// [`http_client`] with this TLS trust instead of the public roots.
pub fn http_client_with_tls(
    tls: std::sync::Arc<rustls::ClientConfig>,
) -> Result<reqwest::Client, ApiError> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("chat-client/", env!("CARGO_PKG_VERSION")))
        .use_preconfigured_tls((*tls).clone())
        .build()
        .map_err(ApiError::Transport)
}

/// The wire name of an error code (`not_member`…), as serde writes it.
pub fn code_name(code: ErrorCode) -> String {
    match serde_json::to_value(code) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{code:?}"),
    }
}

/// Which page of a conversation's history to fetch. Pages are always in ascending `seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryRange {
    /// The most recent events.
    Latest,
    /// Events with `seq` below this one (scrolling back).
    Before(Seq),
    /// Events with `seq` above this one (catching up).
    After(Seq),
}

/// A downloaded attachment.
#[derive(Clone, Debug)]
pub struct Download {
    /// Its MIME type, from the response's `Content-Type`.
    pub mime: String,
    /// Its bytes.
    pub bytes: Bytes,
}

/// A handle on the controller's HTTP API, with or without a bearer token.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    /// Always ends with `/`, so routes can be appended as path segments.
    base: Url,
    token: Option<String>,
}

impl fmt::Debug for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the token: Debug output ends up in logs.
        f.debug_struct("Api")
            .field("base", &self.base.as_str())
            .field("authenticated", &self.token.is_some())
            .finish()
    }
}

impl Api {
    /// A handle on the controller at `base_url` (for example `http://127.0.0.1:8080`), without
    /// a token: enough for `register`, `login`, `health`, `info` and `nodes`.
    pub fn new(base_url: &str) -> Result<Api, ApiError> {
        Api::with_http(base_url, http_client()?)
    }

    /// Like [`Api::new`], on an existing HTTP client. A process running many clients (the
    /// lab's virtual users) shares one [`http_client`] this way: one connection pool and one
    /// TLS setup instead of one each.
    pub fn with_http(base_url: &str, http: reqwest::Client) -> Result<Api, ApiError> {
        let invalid = |reason: &str| ApiError::InvalidUrl {
            url: base_url.to_owned(),
            reason: reason.to_owned(),
        };
        let mut base = Url::parse(base_url.trim()).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https"));
        }
        if base.cannot_be_a_base() || base.host().is_none() {
            return Err(invalid("it has no host"));
        }
        base.set_query(None);
        base.set_fragment(None);
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        Ok(Api {
            http,
            base,
            token: None,
        })
    }

    /// The same controller, authenticated with `token`.
    pub fn with_token(mut self, token: impl Into<String>) -> Api {
        self.token = Some(token.into());
        self
    }

    /// The controller's base URL.
    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    /// `GET /healthz`.
    pub async fn health(&self) -> Result<Health, ApiError> {
        self.get(&["healthz"]).await
    }

    /// `GET /v1/info`: limits and backends.
    pub async fn info(&self) -> Result<ServerInfo, ApiError> {
        self.get(&["v1", "info"]).await
    }

    /// `POST /v1/auth/register`.
    pub async fn register(&self, req: &RegisterRequest) -> Result<UserInfo, ApiError> {
        let url = self.url(&["v1", "auth", "register"]);
        json(self.request(Method::POST, url).json(req)).await
    }

    /// `POST /v1/auth/login`: a token for one user on one device.
    pub async fn login(&self, req: &LoginRequest) -> Result<LoginResponse, ApiError> {
        let url = self.url(&["v1", "auth", "login"]);
        json(self.request(Method::POST, url).json(req)).await
    }

    /// `GET /v1/devices`: every device the user has logged in from.
    pub async fn devices(&self) -> Result<Vec<DeviceInfo>, ApiError> {
        let r: DevicesResponse = self.get(&["v1", "devices"]).await?;
        Ok(r.devices)
    }

    /// `DELETE /v1/devices/{id}`: revokes a device; its sockets are closed.
    pub async fn revoke_device(&self, device: &DeviceId) -> Result<(), ApiError> {
        let url = self.url(&["v1", "devices", device.as_str()]);
        empty(self.request(Method::DELETE, url)).await
    }

    /// `GET /v1/assign?exclude=…`: the node to connect to, never one of `exclude`.
    pub async fn assign(&self, exclude: &[NodeId]) -> Result<AssignResponse, ApiError> {
        let mut url = self.url(&["v1", "assign"]);
        if !exclude.is_empty() {
            let list = exclude
                .iter()
                .map(NodeId::as_str)
                .collect::<Vec<_>>()
                .join(",");
            url.query_pairs_mut().append_pair("exclude", &list);
        }
        json(self.request(Method::GET, url)).await
    }

    /// `GET /v1/nodes`: every node holding a lease (for signed-in users).
    pub async fn nodes(&self) -> Result<NodesResponse, ApiError> {
        self.get(&["v1", "nodes"]).await
    }

    /// `GET /v1/conversations`: mine, most recent activity first.
    pub async fn conversations(&self) -> Result<Vec<ConversationSummary>, ApiError> {
        let r: ConversationsResponse = self.get(&["v1", "conversations"]).await?;
        Ok(r.conversations)
    }

    /// `GET /v1/conversations/{id}`.
    pub async fn conversation(&self, conv: ConvId) -> Result<ConversationSummary, ApiError> {
        self.get(&["v1", "conversations", &conv.to_string()]).await
    }

    /// `POST /v1/conversations/direct`: opens (or finds) the direct conversation with a user.
    pub async fn open_direct(&self, username: &str) -> Result<ConversationSummary, ApiError> {
        let url = self.url(&["v1", "conversations", "direct"]);
        let body = DirectRequest {
            username: username.to_owned(),
        };
        json(self.request(Method::POST, url).json(&body)).await
    }

    /// `GET /v1/conversations/{id}/members`.
    pub async fn members(&self, conv: ConvId) -> Result<Vec<MemberInfo>, ApiError> {
        let r: MembersResponse = self
            .get(&["v1", "conversations", &conv.to_string(), "members"])
            .await?;
        Ok(r.members)
    }

    /// `GET /v1/conversations/{id}/events`: one page of history in ascending `seq`; `limit`
    /// defaults to the server's page size.
    pub async fn history(
        &self,
        conv: ConvId,
        range: HistoryRange,
        limit: Option<u32>,
    ) -> Result<HistoryPage, ApiError> {
        let url = self.history_url(conv, range, limit);
        json(self.request(Method::GET, url)).await
    }

    /// `POST /v1/conversations/{id}/attachments?name=…`: uploads a file to a conversation.
    /// The server refuses a type it does not allow (`invalid`) or a file too large
    /// (`too_large`); see [`protocol::limits::attachment_type_allowed`] to check beforehand.
    pub async fn upload(
        &self,
        conv: ConvId,
        name: &str,
        mime: &str,
        body: impl Into<reqwest::Body>,
    ) -> Result<Attachment, ApiError> {
        let mut url = self.url(&["v1", "conversations", &conv.to_string(), "attachments"]);
        url.query_pairs_mut().append_pair("name", name);
        let req = self
            .request(Method::POST, url)
            .timeout(TRANSFER_TIMEOUT)
            .header(CONTENT_TYPE, mime)
            .body(body);
        json(req).await
    }

    /// `GET /v1/attachments/{id}`: an attachment's bytes and type.
    pub async fn download(&self, id: &AttachmentId) -> Result<Download, ApiError> {
        let url = self.url(&["v1", "attachments", id.as_str()]);
        let resp = send(self.request(Method::GET, url).timeout(TRANSFER_TIMEOUT)).await?;
        let resp = success(resp).await?;
        let mime = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_owned();
        let bytes = resp.bytes().await.map_err(ApiError::Transport)?;
        Ok(Download { mime, bytes })
    }

    /// `POST /v1/rooms`: creates a room.
    pub async fn create_room(
        &self,
        req: &CreateRoomRequest,
    ) -> Result<ConversationSummary, ApiError> {
        let url = self.url(&["v1", "rooms"]);
        json(self.request(Method::POST, url).json(req)).await
    }

    /// `GET /v1/rooms?q=`: public rooms, by name, optionally filtered.
    pub async fn rooms(&self, query: Option<&str>) -> Result<Vec<RoomListing>, ApiError> {
        let mut url = self.url(&["v1", "rooms"]);
        if let Some(q) = query {
            url.query_pairs_mut().append_pair("q", q);
        }
        let r: RoomsResponse = json(self.request(Method::GET, url)).await?;
        Ok(r.rooms)
    }

    /// `POST /v1/rooms/{id}/join`: joins a public room.
    pub async fn join_room(&self, room: ConvId) -> Result<ConversationSummary, ApiError> {
        let url = self.url(&["v1", "rooms", &room.to_string(), "join"]);
        json(self.request(Method::POST, url)).await
    }

    /// `POST /v1/rooms/{id}/invite`: adds a user to a room I am in.
    pub async fn invite(&self, room: ConvId, username: &str) -> Result<(), ApiError> {
        let url = self.url(&["v1", "rooms", &room.to_string(), "invite"]);
        let body = InviteRequest {
            username: username.to_owned(),
        };
        empty(self.request(Method::POST, url).json(&body)).await
    }

    /// `POST /v1/rooms/{id}/leave`.
    pub async fn leave_room(&self, room: ConvId) -> Result<(), ApiError> {
        let url = self.url(&["v1", "rooms", &room.to_string(), "leave"]);
        empty(self.request(Method::POST, url)).await
    }

    /// `GET /v1/users/{username}`.
    pub async fn user(&self, username: &str) -> Result<UserLookup, ApiError> {
        self.get(&["v1", "users", username]).await
    }

    /// The base URL with `segments` appended, each percent-encoded as needed (user names and
    /// file names are user input).
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        // `new` refused URLs that cannot be a base, so this always succeeds.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn history_url(&self, conv: ConvId, range: HistoryRange, limit: Option<u32>) -> Url {
        let mut url = self.url(&["v1", "conversations", &conv.to_string(), "events"]);
        let mut pairs: Vec<(&str, String)> = Vec::new();
        match range {
            HistoryRange::Latest => {}
            HistoryRange::Before(seq) => pairs.push(("before", seq.to_string())),
            HistoryRange::After(seq) => pairs.push(("after", seq.to_string())),
        }
        if let Some(limit) = limit {
            pairs.push(("limit", limit.to_string()));
        }
        if !pairs.is_empty() {
            url.query_pairs_mut().extend_pairs(pairs);
        }
        url
    }

    fn request(&self, method: Method, url: Url) -> RequestBuilder {
        let req = self.http.request(method, url).timeout(REQUEST_TIMEOUT);
        match &self.token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    async fn get<T: DeserializeOwned>(&self, segments: &[&str]) -> Result<T, ApiError> {
        json(self.request(Method::GET, self.url(segments))).await
    }
}

async fn send(req: RequestBuilder) -> Result<Response, ApiError> {
    req.send().await.map_err(ApiError::Transport)
}

/// Sends a request and decodes its JSON answer.
async fn json<T: DeserializeOwned>(req: RequestBuilder) -> Result<T, ApiError> {
    let resp = success(send(req).await?).await?;
    let status = resp.status().as_u16();
    let body = resp.bytes().await.map_err(ApiError::Transport)?;
    serde_json::from_slice(&body).map_err(|e| ApiError::Unexpected {
        status,
        detail: e.to_string(),
    })
}

/// Sends a request whose answer has no body (204).
async fn empty(req: RequestBuilder) -> Result<(), ApiError> {
    success(send(req).await?).await.map(drop)
}

/// Passes a success response through; turns anything else into [`ApiError::Server`].
async fn success(resp: Response) -> Result<Response, ApiError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = read_capped(resp, MAX_ERROR_BODY).await;
    Err(error_from(status, &body))
}

/// Reads at most `cap` bytes of a body; a body that breaks off is kept as far as it came.
async fn read_capped(mut resp: Response, cap: usize) -> Vec<u8> {
    let mut buf = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = cap.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if buf.len() >= cap {
            break;
        }
    }
    buf
}

/// The error an error response stands for: its [`ErrorBody`] when it has one, else a code
/// guessed from the status so callers can still branch on it.
pub(crate) fn error_from(status: StatusCode, body: &[u8]) -> ApiError {
    if let Ok(ErrorBody { error }) = serde_json::from_slice::<ErrorBody>(body) {
        return ApiError::Server {
            status: status.as_u16(),
            code: error.code,
            message: error.message,
        };
    }
    let code = match status.as_u16() {
        400 | 422 => ErrorCode::Invalid,
        401 => ErrorCode::Unauthorized,
        403 => ErrorCode::Forbidden,
        404 => ErrorCode::NotFound,
        409 => ErrorCode::Conflict,
        413 => ErrorCode::TooLarge,
        429 => ErrorCode::RateLimited,
        502..=504 => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    };
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("error without a body")
            .to_owned()
    } else {
        text.chars().take(200).collect()
    };
    ApiError::Server {
        status: status.as_u16(),
        code,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_normalised() -> Result<(), ApiError> {
        let api = Api::new("http://127.0.0.1:8080")?;
        assert_eq!(
            api.url(&["v1", "info"]).as_str(),
            "http://127.0.0.1:8080/v1/info"
        );
        let api = Api::new("https://chat.example/prefix?x=1")?;
        assert_eq!(
            api.url(&["v1", "users", "a b/c"]).as_str(),
            "https://chat.example/prefix/v1/users/a%20b%2Fc"
        );
        assert!(matches!(
            Api::new("ftp://x"),
            Err(ApiError::InvalidUrl { .. })
        ));
        assert!(matches!(
            Api::new("not a url"),
            Err(ApiError::InvalidUrl { .. })
        ));
        Ok(())
    }

    #[test]
    fn error_bodies_are_decoded_or_guessed() {
        let body = br#"{"error":{"code":"not_member","message":"not yours"}}"#;
        let e = error_from(StatusCode::FORBIDDEN, body);
        assert_eq!(e.code(), Some(ErrorCode::NotMember));
        assert_eq!(e.status(), Some(403));
        assert!(!e.is_retryable());
        assert_eq!(e.to_string(), "not yours (HTTP 403, not_member)");

        let e = error_from(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>");
        assert_eq!(e.code(), Some(ErrorCode::Unavailable));
        assert!(e.is_retryable());

        let e = error_from(
            StatusCode::SERVICE_UNAVAILABLE,
            br#"{"error":{"code":"no_node","message":"none"}}"#,
        );
        assert_eq!(e.code(), Some(ErrorCode::NoNode));
        assert!(e.is_retryable());

        let e = error_from(StatusCode::UNAUTHORIZED, b"");
        assert!(e.is_auth());
        assert_eq!(e.code(), Some(ErrorCode::Unauthorized));
    }

    #[test]
    fn history_query() -> Result<(), ApiError> {
        let api = Api::new("http://h:1/")?;
        let url = |range, limit| api.history_url(ConvId(7), range, limit).to_string();
        assert_eq!(
            url(HistoryRange::After(41), Some(200)),
            "http://h:1/v1/conversations/7/events?after=41&limit=200"
        );
        assert_eq!(
            url(HistoryRange::Before(9), None),
            "http://h:1/v1/conversations/7/events?before=9"
        );
        assert_eq!(
            url(HistoryRange::Latest, None),
            "http://h:1/v1/conversations/7/events"
        );
        Ok(())
    }
}
