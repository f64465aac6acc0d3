//! The in-memory backend's single entry into the shared behaviour suite, and
//! the proof that the suite catches a backend that breaks the contract.

use tasktrail_core::backend::*;
use tasktrail_core::conformance::{run_conformance_suite, LockChange, Subject};
use tasktrail_core::*;

#[test]
fn memory_storage_passes_the_conformance_suite() {
    run_conformance_suite(Subject {
        name: "memory",
        fresh_store: Box::new(MemoryStorage::new),
        task_insert_statements: Box::new(|store: &MemoryStorage, id| {
            store.task_insert_statements(id)
        }),
        age_heartbeats: Box::new(|store: &MemoryStorage, worker, by| {
            store.age_heartbeat(worker, by)
        }),
        change_worker_lock: Box::new(change_memory_lock),
    });
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
    let result = std::panic::catch_unwind(|| {
        run_conformance_suite(Subject {
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
    });
    let panic = result.expect_err("the broken backend must fail the suite");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("inserts-on-finish"), "{message}");
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
    let result = std::panic::catch_unwind(|| {
        run_conformance_suite(Subject {
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
    });
    let panic = result.expect_err("a backend blind to held locks must fail the suite");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("sees-every-lock-free"), "{message}");
    assert!(message.contains("lock"), "a lock case caught it: {message}");
}
