//! The library's `tracing` events: one function per kind, so each kind's
//! target, level and field names are written once. docs/operations.md lists
//! them; they are a stable interface (fields are only ever added).

use tasktrail_core::backend::{escape_control_characters, human_duration};
use tasktrail_core::{
    DeathCause, FinishRefusal, Finished, RecoveredTask, Running, Task, TaskId, TaskStatus, WorkerId,
};

use crate::runtime::WorkerEvent;

/// The target of every recovery event.
pub const RECOVERY_TARGET: &str = "tasktrail::recovery";

/// A task a sweep (or its own worker, for an abandoned handle) marked
/// `interrupted`: `warn`, its message the `[recovery] ` line exactly as
/// [`RecoveredTask::hint`] writes it, every fact of the line as a field.
pub(crate) fn recovered(task: &RecoveredTask) {
    let record = &task.task;
    tracing::warn!(
        target: RECOVERY_TARGET,
        task_id = %record.id,
        repo = %record.repo,
        issue_number = record.issue_number,
        agent = %record.agent,
        model = %record.model,
        dead_worker = task.dead_worker.map(|id| id.to_string()),
        started_at = %record.started_at.to_rfc3339(),
        ran_for = %human_duration(task.ran_for()),
        ran_for_seconds = task.ran_for().num_milliseconds() as f64 / 1000.0,
        cause = %task.cause,
        cause_kind = task.cause.kind(),
        sessions_invalidated = task.sessions_invalidated,
        recovered_by = %task.recovered_by,
        previous_reporter = task.previous_reporter.map(|id| id.to_string()),
        "{}",
        task.hint()
    );
    if task.cause == DeathCause::HandleAbandoned {
        tracing::warn!(
            target: TASK_TARGET,
            task_id = %record.id,
            worker = %task.recovered_by,
            "task abandoned: its handle was dropped without a finish; the worker interrupted it"
        );
    }
}

/// A report the reporter refused (stdout closed, a full pipe): it stays
/// owed, and a later sweep delivers it again.
pub(crate) fn report_undelivered(task: &RecoveredTask, error: &std::io::Error) {
    tracing::warn!(
        target: RECOVERY_TARGET,
        task_id = %task.task.id,
        error = %error,
        "the [recovery] report of task {} could not be delivered ({error}); it stays owed and is delivered again at the next sweep",
        task.task.id
    );
}

/// The target of task lifecycle events (started, finished, refused,
/// abandoned).
pub const TASK_TARGET: &str = "tasktrail::task";

/// The target of the worker's own events (sweep summaries, heartbeat and
/// other upkeep failures, declared dead, stalled neighbours, queued
/// outcomes).
pub const WORKER_TARGET: &str = "tasktrail::worker";

/// A task's `running` row committed: `info`.
pub(crate) fn started(task: &Task<Running>) {
    let spec = task.spec();
    tracing::info!(
        target: TASK_TARGET,
        task_id = %task.id(),
        repo = spec.repo(),
        issue_number = spec.issue_number(),
        agent = spec.agent(),
        model = spec.model(),
        worker = %task.worker(),
        "task started"
    );
}

/// A finish UPDATE committed: `info`, with the status, how long the task
/// ran, and its tokens and cost (none for `interrupted`).
pub(crate) fn finished(task: &Task<Finished>) {
    let outcome = task.outcome();
    let report = outcome.report();
    let duration = task.finished_at() - task.started_at();
    tracing::info!(
        target: TASK_TARGET,
        task_id = %task.id(),
        status = %outcome.status(),
        duration_seconds = duration.num_milliseconds() as f64 / 1000.0,
        input_tokens = report.map(|r| r.input_tokens),
        output_tokens = report.map(|r| r.output_tokens),
        cost_usd = report.map(|r| r.cost_usd.dollars()),
        worker = %task.worker(),
        "task finished"
    );
}

