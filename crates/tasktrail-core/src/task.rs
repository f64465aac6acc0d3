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
//!   `Task<Running>` and its [`Outcome`] back so nothing is lost; if the row
//!   is no longer this worker's to finish, the error says what it is now. It
//!   never INSERTs.
//! - A `Task<Running>` dropped without a finish (a panic, a cancelled
//!   future, an early return) is *abandoned*: its worker interrupts the row
//!   at its next tick ([`RegisteredWorker::interrupt_abandoned`]). Nothing
//!   is written inside `Drop`.
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

use crate::backend::Storage;
use crate::clock::{Clock, Timestamp};
use crate::ids::{SessionId, TaskId, WorkerId};
use crate::in_flight::{AbandonedTask, InFlightTasks, InFlightTicket};
use crate::outcome::{InterruptReason, Outcome};
use crate::record::{
    FinishRefusal, FinishRow, FinishWrite, NewRunningRow, NewSession, RecoveredTask,
};
use crate::spec::TaskSpec;
use crate::storage::StorageError;
use crate::worker::{DeathCause, WorkerRegistration};

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
    ticket: InFlightTicket,
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
/// a worker the recovery sweep knows about. Not `Clone`: the one value is
/// the proof, and [`deregister`](RegisteredWorker::deregister) consumes it.
///
/// ```compile_fail,E0599
/// # use tasktrail_core::RegisteredWorker;
/// # fn f(worker: RegisteredWorker) {
/// let copy = worker.clone();
/// # }
/// ```
///
/// It also keeps the worker's in-flight bookkeeping: which of its tasks are
/// running, and which were abandoned (their `Task<Running>` dropped without
/// a finish).
pub struct RegisteredWorker {
    registration: WorkerRegistration,
    clock: Arc<dyn Clock>,
    in_flight: Arc<InFlightTasks>,
}

/// The interrupt reason written on a row whose handle was abandoned.
pub const ABANDONED_REASON: &str =
    "abandoned: the task handle was dropped without a finish (panic, cancellation or early return)";

/// What [`RegisteredWorker::interrupt_abandoned`] did.
#[derive(Debug, Default)]
pub struct AbandonedSweep {
    /// The abandoned tasks interrupted (and their sessions invalidated) by
    /// this call, each reported here exactly once: log each
    /// [`RecoveredTask::hint`].
    pub recovered: Vec<RecoveredTask>,
    /// The first storage failure, if any. The tasks it concerned stay
    /// queued and are retried by the next call.
    pub error: Option<StorageError>,
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
            in_flight: Arc::default(),
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

    /// The tasks this worker started that are neither finished nor
    /// abandoned.
    pub fn in_flight(&self) -> Vec<TaskId> {
        self.in_flight.running()
    }

    /// The abandoned tasks not yet interrupted and reported.
    pub fn abandoned(&self) -> Vec<TaskId> {
        self.in_flight.abandoned()
    }

    /// Calls `waker` (without holding any lock, and without IO) each time a
    /// task handle of this worker is abandoned, so a runtime can run
    /// [`interrupt_abandoned`](Self::interrupt_abandoned) at once instead of
    /// at its next tick. Replaces any earlier waker.
    pub fn on_abandoned(&self, waker: impl Fn() + Send + Sync + 'static) {
        self.in_flight.set_waker(Box::new(waker));
    }

    /// Interrupts every abandoned task of this worker: one guarded UPDATE
    /// per task, fenced like any finish (a row a sweep already recovered is
    /// left alone and not reported again), its sessions invalidated in the
    /// same transaction. Each task it interrupts is reported exactly once in
    /// [`AbandonedSweep::recovered`]; a task that hit a storage failure stays
    /// queued for the next call.
    pub fn interrupt_abandoned<S: Storage + ?Sized>(&self, storage: &S) -> AbandonedSweep {
        let mut sweep = AbandonedSweep::default();
        let mut retry = Vec::new();
        for mut task in self.in_flight.take_abandoned() {
            if sweep.error.is_some() {
                retry.push(task);
                continue;
            }
            match self.interrupt_one_abandoned(storage, &mut task) {
                Ok(Some(recovered)) => sweep.recovered.push(recovered),
                Ok(None) => {}
                Err(error) => {
                    sweep.error = Some(error);
                    retry.push(task);
                }
            }
        }
        self.in_flight.requeue_abandoned(retry);
        sweep
    }

