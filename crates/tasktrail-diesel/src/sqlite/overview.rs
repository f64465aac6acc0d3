//! The dashboard's counts on SQLite
//! ([`Storage::count_tasks_by_status`](tasktrail_core::Storage::count_tasks_by_status),
//! [`Storage::count_outcomes_by_hour`](tasktrail_core::Storage::count_outcomes_by_hour)):
//! one `GROUP BY` each. The status counts read only the index on
//! `(status, started_at, id)` (or `(repo, started_at, id)` for one repo);
//! the hourly counts read the rows that ended since the cut-off, their end
//! read through `julianday()` like the stats, so a time in any common form
//! counts and a text that is not a time does not.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use tasktrail_core::{OutcomeBucket, StorageError, TaskStatus, Timestamp};

use super::{map_error, SqliteStorage};
use crate::codec::{decode_timestamp, encode_timestamp};
use crate::overview::{buckets, every_status};

#[derive(QueryableByName)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite))]
struct StatusCountRow {
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = BigInt)]
    rows: i64,
}

#[derive(QueryableByName)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite))]
struct BucketRow {
    #[diesel(sql_type = Text)]
    hour: String,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = BigInt)]
    rows: i64,
}

const STATUS_COUNTS: &str = "SELECT status, COUNT(*) AS rows FROM task_history GROUP BY status";

const REPO_STATUS_COUNTS: &str =
    "SELECT status, COUNT(*) AS rows FROM task_history WHERE repo = ? GROUP BY status";

const OUTCOMES_BY_HOUR: &str = "\
    SELECT strftime('%Y-%m-%dT%H:00:00Z', COALESCE(finished_at, interrupted_at)) AS hour, \
           status, COUNT(*) AS rows \
    FROM task_history \
    WHERE status <> 'running' \
      AND julianday(COALESCE(finished_at, interrupted_at)) >= julianday(?) \
    GROUP BY 1, 2";

impl SqliteStorage {
    pub(crate) fn status_counts(
        &self,
        repo: Option<&str>,
    ) -> Result<Vec<(TaskStatus, u64)>, StorageError> {
        let mut connection = self.connection();
        let rows = match repo {
            None => diesel::sql_query(STATUS_COUNTS).load::<StatusCountRow>(&mut *connection),
            Some(repo) => diesel::sql_query(REPO_STATUS_COUNTS)
                .bind::<Text, _>(repo)
                .load::<StatusCountRow>(&mut *connection),
        }
        .map_err(map_error)?;
        every_status(rows.into_iter().map(|row| (row.status, row.rows)))
    }

    pub(crate) fn outcomes_by_hour(
        &self,
        since: Timestamp,
    ) -> Result<Vec<OutcomeBucket>, StorageError> {
        let rows = diesel::sql_query(OUTCOMES_BY_HOUR)
            .bind::<Text, _>(encode_timestamp(since))
            .load::<BucketRow>(&mut *self.connection())
            .map_err(map_error)?;
        buckets(
            rows.into_iter()
                .map(|row| Ok((decode_timestamp("hour", &row.hour)?, row.status, row.rows)))
                .collect::<Result<Vec<_>, StorageError>>()?,
        )
    }
}
