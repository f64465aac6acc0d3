//! What a backend author implements: the [`Storage`] trait, the rows and
//! commands its methods take and return, and the facts a recovery sweep hands
//! the liveness judge.
//!
//! A server that only *uses* a store needs none of this beyond the trait
//! name (re-exported at the crate root so its methods are in scope); the
//! types here are the implementer's side of the API. Every implementation
//! must pass the shared behaviour suite (`tasktrail_core::conformance`,
//! behind the `testing` feature).
//!
//! The rows and commands are not at the crate root, so user code cannot
//! reach for them by accident:
//!
//! ```compile_fail,E0432
//! use tasktrail_core::NewRunningRow;
//! ```
//!
//! ```
//! use tasktrail_core::backend::{NewRunningRow, Storage};
//! ```

use std::error::Error as StdError;

use crate::clock::Timestamp;
use crate::ids::{TaskId, WorkerId};
use crate::overview::{outcome_buckets, status_counts, OutcomeBucket};
use crate::record::{RecoveredTask, SessionKey, SessionRecord, TaskFilter, TaskRecord};
use crate::storage::StorageError;
use crate::worker::{WorkerRecord, WorkerRegistration};

pub use crate::record::{
    escape_control_characters, human_duration, interrupted_session_reason, recovery_reason,
    sort_recovered, ClaimedReports, FinishRefusal, FinishRow, FinishWrite, NewRunningRow,
    NewSession, OwnerRecovery, RecoveryRequest, ReportClaim, SweepMode,
};
pub use crate::worker::{
    LivenessJudge, LockWatch, NoticingJudge, OwnerFacts, OwnerLock, PolicyJudge,
};

/// A boxed backend error kept as the source of a [`StorageError`].
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// The methods a storage backend must implement: one per statement (or
/// transaction) the lifecycle needs, nothing more. Conveniences live in
/// [`StorageExt`](crate::StorageExt).
///
/// Every backend passes the shared behaviour suite
/// (`tasktrail_core::conformance`, behind the `testing` feature).
///
/// Contracts every implementation keeps:
/// - [`insert_running`](Storage::insert_running) is the only method that
///   INSERTs into `task_history`, and it never overwrites: a second INSERT of
///   the same id fails with [`StorageError::DuplicateTask`].
/// - [`finish_running`](Storage::finish_running) is a single UPDATE guarded
///   by `id`, `status = 'running'` and `worker_id`; when it matches nothing
///   it writes nothing and says why. It never INSERTs.
/// - [`recover_orphans`](Storage::recover_orphans) runs in one transaction:
///   every transitioned row, invalidated session, dead worker and owed
///   report is written together or not at all, and a row is reported by
///   exactly one sweep.
/// - A recovered row's report is owed until its reporter confirms it
///   ([`confirm_reports`](Storage::confirm_reports)); a report whose
///   reporter died unconfirmed is handed to exactly one later claimant
///   ([`claim_unreported_recoveries`](Storage::claim_unreported_recoveries)).
pub trait Storage: Send + Sync {
    /// Inserts a `workers` row (state `alive`, heartbeat = `started_at`, or
    /// the store's own time when it measures silence on its own clock, as
    /// Postgres does with the database's).
    fn register_worker(&self, registration: &WorkerRegistration) -> Result<(), StorageError>;

    /// Moves the worker's heartbeat to `at` (never backwards; a store that
    /// measures silence on its own clock writes that clock's time instead).
    /// Fails with [`StorageError::WorkerNotAlive`] once a sweep declared it
    /// dead.
    fn heartbeat_worker(&self, worker: WorkerId, at: Timestamp) -> Result<(), StorageError>;

    /// Marks the worker `stopped` on a clean shutdown.
    fn deregister_worker(&self, worker: WorkerId, at: Timestamp) -> Result<(), StorageError>;

    /// Every `workers` row.
    fn list_workers(&self) -> Result<Vec<WorkerRecord>, StorageError>;

    /// INSERTs the `running` row of a starting task; fails with
    /// [`StorageError::WorkerNotAlive`] if the worker is not `alive`.
    fn insert_running(&self, row: &NewRunningRow) -> Result<(), StorageError>;

    /// The single guarded UPDATE of a finish. A finish with
    /// [`Outcome::Interrupted`](crate::Outcome::Interrupted) also
    /// invalidates the task's sessions, in the same transaction.
    fn finish_running(&self, row: &FinishRow) -> Result<FinishWrite, StorageError>;

