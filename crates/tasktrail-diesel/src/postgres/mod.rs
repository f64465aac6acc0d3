//! The Postgres backend: one database shared by workers on many hosts.
//! The design (connections, liveness, partitions, exactly-once recovery) is
//! documented on [`PostgresStorage`].

mod adopt;
mod overview;
mod pooler;
mod prune;
mod raw;
mod rows;
mod schema;
#[cfg(feature = "testing")]
mod scratch;
mod statements;
mod stats;
mod store;

pub use pooler::{LivenessMode, Pooler, POOLER_PARAMETER};
#[cfg(feature = "testing")]
pub use scratch::{test_postgres_url, ScratchDatabase, CI_VARIABLE, TEST_POSTGRES_URL_VARIABLE};

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use diesel::connection::{CacheSize, SimpleConnection};
use diesel::migration::{Migration, MigrationSource};
use diesel::pg::{Pg, PgConnection};
use diesel::prelude::*;
use diesel::r2d2::{
    ConnectionManager, CustomizeConnection, NopErrorHandler, Pool, PoolError, PooledConnection,
    R2D2Connection,
};
use diesel::result::{ConnectionError, DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{BigInt, Bool, Text};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use tasktrail_core::{StorageError, WorkerId};

use crate::pending::{pending_versions, refuse_if_pending};
use crate::secrets::Secrets;
use crate::statement_log::StatementLog;

/// The Postgres migrations, embedded at build time from `migrations/postgres`.
pub const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/postgres");

/// The advisory lock key that serialises migrations of one database (several
/// workers opening the same database at once migrate it once).
const MIGRATION_LOCK_KEY: i64 = 0x7461_736b_7472_6d67; // "taskrmg"

/// Mixed into every worker lock key, so tasktrail's keys are unlikely to meet
/// another application's advisory locks.
const WORKER_LOCK_NAMESPACE: u64 = 0x7461_736b_7472_6c77; // "tasktrlw"

type PgPool = Pool<ConnectionManager<PgConnection>>;
pub(crate) type PgPooled = PooledConnection<ConnectionManager<PgConnection>>;

/// How to open a Postgres store.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// The most pooled connections the store keeps open (besides its one
    /// liveness session). Default 8.
    pub pool_size: u32,
    /// How long connecting, or waiting for a free pooled connection, may
    /// take before the call fails with [`StorageError::Unavailable`].
    /// Default 10 s. (Also passed to libpq as `connect_timeout` unless the
    /// URL sets one.)
    pub connection_timeout: Duration,
    /// The pooler between the store and Postgres ([`Pooler::None`] by
    /// default). The URL parameter [`POOLER_PARAMETER`]
    /// (`?tasktrail_pooler=transaction`) overrides it.
    pub pooler: Pooler,
    /// Through a transaction pooler: a URL that reaches the *same* Postgres
    /// server directly (or through a session pooler), for the one liveness
    /// session that holds the workers' advisory locks (one connection per
    /// store, nothing else runs on it). Without one, a store behind a
    /// transaction pooler takes no lock: its workers are judged by the
    /// lease ([`LivenessMode::Lease`]). Ignored without a transaction
    /// pooler (the liveness session then uses the database URL).
    pub liveness_url: Option<String>,
    /// Record the INSERTs into `task_history` this store issues (tests).
    #[cfg(feature = "testing")]
    pub statement_log: Option<StatementLog>,
}

impl PostgresOptions {
    /// The statement log to attach (none without the `testing` feature).
    fn statement_log(&self) -> Option<StatementLog> {
        #[cfg(feature = "testing")]
        return self.statement_log.clone();
        #[cfg(not(feature = "testing"))]
        return None;
    }
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            pool_size: 8,
            connection_timeout: Duration::from_secs(10),
            pooler: Pooler::None,
            liveness_url: None,
            #[cfg(feature = "testing")]
            statement_log: None,
        }
    }
}

