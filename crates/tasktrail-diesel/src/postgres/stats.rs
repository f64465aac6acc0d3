//! The operator's figures on Postgres (see [`crate::stats`]).
//!
//! Percentiles are `percentile_disc` (nearest rank: the first value whose
//! cumulative share reaches the fraction, `ceil(p n)`), the same rank the
//! SQLite backend picks by hand. Durations are rounded to the millisecond
//! (`timestamptz` holds microseconds; SQLite reads times to the
//! millisecond), so both backends report the same figure for the same
//! times.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz};
use tasktrail_core::{RunningOwner, StatsRequest, StorageError, TaskStats, Timestamp, WorkerId};

use super::PostgresStorage;
use crate::codec::{corrupt, decode_worker_state};
use crate::stats::{cause_case, cause_text, StatsStatements};

#[derive(QueryableByName)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub(crate) struct RunningRow {
    #[diesel(sql_type = Nullable<diesel::sql_types::Uuid>)]
    worker_id: Option<uuid::Uuid>,
    #[diesel(sql_type = BigInt)]
    rows: i64,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    oldest: Option<Timestamp>,
    #[diesel(sql_type = Nullable<Text>)]
    host: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    pid: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    state: Option<String>,
}

impl RunningRow {
    fn into_owner(self) -> Result<RunningOwner, StorageError> {
        let label = self
            .worker_id
            .map_or_else(|| "none".to_owned(), |id| id.to_string());
        Ok(RunningOwner {
            worker: self.worker_id.map(WorkerId::from_uuid),
            host: self.host,
            pid: self
                .pid
                .map(|pid| {
                    u32::try_from(pid).map_err(|_| corrupt(format!("worker {label}: pid {pid}")))
                })
                .transpose()?,
            state: self
                .state
                .as_deref()
                .map(|state| decode_worker_state(&label, state))
                .transpose()?,
            rows: u64::try_from(self.rows).unwrap_or(0),
            oldest_started_at: self.oldest,
        })
    }
}

impl StatsStatements for PostgresStorage {
    /// Through the partial index on running rows: as cheap as the sweep's read.
    const RUNNING_OWNERS: &'static str = "\
        SELECT r.worker_id AS worker_id, r.rows AS rows, r.oldest AS oldest, \
               w.host AS host, w.pid AS pid, w.state AS state \
        FROM (SELECT worker_id, count(*) AS rows, min(started_at) AS oldest \
              FROM task_history WHERE status = 'running' GROUP BY worker_id) AS r \
        LEFT JOIN workers AS w ON w.id = r.worker_id";

    const INTERRUPTED_CAUSES: &'static str = concat!(
        "SELECT ",
        cause_case!(),
        " AS cause, count(*) AS rows FROM (SELECT interrupt_reason AS reason, \
           (interrupted_by IS NOT DISTINCT FROM worker_id) AS by_own_worker, ",
        cause_text!(),
        " AS cause FROM task_history \
           WHERE status = 'interrupted' AND interrupted_at >= $1) AS interrupted \
         GROUP BY 1"
    );

    const DURATIONS: &'static str = "\
        SELECT status, count(*) AS rows, \
               percentile_disc(0.5) WITHIN GROUP (ORDER BY ms) AS median_ms, \
               percentile_disc(0.95) WITHIN GROUP (ORDER BY ms) AS p95_ms \
        FROM (SELECT status, \
                     round((extract(epoch FROM COALESCE(finished_at, interrupted_at) - started_at) \
                            * 1000)::numeric)::bigint AS ms \
              FROM task_history \
              WHERE status <> 'running' AND COALESCE(finished_at, interrupted_at) >= $1) AS ended \
        GROUP BY status";

    type RunningRow = RunningRow;

    fn running_owner(row: RunningRow) -> Result<RunningOwner, StorageError> {
        row.into_owner()
    }

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
