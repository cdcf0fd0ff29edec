//! The WebSocket to one chat node: opening it (with the token and reservation the controller
//! handed out), writing [`ClientFrame`]s, reading [`ServerFrame`]s, closing it. Transport only:
//! what the frames mean is the engine's business.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use protocol::http::AssignResponse;
use protocol::limits;
use protocol::ws::{ClientFrame, ErrorCode, ServerFrame, close};
use reqwest::{StatusCode, Url};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::api::error_from;

/// Largest frame accepted from a node. Device → node frames are capped by
/// [`limits::MAX_FRAME_BYTES`], but a node's `welcome` lists every conversation with its last
/// message (up to [`limits::MAX_TEXT_BYTES`] each), so it can be much larger; this bounds it at
/// something still sane for a client.
pub const MAX_INCOMING_BYTES: usize = 16 * 1024 * 1024;

/// Buffers are kept small: a device has one socket and a modest flow, and the lab runs
/// thousands of virtual devices in one process.
const READ_BUFFER: usize = 8 * 1024;
/// Frames are flushed one by one (or in a batch by the engine), so no write batching buffer.
const WRITE_BUFFER: usize = 0;
/// The write buffer only grows while the socket is not writable; bound it to a few frames.
const MAX_WRITE_BUFFER: usize = 4 * limits::MAX_FRAME_BYTES;

/// The socket type.
type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why a socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The node answered the upgrade with 401: the token is bad, expired or revoked.
    #[error("the node refused the token: {message}")]
    Unauthorized {
        /// The error code of its body (`unauthorized` or `revoked`).
        code: ErrorCode,
        /// What it said.
        message: String,
    },
    /// The node answered the upgrade with another HTTP error.
    #[error("the node refused the connection (HTTP {status}): {message}")]
    Rejected {
        /// The status.
        status: u16,
        /// The error code of its body, if it was an `ErrorBody`.
        code: Option<ErrorCode>,
        /// What it said.
        message: String,
    },
    /// The node could not be reached or the handshake broke.
    #[error("{0}")]
    Failed(String),
    /// The controller handed out a URL that is not a WebSocket URL.
    #[error("invalid node URL {url:?}: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// What reading the socket gave.
#[derive(Debug)]
pub enum Incoming {
    /// A frame from the node.
    Frame(Box<ServerFrame>),
    /// A text message that is not a frame this client knows (a newer node, or garbage).
    Unreadable(String),
    /// A control message or other traffic that only proves the node is alive.
    Alive,
    /// The node closed the socket with this code and reason.
    Closed {
        /// The close code (1005 when the close frame had none).
        code: u16,
        /// The reason text.
        reason: String,
    },
    /// The stream ended without a close frame.
    Eof,
    /// Reading failed.
    Error(String),
}

/// An open socket to a node.
pub struct Connection {
    ws: Socket,
}

/// The upgrade URL: the node's `ws_url` with the reservation as a query parameter. The token
/// is not in it (URLs end up in logs and proxies' records): it goes in the `Authorization`
/// header ([`upgrade_request`]).
pub fn upgrade_url(assign: &AssignResponse) -> Result<Url, ConnectError> {
    let bad = |reason: String| ConnectError::BadUrl {
        url: assign.ws_url.clone(),
        reason,
    };
    let mut url = Url::parse(&assign.ws_url).map_err(|e| bad(e.to_string()))?;
    if !matches!(url.scheme(), "ws" | "wss") {
        return Err(bad("the scheme must be ws or wss".to_owned()));
    }
    url.query_pairs_mut()
        .append_pair("reservation", &assign.reservation);
    Ok(url)
}

/// The upgrade request: [`upgrade_url`] with the token as `Authorization: Bearer`.
pub fn upgrade_request(
    assign: &AssignResponse,
    token: &str,
) -> Result<tungstenite::handshake::client::Request, ConnectError> {
    use tungstenite::client::IntoClientRequest;
    let url = upgrade_url(assign)?;
    let bad = |reason: String| ConnectError::BadUrl {
        url: assign.ws_url.clone(),
        reason,
    };
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| bad(e.to_string()))?;
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| bad("the token is not a valid header value".to_owned()))?;
    req.headers_mut().insert("authorization", value);
    Ok(req)
}

/// The socket configuration every client connection uses.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(Some(MAX_INCOMING_BYTES))
        .max_frame_size(Some(MAX_INCOMING_BYTES))
}

