//! The one error type of the app's commands, and how it crosses to the UI: every failure is
//! serialized as `{ "kind": "...", "message": "..." }`, where `kind` is a stable name the UI
//! branches on and `message` is a sentence for people. Internals (file paths, SQL) are logged,
//! not shown.

use client::{ApiError, ClientError};
use protocol::ws::ErrorCode;
use serde::ser::SerializeStruct;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The controller answered with an error, or could not be reached.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The client core refused (stopped, too large, timed out).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// No server has been chosen yet (first run), or the local cluster is not up.
    #[error("{0}")]
    NoServer(String),
    /// This window has no signed-in device.
    #[error("not signed in on this window")]
    NotSignedIn,
    /// The local cluster could not be started or driven.
    #[error("local cluster: {0}")]
    Cluster(String),
    /// A username that nobody has on this server.
    #[error(
        "nobody is called \"{0}\" on this server. Check the spelling, or ask them to create an account first"
    )]
    NoSuchUser(String),
    /// A request the UI should not have made (bad id, empty name...).
    #[error("{0}")]
    Invalid(String),
    /// A file too large or of a type the server refuses, caught before uploading.
    #[error("{0}")]
    TooLarge(String),
    /// Reading or writing the app's files failed.
    #[error("could not read or write the app's files: {0}")]
    Io(#[from] std::io::Error),
    /// The local history cache failed.
    #[error("local history cache: {0}")]
    Cache(#[from] rusqlite::Error),
    /// Tauri itself failed (a window could not be created...).
    #[error("{0}")]
    Tauri(#[from] tauri::Error),
}

impl Error {
    /// The stable name the UI branches on: the server's error code when there is one
    /// (`unauthorized`, `conflict`, `not_found`, `too_large`...), `offline` when the server
    /// could not be reached, else the variant's name.
    pub fn kind(&self) -> String {
        match self {
            Error::Api(e) => api_kind(e),
            Error::Client(ClientError::Api(e)) => api_kind(e),
            Error::Client(ClientError::TooLarge { .. }) => "too_large".into(),
            Error::Client(ClientError::Refused(r)) => client::api::code_name(r.code),
            Error::Client(ClientError::Stopped(_)) => "stopped".into(),
            Error::Client(ClientError::Timeout(_)) => "timeout".into(),
            Error::Client(ClientError::NoRuntime) => "internal".into(),
            Error::NoServer(_) => "no_server".into(),
            Error::NoSuchUser(_) => "not_found".into(),
            Error::NotSignedIn => "not_signed_in".into(),
            Error::Cluster(_) => "cluster".into(),
            Error::Invalid(_) => "invalid".into(),
            Error::TooLarge(_) => "too_large".into(),
            Error::Io(_) => "io".into(),
            Error::Cache(_) => "cache".into(),
            Error::Tauri(_) => "internal".into(),
        }
    }

    /// The sentence shown to people.
    pub fn message(&self) -> String {
        match self {
            Error::Api(e) | Error::Client(ClientError::Api(e)) => api_message(e),
            Error::Client(ClientError::Refused(r)) => sentence(&r.message),
            other => sentence(&other.to_string()),
        }
    }

    /// A "not found" from the server about `username` says who was not found.
    pub fn about_user(self, username: &str) -> Error {
        match self {
            Error::Api(ApiError::Server {
                code: ErrorCode::NotFound,
                ..
            }) => Error::NoSuchUser(username.to_owned()),
            other => other,
        }
    }

    /// Whether the server could not be reached at all (the UI then falls back to the cache).
    pub fn is_offline(&self) -> bool {
        matches!(
            self,
            Error::Api(ApiError::Transport(_))
                | Error::Client(ClientError::Api(ApiError::Transport(_)))
        )
    }
}

fn api_kind(e: &ApiError) -> String {
    match e {
        ApiError::Server { code, .. } => client::api::code_name(*code),
        ApiError::Transport(_) => "offline".into(),
        ApiError::Unexpected { .. } => "internal".into(),
        ApiError::InvalidUrl { .. } => "invalid_url".into(),
    }
}

/// What went wrong, as a sentence for people: the server's own messages are written for
/// people but as fragments (`no user named "carol"`), so they get a capital and a full stop,
/// plus what to do where there is something to do; transport errors say which server did not
/// answer and how, because "error sending request for url (...)" helps nobody.
fn api_message(e: &ApiError) -> String {
    match e {
        ApiError::Server { code, message, .. } => {
            let hint = match code {
                ErrorCode::Unauthorized => " Sign in again.",
                ErrorCode::RateLimited => " Wait a moment, then try again.",
                ErrorCode::Unavailable | ErrorCode::NoNode | ErrorCode::Internal => {
                    " Try again in a moment."
                }
                _ => "",
            };
            format!("{}{hint}", sentence(message))
        }
        ApiError::Transport(err) => {
            let server = err
                .url()
                .map(|u| format!("{}://{}", u.scheme(), u.authority()))
                .unwrap_or_else(|| "the server".to_owned());
            let how = if err.is_timeout() {
                "is not answering in time"
            } else if err.is_connect() {
                "refuses connections"
            } else {
                "cannot be reached"
            };
            format!(
                "The server at {server} {how}. Check that it is running and that this computer \
                 can reach it; for the local cluster, open Cluster in the menu."
            )
        }
        ApiError::Unexpected { status, .. } => {
            format!("The server gave an answer the app does not understand (HTTP {status}).")
        }
        ApiError::InvalidUrl { url, reason } => {
            format!("{url:?} is not a server address: {reason}. Try http://host:port.")
        }
    }
}

/// A fragment as a sentence: a capital first letter and a full stop.
pub fn sentence(text: &str) -> String {
    let text = text.trim();
    let mut chars = text.chars();
    let Some(first) = chars.next() else {
        return String::new();
    };
    let mut out: String = first.to_uppercase().chain(chars).collect();
    if !out.ends_with(['.', '!', '?', ')', '"']) {
        out.push('.');
    }
    out
}

impl serde::Serialize for Error {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if matches!(self, Error::Io(_) | Error::Cache(_) | Error::Tauri(_)) {
            tracing::warn!(error = %self, "command failed");
        }
        let mut st = s.serialize_struct("Error", 2)?;
        st.serialize_field("kind", &self.kind())?;
        st.serialize_field("message", &self.message())?;
        st.end()
    }
}

/// The result of every command.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_cross_as_kind_and_message() -> Result<(), serde_json::Error> {
        let e = Error::Api(ApiError::Server {
            status: 409,
            code: ErrorCode::Conflict,
            message: "username taken".into(),
        });
        assert_eq!(
            serde_json::to_string(&e)?,
            r#"{"kind":"conflict","message":"Username taken."}"#
        );
        let e = Error::Client(ClientError::TooLarge {
            what: "the text",
            size: 20_000,
            max: 16_384,
        });
        let v = serde_json::to_value(&e)?;
        assert_eq!(v["kind"], "too_large");
        assert_eq!(
            serde_json::to_value(Error::NotSignedIn)?["kind"],
            "not_signed_in"
        );
        Ok(())
    }

    #[test]
    fn server_fragments_read_as_sentences() {
        let e = Error::Api(ApiError::Server {
            status: 404,
            code: ErrorCode::NotFound,
            message: "no user named \"carol\"".into(),
        });
        assert_eq!(e.message(), "No user named \"carol\"");
        let e = Error::Api(ApiError::Server {
            status: 503,
            code: ErrorCode::Unavailable,
            message: "store unavailable".into(),
        });
        assert_eq!(e.message(), "Store unavailable. Try again in a moment.");
        assert_eq!(sentence("  "), "");
    }
}
