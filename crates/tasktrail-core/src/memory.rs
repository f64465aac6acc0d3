//! The in-memory backend: a [`Storage`] for tests and for servers that do not
//! need the trail to survive a restart. It keeps the same contracts as the SQL
//! backends (one mutex makes every method one transaction).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::backend::Storage;
use crate::clock::Timestamp;
use crate::ids::{SessionId, TaskId, WorkerId};
use crate::outcome::Outcome;
use crate::record::{
    interrupted_session_reason, sort_recovered, ClaimedReports, FinishRefusal, FinishRow,
    FinishWrite, NewRunningRow, NewSession, OwnerRecovery, PruneReport, PruneRequest,
    RecoveredTask, RecoveryRequest, ReportClaim, SessionKey, SessionRecord, SweepMode, TaskFilter,
    TaskRecord,
};
use crate::stats::{StatsRequest, TaskStats};
use crate::status::TaskStatus;
use crate::storage::StorageError;
use crate::worker::{
    Liveness, LivenessJudge, LockWatch, OwnerFacts, OwnerLock, WorkerRecord, WorkerRegistration,
    WorkerState,
};

/// A [`Storage`] held in memory.
#[derive(Debug, Default)]
pub struct MemoryStorage {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    tasks: BTreeMap<TaskId, TaskRecord>,
    workers: BTreeMap<WorkerId, WorkerRecord>,
    sessions: BTreeMap<SessionId, SessionRecord>,
    /// INSERT statements attempted into `task_history`, per id (counted
    /// before the duplicate check, as a SQL statement log would).
    task_inserts: HashMap<TaskId, usize>,
    /// The liveness lock of each registered worker, as the store sees it:
    /// `Held` from registration, freed on deregistration or when a sweep
    /// declares it dead; tests change it with
    /// [`MemoryStorage::set_worker_lock`].
    locks: HashMap<WorkerId, OwnerLock>,
    /// `recovery_reports`: one per row a sweep recovered.
    reports: BTreeMap<TaskId, StoredReport>,
}

/// A recovered row's report: why, and who owes it.
#[derive(Debug, Clone)]
struct StoredReport {
    cause: crate::worker::DeathCause,
    sessions_invalidated: u32,
    owed_by: WorkerId,
    owed_since: Timestamp,
    reported_at: Option<Timestamp>,
}

