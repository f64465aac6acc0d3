//! The Diesel query-builder statements every SQL backend writes the same
//! way but for the schema it names, written once as macros that each
//! backend expands with its own `schema` and `rows` in scope.
//!
//! Diesel's tables are types of one schema module (`sqlite::schema`,
//! `postgres::schema`), so a statement over them cannot be one generic
//! function; a `macro_rules!` body resolves its names where it is
//! expanded, so it can be written once. What differs between dialects
//! (locking clauses, `RETURNING`, the prepared statements' types, the write
//! transaction) stays in each backend's `statements/`.
//!
//! # What a backend has in scope where it expands these macros
//!
//! - `diesel::prelude::*`;
//! - the schema modules `task_history`, `claude_sdk_sessions`, `workers`
//!   and `recovery_reports` (its `schema.rs`);
//! - the row types `TaskRow`, `SessionRow`, `WorkerRow` (its `rows.rs`):
//!   `Selectable` for the backend, `TaskRow::stored_id(&self)`, each with
//!   `into_record(self) -> Result<_, StorageError>`; `SessionRow` also
//!   `Insertable` with public fields;
//! - `stored_id(&Uuid)`: an id as its columns hold it (text, `uuid`...);
//! - `stored_time(Timestamp)`: a time as its columns hold it;
//! - `map_error(diesel::result::Error) -> StorageError`: its error table;
//! - (for [`dialect_statements!`]) a module `prepared` with the two
//!   statements kept prepared, `insert_running_if_worker_alive(connection,
//!   &NewRunningRow)` and `finish_completed_if_owned_and_running(connection,
//!   &FinishRow, &RunReport)`, each returning `QueryResult<usize>`.
//!
//! [`dialect_statements!`] goes inside the backend's `impl SqlDialect`
//! (`crate::store`), [`prune_statements!`] inside its `impl PruneTarget`
//! (`crate::prune`).
#![cfg_attr(
    not(any(feature = "sqlite", feature = "postgres", feature = "mysql")),
    allow(unused_macros)
)]

