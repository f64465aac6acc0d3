//! The SQLite recovery sweep and report claim, as named steps. Each runs in
//! one `BEGIN IMMEDIATE` transaction (a dry run: a deferred one), so
//! sweeps and claims run one at a time on the file; the decisions are
//! core's ([`OwnerRecovery`], [`ReportClaim::reports_of`]).

use std::collections::HashMap;

use diesel::connection::DefaultLoadingMode;
use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use tasktrail_core::backend::{
    sort_recovered, ClaimedReports, LivenessJudge, OwnerFacts, OwnerLock, OwnerRecovery,
    RecoveryRequest, ReportClaim, SweepMode,
};
use tasktrail_core::{RecoveredTask, StorageError, Timestamp, WorkerId, WorkerState};

use super::rows::{NewReportRow, ReportRow, TaskRow, WorkerRow};
use super::schema::{claude_sdk_sessions, recovery_reports, task_history, workers};
use super::SqliteStorage;
use crate::codec::{decode_worker_id, encode_timestamp};
use crate::tx::TxError;

/// SQLite's limit on bind parameters, with room: big sweeps go in chunks.
const CHUNK: usize = 500;

/// An owner of running rows, as the domain knows it and as the rows spell
/// it (`None`: rows that name no worker).
type Owner = (Option<WorkerId>, Option<String>);

/// What a sweep did, and the owners whose lock files go once it committed.
pub(super) struct SweepOutcome {
    pub(super) recovered: Vec<RecoveredTask>,
    /// Owners declared dead with their lock seen free.
    pub(super) freed_owners: Vec<WorkerId>,
}

impl SqliteStorage {
    /// The sweep, in the caller's transaction: find the owners, judge them,
    /// and for each dead one carry out its [`OwnerRecovery`]: sessions,
    /// reports read, rows interrupted, owner marked dead; then the reports
    /// owed.
    pub(super) fn sweep(
        &self,
        connection: &mut SqliteConnection,
        request: &RecoveryRequest,
        judge: &dyn LivenessJudge,
    ) -> Result<SweepOutcome, TxError> {
        let owners = running_owners(connection, request.recovering_worker)?;
        let mut outcome = SweepOutcome {
            recovered: Vec::new(),
            freed_owners: Vec::new(),
        };
        if owners.is_empty() {
            return Ok(outcome);
        }
        let spelled: Vec<&String> = owners
            .iter()
            .filter_map(|(_, text)| text.as_ref())
            .collect();
        let facts = self.owner_facts(connection, &spelled, request.now)?;
        for (owner, owner_text) in &owners {
            let owner_facts = owner.and_then(|id| facts.get(&id));
            let verdict = judge.judge(owner_facts);
            let Some(plan) = OwnerRecovery::for_verdict(
                *owner,
                &verdict,
                request.recovering_worker,
                request.now,
            ) else {
                continue;
            };
            if let Some(facts) = owner_facts {
                if matches!(facts.lock, OwnerLock::Free { .. }) {
                    outcome.freed_owners.push(facts.record.id);
                }
            }
            let sessions = invalidate_sessions(connection, owner_text, &plan, request.mode)?;
            outcome
                .recovered
                .extend(read_orphans(connection, owner_text, &plan, &sessions)?);
            if request.mode == SweepMode::Apply {
                interrupt_rows(connection, owner_text, &plan)?;
                mark_dead(connection, &plan)?;
            }
        }
        if request.mode == SweepMode::Apply {
            record_owed_reports(connection, &outcome.recovered)?;
        }
        sort_recovered(&mut outcome.recovered);
        Ok(outcome)
    }

    /// The claim, in the caller's `IMMEDIATE` transaction (claims and
    /// sweeps run one at a time, so a report is taken by exactly one).
    pub(super) fn claim(
        &self,
        connection: &mut SqliteConnection,
        claim: &ReportClaim,
        judge: &dyn LivenessJudge,
    ) -> Result<Vec<RecoveredTask>, TxError> {
        let claimant = claim.claimant.to_string();
        let owed_by: Vec<String> = recovery_reports::table
            .filter(recovery_reports::reported_at.is_null())
            .select(recovery_reports::owed_by)
            .distinct()
            .load(connection)?;
        let others: Vec<&String> = owed_by.iter().filter(|id| **id != claimant).collect();
        let facts = self.owner_facts(connection, &others, claim.now)?;
        let mut claimed = Vec::new();
        for owner in &owed_by {
            let id = decode_worker_id("owed_by", owner)?;
            let owner_facts = facts.get(&id);
            let scope = claim.reports_of(id, owner_facts.is_some(), || judge.judge(owner_facts));
            claimed.extend(move_reports(connection, owner, scope, claim)?);
        }
        sort_recovered(&mut claimed);
        Ok(claimed)
    }

