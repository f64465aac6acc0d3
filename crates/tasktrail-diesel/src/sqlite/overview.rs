//! The dashboard's counts on SQLite (see [`crate::overview`]). The hourly
//! counts read the rows that ended since the cut-off, their end read
//! through `julianday()` like the stats, so a time in any common form
//! counts and a text that is not a time does not.

use diesel::sql_types::{BigInt, Text};
use diesel::QueryableByName;
use tasktrail_core::{StorageError, Timestamp};

use super::SqliteStorage;
use crate::codec::decode_timestamp;
use crate::overview::OverviewStatements;

/// `hour, status, rows`: the hour as text.
#[derive(QueryableByName)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite))]
pub(crate) struct HourRow {
    #[diesel(sql_type = Text)]
    hour: String,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = BigInt)]
    rows: i64,
}

impl OverviewStatements for SqliteStorage {
    const REPO_STATUS_COUNTS: &'static str =
        "SELECT status, COUNT(*) AS rows FROM task_history WHERE repo = ? GROUP BY status";

    const OUTCOMES_BY_HOUR: &'static str = "\
        SELECT strftime('%Y-%m-%dT%H:00:00Z', COALESCE(finished_at, interrupted_at)) AS hour, \
               status, COUNT(*) AS rows \
        FROM task_history \
        WHERE status <> 'running' \
          AND julianday(COALESCE(finished_at, interrupted_at)) >= julianday(?) \
        GROUP BY 1, 2";

    type HourRow = HourRow;

    fn hour_count(row: HourRow) -> Result<(Timestamp, String, i64), StorageError> {
        Ok((decode_timestamp("hour", &row.hour)?, row.status, row.rows))
    }
}
