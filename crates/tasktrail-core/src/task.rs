//! The task typestate: `Task<Queued>` → `Task<Running>` → `Task<Finished>`.
//!
//! Each state is a type that carries its own data, bounded by a sealed
//! trait, and every transition consumes `self`:
//!
//! - [`Task<Queued>`] is made from a validated [`TaskSpec`] and a
//!   client-side id; nothing is stored yet.
//! - [`Task::start`] INSERTs the `running` row and only then returns the
//!   [`Task<Running>`]: holding one proves the row is committed.
//! - [`Task::finish`] issues the one guarded UPDATE and returns the
//!   [`Task<Finished>`]. If storage fails, the error hands the
//!   `Task<Running>` back so nothing is lost; if the row is no longer this
//!   worker's to finish, the error says what it is now. It never INSERTs.
//!
//! A task that was never started cannot be finished:
//!
//! ```compile_fail,E0599
//! use tasktrail_core::{MemoryStorage, Outcome, RunReport, Task, TaskSpec, TaskSpecInput};
//! let spec = TaskSpec::validate(TaskSpecInput::default()).unwrap();
//! let queued = Task::queue(spec);
//! // error[E0599]: no method named `finish` found for struct `Task<Queued>`
//! queued.finish(Outcome::Success(RunReport::empty()), &MemoryStorage::new());
//! ```
//!
//! and a finished task cannot be finished again:
//!
//! ```compile_fail,E0599
//! # use tasktrail_core::*;
//! # fn f(finished: Task<Finished>, storage: &MemoryStorage) {
//! finished.finish(Outcome::Success(RunReport::empty()), storage);
//! # }
//! ```
//!
//! No other crate can add a state (the trait is sealed):
//!
//! ```compile_fail,E0277
//! #[derive(Debug)]
//! struct Forged;
//! impl tasktrail_core::TaskState for Forged {}
//! ```
//!
//! nor build a `Task<Running>` without a committed start:
//!
//! ```compile_fail,E0451
//! # use tasktrail_core::*;
//! # fn f(id: TaskId, spec: TaskSpec, state: Running) {
//! let forged = Task { id, spec, state };
//! # }
//! ```
//!
//! and an interrupted outcome cannot carry tokens or cost:
//!
//! ```compile_fail,E0308
//! # use tasktrail_core::*;
//! let outcome = Outcome::Interrupted(RunReport::empty());
//! ```

use std::fmt;
use std::sync::Arc;

use crate::clock::{Clock, Timestamp};
use crate::ids::{SessionId, TaskId, WorkerId};
use crate::outcome::Outcome;
use crate::record::{FinishRefusal, FinishRow, FinishWrite, NewRunningRow, NewSession};
use crate::spec::TaskSpec;
use crate::storage::{Storage, StorageError};
use crate::worker::WorkerRegistration;

mod sealed {
    pub trait Sealed {}
}

/// A lifecycle state of a [`Task`]. Sealed: only this crate defines states.
pub trait TaskState: sealed::Sealed + fmt::Debug {}

/// Dispatched, not started: no row exists yet.
#[derive(Debug)]
pub struct Queued {
    _private: (),
}

/// Started: the `running` row is committed and owned by `worker`.
#[derive(Debug)]
pub struct Running {
    worker: RunningWorker,
    started_at: Timestamp,
}

/// Finished: the guarded UPDATE matched and committed.
#[derive(Debug)]
pub struct Finished {
    worker: WorkerId,
    started_at: Timestamp,
    finished_at: Timestamp,
    outcome: Outcome,
}

impl sealed::Sealed for Queued {}
impl sealed::Sealed for Running {}
impl sealed::Sealed for Finished {}
impl TaskState for Queued {}
impl TaskState for Running {}
impl TaskState for Finished {}

/// The worker a running task belongs to, with its clock.
#[derive(Clone)]
struct RunningWorker {
    id: WorkerId,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for RunningWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.id, f)
    }
}

