//! The JWT that binds a user to one device, and its checks: signature, expiry, and the device
//! still active with the token's generation in the store.

use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use protocol::http::DeviceInfoState;
use protocol::{DeviceId, Millis, UserId};
use serde::{Deserialize, Serialize};

use super::Secret;
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
    enc: EncodingKey,
    dec: DecodingKey,
    validation: Validation,
}

/// Default token lifetime: 30 days. Revocation, not expiry, is how a device is signed out.
pub const TOKEN_TTL_SECS: i64 = 30 * 24 * 3600;

impl TokenKeys {
    /// Keys from the cluster secret.
    pub fn new(secret: &Secret) -> Self {
        let mut validation = Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp"]);
        TokenKeys {
            enc: EncodingKey::from_secret(secret.as_bytes()),
            dec: DecodingKey::from_secret(secret.as_bytes()),
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
        let token = jsonwebtoken::encode(&Header::default(), &claims, &self.enc)
            .map_err(|_| AuthError::Invalid)?;
        Ok((token, claims.exp * 1000))
    }

    /// Checks the signature and expiry. Does not look at the store.
    pub fn decode(&self, token: &str) -> Result<Claims, AuthError> {
        jsonwebtoken::decode::<Claims>(token, &self.dec, &self.validation)
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
        let keys = TokenKeys::new(&Secret::new("0123456789abcdef-secret").expect("secret"));
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

        let other = TokenKeys::new(&Secret::new("another-secret-of-16+").expect("secret"));
        assert!(matches!(other.decode(&token), Err(AuthError::Invalid)));
        assert!(matches!(
            keys.decode("not.a.token"),
            Err(AuthError::Invalid)
        ));
    }
}
