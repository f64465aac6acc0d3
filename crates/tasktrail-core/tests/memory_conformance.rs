//! The in-memory backend in the shared behaviour suite (one `#[test]` per
//! case, `conformance::<case>`), and the proof that the suite catches a
//! backend that breaks the contract, naming the case that caught it.

use tasktrail_core::backend::*;
use tasktrail_core::conformance::{every_case, LockChange, Subject, CASE_NAMES};
use tasktrail_core::*;

/// The in-memory backend as the suite's subject.
fn memory_subject() -> Subject<MemoryStorage> {
    Subject {
        name: "memory",
        fresh_store: Box::new(MemoryStorage::new),
        task_insert_statements: Box::new(|store: &MemoryStorage, id| {
            store.task_insert_statements(id)
        }),
        age_heartbeats: Box::new(|store: &MemoryStorage, worker, by| {
            store.age_heartbeat(worker, by)
        }),
        change_worker_lock: Box::new(change_memory_lock),
    }
}

mod conformance {
    use super::memory_subject;

    tasktrail_core::conformance_tests!(memory_subject());
}

/// Runs every case on a fresh subject from `make_subject`, each on its own
/// (a failure does not stop the others), and returns the names of the
/// cases that failed, each with its panic message.
fn failing_cases<S: Storage>(make_subject: impl Fn() -> Subject<S>) -> Vec<(String, String)> {
    let mut failed = Vec::new();
    for (name, case) in every_case::<S>() {
        let subject = make_subject();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(subject)));
        if let Err(panic) = outcome {
            let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
            failed.push((name.to_owned(), message));
        }
    }
    failed
}

#[test]
fn every_case_body_is_in_the_list_once() {
    let mut names = CASE_NAMES.to_vec();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), CASE_NAMES.len(), "a case is listed twice");
    let listed: Vec<&str> = every_case::<MemoryStorage>()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(listed, CASE_NAMES);
    // Every case body in the suite's source is in the list (the lints
    // refuse a body left out as dead code; this says which one).
    let source = include_str!("../src/conformance/cases.rs");
    let mut bodies: Vec<&str> = source
        .lines()
        .filter_map(|line| line.strip_prefix("pub(super) fn "))
        .filter_map(|rest| rest.split('<').next())
        .collect();
    bodies.sort_unstable();
    let unlisted: Vec<&&str> = bodies.iter().filter(|body| !names.contains(body)).collect();
    let bodiless: Vec<&&str> = names.iter().filter(|name| !bodies.contains(name)).collect();
    assert!(
        unlisted.is_empty() && bodiless.is_empty(),
        "case bodies missing from the list: {unlisted:?}; listed cases without a body: {bodiless:?}"
    );
}

/// The suite's lock hook on a [`MemoryStorage`].
fn change_memory_lock(store: &MemoryStorage, worker: WorkerId, change: LockChange) {
    store.set_worker_lock(
        worker,
        match change {
            LockChange::ReleasedByDeath => OwnerLock::Free {
                watched_for: LockWatch::Continuous,
            },
            _ => OwnerLock::NotCheckable,
        },
    );
}

/// A backend with the seed issue's bug: finish writes a new row instead of
/// updating the running one (here: it re-INSERTs after the UPDATE).
#[derive(Debug, Default)]
struct InsertsOnFinish {
    inner: MemoryStorage,
}