/// A lock that nobody holds, watched for as long as the store exists.
const FREE_LOCK: OwnerLock = OwnerLock::Free {
    watched_for: LockWatch::Continuous,
};

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Test hook: how many INSERTs into `task_history` were issued for `id`.
    #[cfg(feature = "testing")]
    pub fn task_insert_statements(&self, id: TaskId) -> usize {
        self.lock().task_inserts.get(&id).copied().unwrap_or(0)
    }

    /// Test hook: moves `worker`'s last heartbeat `by` into the past, as if
    /// it had stayed silent that long (the conformance suite ages another
    /// host's heartbeat this way). Does nothing for an unknown worker.
    #[cfg(feature = "testing")]
    pub fn age_heartbeat(&self, worker: WorkerId, by: chrono::Duration) {
        if let Some(record) = self.lock().workers.get_mut(&worker) {
            record.heartbeat_at -= by;
        }
    }

    /// Test hook: what the store reports about `worker`'s liveness lock from
    /// now on. Everything lives in one process, so a registered worker holds
    /// its lock until it deregisters or is declared dead; a test frees it
    /// (`OwnerLock::Free`) to play a crashed process, or makes it
    /// `OwnerLock::NotCheckable` to play a registration older than locks.
    #[cfg(feature = "testing")]
    pub fn set_worker_lock(&self, worker: WorkerId, lock: OwnerLock) {
        self.lock().locks.insert(worker, lock);
    }

    /// Test hook: invalidates one session by hand, whatever its task's
    /// status (as an operator's `UPDATE claude_sdk_sessions SET
    /// invalidated_at = …` would). Returns whether the session exists.
    #[cfg(feature = "testing")]
    pub fn invalidate_session_by_hand(
        &self,
        session: &SessionId,
        at: Timestamp,
        reason: &str,
    ) -> bool {
        match self.lock().sessions.get_mut(session) {
            Some(record) => {
                record.invalidated_at = Some(at);
                record.invalidation_reason = Some(reason.to_owned());
                true
            }
            None => false,
        }
    }

    /// The operator's figures (see [`TaskStats`]), over every row; reads
    /// only.
    pub fn stats(&self, request: &StatsRequest) -> Result<TaskStats, StorageError> {
        let inner = self.lock();
        let workers: Vec<WorkerRecord> = inner.workers.values().cloned().collect();
        Ok(TaskStats::from_records(
            request,
            inner.tasks.values(),
            &workers,
        ))
    }

    /// Deletes what `request` selects (see [`PruneRequest`]): final rows
    /// that ended before the cut-off with their sessions, then `stopped` /
    /// `dead` workers last seen before it that no row names. Never a
    /// `running` row. One batch of at most `batch_size` rows per lock.
    pub fn prune(&self, request: &PruneRequest) -> Result<PruneReport, StorageError> {
        let batch_size = request.batch_size.max(1) as usize;
        let mut report = PruneReport::default();
        let mut after: Option<TaskId> = None;
        loop {
            let mut inner = self.lock();
            let candidates: Vec<TaskId> = inner
                .tasks
                .range((
                    after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded),
                    std::ops::Bound::Unbounded,
                ))
                .map(|(id, _)| *id)
                .take(batch_size)
                .collect();
            report.batches += 1;
            for id in &candidates {
                let owed = inner
                    .reports
                    .get(id)
                    .is_some_and(|report| report.reported_at.is_none());
                let selected = !owed && inner.tasks.get(id).is_some_and(|row| request.selects(row));
                if !selected {
                    continue;
                }
                report.tasks += 1;
                let sessions: Vec<SessionId> = inner
                    .sessions
                    .values()
                    .filter(|session| session.task_id == *id)
                    .map(|session| session.session_id.clone())
                    .collect();
                report.sessions += sessions.len() as u64;
                if !request.dry_run {
                    for session in sessions {
                        inner.sessions.remove(&session);
                    }
                    inner.tasks.remove(id);
                    inner.reports.remove(id);
                }
            }
            if candidates.len() < batch_size {
                break;
            }
            after = candidates.last().copied();
        }
        let mut inner = self.lock();
        // The workers named by the rows that stay (a dry run counts as if
        // the selected rows were gone).
        let named: std::collections::HashSet<WorkerId> = inner
            .tasks
            .values()
            .filter(|row| {
                !request.selects(row)
                    || inner
                        .reports
                        .get(&row.id)
                        .is_some_and(|report| report.reported_at.is_none())
            })
            .flat_map(|row| [row.worker_id, row.interrupted_by])
            .flatten()
            .collect();
        let gone: Vec<WorkerId> = inner
            .workers
            .values()
            .filter(|worker| {
                worker.state != WorkerState::Alive
                    && worker.stopped_at.unwrap_or(worker.heartbeat_at) < request.cut_off
                    && !named.contains(&worker.id)
            })
            .map(|worker| worker.id)
            .collect();
        report.workers = gone.len() as u64;
        if !request.dry_run {
            for id in gone {
                inner.workers.remove(&id);
                inner.locks.remove(&id);
            }
        }
        Ok(report)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    /// What a judge learns about `owner` at `now` (`None`: no such worker).
    fn owner_facts(&self, owner: Option<WorkerId>, now: Timestamp) -> Option<OwnerFacts> {
        owner.and_then(|id| self.workers.get(&id)).map(|record| {
            // A stopped or dead owner holds no lock worth asking about.
            let lock = match record.state {
                WorkerState::Alive => self
                    .locks
                    .get(&record.id)
                    .copied()
                    .unwrap_or(OwnerLock::NotCheckable),
                WorkerState::Stopped | WorkerState::Dead => OwnerLock::NotCheckable,
            };
            // Heartbeats are written with the callers' clock: `now` is this
            // store's time.
            OwnerFacts::observed_at(record.clone(), now, lock)
        })
    }

    fn worker_must_be_alive(&self, id: WorkerId) -> Result<(), StorageError> {
        match self.workers.get(&id) {
            None => Err(StorageError::UnknownWorker { id }),
            Some(worker) if worker.state != WorkerState::Alive => {
                Err(StorageError::WorkerNotAlive { id })
            }
            Some(_) => Ok(()),
        }
    }

    fn invalidate_sessions_of(&mut self, task: TaskId, at: Timestamp, reason: &str) -> u32 {
        let mut invalidated = 0;
        for session in self.sessions.values_mut() {
            if session.task_id == task && session.invalidated_at.is_none() {
                session.invalidated_at = Some(at);
                session.invalidation_reason = Some(reason.to_owned());
                invalidated += 1;
            }
        }
        invalidated
    }
}