/// A [`tasktrail_core::Storage`] on one Postgres database, shared by workers
/// on many hosts.
///
/// # Connections
///
/// A [`PostgresStorage`] holds an r2d2 pool of Diesel connections for its
/// statements, plus one dedicated *liveness session* that is never pooled:
/// it runs the migrations, registers workers, writes their heartbeats, and
/// holds one session-level advisory lock per worker registered through the
/// store ([`PostgresStorage::worker_lock_key`]) for as long as the store
/// lives.
///
/// Behind a transaction pooler (declared: [`Pooler::Transaction`], the URL
/// parameter `?tasktrail_pooler=transaction`), the pooled connections keep
/// no prepared statement and rely on no session state, and no advisory lock
/// is ever taken through the pooler: the liveness session connects to
/// [`PostgresOptions::liveness_url`] (the same server, directly), or there
/// is none and workers are judged by their lease
/// ([`LivenessMode::Lease`]). See docs/operations.md, "Connecting through a
/// pooler".
///
/// # Liveness across hosts
///
/// The store does not decide whether the owner of a `running` row is alive:
/// it gathers the facts about each owner inside the sweep's transaction and
/// hands them to the caller's [`LivenessJudge`](tasktrail_core::backend::LivenessJudge)
/// ([`LivenessPolicy::judge`](tasktrail_core::LivenessPolicy::judge) makes
/// every verdict, as for the other backends):
///
/// - **The `workers` row**, with its `state`.
/// - **Its silence, on the database's clock.** Heartbeats are written as
///   `GREATEST(heartbeat_at, now())` by the database itself (the `at` passed
///   to [`Storage::heartbeat_worker`](tasktrail_core::Storage) is ignored, and
///   a registration's first heartbeat is the database's `now()` too), and the
///   silence is the database's `clock_timestamp()`, read once the owners' rows
///   are locked, minus `heartbeat_at`. No host's clock is ever compared with
///   another's, and the sweep's `now` plays no part in it.
/// - **Its lock** ([`OwnerLock`](tasktrail_core::backend::OwnerLock)). For each
///   `alive` owner registered with its lock (`workers.liveness_lock =
///   'advisory'`), the sweep reads `pg_locks` for a granted `ExclusiveLock`
///   on the owner's key in this database, without ever taking the lock, so
///   an owner that reconnects can always take it back. A free lock comes
///   with how long this sweep could have seen it taken back: the younger of
///   the server's uptime (`pg_postmaster_start_time()`) and this store's
///   liveness session's age (its long-lived connection, kept alive by the
///   heartbeats; not the pooled connection the sweep runs on, which a
///   server's `idle_session_timeout` keeps young): after a restart, a failover or a
///   reconnect every lock is free until its owner reconnects, so the policy
///   reads no free lock as death before a grace has passed
///   ([`Unproven::JudgeWatchedTooBriefly`](tasktrail_core::Unproven)). A
///   one-shot sweep on a fresh connection (`tasktrail recover`) therefore
///   leaves free-locked owners to the running workers' sweeps.
///
/// A crashed worker process loses its session when the kernel closes its
/// socket: its lock is free at once. A host that vanishes without closing
/// its sockets (power loss, cable cut) is noticed by the server's TCP
/// keepalives, which the liveness session sets to 5 s idle + 3 probes 2 s
/// apart (≈ 11 s, below the lease); the lease catches it otherwise.
///
/// # Network partitions, and why no live worker's row is interrupted
///
/// On Postgres a worker is alive while its database session holds its lock.
/// A worker that keeps its session cannot lose its rows, however long it
/// stays silent (hung or stopped: it is reported stalled). A worker is
/// declared dead only when its lock has been free and its heartbeat silent
/// past the grace, by the database's clock, and the sweep has watched locks
/// for a grace (or, registered before locks were recorded, when it stopped
/// heartbeating for a whole lease);
/// from that moment every write it attempts is refused, because starts check
/// the worker row (`FOR SHARE`) and finishes are guarded by `status =
/// 'running'` in the same database the sweep wrote to.
///
/// During a partition the worker's statements fail (its `Task::finish` hands
/// the running task back for a retry). Once the server drops its session, the
/// next sweep interrupts its rows, invalidates their sessions and marks it
/// `dead`, in one transaction. When the partition heals the store reconnects
/// and tries to take its lock again; its next heartbeat then fails with
/// [`StorageError::WorkerNotAlive`], its finishes are refused
/// ([`FinishRefusal::InterruptedByRecovery`](tasktrail_core::FinishRefusal))
/// and its starts fail with `WorkerNotAlive`: a worker that finds itself
/// declared dead stops writing. It has to register again (a fresh worker id)
/// to work again. If the partition heals before any sweep ran, the store
/// takes its lock back and nothing happened. A server restart or failover
/// ends every session at once: the same rules apply, so a worker whose store
/// reconnects (at its next heartbeat) before any sweep keeps its rows, and
/// one a sweep reached first is fenced — its in-flight task is reported
/// `interrupted`, never silently lost or finished twice.
///
/// # Exactly-once recovery
///
/// The sweep is one transaction that locks, in this order: the `workers` rows
/// of the owners of `running` rows (`FOR UPDATE`, ordered by id, so
/// concurrent sweeps queue on an owner instead of both judging it), then the
/// `running` rows themselves (`FOR UPDATE SKIP LOCKED`, so a row another
/// sweep or a finishing owner holds is left to it). The transition is an
/// `UPDATE ... WHERE status = 'running' ... RETURNING id`. A sweep that
/// waited on an owner reads, once it gets the lock, the owner `dead` and its
/// rows already `interrupted`: every orphan is transitioned, its sessions
/// invalidated and reported by exactly one sweep.
pub struct PostgresStorage {
    pool: PgPool,
    /// `None` behind a transaction pooler without a liveness URL
    /// ([`LivenessMode::Lease`]).
    liveness: Option<LivenessSession>,
    reach: std::sync::Arc<ServerReach>,
    pooler: Pooler,
    /// Set when nothing was declared but the server's port is not the
    /// URL's ([`PostgresStorage::pooler_warning`]).
    pooler_warning: Option<String>,
    shown_url: String,
    secrets: Secrets,
    statement_log: Option<StatementLog>,
}

impl fmt::Debug for PostgresStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStorage")
            .field("url", &self.shown_url)
            .field("pool_size", &self.pool.max_size())
            .field("pooler", &self.pooler)
            .field("liveness", &self.liveness_mode())
            .finish_non_exhaustive()
    }
}

impl PostgresStorage {
    /// Connects to the database at `url` (`postgres://user:password@host:port/database`)
    /// with default options and applies pending migrations.
    pub fn open(url: &str) -> Result<Self, StorageError> {
        Self::open_with(url, PostgresOptions::default())
    }

    /// Connects and applies pending migrations.
    ///
    /// Fails with [`StorageError::Unavailable`] when the server cannot be
    /// reached, refuses the login, or has no such database; refuses
    /// ([`StorageError::Incompatible`]) a database whose schema holds tables
    /// but is not a tasktrail one, and a database migrated by a newer
    /// tasktrail. No error text ever contains the URL's password.
    pub fn open_with(url: &str, options: PostgresOptions) -> Result<Self, StorageError> {
        let store = Self::open_unmigrated(url, &options)?;
        store.migrate()?;
        Ok(store)
    }

    /// The embedded migrations this database has not applied, read in one
    /// snapshot without DDL.
    fn pending_migrations(&self) -> Result<Vec<String>, StorageError> {
        let (_, applied) = self
            .pooled()?
            .build_transaction()
            .repeatable_read()
            .read_only()
            .run(read_tables_and_versions)
            .map_err(map_error)?;
        let applied: Vec<String> = applied.into_iter().map(|v| v.version).collect();
        Ok(pending_versions(known_versions()?, &applied))
    }

