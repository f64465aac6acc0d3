//! What both SQL backends' dashboard counts share: turning the counted
//! rows into the trait's answers (every status present, buckets in order).

use tasktrail_core::{OutcomeBucket, StorageError, TaskStatus, Timestamp};

use crate::codec::corrupt;

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
