//! The Worker's metrics (`tasktrail::metrics`), read through a capturing
//! recorder.
//!
//! The Worker counts on its background thread too (abandoned tasks, queued
//! outcomes, sweeps), which a thread-local recorder would not see: this
//! binary installs one global `DebuggingRecorder`, and its tests take turns
//! (one lock) and compare what moved between two readings.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration as StdDuration, Instant};

use chrono::{Duration, TimeZone, Utc};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tasktrail::backend::{FinishRow, FinishWrite, LockWatch, OwnerLock};
use tasktrail::metrics::{
    FINISHES_REFUSED, TASKS_ABANDONED, TASKS_FINISHED, TASKS_RECOVERED, TASKS_RUNNING,
    TASKS_STARTED, TASK_DURATION,
};
use tasktrail::*;
use tasktrail_core::intercept::{InterceptedStorage, StorageCall};

/// Everything recorded since the recorder was installed, summed (the
/// snapshotter hands out what moved since its last reading).
#[derive(Default, Clone)]
struct Totals {
    values: HashMap<String, f64>,
    observations: HashMap<String, Vec<f64>>,
}

struct Recorder {
    snapshotter: Snapshotter,
    totals: Mutex<Totals>,
}

fn recorder() -> &'static Recorder {
    static RECORDER: OnceLock<Recorder> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("the only recorder of this test binary");
        tasktrail::metrics::describe();
        Recorder {
            snapshotter,
            totals: Mutex::default(),
        }
    })
}

/// `name{label="value",...}`, labels sorted.
fn series(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<String> = labels
        .iter()
        .map(|(key, value)| format!("{key}=\"{value}\""))
        .collect();
    labels.sort();
    format!("{name}{{{}}}", labels.join(","))
}

impl Recorder {
    fn read(&self) -> Totals {
        let mut totals = self.totals.lock().unwrap_or_else(PoisonError::into_inner);
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let labels: Vec<(&str, &str)> = key
                .key()
                .labels()
                .map(|label| (label.key(), label.value()))
                .collect();
            let name = series(key.key().name(), &labels);
            match value {
                DebugValue::Counter(n) => {
                    *totals.values.entry(name).or_default() += n as f64;
                }
                DebugValue::Gauge(delta) => {
                    *totals.values.entry(name).or_default() += delta.into_inner();
                }
                DebugValue::Histogram(values) => totals
                    .observations
                    .entry(name)
                    .or_default()
                    .extend(values.into_iter().map(|v| v.into_inner())),
            }
        }
        totals.clone()
    }
}

/// One test's view: what moved since it began. Holding it keeps the other
/// tests of this binary waiting.
struct Moved {
    before: Totals,
    _turn: MutexGuard<'static, ()>,
}

impl Moved {
    fn begin() -> Self {
        static TURN: Mutex<()> = Mutex::new(());
        let turn = TURN.lock().unwrap_or_else(PoisonError::into_inner);
        Self {
            before: recorder().read(),
            _turn: turn,
        }
    }

    /// How far `name{labels}` moved since the test began.
    fn by(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let key = series(name, labels);
        let now = recorder().read();
        now.values.get(&key).copied().unwrap_or(0.0)
            - self.before.values.get(&key).copied().unwrap_or(0.0)
    }

    /// The histogram values observed under `name{labels}` since the test
    /// began.
    fn observed(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        let key = series(name, labels);
        let now = recorder().read();
        let all = now.observations.get(&key).cloned().unwrap_or_default();
        let skip = self.before.observations.get(&key).map_or(0, Vec::len);
        all[skip..].to_vec()
    }

    /// Polls until `name{labels}` moved by `expected` (the background
    /// thread counts on its own time), at most 10 s.
    fn until(&self, name: &str, labels: &[(&str, &str)], expected: f64) -> f64 {
        let start = Instant::now();
        loop {
            let moved = self.by(name, labels);
            if moved == expected || start.elapsed() > StdDuration::from_secs(10) {
                return moved;
            }
            std::thread::sleep(StdDuration::from_millis(10));
        }
    }
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::starting_at(
        Utc.with_ymd_and_hms(2026, 5, 11, 14, 37, 0)
            .single()
            .expect("time"),
    ))
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

/// A worker with its background thread, on `storage`, reading `clock`.
fn boot(storage: Arc<dyn Storage>, clock: &Arc<ManualClock>) -> Worker {
    Worker::builder(storage)
        .clock(clock.clone())
        .heartbeat_interval(StdDuration::from_millis(50))
        .lease(StdDuration::from_secs(15))
        .grace(StdDuration::from_secs(15))
        .retry_backoff(StdDuration::from_millis(1), StdDuration::from_millis(5))
        .boot()
        .expect("boot")
}

