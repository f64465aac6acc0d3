//! The recovery sweep and the report claim of the server backends
//! (Postgres, MySQL), written once: one transaction that locks, in this
//! order, the `workers` rows of the owners it judges (`FOR UPDATE`, in id
//! order: concurrent sweeps queue on an owner instead of both judging it)
//! and then the rows it changes (`FOR UPDATE SKIP LOCKED`), and changes
//! only rows it holds. That makes recovery exactly-once across concurrent
//! boots. The decisions are core's ([`OwnerRecovery`],
//! [`ReportClaim::reports_of`]); the verdicts the caller's judge's.
//!
//! A backend implements [`RowLockSweep`]: the statements whose text is its
//! own (how it reads the database's clock and asks whether a worker's lock
//! is held; how it tells which rows an UPDATE changed: Postgres with
//! `RETURNING`, MySQL by reading the locked rows first) and, by expanding
//! [`row_lock_sweep_statements!`] with its schema and rows in scope (as for
//! `crate::statements`), the ones every dialect writes alike. SQLite's
//! sweep (one writer, flock files) is its own (`sqlite/sweep.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;

use diesel::result::Error as DieselError;
use tasktrail_core::backend::{
    sort_recovered, ClaimedReports, LivenessJudge, LockWatch, OwnerFacts, OwnerLock, OwnerRecovery,
    RecoveryRequest, ReportClaim, SweepMode,
};
use tasktrail_core::{
    truncate_to_micros, Liveness, RecoveredTask, StorageError, TaskRecord, Timestamp, WorkerId,
    WorkerRecord, WorkerState,
};

use crate::store::SqlDialect;
use crate::tx::TxError;

/// An owner's `workers` row, and whether it registered holding its
/// liveness lock.
pub(crate) type OwnerRow = (WorkerRecord, bool);

/// What the judge needs at this instant: the database's time and how long
/// this sweep could have watched locks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct JudgingClock {
    db_now: Timestamp,
    watched_for: chrono::Duration,
}

/// What a server backend supplies for the sweep (see the module
/// documentation).
pub(crate) trait RowLockSweep {
    /// The connection the sweep's transaction runs on.
    type Connection;
    /// An id as the backend's columns hold it.
    type Id: Ord + Eq + Hash + Clone;

    /// The most ids one statement binds (`eq_any` binds one placeholder per
    /// id where the dialect has no array parameter): the ids of a large
    /// sweep or claim go in chunks of this many, in the same transaction.
    const IDS_PER_STATEMENT: usize;

    /// An id as the backend's columns hold it.
    fn stored(id: &uuid::Uuid) -> Self::Id;

    /// A worker id read back from a column.
    fn worker_of(stored: &Self::Id) -> Result<WorkerId, StorageError>;

    /// Step 1: the owners of running rows other than the sweeper.
    fn running_owners(
        connection: &mut Self::Connection,
        sweeper: &Self::Id,
    ) -> Result<BTreeSet<Option<Self::Id>>, DieselError>;

    /// Step 2: the owners' `workers` rows, locked in id order when `lock`.
    fn lock_owner_rows(
        connection: &mut Self::Connection,
        owners: &BTreeSet<Option<Self::Id>>,
        lock: bool,
    ) -> Result<HashMap<Self::Id, OwnerRow>, TxError>;

    /// Step 3: the database's clock now (read after the row locks were
    /// granted) and, where the server says, how long it has been up.
    fn database_clock(
        connection: &mut Self::Connection,
    ) -> Result<(Timestamp, Option<std::time::Duration>), DieselError>;

    /// Step 4: the running rows of `owners`, each locked by exactly one
    /// sweep when `lock` (`SKIP LOCKED`).
    fn lock_running_rows(
        connection: &mut Self::Connection,
        sweeper: &Self::Id,
        owners: &BTreeSet<Option<Self::Id>>,
        lock: bool,
    ) -> Result<Vec<TaskRecord>, TxError>;

