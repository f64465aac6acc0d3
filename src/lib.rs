#![warn(missing_docs)]
//! # tasktrail
//!
//! A task audit trail for agent-dispatch servers that survives restarts:
//! every dispatched task has a `task_history` row with `status = 'running'`
//! from the moment it starts, finishing is exactly one fenced UPDATE of that
//! row, and at worker boot every `running` row whose worker is dead becomes
//! `interrupted`, is reported once with a `[recovery]` line, and has its
//! `claude_sdk_sessions` row invalidated, in one transaction.
//!
//! This crate is what a server imports. It re-exports the domain
//! ([`tasktrail_core`]: the typestate, the [`Storage`] trait, the in-memory
//! backend) and the Diesel backends ([`tasktrail_diesel`], behind the
//! `sqlite` (default) and `postgres` features), and adds the worker-side IO:
//! [`host`] (who am I, is that process alive) and [`runtime`]: the
//! [`Worker`] a server holds (boot, heartbeat, periodic sweep, abandoned
//! tasks, stop). A server needs [`prelude`] and little else.
//!
//! ```
//! use std::sync::Arc;
//! use tasktrail::prelude::*;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("trail.db");
//! let storage = Arc::new(SqliteStorage::open(&path)?);
//!
//! // Boot: register, sweep dead workers' rows (each a `[recovery]` line),
//! // then heartbeat and sweep in the background until `stop`.
//! let worker = Worker::builder(storage.clone())
//!     .on_event(|event| {
//!         if let WorkerEvent::Recovered(task) = event {
//!             eprintln!("{}", task.hint());
//!         }
//!     })
//!     .boot()?;
//!
//! // Dispatch: the row is `running` before any work begins...
//! let spec = TaskSpec::validate(TaskSpecInput {
//!     repo: "acme/widgets".into(),
//!     issue_number: 1104,
//!     user: "alice".into(),
//!     agent: "fixer".into(),
//!     agent_type: "claude_sdk".into(),
//!     model: "claude-opus".into(),
//!     provider: "anthropic".into(),
//! })?;
//! let running = worker.start(Task::queue(spec))?;
//! assert_eq!(storage.get_task(running.id())?.map(|row| row.status), Some(TaskStatus::Running));
//!
//! // ...and the finish is one UPDATE of that same row.
//! let report = RunReport { input_tokens: 1200, output_tokens: 300, cost_usd: CostUsd::new(0.42)?, turns: 7, artifacts: vec!["pr/17".into()] };
//! // A transient store failure would queue the outcome and retry it until it lands.
//! let id = running.id();
//! match worker.finish(running, Outcome::Success(report))? {
//!     FinishReceipt::Written(_) => {}
//!     FinishReceipt::Queued(pending) => println!("{} waits for the store", pending.id),
//! }
//! assert_eq!(storage.get_task(id)?.map(|row| row.status), Some(TaskStatus::Success));
//!
//! // Stop: queued outcomes are written, whatever is still in flight becomes
//! // `interrupted`; deregister.
//! worker.stop()?;
//! # Ok(())
//! # }
//! ```

#[cfg(feature = "async")]
pub mod async_worker;
pub mod database;
pub mod events;
pub mod host;
#[cfg(feature = "json")]
pub mod json;
#[cfg(feature = "logging")]
pub mod logging;
pub mod metrics;
pub mod runtime;

pub use tasktrail_core::*;

#[cfg(feature = "postgres")]
pub use tasktrail_diesel::{
    LivenessMode, Pooler, PostgresOptions, PostgresStorage, POOLER_PARAMETER,
};
#[cfg(feature = "mysql")]
pub use tasktrail_diesel::{MysqlOptions, MysqlStorage};
#[cfg(feature = "sqlite")]
pub use tasktrail_diesel::{SqliteDurability, SqliteOptions, SqliteStorage};

pub use database::{AnyStorage, DatabaseUrl, DatabaseUrlError, OpenError, OpenOptions};
pub use runtime::{
    BootError, FinishReceipt, OperatorSweep, PendingOutcome, StopError, StopReport,
    UnwrittenOutcome, Upkeep, Worker, WorkerBuilder, WorkerEvent, WorkerHealth,
};

/// Test tooling for a server's own tests (feature `testing`): the shared
/// behaviour suite a custom [`Storage`] must pass, the statement log that
/// proves one INSERT per task, and, with `postgres`, a scratch database per
/// test.
#[cfg(feature = "testing")]
pub mod testing {
    pub use tasktrail_core::conformance;
    pub use tasktrail_core::conformance_tests;
    pub use tasktrail_core::intercept::{InterceptedStorage, StorageCall};
    pub use tasktrail_diesel::{report_skipped_test, StatementLog};
    #[cfg(feature = "mysql")]
    pub use tasktrail_diesel::{test_mysql_url, ScratchMysqlDatabase, TEST_MYSQL_URL_VARIABLE};
    #[cfg(feature = "postgres")]
    pub use tasktrail_diesel::{
        test_postgres_url, ScratchDatabase, CI_VARIABLE, TEST_POSTGRES_URL_VARIABLE,
    };
}

/// What a server imports: the worker, the task typestate, its inputs and
/// outcomes, the records it reads back, and the storages to open.
pub mod prelude {
    pub use crate::database::{AnyStorage, DatabaseUrl};
    pub use crate::runtime::{
        FinishReceipt, PendingOutcome, StopError, UnwrittenOutcome, Worker, WorkerEvent,
        WorkerHealth,
    };
    pub use tasktrail_core::{
        CostUsd, FinishError, Finished, InterruptReason, MemoryStorage, Outcome, Queued,
        RecoveredTask, RunReport, Running, SessionId, SessionKey, StartError, Storage,
        StorageError, StorageExt, Task, TaskFilter, TaskId, TaskRecord, TaskSpec, TaskSpecInput,
        TaskStatus,
    };
    #[cfg(feature = "mysql")]
    pub use tasktrail_diesel::MysqlStorage;
    #[cfg(feature = "postgres")]
    pub use tasktrail_diesel::PostgresStorage;
    #[cfg(feature = "sqlite")]
    pub use tasktrail_diesel::SqliteStorage;
}

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
