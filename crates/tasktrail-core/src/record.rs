//! Plain records: what the [`Storage`](crate::Storage) trait reads and writes.
//!
//! A record read back from storage is data, never a
//! [`Task<Running>`](crate::Task): only the worker that started a task holds
//! the value that can finish it.

use chrono::Duration;

use crate::clock::{Timestamp, UtcSeconds};
use crate::ids::{SessionId, TaskId, WorkerId};
use crate::outcome::Outcome;
use crate::spec::TaskSpec;
use crate::status::TaskStatus;
use crate::worker::{DeathCause, Liveness};

/// A `task_history` row.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    /// `id`
    pub id: TaskId,
    /// `repo`
    pub repo: String,
    /// `issue_number`
    pub issue_number: u32,
    /// `user`
    pub user: String,
    /// `agent`
    pub agent: String,
    /// `agent_type`
    pub agent_type: String,
    /// `model`
    pub model: String,
    /// `provider`
    pub provider: String,
    /// `status`
    pub status: TaskStatus,
    /// `worker_id`: the worker that started the task (NULL on rows written
    /// before the fix).
    pub worker_id: Option<WorkerId>,
    /// `started_at`
    pub started_at: Timestamp,
    /// `finished_at`: NULL while running and for interrupted rows.
    pub finished_at: Option<Timestamp>,
    /// `input_tokens`
    pub input_tokens: Option<u32>,
    /// `output_tokens`
    pub output_tokens: Option<u32>,
    /// `cost_usd`
    pub cost_usd: Option<f64>,
    /// `turns`
    pub turns: Option<u32>,
    /// `artifacts`
    pub artifacts: Option<Vec<String>>,
    /// `interrupted_at`: when the row became `interrupted`.
    pub interrupted_at: Option<Timestamp>,
    /// `interrupt_reason`
    pub interrupt_reason: Option<String>,
    /// `interrupted_by`: the worker that marked the row interrupted (the
    /// owner itself on shutdown, or the worker whose boot recovered it).
    pub interrupted_by: Option<WorkerId>,
}

impl TaskRecord {
    /// Why a finish of this row by `worker` (guarded by `status = 'running'`
    /// and ownership) matches nothing. Backends call it after their guarded
    /// UPDATE touched no row.
    pub fn refusal_for(&self, worker: WorkerId) -> FinishRefusal {
        if self.status == TaskStatus::Interrupted && self.interrupted_by != self.worker_id {
            FinishRefusal::InterruptedByRecovery {
                recovered_by: self.interrupted_by,
            }
        } else if self.worker_id != Some(worker) {
            FinishRefusal::OwnedByAnotherWorker {
                owner: self.worker_id,
            }
        } else {
            FinishRefusal::AlreadyFinished {
                status: self.status,
            }
        }
    }

    /// `repo#issue_number`.
    pub fn repo_issue(&self) -> String {
        format!("{}#{}", self.repo, self.issue_number)
    }

    /// When the task ended: `finished_at`, else `interrupted_at`, else (a
    /// row still `running`, or one that never recorded an end)
    /// `started_at`.
    pub fn ended_at(&self) -> Timestamp {
        self.finished_at
            .or(self.interrupted_at)
            .unwrap_or(self.started_at)
    }
}

/// Filters for [`Storage::list_tasks`](crate::Storage::list_tasks). Rows
/// come back newest `started_at` first (ties broken by id).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFilter {
    /// Only rows with this status.
    pub status: Option<TaskStatus>,
    /// Only rows of this `owner/name`.
    pub repo: Option<String>,
    /// At most this many rows.
    pub limit: Option<u32>,
    /// Skip this many rows of the order first (a page past the first:
    /// `offset = page * limit`).
    pub offset: Option<u32>,
}

/// The INSERT a start issues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRunningRow {
    /// The client-side id.
    pub id: TaskId,
    /// The validated spec.
    pub spec: TaskSpec,
    /// The owning worker.
    pub worker: WorkerId,
    /// `started_at`
    pub started_at: Timestamp,
}