    /// The boot-time sweep, in one transaction: asks `judge` about the owner
    /// of every `running` row (except `request.recovering_worker`), handing
    /// it the [`OwnerFacts`] the store gathered (the
    /// owner's row, its silence on the store's clock, what the store sees of
    /// its session; `None` for a row that names no registered worker). The
    /// judge decides; the store never overrides it. The sweep then marks the
    /// rows of dead owners `interrupted` (`finished_at`, tokens and cost stay
    /// NULL), invalidates their sessions, marks the owners `dead`, and
    /// returns what it did. In the same transaction it records one report
    /// per recovered row, owed by `request.recovering_worker` until
    /// confirmed. With [`SweepMode::DryRun`] it writes nothing.
    fn recover_orphans(
        &self,
        request: &RecoveryRequest,
        judge: &dyn LivenessJudge,
    ) -> Result<Vec<RecoveredTask>, StorageError>;

    /// Takes over, in one transaction, the recovery reports nobody alive
    /// will deliver: those owed by a worker `judge` finds dead (the owner's
    /// facts are gathered as for [`recover_orphans`](Storage::recover_orphans);
    /// `None` for an owner that names no registered worker), and those the
    /// claimant owes itself and has not confirmed. Each comes back once, as
    /// the task is now, with [`RecoveredTask::previous_reporter`] set, and
    /// is owed by the claimant from then on. Two claims at once never take
    /// the same report. Owners are not marked dead here: only their duty to
    /// report moves.
    fn claim_unreported_recoveries(
        &self,
        claim: &ReportClaim,
        judge: &dyn LivenessJudge,
    ) -> Result<Vec<RecoveredTask>, StorageError>;

    /// Marks the reports of `tasks` delivered at `at`, for the ones
    /// `reporter` still owes (a report another claimant took over stays
    /// owed by it). Returns how many it confirmed.
    fn confirm_reports(
        &self,
        reporter: WorkerId,
        tasks: &[TaskId],
        at: Timestamp,
    ) -> Result<u64, StorageError>;

    /// Records the SDK session a running task runs under.
    fn record_session(&self, session: &NewSession) -> Result<(), StorageError>;

    /// The newest session for `key` that may be resumed: not invalidated,
    /// and its task no longer `running`.
    fn resumable_session(&self, key: &SessionKey) -> Result<Option<SessionRecord>, StorageError>;

    /// Every session, newest first.
    fn list_sessions(&self) -> Result<Vec<SessionRecord>, StorageError>;

    /// The sessions of one task, newest first.
    ///
    /// Provided: the default filters [`list_sessions`](Storage::list_sessions);
    /// the SQL backends override it with a read through the sessions' index
    /// on `task_id`.
    fn list_task_sessions(&self, task: TaskId) -> Result<Vec<SessionRecord>, StorageError> {
        let mut sessions = self.list_sessions()?;
        sessions.retain(|session| session.task_id == task);
        Ok(sessions)
    }

    /// One row.
    fn get_task(&self, id: TaskId) -> Result<Option<TaskRecord>, StorageError>;

    /// Rows matching `filter`, newest `started_at` first.
    fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>, StorageError>;

    /// Rows matching `filter` like [`list_tasks`](Storage::list_tasks),
    /// each decoded on its own: a row that cannot be read as a record comes
    /// back as its own [`StorageError::CorruptRow`] (naming the row, the
    /// column and the problem) in its place, and never hides the others.
    /// The outer error is for the query itself.
    ///
    /// Provided: the default reads through `list_tasks`, so one bad row
    /// fails the whole page. A backend whose rows can hold what it cannot
    /// decode (the SQL ones: other programs write those tables) overrides
    /// it.
    fn list_task_rows(
        &self,
        filter: &TaskFilter,
    ) -> Result<Vec<Result<TaskRecord, StorageError>>, StorageError> {
        Ok(self.list_tasks(filter)?.into_iter().map(Ok).collect())
    }

    /// How many rows of `repo` (every repo when `None`) have each status:
    /// every status in [`TaskStatus::ALL`](crate::TaskStatus::ALL) order,
    /// zero included ([`status_counts`](crate::status_counts) is the
    /// definition).
    ///
    /// Provided: the default reads every row through `list_tasks`; the SQL
    /// backends override it with one `GROUP BY` over an index.
    fn count_tasks_by_status(
        &self,
        repo: Option<&str>,
    ) -> Result<Vec<(crate::TaskStatus, u64)>, StorageError> {
        let filter = TaskFilter {
            repo: repo.map(str::to_owned),
            ..TaskFilter::default()
        };
        Ok(status_counts(&self.list_tasks(&filter)?, repo))
    }