#[test]
fn starts_finishes_durations_and_the_running_gauge_move_with_each_task() {
    let moved = Moved::begin();
    let clock = clock();
    let worker = boot(Arc::new(MemoryStorage::new()), &clock);
    let tasks: Vec<Task<Running>> = (0..3)
        .map(|_| worker.start(Task::queue(spec())).expect("start"))
        .collect();
    assert_eq!(moved.by(TASKS_STARTED, &[]), 3.0);
    assert_eq!(moved.by(TASKS_RUNNING, &[]), 3.0);

    let mut tasks = tasks.into_iter();
    clock.advance(Duration::seconds(90));
    let first = tasks.next().expect("task");
    assert!(matches!(
        worker.finish(first, Outcome::Success(report())),
        Ok(FinishReceipt::Written(_))
    ));
    clock.advance(Duration::seconds(30));
    let second = tasks.next().expect("task");
    assert!(matches!(
        worker.finish(second, Outcome::Failure(report())),
        Ok(FinishReceipt::Written(_))
    ));
    assert_eq!(moved.by(TASKS_FINISHED, &[("status", "success")]), 1.0);
    assert_eq!(moved.by(TASKS_FINISHED, &[("status", "failure")]), 1.0);
    assert_eq!(
        moved.observed(TASK_DURATION, &[("status", "success")]),
        vec![90.0]
    );
    assert_eq!(
        moved.observed(TASK_DURATION, &[("status", "failure")]),
        vec![120.0]
    );
    assert_eq!(moved.by(TASKS_RUNNING, &[]), 1.0);

    // The third is still in flight at stop: interrupted, and the gauge
    // comes back to where it was.
    let third = tasks.next().expect("task");
    let report = worker.stop().expect("stop");
    assert_eq!(report.interrupted, vec![third.id()]);
    drop(third);
    assert_eq!(report.recovered.len(), 0);
    assert_eq!(moved.by(TASKS_FINISHED, &[("status", "interrupted")]), 1.0);
    assert_eq!(moved.by(TASKS_RUNNING, &[]), 0.0);
    assert_eq!(moved.by(TASKS_STARTED, &[]), 3.0);
    assert_eq!(
        moved.by(TASKS_ABANDONED, &[]),
        0.0,
        "stopped, not abandoned"
    );
}

#[test]
fn a_refused_finish_is_counted_by_reason_and_leaves_the_gauge() {
    let moved = Moved::begin();
    let clock = clock();
    let storage = Arc::new(MemoryStorage::new());
    let worker = boot(storage.clone(), &clock);
    let running = worker.start(Task::queue(spec())).expect("start");
    // Someone else finishes the row behind the handle's back.
    let write = storage
        .finish_running(&FinishRow {
            id: running.id(),
            worker: worker.id(),
            outcome: Outcome::Cancelled(report()),
            at: clock.now(),
        })
        .expect("finish behind its back");
    assert!(matches!(write, FinishWrite::Updated { .. }));
    assert!(matches!(
        worker.finish(running, Outcome::Success(report())),
        Err(FinishError::Refused { .. })
    ));
    assert_eq!(
        moved.by(FINISHES_REFUSED, &[("reason", "already_finished")]),
        1.0
    );
    assert_eq!(moved.by(TASKS_FINISHED, &[("status", "success")]), 0.0);
    assert!(moved
        .observed(TASK_DURATION, &[("status", "success")])
        .is_empty());
    assert_eq!(moved.by(TASKS_RUNNING, &[]), 0.0);
    worker.stop().expect("stop");
    assert_eq!(moved.by(TASKS_FINISHED, &[("status", "interrupted")]), 0.0);
}

#[test]
fn an_abandoned_handle_is_counted_by_the_background_thread() {
    let moved = Moved::begin();
    let clock = clock();
    let worker = boot(Arc::new(MemoryStorage::new()), &clock);
    let running = worker.start(Task::queue(spec())).expect("start");
    assert_eq!(moved.by(TASKS_RUNNING, &[]), 1.0);
    drop(running);
    // No tick from this thread: the worker's own thread interrupts the row.
    assert_eq!(moved.until(TASKS_ABANDONED, &[], 1.0), 1.0);
    assert_eq!(
        moved.until(TASKS_RECOVERED, &[("cause", "handle_abandoned")], 1.0),
        1.0
    );
    assert_eq!(moved.until(TASKS_RUNNING, &[], 0.0), 0.0);
    worker.stop().expect("stop");
    assert_eq!(moved.by(TASKS_ABANDONED, &[]), 1.0, "reported once");
    assert_eq!(moved.by(TASKS_FINISHED, &[("status", "interrupted")]), 0.0);
}

/// Pids the probe reports gone.
struct NobodyAlive;

impl ProcessProbe for NobodyAlive {
    fn process_start_marker(&self, _pid: u32) -> Option<String> {
        None
    }
}

