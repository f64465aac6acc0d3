//! The metrics a [`Worker`](crate::Worker) emits, through the [`metrics`]
//! facade.
//!
//! The library records; it never installs a recorder. Without one every
//! call is a no-op. A binary installs the recorder it wants (the
//! `tasktrail-server` binary serves them at `GET /metrics` in the
//! Prometheus text format) and may call [`describe`] so each metric carries
//! its help text and unit.
//!
//! | name | kind | labels | moves when |
//! | --- | --- | --- | --- |
//! | [`TASKS_STARTED`] | counter | | a start's INSERT committed |
//! | [`TASKS_FINISHED`] | counter | `status` | this process's UPDATE made a row final: a finish (at once or after a store outage), or `interrupted` at stop |
//! | [`TASKS_RECOVERED`] | counter | `cause` ([`DeathCause::kind`]) | one per task this process marked `interrupted` with a `[recovery]` report: dead workers' rows its sweeps interrupted, and its own abandoned tasks (`handle_abandoned`); counted when the row changes (a report delivered again, or taken over from a dead reporter, is not counted again) |
//! | [`FINISHES_REFUSED`] | counter | `reason` ([`refusal_kind`]) | a finish found the row no longer this worker's running task; nothing was written |
//! | [`TASKS_ABANDONED`] | counter | | a task handle was dropped without a finish and the worker interrupted its row |
//! | [`TASKS_RUNNING`] | gauge | | this process's tasks started and not yet final (finishes waiting out a store outage included) |
//! | [`TASK_DURATION`] | histogram | `status` | a finish landed: seconds from `started_at` to `finished_at` |
//!
//! Tasks interrupted at stop and abandoned tasks count in their counters
//! but not in the histogram.

use std::sync::{Mutex, PoisonError};

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, Unit};
use tasktrail_core::{
    DeathCause, FinishError, FinishRefusal, RecoveredTask, RegisteredWorker, Running, StartError,
    Task, TaskStatus, Timestamp,
};

use crate::runtime::FinishReceipt;

/// Counter: tasks started (their `running` row committed).
pub const TASKS_STARTED: &str = "tasktrail_tasks_started_total";
/// Counter, label `status`: rows this process made final.
pub const TASKS_FINISHED: &str = "tasktrail_tasks_finished_total";
/// Counter, label `cause`: tasks this process marked `interrupted` and
/// reported with a `[recovery]` line.
pub const TASKS_RECOVERED: &str = "tasktrail_tasks_recovered_total";
/// Counter, label `reason`: finishes refused because the row was no longer
/// this worker's running task.
pub const FINISHES_REFUSED: &str = "tasktrail_finishes_refused_total";
/// Counter: task handles dropped without a finish, their rows interrupted.
pub const TASKS_ABANDONED: &str = "tasktrail_tasks_abandoned_total";
/// Gauge: this process's tasks started and not yet final.
pub const TASKS_RUNNING: &str = "tasktrail_tasks_running";
/// Histogram, label `status`: seconds from a task's start to its finish.
pub const TASK_DURATION: &str = "tasktrail_task_duration_seconds";

/// Gives the installed recorder each metric's help text and unit. Call it
/// once after installing the recorder.
pub fn describe() {
    describe_counter!(
        TASKS_STARTED,
        Unit::Count,
        "Tasks started: their running row committed."
    );
    describe_counter!(
        TASKS_FINISHED,
        Unit::Count,
        "Rows this process made final (status: success, failure, cancelled, interrupted, aborted_no_skill)."
    );
    describe_counter!(
        TASKS_RECOVERED,
        Unit::Count,
        "Tasks this process marked interrupted and reported with a [recovery] line, by cause."
    );
    describe_counter!(
        FINISHES_REFUSED,
        Unit::Count,
        "Finishes refused: the row was no longer this worker's running task (nothing written), by reason."
    );
    describe_counter!(
        TASKS_ABANDONED,
        Unit::Count,
        "Task handles dropped without a finish; the worker interrupted their rows."
    );
    describe_gauge!(
        TASKS_RUNNING,
        Unit::Count,
        "This process's tasks started and not yet final."
    );
    describe_histogram!(
        TASK_DURATION,
        Unit::Seconds,
        "Seconds from a task's start to its finish, by status."
    );
}

/// The `reason` label of [`FINISHES_REFUSED`]: `missing`,
/// `already_finished`, `interrupted_by_recovery` or
/// `owned_by_another_worker`.
pub fn refusal_kind(refusal: &FinishRefusal) -> &'static str {
    match refusal {
        FinishRefusal::Missing => "missing",
        FinishRefusal::AlreadyFinished { .. } => "already_finished",
        FinishRefusal::InterruptedByRecovery { .. } => "interrupted_by_recovery",
        FinishRefusal::OwnedByAnotherWorker { .. } => "owned_by_another_worker",
    }
}

