//! The dashboard's counts on MySQL: one `GROUP BY` each, read from the
//! `(status, started_at, id)` index, or `(repo, started_at, id)` for one
//! repo; hours are the UTC hour of `COALESCE(finished_at, interrupted_at)`
//! (the stored times are UTC already).

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Datetime, Text};
use tasktrail_core::{OutcomeBucket, StorageError, TaskStatus, Timestamp};

use super::rows::stored_time;
use super::{map_error, MysqlStorage};
use crate::overview::{buckets, every_status};

#[derive(QueryableByName)]
struct StatusCountRow {
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = BigInt)]
    row_count: i64,
}

#[derive(QueryableByName)]
struct BucketRow {
    #[diesel(sql_type = Datetime)]
    hour: chrono::NaiveDateTime,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = BigInt)]
    row_count: i64,
}

const STATUS_COUNTS: &str =
    "SELECT status, COUNT(*) AS row_count FROM task_history GROUP BY status";

const REPO_STATUS_COUNTS: &str =
    "SELECT status, COUNT(*) AS row_count FROM task_history WHERE repo = ? GROUP BY status";

const OUTCOMES_BY_HOUR: &str = "\
    SELECT CAST(DATE_FORMAT(COALESCE(finished_at, interrupted_at), '%Y-%m-%d %H:00:00') AS DATETIME(6)) AS hour, \
           status, COUNT(*) AS row_count \
    FROM task_history \
    WHERE status <> 'running' AND COALESCE(finished_at, interrupted_at) >= ? \
    GROUP BY 1, 2";

impl MysqlStorage {
    pub(crate) fn status_counts(
        &self,
        repo: Option<&str>,
    ) -> Result<Vec<(TaskStatus, u64)>, StorageError> {
        let mut connection = self.pooled()?;
        let rows = match repo {
            None => diesel::sql_query(STATUS_COUNTS).load::<StatusCountRow>(&mut *connection),
            Some(repo) => diesel::sql_query(REPO_STATUS_COUNTS)
                .bind::<Text, _>(repo)
                .load::<StatusCountRow>(&mut *connection),
        }
        .map_err(map_error)?;
        every_status(rows.into_iter().map(|row| (row.status, row.row_count)))
    }

    pub(crate) fn outcomes_by_hour(
        &self,
        since: Timestamp,
    ) -> Result<Vec<OutcomeBucket>, StorageError> {
        let rows = diesel::sql_query(OUTCOMES_BY_HOUR)
            .bind::<Datetime, _>(stored_time(since))
            .load::<BucketRow>(&mut *self.pooled()?)
            .map_err(map_error)?;
        buckets(
            rows.into_iter()
                .map(|row| (row.hour.and_utc(), row.status, row.row_count)),
        )
    }
}
