//! Adopting a SQLite database whose `task_history` was written by a server
//! before tasktrail (no migration record): check that the table has the
//! pre-fix shape, record migration 1 as the baseline, and apply the fix,
//! all in one transaction; a database that differs is refused with the list
//! of differences and left as it was.

use std::path::Path;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Text};
use diesel::sqlite::SqliteConnection;
use diesel_migrations::MigrationHarness;
use tasktrail_core::StorageError;

use super::{map_error, utf8_path, SqliteOptions, SQLITE_MIGRATIONS};
use crate::codec::{decode_timestamp, encode_timestamp};
use crate::compat::known_versions;
use crate::tx::TxError;
use diesel::sqlite::Sqlite;

/// What a column of the pre-fix table must be able to hold.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Affinity {
    Text,
    Integer,
    Real,
    /// Times: SQLite stores them as text whatever the declared type.
    Time,
}

/// The pre-fix `task_history` (migration 1): column, what it holds, and
/// whether it may be NULL.
const PRE_FIX_COLUMNS: [(&str, Affinity, bool); 16] = [
    ("id", Affinity::Text, false),
    ("repo", Affinity::Text, false),
    ("issue_number", Affinity::Integer, false),
    ("user", Affinity::Text, false),
    ("agent", Affinity::Text, false),
    ("agent_type", Affinity::Text, false),
    ("model", Affinity::Text, false),
    ("provider", Affinity::Text, false),
    ("status", Affinity::Text, false),
    ("started_at", Affinity::Time, false),
    ("finished_at", Affinity::Time, true),
    ("input_tokens", Affinity::Integer, true),
    ("output_tokens", Affinity::Integer, true),
    ("cost_usd", Affinity::Real, true),
    ("turns", Affinity::Integer, true),
    ("artifacts", Affinity::Text, true),
];

/// The statuses a pre-fix row can have.
const PRE_FIX_STATUSES: [&str; 5] = [
    "success",
    "failure",
    "cancelled",
    "interrupted",
    "aborted_no_skill",
];

/// The tables the fix creates: an adopted database must not have them.
const TABLES_THE_FIX_CREATES: [&str; 3] = ["workers", "claude_sdk_sessions", "recovery_reports"];

/// Whether a declared SQLite type can hold `affinity`'s values (SQLite's
/// own affinity rules, plus the time names other tools declare).
fn declared_type_holds(declared: &str, affinity: Affinity) -> bool {
    let declared = declared.to_ascii_uppercase();
    let text = ["CHAR", "CLOB", "TEXT"]
        .iter()
        .any(|t| declared.contains(t));
    match affinity {
        Affinity::Text => text,
        Affinity::Integer => declared.contains("INT"),
        Affinity::Real => ["REAL", "FLOA", "DOUB", "NUMERIC", "DECIMAL"]
            .iter()
            .any(|t| declared.contains(t)),
        Affinity::Time => text || ["DATE", "TIME"].iter().any(|t| declared.contains(t)),
    }
}

#[derive(QueryableByName)]
struct Column {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text, column_name = "type")]
    declared: String,
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
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

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

#[derive(QueryableByName)]
struct StatusCount {
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Integer)]
    rows: i32,
}

fn count(connection: &mut SqliteConnection, sql: &str) -> QueryResult<i64> {
    diesel::sql_query(sql)
        .get_result::<Count>(connection)
        .map(|c| c.count)
}

