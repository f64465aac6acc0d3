//! What the SQL backends' `Storage` methods share: the flow of each
//! method (which statement first, what a refusal means, which errors are
//! domain answers), written once. Each backend implements [`SqlDialect`]:
//! its connection, its write transaction and its statements (their text,
//! types and locking clauses: what the dialect forces), and calls these
//! functions from its `impl Storage` (`shared_storage_methods!`).
//!
//! # What a backend supplies
//!
//! A new SQL backend (a Diesel connection, `diesel-async`'s
//! `AsyncConnectionWrapper` included) plugs in with its `schema.rs`, its
//! `rows.rs` (the row types, `stored_id`, `stored_time`), its error table
//! ([`ErrorDialect`] on Diesel's backend type) and its `statements/`:
//! `impl SqlDialect` (written by hand: `hold`, `release_worker_lock`,
//! `write_transaction`, `bind_time`, `load_text`, `execute_text`, and the
//! statements whose locking is its own, `worker_state` and
//! `task_is_running_under`; `crate::statements`'s `dialect_statements!`
//! for the rest), `impl PruneTarget`
//! (`prune_statements!`), `impl OverviewStatements` and
//! `impl StatsStatements` (statement texts, the rows they return), and its
//! adoption checks (`crate::adopt::AdoptDialect`). Every flow over those
//! is in this crate's shared modules: `store`, `prune`, `overview`,
//! `stats`, `adopt`, `compat`, `tx`.
//!
//! The recovery sweep, the report claim and worker registration stay in
//! each backend (`sqlite/sweep.rs`, `postgres/sweep.rs`): their locking
//! differs in kind (SQLite's one writer and flock files, Postgres's row
//! locks and advisory locks); the decisions in them are core's
//! (`OwnerRecovery`, `ReportClaim::reports_of`).
#![cfg_attr(
    not(any(feature = "sqlite", feature = "postgres", feature = "mysql")),
    allow(dead_code)
)]

use std::ops::DerefMut;

use diesel::query_builder::{BoxedSqlQuery, SqlQuery};
use diesel::{QueryResult, QueryableByName};
use tasktrail_core::backend::{
    interrupted_session_reason, FinishRefusal, FinishRow, FinishWrite, NewRunningRow, NewSession,
};
use tasktrail_core::{
    Outcome, RunReport, SessionKey, SessionRecord, StorageError, TaskFilter, TaskId, TaskRecord,
    TaskStatus, Timestamp, WorkerId, WorkerRecord, WorkerState,
};

use crate::tx::{unique_violation_or, ErrorDialect, TxError};

/// How a statement reads a `workers` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WorkerRead {
    /// A plain read.
    Plain,
    /// Kept from changing until the caller's transaction ends (Postgres:
    /// `FOR SHARE`, so a sweep cannot declare the worker dead in between;
    /// SQLite's write transaction already holds the only write lock).
    ForShare,
}

/// A statement written as SQL text (`diesel::sql_query`), boxed so that
/// shared code can bind its parameters one by one.
pub(crate) type TextQuery<'f, DB> = BoxedSqlQuery<'f, DB, SqlQuery>;

/// One SQL backend's connection, transaction and statements.
pub(crate) trait SqlDialect {
    /// Diesel's backend type: its [`ErrorDialect`] classifies errors.
    type Backend: ErrorDialect + diesel::backend::Backend;
    /// The connection statements run on.
    type Connection;
    /// A connection held for one call (a mutex guard, a pooled connection).
    type Held<'a>: DerefMut<Target = Self::Connection>
    where
        Self: 'a;

    /// A connection for one call.
    fn hold(&self) -> Result<Self::Held<'_>, StorageError>;

    /// Lets go of the liveness lock this store holds for `worker`, once it
    /// deregistered (best effort: a lock whose holder is gone is free).
    fn release_worker_lock(&self, worker: WorkerId);