/// A task in state `S`. Not `Clone`: the one `Task<Running>` is the only
/// handle that can finish its row.
#[derive(Debug)]
pub struct Task<S: TaskState> {
    id: TaskId,
    spec: TaskSpec,
    state: S,
}

impl<S: TaskState> Task<S> {
    /// The task's id.
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// The task's spec.
    pub fn spec(&self) -> &TaskSpec {
        &self.spec
    }
}

/// A worker that has registered its `workers` row. Only
/// [`RegisteredWorker::register`] makes one, so a task can only be started by
/// a worker the recovery sweep knows about.
#[derive(Clone)]
pub struct RegisteredWorker {
    registration: WorkerRegistration,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for RegisteredWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegisteredWorker")
            .field("registration", &self.registration)
            .finish_non_exhaustive()
    }
}

impl RegisteredWorker {
    /// Writes the worker's `workers` row and returns the proof that it did.
    pub fn register<S: Storage + ?Sized>(
        storage: &S,
        registration: WorkerRegistration,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StorageError> {
        storage.register_worker(&registration)?;
        Ok(Self {
            registration,
            clock,
        })
    }

    /// The worker's id.
    pub fn id(&self) -> WorkerId {
        self.registration.id
    }

    /// What the worker registered.
    pub fn registration(&self) -> &WorkerRegistration {
        &self.registration
    }

    /// The worker's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Writes a heartbeat now.
    pub fn heartbeat<S: Storage + ?Sized>(&self, storage: &S) -> Result<(), StorageError> {
        storage.heartbeat_worker(self.id(), self.clock.now())
    }

    /// Marks the worker `stopped`. Consumes the worker: it cannot start
    /// anything afterwards.
    pub fn deregister<S: Storage + ?Sized>(self, storage: &S) -> Result<(), StorageError> {
        storage.deregister_worker(self.id(), self.clock.now())
    }
}

impl Task<Queued> {
    /// Dispatches a task under a fresh time-ordered id
    /// ([`TaskId::new_time_ordered`]). Nothing is stored until
    /// [`start`](Task::start).
    pub fn queue(spec: TaskSpec) -> Self {
        Self::queue_with_id(TaskId::new_time_ordered(), spec)
    }

    /// Dispatches a task under an id the caller chose.
    pub fn queue_with_id(id: TaskId, spec: TaskSpec) -> Self {
        Self {
            id,
            spec,
            state: Queued { _private: () },
        }
    }

    /// Starts the task: INSERTs its `running` row (the worker's
    /// `starting <id>` moment) and returns the running task only once the
    /// row is committed. On error nothing was written and the queued task
    /// comes back in the error.
    pub fn start<S: Storage + ?Sized>(
        self,
        worker: &RegisteredWorker,
        storage: &S,
    ) -> Result<Task<Running>, StartError> {
        let started_at = worker.clock.now();
        let row = NewRunningRow {
            id: self.id,
            spec: self.spec.clone(),
            worker: worker.id(),
            started_at,
        };
        match storage.insert_running(&row) {
            Ok(()) => Ok(Task {
                id: self.id,
                spec: self.spec,
                state: Running {
                    worker: RunningWorker {
                        id: worker.id(),
                        clock: Arc::clone(&worker.clock),
                    },
                    started_at,
                },
            }),
            Err(error) => Err(StartError {
                error,
                task: Box::new(self),
            }),
        }
    }
}

/// A start that wrote nothing; holds the queued task so it can be retried.
#[derive(Debug, thiserror::Error)]
#[error("could not start task: {error}")]
pub struct StartError {
    /// Why.
    #[source]
    pub error: StorageError,
    task: Box<Task<Queued>>,
}

impl StartError {
    /// The queued task, to retry or drop.
    pub fn into_task(self) -> Task<Queued> {
        *self.task
    }
}

impl Task<Running> {
    /// The owning worker.
    pub fn worker(&self) -> WorkerId {
        self.state.worker.id
    }

