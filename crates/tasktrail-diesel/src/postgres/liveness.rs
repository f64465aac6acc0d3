//! The liveness session: the store's one dedicated, unpooled connection
//! that holds the advisory locks of the workers registered through it,
//! reconnecting (and marking every lock not held) when it is lost.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::r2d2::R2D2Connection;
use tasktrail_core::{StorageError, WorkerId};

use super::errors::connection_error;
use super::pool::ServerReach;
use crate::secrets::Secrets;
use crate::statement_log::StatementLog;

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
    pub(super) fn connect(
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
