//! The Postgres statements behind the shared `Storage` flows
//! (`crate::store`): native UUIDs and times (to the microsecond), pooled
//! connections, row locks (`FOR SHARE`) where a sweep must wait.
//!
//! Every statement of this backend's shared `Storage` flows lives here
//! (their text, types and locking clauses are what the dialect forces);
//! the two on the hot path are kept prepared ([`prepared`]).

mod prepared;

use prepared::{FinishCompletedIfOwnedAndRunning, InsertRunningIfWorkerAlive};

use diesel::pg::{Pg, PgConnection};
use diesel::prelude::*;
use tasktrail_core::backend::{FinishRow, NewRunningRow, NewSession};
use tasktrail_core::{
    truncate_to_micros, RunReport, SessionKey, SessionRecord, StorageError, TaskFilter, TaskId,
    TaskRecord, TaskStatus, WorkerId, WorkerRecord,
};
use uuid::Uuid;

use crate::codec::artifacts_to_json;
use crate::postgres::pool::PgPooled;
use crate::postgres::rows::{SessionRow, TaskRow, WorkerRow};
use crate::postgres::schema::{claude_sdk_sessions, task_history, workers};
use crate::postgres::{map_error, PostgresStorage};
use crate::store::{SqlDialect, WorkerRead};
use crate::tx::TxError;

impl SqlDialect for PostgresStorage {
    type Backend = Pg;
    type Connection = PgConnection;
    type Held<'a> = PgPooled;

    fn hold(&self) -> Result<PgPooled, StorageError> {
        self.pooled()
    }

    fn write_transaction<T>(
        connection: &mut PgConnection,
        body: impl FnOnce(&mut PgConnection) -> Result<T, TxError>,
    ) -> Result<T, StorageError> {
        connection
            .transaction(body)
            .map_err(TxError::into_storage::<Pg>)
    }

    fn worker_state(
        connection: &mut PgConnection,
        worker: WorkerId,
        read: WorkerRead,
    ) -> QueryResult<Option<String>> {
        let query = workers::table
            .find(*worker.as_uuid())
            .select(workers::state);
        match read {
            WorkerRead::ForShare => query.for_share().first::<String>(connection).optional(),
            WorkerRead::Plain => query.first::<String>(connection).optional(),
        }
    }

    /// One prepared statement, one round trip: the INSERT reads the worker's
    /// row `FOR SHARE` (a concurrent sweep cannot declare it dead in
    /// between) and writes nothing unless it is `alive`.
    fn insert_running_if_worker_alive(
        connection: &mut PgConnection,
        row: &NewRunningRow,
    ) -> QueryResult<usize> {
        let spec = &row.spec;
        InsertRunningIfWorkerAlive {
            id: *row.id.as_uuid(),
            repo: spec.repo(),
            issue_number: i64::from(spec.issue_number()),
            user: spec.user(),
            agent: spec.agent(),
            agent_type: spec.agent_type(),
            model: spec.model(),
            provider: spec.provider(),
            started_at: truncate_to_micros(row.started_at),
            worker: *row.worker.as_uuid(),
        }
        .execute(connection)
    }

    fn workers_by_start(connection: &mut PgConnection) -> Result<Vec<WorkerRecord>, StorageError> {
        workers::table
            .order((workers::started_at, workers::id))
            .select(WorkerRow::as_select())
            .load(connection)
            .map_err(map_error)?
            .into_iter()
            .map(WorkerRow::into_record)
            .collect()
    }

    fn load_task(connection: &mut PgConnection, id: TaskId) -> Result<Option<TaskRecord>, TxError> {
        task_history::table
            .find(*id.as_uuid())
            .select(TaskRow::as_select())
            .first(connection)
            .optional()?
            .map(TaskRow::into_record)
            .transpose()
            .map_err(TxError::from)
    }