    /// The final rows that ended (`finished_at`, else `interrupted_at`) at
    /// or after `since`, counted by the UTC hour they ended in and their
    /// status: only non-zero buckets, oldest hour first, statuses in
    /// [`TaskStatus::ALL`](crate::TaskStatus::ALL) order within an hour
    /// ([`outcome_buckets`](crate::outcome_buckets) is the definition).
    ///
    /// Provided: the default reads every row through `list_tasks`; the SQL
    /// backends override it with one `GROUP BY`.
    fn count_outcomes_by_hour(&self, since: Timestamp) -> Result<Vec<OutcomeBucket>, StorageError> {
        Ok(outcome_buckets(
            &self.list_tasks(&TaskFilter::default())?,
            since,
        ))
    }
}

/// Implements [`Storage`] for a pointer type by forwarding every method.
macro_rules! forward_storage_through {
    ($($pointer:ty),+) => {$(
        impl<S: Storage + ?Sized> Storage for $pointer {
            fn register_worker(&self, registration: &WorkerRegistration) -> Result<(), StorageError> {
                (**self).register_worker(registration)
            }
            fn heartbeat_worker(&self, worker: WorkerId, at: Timestamp) -> Result<(), StorageError> {
                (**self).heartbeat_worker(worker, at)
            }
            fn deregister_worker(&self, worker: WorkerId, at: Timestamp) -> Result<(), StorageError> {
                (**self).deregister_worker(worker, at)
            }
            fn list_workers(&self) -> Result<Vec<WorkerRecord>, StorageError> {
                (**self).list_workers()
            }
            fn insert_running(&self, row: &NewRunningRow) -> Result<(), StorageError> {
                (**self).insert_running(row)
            }
            fn finish_running(&self, row: &FinishRow) -> Result<FinishWrite, StorageError> {
                (**self).finish_running(row)
            }
            fn recover_orphans(
                &self,
                request: &RecoveryRequest,
                judge: &dyn LivenessJudge,
            ) -> Result<Vec<RecoveredTask>, StorageError> {
                (**self).recover_orphans(request, judge)
            }
            fn claim_unreported_recoveries(
                &self,
                claim: &ReportClaim,
                judge: &dyn LivenessJudge,
            ) -> Result<Vec<RecoveredTask>, StorageError> {
                (**self).claim_unreported_recoveries(claim, judge)
            }
            fn confirm_reports(
                &self,
                reporter: WorkerId,
                tasks: &[TaskId],
                at: Timestamp,
            ) -> Result<u64, StorageError> {
                (**self).confirm_reports(reporter, tasks, at)
            }
            fn record_session(&self, session: &NewSession) -> Result<(), StorageError> {
                (**self).record_session(session)
            }
            fn resumable_session(&self, key: &SessionKey) -> Result<Option<SessionRecord>, StorageError> {
                (**self).resumable_session(key)
            }
            fn list_sessions(&self) -> Result<Vec<SessionRecord>, StorageError> {
                (**self).list_sessions()
            }
            fn list_task_sessions(&self, task: TaskId) -> Result<Vec<SessionRecord>, StorageError> {
                (**self).list_task_sessions(task)
            }
            fn get_task(&self, id: TaskId) -> Result<Option<TaskRecord>, StorageError> {
                (**self).get_task(id)
            }
            fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>, StorageError> {
                (**self).list_tasks(filter)
            }
            fn list_task_rows(
                &self,
                filter: &TaskFilter,
            ) -> Result<Vec<Result<TaskRecord, StorageError>>, StorageError> {
                (**self).list_task_rows(filter)
            }
            fn count_tasks_by_status(
                &self,
                repo: Option<&str>,
            ) -> Result<Vec<(crate::TaskStatus, u64)>, StorageError> {
                (**self).count_tasks_by_status(repo)
            }
            fn count_outcomes_by_hour(
                &self,
                since: Timestamp,
            ) -> Result<Vec<OutcomeBucket>, StorageError> {
                (**self).count_outcomes_by_hour(since)
            }
        }
    )+};
}

forward_storage_through!(&S, std::sync::Arc<S>, Box<S>);
