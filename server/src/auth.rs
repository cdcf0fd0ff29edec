//! Credentials: the cluster secret, the operator's token, password hashes (argon2) and the JWT
//! that binds a user to one device. The controller issues tokens; nodes and the controller check them. A token names
//! its device's generation, and the store's device row must still be active with that same
//! generation: revoking a device bumps it, so its old tokens die at once everywhere.

use std::path::Path;
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use protocol::{DeviceId, Millis, UserId};
use serde::{Deserialize, Serialize};

use crate::store::{DeviceRecord, Store, StoreError};
use protocol::http::DeviceInfoState;

/// Environment variable that, when set, is the cluster secret.
pub const SECRET_ENV: &str = "CHAT_SECRET";

/// Why a secret could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Reading or writing the secret file failed.
    #[error("secret file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The failure.
        source: std::io::Error,
    },
    /// The secret is too short to sign with.
    #[error("the cluster secret must be at least 16 bytes")]
    TooShort,
}

/// The secret every process of a cluster shares: it signs tokens and authenticates nodes to
/// the controller's link.
#[derive(Clone)]
pub struct Secret(Arc<[u8]>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// Wraps a secret.
    pub fn new(bytes: impl AsRef<[u8]>) -> Result<Self, SecretError> {
        let bytes = bytes.as_ref();
        if bytes.len() < 16 {
            return Err(SecretError::TooShort);
        }
        Ok(Secret(Arc::from(bytes)))
    }

    /// `CHAT_SECRET` if set, else the file `<data_dir>/secret`, created with a random secret by
    /// whichever process of the machine comes first.
    pub fn load(data_dir: &Path) -> Result<Self, SecretError> {
        Secret::new(load_shared(data_dir, SECRET_ENV, "secret")?)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Compares a presented secret in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        let a = self.as_bytes();
        let b = presented.as_bytes();
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// The value of `env` if set, else the content of `<data_dir>/<file>`, created (readable by
/// its owner only) with a random value by whichever process of the machine comes first.
fn load_shared(data_dir: &Path, env: &str, file: &str) -> Result<String, SecretError> {
    if let Ok(s) = std::env::var(env)
        && !s.trim().is_empty()
    {
        return Ok(s.trim().to_owned());
    }
    let path = data_dir.join(file);
    let io = |source| SecretError::Io {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(data_dir).map_err(io)?;
    let fresh: String = {
        use rand::Rng;
        let mut rng = rand::rng();
        (0..48)
            .map(|_| char::from(rng.sample(rand::distr::Alphanumeric)))
            .collect()
    };
    // Write to a temporary file and hard-link it into place: the link fails if another
    // process won the race, and then its value is the one everybody reads.
    let tmp = data_dir.join(format!("{file}.{}.tmp", std::process::id()));
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(fresh.as_bytes()).map_err(io)?;
    }
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(fresh),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(std::fs::read_to_string(&path)
                .map_err(io)?
                .trim()
                .to_owned())
        }
        Err(e) => Err(io(e)),
    }
}

/// Environment variable that, when set, is the operator credential.
pub const OPERATOR_TOKEN_ENV: &str = "CHAT_OPERATOR_TOKEN";

/// The operator's credential: a bearer token that opens what only whoever runs the cluster may
/// see — each node's trace stream (who messages whom, when, from which device) and the
/// processes' metrics. It is neither a user token nor the cluster secret: it signs nothing and
/// admits no node, so a monitoring system or the lab's panel that holds it can read the
/// cluster's workings but can act as no user and join as no node.
#[derive(Clone)]
pub struct OperatorToken(Secret);

impl std::fmt::Debug for OperatorToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OperatorToken(..)")
    }
}

impl OperatorToken {
    /// Wraps a token (at least 16 bytes).
    pub fn new(token: impl AsRef<[u8]>) -> Result<Self, SecretError> {
        Secret::new(token).map(OperatorToken)
    }