    /// Whether some session holds `worker`'s liveness lock now, asked
    /// without taking it (so the owner can always take it back).
    fn worker_lock_is_held(
        connection: &mut Self::Connection,
        worker: WorkerId,
    ) -> Result<bool, DieselError>;

    /// Step 6a: the dead owner's locked rows become `interrupted`, if still
    /// `running`; returns those that did.
    fn interrupt_orphans(
        connection: &mut Self::Connection,
        orphans: &[Self::Id],
        plan: &OwnerRecovery,
    ) -> Result<Vec<Self::Id>, DieselError>;

    /// Step 6b: the still-valid sessions of `task_ids` invalidated; how
    /// many each task had.
    fn invalidate_sessions_of_tasks(
        connection: &mut Self::Connection,
        task_ids: &[Self::Id],
        at: Timestamp,
        reason: &str,
    ) -> Result<HashMap<Self::Id, u32>, DieselError>;

    /// Step 6b on a dry run: how many valid sessions each task has.
    fn count_valid_sessions(
        connection: &mut Self::Connection,
        task_ids: &[Self::Id],
    ) -> Result<HashMap<Self::Id, u32>, DieselError>;

    /// Step 6c: the owner, if still `alive`, is `dead` from now on.
    fn mark_dead(
        connection: &mut Self::Connection,
        plan: &OwnerRecovery,
    ) -> Result<(), DieselError>;

    /// Step 7: the report each recovered row owes, owed by the sweeper.
    fn record_owed_reports(
        connection: &mut Self::Connection,
        recovered: &[RecoveredTask],
    ) -> Result<(), DieselError>;

    /// The workers some unconfirmed report is owed by.
    fn owing_reporters(connection: &mut Self::Connection) -> Result<Vec<Self::Id>, DieselError>;

    /// The unconfirmed reports owed by `all` (every one) and `owed_before`
    /// (only those owed since before the claim's cut-off), locked, moved to
    /// the claimant and read with their rows.
    fn move_reports(
        connection: &mut Self::Connection,
        claim: &ReportClaim,
        all: &[Self::Id],
        owed_before: &[Self::Id],
    ) -> Result<Vec<RecoveredTask>, TxError>;
}

/// A server store: a [`RowLockSweep`] over its [`SqlDialect`] connection
/// that knows how long it has watched liveness locks without a break.
pub(crate) trait WatchingStore:
    SqlDialect + RowLockSweep<Connection = <Self as SqlDialect>::Connection>
{
    /// How long this store has been able to watch liveness locks without a
    /// break (its liveness session's age, pinged).
    fn watched_for(&self) -> std::time::Duration;
}

/// `Storage::recover_orphans`: the sweep in one write transaction. The
/// connection is checked out before the store says how long it watched,
/// so a server restart after that answer ends this connection too (the
/// sweep fails instead of judging with a watch the restart reset).
pub(crate) fn recover_orphans<S: WatchingStore>(
    store: &S,
    request: &RecoveryRequest,
    judge: &dyn LivenessJudge,
) -> Result<Vec<RecoveredTask>, StorageError> {
    let mut connection = store.hold()?;
    let watched_by_this_store = store.watched_for();
    S::write_transaction(&mut connection, |connection| {
        sweep::<S>(connection, request, judge, watched_by_this_store)
    })
}

/// `Storage::claim_unreported_recoveries`: the claim in one write
/// transaction (checked out as for [`recover_orphans`]).
pub(crate) fn claim_unreported_recoveries<S: WatchingStore>(
    store: &S,
    report_claim: &ReportClaim,
    judge: &dyn LivenessJudge,
) -> Result<Vec<RecoveredTask>, StorageError> {
    let mut connection = store.hold()?;
    let watched_by_this_store = store.watched_for();
    S::write_transaction(&mut connection, |connection| {
        claim::<S>(connection, report_claim, judge, watched_by_this_store)
    })
}