    fn interrupt_if_owned_and_running(
        connection: &mut PgConnection,
        row: &FinishRow,
        reason: &str,
    ) -> QueryResult<usize> {
        let worker = *row.worker.as_uuid();
        diesel::update(
            task_history::table
                .filter(task_history::id.eq(*row.id.as_uuid()))
                .filter(task_history::status.eq(TaskStatus::Running.as_str()))
                .filter(task_history::worker_id.eq(worker)),
        )
        .set((
            task_history::status.eq(TaskStatus::Interrupted.as_str()),
            task_history::interrupted_at.eq(truncate_to_micros(row.at)),
            task_history::interrupt_reason.eq(reason),
            task_history::interrupted_by.eq(worker),
        ))
        .execute(connection)
    }

    fn finish_completed_if_owned_and_running(
        connection: &mut PgConnection,
        row: &FinishRow,
        report: &RunReport,
    ) -> QueryResult<usize> {
        FinishCompletedIfOwnedAndRunning {
            id: *row.id.as_uuid(),
            worker: *row.worker.as_uuid(),
            status: row.outcome.status().as_str(),
            finished_at: truncate_to_micros(row.at),
            input_tokens: i64::from(report.input_tokens),
            output_tokens: i64::from(report.output_tokens),
            cost_usd: report.cost_usd.dollars(),
            turns: i64::from(report.turns),
            artifacts: artifacts_to_json(&report.artifacts),
        }
        .execute(connection)
    }

    fn invalidate_sessions_of_task(
        connection: &mut PgConnection,
        row: &FinishRow,
        reason: &str,
    ) -> QueryResult<usize> {
        diesel::update(
            claude_sdk_sessions::table
                .filter(claude_sdk_sessions::task_id.eq(*row.id.as_uuid()))
                .filter(claude_sdk_sessions::invalidated_at.is_null()),
        )
        .set((
            claude_sdk_sessions::invalidated_at.eq(truncate_to_micros(row.at)),
            claude_sdk_sessions::invalidation_reason.eq(reason),
        ))
        .execute(connection)
    }

    /// Read `FOR SHARE`: a sweep cannot interrupt the task before the
    /// caller's transaction ends.
    fn task_is_running_under(
        connection: &mut PgConnection,
        id: TaskId,
        worker: WorkerId,
    ) -> QueryResult<bool> {
        task_history::table
            .filter(task_history::id.eq(*id.as_uuid()))
            .filter(task_history::status.eq(TaskStatus::Running.as_str()))
            .filter(task_history::worker_id.eq(*worker.as_uuid()))
            .select(task_history::id)
            .for_share()
            .first::<Uuid>(connection)
            .optional()
            .map(|row| row.is_some())
    }

    fn insert_session(connection: &mut PgConnection, session: &NewSession) -> QueryResult<usize> {
        diesel::insert_into(claude_sdk_sessions::table)
            .values(SessionRow {
                session_id: session.session_id.as_str().to_owned(),
                task_id: *session.task_id.as_uuid(),
                repo: session.repo.clone(),
                issue_number: i64::from(session.issue_number),
                agent: session.agent.clone(),
                created_at: truncate_to_micros(session.created_at),
                invalidated_at: None,
                invalidation_reason: None,
            })
            .execute(connection)
    }

    fn newest_valid_session(
        connection: &mut PgConnection,
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
        connection: &mut PgConnection,
    ) -> Result<Vec<SessionRecord>, StorageError> {
        sessions_newest_first_of(connection, None)
    }

    fn sessions_of_task(
        connection: &mut PgConnection,
        task: TaskId,
    ) -> Result<Vec<SessionRecord>, StorageError> {
        sessions_newest_first_of(connection, Some(task))
    }

    fn task_rows(
        connection: &mut PgConnection,
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
    connection: &mut PgConnection,
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
        query = query.filter(claude_sdk_sessions::task_id.eq(*task.as_uuid()));
    }
    query
        .load(connection)
        .map_err(map_error)?
        .into_iter()
        .map(SessionRow::into_record)
        .collect()
}
