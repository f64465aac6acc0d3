//! A wall clock that steps back under running workers (NTP correcting a
//! clock that ran ahead, an operator, a virtual machine restored from a
//! snapshot, a clock set before 1970), through the real `Worker` runtime on
//! every backend built in: memory, SQLite, and Postgres when
//! `TASKTRAIL_TEST_POSTGRES_URL` is set. The manual clock steps back
//! mid-task while heartbeats, sweeps, abandoned handles and a queued
//! outcome are due; the test ticks the workers itself.
//!
//! What must hold: no panic; heartbeats, sweeps and retries go on at their
//! intervals (before the fix they waited until the clock had caught up with
//! the times scheduled before the step: an hour without a heartbeat after a
//! step back of an hour, which on Postgres lets a worker whose connection
//! dropped go without its lock, and be declared dead); every task ends with
//! exactly one UPDATE of its row, never before its start; no row is left
//! `running`; no live worker is declared dead, reported stalled, or has its
//! rows touched; a neighbour that really died is still recovered within a
//! sweep interval.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration as StdDuration;

use chrono::{Duration, TimeZone, Utc};
use tasktrail::*;
use tasktrail_core::intercept::{InterceptedStorage, StorageCall};

mod common;
use common::{dev_identity, Backend, LockChange};

const HEARTBEAT: StdDuration = StdDuration::from_secs(5);
const SWEEP: StdDuration = StdDuration::from_secs(30);
const LEASE: StdDuration = StdDuration::from_secs(15);
const RETRY_CAP: StdDuration = StdDuration::from_secs(2);

/// The host's process table, changeable while workers run.
#[derive(Clone, Default)]
struct ProcessTable(Arc<Mutex<HashSet<u32>>>);

impl ProcessTable {
    fn set(&self) -> std::sync::MutexGuard<'_, HashSet<u32>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ProcessProbe for ProcessTable {
    fn process_start_marker(&self, pid: u32) -> Option<String> {
        self.set().contains(&pid).then(|| format!("boot:{pid}"))
    }
}

/// What the store was asked, counted ahead of each call; `fail_finishes`
/// makes the next finishes fail as an outage would (they never reach the
/// store and are not counted as UPDATEs).
#[derive(Default)]
struct Calls {
    heartbeats: AtomicU32,
    sweeps: AtomicU32,
    /// Finishes that reached the store: one UPDATE each.
    updates: AtomicU32,
    fail_finishes: AtomicU32,
}

/// Every event, as text.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<String>>>);

impl Events {
    fn hook(&self, who: &'static str) -> impl Fn(&WorkerEvent) + Send + Sync + 'static {
        let events = self.clone();
        move |event| {
            let text = match event {
                WorkerEvent::Recovered(task) => task.hint(),
                other => format!("{who}: {other:?}"),
            };
            events
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(text);
        }
    }
    fn all(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn spec(issue: i64) -> TaskSpec {
    TaskSpec::validate(TaskSpecInput {
        repo: "acme/widgets".into(),
        issue_number: issue,
        user: "alice".into(),
        agent: "fixer".into(),
        agent_type: "claude_sdk".into(),
        model: "claude-opus".into(),
        provider: "anthropic".into(),
    })
    .expect("spec")
}

fn success() -> Outcome {
    Outcome::Success(RunReport {
        input_tokens: 1200,
        output_tokens: 300,
        cost_usd: CostUsd::new(0.42).expect("cost"),
        turns: 7,
        artifacts: vec!["pr/17".into()],
    })
}

/// How the clock steps back.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// Back by this much.
    Back(Duration),
    /// To 1969-12-01 (a clock whose battery died, then "corrected").
    Before1970,
}

struct Fleet<B: Backend + 'static> {
    store: Arc<InterceptedStorage<B>>,
    calls: Arc<Calls>,
    clock: Arc<ManualClock>,
    processes: ProcessTable,
    events: Events,
}

impl<B: Backend + 'static> Fleet<B> {
    fn new(dir: &std::path::Path) -> Option<Self> {
        let calls = Arc::new(Calls::default());
        let counted = Arc::clone(&calls);
        let store = InterceptedStorage::new(B::fresh(dir)?, move |call| {
            match call {
                StorageCall::HeartbeatWorker => {
                    counted.heartbeats.fetch_add(1, Ordering::SeqCst);
                }
                StorageCall::RecoverOrphans => {
                    counted.sweeps.fetch_add(1, Ordering::SeqCst);
                }
                StorageCall::FinishRunning => {
                    let fail = counted
                        .fail_finishes
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    if fail {
                        return Err(StorageError::Unavailable {
                            source: "connection refused (test)".into(),
                        });
                    }
                    counted.updates.fetch_add(1, Ordering::SeqCst);
                }
                _ => {}
            }
            Ok(())
        });
        Some(Self {
            store: Arc::new(store),
            calls,
            clock: Arc::new(ManualClock::starting_at(
                Utc.with_ymd_and_hms(2026, 5, 11, 14, 37, 0)
                    .single()
                    .expect("time"),
            )),
            processes: ProcessTable::default(),
            events: Events::default(),
        })
    }

