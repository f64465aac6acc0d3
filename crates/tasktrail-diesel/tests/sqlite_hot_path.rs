//! The two statements on every task's path, the start's INSERT and a
//! completed finish's UPDATE, are prepared once per connection and reused:
//! Diesel would otherwise compile them anew on every call (it never caches
//! `sql_query` or its own UPDATE statements). docs/performance.md shows what
//! it saves.
#![cfg(feature = "sqlite")]

use std::sync::Arc;

use tasktrail_core::*;
use tasktrail_diesel::{SqliteOptions, SqliteStorage, StatementLog};

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

fn report() -> RunReport {
    RunReport {
        input_tokens: 10,
        output_tokens: 5,
        cost_usd: CostUsd::new(0.01).expect("cost"),
        turns: 1,
        artifacts: vec!["pr/1".into()],
    }
}

#[test]
fn start_and_completed_finish_are_prepared_once_and_reused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = StatementLog::new();
    let store = SqliteStorage::open_with(
        dir.path().join("hot.db"),
        SqliteOptions {
            statement_log: Some(log.clone()),
            ..SqliteOptions::default()
        },
    )
    .expect("open");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let worker = RegisteredWorker::register(
        &store,
        WorkerRegistration {
            id: WorkerId::new_random(),
            host: "dev".into(),
            pid: 10,
            process_start_marker: "boot:10".into(),
            host_identity: None,
            started_at: clock.now(),
        },
        clock,
    )
    .expect("register");

    let outcomes = [
        Outcome::Success(report()),
        Outcome::Failure(report()),
        Outcome::Cancelled(report()),
        Outcome::AbortedNoSkill(report()),
        Outcome::Success(report()),
    ];
    for (issue, outcome) in (1..).zip(outcomes) {
        let running = Task::queue(spec(issue))
            .start(&worker, &store)
            .expect("start");
        let finished = running.finish(outcome, &store).expect("finish");
        let row = store.get_task(finished.id()).expect("read").expect("row");
        assert_eq!(row.status, finished.outcome().status());
    }

    let prepared = log.statements_prepared_for_reuse();
    let starts = prepared
        .iter()
        .filter(|sql| sql.starts_with("INSERT INTO task_history"))
        .count();
    let finishes = prepared
        .iter()
        .filter(|sql| {
            sql.starts_with("UPDATE task_history SET status") && sql.contains("finished_at")
        })
        .count();
    assert_eq!(
        (starts, finishes),
        (1, 1),
        "five lifecycles prepared the start and the finish once each: {prepared:#?}"
    );
    assert_eq!(
        log.task_history_inserts().len(),
        5,
        "and ran the start five times"
    );
}
