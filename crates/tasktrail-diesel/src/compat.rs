//! Migration compatibility, one check for both backends: whether a
//! database is ours and not newer than this binary ([`ensure_ours`], used
//! by both backends' open, migrate and read-only guards), the migration
//! versions this binary knows ([`known_versions`]) and has applied
//! ([`applied_versions`]), which it lacks (from versions read without DDL:
//! Diesel's own check would create its migration table), and the refusal
//! readers give when it lacks any. Each backend only reads its tables and
//! versions (its catalog's SQL).
#![cfg_attr(
    not(any(feature = "sqlite", feature = "postgres", feature = "mysql")),
    allow(dead_code)
)]

use diesel::backend::Backend;
use diesel::migration::{Migration, MigrationSource};
use diesel_migrations::MigrationHarness;
use tasktrail_core::StorageError;

/// The table Diesel records applied migrations in.
pub(crate) const MIGRATION_TABLE: &str = "__diesel_schema_migrations";

/// What one consistent read of a database showed: the names of its tables
/// and the migration versions recorded in [`MIGRATION_TABLE`] (empty when
/// there is no such table).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SchemaSnapshot {
    /// Every table (SQLite) or relation of the current schema (Postgres).
    pub(crate) tables: Vec<String>,
    /// The migration versions recorded.
    pub(crate) applied: Vec<String>,
}

/// A table's name, as a catalog query returns it (`AS name`).
#[derive(diesel::QueryableByName)]
pub(crate) struct TableName {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub(crate) name: String,
}

/// A recorded migration version (`AS version`).
#[derive(diesel::QueryableByName)]
pub(crate) struct Version {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub(crate) version: String,
}

/// Reads a [`SchemaSnapshot`] in the caller's transaction: `tables_sql`
/// lists the tables (`AS name`, the dialect's catalog), then the versions
/// of [`MIGRATION_TABLE`] are read with `versions_sql` (`AS version`) if it
/// is one of them.
pub(crate) fn read_snapshot<C>(
    connection: &mut C,
    tables_sql: &str,
    versions_sql: &str,
) -> diesel::QueryResult<SchemaSnapshot>
where
    C: diesel::Connection,
    for<'a> diesel::query_builder::SqlQuery: diesel::query_dsl::LoadQuery<'a, C, TableName>
        + diesel::query_dsl::LoadQuery<'a, C, Version>,
{
    use diesel::RunQueryDsl;
    let tables: Vec<String> = diesel::sql_query(tables_sql)
        .load::<TableName>(connection)?
        .into_iter()
        .map(|table| table.name)
        .collect();
    let applied = if tables.iter().any(|table| table == MIGRATION_TABLE) {
        diesel::sql_query(versions_sql)
            .load::<Version>(connection)?
            .into_iter()
            .map(|row| row.version)
            .collect()
    } else {
        Vec::new()
    };
    Ok(SchemaSnapshot { tables, applied })
}

/// The migration versions of `source` (this binary's embedded migrations).
pub(crate) fn known_versions<DB: Backend>(
    source: &impl MigrationSource<DB>,
) -> Result<Vec<String>, StorageError> {
    let migrations: Vec<Box<dyn Migration<DB>>> = source
        .migrations()
        .map_err(|error| StorageError::Other { source: error })?;
    Ok(migrations
        .iter()
        .map(|migration| migration.name().version().to_string())
        .collect())
}

/// The migration versions applied to the database `connection` reaches,
/// oldest first.
pub(crate) fn applied_versions<DB: Backend>(
    connection: &mut impl MigrationHarness<DB>,
) -> Result<Vec<String>, StorageError> {
    let mut versions: Vec<String> = connection
        .applied_migrations()
        .map_err(|error| StorageError::Other { source: error })?
        .iter()
        .map(ToString::to_string)
        .collect();
    versions.sort();
    Ok(versions)
}

