//! `impl Storage for PostgresStorage`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{Timestamptz, Uuid as SqlUuid};
use tasktrail_core::backend::{
    recovery_reason, FinishRow, FinishWrite, LivenessJudge, LockWatch, NewRunningRow, NewSession,
    OwnerFacts, OwnerLock, RecoveryRequest, ReportClaim, SweepMode,
};
use tasktrail_core::{
    truncate_to_micros, FinishRefusal, Liveness, Outcome, RecoveredTask, SessionKey, SessionRecord,
    Storage, StorageError, TaskFilter, TaskId, TaskRecord, TaskStatus, Timestamp, WorkerId,
    WorkerRecord, WorkerRegistration, WorkerState,
};
use uuid::Uuid;

use super::rows::{NewReportRow, NewWorkerRow, ReportRow, SessionRow, TaskRow, WorkerRow};

/// The database's clock at the sweep, and how long the sweep's connection
/// has been able to watch locks, in seconds.
#[derive(QueryableByName)]
struct DatabaseClock {
    #[diesel(sql_type = Timestamptz)]
    db_now: DateTime<Utc>,
    #[diesel(sql_type = diesel::sql_types::Double)]
    watched_seconds: f64,
}

/// Whether some session of this database holds the advisory lock `key` in
/// exclusive mode, read from `pg_locks` without taking it. A session-level
/// lock on a `bigint` key shows as `classid` = its high 32 bits, `objid` =
/// its low 32 bits, `objsubid` = 1 (the two-`int4` form uses 2); only a
/// granted lock counts (a session waiting for it holds nothing).
pub(crate) fn worker_lock_is_held(
    connection: &mut PgConnection,
    key: i64,
) -> Result<bool, DieselError> {
    let bits = u64::from_ne_bytes(key.to_ne_bytes());
    let classid = i64::try_from(bits >> 32).unwrap_or_default();
    let objid = i64::try_from(bits & 0xffff_ffff).unwrap_or_default();
    diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks \
           WHERE locktype = 'advisory' \
             AND database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()) \
             AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 1 \
             AND mode = 'ExclusiveLock' AND granted) AS flag",
    )
    .bind::<diesel::sql_types::BigInt, _>(classid)
    .bind::<diesel::sql_types::BigInt, _>(objid)
    .get_result::<super::Flag>(connection)
    .map(|row| row.flag)
}
use super::schema::{claude_sdk_sessions, recovery_reports, task_history, workers};
use super::statements::{FinishCompletedIfOwnedAndRunning, InsertRunningIfWorkerAlive};
use super::{advisory_unlock, map_error, try_advisory_lock, PostgresStorage, Redacted};
use crate::codec::artifacts_to_json;

/// An error inside a transaction: either a domain answer to return as is, or
/// a Diesel error to map (Diesel needs `From<diesel::result::Error>`).
enum TxError {
    Storage(StorageError),
    Diesel(DieselError),
}

impl From<DieselError> for TxError {
    fn from(error: DieselError) -> Self {
        TxError::Diesel(error)
    }
}

impl From<StorageError> for TxError {
    fn from(error: StorageError) -> Self {
        TxError::Storage(error)
    }
}

impl From<TxError> for StorageError {
    fn from(error: TxError) -> Self {
        match error {
            TxError::Storage(error) => error,
            TxError::Diesel(error) => map_error(error),
        }
    }
}

fn transaction<T>(
    connection: &mut PgConnection,
    body: impl FnOnce(&mut PgConnection) -> Result<T, TxError>,
) -> Result<T, StorageError> {
    connection.transaction(body).map_err(StorageError::from)
}

fn is_unique_violation(error: &DieselError) -> bool {
    matches!(
        error,
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)
    )
}

const RUNNING: &str = TaskStatus::Running.as_str();
const ALIVE: &str = WorkerState::Alive.as_str();

/// The worker's state, read with a `FOR SHARE` lock when `lock` is set (so a
/// sweep cannot mark it dead until the caller's transaction ends).
fn worker_state(
    connection: &mut PgConnection,
    id: WorkerId,
    lock: bool,
) -> Result<Option<String>, DieselError> {
    let query = workers::table.find(*id.as_uuid()).select(workers::state);
    if lock {
        query.for_share().first::<String>(connection).optional()
    } else {
        query.first::<String>(connection).optional()
    }
}

