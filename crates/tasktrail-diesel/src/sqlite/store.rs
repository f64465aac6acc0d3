//! `impl Storage for SqliteStorage`.

use std::collections::HashMap;

use diesel::connection::DefaultLoadingMode;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sqlite::SqliteConnection;
use tasktrail_core::backend::{
    recovery_reason, FinishRow, FinishWrite, LivenessJudge, NewRunningRow, NewSession, OwnerFacts,
    OwnerLock, RecoveryRequest, ReportClaim, SweepMode,
};
use tasktrail_core::{
    Liveness, Outcome, RecoveredTask, SessionKey, SessionRecord, Storage, StorageError, TaskFilter,
    TaskId, TaskRecord, TaskStatus, Timestamp, WorkerId, WorkerRecord, WorkerRegistration,
    WorkerState,
};

use super::rows::{NewReportRow, ReportRow, SessionRow, TaskRow, WorkerRow};
use super::schema::{claude_sdk_sessions, recovery_reports, task_history, workers};
use super::statements::{FinishCompletedIfOwnedAndRunning, InsertRunningIfWorkerAlive};
use super::{map_error, SqliteStorage};
use crate::codec::{decode_worker_id, encode_artifacts, encode_timestamp};

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

fn immediate<T>(
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
    result.map_err(|after| failure.map_or_else(|| StorageError::from(after), StorageError::from))
}

fn is_unique_violation(error: &DieselError) -> bool {
    matches!(
        error,
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)
    )
}

fn load_worker_state(
    connection: &mut SqliteConnection,
    id: WorkerId,
) -> Result<Option<String>, DieselError> {
    workers::table
        .find(id.to_string())
        .select(workers::state)
        .first::<String>(connection)
        .optional()
}

fn require_alive(connection: &mut SqliteConnection, id: WorkerId) -> Result<(), TxError> {
    match load_worker_state(connection, id)? {
        None => Err(StorageError::UnknownWorker { id }.into()),
        Some(state) if state == WorkerState::Alive.as_str() => Ok(()),
        Some(_) => Err(StorageError::WorkerNotAlive { id }.into()),
    }
}

fn load_task(connection: &mut SqliteConnection, id: &str) -> Result<Option<TaskRecord>, TxError> {
    task_history::table
        .find(id)
        .select(TaskRow::as_select())
        .first(connection)
        .optional()?
        .map(TaskRow::into_record)
        .transpose()
        .map_err(TxError::from)
}

