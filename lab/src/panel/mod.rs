//! The lab's web server (feature `panel`): the panel's built assets, its WebSocket stream of
//! [`Update`](protocol::lab::Update)s, the operations it asks for and the report, all over one
//! [`Lab`]. The wire is `protocol::lab`'s; what the panel does with it is in `lab/panel/`.
//!
//! - `GET /` and `GET /assets/…`: the panel (embedded at build time from `lab/panel/dist`).
//! - `GET /api/stream` (WebSocket): frames, see [`stream`].
//! - `GET /api/state`: one full frame, for scripts and tests.
//! - `POST /api/op`: an [`Op`], answered once done.
//! - `GET /api/report.json`, `GET /api/report.html`: the run so far.
//! - `/api/lessons`, `/api/lesson`, `/api/lesson/next`: lessons, see `lessons`.
//!
//! ```no_run
//! # async fn demo(lab: lab::control::Lab) -> Result<(), lab::LabError> {
//! let panel = lab::panel::serve(lab, lab::panel::DEFAULT_ADDR.parse().expect("addr")).await?;
//! println!("{}", panel.url());
//! panel.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Invariant: the server only answers requests whose `Host` is the address it listens on or a
//! loopback name, and whose `Origin`, when there is one, is its own: a web page from elsewhere
//! cannot drive the lab through the browser (nor through DNS rebinding).

mod assets;
mod lessons;
pub mod stream;

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{Request, State, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, extract::Path};
use protocol::lab::{Op, OpResult};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::LabError;
use crate::control::Lab;
use crate::world::Cursor;

/// Where `lab up` serves the panel unless told otherwise (a port taken falls back to any).
pub const DEFAULT_ADDR: &str = "127.0.0.1:7878";

#[derive(Clone)]
struct Ctx {
    lab: Lab,
    addr: SocketAddr,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

/// The running server. Stops when [`PanelServer::shutdown`] is called or it is dropped.
pub struct PanelServer {
    addr: SocketAddr,
    url: String,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl std::fmt::Debug for PanelServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PanelServer")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl PanelServer {
    /// The panel's URL (`http://127.0.0.1:7878/`): open it in a browser or a webview.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every stream and stops serving.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Drop for PanelServer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Serves the panel for `lab` on `addr` (port 0: any free port).
pub async fn serve(lab: Lab, addr: SocketAddr) -> Result<PanelServer, LabError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| LabError::Panel(format!("listening on {addr}: {e}")))?;
    serve_on(lab, listener)
}

/// Serves on [`DEFAULT_ADDR`], or on any free loopback port when that one is taken.
pub async fn serve_default(lab: Lab) -> Result<PanelServer, LabError> {
    let preferred: SocketAddr = DEFAULT_ADDR
        .parse()
        .map_err(|e| LabError::Panel(format!("{DEFAULT_ADDR}: {e}")))?;
    match tokio::net::TcpListener::bind(preferred).await {
        Ok(listener) => serve_on(lab, listener),
        Err(_) => serve(lab, SocketAddr::from(([127, 0, 0, 1], 0))).await,
    }
}

fn serve_on(lab: Lab, listener: tokio::net::TcpListener) -> Result<PanelServer, LabError> {
    let addr = listener
        .local_addr()
        .map_err(|e| LabError::Panel(format!("the panel's address: {e}")))?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the lab panel listens beyond loopback: anyone who reaches it can kill nodes");
    }
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    let ctx = Ctx {
        lab,
        addr,
        cancel: cancel.clone(),
        tasks: tasks.clone(),
    };
    let app = Router::new()
        .route("/api/stream", get(ws))
        .route("/api/state", get(state))
        .route("/api/op", post(op))
        .route("/api/report.json", get(report_json))
        .route("/api/report.html", get(report_html))
        .route("/", get(index))
        .route("/{*path}", get(asset))
        .merge(lessons::routes(ctx.lab.clone()))
        .layer(middleware::from_fn_with_state(ctx.clone(), same_origin))
        .with_state(ctx);
    let stop = cancel.clone();
    tasks.spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the lab panel's server stopped");
        }
    });
    let url = format!("http://{addr}/");
    Ok(PanelServer {
        addr,
        url,
        cancel,
        tasks,
    })
}