    /// What a judge learns about each of `owners` (as the rows spell them)
    /// at `now`: its `workers` row, and the lock of an `alive` owner that
    /// registered with one. Heartbeats are written with the callers' clock,
    /// so `now` (the sweep's) is this store's time. An owner with no row is
    /// absent.
    fn owner_facts(
        &self,
        connection: &mut SqliteConnection,
        owners: &[&String],
        now: Timestamp,
    ) -> Result<HashMap<WorkerId, OwnerFacts>, TxError> {
        let mut facts: HashMap<WorkerId, OwnerFacts> = HashMap::new();
        for chunk in owners.chunks(CHUNK) {
            let rows: Vec<WorkerRow> = workers::table
                .filter(workers::id.eq_any(chunk))
                .select(WorkerRow::as_select())
                .load(connection)?;
            for row in rows {
                let holds_flock = row.holds_flock();
                let record = row.into_record()?;
                let lock = if holds_flock && record.state == WorkerState::Alive {
                    self.check_worker_lock(record.id)
                } else {
                    OwnerLock::NotCheckable
                };
                facts.insert(record.id, OwnerFacts::observed_at(record, now, lock));
            }
        }
        Ok(facts)
    }
}

/// Step 1: the owners of running rows other than the sweeper, from the
/// partial index on `worker_id WHERE status = 'running'` alone (the sweep
/// never reads the history, and reads each orphan once), in id order.
fn running_owners(
    connection: &mut SqliteConnection,
    sweeper: WorkerId,
) -> Result<Vec<Owner>, TxError> {
    let columns: Vec<Option<String>> = task_history::table
        .filter(task_history::status.eq(tasktrail_core::TaskStatus::Running.as_str()))
        .filter(
            task_history::worker_id
                .ne(sweeper.to_string())
                .or(task_history::worker_id.is_null()),
        )
        .select(task_history::worker_id)
        .distinct()
        .load(connection)?;
    let mut owners = columns
        .into_iter()
        .map(|column| {
            let id = column
                .as_deref()
                .map(|text| decode_worker_id("worker_id", text))
                .transpose()?;
            Ok((id, column))
        })
        .collect::<Result<Vec<Owner>, StorageError>>()?;
    owners.sort();
    Ok(owners)
}

/// The owner's running rows, as a subquery: statements stay the same size
/// however many orphans there are. `IS` matches NULL too: rows written
/// before the fix name no worker.
fn owned_running(
    owner_text: &Option<String>,
) -> task_history::BoxedQuery<'static, diesel::sqlite::Sqlite> {
    task_history::table
        .filter(task_history::status.eq(tasktrail_core::TaskStatus::Running.as_str()))
        .filter(task_history::worker_id.is(owner_text.clone()))
        .into_boxed()
}

/// Step 2: the owner's valid sessions invalidated by one statement that
/// says which tasks they belonged to (a dry run only counts them).
fn invalidate_sessions(
    connection: &mut SqliteConnection,
    owner_text: &Option<String>,
    plan: &OwnerRecovery,
    mode: SweepMode,
) -> Result<HashMap<String, u32>, TxError> {
    let valid_sessions = claude_sdk_sessions::table
        .filter(claude_sdk_sessions::invalidated_at.is_null())
        .filter(
            claude_sdk_sessions::task_id.eq_any(owned_running(owner_text).select(task_history::id)),
        );
    let mut sessions: HashMap<String, u32> = HashMap::new();
    match mode {
        SweepMode::Apply => {
            let invalidated: Vec<String> = diesel::update(valid_sessions)
                .set((
                    claude_sdk_sessions::invalidated_at.eq(encode_timestamp(plan.at)),
                    claude_sdk_sessions::invalidation_reason.eq(&plan.reason),
                ))
                .returning(claude_sdk_sessions::task_id)
                .get_results(connection)?;
            for task in invalidated {
                *sessions.entry(task).or_default() += 1;
            }
        }
        SweepMode::DryRun => {
            let counts: Vec<(String, i64)> = valid_sessions
                .group_by(claude_sdk_sessions::task_id)
                .select((claude_sdk_sessions::task_id, diesel::dsl::count_star()))
                .load(connection)?;
            for (task, count) in counts {
                sessions.insert(task, u32::try_from(count).unwrap_or(u32::MAX));
            }
        }
    }
    Ok(sessions)
}

