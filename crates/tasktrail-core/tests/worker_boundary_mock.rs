//! At the worker boundary, a task's lifecycle issues exactly one INSERT (at
//! start) and exactly one UPDATE (at finish): a mock `Storage` counts the
//! calls, and fails the test on any call it was not told to expect.

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use mockall::predicate::always;
use tasktrail_core::backend::*;
use tasktrail_core::*;

mockall::mock! {
    pub Store {}
    impl Storage for Store {
        fn register_worker(&self, registration: &WorkerRegistration) -> Result<(), StorageError>;
        fn heartbeat_worker(&self, worker: WorkerId, at: Timestamp) -> Result<(), StorageError>;
        fn deregister_worker(&self, worker: WorkerId, at: Timestamp) -> Result<(), StorageError>;
        fn list_workers(&self) -> Result<Vec<WorkerRecord>, StorageError>;
        fn insert_running(&self, row: &NewRunningRow) -> Result<(), StorageError>;
        fn finish_running(&self, row: &FinishRow) -> Result<FinishWrite, StorageError>;
        fn recover_orphans<'a>(&self, request: &RecoveryRequest, judge: &'a dyn LivenessJudge) -> Result<Vec<RecoveredTask>, StorageError>;
        fn claim_unreported_recoveries<'a>(&self, claim: &ReportClaim, judge: &'a dyn LivenessJudge) -> Result<Vec<RecoveredTask>, StorageError>;
        fn confirm_reports<'a>(&self, reporter: WorkerId, tasks: &'a [TaskId], at: Timestamp) -> Result<u64, StorageError>;
        fn record_session(&self, session: &NewSession) -> Result<(), StorageError>;
        fn resumable_session(&self, key: &SessionKey) -> Result<Option<SessionRecord>, StorageError>;
        fn list_sessions(&self) -> Result<Vec<SessionRecord>, StorageError>;
        fn get_task(&self, id: TaskId) -> Result<Option<TaskRecord>, StorageError>;
        fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>, StorageError>;
    }
}

fn spec() -> TaskSpec {
    TaskSpec::validate(TaskSpecInput {
        repo: "acme/widgets".into(),
        issue_number: 1104,
        user: "alice".into(),
        agent: "fixer".into(),
        agent_type: "claude_sdk".into(),
        model: "claude-opus".into(),
        provider: "anthropic".into(),
    })
    .expect("valid spec")
}

fn registered_worker(store: &MockStore) -> RegisteredWorker {
    let clock = ManualClock::starting_at(
        Utc.with_ymd_and_hms(2026, 5, 11, 14, 37, 0)
            .single()
            .expect("time"),
    );
    RegisteredWorker::register(
        store,
        WorkerRegistration {
            id: WorkerId::new_random(),
            host: "dev".into(),
            pid: 4242,
            process_start_marker: "boot:1".into(),
            host_identity: None,
            started_at: clock.now(),
        },
        Arc::new(clock),
    )
    .expect("register")
}

#[test]
fn finish_calls_update_once_and_insert_never() {
    let mut store = MockStore::new();
    store
        .expect_register_worker()
        .times(1)
        .returning(|_| Ok(()));
    let worker = registered_worker(&store);
    let task_id = TaskId::new_random();
    let worker_id = worker.id();
    store
        .expect_insert_running()
        .withf(move |row| row.id == task_id && row.worker == worker_id)
        .times(1)
        .returning(|_| Ok(()));
    store
        .expect_finish_running()
        .withf(move |row| {
            row.id == task_id
                && row.worker == worker_id
                && row.outcome.status() == TaskStatus::Success
        })
        .times(1)
        .returning(|_| {
            Ok(FinishWrite::Updated {
                sessions_invalidated: 0,
            })
        });

    let running = Task::queue_with_id(task_id, spec())
        .start(&worker, &store)
        .expect("start");
    let finished = running
        .finish(Outcome::Success(RunReport::empty()), &store)
        .expect("finish");
    assert_eq!(finished.outcome().status(), TaskStatus::Success);
    // MockStore's drop checks `times(1)`; any other call (a second INSERT)
    // panics because it has no expectation.
    store.checkpoint();
}

#[test]
fn a_refused_finish_never_falls_back_to_insert() {
    let mut store = MockStore::new();
    store.expect_register_worker().returning(|_| Ok(()));
    let worker = registered_worker(&store);
    store.expect_insert_running().times(1).returning(|_| Ok(()));
    store
        .expect_finish_running()
        .with(always())
        .times(1)
        .returning(|_| {
            Ok(FinishWrite::Refused(FinishRefusal::InterruptedByRecovery {
                recovered_by: None,
            }))
        });
    let running = Task::queue(spec()).start(&worker, &store).expect("start");
    let error = running
        .finish(Outcome::Success(RunReport::empty()), &store)
        .expect_err("refused");
    assert!(matches!(
        error,
        FinishError::Refused {
            refusal: FinishRefusal::InterruptedByRecovery { .. },
            ..
        }
    ));
    assert!(
        error.into_task().is_none(),
        "a refused finish has nothing to retry"
    );
    store.checkpoint();
}

#[test]
fn a_failed_finish_hands_the_running_task_back_and_a_retry_succeeds() {
    let mut store = MockStore::new();
    store.expect_register_worker().returning(|_| Ok(()));
    let worker = registered_worker(&store);
    store.expect_insert_running().times(1).returning(|_| Ok(()));
    let mut calls = 0;
    store.expect_finish_running().times(2).returning(move |_| {
        calls += 1;
        if calls == 1 {
            Err(StorageError::Unavailable {
                source: "database is locked".into(),
            })
        } else {
            Ok(FinishWrite::Updated {
                sessions_invalidated: 0,
            })
        }
    });
    let running = Task::queue(spec()).start(&worker, &store).expect("start");
    let id = running.id();
    let error = running
        .finish(Outcome::Success(RunReport::empty()), &store)
        .expect_err("first finish fails");
    let running = error.into_task().expect("the task comes back");
    assert_eq!(running.id(), id);
    running
        .finish(Outcome::Success(RunReport::empty()), &store)
        .expect("retry succeeds");
    store.checkpoint();
}

#[test]
fn a_failed_start_writes_nothing_more_and_hands_the_queued_task_back() {
    let mut store = MockStore::new();
    store.expect_register_worker().returning(|_| Ok(()));
    let worker = registered_worker(&store);
    store
        .expect_insert_running()
        .times(1)
        .returning(|row| Err(StorageError::DuplicateTask { id: row.id }));
    let queued = Task::queue(spec());
    let id = queued.id();
    let error = queued.start(&worker, &store).expect_err("duplicate");
    assert!(matches!(error.error, StorageError::DuplicateTask { .. }));
    assert_eq!(error.into_task().id(), id);
    store.checkpoint();
}