    /// Connects for reading only (the operator's `list`, `show`,
    /// `sessions`, `recover --dry-run`): never migrates and runs no DDL, so
    /// a role that may only SELECT can use it. A database that needs a
    /// migration is refused ([`StorageError::Incompatible`], naming the
    /// migrations): `tasktrail migrate` first.
    pub fn open_read_only(url: &str, options: &PostgresOptions) -> Result<Self, StorageError> {
        let store = Self::open_unmigrated(url, options)?;
        refuse_if_pending(&store.pending_migrations()?)?;
        Ok(store)
    }

    /// Connects without running migrations (the upgrade tests use it to start
    /// from an old schema). Still refuses a database that is not ours.
    pub fn open_unmigrated(url: &str, options: &PostgresOptions) -> Result<Self, StorageError> {
        let secrets = Secrets::of(url);
        let (url, declared) = pooler::split_pooler(url)?;
        let pooler = declared.unwrap_or(options.pooler);
        let url_port = pooler::named_port(&url);
        let url = with_connect_timeout(&url, options.connection_timeout);
        let reach = std::sync::Arc::new(ServerReach::new(options.connection_timeout));
        // The liveness session: on the database URL itself unless a
        // transaction pooler is in the way (a session advisory lock taken
        // through it would stay with whichever server connection ran it,
        // after its worker is gone); then on the liveness URL, or none.
        let liveness_url = if pooler.multiplexes_sessions() {
            match &options.liveness_url {
                Some(liveness_url) => {
                    let (direct, declared) = pooler::split_pooler(liveness_url)?;
                    if declared.is_some_and(Pooler::multiplexes_sessions) {
                        return Err(StorageError::Other {
                            source: Box::new(Redacted(format!(
                                "invalid liveness URL: it must reach postgres directly or through a session pooler, not {POOLER_PARAMETER}=transaction"
                            ))),
                        });
                    }
                    Some(with_connect_timeout(&direct, options.connection_timeout))
                }
                None => None,
            }
        } else {
            Some(url.clone())
        };
        let secrets = match &options.liveness_url {
            Some(liveness_url) if pooler.multiplexes_sessions() => {
                secrets.with(&Secrets::of(liveness_url))
            }
            _ => secrets,
        };
        let liveness = match liveness_url {
            Some(liveness_url) => Some(LivenessSession::connect(
                liveness_url,
                secrets.clone(),
                options.statement_log(),
                std::sync::Arc::clone(&reach),
            )?),
            None => None,
        };
        let pool = Pool::builder()
            .max_size(options.pool_size.max(1))
            .min_idle(Some(0))
            .connection_timeout(options.connection_timeout)
            // No `SELECT 1` before every statement (it doubled the round
            // trips of a start or finish): only a connection that sat idle
            // for `POOLED_IDLE_TEST_AFTER` is tested before use
            // (`PostgresStorage::pooled`), since that is the one a restart,
            // `idle_session_timeout`, a pooler or a NAT may have closed.
            .test_on_check_out(false)
            .event_handler(Box::new(IdleTracker {
                returned_at: Mutex::default(),
                reach: std::sync::Arc::clone(&reach),
            }))
            // r2d2 would log connection errors (which may name the host)
            // through `log`; they are returned, redacted, instead.
            .error_handler(Box::new(NopErrorHandler))
            .connection_customizer(Box::new(OnAcquire {
                statement_log: options.statement_log(),
                pooler,
            }))
            .build_unchecked(ConnectionManager::new(url));
        let store = Self {
            pool,
            liveness,
            reach,
            pooler,
            pooler_warning: None,
            shown_url: secrets.redacted(),
            secrets,
            statement_log: options.statement_log(),
        };
        let mut store = store;
        match &store.liveness {
            Some(liveness) => liveness.run(|connection, _| ensure_ours(connection))?,
            None => ensure_ours(&mut *store.pooled()?)?,
        }
        if declared.is_none() && pooler == Pooler::None {
            let server_port = store.liveness.as_ref().and_then(|liveness| {
                liveness
                    .run(|connection, _| {
                        diesel::sql_query("SELECT inet_server_port() AS port")
                            .get_result::<ServerPort>(connection)
                            .map_err(map_error)
                    })
                    .ok()
                    .and_then(|row| row.port)
            });
            store.pooler_warning = pooler::undeclared_pooler_warning(url_port, server_port);
        }
        Ok(store)
    }

    /// A warning when no pooler was declared but something seems to stand
    /// between the store and the server (the URL's port is not the one the
    /// server listens on): only a warning, a quiet pooler cannot be told
    /// from a server, and a port mapping looks the same.
    pub fn pooler_warning(&self) -> Option<&str> {
        self.pooler_warning.as_deref()
    }

    /// The pooler this store was declared to go through.
    pub fn pooler(&self) -> Pooler {
        self.pooler
    }

    /// How this store proves its workers alive.
    pub fn liveness_mode(&self) -> LivenessMode {
        match (&self.liveness, self.pooler.multiplexes_sessions()) {
            (None, _) => LivenessMode::Lease,
            (Some(_), true) => LivenessMode::AdvisoryLockOnLivenessUrl,
            (Some(_), false) => LivenessMode::AdvisoryLock,
        }
    }

    /// How long this store has been able to watch liveness locks without a
    /// break: its liveness session's age, or, without one (behind a
    /// transaction pooler), how long its pool has reached the server
    /// without a failure.
    pub(crate) fn watched_for(&self) -> Duration {
        match &self.liveness {
            Some(liveness) => liveness.connected_for(),
            None => self.reach.reached_for(),
        }
    }