/// Refuses a database that is not ours or is newer than this binary
/// (`known` are this binary's versions), from what one snapshot showed: an
/// empty database is ours; tables without a migration record are another
/// program's (a pre-fix `task_history` is named, for `migrate --adopt`); a
/// recorded version this binary does not know is a newer tasktrail's; a
/// migration record without `task_history` is broken.
pub(crate) fn ensure_ours(snapshot: &SchemaSnapshot, known: &[String]) -> Result<(), StorageError> {
    let has = |name: &str| snapshot.tables.iter().any(|table| table == name);
    if snapshot.tables.is_empty() {
        return Ok(());
    }
    if !has(MIGRATION_TABLE) {
        let detail = if has("task_history") {
            "the database holds a task_history table that tasktrail did not create (no migration record); `tasktrail migrate --adopt` checks it and adopts it"
        } else {
            "the database holds tables but is not a tasktrail database"
        };
        return Err(StorageError::Incompatible {
            detail: detail.to_owned(),
        });
    }
    if let Some(unknown) = snapshot.applied.iter().find(|v| !known.contains(v)) {
        return Err(StorageError::Incompatible {
            detail: format!(
                "the database has migration {unknown} which this tasktrail does not know: it was written by a newer tasktrail or another program"
            ),
        });
    }
    if !has("task_history") && !snapshot.applied.is_empty() {
        return Err(StorageError::Incompatible {
            detail: "the database has migrations but no task_history table".to_owned(),
        });
    }
    Ok(())
}

/// The `known` versions not in `applied`, oldest first.
pub(crate) fn pending_versions(known: Vec<String>, applied: &[String]) -> Vec<String> {
    let mut pending: Vec<String> = known
        .into_iter()
        .filter(|version| !applied.contains(version))
        .collect();
    pending.sort();
    pending
}

/// Refuses a database that still needs `pending` before it can be read.
pub(crate) fn refuse_if_pending(pending: &[String]) -> Result<(), StorageError> {
    if pending.is_empty() {
        return Ok(());
    }
    Err(StorageError::Incompatible {
        detail: format!(
            "the database needs migration(s) {} before it can be read: run `tasktrail migrate`",
            pending.join(", ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(tables: &[&str], applied: &[&str]) -> SchemaSnapshot {
        SchemaSnapshot {
            tables: tables.iter().map(|t| (*t).to_owned()).collect(),
            applied: applied.iter().map(|v| (*v).to_owned()).collect(),
        }
    }

    fn incompatible(result: Result<(), StorageError>) -> bool {
        matches!(result, Err(StorageError::Incompatible { .. }))
    }

    #[test]
    fn ours_empty_or_current_and_nothing_else() {
        let known = vec!["1".to_owned(), "2".to_owned()];
        assert!(ensure_ours(&snapshot(&[], &[]), &known).is_ok());
        assert!(ensure_ours(
            &snapshot(&[MIGRATION_TABLE, "task_history"], &["1", "2"]),
            &known
        )
        .is_ok());
        // Not ours: tables and no record, with or without a task_history.
        assert!(incompatible(ensure_ours(
            &snapshot(&["orders"], &[]),
            &known
        )));
        assert!(incompatible(ensure_ours(
            &snapshot(&["task_history"], &[]),
            &known
        )));
        // Newer than this binary.
        assert!(incompatible(ensure_ours(
            &snapshot(&[MIGRATION_TABLE, "task_history"], &["1", "9"]),
            &known
        )));
        // A record and no task_history.
        assert!(incompatible(ensure_ours(
            &snapshot(&[MIGRATION_TABLE], &["1"]),
            &known
        )));
        // A record table with nothing recorded yet (a migration under way
        // elsewhere) is not refused.
        assert!(ensure_ours(&snapshot(&[MIGRATION_TABLE], &[]), &known).is_ok());
    }

    #[test]
    fn pending_versions_are_the_known_ones_not_applied_oldest_first() {
        let known = vec!["3".to_owned(), "1".to_owned(), "2".to_owned()];
        assert_eq!(pending_versions(known, &["1".to_owned()]), ["2", "3"]);
        assert!(refuse_if_pending(&[]).is_ok());
        assert!(matches!(
            refuse_if_pending(&["2".to_owned()]),
            Err(StorageError::Incompatible { detail }) if detail.contains('2')
        ));
    }
}
