//! The `Worker` object: abandoned handles, the periodic sweep, upkeep
//! failures made visible, stop. Detection bounds are tested with the manual
//! clock and explicit ticks, never with sleeps (one test checks that the
//! background thread does the ticking by itself).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration as StdDuration;

use chrono::{Duration, TimeZone, Utc};
use tasktrail::backend::*;
use tasktrail::*;

/// The host's process table, changeable while workers run.
#[derive(Clone, Default)]
struct ProcessTable(Arc<Mutex<HashSet<u32>>>);

impl ProcessTable {
    fn spawn(&self, pid: u32) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(pid);
    }
    fn kill(&self, pid: u32) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&pid);
    }
}

impl ProcessProbe for ProcessTable {
    fn process_start_marker(&self, pid: u32) -> Option<String> {
        let alive = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        alive.contains(&pid).then(|| format!("boot:{pid}"))
    }
}

/// Every event a worker emitted, as text.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<String>>>);

impl Events {
    fn hook(&self) -> impl Fn(&WorkerEvent) + Send + Sync + 'static {
        let events = self.clone();
        move |event| {
            let text = match event {
                WorkerEvent::Recovered(task) => task.hint(),
                WorkerEvent::UpkeepFailed { upkeep, error } => format!("failed {upkeep}: {error}"),
                WorkerEvent::DeclaredDead => "declared dead".to_owned(),
                other => format!("{other:?}"),
            };
            events
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(text);
        }
    }
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
    fn recovery_lines(&self) -> Vec<String> {
        self.take()
            .into_iter()
            .filter(|line| line.starts_with("[recovery] "))
            .collect()
    }
}

/// A store whose writes can be made to fail, transiently (an outage) or
/// permanently, and that counts the calls it gets.
#[derive(Default)]
struct FlakyStore {
    inner: MemoryStorage,
    heartbeats_fail: AtomicBool,
    sweeps_fail: AtomicBool,
    /// Finishes fail with a transient error.
    finishes_fail: AtomicBool,
    /// Finishes fail with a permanent error.
    finishes_fail_permanently: AtomicBool,
    /// The next this many finishes fail with a transient error.
    finish_failures_left: AtomicU32,
    reads_fail: AtomicBool,
    heartbeat_calls: AtomicU32,
    finish_calls: AtomicU32,
    /// The next finish commits, then its answer is lost (the connection
    /// dropped after COMMIT): the caller sees a transient error.
    next_finish_commits_then_fails: AtomicBool,
}

fn outage() -> StorageError {
    StorageError::Unavailable {
        source: "connection refused (test)".into(),
    }
}

fn refused_access() -> StorageError {
    StorageError::AccessDenied {
        source: "password authentication failed (test)".into(),
    }
}

impl Storage for FlakyStore {
    fn register_worker(&self, registration: &WorkerRegistration) -> Result<(), StorageError> {
        self.inner.register_worker(registration)
    }
    fn heartbeat_worker(&self, worker: WorkerId, at: Timestamp) -> Result<(), StorageError> {
        self.heartbeat_calls.fetch_add(1, Ordering::SeqCst);
        if self.heartbeats_fail.load(Ordering::SeqCst) {
            return Err(outage());
        }
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
        self.finish_calls.fetch_add(1, Ordering::SeqCst);
        if self.finishes_fail_permanently.load(Ordering::SeqCst) {
            return Err(refused_access());
        }
        let counted_failure = self
            .finish_failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if counted_failure || self.finishes_fail.load(Ordering::SeqCst) {
            return Err(outage());
        }
        if self
            .next_finish_commits_then_fails
            .swap(false, Ordering::SeqCst)
        {
            self.inner.finish_running(row)?;
            return Err(outage());
        }
        self.inner.finish_running(row)
    }
    fn recover_orphans(
        &self,
        request: &RecoveryRequest,
        judge: &dyn LivenessJudge,
    ) -> Result<Vec<RecoveredTask>, StorageError> {
        if self.sweeps_fail.load(Ordering::SeqCst) {
            return Err(outage());
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
        if self.reads_fail.load(Ordering::SeqCst) {
            return Err(outage());
        }
        self.inner.get_task(id)
    }
    fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>, StorageError> {
        self.inner.list_tasks(filter)
    }
}

/// The test stores keep their workers' liveness locks in a
/// [`MemoryStorage`]; a killed process's lock is freed there.
trait LocksInMemory {
    fn memory(&self) -> &MemoryStorage;
}

impl LocksInMemory for MemoryStorage {
    fn memory(&self) -> &MemoryStorage {
        self
    }
}

impl LocksInMemory for FlakyStore {
    fn memory(&self) -> &MemoryStorage {
        &self.inner
    }
}

const HEARTBEAT: StdDuration = StdDuration::from_secs(5);
const SWEEP: StdDuration = StdDuration::from_secs(30);
const LEASE: StdDuration = StdDuration::from_secs(15);
const GRACE: StdDuration = StdDuration::from_secs(15);

/// The boot and PID namespace of the "dev" host's workers and judges.
fn dev_identity() -> HostIdentity {
    HostIdentity {
        boot_id: "dev-boot".into(),
        pid_namespace: 4_026_531_836,
    }
}

struct Fleet<S: Storage + 'static> {
    storage: Arc<S>,
    clock: Arc<ManualClock>,
    processes: ProcessTable,
    /// The worker each pid booted.
    workers_by_pid: Mutex<std::collections::HashMap<u32, WorkerId>>,
}

