//! The MySQL recovery sweep and report claim, as named steps. Each is
//! one transaction that locks, in this order, the `workers` rows of the
//! owners it judges (`FOR UPDATE`, in id order: concurrent sweeps queue on
//! an owner instead of both judging it) and then the rows it changes
//! (`FOR UPDATE SKIP LOCKED`): see [`MysqlStorage`] for why that makes
//! recovery exactly-once. MariaDB has no `UPDATE … RETURNING`: a step
//! changes only rows this transaction holds locked, so the rows it changed
//! are the rows it locked. The decisions are core's ([`OwnerRecovery`],
//! [`ReportClaim::reports_of`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use diesel::prelude::*;
use diesel::result::Error as DieselError;
use diesel::sql_types::Datetime;
use tasktrail_core::backend::{
    sort_recovered, ClaimedReports, LivenessJudge, LockWatch, OwnerFacts, OwnerLock, OwnerRecovery,
    RecoveryRequest, ReportClaim, SweepMode,
};
use tasktrail_core::{
    truncate_to_micros, Liveness, RecoveredTask, TaskRecord, TaskStatus, Timestamp, WorkerId,
    WorkerRecord, WorkerState,
};

use super::locks::named_lock_is_held;
use super::rows::{stored_time, NewReportRow, ReportRow, TaskRow, WorkerRow};
use super::schema::{claude_sdk_sessions, recovery_reports, task_history, workers};
use super::{MysqlConnection, MysqlStorage};
use crate::tx::TxError;

const RUNNING: &str = TaskStatus::Running.as_str();

/// The most ids one statement of this backend binds. MySQL refuses to
/// prepare a statement with more than 65,535 placeholders (error 1390,
/// "Prepared statement contains too many placeholders"), and an `eq_any` of
/// ids binds one per id: the ids of a large sweep (100,000 orphans of one
/// owner) or claim go in chunks of this many, in the same transaction.
pub(super) const IDS_PER_STATEMENT: usize = 10_000;
const ALIVE: &str = WorkerState::Alive.as_str();

/// The database's clock at the sweep.
#[derive(QueryableByName)]
struct DatabaseClock {
    #[diesel(sql_type = Datetime)]
    db_now: chrono::NaiveDateTime,
}

/// Ids are stored as their hyphenated text.
type Uuid = String;

/// An owner's `workers` row, and whether it registered holding its
/// named lock.
type OwnerRow = (WorkerRecord, bool);

/// What the judge needs at this instant: the database's time and how long
/// this sweep could have watched locks.
#[derive(Debug, Clone, Copy)]
struct JudgingClock {
    db_now: Timestamp,
    watched_for: chrono::Duration,
}

