//! The device id: one per install, chosen by the client, stable across restarts. It lives in a
//! small file that is created once, atomically, so two processes starting together agree.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use protocol::DeviceId;
use protocol::ids::IdError;

/// Why the device id file could not be read or created.
#[derive(Debug, thiserror::Error)]
pub enum DeviceIdError {
    /// Reading, writing or linking the file failed.
    #[error("device id file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// The file holds something that is not a device id.
    #[error("device id file {path} does not hold a valid device id: {source}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why the content was refused.
        #[source]
        source: IdError,
    },
}

/// A fresh device id: a random UUID, whose 36 characters of `[0-9a-f-]` are always a valid
/// device id.
pub fn new_device_id() -> DeviceId {
    DeviceId::new(uuid::Uuid::new_v4().hyphenated().to_string())
        .expect("a hyphenated UUID is a valid device id")
}

/// The device id stored in `path`, creating the file (and its directory) with a new id if it
/// does not exist yet.
///
/// Creation is atomic: the id is written to a temporary file which is then hard-linked into
/// place, which fails if another process got there first; that process's id is then used.
pub fn load_or_create_device_id(path: &Path) -> Result<DeviceId, DeviceIdError> {
    let io_err = |source| DeviceIdError::Io {
        path: path.to_owned(),
        source,
    };
    match read_device_id(path) {
        Ok(id) => return Ok(id),
        Err(DeviceIdError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io_err)?;
    }
    let id = new_device_id();
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    let written = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(format!("{id}\n").as_bytes())?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(e));
    }
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(id),
        // Someone else created it between our read and our link: theirs wins.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_device_id(path),
        Err(e) => Err(io_err(e)),
    }
}

fn read_device_id(path: &Path) -> Result<DeviceId, DeviceIdError> {
    let text = fs::read_to_string(path).map_err(|source| DeviceIdError::Io {
        path: path.to_owned(),
        source,
    })?;
    DeviceId::new(text.trim()).map_err(|source| DeviceIdError::Invalid {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> PathBuf {
        std::env::temp_dir().join(format!(
            "chat-client-test-{}",
            uuid::Uuid::new_v4().simple()
        ))
    }

    #[test]
    fn created_once_then_kept() -> Result<(), DeviceIdError> {
        let dir = scratch();
        let path = dir.join("nested").join("device_id");
        let first = load_or_create_device_id(&path)?;
        let again = load_or_create_device_id(&path)?;
        assert_eq!(first, again);
        assert_eq!(first.as_str().len(), 36);
        let _ = fs::remove_dir_all(dir);
        Ok(())
    }

    #[test]
    fn garbage_is_reported_not_replaced() -> Result<(), io::Error> {
        let dir = scratch();
        fs::create_dir_all(&dir)?;
        let path = dir.join("device_id");
        fs::write(&path, "not a device id!\n")?;
        assert!(matches!(
            load_or_create_device_id(&path),
            Err(DeviceIdError::Invalid { .. })
        ));
        assert_eq!(fs::read_to_string(&path)?, "not a device id!\n");
        let _ = fs::remove_dir_all(dir);
        Ok(())
    }

    #[test]
    fn concurrent_creators_agree() -> Result<(), String> {
        let dir = scratch();
        let path = dir.join("device_id");
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || load_or_create_device_id(&path))
            })
            .collect();
        let mut ids = Vec::new();
        for h in handles {
            ids.push(
                h.join()
                    .map_err(|_| "thread panicked")?
                    .map_err(|e| e.to_string())?,
            );
        }
        ids.dedup();
        assert_eq!(ids.len(), 1, "{ids:?}");
        let _ = fs::remove_dir_all(dir);
        Ok(())
    }
}