    /// Runs `body` in this dialect's write transaction (SQLite: `BEGIN
    /// IMMEDIATE`; Postgres: `BEGIN`, row locks taken by the statements).
    fn write_transaction<T>(
        connection: &mut Self::Connection,
        body: impl FnOnce(&mut Self::Connection) -> Result<T, TxError>,
    ) -> Result<T, StorageError>;

    /// Binds `at` to `query` as this dialect stores a time (the type of its
    /// time columns).
    fn bind_time<'f>(
        query: TextQuery<'f, Self::Backend>,
        at: Timestamp,
    ) -> TextQuery<'f, Self::Backend>;

    /// Runs a statement written as SQL text and reads its rows by name.
    fn load_text<R>(
        connection: &mut Self::Connection,
        query: TextQuery<'_, Self::Backend>,
    ) -> QueryResult<Vec<R>>
    where
        R: QueryableByName<Self::Backend> + 'static;

    // Only adoption (SQLite, Postgres) runs such a statement.
    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
    /// Runs a statement written as SQL text that returns no rows: how many
    /// it changed.
    fn execute_text(
        connection: &mut Self::Connection,
        query: TextQuery<'_, Self::Backend>,
    ) -> QueryResult<usize>;

    /// `workers.state` of `worker`, if it has a row.
    fn worker_state(
        connection: &mut Self::Connection,
        worker: WorkerId,
        read: WorkerRead,
    ) -> QueryResult<Option<String>>;

    /// The start (the prepared statement): `INSERT … SELECT … FROM workers
    /// WHERE id AND state = 'alive'`; how many rows it wrote.
    fn insert_running_if_worker_alive(
        connection: &mut Self::Connection,
        row: &NewRunningRow,
    ) -> QueryResult<usize>;

    /// `UPDATE workers SET state = 'stopped', stopped_at WHERE id AND state
    /// = 'alive'`: how many rows it changed.
    fn mark_stopped_if_alive(
        connection: &mut Self::Connection,
        worker: WorkerId,
        at: Timestamp,
    ) -> QueryResult<usize>;

    /// `UPDATE recovery_reports SET reported_at WHERE task_id IN (tasks) AND
    /// owed_by = reporter AND reported_at IS NULL`: how many it confirmed.
    fn confirm_reports_of(
        connection: &mut Self::Connection,
        reporter: WorkerId,
        tasks: &[TaskId],
        at: Timestamp,
    ) -> QueryResult<usize>;

    /// Every `workers` row, oldest registration first.
    fn workers_by_start(
        connection: &mut Self::Connection,
    ) -> Result<Vec<WorkerRecord>, StorageError>;

    /// The row of task `id`, decoded.
    fn load_task(
        connection: &mut Self::Connection,
        id: TaskId,
    ) -> Result<Option<TaskRecord>, TxError>;

    /// `UPDATE task_history SET status = 'interrupted', interrupted_at,
    /// interrupt_reason, interrupted_by WHERE id AND status = 'running' AND
    /// worker_id`: how many rows it changed.
    fn interrupt_if_owned_and_running(
        connection: &mut Self::Connection,
        row: &FinishRow,
        reason: &str,
    ) -> QueryResult<usize>;

    /// The completed finish (the prepared statement): the same guard, the
    /// report's columns.
    fn finish_completed_if_owned_and_running(
        connection: &mut Self::Connection,
        row: &FinishRow,
        report: &RunReport,
    ) -> QueryResult<usize>;

    /// Invalidates task `id`'s still-valid sessions; how many it had.
    fn invalidate_sessions_of_task(
        connection: &mut Self::Connection,
        row: &FinishRow,
        reason: &str,
    ) -> QueryResult<usize>;

    /// Whether task `id` is `running` under `worker` (Postgres reads it
    /// `FOR SHARE`).
    fn task_is_running_under(
        connection: &mut Self::Connection,
        id: TaskId,
        worker: WorkerId,
    ) -> QueryResult<bool>;

    /// `INSERT INTO claude_sdk_sessions`, valid.
    fn insert_session(
        connection: &mut Self::Connection,
        session: &NewSession,
    ) -> QueryResult<usize>;

    /// The newest still-valid session for `key` whose task is in one of
    /// `statuses`.
    fn newest_valid_session(
        connection: &mut Self::Connection,
        key: &SessionKey,
        statuses: &[&'static str],
    ) -> Result<Option<SessionRecord>, StorageError>;

    /// Every session (`task` `None`) or task `task`'s (through the
    /// `task_id` index), newest first.
    fn sessions_newest_first_of(
        connection: &mut Self::Connection,
        task: Option<TaskId>,
    ) -> Result<Vec<SessionRecord>, StorageError>;

    /// The `task_history` rows matching `filter`, newest first, each
    /// decoded on its own.
    fn task_rows(
        connection: &mut Self::Connection,
        filter: &TaskFilter,
    ) -> Result<Vec<Result<TaskRecord, StorageError>>, StorageError>;
}