/// A finish landed: counted by status, its duration observed.
pub(crate) fn finished(status: TaskStatus, started_at: Timestamp, finished_at: Timestamp) {
    counter!(TASKS_FINISHED, "status" => status.as_str()).increment(1);
    let seconds = (finished_at - started_at)
        .to_std()
        .unwrap_or_default()
        .as_secs_f64();
    metrics::histogram!(TASK_DURATION, "status" => status.as_str()).record(seconds);
}

/// A finish was refused.
pub(crate) fn refused(refusal: &FinishRefusal) {
    counter!(FINISHES_REFUSED, "reason" => refusal_kind(refusal)).increment(1);
}

/// Tasks still in flight at stop were interrupted.
pub(crate) fn interrupted_at_stop(tasks: usize) {
    counter!(TASKS_FINISHED, "status" => TaskStatus::Interrupted.as_str())
        .increment(u64::try_from(tasks).unwrap_or(u64::MAX));
}

/// Tasks this process just marked `interrupted` (a sweep's rows, or
/// abandoned handles): each one [`TASKS_RECOVERED`] by cause (and, for an
/// abandoned handle, one [`TASKS_ABANDONED`]). Counted when the row
/// changes, not when its report is delivered, so a report delivered again
/// or taken over from a dead reporter is not counted twice.
pub(crate) fn recovered(tasks: &[RecoveredTask]) {
    for task in tasks {
        counter!(TASKS_RECOVERED, "cause" => task.cause.kind()).increment(1);
        if matches!(task.cause, DeathCause::HandleAbandoned) {
            counter!(TASKS_ABANDONED).increment(1);
        }
    }
}

/// One worker's share of [`TASKS_RUNNING`]. It is set from the worker's own
/// bookkeeping (tasks in flight plus abandoned ones not yet interrupted)
/// rather than counted up and down, so no path can leave it off; dropped
/// with the worker, it takes its share back out.
#[derive(Debug, Default)]
pub(crate) struct RunningGauge {
    /// What this worker added to the gauge so far.
    reported: Mutex<i64>,
}

impl RunningGauge {
    /// Brings this worker's share to what `worker` has in flight now.
    pub(crate) fn sync(&self, worker: &RegisteredWorker) {
        let mut reported = self.reported.lock().unwrap_or_else(PoisonError::into_inner);
        let now = worker.in_flight().len() + worker.abandoned().len();
        move_share(&mut reported, i64::try_from(now).unwrap_or(i64::MAX));
    }

    /// A start: counted, and the gauge brought up to date.
    pub(crate) fn started(
        &self,
        result: &Result<Task<Running>, StartError>,
        worker: &RegisteredWorker,
    ) {
        if result.is_ok() {
            counter!(TASKS_STARTED).increment(1);
            self.sync(worker);
        }
    }

    /// A finish: a written one counted and observed, a refused one counted,
    /// and the gauge brought up to date. (A queued finish is counted when
    /// it lands.)
    pub(crate) fn finished(
        &self,
        result: &Result<FinishReceipt, FinishError>,
        worker: &RegisteredWorker,
    ) {
        match result {
            Ok(FinishReceipt::Written(task)) => {
                finished(
                    task.outcome().status(),
                    task.started_at(),
                    task.finished_at(),
                );
            }
            Err(FinishError::Refused { refusal, .. }) => refused(refusal),
            Ok(FinishReceipt::Queued(_)) | Err(FinishError::Storage { .. }) => {}
        }
        self.sync(worker);
    }
}

impl Drop for RunningGauge {
    fn drop(&mut self) {
        move_share(
            self.reported
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner),
            0,
        );
    }
}

/// Moves the gauge by the change of one worker's share.
fn move_share(reported: &mut i64, now: i64) {
    let delta = now - *reported;
    if delta != 0 {
        gauge!(TASKS_RUNNING).increment(delta as f64);
        *reported = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_kinds_are_stable_snake_case() {
        assert_eq!(refusal_kind(&FinishRefusal::Missing), "missing");
        assert_eq!(
            refusal_kind(&FinishRefusal::AlreadyFinished {
                status: TaskStatus::Success
            }),
            "already_finished"
        );
        assert_eq!(
            refusal_kind(&FinishRefusal::InterruptedByRecovery { recovered_by: None }),
            "interrupted_by_recovery"
        );
        assert_eq!(
            refusal_kind(&FinishRefusal::OwnedByAnotherWorker { owner: None }),
            "owned_by_another_worker"
        );
    }
}
