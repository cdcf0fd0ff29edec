//! Registering and logging in: the two doors that cost a password hash, so both are throttled
//! (see [`super::throttle`]) and hash a few at a time (see [`crate::auth::passwords`]).

use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use protocol::http::{LoginRequest, LoginResponse, RegisterRequest};
use protocol::limits;
use protocol::model::UserInfo;

use super::AppState;
use super::api::{clean_name, device_info};
use super::error::{ApiError, Body};
use crate::conn::Peer;
use crate::ids::now_ms;
use crate::store::{DeviceLogin, NewUser};

type Api<T> = Result<T, ApiError>;

/// `POST /v1/auth/register`.
pub(super) async fn register(
    State(s): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Body(req): Body<RegisterRequest>,
) -> Api<(StatusCode, Json<UserInfo>)> {
    s.throttle
        .attempt(s.throttle.client(peer.addr.ip(), &headers))?;
    if !limits::username_valid(&req.username) {
        return Err(ApiError::Invalid(
            "username: 3 to 32 of a-z, 0-9, '_', '.', '-', starting with a letter or digit".into(),
        ));
    }
    if req.password.chars().count() < limits::PASSWORD_MIN_CHARS
        || req.password.len() > limits::PASSWORD_MAX_BYTES
    {
        return Err(ApiError::Invalid(format!(
            "password: at least {} characters, at most {} bytes",
            limits::PASSWORD_MIN_CHARS,
            limits::PASSWORD_MAX_BYTES
        )));
    }
    let hash = s.passwords.hash(req.password).await?;
    let new = NewUser {
        username: &req.username,
        password_hash: &hash,
        created_at: now_ms(),
    };
    let user = s.store.create_user(new).await.map_err(|e| match e {
        crate::store::StoreError::Conflict(_) => {
            ApiError::Conflict("that username is taken".into())
        }
        other => other.into(),
    })?;
    Ok((
        StatusCode::CREATED,
        Json(UserInfo {
            id: user.id,
            username: user.username,
        }),
    ))
}

/// `POST /v1/auth/login`: every attempt costs one hash, whether the name exists or not.
pub(super) async fn login(
    State(s): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Body(req): Body<LoginRequest>,
) -> Api<Json<LoginResponse>> {
    s.throttle
        .attempt(s.throttle.client(peer.addr.ip(), &headers))?;
    s.throttle.account_open(&req.username)?;
    let name = clean_name(&req.device_name, "device name")?;
    let user = s.store.user_by_name(&req.username).await?;
    let matches = if req.password.len() > limits::PASSWORD_MAX_BYTES {
        false
    } else {
        match &user {
            Some(u) => {
                s.passwords
                    .verify(req.password, u.password_hash.clone())
                    .await?
            }
            None => s.passwords.verify_nobody(req.password).await?,
        }
    };
    let Some(user) = user.filter(|_| matches) else {
        s.throttle.failed(&req.username);
        return Err(ApiError::Unauthorized("wrong username or password".into()));
    };
    let now = now_ms();
    let login = DeviceLogin {
        user: user.id,
        device: &req.device_id,
        name: &name,
        at: now,
    };
    let device = s.store.login_device(login).await?;
    let (token, expires_at) =
        s.keys
            .issue(user.id, &user.username, &device, now, s.token_ttl_secs)?;
    let current = device.id.clone();
    Ok(Json(LoginResponse {
        token,
        user: UserInfo {
            id: user.id,
            username: user.username,
        },
        device: device_info(device, &current),
        expires_at,
    }))
}