    /// A worker process `pid` on this host, ticked by the test.
    fn boot(&self, who: &'static str, pid: u32) -> Worker {
        self.processes.set().insert(pid);
        let storage: Arc<dyn Storage> = self.store.clone();
        Worker::builder(storage)
            .heartbeat_interval(HEARTBEAT)
            .sweep_interval(SWEEP)
            .lease(LEASE)
            .grace(LEASE)
            .retry_backoff(StdDuration::from_millis(100), RETRY_CAP)
            .clock(self.clock.clone())
            .probe(Arc::new(self.processes.clone()))
            .probe_identity(Some(dev_identity()))
            .registration(WorkerRegistration {
                id: WorkerId::new_random(),
                host: "dev".into(),
                pid,
                process_start_marker: format!("boot:{pid}"),
                host_identity: Some(dev_identity()),
                started_at: self.clock.now(),
            })
            .on_event(self.events.hook(who))
            .without_background_thread()
            .boot()
            .expect("boot")
    }

    fn advance(&self, by: StdDuration) {
        self.clock
            .advance(Duration::from_std(by).expect("duration"));
    }

    fn row(&self, id: TaskId) -> TaskRecord {
        self.store
            .inner()
            .get_task(id)
            .expect("read")
            .expect("row exists")
    }

    fn calls(&self, counter: fn(&Calls) -> &AtomicU32) -> u32 {
        counter(&self.calls).load(Ordering::SeqCst)
    }
}

fn a_clock_stepping_back_under_running_workers_is_ridden_out<B: Backend + 'static>(step: Step) {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(fleet) = Fleet::<B>::new(dir.path()) else {
        eprintln!("skipped: TASKTRAIL_TEST_POSTGRES_URL is not set");
        return;
    };
    let a = fleet.boot("a", 10);
    let b = fleet.boot("b", 11);
    let c = fleet.boot("c", 12);

    // Tasks in flight before the step: t1 and t2 on A, t3 on B, t4 on C.
    let t1 = a.start(Task::queue(spec(1))).expect("start t1");
    let t2 = a.start(Task::queue(spec(2))).expect("start t2");
    let t3 = b.start(Task::queue(spec(3))).expect("start t3");
    let t4 = c.start(Task::queue(spec(4))).expect("start t4");
    let (id1, id2, id3, id4) = (t1.id(), t2.id(), t3.id(), t4.id());
    for _ in 0..2 {
        fleet.advance(HEARTBEAT);
        for worker in [&a, &b, &c] {
            worker.tick();
        }
    }
    // t1's outcome meets an outage and is queued: its retry is due within
    // the retry cap.
    fleet.calls.fail_finishes.store(1, Ordering::SeqCst);
    assert!(matches!(
        a.finish(t1, success()),
        Ok(FinishReceipt::Queued(_))
    ));

    // The clock steps back.
    let before_the_step = fleet.clock.now();
    match step {
        Step::Back(by) => fleet.clock.advance(-by),
        Step::Before1970 => fleet.clock.set(
            Utc.with_ymd_and_hms(1969, 12, 1, 0, 0, 0)
                .single()
                .expect("time"),
        ),
    }
    assert!(fleet.clock.now() < before_the_step);
    let heartbeats = fleet.calls(|c| &c.heartbeats);
    let sweeps = fleet.calls(|c| &c.sweeps);

    // A starts a task after the step: its start is earlier than t1's.
    let t5 = a
        .start(Task::queue(spec(5)))
        .expect("start t5 after the step");
    let id5 = t5.id();
    assert!(fleet.row(id5).started_at < fleet.row(id1).started_at);

    // C dies (SIGKILL: no stop, no drop; its pid gone, its lock freed);
    // t2's handle is dropped (a panicking handler). Then two minutes of
    // ticks, by the stepped clock.
    let c_id = c.id();
    std::mem::forget(t4);
    std::mem::forget(c);
    fleet.processes.set().remove(&12);
    fleet
        .store
        .inner()
        .change_worker_lock(c_id, LockChange::ReleasedByDeath);
    drop(t2);
    let rounds = 24;
    for _ in 0..rounds {
        fleet.advance(HEARTBEAT);
        a.tick();
        b.tick();
    }

    let beats = fleet.calls(|c| &c.heartbeats) - heartbeats;
    assert!(
        beats >= 2 * (rounds - 1),
        "{beats} heartbeats from 2 workers in {rounds} heartbeat intervals after the step"
    );
    let swept = fleet.calls(|c| &c.sweeps) - sweeps;
    assert!(
        swept >= 2 * 3,
        "{swept} sweeps from 2 workers in {} s after the step",
        rounds * 5
    );
    // The queued outcome landed after the step (within the retry cap).
    assert!(
        a.pending_outcomes().is_empty(),
        "{:?}",
        a.pending_outcomes()
    );
    assert_eq!(fleet.row(id1).status, TaskStatus::Success);
    // The dead neighbour's row was recovered by a sweep after the step;
    // the abandoned handle's row by A.
    let t4_row = fleet.row(id4);
    assert_eq!(t4_row.status, TaskStatus::Interrupted, "{t4_row:?}");
    let t2_row = fleet.row(id2);
    assert_eq!(t2_row.status, TaskStatus::Interrupted, "{t2_row:?}");
    assert_eq!(t2_row.interrupt_reason.as_deref(), Some(ABANDONED_REASON));

    // The live ones finish normally, never before they started.
    for (worker, task) in [(&b, t3), (&a, t5)] {
        let receipt = worker.finish(task, success()).expect("finish");
        assert!(matches!(receipt, FinishReceipt::Written(_)));
    }
    for worker in [&a, &b] {
        assert_eq!(
            worker.health(),
            WorkerHealth::Healthy,
            "{:?}",
            fleet.events.all()
        );
        assert!(!worker.is_declared_dead());
        assert!(worker.stalled_neighbours().is_empty());
    }
    a.stop().expect("stop a");
    b.stop().expect("stop b");

    // One UPDATE per task the workers finished or interrupted: t1 (its
    // failed attempt never reached the store), t2, t3, t5; t4 by the sweep.
    assert_eq!(fleet.calls(|c| &c.updates), 4);
    let rows = fleet
        .store
        .inner()
        .list_tasks(&TaskFilter::default())
        .expect("rows");
    assert_eq!(rows.len(), 5);
    for row in &rows {
        assert!(row.status.is_final(), "left running: {row:?}");
        if let Some(finished_at) = row.finished_at {
            assert!(
                finished_at >= row.started_at,
                "finished before it started: {row:?}"
            );
        }
    }
    for id in [id1, id3, id5] {
        assert_eq!(fleet.row(id).status, TaskStatus::Success);
    }
    // Reported once each: the abandoned t2 and the dead neighbour's t4;
    // nothing else recovered, nobody declared dead or stalled.
    let events = fleet.events.all();
    let recovery: Vec<&String> = events
        .iter()
        .filter(|line| line.starts_with("[recovery] "))
        .collect();
    assert_eq!(recovery.len(), 2, "{events:#?}");
    assert!(recovery.iter().any(|line| line.contains(&id2.to_string())));
    assert!(recovery.iter().any(|line| line.contains(&id4.to_string())));
    for bad in [
        "DeclaredDead",
        "StalledWorker",
        "UpkeepFailed",
        "OutcomeRefused",
    ] {
        assert!(
            !events.iter().any(|line| line.contains(bad)),
            "{bad}: {events:#?}"
        );
    }
}

