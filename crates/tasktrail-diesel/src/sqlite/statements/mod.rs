//! The SQLite statements behind the shared `Storage` flows
//! (`crate::store`): ids and times as text, one writer at a time
//! (`BEGIN IMMEDIATE`), no row locks.
//!
//! Every statement of this backend's shared `Storage` flows lives here
//! (their text, types and locking clauses are what the dialect forces);
//! the two on the hot path are kept prepared ([`prepared`]).

mod prepared;

use prepared::{FinishCompletedIfOwnedAndRunning, InsertRunningIfWorkerAlive};

use std::sync::MutexGuard;

use diesel::prelude::*;
use diesel::sqlite::{Sqlite, SqliteConnection};
use tasktrail_core::backend::{FinishRow, NewRunningRow, NewSession};
use tasktrail_core::{
    RunReport, SessionKey, SessionRecord, StorageError, TaskFilter, TaskId, TaskRecord, TaskStatus,
    WorkerId, WorkerRecord,
};

use crate::codec::{encode_artifacts, encode_timestamp};
use crate::sqlite::rows::{SessionRow, TaskRow, WorkerRow};
use crate::sqlite::schema::{claude_sdk_sessions, task_history, workers};
use crate::sqlite::store::immediate;
use crate::sqlite::{map_error, SqliteStorage};
use crate::store::{SqlDialect, WorkerRead};
use crate::tx::TxError;

impl SqlDialect for SqliteStorage {
    type Backend = Sqlite;
    type Connection = SqliteConnection;
    type Held<'a> = MutexGuard<'a, SqliteConnection>;

