//! The operator's figures on Postgres (see [`crate::stats`]).
//!
//! Percentiles are `percentile_disc` (nearest rank: the first value whose
//! cumulative share reaches the fraction, `ceil(p n)`), the same rank the
//! SQLite backend picks by hand. Durations are rounded to the millisecond
//! (`timestamptz` holds microseconds; SQLite reads times to the
//! millisecond), so both backends report the same figure for the same
//! times.

use diesel::prelude::*;
use tasktrail_core::{StatsRequest, StorageError, TaskStats};

use super::rows::RunningRow;
use super::PostgresStorage;
use crate::stats::{interrupted_causes, running_owners, StatsStatements};

impl StatsStatements for PostgresStorage {
    const RUNNING_OWNERS: &'static str = running_owners!(
        oldest_of_rows: "min(started_at)",
        oldest: "r.oldest"
    );

    const INTERRUPTED_CAUSES: &'static str = interrupted_causes!(
        by_own_worker: "(interrupted_by IS NOT DISTINCT FROM worker_id)",
        interrupted_since: "interrupted_at >= $1"
    );

    const DURATIONS: &'static str = "\
        SELECT status, count(*) AS row_count, \
               percentile_disc(0.5) WITHIN GROUP (ORDER BY ms) AS median_ms, \
               percentile_disc(0.95) WITHIN GROUP (ORDER BY ms) AS p95_ms \
        FROM (SELECT status, \
                     round((extract(epoch FROM COALESCE(finished_at, interrupted_at) - started_at) \
                            * 1000)::numeric)::bigint AS ms \
              FROM task_history \
              WHERE status <> 'running' AND COALESCE(finished_at, interrupted_at) >= $1) AS ended \
        GROUP BY status";

    type RunningRow = RunningRow;

    fn read_transaction<T>(
        connection: &mut PgConnection,
        body: impl FnOnce(&mut PgConnection) -> QueryResult<T>,
    ) -> QueryResult<T> {
        connection
            .build_transaction()
            .repeatable_read()
            .read_only()
            .run(body)
    }
}

impl PostgresStorage {
    /// The operator's figures ([`TaskStats`]): rows by status, running
    /// rows per worker, interrupted rows of the last 24 hours by cause,
    /// median and p95 durations of the rows that ended in the window.
    /// Computed in the database, in one read-only repeatable-read
    /// transaction (one snapshot); works for a role that may only SELECT.
    pub fn stats(&self, request: &StatsRequest) -> Result<TaskStats, StorageError> {
        crate::stats::stats(self, request)
    }
}
