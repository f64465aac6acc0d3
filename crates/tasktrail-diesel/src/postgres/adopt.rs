//! Adoption on Postgres (see [`crate::adopt`]): the catalogue is
//! `information_schema`; the table is locked for the adoption; its column
//! types and constraints are brought to migration 1's exactly (`timestamp`
//! without zone read as UTC, `text` ids as UUIDs, `json`/`text` artifacts
//! as `jsonb`, integer widths to `bigint`) before the fix is applied.

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel_migrations::EmbeddedMigrations;
use tasktrail_core::StorageError;

use super::errors::connection_error;
use super::{PostgresStorage, POSTGRES_MIGRATIONS};
use crate::adopt::{count, AdoptDialect, ColumnFit, ColumnKind, PRE_FIX_COLUMNS};
use crate::secrets::Secrets;

/// The pre-fix statuses as a SQL list, for the CHECK constraint.
const PRE_FIX_STATUSES: &str =
    "'success', 'failure', 'cancelled', 'interrupted', 'aborted_no_skill'";

/// The target type, and the `USING` conversion from `data_type`, or `None`
/// when such a column cannot hold the kind's values.
fn conversion(kind: ColumnKind, data_type: &str, column: &str) -> Option<(&'static str, String)> {
    let quoted = format!("\"{column}\"");
    let text_like = matches!(data_type, "text" | "character varying" | "character");
    match kind {
        ColumnKind::Uuid if data_type == "uuid" => Some(("uuid", quoted)),
        ColumnKind::Uuid if text_like => Some(("uuid", format!("{quoted}::uuid"))),
        ColumnKind::Text if text_like => Some(("text", quoted)),
        ColumnKind::Integer if matches!(data_type, "bigint" | "integer" | "smallint") => {
            Some(("bigint", quoted))
        }
        ColumnKind::Real if matches!(data_type, "double precision" | "real" | "numeric") => {
            Some(("double precision", format!("{quoted}::double precision")))
        }
        ColumnKind::Time if data_type == "timestamp with time zone" => {
            Some(("timestamptz", quoted))
        }
        ColumnKind::Time if data_type == "timestamp without time zone" => {
            Some(("timestamptz", format!("{quoted} AT TIME ZONE 'UTC'")))
        }
        ColumnKind::Json if data_type == "jsonb" => Some(("jsonb", quoted)),
        ColumnKind::Json if data_type == "json" || text_like => {
            Some(("jsonb", format!("{quoted}::jsonb")))
        }
        _ => None,
    }
}

impl AdoptDialect for PostgresStorage {
    const MIGRATIONS: EmbeddedMigrations = POSTGRES_MIGRATIONS;
    const TABLE_NAMES: &'static str =
        "SELECT table_name::text AS name FROM information_schema.tables \
         WHERE table_schema = current_schema()";
    const TASK_HISTORY_COLUMNS: &'static str =
        "SELECT column_name::text AS name, data_type::text AS declared \
         FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = 'task_history'";
    const LOCK_TASK_HISTORY: Option<&'static str> =
        Some("LOCK TABLE task_history IN ACCESS EXCLUSIVE MODE");
    const PRE_FIX_STATUS_COUNTS: &'static str =
        "SELECT status::text AS status, count(*) AS row_count FROM task_history \
         WHERE status IS NOT NULL GROUP BY 1 ORDER BY 1";
    const RECORD_BASELINE: &'static str =
        "INSERT INTO __diesel_schema_migrations (version) VALUES ($1)";
    const EXTRA_COLUMN_CONSEQUENCE: &'static str = "";

    fn fit(kind: ColumnKind, declared: &str, column: &str) -> ColumnFit {
        match conversion(kind, declared, column) {
            Some((target, using)) => ColumnFit::ConvertedBy(format!(
                "ALTER COLUMN \"{column}\" TYPE {target} USING {using}"
            )),
            None => ColumnFit::CannotHold,
        }
    }

    fn ids_not_uuids(connection: &mut PgConnection) -> QueryResult<i64> {
        count::<PostgresStorage>(
            connection,
            "SELECT count(*) AS count FROM task_history WHERE id::text !~* \
             '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'",
        )
    }

    /// The columns are of time types: every value is a time.
    fn unreadable_times(_connection: &mut PgConnection) -> QueryResult<Vec<String>> {
        Ok(Vec::new())
    }

    fn convert(connection: &mut PgConnection, conversions: &[String]) -> QueryResult<()> {
        connection.batch_execute(&format!(
            "ALTER TABLE task_history {};
             ALTER TABLE task_history DROP CONSTRAINT IF EXISTS task_history_status_check;
             ALTER TABLE task_history ADD CONSTRAINT task_history_status_check
                 CHECK (status IN ({PRE_FIX_STATUSES}));
             CREATE INDEX IF NOT EXISTS task_history_repo_issue
                 ON task_history (repo, issue_number);",
            conversions.join(", ")
        ))?;
        for (name, _, nullable) in PRE_FIX_COLUMNS {
            if !nullable {
                connection.batch_execute(&format!(
                    "ALTER TABLE task_history ALTER COLUMN \"{name}\" SET NOT NULL"
                ))?;
            }
        }
        let has_primary_key = count::<PostgresStorage>(
            connection,
            "SELECT count(*) AS count FROM information_schema.table_constraints \
             WHERE table_schema = current_schema() AND table_name = 'task_history' \
             AND constraint_type = 'PRIMARY KEY'",
        )? > 0;
        if !has_primary_key {
            connection.batch_execute("ALTER TABLE task_history ADD PRIMARY KEY (id)")?;
        }
        Ok(())
    }

    fn after_migrations(_connection: &mut PgConnection) -> QueryResult<()> {
        Ok(())
    }
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
        crate::adopt::adopt::<PostgresStorage>(&mut connection)
    }
}