impl Storage for MemoryStorage {
    fn register_worker(&self, registration: &WorkerRegistration) -> Result<(), StorageError> {
        let mut inner = self.lock();
        if inner.workers.contains_key(&registration.id) {
            return Err(StorageError::DuplicateWorker {
                id: registration.id,
            });
        }
        inner.workers.insert(
            registration.id,
            WorkerRecord {
                id: registration.id,
                host: registration.host.clone(),
                pid: registration.pid,
                process_start_marker: registration.process_start_marker.clone(),
                host_identity: registration.host_identity.clone(),
                started_at: registration.started_at,
                heartbeat_at: registration.started_at,
                state: WorkerState::Alive,
                stopped_at: None,
            },
        );
        inner.locks.insert(registration.id, OwnerLock::Held);
        Ok(())
    }

    fn heartbeat_worker(&self, worker: WorkerId, at: Timestamp) -> Result<(), StorageError> {
        let mut inner = self.lock();
        inner.worker_must_be_alive(worker)?;
        if let Some(record) = inner.workers.get_mut(&worker) {
            record.heartbeat_at = record.heartbeat_at.max(at);
        }
        // A lock the store lost while its worker lived (a store restart or
        // a dropped session: free, seen by judges that only just began
        // watching) is taken back at the worker's next heartbeat, as the
        // Postgres backend's liveness session does. A lock freed by death
        // or deregistration is never taken back: that worker does not
        // heartbeat.
        if let Some(OwnerLock::Free {
            watched_for: LockWatch::For(_),
        }) = inner.locks.get(&worker)
        {
            inner.locks.insert(worker, OwnerLock::Held);
        }
        Ok(())
    }

    fn deregister_worker(&self, worker: WorkerId, at: Timestamp) -> Result<(), StorageError> {
        let mut inner = self.lock();
        let record = inner
            .workers
            .get_mut(&worker)
            .ok_or(StorageError::UnknownWorker { id: worker })?;
        if record.state == WorkerState::Alive {
            record.state = WorkerState::Stopped;
            record.stopped_at = Some(at);
        }
        inner.locks.insert(worker, FREE_LOCK);
        Ok(())
    }

    fn list_workers(&self) -> Result<Vec<WorkerRecord>, StorageError> {
        Ok(self.lock().workers.values().cloned().collect())
    }

    fn insert_running(&self, row: &NewRunningRow) -> Result<(), StorageError> {
        let mut inner = self.lock();
        inner.worker_must_be_alive(row.worker)?;
        *inner.task_inserts.entry(row.id).or_default() += 1;
        if inner.tasks.contains_key(&row.id) {
            return Err(StorageError::DuplicateTask { id: row.id });
        }
        let spec = &row.spec;
        inner.tasks.insert(
            row.id,
            TaskRecord {
                id: row.id,
                repo: spec.repo().to_owned(),
                issue_number: spec.issue_number(),
                user: spec.user().to_owned(),
                agent: spec.agent().to_owned(),
                agent_type: spec.agent_type().to_owned(),
                model: spec.model().to_owned(),
                provider: spec.provider().to_owned(),
                status: TaskStatus::Running,
                worker_id: Some(row.worker),
                started_at: row.started_at,
                finished_at: None,
                input_tokens: None,
                output_tokens: None,
                cost_usd: None,
                turns: None,
                artifacts: None,
                interrupted_at: None,
                interrupt_reason: None,
                interrupted_by: None,
            },
        );
        Ok(())
    }

