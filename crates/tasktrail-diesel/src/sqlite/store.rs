//! `impl Storage for SqliteStorage`.

use diesel::prelude::*;
use diesel::result::Error as DieselError;
use diesel::sqlite::{Sqlite, SqliteConnection};
use tasktrail_core::backend::{LivenessJudge, RecoveryRequest, ReportClaim, SweepMode};
use tasktrail_core::{
    RecoveredTask, Storage, StorageError, Timestamp, WorkerId, WorkerRegistration,
};

use super::rows::WorkerRow;
use super::schema::workers;
use super::SqliteStorage;
use crate::codec::encode_timestamp;
use crate::store::{require_alive, WorkerRead};
use crate::tx::{unique_violation_or, TxError};

pub(super) fn immediate<T>(
    connection: &mut SqliteConnection,
    body: impl FnOnce(&mut SqliteConnection) -> Result<T, TxError>,
) -> Result<T, StorageError> {
    // When a statement fails with SQLITE_FULL (or IOERR), SQLite has already
    // rolled the transaction back, and Diesel's own ROLLBACK then fails with
    // "no transaction is active". Keep the body's error: it says what
    // happened.
    let mut failure: Option<TxError> = None;
    let result = connection.immediate_transaction(|connection| {
        body(connection).map_err(|error| {
            failure = Some(error);
            TxError::Diesel(DieselError::RollbackTransaction)
        })
    });
    result.map_err(|after| failure.unwrap_or(after).into_storage::<Sqlite>())
}

impl Storage for SqliteStorage {
    /// Takes the worker's lock file (see [`SqliteStorage`]), then inserts
    /// its row; a failed insert gives the lock back.
    fn register_worker(&self, registration: &WorkerRegistration) -> Result<(), StorageError> {
        let id = registration.id;
        self.take_worker_lock(id)?;
        let inserted = diesel::insert_into(workers::table)
            .values(WorkerRow::from_registration(registration))
            .execute(&mut *self.connection())
            .map(drop)
            .map_err(|error| {
                unique_violation_or::<Sqlite>(error, StorageError::DuplicateWorker { id })
            });
        match &inserted {
            Ok(()) => {}
            // The file belongs to the worker registered first: keep it.
            Err(StorageError::DuplicateWorker { .. }) => {
                self.let_go_of_worker_lock(id);
            }
            Err(_) => self.drop_worker_lock(id),
        }
        inserted
    }

    fn heartbeat_worker(&self, worker: WorkerId, at: Timestamp) -> Result<(), StorageError> {
        let at = encode_timestamp(at);
        let beat = immediate(&mut self.connection(), |connection| {
            require_alive::<SqliteStorage>(connection, worker, WorkerRead::Plain)?;
            diesel::update(
                workers::table
                    .find(worker.to_string())
                    .filter(workers::heartbeat_at.lt(&at)),
            )
            .set(workers::heartbeat_at.eq(&at))
            .execute(connection)?;
            Ok(())
        });
        if matches!(beat, Err(StorageError::WorkerNotAlive { .. })) {
            // Declared dead: the lock proves nothing any more.
            self.drop_worker_lock(worker);
        }
        beat
    }

    fn recover_orphans(
        &self,
        request: &RecoveryRequest,
        judge: &dyn LivenessJudge,
    ) -> Result<Vec<RecoveredTask>, StorageError> {
        let sweep = |connection: &mut SqliteConnection| self.sweep(connection, request, judge);
        // A dry run only reads: a plain (deferred) transaction, so it also
        // works on a read-only database (`recover --dry-run`).
        let outcome = match request.mode {
            SweepMode::Apply => immediate(&mut self.connection(), sweep)?,
            SweepMode::DryRun => self
                .connection()
                .transaction(sweep)
                .map_err(TxError::into_storage::<Sqlite>)?,
        };
        if request.mode == SweepMode::Apply {
            // Owners declared dead with their lock seen free: their lock
            // files go once the sweep committed.
            for owner in outcome.freed_owners {
                self.remove_dead_workers_lock_file(owner);
            }
        }
        Ok(outcome.recovered)
    }

    fn claim_unreported_recoveries(
        &self,
        claim: &ReportClaim,
        judge: &dyn LivenessJudge,
    ) -> Result<Vec<RecoveredTask>, StorageError> {
        immediate(&mut self.connection(), |connection| {
            self.claim(connection, claim, judge)
        })
    }

    crate::store::shared_storage_methods!();
}