#[test]
fn dead_workers_rows_are_counted_by_cause_and_never_in_the_gauge() {
    let moved = Moved::begin();
    let clock = clock();
    let storage = Arc::new(MemoryStorage::new());
    let identity = HostIdentity {
        boot_id: "test-boot".into(),
        pid_namespace: 4_026_531_836,
    };
    // Two workers that died with a task each: one deregistered and left
    // its row running, one whose process is gone (its lock free).
    let mut dead = Vec::new();
    for pid in [7001, 7002] {
        let registered = RegisteredWorker::register(
            storage.as_ref(),
            WorkerRegistration {
                id: WorkerId::new_random(),
                host: "dev".into(),
                pid,
                process_start_marker: format!("boot:{pid}"),
                host_identity: Some(identity.clone()),
                started_at: clock.now(),
            },
            clock.clone(),
        )
        .expect("register");
        let running = Task::queue(spec())
            .start(&registered, storage.as_ref())
            .expect("start");
        std::mem::forget(running);
        dead.push(registered);
    }
    storage
        .deregister_worker(dead[0].id(), clock.now())
        .expect("deregister");
    storage.set_worker_lock(
        dead[1].id(),
        OwnerLock::Free {
            watched_for: LockWatch::Continuous,
        },
    );

    let worker = Worker::builder(storage.clone())
        .clock(clock.clone())
        .probe(Arc::new(NobodyAlive))
        .probe_identity(Some(identity))
        .boot()
        .expect("boot");
    assert_eq!(worker.recovered_at_boot().len(), 2);
    assert_eq!(moved.by(TASKS_RECOVERED, &[("cause", "deregistered")]), 1.0);
    assert_eq!(moved.by(TASKS_RECOVERED, &[("cause", "process_gone")]), 1.0);
    assert_eq!(moved.by(TASKS_ABANDONED, &[]), 0.0);
    assert_eq!(moved.by(TASKS_STARTED, &[]), 0.0, "not started by a Worker");
    assert_eq!(moved.by(TASKS_RUNNING, &[]), 0.0, "not this worker's tasks");
    worker.stop().expect("stop");
}

#[test]
fn a_finish_that_waits_out_an_outage_counts_once_when_it_lands() {
    let moved = Moved::begin();
    let clock = clock();
    let failures_left = Arc::new(AtomicU32::new(0));
    let left = Arc::clone(&failures_left);
    let storage = Arc::new(InterceptedStorage::new(MemoryStorage::new(), move |call| {
        let failing = call == StorageCall::FinishRunning
            && left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if failing {
            Err(StorageError::Unavailable {
                source: "connection refused (test)".into(),
            })
        } else {
            Ok(())
        }
    }));
    let worker = boot(storage, &clock);
    let running = worker.start(Task::queue(spec())).expect("start");
    clock.advance(Duration::seconds(42));
    failures_left.store(3, Ordering::SeqCst);
    let receipt = worker
        .finish(running, Outcome::Success(report()))
        .expect("queued");
    assert!(matches!(receipt, FinishReceipt::Queued(_)));
    assert_eq!(moved.by(TASKS_FINISHED, &[("status", "success")]), 0.0);
    assert_eq!(moved.by(TASKS_RUNNING, &[]), 1.0, "still this worker's");
    // The retries run on the worker's thread; the clock must move for
    // their backoff to pass.
    let start = Instant::now();
    while worker.pending_outcomes().len() == 1 && start.elapsed() < StdDuration::from_secs(10) {
        clock.advance(Duration::milliseconds(10));
        std::thread::sleep(StdDuration::from_millis(5));
    }
    assert!(worker.pending_outcomes().is_empty());
    assert_eq!(
        moved.until(TASKS_FINISHED, &[("status", "success")], 1.0),
        1.0
    );
    let observed = moved.observed(TASK_DURATION, &[("status", "success")]);
    assert_eq!(observed, vec![42.0], "the time the work ended");
    assert_eq!(moved.until(TASKS_RUNNING, &[], 0.0), 0.0);
    worker.stop().expect("stop");
    assert_eq!(
        moved.by(FINISHES_REFUSED, &[("reason", "already_finished")]),
        0.0
    );
}

