//! The Postgres backend: one database shared by workers on many hosts.
//! The design (connections, liveness, partitions, exactly-once recovery) is
//! documented on [`PostgresStorage`].

mod adopt;
mod advisory;
mod errors;
mod liveness;
mod migrations;
mod options;
mod overview;
mod pool;
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
mod sweep;
mod url;

pub use options::PostgresOptions;
pub use pooler::{LivenessMode, Pooler, POOLER_PARAMETER};
#[cfg(feature = "testing")]
pub use scratch::{
    test_postgres_url, PostgresTestServer, ScratchDatabase, CI_VARIABLE, TEST_POSTGRES_URL_VARIABLE,
};

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, NopErrorHandler, Pool};
use diesel_migrations::{embed_migrations, EmbeddedMigrations};
use tasktrail_core::StorageError;

pub(crate) use advisory::{advisory_unlock, try_advisory_lock};
pub(crate) use errors::{map_error, Redacted};
use liveness::LivenessSession;
use migrations::ensure_ours;
use pool::{IdleTracker, OnAcquire, ServerReach};
use url::with_connect_timeout;

use crate::secrets::Secrets;
use crate::statement_log::StatementLog;

/// The Postgres migrations, embedded at build time from `migrations/postgres`.
pub const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/postgres");

type PgPool = Pool<ConnectionManager<PgConnection>>;

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
    crate::store::server_store_methods!(
        PostgresOptions,
        PgConnection,
        "postgres://user:password@host:port/database"
    );

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
                std::sync::Arc::clone(&reach) as std::sync::Arc<dyn crate::liveness::ReachObserver>,
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
}

#[derive(QueryableByName)]
struct ServerPort {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Integer>)]
    port: Option<i32>,
}

impl crate::row_lock_sweep::WatchingStore for PostgresStorage {
    /// How long this store has been able to watch liveness locks without a
    /// break: its liveness session's age, or, without one (behind a
    /// transaction pooler), how long its pool has reached the server
    /// without a failure.
    fn watched_for(&self) -> Duration {
        match &self.liveness {
            Some(liveness) => liveness.connected_for(),
            None => self.reach.reached_for(),
        }
    }
}
