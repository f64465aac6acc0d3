//! The liveness session: the store's one dedicated, unpooled connection
//! that holds the named locks of the workers registered through it,
//! reconnecting (and marking every lock not held) when it is lost.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use diesel::r2d2::R2D2Connection;
use tasktrail_core::{StorageError, WorkerId};

use super::connection::establish;
use super::MysqlConnection;
use crate::secrets::Secrets;
use crate::statement_log::StatementLog;

/// The store's dedicated connection and the named locks it holds.
pub(crate) struct LivenessSession {
    url: String,
    secrets: Secrets,
    statement_log: Option<StatementLog>,
    state: Mutex<LivenessState>,
}

struct LivenessState {
    connection: Option<MysqlConnection>,
    /// The workers registered through this store and not yet stopped or
    /// found dead, with whether the current connection holds their lock
    /// (false after a reconnect, until the next heartbeat takes it again).
    workers: BTreeMap<WorkerId, bool>,
    /// When the current connection was made.
    connected_at: Instant,
}

impl LivenessSession {
    pub(super) fn connect(
        url: String,
        secrets: Secrets,
        statement_log: Option<StatementLog>,
        _connection_timeout: Duration,
    ) -> Result<Self, StorageError> {
        let connection = establish(&url, &secrets, statement_log.as_ref())?;
        Ok(Self {
            url,
            secrets,
            statement_log,
            state: Mutex::new(LivenessState {
                connection: Some(connection),
                workers: BTreeMap::new(),
                connected_at: Instant::now(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, LivenessState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How long the session has been connected without a break, as the
    /// server answers now: a session the server ended (a restart, a
    /// network reset, `KILL`) freed every lock with it, but the store
    /// learns of that only when it next uses the session. So the session is
    /// pinged; a session that does not answer is dropped (every lock marked
    /// not held; the next call reconnects) and counts as zero, as does a
    /// lost one.
    pub(crate) fn connected_for(&self) -> Duration {
        let mut state = self.lock();
        let LivenessState {
            connection,
            workers,
            connected_at,
        } = &mut *state;
        if connection.as_mut().is_some_and(|live| live.ping().is_ok()) {
            return connected_at.elapsed();
        }
        if connection.take().is_some() {
            for held in workers.values_mut() {
                *held = false;
            }
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
        f: impl FnOnce(&mut MysqlConnection, &mut BTreeMap<WorkerId, bool>) -> Result<T, StorageError>,
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
                let established = establish(&self.url, &self.secrets, self.statement_log.as_ref())?;
                *connected_at = Instant::now();
                connection.insert(established)
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