    fn interrupt_one_abandoned<S: Storage + ?Sized>(
        &self,
        storage: &S,
        task: &mut AbandonedTask,
    ) -> Result<Option<RecoveredTask>, StorageError> {
        let (at, sessions_invalidated) = match task.interrupted {
            Some(done) => done,
            None => {
                let at = self.clock.now();
                let reason = InterruptReason::new(ABANDONED_REASON)
                    .expect("the abandoned reason is a valid interrupt reason");
                let write = storage.finish_running(&FinishRow {
                    id: task.id,
                    worker: self.id(),
                    outcome: Outcome::Interrupted(reason),
                    at,
                })?;
                match write {
                    FinishWrite::Updated {
                        sessions_invalidated,
                    } => {
                        task.interrupted = Some((at, sessions_invalidated));
                        (at, sessions_invalidated)
                    }
                    // Recovered by a sweep (which reported it) or otherwise
                    // no longer ours: nothing to do, nothing to report.
                    FinishWrite::Refused(_) => return Ok(None),
                }
            }
        };
        let Some(row) = storage.get_task(task.id)? else {
            return Ok(None);
        };
        Ok(Some(RecoveredTask {
            task: row,
            dead_worker: Some(self.id()),
            cause: DeathCause::HandleAbandoned,
            recovered_by: self.id(),
            recovered_at: at,
            sessions_invalidated,
            previous_reporter: None,
        }))
    }

    /// Interrupts every task still in flight (a worker that stops with
    /// tasks running): one guarded UPDATE each, with `reason`, sessions
    /// invalidated. Returns the ids it interrupted; a task whose UPDATE
    /// failed stays in flight and the first error is returned beside them.
    pub fn interrupt_in_flight<S: Storage + ?Sized>(
        &self,
        storage: &S,
        reason: &InterruptReason,
    ) -> (Vec<TaskId>, Option<StorageError>) {
        self.interrupt_in_flight_except(storage, reason, &[])
    }

    /// [`interrupt_in_flight`](Self::interrupt_in_flight), leaving the
    /// tasks in `keep` alone: a runtime that still holds their handles with
    /// an outcome to write (a finish waiting out a store outage) writes that
    /// outcome instead.
    pub fn interrupt_in_flight_except<S: Storage + ?Sized>(
        &self,
        storage: &S,
        reason: &InterruptReason,
        keep: &[TaskId],
    ) -> (Vec<TaskId>, Option<StorageError>) {
        let mut interrupted = Vec::new();
        for id in self.in_flight.running() {
            if keep.contains(&id) {
                continue;
            }
            let write = storage.finish_running(&FinishRow {
                id,
                worker: self.id(),
                outcome: Outcome::Interrupted(reason.clone()),
                at: self.clock.now(),
            });
            match write {
                Ok(FinishWrite::Updated { .. }) => {
                    self.in_flight.forget(id);
                    interrupted.push(id);
                }
                Ok(FinishWrite::Refused(_)) => self.in_flight.forget(id),
                Err(error) => return (interrupted, Some(error)),
            }
        }
        (interrupted, None)
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
                    ticket: InFlightTicket::issue(&worker.in_flight, self.id),
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
    /// A start that did not happen because of `error`, handing `task` back
    /// (for a layer above [`Task::start`], such as an async face, that
    /// refuses a start itself).
    pub fn new(error: StorageError, task: Task<Queued>) -> Self {
        Self {
            error,
            task: Box::new(task),
        }
    }

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
        self.finish_at(outcome, at, storage)
    }

