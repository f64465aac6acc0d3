//! The dashboard's counts
//! ([`Storage::count_tasks_by_status`](tasktrail_core::Storage::count_tasks_by_status),
//! [`Storage::count_outcomes_by_hour`](tasktrail_core::Storage::count_outcomes_by_hour))
//! on every SQL backend: one `GROUP BY` each, run and turned into the
//! trait's answers (every status present, buckets in order) here. A
//! backend supplies [`OverviewStatements`]: the statements whose text is its
//! own (bind parameters, how an hour is cut) and the row the hourly one
//! returns.

use diesel::serialize::ToSql;
use diesel::sql_types::{BigInt, HasSqlType, Text};
use diesel::QueryableByName;
use tasktrail_core::{OutcomeBucket, StorageError, TaskStatus, Timestamp};

use crate::codec::corrupt;
use crate::store::{map, SqlDialect};

/// Every row counted by status; standard SQL, the same in every dialect.
/// Reads only the index on `(status, started_at, id)`.
pub(crate) const STATUS_COUNTS: &str =
    "SELECT status, COUNT(*) AS row_count FROM task_history GROUP BY status";

/// `status, rows`: one status's count, from any backend.
#[derive(QueryableByName)]
pub(crate) struct StatusCount {
    #[diesel(sql_type = Text)]
    pub(crate) status: String,
    #[diesel(sql_type = BigInt)]
    pub(crate) row_count: i64,
}

/// What a backend supplies for the dashboard's counts.
pub(crate) trait OverviewStatements: SqlDialect {
    /// [`STATUS_COUNTS`] for the repo bound as the first parameter
    /// (through the index on `(repo, started_at, id)`).
    const REPO_STATUS_COUNTS: &'static str;
    /// The rows that ended (`COALESCE(finished_at, interrupted_at)`) at or
    /// after the time bound as the first parameter, counted by the UTC hour
    /// they ended in and status: `hour, status, rows`.
    const OUTCOMES_BY_HOUR: &'static str;
    /// One row of [`Self::OUTCOMES_BY_HOUR`].
    type HourRow: QueryableByName<Self::Backend> + HourCountRow + 'static;
}

/// An hour's count of one status: hour, status, rows.
pub(crate) type HourCount = (Timestamp, String, i64);

/// A backend's row of the hourly counts (its hour in the dialect's type).
pub(crate) trait HourCountRow {
    /// The hour, status and count (an hour that is not a time is a
    /// `CorruptRow`).
    fn into_hour_count(self) -> Result<HourCount, StorageError>;
}

/// `Storage::count_tasks_by_status`: every status, zero where no row has
/// it; one repo's rows when `repo` names one.
pub(crate) fn count_tasks_by_status<S>(
    store: &S,
    repo: Option<&str>,
) -> Result<Vec<(TaskStatus, u64)>, StorageError>
where
    S: OverviewStatements,
    S::Backend: HasSqlType<Text>,
    String: ToSql<Text, S::Backend>,
    StatusCount: QueryableByName<S::Backend>,
{
    let query = match repo {
        None => diesel::sql_query(STATUS_COUNTS).into_boxed(),
        Some(repo) => diesel::sql_query(S::REPO_STATUS_COUNTS)
            .into_boxed()
            .bind::<Text, _>(repo.to_owned()),
    };
    let rows: Vec<StatusCount> = S::load_text(&mut *store.hold()?, query).map_err(map::<S>)?;
    every_status(rows.into_iter().map(|row| (row.status, row.row_count)))
}

/// `Storage::count_outcomes_by_hour`: the rows that ended since `since`,
/// by hour and status, in the trait's order.
pub(crate) fn count_outcomes_by_hour<S: OverviewStatements>(
    store: &S,
    since: Timestamp,
) -> Result<Vec<OutcomeBucket>, StorageError> {
    let query = S::bind_time(diesel::sql_query(S::OUTCOMES_BY_HOUR).into_boxed(), since);
    let rows: Vec<S::HourRow> = S::load_text(&mut *store.hold()?, query).map_err(map::<S>)?;
    buckets(
        rows.into_iter()
            .map(HourCountRow::into_hour_count)
            .collect::<Result<Vec<_>, StorageError>>()?,
    )
}

/// Counted statuses into every status in [`TaskStatus::ALL`] order.
pub(crate) fn every_status(
    counted: impl IntoIterator<Item = (String, i64)>,
) -> Result<Vec<(TaskStatus, u64)>, StorageError> {
    let mut counts: Vec<(TaskStatus, u64)> =
        TaskStatus::ALL.iter().map(|status| (*status, 0)).collect();
    for (status, rows) in counted {
        let status: TaskStatus = status
            .parse()
            .map_err(|_| corrupt(format!("task_history holds unknown status {status:?}")))?;
        let rows = u64::try_from(rows)
            .map_err(|_| corrupt(format!("status {status}: negative count {rows}")))?;
        if let Some(count) = counts.iter_mut().find(|(s, _)| *s == status) {
            count.1 += rows;
        }
    }
    Ok(counts)
}

/// Counted hours into [`OutcomeBucket`]s, in the trait's order.
pub(crate) fn buckets(
    counted: impl IntoIterator<Item = (Timestamp, String, i64)>,
) -> Result<Vec<OutcomeBucket>, StorageError> {
    let mut buckets = counted
        .into_iter()
        .map(|(hour, status, rows)| {
            let status: TaskStatus = status
                .parse()
                .map_err(|_| corrupt(format!("task_history holds unknown status {status:?}")))?;
            let rows = u64::try_from(rows)
                .map_err(|_| corrupt(format!("status {status}: negative count {rows}")))?;
            Ok(OutcomeBucket { hour, status, rows })
        })
        .collect::<Result<Vec<_>, StorageError>>()?;
    tasktrail_core::sort_buckets(&mut buckets);
    Ok(buckets)
}
