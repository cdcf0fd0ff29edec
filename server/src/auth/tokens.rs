//! The JWT that binds a user to one device, and its checks: signature, expiry, and the device
//! still active with the token's generation in the store. Tokens are signed with the current
//! key of the user-token ring and name it (`kid`); any key of the ring checks them, so a new
//! key signs nobody out.

use std::collections::HashMap;
use std::sync::Arc;

use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use protocol::http::DeviceInfoState;
use protocol::{DeviceId, Millis, UserId};
use serde::{Deserialize, Serialize};

use super::keys::KeyRing;
use crate::store::{DeviceRecord, Store, StoreError};

/// What a token says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: i64,
    /// The username, for logs.
    pub name: String,
    /// The device id.
    pub dev: String,
    /// The device's generation when the token was issued.
    pub generation: i64,
    /// Issued at (seconds).
    pub iat: i64,
    /// Expires at (seconds).
    pub exp: i64,
}

/// A checked token's subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The user.
    pub user: UserId,
    /// Their name.
    pub username: String,
    /// The device.
    pub device: DeviceId,
    /// When the token expires.
    pub expires_at: Millis,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No token was presented.
    #[error("no token")]
    Missing,
    /// Not a token we signed.
    #[error("invalid token")]
    Invalid,
    /// Past its expiry.
    #[error("token expired")]
    Expired,
    /// Its device was revoked (or logged in again after a revocation, with a new token).
    #[error("device revoked")]
    Revoked,
    /// The store could not be asked.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Signs and checks tokens.
#[derive(Clone)]
pub struct TokenKeys {
    /// The signing key's id and key.
    kid: String,
    enc: EncodingKey,
    /// Every key of the ring, by id.
    dec: Arc<HashMap<String, DecodingKey>>,
    validation: Validation,
}

/// Default token lifetime: 30 days. Revocation, not expiry, is how a device is signed out.
pub const TOKEN_TTL_SECS: i64 = 30 * 24 * 3600;

impl TokenKeys {
    /// Keys from the user-token ring: its current key signs, every key checks.
    pub fn new(ring: &KeyRing) -> Self {
        let mut validation = Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp"]);
        let current = ring.current();
        TokenKeys {
            kid: current.id().to_owned(),
            enc: EncodingKey::from_secret(current.bytes()),
            dec: Arc::new(
                ring.keys()
                    .iter()
                    .map(|k| (k.id().to_owned(), DecodingKey::from_secret(k.bytes())))
                    .collect(),
            ),
            validation,
        }
    }

    /// Issues a token for a device, valid `ttl_secs` from `now_ms`.
    pub fn issue(
        &self,
        user: UserId,
        username: &str,
        device: &DeviceRecord,
        now_ms: Millis,
        ttl_secs: i64,
    ) -> Result<(String, Millis), AuthError> {
        let iat = now_ms / 1000;
        let claims = Claims {
            sub: user.0,
            name: username.to_owned(),
            dev: device.id.to_string(),
            generation: device.generation,
            iat,
            exp: iat + ttl_secs,
        };
        let header = Header {
            kid: Some(self.kid.clone()),
            ..Header::default()
        };
        let token =
            jsonwebtoken::encode(&header, &claims, &self.enc).map_err(|_| AuthError::Invalid)?;
        Ok((token, claims.exp * 1000))
    }

