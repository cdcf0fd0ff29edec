//! The controller's one error type at the HTTP edge, and the extractors that make every
//! refusal (bad JSON, bad path, missing token) come out as an [`ErrorBody`] with the right
//! status. Internal details are logged here and never sent to clients.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use protocol::http::ErrorBody;
use protocol::ws::ErrorCode;

use super::AppState;
use crate::auth::{AuthError, HashError, Principal};
use crate::registry::RegistryError;
use crate::route::RouteError;
use crate::store::StoreError;

/// Every way an API call fails.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Not JSON, wrong shape, bad path or query.
    #[error("{0}")]
    Malformed(String),
    /// Well-formed but not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// No token, a bad one, or wrong credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// The device was revoked.
    #[error("device revoked")]
    Revoked,
    /// Not a member of the conversation.
    #[error("not a member of that conversation")]
    NotMember,
    /// Not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// No such thing.
    #[error("{0}")]
    NotFound(String),
    /// Exists already.
    #[error("{0}")]
    Conflict(String),
    /// Over a size limit.
    #[error("{0}")]
    TooLarge(String),
    /// No live node to hand out.
    #[error("no chat node is live")]
    NoNode,
    /// A backend is down; retry.
    #[error("{0}")]
    Unavailable(String),
    /// Over a rate limit; retry after a while.
    #[error("{message}")]
    RateLimited {
        /// What was limited.
        message: String,
        /// When a retry may pass.
        retry_after: Duration,
    },
    /// Too much at once right now (password checks); retry shortly.
    #[error("{0}")]
    Busy(String),
    /// A bug or an unexpected failure (logged, not sent).
    #[error("{0}")]
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::Malformed(_) => (StatusCode::BAD_REQUEST, ErrorCode::Malformed),
            ApiError::Invalid(_) => (StatusCode::BAD_REQUEST, ErrorCode::Invalid),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized),
            ApiError::Revoked => (StatusCode::UNAUTHORIZED, ErrorCode::Revoked),
            ApiError::NotMember => (StatusCode::FORBIDDEN, ErrorCode::NotMember),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, ErrorCode::Forbidden),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, ErrorCode::Conflict),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::TooLarge),
            ApiError::NoNode => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::NoNode),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited),
            ApiError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal),
        };
        let message = match &self {
            ApiError::Internal(detail) => {
                tracing::error!(detail = %detail, "internal error");
                "internal error".to_owned()
            }
            ApiError::Unavailable(detail) => {
                tracing::warn!(detail = %detail, "backend unavailable");
                "a backend is unavailable; retry shortly".to_owned()
            }
            other => other.to_string(),
        };
        let retry_after = match &self {
            // Whole seconds, rounded up: a retry at that time passes.
            ApiError::RateLimited { retry_after, .. } => {
                Some((retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0)).max(1))
            }
            ApiError::Busy(_) => Some(1),
            _ => None,
        };
        let mut response = (status, Json(ErrorBody::new(code, message))).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::NotFound("not found".into()),
            StoreError::Conflict(m) => ApiError::Conflict(m),
            StoreError::NotMember => ApiError::NotMember,
            StoreError::Forbidden(m) => ApiError::Forbidden(m),
            StoreError::Invalid(m) => ApiError::Invalid(m),
            StoreError::Unavailable(m) => ApiError::Unavailable(m),
            StoreError::Internal(m) => ApiError::Internal(m),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Unavailable(m) => ApiError::Unavailable(m),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> Self {
        ApiError::Unavailable(e.to_string())
    }
}

impl From<HashError> for ApiError {
    fn from(e: HashError) -> Self {
        match e {
            HashError::Busy => ApiError::Busy("too many logins at once; retry shortly".into()),
            HashError::Failed(m) => ApiError::Internal(m),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Missing => ApiError::Unauthorized("no token".into()),
            AuthError::Invalid => ApiError::Unauthorized("invalid token".into()),
            AuthError::Expired => ApiError::Unauthorized("token expired".into()),
            AuthError::Revoked => ApiError::Revoked,
            AuthError::Store(s) => s.into(),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        ApiError::Malformed(r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::Malformed(r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::Malformed(r.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge("the upload is larger than the server accepts".into())
        } else {
            ApiError::Malformed(r.body_text())
        }
    }
}

/// A JSON body whose rejection is an [`ApiError`].
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Body<T>(pub T);

/// A path whose rejection is an [`ApiError`].
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct PathOf<T>(pub T);

/// A query whose rejection is an [`ApiError`].
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct QueryOf<T>(pub T);

/// The caller, from a bearer token checked against the store.
pub struct Authed(pub Principal);

impl FromRequestParts<Arc<AppState>> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        let token = crate::node::bearer(&parts.headers).ok_or(AuthError::Missing)?;
        Ok(Authed(state.keys.verify(&*state.store, &token).await?))
    }
}
