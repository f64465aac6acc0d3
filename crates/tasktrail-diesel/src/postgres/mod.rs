//! The Postgres backend: one database shared by workers on many hosts.
//! The design (connections, liveness, partitions, exactly-once recovery) is
//! documented on [`PostgresStorage`].

mod adopt;
mod prune;
mod raw;
mod rows;
mod schema;
#[cfg(feature = "testing")]
mod scratch;
mod statements;
mod store;

#[cfg(feature = "testing")]
pub use scratch::{ScratchDatabase, TEST_POSTGRES_URL_VARIABLE};

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use diesel::connection::SimpleConnection;
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
///   the server's uptime (`pg_postmaster_start_time()`) and the sweeping
///   connection's age (`backend_start`): after a restart, a failover or a
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
    liveness: LivenessSession,
    shown_url: String,
    secrets: Secrets,
    statement_log: Option<StatementLog>,
}

impl fmt::Debug for PostgresStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStorage")
            .field("url", &self.shown_url)
            .field("pool_size", &self.pool.max_size())
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

    /// Connects without running migrations (the upgrade tests use it to start
    /// from an old schema). Still refuses a database that is not ours.
    pub fn open_unmigrated(url: &str, options: &PostgresOptions) -> Result<Self, StorageError> {
        let secrets = Secrets::of(url);
        let url = with_connect_timeout(url, options.connection_timeout);
        let liveness =
            LivenessSession::connect(url.clone(), secrets.clone(), options.statement_log())?;
        liveness.run(|connection, _| ensure_ours(connection))?;
        let pool = Pool::builder()
            .max_size(options.pool_size.max(1))
            .min_idle(Some(0))
            .connection_timeout(options.connection_timeout)
            // No `SELECT 1` before every statement (it doubled the round
            // trips of a start or finish). A connection the server dropped
            // fails its next statement with `Unavailable` (a finish hands the
            // task back for a retry) and r2d2 then discards it.
            .test_on_check_out(false)
            // r2d2 would log connection errors (which may name the host)
            // through `log`; they are returned, redacted, instead.
            .error_handler(Box::new(NopErrorHandler))
            .connection_customizer(Box::new(OnAcquire {
                statement_log: options.statement_log(),
            }))
            .build_unchecked(ConnectionManager::new(url));
        Ok(Self {
            pool,
            liveness,
            shown_url: secrets.redacted(),
            secrets,
            statement_log: options.statement_log(),
        })
    }

    /// Applies pending migrations; returns the versions it applied (empty
    /// when the schema was already current). Idempotent, and safe to call
    /// from many processes at once: a database-wide advisory lock lets one
    /// migrate while the others wait.
    pub fn migrate(&self) -> Result<Vec<String>, StorageError> {
        self.liveness.run(|connection, _| {
            diesel::sql_query("SELECT pg_advisory_lock($1)")
                .bind::<BigInt, _>(MIGRATION_LOCK_KEY)
                .execute(connection)
                .map_err(map_error)?;
            let migrated = ensure_ours(connection).and_then(|()| {
                connection
                    .run_pending_migrations(POSTGRES_MIGRATIONS)
                    .map(|applied| applied.iter().map(ToString::to_string).collect::<Vec<_>>())
                    .map_err(|error| StorageError::Other { source: error })
            });
            let unlocked = diesel::sql_query("SELECT pg_advisory_unlock($1)")
                .bind::<BigInt, _>(MIGRATION_LOCK_KEY)
                .execute(connection)
                .map_err(map_error);
            let applied = migrated?;
            unlocked?;
            Ok(applied)
        })
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

    pub(crate) fn pooled(&self) -> Result<PgPooled, StorageError> {
        self.pool
            .get()
            .map_err(|error| pool_error(&error, &self.secrets))
    }
}

/// Attaches the statement log to every pooled connection when it is made.
#[derive(Debug)]
struct OnAcquire {
    statement_log: Option<StatementLog>,
}

