//! The MySQL statements behind the shared `Storage` flows
//! (`crate::store`): ids as text, times as UTC `DATETIME(6)`, pooled
//! connections, share locks (`LOCK IN SHARE MODE`, the spelling both
//! MariaDB and MySQL accept) where a sweep must wait.

use diesel::mysql::Mysql;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Datetime, Text};
use tasktrail_core::backend::{FinishRow, NewRunningRow, NewSession};
use tasktrail_core::{
    RunReport, SessionKey, SessionRecord, StorageError, TaskFilter, TaskId, TaskRecord, TaskStatus,
    WorkerId, WorkerRecord,
};

use super::connection::Pooled;
use super::rows::{stored_time, SessionRow, TaskRow, WorkerRow};
use super::schema::{claude_sdk_sessions, task_history, workers};
use super::{map_error, MysqlConnection, MysqlStorage};
use crate::codec::encode_artifacts;
use crate::store::{SqlDialect, WorkerRead};
use crate::tx::TxError;

#[derive(QueryableByName)]
struct StateRow {
    #[diesel(sql_type = Text)]
    state: String,
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = Text)]
    #[allow(dead_code)]
    id: String,
}

impl SqlDialect for MysqlStorage {
    type Backend = Mysql;
    type Connection = MysqlConnection;
    type Held<'a> = Pooled;

    fn hold(&self) -> Result<Pooled, StorageError> {
        self.pooled()
    }

    fn write_transaction<T>(
        connection: &mut MysqlConnection,
        body: impl FnOnce(&mut MysqlConnection) -> Result<T, TxError>,
    ) -> Result<T, StorageError> {
        connection
            .transaction(body)
            .map_err(TxError::into_storage::<Mysql>)
    }

    fn worker_state(
        connection: &mut MysqlConnection,
        worker: WorkerId,
        read: WorkerRead,
    ) -> QueryResult<Option<String>> {
        let sql = match read {
            WorkerRead::ForShare => "SELECT state FROM workers WHERE id = ? LOCK IN SHARE MODE",
            WorkerRead::Plain => "SELECT state FROM workers WHERE id = ?",
        };
        diesel::sql_query(sql)
            .bind::<Text, _>(worker.to_string())
            .get_result::<StateRow>(connection)
            .optional()
            .map(|row| row.map(|row| row.state))
    }

    /// One statement: the INSERT reads the worker's row `LOCK IN SHARE
    /// MODE` (a concurrent sweep cannot declare it dead in between; under
    /// `READ COMMITTED` an `INSERT … SELECT` would otherwise read it without
    /// a lock) and writes nothing unless it is `alive`.
    fn insert_running_if_worker_alive(
        connection: &mut MysqlConnection,
        row: &NewRunningRow,
    ) -> QueryResult<usize> {
        let spec = &row.spec;
        diesel::sql_query(
            "INSERT INTO task_history \
               (id, repo, issue_number, `user`, agent, agent_type, model, provider, status, started_at, worker_id) \
             SELECT ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, workers.id FROM workers \
             WHERE workers.id = ? AND workers.state = 'alive' LOCK IN SHARE MODE",
        )
        .bind::<Text, _>(row.id.to_string())
        .bind::<Text, _>(spec.repo())
        .bind::<BigInt, _>(i64::from(spec.issue_number()))
        .bind::<Text, _>(spec.user())
        .bind::<Text, _>(spec.agent())
        .bind::<Text, _>(spec.agent_type())
        .bind::<Text, _>(spec.model())
        .bind::<Text, _>(spec.provider())
        .bind::<Datetime, _>(stored_time(row.started_at))
        .bind::<Text, _>(row.worker.to_string())
        .execute(connection)
    }

