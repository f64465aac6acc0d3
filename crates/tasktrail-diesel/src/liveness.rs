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
use tasktrail_core::{StorageError, WorkerId};

use crate::secrets::Secrets;
use crate::statement_log::StatementLog;

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
