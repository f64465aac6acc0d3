//! `impl Storage for PostgresStorage`.

use diesel::pg::{Pg, PgConnection};
use diesel::prelude::*;
use diesel::sql_types::Uuid as SqlUuid;
use tasktrail_core::{Storage, StorageError, Timestamp, WorkerId, WorkerRegistration};

use super::rows::NewWorkerRow;
use super::schema::workers;
use super::{advisory_unlock, try_advisory_lock, PostgresStorage};
use crate::liveness::{beat, WorkerLockStatements};
use crate::tx::unique_violation_or;

impl WorkerLockStatements for PostgresStorage {
    fn try_take_worker_lock(connection: &mut PgConnection, worker: WorkerId) -> QueryResult<bool> {
        try_advisory_lock(connection, Self::worker_lock_key(worker))
    }

    fn let_go_of_worker_lock(connection: &mut PgConnection, worker: WorkerId) -> QueryResult<bool> {
        advisory_unlock(connection, Self::worker_lock_key(worker))
    }

    /// The first heartbeat is the column's default, the database's `now()`.
    fn insert_locked_worker(
        connection: &mut PgConnection,
        registration: &WorkerRegistration,
    ) -> QueryResult<usize> {
        diesel::insert_into(workers::table)
            .values(NewWorkerRow::from_registration(registration))
            .execute(connection)
    }

    /// Never going backwards, on the database's own clock.
    fn beat_if_alive(connection: &mut PgConnection, worker: WorkerId) -> QueryResult<usize> {
        diesel::sql_query(
            "UPDATE workers SET heartbeat_at = GREATEST(heartbeat_at, now()) WHERE id = $1 AND state = 'alive'",
        )
        .bind::<SqlUuid, _>(*worker.as_uuid())
        .execute(connection)
    }
}

impl PostgresStorage {
    /// Test hook: lets go of `worker`'s advisory lock as the server does when
    /// the worker's session ends (its process died), and stops taking it
    /// back at heartbeats. Returns whether this store held it.
    #[cfg(feature = "testing")]
    pub fn release_worker_lock(&self, worker: WorkerId) -> bool {
        self.liveness
            .as_ref()
            .is_some_and(|liveness| liveness.release::<Self>(worker))
    }
}

impl Storage for PostgresStorage {
    /// Takes the worker's advisory lock on this store's liveness session,
    /// then inserts its row; the first heartbeat is the database's `now()`.
    fn register_worker(&self, registration: &WorkerRegistration) -> Result<(), StorageError> {
        let id = registration.id;
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
        liveness.register::<Self>(registration)
    }

    /// Moves `heartbeat_at` to the database's `now()` (`at` is ignored: see
    /// [`PostgresStorage`]). For a worker registered through this store
    /// the heartbeat goes through its liveness session, after taking its lock
    /// again if the session was re-established; a heartbeat that succeeds
    /// proves the lock is held.
    fn heartbeat_worker(&self, worker: WorkerId, _at: Timestamp) -> Result<(), StorageError> {
        let Some(liveness) = self.liveness.as_ref().filter(|l| l.tracks(worker)) else {
            return beat::<Self>(&mut *self.pooled()?, worker);
        };
        liveness.heartbeat::<Self>(worker)
    }

    // One transaction each; see the type's documentation for the locking
    // that makes recovery exactly-once across concurrent sweeps.
    crate::row_lock_sweep::row_lock_storage_methods!();

    crate::store::shared_storage_methods!();
}