/// The two `Storage` methods of a [`WatchingStore`], for its `impl
/// Storage` to expand.
macro_rules! row_lock_storage_methods {
    () => {
        fn recover_orphans(
            &self,
            request: &tasktrail_core::backend::RecoveryRequest,
            judge: &dyn tasktrail_core::backend::LivenessJudge,
        ) -> Result<Vec<tasktrail_core::RecoveredTask>, tasktrail_core::StorageError> {
            $crate::row_lock_sweep::recover_orphans(self, request, judge)
        }

        fn claim_unreported_recoveries(
            &self,
            claim: &tasktrail_core::backend::ReportClaim,
            judge: &dyn tasktrail_core::backend::LivenessJudge,
        ) -> Result<Vec<tasktrail_core::RecoveredTask>, tasktrail_core::StorageError> {
            $crate::row_lock_sweep::claim_unreported_recoveries(self, claim, judge)
        }
    };
}
pub(crate) use row_lock_storage_methods;

/// How many of `task_ids` name each task.
pub(crate) fn count_by_task<Id: Eq + Hash>(task_ids: Vec<Id>) -> HashMap<Id, u32> {
    let mut counts = HashMap::new();
    for task in task_ids {
        *counts.entry(task).or_insert(0) += 1;
    }
    counts
}

/// The sweep, in the caller's transaction.
pub(crate) fn sweep<S: RowLockSweep>(
    connection: &mut S::Connection,
    request: &RecoveryRequest,
    judge: &dyn LivenessJudge,
    watched_by_this_store: std::time::Duration,
) -> Result<Vec<RecoveredTask>, TxError> {
    let apply = request.mode == SweepMode::Apply;
    let sweeper = S::stored(request.recovering_worker.as_uuid());
    let now = truncate_to_micros(request.now);
    let owners = S::running_owners(connection, &sweeper)?;
    if owners.is_empty() {
        return Ok(Vec::new());
    }
    let owner_rows = S::lock_owner_rows(connection, &owners, apply)?;
    let clock = judging_clock::<S>(connection, watched_by_this_store)?;
    let running = S::lock_running_rows(connection, &sweeper, &owners, apply)?;
    let verdicts = judge_owners::<S>(connection, &running, &owner_rows, clock, judge)?;
    let mut recovered = Vec::new();
    for (owner, verdict) in &verdicts {
        let Some(plan) =
            OwnerRecovery::for_verdict(*owner, verdict, request.recovering_worker, now)
        else {
            continue;
        };
        let orphans: Vec<&TaskRecord> = running
            .iter()
            .filter(|task| task.worker_id == *owner)
            .collect();
        let orphan_ids: Vec<S::Id> = orphans
            .iter()
            .map(|task| S::stored(task.id.as_uuid()))
            .collect();
        let (transitioned, sessions) = if apply {
            let transitioned = S::interrupt_orphans(connection, &orphan_ids, &plan)?;
            let sessions =
                S::invalidate_sessions_of_tasks(connection, &transitioned, plan.at, &plan.reason)?;
            S::mark_dead(connection, &plan)?;
            (transitioned.into_iter().collect::<BTreeSet<_>>(), sessions)
        } else {
            let sessions = S::count_valid_sessions(connection, &orphan_ids)?;
            (orphan_ids.iter().cloned().collect(), sessions)
        };
        for task in orphans {
            let id = S::stored(task.id.as_uuid());
            if transitioned.contains(&id) {
                let count = sessions.get(&id).copied().unwrap_or(0);
                recovered.push(plan.recovered(task.clone(), count));
            }
        }
    }
    if apply {
        S::record_owed_reports(connection, &recovered)?;
    }
    sort_recovered(&mut recovered);
    Ok(recovered)
}

