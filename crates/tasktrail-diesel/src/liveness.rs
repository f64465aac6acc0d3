//! The liveness session of the server backends (Postgres, MySQL): the
//! store's one dedicated, unpooled connection that holds the locks of the
//! workers registered through it (Postgres: session advisory locks; MySQL:
//! named locks), reconnecting (and marking every lock not held) when it is
//! lost. What a dialect supplies is how to open it
//! ([`LivenessConnection::open_liveness`]).

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use diesel::r2d2::R2D2Connection;
use diesel::QueryResult;
use tasktrail_core::{StorageError, WorkerId, WorkerRegistration, WorkerState};

use crate::secrets::Secrets;
use crate::statement_log::StatementLog;
use crate::store::{SqlDialect, WorkerRead};
use crate::tx::unique_violation_or;

/// A connection a liveness session can run on.
pub(crate) trait LivenessConnection: R2D2Connection + Sized {
    /// A new connection to `url` with the dialect's session settings (its
    /// errors' text scrubbed of `secrets`) and the statement log attached.
    fn open_liveness(
        url: &str,
        secrets: &Secrets,
        statement_log: Option<&StatementLog>,
    ) -> Result<Self, StorageError>;
}

/// Told when a (re)connection succeeds or fails for a reason that may pass
/// (Postgres's pool fails fast while the server is known to be down).
pub(crate) trait ReachObserver: Send + Sync {
    /// The server was reached.
    fn reached(&self);
    /// The server could not be reached (a transient failure).
    fn unreachable(&self);
}

/// No one to tell.
impl ReachObserver for () {
    fn reached(&self) {}
    fn unreachable(&self) {}
}

/// The store's dedicated connection and the locks it holds.
pub(crate) struct LivenessSession<C> {
    url: String,
    secrets: Secrets,
    statement_log: Option<StatementLog>,
    reach: std::sync::Arc<dyn ReachObserver>,
    state: Mutex<LivenessState<C>>,
}

struct LivenessState<C> {
    connection: Option<C>,
    /// The workers registered through this store and not yet stopped or
    /// found dead, with whether the current connection holds their lock
    /// (false after a reconnect, until the next heartbeat takes it again).
    workers: BTreeMap<WorkerId, bool>,
    /// When the current connection was made: how long this store has
    /// watched locks without a break.
    connected_at: Instant,
}