#[test]
fn a_queued_finish_refused_when_it_is_retried_is_counted_as_refused() {
    let moved = Moved::begin();
    let clock = clock();
    let failing = Arc::new(AtomicU32::new(0));
    let fail = Arc::clone(&failing);
    let storage = Arc::new(InterceptedStorage::new(MemoryStorage::new(), move |call| {
        if call == StorageCall::FinishRunning && fail.load(Ordering::SeqCst) == 1 {
            Err(StorageError::Unavailable {
                source: "connection refused (test)".into(),
            })
        } else {
            Ok(())
        }
    }));
    let worker = boot(storage.clone(), &clock);
    let running = worker.start(Task::queue(spec())).expect("start");
    let id = running.id();
    failing.store(1, Ordering::SeqCst);
    let receipt = worker
        .finish(running, Outcome::Success(report()))
        .expect("queued");
    assert!(matches!(receipt, FinishReceipt::Queued(_)));
    // Meanwhile the row is finished otherwise (behind the hook).
    storage
        .inner()
        .finish_running(&FinishRow {
            id,
            worker: worker.id(),
            outcome: Outcome::Cancelled(report()),
            at: clock.now(),
        })
        .expect("finish behind its back");
    failing.store(0, Ordering::SeqCst);
    let start = Instant::now();
    while !worker.pending_outcomes().is_empty() && start.elapsed() < StdDuration::from_secs(10) {
        clock.advance(Duration::milliseconds(10));
        std::thread::sleep(StdDuration::from_millis(5));
    }
    assert_eq!(
        moved.until(FINISHES_REFUSED, &[("reason", "already_finished")], 1.0),
        1.0
    );
    assert_eq!(moved.by(TASKS_FINISHED, &[("status", "success")]), 0.0);
    assert_eq!(moved.until(TASKS_RUNNING, &[], 0.0), 0.0);
    worker.stop().expect("stop");
}

/// A worker whose `[recovery]` lines go to `reporter`, sweeping whenever
/// `tick` runs a sweep interval later (no background thread: the test
/// moves the clock and ticks).
fn boot_reporting(
    storage: Arc<MemoryStorage>,
    clock: &Arc<ManualClock>,
    identity: &HostIdentity,
    pid: u32,
    reporter: impl Fn(&RecoveredTask) -> std::io::Result<()> + Send + Sync + 'static,
) -> Worker {
    Worker::builder(storage)
        .clock(clock.clone())
        .probe(Arc::new(NobodyAlive))
        .probe_identity(Some(identity.clone()))
        .registration(WorkerRegistration {
            id: WorkerId::new_random(),
            host: "dev".into(),
            pid,
            process_start_marker: format!("boot:{pid}"),
            host_identity: Some(identity.clone()),
            started_at: clock.now(),
        })
        .sweep_interval(StdDuration::from_secs(60))
        .recovery_reporter(reporter)
        .without_background_thread()
        .boot()
        .expect("boot")
}

#[test]
fn a_report_delivered_again_or_taken_over_is_counted_once() {
    let moved = Moved::begin();
    let clock = clock();
    let storage = Arc::new(MemoryStorage::new());
    let identity = HostIdentity {
        boot_id: "test-boot".into(),
        pid_namespace: 4_026_531_836,
    };
    // A worker that died with one task running.
    let dead = RegisteredWorker::register(
        storage.as_ref(),
        WorkerRegistration {
            id: WorkerId::new_random(),
            host: "dev".into(),
            pid: 7101,
            process_start_marker: "boot:7101".into(),
            host_identity: Some(identity.clone()),
            started_at: clock.now(),
        },
        clock.clone(),
    )
    .expect("register");
    let orphan = Task::queue(spec())
        .start(&dead, storage.as_ref())
        .expect("start");
    let orphan_id = orphan.id();
    std::mem::forget(orphan);
    let free = OwnerLock::Free {
        watched_for: LockWatch::Continuous,
    };
    storage.set_worker_lock(dead.id(), free);

    // The sweeper recovers it, but its stdout is closed: the report stays
    // owed and is tried again at every sweep.
    let sweeper = boot_reporting(storage.clone(), &clock, &identity, 7102, |_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "stdout is closed (test)",
        ))
    });
    assert_eq!(sweeper.recovered_at_boot().len(), 1);
    for _ in 0..3 {
        clock.advance(Duration::seconds(61));
        sweeper.tick();
    }
    assert_eq!(
        moved.by(TASKS_RECOVERED, &[("cause", "process_gone")]),
        1.0,
        "a report delivered again is the same recovery"
    );

    // The sweeper dies; the next boot takes its owed report over and
    // delivers it.
    let sweeper_id = sweeper.id();
    std::mem::forget(sweeper);
    storage.set_worker_lock(sweeper_id, free);
    let delivered = Arc::new(AtomicU32::new(0));
    let counted = delivered.clone();
    let next = boot_reporting(storage.clone(), &clock, &identity, 7103, move |task| {
        assert_eq!(task.task.id, orphan_id);
        counted.fetch_add(1, Ordering::SeqCst);
        Ok(())
    });
    assert_eq!(next.recovered_at_boot().len(), 1, "taken over");
    assert_eq!(delivered.load(Ordering::SeqCst), 1);
    assert_eq!(
        moved.by(TASKS_RECOVERED, &[("cause", "process_gone")]),
        1.0,
        "a report taken over is not a second recovery"
    );
    next.stop().expect("stop");
}
