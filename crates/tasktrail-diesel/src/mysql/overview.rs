//! The dashboard's counts on MySQL (see [`crate::overview`]): the status
//! counts read the `(status, started_at, id)` index, or `(repo, started_at,
//! id)` for one repo; hours are the UTC hour of
//! `COALESCE(finished_at, interrupted_at)` (stored times are UTC already).

use super::rows::HourRow;
use super::MysqlStorage;
use crate::overview::OverviewStatements;

impl OverviewStatements for MysqlStorage {
    const REPO_STATUS_COUNTS: &'static str =
        "SELECT status, COUNT(*) AS row_count FROM task_history WHERE repo = ? GROUP BY status";

    const OUTCOMES_BY_HOUR: &'static str = "\
        SELECT CAST(DATE_FORMAT(COALESCE(finished_at, interrupted_at), '%Y-%m-%d %H:00:00') \
                    AS DATETIME(6)) AS hour, \
               status, COUNT(*) AS row_count \
        FROM task_history \
        WHERE status <> 'running' AND COALESCE(finished_at, interrupted_at) >= ? \
        GROUP BY 1, 2";

    type HourRow = HourRow;
}
