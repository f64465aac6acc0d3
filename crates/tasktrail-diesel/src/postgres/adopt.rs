//! Adopting a Postgres database whose `task_history` a server wrote before
//! tasktrail (no migration record): check the table, bring its column types
//! and constraints to migration 1's exactly (`timestamp` without zone read
//! as UTC, `text` ids as UUIDs, `json`/`text` artifacts as `jsonb`, integer
//! widths to `bigint`), record migration 1 as the baseline and apply the
//! fix, all in one transaction. A table that differs is refused with every
//! difference and nothing changes.

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel_migrations::MigrationHarness;
use tasktrail_core::StorageError;

use super::errors::connection_error;
use super::{PostgresStorage, POSTGRES_MIGRATIONS};
use crate::compat::known_versions;
use crate::secrets::Secrets;
use crate::tx::TxError;

/// What a pre-fix column holds, and the type migration 1 gives it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Uuid,
    Text,
    Integer,
    Real,
    Time,
    Json,
}

/// Migration 1's `task_history`: column, kind, NULL allowed.
const PRE_FIX_COLUMNS: [(&str, Kind, bool); 16] = [
    ("id", Kind::Uuid, false),
    ("repo", Kind::Text, false),
    ("issue_number", Kind::Integer, false),
    ("user", Kind::Text, false),
    ("agent", Kind::Text, false),
    ("agent_type", Kind::Text, false),
    ("model", Kind::Text, false),
    ("provider", Kind::Text, false),
    ("status", Kind::Text, false),
    ("started_at", Kind::Time, false),
    ("finished_at", Kind::Time, true),
    ("input_tokens", Kind::Integer, true),
    ("output_tokens", Kind::Integer, true),
    ("cost_usd", Kind::Real, true),
    ("turns", Kind::Integer, true),
    ("artifacts", Kind::Json, true),
];

const PRE_FIX_STATUSES: &str =
    "'success', 'failure', 'cancelled', 'interrupted', 'aborted_no_skill'";

const TABLES_THE_FIX_CREATES: [&str; 3] = ["workers", "claude_sdk_sessions", "recovery_reports"];

/// The target type, and the `USING` conversion from `data_type`, or `None`
/// when such a column cannot hold the kind's values.
fn conversion(kind: Kind, data_type: &str, column: &str) -> Option<(&'static str, String)> {
    let quoted = format!("\"{column}\"");
    let text_like = matches!(data_type, "text" | "character varying" | "character");
    match kind {
        Kind::Uuid if data_type == "uuid" => Some(("uuid", quoted)),
        Kind::Uuid if text_like => Some(("uuid", format!("{quoted}::uuid"))),
        Kind::Text if text_like => Some(("text", quoted)),
        Kind::Integer if matches!(data_type, "bigint" | "integer" | "smallint") => {
            Some(("bigint", quoted))
        }
        Kind::Real if matches!(data_type, "double precision" | "real" | "numeric") => {
            Some(("double precision", format!("{quoted}::double precision")))
        }
        Kind::Time if data_type == "timestamp with time zone" => Some(("timestamptz", quoted)),
        Kind::Time if data_type == "timestamp without time zone" => {
            Some(("timestamptz", format!("{quoted} AT TIME ZONE 'UTC'")))
        }
        Kind::Json if data_type == "jsonb" => Some(("jsonb", quoted)),
        Kind::Json if data_type == "json" || text_like => {
            Some(("jsonb", format!("{quoted}::jsonb")))
        }
        _ => None,
    }
}

