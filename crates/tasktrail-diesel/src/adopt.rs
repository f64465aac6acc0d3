//! Adopting a database whose pre-fix `task_history` another program wrote
//! (no migration record), on every SQL backend: in one write transaction,
//! check the table (every difference listed, nothing changed when there is
//! one), bring it to migration 1's shape where the dialect must
//! ([`AdoptDialect::convert`]), record migration 1 as the baseline and apply
//! the fix. The checks and their order are written here once; a backend
//! supplies [`AdoptDialect`]: its catalogue queries, what its column types
//! can hold, its own value checks and conversions.

use diesel::serialize::ToSql;
use diesel::sql_types::{BigInt, HasSqlType, Text};
use diesel::{QueryResult, QueryableByName};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness};
use tasktrail_core::StorageError;

use crate::compat::known_versions;
use crate::overview::StatusCount;
use crate::store::SqlDialect;
use crate::tx::TxError;

/// What a pre-fix column holds (migration 1 gives it the dialect's type for
/// it).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum ColumnKind {
    /// The task id.
    Uuid,
    /// Text.
    Text,
    /// A whole number.
    Integer,
    /// A floating-point number.
    Real,
    /// A point in time.
    Time,
    /// JSON (the artifacts).
    Json,
}

/// Migration 1's `task_history`: column, kind, NULL allowed.
pub(crate) const PRE_FIX_COLUMNS: [(&str, ColumnKind, bool); 16] = [
    ("id", ColumnKind::Uuid, false),
    ("repo", ColumnKind::Text, false),
    ("issue_number", ColumnKind::Integer, false),
    ("user", ColumnKind::Text, false),
    ("agent", ColumnKind::Text, false),
    ("agent_type", ColumnKind::Text, false),
    ("model", ColumnKind::Text, false),
    ("provider", ColumnKind::Text, false),
    ("status", ColumnKind::Text, false),
    ("started_at", ColumnKind::Time, false),
    ("finished_at", ColumnKind::Time, true),
    ("input_tokens", ColumnKind::Integer, true),
    ("output_tokens", ColumnKind::Integer, true),
    ("cost_usd", ColumnKind::Real, true),
    ("turns", ColumnKind::Integer, true),
    ("artifacts", ColumnKind::Json, true),
];

/// The statuses a pre-fix row can have.
pub(crate) const PRE_FIX_STATUSES: [&str; 5] = [
    "success",
    "failure",
    "cancelled",
    "interrupted",
    "aborted_no_skill",
];

/// The tables the fix creates: an adopted database must not have them.
const TABLES_THE_FIX_CREATES: [&str; 3] = ["workers", "claude_sdk_sessions", "recovery_reports"];

/// How a column as declared stands to the kind it must hold. A dialect
/// builds only the fits its types allow (SQLite converts nothing; Postgres
/// states every column's type), so a build of one backend leaves one unused.
#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(not(all(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) enum ColumnFit {
    /// It holds the kind's values as it is.
    Holds,
    /// It holds them once converted: the dialect's `ALTER COLUMN` clause.
    ConvertedBy(String),
    /// It cannot hold them: a difference.
    CannotHold,
}

/// `name`: one name (a table, an id as text).
#[derive(QueryableByName)]
pub(crate) struct Name {
    #[diesel(sql_type = Text)]
    pub(crate) name: String,
}

/// `name, declared`: a column of `task_history` and its declared type.
#[derive(QueryableByName)]
pub(crate) struct Column {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    declared: String,
}

/// `count`: one count.
#[derive(QueryableByName)]
pub(crate) struct Count {
    #[diesel(sql_type = BigInt)]
    pub(crate) count: i64,
}

/// What a backend supplies for adoption.
pub(crate) trait AdoptDialect: SqlDialect {
    /// The migrations it embeds (the lowest is the baseline recorded).
    const MIGRATIONS: EmbeddedMigrations;
    /// Every table of the database (its current schema): `name`.
    const TABLE_NAMES: &'static str;
    /// Every column of `task_history` and its declared type: `name,
    /// declared`.
    const TASK_HISTORY_COLUMNS: &'static str;
    /// What keeps every other writer and adopter off `task_history` until
    /// the transaction ends, when the write transaction does not already.
    const LOCK_TASK_HISTORY: Option<&'static str>;
    /// `task_history`'s rows counted by status as text: `status, rows`.
    const PRE_FIX_STATUS_COUNTS: &'static str;
    /// Records the version bound as the first parameter in Diesel's
    /// migration table.
    const RECORD_BASELINE: &'static str;
    /// What the extra-column difference adds (what the upgrade would do
    /// with such a column).
    const EXTRA_COLUMN_CONSEQUENCE: &'static str;

    /// How column `column`, declared `declared`, stands to `kind`.
    fn fit(kind: ColumnKind, declared: &str, column: &str) -> ColumnFit;

    /// How many rows have an id that is not a UUID.
    fn ids_not_uuids(connection: &mut Self::Connection) -> QueryResult<i64>;

    /// The differences in the times' values (a column type that holds only
    /// times has none).
    fn unreadable_times(connection: &mut Self::Connection) -> QueryResult<Vec<String>>;

    /// Once nothing differs: converts the columns (`conversions`, the
    /// [`ColumnFit::ConvertedBy`] clauses) and constraints to migration 1's.
    fn convert(connection: &mut Self::Connection, conversions: &[String]) -> QueryResult<()>;

    /// After the fix applied: what the rows need that the migrations do not
    /// do.
    fn after_migrations(connection: &mut Self::Connection) -> QueryResult<()>;
}

