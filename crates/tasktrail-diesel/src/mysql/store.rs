//! `impl Storage for MysqlStorage`.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Datetime, Nullable, Text};
use tasktrail_core::backend::{LivenessJudge, RecoveryRequest, ReportClaim};
use tasktrail_core::{
    RecoveredTask, Storage, StorageError, TaskId, Timestamp, WorkerId, WorkerRegistration,
    WorkerState,
};

use super::errors::Redacted;
use super::locks::{release_named_lock, try_named_lock};
use super::rows::{stored_time, NAMED_LOCK};
use super::schema::{recovery_reports, workers};
use super::{map_error, MysqlConnection, MysqlStorage};
use crate::codec::encode_host_identity;
use crate::store::{self, SqlDialect, WorkerRead};
use crate::tx::unique_violation_or;

const ALIVE: &str = WorkerState::Alive.as_str();

/// The heartbeat, never going backwards, on the database's own clock. With
/// the found-rows flag a heartbeat landing in the same microsecond as the
/// last one (nothing changes) still counts its row.
fn beat(connection: &mut MysqlConnection, worker: WorkerId) -> Result<(), StorageError> {
    let updated = diesel::sql_query(
        "UPDATE workers SET heartbeat_at = GREATEST(heartbeat_at, UTC_TIMESTAMP(6)) \
         WHERE id = ? AND state = 'alive'",
    )
    .bind::<Text, _>(worker.to_string())
    .execute(connection)
    .map_err(map_error)?;
    if updated == 1 {
        return Ok(());
    }
    Err(store::worker_refusal::<MysqlStorage>(connection, worker))
}

/// The registration's row; its first heartbeat is the server's
/// `UTC_TIMESTAMP(6)`.
fn insert_worker(
    connection: &mut MysqlConnection,
    registration: &WorkerRegistration,
) -> QueryResult<usize> {
    let (boot_id, pid_namespace) = encode_host_identity(registration.host_identity.as_ref());
    diesel::sql_query(
        "INSERT INTO workers (id, host, pid, process_start_marker, started_at, heartbeat_at, \
           state, boot_id, pid_namespace, liveness_lock) \
         VALUES (?, ?, ?, ?, ?, UTC_TIMESTAMP(6), 'alive', ?, ?, ?)",
    )
    .bind::<Text, _>(registration.id.to_string())
    .bind::<Text, _>(&registration.host)
    .bind::<BigInt, _>(i64::from(registration.pid))
    .bind::<Text, _>(&registration.process_start_marker)
    .bind::<Datetime, _>(stored_time(registration.started_at))
    .bind::<Nullable<Text>, _>(boot_id)
    .bind::<Nullable<BigInt>, _>(pid_namespace)
    .bind::<Text, _>(NAMED_LOCK)
    .execute(connection)
}

impl MysqlStorage {
    /// Test hook: lets go of `worker`'s named lock as the server does when
    /// the worker's session ends (its process died), and stops taking it
    /// back at heartbeats. Returns whether this store held it.
    #[cfg(feature = "testing")]
    pub fn release_worker_lock(&self, worker: WorkerId) -> bool {
        if !self.liveness.tracks(worker) {
            return false;
        }
        self.liveness
            .run(|connection, tracked| {
                tracked.remove(&worker);
                release_named_lock(connection, &Self::worker_lock_name(worker)).map_err(map_error)
            })
            .unwrap_or(false)
    }
}

impl Storage for MysqlStorage {
    /// Takes the worker's named lock on this store's liveness session, then
    /// inserts its row.
    fn register_worker(&self, registration: &WorkerRegistration) -> Result<(), StorageError> {
        let id = registration.id;
        let name = Self::worker_lock_name(id);
        self.liveness.run(|connection, tracked| {
            if tracked.contains_key(&id) {
                return Err(StorageError::DuplicateWorker { id });
            }
            if !try_named_lock(connection, &name).map_err(map_error)? {
                // Another live session holds this worker's lock.
                return Err(StorageError::DuplicateWorker { id });
            }
            match insert_worker(connection, registration) {
                Ok(_) => {
                    tracked.insert(id, true);
                    Ok(())
                }
                Err(error) => {
                    let _ = release_named_lock(connection, &name);
                    Err(unique_violation_or::<diesel::mysql::Mysql>(
                        error,
                        StorageError::DuplicateWorker { id },
                    ))
                }
            }
        })
    }