    /// Applies pending migrations; returns the versions it applied (empty
    /// when the schema was already current). Idempotent, and safe to call
    /// from many processes at once: a database-wide advisory lock lets one
    /// migrate while the others wait.
    pub fn migrate(&self) -> Result<Vec<String>, StorageError> {
        // Nothing pending: no lock, no DDL (diesel's own check would create
        // its migration table), so a role with only SELECT/INSERT/UPDATE/
        // DELETE rights runs workers on a current schema.
        if self.pending_migrations()?.is_empty() {
            return Ok(Vec::new());
        }
        // One transaction holds the migration lock (transaction-scoped, so
        // it also works through a transaction pooler and is released by
        // COMMIT or ROLLBACK whatever happens), the compatibility check and
        // every pending migration (each in its own savepoint): concurrent
        // boots queue on the lock and find the schema current.
        let mut connection = self.pooled()?;
        let mut failure: Option<StorageError> = None;
        let result = connection.transaction(|connection| {
            diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
                .bind::<BigInt, _>(MIGRATION_LOCK_KEY)
                .execute(connection)?;
            let (tables, applied) = read_tables_and_versions(connection)?;
            if let Err(error) = judge_ours(&tables, &applied) {
                failure = Some(error);
                return Err(DieselError::RollbackTransaction);
            }
            match connection.run_pending_migrations(POSTGRES_MIGRATIONS) {
                Ok(applied) => Ok(applied.iter().map(ToString::to_string).collect::<Vec<_>>()),
                Err(error) => {
                    failure = Some(StorageError::Other { source: error });
                    Err(DieselError::RollbackTransaction)
                }
            }
        });
        result.map_err(|error| failure.unwrap_or_else(|| map_error(error)))
    }

    /// The migration versions applied to this database, oldest first.
    pub fn applied_migrations(&self) -> Result<Vec<String>, StorageError> {
        let mut connection = self.pooled()?;
        let mut versions: Vec<String> = connection
            .applied_migrations()
            .map_err(|error| StorageError::Other { source: error })?
            .iter()
            .map(ToString::to_string)
            .collect();
        versions.sort();
        Ok(versions)
    }

    /// Runs `f` with a pooled Diesel connection (tests, benchmarks, and
    /// operators' one-off repairs). Fails only if no connection can be had.
    pub fn with_connection<T>(
        &self,
        f: impl FnOnce(&mut PgConnection) -> T,
    ) -> Result<T, StorageError> {
        let mut connection = self.pooled()?;
        Ok(f(&mut connection))
    }

    /// The statement log this store was opened with.
    pub fn statement_log(&self) -> Option<&StatementLog> {
        self.statement_log.as_ref()
    }

    /// The URL this store connects to, with its password replaced by `***`.
    pub fn redacted_url(&self) -> &str {
        &self.shown_url
    }

