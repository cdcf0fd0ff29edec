//! Bringing a database's schema up to date: the migrations in `server/migrations/<backend>`,
//! applied by whichever process gets there first, refused when they do not match this build.

use std::collections::{HashMap, HashSet};

use sqlx::migrate::{Migrate, MigrateError, Migrator};

use super::{StoreError, StoreResult};

/// The store's word for a failed migration step: the statement's error as the backend maps it,
/// or an internal error.
pub(crate) fn migrate_error(
    e: MigrateError,
    backend: &str,
    db_err: fn(sqlx::Error) -> StoreError,
) -> StoreError {
    match e {
        MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _) => db_err(e),
        other => StoreError::Internal(format!("{backend} migrations: {other}")),
    }
}

/// Brings the schema up to `migrator`'s on `conn`, which the backend has made the only migrating
/// connection first (SQLite: inside `BEGIN IMMEDIATE`; PostgreSQL: under sqlx's advisory lock).
///
/// These are the steps of `Migrator::run`, spelled out because its generic `Acquire` bound
/// makes the future unusable where it must be `Send` (sqlx issue "Acquire is not general
/// enough"), with three refusals added: a migration that failed half-way, one changed after it
/// was applied, and one this build does not know (the database was migrated by a newer build).
/// `backend` names the database in those messages; `db_err` maps the backend's errors.
pub(crate) async fn apply_migrations<C: Migrate + Send + ?Sized>(
    conn: &mut C,
    migrator: &Migrator,
    backend: &str,
    db_err: fn(sqlx::Error) -> StoreError,
) -> StoreResult<()> {
    let migrate_err = |e| migrate_error(e, backend, db_err);
    conn.ensure_migrations_table().await.map_err(migrate_err)?;
    if let Some(version) = conn.dirty_version().await.map_err(migrate_err)? {
        return Err(StoreError::Internal(format!(
            "{backend} migration {version} failed half-way earlier; repair the database"
        )));
    }
    let applied: HashMap<i64, _> = conn
        .list_applied_migrations()
        .await
        .map_err(migrate_err)?
        .into_iter()
        .map(|m| (m.version, m.checksum))
        .collect();
    let known: HashSet<i64> = migrator.iter().map(|m| m.version).collect();
    if let Some(newer) = applied.keys().find(|v| !known.contains(v)) {
        return Err(StoreError::Internal(format!(
            "the database has migration {newer}, unknown to this build: it was made by a newer one"
        )));
    }
    for migration in migrator.iter() {
        if migration.migration_type.is_down_migration() {
            continue;
        }
        match applied.get(&migration.version) {
            Some(checksum) if *checksum != migration.checksum => {
                return Err(StoreError::Internal(format!(
                    "{backend} migration {} was changed after it was applied",
                    migration.version
                )));
            }
            Some(_) => {}
            None => {
                conn.apply(migration).await.map_err(migrate_err)?;
            }
        }
    }
    Ok(())
}
