//! The embedded store: one SQLite file shared by every process on the machine.
//! (Being written: see the helper's task.)
use super::{StoreError, StoreResult};

/// Placeholder until the SQLite store lands.
pub struct SqliteStore;

impl SqliteStore {
    /// Opens the file.
    pub async fn open(_path: &str) -> StoreResult<super::SharedStore> {
        Err(StoreError::Unavailable("sqlite store not built yet".into()))
    }
}
