//! Retention: deleting old final rows in bounded batches. One driver for
//! both SQL backends; each provides the statements ([`PruneTarget`]).
//!
//! Which row goes is decided in Rust, on the decoded record
//! ([`PruneRequest::selects`]): a time written in any form is compared as
//! the instant it is, a row that cannot be read is never deleted, and the
//! DELETE itself is guarded by `status <> 'running'`.

use std::collections::HashSet;

use tasktrail_core::{PruneReport, PruneRequest, StorageError, TaskRecord, WorkerId, WorkerRecord};

/// A batch of rows: each stored id with its record (`None`: unreadable).
pub(crate) type RowBatch<Id> = Vec<(Id, Option<TaskRecord>)>;

/// What a backend provides for a prune.
pub(crate) trait PruneTarget {
    /// The stored id, as the backend orders it.
    type Id: Clone + Eq + std::hash::Hash;

    /// Up to `limit` rows of `task_history` after `after` in id order, each
    /// with its record (`None` when the row cannot be read).
    fn rows_after(
        &self,
        after: Option<&Self::Id>,
        limit: u32,
    ) -> Result<RowBatch<Self::Id>, StorageError>;

    /// Those of these tasks whose recovery report is still owed.
    fn owed_reports(&self, tasks: &[Self::Id]) -> Result<Vec<Self::Id>, StorageError>;

    /// How many sessions these tasks have.
    fn count_sessions(&self, tasks: &[Self::Id]) -> Result<u64, StorageError>;

    /// In one transaction: deletes the sessions and recovery reports of
    /// these tasks, then the tasks themselves unless `running`. Returns (tasks, sessions) deleted.
    fn delete_tasks(&self, tasks: &[Self::Id]) -> Result<(u64, u64), StorageError>;

    /// Every `workers` row.
    fn workers(&self) -> Result<Vec<WorkerRecord>, StorageError>;

    /// Deletes these workers unless `alive` or named by a row.
    fn delete_workers(&self, workers: &[WorkerId]) -> Result<u64, StorageError>;
}

/// Runs `request` against `target`.
pub(crate) fn prune<T: PruneTarget>(
    target: &T,
    request: &PruneRequest,
) -> Result<PruneReport, StorageError> {
    let batch_size = request.batch_size.max(1);
    let mut report = PruneReport::default();
    let mut named = HashSet::new();
    let mut after = None;
    loop {
        let rows = target.rows_after(after.as_ref(), batch_size)?;
        let full = rows.len() == batch_size as usize;
        after = rows.last().map(|(id, _)| id.clone());
        // A row whose recovery report is still owed stays, whatever the
        // request: a later sweep must still print its line.
        let ids: Vec<T::Id> = rows.iter().map(|(id, _)| id.clone()).collect();
        let owed: HashSet<T::Id> = target.owed_reports(&ids)?.into_iter().collect();
        let mut selected = Vec::new();
        for (id, record) in rows {
            match record {
                Some(record) if !owed.contains(&id) && request.selects(&record) => {
                    selected.push(id)
                }
                // Kept (not selected, or owed a report): the workers it
                // names stay, and a dry run counts them as staying.
                Some(record) => named.extend(
                    [record.worker_id, record.interrupted_by]
                        .into_iter()
                        .flatten(),
                ),
                // Unreadable: kept. The workers it names are kept by the
                // DELETE's own guard (no row may name them); a dry run,
                // which cannot read them, counts them as going.
                None => {}
            }
        }
        report.batches += 1;
        if !selected.is_empty() {
            if request.dry_run {
                report.tasks += selected.len() as u64;
                report.sessions += target.count_sessions(&selected)?;
            } else {
                let (tasks, sessions) = target.delete_tasks(&selected)?;
                report.tasks += tasks;
                report.sessions += sessions;
            }
        }
        if !full {
            break;
        }
    }
    let gone: Vec<WorkerId> = target
        .workers()?
        .into_iter()
        .filter(|worker| {
            worker.state != tasktrail_core::WorkerState::Alive
                && worker.stopped_at.unwrap_or(worker.heartbeat_at) < request.cut_off
                && !named.contains(&worker.id)
        })
        .map(|worker| worker.id)
        .collect();
    report.workers = if request.dry_run {
        gone.len() as u64
    } else if gone.is_empty() {
        0
    } else {
        target.delete_workers(&gone)?
    };
    Ok(report)
}
