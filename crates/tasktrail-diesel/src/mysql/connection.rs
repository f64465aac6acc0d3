//! MySQL connections: the blocking Diesel connection over the pure-Rust
//! client, the settings every session gets, and the statement pool.

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::r2d2::{
    ConnectionManager, CustomizeConnection, NopErrorHandler, Pool, PooledConnection,
};
use diesel::Connection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::AsyncMysqlConnection;
use tasktrail_core::StorageError;

use super::errors::{connection_error, pool_error};
use super::MysqlOptions;
use crate::secrets::Secrets;
use crate::statement_log::StatementLog;

/// The blocking Diesel connection this backend runs its statements on:
/// `mysql_async` (pure Rust) under diesel-async, driven from sync code on
/// a runtime of its own ([`OwnRuntime`]).
pub type MysqlConnection = AsyncConnectionWrapper<AsyncMysqlConnection, OwnRuntime>;

/// How a [`MysqlConnection`] runs its I/O: on a current-thread tokio
/// runtime it owns, whoever calls it. diesel-async's default borrows the
/// caller's runtime when there is one, and then panics when the sync
/// `Storage` is called on one of that runtime's worker threads (a tokio
/// server opening its store in `main`); this one leaves the caller's
/// runtime for the call instead (`block_in_place` on a multi-thread
/// runtime, nothing to leave on a `spawn_blocking` thread or outside any
/// runtime). On a current-thread runtime's own thread the sync `Storage`
/// cannot block: call it through `spawn_blocking` there (tasktrail's async
/// `Worker` does). Dropped (with its connection) anywhere, async code
/// included: it shuts down without waiting.
#[derive(Debug)]
pub struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl OwnRuntime {
    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.0
            .as_ref()
            .expect("the runtime is only taken out when the connection is dropped")
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        // A runtime dropped the usual way blocks on its blocking pool, which
        // tokio forbids inside async code (a server dropping its store at
        // shutdown). This one has no tasks left to wait for: the connection
        // it drove is gone, its socket closed.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl diesel_async::async_connection_wrapper::BlockOn for OwnRuntime {
    fn block_on<F>(&self, future: F) -> F::Output
    where
        F: std::future::Future,
    {
        let on_a_worker_of_a_multi_thread_runtime = tokio::runtime::Handle::try_current()
            .is_ok_and(|caller| {
                caller.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
            });
        if on_a_worker_of_a_multi_thread_runtime {
            tokio::task::block_in_place(|| self.runtime().block_on(future))
        } else {
            self.runtime().block_on(future)
        }
    }

    fn get_runtime() -> Self {
        Self(Some(
            tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
                .expect("a current-thread tokio runtime (an OS thread's I/O driver) can be built"),
        ))
    }
}

pub(super) type MysqlPool = Pool<ConnectionManager<MysqlConnection>>;

/// A connection checked out of a store's pool.
pub(crate) type Pooled = PooledConnection<ConnectionManager<MysqlConnection>>;

/// What every session of this backend runs first. `READ COMMITTED`: a
/// plain read and a locking read in one transaction see the same committed
/// rows (InnoDB's default, `REPEATABLE READ`, would show a plain read the
/// snapshot of the transaction's first read). UTC for the session, so
/// `NOW()` typed by an operator agrees with the stored times. English
/// server messages: the error table reads them (`errors.rs`). Strict mode:
/// a value that does not fit is refused, never truncated.
pub(super) const SESSION_SETTINGS: &str = "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED; \
     SET time_zone = '+00:00'; \
     SET lc_messages = 'en_US'; \
     SET SESSION sql_mode = CONCAT(@@SESSION.sql_mode, ',STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION')";

/// A new connection to `url` with [`SESSION_SETTINGS`] applied and the
/// statement log attached.
pub(super) fn establish(
    url: &str,
    secrets: &Secrets,
    statement_log: Option<&StatementLog>,
) -> Result<MysqlConnection, StorageError> {
    let mut connection =
        MysqlConnection::establish(url).map_err(|error| connection_error(&error, secrets))?;
    configure(&mut connection, statement_log).map_err(super::map_error)?;
    Ok(connection)
}

fn configure(
    connection: &mut MysqlConnection,
    statement_log: Option<&StatementLog>,
) -> diesel::QueryResult<()> {
    connection.batch_execute(SESSION_SETTINGS)?;
    if let Some(log) = statement_log {
        connection.set_instrumentation(log.instrumentation());
    }
    Ok(())
}

/// Applies [`SESSION_SETTINGS`] and the statement log to each pooled
/// connection.
#[derive(Debug)]
struct OnAcquire {
    statement_log: Option<StatementLog>,
}

impl CustomizeConnection<MysqlConnection, diesel::r2d2::Error> for OnAcquire {
    fn on_acquire(&self, connection: &mut MysqlConnection) -> Result<(), diesel::r2d2::Error> {
        configure(connection, self.statement_log.as_ref()).map_err(diesel::r2d2::Error::QueryError)
    }
}

/// The store's statement pool. Connections are made when first needed
/// (a server that is down fails the statement, not the open).
pub(super) fn pool(url: &str, options: &MysqlOptions, _secrets: &Secrets) -> MysqlPool {
    Pool::builder()
        .max_size(options.pool_size.max(1))
        .min_idle(Some(0))
        .connection_timeout(options.connection_timeout)
        // A connection the server closed is found broken when it is handed
        // back (r2d2 asks `is_broken`) and replaced.
        .test_on_check_out(false)
        // r2d2 would log connection errors (which may name the host)
        // through `log`; they are returned, redacted, instead.
        .error_handler(Box::new(NopErrorHandler))
        .connection_customizer(Box::new(OnAcquire {
            statement_log: options.statement_log.clone(),
        }))
        .build_unchecked(ConnectionManager::new(url))
}

/// A pooled connection, waiting at most `timeout`.
pub(super) fn checkout(
    pool: &MysqlPool,
    secrets: &Secrets,
    timeout: Duration,
) -> Result<Pooled, StorageError> {
    pool.get_timeout(timeout)
        .map_err(|error| pool_error(&error, secrets))
}