    /// The key of the session-level advisory lock a live worker's store
    /// holds (`pg_try_advisory_lock(key)`): the two halves of the worker's
    /// UUID folded into 64 bits, mixed with a tasktrail constant. Operators
    /// can find it in `pg_locks` (`locktype = 'advisory'`, `objsubid = 1`,
    /// `classid = key >> 32`, `objid = key & 0xffffffff`).
    pub fn worker_lock_key(worker: WorkerId) -> i64 {
        let bits = worker.as_uuid().as_u128();
        let folded = ((bits >> 64) as u64) ^ (bits as u64) ^ WORKER_LOCK_NAMESPACE;
        i64::from_ne_bytes(folded.to_ne_bytes())
    }

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
    fn new(connection_timeout: Duration) -> Self {
        Self {
            unreachable: std::sync::atomic::AtomicBool::new(false),
            connection_timeout,
            reached_since: Mutex::new(std::time::Instant::now()),
        }
    }
    fn is_unreachable(&self) -> bool {
        self.unreachable.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn unreachable(&self) {
        self.unreachable
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
    fn reached(&self) {
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
    fn reached_for(&self) -> Duration {
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
struct IdleTracker {
    returned_at: Mutex<std::collections::HashMap<u64, std::time::Instant>>,
    reach: std::sync::Arc<ServerReach>,
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
struct OnAcquire {
    statement_log: Option<StatementLog>,
    pooler: Pooler,
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

/// Session settings of the liveness connection, applied one by one (a server
/// that does not know one of them still works; on a Unix socket the TCP
/// settings are ignored). The keepalives make the server notice a vanished
/// host within about 11 s and release its advisory locks; the timeouts at 0
/// keep an idle session (which is what a healthy worker's is) from being
/// ended by a server-wide setting.
const LIVENESS_SESSION_SETTINGS: &[&str] = &[
    "SET application_name = 'tasktrail-liveness'",
    "SET idle_session_timeout = 0",
    "SET idle_in_transaction_session_timeout = 0",
    "SET tcp_keepalives_idle = 5",
    "SET tcp_keepalives_interval = 2",
    "SET tcp_keepalives_count = 3",
];

/// The store's dedicated, unpooled connection and the advisory locks it
/// holds.
pub(crate) struct LivenessSession {
    url: String,
    secrets: Secrets,
    statement_log: Option<StatementLog>,
    reach: std::sync::Arc<ServerReach>,
    state: Mutex<LivenessState>,
}

pub(crate) struct LivenessState {
    connection: Option<PgConnection>,
    /// The workers registered through this store and not yet stopped or
    /// found dead, with whether the current connection holds their lock
    /// (false after a reconnect, until the next heartbeat takes it again).
    workers: BTreeMap<WorkerId, bool>,
    /// When the current connection was made: how long this store has
    /// watched locks without a break.
    connected_at: std::time::Instant,
}

impl LivenessSession {
    fn connect(
        url: String,
        secrets: Secrets,
        statement_log: Option<StatementLog>,
        reach: std::sync::Arc<ServerReach>,
    ) -> Result<Self, StorageError> {
        let connection = Self::establish(&url, &secrets, statement_log.as_ref())?;
        Ok(Self {
            url,
            secrets,
            statement_log,
            reach,
            state: Mutex::new(LivenessState {
                connection: Some(connection),
                workers: BTreeMap::new(),
                connected_at: std::time::Instant::now(),
            }),
        })
    }

    fn establish(
        url: &str,
        secrets: &Secrets,
        statement_log: Option<&StatementLog>,
    ) -> Result<PgConnection, StorageError> {
        let mut connection =
            PgConnection::establish(url).map_err(|error| connection_error(&error, secrets))?;
        if let Some(log) = statement_log {
            connection.set_instrumentation(log.instrumentation());
        }
        for setting in LIVENESS_SESSION_SETTINGS {
            // Best effort: see LIVENESS_SESSION_SETTINGS.
            let _ = connection.batch_execute(setting);
        }
        Ok(connection)
    }

    fn lock(&self) -> MutexGuard<'_, LivenessState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How long the liveness session has been connected without a break
    /// (zero while it is lost): how long this store has been able to watch
    /// liveness locks. A judge reads a free lock as death only once this
    /// (and the server's uptime) passed a grace. It is the long-lived
    /// session's age, not that of the pooled connection a sweep happens to
    /// run on, which a server's `idle_session_timeout` keeps young.
    pub(crate) fn connected_for(&self) -> std::time::Duration {
        let state = self.lock();
        if state.connection.is_some() {
            state.connected_at.elapsed()
        } else {
            std::time::Duration::ZERO
        }
    }

    /// Whether `worker` was registered through this store (and is not known
    /// to be stopped or dead).
    pub(crate) fn tracks(&self, worker: WorkerId) -> bool {
        self.lock().workers.contains_key(&worker)
    }

    /// Runs `f` on the liveness connection, reconnecting first if it was
    /// lost (every lock is then marked as not held). If `f` fails and the
    /// connection no longer answers, it is dropped so the next call
    /// reconnects.
    pub(crate) fn run<T>(
        &self,
        f: impl FnOnce(&mut PgConnection, &mut BTreeMap<WorkerId, bool>) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let mut state = self.lock();
        let LivenessState {
            connection,
            workers,
            connected_at,
        } = &mut *state;
        if connection.as_mut().is_some_and(R2D2Connection::is_broken) {
            *connection = None;
        }
        let live = match connection {
            Some(live) => live,
            None => {
                for held in workers.values_mut() {
                    *held = false;
                }
                match Self::establish(&self.url, &self.secrets, self.statement_log.as_ref()) {
                    Ok(established) => {
                        self.reach.reached();
                        *connected_at = std::time::Instant::now();
                        connection.insert(established)
                    }
                    Err(error) => {
                        if error.is_transient() {
                            self.reach.unreachable();
                        }
                        return Err(error);
                    }
                }
            }
        };
        let result = f(live, workers);
        if result.is_err() && live.ping().is_err() {
            *connection = None;
            for held in workers.values_mut() {
                *held = false;
            }
        }
        result
    }
}

#[derive(QueryableByName)]
struct ServerPort {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Integer>)]
    port: Option<i32>,
}

#[derive(QueryableByName)]
struct TableName {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct Version {
    #[diesel(sql_type = Text)]
    version: String,
}

#[derive(QueryableByName)]
pub(crate) struct Flag {
    #[diesel(sql_type = Bool)]
    pub(crate) flag: bool,
}

/// `pg_try_advisory_lock(key)` on this connection's session.
pub(crate) fn try_advisory_lock(
    connection: &mut PgConnection,
    key: i64,
) -> Result<bool, DieselError> {
    diesel::sql_query("SELECT pg_try_advisory_lock($1) AS flag")
        .bind::<BigInt, _>(key)
        .get_result::<Flag>(connection)
        .map(|row| row.flag)
}

/// `pg_advisory_unlock(key)`; false if this session did not hold it.
pub(crate) fn advisory_unlock(
    connection: &mut PgConnection,
    key: i64,
) -> Result<bool, DieselError> {
    diesel::sql_query("SELECT pg_advisory_unlock($1) AS flag")
        .bind::<BigInt, _>(key)
        .get_result::<Flag>(connection)
        .map(|row| row.flag)
}

/// The migration versions this binary knows.
fn known_versions() -> Result<Vec<String>, StorageError> {
    let migrations: Vec<Box<dyn Migration<Pg>>> =
        MigrationSource::<Pg>::migrations(&POSTGRES_MIGRATIONS)
            .map_err(|error| StorageError::Other { source: error })?;
    Ok(migrations
        .iter()
        .map(|migration| migration.name().version().to_string())
        .collect())
}

/// Refuses a database that is not ours or is newer than this binary: the
/// same rules as the SQLite backend, applied to the tables of the schema the
/// connection works in (`current_schema()`).
fn ensure_ours(connection: &mut PgConnection) -> Result<(), StorageError> {
    // Tables and migration versions from one snapshot: another process may
    // be migrating right now, and tables read before its commit with
    // versions read after it would look like a broken database.
    let (tables, applied) = connection
        .build_transaction()
        .repeatable_read()
        .read_only()
        .run(read_tables_and_versions)
        .map_err(map_error)?;
    judge_ours(&tables, &applied)
}

fn read_tables_and_versions(
    connection: &mut PgConnection,
) -> QueryResult<(Vec<TableName>, Vec<Version>)> {
    let tables: Vec<TableName> = diesel::sql_query(
        "SELECT c.relname::text AS name FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
    )
    .load(connection)?;
    let applied: Vec<Version> = if tables
        .iter()
        .any(|t| t.name == "__diesel_schema_migrations")
    {
        diesel::sql_query("SELECT version::text AS version FROM __diesel_schema_migrations")
            .load(connection)?
    } else {
        Vec::new()
    };
    Ok((tables, applied))
}

/// Refuses a database that is not ours or is newer than this binary, from
/// what one snapshot showed.
fn judge_ours(tables: &[TableName], applied: &[Version]) -> Result<(), StorageError> {
    if tables.is_empty() {
        return Ok(());
    }
    if !tables
        .iter()
        .any(|t| t.name == "__diesel_schema_migrations")
    {
        let detail = if tables.iter().any(|t| t.name == "task_history") {
            "the database holds a task_history table that tasktrail did not create (no migration record); `tasktrail migrate --adopt` checks it and adopts it"
        } else {
            "the database holds tables but is not a tasktrail database"
        };
        return Err(StorageError::Incompatible {
            detail: detail.to_owned(),
        });
    }
    let known = known_versions()?;
    if let Some(unknown) = applied.iter().find(|v| !known.contains(&v.version)) {
        return Err(StorageError::Incompatible {
            detail: format!(
                "the database has migration {} which this tasktrail does not know: it was written by a newer tasktrail or another program",
                unknown.version
            ),
        });
    }
    if !tables.iter().any(|t| t.name == "task_history") && !applied.is_empty() {
        return Err(StorageError::Incompatible {
            detail: "the database has migrations but no task_history table".to_owned(),
        });
    }
    Ok(())
}

/// Adds libpq's `connect_timeout` unless the URL sets one, so an unreachable
/// host fails within the configured time instead of the TCP timeout.
fn with_connect_timeout(url: &str, timeout: Duration) -> String {
    if url.contains("connect_timeout") {
        return url.to_owned();
    }
    // libpq ignores values below 2 s.
    let seconds = timeout.as_secs().max(2);
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}connect_timeout={seconds}")
    } else {
        format!("{url} connect_timeout={seconds}")
    }
}

/// An error whose text was scrubbed of the URL's secrets. The original error
/// is not kept as a source: its text may hold them.
#[derive(Debug)]
pub(crate) struct Redacted(String);

impl fmt::Display for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Redacted {}

/// What a Postgres error means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PostgresErrorClass {
    /// Retrying later may succeed: [`StorageError::Unavailable`].
    Transient,
    /// The server refuses this configuration (login, database, permission):
    /// [`StorageError::AccessDenied`].
    Refused,
    /// The schema is not tasktrail's: [`StorageError::Incompatible`].
    NotOurs,
}

/// The Postgres error texts this backend classifies, and how: the one place
/// where Postgres errors are told apart by text. Diesel exposes the SQLSTATE
/// only as a few kinds (class 08 and a connection libpq reports bad →
/// `ClosedConnection`; `UnableToSendCommand`; 40001 → `SerializationFailure`;
/// 25006 → `ReadOnlyTransaction`), which [`map_error`] reads first; libpq's
/// connection errors and r2d2's pool timeouts are text only. An entry
/// matches when every one of its pieces is in the lower-cased text. Each
/// entry has its own test.
pub(crate) const POSTGRES_ERROR_MESSAGES: &[(&[&str], PostgresErrorClass)] = &[
    // 57P01 admin shutdown / pg_terminate_backend, 57P02 crash shutdown,
    // 57P05 idle_session_timeout: the server ended the session.
    (&["terminating connection"], PostgresErrorClass::Transient),
    // 57P03 cannot connect now: starting up, shutting down, in recovery.
    (&["the database system is"], PostgresErrorClass::Transient),
    // libpq: the socket closed under a statement, or no session at all.
    (
        &["server closed the connection"],
        PostgresErrorClass::Transient,
    ),
    (
        &["no connection to the server"],
        PostgresErrorClass::Transient,
    ),
    (
        &["could not send data to server"],
        PostgresErrorClass::Transient,
    ),
    (
        &["could not receive data from server"],
        PostgresErrorClass::Transient,
    ),
    (&["ssl syscall error"], PostgresErrorClass::Transient),
    // libpq: nothing listens (a restart), or the host cannot be reached.
    (&["connection refused"], PostgresErrorClass::Transient),
    (&["timeout expired"], PostgresErrorClass::Transient),
    // r2d2: no pooled connection could be had in time.
    (
        &["timed out waiting for connection"],
        PostgresErrorClass::Transient,
    ),
    // 53300 too many connections.
    (&["too many clients"], PostgresErrorClass::Transient),
    (&["too many connections"], PostgresErrorClass::Transient),
    // PgBouncer: its client limit (`max_client_conn`), a client that
    // waited too long for a server connection (`query_wait_timeout`), a
    // server it cannot reach or whose connection it lost.
    (
        &["no more connections allowed"],
        PostgresErrorClass::Transient,
    ),
    (&["query_wait_timeout"], PostgresErrorClass::Transient),
    (
        &["pgbouncer cannot connect to server"],
        PostgresErrorClass::Transient,
    ),
    (&["server conn crashed"], PostgresErrorClass::Transient),
    (
        &["server login has been failing"],
        PostgresErrorClass::Transient,
    ),
    // 53100 disk full, 53200 out of memory.
    (&["no space left on device"], PostgresErrorClass::Transient),
    (&["could not extend file"], PostgresErrorClass::Transient),
    (&["out of memory"], PostgresErrorClass::Transient),
    (&["out of shared memory"], PostgresErrorClass::Transient),
    // 40P01 deadlock; 40001 serialization failure (also a Diesel kind),
    // including a standby's conflict with recovery.
    (&["deadlock detected"], PostgresErrorClass::Transient),
    (
        &["could not serialize access"],
        PostgresErrorClass::Transient,
    ),
    // 57014 / 55P03: a statement or lock timeout cancelled the statement.
    (&["canceling statement"], PostgresErrorClass::Transient),
    // 25006 (also a Diesel kind): a standby or a demoted primary after a
    // failover, until the connection reaches the new primary.
    (&["read-only transaction"], PostgresErrorClass::Transient),
    // 28000 / 28P01: the login was refused.
    (&["authentication failed"], PostgresErrorClass::Refused),
    (&["no pg_hba.conf entry"], PostgresErrorClass::Refused),
    // 3D000 unknown database; 28000 unknown role.
    (
        &["database \"", "\" does not exist"],
        PostgresErrorClass::Refused,
    ),
    (
        &["role \"", "\" does not exist"],
        PostgresErrorClass::Refused,
    ),
    // 42501 insufficient privilege.
    (&["permission denied"], PostgresErrorClass::Refused),
    // 42P01 / 42703: the schema is not tasktrail's.
    (&["relation", "does not exist"], PostgresErrorClass::NotOurs),
    (&["column", "does not exist"], PostgresErrorClass::NotOurs),
];

/// The class of a Postgres error text, from [`POSTGRES_ERROR_MESSAGES`].
pub(crate) fn classify_postgres_text(text: &str) -> Option<PostgresErrorClass> {
    let text = text.to_ascii_lowercase();
    POSTGRES_ERROR_MESSAGES
        .iter()
        .find(|(pieces, _)| pieces.iter().all(|piece| text.contains(piece)))
        .map(|(_, class)| *class)
}

fn connection_error(error: &ConnectionError, secrets: &Secrets) -> StorageError {
    let message = secrets.scrub(error.to_string().trim_end());
    match error {
        ConnectionError::InvalidConnectionUrl(_) => StorageError::Other {
            source: Box::new(Redacted(format!("invalid postgres URL: {message}"))),
        },
        // A refused login or an unknown database is permanent; anything else
        // about reaching the server (refused, unreachable, timed out,
        // starting up, too many clients) may succeed later.
        _ => connection_text_error(format!("cannot connect to postgres: {message}")),
    }
}

/// A connection failure known only by its (scrubbed) text: permanent when
/// [`POSTGRES_ERROR_MESSAGES`] says the server refused the configuration,
/// transient otherwise.
fn connection_text_error(message: String) -> StorageError {
    match classify_postgres_text(&message) {
        Some(PostgresErrorClass::Refused) => StorageError::AccessDenied {
            source: Box::new(Redacted(message)),
        },
        _ => StorageError::Unavailable {
            source: Box::new(Redacted(message)),
        },
    }
}

/// r2d2 gave up waiting for a connection; its text carries the last
/// connection error, which decides transient or permanent.
fn pool_error(error: &PoolError, secrets: &Secrets) -> StorageError {
    connection_text_error(format!(
        "no postgres connection available: {}",
        secrets.scrub(error.to_string().trim_end())
    ))
}

/// Maps a Diesel error onto a public kind, from Diesel's error kind first
/// (the SQLSTATE it exposes) and then [`POSTGRES_ERROR_MESSAGES`]. Unique
/// violations are mapped by the callers, which know which row they were
/// writing.
pub(crate) fn map_error(error: DieselError) -> StorageError {
    let (kind, message) = match &error {
        DieselError::DatabaseError(kind, info) => (*kind, info.message().to_ascii_lowercase()),
        // A COMMIT that failed and whose rollback failed too: the
        // connection is usually gone.
        DieselError::RollbackErrorOnCommit { commit_error, .. } => match &**commit_error {
            DieselError::DatabaseError(kind, info) => (*kind, info.message().to_ascii_lowercase()),
            _ => {
                return StorageError::Other {
                    source: Box::new(error),
                }
            }
        },
        _ => {
            return StorageError::Other {
                source: Box::new(error),
            }
        }
    };
    if matches!(
        kind,
        DatabaseErrorKind::ClosedConnection
            | DatabaseErrorKind::UnableToSendCommand
            | DatabaseErrorKind::SerializationFailure
            | DatabaseErrorKind::ReadOnlyTransaction
    ) {
        return StorageError::Unavailable {
            source: Box::new(error),
        };
    }
    if matches!(
        kind,
        DatabaseErrorKind::CheckViolation | DatabaseErrorKind::NotNullViolation
    ) {
        return StorageError::CorruptRow {
            detail: format!("a constraint rejected the write ({message})"),
        };
    }
    match classify_postgres_text(&message) {
        Some(PostgresErrorClass::Transient) => StorageError::Unavailable {
            source: Box::new(error),
        },
        Some(PostgresErrorClass::Refused) => StorageError::AccessDenied {
            source: Box::new(error),
        },
        Some(PostgresErrorClass::NotOurs) => StorageError::Incompatible {
            detail: format!("the database schema is not tasktrail's ({message})"),
        },
        None => StorageError::Other {
            source: Box::new(error),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_timeout_is_added_once() {
        assert_eq!(
            with_connect_timeout("postgres://h/db", Duration::from_secs(7)),
            "postgres://h/db?connect_timeout=7"
        );
        assert_eq!(
            with_connect_timeout("postgres://h/db?sslmode=disable", Duration::from_millis(10)),
            "postgres://h/db?sslmode=disable&connect_timeout=2"
        );
        assert_eq!(
            with_connect_timeout("postgres://h/db?connect_timeout=1", Duration::from_secs(7)),
            "postgres://h/db?connect_timeout=1"
        );
        assert_eq!(
            with_connect_timeout("host=h dbname=d", Duration::from_secs(3)),
            "host=h dbname=d connect_timeout=3"
        );
    }

    fn statement_error(kind: DatabaseErrorKind, message: &str) -> StorageError {
        map_error(crate::error_text::database_error(kind, message))
    }

    /// What a text maps to, as a statement error (Diesel's kind `Unknown`,
    /// so only the table decides) and as a connection error.
    fn kinds_of(text: &str) -> (StorageError, StorageError) {
        let secrets = Secrets::of("postgres://u@h/db");
        (
            statement_error(DatabaseErrorKind::Unknown, text),
            connection_error(&ConnectionError::BadConnection(text.to_owned()), &secrets),
        )
    }

    fn transient(text: &str) {
        let (statement, connection) = kinds_of(text);
        assert!(statement.is_transient(), "{text}: {statement:?}");
        assert!(connection.is_transient(), "{text}: {connection:?}");
    }

    fn refused(text: &str) {
        let (statement, connection) = kinds_of(text);
        assert!(
            matches!(statement, StorageError::AccessDenied { .. }),
            "{text}: {statement:?}"
        );
        assert!(
            matches!(connection, StorageError::AccessDenied { .. }),
            "{text}: {connection:?}"
        );
    }

    fn not_ours(text: &str) {
        let (statement, _) = kinds_of(text);
        assert!(
            matches!(statement, StorageError::Incompatible { .. }),
            "{text}: {statement:?}"
        );
    }

    /// One test per entry of POSTGRES_ERROR_MESSAGES, with the server's or
    /// libpq's own text.
    macro_rules! classified {
        ($($name:ident: $check:ident($text:expr);)+) => {
            $(#[test] fn $name() { $check($text); })+

            #[test]
            fn every_table_entry_has_its_test() {
                let texts: &[&str] = &[$($text),+];
                for (pieces, _) in POSTGRES_ERROR_MESSAGES {
                    assert!(
                        texts.iter().any(|text| {
                            let text = text.to_ascii_lowercase();
                            pieces.iter().all(|piece| text.contains(piece))
                        }),
                        "no test for the entry {pieces:?}"
                    );
                }
            }
        };
    }

    classified! {
        admin_shutdown_57p01_is_transient: transient("FATAL:  terminating connection due to administrator command");
        database_starting_up_57p03_is_transient: transient("FATAL:  the database system is starting up");
        server_closed_the_connection_is_transient: transient("server closed the connection unexpectedly\n\tThis probably means the server terminated abnormally");
        no_connection_is_transient: transient("no connection to the server");
        could_not_send_is_transient: transient("could not send data to server: Broken pipe");
        could_not_receive_is_transient: transient("could not receive data from server: Connection reset by peer");
        ssl_syscall_is_transient: transient("SSL SYSCALL error: EOF detected");
        connection_refused_is_transient: transient("connection to server at \"127.0.0.1\", port 5 failed: Connection refused");
        connect_timeout_is_transient: transient("connection to server at \"10.0.0.1\", port 5432 failed: timeout expired");
        pool_timeout_is_transient: transient("timed out waiting for connection");
        too_many_clients_53300_is_transient: transient("FATAL:  sorry, too many clients already");
        too_many_connections_53300_is_transient: transient("FATAL:  too many connections for role \"app\"");
        pgbouncer_max_client_conn_is_transient: transient("ERROR:  no more connections allowed (max_client_conn)");
        pgbouncer_query_wait_timeout_is_transient: transient("ERROR:  query_wait_timeout");
        pgbouncer_cannot_connect_is_transient: transient("ERROR:  pgbouncer cannot connect to server");
        pgbouncer_server_crashed_is_transient: transient("ERROR:  server conn crashed?");
        pgbouncer_login_failing_is_transient: transient("ERROR:  server login has been failing, try again later (server_login_retry)");
        disk_full_53100_is_transient: transient("could not write to file \"base/pgsql_tmp\": No space left on device");
        could_not_extend_53100_is_transient: transient("could not extend file \"base/16384/16385\": wrote only 4096 of 8192 bytes");
        out_of_memory_53200_is_transient: transient("out of memory");
        out_of_shared_memory_53200_is_transient: transient("out of shared memory");
        deadlock_40p01_is_transient: transient("deadlock detected");
        serialization_40001_is_transient: transient("could not serialize access due to concurrent update");
        statement_cancelled_57014_is_transient: transient("canceling statement due to statement timeout");
        read_only_25006_is_transient: transient("cannot execute UPDATE in a read-only transaction");
        wrong_password_28p01_is_refused: refused("FATAL:  password authentication failed for user \"app\"");
        no_hba_entry_28000_is_refused: refused("FATAL:  no pg_hba.conf entry for host \"10.0.0.2\", user \"app\", database \"trail\"");
        unknown_database_3d000_is_refused: refused("FATAL:  database \"nope\" does not exist");
        unknown_role_28000_is_refused: refused("FATAL:  role \"nobody\" does not exist");
        insufficient_privilege_42501_is_refused: refused("permission denied for table task_history");
        missing_relation_42p01_is_not_ours: not_ours("relation \"task_history\" does not exist");
        missing_column_42703_is_not_ours: not_ours("column \"interrupted_by\" does not exist");
    }

    #[test]
    fn diesel_kinds_decide_before_any_text() {
        for kind in [
            DatabaseErrorKind::ClosedConnection,
            DatabaseErrorKind::UnableToSendCommand,
            DatabaseErrorKind::SerializationFailure,
            DatabaseErrorKind::ReadOnlyTransaction,
        ] {
            let error = statement_error(kind, "some text no table entry knows");
            assert!(error.is_transient(), "{kind:?}: {error:?}");
        }
        let error = statement_error(DatabaseErrorKind::CheckViolation, "check failed");
        assert!(
            matches!(error, StorageError::CorruptRow { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn unknown_texts_are_permanent_statements_but_transient_connections() {
        let (statement, connection) = kinds_of("something new went wrong");
        assert!(
            matches!(statement, StorageError::Other { .. }),
            "{statement:?}"
        );
        assert!(connection.is_transient(), "{connection:?}");
    }

    #[test]
    fn worker_lock_keys_differ_per_worker_and_are_stable() {
        let a = WorkerId::new_random();
        let b = WorkerId::new_random();
        assert_eq!(
            PostgresStorage::worker_lock_key(a),
            PostgresStorage::worker_lock_key(a)
        );
        assert_ne!(
            PostgresStorage::worker_lock_key(a),
            PostgresStorage::worker_lock_key(b)
        );
    }
}