/// The guarded UPDATE a finish issues: it matches only the row with this id
/// that is still `running` and owned by this worker.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishRow {
    /// The row.
    pub id: TaskId,
    /// The worker that must own it.
    pub worker: WorkerId,
    /// How the task ended.
    pub outcome: Outcome,
    /// When: `finished_at` for a completed task, `interrupted_at` for an
    /// interrupted one.
    pub at: Timestamp,
}

/// What a guarded finish UPDATE did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishWrite {
    /// Exactly one row was updated.
    Updated {
        /// How many `claude_sdk_sessions` rows the same transaction
        /// invalidated (an interrupted finish invalidates the task's
        /// sessions; any other finish leaves them alone, so this is 0).
        sessions_invalidated: u32,
    },
    /// No row matched; nothing was written. Says what the row is now.
    Refused(FinishRefusal),
}

/// Why a finish matched no row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishRefusal {
    /// There is no row with this id.
    Missing,
    /// The row already has this final status (finished by its owner).
    AlreadyFinished {
        /// The status it has.
        status: TaskStatus,
    },
    /// A recovery sweep declared the owner dead and marked the row
    /// `interrupted`.
    InterruptedByRecovery {
        /// The worker whose boot did it.
        recovered_by: Option<WorkerId>,
    },
    /// The row belongs to another worker.
    OwnedByAnotherWorker {
        /// Its owner.
        owner: Option<WorkerId>,
    },
}

/// A `claude_sdk_sessions` row to insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSession {
    /// The SDK's session id.
    pub session_id: SessionId,
    /// The task running under it (must be `running` and owned by `worker`).
    pub task_id: TaskId,
    /// The worker recording it.
    pub worker: WorkerId,
    /// `repo` of the task.
    pub repo: String,
    /// `issue_number` of the task.
    pub issue_number: u32,
    /// `agent` of the task.
    pub agent: String,
    /// When.
    pub created_at: Timestamp,
}

/// Which conversation a new task would like to resume.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    /// `owner/name`
    pub repo: String,
    /// The issue.
    pub issue_number: u32,
    /// The agent.
    pub agent: String,
}

/// What a prune deletes: final rows (never `running`) that ended before
/// `cut_off` (their `finished_at`, or `interrupted_at`, or else
/// `started_at`), with their sessions, and `stopped` / `dead` workers last
/// seen before `cut_off` that no row names any more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneRequest {
    /// Rows that ended at or after this instant are kept.
    pub cut_off: Timestamp,
    /// Only rows with one of these statuses; empty means every final
    /// status. `running` is never pruned, whatever this says.
    pub statuses: Vec<TaskStatus>,
    /// Count what would go, delete nothing.
    pub dry_run: bool,
    /// Rows deleted per transaction (at least 1), so a worker's start never
    /// waits behind one long delete.
    pub batch_size: u32,
}

impl PruneRequest {
    /// Whether `row` goes.
    pub fn selects(&self, row: &TaskRecord) -> bool {
        row.status.is_final()
            && row.ended_at() < self.cut_off
            && (self.statuses.is_empty() || self.statuses.contains(&row.status))
    }
}

/// What a prune deleted (with `dry_run`: would delete).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// `task_history` rows.
    pub tasks: u64,
    /// `claude_sdk_sessions` rows of those tasks.
    pub sessions: u64,
    /// `workers` rows.
    pub workers: u64,
    /// Transactions it took.
    pub batches: u32,
}

/// A `claude_sdk_sessions` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// `session_id`
    pub session_id: SessionId,
    /// `task_id`
    pub task_id: TaskId,
    /// `repo`
    pub repo: String,
    /// `issue_number`
    pub issue_number: u32,
    /// `agent`
    pub agent: String,
    /// `created_at`
    pub created_at: Timestamp,
    /// `invalidated_at`: set when the task was interrupted; an invalidated
    /// session is never offered for resume.
    pub invalidated_at: Option<Timestamp>,
    /// `invalidation_reason`
    pub invalidation_reason: Option<String>,
}

/// Whether a sweep writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SweepMode {
    /// Transition, invalidate and report.
    Apply,
    /// Report what `Apply` would do; change nothing.
    DryRun,
}

