//! Test tooling (feature `testing`): a store wrapper that runs a hook ahead
//! of every call, to delay it, gate it, or fail it the way a real outage
//! would, without writing a `Storage` implementation per test.

use crate::backend::{
    FinishRow, FinishWrite, LivenessJudge, NewRunningRow, NewSession, RecoveryRequest, ReportClaim,
    Storage,
};
use crate::clock::Timestamp;
use crate::ids::{TaskId, WorkerId};
use crate::record::{RecoveredTask, SessionKey, SessionRecord, TaskFilter, TaskRecord};
use crate::storage::StorageError;
use crate::worker::{WorkerRecord, WorkerRegistration};

/// Which [`Storage`] method a call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StorageCall {
    /// [`Storage::register_worker`].
    RegisterWorker,
    /// [`Storage::heartbeat_worker`].
    HeartbeatWorker,
    /// [`Storage::deregister_worker`].
    DeregisterWorker,
    /// [`Storage::list_workers`].
    ListWorkers,
    /// [`Storage::insert_running`].
    InsertRunning,
    /// [`Storage::finish_running`].
    FinishRunning,
    /// [`Storage::recover_orphans`].
    RecoverOrphans,
    /// [`Storage::claim_unreported_recoveries`].
    ClaimUnreportedRecoveries,
    /// [`Storage::confirm_reports`].
    ConfirmReports,
    /// [`Storage::record_session`].
    RecordSession,
    /// [`Storage::resumable_session`].
    ResumableSession,
    /// [`Storage::list_sessions`].
    ListSessions,
    /// [`Storage::get_task`].
    GetTask,
    /// [`Storage::list_tasks`] and [`Storage::list_task_rows`].
    ListTasks,
    /// [`Storage::count_tasks_by_status`].
    CountTasksByStatus,
    /// [`Storage::count_outcomes_by_hour`].
    CountOutcomesByHour,
}

type Hook = Box<dyn Fn(StorageCall) -> Result<(), StorageError> + Send + Sync>;

/// `inner`, with `before` run ahead of every call: it may sleep or wait
/// (the call then runs late), or return an error (the call then fails with
/// it and `inner` is not touched).
pub struct InterceptedStorage<S> {
    inner: S,
    before: Hook,
}

impl<S> std::fmt::Debug for InterceptedStorage<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InterceptedStorage").finish_non_exhaustive()
    }
}

impl<S: Storage> InterceptedStorage<S> {
    /// Wraps `inner`.
    pub fn new(
        inner: S,
        before: impl Fn(StorageCall) -> Result<(), StorageError> + Send + Sync + 'static,
    ) -> Self {
        Self {
            inner,
            before: Box::new(before),
        }
    }

    /// The wrapped store (calls on it skip the hook).
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: Storage> Storage for InterceptedStorage<S> {
    fn register_worker(&self, registration: &WorkerRegistration) -> Result<(), StorageError> {
        (self.before)(StorageCall::RegisterWorker)?;
        self.inner.register_worker(registration)
    }
    fn heartbeat_worker(&self, worker: WorkerId, at: Timestamp) -> Result<(), StorageError> {
        (self.before)(StorageCall::HeartbeatWorker)?;
        self.inner.heartbeat_worker(worker, at)
    }
    fn deregister_worker(&self, worker: WorkerId, at: Timestamp) -> Result<(), StorageError> {
        (self.before)(StorageCall::DeregisterWorker)?;
        self.inner.deregister_worker(worker, at)
    }
    fn list_workers(&self) -> Result<Vec<WorkerRecord>, StorageError> {
        (self.before)(StorageCall::ListWorkers)?;
        self.inner.list_workers()
    }
    fn insert_running(&self, row: &NewRunningRow) -> Result<(), StorageError> {
        (self.before)(StorageCall::InsertRunning)?;
        self.inner.insert_running(row)
    }
    fn finish_running(&self, row: &FinishRow) -> Result<FinishWrite, StorageError> {
        (self.before)(StorageCall::FinishRunning)?;
        self.inner.finish_running(row)
    }
    fn recover_orphans(
        &self,
        request: &RecoveryRequest,
        judge: &dyn LivenessJudge,
    ) -> Result<Vec<RecoveredTask>, StorageError> {
        (self.before)(StorageCall::RecoverOrphans)?;
        self.inner.recover_orphans(request, judge)
    }
    fn claim_unreported_recoveries(
        &self,
        claim: &ReportClaim,
        judge: &dyn LivenessJudge,
    ) -> Result<Vec<RecoveredTask>, StorageError> {
        (self.before)(StorageCall::ClaimUnreportedRecoveries)?;
        self.inner.claim_unreported_recoveries(claim, judge)
    }
    fn confirm_reports(
        &self,
        reporter: WorkerId,
        tasks: &[TaskId],
        at: Timestamp,
    ) -> Result<u64, StorageError> {
        (self.before)(StorageCall::ConfirmReports)?;
        self.inner.confirm_reports(reporter, tasks, at)
    }
    fn record_session(&self, session: &NewSession) -> Result<(), StorageError> {
        (self.before)(StorageCall::RecordSession)?;
        self.inner.record_session(session)
    }
    fn resumable_session(&self, key: &SessionKey) -> Result<Option<SessionRecord>, StorageError> {
        (self.before)(StorageCall::ResumableSession)?;
        self.inner.resumable_session(key)
    }
    fn list_sessions(&self) -> Result<Vec<SessionRecord>, StorageError> {
        (self.before)(StorageCall::ListSessions)?;
        self.inner.list_sessions()
    }
    fn list_task_sessions(&self, task: TaskId) -> Result<Vec<SessionRecord>, StorageError> {
        (self.before)(StorageCall::ListSessions)?;
        self.inner.list_task_sessions(task)
    }
    fn get_task(&self, id: TaskId) -> Result<Option<TaskRecord>, StorageError> {
        (self.before)(StorageCall::GetTask)?;
        self.inner.get_task(id)
    }
    fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>, StorageError> {
        (self.before)(StorageCall::ListTasks)?;
        self.inner.list_tasks(filter)
    }
    fn list_task_rows(
        &self,
        filter: &TaskFilter,
    ) -> Result<Vec<Result<TaskRecord, StorageError>>, StorageError> {
        (self.before)(StorageCall::ListTasks)?;
        self.inner.list_task_rows(filter)
    }
    fn count_tasks_by_status(
        &self,
        repo: Option<&str>,
    ) -> Result<Vec<(crate::TaskStatus, u64)>, StorageError> {
        (self.before)(StorageCall::CountTasksByStatus)?;
        self.inner.count_tasks_by_status(repo)
    }
    fn count_outcomes_by_hour(
        &self,
        since: Timestamp,
    ) -> Result<Vec<crate::OutcomeBucket>, StorageError> {
        (self.before)(StorageCall::CountOutcomesByHour)?;
        self.inner.count_outcomes_by_hour(since)
    }
}