impl<S: Storage + LocksInMemory + 'static> Fleet<S> {
    /// Process `pid` dies (SIGKILL, or its host vanishes): gone from the
    /// process table, its liveness lock freed.
    fn kill(&self, pid: u32) {
        self.processes.kill(pid);
        let worker = self
            .workers_by_pid
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&pid)
            .copied()
            .expect("a booted pid");
        self.storage.memory().set_worker_lock(
            worker,
            OwnerLock::Free {
                watched_for: LockWatch::Continuous,
            },
        );
    }

    fn new(storage: S) -> Self {
        Self {
            storage: Arc::new(storage),
            clock: Arc::new(ManualClock::starting_at(
                Utc.with_ymd_and_hms(2026, 5, 11, 14, 37, 0)
                    .single()
                    .expect("time"),
            )),
            processes: ProcessTable::default(),
            workers_by_pid: Mutex::default(),
        }
    }

    /// A worker at `pid` on `host` (the local host is "dev"), ticked by the
    /// test.
    fn boot_on(&self, host: &str, pid: u32, events: &Events) -> Worker {
        self.boot_configured(host, pid, events, |builder| builder)
    }

    /// [`boot_on`](Self::boot_on), with more options set by `configure`.
    fn boot_configured(
        &self,
        host: &str,
        pid: u32,
        events: &Events,
        configure: impl FnOnce(WorkerBuilder) -> WorkerBuilder,
    ) -> Worker {
        if host == "dev" {
            self.processes.spawn(pid);
        }
        let storage: Arc<dyn Storage> = self.storage.clone();
        let identity = if host == "dev" {
            dev_identity()
        } else {
            HostIdentity {
                boot_id: format!("{host}-boot"),
                ..dev_identity()
            }
        };
        let builder = Worker::builder(storage)
            .heartbeat_interval(HEARTBEAT)
            .sweep_interval(SWEEP)
            .lease(LEASE)
            .grace(GRACE);
        let worker = configure(builder)
            .clock(self.clock.clone())
            .probe(Arc::new(self.processes.clone()))
            .probe_identity(Some(dev_identity()))
            .registration(WorkerRegistration {
                id: WorkerId::new_random(),
                host: host.to_owned(),
                pid,
                process_start_marker: format!("boot:{pid}"),
                host_identity: Some(identity),
                started_at: self.clock.now(),
            })
            .on_event(events.hook())
            .without_background_thread()
            .boot()
            .expect("boot");
        self.workers_by_pid
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(pid, worker.id());
        worker
    }

    fn boot(&self, pid: u32, events: &Events) -> Worker {
        self.boot_on("dev", pid, events)
    }

    fn row(&self, id: TaskId) -> TaskRecord {
        self.storage
            .get_task(id)
            .expect("read")
            .expect("row exists")
    }

    fn status(&self, id: TaskId) -> TaskStatus {
        self.row(id).status
    }

    /// Behind `worker`'s back its registration ends and an operator's
    /// sweep recovers its rows (and reports them). Returns how many.
    fn recover_behind_the_back_of(&self, worker: &Worker) -> usize {
        self.storage
            .deregister_worker(worker.id(), self.clock.now())
            .expect("deregister");
        runtime::recover_now(
            self.storage.as_ref(),
            self.clock.as_ref(),
            &self.processes,
            &LivenessPolicy::new(Some(dev_identity())),
            SweepMode::Apply,
        )
        .expect("sweep")
        .len()
    }

    fn advance(&self, by: StdDuration) {
        self.clock
            .advance(Duration::from_std(by).expect("duration"));
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

fn report() -> RunReport {
    RunReport {
        input_tokens: 1200,
        output_tokens: 300,
        cost_usd: CostUsd::new(0.42).expect("cost"),
        turns: 7,
        artifacts: vec!["pr/17".into()],
    }
}

#[test]
fn a_dropped_handle_is_interrupted_at_the_next_tick_with_its_sessions_and_reported_once() {
    let fleet = Fleet::new(MemoryStorage::new());
    let events = Events::default();
    let worker = fleet.boot(10, &events);
    let running = worker.start(Task::queue(spec())).expect("start");
    let id = running.id();
    worker
        .record_session(&running, SessionId::parse("sess_1").expect("session"))
        .expect("session");
    assert_eq!(worker.in_flight(), vec![id]);

    drop(running); // an early `?` return, a cancelled future...
    assert_eq!(fleet.status(id), TaskStatus::Running, "no IO inside drop");
    worker.tick(); // no time has to pass: the next tick, whenever it is.

    let row = fleet.row(id);
    assert_eq!(row.status, TaskStatus::Interrupted);
    assert_eq!(row.interrupt_reason.as_deref(), Some(ABANDONED_REASON));
    assert_eq!(row.interrupted_by, Some(worker.id()));
    assert_eq!((row.finished_at, row.cost_usd), (None, None));
    let session = &fleet.storage.list_sessions().expect("sessions")[0];
    assert!(
        session.invalidated_at.is_some(),
        "its session is invalidated"
    );
    let lines = events.recovery_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains(&id.to_string()), "{}", lines[0]);
    assert!(lines[0].contains("abandoned"), "{}", lines[0]);
    assert!(
        lines[0].ends_with("1 session(s) invalidated"),
        "{}",
        lines[0]
    );
    assert!(worker.in_flight().is_empty());

    fleet.advance(SWEEP);
    worker.tick();
    assert!(events.recovery_lines().is_empty(), "reported once");
    assert_eq!(worker.health(), WorkerHealth::Healthy);
}

#[test]
fn a_task_whose_work_panics_is_abandoned_and_interrupted() {
    let fleet = Fleet::new(MemoryStorage::new());
    let events = Events::default();
    let worker = Arc::new(fleet.boot(10, &events));
    let handler = Arc::clone(&worker);
    let id = Arc::new(Mutex::new(None));
    let seen = Arc::clone(&id);
    let panicked = std::thread::spawn(move || {
        let running = handler.start(Task::queue(spec())).expect("start");
        *seen.lock().unwrap_or_else(PoisonError::into_inner) = Some(running.id());
        panic!("the agent's handler panicked");
    })
    .join();
    assert!(panicked.is_err());
    let id = id
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .expect("started");
    worker.tick();
    assert_eq!(fleet.status(id), TaskStatus::Interrupted);
    assert_eq!(events.recovery_lines().len(), 1);
}

