//! The writers' file lock: how the SQLite writers of every process on the machine take turns
//! (an exclusive `flock` of `<file>.write-lock`, queued in the kernel, taken before `BEGIN
//! IMMEDIATE`), and where a writer waits for it.

use std::os::unix::fs::OpenOptionsExt;

use crate::store::{StoreError, StoreResult};

thread_local! {
    /// Whether writers on this thread wait for the writers' file lock in place: see
    /// [`wait_for_the_write_lock_in_place`].
    static WAIT_IN_PLACE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Lets the writes made on the calling thread wait for the writers' file lock (held by another
/// process) by blocking this thread, instead of on a thread of the blocking pool that then
/// wakes the writer. For a thread of its own whose runtime runs nothing else (the node's
/// committer): the lock is then handed over by one wake-up of the thread that writes, instead
/// of two, and is never held by a thread that waits to be scheduled while every other
/// process's writer waits for it. Within a process writers queue on the write connection
/// first, so no task of this process can hold the file lock while the thread waits.
pub fn wait_for_the_write_lock_in_place() {
    WAIT_IN_PLACE.with(|w| w.set(true));
}

/// The writers' lock file: kept open for the life of the store, locked per transaction.
pub(super) enum FileLock {
    /// Open, not locked by us.
    Free(std::fs::File),
    /// Locked by us.
    Held(nix::fcntl::Flock<std::fs::File>),
    /// Not open (a wait for the lock was cancelled, or an unlock failed): opened again next time.
    Closed,
}

impl FileLock {
    /// Takes the lock: at once if nobody holds it (no thread involved), else waiting for the
    /// kernel to hand it over, on a blocking thread (or on this one, where
    /// [`wait_for_the_write_lock_in_place`] was called).
    pub(super) async fn acquire(&mut self, path: &std::path::Path) -> StoreResult<()> {
        use nix::fcntl::{Flock, FlockArg};
        let unavailable = |e: &dyn std::fmt::Display| {
            StoreError::Unavailable(format!("writer lock {}: {e}", path.display()))
        };
        let file = match std::mem::replace(self, FileLock::Closed) {
            // Kept from a transaction rolled back after its caller left.
            FileLock::Held(held) => {
                *self = FileLock::Held(held);
                return Ok(());
            }
            FileLock::Free(file) => file,
            FileLock::Closed => std::fs::OpenOptions::new()
                .mode(0o600)
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)
                .map_err(|e| unavailable(&e))?,
        };
        let held = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(held) => held,
            Err((file, nix::errno::Errno::EWOULDBLOCK)) if WAIT_IN_PLACE.with(|w| w.get()) => {
                Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| unavailable(&e))?
            }
            Err((file, nix::errno::Errno::EWOULDBLOCK)) => {
                // If this wait is cancelled, the lock (taken later on that thread) is let go
                // when its result is dropped, and the file is opened again next time.
                tokio::task::spawn_blocking(move || Flock::lock(file, FlockArg::LockExclusive))
                    .await
                    .map_err(|e| StoreError::Internal(format!("writer lock task: {e}")))?
                    .map_err(|(_, e)| unavailable(&e))?
            }
            Err((file, e)) => {
                *self = FileLock::Free(file);
                return Err(unavailable(&e));
            }
        };
        *self = FileLock::Held(held);
        Ok(())
    }

    /// Lets the lock go.
    pub(super) fn release(&mut self) {
        if let FileLock::Held(held) = std::mem::replace(self, FileLock::Closed) {
            match held.unlock() {
                Ok(file) => *self = FileLock::Free(file),
                // Dropping it unlocks as well as it can; the file is opened again next time.
                Err((held, e)) => {
                    tracing::warn!(error = %e, "could not unlock the SQLite writer lock");
                    drop(held);
                }
            }
        }
    }
}
