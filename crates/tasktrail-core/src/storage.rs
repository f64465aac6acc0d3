//! The [`Storage`] trait every backend implements, its error type, and the
//! conveniences built on top of it ([`StorageExt`]).

use std::error::Error as StdError;

use crate::clock::Timestamp;
use crate::ids::{TaskId, WorkerId};
use crate::record::{
    FinishRow, FinishWrite, NewRunningRow, NewSession, RecoveredTask, RecoveryRequest, SessionKey,
    SessionRecord, SweepMode, TaskFilter, TaskRecord,
};
use crate::status::TaskStatus;
use crate::worker::{LivenessJudge, WorkerRecord, WorkerRegistration};

/// A boxed backend error kept as the source of a [`StorageError`].
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Everything a backend can report. Backends map their private errors onto
/// these kinds; callers match on the kind, never on a message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// An INSERT found a row with this task id already there. Nothing was
    /// written.
    #[error("task {id} already has a task_history row")]
    DuplicateTask {
        /// The id.
        id: TaskId,
    },
    /// A worker registered twice with the same id.
    #[error("worker {id} is already registered")]
    DuplicateWorker {
        /// The id.
        id: WorkerId,
    },
    /// A session id was recorded twice.
    #[error("session is already recorded")]
    DuplicateSession,
    /// The worker is not registered.
    #[error("worker {id} is not registered")]
    UnknownWorker {
        /// The id.
        id: WorkerId,
    },
    /// A recovery sweep declared this worker dead (or it deregistered): it
    /// must stop writing. Its rows are no longer its own.
    #[error("worker {id} was declared dead or has stopped; it must stop writing")]
    WorkerNotAlive {
        /// The id.
        id: WorkerId,
    },
    /// A session was recorded for a task that is not `running` under the
    /// recording worker.
    #[error("task {id} is not running under this worker")]
    TaskNotRunning {
        /// The id.
        id: TaskId,
    },
    /// A transient failure: the database could not be reached or written
    /// for now, and retrying the same call later may succeed. The connection
    /// was lost or refused, the server is restarting, failing over or out of
    /// connections, the disk is full, the file is locked longer than the
    /// busy timeout, a serialization failure or deadlock. Each backend
    /// decides this from the most precise signal its driver gives (see
    /// [`StorageError::is_transient`]). A `Worker` keeps a finished
    /// outcome that hit this and retries it until it lands.
    #[error("storage is unavailable: {source}")]
    Unavailable {
        /// The backend's error.
        #[source]
        source: BoxError,
    },
    /// The database answered but refuses this configuration: the password
    /// or role was refused, the database does not exist, the file is
    /// read-only. Retrying does not help until an operator changes the
    /// configuration (a permanent failure).
    #[error("storage refused access: {source}")]
    AccessDenied {
        /// The backend's error.
        #[source]
        source: BoxError,
    },
    /// A stored row could not be read as a tasktrail record (an unknown
    /// status, artifacts that are not JSON, a negative token count...).
    #[error("stored row is invalid: {detail}")]
    CorruptRow {
        /// What was wrong, naming the row.
        detail: String,
    },
    /// The database is not a tasktrail database, or was migrated by a newer
    /// tasktrail than this one.
    #[error("incompatible database: {detail}")]
    Incompatible {
        /// What was found.
        detail: String,
    },
    /// Anything else the backend reported.
    #[error("storage error: {source}")]
    Other {
        /// The backend's error.
        #[source]
        source: BoxError,
    },
}

impl StorageError {
    /// Whether the failure is transient: the same call may succeed later
    /// without anyone changing anything ([`StorageError::Unavailable`]).
    /// Every other kind is permanent: a domain answer (`DuplicateTask`,
    /// `WorkerNotAlive`...) or a failure retrying cannot fix
    /// (`AccessDenied`, `Incompatible`, `CorruptRow`, `Other`).
    ///
    /// Backends classify their driver's errors in one place each:
    /// `tasktrail-diesel`'s `sqlite` and `postgres` modules.
    pub fn is_transient(&self) -> bool {
        matches!(self, StorageError::Unavailable { .. })
    }
}

