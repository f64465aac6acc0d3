//! The pool of statement connections: checkout (testing a connection that
//! sat idle, failing fast while the server is known to be down), the
//! per-connection setup, and [`ServerReach`], shared with the liveness
//! session.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use diesel::connection::{CacheSize, SimpleConnection};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, PooledConnection, R2D2Connection};

use super::errors::pool_error;
use super::{Pooler, PostgresStorage};
use crate::statement_log::StatementLog;
use tasktrail_core::StorageError;

/// A connection checked out of a store's pool.
pub(crate) type PgPooled = PooledConnection<ConnectionManager<PgConnection>>;

impl PostgresStorage {
    /// A pooled connection that answers. One that sat idle longer than
    /// [`POOLED_IDLE_TEST_AFTER`] is tested with a `SELECT 1` first: if the
    /// server closed it meanwhile, the failed test marks it broken, r2d2
    /// drops it when it is handed back, and the next one is tried (a fresh
    /// one once the idle ones are used up), so a closed connection never
    /// fails a statement. A connection used more recently is not tested (no
    /// extra round trip on a busy worker); one the server closes in that
    /// window (a restart, `pg_terminate_backend`) fails one statement with
    /// [`StorageError::Unavailable`] and is dropped likewise.
    pub(crate) fn pooled(&self) -> Result<PgPooled, StorageError> {
        // Every pooled connection may be dead (a restart): try them all,
        // then a fresh one.
        for _ in 0..=self.pool.max_size() {
            let mut connection = self.checkout()?;
            let idle_for = LAST_CHECKOUT_IDLE.with(std::cell::Cell::take);
            if idle_for.is_none_or(|idle| idle < POOLED_IDLE_TEST_AFTER)
                || connection.ping().is_ok()
            {
                return Ok(connection);
            }
            // The server closed it: it may be down, so the next checkout
            // does not wait the whole connection timeout.
            self.reach.unreachable();
        }
        self.checkout()
    }

    /// `Pool::get`, waiting the connection timeout for a connection, or at
    /// most [`OUTAGE_CHECKOUT_WAIT`] while the server is known to be
    /// unreachable (the last connection attempt failed): during an outage
    /// each retry fails fast instead of holding a worker's stop past its
    /// deadline.
    fn checkout(&self) -> Result<PgPooled, StorageError> {
        let wait = if self.reach.is_unreachable() {
            OUTAGE_CHECKOUT_WAIT.min(self.reach.connection_timeout)
        } else {
            self.reach.connection_timeout
        };
        match self.pool.get_timeout(wait) {
            Ok(connection) => {
                self.reach.reached();
                Ok(connection)
            }
            Err(error) => {
                let error = pool_error(&error, &self.secrets);
                if error.is_transient() {
                    self.reach.unreachable();
                }
                Err(error)
            }
        }
    }
}

/// How long a checkout waits for a connection while the server is known to
/// be unreachable.
pub(crate) const OUTAGE_CHECKOUT_WAIT: Duration = Duration::from_secs(1);

/// Whether the last attempt to reach the server (a pool checkout, the
/// liveness session's reconnect) failed, or a pooled connection was
/// dropped, shared by the pool and the liveness session of one store; and
/// how long a checkout waits otherwise.
#[derive(Debug)]
pub(crate) struct ServerReach {
    unreachable: std::sync::atomic::AtomicBool,
    connection_timeout: Duration,
    /// When the server was last reached after a failure.
    reached_since: Mutex<std::time::Instant>,
}

