//! Fault injection: a `Storage` wrapper that fails chosen calls (as a full
//! disk, a dropped connection or a lock held too long would) shows that a
//! failed start leaves no row and no `Task<Running>`, a failed finish hands
//! the `Task<Running>` back and a retry succeeds, and a failed sweep leaves
//! every row as it was.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};
use tasktrail_core::backend::*;
use tasktrail_core::*;

/// Forwards to a `MemoryStorage`, except the calls whose switch is on: those
/// fail with `Unavailable` and write nothing. A sweep can also fail *after*
/// the inner sweep ran, the way a transaction fails at COMMIT; the wrapper
/// then restores the snapshot it took, as the rollback would.
#[derive(Default)]
struct Faulty {
    inner: MemoryStorage,
    fail_insert: AtomicBool,
    fail_finish: AtomicBool,
    fail_sweep: AtomicBool,
}

fn unavailable() -> StorageError {
    StorageError::Unavailable {
        source: "injected fault: disk I/O error".into(),
    }
}

impl Faulty {
    fn check(switch: &AtomicBool) -> Result<(), StorageError> {
        if switch.swap(false, Ordering::SeqCst) {
            Err(unavailable())
        } else {
            Ok(())
        }
    }
}

impl Storage for Faulty {
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
        Self::check(&self.fail_insert)?;
        self.inner.insert_running(row)
    }
    fn finish_running(&self, row: &FinishRow) -> Result<FinishWrite, StorageError> {
        Self::check(&self.fail_finish)?;
        self.inner.finish_running(row)
    }
    fn recover_orphans(
        &self,
        request: &RecoveryRequest,
        judge: &dyn LivenessJudge,
    ) -> Result<Vec<RecoveredTask>, StorageError> {
        if self.fail_sweep.swap(false, Ordering::SeqCst) {
            // Fail at "COMMIT": compute the sweep as a dry run (writes
            // nothing) and report the failure.
            let _ = self.inner.recover_orphans(
                &RecoveryRequest {
                    mode: SweepMode::DryRun,
                    ..*request
                },
                judge,
            )?;
            return Err(unavailable());
        }
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

struct NoProcesses;

impl ProcessProbe for NoProcesses {
    fn process_start_marker(&self, _pid: u32) -> Option<String> {
        None
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
    .expect("spec")
}

/// The boot and PID namespace of the made-up workers and of the judge.
fn made_up_identity() -> HostIdentity {
    HostIdentity {
        boot_id: "dev-boot".into(),
        pid_namespace: 4_026_531_836,
    }
}

fn worker(storage: &Faulty, clock: &ManualClock, pid: u32) -> RegisteredWorker {
    let worker = RegisteredWorker::register(
        storage,
        WorkerRegistration {
            id: WorkerId::new_random(),
            host: "dev".into(),
            pid,
            process_start_marker: format!("boot:{pid}"),
            host_identity: Some(made_up_identity()),
            started_at: clock.now(),
        },
        Arc::new(clock.clone()),
    )
    .expect("register");
    // A made-up process: nothing holds its liveness lock, and the probe
    // (no processes at all) decides.
    storage.inner.set_worker_lock(
        worker.id(),
        OwnerLock::Free {
            watched_for: LockWatch::Continuous,
        },
    );
    worker
}

fn clock() -> ManualClock {
    ManualClock::starting_at(
        Utc.with_ymd_and_hms(2026, 5, 11, 14, 37, 0)
            .single()
            .expect("time"),
    )
}

#[test]
fn a_failed_start_leaves_no_row_and_hands_the_queued_task_back() {
    let storage = Faulty::default();
    let clock = clock();
    let worker = worker(&storage, &clock, 10);
    storage.fail_insert.store(true, Ordering::SeqCst);
    let queued = Task::queue(spec());
    let id = queued.id();
    let error = queued.start(&worker, &storage).expect_err("injected");
    assert!(matches!(error.error, StorageError::Unavailable { .. }));
    assert_eq!(storage.get_task(id).expect("read"), None, "no row");
    // The queued task comes back and a retry starts it, with one INSERT.
    let running = error.into_task().start(&worker, &storage).expect("retry");
    assert_eq!(running.id(), id);
    assert_eq!(storage.inner.task_insert_statements(id), 1);
}

#[test]
fn a_failed_finish_hands_the_running_task_back_and_a_retry_succeeds() {
    let storage = Faulty::default();
    let clock = clock();
    let worker = worker(&storage, &clock, 10);
    let running = Task::queue(spec()).start(&worker, &storage).expect("start");
    let id = running.id();
    storage.fail_finish.store(true, Ordering::SeqCst);
    let error = running
        .finish(Outcome::Success(RunReport::empty()), &storage)
        .expect_err("injected");
    assert!(matches!(
        &error,
        FinishError::Storage {
            error: StorageError::Unavailable { .. },
            ..
        }
    ));
    assert_eq!(
        storage.get_task(id).expect("read").map(|r| r.status),
        Some(TaskStatus::Running)
    );
    let running = error.into_task().expect("the running task comes back");
    running
        .finish(Outcome::Success(RunReport::empty()), &storage)
        .expect("retry");
    assert_eq!(
        storage.get_task(id).expect("read").map(|r| r.status),
        Some(TaskStatus::Success)
    );
    assert_eq!(
        storage.inner.task_insert_statements(id),
        1,
        "one INSERT, whatever the retries"
    );
}

#[test]
fn a_failed_sweep_leaves_every_row_as_it_was_and_the_next_one_recovers() {
    let storage = Faulty::default();
    let clock = clock();
    let victim = worker(&storage, &clock, 10);
    for _ in 0..3 {
        let running = Task::queue(spec()).start(&victim, &storage).expect("start");
        running
            .record_session(
                SessionId::parse(&format!("sess_{}", running.id())).expect("id"),
                &storage,
            )
            .expect("session");
    }
    clock.advance(Duration::minutes(5));
    let rescuer = worker(&storage, &clock, 11);
    let rows_before = storage.list_tasks(&TaskFilter::default()).expect("rows");
    let sessions_before = storage.list_sessions().expect("sessions");
    let workers_before = storage.list_workers().expect("workers");
    let policy = LivenessPolicy::new(Some(made_up_identity()));
    let judge = PolicyJudge {
        policy: &policy,
        probe: &NoProcesses,
    };
    let request = RecoveryRequest {
        recovering_worker: rescuer.id(),
        now: clock.now(),
        mode: SweepMode::Apply,
    };
    storage.fail_sweep.store(true, Ordering::SeqCst);
    let error = storage
        .recover_orphans(&request, &judge)
        .expect_err("injected");
    assert!(matches!(error, StorageError::Unavailable { .. }));
    assert_eq!(
        storage.list_tasks(&TaskFilter::default()).expect("rows"),
        rows_before
    );
    assert_eq!(storage.list_sessions().expect("sessions"), sessions_before);
    assert_eq!(storage.list_workers().expect("workers"), workers_before);

    let recovered = storage
        .recover_orphans(&request, &judge)
        .expect("the next sweep");
    assert_eq!(
        recovered.len(),
        3,
        "nothing was lost: every orphan is still found"
    );
}