    fn workers_by_start(
        connection: &mut MysqlConnection,
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
        connection: &mut MysqlConnection,
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
        connection: &mut MysqlConnection,
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
            task_history::interrupted_at.eq(stored_time(row.at)),
            task_history::interrupt_reason.eq(reason),
            task_history::interrupted_by.eq(&worker),
        ))
        .execute(connection)
    }

    /// With the found-rows flag, the count is the rows the guard matched:
    /// 1 when the finish landed, 0 when it was refused.
    fn finish_completed_if_owned_and_running(
        connection: &mut MysqlConnection,
        row: &FinishRow,
        report: &RunReport,
    ) -> QueryResult<usize> {
        diesel::update(
            task_history::table
                .filter(task_history::id.eq(row.id.to_string()))
                .filter(task_history::status.eq(TaskStatus::Running.as_str()))
                .filter(task_history::worker_id.eq(row.worker.to_string())),
        )
        .set((
            task_history::status.eq(row.outcome.status().as_str()),
            task_history::finished_at.eq(stored_time(row.at)),
            task_history::input_tokens.eq(i64::from(report.input_tokens)),
            task_history::output_tokens.eq(i64::from(report.output_tokens)),
            task_history::cost_usd.eq(report.cost_usd.dollars()),
            task_history::turns.eq(i64::from(report.turns)),
            task_history::artifacts.eq(encode_artifacts(&report.artifacts)),
        ))
        .execute(connection)
    }

    fn invalidate_sessions_of_task(
        connection: &mut MysqlConnection,
        row: &FinishRow,
        reason: &str,
    ) -> QueryResult<usize> {
        diesel::update(
            claude_sdk_sessions::table
                .filter(claude_sdk_sessions::task_id.eq(row.id.to_string()))
                .filter(claude_sdk_sessions::invalidated_at.is_null()),
        )
        .set((
            claude_sdk_sessions::invalidated_at.eq(stored_time(row.at)),
            claude_sdk_sessions::invalidation_reason.eq(reason),
        ))
        .execute(connection)
    }

    /// Read `LOCK IN SHARE MODE`: a sweep cannot interrupt the task before
    /// the caller's transaction ends.
    fn task_is_running_under(
        connection: &mut MysqlConnection,
        id: TaskId,
        worker: WorkerId,
    ) -> QueryResult<bool> {
        diesel::sql_query(
            "SELECT id FROM task_history WHERE id = ? AND status = 'running' AND worker_id = ? \
             LOCK IN SHARE MODE",
        )
        .bind::<Text, _>(id.to_string())
        .bind::<Text, _>(worker.to_string())
        .get_result::<IdRow>(connection)
        .optional()
        .map(|row| row.is_some())
    }

    fn insert_session(
        connection: &mut MysqlConnection,
        session: &NewSession,
    ) -> QueryResult<usize> {
        diesel::insert_into(claude_sdk_sessions::table)
            .values(SessionRow {
                session_id: session.session_id.as_str().to_owned(),
                task_id: session.task_id.to_string(),
                repo: session.repo.clone(),
                issue_number: i64::from(session.issue_number),
                agent: session.agent.clone(),
                created_at: stored_time(session.created_at),
                invalidated_at: None,
                invalidation_reason: None,
            })
            .execute(connection)
    }

    fn newest_valid_session(
        connection: &mut MysqlConnection,
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
        connection: &mut MysqlConnection,
    ) -> Result<Vec<SessionRecord>, StorageError> {
        sessions_newest_first_of(connection, None)
    }

    fn sessions_of_task(
        connection: &mut MysqlConnection,
        task: TaskId,
    ) -> Result<Vec<SessionRecord>, StorageError> {
        sessions_newest_first_of(connection, Some(task))
    }

    fn task_rows(
        connection: &mut MysqlConnection,
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
        // MySQL takes an OFFSET only after a LIMIT.
        match (filter.limit, filter.offset) {
            (Some(limit), offset) => {
                query = query.limit(i64::from(limit));
                if let Some(offset) = offset {
                    query = query.offset(i64::from(offset));
                }
            }
            (None, Some(offset)) => {
                query = query.limit(i64::MAX).offset(i64::from(offset));
            }
            (None, None) => {}
        }
        Ok(query
            .load(connection)
            .map_err(map_error)?
            .into_iter()
            .map(TaskRow::into_record)
            .collect())
    }
}

/// Every session (`task` `None`) or task `task`'s, newest first.
fn sessions_newest_first_of(
    connection: &mut MysqlConnection,
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
