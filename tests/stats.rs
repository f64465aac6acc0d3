//! The operator's figures on every backend: over random histories written
//! through the library (finishes of every status, interrupts by the owner,
//! abandoned handles, sweeps declaring owners dead for each cause), `stats`
//! reports exactly what an independent computation over the rows read back
//! gives: rows by status, running rows per owner and the oldest's start,
//! recent interruptions by cause, nearest-rank median and p95 durations of
//! the rows that ended in the window. On the SQL backends the cause of
//! every reason a writer stores (and of forged and hand-written ones) is
//! the one `InterruptCause::classify` gives.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tasktrail::backend::{LivenessJudge, OwnerFacts, RecoveryRequest, SweepMode};
use tasktrail::*;

mod common;
use common::{Backend, RawRows};

/// How a planned task ends.
#[derive(Debug, Clone)]
enum End {
    /// Still running at the end (a sweep takes it if its owner dies).
    Running,
    /// Finished with this status (not `interrupted`).
    Finished(TaskStatus),
    /// Interrupted by its own worker with this reason.
    Interrupted(&'static str),
    /// Its handle dropped; its worker interrupts it as abandoned.
    Abandoned,
}

#[derive(Debug, Clone)]
struct Planned {
    end: End,
    /// When it started, in milliseconds before `now` (up to 10 days).
    started_ms_before_now: i64,
    /// How long it ran, in milliseconds (up to 3 hours).
    ran_ms: i64,
    /// Which of the four workers ran it.
    worker: usize,
}

fn planned() -> impl Strategy<Value = Planned> {
    (
        prop_oneof![
            2 => Just(End::Running),
            3 => prop::sample::select(vec![
                TaskStatus::Success,
                TaskStatus::Failure,
                TaskStatus::Cancelled,
                TaskStatus::AbortedNoSkill,
            ])
            .prop_map(End::Finished),
            1 => prop::sample::select(vec![
                "worker received SIGTERM",
                WORKER_STOPPED_REASON,
                "recovered at boot: worker 0196c0de-0000-7000-a000-0000000000ff died (process 1 on h is gone)",
            ])
            .prop_map(End::Interrupted),
            1 => Just(End::Abandoned),
        ],
        0i64..10 * 86_400_000,
        0i64..3 * 3_600_000,
        0usize..4,
    )
        .prop_map(|(end, started_ms_before_now, ran_ms, worker)| Planned {
            end,
            started_ms_before_now,
            ran_ms,
            worker,
        })
}

/// A sweep at `hours_before_now` declares these workers (2 and 3) dead,
/// each for its cause; worker 1 may have deregistered with rows running.
#[derive(Debug, Clone)]
struct Case {
    history: Vec<Planned>,
    causes: [usize; 2],
    sweep_minutes_before_now: i64,
    deregister_second: bool,
    since_hours: i64,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(planned(), 0..40),
        [0usize..DEATHS, 0usize..DEATHS],
        0i64..48 * 60,
        any::<bool>(),
        prop::sample::select(vec![1i64, 24, 7 * 24, 30 * 24]),
    )
        .prop_map(
            |(history, causes, sweep_minutes_before_now, deregister_second, since_hours)| Case {
                history,
                causes,
                sweep_minutes_before_now,
                deregister_second,
                since_hours,
            },
        )
}

const DEATHS: usize = 7;

fn death(index: usize, now: Timestamp) -> DeathCause {
    match index {
        0 => DeathCause::ProcessGone {
            host: "dev".into(),
            pid: 7,
        },
        1 => DeathCause::PidReused {
            host: "dev".into(),
            pid: 7,
        },
        2 => DeathCause::LeaseExpired {
            host: "gpu-7 (pid 3)".into(),
            last_heartbeat: now,
            lease: Duration::seconds(15),
        },
        3 => DeathCause::LockReleased {
            host: "pod\n[recovery] forged".into(),
            pid: 1,
            last_heartbeat: now,
        },
        4 => DeathCause::Deregistered,
        5 => DeathCause::DeclaredDead,
        _ => DeathCause::UnknownWorker,
    }
}

/// Declares the scripted workers dead for their causes; everyone else lives.
struct ScriptedJudge(BTreeMap<WorkerId, DeathCause>);

