//! `impl Storage for MysqlStorage`.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Datetime, Nullable, Text};
use tasktrail_core::{Storage, StorageError, Timestamp, WorkerId, WorkerRegistration};

use super::locks::{release_named_lock, try_named_lock};
use super::rows::{stored_time, NAMED_LOCK};
use super::{MysqlConnection, MysqlStorage};
use crate::codec::encode_host_identity;
use crate::liveness::{beat, WorkerLockStatements};

impl WorkerLockStatements for MysqlStorage {
    fn try_take_worker_lock(
        connection: &mut MysqlConnection,
        worker: WorkerId,
    ) -> QueryResult<bool> {
        try_named_lock(connection, &Self::worker_lock_name(worker))
    }

    fn let_go_of_worker_lock(
        connection: &mut MysqlConnection,
        worker: WorkerId,
    ) -> QueryResult<bool> {
        release_named_lock(connection, &Self::worker_lock_name(worker))
    }

    /// Its first heartbeat is the server's `UTC_TIMESTAMP(6)`.
    fn insert_locked_worker(
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

    /// Never going backwards, on the server's clock. With the found-rows
    /// flag a heartbeat landing in the same microsecond as the last one
    /// (nothing changes) still counts its row.
    fn beat_if_alive(connection: &mut MysqlConnection, worker: WorkerId) -> QueryResult<usize> {
        diesel::sql_query(
            "UPDATE workers SET heartbeat_at = GREATEST(heartbeat_at, UTC_TIMESTAMP(6)) \
             WHERE id = ? AND state = 'alive'",
        )
        .bind::<Text, _>(worker.to_string())
        .execute(connection)
    }
}

impl MysqlStorage {
    /// Test hook: lets go of `worker`'s named lock as the server does when
    /// the worker's session ends (its process died), and stops taking it
    /// back at heartbeats. Returns whether this store held it.
    #[cfg(feature = "testing")]
    pub fn release_worker_lock(&self, worker: WorkerId) -> bool {
        self.liveness.release::<Self>(worker)
    }
}

impl Storage for MysqlStorage {
    /// Takes the worker's named lock on this store's liveness session, then
    /// inserts its row.
    fn register_worker(&self, registration: &WorkerRegistration) -> Result<(), StorageError> {
        self.liveness.register::<Self>(registration)
    }

    /// Moves `heartbeat_at` to the server's `UTC_TIMESTAMP(6)` (`at` is
    /// ignored). For a worker registered through this store the heartbeat
    /// goes through its liveness session, after taking its lock again if
    /// the session was re-established.
    fn heartbeat_worker(&self, worker: WorkerId, _at: Timestamp) -> Result<(), StorageError> {
        if !self.liveness.tracks(worker) {
            return beat::<Self>(&mut *self.pooled()?, worker);
        }
        self.liveness.heartbeat::<Self>(worker)
    }

    // One transaction each; see the type's documentation for the locking
    // that makes recovery exactly-once across concurrent sweeps.
    crate::row_lock_sweep::row_lock_storage_methods!();

    crate::store::shared_storage_methods!();
}
