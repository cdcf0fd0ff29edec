//! What SQLite's errors mean to the store: busy, locked and I/O errors are
//! [`StoreError::Unavailable`] (retry later), constraint violations the store's own words; the
//! same mapping for sqlx's errors (reads) and rusqlite's (the write connection).

use crate::store::StoreError;
use crate::store::errors;

/// SQLite's primary result codes that mean "not now" rather than "never".
const SQLITE_BUSY: i32 = 5;
const SQLITE_LOCKED: i32 = 6;
const SQLITE_IOERR: i32 = 10;
const SQLITE_FULL: i32 = 13;
const SQLITE_CANTOPEN: i32 = 14;
const SQLITE_PROTOCOL: i32 = 15;

/// The primary result code of a database error (sqlx reports the extended one).
pub(super) fn primary_code(e: &sqlx::Error) -> Option<i32> {
    let sqlx::Error::Database(db) = e else {
        return None;
    };
    db.code()?.parse::<i32>().ok().map(|code| code & 0xff)
}

pub(super) fn is_busy(e: &sqlx::Error) -> bool {
    matches!(primary_code(e), Some(SQLITE_BUSY | SQLITE_LOCKED))
}

/// The store's word for a failed statement.
pub(super) fn db_err(e: sqlx::Error) -> StoreError {
    if let Some(mapped) = errors::constraint_error(&e) {
        return mapped;
    }
    if matches!(
        primary_code(&e),
        Some(
            SQLITE_BUSY
                | SQLITE_LOCKED
                | SQLITE_IOERR
                | SQLITE_FULL
                | SQLITE_CANTOPEN
                | SQLITE_PROTOCOL
        )
    ) {
        return StoreError::Unavailable(e.to_string());
    }
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
        other => StoreError::Internal(other.to_string()),
    }
}

/// The store's word for a failed write statement (the write connection's counterpart of
/// [`db_err`], with the same mapping).
pub(super) fn write_err(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    use rusqlite::ffi;
    if let rusqlite::Error::SqliteFailure(failure, _) = &e {
        match failure.code {
            ErrorCode::ConstraintViolation => {
                return match failure.extended_code {
                    ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                        StoreError::Conflict("already exists".into())
                    }
                    // Every foreign key names something the caller referred to.
                    ffi::SQLITE_CONSTRAINT_FOREIGNKEY => StoreError::NotFound,
                    ffi::SQLITE_CONSTRAINT_NOTNULL | ffi::SQLITE_CONSTRAINT_CHECK => {
                        StoreError::Invalid("refused by the schema".into())
                    }
                    _ => StoreError::Internal(e.to_string()),
                };
            }
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::SystemIoFailure
            | ErrorCode::DiskFull
            | ErrorCode::CannotOpen
            | ErrorCode::FileLockingProtocolFailed => {
                return StoreError::Unavailable(e.to_string());
            }
            _ => {}
        }
    }
    StoreError::Internal(e.to_string())
}