#[test]
fn a_finished_handle_is_never_interrupted() {
    let fleet = Fleet::new(MemoryStorage::new());
    let events = Events::default();
    let worker = fleet.boot(10, &events);
    let running = worker.start(Task::queue(spec())).expect("start");
    let finished = worker
        .finish(running, Outcome::Success(report()))
        .expect("finish")
        .written()
        .expect("written at once");
    worker.tick();
    fleet.advance(SWEEP);
    worker.tick();
    assert_eq!(fleet.status(finished.id()), TaskStatus::Success);
    assert!(events.recovery_lines().is_empty());
    let stopped = worker.stop().expect("stop");
    assert!(stopped.interrupted.is_empty() && stopped.recovered.is_empty());
}

#[test]
fn a_refused_finish_settles_the_handle_and_a_stop_after_it_touches_nothing() {
    let fleet = Fleet::new(MemoryStorage::new());
    let events = Events::default();
    let worker = fleet.boot(10, &events);
    let running = worker.start(Task::queue(spec())).expect("start");
    let id = running.id();
    assert_eq!(fleet.recover_behind_the_back_of(&worker), 1);
    let reason_after_sweep = fleet.row(id).interrupt_reason;
    let refused = worker.finish(running, Outcome::Success(report()));
    assert!(matches!(refused, Err(FinishError::Refused { .. })));
    assert!(worker.in_flight().is_empty());
    worker.tick();
    let stopped = worker.stop().expect("stop");
    assert!(stopped.interrupted.is_empty() && stopped.recovered.is_empty());
    assert!(events.recovery_lines().is_empty(), "no second report");
    let row = fleet.row(id);
    assert_eq!(row.interrupt_reason, reason_after_sweep, "the fence held");
}

/// A neighbour in another PID namespace that holds its lock but stops
/// running (SIGSTOP) past the lease: every sweep reports it stalled and
/// keeps its rows; when it runs again it says it was stalled, heartbeats,
/// and finishes its task.
#[test]
fn a_stalled_neighbour_is_reported_never_recovered_and_says_so_when_it_resumes() {
    let fleet = Fleet::new(MemoryStorage::new());
    let events = Events::default();
    let survivor = fleet.boot(10, &events);
    let neighbour_events = Events::default();
    let neighbour = fleet.boot_on("container", 1, &neighbour_events);
    let theirs = neighbour.start(Task::queue(spec())).expect("start");

    // The survivor runs on; the neighbour does not run at all.
    for _ in 0..((LEASE + SWEEP + SWEEP).as_secs() / HEARTBEAT.as_secs()) {
        fleet.advance(HEARTBEAT);
        survivor.tick();
    }
    assert_eq!(fleet.status(theirs.id()), TaskStatus::Running);
    let stalled = survivor.stalled_neighbours();
    assert_eq!(
        stalled
            .iter()
            .map(|owner| owner.record.id)
            .collect::<Vec<_>>(),
        vec![neighbour.id()]
    );
    assert!(
        matches!(stalled[0].verdict, Liveness::Stalled { silence } if silence > Duration::from_std(LEASE).expect("lease"))
    );
    let reported = events.take();
    assert!(
        reported
            .iter()
            .any(|event| event.starts_with("StalledWorker(")),
        "{reported:?}"
    );
    assert!(
        !reported
            .iter()
            .any(|event| event.starts_with("[recovery] ")),
        "{reported:?}"
    );

    // It runs again.
    neighbour.tick();
    assert!(
        neighbour_events
            .take()
            .iter()
            .any(|event| event.starts_with("ResumedAfterStall")),
        "it says it did not run"
    );
    assert!(matches!(
        neighbour.finish(theirs, Outcome::Success(report())),
        Ok(FinishReceipt::Written(_))
    ));
    fleet.advance(SWEEP);
    survivor.tick();
    assert!(survivor.stalled_neighbours().is_empty());
}

#[test]
fn the_periodic_sweep_recovers_a_dead_neighbour_within_one_sweep_interval_and_keeps_its_own() {
    let fleet = Fleet::new(MemoryStorage::new());
    let events = Events::default();
    let survivor = fleet.boot(10, &events);
    let neighbour_events = Events::default();
    let neighbour = fleet.boot(11, &neighbour_events);
    let mine = survivor.start(Task::queue(spec())).expect("start");
    let theirs = neighbour.start(Task::queue(spec())).expect("start");
    let theirs_id = theirs.id();
    // SIGKILL: no drop, no stop.
    std::mem::forget(theirs);
    std::mem::forget(neighbour);
    fleet.kill(11);

    fleet.advance(SWEEP - StdDuration::from_secs(1));
    survivor.tick();
    assert_eq!(fleet.status(theirs_id), TaskStatus::Running, "not due yet");
    fleet.advance(StdDuration::from_secs(1));
    survivor.tick();
    assert_eq!(fleet.status(theirs_id), TaskStatus::Interrupted);
    assert_eq!(fleet.status(mine.id()), TaskStatus::Running, "its own row");
    let lines = events.recovery_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("process 11 on dev is gone"),
        "{}",
        lines[0]
    );
    assert!(matches!(
        survivor.finish(mine, Outcome::Success(report())),
        Ok(FinishReceipt::Written(_))
    ));
}