fn require_alive(connection: &mut PgConnection, id: WorkerId) -> Result<(), TxError> {
    match worker_state(connection, id, true)? {
        None => Err(StorageError::UnknownWorker { id }.into()),
        Some(state) if state == ALIVE => Ok(()),
        Some(_) => Err(StorageError::WorkerNotAlive { id }.into()),
    }
}

fn load_task(connection: &mut PgConnection, id: Uuid) -> Result<Option<TaskRecord>, TxError> {
    task_history::table
        .find(id)
        .select(TaskRow::as_select())
        .first(connection)
        .optional()?
        .map(TaskRow::into_record)
        .transpose()
        .map_err(TxError::from)
}

/// Invalidates the still-valid sessions of `task_ids`; returns how many
/// each task had.
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

fn count_by_task(task_ids: Vec<Uuid>) -> HashMap<Uuid, u32> {
    let mut counts = HashMap::new();
    for task in task_ids {
        *counts.entry(task).or_insert(0) += 1;
    }
    counts
}

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
    match worker_state(connection, worker, false).map_err(map_error)? {
        None => Err(StorageError::UnknownWorker { id: worker }),
        Some(_) => Err(StorageError::WorkerNotAlive { id: worker }),
    }
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

    /// Gathers the facts about one owner for the judge: its silence on the
    /// database's clock (`db_now` minus its heartbeat) and, for an `alive`
    /// owner that registered holding its advisory lock, whether some session
    /// holds that lock now ([`worker_lock_is_held`]), tested in `pg_locks`
    /// without taking it, so the owner can always take it back.
    fn owner_facts(
        connection: &mut PgConnection,
        owner: &WorkerRecord,
        holds_advisory_lock: bool,
        db_now: Timestamp,
        watched_for: chrono::Duration,
    ) -> Result<OwnerFacts, DieselError> {
        let lock = if owner.state == WorkerState::Alive && holds_advisory_lock {
            if worker_lock_is_held(connection, Self::worker_lock_key(owner.id))? {
                OwnerLock::Held
            } else {
                OwnerLock::Free {
                    watched_for: LockWatch::For(watched_for),
                }
            }
        } else {
            // A stopped or dead owner holds no lock worth asking about; a
            // registration older than the locks recorded none.
            OwnerLock::NotCheckable
        };
        Ok(OwnerFacts::observed_at(owner.clone(), db_now, lock))
    }

    /// The database's time (the clock heartbeats are written with, so
    /// owners' silence is measured on it; the caller's clock never matters)
    /// and how long a judge has been able to watch locks: since the server
    /// started and since this store's liveness session began, whichever is
    /// later (after a restart, a failover or a reconnect every lock is free
    /// until its owner takes it back). Read after the row locks were granted.
    fn judging_clock(
        connection: &mut PgConnection,
        watched_by_this_store: std::time::Duration,
    ) -> Result<(Timestamp, chrono::Duration), DieselError> {
        let clock = diesel::sql_query(
            "SELECT clock_timestamp() AS db_now, \
             EXTRACT(EPOCH FROM clock_timestamp() - pg_postmaster_start_time())::float8 \
               AS watched_seconds",
        )
        .get_result::<DatabaseClock>(connection)?;
        let server_up_for =
            std::time::Duration::from_secs_f64(clock.watched_seconds.clamp(0.0, 1e9));
        let watched = server_up_for.min(watched_by_this_store);
        let watched_for = chrono::Duration::from_std(watched).unwrap_or(chrono::Duration::MAX);
        Ok((clock.db_now, watched_for))
    }

    /// The claim of [`Storage::claim_unreported_recoveries`], in the
    /// caller's transaction.
    fn claim(
        connection: &mut PgConnection,
        claim: &ReportClaim,
        judge: &dyn LivenessJudge,
        watched_by_this_store: std::time::Duration,
    ) -> Result<Vec<RecoveredTask>, TxError> {
        let claimant = *claim.claimant.as_uuid();
        let owed_by: Vec<Uuid> = recovery_reports::table
            .filter(recovery_reports::reported_at.is_null())
            .select(recovery_reports::owed_by)
            .distinct()
            .load(connection)?;
        let others: Vec<Uuid> = owed_by
            .iter()
            .copied()
            .filter(|id| *id != claimant)
            .collect();
        if owed_by.is_empty() {
            return Ok(Vec::new());
        }
        // The owners' rows, locked in id order like a sweep's, so a claim
        // and a sweep judging the same owner read one decision.
        let owner_rows: Vec<WorkerRow> = workers::table
            .filter(workers::id.eq_any(&others))
            .order(workers::id)
            .select(WorkerRow::as_select())
            .for_update()
            .load(connection)?;
        let (db_now, watched_for) = Self::judging_clock(connection, watched_by_this_store)?;
        let mut facts: HashMap<Uuid, OwnerFacts> = HashMap::new();
        for row in owner_rows {
            let holds_advisory_lock = row.holds_advisory_lock();
            let record = row.into_record()?;
            let owner_facts = Self::owner_facts(
                connection,
                &record,
                holds_advisory_lock,
                db_now,
                watched_for,
            )?;
            facts.insert(*record.id.as_uuid(), owner_facts);
        }
        // Owners whose reports move: the claimant itself (it could not
        // deliver them), owners the judge finds dead, and ids naming no
        // worker (an operator's one-shot sweep) for reports owed since
        // before the cut-off.
        let mut dead: Vec<Uuid> = Vec::new();
        let mut unregistered: Vec<Uuid> = Vec::new();
        for owner in owed_by {
            if owner == claimant {
                dead.push(owner);
            } else if matches!(judge.judge(facts.get(&owner)), Liveness::Dead(_)) {
                if facts.contains_key(&owner) {
                    dead.push(owner);
                } else {
                    unregistered.push(owner);
                }
            }
        }
        if dead.is_empty() && unregistered.is_empty() {
            return Ok(Vec::new());
        }
        // Each report moves once: a concurrent claim waits on the row and
        // re-reads `owed_by`, which no longer names a dead owner.
        let reports: Vec<(Uuid, ReportRow)> = recovery_reports::table
            .filter(recovery_reports::reported_at.is_null())
            .filter(
                recovery_reports::owed_by
                    .eq_any(&dead)
                    .or(recovery_reports::owed_by.eq_any(&unregistered).and(
                        recovery_reports::owed_since
                            .lt(truncate_to_micros(claim.unregistered_owed_before)),
                    )),
            )
            .select((recovery_reports::task_id, ReportRow::as_select()))
            .for_update()
            .load(connection)?;
        let ids: Vec<Uuid> = reports.iter().map(|(id, _)| *id).collect();
        diesel::update(recovery_reports::table.filter(recovery_reports::task_id.eq_any(&ids)))
            .set((
                recovery_reports::owed_by.eq(claimant),
                recovery_reports::owed_since.eq(truncate_to_micros(claim.now)),
            ))
            .execute(connection)?;
        let mut tasks: HashMap<Uuid, TaskRow> = task_history::table
            .filter(task_history::id.eq_any(&ids))
            .select(TaskRow::as_select())
            .load::<TaskRow>(connection)?
            .into_iter()
            .map(|task| (task.uuid(), task))
            .collect();
        let mut claimed = Vec::with_capacity(reports.len());
        for (id, report) in reports {
            // The foreign key keeps the row while its report exists.
            if let Some(task) = tasks.remove(&id) {
                claimed.push(report.into_recovered(task.into_record()?)?);
            }
        }
        claimed.sort_by_key(|recovered| (recovered.task.started_at, recovered.task.id));
        Ok(claimed)
    }

    fn sweep(
        connection: &mut PgConnection,
        request: &RecoveryRequest,
        judge: &dyn LivenessJudge,
        watched_by_this_store: std::time::Duration,
    ) -> Result<Vec<RecoveredTask>, TxError> {
        let apply = request.mode == SweepMode::Apply;
        let me = *request.recovering_worker.as_uuid();
        let now = truncate_to_micros(request.now);
        let not_mine = task_history::worker_id
            .ne(me)
            .or(task_history::worker_id.is_null());

        // 1. The owners of running rows (the partial index serves this).
        let owner_ids: Vec<Option<Uuid>> = task_history::table
            .filter(task_history::status.eq(RUNNING))
            .filter(not_mine)
            .select(task_history::worker_id)
            .distinct()
            .load(connection)?;
        if owner_ids.is_empty() {
            return Ok(Vec::new());
        }
        let known_owners: BTreeSet<Option<Uuid>> = owner_ids.into_iter().collect();
        let registered: Vec<Uuid> = known_owners.iter().flatten().copied().collect();

        // 2. Their workers rows, locked in id order: concurrent sweeps queue
        //    here, and the second reads what the first decided.
        let owner_rows = workers::table
            .filter(workers::id.eq_any(&registered))
            .order(workers::id)
            .select(WorkerRow::as_select());
        let owner_rows: Vec<WorkerRow> = if apply {
            owner_rows.for_update().load(connection)?
        } else {
            owner_rows.load(connection)?
        };
        let mut owners: HashMap<Uuid, (WorkerRecord, bool)> = HashMap::new();
        for row in owner_rows {
            let holds_advisory_lock = row.holds_advisory_lock();
            let record = row.into_record()?;
            owners.insert(*record.id.as_uuid(), (record, holds_advisory_lock));
        }

        // 3. The database's time, read after the locks were granted: the
        //    clock heartbeats are written with, so owners' silence is
        //    measured on it (the caller's clock never matters). And how long
        //    this sweep has been able to watch locks: since the server
        //    started and since this connection began, whichever is later
        //    (after a restart, a failover or a reconnect every lock is free
        //    until its owner takes it back).
        let (db_now, watched_for) = Self::judging_clock(connection, watched_by_this_store)?;

        // 4. The running rows, each locked by exactly one sweep. Rows of an
        //    owner that appeared after step 1 are left to the next sweep.
        let running = task_history::table
            .filter(task_history::status.eq(RUNNING))
            .filter(not_mine)
            .order((task_history::started_at, task_history::id))
            .select(TaskRow::as_select());
        let running: Vec<TaskRow> = if apply {
            running.for_update().skip_locked().load(connection)?
        } else {
            running.load(connection)?
        };
        let running: Vec<TaskRecord> = running
            .into_iter()
            .map(TaskRow::into_record)
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|task| known_owners.contains(&task.worker_id.map(|id| *id.as_uuid())))
            .collect();

        // 5. One verdict per owner.
        let mut verdicts: BTreeMap<Option<WorkerId>, Liveness> = BTreeMap::new();
        for task in &running {
            if verdicts.contains_key(&task.worker_id) {
                continue;
            }
            let facts = match task.worker_id.and_then(|id| owners.get(id.as_uuid())) {
                Some((owner, holds_advisory_lock)) => Some(Self::owner_facts(
                    connection,
                    owner,
                    *holds_advisory_lock,
                    db_now,
                    watched_for,
                )?),
                None => None,
            };
            verdicts.insert(task.worker_id, judge.judge(facts.as_ref()));
        }

        // 6. Transition, invalidate, mark dead.
        let mut recovered = Vec::new();
        for (owner, verdict) in &verdicts {
            let Liveness::Dead(cause) = verdict else {
                continue;
            };
            let reason = recovery_reason(*owner, cause);
            let orphans: Vec<&TaskRecord> = running
                .iter()
                .filter(|task| task.worker_id == *owner)
                .collect();
            let orphan_ids: Vec<Uuid> = orphans.iter().map(|task| *task.id.as_uuid()).collect();
            let (transitioned, sessions): (BTreeSet<Uuid>, HashMap<Uuid, u32>) = if apply {
                let transitioned: Vec<Uuid> = diesel::update(
                    task_history::table
                        .filter(task_history::id.eq_any(&orphan_ids))
                        .filter(task_history::status.eq(RUNNING)),
                )
                .set((
                    task_history::status.eq(TaskStatus::Interrupted.as_str()),
                    task_history::interrupted_at.eq(now),
                    task_history::interrupt_reason.eq(&reason),
                    task_history::interrupted_by.eq(me),
                ))
                .returning(task_history::id)
                .get_results(connection)?;
                let sessions =
                    invalidate_sessions_of_tasks(connection, &transitioned, now, &reason)?;
                if let Some(owner) = owner {
                    diesel::update(
                        workers::table
                            .find(*owner.as_uuid())
                            .filter(workers::state.eq(ALIVE)),
                    )
                    .set((
                        workers::state.eq(WorkerState::Dead.as_str()),
                        workers::stopped_at.eq(now),
                    ))
                    .execute(connection)?;
                }
                (transitioned.into_iter().collect(), sessions)
            } else {
                let valid: Vec<Uuid> = claude_sdk_sessions::table
                    .filter(claude_sdk_sessions::task_id.eq_any(&orphan_ids))
                    .filter(claude_sdk_sessions::invalidated_at.is_null())
                    .select(claude_sdk_sessions::task_id)
                    .load(connection)?;
                (orphan_ids.iter().copied().collect(), count_by_task(valid))
            };
            for task in orphans {
                let id = *task.id.as_uuid();
                if !transitioned.contains(&id) {
                    continue;
                }
                let mut task = task.clone();
                task.status = TaskStatus::Interrupted;
                task.interrupted_at = Some(now);
                task.interrupt_reason = Some(reason.clone());
                task.interrupted_by = Some(request.recovering_worker);
                recovered.push(RecoveredTask {
                    task,
                    dead_worker: *owner,
                    cause: cause.clone(),
                    recovered_by: request.recovering_worker,
                    recovered_at: now,
                    sessions_invalidated: sessions.get(&id).copied().unwrap_or(0),
                    previous_reporter: None,
                });
            }
        }
        // 7. The reports the recovered rows owe.
        if apply && !recovered.is_empty() {
            let reports: Vec<NewReportRow> = recovered.iter().map(NewReportRow::owed).collect();
            for chunk in reports.chunks(1000) {
                diesel::insert_into(recovery_reports::table)
                    .values(chunk)
                    .execute(connection)?;
            }
        }
        recovered.sort_by_key(|recovered| (recovered.task.started_at, recovered.task.id));
        Ok(recovered)
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
                    if is_unique_violation(&error) {
                        StorageError::DuplicateWorker { id }
                    } else {
                        map_error(error)
                    }
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
                    if is_unique_violation(&error) {
                        Err(StorageError::DuplicateWorker { id })
                    } else {
                        Err(map_error(error))
                    }
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
                    return match worker_state(connection, worker, false).map_err(map_error)? {
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

    /// Marks the worker `stopped`, then releases its advisory lock.
    fn deregister_worker(&self, worker: WorkerId, at: Timestamp) -> Result<(), StorageError> {
        let at = truncate_to_micros(at);
        transaction(&mut *self.pooled()?, |connection| {
            if worker_state(connection, worker, false)?.is_none() {
                return Err(StorageError::UnknownWorker { id: worker }.into());
            }
            diesel::update(
                workers::table
                    .find(*worker.as_uuid())
                    .filter(workers::state.eq(ALIVE)),
            )
            .set((
                workers::state.eq(WorkerState::Stopped.as_str()),
                workers::stopped_at.eq(at),
            ))
            .execute(connection)?;
            Ok(())
        })?;
        if let Some(liveness) = self.liveness.as_ref().filter(|l| l.tracks(worker)) {
            // Best effort: if the session is gone, so is the lock.
            let _ = liveness.run(|connection, tracked| {
                tracked.remove(&worker);
                advisory_unlock(connection, Self::worker_lock_key(worker)).map_err(map_error)
            });
        }
        Ok(())
    }

    fn list_workers(&self) -> Result<Vec<WorkerRecord>, StorageError> {
        workers::table
            .order((workers::started_at, workers::id))
            .select(WorkerRow::as_select())
            .load(&mut self.pooled()?)
            .map_err(map_error)?
            .into_iter()
            .map(WorkerRow::into_record)
            .collect()
    }

    /// One prepared statement, one round trip: the INSERT reads the worker's
    /// row `FOR SHARE` (a concurrent sweep cannot declare it dead in
    /// between) and writes nothing unless it is `alive`.
    fn insert_running(&self, row: &NewRunningRow) -> Result<(), StorageError> {
        let mut connection = self.pooled()?;
        let spec = &row.spec;
        let inserted = InsertRunningIfWorkerAlive {
            id: *row.id.as_uuid(),
            repo: spec.repo(),
            issue_number: i64::from(spec.issue_number()),
            user: spec.user(),
            agent: spec.agent(),
            agent_type: spec.agent_type(),
            model: spec.model(),
            provider: spec.provider(),
            started_at: truncate_to_micros(row.started_at),
            worker: *row.worker.as_uuid(),
        }
        .execute(&mut *connection)
        .map_err(|error| {
            if is_unique_violation(&error) {
                StorageError::DuplicateTask { id: row.id }
            } else {
                map_error(error)
            }
        })?;
        if inserted == 1 {
            return Ok(());
        }
        // Nothing inserted: say why.
        match worker_state(&mut connection, row.worker, false).map_err(map_error)? {
            None => Err(StorageError::UnknownWorker { id: row.worker }),
            Some(_) => Err(StorageError::WorkerNotAlive { id: row.worker }),
        }
    }

    fn finish_running(&self, row: &FinishRow) -> Result<FinishWrite, StorageError> {
        let id = *row.id.as_uuid();
        let worker = *row.worker.as_uuid();
        let at = truncate_to_micros(row.at);
        let finish = |connection: &mut PgConnection| -> Result<FinishWrite, TxError> {
            let mut sessions_invalidated = 0;
            let guarded = task_history::table
                .filter(task_history::id.eq(id))
                .filter(task_history::status.eq(RUNNING))
                .filter(task_history::worker_id.eq(worker));
            let updated = match &row.outcome {
                Outcome::Interrupted(reason) => {
                    let updated = diesel::update(guarded)
                        .set((
                            task_history::status.eq(TaskStatus::Interrupted.as_str()),
                            task_history::interrupted_at.eq(at),
                            task_history::interrupt_reason.eq(reason.as_str()),
                            task_history::interrupted_by.eq(worker),
                        ))
                        .execute(connection)?;
                    if updated == 1 {
                        let reason = format!("task interrupted: {reason}");
                        sessions_invalidated =
                            invalidate_sessions_of_tasks(connection, &[id], at, &reason)?
                                .values()
                                .sum();
                    }
                    updated
                }
                Outcome::Success(report)
                | Outcome::Failure(report)
                | Outcome::Cancelled(report)
                | Outcome::AbortedNoSkill(report) => FinishCompletedIfOwnedAndRunning {
                    id,
                    worker,
                    status: row.outcome.status().as_str(),
                    finished_at: at,
                    input_tokens: i64::from(report.input_tokens),
                    output_tokens: i64::from(report.output_tokens),
                    cost_usd: report.cost_usd.dollars(),
                    turns: i64::from(report.turns),
                    artifacts: artifacts_to_json(&report.artifacts),
                }
                .execute(connection)?,
            };
            if updated == 1 {
                return Ok(FinishWrite::Updated {
                    sessions_invalidated,
                });
            }
            Ok(FinishWrite::Refused(match load_task(connection, id)? {
                None => FinishRefusal::Missing,
                Some(record) => record.refusal_for(row.worker),
            }))
        };
        let mut connection = self.pooled()?;
        match row.outcome {
            // The UPDATE and the sessions' invalidation commit together.
            Outcome::Interrupted(_) => transaction(&mut connection, finish),
            // A single guarded UPDATE commits on its own: one round trip.
            _ => finish(&mut connection).map_err(StorageError::from),
        }
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
        transaction(&mut *self.pooled()?, |connection| {
            Self::sweep(connection, request, judge, watched_by_this_store)
        })
    }

    fn claim_unreported_recoveries(
        &self,
        claim: &ReportClaim,
        judge: &dyn LivenessJudge,
    ) -> Result<Vec<RecoveredTask>, StorageError> {
        let watched_by_this_store = self.watched_for();
        transaction(&mut *self.pooled()?, |connection| {
            Self::claim(connection, claim, judge, watched_by_this_store)
        })
    }

    fn confirm_reports(
        &self,
        reporter: WorkerId,
        tasks: &[TaskId],
        at: Timestamp,
    ) -> Result<u64, StorageError> {
        let ids: Vec<Uuid> = tasks.iter().map(|id| *id.as_uuid()).collect();
        diesel::update(
            recovery_reports::table
                .filter(recovery_reports::task_id.eq_any(&ids))
                .filter(recovery_reports::owed_by.eq(*reporter.as_uuid()))
                .filter(recovery_reports::reported_at.is_null()),
        )
        .set(recovery_reports::reported_at.eq(truncate_to_micros(at)))
        .execute(&mut *self.pooled()?)
        .map(|confirmed| confirmed as u64)
        .map_err(map_error)
    }

    /// One transaction: the worker must be `alive` (`FOR SHARE`) and the task
    /// `running` under it (`FOR SHARE`), then the INSERT.
    fn record_session(&self, session: &NewSession) -> Result<(), StorageError> {
        let task_id = *session.task_id.as_uuid();
        transaction(&mut *self.pooled()?, |connection| {
            require_alive(connection, session.worker)?;
            let owned_and_running = task_history::table
                .filter(task_history::id.eq(task_id))
                .filter(task_history::status.eq(RUNNING))
                .filter(task_history::worker_id.eq(*session.worker.as_uuid()))
                .select(task_history::id)
                .for_share()
                .first::<Uuid>(connection)
                .optional()?
                .is_some();
            if !owned_and_running {
                return Err(StorageError::TaskNotRunning {
                    id: session.task_id,
                }
                .into());
            }
            diesel::insert_into(claude_sdk_sessions::table)
                .values(SessionRow {
                    session_id: session.session_id.as_str().to_owned(),
                    task_id,
                    repo: session.repo.clone(),
                    issue_number: i64::from(session.issue_number),
                    agent: session.agent.clone(),
                    created_at: truncate_to_micros(session.created_at),
                    invalidated_at: None,
                    invalidation_reason: None,
                })
                .execute(connection)
                .map_err(|error| {
                    if is_unique_violation(&error) {
                        TxError::Storage(StorageError::DuplicateSession)
                    } else {
                        TxError::Diesel(error)
                    }
                })?;
            Ok(())
        })
    }

    fn resumable_session(&self, key: &SessionKey) -> Result<Option<SessionRecord>, StorageError> {
        let resumable_statuses = [
            TaskStatus::Success.as_str(),
            TaskStatus::Failure.as_str(),
            TaskStatus::Cancelled.as_str(),
            TaskStatus::AbortedNoSkill.as_str(),
        ];
        claude_sdk_sessions::table
            .inner_join(task_history::table)
            .filter(claude_sdk_sessions::repo.eq(&key.repo))
            .filter(claude_sdk_sessions::issue_number.eq(i64::from(key.issue_number)))
            .filter(claude_sdk_sessions::agent.eq(&key.agent))
            .filter(claude_sdk_sessions::invalidated_at.is_null())
            .filter(task_history::status.eq_any(resumable_statuses))
            .order((
                claude_sdk_sessions::created_at.desc(),
                claude_sdk_sessions::session_id.desc(),
            ))
            .select(SessionRow::as_select())
            .first(&mut self.pooled()?)
            .optional()
            .map_err(map_error)?
            .map(SessionRow::into_record)
            .transpose()
    }

    fn list_sessions(&self) -> Result<Vec<SessionRecord>, StorageError> {
        claude_sdk_sessions::table
            .order((
                claude_sdk_sessions::created_at.desc(),
                claude_sdk_sessions::session_id.desc(),
            ))
            .select(SessionRow::as_select())
            .load(&mut self.pooled()?)
            .map_err(map_error)?
            .into_iter()
            .map(SessionRow::into_record)
            .collect()
    }

    fn list_task_sessions(&self, task: TaskId) -> Result<Vec<SessionRecord>, StorageError> {
        claude_sdk_sessions::table
            .filter(claude_sdk_sessions::task_id.eq(*task.as_uuid()))
            .order((
                claude_sdk_sessions::created_at.desc(),
                claude_sdk_sessions::session_id.desc(),
            ))
            .select(SessionRow::as_select())
            .load(&mut self.pooled()?)
            .map_err(map_error)?
            .into_iter()
            .map(SessionRow::into_record)
            .collect()
    }

    fn get_task(&self, id: TaskId) -> Result<Option<TaskRecord>, StorageError> {
        load_task(&mut *self.pooled()?, *id.as_uuid()).map_err(StorageError::from)
    }

    fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>, StorageError> {
        self.task_rows(filter)?
            .into_iter()
            .map(TaskRow::into_record)
            .collect()
    }

    fn list_task_rows(
        &self,
        filter: &TaskFilter,
    ) -> Result<Vec<Result<TaskRecord, StorageError>>, StorageError> {
        Ok(self
            .task_rows(filter)?
            .into_iter()
            .map(TaskRow::into_record)
            .collect())
    }

    fn count_tasks_by_status(
        &self,
        repo: Option<&str>,
    ) -> Result<Vec<(TaskStatus, u64)>, StorageError> {
        self.status_counts(repo)
    }

    fn count_outcomes_by_hour(
        &self,
        since: Timestamp,
    ) -> Result<Vec<tasktrail_core::OutcomeBucket>, StorageError> {
        self.outcomes_by_hour(since)
    }
}

impl PostgresStorage {
    /// The `task_history` rows matching `filter`, newest first, undecoded.
    fn task_rows(&self, filter: &TaskFilter) -> Result<Vec<TaskRow>, StorageError> {
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
        query.load(&mut self.pooled()?).map_err(map_error)
    }
}