impl CustomizeConnection<PgConnection, diesel::r2d2::Error> for OnAcquire {
    fn on_acquire(&self, connection: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        if let Some(log) = &self.statement_log {
            connection.set_instrumentation(log.instrumentation());
        }
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
    state: Mutex<LivenessState>,
}

pub(crate) struct LivenessState {
    connection: Option<PgConnection>,
    /// The workers registered through this store and not yet stopped or
    /// found dead, with whether the current connection holds their lock
    /// (false after a reconnect, until the next heartbeat takes it again).
    workers: BTreeMap<WorkerId, bool>,
}

impl LivenessSession {
    fn connect(
        url: String,
        secrets: Secrets,
        statement_log: Option<StatementLog>,
    ) -> Result<Self, StorageError> {
        let connection = Self::establish(&url, &secrets, statement_log.as_ref())?;
        Ok(Self {
            url,
            secrets,
            statement_log,
            state: Mutex::new(LivenessState {
                connection: Some(connection),
                workers: BTreeMap::new(),
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
                connection.insert(Self::establish(
                    &self.url,
                    &self.secrets,
                    self.statement_log.as_ref(),
                )?)
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
    let tables: Vec<TableName> = diesel::sql_query(
        "SELECT c.relname::text AS name FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
    )
    .load(connection)
    .map_err(map_error)?;
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
    let applied: Vec<Version> =
        diesel::sql_query("SELECT version::text AS version FROM __diesel_schema_migrations")
            .load(connection)
            .map_err(map_error)?;
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

fn connection_error(error: &ConnectionError, secrets: &Secrets) -> StorageError {
    let message = secrets.scrub(error.to_string().trim_end());
    match error {
        ConnectionError::InvalidConnectionUrl(_) => StorageError::Other {
            source: Box::new(Redacted(format!("invalid postgres URL: {message}"))),
        },
        // Refused, unreachable, timed out, login refused, unknown database:
        // all can succeed later or with a fixed configuration.
        _ => StorageError::Unavailable {
            source: Box::new(Redacted(format!("cannot connect to postgres: {message}"))),
        },
    }
}

fn pool_error(error: &PoolError, secrets: &Secrets) -> StorageError {
    StorageError::Unavailable {
        source: Box::new(Redacted(format!(
            "no postgres connection available: {}",
            secrets.scrub(error.to_string().trim_end())
        ))),
    }
}

/// Maps a Diesel error onto a public kind. Unique violations are mapped by
/// the callers, which know which row they were writing.
pub(crate) fn map_error(error: DieselError) -> StorageError {
    let DieselError::DatabaseError(kind, info) = &error else {
        return StorageError::Other {
            source: Box::new(error),
        };
    };
    let message = info.message().to_ascii_lowercase();
    let unavailable = [
        "server closed the connection",
        "terminating connection",
        "no connection to the server",
        "could not connect",
        "connection to server",
        "the database system is",
        "too many connections",
        "deadlock detected",
        "canceling statement",
        "lock timeout",
        "could not serialize",
        "read-only transaction",
        "could not extend file",
        "no space left",
        "out of memory",
        "out of shared memory",
    ];
    if matches!(
        kind,
        DatabaseErrorKind::ClosedConnection
            | DatabaseErrorKind::SerializationFailure
            | DatabaseErrorKind::ReadOnlyTransaction
    ) || unavailable.iter().any(|needle| message.contains(needle))
    {
        StorageError::Unavailable {
            source: Box::new(error),
        }
    } else if matches!(
        kind,
        DatabaseErrorKind::CheckViolation | DatabaseErrorKind::NotNullViolation
    ) {
        StorageError::CorruptRow {
            detail: format!("a constraint rejected the write ({message})"),
        }
    } else if (message.contains("relation") || message.contains("column"))
        && message.contains("does not exist")
    {
        StorageError::Incompatible {
            detail: format!("the database schema is not tasktrail's ({message})"),
        }
    } else {
        StorageError::Other {
            source: Box::new(error),
        }
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