/// Step 3: the orphans, read once and turned into reports as they stream
/// in (cheaper on SQLite than `UPDATE … RETURNING` every column; see
/// docs/performance.md), as the sweep leaves them.
fn read_orphans(
    connection: &mut SqliteConnection,
    owner_text: &Option<String>,
    plan: &OwnerRecovery,
    sessions: &HashMap<String, u32>,
) -> Result<Vec<RecoveredTask>, TxError> {
    let mut recovered = Vec::new();
    let orphans = owned_running(owner_text)
        .select(TaskRow::as_select())
        .load_iter::<TaskRow, DefaultLoadingMode>(connection)?;
    for row in orphans {
        let row = row?;
        let sessions_invalidated = sessions.get(row.id()).copied().unwrap_or(0);
        recovered.push(plan.recovered(row.into_record()?, sessions_invalidated));
    }
    Ok(recovered)
}

/// Step 4: the owner's running rows become `interrupted`.
fn interrupt_rows(
    connection: &mut SqliteConnection,
    owner_text: &Option<String>,
    plan: &OwnerRecovery,
) -> Result<(), TxError> {
    let running = task_history::table
        .filter(task_history::status.eq(tasktrail_core::TaskStatus::Running.as_str()))
        .filter(task_history::worker_id.is(owner_text.clone()));
    diesel::update(running)
        .set((
            task_history::status.eq(tasktrail_core::TaskStatus::Interrupted.as_str()),
            task_history::interrupted_at.eq(encode_timestamp(plan.at)),
            task_history::interrupt_reason.eq(&plan.reason),
            task_history::interrupted_by.eq(plan.recovered_by.to_string()),
        ))
        .execute(connection)?;
    Ok(())
}

/// Step 5: the owner, if still `alive`, is `dead` from now on.
fn mark_dead(connection: &mut SqliteConnection, plan: &OwnerRecovery) -> Result<(), TxError> {
    let Some(owner) = plan.owner_to_mark_dead() else {
        return Ok(());
    };
    diesel::update(
        workers::table
            .find(owner.to_string())
            .filter(workers::state.eq(WorkerState::Alive.as_str())),
    )
    .set((
        workers::state.eq(WorkerState::Dead.as_str()),
        workers::stopped_at.eq(encode_timestamp(plan.at)),
    ))
    .execute(connection)?;
    Ok(())
}

/// Step 6: the report each recovered row owes, owed by the sweeper, in the
/// sweep's transaction.
fn record_owed_reports(
    connection: &mut SqliteConnection,
    recovered: &[RecoveredTask],
) -> Result<(), TxError> {
    let reports: Vec<NewReportRow> = recovered.iter().map(NewReportRow::owed).collect();
    for chunk in reports.chunks(CHUNK) {
        diesel::insert_into(recovery_reports::table)
            .values(chunk)
            .execute(connection)?;
    }
    Ok(())
}

/// The reports `owner` owes that `scope` lets the claim take, read with
/// their rows and moved to the claimant.
fn move_reports(
    connection: &mut SqliteConnection,
    owner: &String,
    scope: ClaimedReports,
    claim: &ReportClaim,
) -> Result<Vec<RecoveredTask>, TxError> {
    let only_before = match scope {
        ClaimedReports::None => return Ok(Vec::new()),
        ClaimedReports::All => None,
        ClaimedReports::OwedBefore(cut_off) => Some(encode_timestamp(cut_off)),
    };
    let mut select = recovery_reports::table
        .inner_join(task_history::table)
        .filter(recovery_reports::reported_at.is_null())
        .filter(recovery_reports::owed_by.eq(owner))
        .select((ReportRow::as_select(), TaskRow::as_select()))
        .into_boxed();
    let mut update = diesel::update(recovery_reports::table)
        .filter(recovery_reports::reported_at.is_null())
        .filter(recovery_reports::owed_by.eq(owner))
        .into_boxed();
    if let Some(cut_off) = &only_before {
        select = select.filter(recovery_reports::owed_since.lt(cut_off.clone()));
        update = update.filter(recovery_reports::owed_since.lt(cut_off.clone()));
    }
    let mut claimed = Vec::new();
    for (report, task) in select.load::<(ReportRow, TaskRow)>(connection)? {
        claimed.push(report.into_recovered(task.into_record()?)?);
    }
    update
        .set((
            recovery_reports::owed_by.eq(claim.claimant.to_string()),
            recovery_reports::owed_since.eq(encode_timestamp(claim.now)),
        ))
        .execute(connection)?;
    Ok(claimed)
}