impl<C: LivenessConnection> LivenessSession<C> {
    /// Opens the session's connection now (a store that cannot reach its
    /// server does not open).
    pub(crate) fn connect(
        url: String,
        secrets: Secrets,
        statement_log: Option<StatementLog>,
        reach: std::sync::Arc<dyn ReachObserver>,
    ) -> Result<Self, StorageError> {
        let connection = C::open_liveness(&url, &secrets, statement_log.as_ref())?;
        Ok(Self {
            url,
            secrets,
            statement_log,
            reach,
            state: Mutex::new(LivenessState {
                connection: Some(connection),
                workers: BTreeMap::new(),
                connected_at: Instant::now(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, LivenessState<C>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How long the session has been connected without a break, as the
    /// server answers now: how long this store has been able to watch
    /// liveness locks. A session the server ended (a restart, a network
    /// reset, `pg_terminate_backend`, `KILL`) freed every lock with it, but
    /// the store learns of that only when it next uses the session, so the
    /// session is pinged: one that does not answer is dropped (every lock
    /// marked not held; the next call reconnects) and counts as zero, as
    /// does a lost one. A judge reads a free lock as death only once this
    /// passed a grace. It is the long-lived session's age, not that of the
    /// pooled connection a sweep happens to run on.
    pub(crate) fn connected_for(&self) -> Duration {
        let mut state = self.lock();
        if state
            .connection
            .as_mut()
            .is_some_and(|live| live.ping().is_ok())
        {
            return state.connected_at.elapsed();
        }
        if state.connection.take().is_some() {
            forget_locks(&mut state.workers);
        }
        Duration::ZERO
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
        f: impl FnOnce(&mut C, &mut BTreeMap<WorkerId, bool>) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let mut guard = self.lock();
        let LivenessState {
            connection,
            workers,
            connected_at,
        } = &mut *guard;
        if connection.as_mut().is_some_and(R2D2Connection::is_broken) {
            *connection = None;
        }
        let live = match connection {
            Some(live) => live,
            None => {
                forget_locks(workers);
                match C::open_liveness(&self.url, &self.secrets, self.statement_log.as_ref()) {
                    Ok(established) => {
                        self.reach.reached();
                        *connected_at = Instant::now();
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
            forget_locks(workers);
        }
        result
    }
}

/// The connection is gone: every lock it held went with it.
fn forget_locks(workers: &mut BTreeMap<WorkerId, bool>) {
    for held in workers.values_mut() {
        *held = false;
    }
}

/// What a server backend supplies to register workers and write their
/// heartbeats through its liveness session: its lock statements, its
/// registration INSERT (holding the lock) and its heartbeat UPDATE (on
/// the database's clock).
pub(crate) trait WorkerLockStatements: SqlDialect {
    /// Takes `worker`'s liveness lock on this session without waiting:
    /// whether it holds it now.
    fn try_take_worker_lock(
        connection: &mut Self::Connection,
        worker: WorkerId,
    ) -> QueryResult<bool>;
    /// Lets go of `worker`'s liveness lock: whether this session held it.
    fn let_go_of_worker_lock(
        connection: &mut Self::Connection,
        worker: WorkerId,
    ) -> QueryResult<bool>;
    /// The registration's row, recorded as holding its lock; its first
    /// heartbeat the database's clock.
    fn insert_locked_worker(
        connection: &mut Self::Connection,
        registration: &WorkerRegistration,
    ) -> QueryResult<usize>;
    /// `heartbeat_at` to the database's clock, never backwards, if the
    /// worker is `alive`: how many rows matched.
    fn beat_if_alive(connection: &mut Self::Connection, worker: WorkerId) -> QueryResult<usize>;
}

/// The heartbeat on `connection`; one that matched no `alive` row says why.
pub(crate) fn beat<S: WorkerLockStatements>(
    connection: &mut S::Connection,
    worker: WorkerId,
) -> Result<(), StorageError> {
    match S::beat_if_alive(connection, worker) {
        Ok(1) => Ok(()),
        Ok(_) => Err(crate::store::worker_refusal::<S>(connection, worker)),
        Err(error) => Err(crate::store::map::<S>(error)),
    }
}

impl<C: LivenessConnection> LivenessSession<C> {
    /// `Storage::register_worker` through this session: takes the worker's
    /// lock, then inserts its row (a lock another session holds, or a row
    /// already there, is [`StorageError::DuplicateWorker`]).
    pub(crate) fn register<S>(&self, registration: &WorkerRegistration) -> Result<(), StorageError>
    where
        S: WorkerLockStatements<Connection = C>,
    {
        let id = registration.id;
        self.run(|connection, tracked| {
            if tracked.contains_key(&id) {
                return Err(StorageError::DuplicateWorker { id });
            }
            if !S::try_take_worker_lock(connection, id).map_err(crate::store::map::<S>)? {
                // Another live session holds this worker's lock.
                return Err(StorageError::DuplicateWorker { id });
            }
            match S::insert_locked_worker(connection, registration) {
                Ok(_) => {
                    tracked.insert(id, true);
                    Ok(())
                }
                Err(error) => {
                    let _ = S::let_go_of_worker_lock(connection, id);
                    Err(unique_violation_or::<S::Backend>(
                        error,
                        StorageError::DuplicateWorker { id },
                    ))
                }
            }
        })
    }

    /// `Storage::heartbeat_worker` for a worker registered through this
    /// session: takes its lock again first if the session was
    /// re-established (a heartbeat that succeeds proves the lock is held);
    /// a worker found stopped or dead lets go of it.
    pub(crate) fn heartbeat<S>(&self, worker: WorkerId) -> Result<(), StorageError>
    where
        S: WorkerLockStatements<Connection = C>,
    {
        self.run(|connection, tracked| {
            if tracked.get(&worker) == Some(&false) {
                if !S::try_take_worker_lock(connection, worker).map_err(crate::store::map::<S>)? {
                    // A sweep is judging this worker right now, or the
                    // server has not yet ended the lost session that held
                    // the lock.
                    return match S::worker_state(connection, worker, WorkerRead::Plain)
                        .map_err(crate::store::map::<S>)?
                    {
                        None => Err(StorageError::UnknownWorker { id: worker }),
                        Some(state) if state != WorkerState::Alive.as_str() => {
                            tracked.remove(&worker);
                            Err(StorageError::WorkerNotAlive { id: worker })
                        }
                        Some(_) => Err(StorageError::Unavailable {
                            source: Box::new(crate::error_table::Redacted(format!(
                                "the liveness lock of worker {worker} is held by another session; retry at the next heartbeat"
                            ))),
                        }),
                    };
                }
                tracked.insert(worker, true);
            }
            let result = beat::<S>(connection, worker);
            if matches!(
                result,
                Err(StorageError::WorkerNotAlive { .. } | StorageError::UnknownWorker { .. })
            ) {
                let _ = S::let_go_of_worker_lock(connection, worker);
                tracked.remove(&worker);
            }
            result
        })
    }

    /// Lets go of `worker`'s lock and stops taking it back (deregistration,
    /// or a test playing the worker's death): whether this session held it.
    /// Best effort: if the session is gone, so is the lock.
    pub(crate) fn release<S>(&self, worker: WorkerId) -> bool
    where
        S: WorkerLockStatements<Connection = C>,
    {
        if !self.tracks(worker) {
            return false;
        }
        self.run(|connection, tracked| {
            tracked.remove(&worker);
            S::let_go_of_worker_lock(connection, worker).map_err(crate::store::map::<S>)
        })
        .unwrap_or(false)
    }
}
