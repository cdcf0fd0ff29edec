//! The Snowflake worker ids a registry handle was given, by node or controller, so that it can
//! ask for the same one again.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::super::{RegistryError, RegistryResult};

/// The worker id each node or controller registered through this handle last had: asked for
/// again if Redis forgot it (a restart without persistence), so that processes keep their ids
/// instead of swapping them while some have not noticed yet. Shared by clones of the handle.
#[derive(Clone, Default)]
pub(super) struct Workers {
    // A plain mutex: held for a map lookup or insert, never across an await.
    last: Arc<Mutex<HashMap<String, u16>>>,
}

impl Workers {
    /// The id `who` had, as a script argument: empty when it had none.
    pub(super) fn preferred(&self, who: &str) -> String {
        self.last
            .lock()
            .get(who)
            .map(u16::to_string)
            .unwrap_or_default()
    }

    /// Checks and remembers the id a script gave `who`.
    pub(super) fn remember(&self, who: String, id: i64) -> RegistryResult<u16> {
        let id = u16::try_from(id)
            .map_err(|_| RegistryError::Internal(format!("bad worker id {id}")))?;
        self.last.lock().insert(who, id);
        Ok(id)
    }
}
