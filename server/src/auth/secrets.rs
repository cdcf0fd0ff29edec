//! Where the cluster's credentials come from, and what is refused: the user-token and
//! node-admission key rings ([`ClusterKeys`]) and the operator's token ([`OperatorToken`]).
//! Each is read from the environment, or from a file in the data dir that the first process
//! of the machine creates; the data dir is the owner's alone (0700, its files 0600). A weak or
//! example value is refused at start, with a message that says how to make a good one.

use std::path::Path;
use std::sync::Arc;

use super::keys::KeyRing;

/// Environment variable that, when set, is a master secret from which both keys are derived
/// (when their own variables are not set).
pub const SECRET_ENV: &str = "CHAT_SECRET";

/// Environment variable holding the user-token key ring (`ID:KEY[,ID:KEY…]`).
pub const TOKEN_KEYS_ENV: &str = "CHAT_TOKEN_KEYS";

/// Environment variable holding the node-admission key ring (`ID:KEY[,ID:KEY…]`).
pub const NODE_KEYS_ENV: &str = "CHAT_NODE_KEYS";

/// Why a credential could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Reading or writing a file failed.
    #[error("secret file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The failure.
        source: std::io::Error,
    },
    /// The value is too weak to sign with.
    #[error(
        "{what} is too weak: {why}. Use a long random value, e.g. the output of \
         `openssl rand -hex 32`"
    )]
    Weak {
        /// Which setting.
        what: String,
        /// What is wrong with it.
        why: String,
    },
    /// A key ring that cannot be read.
    #[error("{what}: {why} (expected ID:KEY[,ID:KEY...])")]
    Format {
        /// Which setting.
        what: String,
        /// What is wrong with it.
        why: String,
    },
}

/// Words that mark a value copied from an example rather than generated.
const EXAMPLE_WORDS: &[&str] = &[
    "change-me",
    "changeme",
    "change_me",
    "example",
    "secret",
    "password",
    "replace",
    "your-",
];

/// The shortest secret accepted.
pub const MIN_SECRET_LEN: usize = 32;

/// Refuses a secret a guess or a copy could find: shorter than [`MIN_SECRET_LEN`], words of an
/// example (the README's own placeholder among them), or too few distinct characters.
pub fn check_strength(what: &str, value: &str) -> Result<(), SecretError> {
    let weak = |why: String| {
        Err(SecretError::Weak {
            what: what.to_owned(),
            why,
        })
    };
    if value.len() < MIN_SECRET_LEN {
        return weak(format!(
            "it has {} characters, fewer than {MIN_SECRET_LEN}",
            value.len()
        ));
    }
    let lower = value.to_ascii_lowercase();
    if let Some(word) = EXAMPLE_WORDS.iter().find(|w| lower.contains(*w)) {
        return weak(format!(
            "it contains {word:?}, as an example or placeholder does"
        ));
    }
    let mut seen = [false; 256];
    value.bytes().for_each(|b| seen[b as usize] = true);
    let distinct = seen.iter().filter(|s| **s).count();
    if distinct < 10 {
        return weak(format!("it has only {distinct} distinct characters"));
    }
    Ok(())
}

/// The cluster's two key rings.
#[derive(Clone, Debug)]
pub struct ClusterKeys {
    /// Signs and checks user tokens.
    pub tokens: KeyRing,
    /// Admits nodes to the link and authenticates the bus and the registry's node entries.
    pub nodes: KeyRing,
}

impl ClusterKeys {
    /// Each ring from its variable (`CHAT_TOKEN_KEYS`, `CHAT_NODE_KEYS`); failing that,
    /// derived from `CHAT_SECRET`; failing that, from the files `<data_dir>/token-keys` and
    /// `<data_dir>/node-keys`, created with a random key by whichever process of the machine
    /// comes first.
    pub fn load(data_dir: &Path) -> Result<ClusterKeys, SecretError> {
        let master = env(SECRET_ENV);
        if let Some(m) = &master {
            check_strength(SECRET_ENV, m)?;
        }
        let ring = |var: &str, purpose: &str, file: &str| -> Result<KeyRing, SecretError> {
            if let Some(spec) = env(var) {
                return KeyRing::parse(&spec, var);
            }
            if let Some(m) = &master {
                return Ok(KeyRing::derive(m.as_bytes(), purpose));
            }
            let spec = load_file(data_dir, file, || {
                let id: u32 = rand::random();
                format!("k{:08x}:{}", id, random_text(48))
            })?;
            KeyRing::parse(&spec, &data_dir.join(file).display().to_string())
        };
        Ok(ClusterKeys {
            tokens: ring(TOKEN_KEYS_ENV, "user tokens", "token-keys")?,
            nodes: ring(NODE_KEYS_ENV, "node admission", "node-keys")?,
        })
    }

    /// Both rings from one master secret (tests and single-machine setups).
    pub fn derived(master: &str) -> Result<ClusterKeys, SecretError> {
        check_strength("the master secret", master)?;
        Ok(ClusterKeys {
            tokens: KeyRing::derive(master.as_bytes(), "user tokens"),
            nodes: KeyRing::derive(master.as_bytes(), "node admission"),
        })
    }
}

fn env(var: &str) -> Option<String> {
    std::env::var(var)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn random_text(len: usize) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(rng.sample(rand::distr::Alphanumeric)))
        .collect()
}

