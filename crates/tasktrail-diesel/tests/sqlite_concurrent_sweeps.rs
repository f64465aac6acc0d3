//! Several sweeps over the same SQLite file at once, each on its own store
//! (its own connection, as separate processes would have): every orphan is
//! recovered by exactly one of them, and none fails. The processes variant
//! (the real `tasktrail recover`) is in
//! crates/tasktrail-cli/tests/cli.rs.
#![cfg(feature = "sqlite")]

use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use tasktrail_core::backend::*;
use tasktrail_core::*;
use tasktrail_diesel::SqliteStorage;

struct NoProcesses;

impl ProcessProbe for NoProcesses {
    fn process_start_marker(&self, _pid: u32) -> Option<String> {
        None
    }
}

fn identity() -> HostIdentity {
    HostIdentity {
        boot_id: "dev-boot".into(),
        pid_namespace: 4_026_531_836,
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

/// A judge that takes its time, so the sweeps overlap inside their
/// transactions (each has read the orphans before any has written).
struct SlowJudge<'a>(PolicyJudge<'a>);

impl LivenessJudge for SlowJudge<'_> {
    fn judge(&self, owner: Option<&OwnerFacts>) -> Liveness {
        std::thread::sleep(Duration::from_millis(30));
        self.0.judge(owner)
    }
}

/// `sweepers` sweeps at once over the orphans of three dead workers (four
/// rows each, one session each): each orphan is reported by exactly one
/// sweep, every sweep succeeds, every row ends `interrupted` and every
/// session invalidated. Kills the SQLite sweep
/// losing `BEGIN IMMEDIATE` (a deferred transaction: two sweeps read the
/// same orphans, and the later writer fails with a stale snapshot).
fn concurrent_sweeps_recover_each_orphan_exactly_once(sweepers: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("trail.db");
    let store = SqliteStorage::open(&path).expect("open");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut orphans = BTreeSet::new();
    for pid in [10, 11, 12] {
        let worker = RegisteredWorker::register(
            &store,
            WorkerRegistration {
                id: WorkerId::new_random(),
                host: "dev".into(),
                pid,
                process_start_marker: format!("boot:{pid}"),
                host_identity: Some(identity()),
                started_at: clock.now(),
            },
            Arc::clone(&clock),
        )
        .expect("register");
        for issue in 1..=4 {
            let running = Task::queue(spec(i64::from(pid) * 10 + issue))
                .start(&worker, &store)
                .expect("start");
            running
                .record_session(
                    SessionId::parse(&format!("sess_{}", running.id())).expect("id"),
                    &store,
                )
                .expect("session");
            orphans.insert(running.id());
        }
        // Killed: its lock is free and no process has its pid.
        store.release_worker_lock(worker.id());
    }
    let stores: Vec<SqliteStorage> = (0..sweepers)
        .map(|_| SqliteStorage::open(&path).expect("open"))
        .collect();
    let barrier = Barrier::new(sweepers);
    let policy = LivenessPolicy::new(Some(identity()));
    let results: Vec<Result<Vec<RecoveredTask>, StorageError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = stores
            .iter()
            .map(|store| {
                let barrier = &barrier;
                let policy = &policy;
                scope.spawn(move || {
                    barrier.wait();
                    store.recover_orphans(
                        &RecoveryRequest {
                            recovering_worker: WorkerId::new_random(),
                            now: SystemClock.now(),
                            mode: SweepMode::Apply,
                        },
                        &SlowJudge(PolicyJudge {
                            policy,
                            probe: &NoProcesses,
                        }),
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("sweep thread"))
            .collect()
    });
    let mut reported = Vec::new();
    for result in results {
        let recovered = result.expect("every sweep succeeds");
        reported.extend(recovered.into_iter().map(|r| r.task.id));
    }
    let once: BTreeSet<TaskId> = reported.iter().copied().collect();
    assert_eq!(once.len(), reported.len(), "an orphan reported twice");
    assert_eq!(once, orphans, "every orphan reported by exactly one sweep");
    let rows = store.list_tasks(&TaskFilter::default()).expect("rows");
    assert!(rows.iter().all(|row| row.status == TaskStatus::Interrupted));
    let sessions = store.list_sessions().expect("sessions");
    assert_eq!(sessions.len(), 12);
    assert!(sessions.iter().all(|s| s.invalidated_at.is_some()));
    assert!(store
        .list_workers()
        .expect("workers")
        .iter()
        .all(|w| w.state == WorkerState::Dead));
}

#[test]
fn two_concurrent_sqlite_sweeps_recover_each_orphan_exactly_once() {
    concurrent_sweeps_recover_each_orphan_exactly_once(2);
}

#[test]
fn four_concurrent_sqlite_sweeps_recover_each_orphan_exactly_once() {
    concurrent_sweeps_recover_each_orphan_exactly_once(4);
}
