//! The seed issue's three tests, by name, on every backend built in:
//! in-memory and SQLite (Postgres runs the same behaviour through the
//! conformance suite).
//!
//! 1. dispatch enqueues + starts → `task_history` row present with
//!    `status='running'`;
//! 2. a restart with a `running` row → on the next boot the row becomes
//!    `interrupted` and the recovery hint is produced;
//! 3. normal completion → the row updates to `success` with exactly one
//!    INSERT statement for that id.

use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};
use tasktrail::*;

mod common;
use common::{dev_identity, Backend, LockChange, Processes};

fn registration(clock: &dyn Clock, pid: u32) -> WorkerRegistration {
    WorkerRegistration {
        id: WorkerId::new_random(),
        host: "dev".into(),
        pid,
        process_start_marker: format!("boot:{pid}"),
        host_identity: Some(dev_identity()),
        started_at: clock.now(),
    }
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::starting_at(
        Utc.with_ymd_and_hms(2026, 5, 11, 14, 37, 0)
            .single()
            .expect("time"),
    ))
}

/// A worker process booting at `pid`, with `alive` the pids the host has.
/// The test drives time itself: no background thread.
fn boot_worker<B: Backend + 'static>(
    storage: &Arc<B>,
    clock: &Arc<ManualClock>,
    pid: u32,
    alive: Vec<u32>,
) -> Worker {
    Worker::builder(storage.clone())
        .clock(clock.clone())
        .probe(Arc::new(Processes(alive)))
        .probe_identity(Some(dev_identity()))
        .registration(registration(clock.as_ref(), pid))
        .without_background_thread()
        .boot()
        .expect("boot")
}

fn incident_spec() -> TaskSpec {
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

fn dispatch_enqueues_and_starts_then_the_row_is_running<B: Backend + 'static>() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(storage) = B::fresh(dir.path()).map(Arc::new) else {
        return;
    };
    let clock = clock();
    let worker = boot_worker(&storage, &clock, 10, vec![10]);

    let queued = Task::queue(incident_spec());
    let id = queued.id();
    assert_eq!(
        storage.get_task(id).expect("read"),
        None,
        "queued: no row yet"
    );
    let running = worker.start(queued).expect("start");

    let row = storage
        .get_task(id)
        .expect("read")
        .expect("row present from the start");
    assert_eq!(row.status, TaskStatus::Running);
    assert_eq!(row.repo_issue(), "acme/widgets#1104");
    assert_eq!(
        (
            row.user.as_str(),
            row.agent.as_str(),
            row.agent_type.as_str()
        ),
        ("alice", "fixer", "claude_sdk")
    );
    assert_eq!(
        (row.model.as_str(), row.provider.as_str()),
        ("claude-opus", "anthropic")
    );
    assert_eq!(row.started_at, running.started_at());
    assert_eq!(row.worker_id, Some(worker.id()));
    assert_eq!(row.finished_at, None);
}

fn restart_with_a_running_row_then_the_next_boot_marks_it_interrupted_and_prints_the_hint<
    B: Backend + 'static,
>() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(storage) = B::fresh(dir.path()).map(Arc::new) else {
        return;
    };
    let clock = clock();
    let killed = boot_worker(&storage, &clock, 10, vec![10]);
    let running = killed.start(Task::queue(incident_spec())).expect("start");
    killed
        .record_session(&running, SessionId::parse("sess_1104").expect("session"))
        .expect("session");
    let id = running.id();
    let killed_id = killed.id();
    // `just restart`: SIGKILL 36 minutes in. The process is gone; nothing ran
    // after the INSERT (no drop, no stop).
    std::mem::forget(running);
    std::mem::forget(killed);
    storage.change_worker_lock(killed_id, LockChange::ReleasedByDeath);
    clock.advance(Duration::minutes(36));

    let next = boot_worker(&storage, &clock, 11, vec![11]);
    assert_eq!(next.recovered_at_boot().len(), 1);
    let hint = next.recovered_at_boot()[0].hint();
    assert!(hint.starts_with("[recovery] "), "{hint}");
    for needle in [
        id.to_string(),
        "acme/widgets#1104".into(),
        "agent=fixer".into(),
        "model=claude-opus".into(),
        format!("worker={killed_id}"),
        "ran_for=36m00s".into(),
    ] {
        assert!(hint.contains(&needle), "{hint:?} lacks {needle:?}");
    }
    let row = storage.get_task(id).expect("read").expect("row");
    assert_eq!(row.status, TaskStatus::Interrupted);
    assert_eq!(
        (row.finished_at, row.cost_usd, row.input_tokens),
        (None, None, None)
    );
    assert_eq!(row.interrupted_by, Some(next.id()));
    let sessions = storage.list_sessions().expect("sessions");
    assert!(
        sessions[0].invalidated_at.is_some(),
        "the stale session is invalidated"
    );
    let key = SessionKey {
        repo: "acme/widgets".into(),
        issue_number: 1104,
        agent: "fixer".into(),
    };
    assert_eq!(storage.resumable_session(&key).expect("resume"), None);
}

fn normal_completion_updates_the_row_to_success_with_exactly_one_insert<B: Backend + 'static>() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(storage) = B::fresh(dir.path()).map(Arc::new) else {
        return;
    };
    let clock = clock();
    let worker = boot_worker(&storage, &clock, 10, vec![10]);
    let running = worker.start(Task::queue(incident_spec())).expect("start");
    let id = running.id();
    clock.advance(Duration::minutes(3));
    let report = RunReport {
        input_tokens: 1200,
        output_tokens: 300,
        cost_usd: CostUsd::new(0.42).expect("cost"),
        turns: 7,
        artifacts: vec!["pr/17".into()],
    };
    assert!(matches!(
        worker.finish(running, Outcome::Success(report)),
        Ok(FinishReceipt::Written(_))
    ));

    assert_eq!(
        storage.task_insert_statements(id),
        1,
        "exactly one INSERT for the id"
    );
    let rows = storage.list_tasks(&TaskFilter::default()).expect("list");
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!((row.id, row.status), (id, TaskStatus::Success));
    assert_eq!(row.finished_at, Some(clock.now()));
    assert_eq!(
        (row.input_tokens, row.output_tokens, row.turns),
        (Some(1200), Some(300), Some(7))
    );
    assert_eq!(row.cost_usd, Some(0.42));
    assert_eq!(row.artifacts, Some(vec!["pr/17".to_owned()]));
}

macro_rules! seed_tests_for {
    ($module:ident, $backend:ty) => {
        mod $module {
            use super::*;

            #[test]
            fn dispatch_enqueues_and_starts_then_the_row_is_running() {
                super::dispatch_enqueues_and_starts_then_the_row_is_running::<$backend>();
            }

            #[test]
            fn restart_with_a_running_row_then_the_next_boot_marks_it_interrupted_and_prints_the_hint() {
                super::restart_with_a_running_row_then_the_next_boot_marks_it_interrupted_and_prints_the_hint::<$backend>();
            }

            #[test]
            fn normal_completion_updates_the_row_to_success_with_exactly_one_insert() {
                super::normal_completion_updates_the_row_to_success_with_exactly_one_insert::<$backend>();
            }
        }
    };
}

seed_tests_for!(memory, MemoryStorage);
seed_tests_for!(sqlite, SqliteStorage);
#[cfg(feature = "postgres")]
seed_tests_for!(postgres, common::PostgresBackend);