/// A Diesel error through the dialect's table.
pub(crate) fn map<S: SqlDialect>(error: diesel::result::Error) -> StorageError {
    <S::Backend as ErrorDialect>::map_error(error)
}

/// Fails unless `worker` is registered and `alive` (read as `read`).
pub(crate) fn require_alive<S: SqlDialect>(
    connection: &mut S::Connection,
    worker: WorkerId,
    read: WorkerRead,
) -> Result<(), TxError> {
    match S::worker_state(connection, worker, read)? {
        None => Err(StorageError::UnknownWorker { id: worker }.into()),
        Some(state) if state == WorkerState::Alive.as_str() => Ok(()),
        Some(_) => Err(StorageError::WorkerNotAlive { id: worker }.into()),
    }
}

/// Why a write fenced on `worker` being alive changed nothing: the worker
/// is unknown, or not alive.
pub(crate) fn worker_refusal<S: SqlDialect>(
    connection: &mut S::Connection,
    worker: WorkerId,
) -> StorageError {
    match S::worker_state(connection, worker, WorkerRead::Plain) {
        Ok(None) => StorageError::UnknownWorker { id: worker },
        Ok(Some(_)) => StorageError::WorkerNotAlive { id: worker },
        Err(error) => map::<S>(error),
    }
}

/// `Storage::deregister_worker`: in one write transaction, an unknown
/// worker is [`StorageError::UnknownWorker`]; an `alive` one becomes
/// `stopped` at `at`; one already `stopped` or `dead` stays as it is. Then
/// the worker's liveness lock is let go.
pub(crate) fn deregister_worker<S: SqlDialect>(
    store: &S,
    worker: WorkerId,
    at: Timestamp,
) -> Result<(), StorageError> {
    S::write_transaction(&mut *store.hold()?, |connection| {
        if S::worker_state(connection, worker, WorkerRead::Plain)?.is_none() {
            return Err(StorageError::UnknownWorker { id: worker }.into());
        }
        S::mark_stopped_if_alive(connection, worker, at)?;
        Ok(())
    })?;
    store.release_worker_lock(worker);
    Ok(())
}

/// `Storage::confirm_reports`: the reports `reporter` owes for `tasks`,
/// confirmed at `at`, in one write transaction; 500 tasks a statement (a
/// statement's bind parameters are bounded: SQLite's limit).
pub(crate) fn confirm_reports<S: SqlDialect>(
    store: &S,
    reporter: WorkerId,
    tasks: &[TaskId],
    at: Timestamp,
) -> Result<u64, StorageError> {
    S::write_transaction(&mut *store.hold()?, |connection| {
        let mut confirmed = 0;
        for chunk in tasks.chunks(500) {
            confirmed += S::confirm_reports_of(connection, reporter, chunk, at)? as u64;
        }
        Ok(confirmed)
    })
}

/// `Storage::insert_running`: one statement, no transaction; a duplicate
/// id is [`StorageError::DuplicateTask`]; an INSERT that matched no alive
/// worker says why.
pub(crate) fn insert_running<S: SqlDialect>(
    store: &S,
    row: &NewRunningRow,
) -> Result<(), StorageError> {
    let mut connection = store.hold()?;
    match S::insert_running_if_worker_alive(&mut connection, row) {
        Ok(1) => Ok(()),
        Ok(_) => Err(worker_refusal::<S>(&mut connection, row.worker)),
        Err(error) => Err(unique_violation_or::<S::Backend>(
            error,
            StorageError::DuplicateTask { id: row.id },
        )),
    }
}

