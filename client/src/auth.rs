//! Registering and logging in: what a device needs before it can connect, kept in a
//! [`Session`] that an application can save and reuse until the token expires.

use std::fmt;

use protocol::http::{LoginRequest, RegisterRequest};
use protocol::model::UserInfo;
use protocol::{DeviceId, Millis};
use serde::{Deserialize, Serialize};

use crate::api::{Api, ApiError};

/// A logged-in user on one device: everything the connection engine needs.
///
/// It is serializable so that an application can keep it between runs (it holds a bearer
/// token: store it where only the user can read it).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The controller's base URL.
    pub server: String,
    /// Bearer token for HTTP and for the WebSocket upgrade.
    pub token: String,
    /// Who is logged in.
    pub user: UserInfo,
    /// The device the token is bound to.
    pub device: DeviceId,
    /// When the controller stops accepting the token (milliseconds since the Unix epoch).
    pub expires_at: Millis,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token stays out of logs.
        f.debug_struct("Session")
            .field("server", &self.server)
            .field("user", &self.user)
            .field("device", &self.device)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// An authenticated handle on the controller.
    pub fn api(&self) -> Result<Api, ApiError> {
        Ok(Api::new(&self.server)?.with_token(self.token.clone()))
    }

    /// An authenticated handle on the controller, on a shared HTTP client.
    pub fn api_with(&self, http: reqwest::Client) -> Result<Api, ApiError> {
        Ok(Api::with_http(&self.server, http)?.with_token(self.token.clone()))
    }

    /// Whether the token has expired at `now_ms` (milliseconds since the Unix epoch).
    pub fn is_expired_at(&self, now_ms: Millis) -> bool {
        now_ms >= self.expires_at
    }
}

/// Creates an account on the controller at `server`. Fails with `conflict` when the name is
/// taken and `invalid` when the name or password does not meet the rules of
/// [`protocol::limits`].
pub async fn register(server: &str, username: &str, password: &str) -> Result<UserInfo, ApiError> {
    Api::new(server)?
        .register(&RegisterRequest {
            username: username.to_owned(),
            password: password.to_owned(),
        })
        .await
}

/// Logs `username` in on this device and returns the session to connect with. Fails with
/// `unauthorized` (HTTP 401) on wrong credentials.
pub async fn login(
    server: &str,
    username: &str,
    password: &str,
    device: &DeviceId,
    device_name: &str,
) -> Result<Session, ApiError> {
    let api = Api::new(server)?;
    let resp = api
        .login(&LoginRequest {
            username: username.to_owned(),
            password: password.to_owned(),
            device_id: device.clone(),
            device_name: device_name.to_owned(),
        })
        .await?;
    Ok(Session {
        server: api.base_url().trim_end_matches('/').to_owned(),
        token: resp.token,
        user: resp.user,
        device: resp.device.id,
        expires_at: resp.expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::UserId;

    #[test]
    fn debug_hides_the_token() -> Result<(), protocol::ids::IdError> {
        let s = Session {
            server: "http://h".into(),
            token: "secret-token".into(),
            user: UserInfo {
                id: UserId(1),
                username: "alice".into(),
            },
            device: DeviceId::new("d1")?,
            expires_at: 10,
        };
        assert!(!format!("{s:?}").contains("secret"));
        assert!(s.is_expired_at(10));
        assert!(!s.is_expired_at(9));
        Ok(())
    }
}
