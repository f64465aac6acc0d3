//! MySQL connections: the blocking Diesel connection over the pure-Rust
//! client, the settings every session gets, and the statement pool.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use diesel::connection::{Instrumentation, InstrumentationEvent, SimpleConnection};
use diesel::r2d2::{ManageConnection, NopErrorHandler, Pool, PooledConnection, R2D2Connection};
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

pub(super) type MysqlPool = Pool<PooledMysqlManager>;

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
    configure(&mut connection, statement_log, None).map_err(super::map_error)?;
    Ok(connection)
}

/// Applies [`SESSION_SETTINGS`], then instruments the connection: the
/// statement log counts its INSERTs, and `last_failed` says whether the
/// last statement started on it failed (set when a statement starts,
/// cleared when it succeeds: diesel-async may fail a statement on a dead
/// socket before it reports the statement finished).
fn configure(
    connection: &mut MysqlConnection,
    statement_log: Option<&StatementLog>,
    last_failed: Option<Arc<AtomicBool>>,
) -> diesel::QueryResult<()> {
    connection.batch_execute(SESSION_SETTINGS)?;
    let mut log = statement_log.map(StatementLog::instrumentation);
    if log.is_some() || last_failed.is_some() {
        connection.set_instrumentation(move |event: InstrumentationEvent<'_>| {
            if let Some(last_failed) = &last_failed {
                match &event {
                    InstrumentationEvent::StartQuery { .. } => {
                        last_failed.store(true, Ordering::SeqCst);
                    }
                    InstrumentationEvent::FinishQuery { error: None, .. } => {
                        last_failed.store(false, Ordering::SeqCst);
                    }
                    _ => {}
                }
            }
            log.on_connection_event(event);
        });
    }
    Ok(())
}

/// A pooled connection and whether the last statement started on it
/// failed.
pub(crate) struct TrackedConnection {
    connection: MysqlConnection,
    last_statement_failed: Arc<AtomicBool>,
}

/// Makes the pool's connections and decides, when one is handed back,
/// whether to keep it.
///
/// The client cannot tell by itself that the server ended a session (a
/// restart, a network reset, `wait_timeout`, `KILL`): diesel-async counts
/// a connection broken only when a transaction's `BEGIN`, `COMMIT` or
/// `ROLLBACK` failed, so a dead connection that failed a lone statement
/// went back into the pool and failed every statement after it. So a
/// connection on which a statement failed is pinged when it is handed
/// back, and dropped if it does not answer (the next checkout makes a new
/// one). A connection whose statements all succeeded is kept without a
/// round trip.
#[derive(Debug)]
pub(crate) struct PooledMysqlManager {
    url: String,
    statement_log: Option<StatementLog>,
}

impl ManageConnection for PooledMysqlManager {
    type Connection = TrackedConnection;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<TrackedConnection, diesel::r2d2::Error> {
        let mut connection =
            MysqlConnection::establish(&self.url).map_err(diesel::r2d2::Error::ConnectionError)?;
        let last_statement_failed = Arc::new(AtomicBool::new(false));
        configure(
            &mut connection,
            self.statement_log.as_ref(),
            Some(Arc::clone(&last_statement_failed)),
        )
        .map_err(diesel::r2d2::Error::QueryError)?;
        Ok(TrackedConnection {
            connection,
            last_statement_failed,
        })
    }

    /// Not called: r2d2 tests a connection at checkout only with
    /// `test_on_check_out`, which [`pool`] turns off (`has_broken` decides
    /// at hand-back instead). A ping, should that ever change.
    fn is_valid(&self, tracked: &mut TrackedConnection) -> Result<(), diesel::r2d2::Error> {
        tracked
            .connection
            .ping()
            .map_err(diesel::r2d2::Error::QueryError)
    }

    fn has_broken(&self, tracked: &mut TrackedConnection) -> bool {
        tracked.connection.is_broken()
            || (tracked.last_statement_failed.load(Ordering::SeqCst)
                && tracked.connection.ping().is_err())
    }
}

/// A connection checked out of a store's pool.
pub(crate) struct Pooled(PooledConnection<PooledMysqlManager>);

impl Deref for Pooled {
    type Target = MysqlConnection;

    fn deref(&self) -> &MysqlConnection {
        &self.0.connection
    }
}

impl DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut MysqlConnection {
        &mut self.0.connection
    }
}

/// The store's statement pool. Connections are made when first needed
/// (a server that is down fails the statement, not the open).
pub(super) fn pool(url: &str, options: &MysqlOptions) -> MysqlPool {
    Pool::builder()
        .max_size(options.pool_size.max(1))
        .min_idle(Some(0))
        .connection_timeout(options.connection_timeout)
        // A connection the server closed is found out when it is handed
        // back after a failed statement (`PooledMysqlManager`).
        .test_on_check_out(false)
        // r2d2 would log connection errors (which may name the host)
        // through `log`; they are returned, redacted, instead.
        .error_handler(Box::new(NopErrorHandler))
        .build_unchecked(PooledMysqlManager {
            url: url.to_owned(),
            statement_log: options.statement_log.clone(),
        })
}

/// A pooled connection, waiting at most `timeout`.
pub(super) fn checkout(
    pool: &MysqlPool,
    secrets: &Secrets,
    timeout: Duration,
) -> Result<Pooled, StorageError> {
    pool.get_timeout(timeout)
        .map(Pooled)
        .map_err(|error| pool_error(&error, secrets))
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use diesel::RunQueryDsl;

    use super::*;
    use crate::ScratchMysqlDatabase;

    fn last_failed(tracked: &TrackedConnection) -> bool {
        tracked.last_statement_failed.load(Ordering::SeqCst)
    }

    /// The flag the pool reads when a connection is handed back: set by a
    /// statement that failed, cleared by the next one that succeeds (else
    /// every hand-back after one failure would cost a ping). A connection
    /// that failed a statement but still answers is kept.
    #[test]
    fn the_last_failed_flag_follows_each_statement_and_an_answering_connection_is_kept() {
        let Some(scratch) = ScratchMysqlDatabase::create() else {
            return;
        };
        let manager = PooledMysqlManager {
            url: scratch.url().to_owned(),
            statement_log: None,
        };
        let mut tracked = manager.connect().expect("connect");
        assert!(!last_failed(&tracked), "a new connection");
        diesel::sql_query("SELECT 1")
            .execute(&mut tracked.connection)
            .expect("a statement that succeeds");
        assert!(!last_failed(&tracked), "after a statement that succeeded");
        diesel::sql_query("SELECT * FROM no_such_table")
            .execute(&mut tracked.connection)
            .expect_err("a statement that fails");
        assert!(last_failed(&tracked), "after a statement that failed");
        assert!(
            !manager.has_broken(&mut tracked),
            "it failed a statement but still answers"
        );
        diesel::sql_query("SELECT 1")
            .execute(&mut tracked.connection)
            .expect("a statement that succeeds");
        assert!(!last_failed(&tracked), "cleared by the next success");
    }
}