#[test]
fn a_dead_worker_on_another_host_is_recovered_within_grace_plus_sweep_interval() {
    let fleet = Fleet::new(MemoryStorage::new());
    let events = Events::default();
    let survivor = fleet.boot(10, &events);
    let remote = fleet.boot_on("gpu-7", 99, &Events::default());
    let theirs = remote.start(Task::queue(spec())).expect("start");
    let id = theirs.id();
    std::mem::forget(theirs);
    std::mem::forget(remote); // its host vanished: no more heartbeats
    fleet.kill(99); // and its lock is free

    // At every sweep up to grace + sweep interval after its last heartbeat,
    // it is alive or just recovered; never later.
    let mut recovered_after = None;
    for step in 1..=((GRACE + SWEEP).as_secs() / HEARTBEAT.as_secs()) {
        fleet.advance(HEARTBEAT);
        survivor.tick();
        if fleet.status(id) == TaskStatus::Interrupted {
            recovered_after = Some(step * HEARTBEAT.as_secs());
            break;
        }
    }
    let after = recovered_after.expect("recovered within grace + sweep interval");
    assert!(after > GRACE.as_secs(), "not before the grace: {after}s");
    assert_eq!(events.recovery_lines().len(), 1);
}

#[test]
fn upkeep_failures_are_reported_and_degrade_health_until_they_succeed_again() {
    let fleet = Fleet::new(FlakyStore::default());
    let events = Events::default();
    let worker = fleet.boot(10, &events);
    assert_eq!(worker.health(), WorkerHealth::Healthy);

    fleet.storage.heartbeats_fail.store(true, Ordering::SeqCst);
    fleet.advance(HEARTBEAT);
    worker.tick();
    let WorkerHealth::Degraded { reason, since } = worker.health() else {
        panic!("expected degraded, got {:?}", worker.health());
    };
    assert!(reason.contains("heartbeat"), "{reason}");
    assert_eq!(since, fleet.clock.now());
    assert_eq!(events.take().len(), 1, "one event per failure");

    // Still failing a tick later: still degraded, since the first failure.
    fleet.advance(HEARTBEAT);
    worker.tick();
    assert!(matches!(worker.health(), WorkerHealth::Degraded { since: s, .. } if s == since));

    fleet.storage.heartbeats_fail.store(false, Ordering::SeqCst);
    fleet.advance(HEARTBEAT);
    worker.tick();
    assert_eq!(worker.health(), WorkerHealth::Healthy);
}

#[test]
fn a_failed_boot_sweep_does_not_fail_the_boot_and_is_retried_at_the_next_tick() {
    let fleet = Fleet::new(FlakyStore::default());
    let dead = fleet.boot(11, &Events::default());
    let orphan = dead.start(Task::queue(spec())).expect("start");
    let orphan_id = orphan.id();
    std::mem::forget(orphan);
    std::mem::forget(dead);
    fleet.kill(11);

    fleet.storage.sweeps_fail.store(true, Ordering::SeqCst);
    let events = Events::default();
    let worker = fleet.boot(10, &events);
    assert!(worker.recovered_at_boot().is_empty());
    assert!(matches!(worker.health(), WorkerHealth::Degraded { .. }));
    assert_eq!(fleet.status(orphan_id), TaskStatus::Running);

    fleet.storage.sweeps_fail.store(false, Ordering::SeqCst);
    fleet.advance(HEARTBEAT); // well before a sweep interval
    worker.tick();
    assert_eq!(fleet.status(orphan_id), TaskStatus::Interrupted);
    assert_eq!(events.recovery_lines().len(), 1);
    assert_eq!(worker.health(), WorkerHealth::Healthy);
}

#[test]
fn an_abandoned_task_that_cannot_be_written_yet_is_retried_and_reported_once() {
    let fleet = Fleet::new(FlakyStore::default());
    let events = Events::default();
    let worker = fleet.boot(10, &events);
    let running = worker.start(Task::queue(spec())).expect("start");
    let id = running.id();
    fleet.storage.finishes_fail.store(true, Ordering::SeqCst);
    drop(running);
    worker.tick();
    assert_eq!(fleet.status(id), TaskStatus::Running);
    assert!(matches!(worker.health(), WorkerHealth::Degraded { .. }));
    assert!(events.recovery_lines().is_empty());

    fleet.storage.finishes_fail.store(false, Ordering::SeqCst);
    worker.tick();
    assert_eq!(fleet.status(id), TaskStatus::Interrupted);
    assert_eq!(events.recovery_lines().len(), 1);
    worker.tick();
    assert!(events.recovery_lines().is_empty());
}

#[test]
fn a_permanently_failed_finish_hands_back_the_task_and_its_outcome_for_a_retry() {
    let fleet = Fleet::new(FlakyStore::default());
    let worker = fleet.boot(10, &Events::default());
    let running = worker.start(Task::queue(spec())).expect("start");
    fleet
        .storage
        .finishes_fail_permanently
        .store(true, Ordering::SeqCst);
    let error = worker
        .finish(running, Outcome::Success(report()))
        .expect_err("the store refuses access");
    assert!(worker.pending_outcomes().is_empty(), "not queued");
    let (running, outcome) = error.into_parts().expect("handed back");
    assert_eq!(outcome, Outcome::Success(report()), "tokens and cost kept");
    fleet
        .storage
        .finishes_fail_permanently
        .store(false, Ordering::SeqCst);
    let finished = worker.finish(running, outcome).expect("retry");
    let row = fleet
        .storage
        .get_task(finished.id())
        .expect("read")
        .expect("row");
    assert_eq!(
        (row.status, row.input_tokens, row.cost_usd),
        (TaskStatus::Success, Some(1200), Some(0.42))
    );
}