impl LivenessJudge for ScriptedJudge {
    fn judge(&self, owner: Option<&OwnerFacts>) -> Liveness {
        match owner.and_then(|facts| self.0.get(&facts.record.id)) {
            Some(cause) => Liveness::Dead(cause.clone()),
            None => Liveness::Alive,
        }
    }
}

fn spec(issue: usize) -> TaskSpec {
    TaskSpec::validate(TaskSpecInput {
        repo: "acme/widgets".into(),
        issue_number: issue as i64 + 1,
        user: "alice".into(),
        agent: "fixer".into(),
        agent_type: "claude_sdk".into(),
        model: "claude-opus".into(),
        provider: "anthropic".into(),
    })
    .expect("spec")
}

fn outcome(end: &End) -> Outcome {
    match end {
        End::Finished(TaskStatus::Failure) => Outcome::Failure(RunReport::empty()),
        End::Finished(TaskStatus::Cancelled) => Outcome::Cancelled(RunReport::empty()),
        End::Finished(TaskStatus::AbortedNoSkill) => Outcome::AbortedNoSkill(RunReport::empty()),
        End::Interrupted(reason) => {
            Outcome::Interrupted(InterruptReason::new(*reason).expect("reason"))
        }
        _ => Outcome::Success(RunReport::empty()),
    }
}

fn registration(host: &str, clock: &ManualClock) -> WorkerRegistration {
    WorkerRegistration {
        id: WorkerId::new_random(),
        host: host.into(),
        pid: 4242,
        process_start_marker: "boot:1".into(),
        started_at: clock.now(),
        host_identity: None,
    }
}

fn now() -> Timestamp {
    Utc.with_ymd_and_hms(2026, 5, 11, 12, 0, 0)
        .single()
        .expect("time")
}

/// The figures, computed here from the rows read back, without the
/// library's own stats code: counts by hand, nearest rank by sorting.
/// Rows by status; running owners (worker, rows, oldest start, state);
/// recent interruptions by cause; durations (rows, median, p95) by status.
type Expected = (
    BTreeMap<TaskStatus, u64>,
    Vec<(Option<WorkerId>, u64, Timestamp, Option<WorkerState>)>,
    BTreeMap<InterruptCause, u64>,
    BTreeMap<TaskStatus, (u64, Option<Duration>, Option<Duration>)>,
);

fn expected(request: &StatsRequest, rows: &[TaskRecord], workers: &[WorkerRecord]) -> Expected {
    let mut by_status = BTreeMap::new();
    for row in rows {
        *by_status.entry(row.status).or_insert(0) += 1;
    }
    let mut running: BTreeMap<Option<WorkerId>, (u64, Timestamp)> = BTreeMap::new();
    for row in rows.iter().filter(|row| row.status == TaskStatus::Running) {
        let entry = running.entry(row.worker_id).or_insert((0, row.started_at));
        entry.0 += 1;
        entry.1 = entry.1.min(row.started_at);
    }
    let mut running: Vec<_> = running
        .into_iter()
        .map(|(worker, (count, oldest))| {
            let state = workers
                .iter()
                .find(|record| Some(record.id) == worker)
                .map(|record| record.state);
            (worker, count, oldest, state)
        })
        .collect();
    running.sort_by_key(|(worker, _, oldest, _)| (*oldest, *worker));
    let day_ago = request.now - Duration::hours(24);
    let mut causes = BTreeMap::new();
    for row in rows {
        if row.status == TaskStatus::Interrupted
            && row.interrupted_at.is_some_and(|at| at >= day_ago)
        {
            let cause = InterruptCause::classify(
                row.interrupt_reason.as_deref(),
                row.interrupted_by == row.worker_id,
            );
            *causes.entry(cause).or_insert(0) += 1;
        }
    }
    let window_start = request.now - request.since;
    let mut durations: BTreeMap<TaskStatus, Vec<Duration>> = BTreeMap::new();
    for row in rows.iter().filter(|row| row.status != TaskStatus::Running) {
        if let Some(end) = row.finished_at.or(row.interrupted_at) {
            if end >= window_start {
                durations
                    .entry(row.status)
                    .or_default()
                    .push(end - row.started_at);
            }
        }
    }
    let durations = durations
        .into_iter()
        .map(|(status, mut all)| {
            all.sort();
            let n = all.len();
            // Nearest rank: the smallest value with at least p% of the
            // values at or below it.
            let pick = |p: f64| {
                (0..n)
                    .find(|i| (i + 1) as f64 >= p * n as f64 - 1e-9)
                    .map(|i| all[i])
            };
            (status, (n as u64, pick(0.5), pick(0.95)))
        })
        .collect();
    (by_status, running, causes, durations)
}