/// A recovery sweep's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryRequest {
    /// The worker running the sweep (never judged: it is alive).
    pub recovering_worker: WorkerId,
    /// The sweep's time: `interrupted_at` and `invalidated_at`.
    pub now: Timestamp,
    /// Apply or dry run.
    pub mode: SweepMode,
}

/// One task a sweep turned from `running` into `interrupted`.
#[derive(Debug, Clone, PartialEq)]
pub struct RecoveredTask {
    /// The row as it is after the sweep (as it would be, on a dry run).
    pub task: TaskRecord,
    /// The dead owner (None for a row that named no worker).
    pub dead_worker: Option<WorkerId>,
    /// Why the owner counts as dead.
    pub cause: DeathCause,
    /// The worker whose sweep recovered it.
    pub recovered_by: WorkerId,
    /// When.
    pub recovered_at: Timestamp,
    /// How many `claude_sdk_sessions` rows were invalidated with it.
    pub sessions_invalidated: u32,
    /// `None` on the sweep that recovered the task. `Some(worker)` when this
    /// is its report again: `worker` owed it and never confirmed it (the
    /// process died between the sweep's commit and its report, or could not
    /// write it), so a later sweep took the report over. The hint is the
    /// same line.
    pub previous_reporter: Option<WorkerId>,
}

/// A claim on the recovery reports nobody alive will deliver (see
/// [`Storage::claim_unreported_recoveries`](crate::Storage::claim_unreported_recoveries)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportClaim {
    /// The worker taking the reports over (its own unconfirmed reports
    /// included).
    pub claimant: WorkerId,
    /// The claim's time (`owed_since` of what it takes).
    pub now: Timestamp,
    /// A report owed by an id that names no registered worker (an
    /// operator's one-shot sweep, which never registers) is taken over only
    /// if owed since before this: that sweep may still be printing it.
    /// Workers pass `now - lease`.
    pub unregistered_owed_before: Timestamp,
}

/// What a recovery sweep does about one owner of `running` rows the judge
/// found dead: the decision as data, made here once for every backend
/// (memory, SQLite, Postgres). A backend carries it out with its own
/// statements, in the sweep's transaction: it sets its running rows
/// `interrupted` at [`at`](Self::at) by [`recovered_by`](Self::recovered_by)
/// with [`reason`](Self::reason), invalidates their valid sessions with the
/// same reason and time, marks [`owner_to_mark_dead`](Self::owner_to_mark_dead)
/// `dead` if it is still `alive`, and reports each row it changed with
/// [`OwnerRecovery::recovered`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRecovery {
    /// The dead owner, as the rows name it (`None`: rows that name no worker).
    pub owner: Option<WorkerId>,
    /// Why the owner counts as dead.
    pub cause: DeathCause,
    /// The `interrupt_reason` of its rows and the `invalidation_reason` of
    /// their sessions ([`recovery_reason`]).
    pub reason: String,
    /// The sweeping worker (`interrupted_by`).
    pub recovered_by: WorkerId,
    /// The sweep's time as the store keeps it (`interrupted_at`,
    /// `invalidated_at`, the owner's `stopped_at`).
    pub at: Timestamp,
}

impl OwnerRecovery {
    /// The plan for `owner`'s running rows given the judge's `verdict`:
    /// `None` (leave them alone) unless the owner is dead.
    pub fn for_verdict(
        owner: Option<WorkerId>,
        verdict: &Liveness,
        recovered_by: WorkerId,
        at: Timestamp,
    ) -> Option<Self> {
        let Liveness::Dead(cause) = verdict else {
            return None;
        };
        Some(Self {
            owner,
            reason: recovery_reason(owner, cause),
            cause: cause.clone(),
            recovered_by,
            at,
        })
    }

    /// The `workers` row the sweep marks `dead` (if still `alive`): the
    /// owner, when the rows name one.
    pub fn owner_to_mark_dead(&self) -> Option<WorkerId> {
        self.owner
    }

