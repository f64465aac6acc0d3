//! Retention on MySQL (see [`crate::prune`]).

use diesel::prelude::*;
use tasktrail_core::{PruneReport, PruneRequest, StorageError, WorkerId, WorkerRecord};

use super::rows::{TaskRow, WorkerRow};
use super::schema::{claude_sdk_sessions, recovery_reports, task_history, workers};
use super::{map_error, MysqlStorage};
use crate::prune::{prune, PruneTarget, RowBatch};

impl PruneTarget for MysqlStorage {
    type Id = String;

    fn rows_after(
        &self,
        after: Option<&String>,
        limit: u32,
    ) -> Result<RowBatch<String>, StorageError> {
        let mut query = task_history::table
            .select(TaskRow::as_select())
            .order(task_history::id.asc())
            .limit(i64::from(limit))
            .into_boxed();
        if let Some(after) = after {
            query = query.filter(task_history::id.gt(after.clone()));
        }
        Ok(query
            .load::<TaskRow>(&mut *self.pooled()?)
            .map_err(map_error)?
            .into_iter()
            .map(|row| (row.id().to_owned(), row.into_record().ok()))
            .collect())
    }

    fn owed_reports(&self, tasks: &[String]) -> Result<Vec<String>, StorageError> {
        recovery_reports::table
            .filter(recovery_reports::task_id.eq_any(tasks))
            .filter(recovery_reports::reported_at.is_null())
            .select(recovery_reports::task_id)
            .load(&mut *self.pooled()?)
            .map_err(map_error)
    }

    fn count_sessions(&self, tasks: &[String]) -> Result<u64, StorageError> {
        claude_sdk_sessions::table
            .filter(claude_sdk_sessions::task_id.eq_any(tasks))
            .count()
            .get_result::<i64>(&mut *self.pooled()?)
            .map(|count| count as u64)
            .map_err(map_error)
    }

    fn delete_tasks(&self, tasks: &[String]) -> Result<(u64, u64), StorageError> {
        (*self.pooled()?)
            .transaction(|connection| {
                let sessions = diesel::delete(
                    claude_sdk_sessions::table.filter(claude_sdk_sessions::task_id.eq_any(tasks)),
                )
                .execute(connection)?;
                // Their (delivered) recovery reports: the driver never
                // selects a row whose report is owed, and a final row never
                // becomes owed again.
                diesel::delete(
                    recovery_reports::table.filter(recovery_reports::task_id.eq_any(tasks)),
                )
                .execute(connection)?;
                let deleted = diesel::delete(
                    task_history::table
                        .filter(task_history::id.eq_any(tasks))
                        .filter(task_history::status.ne("running")),
                )
                .execute(connection)?;
                Ok((deleted as u64, sessions as u64))
            })
            .map_err(map_error)
    }

    fn workers(&self) -> Result<Vec<WorkerRecord>, StorageError> {
        workers::table
            .select(WorkerRow::as_select())
            .load(&mut *self.pooled()?)
            .map_err(map_error)?
            .into_iter()
            .map(WorkerRow::into_record)
            .collect()
    }

    fn delete_workers(&self, gone: &[WorkerId]) -> Result<u64, StorageError> {
        let ids: Vec<String> = gone.iter().map(ToString::to_string).collect();
        (*self.pooled()?)
            .transaction(|connection| {
                let named: Vec<Option<String>> = task_history::table
                    .select(task_history::worker_id)
                    .filter(task_history::worker_id.eq_any(&ids))
                    .union(
                        task_history::table
                            .select(task_history::interrupted_by)
                            .filter(task_history::interrupted_by.eq_any(&ids)),
                    )
                    .load(connection)?;
                let named: Vec<String> = named.into_iter().flatten().collect();
                diesel::delete(
                    workers::table
                        .filter(workers::id.eq_any(&ids))
                        .filter(workers::id.ne_all(&named))
                        .filter(workers::state.ne("alive")),
                )
                .execute(connection)
                .map(|deleted| deleted as u64)
            })
            .map_err(map_error)
    }
}

impl MysqlStorage {
    /// Retention: deletes what `request` selects ([`PruneRequest`]): final
    /// rows that ended before the cut-off with their sessions, in
    /// transactions of at most `batch_size` rows, then `stopped` / `dead`
    /// workers last seen before it that no row names. Never a `running`
    /// row, never a row that ended at or after the cut-off, never a row it
    /// cannot read. With `dry_run`, counts and deletes nothing.
    pub fn prune(&self, request: &PruneRequest) -> Result<PruneReport, StorageError> {
        prune(self, request)
    }
}