#[test]
fn a_worker_declared_dead_learns_it_from_its_heartbeat_and_writes_nothing_more() {
    let fleet = Fleet::new(MemoryStorage::new());
    let events = Events::default();
    let victim = fleet.boot(10, &events);
    let running = victim.start(Task::queue(spec())).expect("start");
    let id = running.id();
    // Its lock is freed behind its back (its database session ended in a
    // partition) and a sweep in its own namespace finds pid 10 gone.
    fleet.kill(10);
    let other = fleet.boot(11, &Events::default());
    assert_eq!(other.recovered_at_boot().len(), 1);

    fleet.advance(HEARTBEAT);
    victim.tick();
    assert_eq!(victim.health(), WorkerHealth::DeclaredDead);
    assert!(victim.is_declared_dead());
    assert!(events.take().contains(&"declared dead".to_owned()));
    drop(running);
    victim.tick();
    let row = fleet.row(id);
    assert_ne!(row.interrupt_reason.as_deref(), Some(ABANDONED_REASON));
    assert!(victim.stop().expect("stop").interrupted.is_empty());
}

#[test]
fn stop_interrupts_what_is_in_flight_and_deregisters() {
    let fleet = Fleet::new(MemoryStorage::new());
    let events = Events::default();
    let worker = fleet.boot(10, &events);
    let id = worker.id();
    let still_running = worker.start(Task::queue(spec())).expect("start");
    let abandoned = worker.start(Task::queue(spec())).expect("start");
    let abandoned_id = abandoned.id();
    drop(abandoned);

    let report = worker.stop().expect("stop");
    assert_eq!(report.interrupted, vec![still_running.id()]);
    assert_eq!(report.recovered.len(), 1);
    assert_eq!(report.recovered[0].task.id, abandoned_id);
    let row = fleet
        .storage
        .get_task(still_running.id())
        .expect("read")
        .expect("row");
    assert_eq!(row.status, TaskStatus::Interrupted);
    assert_eq!(
        row.interrupt_reason.as_deref(),
        Some(runtime::STOPPED_REASON)
    );
    assert!(fleet.storage.running_tasks().expect("running").is_empty());
    let workers = fleet.storage.list_workers().expect("workers");
    assert_eq!(
        workers.iter().find(|w| w.id == id).map(|w| w.state),
        Some(WorkerState::Stopped)
    );
    // The handle the caller still holds can no longer finish the row, and
    // dropping it later reports nothing.
    drop(still_running);
    assert_eq!(events.recovery_lines().len(), 1, "only the abandoned one");
}

#[test]
fn the_background_thread_interrupts_an_abandoned_handle_without_any_tick_call() {
    let storage = Arc::new(MemoryStorage::new());
    let events = Events::default();
    let dyn_storage: Arc<dyn Storage> = storage.clone();
    // A heartbeat interval far longer than the test: the drop itself must
    // wake the worker.
    let worker = Worker::builder(dyn_storage)
        .heartbeat_interval(StdDuration::from_secs(600))
        .lease(StdDuration::from_secs(1800))
        .grace(StdDuration::from_secs(1800))
        .on_event(events.hook())
        .boot()
        .expect("boot");
    let running = worker.start(Task::queue(spec())).expect("start");
    let id = running.id();
    drop(running);
    let mut interrupted = false;
    for _ in 0..500 {
        if storage.get_task(id).expect("read").map(|row| row.status)
            == Some(TaskStatus::Interrupted)
        {
            interrupted = true;
            break;
        }
        std::thread::sleep(StdDuration::from_millis(10));
    }
    assert!(
        interrupted,
        "the background thread handled the abandoned task"
    );
    worker.stop().expect("stop");
    assert_eq!(events.recovery_lines().len(), 1);
}

#[test]
fn options_out_of_range_are_refused_and_register_nothing() {
    let storage = Arc::new(MemoryStorage::new());
    for builder in [
        Worker::builder(storage.clone()).heartbeat_interval(StdDuration::ZERO),
        Worker::builder(storage.clone()).sweep_interval(StdDuration::ZERO),
        Worker::builder(storage.clone()).lease(StdDuration::from_secs(5)),
    ] {
        let error = builder.boot().expect_err("refused");
        assert!(
            matches!(error, BootError::InvalidOption { .. }),
            "{error:?}"
        );
    }
    assert!(storage.list_workers().expect("workers").is_empty());
}

#[test]
fn a_handle_dropped_after_a_sweep_recovered_its_row_is_not_reported_again() {
    let fleet = Fleet::new(MemoryStorage::new());
    let events = Events::default();
    let worker = fleet.boot(10, &events);
    let running = worker.start(Task::queue(spec())).expect("start");
    let id = running.id();
    assert_eq!(fleet.recover_behind_the_back_of(&worker), 1);
    let reason_after_sweep = fleet.row(id).interrupt_reason;

    drop(running);
    worker.tick();
    assert!(
        events.recovery_lines().is_empty(),
        "reported by the sweep only"
    );
    let row = fleet.row(id);
    assert_eq!(row.interrupt_reason, reason_after_sweep, "the fence held");
    assert!(worker.in_flight().is_empty());
}

#[test]
fn an_abandoned_task_interrupted_while_its_row_cannot_be_read_back_is_reported_once_later() {
    let fleet = Fleet::new(FlakyStore::default());
    let events = Events::default();
    let worker = fleet.boot(10, &events);
    let running = worker.start(Task::queue(spec())).expect("start");
    let id = running.id();
    worker
        .record_session(&running, SessionId::parse("sess_1").expect("session"))
        .expect("session");
    fleet.storage.reads_fail.store(true, Ordering::SeqCst);
    drop(running);
    worker.tick(); // the UPDATE commits; reading the row back fails
    assert!(events.recovery_lines().is_empty());
    assert!(matches!(worker.health(), WorkerHealth::Degraded { .. }));
    let interrupted_at = fleet.clock.now();

    fleet.storage.reads_fail.store(false, Ordering::SeqCst);
    fleet.advance(HEARTBEAT);
    worker.tick();
    let lines = events.recovery_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    // The report keeps what the committed UPDATE did: its session count and
    // its time, not the retry's.
    assert!(
        lines[0].ends_with("1 session(s) invalidated"),
        "{}",
        lines[0]
    );
    let row = fleet.row(id);
    assert_eq!(row.interrupted_at, Some(interrupted_at));
    worker.tick();
    assert!(events.recovery_lines().is_empty(), "reported once");
}

