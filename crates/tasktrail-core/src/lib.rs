#![warn(missing_docs)]
//! The tasktrail domain.
//!
//! A dispatched task gets a `task_history` row with `status = 'running'` the
//! moment it starts, one guarded UPDATE when it finishes, and, if its worker
//! dies, an `interrupted` transition at the next worker boot. This crate holds
//! the types that make that lifecycle the only one you can write:
//!
//! - [`TaskSpec`]: validated input; [`Task<Queued>`] → [`Task<Running>`] →
//!   [`Task<Finished>`]: the typestate.
//! - [`Storage`]: the store a worker writes through; [`MemoryStorage`]
//!   beside it. What implementing a backend takes (the trait's rows and
//!   commands, the facts a sweep hands the liveness judge) is in [`backend`];
//!   the shared behaviour suite is `conformance`, behind the `testing`
//!   feature.
//! - [`LivenessPolicy`]: how a booting worker decides another is dead.
//! - [`RecoveredTask::hint`]: the `[recovery]` line.
//!
//! It does no IO and knows no wire format: the SQL backends live in
//! `tasktrail-diesel`, the process probe and worker runtime in `tasktrail`.
//!
//! ```
//! use std::sync::Arc;
//! use tasktrail_core::*;
//!
//! let storage = MemoryStorage::new();
//! let clock: Arc<dyn Clock> = Arc::new(SystemClock);
//! let worker = RegisteredWorker::register(
//!     &storage,
//!     WorkerRegistration {
//!         id: WorkerId::new_random(),
//!         host: "dev".into(),
//!         pid: 4242,
//!         process_start_marker: "boot:1".into(),
//!         host_identity: None,
//!         started_at: clock.now(),
//!     },
//!     clock,
//! )?;
//! let spec = TaskSpec::validate(TaskSpecInput {
//!     repo: "acme/widgets".into(),
//!     issue_number: 1104,
//!     user: "alice".into(),
//!     agent: "fixer".into(),
//!     agent_type: "claude_sdk".into(),
//!     model: "claude-opus".into(),
//!     provider: "anthropic".into(),
//! })?;
//! let running = Task::queue(spec).start(&worker, &storage)?;
//! assert_eq!(storage.get_task(running.id())?.map(|row| row.status), Some(TaskStatus::Running));
//! let finished = running.finish(Outcome::Success(RunReport::empty()), &storage)?;
//! assert_eq!(storage.get_task(finished.id())?.map(|row| row.status), Some(TaskStatus::Success));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod backend;
mod clock;
mod ids;
mod in_flight;
mod memory;
mod outcome;
mod overview;
mod record;
mod spec;
mod stats;
mod status;
mod storage;
mod task;
mod worker;

#[cfg(feature = "testing")]
pub mod conformance;
#[cfg(feature = "testing")]
pub mod intercept;

pub use backend::Storage;
pub use clock::{
    now_after_epoch, timestamp_from_system_time, truncate_to_micros, Clock, ClockBeforeEpochError,
    ManualClock, SystemClock, Timestamp,
};
pub use ids::{InvalidIdError, InvalidSessionIdError, SessionId, TaskId, WorkerId};
pub use memory::MemoryStorage;
pub use outcome::{
    CostUsd, InterruptReason, InvalidCostError, InvalidReasonError, Outcome, RunReport,
};
pub use overview::{hour_start, outcome_buckets, sort_buckets, status_counts, OutcomeBucket};
pub use record::{
    FinishRefusal, PruneReport, PruneRequest, RecoveredTask, SessionKey, SessionRecord, TaskFilter,
    TaskRecord,
};
pub use spec::{SpecError, SpecField, SpecProblem, TaskSpec, TaskSpecInput};
pub use stats::{
    nearest_rank, round_to_millis, DurationStats, InterruptCause, RunningOwner, StatsRequest,
    TaskStats, UnknownCauseError, RECOVERY_REASON_PREFIX, WORKER_STOPPED_REASON,
};
pub use status::{TaskStatus, UnknownStatusError};
pub use storage::{StorageError, StorageExt};
pub use task::{
    AbandonedSweep, FinishError, Finished, Queued, RegisteredWorker, Running, StartError, Task,
    TaskState, ABANDONED_REASON,
};
pub use worker::{
    DeathCause, HostIdentity, Liveness, LivenessPolicy, NoticedOwner, ProcessProbe, Unproven,
    WorkerRecord, WorkerRegistration, WorkerState,
};