/// A finish matched no row (a sweep interrupted it, or it is not this
/// worker's): `warn`, with why (`reason` is the snake_case kind of
/// [`FinishRefusal`](tasktrail_core::FinishRefusal)).
pub(crate) fn finish_refused(task: TaskId, status: TaskStatus, refusal: &FinishRefusal) {
    tracing::warn!(
        target: TASK_TARGET,
        task_id = %task,
        status = %status,
        reason = crate::metrics::refusal_kind(refusal),
        detail = ?refusal,
        "finish refused: the row is no longer this worker's running task; nothing was written"
    );
}

/// What the worker's hook also hears, as events: upkeep failures (`warn`;
/// `upkeep = "heartbeat"` for a failed heartbeat), declared dead (`error`),
/// stalled or not yet provably dead neighbours, queued and landed outcomes.
/// [`WorkerEvent::Recovered`] has its own event ([`recovered`]).
pub(crate) fn worker_event(worker: WorkerId, event: &WorkerEvent) {
    match event {
        WorkerEvent::UpkeepFailed { upkeep, error } => tracing::warn!(
            target: WORKER_TARGET,
            worker = %worker,
            upkeep = %upkeep,
            error = %error,
            transient = error.is_transient(),
            "{upkeep} failed; retried with backoff"
        ),
        WorkerEvent::DeclaredDead => tracing::error!(
            target: WORKER_TARGET,
            worker = %worker,
            "this worker was declared dead by another worker's sweep: its rows are no longer its own; stop it"
        ),
        WorkerEvent::StalledWorker(owner) => tracing::warn!(
            target: WORKER_TARGET,
            worker = %worker,
            stalled_worker = %owner.record.id,
            host = %owner.record.host,
            pid = owner.record.pid,
            "{}",
            escape_control_characters(&format!(
                "worker {} on {} holds its lock but is silent past the lease (stopped or hung); its rows are left alone",
                owner.record.id, owner.record.host
            ))
        ),
        WorkerEvent::DeathNotYetProvable(owner) => tracing::info!(
            target: WORKER_TARGET,
            worker = %worker,
            owner = %owner.record.id,
            verdict = ?owner.verdict,
            "a worker's lock is free but its death is not provable yet; its rows are left to a later sweep"
        ),
        WorkerEvent::ResumedAfterStall { silent_for } => tracing::warn!(
            target: WORKER_TARGET,
            worker = %worker,
            silent_for = %human_duration(*silent_for),
            "this worker went longer than the lease without a heartbeat; its lock kept its tasks"
        ),
        WorkerEvent::OutcomeQueued { pending, error } => tracing::warn!(
            target: TASK_TARGET,
            task_id = %pending.id,
            status = %pending.status,
            error = %error,
            "finish queued: the store did not answer; the outcome is retried until it lands"
        ),
        WorkerEvent::OutcomeWritten { pending, waited } => tracing::info!(
            target: TASK_TARGET,
            task_id = %pending.id,
            status = %pending.status,
            attempts = pending.attempts,
            waited_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
            "task finished (queued outcome landed)"
        ),
        WorkerEvent::OutcomeRefused { pending, refusal } => {
            finish_refused(pending.id, pending.status, refusal)
        }
        _ => {}
    }
}

/// One sweep's summary: `info` when it reported anything, `debug`
/// otherwise.
pub(crate) fn sweep_summary(worker: WorkerId, recovered: usize, taken_over: usize, failed: bool) {
    if recovered + taken_over > 0 || failed {
        tracing::info!(
            target: WORKER_TARGET,
            worker = %worker,
            recovered,
            taken_over,
            failed,
            "recovery sweep: {recovered} task(s) recovered, {taken_over} report(s) taken over"
        );
    } else {
        tracing::debug!(
            target: WORKER_TARGET,
            worker = %worker,
            recovered,
            taken_over,
            failed,
            "recovery sweep: nothing to recover"
        );
    }
}
