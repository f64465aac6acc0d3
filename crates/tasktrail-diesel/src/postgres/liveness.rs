//! How the Postgres liveness session opens (the session itself, holding
//! the workers' advisory locks, is `crate::liveness`), and its settings.

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use tasktrail_core::StorageError;

use super::errors::connection_error;
use super::pool::ServerReach;
use crate::liveness::{LivenessConnection, ReachObserver};
use crate::secrets::Secrets;
use crate::statement_log::StatementLog;

/// The Postgres liveness session.
pub(crate) type LivenessSession = crate::liveness::LivenessSession<PgConnection>;

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

impl LivenessConnection for PgConnection {
    fn open_liveness(
        url: &str,
        secrets: &Secrets,
        statement_log: Option<&StatementLog>,
    ) -> Result<Self, StorageError> {
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
}

impl ReachObserver for ServerReach {
    fn reached(&self) {
        ServerReach::reached(self);
    }
    fn unreachable(&self) {
        ServerReach::unreachable(self);
    }
}