impl Storage for InsertsOnFinish {
    fn register_worker(&self, registration: &WorkerRegistration) -> Result<(), StorageError> {
        self.inner.register_worker(registration)
    }
    fn heartbeat_worker(&self, worker: WorkerId, at: Timestamp) -> Result<(), StorageError> {
        self.inner.heartbeat_worker(worker, at)
    }
    fn deregister_worker(&self, worker: WorkerId, at: Timestamp) -> Result<(), StorageError> {
        self.inner.deregister_worker(worker, at)
    }
    fn list_workers(&self) -> Result<Vec<WorkerRecord>, StorageError> {
        self.inner.list_workers()
    }
    fn insert_running(&self, row: &NewRunningRow) -> Result<(), StorageError> {
        self.inner.insert_running(row)
    }
    fn finish_running(&self, row: &FinishRow) -> Result<FinishWrite, StorageError> {
        let written = self.inner.finish_running(row)?;
        if let Some(record) = self.inner.get_task(row.id)? {
            let spec = TaskSpec::validate(TaskSpecInput {
                repo: record.repo,
                issue_number: i64::from(record.issue_number),
                user: record.user,
                agent: record.agent,
                agent_type: record.agent_type,
                model: record.model,
                provider: record.provider,
            })
            .map_err(|error| StorageError::Other {
                source: Box::new(error),
            })?;
            // The bug: a second INSERT for the same id (refused here as a
            // duplicate, but issued all the same).
            let _ = self.inner.insert_running(&NewRunningRow {
                id: row.id,
                spec,
                worker: row.worker,
                started_at: row.at,
            });
        }
        Ok(written)
    }
    fn recover_orphans(
        &self,
        request: &RecoveryRequest,
        judge: &dyn LivenessJudge,
    ) -> Result<Vec<RecoveredTask>, StorageError> {
        self.inner.recover_orphans(request, judge)
    }
    fn claim_unreported_recoveries(
        &self,
        claim: &ReportClaim,
        judge: &dyn LivenessJudge,
    ) -> Result<Vec<RecoveredTask>, StorageError> {
        self.inner.claim_unreported_recoveries(claim, judge)
    }
    fn confirm_reports(
        &self,
        reporter: WorkerId,
        tasks: &[TaskId],
        at: Timestamp,
    ) -> Result<u64, StorageError> {
        self.inner.confirm_reports(reporter, tasks, at)
    }
    fn record_session(&self, session: &NewSession) -> Result<(), StorageError> {
        self.inner.record_session(session)
    }
    fn resumable_session(&self, key: &SessionKey) -> Result<Option<SessionRecord>, StorageError> {
        self.inner.resumable_session(key)
    }
    fn list_sessions(&self) -> Result<Vec<SessionRecord>, StorageError> {
        self.inner.list_sessions()
    }
    fn get_task(&self, id: TaskId) -> Result<Option<TaskRecord>, StorageError> {
        self.inner.get_task(id)
    }
    fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>, StorageError> {
        self.inner.list_tasks(filter)
    }
}

#[test]
fn the_suite_fails_a_backend_that_inserts_on_finish() {
    let failed = failing_cases(|| Subject {
        name: "inserts-on-finish",
        fresh_store: Box::new(InsertsOnFinish::default),
        task_insert_statements: Box::new(|store: &InsertsOnFinish, id| {
            store.inner.task_insert_statements(id)
        }),
        age_heartbeats: Box::new(|store: &InsertsOnFinish, worker, by| {
            store.inner.age_heartbeat(worker, by)
        }),
        change_worker_lock: Box::new(|store: &InsertsOnFinish, worker, change| {
            change_memory_lock(&store.inner, worker, change)
        }),
    });
    let names: Vec<&str> = failed.iter().map(|(name, _)| name.as_str()).collect();
    // Every case that finishes a row and counts its INSERTs catches it, not
    // only the first.
    for caught_by in [
        "finish_with_each_outcome_updates_the_same_row",
        "finishing_twice_is_refused_and_changes_nothing",
        "an_interrupted_finish_is_fenced_like_a_completed_one",
        "an_abandoned_handle_is_interrupted_once_with_its_sessions",
    ] {
        assert!(
            names.contains(&caught_by),
            "{caught_by} missed it: {names:?}"
        );
    }
    for (name, message) in &failed {
        assert!(
            message.contains("backend `inserts-on-finish` failed conformance case")
                && message.contains(&format!("`{name}`")),
            "the failure names the backend and its case: {message}"
        );
    }
    // Cases that never finish a row pass.
    assert!(
        !names.contains(&"recovery_with_no_orphans_is_a_no_op"),
        "{names:?}"
    );
}

/// A backend that hands the judge every lock as free, as one that checked
/// the wrong lock (or took the lock itself to test it) would.
#[derive(Debug, Default)]
struct SeesEveryLockFree {
    inner: MemoryStorage,
}

struct LocksLookFree<'a>(&'a dyn LivenessJudge);