/// The claim of
/// [`Storage::claim_unreported_recoveries`](tasktrail_core::Storage::claim_unreported_recoveries),
/// in the caller's transaction.
pub(crate) fn claim<S: RowLockSweep>(
    connection: &mut S::Connection,
    claim: &ReportClaim,
    judge: &dyn LivenessJudge,
    watched_by_this_store: std::time::Duration,
) -> Result<Vec<RecoveredTask>, TxError> {
    let claimant = S::stored(claim.claimant.as_uuid());
    let owed_by = S::owing_reporters(connection)?;
    if owed_by.is_empty() {
        return Ok(Vec::new());
    }
    // The owners' rows, locked in id order like a sweep's, so a claim and a
    // sweep judging the same owner read one decision.
    let others: BTreeSet<Option<S::Id>> = owed_by
        .iter()
        .filter(|id| **id != claimant)
        .map(|id| Some(id.clone()))
        .collect();
    let owner_rows = S::lock_owner_rows(connection, &others, true)?;
    let clock = judging_clock::<S>(connection, watched_by_this_store)?;
    let mut all: Vec<S::Id> = Vec::new();
    let mut owed_before: Vec<S::Id> = Vec::new();
    for owner in owed_by {
        let row = owner_rows.get(&owner);
        let facts = facts_of::<S>(connection, row, clock)?;
        let scope = claim.reports_of(S::worker_of(&owner)?, row.is_some(), || {
            judge.judge(facts.as_ref())
        });
        match scope {
            ClaimedReports::All => all.push(owner),
            ClaimedReports::OwedBefore(_) => owed_before.push(owner),
            ClaimedReports::None => {}
        }
    }
    if all.is_empty() && owed_before.is_empty() {
        return Ok(Vec::new());
    }
    let mut claimed = S::move_reports(connection, claim, &all, &owed_before)?;
    sort_recovered(&mut claimed);
    Ok(claimed)
}

/// Step 3: the database's time (the clock heartbeats are written with, so
/// owners' silence is measured on it; the caller's clock never matters) and
/// how long a judge has been able to watch locks: since the server started
/// (where it says) and since this store's liveness session began, whichever
/// is later (after a restart, a failover or a reconnect every lock is free
/// until its owner takes it back).
fn judging_clock<S: RowLockSweep>(
    connection: &mut S::Connection,
    watched_by_this_store: std::time::Duration,
) -> Result<JudgingClock, DieselError> {
    let (db_now, server_up_for) = S::database_clock(connection)?;
    let watched = server_up_for.map_or(watched_by_this_store, |up| up.min(watched_by_this_store));
    Ok(JudgingClock {
        db_now,
        watched_for: chrono::Duration::from_std(watched).unwrap_or(chrono::Duration::MAX),
    })
}

/// Step 5: one verdict per owner of the locked running rows.
fn judge_owners<S: RowLockSweep>(
    connection: &mut S::Connection,
    running: &[TaskRecord],
    owner_rows: &HashMap<S::Id, OwnerRow>,
    clock: JudgingClock,
    judge: &dyn LivenessJudge,
) -> Result<BTreeMap<Option<WorkerId>, Liveness>, TxError> {
    let mut verdicts: BTreeMap<Option<WorkerId>, Liveness> = BTreeMap::new();
    for task in running {
        if verdicts.contains_key(&task.worker_id) {
            continue;
        }
        let row = task
            .worker_id
            .and_then(|id| owner_rows.get(&S::stored(id.as_uuid())));
        let facts = facts_of::<S>(connection, row, clock)?;
        verdicts.insert(task.worker_id, judge.judge(facts.as_ref()));
    }
    Ok(verdicts)
}

/// What the judge learns about one owner (`None`: no `workers` row): its
/// silence on the database's clock (`db_now` minus its heartbeat) and, for
/// an `alive` owner that registered holding its lock, whether some session
/// holds that lock now.
fn facts_of<S: RowLockSweep>(
    connection: &mut S::Connection,
    row: Option<&OwnerRow>,
    clock: JudgingClock,
) -> Result<Option<OwnerFacts>, DieselError> {
    let Some((owner, holds_liveness_lock)) = row else {
        return Ok(None);
    };
    let lock = if owner.state == WorkerState::Alive && *holds_liveness_lock {
        if S::worker_lock_is_held(connection, owner.id)? {
            OwnerLock::Held
        } else {
            OwnerLock::Free {
                watched_for: LockWatch::For(clock.watched_for),
            }
        }
    } else {
        // A stopped or dead owner holds no lock worth asking about; a
        // registration older than the locks recorded none.
        OwnerLock::NotCheckable
    };
    Ok(Some(OwnerFacts::observed_at(
        owner.clone(),
        clock.db_now,
        lock,
    )))
}