fn assert_figures(stats: &TaskStats, rows: &[TaskRecord], workers: &[WorkerRecord], context: &str) {
    let (by_status, running, causes, durations) = expected(&stats.request, rows, workers);
    for (status, count) in &stats.by_status {
        assert_eq!(
            *count,
            by_status.get(status).copied().unwrap_or(0),
            "{status}: {context}"
        );
    }
    assert_eq!(stats.by_status.len(), TaskStatus::ALL.len());
    let got: Vec<_> = stats
        .running
        .iter()
        .map(|owner| {
            (
                owner.worker,
                owner.rows,
                owner.oldest_started_at.expect("a readable start"),
                owner.state,
            )
        })
        .collect();
    assert_eq!(got, running, "running: {context}");
    for owner in &stats.running {
        assert_eq!(
            owner.oldest_age(stats.request.now),
            owner.oldest_started_at.map(|at| stats.request.now - at)
        );
        let record = workers.iter().find(|w| Some(w.id) == owner.worker);
        assert_eq!(owner.host, record.map(|w| w.host.clone()));
        assert_eq!(owner.pid, record.map(|w| w.pid));
    }
    for (cause, count) in &stats.interrupted {
        assert_eq!(
            *count,
            causes.get(cause).copied().unwrap_or(0),
            "{cause}: {context}"
        );
    }
    assert_eq!(stats.interrupted.len(), InterruptCause::ALL.len());
    assert_eq!(stats.durations.len(), 5);
    for figures in &stats.durations {
        let (n, median, p95) = durations
            .get(&figures.status)
            .copied()
            .unwrap_or((0, None, None));
        assert_eq!(
            (figures.rows, figures.median, figures.p95),
            (n, median, p95),
            "{}: {context}",
            figures.status
        );
    }
}

fn run_case<B: Backend>(case: &Case) {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(store) = B::fresh(dir.path()) else {
        return;
    };
    let now = now();
    let clock = Arc::new(ManualClock::starting_at(now - Duration::days(11)));
    let shared: Arc<dyn Clock> = clock.clone();
    let workers: Vec<RegisteredWorker> = ["a", "b", "c", "d"]
        .iter()
        .map(|host| {
            RegisteredWorker::register(&store, registration(host, &clock), shared.clone())
                .expect("register")
        })
        .collect();
    let mut running: Vec<Task<Running>> = Vec::new();
    // Start in time order, so each worker's clock runs forward.
    let mut history: Vec<(usize, &Planned)> = case.history.iter().enumerate().collect();
    history.sort_by_key(|(_, plan)| std::cmp::Reverse(plan.started_ms_before_now));
    for (index, plan) in history {
        let started = now - Duration::milliseconds(plan.started_ms_before_now);
        clock.set(started);
        let worker = &workers[plan.worker];
        let task = Task::queue(spec(index))
            .start(worker, &store)
            .expect("start");
        clock.set(started + Duration::milliseconds(plan.ran_ms));
        match &plan.end {
            End::Running => running.push(task),
            End::Abandoned => {
                drop(task);
                let sweep = worker.interrupt_abandoned(&store);
                assert!(sweep.error.is_none(), "{:?}", sweep.error);
            }
            end => {
                task.finish(outcome(end), &store).expect("finish");
            }
        }
    }
    let mut workers = workers.into_iter();
    let (first, second) = (workers.next().expect("a"), workers.next().expect("b"));
    let doomed: Vec<RegisteredWorker> = workers.collect();
    let _alive = first;
    if case.deregister_second {
        clock.set(now - Duration::hours(1));
        second.deregister(&store).expect("deregister");
    }
    // A sweep by a fifth worker declares workers c and d dead.
    let sweeper = WorkerId::new_random();
    let judge = ScriptedJudge(
        doomed
            .iter()
            .zip(case.causes)
            .map(|(worker, cause)| (worker.id(), death(cause, now)))
            .collect(),
    );
    store
        .recover_orphans(
            &RecoveryRequest {
                recovering_worker: sweeper,
                now: now - Duration::minutes(case.sweep_minutes_before_now),
                mode: SweepMode::Apply,
            },
            &judge,
        )
        .expect("sweep");

    let request = StatsRequest {
        now,
        since: Duration::hours(case.since_hours),
    };
    let stats = store.stats(&request).expect("stats");
    let rows = store.list_tasks(&TaskFilter::default()).expect("rows");
    assert_eq!(rows.len(), case.history.len());
    let records = store.list_workers().expect("workers");
    assert_figures(&stats, &rows, &records, &format!("{case:?}"));
    drop(running);
    drop(doomed);
}

