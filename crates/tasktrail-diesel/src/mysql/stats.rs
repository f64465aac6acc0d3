//! The operator's figures on MySQL (see [`crate::stats`]).
//!
//! MySQL 8 has no percentile function (MariaDB's `PERCENTILE_DISC` is its
//! own): each status's durations are ranked with `ROW_NUMBER()` over one
//! sorted pass and the nearest-rank rows are picked, the same ranks the
//! other backends report (`ceil(n/2)`: `(n + 1) DIV 2`; `ceil(0.95 n)`:
//! `(95 n + 99) DIV 100`). Durations are rounded to the millisecond.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use tasktrail_core::{StatsRequest, StorageError, TaskStats};

use super::rows::RunningRow;
use super::{MysqlConnection, MysqlStorage};
use crate::stats::{interrupted_causes, running_owners, StatsStatements};

impl StatsStatements for MysqlStorage {
    const RUNNING_OWNERS: &'static str = running_owners!(
        oldest_of_rows: "MIN(started_at)",
        oldest: "r.oldest"
    );

    const INTERRUPTED_CAUSES: &'static str = interrupted_causes!(
        by_own_worker: "(interrupted_by <=> worker_id)",
        interrupted_since: "interrupted_at >= ?"
    );

    const DURATIONS: &'static str = "\
        WITH ended AS ( \
          SELECT status, \
                 CAST(ROUND(TIMESTAMPDIFF(MICROSECOND, started_at, \
                                          COALESCE(finished_at, interrupted_at)) / 1000) AS SIGNED) AS ms \
          FROM task_history \
          WHERE status <> 'running' AND COALESCE(finished_at, interrupted_at) >= ? \
        ), ranked AS ( \
          SELECT status, ms, \
                 ROW_NUMBER() OVER (PARTITION BY status ORDER BY ms) AS position, \
                 COUNT(*) OVER (PARTITION BY status) AS n \
          FROM ended \
        ) \
        SELECT status, n AS row_count, \
               MAX(CASE WHEN position = (n + 1) DIV 2 THEN ms END) AS median_ms, \
               MAX(CASE WHEN position = (95 * n + 99) DIV 100 THEN ms END) AS p95_ms \
        FROM ranked GROUP BY status, n";

    type RunningRow = RunningRow;

    /// `REPEATABLE READ, READ ONLY` for this one transaction (the session's
    /// own level is `READ COMMITTED`): one snapshot for the four reads.
    fn read_transaction<T>(
        connection: &mut MysqlConnection,
        body: impl FnOnce(&mut MysqlConnection) -> QueryResult<T>,
    ) -> QueryResult<T> {
        connection.batch_execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")?;
        connection.transaction(body)
    }
}

impl MysqlStorage {
    /// The operator's figures ([`TaskStats`]): rows by status, running
    /// rows per worker, interrupted rows of the last 24 hours by cause,
    /// median and p95 durations of the rows that ended in the window.
    /// Computed in the database, in one read-only consistent-snapshot
    /// transaction; works for a role that may only SELECT.
    pub fn stats(&self, request: &StatsRequest) -> Result<TaskStats, StorageError> {
        crate::stats::stats(self, request)
    }
}