    /// When the row was inserted.
    pub fn started_at(&self) -> Timestamp {
        self.state.started_at
    }

    /// Records the SDK session this task runs under, so a later task on the
    /// same `repo#issue` and agent may resume it (unless it is invalidated).
    pub fn record_session<S: Storage + ?Sized>(
        &self,
        session_id: SessionId,
        storage: &S,
    ) -> Result<(), StorageError> {
        storage.record_session(&NewSession {
            session_id,
            task_id: self.id,
            worker: self.state.worker.id,
            repo: self.spec.repo().to_owned(),
            issue_number: self.spec.issue_number(),
            agent: self.spec.agent().to_owned(),
            created_at: self.state.worker.clock.now(),
        })
    }

    /// Finishes the task with exactly one UPDATE of its row, guarded by
    /// `status = 'running'` and this worker's ownership.
    pub fn finish<S: Storage + ?Sized>(
        self,
        outcome: Outcome,
        storage: &S,
    ) -> Result<Task<Finished>, FinishError> {
        let at = self.state.worker.clock.now();
        let row = FinishRow {
            id: self.id,
            worker: self.state.worker.id,
            outcome,
            at,
        };
        match storage.finish_running(&row) {
            Ok(FinishWrite::Updated) => Ok(Task {
                id: self.id,
                spec: self.spec,
                state: Finished {
                    worker: self.state.worker.id,
                    started_at: self.state.started_at,
                    finished_at: at,
                    outcome: row.outcome,
                },
            }),
            Ok(FinishWrite::Refused(refusal)) => Err(FinishError::Refused {
                id: self.id,
                refusal,
            }),
            Err(error) => Err(FinishError::Storage {
                error,
                task: Box::new(self),
            }),
        }
    }
}

/// A finish that did not update the row.
#[derive(Debug, thiserror::Error)]
pub enum FinishError {
    /// The guarded UPDATE matched no row: the row is not (or no longer) this
    /// worker's running task. Nothing was written, and retrying cannot help.
    #[error("task {id} was not finished: {}", describe_refusal(refusal))]
    Refused {
        /// The task.
        id: TaskId,
        /// What the row is now.
        refusal: FinishRefusal,
    },
    /// Storage failed; the row may still be `running`. The running task is
    /// handed back so the caller can retry.
    #[error("task could not be finished: {error}")]
    Storage {
        /// Why.
        #[source]
        error: StorageError,
        /// The task, to retry.
        task: Box<Task<Running>>,
    },
}

impl FinishError {
    /// The running task, when storage failed and a retry may succeed.
    pub fn into_task(self) -> Option<Task<Running>> {
        match self {
            FinishError::Storage { task, .. } => Some(*task),
            FinishError::Refused { .. } => None,
        }
    }
}

fn describe_refusal(refusal: &FinishRefusal) -> String {
    match refusal {
        FinishRefusal::Missing => "it has no task_history row".to_owned(),
        FinishRefusal::AlreadyFinished { status } => format!("it is already {status}"),
        FinishRefusal::InterruptedByRecovery { recovered_by } => match recovered_by {
            Some(worker) => format!("a recovery sweep by worker {worker} marked it interrupted"),
            None => "a recovery sweep marked it interrupted".to_owned(),
        },
        FinishRefusal::OwnedByAnotherWorker { owner } => match owner {
            Some(owner) => format!("it belongs to worker {owner}"),
            None => "it belongs to no worker".to_owned(),
        },
    }
}

impl Task<Finished> {
    /// The worker that finished it.
    pub fn worker(&self) -> WorkerId {
        self.state.worker
    }
    /// When the row was inserted.
    pub fn started_at(&self) -> Timestamp {
        self.state.started_at
    }
    /// When the UPDATE was issued.
    pub fn finished_at(&self) -> Timestamp {
        self.state.finished_at
    }
    /// How it ended.
    pub fn outcome(&self) -> &Outcome {
        &self.state.outcome
    }
}