    fn finish_running(&self, row: &FinishRow) -> Result<FinishWrite, StorageError> {
        let mut inner = self.lock();
        let Some(record) = inner.tasks.get_mut(&row.id) else {
            return Ok(FinishWrite::Refused(FinishRefusal::Missing));
        };
        if record.status != TaskStatus::Running || record.worker_id != Some(row.worker) {
            return Ok(FinishWrite::Refused(record.refusal_for(row.worker)));
        }
        record.status = row.outcome.status();
        let mut sessions_invalidated = 0;
        match &row.outcome {
            Outcome::Interrupted(reason) => {
                record.interrupted_at = Some(row.at);
                record.interrupt_reason = Some(reason.as_str().to_owned());
                record.interrupted_by = Some(row.worker);
                let reason = interrupted_session_reason(reason.as_str());
                sessions_invalidated = inner.invalidate_sessions_of(row.id, row.at, &reason);
            }
            Outcome::Success(report)
            | Outcome::Failure(report)
            | Outcome::Cancelled(report)
            | Outcome::AbortedNoSkill(report) => {
                record.finished_at = Some(row.at);
                record.input_tokens = Some(report.input_tokens);
                record.output_tokens = Some(report.output_tokens);
                record.cost_usd = Some(report.cost_usd.dollars());
                record.turns = Some(report.turns);
                record.artifacts = Some(report.artifacts.clone());
            }
        }
        Ok(FinishWrite::Updated {
            sessions_invalidated,
        })
    }

    fn recover_orphans(
        &self,
        request: &RecoveryRequest,
        judge: &dyn LivenessJudge,
    ) -> Result<Vec<RecoveredTask>, StorageError> {
        let mut inner = self.lock();
        let mut verdicts: BTreeMap<Option<WorkerId>, Liveness> = BTreeMap::new();
        let orphans: Vec<(TaskId, Option<WorkerId>)> = inner
            .tasks
            .values()
            .filter(|task| task.status == TaskStatus::Running)
            .filter(|task| task.worker_id != Some(request.recovering_worker))
            .map(|task| (task.id, task.worker_id))
            .collect();
        let mut recovered = Vec::new();
        for (task_id, owner) in orphans {
            let verdict = verdicts
                .entry(owner)
                .or_insert_with(|| judge.judge(inner.owner_facts(owner, request.now).as_ref()))
                .clone();
            let Some(plan) =
                OwnerRecovery::for_verdict(owner, &verdict, request.recovering_worker, request.now)
            else {
                continue;
            };
            let orphan = inner.tasks[&task_id].clone();
            let sessions_invalidated = match request.mode {
                SweepMode::DryRun => inner
                    .sessions
                    .values()
                    .filter(|s| s.task_id == task_id && s.invalidated_at.is_none())
                    .count() as u32,
                SweepMode::Apply => {
                    let sessions_invalidated =
                        inner.invalidate_sessions_of(task_id, plan.at, &plan.reason);
                    inner.reports.insert(
                        task_id,
                        StoredReport {
                            cause: plan.cause.clone(),
                            sessions_invalidated,
                            owed_by: request.recovering_worker,
                            owed_since: request.now,
                            reported_at: None,
                        },
                    );
                    sessions_invalidated
                }
            };
            let report = plan.recovered(orphan, sessions_invalidated);
            if request.mode == SweepMode::Apply {
                inner.tasks.insert(task_id, report.task.clone());
            }
            recovered.push(report);
        }
        if request.mode == SweepMode::Apply {
            for (owner, verdict) in &verdicts {
                if let (Some(owner), Liveness::Dead(_)) = (owner, verdict) {
                    if let Some(worker) = inner.workers.get_mut(owner) {
                        if worker.state == WorkerState::Alive {
                            worker.state = WorkerState::Dead;
                            worker.stopped_at = Some(request.now);
                        }
                    }
                    inner.locks.insert(*owner, FREE_LOCK);
                }
            }
        }
        sort_recovered(&mut recovered);
        Ok(recovered)
    }