// ---------------------------------------------------------------------------
// Store outages: queued outcomes, backoff, health, stop deadline.

/// A worker at pid 10 on "dev" over the flaky store, ticked by the test,
/// retrying after 100 ms doubling up to 800 ms.
fn outage_worker(fleet: &Fleet<FlakyStore>, events: &Events) -> Worker {
    outage_worker_with(fleet, events, |builder| builder)
}

fn outage_worker_with(
    fleet: &Fleet<FlakyStore>,
    events: &Events,
    configure: impl FnOnce(WorkerBuilder) -> WorkerBuilder,
) -> Worker {
    fleet.boot_configured("dev", 10, events, |builder| {
        configure(
            builder.retry_backoff(StdDuration::from_millis(100), StdDuration::from_millis(800)),
        )
    })
}

#[test]
fn a_transient_finish_failure_queues_the_outcome_until_the_store_answers_and_loses_nothing() {
    let fleet = Fleet::new(FlakyStore::default());
    let events = Events::default();
    let worker = outage_worker(&fleet, &events);
    let running = worker.start(Task::queue(spec())).expect("start");
    let id = running.id();
    let ended_at = fleet.clock.now();

    fleet.storage.finishes_fail.store(true, Ordering::SeqCst);
    let receipt = worker
        .finish(running, Outcome::Success(report()))
        .expect("a transient failure is not an error");
    let FinishReceipt::Queued(pending) = receipt else {
        panic!("expected queued, got {receipt:?}");
    };
    assert_eq!(
        (pending.id, pending.status, pending.finished_at),
        (id, TaskStatus::Success, ended_at)
    );
    assert_eq!(worker.pending_outcomes(), vec![pending.clone()]);
    assert_eq!(worker.in_flight(), vec![id], "still this worker's task");
    let WorkerHealth::Degraded { reason, since } = worker.health() else {
        panic!("expected degraded, got {:?}", worker.health());
    };
    assert!(reason.contains("queued outcomes"), "{reason}");
    assert_eq!(since, ended_at);

    // The outage lasts a minute of ticks: the row stays running, the outcome
    // stays queued, the health stays degraded since the first failure.
    for _ in 0..60 {
        fleet.advance(StdDuration::from_secs(1));
        worker.tick();
    }
    assert_eq!(fleet.status(id), TaskStatus::Running);
    assert_eq!(worker.pending_outcomes().len(), 1);
    assert!(matches!(worker.health(), WorkerHealth::Degraded { since: s, .. } if s == since));

    // The store answers again: the next due retry lands the outcome, with
    // the time the work ended, its tokens and its cost.
    fleet.storage.finishes_fail.store(false, Ordering::SeqCst);
    events.take();
    fleet.advance(StdDuration::from_secs(1));
    worker.tick();
    let row = fleet.row(id);
    assert_eq!(
        (row.status, row.input_tokens, row.cost_usd, row.finished_at),
        (TaskStatus::Success, Some(1200), Some(0.42), Some(ended_at))
    );
    assert!(worker.pending_outcomes().is_empty());
    assert!(worker.in_flight().is_empty());
    assert_eq!(worker.health(), WorkerHealth::Healthy);
    let written: Vec<String> = events
        .take()
        .into_iter()
        .filter(|event| event.starts_with("OutcomeWritten"))
        .collect();
    assert_eq!(written.len(), 1, "{written:?}");
    worker.stop().expect("stop");
    assert_eq!(
        fleet.status(id),
        TaskStatus::Success,
        "stop changed nothing"
    );
}

#[test]
fn an_outcome_whose_commit_answer_was_lost_counts_as_written_not_refused() {
    let fleet = Fleet::new(FlakyStore::default());
    let events = Events::default();
    let worker = outage_worker(&fleet, &events);
    let running = worker.start(Task::queue(spec())).expect("start");
    let id = running.id();
    fleet
        .storage
        .next_finish_commits_then_fails
        .store(true, Ordering::SeqCst);
    let receipt = worker
        .finish(running, Outcome::Success(report()))
        .expect("a transient failure is not an error");
    assert!(matches!(receipt, FinishReceipt::Queued(_)), "{receipt:?}");
    assert_eq!(fleet.status(id), TaskStatus::Success, "it did commit");
    events.take();
    fleet.advance(StdDuration::from_secs(1));
    worker.tick();
    let seen = events.take();
    assert!(
        seen.iter().any(|event| event.starts_with("OutcomeWritten")),
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|event| event.starts_with("OutcomeRefused")),
        "{seen:?}"
    );
    assert!(worker.pending_outcomes().is_empty());
    assert_eq!(worker.health(), WorkerHealth::Healthy);
    worker.stop().expect("stop");
}

#[test]
fn queued_outcomes_are_retried_with_exponential_backoff_up_to_the_cap() {
    let fleet = Fleet::new(FlakyStore::default());
    let worker = outage_worker(&fleet, &Events::default());
    let running = worker.start(Task::queue(spec())).expect("start");
    fleet.storage.finishes_fail.store(true, Ordering::SeqCst);
    let started = fleet.clock.now();
    assert!(matches!(
        worker.finish(running, Outcome::Success(report())),
        Ok(FinishReceipt::Queued(_))
    ));
    // Tick every 10 ms for 5 s and note when each retry happened.
    let mut attempts_at = Vec::new();
    for _ in 0..500 {
        fleet.advance(StdDuration::from_millis(10));
        let before = fleet.storage.finish_calls.load(Ordering::SeqCst);
        worker.tick();
        if fleet.storage.finish_calls.load(Ordering::SeqCst) > before {
            attempts_at.push((fleet.clock.now() - started).num_milliseconds());
        }
    }
    let pauses: Vec<i64> = std::iter::once(0)
        .chain(attempts_at.iter().copied())
        .collect::<Vec<_>>()
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .collect();
    assert_eq!(&pauses[..5], &[100, 200, 400, 800, 800], "{pauses:?}");
    assert!(pauses.iter().all(|pause| *pause <= 800), "{pauses:?}");
    assert_eq!(
        worker.pending_outcomes()[0].attempts as usize,
        1 + attempts_at.len()
    );
}