impl LivenessJudge for LocksLookFree<'_> {
    fn judge(&self, owner: Option<&OwnerFacts>) -> Liveness {
        let owner = owner.cloned().map(|mut facts| {
            if facts.lock == OwnerLock::Held {
                facts.lock = OwnerLock::Free {
                    watched_for: LockWatch::Continuous,
                };
            }
            facts
        });
        self.0.judge(owner.as_ref())
    }
}

impl Storage for SeesEveryLockFree {
    fn register_worker(&self, registration: &WorkerRegistration) -> Result<(), StorageError> {
        self.inner.register_worker(registration)
    }
    fn heartbeat_worker(&self, worker: WorkerId, at: Timestamp) -> Result<(), StorageError> {
        self.inner.heartbeat_worker(worker, at)
    }
    fn deregister_worker(&self, worker: WorkerId, at: Timestamp) -> Result<(), StorageError> {
        self.inner.deregister_worker(worker, at)
    }
    fn list_workers(&self) -> Result<Vec<WorkerRecord>, StorageError> {
        self.inner.list_workers()
    }
    fn insert_running(&self, row: &NewRunningRow) -> Result<(), StorageError> {
        self.inner.insert_running(row)
    }
    fn finish_running(&self, row: &FinishRow) -> Result<FinishWrite, StorageError> {
        self.inner.finish_running(row)
    }
    fn recover_orphans(
        &self,
        request: &RecoveryRequest,
        judge: &dyn LivenessJudge,
    ) -> Result<Vec<RecoveredTask>, StorageError> {
        self.inner.recover_orphans(request, &LocksLookFree(judge))
    }
    fn claim_unreported_recoveries(
        &self,
        claim: &ReportClaim,
        judge: &dyn LivenessJudge,
    ) -> Result<Vec<RecoveredTask>, StorageError> {
        self.inner.claim_unreported_recoveries(claim, judge)
    }
    fn confirm_reports(
        &self,
        reporter: WorkerId,
        tasks: &[TaskId],
        at: Timestamp,
    ) -> Result<u64, StorageError> {
        self.inner.confirm_reports(reporter, tasks, at)
    }
    fn record_session(&self, session: &NewSession) -> Result<(), StorageError> {
        self.inner.record_session(session)
    }
    fn resumable_session(&self, key: &SessionKey) -> Result<Option<SessionRecord>, StorageError> {
        self.inner.resumable_session(key)
    }
    fn list_sessions(&self) -> Result<Vec<SessionRecord>, StorageError> {
        self.inner.list_sessions()
    }
    fn get_task(&self, id: TaskId) -> Result<Option<TaskRecord>, StorageError> {
        self.inner.get_task(id)
    }
    fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>, StorageError> {
        self.inner.list_tasks(filter)
    }
}

#[test]
fn the_suite_fails_a_backend_that_reports_held_locks_as_free() {
    let failed = failing_cases(|| Subject {
        name: "sees-every-lock-free",
        fresh_store: Box::new(SeesEveryLockFree::default),
        task_insert_statements: Box::new(|store: &SeesEveryLockFree, id| {
            store.inner.task_insert_statements(id)
        }),
        age_heartbeats: Box::new(|store: &SeesEveryLockFree, worker, by| {
            store.inner.age_heartbeat(worker, by)
        }),
        change_worker_lock: Box::new(|store: &SeesEveryLockFree, worker, change| {
            change_memory_lock(&store.inner, worker, change)
        }),
    });
    let names: Vec<&str> = failed.iter().map(|(name, _)| name.as_str()).collect();
    for caught_by in [
        "a_held_lock_keeps_a_silent_worker_alive_and_reports_it_stalled",
        "a_held_lock_wins_over_a_process_probe_that_says_gone",
    ] {
        assert!(
            names.contains(&caught_by),
            "{caught_by} missed it: {names:?}"
        );
    }
    for (_, message) in &failed {
        assert!(message.contains("sees-every-lock-free"), "{message}");
    }
    // The finish cases do not look at locks: they pass.
    assert!(
        !names.contains(&"finish_with_each_outcome_updates_the_same_row"),
        "{names:?}"
    );
}