    fn claim_unreported_recoveries(
        &self,
        claim: &ReportClaim,
        judge: &dyn LivenessJudge,
    ) -> Result<Vec<RecoveredTask>, StorageError> {
        let mut inner = self.lock();
        let owners: std::collections::BTreeSet<WorkerId> = inner
            .reports
            .values()
            .filter(|report| report.reported_at.is_none())
            .map(|report| report.owed_by)
            .collect();
        // Which reports of each owner move: the decision is the claim's.
        let mut claimed_from: BTreeMap<WorkerId, ClaimedReports> = BTreeMap::new();
        for owner in owners {
            let facts = inner.owner_facts(Some(owner), claim.now);
            let registered = facts.is_some();
            let scope = claim.reports_of(owner, registered, || judge.judge(facts.as_ref()));
            claimed_from.insert(owner, scope);
        }
        let mut claimed = Vec::new();
        let Inner { reports, tasks, .. } = &mut *inner;
        for (id, report) in reports.iter_mut() {
            let moves = match claimed_from.get(&report.owed_by) {
                None | Some(ClaimedReports::None) => false,
                Some(ClaimedReports::All) => true,
                Some(ClaimedReports::OwedBefore(cut_off)) => report.owed_since < *cut_off,
            };
            if report.reported_at.is_some() || !moves {
                continue;
            }
            let Some(task) = tasks.get(id) else {
                continue;
            };
            claimed.push(RecoveredTask::reported_again(
                task.clone(),
                report.cause.clone(),
                report.sessions_invalidated,
                report.owed_by,
            ));
            report.owed_by = claim.claimant;
            report.owed_since = claim.now;
        }
        sort_recovered(&mut claimed);
        Ok(claimed)
    }

    fn confirm_reports(
        &self,
        reporter: WorkerId,
        tasks: &[TaskId],
        at: Timestamp,
    ) -> Result<u64, StorageError> {
        let mut inner = self.lock();
        let mut confirmed = 0;
        for id in tasks {
            if let Some(report) = inner.reports.get_mut(id) {
                if report.owed_by == reporter && report.reported_at.is_none() {
                    report.reported_at = Some(at);
                    confirmed += 1;
                }
            }
        }
        Ok(confirmed)
    }

    fn record_session(&self, session: &NewSession) -> Result<(), StorageError> {
        let mut inner = self.lock();
        inner.worker_must_be_alive(session.worker)?;
        let owned_and_running = inner.tasks.get(&session.task_id).is_some_and(|task| {
            task.status == TaskStatus::Running && task.worker_id == Some(session.worker)
        });
        if !owned_and_running {
            return Err(StorageError::TaskNotRunning {
                id: session.task_id,
            });
        }
        if inner.sessions.contains_key(&session.session_id) {
            return Err(StorageError::DuplicateSession);
        }
        inner.sessions.insert(
            session.session_id.clone(),
            SessionRecord {
                session_id: session.session_id.clone(),
                task_id: session.task_id,
                repo: session.repo.clone(),
                issue_number: session.issue_number,
                agent: session.agent.clone(),
                created_at: session.created_at,
                invalidated_at: None,
                invalidation_reason: None,
            },
        );
        Ok(())
    }

    fn resumable_session(&self, key: &SessionKey) -> Result<Option<SessionRecord>, StorageError> {
        let inner = self.lock();
        Ok(inner
            .sessions
            .values()
            .filter(|s| {
                s.repo == key.repo && s.issue_number == key.issue_number && s.agent == key.agent
            })
            .filter(|s| s.invalidated_at.is_none())
            .filter(|s| {
                inner
                    .tasks
                    .get(&s.task_id)
                    .is_some_and(|task| task.status.is_resumable())
            })
            .max_by(|a, b| (a.created_at, &a.session_id).cmp(&(b.created_at, &b.session_id)))
            .cloned())
    }

    fn list_sessions(&self) -> Result<Vec<SessionRecord>, StorageError> {
        let mut sessions: Vec<SessionRecord> = self.lock().sessions.values().cloned().collect();
        sessions.sort_by(|a, b| (b.created_at, &b.session_id).cmp(&(a.created_at, &a.session_id)));
        Ok(sessions)
    }

