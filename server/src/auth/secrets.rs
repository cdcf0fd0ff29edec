//! The cluster's shared secrets: the cluster secret (it signs user tokens and admits nodes to
//! the controller's link) and the operator's token (it opens the trace streams and metrics).
//! Each is read from the environment, or from a file in the data dir that the first process
//! of the machine creates, readable by its owner only.

use std::path::Path;
use std::sync::Arc;

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

#[cfg(test)]
mod tests {
    use super::*;

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
