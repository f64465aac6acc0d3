//! The MySQL statements behind the shared `Storage` flows
//! (`crate::store`): ids as text, times as UTC `DATETIME(6)`, pooled
//! connections, share locks (`LOCK IN SHARE MODE`, the spelling both
//! MariaDB and MySQL accept) where a sweep must wait. The statements every
//! dialect writes alike are `crate::statements`'; the two on the hot path
//! are kept prepared ([`prepared`]).

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

mod prepared;

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
