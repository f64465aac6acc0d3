//! Adoption on SQLite (see [`crate::adopt`]): what SQLite's catalogue says,
//! what its declared types can hold (its own affinity rules), and the
//! times rewritten in the one form tasktrail writes once the fix is
//! applied. SQLite stores any value in any column, so no column is
//! converted and the values are checked one by one.

use std::path::Path;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel::sqlite::SqliteConnection;
use diesel_migrations::EmbeddedMigrations;
use tasktrail_core::StorageError;

use super::{map_error, utf8_path, SqliteOptions, SqliteStorage, SQLITE_MIGRATIONS};
use crate::adopt::{AdoptDialect, ColumnFit, ColumnKind, Name};
use crate::codec::{decode_timestamp, encode_timestamp};

/// Whether a declared SQLite type can hold `kind`'s values (SQLite's own
/// affinity rules, plus the time names other tools declare; ids and JSON
/// are text).
fn declared_type_holds(declared: &str, kind: ColumnKind) -> bool {
    let declared = declared.to_ascii_uppercase();
    let text = ["CHAR", "CLOB", "TEXT"]
        .iter()
        .any(|t| declared.contains(t));
    match kind {
        ColumnKind::Text | ColumnKind::Uuid | ColumnKind::Json => text,
        ColumnKind::Integer => declared.contains("INT"),
        ColumnKind::Real => ["REAL", "FLOA", "DOUB", "NUMERIC", "DECIMAL"]
            .iter()
            .any(|t| declared.contains(t)),
        // Times: SQLite stores them as text whatever the declared type.
        ColumnKind::Time => text || ["DATE", "TIME"].iter().any(|t| declared.contains(t)),
    }
}

#[derive(QueryableByName)]
struct RowTimes {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    started_at: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
    finished_at: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
    interrupted_at: Option<String>,
}

/// Rewrites every row's times in the canonical form (the form tasktrail
/// writes, whose text order is time order, which listings rely on).
fn canonical_times(connection: &mut SqliteConnection) -> QueryResult<()> {
    let rows: Vec<RowTimes> = diesel::sql_query(
        "SELECT id, CAST(started_at AS TEXT) AS started_at, \
         CAST(finished_at AS TEXT) AS finished_at, \
         CAST(interrupted_at AS TEXT) AS interrupted_at FROM task_history",
    )
    .load(connection)?;
    let canonical = |column: &str, text: &str| {
        decode_timestamp(column, text)
            .map(encode_timestamp)
            .unwrap_or_else(|_| text.to_owned())
    };
    for row in rows {
        let started_at = canonical("started_at", &row.started_at);
        let finished_at = row
            .finished_at
            .as_deref()
            .map(|t| canonical("finished_at", t));
        let interrupted_at = row
            .interrupted_at
            .as_deref()
            .map(|t| canonical("interrupted_at", t));
        if started_at == row.started_at
            && finished_at == row.finished_at
            && interrupted_at == row.interrupted_at
        {
            continue;
        }
        diesel::sql_query(
            "UPDATE task_history SET started_at = ?, finished_at = ?, interrupted_at = ? WHERE id = ?",
        )
        .bind::<Text, _>(started_at)
        .bind::<diesel::sql_types::Nullable<Text>, _>(finished_at)
        .bind::<diesel::sql_types::Nullable<Text>, _>(interrupted_at)
        .bind::<Text, _>(&row.id)
        .execute(connection)?;
    }
    Ok(())
}

impl AdoptDialect for SqliteStorage {
    const MIGRATIONS: EmbeddedMigrations = SQLITE_MIGRATIONS;
    const TABLE_NAMES: &'static str =
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'";
    const TASK_HISTORY_COLUMNS: &'static str =
        "SELECT name, type AS declared FROM pragma_table_info('task_history')";
    /// `BEGIN IMMEDIATE` already holds the database's only write lock.
    const LOCK_TASK_HISTORY: Option<&'static str> = None;
    const PRE_FIX_STATUS_COUNTS: &'static str =
        "SELECT status, count(*) AS row_count FROM task_history GROUP BY status ORDER BY status";
    const RECORD_BASELINE: &'static str =
        "INSERT INTO __diesel_schema_migrations (version) VALUES (?)";
    const EXTRA_COLUMN_CONSEQUENCE: &'static str = " (the upgrade would drop it)";

    fn fit(kind: ColumnKind, declared: &str, _column: &str) -> ColumnFit {
        if declared_type_holds(declared, kind) {
            ColumnFit::Holds
        } else {
            ColumnFit::CannotHold
        }
    }

    fn ids_not_uuids(connection: &mut SqliteConnection) -> QueryResult<i64> {
        let ids: Vec<Name> =
            diesel::sql_query("SELECT id AS name FROM task_history").load(connection)?;
        Ok(ids
            .iter()
            .filter(|id| uuid::Uuid::parse_str(&id.name).is_err())
            .count() as i64)
    }

    fn unreadable_times(connection: &mut SqliteConnection) -> QueryResult<Vec<String>> {
        let times: Vec<RowTimes> = diesel::sql_query(
            "SELECT id, CAST(started_at AS TEXT) AS started_at, \
             CAST(finished_at AS TEXT) AS finished_at, NULL AS interrupted_at FROM task_history",
        )
        .load(connection)?;
        let unreadable = |column: &str, text: Option<&String>| {
            text.is_some_and(|text| decode_timestamp(column, text).is_err())
        };
        let mut found = Vec::new();
        for column in ["started_at", "finished_at"] {
            let count = times
                .iter()
                .filter(|row| {
                    let text = if column == "started_at" {
                        Some(&row.started_at)
                    } else {
                        row.finished_at.as_ref()
                    };
                    unreadable(column, text)
                })
                .count();
            if count > 0 {
                found.push(format!(
                    "{count} row(s) have a {column} that is not a time (RFC 3339, or YYYY-MM-DD HH:MM:SS in UTC)"
                ));
            }
        }
        Ok(found)
    }

    /// Nothing to convert: the fix's rebuild copies every value as it is.
    fn convert(_connection: &mut SqliteConnection, _conversions: &[String]) -> QueryResult<()> {
        Ok(())
    }

    fn after_migrations(connection: &mut SqliteConnection) -> QueryResult<()> {
        canonical_times(connection)
    }
}

/// See [`SqliteStorage::adopt`](super::SqliteStorage::adopt).
pub(super) fn adopt(path: &Path, options: &SqliteOptions) -> Result<Vec<String>, StorageError> {
    if !path.is_file() {
        return Err(StorageError::NotAdoptable {
            differences: vec![format!("there is no database file at {}", path.display())],
        });
    }
    let url = utf8_path(path)?;
    let mut connection =
        SqliteConnection::establish(url).map_err(|error| StorageError::Unavailable {
            source: Box::new(error),
        })?;
    connection
        .batch_execute(&format!(
            "PRAGMA busy_timeout = {};",
            options.busy_timeout.as_millis().min(i32::MAX as u128)
        ))
        .map_err(map_error)?;
    crate::adopt::adopt::<SqliteStorage>(&mut connection)
}