    /// The report of one of the owner's rows that the sweep interrupted
    /// (would interrupt, on a dry run): `orphan` as it was read while still
    /// `running`, turned into the row as the sweep leaves it.
    pub fn recovered(&self, orphan: TaskRecord, sessions_invalidated: u32) -> RecoveredTask {
        let mut task = orphan;
        task.status = TaskStatus::Interrupted;
        task.interrupted_at = Some(self.at);
        task.interrupt_reason = Some(self.reason.clone());
        task.interrupted_by = Some(self.recovered_by);
        RecoveredTask {
            task,
            dead_worker: self.owner,
            cause: self.cause.clone(),
            recovered_by: self.recovered_by,
            recovered_at: self.at,
            sessions_invalidated,
            previous_reporter: None,
        }
    }
}

/// The order every backend returns recovered (and claimed) tasks in: by
/// `started_at`, then id.
pub fn sort_recovered(recovered: &mut [RecoveredTask]) {
    recovered.sort_by_key(|r| (r.task.started_at, r.task.id));
}

/// The `invalidation_reason` of the sessions of a task finished as
/// `interrupted` by its own worker with `reason`.
pub fn interrupted_session_reason(reason: &str) -> String {
    format!("task interrupted: {reason}")
}

/// Which of an owner's unconfirmed recovery reports a claim takes over
/// ([`Storage::claim_unreported_recoveries`](crate::Storage::claim_unreported_recoveries)):
/// the decision made once for every backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimedReports {
    /// None: the owner is alive (or not provably dead).
    None,
    /// Every one it owes: the claimant itself (it could not deliver them),
    /// or a registered owner the judge finds dead.
    All,
    /// Only those owed since before this time: the id names no registered
    /// worker (an operator's one-shot sweep, which may still be printing).
    OwedBefore(Timestamp),
}

impl ReportClaim {
    /// Which reports owed by `owner` this claim takes: `registered` tells
    /// whether `owner` has a `workers` row, `verdict` is the judge's (not
    /// asked about the claimant itself).
    pub fn reports_of(
        &self,
        owner: WorkerId,
        registered: bool,
        verdict: impl FnOnce() -> Liveness,
    ) -> ClaimedReports {
        if owner == self.claimant {
            return ClaimedReports::All;
        }
        match verdict() {
            Liveness::Dead(_) if registered => ClaimedReports::All,
            Liveness::Dead(_) => ClaimedReports::OwedBefore(self.unregistered_owed_before),
            _ => ClaimedReports::None,
        }
    }
}

impl RecoveredTask {
    /// The report of a recovered row made again by a new reporter (a claim
    /// took it over from `previous_reporter`, who owed it and never
    /// confirmed it): `task` is the row as stored, `cause` and
    /// `sessions_invalidated` what the recovering sweep recorded with it.
    pub fn reported_again(
        task: TaskRecord,
        cause: DeathCause,
        sessions_invalidated: u32,
        previous_reporter: WorkerId,
    ) -> Self {
        RecoveredTask {
            dead_worker: task.worker_id,
            cause,
            // A recovered row names its sweeper and time; the fallbacks only
            // serve a row an operator edited by hand.
            recovered_by: task.interrupted_by.unwrap_or(previous_reporter),
            recovered_at: task.interrupted_at.unwrap_or(task.started_at),
            sessions_invalidated,
            previous_reporter: Some(previous_reporter),
            task,
        }
    }
}

impl RecoveredTask {
    /// How long the task had run when it was recovered.
    pub fn ran_for(&self) -> Duration {
        self.recovered_at - self.task.started_at
    }

    /// The one `[recovery] ` log line for this task: id, `repo#issue`,
    /// agent, model, the dead worker, `started_at`, how long it ran, and why.
    /// Never artifacts or session content.
    pub fn hint(&self) -> String {
        use std::fmt::Write as _;
        let mut line = String::with_capacity(256);
        let _ = write!(
            line,
            "[recovery] task {} ({}#{}) agent={} model={} worker=",
            self.task.id, self.task.repo, self.task.issue_number, self.task.agent, self.task.model,
        );
        let _ = match self.dead_worker {
            Some(id) => write!(line, "{id}"),
            None => write!(line, "none"),
        };
        let _ = write!(
            line,
            " started_at={} ran_for={} marked interrupted: {}; {} session(s) invalidated",
            UtcSeconds(self.task.started_at),
            HumanDuration(self.ran_for()),
            self.cause,
            self.sessions_invalidated,
        );
        escape_control_characters(&line).into_owned()
    }
}