#[derive(QueryableByName)]
struct Column {
    #[diesel(sql_type = Text)]
    column_name: String,
    #[diesel(sql_type = Text)]
    data_type: String,
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

fn count(connection: &mut PgConnection, sql: &str) -> QueryResult<i64> {
    diesel::sql_query(sql)
        .get_result::<Count>(connection)
        .map(|c| c.count)
}

/// Every difference, and the column conversions to make when there is none.
fn inspect(connection: &mut PgConnection) -> QueryResult<(Vec<String>, Vec<String>)> {
    let tables: Vec<String> = diesel::sql_query(
        "SELECT table_name::text AS name FROM information_schema.tables \
         WHERE table_schema = current_schema()",
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
        return Ok((found, Vec::new()));
    }
    if !tables.iter().any(|t| t == "task_history") {
        found.push("there is no task_history table to adopt".to_owned());
        return Ok((found, Vec::new()));
    }
    // One adoption at a time, and nobody writing the table meanwhile.
    connection.batch_execute("LOCK TABLE task_history IN ACCESS EXCLUSIVE MODE")?;
    for table in TABLES_THE_FIX_CREATES {
        if tables.iter().any(|t| t == table) {
            found.push(format!(
                "a table named {table} already exists (the upgrade creates its own)"
            ));
        }
    }
    let columns: Vec<Column> = diesel::sql_query(
        "SELECT column_name::text, data_type::text FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = 'task_history'",
    )
    .load(connection)?;
    let mut alterations = Vec::new();
    for (name, kind, _) in PRE_FIX_COLUMNS {
        match columns.iter().find(|c| c.column_name == name) {
            None => found.push(format!("column {name} is missing")),
            Some(column) => match conversion(kind, &column.data_type, name) {
                Some((target, using)) => alterations.push(format!(
                    "ALTER COLUMN \"{name}\" TYPE {target} USING {using}"
                )),
                None => found.push(format!(
                    "column {name} is {}, which cannot hold its values",
                    column.data_type
                )),
            },
        }
    }
    for column in &columns {
        if !PRE_FIX_COLUMNS
            .iter()
            .any(|(name, _, _)| *name == column.column_name)
        {
            found.push(format!(
                "column {} is not in the pre-fix schema",
                column.column_name
            ));
        }
    }
    if !found.is_empty() {
        return Ok((found, Vec::new()));
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
    let bad_statuses: Vec<Name> = diesel::sql_query(format!(
        "SELECT DISTINCT status::text AS name FROM task_history \
         WHERE status NOT IN ({PRE_FIX_STATUSES}) ORDER BY 1"
    ))
    .load(connection)?;
    for status in bad_statuses {
        found.push(format!(
            "rows have status {:?}, which is not a task status",
            status.name
        ));
    }
    let bad_ids = count(
        connection,
        "SELECT count(*) AS count FROM task_history WHERE id::text !~* \
         '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'",
    )?;
    if bad_ids > 0 {
        found.push(format!("{bad_ids} row(s) have an id that is not a UUID"));
    }
    let duplicate_ids = count(
        connection,
        "SELECT count(*) AS count FROM (SELECT id FROM task_history GROUP BY id HAVING count(*) > 1) AS d",
    )?;
    if duplicate_ids > 0 {
        found.push(format!("{duplicate_ids} id(s) appear on more than one row"));
    }
    Ok((found, alterations))
}

impl PostgresStorage {
    /// Adopts a database whose pre-fix `task_history` another program
    /// wrote (no migration record): in one transaction, checks the table
    /// (columns, types that hold their values, no NULL where one is needed,
    /// known statuses, UUID ids, no extra column, no `workers` /
    /// `claude_sdk_sessions` table in the way), converts its column types
    /// and constraints to migration 1's (`timestamp` without zone read as
    /// UTC), records migration 1 as the baseline and applies the fix, every
    /// row kept. Returns the versions recorded, the baseline first. Refused
    /// with [`StorageError::NotAdoptable`] listing every difference, nothing
    /// changed. Other tables are never touched.
    pub fn adopt(url: &str) -> Result<Vec<String>, StorageError> {
        let secrets = Secrets::of(url);
        let mut connection =
            PgConnection::establish(url).map_err(|error| connection_error(&error, &secrets))?;
        let baseline = known_versions::<diesel::pg::Pg>(&POSTGRES_MIGRATIONS)?
            .into_iter()
            .min()
            .ok_or_else(|| StorageError::Incompatible {
                detail: "this tasktrail embeds no migrations".to_owned(),
            })?;
        let result = connection.transaction(|connection| -> Result<Vec<String>, TxError> {
            let (found, alterations) = inspect(connection)?;
            if !found.is_empty() {
                return Err(StorageError::NotAdoptable { differences: found }.into());
            }
            connection.batch_execute(&format!(
                "ALTER TABLE task_history {};
                 ALTER TABLE task_history DROP CONSTRAINT IF EXISTS task_history_status_check;
                 ALTER TABLE task_history ADD CONSTRAINT task_history_status_check
                     CHECK (status IN ({PRE_FIX_STATUSES}));
                 CREATE INDEX IF NOT EXISTS task_history_repo_issue
                     ON task_history (repo, issue_number);",
                alterations.join(", ")
            ))?;
            for (name, _, nullable) in PRE_FIX_COLUMNS {
                if !nullable {
                    connection.batch_execute(&format!(
                        "ALTER TABLE task_history ALTER COLUMN \"{name}\" SET NOT NULL"
                    ))?;
                }
            }
            let has_primary_key = count(
                connection,
                "SELECT count(*) AS count FROM information_schema.table_constraints \
                 WHERE table_schema = current_schema() AND table_name = 'task_history' \
                 AND constraint_type = 'PRIMARY KEY'",
            )? > 0;
            if !has_primary_key {
                connection.batch_execute("ALTER TABLE task_history ADD PRIMARY KEY (id)")?;
            }
            connection
                .applied_migrations()
                .map_err(|error| StorageError::Other { source: error })?;
            diesel::sql_query("INSERT INTO __diesel_schema_migrations (version) VALUES ($1)")
                .bind::<Text, _>(&baseline)
                .execute(connection)?;
            let applied = connection
                .run_pending_migrations(POSTGRES_MIGRATIONS)
                .map_err(|error| StorageError::Other { source: error })?;
            let mut versions = vec![baseline.clone()];
            versions.extend(applied.iter().map(|version| version.to_string()));
            Ok(versions)
        });
        result.map_err(TxError::into_storage::<diesel::pg::Pg>)
    }
}