#[test]
fn failing_heartbeats_are_retried_with_backoff_not_at_every_tick() {
    let fleet = Fleet::new(FlakyStore::default());
    let worker = outage_worker(&fleet, &Events::default());
    fleet.storage.heartbeats_fail.store(true, Ordering::SeqCst);
    fleet.advance(HEARTBEAT);
    let calls_before = fleet.storage.heartbeat_calls.load(Ordering::SeqCst);
    // One second of ticks every millisecond: 100 + 200 + 400 ms pauses.
    for _ in 0..1000 {
        worker.tick();
        fleet.advance(StdDuration::from_millis(1));
    }
    let calls = fleet.storage.heartbeat_calls.load(Ordering::SeqCst) - calls_before;
    assert_eq!(calls, 4, "at 0, 100, 300 and 700 ms");
    // The pause never exceeds the heartbeat interval, however long it fails.
    for _ in 0..20 {
        fleet.advance(HEARTBEAT);
        worker.tick();
    }
    assert_eq!(
        fleet.storage.heartbeat_calls.load(Ordering::SeqCst) - calls_before,
        24
    );
    fleet.storage.heartbeats_fail.store(false, Ordering::SeqCst);
    fleet.advance(HEARTBEAT);
    worker.tick();
    assert_eq!(worker.health(), WorkerHealth::Healthy);
}

#[test]
fn stop_writes_queued_outcomes_once_the_store_answers_before_the_deadline() {
    let fleet = Fleet::new(FlakyStore::default());
    let events = Events::default();
    let storage: Arc<dyn Storage> = fleet.storage.clone();
    let worker = Worker::builder(storage)
        .retry_backoff(StdDuration::from_millis(1), StdDuration::from_millis(2))
        .stop_deadline(StdDuration::from_secs(120))
        .on_event(events.hook())
        .without_background_thread()
        .boot()
        .expect("boot");
    let queued = worker.start(Task::queue(spec())).expect("start");
    let queued_id = queued.id();
    let in_flight = worker.start(Task::queue(spec())).expect("start");
    // The store refuses the next five writes: the finish and four of the
    // stop's retries.
    fleet
        .storage
        .finish_failures_left
        .store(5, Ordering::SeqCst);
    assert!(matches!(
        worker.finish(queued, Outcome::Failure(report())),
        Ok(FinishReceipt::Queued(_))
    ));
    let report = worker
        .stop()
        .expect("the store came back before the deadline");
    assert_eq!(report.written.len(), 1);
    assert_eq!(report.written[0].id, queued_id);
    assert_eq!(report.interrupted, vec![in_flight.id()]);
    assert_eq!(fleet.status(queued_id), TaskStatus::Failure);
    assert_eq!(fleet.status(in_flight.id()), TaskStatus::Interrupted);
    assert!(fleet.storage.running_tasks().expect("running").is_empty());
}

#[test]
fn stop_names_what_it_could_not_write_by_the_deadline_and_leaves_those_rows_for_the_sweep() {
    let fleet = Fleet::new(FlakyStore::default());
    let events = Events::default();
    let worker = outage_worker_with(&fleet, &events, |builder| {
        builder.stop_deadline(StdDuration::ZERO)
    });
    let queued = worker.start(Task::queue(spec())).expect("start");
    let queued_id = queued.id();
    let in_flight = worker.start(Task::queue(spec())).expect("start");
    let in_flight_id = in_flight.id();
    fleet.storage.finishes_fail.store(true, Ordering::SeqCst);
    assert!(matches!(
        worker.finish(queued, Outcome::Success(report())),
        Ok(FinishReceipt::Queued(_))
    ));

    let error = worker.stop().expect_err("the store never answered");
    assert!(error.error.is_transient(), "{:?}", error.error);
    let mut unwritten: Vec<(TaskId, TaskStatus)> =
        error.unwritten.iter().map(|u| (u.id, u.status)).collect();
    unwritten.sort();
    let mut expected = vec![
        (queued_id, TaskStatus::Success),
        (in_flight_id, TaskStatus::Interrupted),
    ];
    expected.sort();
    assert_eq!(unwritten, expected);
    assert_eq!(fleet.status(queued_id), TaskStatus::Running);
    assert_eq!(fleet.status(in_flight_id), TaskStatus::Running);

    // The process exits; the next sweep recovers both rows.
    drop(in_flight);
    fleet.kill(10);
    fleet.storage.finishes_fail.store(false, Ordering::SeqCst);
    let recovered = runtime::recover_now(
        fleet.storage.as_ref(),
        fleet.clock.as_ref(),
        &fleet.processes,
        &LivenessPolicy::new(Some(dev_identity())),
        SweepMode::Apply,
    )
    .expect("sweep");
    assert_eq!(recovered.len(), 2);
    assert_eq!(fleet.status(queued_id), TaskStatus::Interrupted);
}

