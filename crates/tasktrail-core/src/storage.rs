//! What every caller handles and uses: [`StorageError`], and the
//! conveniences built on any [`Storage`] ([`StorageExt`]). The trait itself
//! and what implementing it takes live in [`crate::backend`].

use crate::backend::{BoxError, LivenessJudge, RecoveryRequest, Storage, SweepMode};
use crate::clock::Timestamp;
use crate::ids::{TaskId, WorkerId};
use crate::record::{RecoveredTask, TaskFilter, TaskRecord};
use crate::status::TaskStatus;

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
    /// The database could not be reached or written: connection refused,
    /// locked for longer than the busy timeout, disk full, read-only file.
    /// Retrying later may succeed.
    #[error("storage is unavailable: {source}")]
    Unavailable {
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
    /// An existing database cannot be adopted as it is: each difference
    /// between what it holds and the pre-fix schema adoption starts from.
    /// Nothing was changed.
    #[error("cannot adopt this database: {}", differences.join("; "))]
    NotAdoptable {
        /// One line each: a missing or mistyped column, an extra column, a
        /// value the schema cannot hold, a table that is in the way.
        differences: Vec<String>,
    },
    /// Anything else the backend reported.
    #[error("storage error: {source}")]
    Other {
        /// The backend's error.
        #[source]
        source: BoxError,
    },
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
