//! `impl Storage for PostgresStorage`.

use diesel::pg::{Pg, PgConnection};
use diesel::prelude::*;
use diesel::sql_types::Uuid as SqlUuid;
use tasktrail_core::backend::{LivenessJudge, RecoveryRequest, ReportClaim};
use tasktrail_core::{
    RecoveredTask, Storage, StorageError, Timestamp, WorkerId, WorkerRegistration, WorkerState,
};

use super::rows::NewWorkerRow;
use super::schema::workers;
use super::{advisory_unlock, map_error, try_advisory_lock, PostgresStorage, Redacted};
use crate::store::{self, SqlDialect, WorkerRead};
use crate::tx::unique_violation_or;

const ALIVE: &str = WorkerState::Alive.as_str();

/// The heartbeat, never going backwards, on the database's own clock.
fn beat(connection: &mut PgConnection, worker: WorkerId) -> Result<(), StorageError> {
    let updated = diesel::sql_query(
        "UPDATE workers SET heartbeat_at = GREATEST(heartbeat_at, now()) WHERE id = $1 AND state = 'alive'",
    )
    .bind::<SqlUuid, _>(*worker.as_uuid())
    .execute(connection)
    .map_err(map_error)?;
    if updated == 1 {
        return Ok(());
    }
    Err(store::worker_refusal::<PostgresStorage>(connection, worker))
}

impl PostgresStorage {
    /// Test hook: lets go of `worker`'s advisory lock as the server does when
    /// the worker's session ends (its process died), and stops taking it
    /// back at heartbeats. Returns whether this store held it.
    #[cfg(feature = "testing")]
    pub fn release_worker_lock(&self, worker: WorkerId) -> bool {
        let Some(liveness) = self.liveness.as_ref().filter(|l| l.tracks(worker)) else {
            return false;
        };
        liveness
            .run(|connection, tracked| {
                tracked.remove(&worker);
                advisory_unlock(connection, Self::worker_lock_key(worker)).map_err(map_error)
            })
            .unwrap_or(false)
    }
}

impl Storage for PostgresStorage {
    /// Takes the worker's advisory lock on this store's liveness session,
    /// then inserts its row; the first heartbeat is the database's `now()`.
    fn register_worker(&self, registration: &WorkerRegistration) -> Result<(), StorageError> {
        let id = registration.id;
        let key = Self::worker_lock_key(id);
        let Some(liveness) = &self.liveness else {
            // Behind a transaction pooler without a liveness URL: no lock
            // (one taken through the pooler would outlive the worker on
            // whichever server connection ran it); `liveness_lock` stays
            // NULL and sweeps judge the worker by its lease.
            return diesel::insert_into(workers::table)
                .values(NewWorkerRow::from_registration(registration).without_lock())
                .execute(&mut *self.pooled()?)
                .map(|_| ())
                .map_err(|error| {
                    unique_violation_or::<Pg>(error, StorageError::DuplicateWorker { id })
                });
        };
        liveness.run(|connection, tracked| {
            if tracked.contains_key(&id) {
                return Err(StorageError::DuplicateWorker { id });
            }
            if !try_advisory_lock(connection, key).map_err(map_error)? {
                // Another live session holds this worker's lock.
                return Err(StorageError::DuplicateWorker { id });
            }
            match diesel::insert_into(workers::table)
                .values(NewWorkerRow::from_registration(registration))
                .execute(connection)
            {
                Ok(_) => {
                    tracked.insert(id, true);
                    Ok(())
                }
                Err(error) => {
                    let _ = advisory_unlock(connection, key);
                    Err(unique_violation_or::<Pg>(
                        error,
                        StorageError::DuplicateWorker { id },
                    ))
                }
            }
        })
    }

    /// Moves `heartbeat_at` to the database's `now()` (`at` is ignored: see
    /// [`PostgresStorage`]). For a worker registered through this store
    /// the heartbeat goes through its liveness session, after taking its lock
    /// again if the session was re-established; a heartbeat that succeeds
    /// proves the lock is held.
    fn heartbeat_worker(&self, worker: WorkerId, _at: Timestamp) -> Result<(), StorageError> {
        let Some(liveness) = self.liveness.as_ref().filter(|l| l.tracks(worker)) else {
            return beat(&mut *self.pooled()?, worker);
        };
        let key = Self::worker_lock_key(worker);
        liveness.run(|connection, tracked| {
            if tracked.get(&worker) == Some(&false) {
                if !try_advisory_lock(connection, key).map_err(map_error)? {
                    // A sweep is judging this worker right now, or the server
                    // has not yet ended the lost session that held the lock.
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
                let _ = advisory_unlock(connection, key);
                tracked.remove(&worker);
            }
            result
        })
    }

    /// One transaction; see [`PostgresStorage`] for the locking that
    /// makes it exactly-once across concurrent sweeps.
    fn recover_orphans(
        &self,
        request: &RecoveryRequest,
        judge: &dyn LivenessJudge,
    ) -> Result<Vec<RecoveredTask>, StorageError> {
        // How long this store has watched locks: its liveness session's age
        // (the pooled connection the sweep runs on may be brand new).
        let watched_by_this_store = self.watched_for();
        Self::write_transaction(&mut *self.pooled()?, |connection| {
            crate::row_lock_sweep::sweep::<Self>(connection, request, judge, watched_by_this_store)
        })
    }

    fn claim_unreported_recoveries(
        &self,
        claim: &ReportClaim,
        judge: &dyn LivenessJudge,
    ) -> Result<Vec<RecoveredTask>, StorageError> {
        let watched_by_this_store = self.watched_for();
        Self::write_transaction(&mut *self.pooled()?, |connection| {
            crate::row_lock_sweep::claim::<Self>(connection, claim, judge, watched_by_this_store)
        })
    }

    crate::store::shared_storage_methods!();
}
