//! The SQLite statements behind the shared `Storage` flows
//! (`crate::store`): ids and times as text, one writer at a time
//! (`BEGIN IMMEDIATE`), no row locks.
//!
//! Every statement of this backend's shared `Storage` flows lives here
//! (their text, types and locking clauses are what the dialect forces);
//! the two on the hot path are kept prepared ([`prepared`]).

mod prepared;

use std::sync::MutexGuard;

use diesel::prelude::*;
use diesel::sqlite::{Sqlite, SqliteConnection};
use tasktrail_core::{StorageError, TaskId, TaskStatus, Timestamp, WorkerId};

use crate::sqlite::rows::{stored_id, stored_time, SessionRow, TaskRow, WorkerRow};
use crate::sqlite::schema::{claude_sdk_sessions, recovery_reports, task_history, workers};
use crate::sqlite::store::immediate;
use crate::sqlite::{map_error, SqliteStorage};
use crate::store::{SqlDialect, TextQuery, WorkerRead};
use crate::tx::TxError;

impl SqlDialect for SqliteStorage {
    type Backend = Sqlite;
    type Connection = SqliteConnection;
    type Held<'a> = MutexGuard<'a, SqliteConnection>;

    fn hold(&self) -> Result<Self::Held<'_>, StorageError> {
        Ok(self.connection())
    }

    /// Releases the worker's `flock` and removes its lock file.
    fn release_worker_lock(&self, worker: WorkerId) {
        self.drop_worker_lock(worker);
    }

    fn write_transaction<T>(
        connection: &mut SqliteConnection,
        body: impl FnOnce(&mut SqliteConnection) -> Result<T, TxError>,
    ) -> Result<T, StorageError> {
        immediate(connection, body)
    }

    fn bind_time<'f>(query: TextQuery<'f, Sqlite>, at: Timestamp) -> TextQuery<'f, Sqlite> {
        query.bind::<diesel::sql_types::Text, _>(stored_time(at))
    }

    fn load_text<R>(
        connection: &mut SqliteConnection,
        query: TextQuery<'_, Sqlite>,
    ) -> QueryResult<Vec<R>>
    where
        R: QueryableByName<Sqlite> + 'static,
    {
        query.load(connection)
    }

    fn execute_text(
        connection: &mut SqliteConnection,
        query: TextQuery<'_, Sqlite>,
    ) -> QueryResult<usize> {
        query.execute(connection)
    }

    /// The write transaction holds the database's only write lock, so a
    /// plain read already keeps the row from changing under the caller.
    fn worker_state(
        connection: &mut SqliteConnection,
        worker: WorkerId,
        _read: WorkerRead,
    ) -> QueryResult<Option<String>> {
        workers::table
            .find(stored_id(worker.as_uuid()))
            .select(workers::state)
            .first::<String>(connection)
            .optional()
    }

    fn task_is_running_under(
        connection: &mut SqliteConnection,
        id: TaskId,
        worker: WorkerId,
    ) -> QueryResult<bool> {
        task_history::table
            .filter(task_history::id.eq(stored_id(id.as_uuid())))
            .filter(task_history::status.eq(TaskStatus::Running.as_str()))
            .filter(task_history::worker_id.eq(stored_id(worker.as_uuid())))
            .count()
            .get_result::<i64>(connection)
            .map(|count| count == 1)
    }

    crate::statements::dialect_statements!();
}