fn check<B: Backend>(cases: u32) {
    let mut runner = TestRunner::new(Config {
        cases,
        ..Config::default()
    });
    runner
        .run(&case(), |case| {
            run_case::<B>(&case);
            Ok(())
        })
        .expect("stats equal the figures computed from the rows");
}

#[cfg(feature = "postgres")]
fn postgres_configured() -> bool {
    // Skips visibly, or fails under CI.
    tasktrail_diesel::test_postgres_url().is_some()
}

#[test]
fn memory_stats_equal_the_figures_of_its_rows() {
    check::<MemoryStorage>(96);
}

#[test]
fn sqlite_stats_equal_the_figures_of_its_rows() {
    check::<SqliteStorage>(48);
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_stats_equal_the_figures_of_its_rows() {
    if postgres_configured() {
        check::<common::PostgresBackend>(16);
    }
}

/// Reasons as writers store them, as other programs might, and as an
/// application could forge them, each written by the row's own worker, by
/// another, or by nobody.
fn corpus(now: Timestamp) -> Vec<Option<String>> {
    let worker = WorkerId::new_random();
    let mut reasons: Vec<Option<String>> = (0..DEATHS)
        .flat_map(|index| {
            let cause = death(index, now);
            [
                Some(backend::recovery_reason(Some(worker), &cause)),
                Some(backend::recovery_reason(None, &cause)),
            ]
        })
        .collect();
    reasons.extend(
        [
            ABANDONED_REASON,
            WORKER_STOPPED_REASON,
            tasktrail::runtime::STOPPED_REASON,
            "tasktrail-server stopped before the task finished",
            "worker received SIGTERM",
            "recovered at boot: ",
            "recovered at boot: worker 日本日本日本日本日本日本日本日本日本日本日本日本日本日本日本日本日本日本 died (process 1 on x is gone)",
            "recovered at boot: worker 0196c0de died (pid 3 on x now belongs to another process)",
            "Recovered at boot: process 1 on x is gone",
            "recovered at boot: PROCESS 1 on x is gone",
            "recovered at boot: the cat ate it",
            "abandoned",
            "",
        ]
        .map(|text| Some(text.to_owned())),
    );
    reasons.push(Some(format!(
        "recovered at boot: worker {worker} died (worker stopped without finishing the task)"
    )));
    reasons.push(None);
    reasons
}

fn check_causes<B: RawRows>() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(store) = B::fresh(dir.path()) else {
        return;
    };
    let now = now();
    let clock = Arc::new(ManualClock::starting_at(now - Duration::hours(2)));
    let shared: Arc<dyn Clock> = clock.clone();
    let worker =
        RegisteredWorker::register(&store, registration("a", &clock), shared).expect("register");
    let other = WorkerId::new_random();
    let mut expected: BTreeMap<InterruptCause, u64> = BTreeMap::new();
    let mut issue = 0;
    for reason in corpus(now) {
        for by in [Some(worker.id()), Some(other), None] {
            issue += 1;
            let task = Task::queue(spec(issue))
                .start(&worker, &store)
                .expect("start");
            let id = task.id();
            task.finish(outcome(&End::Interrupted("placeholder")), &store)
                .expect("finish");
            store.rewrite_interrupt(id, reason.as_deref(), by);
            let cause = InterruptCause::classify(reason.as_deref(), by == Some(worker.id()));
            *expected.entry(cause).or_insert(0) += 1;
        }
    }
    let stats = store
        .stats(&StatsRequest {
            now,
            since: Duration::days(7),
        })
        .expect("stats");
    for (cause, count) in &stats.interrupted {
        assert_eq!(
            *count,
            expected.get(cause).copied().unwrap_or(0),
            "{cause}: SQL and InterruptCause::classify disagree"
        );
    }
    // Every class is reached by the corpus.
    assert!(
        stats.interrupted.iter().all(|(_, count)| *count > 0),
        "{stats:?}"
    );
}