/// Invalidates the still-valid sessions of the `running` rows `owner` holds
/// (or of one task), returning how many each task had.
fn invalidate_sessions_of_tasks(
    connection: &mut SqliteConnection,
    task_ids: &[String],
    at: &str,
    reason: &str,
) -> Result<HashMap<String, u32>, DieselError> {
    let mut counts = HashMap::new();
    // SQLite limits bind parameters per statement; chunk big sweeps.
    for chunk in task_ids.chunks(500) {
        let valid: Vec<String> = claude_sdk_sessions::table
            .filter(claude_sdk_sessions::task_id.eq_any(chunk))
            .filter(claude_sdk_sessions::invalidated_at.is_null())
            .select(claude_sdk_sessions::task_id)
            .load(connection)?;
        if valid.is_empty() {
            continue;
        }
        for task in valid {
            *counts.entry(task).or_insert(0) += 1;
        }
        diesel::update(
            claude_sdk_sessions::table
                .filter(claude_sdk_sessions::task_id.eq_any(chunk))
                .filter(claude_sdk_sessions::invalidated_at.is_null()),
        )
        .set((
            claude_sdk_sessions::invalidated_at.eq(at),
            claude_sdk_sessions::invalidation_reason.eq(reason),
        ))
        .execute(connection)?;
    }
    Ok(counts)
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
                if is_unique_violation(&error) {
                    StorageError::DuplicateWorker { id }
                } else {
                    map_error(error)
                }
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
            require_alive(connection, worker)?;
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

    /// Marks the worker `stopped`, then releases its lock and removes its
    /// lock file.
    fn deregister_worker(&self, worker: WorkerId, at: Timestamp) -> Result<(), StorageError> {
        immediate(&mut self.connection(), |connection| {
            if load_worker_state(connection, worker)?.is_none() {
                return Err(StorageError::UnknownWorker { id: worker }.into());
            }
            diesel::update(
                workers::table
                    .find(worker.to_string())
                    .filter(workers::state.eq(WorkerState::Alive.as_str())),
            )
            .set((
                workers::state.eq(WorkerState::Stopped.as_str()),
                workers::stopped_at.eq(encode_timestamp(at)),
            ))
            .execute(connection)?;
            Ok(())
        })?;
        self.drop_worker_lock(worker);
        Ok(())
    }

    fn list_workers(&self) -> Result<Vec<WorkerRecord>, StorageError> {
        workers::table
            .order((workers::started_at, workers::id))
            .select(WorkerRow::as_select())
            .load(&mut *self.connection())
            .map_err(map_error)?
            .into_iter()
            .map(WorkerRow::into_record)
            .collect()
    }

    fn insert_running(&self, row: &NewRunningRow) -> Result<(), StorageError> {
        let mut connection = self.connection();
        let spec = &row.spec;
        let worker = row.worker.to_string();
        let inserted = InsertRunningIfWorkerAlive {
            id: &row.id.to_string(),
            repo: spec.repo(),
            issue_number: i64::from(spec.issue_number()),
            user: spec.user(),
            agent: spec.agent(),
            agent_type: spec.agent_type(),
            model: spec.model(),
            provider: spec.provider(),
            started_at: &encode_timestamp(row.started_at),
            worker: &worker,
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
        match load_worker_state(&mut connection, row.worker).map_err(map_error)? {
            None => Err(StorageError::UnknownWorker { id: row.worker }),
            Some(_) => Err(StorageError::WorkerNotAlive { id: row.worker }),
        }
    }

    fn finish_running(&self, row: &FinishRow) -> Result<FinishWrite, StorageError> {
        let id = row.id.to_string();
        let worker = row.worker.to_string();
        let at = encode_timestamp(row.at);
        let finish = |connection: &mut SqliteConnection| -> Result<FinishWrite, TxError> {
            let mut sessions_invalidated = 0;
            let guarded = task_history::table
                .filter(task_history::id.eq(&id))
                .filter(task_history::status.eq(TaskStatus::Running.as_str()))
                .filter(task_history::worker_id.eq(&worker));
            let updated = match &row.outcome {
                Outcome::Interrupted(reason) => {
                    let updated = diesel::update(guarded)
                        .set((
                            task_history::status.eq(TaskStatus::Interrupted.as_str()),
                            task_history::interrupted_at.eq(&at),
                            task_history::interrupt_reason.eq(reason.as_str()),
                            task_history::interrupted_by.eq(&worker),
                        ))
                        .execute(connection)?;
                    if updated == 1 {
                        let reason = format!("task interrupted: {reason}");
                        sessions_invalidated = invalidate_sessions_of_tasks(
                            connection,
                            std::slice::from_ref(&id),
                            &at,
                            &reason,
                        )?
                        .values()
                        .sum();
                    }
                    updated
                }
                Outcome::Success(report)
                | Outcome::Failure(report)
                | Outcome::Cancelled(report)
                | Outcome::AbortedNoSkill(report) => FinishCompletedIfOwnedAndRunning {
                    id: &id,
                    worker: &worker,
                    status: row.outcome.status().as_str(),
                    finished_at: &at,
                    input_tokens: i64::from(report.input_tokens),
                    output_tokens: i64::from(report.output_tokens),
                    cost_usd: report.cost_usd.dollars(),
                    turns: i64::from(report.turns),
                    artifacts: &encode_artifacts(&report.artifacts),
                }
                .execute(connection)?,
            };
            if updated == 1 {
                return Ok(FinishWrite::Updated {
                    sessions_invalidated,
                });
            }
            Ok(FinishWrite::Refused(match load_task(connection, &id)? {
                None => tasktrail_core::FinishRefusal::Missing,
                Some(record) => record.refusal_for(row.worker),
            }))
        };
        let mut connection = self.connection();
        match row.outcome {
            // The UPDATE and the sessions' invalidation commit together.
            Outcome::Interrupted(_) => immediate(&mut connection, finish),
            // A single guarded UPDATE commits on its own.
            _ => finish(&mut connection).map_err(StorageError::from),
        }
    }

    fn recover_orphans(
        &self,
        request: &RecoveryRequest,
        judge: &dyn LivenessJudge,
    ) -> Result<Vec<RecoveredTask>, StorageError> {
        let now = encode_timestamp(request.now);
        let recovering = request.recovering_worker.to_string();
        // Owners declared dead with their lock seen free: their lock files
        // are removed once the sweep committed.
        let mut freed_owners: Vec<WorkerId> = Vec::new();
        let sweep = |connection: &mut SqliteConnection| -> Result<Vec<RecoveredTask>, TxError> {
            // The owners of running rows, from the partial index on
            // `worker_id WHERE status = 'running'` alone: the sweep never
            // reads the history, and reads each orphan once, below.
            let owner_columns: Vec<Option<String>> = task_history::table
                .filter(task_history::status.eq(TaskStatus::Running.as_str()))
                .filter(
                    task_history::worker_id
                        .ne(&recovering)
                        .or(task_history::worker_id.is_null()),
                )
                .select(task_history::worker_id)
                .distinct()
                .load(connection)?;
            if owner_columns.is_empty() {
                return Ok(Vec::new());
            }
            // Each owner as the domain knows it and as the rows spell it.
            let mut owner_ids: Vec<(Option<WorkerId>, Option<String>)> = owner_columns
                .iter()
                .map(|column| {
                    let id = column
                        .as_deref()
                        .map(|text| decode_worker_id("worker_id", text))
                        .transpose()?;
                    Ok((id, column.clone()))
                })
                .collect::<Result<_, StorageError>>()?;
            owner_ids.sort();
            let known_owners: Vec<&String> = owner_columns.iter().flatten().collect();
            // What the judge needs about each: heartbeats are written with
            // the callers' clock, so the sweep's `now` is this store's time;
            // the lock of each `alive` owner that registered with one.
            let owners = self.owner_facts(connection, &known_owners, request.now)?;
            let mut recovered = Vec::new();
            for (owner, owner_text) in owner_ids {
                let facts = owner.and_then(|id| owners.get(&id));
                let verdict = judge.judge(facts);
                let Liveness::Dead(cause) = verdict else {
                    continue;
                };
                if let Some(facts) = facts {
                    if matches!(facts.lock, OwnerLock::Free { .. }) {
                        freed_owners.push(facts.record.id);
                    }
                }
                let reason = recovery_reason(owner, &cause);
                // The owner's running rows, as a subquery: statements stay the
                // same size however many orphans there are. `IS` matches NULL
                // too: rows written before the fix name no worker.
                let owned_running = || {
                    task_history::table
                        .filter(task_history::status.eq(TaskStatus::Running.as_str()))
                        .filter(task_history::worker_id.is(owner_text.clone()))
                };
                let valid_sessions = claude_sdk_sessions::table
                    .filter(claude_sdk_sessions::invalidated_at.is_null())
                    .filter(
                        claude_sdk_sessions::task_id
                            .eq_any(owned_running().select(task_history::id)),
                    );
                // Sessions first: one statement invalidates them and says
                // which tasks they belonged to (a dry run only counts).
                let mut sessions: HashMap<String, u32> = HashMap::new();
                match request.mode {
                    SweepMode::Apply => {
                        let invalidated: Vec<String> = diesel::update(valid_sessions)
                            .set((
                                claude_sdk_sessions::invalidated_at.eq(&now),
                                claude_sdk_sessions::invalidation_reason.eq(&reason),
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
                // Then the orphans, read once and turned into records as they
                // stream in (cheaper on SQLite than `UPDATE … RETURNING`
                // every column; see docs/performance.md), as the sweep
                // leaves them (a dry run: would leave them).
                let orphans = owned_running()
                    .select(TaskRow::as_select())
                    .load_iter::<TaskRow, DefaultLoadingMode>(connection)?;
                for row in orphans {
                    let row = row?;
                    let sessions_invalidated = sessions.get(row.id()).copied().unwrap_or(0);
                    let mut task = row.into_record()?;
                    task.status = TaskStatus::Interrupted;
                    task.interrupted_at = Some(request.now);
                    task.interrupt_reason = Some(reason.clone());
                    task.interrupted_by = Some(request.recovering_worker);
                    recovered.push(RecoveredTask {
                        task,
                        dead_worker: owner,
                        cause: cause.clone(),
                        recovered_by: request.recovering_worker,
                        recovered_at: request.now,
                        sessions_invalidated,
                        previous_reporter: None,
                    });
                }
                // Last, the transition and the owner's verdict.
                if request.mode == SweepMode::Apply {
                    diesel::update(owned_running())
                        .set((
                            task_history::status.eq(TaskStatus::Interrupted.as_str()),
                            task_history::interrupted_at.eq(&now),
                            task_history::interrupt_reason.eq(&reason),
                            task_history::interrupted_by.eq(&recovering),
                        ))
                        .execute(connection)?;
                    if let Some(owner) = &owner_text {
                        diesel::update(
                            workers::table
                                .find(owner)
                                .filter(workers::state.eq(WorkerState::Alive.as_str())),
                        )
                        .set((
                            workers::state.eq(WorkerState::Dead.as_str()),
                            workers::stopped_at.eq(&now),
                        ))
                        .execute(connection)?;
                    }
                }
            }
            // The reports the recovered rows owe, in the same transaction.
            if request.mode == SweepMode::Apply {
                let reports: Vec<NewReportRow> = recovered.iter().map(NewReportRow::owed).collect();
                for chunk in reports.chunks(500) {
                    diesel::insert_into(recovery_reports::table)
                        .values(chunk)
                        .execute(connection)?;
                }
            }
            recovered.sort_by(|a, b| {
                (a.task.started_at, a.task.id).cmp(&(b.task.started_at, b.task.id))
            });
            Ok(recovered)
        };
        // A dry run only reads: a plain (deferred) transaction, so it also
        // works on a read-only database (`recover --dry-run`).
        let recovered = match request.mode {
            SweepMode::Apply => immediate(&mut self.connection(), sweep)?,
            SweepMode::DryRun => self
                .connection()
                .transaction(sweep)
                .map_err(StorageError::from)?,
        };
        if request.mode == SweepMode::Apply {
            for owner in freed_owners {
                self.remove_dead_workers_lock_file(owner);
            }
        }
        Ok(recovered)
    }

    fn claim_unreported_recoveries(
        &self,
        claim: &ReportClaim,
        judge: &dyn LivenessJudge,
    ) -> Result<Vec<RecoveredTask>, StorageError> {
        let claimant = claim.claimant.to_string();
        // One IMMEDIATE transaction: claims (and sweeps) run one at a time,
        // so a report is taken by exactly one.
        immediate(&mut self.connection(), |connection| {
            let owed_by: Vec<String> = recovery_reports::table
                .filter(recovery_reports::reported_at.is_null())
                .select(recovery_reports::owed_by)
                .distinct()
                .load(connection)?;
            let others: Vec<&String> = owed_by.iter().filter(|id| **id != claimant).collect();
            let facts = self.owner_facts(connection, &others, claim.now)?;
            // Owners whose reports move: the claimant itself (it could not
            // deliver them), owners the judge finds dead, and ids naming no
            // worker (an operator's one-shot sweep) for reports owed since
            // before the cut-off.
            let mut dead: Vec<&String> = Vec::new();
            let mut unregistered: Vec<&String> = Vec::new();
            for owner in &owed_by {
                if *owner == claimant {
                    dead.push(owner);
                    continue;
                }
                let facts = decode_worker_id("owed_by", owner)
                    .ok()
                    .and_then(|id| facts.get(&id));
                if matches!(judge.judge(facts), Liveness::Dead(_)) {
                    if facts.is_some() {
                        dead.push(owner);
                    } else {
                        unregistered.push(owner);
                    }
                }
            }
            let cut_off = encode_timestamp(claim.unregistered_owed_before);
            let mut claimed = Vec::new();
            for (owners, only_before) in dead.chunks(500).map(|chunk| (chunk, None)).chain(
                unregistered
                    .chunks(500)
                    .map(|chunk| (chunk, Some(&cut_off))),
            ) {
                let mut select = recovery_reports::table
                    .inner_join(task_history::table)
                    .filter(recovery_reports::reported_at.is_null())
                    .filter(recovery_reports::owed_by.eq_any(owners))
                    .select((ReportRow::as_select(), TaskRow::as_select()))
                    .into_boxed();
                let mut update = diesel::update(recovery_reports::table)
                    .filter(recovery_reports::reported_at.is_null())
                    .filter(recovery_reports::owed_by.eq_any(owners))
                    .into_boxed();
                if let Some(cut_off) = only_before {
                    select = select.filter(recovery_reports::owed_since.lt(cut_off));
                    update = update.filter(recovery_reports::owed_since.lt(cut_off));
                }
                for (report, task) in select.load::<(ReportRow, TaskRow)>(connection)? {
                    claimed.push(report.into_recovered(task.into_record()?)?);
                }
                update
                    .set((
                        recovery_reports::owed_by.eq(&claimant),
                        recovery_reports::owed_since.eq(encode_timestamp(claim.now)),
                    ))
                    .execute(connection)?;
            }
            claimed.sort_by(|a, b| {
                (a.task.started_at, a.task.id).cmp(&(b.task.started_at, b.task.id))
            });
            Ok(claimed)
        })
    }

    fn confirm_reports(
        &self,
        reporter: WorkerId,
        tasks: &[TaskId],
        at: Timestamp,
    ) -> Result<u64, StorageError> {
        let reporter = reporter.to_string();
        let ids: Vec<String> = tasks.iter().map(ToString::to_string).collect();
        immediate(&mut self.connection(), |connection| {
            let mut confirmed = 0;
            for chunk in ids.chunks(500) {
                confirmed += diesel::update(
                    recovery_reports::table
                        .filter(recovery_reports::task_id.eq_any(chunk))
                        .filter(recovery_reports::owed_by.eq(&reporter))
                        .filter(recovery_reports::reported_at.is_null()),
                )
                .set(recovery_reports::reported_at.eq(encode_timestamp(at)))
                .execute(connection)? as u64;
            }
            Ok(confirmed)
        })
    }

    fn record_session(&self, session: &NewSession) -> Result<(), StorageError> {
        let task_id = session.task_id.to_string();
        immediate(&mut self.connection(), |connection| {
            require_alive(connection, session.worker)?;
            let owned_and_running = task_history::table
                .filter(task_history::id.eq(&task_id))
                .filter(task_history::status.eq(TaskStatus::Running.as_str()))
                .filter(task_history::worker_id.eq(session.worker.to_string()))
                .count()
                .get_result::<i64>(connection)?
                == 1;
            if !owned_and_running {
                return Err(StorageError::TaskNotRunning {
                    id: session.task_id,
                }
                .into());
            }
            diesel::insert_into(claude_sdk_sessions::table)
                .values(SessionRow {
                    session_id: session.session_id.as_str().to_owned(),
                    task_id: task_id.clone(),
                    repo: session.repo.clone(),
                    issue_number: i64::from(session.issue_number),
                    agent: session.agent.clone(),
                    created_at: encode_timestamp(session.created_at),
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
            .first(&mut *self.connection())
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
            .load(&mut *self.connection())
            .map_err(map_error)?
            .into_iter()
            .map(SessionRow::into_record)
            .collect()
    }

    fn list_task_sessions(&self, task: TaskId) -> Result<Vec<SessionRecord>, StorageError> {
        claude_sdk_sessions::table
            .filter(claude_sdk_sessions::task_id.eq(task.to_string()))
            .order((
                claude_sdk_sessions::created_at.desc(),
                claude_sdk_sessions::session_id.desc(),
            ))
            .select(SessionRow::as_select())
            .load(&mut *self.connection())
            .map_err(map_error)?
            .into_iter()
            .map(SessionRow::into_record)
            .collect()
    }

    fn get_task(&self, id: TaskId) -> Result<Option<TaskRecord>, StorageError> {
        load_task(&mut self.connection(), &id.to_string()).map_err(StorageError::from)
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

impl SqliteStorage {
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
        query.load(&mut *self.connection()).map_err(map_error)
    }
}

impl SqliteStorage {
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
        for chunk in owners.chunks(500) {
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
