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
//! [`host`] (who am I, is that process alive) and [`runtime`] (boot,
//! recovery, heartbeat).
//!
//! ```
//! use std::sync::Arc;
//! use tasktrail::*;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("trail.db");
//! let storage = SqliteStorage::open(&path)?;
//! let clock: Arc<dyn Clock> = Arc::new(SystemClock);
//!
//! // Worker boot: register, then sweep the rows of dead workers.
//! let boot = runtime::boot(
//!     &storage,
//!     host::current_registration(clock.as_ref())?,
//!     clock,
//!     &host::ProcfsProbe,
//!     &runtime::WorkerOptions::default(),
//! )?;
//! for recovered in &boot.recovered {
//!     eprintln!("{}", recovered.hint());
//! }
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
//! let running = Task::queue(spec).start(&boot.worker, &storage)?;
//! assert_eq!(storage.get_task(running.id())?.map(|row| row.status), Some(TaskStatus::Running));
//!
//! // ...and the finish is one UPDATE of that same row.
//! let report = RunReport { input_tokens: 1200, output_tokens: 300, cost_usd: CostUsd::new(0.42)?, turns: 7, artifacts: vec!["pr/17".into()] };
//! let finished = running.finish(Outcome::Success(report), &storage)?;
//! assert_eq!(storage.get_task(finished.id())?.map(|row| row.status), Some(TaskStatus::Success));
//! # Ok(())
//! # }
//! ```

pub mod database;
pub mod host;
pub mod runtime;

pub use tasktrail_core::*;

pub use tasktrail_diesel::StatementLog;
#[cfg(feature = "postgres")]
pub use tasktrail_diesel::{
    PostgresOptions, PostgresStorage, ScratchDatabase, TEST_POSTGRES_URL_VARIABLE,
};
#[cfg(feature = "sqlite")]
pub use tasktrail_diesel::{SqliteDurability, SqliteOptions, SqliteStorage};

pub use database::{AnyStorage, DatabaseUrl, DatabaseUrlError, OpenError};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