/// `text` with every control character written as its escape (`\n`, `\t`,
/// `\u{1b}`...), so a value from a row or a host name can never start a
/// second line or steer a terminal: one task is one line.
pub fn escape_control_characters(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(
        text.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// `1h02m03s`, `4m05s`, `6s`; negative durations (clock skew) print as `0s`.
pub fn human_duration(duration: Duration) -> String {
    HumanDuration(duration).to_string()
}

struct HumanDuration(Duration);

impl std::fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total = self.0.num_seconds().max(0);
        let (hours, minutes, seconds) = (total / 3600, (total % 3600) / 60, total % 60);
        if hours > 0 {
            write!(f, "{hours}h{minutes:02}m{seconds:02}s")
        } else if minutes > 0 {
            write!(f, "{minutes}m{seconds:02}s")
        } else {
            write!(f, "{seconds}s")
        }
    }
}

/// The `interrupt_reason` a sweep stores for a recovered task.
pub fn recovery_reason(dead_worker: Option<WorkerId>, cause: &DeathCause) -> String {
    let reason = match dead_worker {
        Some(worker) => format!("recovered at boot: worker {worker} died ({cause})"),
        None => format!("recovered at boot: {cause}"),
    };
    escape_control_characters(&reason).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recovered(dead_worker: Option<WorkerId>, cause: DeathCause) -> RecoveredTask {
        use chrono::TimeZone;
        let started_at = chrono::Utc
            .with_ymd_and_hms(2026, 5, 11, 15, 13, 2)
            .single()
            .expect("time")
            + Duration::microseconds(123_456);
        RecoveredTask {
            task: TaskRecord {
                id: "0196c0de-0000-7000-a000-000000000001".parse().expect("id"),
                repo: "acme/widgets".into(),
                issue_number: 1104,
                user: "alice".into(),
                agent: "fixer".into(),
                agent_type: "claude_sdk".into(),
                model: "claude-opus".into(),
                provider: "anthropic".into(),
                status: TaskStatus::Interrupted,
                worker_id: dead_worker,
                started_at,
                finished_at: None,
                input_tokens: None,
                output_tokens: None,
                cost_usd: None,
                turns: None,
                artifacts: None,
                interrupted_at: None,
                interrupt_reason: None,
                interrupted_by: None,
            },
            dead_worker,
            cause,
            recovered_by: WorkerId::new_random(),
            recovered_at: started_at + Duration::seconds(3723),
            sessions_invalidated: 1,
            previous_reporter: None,
        }
    }

    fn running_orphan(owner: Option<WorkerId>) -> TaskRecord {
        let mut task = recovered(owner, DeathCause::UnknownWorker).task;
        task.status = TaskStatus::Running;
        task
    }

    #[test]
    fn only_a_dead_verdict_plans_a_recovery_and_the_plan_builds_the_interrupted_row() {
        let owner = Some(WorkerId::new_random());
        let sweeper = WorkerId::new_random();
        let at = running_orphan(owner).started_at + Duration::seconds(90);
        for alive in [
            Liveness::Alive,
            Liveness::Stalled {
                silence: Duration::seconds(60),
            },
        ] {
            assert_eq!(OwnerRecovery::for_verdict(owner, &alive, sweeper, at), None);
        }
        let cause = DeathCause::UnknownWorker;
        let plan = OwnerRecovery::for_verdict(owner, &Liveness::Dead(cause.clone()), sweeper, at)
            .expect("a dead owner's rows are recovered");
        assert_eq!(plan.reason, recovery_reason(owner, &cause));
        assert_eq!(plan.owner_to_mark_dead(), owner);
        let orphan = running_orphan(owner);
        let report = plan.recovered(orphan.clone(), 3);
        assert_eq!(report.task.status, TaskStatus::Interrupted);
        assert_eq!(report.task.interrupted_at, Some(at));
        assert_eq!(
            report.task.interrupt_reason.as_deref(),
            Some(plan.reason.as_str())
        );
        assert_eq!(report.task.interrupted_by, Some(sweeper));
        // Everything else of the row is as it was read.
        assert_eq!(report.task.started_at, orphan.started_at);
        assert_eq!(report.task.finished_at, None);
        assert_eq!(report.task.worker_id, owner);
        assert_eq!(report.dead_worker, owner);
        assert_eq!(report.cause, cause);
        assert_eq!(report.recovered_by, sweeper);
        assert_eq!(report.recovered_at, at);
        assert_eq!(report.sessions_invalidated, 3);
        assert_eq!(report.previous_reporter, None);
        // Rows that name no worker mark no worker dead.
        let plan =
            OwnerRecovery::for_verdict(None, &Liveness::Dead(cause), sweeper, at).expect("plan");
        assert_eq!(plan.owner_to_mark_dead(), None);
    }

    #[test]
    fn a_claim_takes_its_own_reports_a_dead_workers_and_an_unregistered_ids_old_ones() {
        let claimant = WorkerId::new_random();
        let other = WorkerId::new_random();
        let now = running_orphan(None).started_at;
        let claim = ReportClaim {
            claimant,
            now,
            unregistered_owed_before: now - Duration::seconds(15),
        };
        let dead = || Liveness::Dead(DeathCause::UnknownWorker);
        // The claimant's own: all of them, without asking the judge.
        assert_eq!(
            claim.reports_of(claimant, true, || panic!("the claimant is not judged")),
            ClaimedReports::All
        );
        assert_eq!(claim.reports_of(other, true, dead), ClaimedReports::All);
        assert_eq!(
            claim.reports_of(other, false, dead),
            ClaimedReports::OwedBefore(claim.unregistered_owed_before)
        );
        assert_eq!(
            claim.reports_of(other, true, || Liveness::Alive),
            ClaimedReports::None
        );
        assert_eq!(
            claim.reports_of(other, false, || Liveness::Alive),
            ClaimedReports::None
        );
    }

    #[test]
    fn a_report_made_again_names_its_previous_reporter_and_the_rows_sweep() {
        let previous = WorkerId::new_random();
        let sweeper = WorkerId::new_random();
        let mut task = running_orphan(Some(WorkerId::new_random()));
        task.status = TaskStatus::Interrupted;
        task.interrupted_by = Some(sweeper);
        task.interrupted_at = Some(task.started_at + Duration::seconds(5));
        let again =
            RecoveredTask::reported_again(task.clone(), DeathCause::UnknownWorker, 2, previous);
        assert_eq!(again.previous_reporter, Some(previous));
        assert_eq!(again.recovered_by, sweeper);
        assert_eq!(again.recovered_at, task.started_at + Duration::seconds(5));
        assert_eq!(again.dead_worker, task.worker_id);
        assert_eq!(again.sessions_invalidated, 2);
        // A row edited by hand falls back to the reporter and the start.
        task.interrupted_by = None;
        task.interrupted_at = None;
        let again =
            RecoveredTask::reported_again(task.clone(), DeathCause::UnknownWorker, 0, previous);
        assert_eq!(again.recovered_by, previous);
        assert_eq!(again.recovered_at, task.started_at);
    }

    #[test]
    fn recovered_tasks_sort_by_start_then_id() {
        let mut later = recovered(None, DeathCause::UnknownWorker);
        later.task.started_at += Duration::seconds(1);
        let mut first = recovered(None, DeathCause::UnknownWorker);
        first.task.id = "0196c0de-0000-7000-a000-000000000000".parse().expect("id");
        let second = recovered(None, DeathCause::UnknownWorker);
        let mut all = vec![later.clone(), second.clone(), first.clone()];
        sort_recovered(&mut all);
        assert_eq!(all, vec![first, second, later]);
        assert_eq!(interrupted_session_reason("stop"), "task interrupted: stop");
    }

    #[test]
    fn a_row_names_its_issue_and_ends_at_its_finish_else_its_interrupt_else_its_start() {
        let mut row = recovered(None, DeathCause::UnknownWorker).task;
        assert_eq!(row.repo_issue(), "acme/widgets#1104");
        let started_at = row.started_at;
        assert_eq!(row.ended_at(), started_at, "no end recorded");
        row.interrupted_at = Some(started_at + Duration::seconds(5));
        assert_eq!(row.ended_at(), started_at + Duration::seconds(5));
        row.finished_at = Some(started_at + Duration::seconds(9));
        assert_eq!(row.ended_at(), started_at + Duration::seconds(9));
    }

    #[test]
    fn a_prune_selects_final_rows_that_ended_before_the_cut_off_with_a_chosen_status() {
        let mut row = recovered(None, DeathCause::UnknownWorker).task;
        row.status = TaskStatus::Failure;
        row.finished_at = Some(row.started_at + Duration::seconds(60));
        let ended = row.ended_at();
        let request = |cut_off, statuses: Vec<TaskStatus>| PruneRequest {
            cut_off,
            statuses,
            dry_run: false,
            batch_size: 100,
        };
        let after = ended + Duration::microseconds(1);
        assert!(request(after, vec![]).selects(&row));
        assert!(
            !request(ended, vec![]).selects(&row),
            "ended at the cut-off: kept"
        );
        assert!(request(after, vec![TaskStatus::Failure]).selects(&row));
        assert!(!request(after, vec![TaskStatus::Success]).selects(&row));
        row.status = TaskStatus::Running;
        assert!(
            !request(after, vec![]).selects(&row),
            "running is never pruned"
        );
        assert!(!request(after, vec![TaskStatus::Running]).selects(&row));
    }

    #[test]
    fn the_recovery_line_says_everything_an_operator_needs_in_one_line() {
        let worker: WorkerId = "0196c0de-0000-7000-a000-0000000000ff".parse().expect("id");
        let lease_expired = DeathCause::LeaseExpired {
            host: "gpu-7".into(),
            last_heartbeat: recovered(None, DeathCause::UnknownWorker).task.started_at,
            lease: Duration::seconds(15),
        };
        assert_eq!(
            recovered(Some(worker), lease_expired).hint(),
            "[recovery] task 0196c0de-0000-7000-a000-000000000001 (acme/widgets#1104) \
             agent=fixer model=claude-opus worker=0196c0de-0000-7000-a000-0000000000ff \
             started_at=2026-05-11T15:13:02Z ran_for=1h02m03s marked interrupted: \
             no heartbeat from gpu-7 since 2026-05-11T15:13:02Z (lease 15s); 1 session(s) invalidated"
        );
        assert_eq!(
            recovered(None, DeathCause::UnknownWorker).hint(),
            "[recovery] task 0196c0de-0000-7000-a000-000000000001 (acme/widgets#1104) \
             agent=fixer model=claude-opus worker=none \
             started_at=2026-05-11T15:13:02Z ran_for=1h02m03s marked interrupted: \
             row names no registered worker; 1 session(s) invalidated"
        );
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(human_duration(Duration::seconds(6)), "6s");
        assert_eq!(human_duration(Duration::seconds(36 * 60 + 5)), "36m05s");
        assert_eq!(human_duration(Duration::seconds(3723)), "1h02m03s");
        assert_eq!(human_duration(Duration::seconds(-4)), "0s");
    }

    #[test]
    fn a_host_name_or_row_value_with_a_newline_cannot_forge_a_second_line() {
        let forged = DeathCause::ProcessGone {
            host: "vm\n[recovery] task 00000000-0000-0000-0000-000000000000 (fake#1)".into(),
            pid: 7,
        };
        let mut task = recovered(None, forged.clone());
        task.task.repo = "acme/\u{1b}[2Jwidgets".into();
        let hint = task.hint();
        assert_eq!(hint.lines().count(), 1, "{hint}");
        assert!(!hint.chars().any(char::is_control), "{hint:?}");
        assert!(hint.contains("vm\\n[recovery]"), "{hint}");
        let reason = recovery_reason(None, &forged);
        assert!(!reason.chars().any(char::is_control), "{reason:?}");
        assert_eq!(escape_control_characters("plain"), "plain");
    }
}
