//! The library's `tracing` events: one function per kind, so each kind's
//! target, level and field names are written once. docs/operations.md lists
//! them; they are a stable interface (fields are only ever added).

use tasktrail_core::backend::human_duration;
use tasktrail_core::RecoveredTask;

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
