//! The Postgres side of the row-lock sweep (`crate::row_lock_sweep`): the
//! database's clock with the server's uptime, the advisory-lock probe in
//! `pg_locks`, and the two UPDATEs that say what they changed with
//! `RETURNING`. See [`PostgresStorage`] for why the locking makes recovery
//! exactly-once.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::result::Error as DieselError;
use diesel::sql_types::Timestamptz;
use tasktrail_core::backend::OwnerRecovery;
use tasktrail_core::{StorageError, TaskStatus, Timestamp, WorkerId};
use uuid::Uuid;

use super::advisory::worker_lock_is_held;
use super::rows::{stored_id, stored_time, NewReportRow, ReportRow, TaskRow, WorkerRow};
use super::schema::{claude_sdk_sessions, recovery_reports, task_history, workers};
use super::PostgresStorage;
use crate::row_lock_sweep::{count_by_task, RowLockSweep};

/// The database's clock at the sweep, and how long the server has been
/// up, in seconds.
#[derive(QueryableByName)]
struct DatabaseClock {
    #[diesel(sql_type = Timestamptz)]
    db_now: DateTime<Utc>,
    #[diesel(sql_type = diesel::sql_types::Double)]
    up_seconds: f64,
}

impl RowLockSweep for PostgresStorage {
    type Connection = PgConnection;
    type Id = Uuid;
    /// `eq_any` binds one array (`= ANY($1)`) on Postgres, whatever its
    /// length.
    const IDS_PER_STATEMENT: usize = usize::MAX;

    fn stored(id: &Uuid) -> Uuid {
        stored_id(id)
    }

    fn worker_of(stored: &Uuid) -> Result<WorkerId, StorageError> {
        Ok(WorkerId::from_uuid(*stored))
    }

    /// `clock_timestamp()` and `pg_postmaster_start_time()`: after a
    /// restart or a failover every lock is free until its owner reconnects.
    fn database_clock(
        connection: &mut PgConnection,
    ) -> Result<(Timestamp, Option<std::time::Duration>), DieselError> {
        let clock = diesel::sql_query(
            "SELECT clock_timestamp() AS db_now, \
             EXTRACT(EPOCH FROM clock_timestamp() - pg_postmaster_start_time())::float8 \
               AS up_seconds",
        )
        .get_result::<DatabaseClock>(connection)?;
        let up_for = std::time::Duration::from_secs_f64(clock.up_seconds.clamp(0.0, 1e9));
        Ok((clock.db_now, Some(up_for)))
    }

    /// Tested in `pg_locks` without taking the lock.
    fn worker_lock_is_held(
        connection: &mut PgConnection,
        worker: WorkerId,
    ) -> Result<bool, DieselError> {
        worker_lock_is_held(connection, Self::worker_lock_key(worker))
    }

    fn interrupt_orphans(
        connection: &mut PgConnection,
        orphans: &[Uuid],
        plan: &OwnerRecovery,
    ) -> Result<Vec<Uuid>, DieselError> {
        diesel::update(
            task_history::table
                .filter(task_history::id.eq_any(orphans))
                .filter(task_history::status.eq(TaskStatus::Running.as_str())),
        )
        .set((
            task_history::status.eq(TaskStatus::Interrupted.as_str()),
            task_history::interrupted_at.eq(plan.at),
            task_history::interrupt_reason.eq(&plan.reason),
            task_history::interrupted_by.eq(*plan.recovered_by.as_uuid()),
        ))
        .returning(task_history::id)
        .get_results(connection)
    }

    fn invalidate_sessions_of_tasks(
        connection: &mut PgConnection,
        task_ids: &[Uuid],
        at: Timestamp,
        reason: &str,
    ) -> Result<HashMap<Uuid, u32>, DieselError> {
        let invalidated: Vec<Uuid> = diesel::update(
            claude_sdk_sessions::table
                .filter(claude_sdk_sessions::task_id.eq_any(task_ids))
                .filter(claude_sdk_sessions::invalidated_at.is_null()),
        )
        .set((
            claude_sdk_sessions::invalidated_at.eq(at),
            claude_sdk_sessions::invalidation_reason.eq(reason),
        ))
        .returning(claude_sdk_sessions::task_id)
        .get_results(connection)?;
        Ok(count_by_task(invalidated))
    }

    crate::row_lock_sweep::row_lock_sweep_statements!();
}