impl Connection {
    /// Opens the socket to the node the controller assigned, within `timeout`; a `wss://`
    /// node is checked against `tls` when given (else the public roots).
    pub async fn open(
        assign: &AssignResponse,
        token: &str,
        timeout: Duration,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Connection, ConnectError> {
        let req = upgrade_request(assign, token)?;
        let connect = tokio_tungstenite::connect_async_tls_with_config(
            req,
            Some(ws_config()),
            true,
            tls.map(tokio_tungstenite::Connector::Rustls),
        );
        match tokio::time::timeout(timeout, connect).await {
            Err(_) => Err(ConnectError::Failed(format!(
                "no answer within {} ms",
                timeout.as_millis()
            ))),
            Ok(Ok((ws, _response))) => Ok(Connection { ws }),
            Ok(Err(e)) => Err(connect_error(e)),
        }
    }

    /// Wraps a socket that is already open (tests use this on accepted streams).
    pub fn from_socket(ws: Socket) -> Connection {
        Connection { ws }
    }

    /// Queues a frame without flushing; [`Connection::flush`] writes what is queued.
    pub async fn feed(&mut self, frame: &ClientFrame) -> Result<(), String> {
        let text = serde_json::to_string(frame).map_err(|e| e.to_string())?;
        self.ws
            .feed(Message::text(text))
            .await
            .map_err(|e| e.to_string())
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<(), String> {
        self.ws.flush().await.map_err(|e| e.to_string())
    }

    /// Writes one frame now.
    pub async fn send(&mut self, frame: &ClientFrame) -> Result<(), String> {
        self.feed(frame).await?;
        self.flush().await
    }

    /// Sends a ping; the node's pong (or any traffic) shows it is alive.
    pub async fn ping(&mut self) -> Result<(), String> {
        self.ws
            .send(Message::Ping(Default::default()))
            .await
            .map_err(|e| e.to_string())
    }

    /// Reads the next message. Cancel-safe: dropping the future loses nothing.
    pub async fn recv(&mut self) -> Incoming {
        match self.ws.next().await {
            None => Incoming::Eof,
            Some(Ok(Message::Text(text))) => match serde_json::from_str::<ServerFrame>(&text) {
                Ok(frame) => Incoming::Frame(Box::new(frame)),
                Err(e) => Incoming::Unreadable(format!(
                    "{e}: {}",
                    text.chars().take(120).collect::<String>()
                )),
            },
            Some(Ok(Message::Binary(_))) => {
                Incoming::Unreadable("binary message from the node".to_owned())
            }
            Some(Ok(Message::Close(frame))) => match frame {
                Some(f) => Incoming::Closed {
                    code: u16::from(f.code),
                    reason: f.reason.to_string(),
                },
                None => Incoming::Closed {
                    code: u16::from(CloseCode::Status),
                    reason: String::new(),
                },
            },
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Incoming::Alive,
            Some(Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed)) => {
                Incoming::Eof
            }
            Some(Err(e)) => Incoming::Error(e.to_string()),
        }
    }

    /// Closes the socket cleanly with `code`, waiting at most `timeout` for the node's answer.
    pub async fn close(mut self, code: u16, timeout: Duration) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: "".into(),
        };
        let closing = async {
            if self.ws.close(Some(frame)).await.is_err() {
                return;
            }
            // Read until the node's close frame (or the end), so the close handshake finishes.
            while let Some(Ok(_)) = self.ws.next().await {}
        };
        let _ = tokio::time::timeout(timeout, closing).await;
    }

    /// Closes with 1000 (normal closure).
    pub async fn close_normal(self, timeout: Duration) {
        self.close(close::NORMAL, timeout).await;
    }
}

fn connect_error(e: tungstenite::Error) -> ConnectError {
    match e {
        tungstenite::Error::Http(resp) => {
            let status = resp.status();
            let body = resp.body().as_deref().unwrap_or_default();
            let err = error_from(
                StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
                body,
            );
            let (code, message) = match err {
                crate::api::ApiError::Server { code, message, .. } => (code, message),
                other => (ErrorCode::Internal, other.to_string()),
            };
            if status.as_u16() == 401 || matches!(code, ErrorCode::Revoked) {
                ConnectError::Unauthorized { code, message }
            } else {
                ConnectError::Rejected {
                    status: status.as_u16(),
                    code: Some(code),
                    message,
                }
            }
        }
        tungstenite::Error::Url(e) => ConnectError::BadUrl {
            url: String::new(),
            reason: e.to_string(),
        },
        other => ConnectError::Failed(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::NodeId;

    fn assign(ws_url: &str) -> Result<AssignResponse, protocol::ids::IdError> {
        Ok(AssignResponse {
            node: NodeId::new("n1")?,
            ws_url: ws_url.to_owned(),
            reservation: "r 1&x".to_owned(),
            expires_at: 0,
        })
    }

    #[test]
    fn the_token_goes_in_a_header_not_the_url() -> Result<(), Box<dyn std::error::Error>> {
        let req = upgrade_request(&assign("wss://127.0.0.1:9000/ws")?, "tok.en")?;
        assert_eq!(
            req.uri().to_string(),
            "wss://127.0.0.1:9000/ws?reservation=r+1%26x"
        );
        assert_eq!(
            req.headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer tok.en")
        );
        assert!(matches!(
            upgrade_url(&assign("http://127.0.0.1/ws")?),
            Err(ConnectError::BadUrl { .. })
        ));
        Ok(())
    }

    #[test]
    fn config_is_lean() {
        let c = ws_config();
        assert_eq!(c.read_buffer_size, READ_BUFFER);
        assert!(c.max_write_buffer_size > c.write_buffer_size);
    }
}