    fn hold(&self) -> Result<Self::Held<'_>, StorageError> {
        Ok(self.connection())
    }

    fn write_transaction<T>(
        connection: &mut SqliteConnection,
        body: impl FnOnce(&mut SqliteConnection) -> Result<T, TxError>,
    ) -> Result<T, StorageError> {
        immediate(connection, body)
    }

    /// The write transaction holds the database's only write lock, so a
    /// plain read already keeps the row from changing under the caller.
    fn worker_state(
        connection: &mut SqliteConnection,
        worker: WorkerId,
        _read: WorkerRead,
    ) -> QueryResult<Option<String>> {
        workers::table
            .find(worker.to_string())
            .select(workers::state)
            .first::<String>(connection)
            .optional()
    }

    fn insert_running_if_worker_alive(
        connection: &mut SqliteConnection,
        row: &NewRunningRow,
    ) -> QueryResult<usize> {
        let spec = &row.spec;
        let worker = row.worker.to_string();
        InsertRunningIfWorkerAlive {
            id: &row.id.to_string(),
            repo: spec.repo(),
            issue_number: i64::from(spec.issue_number()),
            user: spec.user(),
            agent: spec.agent(),
            agent_type: spec.agent_type(),
            model: spec.model(),
            provider: spec.provider(),
            started_at: &encode_timestamp(row.started_at),
            worker: &worker,
        }
        .execute(connection)
    }

    fn workers_by_start(
        connection: &mut SqliteConnection,
    ) -> Result<Vec<WorkerRecord>, StorageError> {
        workers::table
            .order((workers::started_at, workers::id))
            .select(WorkerRow::as_select())
            .load(connection)
            .map_err(map_error)?
            .into_iter()
            .map(WorkerRow::into_record)
            .collect()
    }

    fn load_task(
        connection: &mut SqliteConnection,
        id: TaskId,
    ) -> Result<Option<TaskRecord>, TxError> {
        task_history::table
            .find(id.to_string())
            .select(TaskRow::as_select())
            .first(connection)
            .optional()?
            .map(TaskRow::into_record)
            .transpose()
            .map_err(TxError::from)
    }

    fn interrupt_if_owned_and_running(
        connection: &mut SqliteConnection,
        row: &FinishRow,
        reason: &str,
    ) -> QueryResult<usize> {
        let worker = row.worker.to_string();
        diesel::update(
            task_history::table
                .filter(task_history::id.eq(row.id.to_string()))
                .filter(task_history::status.eq(TaskStatus::Running.as_str()))
                .filter(task_history::worker_id.eq(&worker)),
        )
        .set((
            task_history::status.eq(TaskStatus::Interrupted.as_str()),
            task_history::interrupted_at.eq(encode_timestamp(row.at)),
            task_history::interrupt_reason.eq(reason),
            task_history::interrupted_by.eq(&worker),
        ))
        .execute(connection)
    }

    fn finish_completed_if_owned_and_running(
        connection: &mut SqliteConnection,
        row: &FinishRow,
        report: &RunReport,
    ) -> QueryResult<usize> {
        FinishCompletedIfOwnedAndRunning {
            id: &row.id.to_string(),
            worker: &row.worker.to_string(),
            status: row.outcome.status().as_str(),
            finished_at: &encode_timestamp(row.at),
            input_tokens: i64::from(report.input_tokens),
            output_tokens: i64::from(report.output_tokens),
            cost_usd: report.cost_usd.dollars(),
            turns: i64::from(report.turns),
            artifacts: &encode_artifacts(&report.artifacts),
        }
        .execute(connection)
    }

    fn invalidate_sessions_of_task(
        connection: &mut SqliteConnection,
        row: &FinishRow,
        reason: &str,
    ) -> QueryResult<usize> {
        diesel::update(
            claude_sdk_sessions::table
                .filter(claude_sdk_sessions::task_id.eq(row.id.to_string()))
                .filter(claude_sdk_sessions::invalidated_at.is_null()),
        )
        .set((
            claude_sdk_sessions::invalidated_at.eq(encode_timestamp(row.at)),
            claude_sdk_sessions::invalidation_reason.eq(reason),
        ))
        .execute(connection)
    }

    fn task_is_running_under(
        connection: &mut SqliteConnection,
        id: TaskId,
        worker: WorkerId,
    ) -> QueryResult<bool> {
        task_history::table
            .filter(task_history::id.eq(id.to_string()))
            .filter(task_history::status.eq(TaskStatus::Running.as_str()))
            .filter(task_history::worker_id.eq(worker.to_string()))
            .count()
            .get_result::<i64>(connection)
            .map(|count| count == 1)
    }

    fn insert_session(
        connection: &mut SqliteConnection,
        session: &NewSession,
    ) -> QueryResult<usize> {
        diesel::insert_into(claude_sdk_sessions::table)
            .values(SessionRow {
                session_id: session.session_id.as_str().to_owned(),
                task_id: session.task_id.to_string(),
                repo: session.repo.clone(),
                issue_number: i64::from(session.issue_number),
                agent: session.agent.clone(),
                created_at: encode_timestamp(session.created_at),
                invalidated_at: None,
                invalidation_reason: None,
            })
            .execute(connection)
    }

    fn newest_valid_session(
        connection: &mut SqliteConnection,
        key: &SessionKey,
        statuses: &[&'static str],
    ) -> Result<Option<SessionRecord>, StorageError> {
        claude_sdk_sessions::table
            .inner_join(task_history::table)
            .filter(claude_sdk_sessions::repo.eq(&key.repo))
            .filter(claude_sdk_sessions::issue_number.eq(i64::from(key.issue_number)))
            .filter(claude_sdk_sessions::agent.eq(&key.agent))
            .filter(claude_sdk_sessions::invalidated_at.is_null())
            .filter(task_history::status.eq_any(statuses))
            .order((
                claude_sdk_sessions::created_at.desc(),
                claude_sdk_sessions::session_id.desc(),
            ))
            .select(SessionRow::as_select())
            .first(connection)
            .optional()
            .map_err(map_error)?
            .map(SessionRow::into_record)
            .transpose()
    }

    fn sessions_newest_first(
        connection: &mut SqliteConnection,
    ) -> Result<Vec<SessionRecord>, StorageError> {
        sessions_newest_first_of(connection, None)
    }

    fn sessions_of_task(
        connection: &mut SqliteConnection,
        task: TaskId,
    ) -> Result<Vec<SessionRecord>, StorageError> {
        sessions_newest_first_of(connection, Some(task))
    }

    fn task_rows(
        connection: &mut SqliteConnection,
        filter: &TaskFilter,
    ) -> Result<Vec<Result<TaskRecord, StorageError>>, StorageError> {
        let mut query = task_history::table
            .select(TaskRow::as_select())
            .order((task_history::started_at.desc(), task_history::id.desc()))
            .into_boxed();
        if let Some(status) = filter.status {
            query = query.filter(task_history::status.eq(status.as_str()));
        }
        if let Some(repo) = &filter.repo {
            query = query.filter(task_history::repo.eq(repo.clone()));
        }
        if let Some(limit) = filter.limit {
            query = query.limit(i64::from(limit));
        }
        if let Some(offset) = filter.offset {
            query = query.offset(i64::from(offset));
        }
        Ok(query
            .load(connection)
            .map_err(map_error)?
            .into_iter()
            .map(TaskRow::into_record)
            .collect())
    }
}

/// Every session (`task` `None`) or task `task`'s (through the `task_id`
/// index), newest first.
fn sessions_newest_first_of(
    connection: &mut SqliteConnection,
    task: Option<TaskId>,
) -> Result<Vec<SessionRecord>, StorageError> {
    let mut query = claude_sdk_sessions::table
        .order((
            claude_sdk_sessions::created_at.desc(),
            claude_sdk_sessions::session_id.desc(),
        ))
        .select(SessionRow::as_select())
        .into_boxed();
    if let Some(task) = task {
        query = query.filter(claude_sdk_sessions::task_id.eq(task.to_string()));
    }
    query
        .load(connection)
        .map_err(map_error)?
        .into_iter()
        .map(SessionRow::into_record)
        .collect()
}