impl ServerReach {
    pub(super) fn new(connection_timeout: Duration) -> Self {
        Self {
            unreachable: std::sync::atomic::AtomicBool::new(false),
            connection_timeout,
            reached_since: Mutex::new(std::time::Instant::now()),
        }
    }
    pub(super) fn is_unreachable(&self) -> bool {
        self.unreachable.load(std::sync::atomic::Ordering::SeqCst)
    }
    pub(super) fn unreachable(&self) {
        self.unreachable
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
    pub(super) fn reached(&self) {
        if self
            .unreachable
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            *self
                .reached_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = std::time::Instant::now();
        }
    }
    /// How long since the server was last reached after a failure (or
    /// since the store opened): zero while it is unreachable.
    pub(super) fn reached_for(&self) -> Duration {
        if self.is_unreachable() {
            return Duration::ZERO;
        }
        self.reached_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .elapsed()
    }
}

/// How long a pooled connection may sit idle before it is tested
/// (`SELECT 1`) when it is next checked out.
pub(crate) const POOLED_IDLE_TEST_AFTER: Duration = Duration::from_secs(1);

thread_local! {
    /// How long the connection this thread just checked out had been idle
    /// (set by [`IdleTracker`] inside `Pool::get`, on the calling thread).
    static LAST_CHECKOUT_IDLE: std::cell::Cell<Option<Duration>> =
        const { std::cell::Cell::new(None) };
}

/// Notes when each pooled connection was made or handed back, and tells
/// the thread that checks one out how long it sat idle.
///
/// A connection dropped from the pool (it failed a statement or its test:
/// the server closed it) also marks the server as possibly unreachable, so
/// the next checkout does not wait the whole connection timeout for a
/// server that is down.
#[derive(Debug)]
pub(super) struct IdleTracker {
    pub(super) returned_at: Mutex<std::collections::HashMap<u64, std::time::Instant>>,
    pub(super) reach: std::sync::Arc<ServerReach>,
}

impl IdleTracker {
    fn returned_at(&self) -> MutexGuard<'_, std::collections::HashMap<u64, std::time::Instant>> {
        self.returned_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl diesel::r2d2::HandleEvent for IdleTracker {
    /// A new connection is idle from the moment r2d2 made it (it may sit
    /// in the pool a long while before its first checkout).
    fn handle_acquire(&self, event: diesel::r2d2::event::AcquireEvent) {
        self.returned_at()
            .insert(event.connection_id(), std::time::Instant::now());
    }

    fn handle_checkout(&self, event: diesel::r2d2::event::CheckoutEvent) {
        let idle = self
            .returned_at()
            .get(&event.connection_id())
            .map(std::time::Instant::elapsed);
        LAST_CHECKOUT_IDLE.with(|cell| cell.set(idle));
    }

    fn handle_checkin(&self, event: diesel::r2d2::event::CheckinEvent) {
        self.returned_at()
            .insert(event.connection_id(), std::time::Instant::now());
    }

    fn handle_release(&self, event: diesel::r2d2::event::ReleaseEvent) {
        self.returned_at().remove(&event.connection_id());
        self.reach.unreachable();
    }
}

/// Attaches the statement log to every pooled connection when it is made.
#[derive(Debug)]
pub(super) struct OnAcquire {
    pub(super) statement_log: Option<StatementLog>,
    pub(super) pooler: Pooler,
}

impl CustomizeConnection<PgConnection, diesel::r2d2::Error> for OnAcquire {
    fn on_acquire(&self, connection: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        if let Some(log) = &self.statement_log {
            connection.set_instrumentation(log.instrumentation());
        }
        if self.pooler.multiplexes_sessions() {
            // Behind a transaction pooler the next transaction may run on
            // another server connection, which never saw this one's named
            // statements (`prepared statement "__diesel_stmt_1" does not
            // exist`, or `already exists` on one that did): Diesel then
            // sends every statement unnamed, parsed with its binds in one
            // message (PQsendQueryParams).
            connection.set_prepared_statement_cache_size(CacheSize::Disabled);
        }
        // `application_name` is a parameter PgBouncer tracks and sets on
        // whichever server connection runs the client's next transaction.
        connection
            .batch_execute("SET application_name = 'tasktrail'")
            .map_err(diesel::r2d2::Error::QueryError)
    }
}