/// The [`SqlDialect`](crate::store::SqlDialect) statements that are the
/// same in every dialect but for the schema they name (see the module
/// documentation for what must be in scope).
macro_rules! dialect_statements {
    () => {
        fn insert_running_if_worker_alive(
            connection: &mut Self::Connection,
            row: &tasktrail_core::backend::NewRunningRow,
        ) -> diesel::QueryResult<usize> {
            prepared::insert_running_if_worker_alive(connection, row)
        }

        fn finish_completed_if_owned_and_running(
            connection: &mut Self::Connection,
            row: &tasktrail_core::backend::FinishRow,
            report: &tasktrail_core::RunReport,
        ) -> diesel::QueryResult<usize> {
            prepared::finish_completed_if_owned_and_running(connection, row, report)
        }

        fn workers_by_start(
            connection: &mut Self::Connection,
        ) -> Result<Vec<tasktrail_core::WorkerRecord>, tasktrail_core::StorageError> {
            workers::table
                .order((workers::started_at, workers::id))
                .select(WorkerRow::as_select())
                .load(connection)
                .map_err(map_error)?
                .into_iter()
                .map(WorkerRow::into_record)
                .collect()
        }

        fn mark_stopped_if_alive(
            connection: &mut Self::Connection,
            worker: tasktrail_core::WorkerId,
            at: tasktrail_core::Timestamp,
        ) -> diesel::QueryResult<usize> {
            diesel::update(
                workers::table
                    .find(stored_id(worker.as_uuid()))
                    .filter(workers::state.eq(tasktrail_core::WorkerState::Alive.as_str())),
            )
            .set((
                workers::state.eq(tasktrail_core::WorkerState::Stopped.as_str()),
                workers::stopped_at.eq(stored_time(at)),
            ))
            .execute(connection)
        }

        fn confirm_reports_of(
            connection: &mut Self::Connection,
            reporter: tasktrail_core::WorkerId,
            tasks: &[tasktrail_core::TaskId],
            at: tasktrail_core::Timestamp,
        ) -> diesel::QueryResult<usize> {
            let ids: Vec<_> = tasks.iter().map(|id| stored_id(id.as_uuid())).collect();
            diesel::update(
                recovery_reports::table
                    .filter(recovery_reports::task_id.eq_any(&ids))
                    .filter(recovery_reports::owed_by.eq(stored_id(reporter.as_uuid())))
                    .filter(recovery_reports::reported_at.is_null()),
            )
            .set(recovery_reports::reported_at.eq(stored_time(at)))
            .execute(connection)
        }

        fn load_task(
            connection: &mut Self::Connection,
            id: tasktrail_core::TaskId,
        ) -> Result<Option<tasktrail_core::TaskRecord>, $crate::tx::TxError> {
            task_history::table
                .find(stored_id(id.as_uuid()))
                .select(TaskRow::as_select())
                .first(connection)
                .optional()?
                .map(TaskRow::into_record)
                .transpose()
                .map_err($crate::tx::TxError::from)
        }

        fn interrupt_if_owned_and_running(
            connection: &mut Self::Connection,
            row: &tasktrail_core::backend::FinishRow,
            reason: &str,
        ) -> diesel::QueryResult<usize> {
            let worker = stored_id(row.worker.as_uuid());
            diesel::update(
                task_history::table
                    .filter(task_history::id.eq(stored_id(row.id.as_uuid())))
                    .filter(task_history::status.eq(tasktrail_core::TaskStatus::Running.as_str()))
                    .filter(task_history::worker_id.eq(&worker)),
            )
            .set((
                task_history::status.eq(tasktrail_core::TaskStatus::Interrupted.as_str()),
                task_history::interrupted_at.eq(stored_time(row.at)),
                task_history::interrupt_reason.eq(reason),
                task_history::interrupted_by.eq(&worker),
            ))
            .execute(connection)
        }

        fn invalidate_sessions_of_task(
            connection: &mut Self::Connection,
            row: &tasktrail_core::backend::FinishRow,
            reason: &str,
        ) -> diesel::QueryResult<usize> {
            diesel::update(
                claude_sdk_sessions::table
                    .filter(claude_sdk_sessions::task_id.eq(stored_id(row.id.as_uuid())))
                    .filter(claude_sdk_sessions::invalidated_at.is_null()),
            )
            .set((
                claude_sdk_sessions::invalidated_at.eq(stored_time(row.at)),
                claude_sdk_sessions::invalidation_reason.eq(reason),
            ))
            .execute(connection)
        }

        fn insert_session(
            connection: &mut Self::Connection,
            session: &tasktrail_core::backend::NewSession,
        ) -> diesel::QueryResult<usize> {
            diesel::insert_into(claude_sdk_sessions::table)
                .values(SessionRow {
                    session_id: session.session_id.as_str().to_owned(),
                    task_id: stored_id(session.task_id.as_uuid()),
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
            connection: &mut Self::Connection,
            key: &tasktrail_core::SessionKey,
            statuses: &[&'static str],
        ) -> Result<Option<tasktrail_core::SessionRecord>, tasktrail_core::StorageError> {
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

        fn sessions_newest_first_of(
            connection: &mut Self::Connection,
            task: Option<tasktrail_core::TaskId>,
        ) -> Result<Vec<tasktrail_core::SessionRecord>, tasktrail_core::StorageError> {
            let mut query = claude_sdk_sessions::table
                .order((
                    claude_sdk_sessions::created_at.desc(),
                    claude_sdk_sessions::session_id.desc(),
                ))
                .select(SessionRow::as_select())
                .into_boxed();
            if let Some(task) = task {
                query = query.filter(claude_sdk_sessions::task_id.eq(stored_id(task.as_uuid())));
            }
            query
                .load(connection)
                .map_err(map_error)?
                .into_iter()
                .map(SessionRow::into_record)
                .collect()
        }

        fn task_rows(
            connection: &mut Self::Connection,
            filter: &tasktrail_core::TaskFilter,
        ) -> Result<
            Vec<Result<tasktrail_core::TaskRecord, tasktrail_core::StorageError>>,
            tasktrail_core::StorageError,
        > {
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
    };
}
pub(crate) use dialect_statements;

/// The [`PruneTarget`](crate::prune::PruneTarget) statements, for a
/// backend that is also a [`SqlDialect`](crate::store::SqlDialect) (its
/// connection and its write transaction); `Self::Id` is the type
/// `stored_id` returns.
macro_rules! prune_statements {
    () => {
        fn rows_after(
            &self,
            after: Option<&Self::Id>,
            limit: u32,
        ) -> Result<$crate::prune::RowBatch<Self::Id>, tasktrail_core::StorageError> {
            let mut query = task_history::table
                .select(TaskRow::as_select())
                .order(task_history::id.asc())
                .limit(i64::from(limit))
                .into_boxed();
            if let Some(after) = after {
                query = query.filter(task_history::id.gt(after.to_owned()));
            }
            Ok(query
                .load::<TaskRow>(&mut *$crate::store::SqlDialect::hold(self)?)
                .map_err(map_error)?
                .into_iter()
                .map(|row| (row.stored_id(), row.into_record().ok()))
                .collect())
        }

        fn owed_reports(
            &self,
            tasks: &[Self::Id],
        ) -> Result<Vec<Self::Id>, tasktrail_core::StorageError> {
            recovery_reports::table
                .filter(recovery_reports::task_id.eq_any(tasks))
                .filter(recovery_reports::reported_at.is_null())
                .select(recovery_reports::task_id)
                .load(&mut *$crate::store::SqlDialect::hold(self)?)
                .map_err(map_error)
        }

        fn count_sessions(&self, tasks: &[Self::Id]) -> Result<u64, tasktrail_core::StorageError> {
            claude_sdk_sessions::table
                .filter(claude_sdk_sessions::task_id.eq_any(tasks))
                .count()
                .get_result::<i64>(&mut *$crate::store::SqlDialect::hold(self)?)
                .map(|count| count as u64)
                .map_err(map_error)
        }

        fn delete_tasks(
            &self,
            tasks: &[Self::Id],
        ) -> Result<(u64, u64), tasktrail_core::StorageError> {
            <Self as $crate::store::SqlDialect>::write_transaction(
                &mut *$crate::store::SqlDialect::hold(self)?,
                |connection| {
                    let sessions = diesel::delete(
                        claude_sdk_sessions::table
                            .filter(claude_sdk_sessions::task_id.eq_any(tasks)),
                    )
                    .execute(connection)?;
                    // Their (delivered) recovery reports: the driver never
                    // selects a row whose report is owed, and a final row
                    // never becomes owed again.
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
                },
            )
        }

        fn workers(
            &self,
        ) -> Result<Vec<tasktrail_core::WorkerRecord>, tasktrail_core::StorageError> {
            workers::table
                .select(WorkerRow::as_select())
                .load(&mut *$crate::store::SqlDialect::hold(self)?)
                .map_err(map_error)?
                .into_iter()
                .map(WorkerRow::into_record)
                .collect()
        }

        fn delete_workers(
            &self,
            gone: &[tasktrail_core::WorkerId],
        ) -> Result<u64, tasktrail_core::StorageError> {
            let ids: Vec<Self::Id> = gone.iter().map(|id| stored_id(id.as_uuid())).collect();
            <Self as $crate::store::SqlDialect>::write_transaction(
                &mut *$crate::store::SqlDialect::hold(self)?,
                |connection| {
                    let named: Vec<Option<Self::Id>> = task_history::table
                        .select(task_history::worker_id)
                        .filter(task_history::worker_id.eq_any(&ids))
                        .union(
                            task_history::table
                                .select(task_history::interrupted_by)
                                .filter(task_history::interrupted_by.eq_any(&ids)),
                        )
                        .load(connection)?;
                    let named: Vec<Self::Id> = named.into_iter().flatten().collect();
                    diesel::delete(
                        workers::table
                            .filter(workers::id.eq_any(&ids))
                            .filter(workers::id.ne_all(&named))
                            .filter(workers::state.ne("alive")),
                    )
                    .execute(connection)
                    .map(|deleted| deleted as u64)
                    .map_err($crate::tx::TxError::from)
                },
            )
        }
    };
}
pub(crate) use prune_statements;