/// Makes `dir` (created if missing) its owner's alone: mode 0700, and every file directly in
/// it 0600. An older version left `secret` and `chat.db` readable by everyone in a 0755
/// folder; this closes them at the next start.
pub fn private_dir(dir: &Path) -> Result<(), SecretError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| SecretError::Io { path, source }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    let tighten = |path: &Path, mode: u32| -> Result<(), SecretError> {
        let meta = std::fs::symlink_metadata(path).map_err(io(path))?;
        if meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .map_err(io(path))?;
        }
        Ok(())
    };
    tighten(dir, 0o700)?;
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let kind = entry.file_type().map_err(io(&entry.path()))?;
        if kind.is_file() {
            tighten(&entry.path(), 0o600)?;
        } else if kind.is_dir() {
            tighten(&entry.path(), 0o700)?;
        }
    }
    Ok(())
}

/// The value of `env` if set, else the content of `<data_dir>/<file>`.
fn load_shared(data_dir: &Path, env_var: &str, file: &str) -> Result<String, SecretError> {
    if let Some(s) = env(env_var) {
        return Ok(s);
    }
    load_file(data_dir, file, || random_text(48))
}

/// The content of `<data_dir>/<file>`, created (readable by its owner only, in a private
/// data dir) with `fresh()` by whichever process of the machine comes first.
fn load_file(
    data_dir: &Path,
    file: &str,
    fresh: impl FnOnce() -> String,
) -> Result<String, SecretError> {
    let path = data_dir.join(file);
    let io = |source| SecretError::Io {
        path: path.display().to_string(),
        source,
    };
    private_dir(data_dir)?;
    let fresh = fresh();
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
/// processes' metrics. It is neither a user token nor a key: it signs nothing and admits no
/// node, so a monitoring system or the lab's panel that holds it can read the cluster's
/// workings but can act as no user and join as no node.
#[derive(Clone)]
pub struct OperatorToken(Arc<[u8]>);

impl std::fmt::Debug for OperatorToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OperatorToken(..)")
    }
}

impl OperatorToken {
    /// Wraps a token; a weak one is refused (see [`check_strength`]).
    pub fn new(token: &str) -> Result<Self, SecretError> {
        check_strength(OPERATOR_TOKEN_ENV, token)?;
        Ok(OperatorToken(Arc::from(token.as_bytes())))
    }

    /// `CHAT_OPERATOR_TOKEN` if set, else the file `<data_dir>/operator-token`, created with a
    /// random token by whichever process of the machine comes first.
    pub fn load(data_dir: &Path) -> Result<Self, SecretError> {
        OperatorToken::new(&load_shared(
            data_dir,
            OPERATOR_TOKEN_ENV,
            "operator-token",
        )?)
    }

    /// Whether `presented` is this token, compared in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        let (a, b) = (&*self.0, presented.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// Whether a request carries this token as `Authorization: Bearer`.
    pub fn admits(&self, headers: &axum::http::HeaderMap) -> bool {
        crate::node::bearer(headers).is_some_and(|t| self.matches(&t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn the_operator_token_is_its_own_file_readable_by_its_owner_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        // CHAT_OPERATOR_TOKEN and the key variables are not set in the test environment.
        let op = OperatorToken::load(dir.path()).expect("operator");
        let keys = ClusterKeys::load(dir.path()).expect("keys");
        let token = std::fs::read_to_string(dir.path().join("operator-token")).expect("file");
        assert!(
            keys.tokens
                .keys()
                .iter()
                .all(|k| k.bytes() != token.trim().as_bytes())
        );
        assert_eq!(mode(&dir.path().join("operator-token")), 0o600);
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
    fn key_files_are_shared_by_racing_processes_and_the_two_keys_differ() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = ClusterKeys::load(dir.path()).expect("first");
        let b = ClusterKeys::load(dir.path()).expect("second");
        assert_eq!(a.tokens.current().bytes(), b.tokens.current().bytes());
        assert_eq!(a.nodes.current().bytes(), b.nodes.current().bytes());
        assert_ne!(a.tokens.current().bytes(), a.nodes.current().bytes());
        for f in ["token-keys", "node-keys"] {
            assert_eq!(mode(&dir.path().join(f)), 0o600, "{f}");
        }
    }

    #[test]
    fn a_data_dir_left_open_is_closed() {
        let top = tempfile::tempdir().expect("tempdir");
        let dir = top.path().join("data");
        std::fs::create_dir(&dir).expect("dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let db = dir.join("chat.db");
        std::fs::write(&db, b"").expect("file");
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        private_dir(&dir).expect("private");
        assert_eq!((mode(&dir), mode(&db)), (0o700, 0o600));
        let fresh = top.path().join("fresh/deeper");
        private_dir(&fresh).expect("private");
        assert_eq!(mode(&fresh), 0o700);
    }

    #[test]
    fn weak_and_example_secrets_are_refused() {
        // The README's example of an earlier version, word for word.
        for weak in [
            "change-me-to-a-long-random-string",
            "short",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "0101010101010101010101010101010101010101",
            "my-example-cluster-key-0123456789abcdef",
        ] {
            let err = check_strength(SECRET_ENV, weak)
                .expect_err(weak)
                .to_string();
            assert!(err.contains("CHAT_SECRET is too weak"), "{err}");
            assert!(err.contains("openssl rand -hex 32"), "{err}");
        }
        check_strength(SECRET_ENV, "0d6c1f8e9b2a7d4c3e5f6a1b8c9d2e7f").expect("random hex");
        assert!(OperatorToken::new("operator").is_err());
    }
}