/// The host part of a `Host` header or an origin's authority, without its port.
fn host_name(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority.split(':').next().unwrap_or(authority)
}

/// Whether a request may reach the lab: see the module's invariant.
fn allowed(headers: &HeaderMap, addr: SocketAddr) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = host_name(host);
    let loopback_name = matches!(name, "localhost" | "127.0.0.1" | "::1")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !(loopback_name || name == addr.ip().to_string()) {
        return false;
    }
    match headers.get(header::ORIGIN).map(HeaderValue::to_str) {
        None => true,
        Some(Ok(origin)) => origin
            .split_once("://")
            .is_some_and(|(_, authority)| authority == host),
        Some(Err(_)) => false,
    }
}

async fn same_origin(State(ctx): State<Ctx>, request: Request, next: Next) -> Response {
    if allowed(request.headers(), ctx.addr) {
        next.run(request).await
    } else {
        (
            StatusCode::FORBIDDEN,
            "the lab panel answers its own pages only",
        )
            .into_response()
    }
}

async fn ws(State(ctx): State<Ctx>, upgrade: WebSocketUpgrade) -> Response {
    let lab = ctx.lab.clone();
    let cancel = ctx.cancel.clone();
    let tasks = ctx.tasks.clone();
    upgrade.on_upgrade(move |socket| async move {
        // The stream belongs to the server: it ends when the server stops.
        tasks.spawn(stream::run(socket, lab, cancel));
    })
}

async fn state(State(ctx): State<Ctx>) -> Response {
    let mut cursor = Cursor::default();
    Json(ctx.lab.update(&mut cursor)).into_response()
}

async fn op(State(ctx): State<Ctx>, Json(op): Json<Op>) -> Json<OpResult> {
    Json(ctx.lab.op(op).await)
}

async fn report_json(State(ctx): State<Ctx>) -> Response {
    (
        [(
            header::CONTENT_DISPOSITION,
            "inline; filename=\"lab-report.json\"",
        )],
        Json(ctx.lab.report()),
    )
        .into_response()
}

async fn report_html(State(ctx): State<Ctx>) -> Response {
    (
        [(
            header::CONTENT_DISPOSITION,
            "inline; filename=\"lab-report.html\"",
        )],
        Html(crate::report::html(&ctx.lab.report())),
    )
        .into_response()
}

async fn index() -> Response {
    asset_response("index.html")
}

async fn asset(Path(path): Path<String>) -> Response {
    asset_response(&path)
}

fn asset_response(path: &str) -> Response {
    match assets::find(path) {
        Some((bytes, mime)) => {
            let cache = if path.starts_with("assets/") {
                // Vite names them by content hash.
                "public, max-age=31536000, immutable"
            } else {
                "no-cache"
            };
            (
                [(header::CONTENT_TYPE, mime), (header::CACHE_CONTROL, cache)],
                bytes,
            )
                .into_response()
        }
        None if path == "index.html" => Html(assets::NOT_BUILT).into_response(),
        None => (StatusCode::NOT_FOUND, "no such file in the panel").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(host: &str, origin: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).expect("host"));
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).expect("origin"));
        }
        h
    }

    #[test]
    fn only_its_own_pages_reach_the_lab() {
        let addr: SocketAddr = "127.0.0.1:7878".parse().expect("addr");
        assert!(allowed(&headers("127.0.0.1:7878", None), addr));
        assert!(allowed(&headers("localhost:7878", None), addr));
        assert!(allowed(
            &headers("127.0.0.1:7878", Some("http://127.0.0.1:7878")),
            addr
        ));
        assert!(!allowed(
            &headers("127.0.0.1:7878", Some("https://evil.example")),
            addr
        ));
        assert!(!allowed(&headers("evil.example:7878", None), addr));
        assert!(!allowed(&HeaderMap::new(), addr));
        assert_eq!(host_name("[::1]:80"), "::1");
    }
}