    /// [`finish`](Self::finish) with `finished_at` = `at`: the retry of a
    /// finish that hit a storage failure writes the time the work ended,
    /// not the time the store came back. `at` is clamped to the start.
    pub fn finish_at<S: Storage + ?Sized>(
        self,
        outcome: Outcome,
        at: Timestamp,
        storage: &S,
    ) -> Result<Task<Finished>, FinishError> {
        let at = at.max(self.state.started_at);
        let row = FinishRow {
            id: self.id,
            worker: self.state.worker.id,
            outcome,
            at,
        };
        match storage.finish_running(&row) {
            Ok(FinishWrite::Updated { .. }) => {
                self.state.ticket.settle();
                Ok(Task {
                    id: self.id,
                    spec: self.spec,
                    state: Finished {
                        worker: self.state.worker.id,
                        started_at: self.state.started_at,
                        finished_at: at,
                        outcome: row.outcome,
                    },
                })
            }
            Ok(FinishWrite::Refused(refusal)) => {
                self.state.ticket.settle();
                Err(FinishError::Refused {
                    id: self.id,
                    refusal,
                })
            }
            Err(error) => Err(FinishError::Storage {
                error,
                task: Box::new(self),
                outcome: Box::new(row.outcome),
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
    /// Storage failed; the row may still be `running`. The running task
    /// and the outcome are handed back so the caller can retry the same
    /// finish, tokens and cost included. Dropping them abandons the task.
    #[error("task could not be finished: {error}")]
    Storage {
        /// Why.
        #[source]
        error: StorageError,
        /// The task, to retry.
        task: Box<Task<Running>>,
        /// The outcome that was not written.
        outcome: Box<Outcome>,
    },
}

impl FinishError {
    /// The running task and its unwritten outcome, when storage failed and
    /// a retry may succeed.
    pub fn into_parts(self) -> Option<(Task<Running>, Outcome)> {
        match self {
            FinishError::Storage { task, outcome, .. } => Some((*task, *outcome)),
            FinishError::Refused { .. } => None,
        }
    }

    /// The running task, when storage failed (the outcome is dropped; see
    /// [`into_parts`](Self::into_parts) to keep it).
    pub fn into_task(self) -> Option<Task<Running>> {
        self.into_parts().map(|(task, _)| task)
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::{ManualClock, MemoryStorage, TaskSpecInput};

    fn worker(storage: &MemoryStorage) -> RegisteredWorker {
        let clock = ManualClock::starting_at(
            chrono::DateTime::<chrono::Utc>::UNIX_EPOCH + chrono::Duration::days(20_000),
        );
        RegisteredWorker::register(
            storage,
            WorkerRegistration {
                id: WorkerId::new_random(),
                host: "vm-1".into(),
                pid: 41,
                process_start_marker: "boot:41".into(),
                host_identity: None,
                started_at: clock.now(),
            },
            Arc::new(clock),
        )
        .expect("register")
    }

    fn spec() -> TaskSpec {
        TaskSpec::validate(TaskSpecInput {
            repo: "acme/widgets".into(),
            issue_number: 7,
            user: "alice".into(),
            agent: "fixer".into(),
            agent_type: "claude_sdk".into(),
            model: "claude-opus".into(),
            provider: "anthropic".into(),
        })
        .expect("spec")
    }

    #[test]
    fn the_waker_is_called_once_for_each_abandoned_handle_and_never_for_a_finished_one() {
        let storage = MemoryStorage::new();
        let worker = worker(&storage);
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        worker.on_abandoned(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        let finished = Task::queue(spec()).start(&worker, &storage).expect("start");
        finished
            .finish(
                Outcome::Interrupted(InterruptReason::new("stopped").expect("reason")),
                &storage,
            )
            .expect("finish");
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        drop(Task::queue(spec()).start(&worker, &storage).expect("start"));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_refused_finish_says_why_in_words() {
        let id = TaskId::new_random();
        let worker: WorkerId = "0196c0de-0000-7000-a000-0000000000ff".parse().expect("id");
        for (refusal, why) in [
            (
                FinishRefusal::Missing,
                "it has no task_history row".to_owned(),
            ),
            (
                FinishRefusal::AlreadyFinished {
                    status: crate::TaskStatus::Success,
                },
                "it is already success".to_owned(),
            ),
            (
                FinishRefusal::InterruptedByRecovery {
                    recovered_by: Some(worker),
                },
                format!("a recovery sweep by worker {worker} marked it interrupted"),
            ),
            (
                FinishRefusal::InterruptedByRecovery { recovered_by: None },
                "a recovery sweep marked it interrupted".to_owned(),
            ),
            (
                FinishRefusal::OwnedByAnotherWorker {
                    owner: Some(worker),
                },
                format!("it belongs to worker {worker}"),
            ),
            (
                FinishRefusal::OwnedByAnotherWorker { owner: None },
                "it belongs to no worker".to_owned(),
            ),
        ] {
            assert_eq!(
                FinishError::Refused { id, refusal }.to_string(),
                format!("task {id} was not finished: {why}")
            );
        }
    }

    #[test]
    fn a_finished_task_keeps_when_it_started_and_finished() {
        let storage = MemoryStorage::new();
        let worker = worker(&storage);
        let running = Task::queue(spec()).start(&worker, &storage).expect("start");
        let started_at = running.started_at();
        let finished = running
            .finish(
                Outcome::Interrupted(InterruptReason::new("stopped").expect("reason")),
                &storage,
            )
            .expect("finish");
        assert_eq!(finished.started_at(), started_at);
        assert_ne!(started_at, Timestamp::default(), "a real start time");
        assert_eq!(finished.worker(), worker.id());
    }

    #[test]
    fn the_debug_output_names_the_worker() {
        let storage = MemoryStorage::new();
        let worker = worker(&storage);
        let shown = format!("{worker:?}");
        assert!(
            shown.starts_with("RegisteredWorker { registration: WorkerRegistration {"),
            "{shown}"
        );
        let running = Task::queue(spec()).start(&worker, &storage).expect("start");
        let shown = format!("{running:?}");
        assert!(
            shown.contains(&format!("worker: {:?}", worker.id())),
            "{shown}"
        );
        running
            .finish(
                Outcome::Interrupted(InterruptReason::new("stopped").expect("reason")),
                &storage,
            )
            .expect("finish");
    }
}