/// `Storage::finish_running`: one guarded UPDATE; an interrupted finish
/// invalidates the task's sessions in the same transaction; an UPDATE that
/// matched nothing reports what the row is.
pub(crate) fn finish_running<S: SqlDialect>(
    store: &S,
    row: &FinishRow,
) -> Result<FinishWrite, StorageError> {
    let finish = |connection: &mut S::Connection| -> Result<FinishWrite, TxError> {
        let mut sessions_invalidated = 0;
        let updated = match &row.outcome {
            Outcome::Interrupted(reason) => {
                let updated = S::interrupt_if_owned_and_running(connection, row, reason.as_str())?;
                if updated == 1 {
                    let reason = interrupted_session_reason(reason.as_str());
                    let count = S::invalidate_sessions_of_task(connection, row, &reason)?;
                    sessions_invalidated = u32::try_from(count).unwrap_or(u32::MAX);
                }
                updated
            }
            Outcome::Success(report)
            | Outcome::Failure(report)
            | Outcome::Cancelled(report)
            | Outcome::AbortedNoSkill(report) => {
                S::finish_completed_if_owned_and_running(connection, row, report)?
            }
        };
        if updated == 1 {
            return Ok(FinishWrite::Updated {
                sessions_invalidated,
            });
        }
        Ok(FinishWrite::Refused(
            match S::load_task(connection, row.id)? {
                None => FinishRefusal::Missing,
                Some(record) => record.refusal_for(row.worker),
            },
        ))
    };
    let mut connection = store.hold()?;
    match row.outcome {
        // The UPDATE and the sessions' invalidation commit together.
        Outcome::Interrupted(_) => S::write_transaction(&mut connection, finish),
        // A single guarded UPDATE commits on its own: one round trip.
        _ => finish(&mut connection).map_err(TxError::into_storage::<S::Backend>),
    }
}

/// `Storage::record_session`: one write transaction; the worker must be
/// `alive` and the task `running` under it, then the INSERT (a second
/// INSERT of one session id is [`StorageError::DuplicateSession`]).
pub(crate) fn record_session<S: SqlDialect>(
    store: &S,
    session: &NewSession,
) -> Result<(), StorageError> {
    S::write_transaction(&mut *store.hold()?, |connection| {
        require_alive::<S>(connection, session.worker, WorkerRead::ForShare)?;
        if !S::task_is_running_under(connection, session.task_id, session.worker)? {
            return Err(StorageError::TaskNotRunning {
                id: session.task_id,
            }
            .into());
        }
        match S::insert_session(connection, session) {
            Ok(_) => Ok(()),
            Err(error) if crate::tx::is_unique_violation(&error) => {
                Err(StorageError::DuplicateSession.into())
            }
            Err(error) => Err(error.into()),
        }
    })
}

/// `Storage::resumable_session`: the newest valid session for `key` whose
/// task may be resumed ([`TaskStatus::RESUMABLE`]).
pub(crate) fn resumable_session<S: SqlDialect>(
    store: &S,
    key: &SessionKey,
) -> Result<Option<SessionRecord>, StorageError> {
    let statuses = TaskStatus::RESUMABLE.map(TaskStatus::as_str);
    S::newest_valid_session(&mut *store.hold()?, key, &statuses)
}

/// `Storage::list_workers`.
pub(crate) fn list_workers<S: SqlDialect>(store: &S) -> Result<Vec<WorkerRecord>, StorageError> {
    S::workers_by_start(&mut *store.hold()?)
}

/// `Storage::list_sessions`.
pub(crate) fn list_sessions<S: SqlDialect>(store: &S) -> Result<Vec<SessionRecord>, StorageError> {
    S::sessions_newest_first_of(&mut *store.hold()?, None)
}

