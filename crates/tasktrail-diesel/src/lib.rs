#![warn(missing_docs)]
//! Diesel backends for tasktrail.
//!
//! - [`SqliteStorage`] (feature `sqlite`, on by default): the embedded
//!   default, one file per deployment, WAL journal, a busy timeout so several
//!   worker processes on one file wait for each other instead of failing.
//! - `PostgresStorage` (feature `postgres`): one database shared by workers on
//!   many hosts, an r2d2 connection pool, liveness judged on the database's
//!   clock plus a session-level advisory lock per live worker, and a recovery
//!   sweep that is exactly-once across concurrent boots.
//! - `MysqlStorage` (feature `mysql`): the same guarantees on MySQL 8.0.16+
//!   or MariaDB 10.6+, by MySQL's own means (a named lock per live worker,
//!   `UTC_TIMESTAMP(6)` as the clock, locking reads), through a pure-Rust
//!   client.
//!
//! Each backend embeds its own migrations (`migrations/sqlite`,
//! `migrations/postgres`, `migrations/mysql` at the workspace root) and runs them when a store is
//! opened. Diesel errors never leave this crate: they are mapped onto
//! [`tasktrail_core::StorageError`] kinds.
//!
//! The `testing` feature adds test tooling: `StatementLog` (the INSERTs a
//! store really issued) and, with `postgres`, `ScratchDatabase` (a fresh
//! database per test on the server named by `TASKTRAIL_TEST_POSTGRES_URL`).

#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod adopt;
mod codec;
mod compat;
#[cfg(any(feature = "postgres", feature = "mysql"))]
mod error_table;
#[cfg(test)]
mod error_text;
#[cfg(any(feature = "postgres", feature = "mysql"))]
mod liveness;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
mod overview;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
mod prune;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
mod raw;
#[cfg(any(feature = "postgres", feature = "mysql"))]
mod row_lock_sweep;
mod secrets;
#[cfg(feature = "testing")]
mod skip;
mod statement_log;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
mod statements;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
mod stats;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
mod store;
mod tx;

#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

/// The columns of a `task_history` row, in schema order, each as the
/// database's own text for it (`None` for NULL): what `raw_task_columns`
/// returns for showing a row that cannot be read as a record.
pub type RawColumns = Vec<(&'static str, Option<String>)>;
pub use secrets::{redact, Secrets, REDACTED};
#[cfg(feature = "testing")]
pub use skip::report_skipped_test;
#[cfg(all(feature = "testing", any(feature = "postgres", feature = "mysql")))]
pub use skip::{Scratch, ScratchServer};
#[cfg(feature = "testing")]
pub use statement_log::StatementLog;

#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteDurability, SqliteOptions, SqliteStorage, SQLITE_MIGRATIONS};

#[cfg(all(feature = "mysql", feature = "testing"))]
pub use mysql::{test_mysql_url, MysqlTestServer, ScratchMysqlDatabase, TEST_MYSQL_URL_VARIABLE};
#[cfg(feature = "mysql")]
pub use mysql::{MysqlConnection, MysqlOptions, MysqlStorage, OwnRuntime, MYSQL_MIGRATIONS};
#[cfg(all(feature = "postgres", feature = "testing"))]
pub use postgres::{
    test_postgres_url, PostgresTestServer, ScratchDatabase, CI_VARIABLE, TEST_POSTGRES_URL_VARIABLE,
};
#[cfg(feature = "postgres")]
pub use postgres::{
    LivenessMode, Pooler, PostgresOptions, PostgresStorage, POOLER_PARAMETER, POSTGRES_MIGRATIONS,
};
