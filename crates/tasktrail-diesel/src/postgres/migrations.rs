//! Migrations on Postgres: reading the tables and versions in one
//! snapshot (the compatibility check itself is `crate::compat`), applying
//! pending migrations under the migration lock.

use diesel::pg::{Pg, PgConnection};
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use diesel_migrations::MigrationHarness;
use tasktrail_core::StorageError;

use super::advisory::MIGRATION_LOCK_KEY;
use super::{map_error, PostgresStorage, POSTGRES_MIGRATIONS};
use crate::compat::{
    applied_versions, known_versions, pending_versions, read_snapshot, refuse_if_pending,
    SchemaSnapshot,
};
use crate::tx::TxError;

impl PostgresStorage {
    /// Applies pending migrations; returns the versions it applied (empty
    /// when the schema was already current). Idempotent, and safe to call
    /// from many processes at once: a database-wide advisory lock lets one
    /// migrate while the others wait.
    pub fn migrate(&self) -> Result<Vec<String>, StorageError> {
        // Nothing pending: no lock, no DDL (diesel's own check would create
        // its migration table), so a role with only SELECT/INSERT/UPDATE/
        // DELETE rights runs workers on a current schema.
        if self.pending_migrations()?.is_empty() {
            return Ok(Vec::new());
        }
        // One transaction holds the migration lock (transaction-scoped, so
        // it also works through a transaction pooler and is released by
        // COMMIT or ROLLBACK whatever happens), the compatibility check and
        // every pending migration (each in its own savepoint): concurrent
        // boots queue on the lock and find the schema current.
        self.pooled()?
            .transaction(|connection| -> Result<Vec<String>, TxError> {
                diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
                    .bind::<BigInt, _>(MIGRATION_LOCK_KEY)
                    .execute(connection)?;
                let snapshot = read_schema_snapshot(connection)?;
                crate::compat::ensure_ours(
                    &snapshot,
                    &known_versions::<Pg>(&POSTGRES_MIGRATIONS)?,
                )?;
                let applied = connection
                    .run_pending_migrations(POSTGRES_MIGRATIONS)
                    .map_err(|error| StorageError::Other { source: error })?;
                Ok(applied.iter().map(ToString::to_string).collect())
            })
            .map_err(TxError::into_storage::<Pg>)
    }

    /// The migration versions applied to this database, oldest first.
    pub fn applied_migrations(&self) -> Result<Vec<String>, StorageError> {
        applied_versions(&mut *self.pooled()?)
    }

    /// The embedded migrations this database has not applied, read in one
    /// snapshot without DDL.
    fn pending_migrations(&self) -> Result<Vec<String>, StorageError> {
        let snapshot = self
            .pooled()?
            .build_transaction()
            .repeatable_read()
            .read_only()
            .run(read_schema_snapshot)
            .map_err(map_error)?;
        Ok(pending_versions(
            known_versions::<Pg>(&POSTGRES_MIGRATIONS)?,
            &snapshot.applied,
        ))
    }

    /// Refuses (for a reader) a database that still needs a migration.
    pub(super) fn refuse_pending_migrations(&self) -> Result<(), StorageError> {
        refuse_if_pending(&self.pending_migrations()?)
    }
}

/// Refuses a database that is not ours or is newer than this binary: the
/// one compatibility check ([`crate::compat::ensure_ours`]), applied to the
/// tables of the schema the connection works in (`current_schema()`).
pub(super) fn ensure_ours(connection: &mut PgConnection) -> Result<(), StorageError> {
    // Tables and migration versions from one snapshot: another process may
    // be migrating right now, and tables read before its commit with
    // versions read after it would look like a broken database.
    let snapshot = connection
        .build_transaction()
        .repeatable_read()
        .read_only()
        .run(read_schema_snapshot)
        .map_err(map_error)?;
    crate::compat::ensure_ours(&snapshot, &known_versions::<Pg>(&POSTGRES_MIGRATIONS)?)
}

/// The relations of the current schema and the migration versions
/// recorded, in the caller's transaction.
fn read_schema_snapshot(connection: &mut PgConnection) -> QueryResult<SchemaSnapshot> {
    read_snapshot(
        connection,
        "SELECT c.relname::text AS name FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
        "SELECT version::text AS version FROM __diesel_schema_migrations",
    )
}