/// `Storage::list_task_sessions`.
pub(crate) fn list_task_sessions<S: SqlDialect>(
    store: &S,
    task: TaskId,
) -> Result<Vec<SessionRecord>, StorageError> {
    S::sessions_newest_first_of(&mut *store.hold()?, Some(task))
}

/// `Storage::get_task`.
pub(crate) fn get_task<S: SqlDialect>(
    store: &S,
    id: TaskId,
) -> Result<Option<TaskRecord>, StorageError> {
    S::load_task(&mut *store.hold()?, id).map_err(TxError::into_storage::<S::Backend>)
}

/// `Storage::list_tasks`: every matching row, or the first that cannot be
/// read.
pub(crate) fn list_tasks<S: SqlDialect>(
    store: &S,
    filter: &TaskFilter,
) -> Result<Vec<TaskRecord>, StorageError> {
    S::task_rows(&mut *store.hold()?, filter)?
        .into_iter()
        .collect()
}

/// `Storage::list_task_rows`: every matching row, each read on its own.
pub(crate) fn list_task_rows<S: SqlDialect>(
    store: &S,
    filter: &TaskFilter,
) -> Result<Vec<Result<TaskRecord, StorageError>>, StorageError> {
    S::task_rows(&mut *store.hold()?, filter)
}

/// The `Storage` methods whose whole flow is shared, for a backend's
/// `impl Storage` to expand once (each calls the function of this module
/// with its name).
macro_rules! shared_storage_methods {
    () => {
        fn list_workers(
            &self,
        ) -> Result<Vec<tasktrail_core::WorkerRecord>, tasktrail_core::StorageError> {
            $crate::store::list_workers(self)
        }

        fn deregister_worker(
            &self,
            worker: tasktrail_core::WorkerId,
            at: tasktrail_core::Timestamp,
        ) -> Result<(), tasktrail_core::StorageError> {
            $crate::store::deregister_worker(self, worker, at)
        }

        fn confirm_reports(
            &self,
            reporter: tasktrail_core::WorkerId,
            tasks: &[tasktrail_core::TaskId],
            at: tasktrail_core::Timestamp,
        ) -> Result<u64, tasktrail_core::StorageError> {
            $crate::store::confirm_reports(self, reporter, tasks, at)
        }

        fn insert_running(
            &self,
            row: &tasktrail_core::backend::NewRunningRow,
        ) -> Result<(), tasktrail_core::StorageError> {
            $crate::store::insert_running(self, row)
        }

        fn finish_running(
            &self,
            row: &tasktrail_core::backend::FinishRow,
        ) -> Result<tasktrail_core::backend::FinishWrite, tasktrail_core::StorageError> {
            $crate::store::finish_running(self, row)
        }

        fn record_session(
            &self,
            session: &tasktrail_core::backend::NewSession,
        ) -> Result<(), tasktrail_core::StorageError> {
            $crate::store::record_session(self, session)
        }

        fn resumable_session(
            &self,
            key: &tasktrail_core::SessionKey,
        ) -> Result<Option<tasktrail_core::SessionRecord>, tasktrail_core::StorageError> {
            $crate::store::resumable_session(self, key)
        }

        fn list_sessions(
            &self,
        ) -> Result<Vec<tasktrail_core::SessionRecord>, tasktrail_core::StorageError> {
            $crate::store::list_sessions(self)
        }

        fn list_task_sessions(
            &self,
            task: tasktrail_core::TaskId,
        ) -> Result<Vec<tasktrail_core::SessionRecord>, tasktrail_core::StorageError> {
            $crate::store::list_task_sessions(self, task)
        }

        fn count_tasks_by_status(
            &self,
            repo: Option<&str>,
        ) -> Result<Vec<(tasktrail_core::TaskStatus, u64)>, tasktrail_core::StorageError> {
            $crate::overview::count_tasks_by_status(self, repo)
        }

        fn count_outcomes_by_hour(
            &self,
            since: tasktrail_core::Timestamp,
        ) -> Result<Vec<tasktrail_core::OutcomeBucket>, tasktrail_core::StorageError> {
            $crate::overview::count_outcomes_by_hour(self, since)
        }

        fn get_task(
            &self,
            id: tasktrail_core::TaskId,
        ) -> Result<Option<tasktrail_core::TaskRecord>, tasktrail_core::StorageError> {
            $crate::store::get_task(self, id)
        }

        fn list_tasks(
            &self,
            filter: &tasktrail_core::TaskFilter,
        ) -> Result<Vec<tasktrail_core::TaskRecord>, tasktrail_core::StorageError> {
            $crate::store::list_tasks(self, filter)
        }

        fn list_task_rows(
            &self,
            filter: &tasktrail_core::TaskFilter,
        ) -> Result<
            Vec<Result<tasktrail_core::TaskRecord, tasktrail_core::StorageError>>,
            tasktrail_core::StorageError,
        > {
            $crate::store::list_task_rows(self, filter)
        }
    };
}
pub(crate) use shared_storage_methods;