#[test]
fn the_background_thread_writes_a_queued_outcome_by_itself() {
    let storage = Arc::new(FlakyStore::default());
    let events = Events::default();
    let dyn_storage: Arc<dyn Storage> = storage.clone();
    let worker = Worker::builder(dyn_storage)
        .heartbeat_interval(StdDuration::from_secs(600))
        .lease(StdDuration::from_secs(1800))
        .grace(StdDuration::from_secs(1800))
        .retry_backoff(StdDuration::from_millis(5), StdDuration::from_millis(20))
        .on_event(events.hook())
        .boot()
        .expect("boot");
    let running = worker.start(Task::queue(spec())).expect("start");
    let id = running.id();
    storage.finish_failures_left.store(3, Ordering::SeqCst);
    assert!(matches!(
        worker.finish(running, Outcome::Success(report())),
        Ok(FinishReceipt::Queued(_))
    ));
    let mut landed = false;
    for _ in 0..1000 {
        if worker.pending_outcomes().is_empty() {
            landed = true;
            break;
        }
        std::thread::sleep(StdDuration::from_millis(10));
    }
    assert!(landed, "the background thread retried until it landed");
    assert_eq!(
        storage.get_task(id).expect("read").map(|row| row.status),
        Some(TaskStatus::Success)
    );
    worker.stop().expect("stop");
}

// ---------------------------------------------------------------------------
// Recovery reports are never lost (issue 13, item 3).

/// A reporter that refuses the next `failures` reports (a closed stdout),
/// then takes them, and keeps the lines it took.
#[derive(Clone, Default)]
struct Reporter {
    failures: Arc<AtomicU32>,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Reporter {
    fn failing(failures: u32) -> Self {
        let reporter = Self::default();
        reporter.failures.store(failures, Ordering::SeqCst);
        reporter
    }
    fn install(&self) -> impl FnOnce(WorkerBuilder) -> WorkerBuilder {
        let reporter = self.clone();
        move |builder| {
            builder.recovery_reporter(move |task| {
                let refused = reporter
                    .failures
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if refused {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::BrokenPipe,
                        "stdout is closed (test)",
                    ));
                }
                reporter
                    .lines
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(task.hint());
                Ok(())
            })
        }
    }
    fn lines(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Two running rows of a worker at `pid` that then dies.
fn orphans_of_a_dead_worker(fleet: &Fleet<MemoryStorage>, pid: u32) -> Vec<TaskId> {
    let victim = fleet.boot(pid, &Events::default());
    let ids: Vec<TaskId> = (0..2)
        .map(|_| {
            let task = victim.start(Task::queue(spec())).expect("start");
            let id = task.id();
            std::mem::forget(task);
            id
        })
        .collect();
    std::mem::forget(victim);
    fleet.kill(pid);
    ids
}

#[test]
fn a_report_the_reporter_could_not_deliver_is_delivered_at_the_next_sweep_then_never_again() {
    let fleet = Fleet::new(MemoryStorage::new());
    let orphans = orphans_of_a_dead_worker(&fleet, 20);
    let reporter = Reporter::failing(1);
    let worker = fleet.boot_configured("dev", 21, &Events::default(), reporter.install());
    // The boot recovered both; the first line could not be written.
    assert_eq!(worker.recovered_at_boot().len(), 2);
    let first_lines = reporter.lines();
    assert_eq!(first_lines.len(), 1, "{first_lines:?}");
    fleet.advance(SWEEP);
    worker.tick();
    let lines = reporter.lines();
    assert_eq!(lines.len(), 2, "the refused line comes again: {lines:?}");
    for id in &orphans {
        let count = lines
            .iter()
            .filter(|line| line.contains(&id.to_string()))
            .count();
        assert_eq!(count, 1, "task {id} reported once: {lines:?}");
    }
    for _ in 0..3 {
        fleet.advance(SWEEP);
        worker.tick();
    }
    assert_eq!(
        reporter.lines().len(),
        2,
        "delivered lines never come again"
    );
}

#[test]
fn reports_a_sweeper_committed_but_never_confirmed_go_to_the_next_boot_once() {
    let fleet = Fleet::new(MemoryStorage::new());
    let orphans = orphans_of_a_dead_worker(&fleet, 30);
    // The sweeper commits its sweep, then dies before its lines are out
    // (its reporter never takes one).
    let dying = Reporter::failing(u32::MAX);
    let sweeper = fleet.boot_configured("dev", 31, &Events::default(), dying.install());
    assert_eq!(sweeper.recovered_at_boot().len(), 2);
    assert!(dying.lines().is_empty());
    for id in &orphans {
        assert_eq!(fleet.status(*id), TaskStatus::Interrupted);
    }
    std::mem::forget(sweeper);
    fleet.kill(31);

    let next = Reporter::default();
    let booted = fleet.boot_configured("dev", 32, &Events::default(), next.install());
    let taken: Vec<TaskId> = booted
        .recovered_at_boot()
        .iter()
        .map(|r| r.task.id)
        .collect();
    assert_eq!(taken, orphans, "the next boot reports them");
    assert!(booted
        .recovered_at_boot()
        .iter()
        .all(|r| r.previous_reporter.is_some()));
    assert_eq!(next.lines().len(), 2);
    // Once: neither its own next sweep nor another boot says them again.
    fleet.advance(SWEEP);
    booted.tick();
    let another = Reporter::default();
    let later = fleet.boot_configured("dev", 33, &Events::default(), another.install());
    assert!(later.recovered_at_boot().is_empty());
    assert_eq!(next.lines().len(), 2);
    assert!(another.lines().is_empty());
}

#[test]
fn a_living_sweepers_reports_are_never_taken_from_it() {
    let fleet = Fleet::new(MemoryStorage::new());
    let _orphans = orphans_of_a_dead_worker(&fleet, 40);
    let slow = Reporter::failing(u32::MAX);
    let sweeper = fleet.boot_configured("dev", 41, &Events::default(), slow.install());
    assert_eq!(sweeper.recovered_at_boot().len(), 2);
    let other = Reporter::default();
    let booted = fleet.boot_configured("dev", 42, &Events::default(), other.install());
    assert!(
        booted.recovered_at_boot().is_empty(),
        "its owner is alive: it delivers them itself"
    );
    fleet.advance(SWEEP);
    booted.tick();
    assert!(other.lines().is_empty());
}
