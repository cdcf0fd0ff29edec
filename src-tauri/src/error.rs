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
            other => other.to_string(),
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

/// Server messages are already written for people; transport errors are reworded, because
/// "error sending request for url (...)" is not.
fn api_message(e: &ApiError) -> String {
    match e {
        ApiError::Server {
            code: ErrorCode::Unauthorized,
            message,
            ..
        } => format!("{message} (sign in again)"),
        ApiError::Server { message, .. } => message.clone(),
        ApiError::Transport(_) => "The server cannot be reached right now.".into(),
        ApiError::Unexpected { status, .. } => {
            format!("The server gave an answer the app does not understand (HTTP {status}).")
        }
        ApiError::InvalidUrl { url, reason } => {
            format!("{url:?} is not a server address: {reason}")
        }
    }
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
            r#"{"kind":"conflict","message":"username taken"}"#
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
}
