//! The dashboard's counts on Postgres
//! ([`Storage::count_tasks_by_status`](tasktrail_core::Storage::count_tasks_by_status),
//! [`Storage::count_outcomes_by_hour`](tasktrail_core::Storage::count_outcomes_by_hour)):
//! one `GROUP BY` each. The status counts read only the index on
//! `(status, started_at, id)` (an index-only scan once the table is
//! vacuumed), or `(repo, started_at, id)` for one repo; hours are the UTC
//! hour of `COALESCE(finished_at, interrupted_at)`.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text, Timestamptz};
use tasktrail_core::{OutcomeBucket, StorageError, TaskStatus, Timestamp};

use super::{map_error, PostgresStorage};
use crate::overview::{buckets, every_status};

#[derive(QueryableByName)]
#[diesel(check_for_backend(diesel::pg::Pg))]
struct StatusCountRow {
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = BigInt)]
    rows: i64,
}

#[derive(QueryableByName)]
#[diesel(check_for_backend(diesel::pg::Pg))]
struct BucketRow {
    #[diesel(sql_type = Timestamptz)]
    hour: Timestamp,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = BigInt)]
    rows: i64,
}

const STATUS_COUNTS: &str = "SELECT status, COUNT(*) AS rows FROM task_history GROUP BY status";

const REPO_STATUS_COUNTS: &str =
    "SELECT status, COUNT(*) AS rows FROM task_history WHERE repo = $1 GROUP BY status";

const OUTCOMES_BY_HOUR: &str = "\
    SELECT date_trunc('hour', COALESCE(finished_at, interrupted_at) AT TIME ZONE 'UTC') \
             AT TIME ZONE 'UTC' AS hour, \
           status, COUNT(*) AS rows \
    FROM task_history \
    WHERE status <> 'running' AND COALESCE(finished_at, interrupted_at) >= $1 \
    GROUP BY 1, 2";

impl PostgresStorage {
    pub(crate) fn status_counts(
        &self,
        repo: Option<&str>,
    ) -> Result<Vec<(TaskStatus, u64)>, StorageError> {
        let mut connection = self.pooled()?;
        let rows = match repo {
            None => diesel::sql_query(STATUS_COUNTS).load::<StatusCountRow>(&mut connection),
            Some(repo) => diesel::sql_query(REPO_STATUS_COUNTS)
                .bind::<Text, _>(repo)
                .load::<StatusCountRow>(&mut connection),
        }
        .map_err(map_error)?;
        every_status(rows.into_iter().map(|row| (row.status, row.rows)))
    }

    pub(crate) fn outcomes_by_hour(
        &self,
        since: Timestamp,
    ) -> Result<Vec<OutcomeBucket>, StorageError> {
        let rows = diesel::sql_query(OUTCOMES_BY_HOUR)
            .bind::<Timestamptz, _>(since)
            .load::<BucketRow>(&mut self.pooled()?)
            .map_err(map_error)?;
        buckets(rows.into_iter().map(|row| (row.hour, row.status, row.rows)))
    }
}
