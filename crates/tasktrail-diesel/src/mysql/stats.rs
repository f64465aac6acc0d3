//! The operator's figures on MySQL (see [`crate::stats`]).
//!
//! MySQL 8 has no percentile function (MariaDB's `PERCENTILE_DISC` is its
//! own): each status's durations are ranked with `ROW_NUMBER()` over one
//! sorted pass and the nearest-rank rows are picked, the same ranks the
//! other backends report (`ceil(n/2)`: `(n + 1) DIV 2`; `ceil(0.95 n)`:
//! `(95 n + 99) DIV 100`). Durations are rounded to the millisecond.
//! `rows` is a reserved word in MySQL 8 and MariaDB: quoted.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Datetime, Nullable, Text};
use tasktrail_core::{RunningOwner, StatsRequest, StorageError, TaskStats};

use super::rows::stored_time;
use super::{map_error, MysqlStorage};
use crate::codec::{corrupt, decode_worker_id, decode_worker_state};
use crate::stats::{assemble, cause_case, cause_text, stats_rows, DurationFigures, Figures};

stats_rows!(diesel::mysql::Mysql);

#[derive(QueryableByName)]
#[diesel(check_for_backend(diesel::mysql::Mysql))]
struct RunningRow {
    #[diesel(sql_type = Nullable<Text>)]
    worker_id: Option<String>,
    #[diesel(sql_type = BigInt)]
    rows: i64,
    #[diesel(sql_type = Nullable<Datetime>)]
    oldest: Option<chrono::NaiveDateTime>,
    #[diesel(sql_type = Nullable<Text>)]
    host: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    pid: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    state: Option<String>,
}

impl RunningRow {
    fn into_owner(self) -> Result<RunningOwner, StorageError> {
        let label = self.worker_id.as_deref().unwrap_or("none");
        Ok(RunningOwner {
            worker: self
                .worker_id
                .as_deref()
                .map(|id| decode_worker_id("worker_id", id))
                .transpose()?,
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
                .map(|state| decode_worker_state(label, state))
                .transpose()?,
            rows: u64::try_from(self.rows).unwrap_or(0),
            oldest_started_at: self.oldest.map(|at| at.and_utc()),
        })
    }
}

const STATUS_COUNTS: &str = "SELECT status, COUNT(*) AS `rows` FROM task_history GROUP BY status";

/// Through the (status, worker_id) index: as cheap as the sweep's read.
const RUNNING_OWNERS: &str = "\
    SELECT r.worker_id AS worker_id, r.`rows` AS `rows`, r.oldest AS oldest, \
           w.host AS host, w.pid AS pid, w.state AS state \
    FROM (SELECT worker_id, COUNT(*) AS `rows`, MIN(started_at) AS oldest \
          FROM task_history WHERE status = 'running' GROUP BY worker_id) AS r \
    LEFT JOIN workers AS w ON w.id = r.worker_id";

const INTERRUPTED_CAUSES: &str = concat!(
    "SELECT ",
    cause_case!(),
    " AS cause, COUNT(*) AS `rows` FROM (SELECT interrupt_reason AS reason, \
       (interrupted_by <=> worker_id) AS by_own_worker, ",
    cause_text!(),
    " AS cause FROM task_history \
       WHERE status = 'interrupted' AND interrupted_at >= ?) AS interrupted \
     GROUP BY 1"
);

const DURATIONS: &str = "\
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
    SELECT status, n AS `rows`, \
           MAX(CASE WHEN position = (n + 1) DIV 2 THEN ms END) AS median_ms, \
           MAX(CASE WHEN position = (95 * n + 99) DIV 100 THEN ms END) AS p95_ms \
    FROM ranked GROUP BY status, n";

impl MysqlStorage {
    /// The operator's figures ([`TaskStats`]): rows by status, running
    /// rows per worker, interrupted rows of the last 24 hours by cause,
    /// median and p95 durations of the rows that ended in the window.
    /// Computed in the database, in one read-only consistent-snapshot
    /// transaction; works for a role that may only SELECT.
    pub fn stats(&self, request: &StatsRequest) -> Result<TaskStats, StorageError> {
        let interrupted_start = stored_time(request.interrupted_start());
        let window_start = stored_time(request.window_start());
        let mut connection = self.pooled()?;
        // The next transaction only: one snapshot for the four reads (the
        // session's own level is READ COMMITTED).
        diesel::connection::SimpleConnection::batch_execute(
            &mut *connection,
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        )
        .map_err(map_error)?;
        let (by_status, running, causes, durations) = connection
            .transaction(|connection| {
                let by_status = diesel::sql_query(STATUS_COUNTS).load::<StatusRow>(connection)?;
                let running = diesel::sql_query(RUNNING_OWNERS).load::<RunningRow>(connection)?;
                let causes = diesel::sql_query(INTERRUPTED_CAUSES)
                    .bind::<Datetime, _>(interrupted_start)
                    .load::<CauseRow>(connection)?;
                let durations = diesel::sql_query(DURATIONS)
                    .bind::<Datetime, _>(window_start)
                    .load::<DurationRow>(connection)?;
                Ok::<_, diesel::result::Error>((by_status, running, causes, durations))
            })
            .map_err(map_error)?;
        assemble(
            request,
            Figures {
                by_status: by_status.into_iter().map(Into::into).collect(),
                running: running
                    .into_iter()
                    .map(RunningRow::into_owner)
                    .collect::<Result<_, _>>()?,
                causes: causes.into_iter().map(Into::into).collect(),
                durations: durations.into_iter().map(DurationFigures::from).collect(),
            },
        )
    }
}
