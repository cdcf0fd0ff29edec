//! What PostgreSQL's errors mean to the store: by SQLSTATE, what is worth retrying (deadlocks,
//! serialization failures), what is unavailable for now, what the database could not hold.

use crate::store::StoreError;
use crate::store::errors;

/// A batch's transaction failed: with what, and whether trying it again may succeed.
pub(super) struct Failed {
    pub(super) error: StoreError,
    pub(super) retry: bool,
}

impl From<sqlx::Error> for Failed {
    fn from(e: sqlx::Error) -> Self {
        Failed {
            retry: is_retryable(&e),
            error: db_err(e),
        }
    }
}

/// The SQLSTATE of a database error.
pub(super) fn sqlstate(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// Whether the server aborted the transaction only to let another one through (deadlock,
/// serialization failure): the same transaction again may well succeed.
pub(super) fn is_retryable(e: &sqlx::Error) -> bool {
    matches!(sqlstate(e).as_deref(), Some("40001" | "40P01"))
}

/// What a SQLSTATE that is not a constraint violation means to the caller, `None` when nothing
/// but "internal". `message` describes the error for logs.
pub(super) fn sqlstate_error(code: &str, message: &str) -> Option<StoreError> {
    let unavailable = || Some(StoreError::Unavailable(message.to_owned()));
    match code {
        // Connection exceptions.
        c if c.starts_with("08") => unavailable(),
        // Serialization failure, deadlock (once retries are spent).
        "40001" | "40P01" => unavailable(),
        // A lock not granted within lock_timeout; a statement cancelled by statement_timeout.
        "55P03" | "57014" => unavailable(),
        // Administrator or crash shutdown, server starting up, idle transaction ended.
        "57P01" | "57P02" | "57P03" | "25P03" => unavailable(),
        // A read-only transaction: connected to a standby, as during a failover.
        "25006" => unavailable(),
        // Insufficient resources (disk full, too many connections), system errors (I/O).
        c if c.starts_with("53") || c.starts_with("58") => unavailable(),
        // Data exceptions: a value the database cannot hold (a NUL in a name, a number out of
        // range). Our words, not the server's: they may reach clients.
        c if c.starts_with("22") => Some(StoreError::Invalid(
            "a value the database cannot store".into(),
        )),
        _ => None,
    }
}

/// The store's word for a failed statement.
pub(super) fn db_err(e: sqlx::Error) -> StoreError {
    if let Some(mapped) = errors::constraint_error(&e) {
        return mapped;
    }
    if let Some(mapped) = sqlstate(&e).and_then(|code| sqlstate_error(&code, &e.to_string())) {
        return mapped;
    }
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
        other => StoreError::Internal(other.to_string()),
    }
}