    /// Moves `heartbeat_at` to the server's `UTC_TIMESTAMP(6)` (`at` is
    /// ignored). For a worker registered through this store the heartbeat
    /// goes through its liveness session, after taking its lock again if
    /// the session was re-established.
    fn heartbeat_worker(&self, worker: WorkerId, _at: Timestamp) -> Result<(), StorageError> {
        if !self.liveness.tracks(worker) {
            return beat(&mut *self.pooled()?, worker);
        }
        let name = Self::worker_lock_name(worker);
        self.liveness.run(|connection, tracked| {
            if tracked.get(&worker) == Some(&false) {
                if !try_named_lock(connection, &name).map_err(map_error)? {
                    return match Self::worker_state(connection, worker, WorkerRead::Plain)
                        .map_err(map_error)?
                    {
                        None => Err(StorageError::UnknownWorker { id: worker }),
                        Some(state) if state != ALIVE => {
                            tracked.remove(&worker);
                            Err(StorageError::WorkerNotAlive { id: worker })
                        }
                        Some(_) => Err(StorageError::Unavailable {
                            source: Box::new(Redacted(format!(
                                "the liveness lock of worker {worker} is held by another session; retry at the next heartbeat"
                            ))),
                        }),
                    };
                }
                tracked.insert(worker, true);
            }
            let result = beat(connection, worker);
            if matches!(
                result,
                Err(StorageError::WorkerNotAlive { .. } | StorageError::UnknownWorker { .. })
            ) {
                let _ = release_named_lock(connection, &name);
                tracked.remove(&worker);
            }
            result
        })
    }

    /// Marks the worker `stopped`, then releases its named lock.
    fn deregister_worker(&self, worker: WorkerId, at: Timestamp) -> Result<(), StorageError> {
        Self::write_transaction(&mut *self.pooled()?, |connection| {
            if Self::worker_state(connection, worker, WorkerRead::Plain)?.is_none() {
                return Err(StorageError::UnknownWorker { id: worker }.into());
            }
            diesel::update(
                workers::table
                    .find(worker.to_string())
                    .filter(workers::state.eq(ALIVE)),
            )
            .set((
                workers::state.eq(WorkerState::Stopped.as_str()),
                workers::stopped_at.eq(stored_time(at)),
            ))
            .execute(connection)?;
            Ok(())
        })?;
        if self.liveness.tracks(worker) {
            // Best effort: if the session is gone, so is the lock.
            let _ = self.liveness.run(|connection, tracked| {
                tracked.remove(&worker);
                release_named_lock(connection, &Self::worker_lock_name(worker)).map_err(map_error)
            });
        }
        Ok(())
    }

    /// One transaction; see [`MysqlStorage`] for the locking that makes it
    /// exactly-once across concurrent sweeps.
    fn recover_orphans(
        &self,
        request: &RecoveryRequest,
        judge: &dyn LivenessJudge,
    ) -> Result<Vec<RecoveredTask>, StorageError> {
        let watched_by_this_store = self.watched_for();
        Self::write_transaction(&mut *self.pooled()?, |connection| {
            Self::sweep(connection, request, judge, watched_by_this_store)
        })
    }

    fn claim_unreported_recoveries(
        &self,
        claim: &ReportClaim,
        judge: &dyn LivenessJudge,
    ) -> Result<Vec<RecoveredTask>, StorageError> {
        let watched_by_this_store = self.watched_for();
        Self::write_transaction(&mut *self.pooled()?, |connection| {
            Self::claim(connection, claim, judge, watched_by_this_store)
        })
    }

    fn confirm_reports(
        &self,
        reporter: WorkerId,
        tasks: &[TaskId],
        at: Timestamp,
    ) -> Result<u64, StorageError> {
        let ids: Vec<String> = tasks.iter().map(ToString::to_string).collect();
        // One transaction, one statement per chunk of ids (MySQL's
        // placeholder limit, `sweep::IDS_PER_STATEMENT`): all or nothing,
        // as one statement would be.
        Self::write_transaction(&mut *self.pooled()?, |connection| {
            let mut confirmed = 0;
            for chunk in ids.chunks(super::sweep::IDS_PER_STATEMENT) {
                confirmed += diesel::update(
                    recovery_reports::table
                        .filter(recovery_reports::task_id.eq_any(chunk))
                        .filter(recovery_reports::owed_by.eq(reporter.to_string()))
                        .filter(recovery_reports::reported_at.is_null()),
                )
                .set(recovery_reports::reported_at.eq(stored_time(at)))
                .execute(connection)? as u64;
            }
            Ok(confirmed)
        })
    }

    crate::store::shared_storage_methods!();
}
