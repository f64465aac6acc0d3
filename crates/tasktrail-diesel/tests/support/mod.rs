//! What the server backends' own tests (`postgres_backend.rs`,
//! `mysql_backend.rs`) share: made-up workers and tasks, and the short
//! grace they judge with.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use chrono::Duration;
use tasktrail_core::backend::{LivenessJudge, OwnerFacts, PolicyJudge};
use tasktrail_core::{
    Clock, CostUsd, Liveness, LivenessPolicy, ProcessProbe, RegisteredWorker, RunReport, Storage,
    SystemClock, TaskSpec, TaskSpecInput, WorkerId, WorkerRegistration,
};

/// A process table in which no pid runs: the tests' processes are made up.
pub struct NoProcesses;

impl ProcessProbe for NoProcesses {
    fn process_start_marker(&self, _pid: u32) -> Option<String> {
        None
    }
}

pub fn spec(issue_number: i64) -> TaskSpec {
    TaskSpec::validate(TaskSpecInput {
        repo: "acme/widgets".into(),
        issue_number,
        user: "alice".into(),
        agent: "fixer".into(),
        agent_type: "claude_sdk".into(),
        model: "claude-opus".into(),
        provider: "anthropic".into(),
    })
    .expect("spec")
}

pub fn registration(host: &str, pid: u32) -> WorkerRegistration {
    WorkerRegistration {
        id: WorkerId::new_random(),
        host: host.into(),
        pid,
        process_start_marker: format!("boot:{pid}"),
        host_identity: None,
        started_at: SystemClock.now(),
    }
}

pub fn register<S: Storage>(store: &S, host: &str, pid: u32) -> RegisteredWorker {
    RegisteredWorker::register(store, registration(host, pid), Arc::new(SystemClock))
        .expect("register")
}

pub fn report() -> RunReport {
    RunReport {
        input_tokens: 1200,
        output_tokens: 300,
        cost_usd: CostUsd::new(0.42).expect("cost"),
        turns: 7,
        artifacts: vec!["pr/17".into(), "a \"quoted\" path".into()],
    }
}

/// The grace the tests judge with: short, so a test can wait it out.
pub const TEST_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// The tests' policy: no pid probe (their processes are made up), the
/// default lease, a one-second grace.
pub fn test_policy() -> LivenessPolicy {
    LivenessPolicy {
        grace: Duration::from_std(TEST_GRACE).expect("grace"),
        ..LivenessPolicy::new(None)
    }
}

/// A judge that takes its time (as one probing a process table or a slow
/// network might), so concurrent sweeps overlap inside their transactions.
pub struct SlowJudge<'a>(pub PolicyJudge<'a>);

impl LivenessJudge for SlowJudge<'_> {
    fn judge(&self, owner: Option<&OwnerFacts>) -> Liveness {
        std::thread::sleep(std::time::Duration::from_millis(50));
        self.0.judge(owner)
    }
}

/// Runs five start + finish lifecycles of `worker` on `store` (opened with
/// `log` and a pool of one connection) and checks that the start and the
/// completed finish were each prepared once and reused, not prepared on
/// every call.
pub fn five_lifecycles_prepare_the_hot_path_once(
    store: &impl Storage,
    worker: &RegisteredWorker,
    log: &tasktrail_diesel::StatementLog,
) {
    use tasktrail_core::{Outcome, Task};
    for issue in 1..=5 {
        let running = Task::queue(spec(issue))
            .start(worker, store)
            .expect("start");
        running
            .finish(Outcome::Success(report()), store)
            .expect("finish");
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
        "five lifecycles on one connection prepared the start and the finish once each: {prepared:#?}"
    );
    assert_eq!(
        log.task_history_inserts().len(),
        5,
        "and ran the start five times"
    );
}

/// The value of column `name` in a row `raw_task_columns` returned (`None`
/// for NULL or a column it does not have).
pub fn column_value(columns: &tasktrail_diesel::RawColumns, name: &str) -> Option<String> {
    columns
        .iter()
        .find(|(column, _)| *column == name)
        .and_then(|(_, text)| text.clone())
}
