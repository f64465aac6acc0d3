//! The MySQL statements behind the shared `Storage` flows
//! (`crate::store`): ids as text, times as UTC `DATETIME(6)`, pooled
//! connections, share locks (`LOCK IN SHARE MODE`, the spelling both
//! MariaDB and MySQL accept) where a sweep must wait. The statements every
//! dialect writes alike are `crate::statements`'.

use diesel::mysql::Mysql;
use diesel::prelude::*;
use diesel::sql_types::Text;
use tasktrail_core::{StorageError, TaskId, Timestamp, WorkerId};

use super::connection::Pooled;
use super::rows::{stored_id, stored_time, SessionRow, TaskRow, WorkerRow};
use super::schema::{claude_sdk_sessions, recovery_reports, task_history, workers};
use super::{map_error, MysqlConnection, MysqlStorage};
use crate::store::{SqlDialect, TextQuery, WorkerRead};
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

/// The start and the completed finish. diesel-async sends every statement
/// with bind parameters as a server-side prepared statement, kept per
/// connection by its statement cache.
mod prepared {
    use diesel::prelude::*;
    use diesel::sql_types::{BigInt, Datetime, Text};
    use tasktrail_core::backend::{FinishRow, NewRunningRow};
    use tasktrail_core::{RunReport, TaskStatus};

    use super::super::rows::stored_time;
    use super::super::schema::task_history;
    use super::super::MysqlConnection;
    use crate::codec::encode_artifacts;

    /// One statement: the INSERT reads the worker's row `LOCK IN SHARE
    /// MODE` (a concurrent sweep cannot declare it dead in between; under
    /// `READ COMMITTED` an `INSERT … SELECT` would otherwise read it without
    /// a lock) and writes nothing unless it is `alive`.
    pub(super) fn insert_running_if_worker_alive(
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

    /// With the found-rows flag, the count is the rows the guard matched:
    /// 1 when the finish landed, 0 when it was refused.
    pub(super) fn finish_completed_if_owned_and_running(
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
}

impl SqlDialect for MysqlStorage {
    type Backend = Mysql;
    type Connection = MysqlConnection;
    type Held<'a> = Pooled;

    fn hold(&self) -> Result<Pooled, StorageError> {
        self.pooled()
    }

    /// Releases the worker's named lock on the liveness session.
    fn release_worker_lock(&self, worker: WorkerId) {
        self.liveness.release::<Self>(worker);
    }

    fn write_transaction<T>(
        connection: &mut MysqlConnection,
        body: impl FnOnce(&mut MysqlConnection) -> Result<T, TxError>,
    ) -> Result<T, StorageError> {
        connection
            .transaction(body)
            .map_err(TxError::into_storage::<Mysql>)
    }

    fn bind_time<'f>(query: TextQuery<'f, Mysql>, at: Timestamp) -> TextQuery<'f, Mysql> {
        query.bind::<diesel::sql_types::Datetime, _>(stored_time(at))
    }

    fn load_text<R>(
        connection: &mut MysqlConnection,
        query: TextQuery<'_, Mysql>,
    ) -> QueryResult<Vec<R>>
    where
        R: QueryableByName<Mysql> + 'static,
    {
        query.load(connection)
    }

    fn execute_text(
        connection: &mut MysqlConnection,
        query: TextQuery<'_, Mysql>,
    ) -> QueryResult<usize> {
        query.execute(connection)
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

    crate::statements::dialect_statements!();
}
