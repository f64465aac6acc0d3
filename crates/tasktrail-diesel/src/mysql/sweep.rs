//! The MySQL side of the row-lock sweep (`crate::row_lock_sweep`): the
//! server's `UTC_TIMESTAMP(6)`, the named-lock probe (`IS_USED_LOCK`), and
//! the two UPDATEs without `RETURNING` (MariaDB has it only for INSERT and
//! DELETE): each first reads, locked, the rows it will change, so the rows
//! it changed are the rows it read. See [`MysqlStorage`].

use std::collections::HashMap;

use diesel::prelude::*;
use diesel::result::Error as DieselError;
use diesel::sql_types::Datetime;
use tasktrail_core::backend::OwnerRecovery;
use tasktrail_core::{StorageError, TaskStatus, Timestamp, WorkerId};

use super::locks::named_lock_is_held;
use super::rows::{stored_id, stored_time, NewReportRow, ReportRow, TaskRow, WorkerRow};
use super::schema::{claude_sdk_sessions, recovery_reports, task_history, workers};
use super::{MysqlConnection, MysqlStorage};
use crate::codec::decode_worker_id;
use crate::row_lock_sweep::{count_by_task, RowLockSweep};

const RUNNING: &str = TaskStatus::Running.as_str();

/// The database's clock at the sweep.
#[derive(QueryableByName)]
struct DatabaseClock {
    #[diesel(sql_type = Datetime)]
    db_now: chrono::NaiveDateTime,
}

impl RowLockSweep for MysqlStorage {
    type Connection = MysqlConnection;
    type Id = String;
    /// MySQL refuses to prepare a statement with more than 65,535
    /// placeholders (error 1390, "Prepared statement contains too many
    /// placeholders"), and an `eq_any` of ids binds one per id: a sweep of
    /// 100,000 orphans of one owner goes in chunks of this many.
    const IDS_PER_STATEMENT: usize = 10_000;

    fn stored(id: &uuid::Uuid) -> String {
        stored_id(id)
    }

    fn worker_of(stored: &String) -> Result<WorkerId, StorageError> {
        decode_worker_id("owed_by", stored)
    }

    /// `UTC_TIMESTAMP(6)`. How long the judge watched is the store's
    /// liveness session's age, pinged (a server restart ends that session
    /// too); MySQL 8 and MariaDB keep the uptime in different tables.
    fn database_clock(
        connection: &mut MysqlConnection,
    ) -> Result<(Timestamp, Option<std::time::Duration>), DieselError> {
        let clock = diesel::sql_query("SELECT UTC_TIMESTAMP(6) AS db_now")
            .get_result::<DatabaseClock>(connection)?;
        Ok((clock.db_now.and_utc(), None))
    }

    fn worker_lock_is_held(
        connection: &mut MysqlConnection,
        worker: WorkerId,
    ) -> Result<bool, DieselError> {
        named_lock_is_held(connection, &Self::worker_lock_name(worker))
    }

    /// The rows are locked by this transaction (step 4), so none can change
    /// between the read and the UPDATE.
    fn interrupt_orphans(
        connection: &mut MysqlConnection,
        orphans: &[String],
        plan: &OwnerRecovery,
    ) -> Result<Vec<String>, DieselError> {
        let mut interrupted = Vec::with_capacity(orphans.len());
        for chunk in orphans.chunks(Self::IDS_PER_STATEMENT) {
            let still_running: Vec<String> = task_history::table
                .filter(task_history::id.eq_any(chunk))
                .filter(task_history::status.eq(RUNNING))
                .select(task_history::id)
                .for_update()
                .load(connection)?;
            if still_running.is_empty() {
                continue;
            }
            diesel::update(
                task_history::table
                    .filter(task_history::id.eq_any(&still_running))
                    .filter(task_history::status.eq(RUNNING)),
            )
            .set((
                task_history::status.eq(TaskStatus::Interrupted.as_str()),
                task_history::interrupted_at.eq(stored_time(plan.at)),
                task_history::interrupt_reason.eq(&plan.reason),
                task_history::interrupted_by.eq(stored_id(plan.recovered_by.as_uuid())),
            ))
            .execute(connection)?;
            interrupted.extend(still_running);
        }
        Ok(interrupted)
    }

    /// Read locked, then changed, in this transaction, a chunk at a time.
    fn invalidate_sessions_of_tasks(
        connection: &mut MysqlConnection,
        task_ids: &[String],
        at: Timestamp,
        reason: &str,
    ) -> Result<HashMap<String, u32>, DieselError> {
        let mut valid: Vec<String> = Vec::with_capacity(task_ids.len());
        for chunk in task_ids.chunks(Self::IDS_PER_STATEMENT) {
            let valid_in_chunk: Vec<String> = claude_sdk_sessions::table
                .filter(claude_sdk_sessions::task_id.eq_any(chunk))
                .filter(claude_sdk_sessions::invalidated_at.is_null())
                .select(claude_sdk_sessions::task_id)
                .for_update()
                .load(connection)?;
            if valid_in_chunk.is_empty() {
                continue;
            }
            diesel::update(
                claude_sdk_sessions::table
                    .filter(claude_sdk_sessions::task_id.eq_any(chunk))
                    .filter(claude_sdk_sessions::invalidated_at.is_null()),
            )
            .set((
                claude_sdk_sessions::invalidated_at.eq(stored_time(at)),
                claude_sdk_sessions::invalidation_reason.eq(reason),
            ))
            .execute(connection)?;
            valid.extend(valid_in_chunk);
        }
        Ok(count_by_task(valid))
    }

    crate::row_lock_sweep::row_lock_sweep_statements!();
}
