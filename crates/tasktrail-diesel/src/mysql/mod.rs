//! The MySQL / MariaDB backend: one database shared by workers on many
//! hosts, like Postgres, by MySQL's own means. The design is documented on
//! [`MysqlStorage`].

mod connection;
mod errors;
mod liveness;
mod locks;
mod migrations;
mod overview;
mod prune;
mod raw;
mod rows;
mod schema;
#[cfg(feature = "testing")]
mod scratch;
mod statements;
mod stats;
mod store;
mod sweep;

#[cfg(feature = "testing")]
pub use scratch::{test_mysql_url, MysqlTestServer, ScratchMysqlDatabase, TEST_MYSQL_URL_VARIABLE};

use std::fmt;
use std::time::Duration;

use diesel_migrations::{embed_migrations, EmbeddedMigrations};
use tasktrail_core::StorageError;

pub use connection::{MysqlConnection, OwnRuntime};
use connection::{MysqlPool, Pooled};
pub(crate) use errors::map_error;
use liveness::LivenessSession;

use crate::secrets::Secrets;
use crate::statement_log::StatementLog;

/// The MySQL migrations, embedded at build time from `migrations/mysql`.
pub const MYSQL_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/mysql");

/// How a [`MysqlStorage`] connects.
#[derive(Debug, Clone)]
pub struct MysqlOptions {
    /// How many pooled connections the store may hold (besides its
    /// liveness session). A worker needs about its concurrency plus one.
    pub pool_size: u32,
    /// How long to wait for a connection (to the server, or out of the
    /// pool) before failing with [`StorageError::Unavailable`].
    pub connection_timeout: Duration,
    /// Counts the INSERTs this store issues (tests).
    pub statement_log: Option<StatementLog>,
}

impl Default for MysqlOptions {
    fn default() -> Self {
        Self {
            pool_size: 8,
            connection_timeout: Duration::from_secs(5),
            statement_log: None,
        }
    }
}

impl MysqlOptions {
    /// These options with a statement log attached.
    pub fn with_statement_log(mut self, log: StatementLog) -> Self {
        self.statement_log = Some(log);
        self
    }
}

