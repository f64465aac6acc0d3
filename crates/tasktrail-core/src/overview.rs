//! What an operator's overview of the trail counts (the server's
//! dashboard): rows per status, and final rows per hour they ended in.
//! [`Storage::count_tasks_by_status`](crate::Storage::count_tasks_by_status)
//! and [`Storage::count_outcomes_by_hour`](crate::Storage::count_outcomes_by_hour)
//! answer them; the functions here are the definitions, over records in
//! memory, that every backend's answer must equal (the SQL backends count
//! in the database).

use chrono::{DurationRound, TimeDelta};

use crate::clock::Timestamp;
use crate::record::TaskRecord;
use crate::status::TaskStatus;

/// How many final rows of one status ended within one hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct OutcomeBucket {
    /// The hour's start (UTC, minutes and below zero).
    pub hour: Timestamp,
    /// The final status.
    pub status: TaskStatus,
    /// How many rows of `status` ended (`finished_at`, else
    /// `interrupted_at`) in `[hour, hour + 1 h)`.
    pub rows: u64,
}

/// The start of the UTC hour `at` falls in.
pub fn hour_start(at: Timestamp) -> Timestamp {
    at.duration_trunc(TimeDelta::hours(1))
        .expect("a timestamp after 1970 truncates to its hour")
}

/// Rows of each status among `tasks` of `repo` (every repo when `None`),
/// every status in [`TaskStatus::ALL`] order, zero included.
pub fn status_counts<'a>(
    tasks: impl IntoIterator<Item = &'a TaskRecord>,
    repo: Option<&str>,
) -> Vec<(TaskStatus, u64)> {
    let mut counts: Vec<(TaskStatus, u64)> =
        TaskStatus::ALL.iter().map(|status| (*status, 0)).collect();
    for task in tasks {
        if repo.is_some_and(|repo| task.repo != repo) {
            continue;
        }
        if let Some(count) = counts.iter_mut().find(|(status, _)| *status == task.status) {
            count.1 += 1;
        }
    }
    counts
}

/// The final rows among `tasks` that ended (`finished_at`, else
/// `interrupted_at`) at or after `since`, counted by the UTC hour they
/// ended in and their status; only non-zero buckets, oldest hour first,
/// statuses in [`TaskStatus::ALL`] order within an hour.
pub fn outcome_buckets<'a>(
    tasks: impl IntoIterator<Item = &'a TaskRecord>,
    since: Timestamp,
) -> Vec<OutcomeBucket> {
    let mut buckets: Vec<OutcomeBucket> = Vec::new();
    for task in tasks {
        let Some(ended) = task.finished_at.or(task.interrupted_at) else {
            continue;
        };
        if !task.status.is_final() || ended < since {
            continue;
        }
        let hour = hour_start(ended);
        match buckets
            .iter_mut()
            .find(|bucket| bucket.hour == hour && bucket.status == task.status)
        {
            Some(bucket) => bucket.rows += 1,
            None => buckets.push(OutcomeBucket {
                hour,
                status: task.status,
                rows: 1,
            }),
        }
    }
    sort_buckets(&mut buckets);
    buckets
}

/// Oldest hour first, statuses in [`TaskStatus::ALL`] order within an
/// hour: the order every backend answers in.
pub fn sort_buckets(buckets: &mut [OutcomeBucket]) {
    let rank = |status: TaskStatus| TaskStatus::ALL.iter().position(|s| *s == status);
    buckets.sort_by_key(|bucket| (bucket.hour, rank(bucket.status)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn an_hour_starts_on_the_hour() {
        let at = chrono::Utc
            .with_ymd_and_hms(2026, 11, 27, 14, 59, 59)
            .single()
            .expect("time")
            + TimeDelta::microseconds(999_999);
        let start = chrono::Utc
            .with_ymd_and_hms(2026, 11, 27, 14, 0, 0)
            .single()
            .expect("time");
        assert_eq!(hour_start(at), start);
        assert_eq!(hour_start(start), start);
    }
}