    /// `CHAT_OPERATOR_TOKEN` if set, else the file `<data_dir>/operator-token`, created with a
    /// random token by whichever process of the machine comes first.
    pub fn load(data_dir: &Path) -> Result<Self, SecretError> {
        OperatorToken::new(load_shared(data_dir, OPERATOR_TOKEN_ENV, "operator-token")?)
    }

    /// Whether a request carries this token as `Authorization: Bearer`.
    pub fn admits(&self, headers: &axum::http::HeaderMap) -> bool {
        crate::node::bearer(headers).is_some_and(|t| self.0.matches(&t))
    }
}

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

/// How hard password hashing works.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum HashCost {
    /// Argon2id with the recommended parameters (19 MiB, 2 passes).
    #[default]
    Standard,
    /// Argon2id with 1 MiB and 1 pass: for test clusters that log in thousands of devices.
    /// Never for real accounts.
    Fast,
}

/// Hashes and checks passwords, off the async threads.
#[derive(Clone, Copy, Debug)]
pub struct Passwords {
    cost: HashCost,
}

/// Why hashing failed (never for a wrong password: that is `Ok(false)`).
#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

impl Passwords {
    /// A hasher with the given cost.
    pub fn new(cost: HashCost) -> Self {
        Passwords { cost }
    }

    fn argon2(&self) -> Result<Argon2<'static>, HashError> {
        let params = match self.cost {
            HashCost::Standard => Params::new(19 * 1024, 2, 1, None),
            HashCost::Fast => Params::new(1024, 1, 1, None),
        }
        .map_err(|e| HashError(e.to_string()))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }

    /// Hashes a new password (PHC string).
    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        let argon = self.argon2()?;
        tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
            argon
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| HashError(e.to_string()))
        })
        .await
        .map_err(|e| HashError(e.to_string()))?
    }

    /// Checks a password against a stored hash (whatever cost it was made with).
    pub async fn verify(&self, password: String, hash: String) -> Result<bool, HashError> {
        let argon = self.argon2()?;
        tokio::task::spawn_blocking(move || {
            let parsed = PasswordHash::new(&hash).map_err(|e| HashError(e.to_string()))?;
            Ok(argon.verify_password(password.as_bytes(), &parsed).is_ok())
        })
        .await
        .map_err(|e| HashError(e.to_string()))?
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

    #[tokio::test]
    async fn passwords_hash_and_verify() {
        let p = Passwords::new(HashCost::Fast);
        let h = p.hash("correct horse".into()).await.expect("hash");
        assert!(
            p.verify("correct horse".into(), h.clone())
                .await
                .expect("verify")
        );
        assert!(!p.verify("wrong horse".into(), h).await.expect("verify"));
    }

    #[test]
    fn the_operator_token_is_its_own_file_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        // CHAT_OPERATOR_TOKEN is not set in the test environment.
        let op = OperatorToken::load(dir.path()).expect("operator");
        let secret = Secret::load(dir.path()).expect("secret");
        let token = std::fs::read_to_string(dir.path().join("operator-token")).expect("file");
        assert!(!secret.matches(token.trim()));
        let mode = std::fs::metadata(dir.path().join("operator-token"))
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mut headers = axum::http::HeaderMap::new();
        assert!(!op.admits(&headers));
        headers.insert(
            "authorization",
            format!("Bearer {}", token.trim()).parse().expect("header"),
        );
        assert!(op.admits(&headers));
        headers.insert("authorization", "Bearer nope".parse().expect("header"));
        assert!(!op.admits(&headers));
    }

    #[test]
    fn secret_file_is_shared_by_racing_processes() {
        let dir = tempfile::tempdir().expect("tempdir");
        // SAFETY of the test: CHAT_SECRET is not set in the test environment.
        let a = Secret::load(dir.path()).expect("first");
        let b = Secret::load(dir.path()).expect("second");
        assert_eq!(a.as_bytes(), b.as_bytes());
        assert!(a.matches(std::str::from_utf8(b.as_bytes()).expect("utf8")));
        assert!(!a.matches("nope"));
    }
}