/// A [`tasktrail_core::Storage`] on one MySQL 8.0.16+ or MariaDB 10.6+
/// database, shared by workers on many hosts (tested on MariaDB 10.11).
///
/// # Connections
///
/// The client is pure Rust: Diesel's query builder over `mysql_async`,
/// through diesel-async's `AsyncConnectionWrapper`, which gives the sync
/// `Storage` a blocking Diesel connection (each connection drives its
/// socket on its own single-threaded tokio runtime, or on the caller's
/// runtime from `spawn_blocking`). The store holds an r2d2 pool of such
/// connections for its statements (one whose last statement failed is
/// pinged when it is handed back, and replaced if the server ended it: a
/// restart, a network reset or `wait_timeout` costs each connection at
/// most one failed statement), plus one dedicated *liveness session*,
/// never pooled, that runs the migrations, registers workers, writes their
/// heartbeats and holds one named lock (`GET_LOCK`) per worker registered
/// through the store ([`MysqlStorage::worker_lock_name`]) for as long as the
/// store lives. Every connection reads `READ COMMITTED` (as Postgres does:
/// a locking read and a plain read in one transaction see the same
/// committed rows), keeps the server's found-rows flag (an `UPDATE` reports
/// the rows it matched, changed or not, so a heartbeat that writes the same
/// microsecond still counts as done) and asks for English server messages
/// (`lc_messages`, which the error table reads).
///
/// # Liveness across hosts
///
/// As on Postgres, the store gathers the facts and the caller's
/// [`LivenessJudge`](tasktrail_core::backend::LivenessJudge) decides:
///
/// - **The `workers` row**, with its `state`.
/// - **Its silence, on the database's clock**: heartbeats are written as
///   `GREATEST(heartbeat_at, UTC_TIMESTAMP(6))` by the server, and the
///   silence is the server's `UTC_TIMESTAMP(6)` read once the owners' rows
///   are locked, minus `heartbeat_at`. No host's clock is compared with
///   another's.
/// - **Its lock**: for each `alive` owner registered with its lock
///   (`workers.liveness_lock = 'named_lock'`), the sweep asks
///   `IS_USED_LOCK(name)` without taking it. The server releases a named
///   lock when the session holding it ends (a crashed worker's socket
///   closes), so a free lock means the owner's session is gone. A free lock
///   comes with how long this store's liveness session has been connected
///   without a break, pinged at each sweep (a session the server ended
///   unnoticed, as a restart or a network reset ends every session, counts
///   as zero and reconnects): after a server restart or a reconnect every
///   lock is free until its owner reconnects and takes it back, so the
///   policy reads no free lock as death before a grace has passed.
///
/// # Exactly-once recovery
///
/// The sweep is one InnoDB transaction that locks, in this order, the
/// `workers` rows of the owners of `running` rows (`FOR UPDATE`, in id
/// order, so concurrent sweeps queue on an owner instead of both judging
/// it), then the `running` rows themselves (`FOR UPDATE SKIP LOCKED`), and
/// changes only rows it holds. MariaDB has no `UPDATE … RETURNING`: the
/// rows a sweep interrupts are the rows it read `running` under its own
/// `FOR UPDATE` lock just before the `UPDATE` (nobody else can change them
/// before it commits), so those are the rows it reports; sessions are read
/// locked the same way before they are invalidated. Ids go 10,000 to a
/// statement (MySQL prepares at most 65,535 placeholders).
///
/// # Finishes without `RETURNING`
///
/// A finish is one `UPDATE … WHERE id AND status = 'running' AND
/// worker_id`; with the found-rows flag, one matched row means the finish
/// landed, none means it was refused (then the row is read to say why).
pub struct MysqlStorage {
    pool: MysqlPool,
    liveness: LivenessSession,
    connection_timeout: Duration,
    shown_url: String,
    secrets: Secrets,
    statement_log: Option<StatementLog>,
}

impl fmt::Debug for MysqlStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MysqlStorage")
            .field("url", &self.shown_url)
            .field("pool_size", &self.pool.max_size())
            .finish_non_exhaustive()
    }
}

impl MysqlStorage {
    crate::store::server_store_methods!(
        MysqlOptions,
        MysqlConnection,
        "mysql://user:password@host:port/database"
    );

    /// Connects without running migrations. Still refuses a database that
    /// is not ours.
    pub fn open_unmigrated(url: &str, options: &MysqlOptions) -> Result<Self, StorageError> {
        let secrets = Secrets::of(url);
        let liveness = LivenessSession::connect(
            url.to_owned(),
            secrets.clone(),
            options.statement_log.clone(),
            std::sync::Arc::new(()),
        )?;
        let pool = connection::pool(url, options);
        let store = Self {
            pool,
            liveness,
            connection_timeout: options.connection_timeout,
            shown_url: secrets.redacted(),
            secrets,
            statement_log: options.statement_log.clone(),
        };
        store
            .liveness
            .run(|connection, _| migrations::ensure_ours(connection))?;
        Ok(store)
    }

    /// A pooled connection.
    pub(crate) fn pooled(&self) -> Result<Pooled, StorageError> {
        connection::checkout(&self.pool, &self.secrets, self.connection_timeout)
    }
}

impl crate::row_lock_sweep::WatchingStore for MysqlStorage {
    /// How long this store has been able to watch liveness locks without a
    /// break: its liveness session's age, checked with the server now (a
    /// session that ended unnoticed, as every session does at a server
    /// restart, watched nothing: zero). Asked after the sweep's connection
    /// was checked out, so a restart after this answer ends that
    /// connection too and the sweep fails instead of judging.
    fn watched_for(&self) -> Duration {
        self.liveness.connected_for()
    }
}