impl MysqlStorage {
    /// The sweep, in the caller's transaction.
    pub(super) fn sweep(
        connection: &mut MysqlConnection,
        request: &RecoveryRequest,
        judge: &dyn LivenessJudge,
        watched_by_this_store: std::time::Duration,
    ) -> Result<Vec<RecoveredTask>, TxError> {
        let apply = request.mode == SweepMode::Apply;
        let sweeper = request.recovering_worker.to_string();
        let now = truncate_to_micros(request.now);
        let owners = running_owners(connection, &sweeper)?;
        if owners.is_empty() {
            return Ok(Vec::new());
        }
        let owner_rows = lock_owner_rows(connection, &owners, apply)?;
        let clock = Self::judging_clock(connection, watched_by_this_store)?;
        let running = lock_running_rows(connection, &sweeper, &owners, apply)?;
        let verdicts = Self::judge_owners(connection, &running, &owner_rows, clock, judge)?;
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
            let orphan_ids: Vec<Uuid> = orphans.iter().map(|task| task.id.to_string()).collect();
            let (transitioned, sessions) = if apply {
                let transitioned = interrupt_orphans(connection, &orphan_ids, &plan)?;
                let sessions =
                    invalidate_sessions_of_tasks(connection, &transitioned, plan.at, &plan.reason)?;
                mark_dead(connection, &plan)?;
                (transitioned.into_iter().collect(), sessions)
            } else {
                let sessions = count_valid_sessions(connection, &orphan_ids)?;
                (
                    orphan_ids.iter().cloned().collect::<BTreeSet<Uuid>>(),
                    sessions,
                )
            };
            for task in orphans {
                let id = task.id.to_string();
                if transitioned.contains(&id) {
                    let count = sessions.get(&id).copied().unwrap_or(0);
                    recovered.push(plan.recovered(task.clone(), count));
                }
            }
        }
        if apply {
            record_owed_reports(connection, &recovered)?;
        }
        sort_recovered(&mut recovered);
        Ok(recovered)
    }

    /// The claim of [`Storage::claim_unreported_recoveries`](tasktrail_core::Storage::claim_unreported_recoveries),
    /// in the caller's transaction.
    pub(super) fn claim(
        connection: &mut MysqlConnection,
        claim: &ReportClaim,
        judge: &dyn LivenessJudge,
        watched_by_this_store: std::time::Duration,
    ) -> Result<Vec<RecoveredTask>, TxError> {
        let claimant = claim.claimant.to_string();
        let owed_by: Vec<Uuid> = recovery_reports::table
            .filter(recovery_reports::reported_at.is_null())
            .select(recovery_reports::owed_by)
            .distinct()
            .load(connection)?;
        if owed_by.is_empty() {
            return Ok(Vec::new());
        }
        // The owners' rows, locked in id order like a sweep's, so a claim
        // and a sweep judging the same owner read one decision.
        let others: BTreeSet<Option<Uuid>> = owed_by
            .iter()
            .filter(|id| **id != claimant)
            .map(|id| Some(id.clone()))
            .collect();
        let owner_rows = lock_owner_rows(connection, &others, true)?;
        let clock = Self::judging_clock(connection, watched_by_this_store)?;
        let mut all: Vec<Uuid> = Vec::new();
        let mut owed_before: Vec<Uuid> = Vec::new();
        for owner in owed_by {
            let row = owner_rows.get(&owner);
            let facts = Self::facts_of(connection, row, clock)?;
            let owner_id: WorkerId = owner.parse().map_err(|_| {
                crate::codec::corrupt(format!("recovery report owed by {owner:?}: not a UUID"))
            })?;
            let scope = claim.reports_of(owner_id, row.is_some(), || judge.judge(facts.as_ref()));
            match scope {
                ClaimedReports::All => all.push(owner),
                ClaimedReports::OwedBefore(_) => owed_before.push(owner),
                ClaimedReports::None => {}
            }
        }
        if all.is_empty() && owed_before.is_empty() {
            return Ok(Vec::new());
        }
        let mut claimed = move_reports(connection, claim, &all, &owed_before)?;
        sort_recovered(&mut claimed);
        Ok(claimed)
    }

    /// Step 5: one verdict per owner of the locked running rows.
    fn judge_owners(
        connection: &mut MysqlConnection,
        running: &[TaskRecord],
        owner_rows: &HashMap<Uuid, OwnerRow>,
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
                .and_then(|id| owner_rows.get(&id.to_string()));
            let facts = Self::facts_of(connection, row, clock)?;
            verdicts.insert(task.worker_id, judge.judge(facts.as_ref()));
        }
        Ok(verdicts)
    }

    /// What the judge learns about one owner (`None`: no `workers` row).
    fn facts_of(
        connection: &mut MysqlConnection,
        row: Option<&OwnerRow>,
        clock: JudgingClock,
    ) -> Result<Option<OwnerFacts>, DieselError> {
        row.map(|(owner, holds_named_lock)| {
            Self::owner_facts(connection, owner, *holds_named_lock, clock)
        })
        .transpose()
    }

    /// Gathers the facts about one owner for the judge: its silence on the
    /// database's clock (`db_now` minus its heartbeat) and, for an `alive`
    /// owner that registered holding its named lock, whether some session
    /// holds that lock now (`IS_USED_LOCK`), asked without taking it, so
    /// the owner can always take it back.
    fn owner_facts(
        connection: &mut MysqlConnection,
        owner: &WorkerRecord,
        holds_named_lock: bool,
        clock: JudgingClock,
    ) -> Result<OwnerFacts, DieselError> {
        let lock = if owner.state == WorkerState::Alive && holds_named_lock {
            if named_lock_is_held(connection, &Self::worker_lock_name(owner.id))? {
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
        Ok(OwnerFacts::observed_at(owner.clone(), clock.db_now, lock))
    }

    /// Step 3: the database's time (the clock heartbeats are written with, so
    /// owners' silence is measured on it; the caller's clock never matters)
    /// and how long a judge has been able to watch locks: this store's
    /// liveness session's age (a server restart or a reconnect ends that
    /// session too, and every lock is free until its owner takes it back).
    /// Read after the row locks were granted.
    fn judging_clock(
        connection: &mut MysqlConnection,
        watched_by_this_store: std::time::Duration,
    ) -> Result<JudgingClock, DieselError> {
        let clock = diesel::sql_query("SELECT UTC_TIMESTAMP(6) AS db_now")
            .get_result::<DatabaseClock>(connection)?;
        let watched_for =
            chrono::Duration::from_std(watched_by_this_store).unwrap_or(chrono::Duration::MAX);
        Ok(JudgingClock {
            db_now: clock.db_now.and_utc(),
            watched_for,
        })
    }
}

/// Step 1: the owners of running rows other than the sweeper (the partial
/// index serves this).
fn running_owners(
    connection: &mut MysqlConnection,
    sweeper: &str,
) -> Result<BTreeSet<Option<Uuid>>, DieselError> {
    let owners: Vec<Option<Uuid>> = task_history::table
        .filter(task_history::status.eq(RUNNING))
        .filter(
            task_history::worker_id
                .ne(sweeper)
                .or(task_history::worker_id.is_null()),
        )
        .select(task_history::worker_id)
        .distinct()
        .load(connection)?;
    Ok(owners.into_iter().collect())
}

/// Step 2: the owners' `workers` rows, locked in id order when `lock`:
/// concurrent sweeps (and claims) queue here, and the second reads what
/// the first decided.
fn lock_owner_rows(
    connection: &mut MysqlConnection,
    owners: &BTreeSet<Option<Uuid>>,
    lock: bool,
) -> Result<HashMap<Uuid, OwnerRow>, TxError> {
    let registered: Vec<Uuid> = owners.iter().flatten().cloned().collect();
    let rows = workers::table
        .filter(workers::id.eq_any(&registered))
        .order(workers::id)
        .select(WorkerRow::as_select());
    let rows: Vec<WorkerRow> = if lock {
        rows.for_update().load(connection)?
    } else {
        rows.load(connection)?
    };
    let mut owner_rows = HashMap::new();
    for row in rows {
        let holds_named_lock = row.holds_named_lock();
        let record = row.into_record()?;
        owner_rows.insert(record.id.to_string(), (record, holds_named_lock));
    }
    Ok(owner_rows)
}

/// Step 4: the running rows, each locked by exactly one sweep (`SKIP
/// LOCKED`: a row another sweep or its finishing owner holds is left to
/// it). Rows of an owner that appeared after step 1 are left to the next
/// sweep.
fn lock_running_rows(
    connection: &mut MysqlConnection,
    sweeper: &str,
    owners: &BTreeSet<Option<Uuid>>,
    lock: bool,
) -> Result<Vec<TaskRecord>, TxError> {
    let running = task_history::table
        .filter(task_history::status.eq(RUNNING))
        .filter(
            task_history::worker_id
                .ne(sweeper)
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
        .filter(|task| owners.contains(&task.worker_id.map(|id| id.to_string())))
        .collect())
}

/// Step 6a: the dead owner's locked rows become `interrupted`, if still
/// `running`; returns those that did. The rows are locked by this
/// transaction (step 4), so none can change between the read and the
/// UPDATE: the rows it changed are those still `running` when read here.
fn interrupt_orphans(
    connection: &mut MysqlConnection,
    orphans: &[Uuid],
    plan: &OwnerRecovery,
) -> Result<Vec<Uuid>, DieselError> {
    let mut interrupted = Vec::with_capacity(orphans.len());
    for chunk in orphans.chunks(IDS_PER_STATEMENT) {
        let still_running: Vec<Uuid> = task_history::table
            .filter(task_history::id.eq_any(chunk))
            .filter(task_history::status.eq(RUNNING))
            .select(task_history::id)
            .for_update()
            .load(connection)?;
        if still_running.is_empty() {
            continue;
        }
        let changed = diesel::update(
            task_history::table
                .filter(task_history::id.eq_any(&still_running))
                .filter(task_history::status.eq(RUNNING)),
        )
        .set((
            task_history::status.eq(TaskStatus::Interrupted.as_str()),
            task_history::interrupted_at.eq(stored_time(plan.at)),
            task_history::interrupt_reason.eq(&plan.reason),
            task_history::interrupted_by.eq(plan.recovered_by.to_string()),
        ))
        .execute(connection)?;
        debug_assert_eq!(changed, still_running.len());
        interrupted.extend(still_running);
    }
    Ok(interrupted)
}

/// Step 6b: the still-valid sessions of `task_ids` invalidated; how many
/// each task had (read locked, then changed, in this transaction).
fn invalidate_sessions_of_tasks(
    connection: &mut MysqlConnection,
    task_ids: &[Uuid],
    at: Timestamp,
    reason: &str,
) -> Result<HashMap<Uuid, u32>, DieselError> {
    let mut valid: Vec<Uuid> = Vec::with_capacity(task_ids.len());
    for chunk in task_ids.chunks(IDS_PER_STATEMENT) {
        let valid_in_chunk: Vec<Uuid> = claude_sdk_sessions::table
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

fn count_by_task(task_ids: Vec<Uuid>) -> HashMap<Uuid, u32> {
    let mut counts = HashMap::new();
    for task in task_ids {
        *counts.entry(task).or_insert(0) += 1;
    }
    counts
}

/// Step 6b on a dry run: how many valid sessions each task has.
fn count_valid_sessions(
    connection: &mut MysqlConnection,
    task_ids: &[Uuid],
) -> Result<HashMap<Uuid, u32>, DieselError> {
    let mut valid: Vec<Uuid> = Vec::with_capacity(task_ids.len());
    for chunk in task_ids.chunks(IDS_PER_STATEMENT) {
        valid.extend(
            claude_sdk_sessions::table
                .filter(claude_sdk_sessions::task_id.eq_any(chunk))
                .filter(claude_sdk_sessions::invalidated_at.is_null())
                .select(claude_sdk_sessions::task_id)
                .load::<Uuid>(connection)?,
        );
    }
    Ok(count_by_task(valid))
}

/// Step 6c: the owner, if still `alive`, is `dead` from now on.
fn mark_dead(connection: &mut MysqlConnection, plan: &OwnerRecovery) -> Result<(), DieselError> {
    let Some(owner) = plan.owner_to_mark_dead() else {
        return Ok(());
    };
    diesel::update(
        workers::table
            .find(owner.to_string())
            .filter(workers::state.eq(ALIVE)),
    )
    .set((
        workers::state.eq(WorkerState::Dead.as_str()),
        workers::stopped_at.eq(stored_time(plan.at)),
    ))
    .execute(connection)?;
    Ok(())
}

/// Step 7: the report each recovered row owes, owed by the sweeper.
fn record_owed_reports(
    connection: &mut MysqlConnection,
    recovered: &[RecoveredTask],
) -> Result<(), DieselError> {
    let reports: Vec<NewReportRow> = recovered.iter().map(NewReportRow::owed).collect();
    for chunk in reports.chunks(1000) {
        diesel::insert_into(recovery_reports::table)
            .values(chunk)
            .execute(connection)?;
    }
    Ok(())
}

/// The unconfirmed reports owed by `all` (every one) and `owed_before`
/// (only those owed since before the claim's cut-off), locked, moved to the
/// claimant and read with their rows. Each report moves once: a concurrent
/// claim waits on the row and re-reads `owed_by`, which no longer names a
/// dead owner.
fn move_reports(
    connection: &mut MysqlConnection,
    claim: &ReportClaim,
    all: &[Uuid],
    owed_before: &[Uuid],
) -> Result<Vec<RecoveredTask>, TxError> {
    let reports: Vec<(Uuid, ReportRow)> =
        recovery_reports::table
            .filter(recovery_reports::reported_at.is_null())
            .filter(recovery_reports::owed_by.eq_any(all).or(
                recovery_reports::owed_by.eq_any(owed_before).and(
                    recovery_reports::owed_since.lt(stored_time(claim.unregistered_owed_before)),
                ),
            ))
            .select((recovery_reports::task_id, ReportRow::as_select()))
            .for_update()
            .load(connection)?;
    let ids: Vec<Uuid> = reports.iter().map(|(id, _)| id.clone()).collect();
    let mut tasks: HashMap<Uuid, TaskRow> = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(IDS_PER_STATEMENT) {
        diesel::update(recovery_reports::table.filter(recovery_reports::task_id.eq_any(chunk)))
            .set((
                recovery_reports::owed_by.eq(claim.claimant.to_string()),
                recovery_reports::owed_since.eq(stored_time(claim.now)),
            ))
            .execute(connection)?;
        tasks.extend(
            task_history::table
                .filter(task_history::id.eq_any(chunk))
                .select(TaskRow::as_select())
                .load::<TaskRow>(connection)?
                .into_iter()
                .map(|task| (task.id().to_owned(), task)),
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
