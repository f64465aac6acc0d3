//! Migrations on MySQL: reading the tables and versions under the
//! migration lock (MySQL's DDL is not transactional, so the lock, not a
//! snapshot, keeps a reader from seeing half a migration), applying pending
//! migrations under the same lock. The compatibility check itself is
//! `crate::compat`.

use diesel::mysql::Mysql;
use diesel::prelude::*;
use diesel_migrations::MigrationHarness;
use tasktrail_core::StorageError;

use super::errors::Redacted;
use super::{map_error, MysqlConnection, MysqlStorage, MYSQL_MIGRATIONS};
use crate::compat::{
    applied_versions, known_versions, pending_versions, read_snapshot, refuse_if_pending,
    SchemaSnapshot,
};

/// How long a boot waits for another process's migration.
const MIGRATION_LOCK_WAIT_SECONDS: u32 = 120;

/// `GET_LOCK` of this database's migration lock (names are server-wide:
/// the database's name, hashed to fit MySQL's 64 characters).
const TAKE_MIGRATION_LOCK: &str =
    "SELECT GET_LOCK(CONCAT('tasktrail-migrate-', MD5(DATABASE())), ?) AS answer";
const RELEASE_MIGRATION_LOCK: &str =
    "SELECT RELEASE_LOCK(CONCAT('tasktrail-migrate-', MD5(DATABASE()))) AS answer";

#[derive(QueryableByName)]
struct LockAnswer {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    answer: Option<i64>,
}

/// Runs `body` holding this database's migration lock, released whatever
/// `body` returns.
fn under_migration_lock<T>(
    connection: &mut MysqlConnection,
    body: impl FnOnce(&mut MysqlConnection) -> Result<T, StorageError>,
) -> Result<T, StorageError> {
    let taken = diesel::sql_query(TAKE_MIGRATION_LOCK)
        .bind::<diesel::sql_types::Integer, _>(MIGRATION_LOCK_WAIT_SECONDS as i32)
        .get_result::<LockAnswer>(connection)
        .map_err(map_error)?;
    if taken.answer != Some(1) {
        return Err(StorageError::Unavailable {
            source: Box::new(Redacted(format!(
                "another process held the migration lock for {MIGRATION_LOCK_WAIT_SECONDS} s"
            ))),
        });
    }
    let result = body(connection);
    // Best effort: the lock also ends with the session.
    let _ = diesel::sql_query(RELEASE_MIGRATION_LOCK).get_result::<LockAnswer>(connection);
    result
}

impl MysqlStorage {
    /// Applies pending migrations; returns the versions it applied (empty
    /// when the schema was already current). Idempotent, and safe to call
    /// from many processes at once: the migration lock lets one migrate
    /// while the others wait, then find the schema current.
    ///
    /// MySQL commits each DDL statement on its own: a migration that fails
    /// halfway (the disk filled up) leaves the statements before the
    /// failure applied and its version unrecorded; see docs/operations.md.
    pub fn migrate(&self) -> Result<Vec<String>, StorageError> {
        if self.pending_migrations()?.is_empty() {
            return Ok(Vec::new());
        }
        self.liveness.run(|connection, _| {
            under_migration_lock(connection, |connection| {
                let snapshot = read_schema_snapshot(connection).map_err(map_error)?;
                crate::compat::ensure_ours(
                    &snapshot,
                    &known_versions::<Mysql>(&MYSQL_MIGRATIONS)?,
                )?;
                let applied = connection
                    .run_pending_migrations(MYSQL_MIGRATIONS)
                    .map_err(|error| StorageError::Other { source: error })?;
                Ok(applied.iter().map(ToString::to_string).collect())
            })
        })
    }

    /// The migration versions applied to this database, oldest first.
    pub fn applied_migrations(&self) -> Result<Vec<String>, StorageError> {
        applied_versions(&mut *self.pooled()?)
    }

    /// The embedded migrations this database has not applied, read without
    /// DDL.
    fn pending_migrations(&self) -> Result<Vec<String>, StorageError> {
        let snapshot = read_schema_snapshot(&mut *self.pooled()?).map_err(map_error)?;
        Ok(pending_versions(
            known_versions::<Mysql>(&MYSQL_MIGRATIONS)?,
            &snapshot.applied,
        ))
    }

    /// Refuses (for a reader) a database that still needs a migration.
    pub(super) fn refuse_pending_migrations(&self) -> Result<(), StorageError> {
        refuse_if_pending(&self.pending_migrations()?)
    }
}

/// Refuses a database that is not ours or is newer than this binary,
/// reading it under the migration lock (no migration is half done then).
pub(super) fn ensure_ours(connection: &mut MysqlConnection) -> Result<(), StorageError> {
    under_migration_lock(connection, |connection| {
        let snapshot = read_schema_snapshot(connection).map_err(map_error)?;
        crate::compat::ensure_ours(&snapshot, &known_versions::<Mysql>(&MYSQL_MIGRATIONS)?)
    })
}

/// The tables of the connection's database and the migration versions
/// recorded.
fn read_schema_snapshot(connection: &mut MysqlConnection) -> QueryResult<SchemaSnapshot> {
    read_snapshot(
        connection,
        "SELECT CAST(table_name AS CHAR) AS name FROM information_schema.tables \
         WHERE table_schema = DATABASE()",
        "SELECT CAST(version AS CHAR) AS version FROM __diesel_schema_migrations",
    )
}