/// The methods a storage backend must implement: one per statement (or
/// transaction) the lifecycle needs, nothing more. Conveniences live in
/// [`StorageExt`].
///
/// Every backend passes the shared behaviour suite
/// (`tasktrail_core::conformance`, behind the `conformance` feature).
///
/// Contracts every implementation keeps:
/// - [`insert_running`](Storage::insert_running) is the only method that
///   INSERTs into `task_history`, and it never overwrites: a second INSERT of
///   the same id fails with [`StorageError::DuplicateTask`].
/// - [`finish_running`](Storage::finish_running) is a single UPDATE guarded
///   by `id`, `status = 'running'` and `worker_id`; when it matches nothing
///   it writes nothing and says why. It never INSERTs.
/// - [`recover_orphans`](Storage::recover_orphans) runs in one transaction:
///   every transitioned row, invalidated session and dead worker is written
///   together or not at all, and a row is reported by exactly one sweep.
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
    /// it the [`OwnerFacts`](crate::OwnerFacts) the store gathered (the
    /// owner's row, its silence on the store's clock, what the store sees of
    /// its session; `None` for a row that names no registered worker). The
    /// judge decides; the store never overrides it. The sweep then marks the
    /// rows of dead owners `interrupted` (`finished_at`, tokens and cost stay
    /// NULL), invalidates their sessions, marks the owners `dead`, and
    /// returns what it did. With [`SweepMode::DryRun`] it writes nothing.
    fn recover_orphans(
        &self,
        request: &RecoveryRequest,
        judge: &dyn LivenessJudge,
    ) -> Result<Vec<RecoveredTask>, StorageError>;

    /// Records the SDK session a running task runs under.
    fn record_session(&self, session: &NewSession) -> Result<(), StorageError>;

    /// The newest session for `key` that may be resumed: not invalidated,
    /// and its task no longer `running`.
    fn resumable_session(&self, key: &SessionKey) -> Result<Option<SessionRecord>, StorageError>;

    /// Every session, newest first.
    fn list_sessions(&self) -> Result<Vec<SessionRecord>, StorageError>;

    /// One row.
    fn get_task(&self, id: TaskId) -> Result<Option<TaskRecord>, StorageError>;

    /// Rows matching `filter`, newest `started_at` first.
    fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>, StorageError>;
}

/// Conveniences on top of any [`Storage`].
pub trait StorageExt: Storage {
    /// Every `running` row.
    fn running_tasks(&self) -> Result<Vec<TaskRecord>, StorageError> {
        self.list_tasks(&TaskFilter {
            status: Some(TaskStatus::Running),
            ..TaskFilter::default()
        })
    }

    /// What a sweep by `recovering_worker` would do now, without doing it.
    fn preview_recovery(
        &self,
        recovering_worker: WorkerId,
        now: Timestamp,
        judge: &dyn LivenessJudge,
    ) -> Result<Vec<RecoveredTask>, StorageError> {
        self.recover_orphans(
            &RecoveryRequest {
                recovering_worker,
                now,
                mode: SweepMode::DryRun,
            },
            judge,
        )
    }
}

impl<S: Storage + ?Sized> StorageExt for S {}

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
            fn record_session(&self, session: &NewSession) -> Result<(), StorageError> {
                (**self).record_session(session)
            }
            fn resumable_session(&self, key: &SessionKey) -> Result<Option<SessionRecord>, StorageError> {
                (**self).resumable_session(key)
            }
            fn list_sessions(&self) -> Result<Vec<SessionRecord>, StorageError> {
                (**self).list_sessions()
            }
            fn get_task(&self, id: TaskId) -> Result<Option<TaskRecord>, StorageError> {
                (**self).get_task(id)
            }
            fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>, StorageError> {
                (**self).list_tasks(filter)
            }
        }
    )+};
}

forward_storage_through!(&S, std::sync::Arc<S>, Box<S>);
