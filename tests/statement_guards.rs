//! Guards of single statements, on every backend, each written to fail
//! when one term of one statement is dropped (see the mutants list in
//! docs/testing.md).

use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};
use tasktrail::*;

mod common;
use common::Backend;

fn spec() -> TaskSpec {
    TaskSpec::validate(TaskSpecInput {
        repo: "acme/widgets".into(),
        issue_number: 77,
        user: "alice".into(),
        agent: "fixer".into(),
        agent_type: "claude_sdk".into(),
        model: "claude-opus".into(),
        provider: "anthropic".into(),
    })
    .expect("spec")
}

fn key() -> SessionKey {
    SessionKey {
        repo: "acme/widgets".into(),
        issue_number: 77,
        agent: "fixer".into(),
    }
}

fn completed(status: TaskStatus) -> Outcome {
    let report = RunReport {
        input_tokens: 10,
        output_tokens: 20,
        cost_usd: CostUsd::new(0.01).expect("cost"),
        turns: 1,
        artifacts: vec![],
    };
    match status {
        TaskStatus::Success => Outcome::Success(report),
        TaskStatus::Failure => Outcome::Failure(report),
        TaskStatus::Cancelled => Outcome::Cancelled(report),
        TaskStatus::AbortedNoSkill => Outcome::AbortedNoSkill(report),
        other => panic!("{other:?} is not a completed status"),
    }
}

fn offered<B: Backend>(store: &B) -> Option<String> {
    store
        .resumable_session(&key())
        .expect("resumable")
        .map(|session| session.session_id.as_str().to_owned())
}

/// The status filter alone hides every invalidated session in the other
/// tests (only an interrupted task's sessions are invalidated by the
/// library). A session invalidated by hand while its task is *completed*
/// must never be offered: kills `resumable_session` losing its
/// `invalidated_at IS NULL` term. For each completed status: two runs of
/// one key, the newer offered; invalidate it, the older is offered;
/// invalidate that, none is.
fn a_completed_tasks_session_invalidated_by_hand_is_never_resumed<B: Backend>() {
    for status in [
        TaskStatus::Success,
        TaskStatus::Failure,
        TaskStatus::Cancelled,
        TaskStatus::AbortedNoSkill,
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let Some(store) = B::fresh(dir.path()) else {
            return;
        };
        let clock = Arc::new(ManualClock::starting_at(
            Utc.with_ymd_and_hms(2026, 5, 11, 12, 0, 0)
                .single()
                .expect("time"),
        ));
        let worker = RegisteredWorker::register(
            &store,
            WorkerRegistration {
                id: WorkerId::new_random(),
                host: "dev".into(),
                pid: 4242,
                process_start_marker: "boot:4242".into(),
                started_at: clock.now(),
                host_identity: None,
            },
            clock.clone(),
        )
        .expect("register");
        for session in ["sess_older", "sess_newer"] {
            clock.advance(Duration::minutes(1));
            let task = Task::queue(spec()).start(&worker, &store).expect("start");
            task.record_session(SessionId::parse(session).expect("id"), &store)
                .expect("record");
            task.finish(completed(status), &store).expect("finish");
        }
        assert_eq!(offered(&store).as_deref(), Some("sess_newer"), "{status:?}");

        store.invalidate_session_by_hand(
            &SessionId::parse("sess_newer").expect("id"),
            clock.now(),
        );
        assert_eq!(
            offered(&store).as_deref(),
            Some("sess_older"),
            "{status:?}: an invalidated session is never resumed"
        );
        store.invalidate_session_by_hand(
            &SessionId::parse("sess_older").expect("id"),
            clock.now(),
        );
        assert_eq!(offered(&store), None, "{status:?}");
    }
}

#[test]
fn memory_never_resumes_a_session_invalidated_by_hand() {
    a_completed_tasks_session_invalidated_by_hand_is_never_resumed::<MemoryStorage>();
}

#[test]
fn sqlite_never_resumes_a_session_invalidated_by_hand() {
    a_completed_tasks_session_invalidated_by_hand_is_never_resumed::<SqliteStorage>();
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_never_resumes_a_session_invalidated_by_hand() {
    a_completed_tasks_session_invalidated_by_hand_is_never_resumed::<common::PostgresBackend>();
}
