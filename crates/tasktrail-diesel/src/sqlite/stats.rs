//! The operator's figures on SQLite (see [`crate::stats`]).
//!
//! Times are TEXT here, written in one form but read in any common one, so
//! every comparison and difference goes through `julianday()`, which reads
//! them all (to the millisecond) and is NULL for a text that is not a
//! time: such a row is counted by status but left out of the windows,
//! the ages and the durations. SQLite has no percentile function: each
//! status's durations are ranked with `ROW_NUMBER()` over one sorted pass
//! and the nearest-rank rows are picked (`ceil(n/2)`: `(n + 1) / 2`;
//! `ceil(0.95 n)`: `(95 n + 99) / 100`, integer arithmetic).

use diesel::prelude::*;
use tasktrail_core::{StatsRequest, StorageError, TaskStats};

use super::rows::RunningRow;
use super::SqliteStorage;
use crate::stats::{interrupted_causes, running_owners, StatsStatements};

impl StatsStatements for SqliteStorage {
    const RUNNING_OWNERS: &'static str = running_owners!(
        oldest_of_rows: "MIN(julianday(started_at))",
        oldest: "strftime('%Y-%m-%dT%H:%M:%fZ', r.oldest)"
    );

    const INTERRUPTED_CAUSES: &'static str = interrupted_causes!(
        by_own_worker: "(interrupted_by IS worker_id)",
        interrupted_since: "julianday(interrupted_at) >= julianday(?)"
    );

    const DURATIONS: &'static str = "\
        WITH ended AS ( \
          SELECT status, CAST(round((julianday(COALESCE(finished_at, interrupted_at)) \
                                     - julianday(started_at)) * 86400000.0) AS INTEGER) AS ms \
          FROM task_history \
          WHERE status <> 'running' \
            AND julianday(COALESCE(finished_at, interrupted_at)) >= julianday(?) \
        ), ranked AS ( \
          SELECT status, ms, \
                 ROW_NUMBER() OVER (PARTITION BY status ORDER BY ms) AS rank, \
                 COUNT(*) OVER (PARTITION BY status) AS n \
          FROM ended WHERE ms IS NOT NULL \
        ) \
        SELECT status, n AS row_count, \
               MAX(CASE WHEN rank = (n + 1) / 2 THEN ms END) AS median_ms, \
               MAX(CASE WHEN rank = (95 * n + 99) / 100 THEN ms END) AS p95_ms \
        FROM ranked GROUP BY status, n";

    type RunningRow = RunningRow;

    fn read_transaction<T>(
        connection: &mut SqliteConnection,
        body: impl FnOnce(&mut SqliteConnection) -> QueryResult<T>,
    ) -> QueryResult<T> {
        connection.transaction(body)
    }
}

impl SqliteStorage {
    /// The operator's figures ([`TaskStats`]): rows by status, running
    /// rows per worker, interrupted rows of the last 24 hours by cause,
    /// median and p95 durations of the rows that ended in the window.
    /// Computed in the database, in one read transaction; reads only, so
    /// it works on a store opened with
    /// [`open_read_only`](SqliteStorage::open_read_only).
    pub fn stats(&self, request: &StatsRequest) -> Result<TaskStats, StorageError> {
        crate::stats::stats(self, request)
    }
}