    fn get_task(&self, id: TaskId) -> Result<Option<TaskRecord>, StorageError> {
        Ok(self.lock().tasks.get(&id).cloned())
    }

    fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>, StorageError> {
        let inner = self.lock();
        let mut tasks: Vec<TaskRecord> = inner
            .tasks
            .values()
            .filter(|task| filter.status.is_none_or(|status| task.status == status))
            .filter(|task| filter.repo.as_ref().is_none_or(|repo| &task.repo == repo))
            .cloned()
            .collect();
        tasks.sort_by_key(|t| std::cmp::Reverse((t.started_at, t.id)));
        let skip = filter.offset.map_or(0, |offset| offset as usize);
        tasks.drain(..skip.min(tasks.len()));
        if let Some(limit) = filter.limit {
            tasks.truncate(limit as usize);
        }
        Ok(tasks)
    }

    fn count_tasks_by_status(
        &self,
        repo: Option<&str>,
    ) -> Result<Vec<(TaskStatus, u64)>, StorageError> {
        Ok(crate::overview::status_counts(
            self.lock().tasks.values(),
            repo,
        ))
    }

    fn count_outcomes_by_hour(
        &self,
        since: Timestamp,
    ) -> Result<Vec<crate::OutcomeBucket>, StorageError> {
        Ok(crate::overview::outcome_buckets(
            self.lock().tasks.values(),
            since,
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::Duration;

    use super::*;
    use crate::{
        Clock, CostUsd, ManualClock, Outcome, RegisteredWorker, RunReport, Task, TaskSpec,
        TaskSpecInput,
    };

    fn spec(issue_number: i64) -> TaskSpec {
        TaskSpec::validate(TaskSpecInput {
            repo: "acme/widgets".into(),
            issue_number,
            user: "alice".into(),
            agent: "fixer".into(),
            agent_type: "claude_sdk".into(),
            model: "claude-opus".into(),
            provider: "anthropic".into(),
        })
        .expect("spec")
    }

    fn report() -> RunReport {
        RunReport {
            input_tokens: 1,
            output_tokens: 1,
            cost_usd: CostUsd::new(0.0).expect("cost"),
            turns: 1,
            artifacts: vec![],
        }
    }

    fn worker(storage: &MemoryStorage, clock: &ManualClock) -> RegisteredWorker {
        RegisteredWorker::register(
            storage,
            WorkerRegistration {
                id: WorkerId::new_random(),
                host: "vm-1".into(),
                pid: 41,
                process_start_marker: "boot:41".into(),
                host_identity: None,
                started_at: clock.now(),
            },
            Arc::new(clock.clone()),
        )
        .expect("register")
    }

    /// A stopped worker (A) whose one old finished row has two sessions;
    /// a stopped worker (C) still named by its orphaned running row; an
    /// alive worker (E) silent since before the cut-off, with no rows; a
    /// live worker (B) with a running and a newer finished row; a worker
    /// (D) stopped after the cut-off and one (F) stopped at it, with no
    /// rows. Only A's row, its sessions and A may go.
    struct History {
        storage: MemoryStorage,
        old_row: TaskId,
        kept_rows: Vec<TaskId>,
        gone_worker: WorkerId,
        kept_workers: Vec<WorkerId>,
        cut_off: Timestamp,
    }

    fn history() -> History {
        let storage = MemoryStorage::new();
        let clock = ManualClock::starting_at(
            chrono::DateTime::<chrono::Utc>::UNIX_EPOCH + Duration::days(20_000),
        );
        let worker_a = worker(&storage, &clock);
        let gone_worker = worker_a.id();
        let old = Task::queue(spec(1))
            .start(&worker_a, &storage)
            .expect("start");
        for session in ["s-1", "s-2"] {
            old.record_session(SessionId::parse(session).expect("id"), &storage)
                .expect("session");
        }
        let old_row = old.id();
        old.finish(Outcome::Success(report()), &storage)
            .expect("finish");
        worker_a.deregister(&storage).expect("deregister");
        let worker_c = worker(&storage, &clock);
        let orphan = Task::queue(spec(4))
            .start(&worker_c, &storage)
            .expect("start");
        let worker_e = worker(&storage, &clock);
        let mut kept_workers = vec![worker_c.id(), worker_e.id()];
        let mut kept_rows = vec![orphan.id()];
        worker_c.deregister(&storage).expect("deregister");
        drop(orphan);
        clock.advance(Duration::days(10));
        let cut_off = clock.now();
        // Stopped at the cut-off itself: not before it, so kept.
        let worker_f = worker(&storage, &clock);
        kept_workers.push(worker_f.id());
        worker_f.deregister(&storage).expect("deregister");
        clock.advance(Duration::days(1));
        let live = worker(&storage, &clock);
        let running = Task::queue(spec(2)).start(&live, &storage).expect("start");
        let newer = Task::queue(spec(3)).start(&live, &storage).expect("start");
        kept_rows.extend([running.id(), newer.id()]);
        newer
            .finish(Outcome::Failure(report()), &storage)
            .expect("finish");
        drop(running);
        let worker_d = worker(&storage, &clock);
        kept_workers.extend([live.id(), worker_d.id()]);
        worker_d.deregister(&storage).expect("deregister");
        kept_rows.sort();
        kept_workers.sort();
        History {
            storage,
            old_row,
            kept_rows,
            gone_worker,
            kept_workers,
            cut_off,
        }
    }

    fn request(cut_off: Timestamp, dry_run: bool) -> PruneRequest {
        PruneRequest {
            cut_off,
            statuses: vec![],
            dry_run,
            batch_size: 1,
        }
    }

    #[cfg(feature = "testing")]
    #[test]
    fn the_test_hook_invalidates_an_existing_session_by_hand_and_says_so() {
        let history = history();
        let storage = &history.storage;
        let at = history.cut_off;
        let known = SessionId::parse("s-1").expect("id");
        assert!(storage.invalidate_session_by_hand(&known, at, "by hand"));
        let session = storage
            .list_sessions()
            .expect("sessions")
            .into_iter()
            .find(|session| session.session_id == known)
            .expect("kept");
        assert_eq!(session.invalidated_at, Some(at));
        assert_eq!(session.invalidation_reason.as_deref(), Some("by hand"));
        let unknown = SessionId::parse("s-9").expect("id");
        assert!(!storage.invalidate_session_by_hand(&unknown, at, "by hand"));
    }

    #[test]
    fn a_dry_run_counts_what_a_prune_deletes_and_deletes_nothing() {
        let history = history();
        let storage = &history.storage;
        let counted = storage
            .prune(&request(history.cut_off, true))
            .expect("dry run");
        assert_eq!(
            (counted.tasks, counted.sessions, counted.workers),
            (1, 2, 1)
        );
        assert_eq!(counted.batches, 5, "one row per batch, then an empty one");
        assert!(storage.get_task(history.old_row).expect("get").is_some());
        assert_eq!(storage.list_sessions().expect("sessions").len(), 2);
        assert_eq!(storage.list_workers().expect("workers").len(), 6);
    }

    #[test]
    fn a_prune_deletes_old_final_rows_their_sessions_and_unnamed_stopped_workers_only() {
        let history = history();
        let storage = &history.storage;
        let pruned = storage
            .prune(&request(history.cut_off, false))
            .expect("prune");
        assert_eq!((pruned.tasks, pruned.sessions, pruned.workers), (1, 2, 1));
        assert!(storage.get_task(history.old_row).expect("get").is_none());
        let mut rows: Vec<TaskId> = storage
            .list_tasks(&TaskFilter::default())
            .expect("list")
            .iter()
            .map(|row| row.id)
            .collect();
        rows.sort();
        assert_eq!(rows, history.kept_rows);
        assert!(storage.list_sessions().expect("sessions").is_empty());
        let mut workers: Vec<WorkerId> = storage
            .list_workers()
            .expect("workers")
            .iter()
            .map(|worker| worker.id)
            .collect();
        workers.sort();
        assert_eq!(workers, history.kept_workers);
        assert!(!workers.contains(&history.gone_worker));
        let again = storage
            .prune(&request(history.cut_off, false))
            .expect("prune");
        assert_eq!((again.tasks, again.sessions, again.workers), (0, 0, 0));
    }
}
