//! The profile directory: what `chat` remembers between runs — the session (token, user,
//! device), the device id, and the sync cursors of `watch` and `talk`.
//!
//! Layout: `device_id` (created once, kept across logins), `session.json` (readable by the
//! owner only: it holds a bearer token), `state.json` (cursors).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use client::{ClientState, Session};
use protocol::DeviceId;
use protocol::ws::Cursor;

/// A profile directory.
#[derive(Clone, Debug)]
pub struct Profile {
    dir: PathBuf,
}

impl Profile {
    /// The profile at `explicit`, or the default one under the user's config directory.
    pub fn locate(explicit: Option<PathBuf>) -> Result<Profile> {
        let dir = match explicit {
            Some(dir) => dir,
            None => default_dir().ok_or_else(|| {
                anyhow!("cannot find a config directory; pass --profile DIR or set CHAT_PROFILE")
            })?,
        };
        Ok(Profile { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// This profile's device id, created on first use.
    pub fn device_id(&self) -> Result<DeviceId> {
        create_private_dir(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        Ok(client::load_or_create_device_id(
            &self.dir.join("device_id"),
        )?)
    }

    /// The saved session, or a hint to log in.
    pub fn session(&self) -> Result<Session> {
        let path = self.session_path();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(anyhow!(
                    "not logged in (no session in {}); run `chat login --server URL USER`",
                    self.dir.display()
                ));
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        serde_json::from_str(&text)
            .with_context(|| format!("{} is damaged; run `chat login` again", path.display()))
    }

    /// Saves a new session. The sync state of any earlier login is dropped with it: cursors
    /// belong to one user on one server.
    pub fn save_session(&self, session: &Session) -> Result<()> {
        let json = serde_json::to_vec_pretty(session)?;
        write_atomic(&self.session_path(), &json, true)?;
        match fs::remove_file(self.state_path()) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Forgets the session; true if there was one.
    pub fn forget_session(&self) -> Result<bool> {
        let _ = fs::remove_file(self.state_path());
        match fs::remove_file(self.session_path()) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The saved cursors (an empty state when there are none or the file is unreadable: the
    /// worst that costs is a replay of recent events).
    pub fn load_state(&self) -> ClientState {
        fs::read_to_string(self.state_path())
            .ok()
            .and_then(|text| serde_json::from_str::<ClientState>(&text).ok())
            .map(|s| ClientState {
                cursors: s.cursors,
                outbox: Vec::new(),
            })
            .unwrap_or_default()
    }

    /// Saves the cursors of `state`, merged with the saved ones (the highest per conversation
    /// wins), so that a `watch` and a `talk` running side by side never move each other back.
    /// The outbox is not saved: the CLI waits for its acks before it exits instead.
    pub fn save_state(&self, state: &ClientState) -> Result<()> {
        let saved = self.load_state();
        let merged = ClientState {
            cursors: merge_cursors(&saved.cursors, &state.cursors),
            outbox: Vec::new(),
        };
        write_atomic(
            &self.state_path(),
            &serde_json::to_vec_pretty(&merged)?,
            false,
        )
    }

    fn session_path(&self) -> PathBuf {
        self.dir.join("session.json")
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }
}

fn merge_cursors(a: &[Cursor], b: &[Cursor]) -> Vec<Cursor> {
    let mut by_conv = std::collections::BTreeMap::new();
    for c in a.iter().chain(b) {
        let seq = by_conv.entry(c.conv).or_insert(c.seq);
        *seq = (*seq).max(c.seq);
    }
    by_conv
        .into_iter()
        .map(|(conv, seq)| Cursor { conv, seq })
        .collect()
}

/// `$XDG_CONFIG_HOME/chat`, `~/.config/chat`, or `%APPDATA%\chat`.
fn default_dir() -> Option<PathBuf> {
    let from = |var: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    from("XDG_CONFIG_HOME")
        .or_else(|| from("HOME").map(|h| h.join(".config")))
        .or_else(|| from("APPDATA"))
        .map(|base| base.join("chat"))
}

/// Writes a file by renaming a complete temporary file over it, so a reader never sees half
/// of it. The temporary file has a random name in the same folder and is created anew
/// (`O_EXCL`, readable by the owner only), so nobody can have planted a file or a link under
/// its name; `private` files stay owner-only (they hold a token), the others become
/// world-readable as usual once complete. The folder is created owner-only.
fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    create_private_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = || -> io::Result<()> {
        use std::io::Write;
        let mut tmp = tempfile::Builder::new()
            .prefix(".chat-")
            .suffix(".tmp")
            .tempfile_in(dir)?;
        tmp.write_all(bytes)?;
        #[cfg(unix)]
        if !private {
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file()
                .set_permissions(fs::Permissions::from_mode(0o644))?;
        }
        #[cfg(not(unix))]
        let _ = private;
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    };
    write().with_context(|| format!("writing {}", path.display()))
}

/// Creates `dir` (and its parents) if missing; a folder this creates is owner-only.
fn create_private_dir(dir: &Path) -> io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link planted where a temporary file with a guessable name would go is not followed:
    /// the token is not written through it.
    #[cfg(unix)]
    #[test]
    fn a_planted_link_is_not_followed() -> Result<()> {
        let p = scratch();
        fs::create_dir_all(&p.dir)?;
        let victim = p.dir.with_extension("victim");
        fs::write(&victim, "untouched")?;
        let guess = p
            .session_path()
            .with_extension(format!("tmp-{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &guess)?;
        let session = Session {
            server: "http://127.0.0.1:1".into(),
            token: "secret-token".into(),
            user: UserInfo {
                id: protocol::UserId(1),
                username: "alice".into(),
            },
            device: p.device_id()?,
            expires_at: 1,
        };
        p.save_session(&session)?;
        assert_eq!(fs::read_to_string(&victim)?, "untouched");
        assert_eq!(p.session()?, session);
        fs::remove_file(&victim)?;
        Ok(())
    }
    use protocol::ConvId;
    use protocol::model::UserInfo;

    fn scratch() -> Profile {
        Profile {
            dir: std::env::temp_dir()
                .join(format!("chat-profile-{}", uuid::Uuid::new_v4().simple())),
        }
    }

    #[test]
    fn session_round_trip_and_state_merge() -> Result<()> {
        let p = scratch();
        assert!(p.session().is_err());
        let device = p.device_id()?;
        assert_eq!(p.device_id()?, device);
        let session = Session {
            server: "http://127.0.0.1:1".into(),
            token: "t".into(),
            user: UserInfo {
                id: protocol::UserId(1),
                username: "alice".into(),
            },
            device: device.clone(),
            expires_at: 1,
        };
        p.save_session(&session)?;
        assert_eq!(p.session()?, session);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(p.session_path())?.permissions().mode();
            assert_eq!(mode & 0o077, 0, "session.json must be private");
        }

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&p.dir)?.permissions().mode();
            assert_eq!(mode & 0o077, 0, "the profile folder must be private");
        }

        let c = |conv, seq| Cursor {
            conv: ConvId(conv),
            seq,
        };
        p.save_state(&ClientState {
            cursors: vec![c(1, 5), c(2, 9)],
            outbox: vec![],
        })?;
        p.save_state(&ClientState {
            cursors: vec![c(1, 7), c(2, 3), c(3, 1)],
            outbox: vec![],
        })?;
        assert_eq!(p.load_state().cursors, [c(1, 7), c(2, 9), c(3, 1)]);

        // A new login starts from scratch but keeps the device.
        p.save_session(&session)?;
        assert!(p.load_state().cursors.is_empty());
        assert!(p.forget_session()?);
        assert!(!p.forget_session()?);
        assert_eq!(p.device_id()?, device);
        let _ = fs::remove_dir_all(p.dir());
        Ok(())
    }
}
