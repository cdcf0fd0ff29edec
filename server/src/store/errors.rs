//! What the SQL backends' errors mean to the store where the backends agree: constraint
//! violations, in the store's own words. Each backend maps the rest in its own `errors`.

use super::StoreError;

/// The store's word for a constraint the schema enforced, or `None` when `e` is not a
/// constraint violation. The messages are ours, not the database's: they may reach clients.
pub(crate) fn constraint_error(e: &sqlx::Error) -> Option<StoreError> {
    let sqlx::Error::Database(db) = e else {
        return None;
    };
    match db.kind() {
        sqlx::error::ErrorKind::UniqueViolation => {
            Some(StoreError::Conflict("already exists".into()))
        }
        // Every foreign key names something the caller referred to: a user, a conversation.
        sqlx::error::ErrorKind::ForeignKeyViolation => Some(StoreError::NotFound),
        sqlx::error::ErrorKind::NotNullViolation | sqlx::error::ErrorKind::CheckViolation => {
            Some(StoreError::Invalid("refused by the schema".into()))
        }
        _ => None,
    }
}