#[test]
fn sqlite_classifies_every_reason_as_the_library_does() {
    check_causes::<SqliteStorage>();
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_classifies_every_reason_as_the_library_does() {
    if postgres_configured() {
        check_causes::<common::PostgresBackend>();
    }
}

#[test]
fn the_stopped_reason_the_runtime_writes_is_the_one_stats_recognise() {
    assert_eq!(tasktrail::runtime::STOPPED_REASON, WORKER_STOPPED_REASON);
}

#[test]
fn an_empty_store_reports_zeros_and_no_durations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStorage::open(dir.path().join("t.db")).expect("open");
    let stats = store
        .stats(&StatsRequest {
            now: now(),
            since: Duration::days(7),
        })
        .expect("stats");
    assert!(stats.by_status.iter().all(|(_, n)| *n == 0));
    assert!(stats.running.is_empty());
    assert!(stats.interrupted.iter().all(|(_, n)| *n == 0));
    assert!(stats
        .durations
        .iter()
        .all(|d| d.rows == 0 && d.median.is_none() && d.p95.is_none()));
    assert_eq!(
        stats,
        MemoryStorage::new().stats(&stats.request).expect("stats")
    );
}

/// Rows that ended exactly at a window's start count; a millisecond
/// earlier they do not. Durations: 1..=20 s success rows give the
/// nearest-rank median 10 s and p95 19 s.
fn check_window_edges<B: Backend>() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(store) = B::fresh(dir.path()) else {
        return;
    };
    let now = now();
    let since = Duration::days(7);
    let clock = Arc::new(ManualClock::starting_at(now - Duration::days(30)));
    let shared: Arc<dyn Clock> = clock.clone();
    let worker =
        RegisteredWorker::register(&store, registration("a", &clock), shared).expect("register");
    let mut issue = 0;
    let mut run = |start: Timestamp, end: Timestamp, end_as: End| {
        issue += 1;
        clock.set(start);
        let task = Task::queue(spec(issue))
            .start(&worker, &store)
            .expect("start");
        clock.set(end);
        task.finish(outcome(&end_as), &store).expect("finish");
    };
    let edge = now - since;
    let ms = Duration::milliseconds(1);
    // In the window: 20 rows ending at its very start, 1..=20 s long.
    for seconds in 1..=20 {
        run(
            edge - Duration::seconds(seconds),
            edge,
            End::Finished(TaskStatus::Success),
        );
    }
    // Out of it by one millisecond: a very long failure.
    run(
        edge - Duration::days(1),
        edge - ms,
        End::Finished(TaskStatus::Failure),
    );
    // Interrupted exactly 24 h ago (recent), and 24 h + 1 ms ago (not).
    let day = now - Duration::hours(24);
    run(
        day - Duration::seconds(5),
        day,
        End::Interrupted("worker received SIGTERM"),
    );
    run(
        day - Duration::seconds(5),
        day - ms,
        End::Interrupted(WORKER_STOPPED_REASON),
    );
    let stats = store.stats(&StatsRequest { now, since }).expect("stats");
    let success = stats.durations[0];
    assert_eq!(success.status, TaskStatus::Success);
    assert_eq!(
        (success.rows, success.median, success.p95),
        (20, Some(Duration::seconds(10)), Some(Duration::seconds(19)))
    );
    let failure = stats.durations[1];
    assert_eq!(
        (failure.status, failure.rows, failure.median),
        (TaskStatus::Failure, 0, None)
    );
    assert_eq!(stats.interrupted_by(InterruptCause::FinishedInterrupted), 1);
    assert_eq!(stats.interrupted_by(InterruptCause::WorkerStopped), 0);
    let interrupted = stats.durations[3];
    assert_eq!(
        (interrupted.status, interrupted.rows),
        (TaskStatus::Interrupted, 2)
    );
    assert_eq!(stats.rows_with(TaskStatus::Success), 20);
    assert_eq!(stats.rows_with(TaskStatus::Failure), 1);
}

#[test]
fn memory_windows_include_their_start_and_nothing_before() {
    check_window_edges::<MemoryStorage>();
}

#[test]
fn sqlite_windows_include_their_start_and_nothing_before() {
    check_window_edges::<SqliteStorage>();
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_windows_include_their_start_and_nothing_before() {
    if postgres_configured() {
        check_window_edges::<common::PostgresBackend>();
    }
}