    /// Checks the signature (by the key its `kid` names) and expiry. Does not look at the
    /// store.
    pub fn decode(&self, token: &str) -> Result<Claims, AuthError> {
        let kid = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::Invalid)?
            .kid
            .ok_or(AuthError::Invalid)?;
        let key = self.dec.get(&kid).ok_or(AuthError::Invalid)?;
        jsonwebtoken::decode::<Claims>(token, key, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid,
            })
    }

    /// Checks the token fully: signature, expiry, and that its device is active with the same
    /// generation.
    pub async fn verify(&self, store: &dyn Store, token: &str) -> Result<Principal, AuthError> {
        let claims = self.decode(token)?;
        let device = DeviceId::new(claims.dev).map_err(|_| AuthError::Invalid)?;
        let user = UserId(claims.sub);
        match store.device(user, &device).await? {
            Some(d) if d.state == DeviceInfoState::Active && d.generation == claims.generation => {
                Ok(Principal {
                    user,
                    username: claims.name,
                    device,
                    expires_at: claims.exp.saturating_mul(1000),
                })
            }
            Some(_) => Err(AuthError::Revoked),
            None => Err(AuthError::Invalid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(generation: i64) -> DeviceRecord {
        DeviceRecord {
            user: UserId(1),
            id: DeviceId::new("dev1").expect("valid id"),
            name: "laptop".into(),
            created_at: 0,
            last_login: 0,
            state: DeviceInfoState::Active,
            generation,
        }
    }

    #[test]
    fn tokens_round_trip_and_expire() {
        let keys = TokenKeys::new(&ring(OLD));
        let now = crate::ids::now_ms();
        let (token, exp) = keys
            .issue(UserId(1), "alice", &device(3), now, 60)
            .expect("issue");
        assert!(exp > now);
        let claims = keys.decode(&token).expect("decode");
        assert_eq!(
            (claims.sub, claims.generation, claims.dev.as_str()),
            (1, 3, "dev1")
        );

        let (old, _) = keys
            .issue(UserId(1), "alice", &device(3), now - 7_200_000, 60)
            .expect("issue");
        assert!(matches!(keys.decode(&old), Err(AuthError::Expired)));

        let other = TokenKeys::new(&ring(NEW));
        assert!(matches!(other.decode(&token), Err(AuthError::Invalid)));
        assert!(matches!(
            keys.decode("not.a.token"),
            Err(AuthError::Invalid)
        ));
    }

    const OLD: &str = "t1:5b0e9d3c7a2f4e8b1d6c0a9f3e7b2d5c";
    const NEW: &str = "t2:c8a1f0e7d6b5a4c3e2d1f0a9b8c7d6e5";

    fn ring(spec: &str) -> KeyRing {
        KeyRing::parse(spec, "test").expect("ring")
    }

    #[test]
    fn a_new_key_signs_nobody_out_and_dropping_the_old_one_does() {
        let now = crate::ids::now_ms();
        let before = TokenKeys::new(&ring(OLD));
        let (old_token, _) = before
            .issue(UserId(1), "alice", &device(1), now, 60)
            .expect("issue");
        // Rotation: the new key in front, the old one kept.
        let rotated = TokenKeys::new(&ring(&format!("{NEW},{OLD}")));
        assert!(
            rotated.decode(&old_token).is_ok(),
            "signed out by a rotation"
        );
        let (new_token, _) = rotated
            .issue(UserId(1), "alice", &device(1), now, 60)
            .expect("issue");
        let kid = jsonwebtoken::decode_header(&new_token).expect("header").kid;
        assert_eq!(kid.as_deref(), Some("t2"));
        assert!(matches!(before.decode(&new_token), Err(AuthError::Invalid)));
        // The old key dropped: what it signed is refused.
        let after = TokenKeys::new(&ring(NEW));
        assert!(matches!(after.decode(&old_token), Err(AuthError::Invalid)));
        assert!(after.decode(&new_token).is_ok());
    }

    #[test]
    fn the_node_key_signs_no_user_token() {
        let keys =
            crate::auth::ClusterKeys::derived("0d6c1f8e9b2a7d4c3e5f6a1b8c9d2e7f").expect("keys");
        let users = TokenKeys::new(&keys.tokens);
        // Whoever holds the node key mints a token under the node key's id and bytes.
        let minted = TokenKeys::new(&keys.nodes)
            .issue(UserId(1), "alice", &device(1), crate::ids::now_ms(), 60)
            .expect("issue")
            .0;
        assert!(matches!(users.decode(&minted), Err(AuthError::Invalid)));
        // A token without a key id (as every token was before rings) is refused too.
        let bare = jsonwebtoken::encode(
            &Header::default(),
            &Claims {
                sub: 1,
                name: "alice".into(),
                dev: "dev1".into(),
                generation: 1,
                iat: 0,
                exp: i64::MAX / 2000,
            },
            &EncodingKey::from_secret(keys.tokens.current().bytes()),
        )
        .expect("encode");
        assert!(matches!(users.decode(&bare), Err(AuthError::Invalid)));
    }
}
