//! The dashboard's counts on Postgres (see [`crate::overview`]). The status
//! counts are an index-only scan once the table is vacuumed; hours are the
//! UTC hour of `COALESCE(finished_at, interrupted_at)`.

use super::rows::HourRow;
use super::PostgresStorage;
use crate::overview::OverviewStatements;

impl OverviewStatements for PostgresStorage {
    const REPO_STATUS_COUNTS: &'static str =
        "SELECT status, COUNT(*) AS row_count FROM task_history WHERE repo = $1 GROUP BY status";

    const OUTCOMES_BY_HOUR: &'static str = "\
        SELECT date_trunc('hour', COALESCE(finished_at, interrupted_at) AT TIME ZONE 'UTC') \
                 AT TIME ZONE 'UTC' AS hour, \
               status, COUNT(*) AS row_count \
        FROM task_history \
        WHERE status <> 'running' AND COALESCE(finished_at, interrupted_at) >= $1 \
        GROUP BY 1, 2";

    type HourRow = HourRow;
}