/// The [`RowLockSweep`] statements every dialect writes alike, for a
/// backend's `impl RowLockSweep` (its `schema`, `rows` — `TaskRow`,
/// `WorkerRow` with `holds_liveness_lock()`, `NewReportRow`, `ReportRow` —
/// `stored_id` and `stored_time` in scope, as for `crate::statements`).
macro_rules! row_lock_sweep_statements {
    () => {
        fn running_owners(
            connection: &mut Self::Connection,
            sweeper: &Self::Id,
        ) -> Result<std::collections::BTreeSet<Option<Self::Id>>, diesel::result::Error> {
            let owners: Vec<Option<Self::Id>> = task_history::table
                .filter(task_history::status.eq(tasktrail_core::TaskStatus::Running.as_str()))
                .filter(
                    task_history::worker_id
                        .ne(sweeper.clone())
                        .or(task_history::worker_id.is_null()),
                )
                .select(task_history::worker_id)
                .distinct()
                .load(connection)?;
            Ok(owners.into_iter().collect())
        }

        fn lock_owner_rows(
            connection: &mut Self::Connection,
            owners: &std::collections::BTreeSet<Option<Self::Id>>,
            lock: bool,
        ) -> Result<
            std::collections::HashMap<Self::Id, $crate::row_lock_sweep::OwnerRow>,
            $crate::tx::TxError,
        > {
            let registered: Vec<Self::Id> = owners.iter().flatten().cloned().collect();
            let rows = workers::table
                .filter(workers::id.eq_any(&registered))
                .order(workers::id)
                .select(WorkerRow::as_select());
            let rows: Vec<WorkerRow> = if lock {
                rows.for_update().load(connection)?
            } else {
                rows.load(connection)?
            };
            let mut owner_rows = std::collections::HashMap::new();
            for row in rows {
                let holds_liveness_lock = row.holds_liveness_lock();
                let record = row.into_record()?;
                owner_rows.insert(
                    stored_id(record.id.as_uuid()),
                    (record, holds_liveness_lock),
                );
            }
            Ok(owner_rows)
        }

        fn lock_running_rows(
            connection: &mut Self::Connection,
            sweeper: &Self::Id,
            owners: &std::collections::BTreeSet<Option<Self::Id>>,
            lock: bool,
        ) -> Result<Vec<tasktrail_core::TaskRecord>, $crate::tx::TxError> {
            let running = task_history::table
                .filter(task_history::status.eq(tasktrail_core::TaskStatus::Running.as_str()))
                .filter(
                    task_history::worker_id
                        .ne(sweeper.clone())
                        .or(task_history::worker_id.is_null()),
                )
                .order((task_history::started_at, task_history::id))
                .select(TaskRow::as_select());
            let running: Vec<TaskRow> = if lock {
                running.for_update().skip_locked().load(connection)?
            } else {
                running.load(connection)?
            };
            Ok(running
                .into_iter()
                .map(TaskRow::into_record)
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .filter(|task| owners.contains(&task.worker_id.map(|id| stored_id(id.as_uuid()))))
                .collect())
        }

        fn count_valid_sessions(
            connection: &mut Self::Connection,
            task_ids: &[Self::Id],
        ) -> Result<std::collections::HashMap<Self::Id, u32>, diesel::result::Error> {
            let mut valid: Vec<Self::Id> = Vec::with_capacity(task_ids.len());
            for chunk in task_ids.chunks(Self::IDS_PER_STATEMENT) {
                valid.extend(
                    claude_sdk_sessions::table
                        .filter(claude_sdk_sessions::task_id.eq_any(chunk))
                        .filter(claude_sdk_sessions::invalidated_at.is_null())
                        .select(claude_sdk_sessions::task_id)
                        .load::<Self::Id>(connection)?,
                );
            }
            Ok($crate::row_lock_sweep::count_by_task(valid))
        }

        fn mark_dead(
            connection: &mut Self::Connection,
            plan: &tasktrail_core::backend::OwnerRecovery,
        ) -> Result<(), diesel::result::Error> {
            let Some(owner) = plan.owner_to_mark_dead() else {
                return Ok(());
            };
            diesel::update(
                workers::table
                    .find(stored_id(owner.as_uuid()))
                    .filter(workers::state.eq(tasktrail_core::WorkerState::Alive.as_str())),
            )
            .set((
                workers::state.eq(tasktrail_core::WorkerState::Dead.as_str()),
                workers::stopped_at.eq(stored_time(plan.at)),
            ))
            .execute(connection)?;
            Ok(())
        }

        fn record_owed_reports(
            connection: &mut Self::Connection,
            recovered: &[tasktrail_core::RecoveredTask],
        ) -> Result<(), diesel::result::Error> {
            let reports: Vec<NewReportRow> = recovered.iter().map(NewReportRow::owed).collect();
            for chunk in reports.chunks(1000) {
                diesel::insert_into(recovery_reports::table)
                    .values(chunk)
                    .execute(connection)?;
            }
            Ok(())
        }

        fn owing_reporters(
            connection: &mut Self::Connection,
        ) -> Result<Vec<Self::Id>, diesel::result::Error> {
            recovery_reports::table
                .filter(recovery_reports::reported_at.is_null())
                .select(recovery_reports::owed_by)
                .distinct()
                .load(connection)
        }

        /// Each report moves once: a concurrent claim waits on the row and
        /// re-reads `owed_by`, which no longer names a dead owner.
        fn move_reports(
            connection: &mut Self::Connection,
            claim: &tasktrail_core::backend::ReportClaim,
            all: &[Self::Id],
            owed_before: &[Self::Id],
        ) -> Result<Vec<tasktrail_core::RecoveredTask>, $crate::tx::TxError> {
            let reports: Vec<(Self::Id, ReportRow)> = recovery_reports::table
                .filter(recovery_reports::reported_at.is_null())
                .filter(
                    recovery_reports::owed_by
                        .eq_any(all)
                        .or(recovery_reports::owed_by.eq_any(owed_before).and(
                            recovery_reports::owed_since
                                .lt(stored_time(claim.unregistered_owed_before)),
                        )),
                )
                .select((recovery_reports::task_id, ReportRow::as_select()))
                .for_update()
                .load(connection)?;
            let ids: Vec<Self::Id> = reports.iter().map(|(id, _)| id.clone()).collect();
            let mut tasks: std::collections::HashMap<Self::Id, TaskRow> =
                std::collections::HashMap::with_capacity(ids.len());
            for chunk in ids.chunks(Self::IDS_PER_STATEMENT) {
                diesel::update(
                    recovery_reports::table.filter(recovery_reports::task_id.eq_any(chunk)),
                )
                .set((
                    recovery_reports::owed_by.eq(stored_id(claim.claimant.as_uuid())),
                    recovery_reports::owed_since.eq(stored_time(claim.now)),
                ))
                .execute(connection)?;
                tasks.extend(
                    task_history::table
                        .filter(task_history::id.eq_any(chunk))
                        .select(TaskRow::as_select())
                        .load::<TaskRow>(connection)?
                        .into_iter()
                        .map(|task| (task.stored_id(), task)),
                );
            }
            let mut claimed = Vec::with_capacity(reports.len());
            for (id, report) in reports {
                // The foreign key keeps the row while its report exists.
                if let Some(task) = tasks.remove(&id) {
                    claimed.push(report.into_recovered(task.into_record()?)?);
                }
            }
            Ok(claimed)
        }
    };
}
pub(crate) use row_lock_sweep_statements;