/// Adopts the database `connection` reaches: returns the versions recorded,
/// the baseline first, or [`StorageError::NotAdoptable`] listing every
/// difference, nothing changed.
pub(crate) fn adopt<S>(connection: &mut S::Connection) -> Result<Vec<String>, StorageError>
where
    S: AdoptDialect,
    S::Connection: MigrationHarness<S::Backend>,
    S::Backend: HasSqlType<Text>,
    String: ToSql<Text, S::Backend>,
    Name: QueryableByName<S::Backend>,
    Column: QueryableByName<S::Backend>,
    Count: QueryableByName<S::Backend>,
    StatusCount: QueryableByName<S::Backend>,
{
    let baseline = known_versions::<S::Backend>(&S::MIGRATIONS)?
        .into_iter()
        .min()
        .ok_or_else(|| StorageError::Incompatible {
            detail: "this tasktrail embeds no migrations".to_owned(),
        })?;
    S::write_transaction(connection, |connection| {
        let (found, conversions) = inspect::<S>(connection)?;
        if !found.is_empty() {
            return Err(StorageError::NotAdoptable { differences: found }.into());
        }
        S::convert(connection, &conversions)?;
        // Creates diesel's migration table, then records the baseline.
        connection
            .applied_migrations()
            .map_err(|error| StorageError::Other { source: error })?;
        S::execute_text(
            connection,
            diesel::sql_query(S::RECORD_BASELINE)
                .into_boxed()
                .bind::<Text, _>(baseline.clone()),
        )?;
        let applied = connection
            .run_pending_migrations(S::MIGRATIONS)
            .map_err(|error| StorageError::Other { source: error })?;
        let mut versions = vec![baseline.clone()];
        versions.extend(applied.iter().map(|version| version.to_string()));
        S::after_migrations(connection)?;
        Ok::<_, TxError>(versions)
    })
}

/// A count by a statement of `count`.
pub(crate) fn count<S>(connection: &mut S::Connection, sql: &str) -> QueryResult<i64>
where
    S: SqlDialect,
    Count: QueryableByName<S::Backend>,
{
    let counts: Vec<Count> = S::load_text(connection, diesel::sql_query(sql).into_boxed())?;
    Ok(counts.first().map_or(0, |count| count.count))
}

/// Every difference, and the column conversions to make when there is
/// none.
fn inspect<S>(connection: &mut S::Connection) -> QueryResult<(Vec<String>, Vec<String>)>
where
    S: AdoptDialect,
    Name: QueryableByName<S::Backend>,
    Column: QueryableByName<S::Backend>,
    Count: QueryableByName<S::Backend>,
    StatusCount: QueryableByName<S::Backend>,
{
    let tables: Vec<String> =
        S::load_text::<Name>(connection, diesel::sql_query(S::TABLE_NAMES).into_boxed())?
            .into_iter()
            .map(|table| table.name)
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
    if let Some(lock) = S::LOCK_TASK_HISTORY {
        // One adoption at a time, and nobody writing the table meanwhile.
        S::execute_text(connection, diesel::sql_query(lock).into_boxed())?;
    }
    for table in TABLES_THE_FIX_CREATES {
        if tables.iter().any(|t| t == table) {
            found.push(format!(
                "a table named {table} already exists (the upgrade creates its own)"
            ));
        }
    }
    let columns: Vec<Column> = S::load_text(
        connection,
        diesel::sql_query(S::TASK_HISTORY_COLUMNS).into_boxed(),
    )?;
    let mut conversions = Vec::new();
    for (name, kind, _) in PRE_FIX_COLUMNS {
        match columns.iter().find(|c| c.name == name) {
            None => found.push(format!("column {name} is missing")),
            Some(column) => match S::fit(kind, &column.declared, name) {
                ColumnFit::Holds => {}
                ColumnFit::ConvertedBy(clause) => conversions.push(clause),
                ColumnFit::CannotHold => found.push(format!(
                    "column {name} is declared {:?}, which cannot hold its values",
                    column.declared
                )),
            },
        }
    }
    for column in &columns {
        if !PRE_FIX_COLUMNS
            .iter()
            .any(|(name, _, _)| *name == column.name)
        {
            found.push(format!(
                "column {} is not in the pre-fix schema{}",
                column.name,
                S::EXTRA_COLUMN_CONSEQUENCE
            ));
        }
    }
    if !found.is_empty() {
        // The value checks below read those columns.
        return Ok((found, Vec::new()));
    }
    for (name, _, nullable) in PRE_FIX_COLUMNS {
        if !nullable {
            let nulls = count::<S>(
                connection,
                &format!("SELECT count(*) AS count FROM task_history WHERE \"{name}\" IS NULL"),
            )?;
            if nulls > 0 {
                found.push(format!("{nulls} row(s) have no {name}"));
            }
        }
    }
    let statuses: Vec<StatusCount> = S::load_text(
        connection,
        diesel::sql_query(S::PRE_FIX_STATUS_COUNTS).into_boxed(),
    )?;
    for status in statuses {
        if !PRE_FIX_STATUSES.contains(&status.status.as_str()) {
            found.push(format!(
                "{} row(s) have status {:?}, which is not a task status",
                status.row_count, status.status
            ));
        }
    }
    found.extend(S::unreadable_times(connection)?);
    let bad_ids = S::ids_not_uuids(connection)?;
    if bad_ids > 0 {
        found.push(format!("{bad_ids} row(s) have an id that is not a UUID"));
    }
    let duplicate_ids = count::<S>(
        connection,
        "SELECT count(*) AS count FROM (SELECT id FROM task_history GROUP BY id HAVING count(*) > 1) AS d",
    )?;
    if duplicate_ids > 0 {
        found.push(format!("{duplicate_ids} id(s) appear on more than one row"));
    }
    Ok((found, conversions))
}