/// A worker does not boot on a clock before 1970: one clear error, nothing
/// registered.
fn a_worker_does_not_boot_on_a_clock_before_1970<B: Backend + 'static>() {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(store) = B::fresh(dir.path()) else {
        eprintln!("skipped: TASKTRAIL_TEST_POSTGRES_URL is not set");
        return;
    };
    let store = Arc::new(store);
    let clock = Arc::new(ManualClock::starting_at(
        Utc.with_ymd_and_hms(1969, 12, 1, 0, 0, 0)
            .single()
            .expect("time"),
    ));
    let booted = Worker::builder(store.clone())
        .clock(clock)
        .probe_identity(Some(dev_identity()))
        .without_background_thread()
        .boot();
    let error = booted.expect_err("a clock before 1970");
    assert!(matches!(error, BootError::ClockBeforeEpoch(_)), "{error:?}");
    assert_eq!(
        error.to_string(),
        "the system clock reads 1969-12-01T00:00:00Z, before 1970: set the clock (NTP) and try again"
    );
    assert!(store.list_workers().expect("workers").is_empty());
}

macro_rules! clock_tests_for {
    ($module:ident, $backend:ty) => {
        mod $module {
            use super::*;

            #[test]
            fn an_hour_back_under_running_workers_is_ridden_out() {
                a_clock_stepping_back_under_running_workers_is_ridden_out::<$backend>(Step::Back(
                    Duration::hours(1),
                ));
            }

            #[test]
            fn a_day_back_under_running_workers_is_ridden_out() {
                a_clock_stepping_back_under_running_workers_is_ridden_out::<$backend>(Step::Back(
                    Duration::days(1),
                ));
            }

            #[test]
            fn a_step_to_before_1970_under_running_workers_is_ridden_out() {
                a_clock_stepping_back_under_running_workers_is_ridden_out::<$backend>(
                    Step::Before1970,
                );
            }

            #[test]
            fn a_worker_does_not_boot_on_a_clock_before_1970() {
                super::a_worker_does_not_boot_on_a_clock_before_1970::<$backend>();
            }
        }
    };
}

clock_tests_for!(memory, MemoryStorage);
clock_tests_for!(sqlite, SqliteStorage);
#[cfg(feature = "postgres")]
clock_tests_for!(postgres, common::PostgresBackend);