/// Every way the database differs from what adoption starts from.
fn differences(connection: &mut SqliteConnection) -> QueryResult<Vec<String>> {
    let tables: Vec<String> = diesel::sql_query(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
    )
    .load::<Name>(connection)?
    .into_iter()
    .map(|t| t.name)
    .collect();
    let mut found = Vec::new();
    if tables.iter().any(|t| t == "__diesel_schema_migrations") {
        found.push(
            "the database already has a migration record: it is a tasktrail database (run `migrate` without --adopt)"
                .to_owned(),
        );
        return Ok(found);
    }
    if !tables.iter().any(|t| t == "task_history") {
        found.push("there is no task_history table to adopt".to_owned());
        return Ok(found);
    }
    for table in TABLES_THE_FIX_CREATES {
        if tables.iter().any(|t| t == table) {
            found.push(format!(
                "a table named {table} already exists (the upgrade creates its own)"
            ));
        }
    }
    let columns: Vec<Column> =
        diesel::sql_query("SELECT name, type FROM pragma_table_info('task_history')")
            .load(connection)?;
    for (name, affinity, _) in PRE_FIX_COLUMNS {
        match columns.iter().find(|c| c.name == name) {
            None => found.push(format!("column {name} is missing")),
            Some(column) if !declared_type_holds(&column.declared, affinity) => {
                found.push(format!(
                    "column {name} is declared {:?}, which cannot hold its values",
                    column.declared
                ))
            }
            Some(_) => {}
        }
    }
    for column in &columns {
        if !PRE_FIX_COLUMNS
            .iter()
            .any(|(name, _, _)| *name == column.name)
        {
            found.push(format!(
                "column {} is not in the pre-fix schema (the upgrade would drop it)",
                column.name
            ));
        }
    }
    if !found.is_empty() {
        // The value checks below read those columns.
        return Ok(found);
    }
    for (name, _, nullable) in PRE_FIX_COLUMNS {
        if !nullable {
            let nulls = count(
                connection,
                &format!("SELECT count(*) AS count FROM task_history WHERE \"{name}\" IS NULL"),
            )?;
            if nulls > 0 {
                found.push(format!("{nulls} row(s) have no {name}"));
            }
        }
    }
    let statuses: Vec<StatusCount> = diesel::sql_query(
        "SELECT status, count(*) AS rows FROM task_history GROUP BY status ORDER BY status",
    )
    .load(connection)?;
    for status in statuses {
        if !PRE_FIX_STATUSES.contains(&status.status.as_str()) {
            found.push(format!(
                "{} row(s) have status {:?}, which is not a task status",
                status.rows, status.status
            ));
        }
    }
    let times: Vec<RowTimes> = diesel::sql_query(
        "SELECT id, CAST(started_at AS TEXT) AS started_at, \
         CAST(finished_at AS TEXT) AS finished_at, NULL AS interrupted_at FROM task_history",
    )
    .load(connection)?;
    let unreadable = |column: &str, text: Option<&String>| {
        text.is_some_and(|text| decode_timestamp(column, text).is_err())
    };
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
    let ids: Vec<Name> =
        diesel::sql_query("SELECT id AS name FROM task_history").load(connection)?;
    let bad_ids = ids
        .iter()
        .filter(|id| uuid::Uuid::parse_str(&id.name).is_err())
        .count();
    if bad_ids > 0 {
        found.push(format!("{bad_ids} row(s) have an id that is not a UUID"));
    }
    let duplicate_ids = count(
        connection,
        "SELECT count(*) AS count FROM (SELECT id FROM task_history GROUP BY id HAVING count(*) > 1)",
    )?;
    if duplicate_ids > 0 {
        found.push(format!("{duplicate_ids} id(s) appear on more than one row"));
    }
    Ok(found)
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
    let baseline = known_versions::<Sqlite>(&SQLITE_MIGRATIONS)?
        .into_iter()
        .min()
        .ok_or_else(|| StorageError::Incompatible {
            detail: "this tasktrail embeds no migrations".to_owned(),
        })?;
    let result = connection.immediate_transaction(|connection| -> Result<Vec<String>, TxError> {
        let found = differences(connection)?;
        if !found.is_empty() {
            return Err(StorageError::NotAdoptable { differences: found }.into());
        }
        // Creates diesel's migration table, then records the baseline.
        connection
            .applied_migrations()
            .map_err(|error| StorageError::Other { source: error })?;
        diesel::sql_query("INSERT INTO __diesel_schema_migrations (version) VALUES (?)")
            .bind::<Text, _>(&baseline)
            .execute(connection)?;
        let applied = connection
            .run_pending_migrations(SQLITE_MIGRATIONS)
            .map_err(|error| StorageError::Other { source: error })?;
        let mut versions = vec![baseline.clone()];
        versions.extend(applied.iter().map(|version| version.to_string()));
        canonical_times(connection)?;
        Ok(versions)
    });
    result.map_err(TxError::into_storage::<Sqlite>)
}