/// The public constructors and accessors of a server store (Postgres,
/// MySQL) that opens with a URL and options of type `$options`, written
/// once over its `open_unmigrated`, `migrate` and
/// `refuse_pending_migrations`, its `SqlDialect` connection and its
/// `statement_log` and `shown_url` fields.
#[cfg(any(feature = "postgres", feature = "mysql"))]
macro_rules! server_store_methods {
    ($options:ty, $connection:ty, $url_form:literal) => {
        #[doc = concat!("Connects to the database at `url` (`", $url_form, "`) with default")]
        /// options and applies pending migrations.
        pub fn open(url: &str) -> Result<Self, tasktrail_core::StorageError> {
            Self::open_with(url, <$options>::default())
        }

        /// Connects and applies pending migrations.
        ///
        /// Fails with [`StorageError::Unavailable`](tasktrail_core::StorageError::Unavailable)
        /// when the server cannot be reached, and with
        /// [`StorageError::AccessDenied`](tasktrail_core::StorageError::AccessDenied)
        /// when it refuses the login or has no such database; refuses
        /// ([`StorageError::Incompatible`](tasktrail_core::StorageError::Incompatible))
        /// a database whose schema holds tables but is not a tasktrail one,
        /// and one migrated by a newer tasktrail. No error text ever
        /// contains the URL's password.
        pub fn open_with(
            url: &str,
            options: $options,
        ) -> Result<Self, tasktrail_core::StorageError> {
            let store = Self::open_unmigrated(url, &options)?;
            store.migrate()?;
            Ok(store)
        }

        /// Connects for reading only (the operator's `list`, `show`,
        /// `sessions`, `recover --dry-run`): never migrates and runs no DDL,
        /// so a role that may only SELECT can use it. A database that needs
        /// a migration is refused
        /// ([`StorageError::Incompatible`](tasktrail_core::StorageError::Incompatible),
        /// naming the migrations): `tasktrail migrate` first.
        pub fn open_read_only(
            url: &str,
            options: &$options,
        ) -> Result<Self, tasktrail_core::StorageError> {
            let store = Self::open_unmigrated(url, options)?;
            store.refuse_pending_migrations()?;
            Ok(store)
        }

        /// Runs `f` with a pooled Diesel connection (tests, benchmarks, and
        /// operators' one-off repairs). Fails only if no connection can be
        /// had.
        pub fn with_connection<T>(
            &self,
            f: impl FnOnce(&mut $connection) -> T,
        ) -> Result<T, tasktrail_core::StorageError> {
            let mut connection = $crate::store::SqlDialect::hold(self)?;
            Ok(f(&mut connection))
        }

        /// The statement log this store was opened with.
        pub fn statement_log(&self) -> Option<&$crate::statement_log::StatementLog> {
            self.statement_log.as_ref()
        }

        /// The URL this store connects to, with its password replaced by
        /// `***`.
        pub fn redacted_url(&self) -> &str {
            &self.shown_url
        }
    };
}
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) use server_store_methods;
