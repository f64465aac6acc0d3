//! The Postgres statements behind the shared `Storage` flows
//! (`crate::store`): native UUIDs and times (to the microsecond), pooled
//! connections, row locks (`FOR SHARE`) where a sweep must wait.
//!
//! Every statement of this backend's shared `Storage` flows lives here
//! (their text, types and locking clauses are what the dialect forces);
//! the two on the hot path are kept prepared ([`prepared`]).

mod prepared;

use diesel::pg::{Pg, PgConnection};
use diesel::prelude::*;
use tasktrail_core::{StorageError, TaskId, TaskStatus, Timestamp, WorkerId};
use uuid::Uuid;

use crate::postgres::pool::PgPooled;
use crate::postgres::rows::{stored_id, stored_time, SessionRow, TaskRow, WorkerRow};
use crate::postgres::schema::{claude_sdk_sessions, recovery_reports, task_history, workers};
use crate::postgres::{map_error, PostgresStorage};
use crate::store::{SqlDialect, TextQuery, WorkerRead};
use crate::tx::TxError;

impl SqlDialect for PostgresStorage {
    type Backend = Pg;
    type Connection = PgConnection;
    type Held<'a> = PgPooled;

    fn hold(&self) -> Result<PgPooled, StorageError> {
        self.pooled()
    }

    /// Releases the worker's advisory lock on the liveness session.
    fn release_worker_lock(&self, worker: WorkerId) {
        if let Some(liveness) = &self.liveness {
            liveness.release::<Self>(worker);
        }
    }

    fn write_transaction<T>(
        connection: &mut PgConnection,
        body: impl FnOnce(&mut PgConnection) -> Result<T, TxError>,
    ) -> Result<T, StorageError> {
        connection
            .transaction(body)
            .map_err(TxError::into_storage::<Pg>)
    }

    fn bind_time<'f>(query: TextQuery<'f, Pg>, at: Timestamp) -> TextQuery<'f, Pg> {
        query.bind::<diesel::sql_types::Timestamptz, _>(at)
    }

    fn load_text<R>(connection: &mut PgConnection, query: TextQuery<'_, Pg>) -> QueryResult<Vec<R>>
    where
        R: QueryableByName<Pg> + 'static,
    {
        query.load(connection)
    }

    fn execute_text(connection: &mut PgConnection, query: TextQuery<'_, Pg>) -> QueryResult<usize> {
        query.execute(connection)
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

    crate::statements::dialect_statements!();
}
