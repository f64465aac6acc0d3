//! The dashboard's counts on SQLite (see [`crate::overview`]). The hourly
//! counts read the rows that ended since the cut-off, their end read
//! through `julianday()` like the stats, so a time in any common form
//! counts and a text that is not a time does not.

use super::rows::HourRow;
use super::SqliteStorage;
use crate::overview::OverviewStatements;

impl OverviewStatements for SqliteStorage {
    const REPO_STATUS_COUNTS: &'static str =
        "SELECT status, COUNT(*) AS row_count FROM task_history WHERE repo = ? GROUP BY status";

    const OUTCOMES_BY_HOUR: &'static str = "\
        SELECT strftime('%Y-%m-%dT%H:00:00Z', COALESCE(finished_at, interrupted_at)) AS hour, \
               status, COUNT(*) AS row_count \
        FROM task_history \
        WHERE status <> 'running' \
          AND julianday(COALESCE(finished_at, interrupted_at)) >= julianday(?) \
        GROUP BY 1, 2";

    type HourRow = HourRow;
}
