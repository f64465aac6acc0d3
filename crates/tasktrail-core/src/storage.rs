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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::backend::OwnerFacts;
    use crate::{
        Clock, DeathCause, Liveness, ManualClock, MemoryStorage, Outcome, RegisteredWorker,
        RunReport, Task, TaskSpec, TaskSpecInput, WorkerRegistration,
    };

    fn boxed(message: &str) -> BoxError {
        message.to_owned().into()
    }

    #[test]
    fn only_an_unavailable_store_is_a_transient_failure() {
        assert!(StorageError::Unavailable {
            source: boxed("connection refused")
        }
        .is_transient());
        for permanent in [
            StorageError::AccessDenied {
                source: boxed("password refused"),
            },
            StorageError::DuplicateSession,
            StorageError::CorruptRow {
                detail: "cost_usd is negative".into(),
            },
            StorageError::Other {
                source: boxed("disk I/O error"),
            },
        ] {
            assert!(!permanent.is_transient(), "{permanent:?}");
        }
    }

    struct EveryOwnerDead;

    impl LivenessJudge for EveryOwnerDead {
        fn judge(&self, _owner: Option<&OwnerFacts>) -> Liveness {
            Liveness::Dead(DeathCause::DeclaredDead)
        }
    }

    #[test]
    fn running_tasks_and_a_recovery_preview_see_only_running_rows_and_change_nothing() {
        let storage = MemoryStorage::new();
        let clock = ManualClock::starting_at(
            chrono::DateTime::<chrono::Utc>::UNIX_EPOCH + chrono::Duration::days(20_000),
        );
        let worker = RegisteredWorker::register(
            &storage,
            WorkerRegistration {
                id: WorkerId::new_random(),
                host: "vm-1".into(),
                pid: 41,
                process_start_marker: "boot:41".into(),
                host_identity: None,
                started_at: clock.now(),
            },
            Arc::new(clock.clone()),
        )
        .expect("register");
        let spec = |issue_number| {
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
        };
        let running = Task::queue(spec(1))
            .start(&worker, &storage)
            .expect("start");
        let report = RunReport {
            input_tokens: 1,
            output_tokens: 1,
            cost_usd: crate::CostUsd::new(0.0).expect("cost"),
            turns: 1,
            artifacts: vec![],
        };
        Task::queue(spec(2))
            .start(&worker, &storage)
            .expect("start")
            .finish(Outcome::Success(report), &storage)
            .expect("finish");
        let listed: Vec<TaskId> = storage
            .running_tasks()
            .expect("running")
            .iter()
            .map(|row| row.id)
            .collect();
        assert_eq!(listed, vec![running.id()]);
        let preview = storage
            .preview_recovery(WorkerId::new_random(), clock.now(), &EveryOwnerDead)
            .expect("preview");
        assert_eq!(
            preview.iter().map(|r| r.task.id).collect::<Vec<_>>(),
            vec![running.id()]
        );
        assert_eq!(
            storage
                .get_task(running.id())
                .expect("row")
                .map(|row| row.status),
            Some(TaskStatus::Running),
            "a preview writes nothing"
        );
        drop(running);
    }
}
